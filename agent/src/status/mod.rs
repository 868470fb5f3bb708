//! `baton status`: who holds each slot, who waits and why, how far each drain is, what
//! happened lately, whether the cluster is paused and which agents are not Ready — from what
//! the API server holds (Leases, Nodes and their `baton.dev/` annotations, baton's Events, the
//! pause ConfigMap, the agents' pods).
//!
//! [`report`] is pure: plain data in ([`Snapshot`], gathered by [`gather`]), a [`Report`] out
//! (serialised as the `-o json` schema, rendered as text by [`render`]), so every rule is a unit
//! test.

pub mod gather;
pub mod render;

use std::collections::BTreeMap;

use k8s_openapi::jiff::Timestamp;
use serde::Serialize;

use crate::machine::Phase;
use crate::node;

/// The `schema` field of the JSON report; bumped on an incompatible change.
pub const SCHEMA: &str = "baton.dev/status/v1";

// === Input ===

/// A Lease in the lock namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaseInfo {
    /// Its name.
    pub name: String,
    /// `holderIdentity`, when not empty.
    pub holder: Option<String>,
    /// `acquireTime`.
    pub acquired: Option<Timestamp>,
    /// `renewTime`.
    pub renewed: Option<Timestamp>,
    /// `leaseDurationSeconds`.
    pub duration_seconds: Option<i64>,
}

/// A Node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeInfo {
    /// Its name.
    pub name: String,
    /// Its annotations (baton's are under `baton.dev/`).
    pub annotations: BTreeMap<String, String>,
    /// Whether its Ready condition is True.
    pub ready: bool,
    /// Whether it is cordoned.
    pub unschedulable: bool,
    /// `status.nodeInfo.bootID`, when not empty.
    pub boot_id: Option<String>,
}

/// An Event baton reported about a Node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventInfo {
    /// The Node's name.
    pub node: String,
    /// The Event's reason (`DrainFailed`, ...).
    pub reason: String,
    /// Its note (message).
    pub note: String,
    /// Whether it is a warning.
    pub warning: bool,
    /// When it was last seen.
    pub last_seen: Option<Timestamp>,
    /// How many times it was seen.
    pub count: u32,
}

/// The pause ConfigMap, when it exists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PauseInfo {
    /// Its `reason` key.
    pub reason: Option<String>,
    /// When it was created.
    pub since: Option<Timestamp>,
}

/// One agent pod.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentPod {
    /// The pod's name.
    pub name: String,
    /// Its node, once scheduled.
    pub node: Option<String>,
    /// Whether its Ready condition is True (and it is not being deleted).
    pub ready: bool,
    /// Its state for people: the phase and the reason it is not Ready.
    pub state: String,
}

/// What the API server holds, as plain data.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// The Leases in the lock namespace.
    pub leases: Vec<LeaseInfo>,
    /// The Nodes.
    pub nodes: Vec<NodeInfo>,
    /// baton's Events about Nodes.
    pub events: Vec<EventInfo>,
    /// The pause ConfigMap (`None`: it does not exist).
    pub pause: Option<PauseInfo>,
    /// The agents' pods.
    pub agents: Vec<AgentPod>,
}

/// What the report needs to know beyond the snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The namespace of the Leases, the pause ConfigMap and the agents.
    pub namespace: String,
    /// The agents' `--lock-name`: its slots are `<lock-name>`, `<lock-name>-1`, ...
    pub lock_name: String,
    /// The pause ConfigMap's name.
    pub pause_configmap: String,
    /// The label selector of the agents' pods.
    pub agent_selector: String,
    /// The agents' `--max-reboot-attempts`: a flag still set after this many reboots in a row
    /// stops the node.
    pub max_reboot_attempts: u32,
}

// === Report (the `-o json` schema) ===

