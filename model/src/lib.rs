//! A model checker for baton's coordination protocol, run over the agent's real pure core.
//!
//! The decisions are baton's own functions, called as the agent calls them:
//! [`baton::machine::next_step`] and [`baton::machine::after_drain`], the Lease
//! [`baton::lease::Observer`] (`observe`, `view`, `holder_gone`), [`baton::lease::combine`],
//! [`baton::lease::pick_slot`], [`baton::lease::start_slot`], [`baton::lease::Coordination`],
//! the trigger-pending rule ([`baton::machine::NodeState::trigger_pending`], inside
//! `next_step`) and the post-reboot health gate ([`baton::agent::due`]). What the shell adds
//! between them and the API server (the order of the API calls in each step, the fence, the
//! keeper's renewals and deadline, the hold judged from the agent's own writes, the release) is
//! mirrored in one module, [`glue`], each part naming the shell function it mirrors.
//!
//! Everything else is the world: the API server with its Leases and Nodes ([`world`]), hosts
//! that reboot (or not), watches that deliver late, clocks that tick, and faults. The checker
//! ([`check`]) explores every interleaving breadth first, checks the safety properties
//! ([`props`]) in every state and on every transition, and, on small configurations, liveness.

pub mod check;
pub mod config;
pub mod glue;
pub mod props;
pub mod state;
pub mod suite;
pub mod world;

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use baton::lease::{self, Coordination, Record};
use baton::machine::{Limits, NodeState};
use tokio::time::Instant;

use config::{Config, TICK};
use state::{Ann, Rec};

/// The agents' `--lock-name`.
const LOCK_NAME: &str = "baton";
/// The zone label (`--group-by-label`).
const ZONE: &str = "topology.kubernetes.io/zone";
/// `--drain-failure-backoff` (the default).
const DRAIN_FAILURE_BACKOFF: Duration = Duration::from_secs(5 * 60);

/// The Leases one node coordinates through.
#[derive(Debug, Clone)]
pub struct Needs {
    /// Its Leases in `Slots` order (group slots, then the control-plane Lease), as global
    /// indices.
    pub leases: Vec<usize>,
    /// How many of them are group slots.
    pub group: usize,
    /// Its group (the base Lease name).
    pub base: String,
}

/// A configuration with everything derived from it once.
#[derive(Debug)]
pub struct Model {
    /// The configuration.
    pub cfg: Config,
    /// How many nodes.
    pub k: usize,
    /// Node names (`n0`, `n1`, ...).
    pub names: Vec<String>,
    /// Lease names, by global index.
    pub lease_names: Vec<String>,
    /// Each node's Leases.
    pub needs: Vec<Needs>,
    /// The age caps and thresholds, in ticks.
    pub caps: Caps,
    /// The renamings of nodes (other than the identity) under which every decision is the same:
    /// permutations of nodes configured alike, with one slot (more slots start from a slot
    /// picked by the node's name).
    pub symmetries: Vec<Vec<usize>>,
}

/// Ages past which nothing decides differently, in ticks.
#[derive(Debug, Clone, Copy)]
pub struct Caps {
    /// A Lease observer's age.
    pub obs: u8,
    /// A keeper's age since its last renewal: the first age past the renew deadline.
    pub keeper: u8,
    /// A holder watch's NotReady age.
    pub not_ready: u8,
    /// The flag's unknown age.
    pub unknown: u8,
    /// A trigger's age.
    pub triggered: u8,
    /// The last reboot's age.
    pub last_reboot: u8,
    /// The drain-failure back-off.
    pub backoff: u8,
}

/// The first whole number of ticks longer than `d`.
fn ticks_past(d: Duration) -> u8 {
    u8::try_from(d.as_secs() / TICK.as_secs() + 1).unwrap_or(u8::MAX)
}

/// The number of ticks that covers `d`.
fn ticks_cover(d: Duration) -> u8 {
    u8::try_from(d.as_secs().div_ceil(TICK.as_secs())).unwrap_or(u8::MAX)
}

/// Every decision happens "now"; stored times are now minus an age.
fn mono_now() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(|| Instant::now() + Duration::from_secs(1_000_000))
}

