//! The operator's side of the binary against a real control plane: `baton status` (text,
//! `-o json`, `--watch`, as the kubectl plugin `kubectl baton`) on a cluster staged with real
//! agents, read with nothing but the read-only roles of `manifests/status/`; and `baton pause`,
//! `resume`, `request`, `cancel`, `pause-node`, `resume-node`, whose writes real agents obey.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use baton_tests::agent::{Method, SimNode, baton_bin};
use baton_tests::rollout::drive;
use baton_tests::scenario::*;
use baton_tests::{Cluster, fixtures, shared, wait_for};
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod, ServiceAccount};
use kube::Client;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};

/// What a `baton` command did.
#[derive(Debug)]
struct Ran {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs `program` with `args`, authenticated by `kubeconfig`, with no `BATON_*` from the test's
/// environment.
async fn run_as(program: &Path, kubeconfig: &Path, args: &[&str]) -> Ran {
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .env("KUBECONFIG", kubeconfig)
        .env_remove("NO_COLOR")
        .stdin(Stdio::null());
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("BATON_") {
            cmd.env_remove(k);
        }
    }
    let out = cmd.output().await.unwrap();
    Ran {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `baton ARGS` as the cluster's admin.
async fn baton(cluster: &Cluster, args: &[&str]) -> Ran {
    run_as(&baton_bin().unwrap(), cluster.kubeconfig(), args).await
}

/// `baton ARGS` that must succeed; its one line of output.
async fn ok(cluster: &Cluster, args: &[&str]) -> String {
    let r = baton(cluster, args).await;
    assert_eq!(r.code, 0, "baton {args:?}: {r:?}");
    let line = r.stdout.trim_end().to_owned();
    assert!(!line.contains('\n'), "one line: {line:?}");
    line
}

/// A kubeconfig for a ServiceAccount bound to nothing but the read-only roles of
/// `manifests/status/` (the Role made for namespace `ns`).
async fn reader(cluster: &Cluster, admin: &Client, ns: &str) -> PathBuf {
    let manifests = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../manifests/status");
    let yaml = std::fs::read_to_string(manifests.join("rbac.yaml"))
        .unwrap()
        .replace("namespace: baton-system", &format!("namespace: {ns}"));
    let sa = "status-reader";
    let bindings = format!(
        "apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: {sa}, namespace: {ns}}}\n---\n\
         apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\n\
         metadata: {{name: baton-status-{ns}}}\n\
         roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: baton-status}}\n\
         subjects: [{{kind: ServiceAccount, name: {sa}, namespace: {ns}}}]\n---\n\
         apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\n\
         metadata: {{name: baton-status, namespace: {ns}}}\n\
         roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: baton-status}}\n\
         subjects: [{{kind: ServiceAccount, name: {sa}, namespace: {ns}}}]\n"
    );
    for doc in [yaml, bindings] {
        let mut kubectl = cluster.kubectl();
        kubectl
            .args(["apply", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null());
        let mut child = tokio::process::Command::from(kubectl).spawn().unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut child.stdin.take().unwrap(), doc.as_bytes())
            .await
            .unwrap();
        assert!(child.wait().await.unwrap().success(), "kubectl apply");
    }
    let tr: TokenRequest =
        serde_json::from_value(json!({"spec": {"audiences": [], "expirationSeconds": 3600}}))
            .unwrap();
    let issued: TokenRequest = Api::<ServiceAccount>::namespaced(admin.clone(), ns)
        .create_subresource("token", sa, &PostParams::default(), &tr)
        .await
        .unwrap();
    let token = issued.status.unwrap().token.expect("a token");
    cluster
        .kubeconfig_for_token(&format!("{ns}-reader"), &token)
        .unwrap()
}

/// A pod labelled as an agent: on `node` (kwok runs it Ready), or on none that exists (it
/// stays Pending, unschedulable).
async fn agent_pod(client: &Client, ns: &str, name: &str, node: Option<&str>) {
    let mut spec = json!({"containers": [{"name": "baton", "image": "baton:0.1.0"}]});
    match node {
        Some(n) => spec["nodeName"] = json!(n),
        None => spec["nodeSelector"] = json!({"baton.test/nowhere": "true"}),
    }
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app.kubernetes.io/name": "baton"}},
        "spec": spec,
    }))
    .unwrap();
    Api::<Pod>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &pod)
        .await
        .unwrap();
}

fn annotation(node: &Node, key: &str) -> Option<String> {
    node.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(key).cloned())
}

