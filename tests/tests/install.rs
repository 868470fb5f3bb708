//! The shipped manifests against the real API server: they apply (server-side dry run, then for
//! real), the DaemonSet lands on every node, and the seed rollout works with every agent
//! authenticated as the manifests' ServiceAccount through a token bound to its DaemonSet pod —
//! which proves the RBAC is enough. The `a_baton_token_*` tests take such a token as stolen: its
//! node's agent's own writes pass, the admission policies refuse the rest (README, "Threat
//! model"), and what nothing can refuse is shown for what it is.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use baton_tests::agent::{Method, SimNode};
use baton_tests::observe::Recorder;
use baton_tests::process::output_of as run;
use baton_tests::rollout::{drive, wait_idle};
use baton_tests::{Cluster, fixtures, shared, wait_for};
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod, Secret, ServiceAccount};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{
    Api, DeleteParams, EvictParams, ListParams, Patch, PatchParams, PostParams, Preconditions,
};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(90);

fn manifests(variant: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../manifests")
        .join(variant)
}

fn kubectl(cluster: &Cluster, args: &[&str], stdin: Option<&str>) -> String {
    run(cluster.kubectl(), args, stdin)
}

fn helm(cluster: &Cluster, args: &[&str]) -> String {
    run(cluster.helm(), args, None)
}

/// The chart rendered as release `release` in namespace `ns`, with `values` (`key=value`, each
/// given to `--set`).
fn render_chart(cluster: &Cluster, release: &str, ns: &str, values: &[&str]) -> String {
    let chart = chart();
    let mut args = vec!["template", release, &chart, "--namespace", ns];
    for v in values {
        args.extend(["--set", v]);
    }
    helm(cluster, &args)
}

/// The objects of rendered `yaml`, as JSON, in order.
fn objects(cluster: &Cluster, yaml: &str) -> Vec<serde_json::Value> {
    let json = kubectl(
        cluster,
        &["create", "--dry-run=client", "-o", "json", "-f", "-"],
        Some(yaml),
    );
    // One JSON object per rendered document.
    serde_json::Deserializer::from_str(&json)
        .into_iter::<serde_json::Value>()
        .map(Result::unwrap)
        .collect()
}

fn kind<'a>(objects: &'a [serde_json::Value], kind: &str) -> &'a serde_json::Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} rendered"))
}

fn chart() -> String {
    manifests("helm/baton").display().to_string()
}

/// Applies `manifests/` (the `command` variant) once per test binary, after a server-side dry run
/// of both variants (which needs their namespace to exist).
fn install(cluster: &Cluster) {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        kubectl(cluster, &["create", "namespace", "baton-system"], None);
        for variant in ["signal", ""] {
            let yaml = kubectl(
                cluster,
                &["kustomize", manifests(variant).to_str().unwrap()],
                None,
            );
            assert!(!yaml.contains("kind: Secret"), "no Secret anywhere");
            kubectl(
                cluster,
                &["apply", "--server-side", "--dry-run=server", "-f", "-"],
                Some(&yaml),
            );
        }
        let yaml = kubectl(
            cluster,
            &["kustomize", manifests("").to_str().unwrap()],
            None,
        );
        kubectl(cluster, &["apply", "--server-side", "-f", "-"], Some(&yaml));
    });
}

/// Adds kwok nodes `names` (labelled `baton.test/group=<group>`) and returns the baton pod on
/// each ([`pods_on`]).
async fn baton_pods(
    cluster: &Cluster,
    admin: &Client,
    names: &[&str],
    group: &str,
    ns: &str,
) -> Vec<Pod> {
    cluster
        .add_nodes(admin, names, &[("baton.test/group", group)])
        .await
        .unwrap();
    pods_on(admin, names, ns).await
}

/// The pod the baton DaemonSet in `ns` runs on each of `names`, in order, once all are Ready.
async fn pods_on(admin: &Client, names: &[&str], ns: &str) -> Vec<Pod> {
    let pods: Api<Pod> = Api::namespaced(admin.clone(), ns);
    wait_for("a baton pod on every node", TIMEOUT, || async {
        let listed = pods
            .list(&ListParams::default().labels("app.kubernetes.io/name=baton"))
            .await?
            .items;
        let on = |node: &str| {
            listed
                .iter()
                .find(|p| fixtures::pod_is_ready(p) && node_of(p) == Some(node))
                .cloned()
        };
        Ok(names.iter().map(|n| on(n)).collect::<Option<Vec<Pod>>>())
    })
    .await
    .unwrap()
}

fn node_of(pod: &Pod) -> Option<&str> {
    pod.spec.as_ref().and_then(|s| s.node_name.as_deref())
}

/// A client (and its kubeconfig) for the token of `pod`'s ServiceAccount bound to `pod`, as the
/// kubelet mounts it: the API server adds the pod's node to its identity.
async fn pod_token(cluster: &Cluster, admin: &Client, pod: &Pod) -> (String, Client) {
    let ns = pod.metadata.namespace.as_deref().unwrap();
    let sa = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.as_deref());
    sa_token(cluster, admin, ns, sa.unwrap(), Some(pod)).await
}

/// A client (and its kubeconfig) for a token of ServiceAccount `ns/sa`, bound to `pod` if given.
async fn sa_token(
    cluster: &Cluster,
    admin: &Client,
    ns: &str,
    sa: &str,
    pod: Option<&Pod>,
) -> (String, Client) {
    let mut spec = json!({"audiences": [], "expirationSeconds": 3600});
    if let Some(pod) = pod {
        spec["boundObjectRef"] = json!({"kind": "Pod", "apiVersion": "v1",
            "name": pod.metadata.name, "uid": pod.metadata.uid});
    }
    let tr: TokenRequest = object(json!({ "spec": spec }));
    let issued: TokenRequest = Api::<ServiceAccount>::namespaced(admin.clone(), ns)
        .create_subresource("token", sa, &PostParams::default(), &tr)
        .await
        .unwrap();
    let token = issued.status.unwrap().token.expect("a token");
    let bound = pod.and_then(node_of).unwrap_or("unbound");
    let path = cluster
        .kubeconfig_for_token(&format!("{ns}-{bound}"), &token)
        .unwrap();
    let mut config = Config::from_custom_kubeconfig(
        Kubeconfig::read_from(&path).unwrap(),
        &KubeConfigOptions::default(),
    )
    .await
    .unwrap();
    config.default_retry = false;
    (
        path.display().to_string(),
        Client::try_from(config).unwrap(),
    )
}