/// Everything `baton status` shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// [`SCHEMA`].
    pub schema: &'static str,
    /// When the report was made (RFC 3339).
    pub generated_at: String,
    /// The lock namespace.
    pub namespace: String,
    /// The cluster-wide pause.
    pub pause: ClusterPause,
    /// Each Lease slot.
    pub slots: Vec<Slot>,
    /// Flagged nodes that wait, in the order they would go.
    pub queue: Vec<Queued>,
    /// Nodes in a cycle (draining or rebooting).
    pub in_flight: Vec<InFlight>,
    /// Nodes paused by `baton.dev/pause`.
    pub paused_nodes: Vec<PausedNode>,
    /// What happened lately.
    pub history: History,
    /// The agents' pods.
    pub agents: Agents,
    /// Records baton cannot read (a human or a broken write left them).
    pub problems: Vec<Problem>,
}

/// The cluster-wide pause.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterPause {
    /// Whether the pause ConfigMap exists.
    pub paused: bool,
    /// `<namespace>/<name>` of the ConfigMap.
    pub config_map: String,
    /// Its `reason`.
    pub reason: Option<String>,
    /// When it was created.
    pub since: Option<String>,
    /// For how long, in seconds.
    pub for_seconds: Option<i64>,
}

/// One Lease slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Slot {
    /// The Lease's name.
    pub lease: String,
    /// The group (`--group-by-label`) as its Lease name spells the label value; `null`: the
    /// slots of every node (no groups); `"none"`: nodes without the label.
    pub group: Option<String>,
    /// Whether it is the control-plane Lease.
    pub control_plane: bool,
    /// The holder, `null` when free.
    pub holder: Option<String>,
    /// The holder's Node: `ready`, `notReady` or `missing` (deleted); `null` when free.
    pub holder_node: Option<&'static str>,
    /// The holder's phase (`draining`, `rebooting`, `idle`).
    pub phase: Option<&'static str>,
    /// When that phase began.
    pub phase_since: Option<String>,
    /// For how long, in seconds.
    pub phase_seconds: Option<i64>,
    /// When the holder took the Lease (`acquireTime`).
    pub held_since: Option<String>,
    /// For how long, in seconds.
    pub held_seconds: Option<i64>,
    /// The last renewal (`renewTime`).
    pub renewed_at: Option<String>,
    /// `leaseDurationSeconds`.
    pub lease_duration_seconds: Option<i64>,
    /// `renewTime + leaseDurationSeconds - now`, in seconds, by this machine's wall clock and
    /// the holder's: an estimate (agents judge expiry on their own monotonic clocks, and cap the
    /// duration by their `--lock-ttl`). Negative: overdue.
    pub ttl_left_seconds_estimate: Option<i64>,
    /// What the holder is doing, or what is wrong with the hold.
    pub note: Option<String>,
}

/// Where a queued node stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Tier {
    /// Only a free slot is missing: it goes when one frees.
    Next,
    /// Waits for a known time (the back-off after a failed drain).
    Timed,
    /// Held by a condition with no known end (a pause, the window, a blocker).
    Held,
}

/// Why a node waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum WaitKind {
    /// For a free slot.
    Slot,
    /// The back-off after a failed drain (`baton.dev/backoff-until`).
    Backoff,
    /// The pause ConfigMap.
    ClusterPause,
    /// `baton.dev/pause` on the node.
    NodePause,
    /// Outside the reboot window or on a blackout date.
    Window,
    /// A pod matching `--blocking-pod-selector`.
    Pod,
    /// A Prometheus alert (or Prometheus unreachable).
    Alert,
    /// A PodDisruptionBudget that allows no disruption (the pre-flight).
    Pdb,
    /// The dry run of this boot is done.
    DryRunDone,
    /// Anything else the agent said.
    Other,
}

impl WaitKind {
    fn tier(self) -> Tier {
        match self {
            WaitKind::Slot => Tier::Next,
            WaitKind::Backoff => Tier::Timed,
            _ => Tier::Held,
        }
    }
}

/// One reason a node waits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WaitReason {
    /// What kind of wait.
    pub kind: WaitKind,
    /// In words (the agent's own, from `baton.dev/waiting`, where it said).
    pub text: String,
    /// When it ends, if known.
    pub until: Option<String>,
}