/// Waits until Node `name` passes `check`.
async fn wait_node(client: &Client, name: &str, what: &str, check: impl Fn(&Node) -> bool) {
    let nodes: Api<Node> = Api::all(client.clone());
    wait_for(&format!("{name}: {what}"), SETTLE, || async {
        Ok(check(&nodes.get(name).await?).then_some(()))
    })
    .await
    .unwrap();
}

/// The staged cluster: node 1 drains, stuck on a PDB, holding `baton`; node 2 is cordoned by
/// hand; node 3's reboot was requested with `baton request` and waits for the slot; node 4 is
/// flagged and paused with `baton pause-node`; node 5 (its own Lease, so it can cycle meanwhile)
/// rebooted once and its flag survived, so it gave up; one agent pod is Ready, one Pending.
#[tokio::test]
async fn status_shows_slots_queue_drains_history_and_agents_with_read_access_only() {
    let cluster = shared();
    let ns = "status-staged";
    let (client, names, nodes) = stuck_draining(cluster, ns, &["--drain-timeout=10m"]).await;
    let solo_group = format!("{ns}-solo");
    let more: Vec<String> = (3..=5).map(|i| format!("{ns}-{i}")).collect();
    cluster
        .add_nodes(&client, &[&more[0], &more[1]], &[("baton.test/group", ns)])
        .await
        .unwrap();
    cluster
        .add_nodes(&client, &[&more[2]], &[("baton.test/group", &solo_group)])
        .await
        .unwrap();
    let (n1, n3, n4, n5) = (&names[0], &more[0], &more[1], &more[2]);

    // Node 5: one reboot, after which its flag is still set: with a cap of 1, it stops.
    let mut solo = vec![
        SimNode::new(
            cluster,
            n5,
            ns,
            Method::Command,
            &["--lock-name=baton-solo", "--max-reboot-attempts=1"],
        )
        .unwrap(),
    ];
    flag_and_start(&mut solo);
    drive(cluster, &client, &mut solo, 1, ROLLOUT)
        .await
        .unwrap();
    solo[0].flag().unwrap();
    wait_for("a RebootLoopStopped Event", SETTLE, || async {
        Ok(fixtures::node_events(&client, n5)
            .await?
            .iter()
            .any(|e| e.reason.as_deref() == Some("RebootLoopStopped"))
            .then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", solo[0].log()));

    // Node 3: requested by hand; node 4: flagged, then paused by hand.
    let mut waiting = vec![
        SimNode::new(cluster, n3, ns, Method::Command, &[]).unwrap(),
        SimNode::new(cluster, n4, ns, Method::Command, &[]).unwrap(),
    ];
    let requested = ok(cluster, &["request", n3, "--reason", "kernel 6.12"]).await;
    assert_eq!(
        requested,
        format!("node/{n3}: reboot requested (kernel 6.12)")
    );
    let paused = ok(cluster, &["pause-node", n4, "--reason", "disk replacement"]).await;
    assert_eq!(
        paused,
        format!("node/{n4}: paused (disk replacement): no new cycle starts there")
    );
    waiting[1].flag().unwrap();
    for n in &mut waiting {
        n.start().unwrap();
    }
    wait_waiting(&client, n4, "disk replacement", None).await;
    // Node 3's agent says it waits for the Lease node 1 holds.
    wait_waiting(&client, n3, "waiting for a free Lease slot", None).await;
    // The drain on node 1 says which budget refuses (once its budget watch has listed them: the
    // very first refusal may come before).
    wait_node(&client, n1, "drain progress naming the budget", |n| {
        annotation(n, "baton.dev/drain-last-error")
            .is_some_and(|e| e.contains("PodDisruptionBudget"))
            && annotation(n, "baton.dev/drain-pending").as_deref() == Some("1")
    })
    .await;
    agent_pod(&client, ns, "baton-ready", Some(n3)).await;
    agent_pod(&client, ns, "baton-pending", None).await;
    wait_for("the agent pod Ready", SETTLE, || async {
        let p = Api::<Pod>::namespaced(client.clone(), ns)
            .get("baton-ready")
            .await?;
        Ok(fixtures::pod_is_ready(&p).then_some(()))
    })
    .await
    .unwrap();

    // Read with the read-only roles only.
    let kubeconfig = reader(cluster, &client, ns).await;
    let selector = format!("baton.test/group in ({ns},{solo_group})");
    let args = [
        "status",
        "-n",
        ns,
        "-l",
        &selector,
        "--max-reboot-attempts=1",
    ];
    let bin = baton_bin().unwrap();
    let text = run_as(&bin, &kubeconfig, &args).await;
    assert_eq!(text.code, 0, "{text:?}");
    let text = text.stdout;
    println!("{text}");
    assert!(!text.contains('\x1b'), "no colour off a terminal:\n{text}");
    let line = |parts: &[&str]| {
        assert!(
            text.lines().any(|l| parts.iter().all(|p| l.contains(p))),
            "no line with {parts:?} in:\n{text}"
        );
    };
    line(&["Cluster pause:", "not paused"]);
    line(&["baton ", n1, "draining for", "~"]);
    line(&["1 ", n3, "next", "a free slot", "requested: kernel 6.12"]);
    line(&[
        "2 ",
        n4,
        "held",
        "paused on this node (baton.dev/pause): disk replacement",
    ]);
    line(&[
        n1,
        "draining for",
        " 1 ",
        "last error:",
        &format!("(PodDisruptionBudget {ns}/nginx)"),
    ]);
    line(&[n4, "disk replacement"]);
    line(&[n5, "ago"]);
    line(&[n5, "RebootLoopStopped"]);
    line(&[n5, "the maintenance flag was still set after 1 reboot(s)"]);
    line(&["Agents: 2 pod(s)", "1 Ready"]);
    line(&["not Ready:", "baton-pending", "Pending", "Unschedulable"]);
    assert!(
        !text.contains("baton-solo"),
        "not a slot of `baton`:\n{text}"
    );
    assert!(
        !text.lines().any(|l| l.contains(&names[1])),
        "node 2 is idle:\n{text}"
    );

    // The same as JSON, as the README documents it.
    let json = run_as(&bin, &kubeconfig, &[&args[..], &["-o", "json"]].concat()).await;
    assert_eq!(json.code, 0, "{json:?}");
    let r: Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(r["schema"], "baton.dev/status/v1");
    assert_eq!(r["namespace"], ns);
    assert_eq!(r["pause"]["paused"], false);
    let slots = r["slots"].as_array().unwrap();
    assert_eq!(slots.len(), 1, "{slots:?}");
    assert_eq!(slots[0]["lease"], "baton");
    assert_eq!(slots[0]["holder"], n1.as_str());
    assert_eq!(slots[0]["phase"], "draining");
    assert_eq!(slots[0]["leaseDurationSeconds"], 30);
    let ttl = slots[0]["ttlLeftSecondsEstimate"].as_i64().unwrap();
    assert!((0..=30).contains(&ttl), "{ttl}");
    let queue: Vec<(String, String, String)> = r["queue"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| {
            (
                q["node"].as_str().unwrap().to_owned(),
                q["tier"].as_str().unwrap().to_owned(),
                q["reasons"][0]["kind"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        queue,
        [
            (n3.clone(), "next".into(), "slot".into()),
            (n4.clone(), "held".into(), "nodePause".into())
        ]
    );
    assert_eq!(r["queue"][0]["requested"], "kernel 6.12");
    let flight = &r["inFlight"][0];
    assert_eq!(flight["node"], n1.as_str());
    assert_eq!(flight["podsLeft"], 1);
    assert_eq!(flight["holds"], json!(["baton"]));
    assert!(
        flight["lastError"]
            .as_str()
            .unwrap()
            .ends_with(&format!("(PodDisruptionBudget {ns}/nginx)")),
        "names the budget: {flight}"
    );
    assert_eq!(
        r["pausedNodes"],
        json!([{"node": n4, "reason": "disk replacement"}])
    );
    assert_eq!(r["history"]["lastReboots"][0]["node"], n5.as_str());
    assert!(
        r["history"]["failures"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["node"] == n5.as_str() && f["reason"] == "RebootLoopStopped"),
        "{}",
        r["history"]
    );
    assert_eq!(
        r["history"]["gaveUp"],
        json!([{"node": n5, "kind": "flagPersists",
                "detail": "the maintenance flag was still set after 1 reboot(s) in a row (--max-reboot-attempts=1): no reboot until it clears"}])
    );
    assert_eq!(
        (r["agents"]["pods"].as_u64(), r["agents"]["ready"].as_u64()),
        (Some(2), Some(1))
    );
    assert_eq!(r["agents"]["notReady"][0]["pod"], "baton-pending");
    assert_eq!(r["problems"], json!([]));

    // Read access is all it has: a write is refused, an API failure (exit 1), on one line.
    let refused = run_as(&bin, &kubeconfig, &["pause", "-n", ns]).await;
    assert_eq!(refused.code, 1, "{refused:?}");
    assert!(
        refused.stderr.contains("forbidden") && refused.stderr.trim().lines().count() == 1,
        "{refused:?}"
    );
    drop(nodes);
}

/// Each operator command writes what it says, says what was there before, and real agents obey:
/// a cluster pause holds a requested node, a node pause holds it too, and once both are lifted
/// the request reboots it (and the agent removes the request).
#[tokio::test]
async fn operator_commands_write_what_they_say_and_agents_obey() {
    let cluster = shared();
    let ns = "status-operate";
    let (client, names) = setup(cluster, ns, 1).await;
    let name = names[0].as_str();
    let mut nodes = sims(cluster, ns, &names, Method::Command, &[]);
    nodes[0].start().unwrap();
    nodes[0].wait_ready(SETTLE).await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let nodes_api: Api<Node> = Api::all(client.clone());

    let line = ok(cluster, &["pause", "-n", ns, "--reason", "change freeze"]).await;
    assert_eq!(
        line,
        format!(
            "paused every node: created ConfigMap {ns}/baton-pause (change freeze); cycles under way finish"
        )
    );
    let cm = cms.get("baton-pause").await.unwrap();
    assert_eq!(cm.data.unwrap()["reason"], "change freeze");
    let again = ok(cluster, &["pause", "-n", ns, "--reason", "other"]).await;
    assert!(
        again.starts_with(&format!(
            "already paused by ConfigMap {ns}/baton-pause since "
        )) && again.ends_with(": change freeze; left as is"),
        "{again}"
    );

    let line = ok(cluster, &["request", name, "--reason", "kernel 6.12"]).await;
    assert_eq!(line, format!("node/{name}: reboot requested (kernel 6.12)"));
    wait_waiting(&client, name, "change freeze", None).await;
    let again = ok(cluster, &["request", name, "--reason", "other"]).await;
    assert_eq!(
        again,
        format!("node/{name}: a reboot was already requested (kernel 6.12); left as is")
    );

    ok(cluster, &["pause-node", name, "--reason", "disk"]).await;
    let line = ok(cluster, &["resume", "-n", ns]).await;
    assert!(
        line.starts_with(&format!(
            "resumed every node: deleted ConfigMap {ns}/baton-pause since "
        )) && line.ends_with(": change freeze"),
        "{line}"
    );
    assert!(cms.get_opt("baton-pause").await.unwrap().is_none());
    assert_eq!(
        ok(cluster, &["resume", "-n", ns]).await,
        format!("not paused (no ConfigMap {ns}/baton-pause); nothing to do")
    );
    wait_waiting(&client, name, "paused on this node", Some("cluster-wide")).await;
    assert_eq!(lease_holder(&client, ns).await, None, "paused: no Lease");

    // Withdrawn while paused, requested again: the annotation follows each command.
    let line = ok(cluster, &["cancel", name]).await;
    assert_eq!(
        line,
        format!("node/{name}: reboot request withdrawn (was: kernel 6.12)")
    );
    assert_eq!(
        annotation(
            &nodes_api.get(name).await.unwrap(),
            "baton.dev/reboot-requested"
        ),
        None
    );
    assert_eq!(
        ok(cluster, &["cancel", name]).await,
        format!("node/{name}: no reboot request to withdraw; nothing to do")
    );
    let line = ok(cluster, &["request", name]).await;
    assert!(
        line.contains("paused (baton.dev/pause: disk)")
            && line.contains(&format!("baton resume-node {name}")),
        "{line}"
    );
    assert_eq!(
        ok(cluster, &["pause-node", name]).await,
        format!("node/{name}: already paused (disk); left as is")
    );
    assert_eq!(
        ok(cluster, &["resume-node", name]).await,
        format!("node/{name}: resumed (was paused: disk)")
    );
    assert_eq!(
        ok(cluster, &["resume-node", name]).await,
        format!("node/{name}: not paused; nothing to do")
    );
    // Nothing holds it now: the request reboots the node, and the agent clears it.
    roll(cluster, &client, ns, &names, &mut nodes).await;
    let node = nodes_api.get(name).await.unwrap();
    assert_eq!(annotation(&node, "baton.dev/reboot-requested"), None);
    assert!(annotation(&node, "baton.dev/last-reboot").is_some());
}

#[tokio::test]
async fn operator_commands_exit_2_on_bad_input_and_1_when_the_api_fails() {
    let cluster = shared();
    let bad = [
        (
            vec!["request", "no-such-node"],
            "node/no-such-node not found",
        ),
        (vec!["pause-node", "Not_A_Node"], "<NODE>"),
        (vec!["pause", "--api-timeout", "0s"], "--api-timeout"),
        (vec!["status", "-o", "yaml"], "--output"),
        (vec!["status", "-l", "a in (b"], "Nodes"),
        (vec!["status", "-n", "Bad_Namespace"], "--namespace"),
    ];
    for (args, names) in bad {
        let r = baton(cluster, &args).await;
        assert_eq!(r.code, 2, "{args:?}: {r:?}");
        let err = r.stderr.trim();
        assert!(
            err.starts_with("baton: error: ") && !err.contains('\n') && err.contains(names),
            "{args:?}: {err}"
        );
    }
    // An API server that is not there: exit 1, one line.
    let port = baton_tests::cluster::free_ports::<1>().unwrap()[0];
    let dir = tempfile::tempdir().unwrap();
    let gone = dir.path().join("gone.kubeconfig");
    std::fs::write(
        &gone,
        std::fs::read_to_string(cluster.kubeconfig())
            .unwrap()
            .replace(
                &format!("127.0.0.1:{}", cluster.api_port()),
                &format!("127.0.0.1:{port}"),
            ),
    )
    .unwrap();
    for args in [
        vec!["status", "--api-timeout=2s"],
        vec!["pause", "--api-timeout=2s"],
        vec!["request", "n1", "--api-timeout=2s"],
    ] {
        let r = run_as(&baton_bin().unwrap(), &gone, &args).await;
        assert_eq!(r.code, 1, "{args:?}: {r:?}");
        assert_eq!(r.stderr.trim().lines().count(), 1, "{args:?}: {r:?}");
    }
}

/// `--watch` prints again when something changes (one JSON document per line), and the binary
/// named `kubectl-baton` on PATH is the kubectl plugin `kubectl baton`.
#[tokio::test]
async fn status_follows_changes_and_runs_as_the_kubectl_plugin() {
    let cluster = shared();
    let ns = "status-watch";
    let (_client, names) = setup(cluster, ns, 1).await;
    let mut child = tokio::process::Command::new(baton_bin().unwrap())
        .args(["status", "-n", ns, "-l", &format!("baton.test/group={ns}")])
        .args(["--watch", "-o", "json"])
        .env("KUBECONFIG", cluster.kubeconfig())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    // The next document that passes `want`: each change prints one, within the settle time
    // (one the watches see before the command's change is allowed, not required).
    let deadline = tokio::time::Instant::now() + SETTLE;
    let mut until = async |want: &dyn Fn(&Value) -> bool| -> Value {
        loop {
            let line = tokio::time::timeout_at(deadline, lines.next_line())
                .await
                .expect("a document within the settle time")
                .unwrap()
                .expect("the watch goes on");
            let doc: Value = serde_json::from_str(&line).unwrap();
            if want(&doc) {
                return doc;
            }
        }
    };
    let first = until(&|_| true).await;
    assert_eq!(first["pause"]["paused"], false);
    ok(cluster, &["pause", "-n", ns, "--reason", "watch me"]).await;
    let paused = until(&|d| d["pause"]["paused"] == true).await;
    assert_eq!(paused["pause"]["reason"], "watch me");
    ok(cluster, &["request", &names[0]]).await;
    let queued = until(&|d| !d["queue"].as_array().unwrap().is_empty()).await;
    assert_eq!(queued["queue"][0]["node"], names[0].as_str());
    assert_eq!(queued["queue"][0]["reasons"][0]["kind"], "clusterPause");
    child.kill().await.unwrap();

    // The plugin: kubectl finds `kubectl-baton` on PATH and runs it with the rest of the line.
    let bin_dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(baton_bin().unwrap(), bin_dir.path().join("kubectl-baton")).unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut kubectl = cluster.kubectl();
    kubectl
        .env("PATH", &path)
        .args(["baton", "-n", ns, "-o", "json"]);
    let out = tokio::process::Command::from(kubectl)
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["schema"], "baton.dev/status/v1");
    assert_eq!(r["pause"]["paused"], true);
    let mut kubectl = cluster.kubectl();
    kubectl
        .env("PATH", &path)
        .args(["baton", "resume", "-n", ns]);
    let out = tokio::process::Command::from(kubectl)
        .output()
        .await
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && said.starts_with("resumed every node"),
        "{out:?}"
    );
}