/// RBAC (or the API server) refuses it.
fn forbidden<T: std::fmt::Debug>(r: Result<T, kube::Error>, what: &str) {
    match r {
        Err(kube::Error::Api(s)) if s.code == 403 => {}
        other => panic!("{what} should be forbidden, got {other:?}"),
    }
}

/// An admission policy refuses it, with a message containing `rule`.
fn refused<T: std::fmt::Debug>(r: Result<T, kube::Error>, rule: &str, what: &str) {
    match r {
        Err(kube::Error::Api(s))
            if s.code == 403
                && s.message.contains("ValidatingAdmissionPolicy")
                && s.message.contains(rule) => {}
        other => panic!("{what} should be refused by the policy ({rule}), got {other:?}"),
    }
}

/// Waits until `request` (a dry run that a policy must refuse) is refused with `rule`: the API
/// server loads new admission policies asynchronously.
async fn until_refused<T, F, Fut>(what: &str, rule: &str, mut request: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, kube::Error>>,
{
    wait_for(&format!("{what} to be refused"), TIMEOUT, || {
        let fut = request();
        async move {
            Ok(matches!(fut.await,
                Err(kube::Error::Api(s)) if s.code == 403 && s.message.contains(rule))
            .then_some(()))
        }
    })
    .await
    .unwrap();
}

fn object<K: serde::de::DeserializeOwned>(value: serde_json::Value) -> K {
    serde_json::from_value(value).unwrap()
}

#[tokio::test]
async fn the_manifests_install_and_their_least_privilege_is_enough() {
    let cluster = shared();
    let admin = cluster.client().await.unwrap();
    install(cluster);
    let names = ["install-1", "install-2", "install-3"];
    let pods = baton_pods(cluster, &admin, &names, "install", "baton-system").await;

    // What RBAC does not grant the ServiceAccount.
    let (_, first) = pod_token(cluster, &admin, &pods[0]).await;
    forbidden(
        Api::<Secret>::namespaced(first.clone(), "baton-system")
            .list(&ListParams::default())
            .await,
        "reading Secrets",
    );
    forbidden(
        Api::<Node>::all(first.clone())
            .delete(names[1], &DeleteParams::default())
            .await,
        "deleting a Node",
    );
    forbidden(
        Api::<Node>::all(first.clone())
            .patch_status(
                names[0],
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"capacity": {"pods": "1"}}})),
            )
            .await,
        "writing a Node's status",
    );
    // A token bound to another node's pod would carry that node: it cannot mint one.
    let tr: TokenRequest = object(json!({"spec": {"audiences": [], "boundObjectRef":
        {"kind": "Pod", "apiVersion": "v1", "name": pods[1].metadata.name}}}));
    forbidden(
        Api::<ServiceAccount>::namespaced(first.clone(), "baton-system")
            .create_subresource::<_, TokenRequest>("token", "baton", &PostParams::default(), &tr)
            .await,
        "minting a token for another node's pod",
    );
    let lease: Lease = object(json!({"metadata": {"name": "baton"}, "spec": {}}));
    forbidden(
        Api::<Lease>::namespaced(first.clone(), "default")
            .create(&PostParams::default(), &lease)
            .await,
        "writing a Lease outside baton-system",
    );
    // The pause switch can be read (it does not exist), not written.
    let switches = Api::<ConfigMap>::namespaced(first.clone(), "baton-system");
    assert!(
        switches.get_opt("baton-pause").await.unwrap().is_none(),
        "the agent reads the pause ConfigMap"
    );
    // Watched by name (a field selector), which RBAC's resourceNames allows; no other one.
    switches
        .list(&ListParams::default().fields("metadata.name=baton-pause"))
        .await
        .expect("the agent lists the pause ConfigMap by name");
    forbidden(
        switches.list(&ListParams::default()).await,
        "listing every ConfigMap",
    );
    let switch: ConfigMap = object(json!({"metadata": {"name": "baton-pause"}}));
    forbidden(
        switches.create(&PostParams::default(), &switch).await,
        "creating the pause ConfigMap",
    );
    // The policies are in force before the agents start (the tests below prove each).
    until_refused("cordoning another node", "its own pod runs on", || async {
        Api::<Node>::all(first.clone())
            .patch(
                names[1],
                &PatchParams::default().dry_run(),
                &Patch::Merge(json!({"spec": {"unschedulable": true}})),
            )
            .await
    })
    .await;

    // The seed rollout with every agent running as the ServiceAccount of its node's pod.
    let ns = "install-seed";
    cluster.namespace(&admin, ns).await.unwrap();
    fixtures::create_nginx(&admin, ns, 2, "install", Some(json!({"minAvailable": 1})))
        .await
        .unwrap();
    let rec = Recorder::new();
    rec.endpoints(&admin, ns, "nginx");
    let mut sims = Vec::new();
    for (n, pod) in names.iter().zip(&pods) {
        let (kubeconfig, _) = pod_token(cluster, &admin, pod).await;
        let mut sim = SimNode::new(cluster, n, "baton-system", Method::Command, &[]).unwrap();
        sim.use_kubeconfig(std::path::Path::new(&kubeconfig));
        sim.flag().unwrap();
        sim.start().unwrap();
        sims.push(sim);
    }
    drive(cluster, &admin, &mut sims, 1, Duration::from_secs(180))
        .await
        .unwrap();
    let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    wait_idle(&admin, &names, TIMEOUT).await.unwrap();
    rec.stop();
    rec.with(|r| {
        assert!(
            r.min_ready_endpoints.is_some_and(|m| m >= 1),
            "{:?}",
            r.min_ready_endpoints
        )
    });
    for s in &sims {
        assert!(
            !s.log().contains("Forbidden"),
            "{} hit a permission error:\n{}",
            s.name,
            s.log()
        );
    }
}

