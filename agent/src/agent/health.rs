//! The post-reboot health gate: right after its reboot a node keeps the baton, neither passing
//! it on nor starting again, until it is healthy: the settle time has passed, its DaemonSet pods
//! are Ready, and (with `--gate-pdbs`) every PodDisruptionBudget has all its pods healthy again.
//! It waits on watches — the node's pods (by `spec.nodeName`) and the budgets — that run only
//! while the gate is being checked.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::Client;
use kube::api::Api;
use kube::runtime::watcher;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::drain::{AbortOnDrop, PodInfo, mirror};
use crate::node;

/// The health gate applies to a reboot finished this recently (plus the settle time); an older
/// one is history, not a hand-off in progress.
const WINDOW: Duration = Duration::from_secs(30 * 60);

/// Where a node stands in the health gate, from the time its last reboot completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// No reboot just completed here (none recorded, too long ago, or a time in the future,
    /// which is no record of baton's).
    No,
    /// Settling: this much of the settle time is left.
    Settling(Duration),
    /// Check the node's health.
    Check,
}

/// Whether the gate applies at `now` to a reboot completed at `finished`.
pub fn due(finished: Option<SystemTime>, now: SystemTime, settle: Duration) -> Due {
    let Some(since) = finished.and_then(|f| now.duration_since(f).ok()) else {
        return Due::No;
    };
    if since > WINDOW.saturating_add(settle) {
        Due::No
    } else if since < settle {
        Due::Settling(settle - since)
    } else {
        Due::Check
    }
}

/// What is unhealthy, by object: `Some("namespace/name")` for an object that holds the gate.
type Unhealthy = HashMap<String, Option<String>>;
type Mirrored = (watch::Receiver<Option<Unhealthy>>, AbortOnDrop<()>);

/// The health gate of one node.
pub(super) struct Gate {
    watch_client: Client,
    node: String,
    settle: Duration,
    gate_pdbs: bool,
    /// The node's pods and (with `--gate-pdbs`) the budgets, while the check is due.
    watches: Option<(Mirrored, Option<Mirrored>)>,
}

impl Gate {
    /// The gate of `node`; watches go through `watch_client`.
    pub(super) fn new(watch_client: Client, node: &str, settle: Duration, gate_pdbs: bool) -> Self {
        Self {
            watch_client,
            node: node.to_owned(),
            settle,
            gate_pdbs,
            watches: None,
        }
    }

    /// Why `node` may not pass the baton on yet after its reboot, if so, and when that may
    /// change with time alone (the end of the settle time). The pods and budgets are watched
    /// while the check is due, and not otherwise.
    pub(super) fn settling(&mut self, node: &Node) -> (Option<String>, Option<Instant>) {
        match due(
            node::time_of(node, node::LAST_REBOOT),
            SystemTime::now(),
            self.settle,
        ) {
            Due::No => {
                self.stop();
                (None, None)
            }
            Due::Settling(left) => {
                self.stop();
                (
                    Some(format!(
                        "settling after the reboot ({} left)",
                        node::human(left)
                    )),
                    Some(Instant::now() + left),
                )
            }
            Due::Check => {
                let (pods, pdbs) = self.watches.get_or_insert_with(|| {
                    let pods = mirror(
                        Api::<Pod>::all(self.watch_client.clone()),
                        watcher::Config::default().fields(&format!("spec.nodeName={}", self.node)),
                        pod_uid,
                        pod_unready,
                    );
                    let pdbs = self.gate_pdbs.then(|| {
                        mirror(
                            Api::<PodDisruptionBudget>::all(self.watch_client.clone()),
                            watcher::Config::default(),
                            pdb_name,
                            pdb_unhealthy,
                        )
                    });
                    (pods, pdbs)
                });
                let pods = pods.0.borrow();
                let pdbs = pdbs.as_ref().map(|p| p.0.borrow());
                (
                    verdict(pods.as_ref(), pdbs.as_ref().map(|p| p.as_ref())),
                    None,
                )
            }
        }
    }

    /// Stops the watches: the gate does not apply.
    pub(super) fn stop(&mut self) {
        self.watches = None;
    }

    /// An error if a watch task ended (supervision: the agent then exits).
    pub(super) fn check(&self) -> anyhow::Result<()> {
        if let Some((pods, pdbs)) = &self.watches
            && (pods.1.is_finished() || pdbs.as_ref().is_some_and(|p| p.1.is_finished()))
        {
            anyhow::bail!("a health gate watch ended");
        }
        Ok(())
    }

