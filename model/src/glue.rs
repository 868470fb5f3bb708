//! The shell's glue, mirrored: what `agent/src/agent/*.rs` does between baton's pure functions
//! and the API server, in this one module: `mod.rs` (`Agent::decide_and_act`: what a decision
//! reads, the drain stopped unless the step is Drain), `steps.rs` (each step's API calls in
//! order: cordon, drain, the reboot's fence, record and trigger, finish, abort), `slots.rs`
//! (`Slots::judge`, `acquire`, `fence`, `release`, the keeper `keep` with its renew deadline),
//! `watch.rs` (`HolderWatch::observe`), `gates.rs` (`Gates::paused`: the window) and
//! `health.rs` (the settle gate). Each function names the shell function it mirrors; each API
//! call of a step is one model action (an agent can be killed, and others can act, between any
//! two), and an API call is atomic (a GET then a PUT with its resourceVersion, retried on 409,
//! succeeds or fails as one write at the PUT).
//!
//! Not mirrored, and why:
//! - gates other than the window (pauses, blockers, the PDB pre-flight and re-check): read-only
//!   checks that only keep a node from starting, as the window does (which is modelled);
//! - the drain plan's refusals and the "pods left" check before the first trigger: reads of the
//!   node's pods; a node that finished its drain is drained;
//! - Events, metrics, logs, `baton.dev/waiting`, the drain-progress annotations and the
//!   pre/post-reboot node labels;
//! - `--drain-delay` and `--reboot-delay` (off by default): waits within a phase, while the
//!   node holds its Leases;
//! - API errors other than the fault `RenewFails`: a failing step is retried and, past
//!   `--stall-timeout`, stops the renewals (a documented limit, like a killed agent);
//! - SIGTERM's release of an idle holder (`Agent::stop`): agents are killed (SIGKILL), the
//!   harder case.

use baton::flag::Flag;
use baton::lease::{self, HolderNode, LeaseView, Observer};
use baton::machine::{self, AbortReason, NodeState, Observation, Phase, Step, Wait};

use crate::config::{Fix, TICK};
use crate::props::{self, Violation};
use crate::state::{
    Agent, Drain, Hold, HolderSnap, HolderW, KMode, NodeObj, Obs, Pc, Rec, Seen, Src, State, Tenure,
};
use crate::{Model, age_of, ago, wall_now};

/// What a transition says for a trace.
#[derive(Debug, Default)]
pub struct Notes {
    /// Whether to record (only when a trace is printed).
    pub on: bool,
    /// What happened.
    pub lines: Vec<String>,
}

impl Notes {
    /// Records `f()` when on.
    pub fn say(&mut self, f: impl FnOnce() -> String) {
        if self.on {
            self.lines.push(f());
        }
    }
}

/// Why a Lease may be taken, for the ghost that tells the README's limits from baton's own
/// decisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Takeable {
    /// Free (released, or never held as far as this agent saw).
    Free,
    /// Its holder stopped renewing for the TTL, on this agent's clock.
    Ttl,
    /// Its holder's Node is gone, NotReady too long, or (deleted Lease) out of its cycle.
    HolderGone,
}

/// `Slots::judge`'s result.
#[derive(Debug, Clone)]
pub struct Judged {
    /// The Leases this node needs, judged together.
    pub view: LeaseView,
    /// The Lease an Acquire takes (global index).
    pub take: usize,
    /// Holds some of what it needs, not all (or a Lease it lost).
    pub partly_held: bool,
    /// Why `take` may be taken (ghost).
    pub why: Takeable,
}

/// Why the reboot window keeps a cycle from starting, from the real `Window::check`: a window
/// open every day from 02:00 to 04:00 UTC, asked at 03:00 (open) or at 12:00 (closed).
pub fn window_gate(closed: bool) -> Option<String> {
    use baton::window::Window;
    use jiff::civil::{Time, Weekday};
    static WINDOW: std::sync::OnceLock<Window> = std::sync::OnceLock::new();
    let window = WINDOW.get_or_init(|| {
        let days = [
            Weekday::Monday,
            Weekday::Tuesday,
            Weekday::Wednesday,
            Weekday::Thursday,
            Weekday::Friday,
            Weekday::Saturday,
            Weekday::Sunday,
        ];
        let at = |h| Time::new(h, 0, 0, 0).unwrap_or_default();
        Window::new(&days, at(2), at(4), jiff::tz::TimeZone::UTC, &[])
    });
    let hour = if closed { 12 } else { 3 };
    let now = jiff::Timestamp::from_second(1_767_225_600 + hour * 3600).unwrap_or_default();
    window.check(now).err().map(|why| why.to_string())
}