/// The scene of a stolen token: baton installed and new kwok nodes `names`. Returns the cluster,
/// a client as the admin, and one as the token bound to the baton pod on the first node (the
/// compromised one).
async fn stolen(names: &[&str]) -> (&'static Cluster, Client, Client) {
    let cluster = shared();
    let admin = cluster.client().await.unwrap();
    install(cluster);
    let pods = baton_pods(cluster, &admin, names, "scope", "baton-system").await;
    let (_, token) = pod_token(cluster, &admin, &pods[0]).await;
    (cluster, admin, token)
}

fn merge(value: serde_json::Value) -> Patch<serde_json::Value> {
    Patch::Merge(value)
}

/// Node writes: the agent's own (its cordon with its annotations, as `baton::node::apply` writes
/// them) pass; anything else a stolen token might try on its own Node, or any write to another
/// Node, is refused. A human's writes are not the policy's business.
#[tokio::test]
async fn a_baton_token_changes_only_the_cordon_and_baton_annotations_of_its_own_node() {
    use baton::node::{self as agent_node, Update};
    let names = ["scope-node-1", "scope-node-2"];
    let (cluster, admin, token) = stolen(&names).await;
    let (mine, theirs) = (names[0], names[1]);
    let nodes = Api::<Node>::all(token);
    let as_admin = Api::<Node>::all(admin.clone());
    let pp = PatchParams::default();
    until_refused("annotating another node", "its own pod runs on", || async {
        nodes
            .patch(
                theirs,
                &PatchParams::default().dry_run(),
                &merge(json!({"metadata": {"annotations": {"baton.dev/phase": "draining"}}})),
            )
            .await
    })
    .await;

    // The agent's writes: a human's reboot request, then cordon and state, uncordon and clear.
    as_admin
        .patch(
            mine,
            &pp,
            &merge(json!({"metadata": {"annotations": {agent_node::REBOOT_REQUESTED: "test"}}})),
        )
        .await
        .unwrap();
    let mut cordon = Update {
        unschedulable: Some(true),
        ..Update::default()
    };
    cordon
        .annotations
        .insert(agent_node::PHASE.into(), "draining".into());
    cordon
        .annotations
        .insert(agent_node::CORDONED.into(), "true".into());
    agent_node::apply(&nodes, mine, &cordon)
        .await
        .expect("the agent cordons its own node and records its state");
    let mut done = Update {
        unschedulable: Some(false),
        ..Update::default()
    };
    for key in [
        agent_node::PHASE,
        agent_node::CORDONED,
        agent_node::REBOOT_REQUESTED,
    ] {
        done.annotations.insert(key.into(), serde_json::Value::Null);
    }
    agent_node::apply(&nodes, mine, &done)
        .await
        .expect("the agent uncordons its own node and clears the request");

    let own = "its own pod runs on";
    let labels = "nodeLabels lists";
    let meta = "finalizers or owners";
    let spec = "only spec.unschedulable";
    let annotations = "only baton.dev/ annotations";
    let pause = "baton.dev/pause";
    let owner = json!([{"apiVersion": "v1", "kind": "Node", "name": theirs,
        "uid": "00000000-0000-0000-0000-000000000000"}]);
    let refusals = [
        (
            theirs,
            json!({"spec": {"unschedulable": true}}),
            own,
            "cordoning another node",
        ),
        (
            theirs,
            json!({"metadata": {"annotations": {"baton.dev/phase": "draining"}}}),
            own,
            "annotating another node",
        ),
        (
            mine,
            json!({"metadata": {"labels": {"node-role.kubernetes.io/control-plane": ""}}}),
            labels,
            "giving its node a role label",
        ),
        (
            mine,
            json!({"metadata": {"labels": {"node-restriction.kubernetes.io/pool": "secret"}}}),
            labels,
            "setting a label even the kubelet may not set",
        ),
        (
            mine,
            json!({"metadata": {"labels": {"baton.test/group": null}}}),
            labels,
            "removing a label",
        ),
        (
            mine,
            json!({"metadata": {"finalizers": ["example.com/keep"]}}),
            meta,
            "adding a finalizer",
        ),
        (
            mine,
            json!({"metadata": {"ownerReferences": owner}}),
            meta,
            "adding an owner",
        ),
        (
            mine,
            json!({"spec": {"taints": [{"key": "evil", "effect": "NoSchedule"}]}}),
            spec,
            "tainting its node",
        ),
        (
            mine,
            json!({"spec": {"podCIDR": "10.99.0.0/24", "podCIDRs": ["10.99.0.0/24"]}}),
            spec,
            "setting its pod CIDR",
        ),
        (
            mine,
            json!({"spec": {"providerID": "kwok://elsewhere"}}),
            spec,
            "setting its provider ID",
        ),
        (
            mine,
            json!({"metadata": {"annotations": {"example.com/owner": "me"}}}),
            annotations,
            "adding another annotation",
        ),
        (
            mine,
            json!({"metadata": {"annotations": {"kwok.x-k8s.io/node": null}}}),
            annotations,
            "removing another annotation",
        ),
        (
            mine,
            json!({"metadata": {"annotations": {agent_node::PAUSE: "mine"}}}),
            pause,
            "setting the pause switch",
        ),
    ];
    for (node, patch, rule, what) in refusals {
        refused(nodes.patch(node, &pp, &merge(patch)).await, rule, what);
    }
    // A human's pause stays: the agent can neither change nor clear it.
    as_admin
        .patch(
            mine,
            &pp,
            &merge(json!({"metadata": {"annotations": {agent_node::PAUSE: "maintenance"}}})),
        )
        .await
        .expect("a human pauses the node");
    for (value, what) in [
        (json!("mine"), "changing the pause switch"),
        (serde_json::Value::Null, "clearing the pause switch"),
    ] {
        let patch = json!({"metadata": {"annotations": {agent_node::PAUSE: value}}});
        refused(nodes.patch(mine, &pp, &merge(patch)).await, pause, what);
    }
    // A token bound to no pod (as a long-lived Secret token would be) has no node: no writes.
    let (_, unbound) = sa_token(cluster, &admin, "baton-system", "baton", None).await;
    refused(
        Api::<Node>::all(unbound)
            .patch(
                mine,
                &pp,
                &merge(json!({"metadata": {"annotations": {agent_node::PHASE: "draining"}}})),
            )
            .await,
        own,
        "writing a Node with a token bound to no pod",
    );
    // Humans are not bound by it: a kubectl-style cordon and a taint of the same node pass.
    fixtures::cordon(&admin, mine, true).await.unwrap();
    as_admin
        .patch(
            mine,
            &pp,
            &merge(json!({"spec": {"taints": [{"key": "human", "effect": "NoSchedule"}]}})),
        )
        .await
        .expect("a human taints the node");

    // The policy compares every NodeSpec field the API server knows, except `unschedulable`.
    let req = http::Request::get("/openapi/v3/api/v1")
        .body(Vec::new())
        .unwrap();
    let schema: serde_json::Value =
        serde_json::from_str(&admin.request_text(req).await.unwrap()).unwrap();
    let fields = schema["components"]["schemas"]["io.k8s.api.core.v1.NodeSpec"]["properties"]
        .as_object()
        .expect("NodeSpec in the API's schema");
    let policy = std::fs::read_to_string(manifests("base/node-scope.yaml")).unwrap();
    // `needle`, as a whole field name, somewhere in the policy.
    let has = |needle: String| {
        policy.match_indices(&needle).any(|(i, _)| {
            !policy[i + needle.len()..].starts_with(|c: char| c.is_ascii_alphanumeric())
        })
    };
    for field in fields.keys().filter(|f| *f != "unschedulable") {
        assert!(
            has(format!(" object.?spec.?{field}")) && has(format!("oldObject.?spec.?{field}")),
            "the Node policy does not compare spec.{field}"
        );
    }
}

