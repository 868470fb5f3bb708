//! baton's safety rules under faults and bad input, against a real control plane with the real
//! `baton` binary per kwok node: each test stages one race or one lie (a forged record, a Lease
//! deleted or taken mid-drain, a reboot slower than every timeout, an API server that is not
//! there yet) and checks the rule that must hold.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use baton_tests::agent::{Method, SimNode};
use baton_tests::observe::{Change, Recorder};
use baton_tests::scenario::*;
use baton_tests::{fixtures, shared, wait_for};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use serde_json::json;

/// A recorder of `ns`'s nodes and of its Lease `baton`.
fn record(client: &Client, ns: &str) -> Recorder {
    let rec = Recorder::new();
    rec.nodes(client, &format!("baton.test/group={ns}"));
    rec.lease(client, ns, "baton");
    rec
}

/// The index of the first node whose host got a reboot trigger.
async fn first_triggered(nodes: &[SimNode]) -> usize {
    wait_for("a reboot trigger", ROLLOUT, || async {
        Ok(nodes.iter().position(|n| n.triggers() > 0))
    })
    .await
    .unwrap()
}

async fn annotate(client: &Client, node: &str, annotations: serde_json::Value) {
    Api::<Node>::all(client.clone())
        .patch(
            node,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": annotations}})),
        )
        .await
        .unwrap();
}

async fn node(client: &Client, name: &str) -> Node {
    Api::<Node>::all(client.clone()).get(name).await.unwrap()
}

fn cordoned(n: &Node) -> bool {
    n.spec
        .as_ref()
        .and_then(|s| s.unschedulable)
        .unwrap_or(false)
}

/// When the recorder first saw `what`, as an index into its log.
fn first(rec: &Recorder, what: &Change) -> Option<usize> {
    rec.with(|r| r.log.iter().position(|s| s.what == *what))
}

