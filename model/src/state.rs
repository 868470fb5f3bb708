//! The model's state: the API server (Nodes, Leases), each host, each agent's memory (its
//! possibly stale copies of what it watches, its Lease observers and keepers, the step it is in),
//! and ghost variables that only the properties read.
//!
//! Times are ages in ticks, capped where every larger age decides the same way, so the state
//! space is finite. Lease renewals are tags compared only for equality, renumbered in a fixed
//! order after every transition (see [`State::canon`]), so two states that differ only in tag
//! names are one.

use baton::machine::Phase;

/// Most nodes a configuration may have.
pub const MAX_NODES: usize = 3;
/// Most Leases a configuration may have.
pub const MAX_LEASES: usize = 3;

/// The maintenance flag's source on a host (the sentinel).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Src {
    /// No reboot needed.
    #[default]
    NotRequired,
    /// Reboot required.
    Required,
    /// The check fails ("could not check").
    Unknown,
}

/// A Lease's record on the API server: its holder and a renewal tag (`None`: released).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Rec {
    /// The holder (a node index).
    pub holder: Option<u8>,
    /// The `renewTime` written with it, as a tag.
    pub renew: Option<u8>,
}

/// baton's annotations on a Node (`machine::NodeState`), with times as ages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Ann {
    /// `baton.dev/phase`.
    pub phase: Phase,
    /// `baton.dev/cordoned`.
    pub cordoned_by_baton: bool,
    /// `baton.dev/boot-id-before` (a boot number).
    pub boot_before: Option<u8>,
    /// `baton.dev/reboot-attempts` (capped at the maximum).
    pub attempts: u8,
    /// Ticks since `baton.dev/reboot-triggered-at` (capped once the wait is over).
    pub triggered_age: Option<u8>,
    /// Ticks left of `baton.dev/backoff-until` (0: none or passed).
    pub backoff_left: u8,
    /// `baton.dev/gave-up-boot-id`.
    pub gave_up: Option<u8>,
    /// `baton.dev/consecutive-reboots` (capped at the maximum).
    pub consecutive: u8,
    /// Ticks since `baton.dev/last-reboot` (capped once the health gate no longer applies).
    pub last_reboot_age: Option<u8>,
}

/// A Node object as the API server has it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct NodeObj {
    /// baton's annotations.
    pub ann: Ann,
    /// `spec.unschedulable`.
    pub unschedulable: bool,
    /// The Ready condition.
    pub ready: bool,
}

/// A host's power.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Power {
    /// Running.
    #[default]
    Up,
    /// A reboot is under way (a trigger was accepted, or it reboots on its own): it may go down
    /// at any moment.
    GoingDown,
    /// Down, rebooting (for as long as its firmware and disks take).
    Down,
}

/// A host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Host {
    /// The boot number (the boot ID).
    pub boot: u8,
    /// The sentinel.
    pub flag: Src,
    /// Its power.
    pub power: Power,
}

/// A watched object as the agent last saw it (`agent::watch::Seen`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Seen<T> {
    /// Not synced yet.
    #[default]
    Unsynced,
    /// Does not exist.
    Missing,
    /// As seen.
    Present(T),
}

/// What an agent knows of another node's Node, through a holder watch (`HolderWatch`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct HolderSnap {
    /// Ready.
    pub ready: bool,
    /// Its `baton.dev/phase`.
    pub phase: Phase,
}

/// A holder watch: on whom, what it shows, and since when (ticks) it has shown NotReady.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct HolderW {
    /// The holder watched.
    pub holder: u8,
    /// What the watch shows.
    pub seen: Seen<HolderSnap>,
    /// Ticks since the watch first showed it NotReady.
    pub not_ready_age: Option<u8>,
}

/// `lease::Observer`'s state: the last record, ticks since it last changed, whether deleted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Obs {
    /// The last record observed (`Some(Rec::default())` for a Lease seen missing, never held).
    pub last: Option<Rec>,
    /// Ticks since `changed_at` (kept only while another node holds it: otherwise unused).
    pub age: u8,
    /// Deleted while held.
    pub deleted: bool,
}

/// `slots::Tenure`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Tenure {
    /// Not held.
    #[default]
    NotHeld,
    /// Held, renewed within the deadline.
    Held,
    /// Lost.
    Lost,
}

