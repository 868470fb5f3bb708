//! The seed scenario's objects (an nginx Deployment, its Service and a PodDisruptionBudget),
//! small queries and changes over them and the nodes, shared by the end-to-end tests, the demo
//! and the benchmark.

use std::time::Duration;

use anyhow::Result;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{Event, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::Client;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

use crate::wait::wait_for;

/// How long pods may take to be scheduled and reported Running/Ready by kwok.
pub const POD_TIMEOUT: Duration = Duration::from_secs(90);

/// An nginx Deployment labelled `app: <name>`, its pods pinned to nodes labelled
/// `baton.test/group: <group>` and spread across them.
pub fn nginx_deployment(name: &str, replicas: i32, group: &str) -> Result<Deployment> {
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "nodeSelector": {"baton.test/group": group},
                    "topologySpreadConstraints": [{
                        "maxSkew": 1,
                        "topologyKey": "kubernetes.io/hostname",
                        "whenUnsatisfiable": "ScheduleAnyway",
                        "labelSelector": {"matchLabels": {"app": name}},
                    }],
                    "containers": [{
                        "name": "nginx",
                        "image": "nginx:1.27",
                        "ports": [{"containerPort": 80}],
                    }],
                },
            },
        },
    }))?)
}

/// A DaemonSet labelled `app: <name>` on the nodes labelled `baton.test/group: <group>`.
pub fn daemonset(name: &str, group: &str) -> Result<DaemonSet> {
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "nodeSelector": {"baton.test/group": group},
                    "containers": [{"name": "agent", "image": "busybox:1.36"}],
                },
            },
        },
    }))?)
}

/// A ClusterIP Service selecting `app: <name>`.
pub fn service(name: &str) -> Result<Service> {
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"selector": {"app": name}, "ports": [{"port": 80, "targetPort": 80}]},
    }))?)
}

/// A PodDisruptionBudget over `app: <name>` with the given `spec` fields.
pub fn pdb(name: &str, spec: serde_json::Value) -> Result<PodDisruptionBudget> {
    let mut full = json!({"selector": {"matchLabels": {"app": name}}});
    if let (Some(full), Some(extra)) = (full.as_object_mut(), spec.as_object()) {
        full.extend(extra.clone());
    }
    Ok(serde_json::from_value(
        json!({"metadata": {"name": name}, "spec": full}),
    )?)
}

/// Creates the seed scenario in `ns`: `replicas` nginx pods on the `group` nodes, a Service and
/// a PDB with `pdb_spec`, and waits until all pods are Ready.
pub async fn create_nginx(
    client: &Client,
    ns: &str,
    replicas: i32,
    group: &str,
    pdb_spec: Option<serde_json::Value>,
) -> Result<()> {
    let pp = PostParams::default();
    Api::<Deployment>::namespaced(client.clone(), ns)
        .create(&pp, &nginx_deployment("nginx", replicas, group)?)
        .await?;
    Api::<Service>::namespaced(client.clone(), ns)
        .create(&pp, &service("nginx")?)
        .await?;
    if let Some(spec) = pdb_spec {
        Api::<PodDisruptionBudget>::namespaced(client.clone(), ns)
            .create(&pp, &pdb("nginx", spec)?)
            .await?;
    }
    wait_ready_pods(client, ns, "app=nginx", replicas as usize).await?;
    Ok(())
}

/// Whether a pod is Running with its Ready condition True.
pub fn pod_is_ready(pod: &Pod) -> bool {
    let Some(status) = &pod.status else {
        return false;
    };
    status.phase.as_deref() == Some("Running")
        && status
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True")
}

/// Waits until exactly `count` pods matching `selector` are scheduled, Running and Ready (and
/// none is terminating), and returns them.
pub async fn wait_ready_pods(
    client: &Client,
    ns: &str,
    selector: &str,
    count: usize,
) -> Result<Vec<Pod>> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let lp = ListParams::default().labels(selector);
    wait_for(
        &format!("{count} ready pods matching {selector} in {ns}"),
        POD_TIMEOUT,
        || {
            let (pods, lp) = (pods.clone(), lp.clone());
            async move {
                let list = pods.list(&lp).await?.items;
                let live: Vec<Pod> = list
                    .into_iter()
                    .filter(|p| p.metadata.deletion_timestamp.is_none())
                    .collect();
                let ready = live.iter().filter(|p| pod_is_ready(p)).count();
                Ok((live.len() == count && ready == count).then_some(live))
            }
        },
    )
    .await
}

/// The number of ready endpoints across the EndpointSlices of Service `name`.
pub fn ready_endpoints(slices: &[EndpointSlice]) -> usize {
    slices
        .iter()
        .flat_map(|s| s.endpoints.iter().flatten())
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(false))
        .count()
}

/// The EndpointSlices of Service `name` in `ns`.
pub async fn endpoint_slices(client: &Client, ns: &str, name: &str) -> Result<Vec<EndpointSlice>> {
    let api: Api<EndpointSlice> = Api::namespaced(client.clone(), ns);
    let lp = ListParams::default().labels(&format!("kubernetes.io/service-name={name}"));
    Ok(api.list(&lp).await?.items)
}

/// Waits until Service `name` in `ns` has exactly `count` ready endpoints.
pub async fn wait_ready_endpoints(
    client: &Client,
    ns: &str,
    name: &str,
    count: usize,
) -> Result<()> {
    wait_for(
        &format!("{count} ready endpoints of {ns}/{name}"),
        POD_TIMEOUT,
        || async {
            Ok((ready_endpoints(&endpoint_slices(client, ns, name).await?) == count).then_some(()))
        },
    )
    .await
}

/// Cordons (`on`) or uncordons Node `node`, as `kubectl cordon`/`uncordon` do.
pub async fn cordon(client: &Client, node: &str, on: bool) -> Result<()> {
    let patch = json!({"spec": {"unschedulable": if on { Some(true) } else { None }}});
    Api::<Node>::all(client.clone())
        .patch(node, &PatchParams::default(), &Patch::Merge(patch))
        .await?;
    Ok(())
}

/// Merges `spec` into PodDisruptionBudget `ns/name` (e.g. to loosen it mid-test).
pub async fn patch_pdb(
    client: &Client,
    ns: &str,
    name: &str,
    spec: serde_json::Value,
) -> Result<()> {
    Api::<PodDisruptionBudget>::namespaced(client.clone(), ns)
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": spec })),
        )
        .await?;
    Ok(())
}

/// The core/v1 Events about Node `node`.
pub async fn node_events(client: &Client, node: &str) -> Result<Vec<Event>> {
    Ok(Api::<Event>::all(client.clone())
        .list(&ListParams::default().fields(&format!("involvedObject.name={node}")))
        .await?
        .items)
}
