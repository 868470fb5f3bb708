//! The world around the agents: the API server, the hosts, the watches, the clocks and the
//! faults, as small actions that interleave arbitrarily; and the transition function.
//!
//! Watches: each agent's copy of a watched object catches up with the server as an action of
//! its own, at any time, possibly never before a decision, and jumps straight to the current
//! version (a relist, or coalesced events). A watch that delivers an old version late is
//! covered: the agent's copy is a version the server had, and the server's later writes come
//! from others, whose decisions never read this agent's copy.
//!
//! Time: one tick moves every clock by the same amount (monotonic clocks run at one rate;
//! each agent judges from its own observations, made whenever its watches catch up). A tick is
//! refused while someone owes an action that the real system takes within a tick: an agent
//! whose inputs changed decides again; an API call in progress completes (`--api-timeout` is
//! at most a third of `--lock-ttl`); a keeper renews (at least every tick). Agents may still be
//! killed, and hosts stay down, for any number of ticks.

use std::fmt;

use crate::Model;
use crate::config::{Fault, Fix};
use crate::glue::{self, Notes};
use crate::props::Violation;
use crate::state::{Agent, Drain, Pc, Power, Seen, Src, State};

/// One action.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Act {
    /// Every clock ticks.
    Tick,
    /// Agent `n` decides and starts the step (its first API call).
    Decide(u8),
    /// Agent `n` makes the next API call of its step.
    Continue(u8),
    /// Agent `n` triggers its reboot; the host reboots (`true`) or not (fault `NoReboot`).
    Trigger(u8, bool),
    /// Agent `n`'s keeper renews Lease `l`.
    Renew(u8, u8),
    /// Agent `n`'s keeper fails to renew Lease `l` this tick (fault).
    RenewFails(u8, u8),
    /// Agent `n`'s watch of its Node catches up.
    SeeNode(u8),
    /// Agent `n`'s watch of Lease `l` catches up.
    SeeLease(u8, u8),
    /// Agent `n`'s watch of Lease `l`'s holder's Node catches up.
    SeeHolder(u8, u8),
    /// Agent `n` checks the flag (every `--check-interval`).
    CheckFlag(u8),
    /// Agent `n`'s drain ends: drained, or failed (fault `DrainFails`).
    DrainDone(u8, bool),
    /// Host `n` goes down (the agent dies with it; the Node goes NotReady).
    HostDown(u8),
    /// Host `n` comes back with a new boot ID (its sentinel, on tmpfs, is gone).
    HostUp(u8),
    /// Node `n`'s kubelet reports Ready.
    KubeletReady(u8),
    /// The DaemonSet restarts agent `n`.
    Restart(u8),
    /// Fault: agent `n` killed.
    Kill(u8),
    /// Fault: host `n`'s flag becomes this.
    SetFlag(u8, Src),
    /// Fault: node `n` NotReady while up.
    NotReady(u8),
    /// Fault: node `n`'s Node deleted (and the Leases it owns).
    DeleteNode(u8),
    /// Fault: a human cordons node `n`.
    HumanCordon(u8),
    /// Fault: a human uncordons node `n`.
    HumanUncordon(u8),
    /// Fault: Lease `l` deleted by hand.
    DeleteLease(u8),
    /// Fault: host `n` reboots on its own.
    SelfReboot(u8),
    /// Fault: the reboot window closes (`true`) or opens.
    Window(bool),
}

impl Act {
    /// Whether it is a fault (liveness assumes faults eventually stop).
    pub fn is_fault(self) -> bool {
        matches!(
            self,
            Act::Trigger(_, false)
                | Act::RenewFails(..)
                | Act::DrainDone(_, false)
                | Act::Kill(_)
                | Act::SetFlag(..)
                | Act::NotReady(_)
                | Act::DeleteNode(_)
                | Act::HumanCordon(_)
                | Act::HumanUncordon(_)
                | Act::DeleteLease(_)
                | Act::SelfReboot(_)
                | Act::Window(_)
        )
    }