/// With `--pre/post-reboot-node-labels`, the chart's policy lets a token bound to the agent's
/// pod set exactly those labels, to exactly those values, on its own Node (the agent's own write,
/// with the cordon and the uncordon, passes); any other value, another label, removing one, or
/// another Node's label is refused.
#[tokio::test]
async fn a_baton_token_sets_only_the_node_labels_and_values_its_policy_lists() {
    use baton::node::{self as agent_node, Update};
    let cluster = shared();
    let admin = cluster.client().await.unwrap();
    let (release, ns) = ("baton-labels", "baton-labels");
    let key = "baton.test/maintenance";
    helm(
        cluster,
        &[
            "install",
            release,
            &chart(),
            "--namespace",
            ns,
            "--create-namespace",
            "--wait=false",
            "--set",
            &format!("config.preRebootNodeLabels={key}=true"),
            "--set",
            &format!("config.postRebootNodeLabels={key}=false"),
        ],
    );
    let names = ["labels-1", "labels-2"];
    let pods = baton_pods(cluster, &admin, &names, "labels", ns).await;
    let (_, token) = pod_token(cluster, &admin, &pods[0]).await;
    let (mine, theirs) = (names[0], names[1]);
    let nodes = Api::<Node>::all(token);
    let pp = PatchParams::default();
    let label = |k: &str, v: serde_json::Value| merge(json!({"metadata": {"labels": {k: v}}}));
    let rule = "nodeLabels lists";
    until_refused("a label value the policy does not list", rule, || async {
        nodes
            .patch(
                mine,
                &PatchParams::default().dry_run(),
                &label(key, json!("evil")),
            )
            .await
    })
    .await;

    // The agent's writes: the pre-reboot label with the cordon, the post-reboot one with the
    // uncordon.
    for (value, cordon) in [("true", true), ("false", false)] {
        let mut update = Update {
            unschedulable: Some(cordon),
            ..Update::default()
        };
        update.labels.insert(key.into(), value.into());
        update.annotations.insert(
            agent_node::PHASE.into(),
            if cordon {
                "draining".into()
            } else {
                serde_json::Value::Null
            },
        );
        let written = agent_node::apply(&nodes, mine, &update)
            .await
            .unwrap_or_else(|e| panic!("the agent sets {key}={value}: {e}"));
        assert_eq!(written.metadata.labels.unwrap()[key], value);
    }
    for (node, patch, rule, what) in [
        (
            mine,
            label(key, json!("evil")),
            rule,
            "a value the policy does not list",
        ),
        (
            mine,
            label("baton.test/other", json!("true")),
            rule,
            "another label",
        ),
        (
            mine,
            label(key, serde_json::Value::Null),
            rule,
            "removing the label",
        ),
        (
            mine,
            label("baton.test/group", json!("moved")),
            rule,
            "changing another label",
        ),
        (
            theirs,
            label(key, json!("true")),
            "its own pod runs on",
            "another node's label",
        ),
    ] {
        refused(nodes.patch(node, &pp, &patch).await, rule, what);
    }
}

/// A pod on a node, doing nothing (kwok runs it).
async fn pod_on(admin: &Client, ns: &str, name: &str, node: Option<&str>) -> Pod {
    let spec = match node {
        Some(n) => json!({"nodeName": n}),
        // Never scheduled: no node has this label.
        None => json!({"nodeSelector": {"baton.test/nowhere": "true"}}),
    };
    let mut pod = json!({
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {"containers": [{"name": "c", "image": "busybox:1.36"}]},
    });
    pod["spec"]
        .as_object_mut()
        .unwrap()
        .extend(spec.as_object().unwrap().clone());
    Api::<Pod>::namespaced(admin.clone(), ns)
        .create(&PostParams::default(), &object(pod))
        .await
        .unwrap()
}

/// The pods policy's refusal.
const DELETE_RULE: &str = "only delete pods on its own node";

/// Deleting pod `name` (not on the token's node) through `api` is refused, once the policy is in
/// force.
async fn deletion_refused(api: &Api<Pod>, name: &str) {
    until_refused("deleting a pod on another node", DELETE_RULE, || async {
        api.delete(name, &DeleteParams::default().dry_run()).await
    })
    .await;
    refused(
        api.delete(name, &DeleteParams::default()).await,
        DELETE_RULE,
        "deleting a pod on another node",
    );
}

