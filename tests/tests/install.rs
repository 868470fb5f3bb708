//! The shipped manifests against the real API server: they apply (server-side dry run, then for
//! real), the DaemonSet lands on every node, and the seed rollout works with every agent
//! authenticated as the manifests' ServiceAccount through a token bound to its DaemonSet pod —
//! which proves the RBAC is enough — while that identity cannot do what it must not.

use std::io::Write;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use baton_tests::agent::{Method, SimNode};
use baton_tests::observe::Recorder;
use baton_tests::rollout::drive;
use baton_tests::{Cluster, fixtures, shared, wait_for};
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod, Secret, ServiceAccount};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
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
    let mut cmd = cluster.kubectl();
    cmd.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A client for the ServiceAccount token bound to `pod`.
async fn pod_token(cluster: &Cluster, admin: &Client, pod: &Pod) -> (String, Client) {
    let tr: TokenRequest = serde_json::from_value(json!({
        "spec": {
            "audiences": [],
            "expirationSeconds": 3600,
            "boundObjectRef": {"kind": "Pod", "apiVersion": "v1",
                "name": pod.metadata.name, "uid": pod.metadata.uid},
        },
    }))
    .unwrap();
    let issued: TokenRequest = Api::<ServiceAccount>::namespaced(admin.clone(), "baton-system")
        .create_subresource("token", "baton", &PostParams::default(), &tr)
        .await
        .unwrap();
    let token = issued.status.unwrap().token.expect("a token");
    let node = pod.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap();
    let path = cluster
        .kubeconfig_for_token(&format!("baton-{node}"), &token)
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

fn forbidden<T: std::fmt::Debug>(r: Result<T, kube::Error>, what: &str) {
    match r {
        Err(kube::Error::Api(s)) if s.code == 403 => {}
        other => panic!("{what} should be forbidden, got {other:?}"),
    }
}

#[tokio::test]
async fn the_manifests_install_and_their_least_privilege_is_enough() {
    let cluster = shared();
    let admin = cluster.client().await.unwrap();
    let names = ["install-1", "install-2", "install-3"];
    cluster
        .add_nodes(&admin, &names, &[("baton.test/group", "install")])
        .await
        .unwrap();

    // Both variants pass a server-side dry run (which needs their namespace to exist); then the
    // default one is applied.
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

    // The DaemonSet gets a pod on every node.
    let ds_pods: Api<Pod> = Api::namespaced(admin.clone(), "baton-system");
    let pods = wait_for("a baton pod on every node", TIMEOUT, || async {
        let pods = ds_pods
            .list(&ListParams::default().labels("app.kubernetes.io/name=baton"))
            .await?
            .items;
        let ready = pods.iter().filter(|p| fixtures::pod_is_ready(p)).count();
        Ok((ready == names.len()).then_some(pods))
    })
    .await
    .unwrap();
    let on = |node: &str| {
        pods.iter()
            .find(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node))
            .unwrap_or_else(|| panic!("no baton pod on {node}"))
            .clone()
    };

    // What the ServiceAccount must not do.
    let (_, first) = pod_token(cluster, &admin, &on(names[0])).await;
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
    let lease: Lease =
        serde_json::from_value(json!({"metadata": {"name": "x"}, "spec": {}})).unwrap();
    forbidden(
        Api::<Lease>::namespaced(first.clone(), "default")
            .create(&PostParams::default(), &lease)
            .await,
        "writing a Lease outside baton-system",
    );
    // Node-scoped writes: its own Node yes, another one no (the ValidatingAdmissionPolicy).
    let touch = json!({"metadata": {"annotations": {"baton.test/touched": "yes"}}});
    Api::<Node>::all(first.clone())
        .patch(names[0], &PatchParams::default(), &Patch::Merge(&touch))
        .await
        .expect("an agent may annotate its own node");
    // The API server loads new admission policies asynchronously: wait until it enforces it.
    wait_for("the node-scope policy to be enforced", TIMEOUT, || async {
        let r = Api::<Node>::all(first.clone())
            .patch(names[1], &PatchParams::default(), &Patch::Merge(&touch))
            .await;
        Ok(matches!(r, Err(kube::Error::Api(ref s)) if s.code == 403).then_some(()))
    })
    .await
    .unwrap();
    forbidden(
        Api::<Node>::all(first.clone())
            .patch(names[1], &PatchParams::default(), &Patch::Merge(&touch))
            .await,
        "annotating another node",
    );
    let cordon = json!({"spec": {"unschedulable": true}});
    forbidden(
        Api::<Node>::all(first)
            .patch(names[1], &PatchParams::default(), &Patch::Merge(&cordon))
            .await,
        "cordoning another node",
    );

    // The seed rollout with every agent running as the ServiceAccount of its node's pod.
    let ns = "install-seed";
    cluster.namespace(&admin, ns).await.unwrap();
    fixtures::create_nginx(&admin, ns, 2, "install", Some(json!({"minAvailable": 1})))
        .await
        .unwrap();
    let rec = Recorder::new();
    rec.endpoints(&admin, ns, "nginx");
    let mut sims = Vec::new();
    for n in names {
        let (kubeconfig, _) = pod_token(cluster, &admin, &on(n)).await;
        let mut sim = SimNode::new(cluster, n, "baton-system", Method::Command, &[]).unwrap();
        sim.use_kubeconfig(std::path::Path::new(&kubeconfig));
        sim.flag().unwrap();
        sim.start().unwrap();
        sims.push(sim);
    }
    let driven = drive(cluster, &admin, &mut sims, 1, Duration::from_secs(180))
        .await
        .unwrap();
    assert!(
        driven.fencing_violations.is_empty(),
        "{:?}",
        driven.fencing_violations
    );
    let nodes: Api<Node> = Api::all(admin.clone());
    wait_for("every node uncordoned and idle", TIMEOUT, || async {
        for n in names {
            let node = nodes.get(n).await?;
            let busy = node
                .metadata
                .annotations
                .as_ref()
                .is_some_and(|a| a.contains_key("baton.dev/phase"));
            if busy
                || node
                    .spec
                    .as_ref()
                    .and_then(|s| s.unschedulable)
                    .unwrap_or(false)
            {
                return Ok(None);
            }
        }
        Ok(Some(()))
    })
    .await
    .unwrap();
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