/// The flag as `flag::combine` makes it (no manual-request annotation in the model).
pub fn flag_of(src: Src) -> Flag {
    let source = match src {
        Src::Required => Flag::Required("sentinel".into()),
        Src::NotRequired => Flag::NotRequired,
        Src::Unknown => Flag::Unknown("sentinel check failed".into()),
    };
    baton::flag::combine(source, None)
}

/// The real `lease::Observer` in the state `o` records.
pub fn observer(m: &Model, o: &Obs) -> Observer {
    let t = ago(o.age);
    let mut ob = Observer::new(t);
    if let Some(r) = o.last {
        ob.observe(Some(&m.record(r)), t);
        if o.deleted {
            ob.observe(None, t);
        }
    }
    ob
}

/// The state an observer is in.
pub fn obs_of(m: &Model, ob: &Observer, me: usize) -> Obs {
    let age = ob
        .expires_at(&m.names[me], m.cfg.ttl)
        .map_or(0, |e| age_of(e - m.cfg.ttl).min(m.caps.obs));
    Obs {
        last: ob.last().map(|r| m.rec_of(r)),
        age,
        deleted: ob.deleted(),
    }
}

/// `HolderWatch::observe`: what is known of the holder's Node now (an unreadable phase counts
/// as mid-cycle; the model's records are always readable).
fn holder_node(w: &mut HolderW) -> HolderNode {
    match w.seen {
        Seen::Unsynced => HolderNode::Unknown,
        Seen::Missing => HolderNode::Missing,
        Seen::Present(s) => {
            if s.ready {
                w.not_ready_age = None;
            } else {
                w.not_ready_age.get_or_insert(0);
            }
            HolderNode::Seen {
                not_ready_since: w.not_ready_age.map(ago),
                phase: s.phase,
            }
        }
    }
}

/// What agent `n`'s holder watch of Lease `l` would show of node `h` now.
pub fn holder_snap(s: &State, h: usize) -> Seen<HolderSnap> {
    match s.nodes[h] {
        None => Seen::Missing,
        Some(o) => Seen::Present(HolderSnap {
            ready: o.ready,
            phase: o.ann.phase,
        }),
    }
}

/// Whether a holder's Node, as `node` shows it, lets its Lease go before its TTL
/// (`Observer::holder_gone`, as `Slots::judge` asks it).
pub fn holder_gone(m: &Model, ob: &Observer, node: HolderNode, takeover: bool) -> bool {
    ob.holder_gone(node, takeover, m.cfg.not_ready, ago(0))
}

