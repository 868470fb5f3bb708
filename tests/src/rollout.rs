//! Drives simulated reboots while real agents roll through their nodes: whenever an agent
//! triggers a reboot, the harness checks that its node holds the Lease at that instant, then
//! reboots the node (see [`SimNode::reboot`]).

use std::time::Duration;

use anyhow::{Result, bail};
use k8s_openapi::api::core::v1::Node;
use kube::Client;
use kube::api::Api;

use crate::agent::SimNode;
use crate::cluster::Cluster;
use crate::wait::wait_for;

/// How often the harness looks for reboot triggers (a local file per node).
const TRIGGER_POLL: Duration = Duration::from_millis(50);

/// What the harness saw while driving.
#[derive(Debug, Default)]
pub struct Driven {
    /// Reboots where the node did not hold the Lease when the host went down.
    pub fencing_violations: Vec<String>,
    /// The order in which nodes rebooted.
    pub order: Vec<String>,
    /// Each reboot's node and the Leases it held as its host went down.
    pub held_at_reboot: Vec<(String, Vec<String>)>,
}

/// Reboots nodes as their agents ask, until every node in `nodes` has rebooted at least
/// `boots` times in total... or `timeout` passes. Fails if a node rebooted without holding the
/// Lease.
pub async fn drive(
    cluster: &Cluster,
    client: &Client,
    nodes: &mut [SimNode],
    boots: u32,
    timeout: Duration,
) -> Result<Driven> {
    let driven = drive_with(cluster, client, nodes, boots, timeout, |_, _| {}).await?;
    if !driven.fencing_violations.is_empty() {
        bail!("fencing violated: {:?}", driven.fencing_violations);
    }
    Ok(driven)
}

/// [`drive`], calling `on_reboot(node, lease holder)` as each simulated reboot begins.
pub async fn drive_with(
    cluster: &Cluster,
    client: &Client,
    nodes: &mut [SimNode],
    boots: u32,
    timeout: Duration,
    mut on_reboot: impl FnMut(&str, Option<&str>),
) -> Result<Driven> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut driven = Driven::default();
    loop {
        for n in nodes.iter_mut() {
            if n.triggers() > 0 {
                let holder = n.reboot_with(cluster, client, &mut on_reboot).await?;
                if holder.as_deref() != Some(n.name.as_str()) {
                    driven.fencing_violations.push(format!(
                        "{} rebooted while the lease holder was {holder:?}",
                        n.name
                    ));
                }
                driven.order.push(n.name.clone());
                driven
                    .held_at_reboot
                    .push((n.name.clone(), n.held_at_reboot.clone()));
            }
            if let Some(status) = n.exited() {
                bail!("the agent of {} exited ({status}):\n{}", n.name, n.log());
            }
        }
        if nodes.iter().all(|n| n.boots() >= boots) {
            return Ok(driven);
        }
        if tokio::time::Instant::now() >= deadline {
            let state: Vec<String> = nodes
                .iter()
                .map(|n| format!("{}: {} boot(s)", n.name, n.boots()))
                .collect();
            let logs: Vec<String> = nodes
                .iter()
                .map(|n| format!("--- {} ---\n{}", n.name, tail(&n.log(), 30)))
                .collect();
            bail!(
                "timed out after {timeout:?}: {}\n{}",
                state.join(", "),
                logs.join("\n")
            );
        }
        tokio::time::sleep(TRIGGER_POLL).await;
    }
}

/// Waits until none of `names` is in a cycle (no `baton.dev/phase`) or cordoned.
pub async fn wait_idle(client: &Client, names: &[String], timeout: Duration) -> Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    wait_for("every node idle and uncordoned", timeout, || async {
        for n in names {
            let node = nodes.get(n).await?;
            let busy = node
                .metadata
                .annotations
                .as_ref()
                .is_some_and(|a| a.contains_key("baton.dev/phase"));
            let cordoned = node
                .spec
                .as_ref()
                .and_then(|s| s.unschedulable)
                .unwrap_or(false);
            if busy || cordoned {
                return Ok(None);
            }
        }
        Ok(Some(()))
    })
    .await
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