/// Pod deletions: pods on its own node only. Reads are another matter: RBAC cannot require the
/// `spec.nodeName` field selector the agent lists with, so the token reads every pod.
#[tokio::test]
async fn a_baton_token_deletes_only_pods_on_its_own_node_but_reads_every_pod() {
    let names = ["scope-pods-1", "scope-pods-2"];
    let (cluster, admin, token) = stolen(&names).await;
    let ns = "scope-pods";
    cluster.namespace(&admin, ns).await.unwrap();
    let mine = pod_on(&admin, ns, "mine", Some(names[0])).await;
    pod_on(&admin, ns, "theirs", Some(names[1])).await;
    pod_on(&admin, ns, "pending", None).await;
    let api = Api::<Pod>::namespaced(token.clone(), ns);
    deletion_refused(&api, "theirs").await;
    refused(
        api.delete("pending", &DeleteParams::default()).await,
        DELETE_RULE,
        "deleting a pod on no node",
    );
    // As the agent deletes (a finished pod, or with --disable-eviction): by UID.
    let by_uid = DeleteParams {
        preconditions: Some(Preconditions {
            uid: mine.metadata.uid.clone(),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    api.delete("mine", &by_uid)
        .await
        .expect("the agent deletes a pod on its own node");

    // The exposure: every pod in the cluster, any node, any namespace.
    let every = Api::<Pod>::all(token)
        .list(&ListParams::default())
        .await
        .expect("RBAC cannot make a pod list need a field selector");
    assert!(
        every
            .items
            .iter()
            .any(|p| p.metadata.name.as_deref() == Some("theirs")),
        "the token reads pods on other nodes"
    );
}

/// Evictions: admission sees the Eviction alone (no pod, so no node), and the pod deletion an
/// eviction makes skips admission, so a stolen token evicts pods on any node — but only as far
/// as their PodDisruptionBudgets allow, as for any voluntary disruption.
#[tokio::test]
async fn a_baton_token_evicts_on_any_node_but_only_as_far_as_disruption_budgets_allow() {
    let names = ["scope-evict-1", "scope-evict-2"];
    let (cluster, admin, token) = stolen(&names).await;
    let (ns, probe_ns) = ("scope-evict", "scope-evict-probe");
    for n in [ns, probe_ns] {
        cluster.namespace(&admin, n).await.unwrap();
    }
    let theirs = names[1];
    pod_on(&admin, ns, "loose", Some(theirs)).await;
    pod_on(&admin, ns, "guarded", Some(theirs)).await;
    pod_on(&admin, probe_ns, "probe", Some(theirs)).await;
    let pdbs = Api::<PodDisruptionBudget>::namespaced(admin.clone(), ns);
    pdbs.create(
        &PostParams::default(),
        &fixtures::pdb("guarded", json!({"minAvailable": 1})).unwrap(),
    )
    .await
    .unwrap();
    wait_for(
        "the budget to count its one healthy pod",
        TIMEOUT,
        || async {
            let st = pdbs.get("guarded").await?.status.unwrap_or_default();
            Ok((st.current_healthy == Some(1) && st.expected_pods == Some(1)).then_some(()))
        },
    )
    .await
    .unwrap();

    // What a policy on evictions sees, echoed by a probe policy in its own namespace.
    let probe = json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": "scope-evict-probe"},
        "spec": {
            "matchConstraints": {"resourceRules": [{"apiGroups": [""], "apiVersions": ["v1"],
                "operations": ["CREATE"], "resources": ["pods/eviction"]}]},
            "matchConditions": [{"name": "probe", "expression": format!("request.namespace == '{probe_ns}'")}],
            "validations": [{"expression": "false", "reason": "Forbidden", "messageExpression":
                "'sees ' + object.kind + ' with ' + object.map(k, k).sort().join(',') + ', oldObject ' + (oldObject == null ? 'null' : 'set')"}],
        },
    });
    let binding = json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": "scope-evict-probe"},
        "spec": {"policyName": "scope-evict-probe", "validationActions": ["Deny"]},
    });
    kubectl(
        cluster,
        &["apply", "-f", "-"],
        Some(&format!("{probe}\n---\n{binding}")),
    );
    let dry = EvictParams {
        delete_options: Some(DeleteParams::default().dry_run()),
        post_options: PostParams {
            dry_run: true,
            ..PostParams::default()
        },
    };
    let probed = Api::<Pod>::namespaced(token.clone(), probe_ns);
    until_refused("the probe policy to run", "sees ", || async {
        probed.evict("probe", &dry).await
    })
    .await;
    refused(
        probed.evict("probe", &dry).await,
        "sees Eviction with apiVersion,kind,metadata, oldObject null",
        "an eviction seen by a policy",
    );
    kubectl(
        cluster,
        &[
            "delete",
            "validatingadmissionpolicy,validatingadmissionpolicybinding",
            "scope-evict-probe",
        ],
        None,
    );

    // A direct deletion of a pod on another node is refused, its eviction is not.
    let api = Api::<Pod>::namespaced(token, ns);
    deletion_refused(&api, "loose").await;
    api.evict("loose", &EvictParams::default())
        .await
        .expect("evicting a pod on another node: nothing in the API server can refuse it");
    let gone = Api::<Pod>::namespaced(admin.clone(), ns)
        .get_opt("loose")
        .await
        .unwrap();
    assert!(
        gone.is_none_or(|p| p.metadata.deletion_timestamp.is_some()),
        "the evicted pod is going"
    );
    // The bound: a budget that allows no disruption refuses the eviction.
    match api.evict("guarded", &EvictParams::default()).await {
        Err(kube::Error::Api(s)) if s.code == 429 => {}
        other => panic!("the budget should refuse the eviction (429), got {other:?}"),
    }
}