/// A flagged node that waits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Queued {
    /// 1 for the first to go.
    pub position: usize,
    /// The node.
    pub node: String,
    /// Its tier (the first sort key).
    pub tier: Tier,
    /// The value of `baton.dev/reboot-requested`, when a reboot was requested by hand.
    pub requested: Option<String>,
    /// Why it waits.
    pub reasons: Vec<WaitReason>,
}

/// A node in a cycle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InFlight {
    /// The node.
    pub node: String,
    /// `draining` or `rebooting`.
    pub phase: &'static str,
    /// When the phase began.
    pub since: Option<String>,
    /// For how long, in seconds.
    pub seconds: Option<i64>,
    /// Whether baton cordoned it (and will uncordon it).
    pub cordoned_by_baton: bool,
    /// Whether the Node is Ready.
    pub node_ready: bool,
    /// Pods the drain still waits for (`baton.dev/drain-pending`).
    pub pods_left: Option<u64>,
    /// The drain's last error, e.g. the PodDisruptionBudget refusing (`baton.dev/drain-last-error`).
    pub last_error: Option<String>,
    /// Reboots triggered in this cycle.
    pub reboot_attempts: u32,
    /// When the last one was triggered.
    pub reboot_triggered_at: Option<String>,
    /// The Leases it holds.
    pub holds: Vec<String>,
}

/// A node paused by `baton.dev/pause`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PausedNode {
    /// The node.
    pub node: String,
    /// The annotation's value.
    pub reason: String,
}

/// What happened lately.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct History {
    /// The last completed reboot of each node that has one, newest first.
    pub last_reboots: Vec<LastReboot>,
    /// baton's warning Events, newest first (the API server keeps Events for its `--event-ttl`,
    /// one hour by default).
    pub failures: Vec<Failure>,
    /// Nodes where baton stopped and waits for a human.
    pub gave_up: Vec<GaveUp>,
}

/// A node's last completed reboot (`baton.dev/last-reboot`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LastReboot {
    /// The node.
    pub node: String,
    /// When (RFC 3339).
    pub at: String,
    /// How long ago, in seconds.
    pub seconds_ago: i64,
}

/// A warning Event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Failure {
    /// The node.
    pub node: String,
    /// `DrainFailed`, `RebootFailed`, `LeaseLost`, `MaintenanceStalled`, `InconsistentState`,
    /// `RebootNotTriggered`, `RebootLoopStopped`, `DrainEscalated`.
    pub reason: String,
    /// The Event's note.
    pub note: String,
    /// When it was last seen.
    pub at: Option<String>,
    /// How many times.
    pub count: u32,
}

/// Why baton gave up on a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum GaveUpKind {
    /// Reboot triggers did not reboot the host (`baton.dev/gave-up-boot-id` is this boot).
    RebootDidNotHappen,
    /// The flag is still set after `--max-reboot-attempts` reboots in a row.
    FlagPersists,
}

/// A node where baton stopped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GaveUp {
    /// The node.
    pub node: String,
    /// Why.
    pub kind: GaveUpKind,
    /// In words.
    pub detail: String,
}

/// The agents' pods.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Agents {
    /// The label selector they were found by, in the lock namespace.
    pub selector: String,
    /// How many pods.
    pub pods: usize,
    /// How many of them are Ready.
    pub ready: usize,
    /// The others.
    pub not_ready: Vec<AgentNotReady>,
}

/// An agent pod that is not Ready.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentNotReady {
    /// The pod.
    pub pod: String,
    /// Its node, once scheduled.
    pub node: Option<String>,
    /// Its phase and why it is not Ready.
    pub state: String,
}

/// A record baton cannot read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Problem {
    /// The node.
    pub node: String,
    /// What is wrong.
    pub problem: String,
}

// === impl report ===

/// A time to the second, cut (not rounded), as [`seconds_between`] counts.
pub(crate) fn rfc3339(t: Timestamp) -> String {
    Timestamp::from_second(t.as_second())
        .unwrap_or(t)
        .to_string()
}