/// Mirrors `Slots::judge`: each Lease observed on this agent's clock, "mine" only while its
/// own writes say so (the keeper's tenure), the holder's Node watched while the node wants a
/// Lease, the slot picked, and the needed Leases combined. `None` while a watch has not synced
/// or a Lease naming this node is being proven ours by a renewal.
pub fn judge(m: &Model, s: &mut State, n: usize, wants: bool) -> Option<Judged> {
    let me = &m.names[n];
    let needs = &m.needs[n];
    let revert_tenure = m.cfg.revert == Some(Fix::LeaseLost);
    let mut views = Vec::with_capacity(needs.leases.len());
    let mut why = Vec::with_capacity(needs.leases.len());
    let mut confirming = false;
    let mut stale = false;
    // Every watch synced first (the real loop returns at the first unsynced one, after
    // observing those before it: the same, since it returns `None` anyway and observing the
    // same record twice changes nothing).
    if needs
        .leases
        .iter()
        .any(|&l| s.agents[n].seen[l] == Seen::Unsynced)
    {
        return None;
    }
    for &l in &needs.leases {
        let a = &mut s.agents[n];
        let record = match a.seen[l] {
            Seen::Present(r) => Some(m.record(r)),
            Seen::Missing => None,
            Seen::Unsynced => return None,
        };
        let mut ob = observer(m, &a.obs[l]);
        ob.observe(record.as_ref(), ago(0));
        let mut view = ob.view(me, m.cfg.ttl, ago(0));
        let mut reason = Takeable::Free;
        if view == LeaseView::Mine && !revert_tenure {
            let k = &mut a.keep[l];
            match k.tenure {
                Tenure::Held => {}
                Tenure::Lost => {
                    view = LeaseView::Free;
                    stale = true;
                }
                Tenure::NotHeld => {
                    if k.hold == Hold::No {
                        k.hold = Hold::Seen;
                        keeper_hold(k);
                    }
                    confirming = true;
                }
            }
        }
        match &mut view {
            LeaseView::Held { holder, expired } if wants => {
                let h = m.names.iter().position(|x| x == holder).unwrap_or(0);
                let w = a.holder[l].get_or_insert(HolderW {
                    holder: Model::id(h),
                    ..HolderW::default()
                });
                if usize::from(w.holder) != h {
                    *w = HolderW {
                        holder: Model::id(h),
                        ..HolderW::default()
                    };
                }
                let node = holder_node(w);
                let takeover = needs.leases[..needs.group].contains(&l);
                if *expired {
                    reason = Takeable::Ttl;
                } else if holder_gone(m, &ob, node, takeover) {
                    *expired = true;
                    reason = Takeable::HolderGone;
                }
            }
            _ => a.holder[l] = None,
        }
        a.obs[l] = obs_of(m, &ob, n);
        views.push(view);
        why.push(reason);
    }
    if confirming {
        return None;
    }
    let groups = &views[..needs.group];
    let start = lease::start_slot(me, groups.len());
    let slot = lease::pick_slot(groups, start);
    s.agents[n].slot = u8::try_from(slot).unwrap_or(0);
    let needed = needed(m, n, slot);
    let needed_views: Vec<LeaseView> = needed
        .iter()
        .map(|&i| views[local(m, n, i)].clone())
        .collect();
    let (view, decider) = lease::combine(&needed_views);
    let take = decider.map_or(needs.leases[slot], |k| needed[k]);
    Some(Judged {
        partly_held: stale || (view != LeaseView::Mine && needed_views.contains(&LeaseView::Mine)),
        why: why[local(m, n, take)],
        take,
        view,
    })
}

/// The position of global Lease `l` among node `n`'s.
fn local(m: &Model, n: usize, l: usize) -> usize {
    m.needs[n].leases.iter().position(|&x| x == l).unwrap_or(0)
}

/// `Slots::needed`: the control-plane Lease first, then the group slot (global indices).
pub fn needed(m: &Model, n: usize, slot: usize) -> Vec<usize> {
    let needs = &m.needs[n];
    needs.leases[needs.group..]
        .iter()
        .copied()
        .chain([needs.leases[slot]])
        .collect()
}

/// The keeper (`slots::keep`) reacting to a new value of its hold channel.
pub fn keeper_hold(k: &mut crate::state::Keeper) {
    match (k.mode, k.hold) {
        (KMode::Waiting, Hold::Written) | (KMode::InLost, Hold::Written) => {
            k.tenure = Tenure::Held;
            k.mode = KMode::Holding;
            k.age = 0;
            k.due_now = false;
        }
        (KMode::Waiting, Hold::Seen) => {
            k.mode = KMode::Holding;
            k.age = 0;
            k.due_now = true;
        }
        (KMode::Holding, Hold::No) => {
            k.tenure = Tenure::NotHeld;
            k.mode = KMode::Waiting;
        }
        (KMode::Holding, Hold::Written) => {
            k.tenure = Tenure::Held;
            k.age = 0;
            k.due_now = false;
        }
        (KMode::InLost, Hold::No) => k.tenure = Tenure::NotHeld,
        (KMode::Waiting, Hold::No) | (KMode::Holding, Hold::Seen) | (KMode::InLost, Hold::Seen) => {
        }
    }
}

/// A tick on keeper `k`'s clock (`slots::keep`'s renew loop): a keeper that has not renewed
/// for the renew deadline (`last_ok.elapsed() > deadline`, `cap` ticks) loses its hold, unless
/// the deadline is reverted (`deadline` false). Whether the main loop must decide again.
pub fn keeper_tick(k: &mut crate::state::Keeper, cap: u8, deadline: bool) -> bool {
    k.tried = false;
    if k.mode != KMode::Holding {
        return false;
    }
    k.age = k.age.saturating_add(1).min(cap);
    if k.age >= cap && deadline {
        k.tenure = Tenure::Lost;
        k.mode = KMode::InLost;
        return true;
    }
    false
}

