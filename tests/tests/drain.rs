//! The drain engine's rules, each against the real API server: `baton drain NODE` (the same
//! engine the agent uses) on a node of its own, with a spare node for the evicted pods.

use std::process::Output;
use std::time::Duration;

use baton_tests::agent::{Method, SimNode, baton_bin};
use baton_tests::{Cluster, fixtures, shared_audited, wait_for};
use futures::TryStreamExt;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::{Value, json};

const TIMEOUT: Duration = Duration::from_secs(60);

/// Namespace `ns`, node `<ns>-1` (to drain) and `<ns>-2` (spare, cordoned until [`ready`]).
async fn setup(cluster: &Cluster, ns: &str) -> Client {
    let client = cluster.client().await.unwrap();
    cluster.namespace(&client, ns).await.unwrap();
    let names = [format!("{ns}-1"), format!("{ns}-2")];
    cluster
        .add_nodes(
            &client,
            &[&names[0], &names[1]],
            &[("baton.test/group", ns)],
        )
        .await
        .unwrap();
    fixtures::cordon(&client, &names[1], true).await.unwrap();
    client
}

/// Opens the spare node, once the pods sit on the node to drain.
async fn ready(client: &Client, ns: &str) {
    fixtures::cordon(client, &format!("{ns}-2"), false)
        .await
        .unwrap();
}

async fn create<K>(client: &Client, ns: &str, v: Value)
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    let obj: K = serde_json::from_value(v).unwrap();
    Api::<K>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &obj)
        .await
        .unwrap();
}

fn deployment(name: &str, ns: &str, replicas: i32, extra_spec: Value) -> Value {
    let mut spec = json!({
        "nodeSelector": {"baton.test/group": ns},
        "containers": [{"name": "c", "image": "nginx:1.27"}],
    });
    if let (Some(s), Some(e)) = (spec.as_object_mut(), extra_spec.as_object()) {
        s.extend(e.clone());
    }
    json!({
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": spec},
        },
    })
}

fn bare_pod(name: &str, node: &str) -> Value {
    json!({
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "nginx:1.27"}]},
    })
}

/// Runs `baton drain NODE ARGS...` as the admin.
async fn drain(cluster: &Cluster, node: &str, args: &[&str]) -> Output {
    let mut cmd = tokio::process::Command::new(baton_bin().unwrap());
    cmd.arg("drain")
        .arg(node)
        .args(args)
        .env("KUBECONFIG", cluster.kubeconfig());
    cmd.output().await.unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

async fn pods_on(client: &Client, ns: &str, node: &str) -> Vec<Pod> {
    Api::<Pod>::namespaced(client.clone(), ns)
        .list(&ListParams::default().fields(&format!("spec.nodeName={node}")))
        .await
        .unwrap()
        .items
}

fn names(pods: &[Pod]) -> Vec<String> {
    let mut v: Vec<String> = pods
        .iter()
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    v.sort();
    v
}

/// The eviction requests for pod `name` in the audit log, in order: (response code, when the
/// API server received the request).
fn evictions(cluster: &Cluster, name: &str) -> anyhow::Result<Vec<(i64, jiff::Timestamp)>> {
    let audit = std::fs::read_to_string(cluster.audit_log())?;
    // Only the lines that can match are parsed: the log holds every request of the cluster.
    Ok(audit
        .lines()
        .filter(|l| l.contains(name) && l.contains("\"eviction\""))
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["objectRef"]["subresource"] == "eviction" && v["objectRef"]["name"] == name)
        .filter_map(|v| {
            let code = v["responseStatus"]["code"].as_i64()?;
            let at = v["requestReceivedTimestamp"].as_str()?.parse().ok()?;
            Some((code, at))
        })
        .collect())
}

/// Waits until the audit log shows the `n`th eviction request for pod `name` answered `code`;
/// returns when the API server received it.
async fn wait_eviction(cluster: &Cluster, name: &str, code: i64, n: usize) -> jiff::Timestamp {
    wait_for(
        &format!("eviction #{n} of {name} answered {code}"),
        TIMEOUT,
        || async {
            let seen: Vec<_> = evictions(cluster, name)?
                .into_iter()
                .filter(|(c, _)| *c == code)
                .collect();
            Ok(seen.get(n.saturating_sub(1)).map(|(_, at)| *at))
        },
    )
    .await
    .unwrap()
}

async fn unschedulable(client: &Client, node: &str) -> bool {
    Api::<Node>::all(client.clone())
        .get(node)
        .await
        .unwrap()
        .spec
        .and_then(|s| s.unschedulable)
        .unwrap_or(false)
}