/// `slots::Hold`: what the main loop told the keeper.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Hold {
    /// Not held.
    #[default]
    No,
    /// Written by this agent (a take or a renewal).
    Written,
    /// Names this node but this process did not write it: renew at once to prove it.
    Seen,
}

/// Where a keeper task (`slots::keep`) is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum KMode {
    /// Waiting for a hold (the `'held` loop's first part).
    #[default]
    Waiting,
    /// Renewing (the inner loop).
    Holding,
    /// In `lost()`: waiting for a new take.
    InLost,
}

/// A keeper.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Keeper {
    /// The hold channel's value.
    pub hold: Hold,
    /// The tenure channel's value.
    pub tenure: Tenure,
    /// Where the task is.
    pub mode: KMode,
    /// Ticks since `last_ok`.
    pub age: u8,
    /// A renewal is due at once (after a `Seen`), not at the next interval.
    pub due_now: bool,
    /// A renewal was attempted since the last tick.
    pub tried: bool,
}

/// The background drain (`steps::DrainRun`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Drain {
    /// None.
    #[default]
    None,
    /// Evicting.
    Running,
    /// Finished: drained, or failed.
    Done(bool),
}

/// The API call a step in progress makes next (`steps.rs`: one per call).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Pc {
    /// No step in progress.
    #[default]
    Idle,
    /// `Agent::reboot`: the fence renews the `k`-th needed Lease next.
    Fence(u8),
    /// `Agent::reboot`: records the attempt and the trigger time.
    Record,
    /// `Agent::reboot`: triggers.
    Trigger,
    /// `Slots::release`: releases these Leases (a bit mask), one call each.
    Release(u8),
}

/// An agent's memory (lost when it is killed).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Agent {
    /// Running.
    pub alive: bool,
    /// Its own Node as last seen (`Agent::node`).
    pub node: Seen<NodeObj>,
    /// That copy is the server's current version (a write with its resourceVersion succeeds).
    pub node_current: bool,
    /// Each Lease as last seen (`Slot::seen`), by global Lease index.
    pub seen: [Seen<Rec>; MAX_LEASES],
    /// Each Lease's observer.
    pub obs: [Obs; MAX_LEASES],
    /// Each Lease's keeper.
    pub keep: [Keeper; MAX_LEASES],
    /// Each Lease's holder watch.
    pub holder: [Option<HolderW>; MAX_LEASES],
    /// `Slots::slot`: the group slot it works with (an index among its group slots).
    pub slot: u8,
    /// The flag as last checked (`Agent::source_flag`).
    pub flag: Src,
    /// Ticks since the flag has been unknown (`flag_unknown_since`), capped at the stall limit.
    pub unknown_age: Option<u8>,
    /// The background drain.
    pub drain: Drain,
    /// The step in progress.
    pub pc: Pc,
    /// Ticks since the last API call of the step in progress.
    pub pc_age: u8,
    /// Something it decides on changed since it last decided (a watch, a keeper's verdict, the
    /// drain, a step that asks to decide again at once): the loop decides again within the tick.
    pub wake: bool,
    /// Ghost: the Leases the fence renewed in the step in progress (a bit mask).
    pub fenced: u8,
}

/// Ghost variables, read only by the properties.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Ghost {
    /// Faults left in this run's budget.
    pub faults_left: u8,
    /// A human cordoned the node (and nobody uncordoned it since).
    pub human_cordon: [bool; MAX_NODES],
    /// baton's cordon is on the node (baton set `unschedulable`, nobody cleared it since).
    pub baton_cordon: [bool; MAX_NODES],
    /// Reboots of the host since its flag was last set (a request is served by one).
    pub boots_since_request: [u8; MAX_NODES],
    /// The host is down or going down because baton triggered it.
    pub baton_reboot: [bool; MAX_NODES],
    /// The node lost its Lease to a takeover at the TTL while its agent could not act, or to
    /// an agent that never saw the Lease before it was deleted by hand: the README's documented
    /// limits. Cleared once its cycle is over.
    pub orphan: [bool; MAX_NODES],
    /// The holder of a Lease deleted by hand, while the Lease stays deleted.
    pub deleted_holder: [Option<u8>; MAX_LEASES],
}

/// The whole state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct State {
    /// The Nodes (`None`: deleted).
    pub nodes: [Option<NodeObj>; MAX_NODES],
    /// The Leases (`None`: does not exist).
    pub leases: [Option<Rec>; MAX_LEASES],
    /// The hosts.
    pub hosts: [Host; MAX_NODES],
    /// The agents.
    pub agents: [Agent; MAX_NODES],
    /// Ghosts.
    pub ghost: Ghost,
    /// The reboot window is closed (`--reboot-days`/`--start-time`/`--end-time`).
    pub window_closed: bool,
}