/// Whether keeper `k` must renew before the clock ticks again (it renews at least once a tick
/// while it holds, and at once after a `Seen`).
pub fn renewal_due(k: &crate::state::Keeper) -> bool {
    k.mode == KMode::Holding && !k.tried && (k.due_now || k.age >= 1)
}

/// One renewal by agent `n`'s keeper of Lease `l` (`slots::keep`'s `lease.renew()`): the hold is
/// proven, or lost to another holder (or a deleted Lease).
pub fn keeper_renew(m: &Model, s: &mut State, n: usize, l: usize, notes: &mut Notes) {
    let fresh = s.fresh_tag(l, m.k);
    let a = &mut s.agents[n];
    let k = &mut a.keep[l];
    k.tried = true;
    k.due_now = false;
    match &mut s.leases[l] {
        Some(r) if r.holder == Some(Model::id(n)) => {
            r.renew = Some(fresh);
            k.age = 0;
            if k.tenure != Tenure::Held {
                k.tenure = Tenure::Held;
                a.wake = true;
            }
            notes.say(|| format!("{}'s keeper renewed {}", m.names[n], m.lease_names[l]));
        }
        other => {
            let by = other.and_then(|r| r.holder);
            k.tenure = Tenure::Lost;
            k.mode = KMode::InLost;
            a.wake = true;
            notes.say(|| {
                format!(
                    "{}'s keeper finds {} {}: the hold is lost",
                    m.names[n],
                    m.lease_names[l],
                    by.map_or("released or deleted".to_owned(), |h| format!(
                        "held by {}",
                        m.names[usize::from(h)]
                    ))
                )
            });
        }
    }
}

/// Mirrors `Agent::decide_and_act` up to the step's first API call: the Node and the Leases
/// as this agent last saw them, the flag as last checked, the boot ID read now, the Leases
/// judged, the health gate, then `machine::next_step`, the drain stopped unless it says
/// Drain, and the step carried out.
pub fn decide(m: &Model, s: &mut State, n: usize, notes: &mut Notes) -> Result<(), Violation> {
    s.agents[n].wake = false;
    let node = match s.agents[n].node {
        Seen::Present(o) => o,
        // "node not found" or not synced yet: wait.
        Seen::Missing | Seen::Unsynced => return Ok(()),
    };
    let state = m.node_state(&node.ann);
    let boot_id = Model::boot_id(s.hosts[n].boot);
    let flag = flag_of(s.agents[n].flag);
    let wants = matches!(flag, Flag::Required(_)) || state.phase != Phase::Idle;
    let Some(judged) = judge(m, s, n, wants) else {
        return Ok(());
    };
    // `health::settling`, for an idle holder right after its reboot: the settle time, then its
    // DaemonSet pods Ready (in the model: the Node Ready).
    let settling = if state.phase == Phase::Idle && judged.view == LeaseView::Mine {
        let last = node
            .ann
            .last_reboot_age
            .map(|a| wall_now() - TICK * u32::from(a));
        match baton::agent::due(last, wall_now(), m.cfg.settle) {
            baton::agent::Due::No => None,
            baton::agent::Due::Settling(_) => Some("settling after the reboot"),
            baton::agent::Due::Check if !node.ready => Some("DaemonSet pods not Ready"),
            baton::agent::Due::Check => None,
        }
    } else {
        None
    };
    // `Gates::paused`: the window, checked by `window::Window::check` at a time inside or
    // outside it (no pause switch, no blockers in the model).
    let gate = window_gate(s.window_closed);
    let a = &s.agents[n];
    let flag_unknown_for = TICK * u32::from(a.unknown_age.unwrap_or(0));
    let step = machine::next_step(&Observation {
        flag: &flag,
        state: &state,
        node_ready: node.ready,
        node_unschedulable: node.unschedulable,
        boot_id: Some(&boot_id),
        flag_unknown_for,
        // The boot ID is always readable in the model.
        boot_unknown_for: std::time::Duration::ZERO,
        lease: &judged.view,
        now: wall_now(),
        limits: m.limits(),
        gate: gate.as_deref(),
        partly_held: judged.partly_held,
        settling,
    });
    props::could_not_check(m, n, &flag, &step)?;
    if !matches!(step, Step::Wait(_)) {
        notes.say(|| {
            format!(
                "{} decides {step:?} (phase {}, lease {:?})",
                m.names[n],
                state.phase.as_str(),
                judged.view
            )
        });
    }
    if step != Step::Drain && s.agents[n].drain != Drain::None {
        s.agents[n].drain = Drain::None;
        notes.say(|| format!("{}'s drain is cancelled", m.names[n]));
    }
    act(m, s, n, step, &state, &judged, notes)
}

