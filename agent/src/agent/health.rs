//! The post-reboot health gate: right after its reboot a node keeps the baton, neither passing
//! it on nor starting again, until it is healthy: the settle time has passed, its DaemonSet pods
//! are Ready, and (with `--gate-pdbs`) every PodDisruptionBudget has all its pods healthy again.

use std::time::{Duration, SystemTime};

use anyhow::Context;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::Client;
use kube::api::{Api, ListParams};

use crate::drain::PodInfo;
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

/// Why `node` may not pass the baton on yet after its reboot, if so.
pub(super) async fn settling(
    client: &Client,
    node: &Node,
    settle: Duration,
    gate_pdbs: bool,
) -> anyhow::Result<Option<String>> {
    let name = node.metadata.name.as_deref().unwrap_or_default();
    match due(
        node::time_of(node, node::LAST_REBOOT),
        SystemTime::now(),
        settle,
    ) {
        Due::No => return Ok(None),
        Due::Settling(left) => {
            return Ok(Some(format!(
                "settling after the reboot ({} left)",
                node::human(left)
            )));
        }
        Due::Check => {}
    }
    let pods: Api<Pod> = Api::all(client.clone());
    let on_node = pods
        .list(&ListParams::default().fields(&format!("spec.nodeName={name}")))
        .await
        .context("listing the node's pods for the health gate")?;
    for p in &on_node.items {
        let info = PodInfo::from_pod(p);
        if info.daemonset().is_some() && !info.finished && !pod_ready(p) {
            return Ok(Some(format!(
                "waiting for DaemonSet pod {}/{} on this node to be Ready",
                info.namespace, info.name
            )));
        }
    }
    if gate_pdbs {
        let pdbs: Api<PodDisruptionBudget> = Api::all(client.clone());
        let all = pdbs
            .list(&ListParams::default())
            .await
            .context("listing PodDisruptionBudgets for the health gate")?;
        for pdb in all.items {
            let st = pdb.status.unwrap_or_default();
            if st.current_healthy.unwrap_or(0) < st.expected_pods.unwrap_or(0) {
                return Ok(Some(format!(
                    "waiting for PodDisruptionBudget {}/{} to have all its pods healthy again",
                    pdb.metadata.namespace.unwrap_or_default(),
                    pdb.metadata.name.unwrap_or_default()
                )));
            }
        }
    }
    Ok(None)
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
}
