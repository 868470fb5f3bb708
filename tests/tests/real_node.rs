//! baton the way users run it: its image, its manifests and its chart as shipped, on real nodes
//! (containerd + kubelet, see `baton_tests::real_node`), rebooting for real.
//!
//! Each test starts its own control plane and nodes; they run one at a time (a node is a handful
//! of real processes, and this machine has two cores).

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use baton_tests::observe::{Change, Recorder};
use baton_tests::real_node::inspect::{privileges, processes_in, reach_as};
use baton_tests::real_node::install::{self, NAMESPACE, Variant};
use baton_tests::real_node::{Images, REAL_NODE_LABEL, RealNode, web};
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

/// How long one node's whole cycle may take: drain (a preStop hook and a graceful shutdown of a
/// few seconds), a reboot of seconds, the agent's restart; slow machines take several times more.
const CYCLE: Duration = Duration::from_secs(240);

/// The first time (wall clock) the recorder saw `what`.
fn first_seen(rec: &Recorder, what: &Change) -> Option<SystemTime> {
    rec.with(|r| r.log.iter().find(|s| s.what == *what).map(|s| s.wall))
}

/// The last time (wall clock) the recorder saw `what`.
fn last_seen(rec: &Recorder, what: &Change) -> Option<SystemTime> {
    rec.with(|r| r.log.iter().rev().find(|s| s.what == *what).map(|s| s.wall))
}

/// A full cycle on one real node, installed from `variant`: the sentinel file in the node's
/// /run, the Lease, the cordon, the eviction of a real container (which gets its preStop hook,
/// SIGTERM and its grace period), the reboot of the node's host by the variant's method, the
/// agent's own pod restarted by the reboot finishing the cycle, uncordon, release.
async fn one_cycle(variant: Variant, prefix: &str) {
    let _one = ONE_AT_A_TIME.lock().await;
    let (cluster, client, nodes) = real_cluster(prefix, 1).await;
    let node = &nodes[0];
    let ns = "web";
    cluster.namespace(&client, ns).await.unwrap();
    let records = cluster.dir().join("web-records");
    web::create(&client, ns, 1, 0, &records).await.unwrap();
    web::wait_ready(&client, ns, 1).await.unwrap();
    // The maintenance flag, where unattended-upgrades leaves it.
    let sentinel = node.host_path("/run/reboot-required");
    std::fs::write(&sentinel, "").unwrap();
    let rec = Recorder::new();
    rec.nodes(
        &client,
        &format!("{}={}", REAL_NODE_LABEL.0, REAL_NODE_LABEL.1),
    );
    rec.lease(&client, NAMESPACE, "baton");
    let yaml = install::render(&cluster, variant).unwrap();
    install::apply(&cluster, &yaml).unwrap();

    let done = wait_for("the node to reboot and finish its cycle", CYCLE, || async {
        Ok(node.cycle_finished(&client, NAMESPACE).await?.then_some(()))
    })
    .await;
    if let Err(e) = done {
        panic!(
            "{e:#}\nboots: {:?}\nagent:\n{}\n{}",
            node.boots(),
            node.pod_logs(NAMESPACE, "baton"),
            node.log_tails()
        );
    }
    rec.stop();
    let boots = node.boots();
    assert_eq!(boots.len(), 2, "exactly one reboot: {boots:?}");
    let rebooted = UNIX_EPOCH + Duration::from_secs_f64(boots[1].1);
    let name = node.name.clone();
    // Lease and cordon before the reboot; uncordon and release after it.
    let took = first_seen(&rec, &Change::Holder(Some(name.clone()))).expect("the Lease was taken");
    let cordoned = first_seen(&rec, &Change::Cordon(name.clone(), true)).expect("cordoned");
    let uncordoned = last_seen(&rec, &Change::Cordon(name.clone(), false)).expect("uncordoned");
    let released = last_seen(&rec, &Change::Holder(None)).expect("released");
    assert!(
        took < cordoned && cordoned < rebooted,
        "took the Lease, cordoned, then rebooted"
    );
    assert!(
        uncordoned > rebooted && released > rebooted,
        "uncordoned and released after the reboot"
    );
    rec.with(|r| assert_eq!(r.max_cordoned_by_baton, 1));
    // The evicted container got its preStop hook, SIGTERM, and time to finish.
    let recs = web::records(&records);
    let evicted: Vec<_> = recs
        .iter()
        .filter(|(_, ev)| ev.iter().any(|(e, _)| e == "term"))
        .collect();
    assert_eq!(evicted.len(), 1, "one web pod was evicted: {recs:?}");
    assert!(web::stopped_gracefully(evicted[0].1), "{:?}", evicted[0]);
    // The reboot stopped the agent; kubelet started it again after the boot, and it finished.
    let agent_log = node.pod_logs(NAMESPACE, "baton");
    assert!(agent_log.contains("reboot completed"), "{agent_log}");
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let agent = pods
        .list(&ListParams::default().labels("app.kubernetes.io/name=baton"))
        .await
        .unwrap()
        .items
        .remove(0);
    let restarts = agent.status.unwrap().container_statuses.unwrap()[0].restart_count;
    assert!(restarts >= 1, "the reboot restarted the agent's container");
    // The reboot emptied /run, and with it the flag.
    assert!(!sentinel.exists(), "the sentinel file survived the reboot");
    let systemctl = node.systemctl_calls();
    if variant.is_signal() {
        assert!(systemctl.is_empty(), "{systemctl:?}");
    } else {
        // Run in the node's mount namespace (where alone this systemctl exists), as root.
        assert_eq!(systemctl.len(), 1, "{systemctl:?}");
        assert!(systemctl[0].ends_with("uid=0 reboot"), "{systemctl:?}");
    }
    install::delete(&cluster, &yaml).unwrap();
}