/// Mirrors `Agent::act`: one function per step (`steps.rs`), up to its first API call.
fn act(
    m: &Model,
    s: &mut State,
    n: usize,
    step: Step,
    state: &NodeState,
    judged: &Judged,
    notes: &mut Notes,
) -> Result<(), Violation> {
    match step {
        Step::Wait(w) => {
            if matches!(w, Wait::LeaseHeld(_)) {
                // Nothing: the Lease's holder is waited for.
            }
            Ok(())
        }
        Step::Acquire => {
            acquire(m, s, n, judged, notes);
            s.agents[n].wake = true;
            Ok(())
        }
        Step::Release => {
            start_release(m, s, n);
            continue_step(m, s, n, notes)
        }
        Step::Cordon { cordon } => cordon_node(m, s, n, state, cordon, notes),
        Step::Drain => drain(m, s, n, state, notes),
        Step::Reboot => {
            // `Agent::reboot`: the pods check before the first trigger is a read (not modelled);
            // then the fence, one renewal per needed Lease.
            let a = &mut s.agents[n];
            a.fenced = 0;
            if m.cfg.revert == Some(Fix::Fence) {
                a.pc = Pc::Record;
            } else {
                a.pc = Pc::Fence(0);
            }
            a.pc_age = 0;
            continue_step(m, s, n, notes)
        }
        Step::Finish { uncordon, counted } => {
            // `Agent::finish`: state cleared, last reboot recorded, uncordon, in one PATCH.
            let next = state.rebooted(counted);
            let ann = m.ann_of(&next, Some(0));
            write_node(m, s, n, ann, uncordon.then_some(false), notes)?;
            s.agents[n].wake = true;
            Ok(())
        }
        Step::Abort { uncordon, reason } => abort(m, s, n, state, uncordon, reason, notes),
        Step::ResetHistory => {
            let next = NodeState {
                consecutive_reboots: 0,
                ..state.clone()
            };
            let ann = m.ann_of(&next, current_last_reboot(s, n));
            write_node(m, s, n, ann, None, notes)?;
            s.agents[n].wake = true;
            Ok(())
        }
    }
}

/// The last-reboot time on the Node as this agent sees it (a state write keeps it).
fn current_last_reboot(s: &State, n: usize) -> Option<u8> {
    match s.agents[n].node {
        Seen::Present(o) => o.ann.last_reboot_age,
        _ => None,
    }
}

