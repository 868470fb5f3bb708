//! What one check covers: the cluster (nodes, their zones and roles, slots), the agents'
//! settings, the faults that may strike and how many in one run, and which safety fix, if any,
//! the model's glue reverts (to show the checker bites).

use std::fmt;
use std::time::Duration;

/// One abstract tick of every clock. Ten minutes: `--lock-ttl` (30 m) is three ticks, the
/// reboot wait (10 m) and `--stall-timeout` (10 m) one, `--lock-holder-not-ready-timeout` (15 m)
/// a tick and a half. Every API call completes within a tick (`--lock-ttl` ≥ 3 ×
/// `--api-timeout`), and a keeper renews at least once a tick (every `min(--lock-ttl / 3, 1 m)`).
pub const TICK: Duration = Duration::from_secs(600);

/// A fault the environment may inject (each one costs one unit of the run's budget).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Fault {
    /// An agent killed (SIGKILL) between any two API calls; the DaemonSet restarts it.
    Kill,
    /// The maintenance flag set, cleared, or turned "could not check", at any moment.
    Flag,
    /// The Node NotReady while its host is up (kubelet stopped posting status).
    NotReady,
    /// The Node deleted (its Leases go with it: they are owned by it).
    DeleteNode,
    /// A human cordons a schedulable node.
    HumanCordon,
    /// A human uncordons a cordoned node.
    HumanUncordon,
    /// A Lease deleted by hand.
    DeleteLease,
    /// A keeper's renewal fails (the API server answers 5xx or times out) for a whole tick.
    RenewFails,
    /// A reboot trigger that does not reboot the host (same boot ID afterwards).
    NoReboot,
    /// The host reboots on its own.
    SelfReboot,
    /// The drain fails (a PodDisruptionBudget that never allows the eviction, until the timeout).
    DrainFails,
    /// The reboot window closes (or opens again) at any moment.
    Window,
}

impl Fault {
    /// The name used in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Fault::Kill => "kill",
            Fault::Flag => "flag",
            Fault::NotReady => "not-ready",
            Fault::DeleteNode => "delete-node",
            Fault::HumanCordon => "human-cordon",
            Fault::HumanUncordon => "human-uncordon",
            Fault::DeleteLease => "delete-lease",
            Fault::RenewFails => "renew-fails",
            Fault::NoReboot => "no-reboot",
            Fault::SelfReboot => "self-reboot",
            Fault::DrainFails => "drain-fails",
            Fault::Window => "window",
        }
    }
}

/// A safety fix of the shell that the model's glue can revert, one at a time, to show the
/// checker bites on the glue too. (Fixes in the pure core are shown by patching the agent's own
/// code in a scratch copy: see the README.)
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fix {
    /// The hold is judged from the agent's own writes, with a renew deadline, and a Lease lost
    /// stops the drain (`Slots::judge`, `keep`). Reverted: the watch's view alone says "mine".
    LeaseLost,
    /// The fence: every needed Lease is renewed right before the trigger (`Slots::fence`).
    /// Reverted: no renewal before the trigger.
    Fence,
    /// The cordon is written only over the Node the decision read (resourceVersion
    /// precondition, `steps::cordon`). Reverted: written over whatever the Node is now.
    CordonPrecondition,
}

impl Fix {
    /// Every fix, in the order the checker reports them.
    pub const ALL: [Fix; 3] = [Fix::LeaseLost, Fix::Fence, Fix::CordonPrecondition];

    /// The name used on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Fix::LeaseLost => "lease-lost",
            Fix::Fence => "fence",
            Fix::CordonPrecondition => "cordon-precondition",
        }
    }

    /// Parses [`Fix::as_str`].
    pub fn parse(s: &str) -> Option<Fix> {
        Fix::ALL.into_iter().find(|f| f.as_str() == s)
    }
}

/// One node of the cluster.
#[derive(Clone, Debug)]
pub struct NodeCfg {
    /// Its zone label (the group with `group_by_zone`).
    pub zone: &'static str,
    /// Labelled control-plane.
    pub control_plane: bool,
    /// Its maintenance flag is set at the start.
    pub flagged: bool,
}

/// One configuration to check.
#[derive(Clone, Debug)]
pub struct Config {
    /// A short name for reports.
    pub name: String,
    /// The nodes.
    pub nodes: Vec<NodeCfg>,
    /// `--concurrency`.
    pub concurrency: u16,
    /// `--group-by-label topology.kubernetes.io/zone`.
    pub group_by_zone: bool,
    /// `--serialize-control-plane`.
    pub serialize_control_plane: bool,
    /// `--lock-ttl`.
    pub ttl: Duration,
    /// `--lock-holder-not-ready-timeout`.
    pub not_ready: Duration,
    /// `--stall-timeout`.
    pub stall: Duration,
    /// `--settle-time`.
    pub settle: Duration,
    /// `--max-reboot-attempts`.
    pub max_reboot_attempts: u32,
    /// The faults that may happen.
    pub faults: Vec<Fault>,
    /// How many faults may happen in one run.
    pub budget: u8,
    /// A fix reverted in the glue, if any.
    pub revert: Option<Fix>,
    /// Also check liveness (keeps the state graph's edges: small configurations only).
    pub liveness: bool,
}

impl Config {
    /// `k` nodes, one slot, every node flagged, the agents' defaults, no fault.
    pub fn base(name: &str, k: usize) -> Self {
        Config {
            name: name.to_owned(),
            nodes: (0..k)
                .map(|_| NodeCfg {
                    zone: "a",
                    control_plane: false,
                    flagged: true,
                })
                .collect(),
            concurrency: 1,
            group_by_zone: false,
            serialize_control_plane: true,
            ttl: Duration::from_secs(30 * 60),
            not_ready: Duration::from_secs(15 * 60),
            stall: Duration::from_secs(10 * 60),
            settle: Duration::from_secs(10 * 60),
            max_reboot_attempts: 2,
            faults: Vec::new(),
            budget: 0,
            revert: None,
            liveness: false,
        }
    }

    /// This configuration with `faults` enabled, at most `budget` per run.
    pub fn with_faults(mut self, faults: &[Fault], budget: u8) -> Self {
        self.faults = faults.to_vec();
        self.budget = if faults.is_empty() { 0 } else { budget };
        self
    }

    /// Whether fault `f` is enabled and the budget allows one more.
    pub fn allows(&self, f: Fault, left: u8) -> bool {
        left > 0 && self.faults.contains(&f)
    }
}

impl fmt::Display for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nodes: Vec<String> = self
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| {
                format!(
                    "n{i}{}{}{}",
                    if self.group_by_zone {
                        format!("@{}", n.zone)
                    } else {
                        String::new()
                    },
                    if n.control_plane { "(cp)" } else { "" },
                    if n.flagged { "*" } else { "" }
                )
            })
            .collect();
        let faults: Vec<String> = self.faults.iter().map(|f| f.as_str().to_owned()).collect();
        write!(
            f,
            "{}: nodes [{}] (* flagged), concurrency {}{}{}, faults [{}] ≤ {}{}{}",
            self.name,
            nodes.join(" "),
            self.concurrency,
            if self.group_by_zone {
                ", grouped by zone"
            } else {
                ""
            },
            if self.serialize_control_plane && self.nodes.iter().any(|n| n.control_plane) {
                ", control plane serialized"
            } else {
                ""
            },
            faults.join(" "),
            self.budget,
            if self.liveness { ", liveness" } else { "" },
            match self.revert {
                Some(fix) => format!(", fix reverted: {}", fix.as_str()),
                None => String::new(),
            }
        )
    }
}