    /// A readable form, with names.
    pub fn show(self, m: &Model) -> String {
        let n = |i: u8| m.names[usize::from(i)].clone();
        let l = |i: u8| m.lease_names[usize::from(i)].clone();
        match self {
            Act::Tick => "⏱ tick (10 min on every clock)".into(),
            Act::Decide(a) => format!("{} decides", n(a)),
            Act::Continue(a) => format!("{} makes its next API call", n(a)),
            Act::Trigger(a, true) => format!("{} triggers its reboot", n(a)),
            Act::Trigger(a, false) => format!("FAULT {}'s reboot trigger does nothing", n(a)),
            Act::Renew(a, x) => format!("{}'s keeper renews {}", n(a), l(x)),
            Act::RenewFails(a, x) => format!("FAULT {}'s renewals of {} fail", n(a), l(x)),
            Act::SeeNode(a) => format!("{}'s Node watch catches up", n(a)),
            Act::SeeLease(a, x) => format!("{}'s watch of {} catches up", n(a), l(x)),
            Act::SeeHolder(a, x) => {
                format!("{}'s watch of {}'s holder Node catches up", n(a), l(x))
            }
            Act::CheckFlag(a) => format!("{} checks its flag", n(a)),
            Act::DrainDone(a, true) => format!("{}'s drain finishes", n(a)),
            Act::DrainDone(a, false) => format!("FAULT {}'s drain fails", n(a)),
            Act::HostDown(a) => format!("host {} goes down", n(a)),
            Act::HostUp(a) => format!("host {} is back with a new boot ID", n(a)),
            Act::KubeletReady(a) => format!("{}'s kubelet reports Ready", n(a)),
            Act::Restart(a) => format!("agent {} (re)starts", n(a)),
            Act::Kill(a) => format!("FAULT agent {} killed", n(a)),
            Act::SetFlag(a, f) => format!("FAULT {}'s flag becomes {f:?}", n(a)),
            Act::NotReady(a) => format!("FAULT {} NotReady", n(a)),
            Act::DeleteNode(a) => format!("FAULT Node {} deleted", n(a)),
            Act::HumanCordon(a) => format!("FAULT a human cordons {}", n(a)),
            Act::HumanUncordon(a) => format!("FAULT a human uncordons {}", n(a)),
            Act::DeleteLease(x) => format!("FAULT Lease {} deleted by hand", l(x)),
            Act::SelfReboot(a) => format!("FAULT host {} reboots on its own", n(a)),
            Act::Window(true) => "FAULT the reboot window closes".into(),
            Act::Window(false) => "FAULT the reboot window opens".into(),
        }
    }
}

impl fmt::Display for Act {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self:?}")
    }
}

/// The initial state: every host up and Ready, flags as configured, agents starting.
pub fn initial(m: &Model) -> State {
    let mut s = State::default();
    for n in 0..m.k {
        s.nodes[n] = Some(crate::state::NodeObj {
            ready: true,
            ..Default::default()
        });
        s.hosts[n].flag = if m.cfg.nodes[n].flagged {
            Src::Required
        } else {
            Src::NotRequired
        };
        restart(&mut s, n);
    }
    s.ghost.faults_left = m.cfg.budget;
    s.canon(m.nl(), m.k);
    s
}

/// A fresh agent process: nothing synced, the flag checked once before it is ready.
fn restart(s: &mut State, n: usize) {
    let flag = s.hosts[n].flag;
    s.agents[n] = Agent {
        alive: true,
        flag,
        unknown_age: (flag == Src::Unknown).then_some(0),
        ..Agent::default()
    };
}

/// Whether the clocks may tick: nobody owes an action due within the tick.
///
/// A holder watch also delivers within the tick: the rule that a rebooting holder keeps its
/// Lease reads the holder's phase from it, and a watch stale for longer than
/// `--lock-holder-not-ready-timeout` defeats it (see the README's limits; the model found it).
///
/// Two of these are assumptions the reboot wait rests on (README: "a trigger is pending for
/// 10 minutes: the host may go down at any moment"): the trigger follows its recorded time
/// within the tick (one Event in between, `--api-timeout` 30 s), and a host that accepted the
/// trigger goes down before the wait has passed.
pub fn may_tick(m: &Model, s: &State) -> bool {
    let agents = (0..m.k).all(|n| {
        let a = &s.agents[n];
        !a.alive
            || !((a.pc == Pc::Idle && a.wake)
                || (a.pc != Pc::Idle && a.pc_age >= 1)
                || a.pc == Pc::Trigger
                || m.needs[n].leases.iter().any(|&l| {
                    glue::renewal_due(&a.keep[l])
                        || a.holder[l]
                            .is_some_and(|w| w.seen != glue::holder_snap(s, usize::from(w.holder)))
                }))
    });
    let hosts = (0..m.k).all(|n| {
        let going = s.hosts[n].power == Power::GoingDown && s.ghost.baton_reboot[n];
        let last_tick = s.nodes[n]
            .and_then(|o| o.ann.triggered_age)
            .is_some_and(|a| a + 1 >= m.caps.triggered);
        !(going && last_tick)
    });
    agents && hosts
}