/// Mirrors `Slots::acquire` and `LeaseClient::acquire`: take the Lease if it is free, ours, or
/// still exactly the record this agent judged; otherwise read it again.
fn acquire(m: &Model, s: &mut State, n: usize, judged: &Judged, notes: &mut Notes) {
    let l = judged.take;
    let me = Model::id(n);
    let obs = s.agents[n].obs[l];
    let judged_rec = if obs.deleted { None } else { obs.last };
    let current = s.leases[l];
    let takeable = match current {
        None => true,
        Some(r) => match r.holder {
            None => true,
            Some(h) if h == me => true,
            Some(_) => judged_rec == Some(r),
        },
    };
    if !takeable {
        // HeldByOther: record the Lease as it is now.
        s.agents[n].seen[l] = current.map_or(Seen::Missing, Seen::Present);
        notes.say(|| {
            format!(
                "{} tries to take {}: another node was first",
                m.names[n], m.lease_names[l]
            )
        });
        return;
    }
    // Ghost: was the previous holder still in its cycle, and is this one of the documented
    // limits (a takeover at the TTL while the holder could not act; any take of a Lease deleted
    // by hand: its holder acts on it until its next renewal, and a taker may never have seen
    // it held, or see the holder's Node late)?
    let previous = match current {
        Some(r) => r.holder.filter(|&h| h != me),
        None => s.ghost.deleted_holder[l].filter(|&h| h != me),
    };
    if let Some(p) = previous.map(usize::from) {
        // A holder that cannot act, taken over at the TTL, or by the NotReady rule while its
        // Node does not say it is rebooting (its host went down on its own mid-drain).
        let not_rebooting = s.nodes[p].is_none_or(|o| o.ann.phase != Phase::Rebooting);
        let limit = (!props::can_act(m, s, p)
            && (judged.why == Takeable::Ttl
                || (judged.why == Takeable::HolderGone && not_rebooting)))
            || current.is_none();
        if limit && (props::in_cycle(s, p) || s.agents[p].alive) {
            s.ghost.orphan[p] = true;
            notes.say(|| {
                format!(
                    "(a documented limit: {} loses its Lease while it cannot know; not counted)",
                    m.names[p]
                )
            });
        }
    }
    let fresh = s.fresh_tag(l, m.k);
    let rec = Rec {
        holder: Some(me),
        renew: Some(fresh),
    };
    s.leases[l] = Some(rec);
    s.ghost.deleted_holder[l] = None;
    let a = &mut s.agents[n];
    a.keep[l].hold = Hold::Written;
    keeper_hold(&mut a.keep[l]);
    a.keep[l].tenure = Tenure::Held;
    a.seen[l] = Seen::Present(rec);
    notes.say(|| {
        format!(
            "{} takes {}{}",
            m.names[n],
            m.lease_names[l],
            match (previous, judged.why) {
                (Some(p), Takeable::Ttl) => format!(" from {} (expired)", m.names[usize::from(p)]),
                (Some(p), Takeable::HolderGone) =>
                    format!(" from {} (holder gone)", m.names[usize::from(p)]),
                _ => String::new(),
            }
        )
    });
}

/// Mirrors `Slots::release`'s choice: every Lease this node holds by its keeper's tenure or by
/// its last view, else the slot it works with.
fn start_release(m: &Model, s: &mut State, n: usize) {
    let a = &s.agents[n];
    let me = Model::id(n);
    let mut mask = 0u8;
    for &l in &m.needs[n].leases {
        let by_view = matches!(a.seen[l], Seen::Present(r) if r.holder == Some(me));
        if a.keep[l].tenure == Tenure::Held || by_view {
            mask |= 1 << l;
        }
    }
    if mask == 0 {
        mask = 1 << m.needs[n].leases[usize::from(a.slot)];
    }
    let a = &mut s.agents[n];
    a.pc = Pc::Release(mask);
    a.pc_age = 0;
}

/// The next API call of the step in progress (`Agent::reboot`'s fence and record,
/// `Slots::release`'s releases). The trigger is [`trigger`].
pub fn continue_step(
    m: &Model,
    s: &mut State,
    n: usize,
    notes: &mut Notes,
) -> Result<(), Violation> {
    let pc = s.agents[n].pc;
    s.agents[n].pc_age = 0;
    match pc {
        Pc::Idle | Pc::Trigger => Ok(()),
        Pc::Fence(k) => {
            // `Slots::fence`: a Lease not held by the keeper's word, or a renewal that finds
            // another holder, stops the reboot (the step waits).
            let slot = usize::from(s.agents[n].slot);
            let need = needed(m, n, slot);
            let l = need[usize::from(k)];
            if s.agents[n].keep[l].tenure != Tenure::Held {
                s.agents[n].pc = Pc::Idle;
                notes.say(|| {
                    format!(
                        "{}: not rebooting, {} is not held",
                        m.names[n], m.lease_names[l]
                    )
                });
                return Ok(());
            }
            let fresh = s.fresh_tag(l, m.k);
            let me = Model::id(n);
            match &mut s.leases[l] {
                Some(r) if r.holder == Some(me) => {
                    r.renew = Some(fresh);
                    let rec = *r;
                    let a = &mut s.agents[n];
                    a.keep[l].hold = Hold::Written;
                    keeper_hold(&mut a.keep[l]);
                    a.seen[l] = Seen::Present(rec);
                    a.fenced |= 1 << l;
                    a.pc = if usize::from(k) + 1 < need.len() {
                        Pc::Fence(k + 1)
                    } else {
                        Pc::Record
                    };
                    notes.say(|| format!("{} fences: renews {}", m.names[n], m.lease_names[l]));
                }
                _ => {
                    s.agents[n].pc = Pc::Idle;
                    notes.say(|| {
                        format!(
                            "{}: the fence fails on {}: not rebooting",
                            m.names[n], m.lease_names[l]
                        )
                    });
                }
            }
            Ok(())
        }
        Pc::Record => {
            // The attempt and its time, recorded before the trigger.
            let Seen::Present(node) = s.agents[n].node else {
                s.agents[n].pc = Pc::Idle;
                return Ok(());
            };
            let state = m.node_state(&node.ann);
            let next = state.one_more_attempt(wall_now());
            let ann = m.ann_of(&next, node.ann.last_reboot_age);
            if write_node(m, s, n, ann, None, notes)? {
                s.agents[n].pc = Pc::Trigger;
            }
            Ok(())
        }
        Pc::Release(mask) => {
            let Some(l) = (0..m.nl()).find(|l| mask & (1 << l) != 0) else {
                s.agents[n].pc = Pc::Idle;
                s.agents[n].wake = true;
                return Ok(());
            };
            release_one(m, s, n, l, notes);
            let rest = mask & !(1 << l);
            let a = &mut s.agents[n];
            if rest == 0 {
                a.pc = Pc::Idle;
                a.wake = true;
            } else {
                a.pc = Pc::Release(rest);
            }
            Ok(())
        }
    }
}