fn seconds_between(from: Timestamp, to: Timestamp) -> i64 {
    to.as_second() - from.as_second()
}

/// Where a Lease sits among baton's: `(group, control-plane)`, or `None` when it is not one of
/// `lock_name`'s. Slots are `lock`, `lock-N`; groups `lock-<value>-<6 hex>[-N]` and
/// `lock-none[-N]`; the control-plane Lease `lock-control-plane` (see [`crate::lease`]).
pub fn slot_of(lock_name: &str, lease: &str) -> Option<(Option<String>, bool)> {
    if lease == lock_name {
        return Some((None, false));
    }
    let rest = lease.strip_prefix(lock_name)?.strip_prefix('-')?;
    let digits = |s: &str| !s.is_empty() && s.len() <= 4 && s.bytes().all(|b| b.is_ascii_digit());
    if rest == "control-plane" {
        return Some((None, true));
    }
    if digits(rest) {
        return Some((None, false));
    }
    // A group's base name ends with a 6-hex hash; its slots add `-N` (N < 1000, so never six
    // characters: a hash of digits only is not mistaken for an index).
    let group = |base: &str| -> Option<String> {
        if base == "none" {
            return Some("none".to_owned());
        }
        let (value, hash) = base.rsplit_once('-')?;
        (hash.len() == 6 && hash.bytes().all(|b| b.is_ascii_hexdigit())).then(|| value.to_owned())
    };
    if let Some(g) = group(rest) {
        return Some((Some(g), false));
    }
    let (base, index) = rest.rsplit_once('-')?;
    if digits(index) {
        return group(base).map(|g| (Some(g), false));
    }
    None
}

/// Sorts slots: the ungrouped ones, then groups by name, each by index; the control-plane
/// Lease last.
fn slot_order(lock_name: &str, s: &Slot) -> (bool, Option<String>, usize, String) {
    let index = s
        .lease
        .rsplit_once('-')
        .filter(|(_, i)| i.len() <= 4)
        .and_then(|(_, i)| i.parse::<usize>().ok())
        .filter(|_| s.lease != lock_name)
        .unwrap_or(0);
    (s.control_plane, s.group.clone(), index, s.lease.clone())
}

/// How the queue says that a node waits only for a Lease slot.
const FREE_SLOT: &str = "a free slot";

/// Classifies the agent's `baton.dev/waiting` text (see the agent's gates).
pub fn classify_wait(text: &str) -> WaitKind {
    if text == node::WAITING_FOR_SLOT {
        WaitKind::Slot
    } else if text.starts_with("paused cluster-wide") {
        WaitKind::ClusterPause
    } else if text.starts_with("paused on this node") {
        WaitKind::NodePause
    } else if text.starts_with("outside the reboot window") {
        WaitKind::Window
    } else if text.starts_with("blocked by pod") {
        WaitKind::Pod
    } else if text.contains("Prometheus") {
        WaitKind::Alert
    } else if text.starts_with("not cordoning: PodDisruptionBudget") {
        WaitKind::Pdb
    } else {
        WaitKind::Other
    }
}

fn ann<'a>(n: &'a NodeInfo, key: &str) -> Option<&'a str> {
    n.annotations.get(key).map(String::as_str)
}

fn ann_time(n: &NodeInfo, key: &str) -> Option<Timestamp> {
    ann(n, key)?.parse().ok()
}