/// The actions enabled in `s`.
pub fn actions(m: &Model, s: &State, out: &mut Vec<Act>) {
    out.clear();
    let cfg = &m.cfg;
    let left = s.ghost.faults_left;
    if may_tick(m, s) {
        out.push(Act::Tick);
    }
    for n in 0..m.k {
        let id = Model::id(n);
        let a = &s.agents[n];
        let h = &s.hosts[n];
        if a.alive {
            match a.pc {
                Pc::Idle => out.push(Act::Decide(id)),
                Pc::Trigger => {
                    out.push(Act::Trigger(id, true));
                    if cfg.allows(Fault::NoReboot, left) {
                        out.push(Act::Trigger(id, false));
                    }
                }
                _ => out.push(Act::Continue(id)),
            }
            for &l in &m.needs[n].leases {
                let lid = Model::id(l);
                if glue::renewal_due(&a.keep[l]) {
                    out.push(Act::Renew(id, lid));
                    if cfg.allows(Fault::RenewFails, left) {
                        out.push(Act::RenewFails(id, lid));
                    }
                }
                let server = s.leases[l].map_or(Seen::Missing, Seen::Present);
                if a.seen[l] != server {
                    out.push(Act::SeeLease(id, lid));
                }
                if let Some(w) = a.holder[l]
                    && w.seen != glue::holder_snap(s, usize::from(w.holder))
                {
                    out.push(Act::SeeHolder(id, lid));
                }
            }
            let server = s.nodes[n].map_or(Seen::Missing, Seen::Present);
            if a.node != server || !a.node_current {
                out.push(Act::SeeNode(id));
            }
            let unknown = (h.flag == Src::Unknown) != a.unknown_age.is_some();
            if a.flag != h.flag || unknown {
                out.push(Act::CheckFlag(id));
            }
            if a.drain == Drain::Running {
                out.push(Act::DrainDone(id, true));
                if cfg.allows(Fault::DrainFails, left) {
                    out.push(Act::DrainDone(id, false));
                }
            }
            if cfg.allows(Fault::Kill, left) {
                out.push(Act::Kill(id));
            }
        } else if h.power != Power::Down {
            out.push(Act::Restart(id));
        }
        match h.power {
            Power::GoingDown => out.push(Act::HostDown(id)),
            Power::Down => out.push(Act::HostUp(id)),
            Power::Up => {
                if cfg.allows(Fault::SelfReboot, left) {
                    out.push(Act::SelfReboot(id));
                }
            }
        }
        if let Some(node) = s.nodes[n] {
            if !node.ready && h.power != Power::Down {
                out.push(Act::KubeletReady(id));
            }
            if node.ready && h.power == Power::Up && cfg.allows(Fault::NotReady, left) {
                out.push(Act::NotReady(id));
            }
            if cfg.allows(Fault::DeleteNode, left) {
                out.push(Act::DeleteNode(id));
            }
            if !node.unschedulable && cfg.allows(Fault::HumanCordon, left) {
                out.push(Act::HumanCordon(id));
            }
            if node.unschedulable && cfg.allows(Fault::HumanUncordon, left) {
                out.push(Act::HumanUncordon(id));
            }
        }
        if cfg.allows(Fault::Flag, left) {
            for f in [Src::Required, Src::NotRequired, Src::Unknown] {
                if f != h.flag {
                    out.push(Act::SetFlag(id, f));
                }
            }
        }
    }
    if cfg.allows(Fault::Window, left) {
        out.push(Act::Window(!s.window_closed));
    }
    if cfg.allows(Fault::DeleteLease, left) {
        for l in 0..m.nl() {
            if s.leases[l].is_some_and(|r| r.holder.is_some()) {
                out.push(Act::DeleteLease(Model::id(l)));
            }
        }
    }
}

/// The server changed Node `n`: the agent's copy is no longer the current version.
fn node_changed(s: &mut State, n: usize) {
    s.agents[n].node_current = false;
}