/// `Slots::release` for one Lease: stop renewing first, then clear the holder if it is this
/// node (`LeaseClient::release`), and keep what the server answered.
fn release_one(m: &Model, s: &mut State, n: usize, l: usize, notes: &mut Notes) {
    let me = Model::id(n);
    let a = &mut s.agents[n];
    a.keep[l].hold = Hold::No;
    keeper_hold(&mut a.keep[l]);
    match &mut s.leases[l] {
        None => {}
        Some(r) if r.holder == Some(me) => {
            *r = Rec::default();
            a.seen[l] = Seen::Present(*r);
            notes.say(|| format!("{} releases {}", m.names[n], m.lease_names[l]));
        }
        Some(r) => a.seen[l] = Seen::Present(*r),
    }
}

/// The trigger (`reboot::trigger`): the host reboots (`reboots`), or the trigger does nothing.
/// The properties of a trigger are checked first.
pub fn trigger(
    m: &Model,
    s: &mut State,
    n: usize,
    reboots: bool,
    notes: &mut Notes,
) -> Result<(), Violation> {
    props::at_trigger(m, s, n)?;
    let a = &mut s.agents[n];
    a.pc = Pc::Idle;
    a.fenced = 0;
    let h = &mut s.hosts[n];
    if reboots && h.power == crate::state::Power::Up {
        h.power = crate::state::Power::GoingDown;
        s.ghost.baton_reboot[n] = true;
    }
    notes.say(|| {
        format!(
            "{} triggers the reboot{}",
            m.names[n],
            if reboots { "" } else { ": nothing happens" }
        )
    });
    Ok(())
}

/// Mirrors `Agent::cordon`: phase draining, whether baton cordons, the boot ID, and the cordon,
/// in one PATCH written only over the Node this decision read (409: read it again, decide
/// again at once).
fn cordon_node(
    m: &Model,
    s: &mut State,
    n: usize,
    state: &NodeState,
    cordon: bool,
    notes: &mut Notes,
) -> Result<(), Violation> {
    let boot = s.hosts[n].boot;
    let next = NodeState {
        phase: Phase::Draining,
        cordoned_by_baton: cordon,
        boot_id_before: Some(Model::boot_id(boot)),
        reboot_attempts: 0,
        triggered_at: None,
        backoff_until: None,
        ..state.clone()
    };
    s.agents[n].wake = true;
    let precondition = m.cfg.revert != Some(Fix::CordonPrecondition);
    if s.nodes[n].is_some() && precondition && !s.agents[n].node_current {
        s.agents[n].node = s.nodes[n].map_or(Seen::Missing, Seen::Present);
        s.agents[n].node_current = true;
        notes.say(|| {
            format!(
                "{}'s cordon meets a changed Node (409): reads it again",
                m.names[n]
            )
        });
        return Ok(());
    }
    let ann = m.ann_of(&next, current_last_reboot(s, n));
    write_node(m, s, n, ann, cordon.then_some(true), notes).map(drop)
}