/// Leases: the agent's own Lease code takes, renews and releases a slot, and takes over one it
/// judged expired; a stolen token writes no other Lease, no other holder, and cannot shorten,
/// refresh or free another node's hold. Nor can it check that a hold it takes over has expired:
/// admission has no clock.
#[tokio::test]
async fn a_baton_token_holds_only_baton_leases_and_never_writes_another_nodes_hold() {
    use baton::lease::{LeaseClient, Record};
    let names = ["scope-lease-1", "scope-lease-2"];
    let (_, admin, token) = stolen(&names).await;
    let (me, other, third) = (names[0], names[1], "scope-lease-3");
    let leases = Api::<Lease>::namespaced(token.clone(), "baton-system");
    let as_admin = Api::<Lease>::namespaced(admin.clone(), "baton-system");
    let pp = PostParams::default();
    let lease = |name: &str, spec: serde_json::Value| -> Lease {
        object(json!({"metadata": {"name": name}, "spec": spec}))
    };
    until_refused(
        "writing a Lease of another name",
        "only write its own Leases",
        || async {
            leases
                .create(
                    &PostParams {
                        dry_run: true,
                        ..PostParams::default()
                    },
                    &lease("not-baton", json!({"holderIdentity": me})),
                )
                .await
        },
    )
    .await;
    let node = Api::<Node>::all(admin.clone()).get(me).await.unwrap();
    let owner: OwnerReference = object(json!({"apiVersion": "v1", "kind": "Node",
        "name": me, "uid": node.metadata.uid}));
    let ttl = Duration::from_secs(30);

    // The agent's own writes, through its Lease code.
    let slot = LeaseClient::new(leases.clone(), "baton-scope-1", me, ttl);
    slot.acquire(None, Some(&owner))
        .await
        .expect("the agent creates and takes a free slot");
    slot.renew().await.expect("the agent renews its slot");
    slot.release().await.expect("the agent releases its slot");

    // Another node holds `baton-scope-2`, renewed just now.
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let held = as_admin
        .create(
            &pp,
            &lease(
                "baton-scope-2",
                json!({"holderIdentity": other, "leaseDurationSeconds": 30,
                    "acquireTime": now, "renewTime": now}),
            ),
        )
        .await
        .unwrap();
    let holder = "its own node, or nobody, as a Lease's holder";
    let edit = |f: &dyn Fn(&mut serde_json::Value)| -> Lease {
        let mut v = serde_json::to_value(&held).unwrap();
        f(&mut v);
        object(v)
    };
    let changes = [
        (
            edit(&|v| v["spec"]["leaseDurationSeconds"] = 1.into()),
            holder,
            "shortening another node's hold",
        ),
        (
            edit(&|v| v["spec"]["renewTime"] = "2020-01-01T00:00:00.000000Z".into()),
            holder,
            "back-dating another node's renewal",
        ),
        (
            edit(&|v| v["spec"]["holderIdentity"] = third.into()),
            holder,
            "handing another node's hold to a third",
        ),
        (
            edit(&|v| v["spec"]["holderIdentity"] = serde_json::Value::Null),
            "may not change or free a Lease another node holds",
            "freeing another node's hold",
        ),
    ];
    for (changed, rule, what) in changes {
        refused(
            leases.replace("baton-scope-2", &pp, &changed).await,
            rule,
            what,
        );
    }
    let owned_by_other = json!({"apiVersion": "v1", "kind": "Node", "name": other,
        "uid": "00000000-0000-0000-0000-000000000000"});
    let mut with_owner = lease("baton-scope-3", json!({"holderIdentity": me}));
    with_owner.metadata.owner_references = Some(vec![object(owned_by_other)]);
    let mut with_finalizer = lease("baton-scope-3", json!({"holderIdentity": me}));
    with_finalizer.metadata.finalizers = Some(vec!["example.com/keep".into()]);
    let owners = "its own Node a Lease's owner";
    let creations = [
        (
            lease("not-baton", json!({"holderIdentity": me})),
            "only write its own Leases",
            "creating a Lease of another name",
        ),
        (
            lease("baton-scope-3", json!({"holderIdentity": other})),
            holder,
            "creating a Lease held by another node",
        ),
        (with_owner, owners, "making another Node a Lease's owner"),
        (with_finalizer, owners, "adding a finalizer to a Lease"),
    ];
    for (created, rule, what) in creations {
        refused(leases.create(&pp, &created).await, rule, what);
    }
    // RBAC: no delete, and no patch (the agent writes whole Leases, resourceVersion-checked).
    forbidden(
        leases
            .delete("baton-scope-2", &DeleteParams::default())
            .await,
        "deleting a Lease",
    );
    forbidden(
        leases
            .patch(
                "baton-scope-2",
                &PatchParams::default(),
                &merge(json!({"spec": {"holderIdentity": me}})),
            )
            .await,
        "patching a Lease",
    );

    // The exposure: the agent takes over a hold it judged expired, and admission cannot tell a
    // stolen token's "expired" from a true one.
    let taken = LeaseClient::new(leases, "baton-scope-2", me, ttl)
        .acquire(Some(&Record::from_lease(&held)), Some(&owner))
        .await
        .expect("taking over a hold judged expired");
    assert_eq!(
        taken.spec.and_then(|s| s.holder_identity).as_deref(),
        Some(me)
    );
    for name in ["baton-scope-1", "baton-scope-2"] {
        as_admin
            .delete(name, &DeleteParams::default())
            .await
            .unwrap();
    }
}

/// Events: the agent's own Event (created, then patched as a series) about its own Node passes;
/// Events about anything else, in another reporter's name or namespace, do not.
#[tokio::test]
async fn a_baton_token_reports_events_only_about_its_own_node() {
    let names = ["scope-events-1", "scope-events-2"];
    let (_, admin, token) = stolen(&names).await;
    let (me, other) = (names[0], names[1]);
    let event = |name: &str, ns: &str, regarding: serde_json::Value, reporter: &str| -> Event {
        object(json!({
            "metadata": {"name": name, "namespace": ns},
            "eventTime": "2026-01-01T00:00:00.000000Z",
            "reason": "Test", "action": "Test", "type": "Normal",
            "reportingController": reporter, "reportingInstance": me,
            "regarding": regarding,
        }))
    };
    let node_ref = |n: &str| json!({"apiVersion": "v1", "kind": "Node", "name": n});
    let in_default = Api::<Event>::namespaced(token.clone(), "default");
    let pp = PostParams::default();
    let rule = "only report Events about its own Node";
    until_refused("an Event about another node", rule, || async {
        in_default
            .create(
                &PostParams {
                    dry_run: true,
                    ..PostParams::default()
                },
                &event("scope-events-other", "default", node_ref(other), "baton"),
            )
            .await
    })
    .await;

    // The agent's own, twice: created, then patched into a series.
    let node = Api::<Node>::all(admin.clone()).get(me).await.unwrap();
    let events = baton::node::Events::new(token.clone(), &node);
    for _ in 0..2 {
        events
            .publish(false, "ScopeTest", "Test", "as the agent".into())
            .await;
    }
    let listed = Api::<Event>::namespaced(admin.clone(), "default")
        .list(&ListParams::default())
        .await
        .unwrap();
    let ours = listed
        .items
        .iter()
        .find(|e| {
            e.reason.as_deref() == Some("ScopeTest")
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(me)
        })
        .expect("the agent's Event was created");
    assert_eq!(
        ours.series.as_ref().map(|s| s.count),
        Some(2),
        "the agent's repeat was patched into a series"
    );

    let pod_ref = json!({"apiVersion": "v1", "kind": "Pod", "namespace": "default", "name": "x"});
    let mut related = event("scope-events-related", "default", node_ref(me), "baton");
    related.related = Some(object(node_ref(other)));
    let refusals = [
        (
            event("scope-events-1", "default", node_ref(other), "baton"),
            "about another node",
        ),
        (
            event("scope-events-2", "default", pod_ref, "baton"),
            "about a pod",
        ),
        (
            event("scope-events-3", "default", node_ref(me), "kubelet"),
            "in the kubelet's name",
        ),
        (related, "relating another node"),
    ];
    for (e, what) in refusals {
        refused(in_default.create(&pp, &e).await, rule, what);
    }
    refused(
        Api::<Event>::namespaced(token.clone(), "kube-system")
            .create(
                &pp,
                &event("scope-events-4", "kube-system", node_ref(me), "baton"),
            )
            .await,
        rule,
        "in another namespace",
    );
    // Another reporter's Event about its own node: it may not add to it.
    Api::<Event>::namespaced(admin.clone(), "default")
        .create(
            &pp,
            &event("scope-events-kubelet", "default", node_ref(me), "kubelet"),
        )
        .await
        .unwrap();
    refused(
        in_default
            .patch(
                "scope-events-kubelet",
                &PatchParams::default(),
                &merge(json!({"series": {"count": 2,
                    "lastObservedTime": "2026-01-01T00:00:01.000000Z"}})),
            )
            .await,
        rule,
        "continuing another reporter's Event",
    );
}

