//! baton the way users run it: its image, its manifests and its chart as shipped, on real nodes
//! (containerd + kubelet, see `baton_tests::real_node`), rebooting for real.
//!
//! Each test starts its own control plane and nodes; they run one at a time (a node is a handful
//! of real processes, and this machine has two cores).

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use baton_tests::real_node::inspect::{privileges, processes_in, reach_as};
use baton_tests::real_node::install::{self, NAMESPACE, Variant};
use baton_tests::real_node::{Images, RealNode};
use baton_tests::{Cluster, fixtures, wait_for};
use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::{Api, ListParams};

/// How long the agents may take to become Ready on fresh nodes.
const READY: Duration = Duration::from_secs(120);

/// Real-node tests take the machine one at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A control plane with `n` real nodes named `<prefix>-1`, `<prefix>-2`, ...
async fn real_cluster(prefix: &str, n: u8) -> (Cluster, Client, Vec<RealNode>) {
    let cluster = Cluster::start().await.unwrap();
    let client = cluster.client().await.unwrap();
    let images = Images::from_env().unwrap();
    let mut nodes = Vec::new();
    for i in 1..=n {
        let name = format!("{prefix}-{i}");
        nodes.push(
            RealNode::start(&cluster, &client, &name, i, &images)
                .await
                .unwrap(),
        );
    }
    (cluster, client, nodes)
}

/// The agent pods, once one is Ready on every node.
async fn agents_ready(client: &Client, nodes: &[RealNode]) -> Vec<Pod> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let lp = ListParams::default().labels("app.kubernetes.io/name=baton");
    let result = wait_for("a Ready baton pod on every node", READY, || {
        let (pods, lp) = (pods.clone(), lp.clone());
        async move {
            let items = pods.list(&lp).await?.items;
            let all = nodes.iter().all(|n| {
                items.iter().any(|p| {
                    fixtures::pod_is_ready(p)
                        && p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(&n.name)
                })
            });
            Ok(all.then_some(items))
        }
    })
    .await;
    match result {
        Ok(items) => items,
        Err(e) => {
            let logs: String = nodes
                .iter()
                .map(|n| {
                    format!(
                        "--- {}\n{}\n{}",
                        n.name,
                        n.pod_logs(NAMESPACE, ""),
                        n.log_tails()
                    )
                })
                .collect();
            panic!("{e:#}\n{logs}")
        }
    }
}

const SYS_ADMIN: u64 = 1 << 21;
const SYS_CHROOT: u64 = 1 << 18;
const SYS_PTRACE: u64 = 1 << 19;
const KILL: u64 = 1 << 5;

#[tokio::test]
async fn every_variant_and_the_chart_run_on_real_nodes_with_least_privilege() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (cluster, client, nodes) = real_cluster("variants", 2).await;
    // In each node's /run (the folder the agent mounts for the sentinel file): a root-owned
    // socket like containerd's, a root-only file, and a file anyone may read.
    let mut listeners = Vec::new();
    for node in &nodes {
        let run = |f: &str| node.host_path(&format!("/run/{f}"));
        let sock = run("baton-test-root.sock");
        listeners.push(std::os::unix::net::UnixListener::bind(&sock).unwrap());
        std::fs::set_permissions(&sock, PermissionsExt::from_mode(0o660)).unwrap();
        for (f, mode) in [("baton-test-secret", 0o600), ("baton-test-public", 0o644)] {
            std::fs::write(run(f), "x").unwrap();
            std::fs::set_permissions(run(f), PermissionsExt::from_mode(mode)).unwrap();
        }
    }
    for variant in Variant::ALL {
        let yaml = install::render(&cluster, variant).unwrap();
        install::apply(&cluster, &yaml).unwrap();
        // Ready means kubelet's readiness probe got 200 from /readyz in the pod.
        let pods = agents_ready(&client, &nodes).await;
        for p in &pods {
            let restarts = p
                .status
                .as_ref()
                .and_then(|s| s.container_statuses.as_ref())
                .map_or(0, |c| c.iter().map(|c| c.restart_count).sum::<i32>());
            assert_eq!(restarts, 0, "{variant:?}: the agent restarted");
        }
        for node in &nodes {
            let agents = processes_in(node.init_pid(), &["/baton", "agent"]);
            assert_eq!(agents.len(), 1, "{variant:?}: one agent on {}", node.name);
            let p = privileges(agents[0]).unwrap();
            assert_eq!(p.seccomp, 2, "{variant:?}: the runtime's seccomp filter");
            assert!(p.no_new_privs, "{variant:?}: no privilege escalation");
            // What a process with the agent's identity reaches in the agent's own mount namespace.
            let reach = reach_as(
                agents[0],
                &["/host/var/run/baton-test-root.sock"],
                &[
                    "/host/var/run/baton-test-secret",
                    "/host/var/run/baton-test-public",
                ],
            )
            .unwrap();
            assert_eq!(
                reach.files[1],
                Ok(()),
                "{variant:?}: the probe sees the host's /run"
            );
            if variant.is_signal() {
                // Switched to 65532 keeping CAP_KILL only: the host's root-owned socket and
                // root-only file are out of reach.
                assert_eq!(
                    (p.uid, p.gid, p.cap_eff, p.cap_prm),
                    (65532, 65532, KILL, KILL),
                    "{variant:?}: {p:?}"
                );
                assert_eq!(
                    reach.sockets[0],
                    Err(libc::EACCES),
                    "{variant:?}: a root socket"
                );
                assert_eq!(
                    reach.files[0],
                    Err(libc::EACCES),
                    "{variant:?}: a root-only file"
                );
            } else {
                // Root in the host's /run: the command method's documented exposure.
                assert_eq!(reach.sockets[0], Ok(()), "{variant:?}: a root socket");
                assert_eq!(
                    (p.uid, p.cap_eff),
                    (0, SYS_ADMIN | SYS_CHROOT | SYS_PTRACE),
                    "{variant:?}: {p:?}"
                );
            }
        }
        install::delete(&cluster, &yaml).unwrap();
    }
}