/// Mirrors `Agent::drain`: start the background drain, or take its result.
fn drain(
    m: &Model,
    s: &mut State,
    n: usize,
    state: &NodeState,
    notes: &mut Notes,
) -> Result<(), Violation> {
    match s.agents[n].drain {
        Drain::None => {
            s.agents[n].drain = Drain::Running;
            notes.say(|| format!("{} starts draining", m.names[n]));
            Ok(())
        }
        Drain::Running => Ok(()),
        Drain::Done(ok) => {
            s.agents[n].drain = Drain::None;
            match machine::after_drain(ok, false, state.cordoned_by_baton) {
                Step::Reboot => {
                    let before = state
                        .boot_id_before
                        .clone()
                        .unwrap_or_else(|| Model::boot_id(s.hosts[n].boot));
                    let next = NodeState {
                        phase: Phase::Rebooting,
                        boot_id_before: Some(before),
                        reboot_attempts: 0,
                        triggered_at: None,
                        ..state.clone()
                    };
                    let ann = m.ann_of(&next, current_last_reboot(s, n));
                    write_node(m, s, n, ann, None, notes)?;
                    s.agents[n].wake = true;
                    Ok(())
                }
                Step::Abort { uncordon, reason } => abort(m, s, n, state, uncordon, reason, notes),
                _ => Ok(()),
            }
        }
    }
}

/// Mirrors `Agent::abort`: idle (keeping the loop guards), back-off if the reason asks, the
/// uncordon, in one PATCH; then the release (next calls).
fn abort(
    m: &Model,
    s: &mut State,
    n: usize,
    state: &NodeState,
    uncordon: bool,
    reason: AbortReason,
    notes: &mut Notes,
) -> Result<(), Violation> {
    let mut next = state.aborted();
    if reason.backs_off() {
        next.backoff_until = Some(m.backoff_until());
    }
    if reason == AbortReason::RebootDidNotHappen {
        next.gave_up_boot_id = Some(Model::boot_id(s.hosts[n].boot));
    }
    notes.say(|| format!("{} aborts: {}", m.names[n], reason.as_str()));
    let ann = m.ann_of(&next, current_last_reboot(s, n));
    if write_node(m, s, n, ann, uncordon.then_some(false), notes)? {
        start_release(m, s, n);
    }
    s.agents[n].wake = true;
    Ok(())
}

/// A PATCH of this node's baton annotations (and the cordon if `unschedulable` is set), kept
/// as the newest Node seen (`Agent::write`). A deleted Node fails the write: the step fails,
/// and the loop tries again (`false`).
fn write_node(
    m: &Model,
    s: &mut State,
    n: usize,
    ann: crate::state::Ann,
    unschedulable: Option<bool>,
    notes: &mut Notes,
) -> Result<bool, Violation> {
    let Some(mut obj) = s.nodes[n] else {
        let a = &mut s.agents[n];
        a.pc = Pc::Idle;
        a.wake = true;
        notes.say(|| format!("{}'s write fails: its Node is gone", m.names[n]));
        return Ok(false);
    };
    if unschedulable == Some(false) && obj.unschedulable {
        props::uncordon(m, s, n)?;
        s.ghost.baton_cordon[n] = false;
    }
    if unschedulable == Some(true) && !obj.unschedulable {
        s.ghost.baton_cordon[n] = true;
    }
    let before: NodeObj = obj;
    obj.ann = ann;
    if let Some(u) = unschedulable {
        obj.unschedulable = u;
    }
    s.nodes[n] = Some(obj);
    let a: &mut Agent = &mut s.agents[n];
    a.node = Seen::Present(obj);
    a.node_current = true;
    notes.say(|| {
        let mut what = Vec::new();
        if before.ann.phase != obj.ann.phase {
            what.push(format!("phase {}", obj.ann.phase.as_str()));
        }
        if before.unschedulable != obj.unschedulable {
            what.push(
                if obj.unschedulable {
                    "cordoned"
                } else {
                    "uncordoned"
                }
                .to_owned(),
            );
        }
        if before.ann.attempts != obj.ann.attempts {
            what.push(format!("reboot attempts {}", obj.ann.attempts));
        }
        if what.is_empty() {
            what.push("annotations".to_owned());
        }
        format!("{} writes its Node: {}", m.names[n], what.join(", "))
    });
    Ok(true)
}