/// Applies `act` to `s`. A transition property that fails is the error.
pub fn apply(m: &Model, s: &mut State, act: Act, notes: &mut Notes) -> Result<(), Violation> {
    if act.is_fault() {
        s.ghost.faults_left = s.ghost.faults_left.saturating_sub(1);
    }
    match act {
        Act::Tick => tick(m, s),
        Act::Decide(n) => glue::decide(m, s, usize::from(n), notes)?,
        Act::Continue(n) => glue::continue_step(m, s, usize::from(n), notes)?,
        Act::Trigger(n, reboots) => glue::trigger(m, s, usize::from(n), reboots, notes)?,
        Act::Renew(n, l) => glue::keeper_renew(m, s, usize::from(n), usize::from(l), notes),
        Act::RenewFails(n, l) => {
            let k = &mut s.agents[usize::from(n)].keep[usize::from(l)];
            k.tried = true;
            k.due_now = false;
        }
        Act::SeeNode(n) => {
            let n = usize::from(n);
            let a = &mut s.agents[n];
            a.node = s.nodes[n].map_or(Seen::Missing, Seen::Present);
            a.node_current = true;
            a.wake = true;
        }
        Act::SeeLease(n, l) => {
            let l = usize::from(l);
            let a = &mut s.agents[usize::from(n)];
            a.seen[l] = s.leases[l].map_or(Seen::Missing, Seen::Present);
            a.wake = true;
        }
        Act::SeeHolder(n, l) => {
            let l = usize::from(l);
            let snap = s.agents[usize::from(n)].holder[l]
                .map(|w| glue::holder_snap(s, usize::from(w.holder)));
            let a = &mut s.agents[usize::from(n)];
            if let (Some(w), Some(snap)) = (a.holder[l].as_mut(), snap) {
                w.seen = snap;
                a.wake = true;
            }
        }
        Act::CheckFlag(n) => {
            let n = usize::from(n);
            let flag = s.hosts[n].flag;
            let a = &mut s.agents[n];
            a.flag = flag;
            if flag == Src::Unknown {
                a.unknown_age.get_or_insert(0);
            } else {
                a.unknown_age = None;
            }
            a.wake = true;
        }
        Act::DrainDone(n, ok) => {
            let a = &mut s.agents[usize::from(n)];
            a.drain = Drain::Done(ok);
            a.wake = true;
        }
        Act::HostDown(n) => {
            let n = usize::from(n);
            s.hosts[n].power = Power::Down;
            s.agents[n] = Agent::default();
            if let Some(node) = &mut s.nodes[n] {
                node.ready = false;
                node_changed(s, n);
            }
        }
        Act::HostUp(n) => {
            let n = usize::from(n);
            let h = &mut s.hosts[n];
            h.power = Power::Up;
            h.boot += 1;
            h.flag = Src::NotRequired;
            s.ghost.boots_since_request[n] =
                s.ghost.boots_since_request[n].saturating_add(1).min(2);
            s.ghost.baton_reboot[n] = false;
        }
        Act::KubeletReady(n) => {
            let n = usize::from(n);
            if let Some(node) = &mut s.nodes[n] {
                node.ready = true;
                node_changed(s, n);
            }
        }
        Act::Restart(n) => restart(s, usize::from(n)),
        Act::Kill(n) => s.agents[usize::from(n)] = Agent::default(),
        Act::SetFlag(n, f) => {
            let n = usize::from(n);
            s.hosts[n].flag = f;
            if f == Src::Required {
                s.ghost.boots_since_request[n] = 0;
            }
        }
        Act::NotReady(n) => {
            let n = usize::from(n);
            if let Some(node) = &mut s.nodes[n] {
                node.ready = false;
                node_changed(s, n);
            }
        }
        Act::DeleteNode(n) => {
            let n = usize::from(n);
            s.nodes[n] = None;
            node_changed(s, n);
            // Its Leases are owned by it: the garbage collector deletes them.
            for l in 0..m.nl() {
                if s.leases[l].is_some_and(|r| r.holder == Some(Model::id(n))) {
                    s.leases[l] = None;
                    s.ghost.deleted_holder[l] = Some(Model::id(n));
                }
            }
        }
        Act::HumanCordon(n) => {
            let n = usize::from(n);
            if let Some(node) = &mut s.nodes[n] {
                node.unschedulable = true;
                s.ghost.human_cordon[n] = true;
                node_changed(s, n);
            }
        }
        Act::HumanUncordon(n) => {
            let n = usize::from(n);
            if let Some(node) = &mut s.nodes[n] {
                node.unschedulable = false;
                s.ghost.human_cordon[n] = false;
                s.ghost.baton_cordon[n] = false;
                node_changed(s, n);
            }
        }
        Act::DeleteLease(l) => {
            let l = usize::from(l);
            s.ghost.deleted_holder[l] = s.leases[l].and_then(|r| r.holder);
            s.leases[l] = None;
        }
        Act::SelfReboot(n) => s.hosts[usize::from(n)].power = Power::GoingDown,
        Act::Window(closed) => {
            s.window_closed = closed;
            // The agents' loops wake at the window's edges (`Gates::wake_at`).
            for a in s.agents.iter_mut().take(m.k).filter(|a| a.alive) {
                a.wake = true;
            }
        }
    }
    // Ghost bookkeeping: an orphan is one no more once its cycle is over and its agent no
    // longer believes it holds a Lease it lost.
    for n in 0..m.k {
        if s.ghost.orphan[n] && !crate::props::in_cycle(s, n) && !crate::props::stale_hold(m, s, n)
        {
            s.ghost.orphan[n] = false;
        }
    }
    s.canon(m.nl(), m.k);
    Ok(())
}

