//! Scenarios the end-to-end tests share: nodes of one test's group with their agents, a node
//! stuck draining, rolling every node, and reading what baton left on the Nodes and the Lease.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

use crate::agent::{Method, SimNode};
use crate::rollout::{Driven, drive};
use crate::{Cluster, fixtures, wait_for};

/// How long a rollout of a few kwok nodes may take on a loaded 2-core machine.
pub const ROLLOUT: Duration = Duration::from_secs(180);
/// How long a single change may take to settle.
pub const SETTLE: Duration = Duration::from_secs(60);

/// Creates namespace `ns` and nodes `<ns>-1..=count` labelled `baton.test/group=<ns>`.
pub async fn setup(cluster: &Cluster, ns: &str, count: usize) -> (Client, Vec<String>) {
    let client = cluster.client().await.unwrap();
    cluster.namespace(&client, ns).await.unwrap();
    let names: Vec<String> = (1..=count).map(|i| format!("{ns}-{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    cluster
        .add_nodes(&client, &refs, &[("baton.test/group", ns)])
        .await
        .unwrap();
    (client, names)
}

/// One agent per node in `names`, coordinating in `ns`, with `extra` flags.
pub fn sims(
    cluster: &Cluster,
    ns: &str,
    names: &[String],
    method: Method,
    extra: &[&str],
) -> Vec<SimNode> {
    names
        .iter()
        .map(|n| SimNode::new(cluster, n, ns, method, extra).unwrap())
        .collect()
}

/// Flags every node for a reboot and starts its agent.
pub fn flag_and_start(nodes: &mut [SimNode]) {
    for n in nodes {
        n.flag().unwrap();
        n.start().unwrap();
    }
}

/// baton's annotations on `node`, but the last reboot's time (history, not state).
pub fn baton_annotations(node: &Node) -> BTreeMap<String, String> {
    node.metadata
        .annotations
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|(k, _)| k.starts_with("baton.dev/") && k != "baton.dev/last-reboot")
        .collect()
}

/// The holder of the Lease `baton` in `ns`, if any.
pub async fn lease_holder(client: &Client, ns: &str) -> Option<String> {
    Api::<Lease>::namespaced(client.clone(), ns)
        .get_opt("baton")
        .await
        .unwrap()
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
        .filter(|h| !h.is_empty())
}

/// Waits until every node is idle (no baton annotations but history), schedulable unless
/// `cordoned`, and the Lease is free.
pub async fn wait_clean(client: &Client, ns: &str, names: &[String], cordoned: &[&str]) {
    let nodes: Api<Node> = Api::all(client.clone());
    let clean = wait_for("every node clean and the lease free", SETTLE, || async {
        for n in names {
            let node = nodes.get(n).await?;
            let unsched = node
                .spec
                .as_ref()
                .and_then(|s| s.unschedulable)
                .unwrap_or(false);
            let ann = baton_annotations(&node);
            if !ann.is_empty() || unsched != cordoned.contains(&n.as_str()) {
                return Ok(None);
            }
        }
        Ok(lease_holder(client, ns).await.is_none().then_some(()))
    })
    .await;
    if let Err(e) = clean {
        let mut state = String::new();
        for n in names {
            if let Ok(node) = nodes.get(n).await {
                state.push_str(&format!(
                    "{n}: unschedulable={:?} {:?}\n",
                    node.spec.as_ref().and_then(|s| s.unschedulable),
                    baton_annotations(&node)
                ));
            }
        }
        state.push_str(&format!(
            "lease holder: {:?}",
            lease_holder(client, ns).await
        ));
        panic!("{e:#}\n{state}");
    }
}

/// Two nodes: node 2 cordoned by hand (so the one nginx pod lands on node 1), a PDB that never
/// allows its eviction, and node 1's agent stuck draining while it holds the lease.
pub async fn stuck_draining(
    cluster: &Cluster,
    ns: &str,
    extra: &[&str],
) -> (Client, Vec<String>, Vec<SimNode>) {
    let (client, names) = setup(cluster, ns, 2).await;
    let nodes_api: Api<Node> = Api::all(client.clone());
    fixtures::cordon(&client, &names[1], true).await.unwrap();
    fixtures::create_nginx(&client, ns, 1, ns, Some(json!({"maxUnavailable": 0})))
        .await
        .unwrap();
    // Without the pre-flight check, which would keep the node from starting its drain at all.
    let mut all = vec!["--pdb-preflight=false"];
    all.extend_from_slice(extra);
    let mut nodes = sims(cluster, ns, &names, Method::Command, &all);
    flag_and_start(&mut nodes[..1]);
    wait_for("node 1 stuck draining", SETTLE, || async {
        Ok((phase(&nodes_api.get(&names[0]).await?).as_deref() == Some("draining")).then_some(()))
    })
    .await
    .unwrap();
    assert_eq!(
        lease_holder(&client, ns).await.as_deref(),
        Some(names[0].as_str())
    );
    (client, names, nodes)
}

/// The baton phase recorded on `n`.
pub fn phase(n: &Node) -> Option<String> {
    baton_annotations(n).get("baton.dev/phase").cloned()
}

/// Reboots every node once (as their agents ask; each holding the Lease as it goes down) and
/// waits until all are clean.
pub async fn roll(
    cluster: &Cluster,
    client: &Client,
    ns: &str,
    names: &[String],
    nodes: &mut [SimNode],
) -> Driven {
    let driven = drive(cluster, client, nodes, 1, ROLLOUT).await.unwrap();
    wait_clean(client, ns, names, &[]).await;
    driven
}

/// Writes the Lease as held by `holder`, renewed now, for `seconds`.
pub async fn set_lease(client: &Client, ns: &str, holder: &str, seconds: i32) {
    set_named_lease(client, ns, "baton", holder, seconds).await;
}

/// Creates or overwrites Lease `name` as held by `holder` for `seconds`, renewed now.
pub async fn set_named_lease(client: &Client, ns: &str, name: &str, holder: &str, seconds: i32) {
    set_lease_renewed(client, ns, name, holder, seconds, Duration::ZERO).await;
}

/// Creates or overwrites Lease `name` as held by `holder` for `seconds`, with a renewTime
/// `ahead` in the future (a holder whose clock runs fast).
pub async fn set_lease_renewed(
    client: &Client,
    ns: &str,
    name: &str,
    holder: &str,
    seconds: i32,
    ahead: Duration,
) {
    let leases: Api<Lease> = Api::namespaced(client.clone(), ns);
    let renewed = k8s_openapi::jiff::Timestamp::now()
        + k8s_openapi::jiff::SignedDuration::try_from(ahead).unwrap();
    let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(renewed);
    let spec = json!({"holderIdentity": holder, "leaseDurationSeconds": seconds, "renewTime": now});
    match leases.get_opt(name).await.unwrap() {
        Some(_) => {
            leases
                .patch(
                    name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"spec": spec})),
                )
                .await
                .unwrap();
        }
        None => {
            let lease: Lease =
                serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).unwrap();
            leases.create(&PostParams::default(), &lease).await.unwrap();
        }
    }
}

/// The node's `baton.dev/waiting` annotation, once it contains `part` and not `unlike`.
pub async fn wait_waiting(client: &Client, node: &str, part: &str, unlike: Option<&str>) -> String {
    let nodes: Api<Node> = Api::all(client.clone());
    wait_for(
        &format!("{node} to say it waits: ...{part}... (not {unlike:?})"),
        SETTLE,
        || async {
            Ok(nodes
                .get(node)
                .await?
                .metadata
                .annotations
                .and_then(|a| a.get("baton.dev/waiting").cloned())
                .filter(|w| w.contains(part) && unlike.is_none_or(|u| !w.contains(u))))
        },
    )
    .await
    .unwrap()
}