#[tokio::test]
async fn daemonset_pods_are_skipped_or_refuse_the_drain() {
    let cluster = shared_audited();
    let ns = "drain-ds";
    let client = setup(cluster, ns).await;
    let ds: Value = serde_json::to_value(fixtures::daemonset("ds", ns).unwrap()).unwrap();
    create::<DaemonSet>(&client, ns, ds).await;
    fixtures::wait_ready_pods(&client, ns, "app=ds", 2)
        .await
        .unwrap();
    let node = format!("{ns}-1");

    let refused = drain(cluster, &node, &["--drain-ignore-daemonsets=false"]).await;
    assert!(!refused.status.success(), "{}", text(&refused));
    assert!(
        text(&refused).contains(&format!("{ns}/ds-")),
        "names the pod: {}",
        text(&refused)
    );
    assert!(
        !unschedulable(&client, &node).await,
        "refused before cordoning"
    );

    let before = pods_on(&client, ns, &node).await;
    let out = drain(cluster, &node, &[]).await;
    assert!(out.status.success(), "{}", text(&out));
    let after = pods_on(&client, ns, &node).await;
    assert_eq!(after.len(), 1);
    assert_eq!(
        after[0].metadata.uid, before[0].metadata.uid,
        "the DaemonSet pod stays"
    );
}