#[tokio::test]
async fn signal_method_reboots_a_real_node_through_a_full_cycle() {
    one_cycle(Variant::Signal, "signal").await;
}

#[tokio::test]
async fn command_method_reboots_a_real_node_through_its_systemctl() {
    one_cycle(Variant::Command, "command").await;
}

/// The seed scenario on real containers across two real nodes, installed from `manifests/` as
/// shipped: a 2-replica web Deployment with a readiness probe, a preStop hook and a grace period,
/// its Service and a PDB `minAvailable: 1`. Every node is flagged and rolled while a client sends
/// requests to the Service's ready endpoints the whole time.
#[tokio::test]
async fn seed_scenario_on_real_containers_loses_no_request() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (cluster, client, nodes) = real_cluster("seed", 2).await;
    let ns = "web";
    cluster.namespace(&client, ns).await.unwrap();
    let records = cluster.dir().join("web-records");
    web::create(&client, ns, 2, 1, &records).await.unwrap();
    web::wait_ready(&client, ns, 2).await.unwrap();
    let netns = nodes.iter().map(|n| (n.name.clone(), n.netns())).collect();
    let traffic = web::Traffic::start(&client, ns, netns).await.unwrap();
    wait_for("the client's first answers", READY, || async {
        Ok((traffic.stats().ok >= 10).then_some(()))
    })
    .await
    .unwrap();
    let rec = Recorder::new();
    rec.nodes(
        &client,
        &format!("{}={}", REAL_NODE_LABEL.0, REAL_NODE_LABEL.1),
    );
    rec.lease(&client, NAMESPACE, "baton");
    rec.endpoints(&client, ns, web::NAME);
    for n in &nodes {
        std::fs::write(n.host_path("/run/reboot-required"), "").unwrap();
    }
    let started = std::time::Instant::now();
    let yaml = install::render(&cluster, Variant::Command).unwrap();
    install::apply(&cluster, &yaml).unwrap();
    let done = wait_for("every node to reboot and finish", CYCLE * 2, || async {
        for n in &nodes {
            if !n.cycle_finished(&client, NAMESPACE).await? {
                return Ok(None);
            }
        }
        Ok(Some(()))
    })
    .await;
    if let Err(e) = done {
        let logs: String = nodes
            .iter()
            .map(|n| {
                format!(
                    "--- {} boots {:?}\n{}",
                    n.name,
                    n.boots(),
                    n.pod_logs(NAMESPACE, "baton")
                )
            })
            .collect();
        panic!("{e:#}\n{logs}");
    }
    let rollout = started.elapsed();
    let stats = traffic.stop().await;
    rec.stop();
    println!(
        "seed on real nodes: rollout {:.1}s, requests {} sent, {} answered, {} failed, fewest ready endpoints {:?}, by node {:?}",
        rollout.as_secs_f64(),
        stats.sent,
        stats.ok,
        stats.failed,
        stats.min_ready,
        stats.by_node
    );
    assert_eq!(stats.failed, 0, "failed requests: {:?}", stats.errors);
    assert!(stats.sent >= 100, "the client kept sending: {stats:?}");
    assert!(stats.min_ready.is_some_and(|m| m >= 1), "{stats:?}");
    rec.with(|r| {
        assert_eq!(r.max_in_cycle, 1, "one node at a time");
        assert!(
            r.min_ready_endpoints.is_some_and(|m| m >= 1),
            "{:?}",
            r.min_ready_endpoints
        );
    });
    for n in &nodes {
        assert_eq!(n.boots().len(), 2, "{} rebooted once", n.name);
    }
    // Every evicted container got its preStop hook, SIGTERM and time to finish.
    let recs = web::records(&records);
    let evicted: Vec<_> = recs
        .iter()
        .filter(|(_, ev)| ev.iter().any(|(e, _)| e == "term"))
        .collect();
    assert!(
        evicted.len() >= 2,
        "both nodes' web pods were evicted: {recs:?}"
    );
    for (pod, events) in evicted {
        assert!(web::stopped_gracefully(events), "{pod}: {events:?}");
    }
    install::delete(&cluster, &yaml).unwrap();
}