/// The report of `snapshot` as of `now`.
pub fn report(snapshot: &Snapshot, settings: &Settings, now: Timestamp) -> Report {
    let nodes: BTreeMap<&str, &NodeInfo> = snapshot
        .nodes
        .iter()
        .map(|n| (n.name.as_str(), n))
        .collect();
    let mut problems = Vec::new();
    let states: BTreeMap<&str, crate::machine::NodeState> = snapshot
        .nodes
        .iter()
        .filter_map(|n| match node::read_state(&n.annotations) {
            Ok(s) => Some((n.name.as_str(), s)),
            Err(e) => {
                problems.push(Problem {
                    node: n.name.clone(),
                    problem: e.to_string(),
                });
                None
            }
        })
        .collect();

    let slots = slots(snapshot, settings, &nodes, &states, now);
    let holders: BTreeMap<&str, Vec<String>> = slots.iter().fold(BTreeMap::new(), |mut m, s| {
        if let Some(h) = &s.holder {
            m.entry(h.as_str()).or_default().push(s.lease.clone());
        }
        m
    });

    let mut in_flight = Vec::new();
    let mut gave_up = Vec::new();
    let mut queue = Vec::new();
    for n in &snapshot.nodes {
        let Some(state) = states.get(n.name.as_str()) else {
            continue;
        };
        let holds = holders.get(n.name.as_str()).cloned().unwrap_or_default();
        if state.phase != Phase::Idle {
            let since = ann_time(n, node::PHASE_SINCE);
            in_flight.push(InFlight {
                node: n.name.clone(),
                phase: state.phase.as_str(),
                since: since.map(rfc3339),
                seconds: since.map(|t| seconds_between(t, now)),
                cordoned_by_baton: state.cordoned_by_baton,
                node_ready: n.ready,
                pods_left: ann(n, node::DRAIN_PENDING).and_then(|v| v.parse().ok()),
                last_error: ann(n, node::DRAIN_LAST_ERROR).map(str::to_owned),
                reboot_attempts: state.reboot_attempts,
                reboot_triggered_at: state
                    .triggered_at
                    .and_then(|t| Timestamp::try_from(t).ok().map(rfc3339)),
                holds,
            });
            continue;
        }
        let this_boot = |id: &Option<String>| {
            id.as_deref()
                .is_some_and(|g| n.boot_id.as_deref().is_none_or(|b| b == g))
        };
        if this_boot(&state.gave_up_boot_id) {
            gave_up.push(GaveUp {
                node: n.name.clone(),
                kind: GaveUpKind::RebootDidNotHappen,
                detail: format!(
                    "reboot triggers did not reboot the host during boot {}: baton waits for a human (or the next boot)",
                    state.gave_up_boot_id.as_deref().unwrap_or_default()
                ),
            });
            continue;
        }
        if state.consecutive_reboots >= settings.max_reboot_attempts {
            gave_up.push(GaveUp {
                node: n.name.clone(),
                kind: GaveUpKind::FlagPersists,
                detail: format!(
                    "the maintenance flag was still set after {} reboot(s) in a row (--max-reboot-attempts={}): no reboot until it clears",
                    state.consecutive_reboots, settings.max_reboot_attempts
                ),
            });
            continue;
        }
        if !holds.is_empty() {
            // A holder between cycles (starting, or settling after its reboot): see its slot.
            continue;
        }
        let requested = ann(n, node::REBOOT_REQUESTED).map(str::to_owned);
        let waiting = ann(n, node::WAITING).filter(|w| !w.is_empty());
        let backoff = state
            .backoff_until
            .and_then(|t| Timestamp::try_from(t).ok())
            .filter(|t| *t > now);
        if requested.is_none() && waiting.is_none() && backoff.is_none() {
            continue;
        }
        let mut reasons = Vec::new();
        if let Some(w) = waiting {
            let kind = classify_wait(w);
            reasons.push(WaitReason {
                kind,
                // The agent's slot wait reads like the one shown for a node whose agent has
                // not said anything yet.
                text: if kind == WaitKind::Slot {
                    FREE_SLOT.to_owned()
                } else {
                    w.to_owned()
                },
                until: None,
            });
        }
        if let Some(t) = backoff {
            reasons.push(WaitReason {
                kind: WaitKind::Backoff,
                text: format!(
                    "backing off after a failed cycle until {} (in {})",
                    rfc3339(t),
                    render::duration(seconds_between(now, t))
                ),
                until: Some(rfc3339(t)),
            });
        }
        // The pauses hold a node whatever its agent has written yet (it may be down).
        let mut also = |kind: WaitKind, text: String| {
            if reasons.iter().all(|r: &WaitReason| r.kind != kind) {
                reasons.push(WaitReason {
                    kind,
                    text,
                    until: None,
                });
            }
        };
        if let Some(p) = &snapshot.pause {
            also(
                WaitKind::ClusterPause,
                format!(
                    "paused cluster-wide (ConfigMap {}/{}: {})",
                    settings.namespace,
                    settings.pause_configmap,
                    p.reason.as_deref().unwrap_or("no reason given")
                ),
            );
        }
        if let Some(why) = ann(n, node::PAUSE) {
            also(
                WaitKind::NodePause,
                format!("paused on this node ({}): {why}", node::PAUSE),
            );
        }
        if this_boot(&state.dry_run_boot_id) {
            reasons.push(WaitReason {
                kind: WaitKind::DryRunDone,
                text: "the dry run of this boot is done; the next boot may run another".into(),
                until: None,
            });
        }
        if reasons.is_empty() {
            reasons.push(WaitReason {
                kind: WaitKind::Slot,
                text: FREE_SLOT.into(),
                until: None,
            });
        }
        let tier = reasons
            .iter()
            .map(|r| r.kind.tier())
            .max()
            .unwrap_or(Tier::Next);
        queue.push((
            backoff,
            Queued {
                position: 0,
                node: n.name.clone(),
                tier,
                requested,
                reasons,
            },
        ));
    }
    // The order they would go: a free slot is all the first tier waits for; then the back-off
    // ends, earliest first; then the rest. baton keeps no queue (waiting agents race for a
    // freed slot), so within a tier the order is by node name, not a promise.
    queue.sort_by(|(ta, a), (tb, b)| {
        (
            a.tier,
            if a.tier == Tier::Timed { *ta } else { None },
            &a.node,
        )
            .cmp(&(
                b.tier,
                if b.tier == Tier::Timed { *tb } else { None },
                &b.node,
            ))
    });
    let queue = queue
        .into_iter()
        .enumerate()
        .map(|(i, (_, mut q))| {
            q.position = i + 1;
            q
        })
        .collect();

    let paused_nodes = snapshot
        .nodes
        .iter()
        .filter_map(|n| {
            ann(n, node::PAUSE).map(|r| PausedNode {
                node: n.name.clone(),
                reason: r.to_owned(),
            })
        })
        .collect();

    let mut last_reboots: Vec<LastReboot> = snapshot
        .nodes
        .iter()
        .filter_map(|n| {
            let at = ann_time(n, node::LAST_REBOOT)?;
            Some(LastReboot {
                node: n.name.clone(),
                at: rfc3339(at),
                seconds_ago: seconds_between(at, now),
            })
        })
        .collect();
    last_reboots.sort_by(|a, b| (a.seconds_ago, &a.node).cmp(&(b.seconds_ago, &b.node)));

    let mut failures: Vec<(Option<Timestamp>, Failure)> = snapshot
        .events
        .iter()
        .filter(|e| e.warning && nodes.contains_key(e.node.as_str()))
        .map(|e| {
            (
                e.last_seen,
                Failure {
                    node: e.node.clone(),
                    reason: e.reason.clone(),
                    note: e.note.clone(),
                    at: e.last_seen.map(rfc3339),
                    count: e.count.max(1),
                },
            )
        })
        .collect();
    failures.sort_by(|(ta, a), (tb, b)| tb.cmp(ta).then_with(|| a.node.cmp(&b.node)));

    let not_ready: Vec<AgentNotReady> = snapshot
        .agents
        .iter()
        .filter(|p| !p.ready)
        .map(|p| AgentNotReady {
            pod: p.name.clone(),
            node: p.node.clone(),
            state: p.state.clone(),
        })
        .collect();

    Report {
        schema: SCHEMA,
        generated_at: rfc3339(now),
        namespace: settings.namespace.clone(),
        pause: ClusterPause {
            paused: snapshot.pause.is_some(),
            config_map: format!("{}/{}", settings.namespace, settings.pause_configmap),
            reason: snapshot.pause.as_ref().and_then(|p| p.reason.clone()),
            since: snapshot.pause.as_ref().and_then(|p| p.since).map(rfc3339),
            for_seconds: snapshot
                .pause
                .as_ref()
                .and_then(|p| p.since)
                .map(|t| seconds_between(t, now)),
        },
        slots,
        queue,
        in_flight,
        paused_nodes,
        history: History {
            last_reboots,
            failures: failures.into_iter().map(|(_, f)| f).collect(),
            gave_up,
        },
        agents: Agents {
            selector: settings.agent_selector.clone(),
            pods: snapshot.agents.len(),
            ready: snapshot.agents.len() - not_ready.len(),
            not_ready,
        },
        problems,
    }
}