impl State {
    /// Renumbers renewal tags by first appearance (server, then each agent's copy and
    /// observer), and forgets what no decision can read, so that equivalent states are equal.
    pub fn canon(&mut self, leases: usize, nodes: usize) {
        for l in 0..leases {
            let mut map: [Option<u8>; 32] = [None; 32];
            let mut next = 0u8;
            let mut renum = |t: &mut Option<u8>| {
                if let Some(v) = t {
                    let slot = &mut map[usize::from(*v) % 32];
                    let new = *slot.get_or_insert_with(|| {
                        next += 1;
                        next - 1
                    });
                    *v = new;
                }
            };
            if let Some(r) = &mut self.leases[l] {
                renum(&mut r.renew);
            }
            for a in self.agents.iter_mut().take(nodes) {
                if let Seen::Present(r) = &mut a.seen[l] {
                    renum(&mut r.renew);
                }
                if let Some(r) = &mut a.obs[l].last {
                    renum(&mut r.renew);
                }
            }
        }
        for (i, a) in self.agents.iter_mut().enumerate().take(nodes) {
            if !a.alive {
                *a = Agent::default();
                continue;
            }
            for l in 0..leases {
                let o = &mut a.obs[l];
                // The observer's clock matters only while another node holds the Lease.
                let other = o
                    .last
                    .and_then(|r| r.holder)
                    .is_some_and(|h| usize::from(h) != i);
                if !other {
                    o.age = 0;
                }
                let k = &mut a.keep[l];
                if k.mode != KMode::Holding {
                    k.age = 0;
                    k.due_now = false;
                    k.tried = false;
                }
            }
            if a.pc == Pc::Idle {
                a.pc_age = 0;
                a.fenced = 0;
            }
        }
    }

    /// This state with node `i` renamed `p[i]` (`p` a permutation of the first `nodes` nodes),
    /// in canonical form.
    pub fn permuted(&self, p: &[usize], leases: usize, nodes: usize) -> State {
        let mut t = *self;
        let map = |h: &mut Option<u8>| {
            if let Some(x) = h {
                *x = u8::try_from(p[usize::from(*x)]).unwrap_or(u8::MAX);
            }
        };
        for (i, &j) in p.iter().enumerate().take(nodes) {
            t.nodes[j] = self.nodes[i];
            t.hosts[j] = self.hosts[i];
            t.agents[j] = self.agents[i];
            t.ghost.human_cordon[j] = self.ghost.human_cordon[i];
            t.ghost.baton_cordon[j] = self.ghost.baton_cordon[i];
            t.ghost.boots_since_request[j] = self.ghost.boots_since_request[i];
            t.ghost.baton_reboot[j] = self.ghost.baton_reboot[i];
            t.ghost.orphan[j] = self.ghost.orphan[i];
        }
        for l in 0..leases {
            if let Some(r) = &mut t.leases[l] {
                map(&mut r.holder);
            }
            map(&mut t.ghost.deleted_holder[l]);
            for a in t.agents.iter_mut().take(nodes) {
                if let Seen::Present(r) = &mut a.seen[l] {
                    map(&mut r.holder);
                }
                if let Some(r) = &mut a.obs[l].last {
                    map(&mut r.holder);
                }
                if let Some(w) = &mut a.holder[l] {
                    w.holder = u8::try_from(p[usize::from(w.holder)]).unwrap_or(u8::MAX);
                }
            }
        }
        t.canon(leases, nodes);
        t
    }

    /// A fresh renewal tag for Lease `l` (renumbered by [`State::canon`]).
    pub fn fresh_tag(&self, l: usize, nodes: usize) -> u8 {
        let mut max = 0u8;
        let mut bump = |t: Option<u8>| {
            if let Some(v) = t {
                max = max.max(v + 1);
            }
        };
        if let Some(r) = self.leases[l] {
            bump(r.renew);
        }
        for a in self.agents.iter().take(nodes) {
            if let Seen::Present(r) = a.seen[l] {
                bump(r.renew);
            }
            if let Some(r) = a.obs[l].last {
                bump(r.renew);
            }
        }
        max
    }
}
