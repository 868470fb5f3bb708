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
use baton_tests::rollout::{drive, wait_idle};
use baton_tests::{Cluster, fixtures, shared, wait_for};
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod, Secret, ServiceAccount};
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
    run(cluster.kubectl(), args, stdin)
}

fn helm(cluster: &Cluster, args: &[&str]) -> String {
    run(cluster.helm(), args, None)
}

/// The chart rendered with its default values as release `baton-helm`.
fn render_chart(cluster: &Cluster) -> String {
    helm(
        cluster,
        &[
            "template",
            "baton-helm",
            &chart(),
            "--namespace",
            "baton-helm",
        ],
    )
}

fn chart() -> String {
    manifests("helm/baton").display().to_string()
}

fn run(mut cmd: std::process::Command, args: &[&str], stdin: Option<&str>) -> String {
    cmd.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let cmd = format!("{:?} {args:?}", cmd.get_program());
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
        "{cmd}: {}",
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
        let covered = names.iter().all(|n| {
            pods.iter().any(|p| {
                fixtures::pod_is_ready(p)
                    && p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(*n)
            })
        });
        Ok(covered.then_some(pods))
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
    let switch: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "baton-pause"}})).unwrap();
    forbidden(
        switches.create(&PostParams::default(), &switch).await,
        "creating the pause ConfigMap",
    );
    // Node-scoped writes: its own Node yes, another one no (the ValidatingAdmissionPolicy).
    let touch = json!({"metadata": {"annotations": {"baton.test/touched": "yes"}}});
    Api::<Node>::all(first.clone())
        .patch(names[0], &PatchParams::default(), &Patch::Merge(&touch))
        .await
        .expect("an agent may annotate its own node");
    // Annotating another node is refused. The API server loads new admission policies
    // asynchronously, so this waits until it enforces it (the deadline is the check).
    wait_for(
        "annotating another node to be forbidden",
        TIMEOUT,
        || async {
            let r = Api::<Node>::all(first.clone())
                .patch(names[1], &PatchParams::default(), &Patch::Merge(&touch))
                .await;
            Ok(matches!(r, Err(kube::Error::Api(ref s)) if s.code == 403).then_some(()))
        },
    )
    .await
    .unwrap();
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

/// The BATON_* environment of the chart's DaemonSet, rendered with default values.
fn chart_env(cluster: &Cluster) -> std::collections::BTreeMap<String, Option<String>> {
    let yaml = render_chart(cluster);
    let json = kubectl(
        cluster,
        &["create", "--dry-run=client", "-o", "json", "-f", "-"],
        Some(&yaml),
    );
    // One JSON object per rendered document.
    let ds = serde_json::Deserializer::from_str(&json)
        .into_iter::<serde_json::Value>()
        .map(Result::unwrap)
        .find(|o| o["kind"] == "DaemonSet")
        .expect("the chart renders a DaemonSet");
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
    let yaml = render_chart(cluster);
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
        ("the chart", render_chart(cluster)),
    ];
    for (what, yaml) in rendered {
        let json = kubectl(
            cluster,
            &["create", "--dry-run=client", "-o", "json", "-f", "-"],
            Some(&yaml),
        );
        let ds = serde_json::Deserializer::from_str(&json)
            .into_iter::<serde_json::Value>()
            .map(Result::unwrap)
            .find(|o| o["kind"] == "DaemonSet")
            .unwrap();
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