/// The BATON_* environment of the chart's DaemonSet, rendered with default values.
fn chart_env(cluster: &Cluster) -> std::collections::BTreeMap<String, Option<String>> {
    let objects = objects(
        cluster,
        &render_chart(cluster, "baton-helm", "baton-helm", &[]),
    );
    let ds = kind(&objects, "DaemonSet");
    ds["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap().to_owned(),
                e["value"].as_str().map(str::to_owned),
            )
        })
        .collect()
}

#[tokio::test]
async fn the_helm_chart_has_every_flag_with_the_same_default_and_installs() {
    use clap::CommandFactory;
    let cluster = shared();
    assert!(helm(cluster, &["lint", &chart()]).contains("0 chart(s) failed"));

    // Every `baton agent` flag is a value of the chart, with the binary's default.
    let env = chart_env(cluster);
    let cli = baton::config::Cli::command();
    let agent = cli.find_subcommand("agent").unwrap();
    // Set from the pod (downward API) or to the host mount, by design.
    let from_pod = [
        "BATON_NODE_NAME",
        "BATON_LOCK_NAMESPACE",
        "BATON_REBOOT_SENTINEL",
    ];
    for arg in agent.get_arguments() {
        let Some(var) = arg.get_env().and_then(|e| e.to_str()) else {
            continue;
        };
        if from_pod.contains(&var) {
            assert!(env.contains_key(var), "{var} is set by the chart");
            continue;
        }
        let mut default: Vec<String> = arg
            .get_default_values()
            .iter()
            .map(|v| v.to_string_lossy().into_owned())
            .collect();
        if matches!(arg.get_action(), clap::ArgAction::SetTrue) {
            default = vec!["false".to_owned()]; // a switch: off unless given
        }
        match default.first() {
            Some(d) => assert_eq!(
                env.get(var).cloned().flatten().as_deref(),
                Some(d.as_str()),
                "chart default of {var}"
            ),
            // No default (optional flags): the chart leaves them unset unless given a value.
            None => assert!(!env.contains_key(var), "{var} is unset by default"),
        }
    }
    for var in env.keys() {
        assert!(
            agent
                .get_arguments()
                .any(|a| a.get_env().and_then(|e| e.to_str()) == Some(var)),
            "the chart sets {var}, which no flag reads"
        );
    }

    // Server-side dry run, then a real install; the DaemonSet lands on every node.
    let admin = cluster.client().await.unwrap();
    let names = ["helm-1", "helm-2"];
    cluster
        .add_nodes(&admin, &names, &[("baton.test/group", "helm")])
        .await
        .unwrap();
    kubectl(cluster, &["create", "namespace", "baton-helm"], None);
    let yaml = render_chart(cluster, "baton-helm", "baton-helm", &[]);
    kubectl(
        cluster,
        &["apply", "--server-side", "--dry-run=server", "-f", "-"],
        Some(&yaml),
    );
    helm(
        cluster,
        &[
            "install",
            "baton-helm",
            &chart(),
            "--namespace",
            "baton-helm",
            "--wait=false",
        ],
    );
    let pods: Api<Pod> = Api::namespaced(admin.clone(), "baton-helm");
    let nodes: Api<Node> = Api::all(admin.clone());
    wait_for(
        "a pod of the chart's DaemonSet on every node",
        TIMEOUT,
        || async {
            let all_nodes = nodes.list(&ListParams::default()).await?.items.len();
            let ready = pods
                .list(&ListParams::default().labels("app.kubernetes.io/instance=baton-helm"))
                .await?
                .items
                .iter()
                .filter(|p| fixtures::pod_is_ready(p))
                .count();
            Ok((ready == all_nodes).then_some(()))
        },
    )
    .await
    .unwrap();

    // A second release of the same name in another namespace: its cluster-scoped objects
    // (ClusterRole, ClusterRoleBinding, admission policies) do not collide with the first's, and
    // its policies bind its own ServiceAccount.
    helm(
        cluster,
        &[
            "install",
            "baton-helm",
            &chart(),
            "--namespace",
            "baton-helm-2",
            "--create-namespace",
            "--wait=false",
        ],
    );
    let second = pods_on(&admin, &names, "baton-helm-2").await;
    let (_, token) = pod_token(cluster, &admin, &second[0]).await;
    until_refused(
        "the second release's agent cordoning another node",
        "ValidatingAdmissionPolicy 'baton-helm-2-baton-helm-own-node-only'",
        || async {
            Api::<Node>::all(token.clone())
                .patch(
                    names[1],
                    &PatchParams::default().dry_run(),
                    &merge(json!({"spec": {"unschedulable": true}})),
                )
                .await
        },
    )
    .await;
}