/// Waits for `reason` among the Events of `node`.
async fn event(client: &Client, node: &str, reason: &str) -> k8s_openapi::api::core::v1::Event {
    wait_for(&format!("a {reason} Event"), SETTLE, || async {
        Ok(fixtures::node_events(client, node)
            .await?
            .into_iter()
            .find(|e| e.reason.as_deref() == Some(reason)))
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn the_last_allowed_trigger_waits_for_the_host_instead_of_undoing_the_cycle() {
    let cluster = shared();
    let ns = "safety-last-trigger";
    let (client, names) = setup(cluster, ns, 1).await;
    let rec = record(&client, ns);
    let mut nodes = sims(
        cluster,
        ns,
        &names,
        Method::Command,
        &["--max-reboot-attempts=1"],
    );
    flag_and_start(&mut nodes);
    nodes[0].wait_triggered(ROLLOUT).await.unwrap();
    // The flag clears while the host goes down (the updater tidies up): the agent reads it, and
    // must still undo nothing. Its own Node write of the attempt reaches it too.
    std::fs::remove_file(nodes[0].dir().join("reboot-required")).unwrap();
    wait_for("the agent to see the flag cleared", SETTLE, || async {
        Ok(nodes[0]
            .log()
            .contains("maintenance flag changed source=\"file\" flag=NotRequired")
            .then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", nodes[0].log()));
    let holder = nodes[0].reboot(cluster, &client).await.unwrap();
    assert_eq!(
        holder.as_deref(),
        Some(names[0].as_str()),
        "the Lease was held when the host went down:\n{}",
        nodes[0].log()
    );
    wait_clean(&client, ns, &names, &[]).await;
    rec.stop();
    // Nothing was undone before the host went down: the uncordon comes after it.
    let down = first(&rec, &Change::Ready(names[0].clone(), false)).expect("went down");
    let uncordoned = first(&rec, &Change::Cordon(names[0].clone(), false)).expect("uncordoned");
    assert!(uncordoned > down, "uncordoned before the reboot");
    assert_eq!(
        nodes[0].metric("baton_reboots_total").await.unwrap(),
        Some(1.0)
    );
}

#[tokio::test]
async fn a_slowly_rebooting_holder_keeps_its_slot_past_the_not_ready_limit() {
    let cluster = shared();
    let ns = "safety-slow-reboot";
    let (client, names) = setup(cluster, ns, 2).await;
    let rec = record(&client, ns);
    let mut nodes = sims(
        cluster,
        ns,
        &names,
        Method::Command,
        &["--lock-holder-not-ready-timeout=2s"],
    );
    flag_and_start(&mut nodes);
    let first = first_triggered(&nodes).await;
    let other = 1 - first;
    // The host is down far longer than the NotReady limit (firmware, disks): three times the
    // limit is the window in which a takeover would have happened.
    nodes[first].go_down(cluster, &client).await.unwrap();
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(
        lease_holder(&client, ns).await.as_deref(),
        Some(names[first].as_str()),
        "the slot of a rebooting holder was taken:\n{}",
        nodes[other].log()
    );
    assert_eq!(phase(&node(&client, &names[other]).await), None);
    nodes[first].come_up(cluster, &client).await.unwrap();
    roll(cluster, &client, ns, &names, &mut nodes).await;
    rec.stop();
    rec.with(|r| assert_eq!(r.max_in_cycle, 1, "never two nodes at once"));
}

#[tokio::test]
async fn a_lease_deleted_mid_drain_stops_the_drain_before_another_node_starts() {
    let cluster = shared();
    let ns = "safety-lease-deleted";
    let (client, names, mut nodes) = stuck_draining(cluster, ns, &["--drain-timeout=10m"]).await;
    let rec = record(&client, ns);
    flag_and_start(&mut nodes[1..]);
    // Node 2 waits for the Lease: it watches it, so it knows the last holder. (An agent that
    // starts watching at the very moment of the deletion has none to wait for: see the README.)
    let waits = format!("the lease is held by {}", names[0]);
    wait_for("node 2 to wait for the lease", SETTLE, || async {
        Ok(nodes[1].log().contains(&waits).then_some(()))
    })
    .await
    .unwrap();
    // Someone deletes the Lease by hand while node 1 drains and node 2 waits for it.
    Api::<Lease>::namespaced(client.clone(), ns)
        .delete("baton", &DeleteParams::default())
        .await
        .unwrap();
    // Node 1 stops its drain and uncordons; only then may node 2 start.
    // (Started: draining, or already past it: its drain has nothing to evict.)
    wait_for("node 2 to start", SETTLE, || async {
        Ok(phase(&node(&client, &names[1]).await).map(|_| ()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}\n{}", nodes[0].log(), nodes[1].log()));
    rec.stop();
    rec.with(|r| assert_eq!(r.max_in_cycle, 1, "two nodes in a cycle at once"));
    assert!(
        !cordoned(&node(&client, &names[0]).await),
        "node 1 uncordoned"
    );
    event(&client, &names[0], "LeaseLost").await;
}

#[tokio::test]
async fn a_lease_taken_mid_drain_stops_the_drain_and_uncordons() {
    let cluster = shared();
    let ns = "safety-lease-taken";
    let (client, names, nodes) = stuck_draining(cluster, ns, &["--drain-timeout=10m"]).await;
    // Another node's name is written in (a stolen token, a bad script): the drain stops at once,
    // not at its 10-minute timeout. (Node 2 is Ready and idle, so its hold is not "gone".)
    set_lease(&client, ns, &names[1], 3600).await;
    wait_for("node 1 uncordoned and idle", SETTLE, || async {
        let n = node(&client, &names[0]).await;
        Ok((!cordoned(&n) && phase(&n).is_none()).then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", nodes[0].log()));
    assert_eq!(
        lease_holder(&client, ns).await.as_deref(),
        Some(names[1].as_str())
    );
    assert_eq!(nodes[0].triggers(), 0);
    event(&client, &names[0], "LeaseLost").await;
}

#[tokio::test]
async fn a_flag_that_cannot_be_checked_mid_drain_gives_the_cycle_up_after_the_stall_timeout() {
    let cluster = shared();
    let ns = "safety-stall-flag";
    let dir = tempfile::tempdir().unwrap();
    let answer = dir.path().join("answer");
    std::fs::write(&answer, "0").unwrap();
    let command = format!(
        "--reboot-sentinel-command=/bin/sh -c 'exit $(cat {})'",
        answer.display()
    );
    let (client, names, nodes) = stuck_draining(
        cluster,
        ns,
        &[&command, "--stall-timeout=3s", "--drain-timeout=10m"],
    )
    .await;
    // The sentinel command starts failing (exit 2: could not check).
    std::fs::write(&answer, "2").unwrap();
    wait_for(
        "node 1 uncordoned, idle, the Lease free",
        SETTLE,
        || async {
            let n = node(&client, &names[0]).await;
            let free = lease_holder(&client, ns).await.is_none();
            Ok((!cordoned(&n) && phase(&n).is_none() && free).then_some(()))
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", nodes[0].log()));
    assert_eq!(nodes[0].triggers(), 0);
    let e = event(&client, &names[0], "MaintenanceStalled").await;
    assert_eq!(e.type_.as_deref(), Some("Warning"));
}

#[tokio::test]
async fn an_unreadable_record_stops_the_renewals_so_that_others_go_after_the_ttl() {
    let cluster = shared();
    let ns = "safety-stall-record";
    let (client, names, mut nodes) = stuck_draining(
        cluster,
        ns,
        &[
            "--stall-timeout=2s",
            "--lock-ttl=15s",
            "--drain-timeout=10m",
        ],
    )
    .await;
    flag_and_start(&mut nodes[1..]);
    nodes[1].wait_ready(SETTLE).await.unwrap();
    // A human (or a bug) garbles node 1's record: its agent cannot act on it.
    annotate(
        &client,
        &names[0],
        json!({"baton.dev/reboot-attempts": "lots"}),
    )
    .await;
    // No longer renewed, the Lease expires and node 2 takes it.
    wait_for(
        "node 2 to take the Lease",
        Duration::from_secs(90),
        || async {
            Ok(
                (lease_holder(&client, ns).await.as_deref() == Some(names[1].as_str()))
                    .then_some(()),
            )
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}\n{}", nodes[0].log(), nodes[1].log()));
    // Node 1 is left as it was, for a human.
    assert!(cordoned(&node(&client, &names[0]).await));
    let e = event(&client, &names[0], "MaintenanceStalled").await;
    assert_eq!(e.type_.as_deref(), Some("Warning"));
}

#[tokio::test]
async fn a_flag_still_set_after_the_reboot_waits_for_the_health_gate_before_cordoning_again() {
    let cluster = shared();
    let ns = "safety-settle-again";
    let (client, names) = setup(cluster, ns, 1).await;
    let rec = record(&client, ns);
    // A flag no reboot clears (a sentinel command that always says "required").
    let mut nodes = sims(
        cluster,
        ns,
        &names,
        Method::Command,
        &[
            "--reboot-sentinel-command=/bin/true",
            "--settle-time=8s",
            "--max-reboot-attempts=2",
        ],
    );
    nodes[0].start().unwrap();
    nodes[0].wait_triggered(ROLLOUT).await.unwrap();
    nodes[0].reboot(cluster, &client).await.unwrap();
    nodes[0].wait_triggered(ROLLOUT).await.unwrap();
    rec.stop();
    // The second cycle started only once the settle time after the first reboot had passed, as
    // the watches saw it (the record is written to the millisecond).
    let (finished, restarted) = rec.with(|r| {
        let finished = r
            .log
            .iter()
            .find(|s| s.what == Change::Phase(names[0].clone(), None))
            .map(|s| s.at)
            .expect("the first cycle finished");
        let restarted = r
            .log
            .iter()
            .filter(|s| s.what == Change::Phase(names[0].clone(), Some("draining".into())))
            .nth(1)
            .map(|s| s.at)
            .expect("a second cycle");
        (finished, restarted)
    });
    let gap = restarted.duration_since(finished);
    assert!(
        gap >= Duration::from_millis(7500),
        "cordoned again {gap:?} after the reboot finished"
    );
}

#[tokio::test]
async fn an_agent_started_while_the_api_server_is_unreachable_waits_unready() {
    let cluster = shared();
    let ns = "safety-no-api";
    let (client, names) = setup(cluster, ns, 1).await;
    // The agent's way to the API server: a port where nothing listens yet.
    let [port] = baton_tests::cluster::free_ports().unwrap();
    let admin = std::fs::read_to_string(cluster.kubeconfig()).unwrap();
    let api = format!("127.0.0.1:{}", cluster.api_port());
    let kubeconfig = cluster.dir().join("safety-no-api.kubeconfig");
    std::fs::write(
        &kubeconfig,
        admin.replace(&api, &format!("127.0.0.1:{port}")),
    )
    .unwrap();
    let mut nodes = sims(cluster, ns, &names, Method::Command, &[]);
    nodes[0].use_kubeconfig(&kubeconfig);
    nodes[0].flag().unwrap();
    nodes[0].start().unwrap();
    // It keeps trying, unready, and does not exit.
    wait_for("the agent to retry", SETTLE, || async {
        Ok((nodes[0].log().matches("watch failed; retrying").count() >= 2).then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", nodes[0].log()));
    assert!(nodes[0].exited().is_none(), "{}", nodes[0].log());
    assert_eq!(nodes[0].http_get("/readyz").await.unwrap().0, 503);
    // The API server becomes reachable: the agent gets ready and does its job.
    let own_netns = std::path::PathBuf::from("/proc/self/ns/net");
    let _relay = baton_tests::real_node::net::Forwarder::start(
        &own_netns,
        SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)),
        api.parse().unwrap(),
    )
    .unwrap();
    nodes[0].wait_ready(SETTLE).await.unwrap();
    roll(cluster, &client, ns, &names, &mut nodes).await;
}

#[tokio::test]
async fn a_host_that_reboots_on_its_own_mid_drain_is_not_rebooted_again() {
    let cluster = shared();
    let ns = "safety-self-reboot";
    let (client, names) = setup(cluster, ns, 2).await;
    fixtures::cordon(&client, &names[1], true).await.unwrap();
    fixtures::create_nginx(&client, ns, 1, ns, Some(json!({"maxUnavailable": 0})))
        .await
        .unwrap();
    // Requested by annotation, so the request survives the host's own reboot.
    annotate(
        &client,
        &names[0],
        json!({"baton.dev/reboot-requested": "kernel"}),
    )
    .await;
    let mut nodes = sims(
        cluster,
        ns,
        &names[..1],
        Method::Command,
        &["--pdb-preflight=false"],
    );
    nodes[0].start().unwrap();
    wait_for("node 1 stuck draining", SETTLE, || async {
        Ok((phase(&node(&client, &names[0]).await).as_deref() == Some("draining")).then_some(()))
    })
    .await
    .unwrap();
    // The host reboots by itself (a crash, a human), then the budget would allow the drain.
    nodes[0].go_down(cluster, &client).await.unwrap();
    fixtures::patch_pdb(&client, ns, "nginx", json!({"maxUnavailable": 1}))
        .await
        .unwrap();
    nodes[0].come_up(cluster, &client).await.unwrap();
    // It either finishes, or (drained now) reboots the host again.
    wait_for("the cycle to end or a trigger", ROLLOUT, || async {
        let n = node(&client, &names[0]).await;
        let ended = phase(&n).is_none() && !cordoned(&n);
        Ok((ended || nodes[0].triggers() > 0).then_some(()))
    })
    .await
    .unwrap();
    assert_eq!(
        nodes[0].triggers(),
        0,
        "rebooted again:\n{}",
        nodes[0].log()
    );
    assert_eq!(
        nodes[0].metric("baton_reboots_total").await.unwrap(),
        Some(0.0),
        "a reboot baton did not trigger is not counted"
    );
    wait_clean(&client, ns, &names[..1], &[]).await;
    let e = event(&client, &names[0], "RebootNotTriggered").await;
    assert_eq!(e.type_.as_deref(), Some("Warning"));
}

#[tokio::test]
async fn a_forged_rebooting_phase_never_reboots_an_undrained_node() {
    let cluster = shared();
    let ns = "safety-forged-phase";
    let (client, names) = setup(cluster, ns, 1).await;
    let rec = record(&client, ns);
    // `rebooting`, from the current boot, on a schedulable node that was never drained.
    let current = baton_tests::cluster::boot_id(&names[0], 0);
    annotate(
        &client,
        &names[0],
        json!({"baton.dev/phase": "rebooting", "baton.dev/boot-id-before": current}),
    )
    .await;
    let mut nodes = sims(cluster, ns, &names, Method::Command, &[]);
    flag_and_start(&mut nodes);
    // The flagged node goes through its cycle from the start: cordon and drain first.
    nodes[0].wait_triggered(ROLLOUT).await.unwrap();
    let n = node(&client, &names[0]).await;
    assert!(cordoned(&n), "triggered on a schedulable node");
    assert!(
        first(
            &rec,
            &Change::Phase(names[0].clone(), Some("draining".into()))
        )
        .is_some(),
        "triggered without draining:\n{}",
        nodes[0].log()
    );
    let e = event(&client, &names[0], "InconsistentState").await;
    assert_eq!(e.type_.as_deref(), Some("Warning"));
    roll(cluster, &client, ns, &names, &mut nodes).await;
    rec.stop();
}

#[tokio::test]
async fn a_forged_reboot_record_is_never_counted() {
    let cluster = shared();
    let ns = "safety-forged-record";
    let (client, names) = setup(cluster, ns, 1).await;
    fixtures::cordon(&client, &names[0], true).await.unwrap();
    // `rebooting` from another boot, baton's cordon, but no trigger ever recorded.
    annotate(
        &client,
        &names[0],
        json!({
            "baton.dev/phase": "rebooting",
            "baton.dev/cordoned": "true",
            "baton.dev/boot-id-before": "00000000-1111-2222-3333-444444444444",
        }),
    )
    .await;
    let mut nodes = sims(cluster, ns, &names, Method::Command, &[]);
    nodes[0].start().unwrap();
    wait_clean(&client, ns, &names, &[]).await;
    assert_eq!(
        nodes[0].metric("baton_reboots_total").await.unwrap(),
        Some(0.0)
    );
    let completed = fixtures::node_events(&client, &names[0])
        .await
        .unwrap()
        .into_iter()
        .any(|e| e.reason.as_deref() == Some("RebootCompleted"));
    assert!(
        !completed,
        "a reboot baton did not trigger was reported as baton's"
    );
    let e = event(&client, &names[0], "RebootNotTriggered").await;
    assert_eq!(e.type_.as_deref(), Some("Warning"));
}

#[tokio::test]
async fn a_stop_request_ends_a_step_waiting_on_a_hung_api_server_at_once() {
    let cluster = shared();
    let ns = "safety-stop-hung";
    let (client, names) = setup(cluster, ns, 1).await;
    // A budget that allows nothing keeps the flagged node checking it, read-only, every second.
    fixtures::create_nginx(&client, ns, 1, ns, Some(json!({"maxUnavailable": 0})))
        .await
        .unwrap();
    let relay = baton_tests::relay::Relay::start(
        format!("127.0.0.1:{}", cluster.api_port()).parse().unwrap(),
    )
    .unwrap();
    let admin = std::fs::read_to_string(cluster.kubeconfig()).unwrap();
    let kubeconfig = cluster.dir().join("safety-stop-hung.kubeconfig");
    std::fs::write(
        &kubeconfig,
        admin.replace(
            &format!("127.0.0.1:{}", cluster.api_port()),
            &format!("127.0.0.1:{}", relay.port()),
        ),
    )
    .unwrap();
    // Requests may wait 30 s for an answer.
    let mut nodes = sims(
        cluster,
        ns,
        &names,
        Method::Command,
        &["--api-timeout=30s", "--lock-ttl=2m"],
    );
    nodes[0].use_kubeconfig(&kubeconfig);
    flag_and_start(&mut nodes);
    wait_waiting(&client, &names[0], "allows no disruption", None).await;
    // The API server hangs; the agent's next check waits on it.
    relay.freeze();
    wait_for(
        "a request waiting on the hung API server",
        SETTLE,
        || async { Ok((relay.swallowed() > 0).then_some(())) },
    )
    .await
    .unwrap();
    let asked = tokio::time::Instant::now();
    nodes[0].stop().await.unwrap();
    let took = asked.elapsed();
    // A 30 s request deadline: a stop that waited for it would take 30 s.
    assert!(
        took < Duration::from_secs(10),
        "stopped {took:?} after SIGTERM:\n{}",
        nodes[0].log()
    );
}