fn slots(
    snapshot: &Snapshot,
    settings: &Settings,
    nodes: &BTreeMap<&str, &NodeInfo>,
    states: &BTreeMap<&str, crate::machine::NodeState>,
    now: Timestamp,
) -> Vec<Slot> {
    let mut slots: Vec<Slot> = snapshot
        .leases
        .iter()
        .filter_map(|l| {
            let (group, control_plane) = slot_of(&settings.lock_name, &l.name)?;
            let mut slot = Slot {
                lease: l.name.clone(),
                group,
                control_plane,
                holder: l.holder.clone(),
                holder_node: None,
                phase: None,
                phase_since: None,
                phase_seconds: None,
                held_since: None,
                held_seconds: None,
                renewed_at: l.renewed.map(rfc3339),
                lease_duration_seconds: l.duration_seconds,
                ttl_left_seconds_estimate: None,
                note: None,
            };
            let Some(holder) = &l.holder else {
                return Some(slot);
            };
            slot.held_since = l.acquired.map(rfc3339);
            slot.held_seconds = l.acquired.map(|t| seconds_between(t, now));
            slot.ttl_left_seconds_estimate = match (l.renewed, l.duration_seconds) {
                (Some(r), Some(d)) => Some(seconds_between(now, r) + d),
                _ => None,
            };
            let Some(n) = nodes.get(holder.as_str()) else {
                slot.holder_node = Some("missing");
                slot.note = Some(
                    "the holder's Node is gone: a waiting agent takes the slot over at once".into(),
                );
                return Some(slot);
            };
            slot.holder_node = Some(if n.ready { "ready" } else { "notReady" });
            let phase = states.get(holder.as_str()).map(|s| s.phase);
            slot.phase = phase.map(Phase::as_str);
            if phase.is_some_and(|p| p != Phase::Idle) {
                let since = ann_time(n, node::PHASE_SINCE);
                slot.phase_since = since.map(rfc3339);
                slot.phase_seconds = since.map(|t| seconds_between(t, now));
            }
            slot.note = match phase {
                None => Some("its baton.dev/ record cannot be read (see problems)".into()),
                Some(Phase::Idle) => {
                    let rebooted = ann_time(n, node::LAST_REBOOT);
                    Some(
                        if rebooted.is_some_and(|r| l.acquired.is_none_or(|a| r >= a)) {
                            "rebooted; settling (health gate) before passing the baton on"
                        } else {
                            "taken; checking the gates before cordoning"
                        }
                        .into(),
                    )
                }
                Some(Phase::Rebooting) if !n.ready => {
                    Some("the host is down for its reboot".into())
                }
                Some(_) if !n.ready => Some("its Node is NotReady".into()),
                Some(_) => None,
            };
            if slot.ttl_left_seconds_estimate.is_some_and(|t| t < 0) {
                slot.note = Some(format!(
                    "not renewed for longer than its duration{}",
                    slot.note
                        .as_deref()
                        .map(|n| format!(" ({n})"))
                        .unwrap_or_default()
                ));
            }
            Some(slot)
        })
        .collect();
    slots.sort_by_key(|s| slot_order(&settings.lock_name, s));
    slots
}

#[cfg(test)]
mod tests;