/// The monotonic instant `age` ticks ago.
pub fn ago(age: u8) -> Instant {
    mono_now() - TICK * u32::from(age)
}

/// Ticks between `t` and now.
pub fn age_of(t: Instant) -> u8 {
    u8::try_from(mono_now().duration_since(t).as_secs() / TICK.as_secs()).unwrap_or(u8::MAX)
}

/// The wall clock now (every host's: the model's wall times are ages too).
pub fn wall_now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(2_000_000_000)
}

/// The renew deadline, as `slots::Slots::start` computes it from `RENEW_DEADLINE_SHARE` (⅔).
pub fn renew_deadline(ttl: Duration) -> Duration {
    ttl * 2 / 3
}

/// Every permutation of the nodes that maps each node to one configured alike, but the
/// identity; none with more than one slot.
fn symmetries(cfg: &Config) -> Vec<Vec<usize>> {
    let k = cfg.nodes.len();
    if cfg.concurrency != 1 {
        return Vec::new();
    }
    let alike = |a: usize, b: usize| {
        let (x, y) = (&cfg.nodes[a], &cfg.nodes[b]);
        x.zone == y.zone && x.control_plane == y.control_plane && x.flagged == y.flagged
    };
    let mut all = vec![Vec::new()];
    for i in 0..k {
        all = all
            .into_iter()
            .flat_map(|p: Vec<usize>| {
                (0..k)
                    .filter(|j| !p.contains(j) && alike(i, *j))
                    .map(|j| {
                        let mut q = p.clone();
                        q.push(j);
                        q
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
    }
    all.retain(|p| p.iter().enumerate().any(|(i, &j)| i != j));
    all
}

impl Model {
    /// Derives the topology with baton's own functions: each node's Leases from its labels
    /// (`Coordination::for_node`, `slot_names`, `control_plane_lock_name`).
    pub fn new(cfg: Config) -> Self {
        let k = cfg.nodes.len();
        assert!(k <= state::MAX_NODES, "at most {} nodes", state::MAX_NODES);
        let names: Vec<String> = (0..k).map(|i| format!("n{i}")).collect();
        let mut lease_names: Vec<String> = Vec::new();
        let mut needs = Vec::new();
        for n in &cfg.nodes {
            let mut labels = BTreeMap::new();
            labels.insert(ZONE.to_owned(), n.zone.to_owned());
            if n.control_plane {
                labels.insert(lease::CONTROL_PLANE_LABELS[0].to_owned(), String::new());
            }
            let c = Coordination::for_node(
                LOCK_NAME,
                cfg.concurrency,
                cfg.group_by_zone.then_some(ZONE),
                cfg.serialize_control_plane,
                &labels,
            );
            let mut mine = lease::slot_names(&c.base, cfg.concurrency);
            let group = mine.len();
            if c.control_plane {
                mine.push(lease::control_plane_lock_name(LOCK_NAME));
            }
            let leases = mine
                .iter()
                .map(|name| {
                    lease_names
                        .iter()
                        .position(|l| l == name)
                        .unwrap_or_else(|| {
                            lease_names.push(name.clone());
                            lease_names.len() - 1
                        })
                })
                .collect();
            needs.push(Needs {
                leases,
                group,
                base: c.base,
            });
        }
        assert!(
            lease_names.len() <= state::MAX_LEASES,
            "at most {} Leases",
            state::MAX_LEASES
        );
        let caps = Caps {
            obs: ticks_past(cfg.ttl.max(cfg.not_ready)),
            keeper: ticks_past(renew_deadline(cfg.ttl)),
            not_ready: ticks_past(cfg.not_ready),
            unknown: ticks_cover(cfg.stall),
            triggered: ticks_cover(baton::agent::REBOOT_WAIT),
            // `health::due`'s window is 30 minutes after the settle time.
            last_reboot: ticks_past(cfg.settle + Duration::from_secs(30 * 60)),
            backoff: ticks_cover(DRAIN_FAILURE_BACKOFF),
        };
        let symmetries = symmetries(&cfg);
        Model {
            symmetries,
            k,
            names,
            lease_names,
            needs,
            caps,
            cfg,
        }
    }

    /// How many Leases.
    pub fn nl(&self) -> usize {
        self.lease_names.len()
    }

    /// The time limits `next_step` gets, as the shell passes them (`Agent::decide_and_act`).
    pub fn limits(&self) -> Limits {
        Limits {
            max_reboot_attempts: self.cfg.max_reboot_attempts,
            reboot_wait: baton::agent::REBOOT_WAIT,
            stall: self.cfg.stall,
        }
    }

    /// A boot number as a boot ID.
    pub fn boot_id(boot: u8) -> String {
        format!("boot-{boot}")
    }

    /// The annotations as the `NodeState` the agent reads from them.
    pub fn node_state(&self, a: &Ann) -> NodeState {
        let now = wall_now();
        NodeState {
            phase: a.phase,
            cordoned_by_baton: a.cordoned_by_baton,
            boot_id_before: a.boot_before.map(Model::boot_id),
            reboot_attempts: u32::from(a.attempts),
            triggered_at: a.triggered_age.map(|t| now - TICK * u32::from(t)),
            backoff_until: (a.backoff_left > 0).then(|| now + TICK * u32::from(a.backoff_left)),
            dry_run_boot_id: None,
            gave_up_boot_id: a.gave_up.map(Model::boot_id),
            consecutive_reboots: u32::from(a.consecutive),
        }
    }

    /// The annotations that record `s` (keeping the last reboot's time, written separately).
    pub fn ann_of(&self, s: &NodeState, last_reboot_age: Option<u8>) -> Ann {
        let now = wall_now();
        let boot = |id: &Option<String>| {
            id.as_deref()
                .and_then(|b| b.strip_prefix("boot-"))
                .and_then(|b| b.parse().ok())
        };
        let max = u8::try_from(self.cfg.max_reboot_attempts).unwrap_or(u8::MAX);
        Ann {
            phase: s.phase,
            cordoned_by_baton: s.cordoned_by_baton,
            boot_before: boot(&s.boot_id_before),
            attempts: u8::try_from(s.reboot_attempts.min(u32::from(max))).unwrap_or(max),
            triggered_age: s.triggered_at.map(|t| {
                let age = now
                    .duration_since(t)
                    .map_or(0, |d| d.as_secs() / TICK.as_secs());
                u8::try_from(age)
                    .unwrap_or(u8::MAX)
                    .min(self.caps.triggered)
            }),
            backoff_left: s.backoff_until.map_or(0, |t| {
                let left = t
                    .duration_since(now)
                    .map_or(0, |d| d.as_secs().div_ceil(TICK.as_secs()));
                u8::try_from(left).unwrap_or(u8::MAX).min(self.caps.backoff)
            }),
            gave_up: boot(&s.gave_up_boot_id),
            consecutive: u8::try_from(s.consecutive_reboots.min(u32::from(max))).unwrap_or(max),
            last_reboot_age,
        }
    }

    /// The wall time of the back-off after a failed drain, from now.
    pub fn backoff_until(&self) -> SystemTime {
        wall_now() + DRAIN_FAILURE_BACKOFF
    }

    /// A Lease record as `lease::Record::from_lease` reads it.
    pub fn record(&self, r: Rec) -> Record {
        Record {
            holder: r.holder.map(|h| self.names[usize::from(h)].clone()),
            renew_time: r.renew.map(|t| format!("r{t}")),
            duration: r.holder.map(|_| self.cfg.ttl),
        }
    }

    /// The model's record for a `lease::Record`.
    pub fn rec_of(&self, r: &Record) -> Rec {
        Rec {
            holder: r
                .holder
                .as_ref()
                .and_then(|h| self.names.iter().position(|n| n == h))
                .and_then(|i| u8::try_from(i).ok()),
            renew: r
                .renew_time
                .as_deref()
                .and_then(|t| t.strip_prefix('r'))
                .and_then(|t| t.parse().ok()),
        }
    }

    /// A node index as a `u8` (configurations have at most [`state::MAX_NODES`]).
    pub fn id(n: usize) -> u8 {
        u8::try_from(n).unwrap_or(u8::MAX)
    }
}