/// One tick on every clock: ages grow (capped), keepers past the renew deadline lose their
/// hold, the per-tick renewal attempts reset.
fn tick(m: &Model, s: &mut State) {
    let c = m.caps;
    let bump = |v: &mut u8, cap: u8| *v = v.saturating_add(1).min(cap);
    let lease_lost_reverted = m.cfg.revert == Some(Fix::LeaseLost);
    for n in 0..m.k {
        let a = &mut s.agents[n];
        if !a.alive {
            continue;
        }
        for &l in &m.needs[n].leases {
            bump(&mut a.obs[l].age, c.obs);
            if glue::keeper_tick(&mut a.keep[l], c.keeper, !lease_lost_reverted) {
                a.wake = true;
            }
            if let Some(w) = &mut a.holder[l]
                && let Some(age) = &mut w.not_ready_age
            {
                bump(age, c.not_ready);
            }
        }
        if let Some(u) = &mut a.unknown_age {
            bump(u, c.unknown);
        }
        if a.pc != Pc::Idle {
            bump(&mut a.pc_age, 2);
        }
    }
    let age = |ann: &mut crate::state::Ann| {
        if let Some(t) = &mut ann.triggered_age {
            bump(t, c.triggered);
        }
        ann.backoff_left = ann.backoff_left.saturating_sub(1);
        if let Some(t) = &mut ann.last_reboot_age {
            bump(t, c.last_reboot);
        }
    };
    for n in 0..m.k {
        if let Some(node) = &mut s.nodes[n] {
            age(&mut node.ann);
        }
        // The agent's copy of its Node ages the same way (it is the same record).
        if let Seen::Present(node) = &mut s.agents[n].node {
            age(&mut node.ann);
        }
    }
}

/// The successor of `s` by `act` (canonical), or the violated property.
pub fn next(m: &Model, s: &State, act: Act, notes: &mut Notes) -> Result<State, Violation> {
    let mut t = *s;
    apply(m, &mut t, act, notes)?;
    crate::props::check_state(m, &t)?;
    Ok(t)
}

/// Whether `s` is a goal of liveness: every Node that exists has no reboot request left (each
/// flagged one rebooted), is out of its cycle and not cordoned by baton, and no Lease is held.
pub fn goal(m: &Model, s: &State) -> bool {
    (0..m.k).all(|n| match s.nodes[n] {
        None => true,
        Some(node) => {
            s.hosts[n].flag != Src::Required
                && node.ann.phase == baton::machine::Phase::Idle
                && (!node.unschedulable || s.ghost.human_cordon[n])
                && s.agents[n].drain == Drain::None
        }
    }) && (0..m.nl()).all(|l| s.leases[l].is_none_or(|r| r.holder.is_none()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_initial_state_lets_every_agent_start() {
        let m = Model::new(crate::config::Config::base("t", 3));
        let s = initial(&m);
        let mut acts = Vec::new();
        actions(&m, &s, &mut acts);
        assert!(acts.contains(&Act::Tick));
        assert!(acts.contains(&Act::SeeNode(0)));
        assert_eq!(s.hosts[2].flag, Src::Required);
    }
}