#[tokio::test]
async fn orphaned_daemonset_pods_need_force_like_kubectl() {
    let cluster = shared_audited();
    let ns = "drain-orphan";
    let client = setup(cluster, ns).await;
    let ds: Value = serde_json::to_value(fixtures::daemonset("ds", ns).unwrap()).unwrap();
    create::<DaemonSet>(&client, ns, ds).await;
    fixtures::wait_ready_pods(&client, ns, "app=ds", 2)
        .await
        .unwrap();
    // Delete the DaemonSet but orphan its pods: the garbage collector strips their owner.
    Api::<DaemonSet>::namespaced(client.clone(), ns)
        .delete("ds", &DeleteParams::orphan())
        .await
        .unwrap();
    let node = format!("{ns}-1");
    wait_for("the pod to lose its owner", TIMEOUT, || async {
        let pods = pods_on(&client, ns, &node).await;
        Ok(pods
            .iter()
            .all(|p| {
                p.metadata
                    .owner_references
                    .as_ref()
                    .is_none_or(Vec::is_empty)
            })
            .then_some(()))
    })
    .await
    .unwrap();
    let refused = drain(cluster, &node, &[]).await;
    assert!(!refused.status.success());
    assert!(text(&refused).contains("--force"), "{}", text(&refused));
    let out = drain(cluster, &node, &["--force"]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(pods_on(&client, ns, &node).await.is_empty());
}

#[tokio::test]
async fn a_pod_of_a_daemonset_that_is_not_apps_v1_is_evicted_like_kubectl() {
    let cluster = shared_audited();
    let ns = "drain-kruise";
    let client = setup(cluster, ns).await;
    let node = format!("{ns}-1");
    // Controlled by an OpenKruise Advanced DaemonSet: kubectl's DaemonSet rules are for apps/v1
    // DaemonSets only, so to kubectl this is an ordinary managed pod. The owner need not exist
    // (nor its API): a controller reference is all that makes a pod managed.
    let mut pod = bare_pod("advanced", &node);
    pod["metadata"]["ownerReferences"] = json!([{"apiVersion": "apps.kruise.io/v1alpha1",
        "kind": "DaemonSet", "name": "advanced", "uid": "6f1c0a52-9d1e-4f7a-8c43-1b2f0e6a7d55",
        "controller": true}]);
    create::<Pod>(&client, ns, pod).await;
    fixtures::wait_ready_pods(&client, ns, "app=advanced", 1)
        .await
        .unwrap();
    let out = drain(cluster, &node, &["--drain-timeout=30s"]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("1 evicted"), "{}", text(&out));
    assert_eq!(
        evictions(cluster, "advanced").unwrap().last().map(|e| e.0),
        Some(201),
        "evicted, not deleted"
    );
    assert!(pods_on(&client, ns, &node).await.is_empty());
}

#[tokio::test]
async fn mirror_pods_are_skipped() {
    let cluster = shared_audited();
    let ns = "drain-mirror";
    let client = setup(cluster, ns).await;
    let node = format!("{ns}-1");
    let mut mirror = bare_pod("static-web", &node);
    mirror["metadata"]["annotations"] = json!({"kubernetes.io/config.mirror": "hash"});
    create::<Pod>(&client, ns, mirror).await;
    let out = drain(cluster, &node, &[]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(names(&pods_on(&client, ns, &node).await), ["static-web"]);
}

#[tokio::test]
async fn finished_pods_are_deleted_without_waiting_on_pdbs() {
    let cluster = shared_audited();
    let ns = "drain-finished";
    let client = setup(cluster, ns).await;
    let node = format!("{ns}-1");
    create::<Job>(
        &client,
        ns,
        json!({
            "metadata": {"name": "once"},
            "spec": {"template": {"metadata": {"labels": {"app": "once"}}, "spec": {
                "nodeSelector": {"baton.test/group": ns},
                "restartPolicy": "Never",
                "containers": [{"name": "c", "image": "busybox:1.36"}]}}},
        }),
    )
    .await;
    // A budget that would refuse any eviction of the pod.
    create::<PodDisruptionBudget>(
        &client,
        ns,
        json!({"metadata": {"name": "once"},
        "spec": {"maxUnavailable": 0, "selector": {"matchLabels": {"app": "once"}}}}),
    )
    .await;
    wait_for("the Job's pod to succeed", TIMEOUT, || async {
        let pods = pods_on(&client, ns, &node).await;
        Ok(pods
            .iter()
            .any(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Succeeded"))
            .then_some(()))
    })
    .await
    .unwrap();
    let out = drain(cluster, &node, &["--drain-timeout=30s"]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("1 deleted"), "{}", text(&out));
    assert!(pods_on(&client, ns, &node).await.is_empty());
}

#[tokio::test]
async fn emptydir_pods_need_delete_emptydir_data_and_the_refusal_names_them() {
    let cluster = shared_audited();
    let ns = "drain-emptydir";
    let client = setup(cluster, ns).await;
    let node = format!("{ns}-1");
    create::<Deployment>(
        &client,
        ns,
        deployment(
            "scratch",
            ns,
            1,
            json!({"volumes": [{"name": "tmp", "emptyDir": {}}]}),
        ),
    )
    .await;
    fixtures::wait_ready_pods(&client, ns, "app=scratch", 1)
        .await
        .unwrap();
    ready(&client, ns).await;
    let refused = drain(cluster, &node, &[]).await;
    assert!(!refused.status.success());
    let t = text(&refused);
    assert!(
        t.contains(&format!("{ns}/scratch-")) && t.contains("--delete-emptydir-data"),
        "{t}"
    );
    assert!(
        !unschedulable(&client, &node).await,
        "refused before cordoning"
    );
    let out = drain(cluster, &node, &["--delete-emptydir-data"]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(pods_on(&client, ns, &node).await.is_empty());
    fixtures::wait_ready_pods(&client, ns, "app=scratch", 1)
        .await
        .unwrap();
}

#[tokio::test]
async fn unmanaged_pods_need_force() {
    let cluster = shared_audited();
    let ns = "drain-bare";
    let client = setup(cluster, ns).await;
    let node = format!("{ns}-1");
    create::<Pod>(&client, ns, bare_pod("pet", &node)).await;
    fixtures::wait_ready_pods(&client, ns, "app=pet", 1)
        .await
        .unwrap();
    let refused = drain(cluster, &node, &[]).await;
    assert!(!refused.status.success());
    let t = text(&refused);
    assert!(
        t.contains(&format!("{ns}/pet")) && t.contains("--force"),
        "{t}"
    );
    assert!(!unschedulable(&client, &node).await);
    let out = drain(cluster, &node, &["--force"]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(pods_on(&client, ns, &node).await.is_empty());
}

#[tokio::test]
async fn the_pod_selector_limits_what_is_drained() {
    let cluster = shared_audited();
    let ns = "drain-selector";
    let client = setup(cluster, ns).await;
    let node = format!("{ns}-1");
    create::<Deployment>(&client, ns, deployment("a", ns, 2, json!({}))).await;
    create::<Deployment>(&client, ns, deployment("b", ns, 2, json!({}))).await;
    let b_before = fixtures::wait_ready_pods(&client, ns, "app=b", 2)
        .await
        .unwrap();
    fixtures::wait_ready_pods(&client, ns, "app=a", 2)
        .await
        .unwrap();
    ready(&client, ns).await;
    let out = drain(cluster, &node, &["--drain-pod-selector=app=a"]).await;
    assert!(out.status.success(), "{}", text(&out));
    let left = pods_on(&client, ns, &node).await;
    assert_eq!(
        names(&left),
        names(&b_before),
        "only app=a pods left the node"
    );
}

#[tokio::test]
async fn the_grace_period_override_reaches_the_eviction() {
    let cluster = shared_audited();
    let ns = "drain-grace";
    let client = setup(cluster, ns).await;
    let node = format!("{ns}-1");
    create::<Deployment>(&client, ns, deployment("g", ns, 1, json!({}))).await;
    let pod = fixtures::wait_ready_pods(&client, ns, "app=g", 1)
        .await
        .unwrap()[0]
        .metadata
        .name
        .clone()
        .unwrap();
    ready(&client, ns).await;
    let out = drain(cluster, &node, &["--drain-grace-period=7"]).await;
    assert!(out.status.success(), "{}", text(&out));
    let audit = std::fs::read_to_string(cluster.audit_log()).unwrap();
    let grace: Vec<i64> = audit
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| {
            v["objectRef"]["subresource"] == "eviction" && v["objectRef"]["name"] == pod.as_str()
        })
        .filter_map(|v| v["requestObject"]["deleteOptions"]["gracePeriodSeconds"].as_i64())
        .collect();
    let lines: Vec<&str> = audit.lines().filter(|l| l.contains(&pod)).collect();
    assert_eq!(
        grace,
        [7],
        "the eviction of {pod} carried gracePeriodSeconds=7: {lines:#?}"
    );
}

#[tokio::test]
async fn pods_terminating_for_too_long_are_not_waited_for() {
    let cluster = shared_audited();
    let ns = "drain-skip";
    let client = cluster.client().await.unwrap();
    cluster.namespace(&client, ns).await.unwrap();
    // A node no kubelet (kwok) manages: a pod deleted there stays terminating for ever.
    let node = "drain-skip-dead";
    let n: Node = serde_json::from_value(json!({"metadata": {"name": node}})).unwrap();
    Api::<Node>::all(client.clone())
        .create(&PostParams::default(), &n)
        .await
        .unwrap();
    create::<Pod>(&client, ns, bare_pod("stuck", node)).await;
    Api::<Pod>::namespaced(client.clone(), ns)
        .delete("stuck", &DeleteParams::default().grace_period(1))
        .await
        .unwrap();
    let timed_out = drain(cluster, node, &["--force", "--drain-timeout=3s"]).await;
    assert!(
        !timed_out.status.success(),
        "waits for a terminating pod by default"
    );
    assert!(
        text(&timed_out).contains("timed out"),
        "{}",
        text(&timed_out)
    );
    let out = drain(
        cluster,
        node,
        &[
            "--force",
            "--skip-wait-for-delete-timeout=1s",
            "--drain-timeout=30s",
        ],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        names(&pods_on(&client, ns, node).await),
        ["stuck"],
        "still terminating"
    );
}

#[tokio::test]
async fn a_pod_under_two_pdbs_fails_alone_and_the_others_are_still_evicted() {
    let cluster = shared_audited();
    let ns = "drain-twopdb";
    let client = setup(cluster, ns).await;
    let node = format!("{ns}-1");
    let budget = |name: &str, app: &str, max_unavailable: i32| {
        json!({"metadata": {"name": name}, "spec": {"maxUnavailable": max_unavailable,
            "selector": {"matchLabels": {"app": app}}}})
    };
    // "w" is covered by two budgets, which the Eviction API refuses for good; "free" has no
    // budget; "held" is refused by its budget until the test relaxes it, after w has failed.
    create::<Deployment>(&client, ns, deployment("w", ns, 1, json!({}))).await;
    create::<Deployment>(&client, ns, deployment("free", ns, 2, json!({}))).await;
    create::<Deployment>(&client, ns, deployment("held", ns, 1, json!({}))).await;
    for name in ["budget-one", "budget-two"] {
        create::<PodDisruptionBudget>(&client, ns, budget(name, "w", 1)).await;
    }
    create::<PodDisruptionBudget>(&client, ns, budget("held", "held", 0)).await;
    let mut on_node = Vec::new();
    for (app, n) in [("w", 1), ("free", 2), ("held", 1)] {
        on_node.extend(
            fixtures::wait_ready_pods(&client, ns, &format!("app={app}"), n)
                .await
                .unwrap(),
        );
    }
    ready(&client, ns).await;
    let w = names(&on_node)
        .into_iter()
        .find(|n| n.starts_with("w-"))
        .unwrap();
    let held = names(&on_node)
        .into_iter()
        .find(|n| n.starts_with("held-"))
        .unwrap();
    let running = drain(cluster, &node, &["--drain-timeout=60s"]);
    let choreography = async {
        // Once w has failed (500), let "held" go: the drain must still be evicting it.
        wait_eviction(cluster, &w, 500, 1).await;
        wait_eviction(cluster, &held, 429, 1).await;
        fixtures::patch_pdb(&client, ns, "held", json!({"maxUnavailable": 1}))
            .await
            .unwrap();
    };
    let (out, ()) = tokio::join!(running, choreography);
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(t.contains("more than one PodDisruptionBudget"), "{t}");
    assert!(
        t.contains("budget-one") && t.contains("budget-two") && t.contains(&format!("{ns}/{w}")),
        "{t}"
    );
    assert!(
        !t.contains("timed out"),
        "failed at once, not at the deadline: {t}"
    );
    assert_eq!(
        names(&pods_on(&client, ns, &node).await),
        [w],
        "every other pod was evicted and is gone when the drain returns"
    );
    assert_eq!(
        evictions(cluster, &held).unwrap().last().map(|e| e.0),
        Some(201)
    );
}

#[tokio::test]
async fn a_pod_that_vanished_before_its_eviction_counts_as_gone() {
    let cluster = shared_audited();
    let ns = "drain-vanish";
    let client = setup(cluster, ns).await;
    let node = format!("{ns}-1");
    // "a" is blocked by its PDB; with one eviction at a time, "b" waits behind it.
    create::<Deployment>(&client, ns, deployment("a", ns, 1, json!({}))).await;
    create::<PodDisruptionBudget>(
        &client,
        ns,
        json!({"metadata": {"name": "a"},
        "spec": {"maxUnavailable": 0, "selector": {"matchLabels": {"app": "a"}}}}),
    )
    .await;
    create::<Pod>(&client, ns, bare_pod("b", &node)).await;
    fixtures::wait_ready_pods(&client, ns, "app=a", 1)
        .await
        .unwrap();
    fixtures::wait_ready_pods(&client, ns, "app=b", 1)
        .await
        .unwrap();
    ready(&client, ns).await;
    let a = pods_on(&client, ns, &node).await;
    let a_name = names(&a).into_iter().find(|n| n.starts_with("a-")).unwrap();
    let mut cmd = tokio::process::Command::new(baton_bin().unwrap());
    cmd.args([
        "drain",
        &node,
        "--force",
        "--drain-parallelism=1",
        "--drain-timeout=60s",
    ])
    .env("KUBECONFIG", cluster.kubeconfig())
    .kill_on_drop(true);
    let running = cmd.output();
    let choreography = async {
        // Once "a" has been refused (429), delete "b" by hand, then let "a" go.
        wait_eviction(cluster, &a_name, 429, 1).await;
        Api::<Pod>::namespaced(client.clone(), ns)
            .delete("b", &DeleteParams::default())
            .await
            .unwrap();
        fixtures::wait_ready_pods(&client, ns, "app=b", 0)
            .await
            .unwrap();
        fixtures::patch_pdb(&client, ns, "a", json!({"maxUnavailable": 1}))
            .await
            .unwrap();
    };
    let (out, ()) = tokio::join!(running, choreography);
    let out = out.unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("1 evicted"),
        "only a was evicted: {}",
        text(&out)
    );
    assert!(pods_on(&client, ns, &node).await.is_empty());
}

/// Once the `n`th refusal (429) of pod `pod`'s eviction is in the audit log, relaxes PDB `nginx`
/// at once; returns when a watch saw its status allow a disruption.
async fn relax_right_after_a_refusal(
    cluster: &Cluster,
    client: &Client,
    ns: &str,
    pod: &str,
    n: usize,
) -> jiff::Timestamp {
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), ns);
    let allowed = |p: &PodDisruptionBudget| {
        p.status
            .as_ref()
            .and_then(|s| s.disruptions_allowed)
            .unwrap_or(0)
            > 0
    };
    let mut seen = std::pin::pin!(
        watcher::watcher(
            pdbs,
            watcher::Config::default().fields("metadata.name=nginx")
        )
        .applied_objects()
    );
    // Watching (the budget still allows nothing) before the refusal and the patch.
    let first = tokio::time::timeout(TIMEOUT, seen.try_next()).await;
    assert!(!allowed(&first.unwrap().unwrap().unwrap()));
    wait_eviction(cluster, pod, 429, n).await;
    fixtures::patch_pdb(client, ns, "nginx", json!({"maxUnavailable": 1}))
        .await
        .unwrap();
    tokio::time::timeout(TIMEOUT, async {
        while let Some(p) = seen.try_next().await.unwrap() {
            if allowed(&p) {
                return jiff::Timestamp::now();
            }
        }
        panic!("the PDB watch ended");
    })
    .await
    .unwrap()
}

/// Namespace `ns` with one nginx pod on node `<ns>-1` under a PDB that allows no eviction, and
/// the spare node open; returns the client and the node to drain.
async fn nginx_behind_a_blocking_pdb(cluster: &Cluster, ns: &str) -> (Client, String) {
    let client = setup(cluster, ns).await;
    fixtures::create_nginx(&client, ns, 1, ns, Some(json!({"maxUnavailable": 0})))
        .await
        .unwrap();
    ready(&client, ns).await;
    (client, format!("{ns}-1"))
}

#[tokio::test]
async fn disable_eviction_deletes_through_a_blocking_pdb() {
    let cluster = shared_audited();
    let ns = "drain-noevict";
    let (client, node) = nginx_behind_a_blocking_pdb(cluster, ns).await;
    let blocked = drain(cluster, &node, &["--drain-timeout=3s"]).await;
    assert!(!blocked.status.success(), "the PDB blocks an eviction");
    let out = drain(
        cluster,
        &node,
        &["--disable-eviction", "--drain-timeout=30s"],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(pods_on(&client, ns, &node).await.is_empty());
}

#[tokio::test]
async fn timeout_action_delete_escalates_after_the_deadline() {
    let cluster = shared_audited();
    let ns = "drain-escalate";
    let (client, node) = nginx_behind_a_blocking_pdb(cluster, ns).await;
    let out = drain(
        cluster,
        &node,
        &["--drain-timeout=2s", "--drain-timeout-action=delete"],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(pods_on(&client, ns, &node).await.is_empty());
}

#[tokio::test]
async fn the_agent_shows_drain_progress_on_the_node() {
    let cluster = shared_audited();
    let ns = "drain-progress";
    let (client, node) = nginx_behind_a_blocking_pdb(cluster, ns).await;
    let mut sim = SimNode::new(
        cluster,
        &node,
        ns,
        Method::Command,
        &["--pdb-preflight=false"],
    )
    .unwrap();
    sim.flag().unwrap();
    sim.start().unwrap();
    let nodes: Api<Node> = Api::all(client.clone());
    let ann = wait_for("drain progress on the node", TIMEOUT, || async {
        let a = nodes
            .get(&node)
            .await?
            .metadata
            .annotations
            .unwrap_or_default();
        let blocked = a
            .get("baton.dev/drain-last-error")
            .is_some_and(|e| e.contains("disruption budget"));
        Ok((blocked && a.get("baton.dev/drain-pending").is_some_and(|p| p == "1")).then_some(a))
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", sim.log()));
    assert!(
        ann.get("baton.dev/drain-last-error")
            .unwrap()
            .contains(&format!("{ns}/nginx-"))
    );
    // Relax the budget right after a refusal: the PDB watch retries the eviction as soon as the
    // budget's status allows it, long before the 5 s fallback retry would.
    let pod = names(&pods_on(&client, ns, &node).await).remove(0);
    let refusals = evictions(cluster, &pod)
        .unwrap()
        .iter()
        .filter(|e| e.0 == 429)
        .count();
    let allowed_at = relax_right_after_a_refusal(cluster, &client, ns, &pod, refusals + 1).await;
    let evicted_at = wait_eviction(cluster, &pod, 201, 1).await;
    let took = evicted_at.duration_since(allowed_at);
    assert!(
        took < jiff::SignedDuration::from_millis(2500),
        "evicted {took:#} after the budget allowed it (the fallback retry waits 5 s)\n{}",
        sim.log()
    );
    sim.wait_triggered(TIMEOUT).await.unwrap();
    let a = nodes
        .get(&node)
        .await
        .unwrap()
        .metadata
        .annotations
        .unwrap_or_default();
    assert!(
        !a.contains_key("baton.dev/drain-pending") && !a.contains_key("baton.dev/drain-last-error"),
        "{a:?}"
    );
    let events: Vec<String> = fixtures::node_events(&client, &node)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|e| e.reason)
        .collect();
    for r in ["DrainStarted", "Drained"] {
        assert!(events.iter().any(|e| e == r), "no {r} in {events:?}");
    }
}