    /// Resolves when a watched pod or budget changes; never while nothing is watched.
    pub(super) async fn changed(&mut self) {
        match self.watches.as_mut() {
            Some((pods, Some(pdbs))) => {
                tokio::select! {
                    _ = pods.0.changed() => {}
                    _ = pdbs.0.changed() => {}
                }
            }
            Some((pods, None)) => {
                let _ = pods.0.changed().await;
            }
            None => std::future::pending().await,
        }
    }
}

/// Why the gate holds, from what the watches show: `pods` (the node's), and `pdbs` (`None`
/// without `--gate-pdbs`, `Some(None)` while unread). Unread means not healthy yet.
fn verdict(pods: Option<&Unhealthy>, pdbs: Option<Option<&Unhealthy>>) -> Option<String> {
    // The first by name, so the reason shown does not flap between equals.
    let first = |m: &Unhealthy| m.values().flatten().min().cloned();
    let Some(pods) = pods else {
        return Some("health gate: reading this node's pods".to_owned());
    };
    if let Some(p) = first(pods) {
        return Some(format!(
            "waiting for DaemonSet pod {p} on this node to be Ready"
        ));
    }
    match pdbs {
        None => None,
        Some(None) => Some("health gate: reading the PodDisruptionBudgets".to_owned()),
        Some(Some(pdbs)) => first(pdbs).map(|b| {
            format!("waiting for PodDisruptionBudget {b} to have all its pods healthy again")
        }),
    }
}

fn pod_uid(p: &Pod) -> String {
    p.metadata.uid.clone().unwrap_or_default()
}

/// A DaemonSet pod of the node that is not Ready (and not finished) holds the gate.
fn pod_unready(p: &Pod) -> Option<String> {
    let info = PodInfo::from_pod(p);
    (info.daemonset().is_some() && !info.finished && !pod_ready(p))
        .then(|| format!("{}/{}", info.namespace, info.name))
}

fn pdb_name(p: &PodDisruptionBudget) -> String {
    format!(
        "{}/{}",
        p.metadata.namespace.as_deref().unwrap_or_default(),
        p.metadata.name.as_deref().unwrap_or_default()
    )
}

/// A budget with fewer healthy pods than it expects holds the gate.
fn pdb_unhealthy(p: &PodDisruptionBudget) -> Option<String> {
    let st = p.status.clone().unwrap_or_default();
    (st.current_healthy.unwrap_or(0) < st.expected_pods.unwrap_or(0)).then(|| pdb_name(p))
}

fn pod_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gate_applies_to_a_recent_reboot_only() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let s = |n: u64| Duration::from_secs(n);
        let settle = s(60);
        assert_eq!(due(None, t0, settle), Due::No);
        assert_eq!(due(Some(t0), t0 + s(10), settle), Due::Settling(s(50)));
        // To the millisecond: a settle time is not shortened by rounding.
        let just = t0 + Duration::from_millis(59_999);
        assert_eq!(
            due(Some(t0), just, settle),
            Due::Settling(Duration::from_millis(1))
        );
        assert_eq!(due(Some(t0), t0 + s(60), settle), Due::Check);
        assert_eq!(due(Some(t0), t0 + WINDOW + s(61), settle), Due::No);
        // A completion time in the future is nobody's record: it holds nothing back.
        assert_eq!(due(Some(t0 + s(3600)), t0, settle), Due::No);
        assert_eq!(
            due(Some(t0), t0, Duration::MAX),
            Due::Settling(Duration::MAX)
        );
    }

    #[test]
    fn the_gate_holds_until_every_watched_pod_and_budget_is_healthy() {
        let map = |v: &[(&str, Option<&str>)]| -> Unhealthy {
            v.iter()
                .map(|(k, w)| ((*k).to_owned(), w.map(str::to_owned)))
                .collect()
        };
        let healthy = map(&[("a", None), ("b", None)]);
        // Nothing read yet holds.
        assert!(
            verdict(None, None)
                .unwrap()
                .contains("reading this node's pods")
        );
        assert_eq!(verdict(Some(&healthy), None), None);
        assert!(
            verdict(Some(&healthy), Some(None))
                .unwrap()
                .contains("reading the PodDisruptionBudgets")
        );
        // The first by name, whatever the map's order.
        let pods = map(&[("u1", Some("ns/z")), ("u2", Some("ns/a")), ("u3", None)]);
        assert_eq!(
            verdict(Some(&pods), Some(Some(&healthy))).as_deref(),
            Some("waiting for DaemonSet pod ns/a on this node to be Ready")
        );
        let pdbs = map(&[("ns/web", Some("ns/web"))]);
        assert_eq!(
            verdict(Some(&healthy), Some(Some(&pdbs))).as_deref(),
            Some("waiting for PodDisruptionBudget ns/web to have all its pods healthy again")
        );
        assert_eq!(verdict(Some(&healthy), Some(Some(&healthy))), None);
    }
}