/// The chart renders the manifests' admission policies (for its release's ServiceAccount and
/// `config.lockName`), and its metrics port follows `config.metricsAddress`.
#[test]
fn the_chart_renders_the_manifests_admission_policies_and_follows_its_values() {
    let cluster = shared();
    // The admission objects, without labels, named as kustomize names them.
    let policies = |yaml: &str| -> Vec<serde_json::Value> {
        let mut found: Vec<serde_json::Value> = objects(cluster, yaml)
            .into_iter()
            .filter(|o| {
                o["kind"]
                    .as_str()
                    .is_some_and(|k| k.starts_with("ValidatingAdmissionPolicy"))
            })
            .map(|mut o| {
                o["metadata"].as_object_mut().unwrap().remove("labels");
                let renamed = o
                    .to_string()
                    .replace("baton-system-baton-own-", "baton-own-");
                serde_json::from_str(&renamed).unwrap()
            })
            .collect();
        found.sort_by_key(|o| (o["kind"].to_string(), o["metadata"]["name"].to_string()));
        found
    };
    let kustomized = policies(&kubectl(
        cluster,
        &["kustomize", manifests("").to_str().unwrap()],
        None,
    ));
    assert_eq!(kustomized.len(), 8, "four policies, four bindings");
    assert_eq!(
        policies(&render_chart(cluster, "baton", "baton-system", &[])),
        kustomized
    );

    // With node labels: the README's kustomize patch and the chart's values give one policy.
    let readme = std::fs::read_to_string(manifests("../README.md")).unwrap();
    let section = &readme[readme.find("### Node labels").unwrap()..];
    let snippet = &section[section.find("```yaml\n").unwrap() + 8..];
    let snippet = &snippet[..snippet.find("```").unwrap()];
    let overlay = tempfile::tempdir().unwrap();
    let up = "../".repeat(overlay.path().components().count() - 1);
    let base = manifests("").canonicalize().unwrap();
    let patches: String = snippet
        .lines()
        .map(|l| format!("{}\n", l.strip_prefix("  ").unwrap_or(l)))
        .collect();
    std::fs::write(
        overlay.path().join("kustomization.yaml"),
        format!(
            "resources:\n  - {up}{}\n{patches}",
            base.display().to_string().trim_start_matches('/')
        ),
    )
    .unwrap();
    let patched = policies(&kubectl(
        cluster,
        &["kustomize", overlay.path().to_str().unwrap()],
        None,
    ));
    let labelled = policies(&render_chart(
        cluster,
        "baton",
        "baton-system",
        &[
            "config.preRebootNodeLabels=example.com/maintenance=true",
            "config.postRebootNodeLabels=example.com/maintenance=false",
        ],
    ));
    assert_ne!(patched, kustomized, "the README's patch changes the policy");
    assert_eq!(labelled, patched);

    let objects = objects(
        cluster,
        &render_chart(
            cluster,
            "baton",
            "baton-system",
            &["config.lockName=fleet", "config.metricsAddress=[::]:9102"],
        ),
    );
    let leases = objects
        .iter()
        .find(|o| o["metadata"]["name"] == "baton-system-baton-own-leases-only")
        .unwrap();
    let lock = leases["spec"]["variables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "lock")
        .unwrap();
    assert_eq!(lock["expression"], "'fleet'");
    let ds = kind(&objects, "DaemonSet");
    assert_eq!(
        ds["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"],
        9102
    );
    assert_eq!(kind(&objects, "Service")["spec"]["ports"][0]["port"], 9102);
}

/// The Dockerfile's final stage's JSON-array instruction `name` (ENTRYPOINT or CMD); empty if
/// the stage has none.
fn dockerfile_final(name: &str) -> Vec<String> {
    let text =
        std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../Dockerfile"))
            .unwrap();
    let last_stage = text.rsplit("\nFROM ").next().unwrap();
    let Some(line) = last_stage
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
    else {
        return Vec::new();
    };
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{name} is not a JSON array: {e}"))
}

/// The image's entrypoint and each shipped DaemonSet's `command`/`args` run `baton agent`
/// together: once, an entrypoint of `/baton agent` and `args: [agent]` ran `baton agent agent`,
/// which crash-looped on every node while every kwok test passed.
#[tokio::test]
async fn the_image_and_every_manifest_together_run_the_agent() {
    use clap::Parser;
    let cluster = shared();
    let (entrypoint, cmd) = (dockerfile_final("ENTRYPOINT"), dockerfile_final("CMD"));
    let rendered = [
        (
            "manifests/",
            kubectl(
                cluster,
                &["kustomize", manifests("").to_str().unwrap()],
                None,
            ),
        ),
        (
            "manifests/signal/",
            kubectl(
                cluster,
                &["kustomize", manifests("signal").to_str().unwrap()],
                None,
            ),
        ),
        (
            "the chart",
            render_chart(cluster, "baton-helm", "baton-helm", &[]),
        ),
    ];
    for (what, yaml) in rendered {
        let objects = objects(cluster, &yaml);
        let ds = kind(&objects, "DaemonSet");
        let container = &ds["spec"]["template"]["spec"]["containers"][0];
        let list = |v: &serde_json::Value| -> Option<Vec<String>> {
            serde_json::from_value(v.clone()).ok()
        };
        // Kubernetes: `command` replaces the entrypoint, `args` the image's CMD.
        let mut argv = list(&container["command"]).unwrap_or_else(|| entrypoint.clone());
        argv.extend(list(&container["args"]).unwrap_or_else(|| cmd.clone()));
        assert_eq!(argv, ["/baton", "agent"], "{what}");
        let cli = baton::config::Cli::try_parse_from(
            argv.iter().chain(&["--node-name".into(), "n".into()]),
        )
        .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(
            matches!(cli.command, baton::config::Command::Agent(_)),
            "{what}"
        );
    }
    // The image alone (`docker run baton`) runs the agent too.
    let image_only: Vec<String> = entrypoint.into_iter().chain(cmd).collect();
    assert_eq!(image_only, ["/baton", "agent"]);
}
