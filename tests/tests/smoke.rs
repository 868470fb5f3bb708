//! Smoke tests that prove the test control plane is a real one: nodes, scheduling, endpoints,
//! PodDisruptionBudgets enforced by the Eviction API, and Lease optimistic concurrency.

use std::time::Duration;

use baton_tests::fixtures;
use baton_tests::{cluster::node_is_ready, shared, wait_for};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, EvictParams, ListParams, PostParams};
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(90);

fn is_status(err: &kube::Error, code: u16) -> bool {
    matches!(err, kube::Error::Api(s) if s.code == code)
}

#[tokio::test]
async fn three_kwok_nodes_become_ready() {
    let cluster = shared();
    let client = cluster.client().await.unwrap();
    let names = ["smoke-ready-1", "smoke-ready-2", "smoke-ready-3"];
    cluster
        .add_nodes(&client, &names, &[("baton.test/group", "smoke-ready")])
        .await
        .unwrap();
    let nodes: Api<Node> = Api::all(client);
    let list = nodes
        .list(&ListParams::default().labels("baton.test/group=smoke-ready"))
        .await
        .unwrap();
    assert_eq!(list.items.len(), 3);
    assert!(list.items.iter().all(node_is_ready), "{list:?}");
}

#[tokio::test]
async fn node_goes_down_and_comes_back_with_a_new_boot_id() {
    let cluster = shared();
    let client = cluster.client().await.unwrap();
    let name = "smoke-reboot-1";
    cluster
        .add_nodes(&client, &[name], &[("baton.test/group", "smoke-reboot")])
        .await
        .unwrap();
    let nodes: Api<Node> = Api::all(client.clone());
    let boot = |n: &Node| {
        n.status
            .as_ref()
            .and_then(|s| s.node_info.as_ref())
            .map(|i| i.boot_id.clone())
    };
    let before = boot(&nodes.get(name).await.unwrap());
    cluster.node_down(&client, name).await.unwrap();
    assert!(!node_is_ready(&nodes.get(name).await.unwrap()));
    cluster.node_up(&client, name, 1).await.unwrap();
    let after = nodes.get(name).await.unwrap();
    assert!(node_is_ready(&after));
    assert_ne!(boot(&after), before);
}

#[tokio::test]
async fn deployment_gets_scheduled_and_service_gets_ready_endpoints() {
    let cluster = shared();
    let client = cluster.client().await.unwrap();
    let (ns, group) = ("smoke-deploy", "smoke-deploy");
    cluster
        .add_nodes(
            &client,
            &["smoke-deploy-1", "smoke-deploy-2"],
            &[("baton.test/group", group)],
        )
        .await
        .unwrap();
    cluster.namespace(&client, ns).await.unwrap();
    fixtures::create_nginx(&client, ns, 2, group, None)
        .await
        .unwrap();

    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    for pod in pods
        .list(&ListParams::default().labels("app=nginx"))
        .await
        .unwrap()
    {
        let node = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default();
        assert!(
            node.starts_with("smoke-deploy-"),
            "pod on unexpected node {node:?}"
        );
        assert!(fixtures::pod_is_ready(&pod));
    }
    fixtures::wait_ready_endpoints(&client, ns, "nginx", 2)
        .await
        .unwrap();
}

#[tokio::test]
async fn pdb_is_enforced_by_the_eviction_api() {
    let cluster = shared();
    let client = cluster.client().await.unwrap();
    let (ns, group) = ("smoke-pdb", "smoke-pdb");
    cluster
        .add_nodes(
            &client,
            &["smoke-pdb-1", "smoke-pdb-2"],
            &[("baton.test/group", group)],
        )
        .await
        .unwrap();
    cluster.namespace(&client, ns).await.unwrap();
    fixtures::create_nginx(&client, ns, 2, group, Some(json!({"minAvailable": 1})))
        .await
        .unwrap();

    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), ns);
    wait_for(
        "the disruption controller to allow 1 disruption",
        TIMEOUT,
        || {
            let pdbs = pdbs.clone();
            async move {
                let pdb = pdbs.get("nginx").await?;
                let st = pdb.status.unwrap_or_default();
                Ok(
                    (st.disruptions_allowed == Some(1) && st.current_healthy == Some(2))
                        .then_some(()),
                )
            }
        },
    )
    .await
    .unwrap();

    // Cordon both nodes, so the replacement of an evicted pod stays Pending: otherwise kwok makes
    // it Ready within milliseconds and the PDB may allow the second eviction too.
    let cordon = |on: bool| {
        let client = client.clone();
        async move {
            for n in ["smoke-pdb-1", "smoke-pdb-2"] {
                fixtures::cordon(&client, n, on).await.unwrap();
            }
        }
    };
    cordon(true).await;

    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let names: Vec<String> = pods
        .list(&ListParams::default().labels("app=nginx"))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .collect();
    assert_eq!(names.len(), 2);
    pods.evict(&names[0], &EvictParams::default())
        .await
        .unwrap();
    let second = pods.evict(&names[1], &EvictParams::default()).await;
    match second {
        Err(e) if is_status(&e, 429) => {}
        other => panic!("second eviction should get 429 Too Many Requests, got {other:?}"),
    }

    // The Deployment replaces the evicted pod once there is room again.
    cordon(false).await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let live = fixtures::wait_ready_pods(&client, ns, "app=nginx", 2)
        .await
        .unwrap();
    // The evicted pod is gone; the one whose eviction was refused is still there.
    let live: Vec<&str> = live
        .iter()
        .filter_map(|p| p.metadata.name.as_deref())
        .collect();
    assert!(!live.contains(&names[0].as_str()), "{live:?}");
    assert!(live.contains(&names[1].as_str()), "{live:?}");
    wait_for(
        "the Deployment to report 2 ready replicas",
        TIMEOUT,
        || async {
            let status = deployments.get("nginx").await?.status.unwrap_or_default();
            Ok((status.ready_replicas == Some(2)).then_some(()))
        },
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn lease_updates_need_the_current_resource_version() {
    let cluster = shared();
    let client = cluster.client().await.unwrap();
    let ns = "smoke-lease";
    cluster.namespace(&client, ns).await.unwrap();
    let leases: Api<Lease> = Api::namespaced(client, ns);
    let lease: Lease = serde_json::from_value(json!({
        "metadata": {"name": "baton"},
        "spec": {"holderIdentity": "node-a", "leaseDurationSeconds": 60},
    }))
    .unwrap();
    let created = leases.create(&PostParams::default(), &lease).await.unwrap();
    let stale_rv = created.metadata.resource_version.clone();
    assert!(stale_rv.is_some());

    let mut update = created.clone();
    update.spec.as_mut().unwrap().holder_identity = Some("node-b".into());
    let updated = leases
        .replace("baton", &PostParams::default(), &update)
        .await
        .unwrap();
    assert_eq!(
        updated.spec.unwrap().holder_identity.as_deref(),
        Some("node-b")
    );

    // The same stale object again: its resourceVersion no longer matches.
    let mut stale = created;
    stale.spec.as_mut().unwrap().holder_identity = Some("node-c".into());
    let err = leases
        .replace("baton", &PostParams::default(), &stale)
        .await
        .unwrap_err();
    assert!(is_status(&err, 409), "expected 409 Conflict, got {err:?}");
    let current = leases.get("baton").await.unwrap();
    assert_eq!(
        current.spec.unwrap().holder_identity.as_deref(),
        Some("node-b")
    );
}
