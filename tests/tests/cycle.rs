//! baton's whole cycle against a real control plane, with the real `baton` binary running as
//! one process per kwok node: flag → Lease → cordon → drain → reboot → verify → uncordon →
//! pass on.

use std::collections::BTreeMap;
use std::time::Duration;

use baton_tests::agent::{Method, SimNode};
use baton_tests::observe::Recorder;
use baton_tests::rollout::{Driven, drive};
use baton_tests::scenario::*;
use baton_tests::{fixtures, shared, wait_for};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Node};
use kube::Client;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

#[tokio::test]
async fn one_flagged_node_goes_through_the_whole_cycle() {
    let cluster = shared();
    let (client, names) = setup(cluster, "cycle-one", 1).await;
    // A Deployment pod (evicted) and a DaemonSet pod (left alone) on the node.
    fixtures::create_nginx(&client, "cycle-one", 1, "cycle-one", None)
        .await
        .unwrap();
    Api::<DaemonSet>::namespaced(client.clone(), "cycle-one")
        .create(
            &PostParams::default(),
            &fixtures::daemonset("ds", "cycle-one").unwrap(),
        )
        .await
        .unwrap();
    let ds_before = fixtures::wait_ready_pods(&client, "cycle-one", "app=ds", 1)
        .await
        .unwrap();
    let nginx_before = fixtures::wait_ready_pods(&client, "cycle-one", "app=nginx", 1)
        .await
        .unwrap();
    let mut nodes = sims(cluster, "cycle-one", &names, Method::Command, &[]);
    nodes[0].flag().unwrap();
    nodes[0].start().unwrap();
    nodes[0].wait_ready(SETTLE).await.unwrap();

    roll(cluster, &client, "cycle-one", &names, &mut nodes).await;
    let reboots = nodes[0]
        .wait_metric("baton_reboots_total", SETTLE, |v| v >= 1.0)
        .await
        .unwrap();
    assert_eq!(reboots, 1.0);
    assert_eq!(nodes[0].boots(), 1);
    let ds_after = fixtures::wait_ready_pods(&client, "cycle-one", "app=ds", 1)
        .await
        .unwrap();
    let nginx_after = fixtures::wait_ready_pods(&client, "cycle-one", "app=nginx", 1)
        .await
        .unwrap();
    assert_eq!(
        ds_after[0].metadata.uid, ds_before[0].metadata.uid,
        "DaemonSet pod not evicted"
    );
    assert_ne!(
        nginx_after[0].metadata.uid, nginx_before[0].metadata.uid,
        "nginx pod evicted"
    );
    let reasons: Vec<String> = fixtures::node_events(&client, &names[0])
        .await
        .unwrap()
        .into_iter()
        .filter_map(|e| e.reason)
        .collect();
    for r in [
        "MaintenanceStarted",
        "Drained",
        "Rebooting",
        "RebootCompleted",
    ] {
        assert!(
            reasons.iter().any(|x| x == r),
            "no {r} event in {reasons:?}"
        );
    }
}

#[tokio::test]
async fn an_agent_restarted_during_the_health_gate_keeps_the_baton_until_it_passes() {
    let cluster = shared();
    let ns = "cycle-gate-restart";
    let (client, names) = setup(cluster, ns, 1).await;
    let mut nodes = sims(cluster, ns, &names, Method::Command, &["--settle-time=30s"]);
    flag_and_start(&mut nodes);
    nodes[0]
        .wait_triggered(ROLLOUT)
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", nodes[0].log()));
    nodes[0].reboot(cluster, &client).await.unwrap();
    // Rebooted and uncordoned (no phase any more), still holding the baton while it settles.
    let nodes_api: Api<Node> = Api::all(client.clone());
    wait_for("the reboot to be finished", SETTLE, || async {
        Ok(phase(&nodes_api.get(&names[0]).await?)
            .is_none()
            .then_some(()))
    })
    .await
    .unwrap();
    assert_eq!(
        lease_holder(&client, ns).await.as_deref(),
        Some(names[0].as_str())
    );
    // A restart now (say, a DaemonSet update) must not pass the baton on early.
    nodes[0].stop().await.unwrap();
    assert_eq!(
        lease_holder(&client, ns).await.as_deref(),
        Some(names[0].as_str()),
        "kept through the restart:\n{}",
        nodes[0].log()
    );
    assert!(nodes[0].log().contains("keeping the lease"));
    nodes[0].start().unwrap();
    wait_clean(&client, ns, &names, &[]).await;
}

#[tokio::test]
async fn three_flagged_nodes_reboot_once_each_one_at_a_time() {
    let cluster = shared();
    let ns = "cycle-three";
    let (client, names) = setup(cluster, ns, 3).await;
    let rec = Recorder::new();
    rec.nodes(&client, &format!("baton.test/group={ns}"));
    let mut nodes = sims(cluster, ns, &names, Method::Command, &[]);
    flag_and_start(&mut nodes);
    let driven = roll(cluster, &client, ns, &names, &mut nodes).await;
    let mut order = driven.order.clone();
    order.sort();
    assert_eq!(order, names, "each node reboots exactly once");
    for n in &nodes {
        assert_eq!(n.boots(), 1, "{}", n.name);
    }
    rec.stop();
    rec.with(|r| {
        assert_eq!(
            r.max_cordoned_by_baton, 1,
            "at most one node cordoned by baton at once"
        );
        assert_eq!(r.max_in_cycle, 1, "at most one node in a cycle at once");
    });
}

#[tokio::test]
async fn seed_scenario_keeps_the_service_up() {
    let cluster = shared();
    let ns = "cycle-seed";
    let (client, names) = setup(cluster, ns, 3).await;
    fixtures::create_nginx(&client, ns, 2, ns, Some(json!({"minAvailable": 1})))
        .await
        .unwrap();
    let rec = Recorder::new();
    rec.nodes(&client, &format!("baton.test/group={ns}"));
    rec.endpoints(&client, ns, "nginx");
    fixtures::wait_ready_endpoints(&client, ns, "nginx", 2)
        .await
        .unwrap();

    let mut nodes = sims(cluster, ns, &names, Method::Command, &[]);
    flag_and_start(&mut nodes);
    roll(cluster, &client, ns, &names, &mut nodes).await;
    fixtures::wait_ready_pods(&client, ns, "app=nginx", 2)
        .await
        .unwrap();
    rec.stop();
    rec.with(|r| {
        assert!(
            r.endpoint_changes > 1,
            "the rollout moved pods: {} changes",
            r.endpoint_changes
        );
        assert!(
            r.min_ready_endpoints.is_some_and(|m| m >= 1),
            "the Service lost all ready endpoints: min {:?}",
            r.min_ready_endpoints
        );
        assert_eq!(r.max_cordoned_by_baton, 1);
    });
}

#[tokio::test]
async fn killed_agents_resume_to_a_correct_finish() {
    let cluster = shared();
    let ns = "cycle-kill";
    // Node 2 was cordoned by hand before the cycle: it must stay cordoned. A PDB that forbids
    // any eviction keeps node 1's drain going until it is relaxed.
    let (client, names, mut nodes) = stuck_draining(cluster, ns, &[]).await;
    let nodes_api: Api<Node> = Api::all(client.clone());
    // SIGKILL mid-drain, then let the drain succeed and restart.
    nodes[0].kill();
    fixtures::patch_pdb(&client, ns, "nginx", json!({"maxUnavailable": 1}))
        .await
        .unwrap();
    nodes[0].start().unwrap();
    // SIGKILL after the reboot was triggered but before the host went down: the restarted agent
    // finds the trigger recorded and waits for the host, neither triggering again at once nor
    // undoing anything (a trigger may be under way).
    nodes[0].wait_triggered(ROLLOUT).await.unwrap();
    nodes[0].kill();
    std::fs::remove_file(nodes[0].dir().join("reboot-triggered")).unwrap();
    nodes[0].start().unwrap();
    wait_for(
        "the restarted agent to wait for the host",
        SETTLE,
        || async {
            Ok(nodes[0]
                .log()
                .contains("reboot triggered; waiting for the host to go down")
                .then_some(()))
        },
    )
    .await
    .unwrap();
    assert_eq!(nodes[0].triggers(), 0, "no second trigger");
    let node1 = nodes_api.get(&names[0]).await.unwrap();
    assert_eq!(node1.spec.and_then(|s| s.unschedulable), Some(true));
    assert_eq!(
        lease_holder(&client, ns).await.as_deref(),
        Some(names[0].as_str())
    );
    let holder = nodes[0].reboot(cluster, &client).await.unwrap();
    assert_eq!(holder.as_deref(), Some(names[0].as_str()));
    wait_clean(&client, ns, &names[..1], &[]).await;
    assert_eq!(nodes[0].boots(), 1);

    // Node 2, cordoned by hand: full cycle, and it stays cordoned.
    nodes[1].flag().unwrap();
    nodes[1].start().unwrap();
    drive(cluster, &client, &mut nodes[1..], 1, ROLLOUT)
        .await
        .unwrap();
    wait_clean(&client, ns, &names, &[names[1].as_str()]).await;
    let node2 = nodes_api.get(&names[1]).await.unwrap();
    assert_eq!(node2.spec.and_then(|s| s.unschedulable), Some(true));
}

#[tokio::test]
async fn a_pdb_that_never_allows_eviction_times_the_drain_out_without_a_reboot() {
    let cluster = shared();
    let ns = "cycle-pdb";
    let (client, names) = setup(cluster, ns, 1).await;
    fixtures::create_nginx(&client, ns, 1, ns, Some(json!({"maxUnavailable": 0})))
        .await
        .unwrap();
    let mut nodes = sims(
        cluster,
        ns,
        &names,
        Method::Command,
        &[
            "--drain-timeout=4s",
            "--drain-failure-backoff=1h",
            "--pdb-preflight=false",
        ],
    );
    nodes[0].flag().unwrap();
    nodes[0].start().unwrap();
    let nodes_api: Api<Node> = Api::all(client.clone());
    let warning = wait_for("a DrainFailed warning event", SETTLE, || async {
        Ok(fixtures::node_events(&client, &names[0])
            .await?
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("DrainFailed")))
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", nodes[0].log()));
    assert_eq!(warning.type_.as_deref(), Some("Warning"));
    wait_for("the lease to be released", SETTLE, || async {
        Ok(lease_holder(&client, ns).await.is_none().then_some(()))
    })
    .await
    .unwrap();
    let node = nodes_api.get(&names[0]).await.unwrap();
    assert_ne!(
        node.spec.as_ref().and_then(|s| s.unschedulable),
        Some(true),
        "uncordoned"
    );
    let ann = baton_annotations(&node);
    assert!(ann.contains_key("baton.dev/backoff-until"), "{ann:?}");
    assert!(!ann.contains_key("baton.dev/phase"), "{ann:?}");
    assert_eq!(nodes[0].triggers(), 0, "no reboot after a failed drain");
    assert_eq!(
        nodes[0]
            .metric("baton_reboot_triggers_total")
            .await
            .unwrap(),
        Some(0.0)
    );
    assert_eq!(
        nodes[0]
            .metric("baton_cycles_aborted_total{reason=\"drain_failed\"}")
            .await
            .unwrap(),
        Some(1.0)
    );
}

#[tokio::test]
async fn a_sentinel_command_that_cannot_check_never_reboots() {
    let cluster = shared();
    let ns = "cycle-sentinel";
    let (client, names) = setup(cluster, ns, 2).await;
    let mut nodes = vec![
        SimNode::new(
            cluster,
            &names[0],
            ns,
            Method::Command,
            &["--reboot-sentinel-command=/nonexistent/check-reboot"],
        )
        .unwrap(),
        SimNode::new(
            cluster,
            &names[1],
            ns,
            Method::Command,
            &["--reboot-sentinel-command=/bin/sh -c 'exit 2'"],
        )
        .unwrap(),
    ];
    flag_and_start(&mut nodes);
    for n in &nodes {
        n.wait_ready(SETTLE).await.unwrap();
        // Two failed flag checks, counted.
        n.wait_metric(
            "baton_flag_check_failures_total{source=\"command\"}",
            SETTLE,
            |v| v >= 2.0,
        )
        .await
        .unwrap();
        assert_eq!(n.http_get("/healthz").await.unwrap().0, 200);
        assert_eq!(n.metric("baton_reboot_required").await.unwrap(), Some(0.0));
        assert_eq!(n.triggers(), 0);
    }
    assert_eq!(
        lease_holder(&client, ns).await,
        None,
        "nobody took the lease"
    );
    let nodes_api: Api<Node> = Api::all(client.clone());
    for n in &names {
        assert!(baton_annotations(&nodes_api.get(n).await.unwrap()).is_empty());
    }
}

#[tokio::test]
async fn the_signal_method_sends_39_to_the_host_init() {
    let cluster = shared();
    let ns = "cycle-signal";
    let (client, names) = setup(cluster, ns, 1).await;
    let mut nodes = sims(cluster, ns, &names, Method::Signal, &[]);
    nodes[0].flag().unwrap();
    nodes[0].start().unwrap();
    roll(cluster, &client, ns, &names, &mut nodes).await;
}

#[tokio::test]
async fn a_holder_that_stopped_renewing_loses_the_lease_after_its_ttl() {
    let cluster = shared();
    let ns = "cycle-ttl";
    let (client, names) = setup(cluster, ns, 2).await;
    // A holder whose agent stopped (its Node is still there and Ready): it will never renew or
    // release, and only the TTL frees the lease.
    let ghost = names[1].clone();
    let names = names[..1].to_vec();
    // Its renewTime is an hour ahead (its clock runs fast): expiry is judged by how long the
    // record stays unchanged on the agent's own clock, so 6 s, not an hour.
    let written = tokio::time::Instant::now();
    set_lease_renewed(&client, ns, "baton", &ghost, 6, Duration::from_secs(3600)).await;
    let rec = Recorder::new();
    rec.lease(&client, ns, "baton");
    let mut nodes = sims(cluster, ns, &names, Method::Command, &[]);
    flag_and_start(&mut nodes);
    roll(cluster, &client, ns, &names, &mut nodes).await;
    rec.stop();
    // Not before its 6 s: the agent saw the record no earlier than the test wrote it.
    let taken = rec
        .with(|r| {
            r.log
                .iter()
                .find(|s| s.what == baton_tests::observe::Change::Holder(Some(names[0].clone())))
                .map(|s| s.at)
        })
        .expect("taken over");
    let after = taken.duration_since(written);
    assert!(
        after >= Duration::from_secs(6),
        "taken over {after:?} after it was written"
    );
    let holders: Vec<_> = rec.with(|r| {
        r.log
            .iter()
            .filter_map(|s| match &s.what {
                baton_tests::observe::Change::Holder(h) => Some(h.clone()),
                _ => None,
            })
            .collect()
    });
    assert_eq!(
        holders,
        [Some(ghost.clone()), Some(names[0].clone()), None],
        "taken over from the silent holder, then released"
    );
}

#[tokio::test]
async fn a_node_whose_lease_was_taken_while_it_rebooted_still_finishes() {
    let cluster = shared();
    let ns = "cycle-taken";
    let (client, names) = setup(cluster, ns, 1).await;
    let mut nodes = sims(cluster, ns, &names, Method::Command, &[]);
    flag_and_start(&mut nodes);
    nodes[0].wait_triggered(ROLLOUT).await.unwrap();
    // While the host is down, another node takes over the (expired) lease.
    set_lease(&client, ns, "intruder", 1800).await;
    nodes[0].reboot(cluster, &client).await.unwrap();
    let nodes_api: Api<Node> = Api::all(client.clone());
    wait_for("the node to finish without the lease", SETTLE, || async {
        let node = nodes_api.get(&names[0]).await?;
        let unsched = node
            .spec
            .as_ref()
            .and_then(|s| s.unschedulable)
            .unwrap_or(false);
        Ok((!unsched && baton_annotations(&node).is_empty()).then_some(()))
    })
    .await
    .unwrap();
    assert_eq!(
        lease_holder(&client, ns).await.as_deref(),
        Some("intruder"),
        "not released: not ours"
    );
    let reboots = nodes[0]
        .wait_metric("baton_reboots_total", SETTLE, |v| v >= 1.0)
        .await
        .unwrap();
    assert_eq!(reboots, 1.0);
}

#[tokio::test]
async fn a_dry_run_drains_and_uncordons_without_rebooting_once_per_boot() {
    let cluster = shared();
    let ns = "cycle-dry";
    let (client, names) = setup(cluster, ns, 1).await;
    let mut nodes = sims(
        cluster,
        ns,
        &names,
        Method::Command,
        &["--reboot-method=none"],
    );
    flag_and_start(&mut nodes);
    let event = wait_for("a DryRun event", SETTLE, || async {
        Ok(fixtures::node_events(&client, &names[0])
            .await?
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("DryRun")))
    })
    .await
    .unwrap();
    assert_eq!(event.type_.as_deref(), Some("Normal"));
    // It says it will not repeat the dry run during this boot, and holds nothing meanwhile.
    wait_for("the agent to settle after the dry run", SETTLE, || async {
        Ok(nodes[0]
            .log()
            .contains("dry run already done for this boot")
            .then_some(()))
    })
    .await
    .unwrap();
    let node = Api::<Node>::all(client.clone())
        .get(&names[0])
        .await
        .unwrap();
    let ann = baton_annotations(&node);
    assert_eq!(
        ann.keys().map(String::as_str).collect::<Vec<_>>(),
        ["baton.dev/dry-run-boot-id"],
        "{ann:?}"
    );
    assert_ne!(node.spec.and_then(|s| s.unschedulable), Some(true));
    assert_eq!(lease_holder(&client, ns).await, None);
    assert_eq!(nodes[0].triggers(), 0);
    assert_eq!(
        nodes[0]
            .metric("baton_cycles_aborted_total{reason=\"dry_run\"}")
            .await
            .unwrap(),
        Some(1.0)
    );
}

#[tokio::test]
async fn deleting_the_holders_node_frees_the_lock_long_before_its_ttl() {
    let cluster = shared();
    let ns = "cycle-deleted";
    // A 60 s TTL: renewals every 20 s.
    let (client, names, mut nodes) = stuck_draining(cluster, ns, &["--lock-ttl=60s"]).await;
    let nodes_api: Api<Node> = Api::all(client.clone());
    flag_and_start(&mut nodes[1..]);
    nodes[1].wait_ready(SETTLE).await.unwrap();
    assert_eq!(
        lease_holder(&client, ns).await.as_deref(),
        Some(names[0].as_str())
    );

    // Without its owner reference (as written by an older agent), the garbage collector cannot
    // delete the Lease with the Node: only watching the holder's Node frees it, once its
    // renewal is overdue (20 s and 5 s after the last one at most).
    Api::<Lease>::namespaced(client.clone(), ns)
        .patch(
            "baton",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"ownerReferences": null}})),
        )
        .await
        .unwrap();
    // The holder's node disappears for good (its agent pod with it).
    nodes[0].kill();
    nodes_api
        .delete(&names[0], &Default::default())
        .await
        .unwrap();
    let deleted = tokio::time::Instant::now();
    // The lease TTL here is 60 s (40 s at least from here): node 2 must not wait for it.
    wait_for(
        "node 2 to start its cycle",
        Duration::from_secs(35),
        || async {
            Ok(
                (phase(&nodes_api.get(&names[1]).await?).as_deref() == Some("draining"))
                    .then_some(()),
            )
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", nodes[1].log()));
    println!(
        "lock freed and taken {:?} after the holder's node was deleted",
        deleted.elapsed()
    );
    drive(cluster, &client, &mut nodes[1..], 1, ROLLOUT)
        .await
        .unwrap();
    wait_clean(&client, ns, &names[1..], &[names[1].as_str()]).await;
}

/// From `holder`'s Node going NotReady to `taker` holding its Lease, both as one recorder's
/// watches saw them; asserts it is not before the 3 s limit (less the jitter between two watches,
/// which a loaded machine can stretch to a few hundred milliseconds).
fn not_ready_to_takeover(rec: &Recorder, holder: &str, taker: &str) -> Duration {
    use baton_tests::observe::Change;
    let at = |what: Change| {
        rec.with(|r| r.log.iter().find(|s| s.what == what).map(|s| s.at))
            .unwrap_or_else(|| panic!("not seen: {what:?}"))
    };
    let down = at(Change::Ready(holder.to_owned(), false));
    let taken = at(Change::Holder(Some(taker.to_owned())));
    let took = taken.duration_since(down);
    assert!(
        took >= Duration::from_millis(2500),
        "taken over {took:?} after the holder went NotReady, before the 3 s limit"
    );
    took
}

#[tokio::test]
async fn a_holder_not_ready_for_too_long_without_renewing_loses_the_lock() {
    let cluster = shared();
    let ns = "cycle-notready";
    // A 60 s TTL (renewals every 20 s): the holder's Node is watched once a renewal is overdue
    // (25 s after the last at most), long before the TTL passes.
    let (client, names, mut nodes) = stuck_draining(
        cluster,
        ns,
        &["--lock-holder-not-ready-timeout=3s", "--lock-ttl=60s"],
    )
    .await;
    flag_and_start(&mut nodes[1..]);
    nodes[1].wait_ready(SETTLE).await.unwrap();
    let rec = Recorder::new();
    rec.nodes(&client, &format!("baton.test/group={ns}"));
    rec.lease(&client, ns, "baton");
    // The holder dies: its node goes NotReady and nothing renews the lease any more.
    nodes[0].kill();
    cluster.node_down(&client, &names[0]).await.unwrap();
    wait_for("node 2 to take over", Duration::from_secs(35), || async {
        Ok((lease_holder(&client, ns).await.as_deref() == Some(names[1].as_str())).then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", nodes[1].log()));
    rec.stop();
    let took = not_ready_to_takeover(&rec, &names[0], &names[1]);
    println!("lock taken over {took:?} after the holder's node went NotReady");
}

#[tokio::test]
async fn any_slot_whose_holder_stays_not_ready_is_taken_over_not_only_the_first() {
    let cluster = shared();
    let ns = "cycle-slots-stuck";
    let (client, names) = setup(cluster, ns, 3).await;
    // Both slots held for an hour: the first by a healthy node, the second by one that dies.
    set_named_lease(&client, ns, "baton", &names[0], 3600).await;
    set_named_lease(&client, ns, "baton-1", &names[1], 3600).await;
    let mut nodes = sims(
        cluster,
        ns,
        &names[2..],
        Method::Command,
        &[
            "--concurrency=2",
            "--lock-holder-not-ready-timeout=3s",
            "--lock-ttl=60s",
        ],
    );
    flag_and_start(&mut nodes);
    nodes[0].wait_ready(SETTLE).await.unwrap();
    let rec = Recorder::new();
    rec.nodes(&client, &format!("baton.test/group={ns}"));
    rec.lease(&client, ns, "baton-1");
    cluster.node_down(&client, &names[1]).await.unwrap();
    let leases: Api<Lease> = Api::namespaced(client.clone(), ns);
    let holder = |name: &'static str| {
        let leases = leases.clone();
        async move {
            leases
                .get(name)
                .await
                .map(|l| l.spec.and_then(|s| s.holder_identity).unwrap_or_default())
        }
    };
    wait_for("node 3 to take the second slot over", SETTLE, || async {
        Ok((holder("baton-1").await? == names[2]).then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", nodes[0].log()));
    rec.stop();
    let took = not_ready_to_takeover(&rec, &names[1], &names[2]);
    println!("second slot taken over {took:?} after its holder's node went NotReady");
    assert_eq!(
        holder("baton").await.unwrap(),
        names[0],
        "a Ready holder keeps its slot"
    );
}

#[tokio::test]
async fn outside_the_window_or_paused_a_flagged_node_waits_and_says_why() {
    let cluster = shared();
    let ns = "cycle-gate";
    let (client, names) = setup(cluster, ns, 1).await;
    let nodes_api: Api<Node> = Api::all(client.clone());
    // A one-minute window six hours from now (UTC): closed for the whole test.
    let start =
        jiff::Timestamp::now().to_zoned(jiff::tz::TimeZone::UTC) + jiff::Span::new().hours(6);
    let end = start.clone() + jiff::Span::new().minutes(1);
    let (start, end) = (
        start.strftime("%H:%M").to_string(),
        end.strftime("%H:%M").to_string(),
    );
    let closed = [format!("--start-time={start}"), format!("--end-time={end}")];
    let mut nodes = sims(
        cluster,
        ns,
        &names,
        Method::Command,
        &[&closed[0], &closed[1]],
    );
    flag_and_start(&mut nodes);
    let why = wait_waiting(&client, &names[0], "outside the reboot window", None).await;
    assert!(why.contains("hours"), "{why}");
    assert_eq!(nodes[0].metric("baton_in_window").await.unwrap(), Some(0.0));
    assert_eq!(
        lease_holder(&client, ns).await,
        None,
        "no lease outside the window"
    );

    // The window opens, but the node is paused by hand, then the whole cluster is.
    let annotate = |v: Option<&str>| json!({"metadata": {"annotations": {"baton.dev/pause": v}}});
    nodes_api
        .patch(
            &names[0],
            &PatchParams::default(),
            &Patch::Merge(annotate(Some("kernel freeze"))),
        )
        .await
        .unwrap();
    nodes[0].stop().await.unwrap();
    nodes[0].set_extra(&[]);
    nodes[0].start().unwrap();
    nodes[0].wait_ready(SETTLE).await.unwrap();
    wait_waiting(&client, &names[0], "kernel freeze", None).await;
    nodes[0]
        .wait_metric("baton_paused{scope=\"node\"}", SETTLE, |v| v == 1.0)
        .await
        .unwrap();
    // The cluster-wide switch: a ConfigMap in the Lease's namespace, paused while it exists.
    let switches: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let switch: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "baton-pause"},
        "data": {"reason": "change freeze"},
    }))
    .unwrap();
    switches
        .create(&PostParams::default(), &switch)
        .await
        .unwrap();
    nodes_api
        .patch(
            &names[0],
            &PatchParams::default(),
            &Patch::Merge(annotate(None)),
        )
        .await
        .unwrap();
    wait_waiting(&client, &names[0], "change freeze", None).await;
    nodes[0]
        .wait_metric("baton_paused{scope=\"cluster\"}", SETTLE, |v| v == 1.0)
        .await
        .unwrap();
    assert_eq!(lease_holder(&client, ns).await, None);

    // Lifting the pause lets the cycle run; the wait reason is cleared.
    switches
        .delete("baton-pause", &Default::default())
        .await
        .unwrap();
    roll(cluster, &client, ns, &names, &mut nodes).await;
}

#[tokio::test]
async fn a_budget_that_allows_no_disruption_keeps_the_node_uncordoned_until_it_does() {
    let cluster = shared();
    let ns = "cycle-preflight";
    let (client, names) = setup(cluster, ns, 1).await;
    fixtures::create_nginx(&client, ns, 1, ns, Some(json!({"maxUnavailable": 0})))
        .await
        .unwrap();
    let rec = Recorder::new();
    rec.nodes(&client, &format!("baton.test/group={ns}"));
    let mut nodes = sims(cluster, ns, &names, Method::Command, &[]);
    flag_and_start(&mut nodes);
    // The first reason the node gives is the budget.
    let why = wait_waiting(&client, &names[0], "", None).await;
    assert!(
        why.contains(&format!("{ns}/nginx")) && why.contains("allows no disruption"),
        "{why}"
    );
    // It checks again every --check-interval (1 s here), read-only: in three of them it never
    // takes the Lease (it used to take it and give it back each time) and never cordons.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let lease = Api::<Lease>::namespaced(client.clone(), ns)
        .get_opt("baton")
        .await
        .unwrap();
    assert!(
        lease.is_none(),
        "the Lease was taken while the budget allowed nothing: {lease:?}"
    );
    assert_eq!(
        nodes[0]
            .metric("baton_blocked{blocker=\"pdb\"}")
            .await
            .unwrap(),
        Some(1.0)
    );
    rec.with(|r| assert_eq!(r.max_in_cycle, 0, "never cordoned or drained"));
    fixtures::patch_pdb(&client, ns, "nginx", json!({"maxUnavailable": 1}))
        .await
        .unwrap();
    roll(cluster, &client, ns, &names, &mut nodes).await;
    rec.stop();
}

#[tokio::test]
async fn with_the_health_gate_the_next_node_starts_only_once_the_service_is_whole_again() {
    use baton_tests::observe::Change;
    let cluster = shared();
    let ns = "cycle-gated";
    let (client, names) = setup(cluster, ns, 3).await;
    fixtures::create_nginx(&client, ns, 2, ns, Some(json!({"minAvailable": 1})))
        .await
        .unwrap();
    let rec = Recorder::new();
    rec.nodes(&client, &format!("baton.test/group={ns}"));
    rec.endpoints(&client, ns, "nginx");
    fixtures::wait_ready_endpoints(&client, ns, "nginx", 2)
        .await
        .unwrap();
    let mut nodes = sims(
        cluster,
        ns,
        &names,
        Method::Command,
        &["--gate-pdbs", "--settle-time=2s"],
    );
    flag_and_start(&mut nodes);
    roll(cluster, &client, ns, &names, &mut nodes).await;
    rec.stop();
    rec.with(|r| {
        let mut endpoints = 0;
        let mut finished_at = None;
        let mut starts = 0;
        for s in &r.log {
            match &s.what {
                Change::Endpoints(n) => endpoints = *n,
                Change::Phase(_, None) => finished_at = Some(s.at),
                Change::Phase(node, Some(p)) if p == "draining" => {
                    starts += 1;
                    if let Some(done) = finished_at {
                        assert_eq!(
                            endpoints, 2,
                            "{node} started before the Service was whole again"
                        );
                        // Both seen by the same watch; the 2 s count from a time written to the
                        // millisecond with the first event, so only delivery jitter is slack.
                        assert!(
                            s.at.duration_since(done) >= Duration::from_millis(1500),
                            "{node} started before the settle time"
                        );
                    }
                }
                _ => {}
            }
        }
        assert_eq!(starts, 3);
    });
}

#[tokio::test]
async fn a_blocking_pod_on_the_node_holds_the_cycle_back_until_it_is_gone() {
    let cluster = shared();
    let ns = "cycle-blocker";
    let (client, names) = setup(cluster, ns, 1).await;
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), ns);
    let backup: k8s_openapi::api::core::v1::Pod = serde_json::from_value(json!({
        "metadata": {"name": "backup", "labels": {"baton.test/blocker": "yes"}},
        "spec": {"nodeName": names[0], "containers": [{"name": "c", "image": "busybox:1.36"}]},
    }))
    .unwrap();
    pods.create(&PostParams::default(), &backup).await.unwrap();
    let mut nodes = sims(
        cluster,
        ns,
        &names,
        Method::Command,
        &["--blocking-pod-selector=baton.test/blocker=yes"],
    );
    flag_and_start(&mut nodes);
    // The first reason the node gives is the pod.
    let why = wait_waiting(&client, &names[0], "", None).await;
    assert!(why.contains(&format!("{ns}/backup")), "{why}");
    assert_eq!(
        lease_holder(&client, ns).await,
        None,
        "no lease while blocked"
    );
    pods.delete("backup", &Default::default()).await.unwrap();
    roll(cluster, &client, ns, &names, &mut nodes).await;
}

#[tokio::test]
async fn a_flag_that_survives_reboots_stops_the_loop_after_the_cap() {
    let cluster = shared();
    let ns = "cycle-loop";
    let (client, names) = setup(cluster, ns, 1).await;
    let mut nodes = sims(
        cluster,
        ns,
        &names,
        Method::Command,
        &["--max-reboot-attempts=2"],
    );
    flag_and_start(&mut nodes);
    // The reboot does not fix what set the flag: it is set again after every boot.
    for boot in 1..=2 {
        drive(cluster, &client, &mut nodes, boot, ROLLOUT)
            .await
            .unwrap();
        nodes[0].flag().unwrap();
    }
    let event = wait_for("a RebootLoopStopped event", SETTLE, || async {
        Ok(fixtures::node_events(&client, &names[0])
            .await?
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("RebootLoopStopped")))
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", nodes[0].log()));
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    assert_eq!(
        nodes[0].metric("baton_reboot_loop_stopped").await.unwrap(),
        Some(1.0)
    );
    assert_eq!(nodes[0].boots(), 2);
    assert_eq!(nodes[0].triggers(), 0, "no third reboot");
    assert_eq!(lease_holder(&client, ns).await, None);
}

#[tokio::test]
async fn with_concurrency_two_two_nodes_reboot_at_once_and_never_three() {
    let cluster = shared();
    let ns = "cycle-two";
    let (client, names) = setup(cluster, ns, 4).await;
    let rec = Recorder::new();
    rec.nodes(&client, &format!("baton.test/group={ns}"));
    let mut nodes = sims(cluster, ns, &names, Method::Command, &["--concurrency=2"]);
    flag_and_start(&mut nodes);
    roll(cluster, &client, ns, &names, &mut nodes).await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), ns);
    assert!(
        leases.get_opt("baton-1").await.unwrap().is_some(),
        "a second slot was used"
    );
    rec.stop();
    // Whether two cycles overlap depends on timing; more than two never may.
    rec.with(|r| {
        assert!(
            r.max_in_cycle <= 2,
            "never more than two at once: {}",
            r.max_in_cycle
        )
    });
}

/// The most nodes of one kind in a cycle at the same time, over the recorded phase changes;
/// `kind` sorts nodes into kinds (`None`: not counted).
fn max_at_once(
    r: &baton_tests::observe::Record,
    kind: impl Fn(&str) -> Option<&'static str>,
) -> usize {
    use baton_tests::observe::Change;
    let mut busy: BTreeMap<&str, std::collections::BTreeSet<String>> = BTreeMap::new();
    let mut max = 0;
    for s in &r.log {
        if let Change::Phase(node, phase) = &s.what
            && let Some(k) = kind(node)
        {
            let set = busy.entry(k).or_default();
            if phase.is_some() {
                set.insert(node.clone());
            } else {
                set.remove(node);
            }
            max = max.max(set.len());
        }
    }
    max
}

/// Creates namespace `ns` and one node per (name, zone, control-plane?), flags them all and
/// rolls them with `--group-by-label` on the zone; returns the recorded phase changes.
async fn roll_zoned(
    ns: &str,
    spec: &[(String, &str, bool)],
) -> (Client, Recorder, Driven, Vec<SimNode>) {
    let cluster = shared();
    let client = cluster.client().await.unwrap();
    cluster.namespace(&client, ns).await.unwrap();
    for (name, zone, cp) in spec {
        let mut labels = vec![
            ("baton.test/group", ns),
            ("topology.kubernetes.io/zone", *zone),
        ];
        if *cp {
            labels.push(("node-role.kubernetes.io/control-plane", ""));
        }
        cluster.add_nodes(&client, &[name], &labels).await.unwrap();
    }
    let names: Vec<String> = spec.iter().map(|(n, _, _)| n.clone()).collect();
    let rec = Recorder::new();
    rec.nodes(&client, &format!("baton.test/group={ns}"));
    let mut nodes = sims(
        cluster,
        ns,
        &names,
        Method::Command,
        &["--group-by-label=topology.kubernetes.io/zone"],
    );
    flag_and_start(&mut nodes);
    let driven = roll(cluster, &client, ns, &names, &mut nodes).await;
    rec.stop();
    (client, rec, driven, nodes)
}

#[tokio::test]
async fn grouped_by_zone_each_zone_reboots_one_node_at_a_time() {
    let ns = "cycle-zones";
    let zone_of = |n: &str| {
        if n.ends_with('1') || n.ends_with('2') {
            "zone-a"
        } else {
            "zone-b"
        }
    };
    let spec: Vec<(String, &str, bool)> = (1..=4)
        .map(|i| format!("{ns}-{i}"))
        .map(|n| {
            let zone = zone_of(&n);
            (n, zone, false)
        })
        .collect();
    let (client, rec, _, _) = roll_zoned(ns, &spec).await;
    rec.with(|r| {
        assert_eq!(
            max_at_once(r, |n| Some(zone_of(n))),
            1,
            "one node at a time per zone"
        );
        let all = max_at_once(r, |_| Some("all"));
        assert!(all <= 2, "at most one per zone: {all}");
    });
    // Each zone had a Lease of its own.
    let leases: Vec<String> = Api::<Lease>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|l| l.metadata.name)
        .collect();
    assert_eq!(
        leases
            .iter()
            .filter(|n| n.starts_with("baton-zone-a-"))
            .count(),
        1,
        "{leases:?}"
    );
    assert_eq!(
        leases
            .iter()
            .filter(|n| n.starts_with("baton-zone-b-"))
            .count(),
        1,
        "{leases:?}"
    );
}

#[test]
fn bad_flags_exit_non_zero_with_one_clear_line() {
    let bin = baton_tests::agent::baton_bin().unwrap();
    for (args, env, needle) in [
        (
            vec!["agent", "--node-name=n1", "--reboot-method=kexec"],
            None,
            "--reboot-method",
        ),
        (
            vec!["agent", "--node-name=n1", "--lock-ttl=-10m"],
            None,
            "--lock-ttl",
        ),
        (vec!["agent"], None, "--node-name"),
        (
            vec!["agent", "--node-name=n1"],
            Some(("BATON_LOCK_TTL", "soon")),
            "--lock-ttl",
        ),
        // A URL is a secret: the error names it by position, never repeats it.
        (
            vec!["agent", "--node-name=n1"],
            Some((
                "BATON_NOTIFY_URL",
                "https://hooks.example.com/SECRET-1 ftp://host/SECRET-2",
            )),
            "--notify-url (URL 2): unsupported scheme",
        ),
        (
            vec![
                "agent",
                "--node-name=n1",
                "--notify-url=slack://xoxb:SECRET-3@C1",
            ],
            None,
            "--notify-url (URL 1): Slack bot tokens are not supported",
        ),
        (
            vec!["agent", "--node-name=n1"],
            Some(("BATON_PRE_REBOOT_NODE_LABELS", "example.com/maintenance")),
            "--pre-reboot-node-labels",
        ),
        (
            vec![
                "agent",
                "--node-name=n1",
                "--message-template-failed={host} failed",
            ],
            None,
            "--message-template-failed",
        ),
    ] {
        let mut cmd = std::process::Command::new(&bin);
        cmd.args(&args).env_remove("BATON_NODE_NAME");
        if let Some((k, v)) = env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
        assert!(!stderr.contains("SECRET"), "{args:?}: {stderr}");
    }
}

/// kured's `--log-format=json`: every line the agent logs is one JSON object with the time, the
/// level, the message and its structured fields at the top level — a notification URL among
/// them only as its scheme and host.
#[tokio::test]
async fn json_logs_are_one_object_per_line_with_their_fields() {
    let cluster = shared();
    let ns = "cycle-json-log";
    let (_client, names) = setup(cluster, ns, 1).await;
    let mut nodes = sims(
        cluster,
        ns,
        &names,
        Method::Command,
        &[
            "--log-format=json",
            "--notify-url=https://hooks.slack.com/services/T1/B2/SECRET-TOKEN",
        ],
    );
    nodes[0].start().unwrap();
    nodes[0].wait_ready(SETTLE).await.unwrap();
    let log = nodes[0].log();
    // The first line is the test harness' own marker.
    let lines: Vec<serde_json::Value> = log
        .lines()
        .skip(1)
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(lines.len() >= 2, "{log}");
    for l in &lines {
        assert!(l["timestamp"].as_str().is_some(), "{l}");
        assert!(
            ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"]
                .contains(&l["level"].as_str().unwrap_or("")),
            "{l}"
        );
        assert!(l["message"].as_str().is_some(), "{l}");
        assert!(
            l["target"].as_str().is_some_and(|t| t.starts_with("baton")),
            "{l}"
        );
    }
    let posting = lines
        .iter()
        .find(|l| l["message"] == "posting notifications to")
        .unwrap_or_else(|| panic!("no notification line in {log}"));
    assert_eq!(posting["urls"], "[\"slack+https://hooks.slack.com/…\"]");
    assert!(!log.contains("SECRET-TOKEN"), "{log}");
}

/// kured's --pre/post-reboot-node-labels, --drain-delay and --reboot-delay: the pre-reboot
/// label is on the node while it drains (set with the cordon), the post-reboot one after the
/// cycle; the drain starts a drain delay after the cordon, the reboot a reboot delay after the
/// drain (the Events' times show both).
#[tokio::test]
async fn kured_node_labels_and_delays_frame_the_cycle() {
    let cluster = shared();
    let ns = "cycle-kured";
    let (client, names) = setup(cluster, ns, 1).await;
    fixtures::create_nginx(&client, ns, 1, ns, None)
        .await
        .unwrap();
    let mut nodes = sims(
        cluster,
        ns,
        &names,
        Method::Command,
        &[
            "--pre-reboot-node-labels=baton.test/maintenance=true,baton.test/window=open",
            "--post-reboot-node-labels=baton.test/maintenance=false",
            "--drain-delay=3s",
            "--reboot-delay=3s",
            "--annotate-nodes",
        ],
    );
    let label = |n: &Node, key: &str| -> Option<String> {
        n.metadata.labels.as_ref().and_then(|l| l.get(key).cloned())
    };
    flag_and_start(&mut nodes);
    let api: Api<Node> = Api::all(client.clone());
    let draining = wait_for("the node draining", SETTLE, || async {
        let n = api.get(&names[0]).await?;
        Ok((phase(&n).as_deref() == Some("draining")).then_some(n))
    })
    .await
    .unwrap();
    assert_eq!(
        label(&draining, "baton.test/maintenance").as_deref(),
        Some("true")
    );
    assert_eq!(
        label(&draining, "baton.test/window").as_deref(),
        Some("open")
    );
    roll(cluster, &client, ns, &names, &mut nodes).await;
    let done = api.get(&names[0]).await.unwrap();
    assert_eq!(
        label(&done, "baton.test/maintenance").as_deref(),
        Some("false")
    );
    assert_eq!(label(&done, "baton.test/window").as_deref(), Some("open"));

    let events = fixtures::node_events(&client, &names[0]).await.unwrap();
    let at = |reason: &str| {
        events
            .iter()
            .find(|e| e.reason.as_deref() == Some(reason))
            .and_then(|e| e.event_time.as_ref())
            .map(|t| t.0)
            .unwrap_or_else(|| panic!("no {reason} Event"))
    };
    // The drain delay counts from the cordon, recorded with it as the phase's start.
    let cordoned: k8s_openapi::jiff::Timestamp =
        draining.metadata.annotations.as_ref().unwrap()["baton.dev/phase-since"]
            .parse()
            .unwrap();
    let drain_delay = at("DrainStarted").duration_since(cordoned).as_secs_f64();
    assert!(drain_delay >= 3.0, "drain delay: {drain_delay}");
    let reboot_delay = at("Rebooting").duration_since(at("Drained")).as_secs_f64();
    assert!(reboot_delay >= 3.0, "reboot delay: {reboot_delay}");
}

/// A cycle that stops without a reboot (here a drain refused by a PodDisruptionBudget until its
/// timeout) still ends with `--post-reboot-node-labels`, as it ends with the uncordon: the node
/// never keeps its "in maintenance" label after baton is done with it.
#[tokio::test]
async fn a_failed_cycle_ends_with_the_post_reboot_labels() {
    let cluster = shared();
    let ns = "cycle-kured-failed";
    let key = "baton.test/maintenance";
    let pre = format!("--pre-reboot-node-labels={key}=true");
    let post = format!("--post-reboot-node-labels={key}=false");
    let (client, names, nodes) =
        stuck_draining(cluster, ns, &["--drain-timeout=8s", &pre, &post]).await;
    let api: Api<Node> = Api::all(client.clone());
    let label = |n: &Node| n.metadata.labels.as_ref().and_then(|l| l.get(key).cloned());
    assert_eq!(
        label(&api.get(&names[0]).await.unwrap()).as_deref(),
        Some("true"),
        "draining"
    );
    let ended = wait_for("the failed cycle to end", SETTLE, || async {
        let n = api.get(&names[0]).await?;
        let cordoned = n
            .spec
            .as_ref()
            .and_then(|s| s.unschedulable)
            .unwrap_or(false);
        Ok((phase(&n).is_none() && !cordoned).then_some(n))
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", nodes[0].log()));
    assert_eq!(label(&ended).as_deref(), Some("false"));
    let events = fixtures::node_events(&client, &names[0]).await.unwrap();
    assert!(
        events
            .iter()
            .any(|e| e.reason.as_deref() == Some("DrainFailed")),
        "{events:?}"
    );
    assert_eq!(nodes[0].triggers(), 0, "no reboot");
}

#[tokio::test]
async fn firing_prometheus_alerts_block_and_an_unreachable_prometheus_fails_closed() {
    use baton_tests::prometheus::{FIRING, PENDING, Prometheus};
    let cluster = shared();
    let ns = "cycle-alerts";
    let (client, names) = setup(cluster, ns, 1).await;
    let prometheus = Prometheus::start().await.unwrap();
    let url = format!("--prometheus-url={}", prometheus.url());

    // Nothing listens on this port: "could not check" blocks, it never permits.
    let [closed] = baton_tests::cluster::free_ports().unwrap();
    let unreachable = format!("--prometheus-url=http://127.0.0.1:{closed}");
    let mut nodes = sims(cluster, ns, &names, Method::Command, &[&unreachable]);
    flag_and_start(&mut nodes);
    let why = wait_waiting(
        &client,
        &names[0],
        "could not check Prometheus alerts",
        None,
    )
    .await;
    assert!(why.contains(&closed.to_string()), "names the URL: {why}");
    assert_eq!(
        nodes[0]
            .metric("baton_blocked{blocker=\"alert\"}")
            .await
            .unwrap(),
        Some(1.0)
    );
    assert_eq!(
        lease_holder(&client, ns).await,
        None,
        "no lease while blocked"
    );

    let restart = async |node: &mut SimNode, extra: &[&str]| {
        node.stop().await.unwrap();
        node.set_extra(extra);
        node.start().unwrap();
    };
    // Every active alert blocks by default, pending ones too; the reason names them.
    restart(&mut nodes[0], &[&url]).await;
    let why = wait_waiting(&client, &names[0], FIRING, None).await;
    assert!(why.contains(PENDING), "{why}");
    // Excluding the firing one by name leaves the pending one blocking...
    restart(&mut nodes[0], &[&url, "--alert-filter-regexp=Firing$"]).await;
    // (The old reason stays on the Node until the new agent replaces it.)
    wait_waiting(&client, &names[0], PENDING, Some(FIRING)).await;
    assert_eq!(
        lease_holder(&client, ns).await,
        None,
        "no lease while blocked"
    );
    // ... and with --alert-firing-only nothing blocks: the node reboots.
    restart(
        &mut nodes[0],
        &[&url, "--alert-filter-regexp=Firing$", "--alert-firing-only"],
    )
    .await;
    roll(cluster, &client, ns, &names, &mut nodes).await;
    assert_eq!(
        nodes[0]
            .metric("baton_blocked{blocker=\"alert\"}")
            .await
            .unwrap(),
        Some(0.0)
    );
}

#[tokio::test]
async fn control_plane_nodes_in_different_zones_never_reboot_at_once() {
    let ns = "cycle-ctrl";
    // Two control-plane nodes, each alone in its zone (so the zones alone would let both go at
    // once), and a worker next to the first.
    let spec = [
        (format!("{ns}-cp-a"), "zone-a", true),
        (format!("{ns}-cp-b"), "zone-b", true),
        (format!("{ns}-worker-a"), "zone-a", false),
    ];
    let (client, rec, driven, nodes) = roll_zoned(ns, &spec).await;
    // Every host went down holding every Lease it needs: its zone's, and for a control-plane
    // node the control-plane Lease too.
    for (node, held) in &driven.held_at_reboot {
        assert!(
            held.iter().any(|l| l.starts_with("baton-zone-")),
            "{node} rebooted holding {held:?}"
        );
        assert_eq!(
            held.iter().any(|l| l == "baton-control-plane"),
            node.contains("-cp-"),
            "{node} rebooted holding {held:?}"
        );
    }
    assert_eq!(driven.held_at_reboot.len(), 3);
    rec.with(|r| {
        assert_eq!(
            max_at_once(r, |n| n.contains("-cp-").then_some("control-plane")),
            1,
            "one control-plane node at a time"
        );
        assert_eq!(
            max_at_once(r, |n| Some(if n.ends_with("-b") {
                "zone-b"
            } else {
                "zone-a"
            })),
            1,
            "one node at a time per zone"
        );
    });
    // The control-plane Lease was taken, and is free again (its holder gives it back once its
    // health gate passes, a moment after its Node looks idle).
    let leases = Api::<Lease>::namespaced(client.clone(), ns);
    wait_for("the control-plane Lease to be free", SETTLE, || async {
        let cp = leases.get("baton-control-plane").await?;
        let holder = cp
            .spec
            .and_then(|s| s.holder_identity)
            .filter(|h| !h.is_empty());
        Ok(holder.is_none().then_some(()))
    })
    .await
    .unwrap_or_else(|e| {
        let logs: String = nodes
            .iter()
            .map(|n| format!("--- {}\n{}", n.name, n.log()))
            .collect();
        panic!("{e:#}\n{logs}")
    });
}

#[tokio::test]
async fn a_node_labelled_control_plane_after_the_agent_started_restarts_it() {
    let cluster = shared();
    let ns = "cycle-relabel";
    let (client, names) = setup(cluster, ns, 1).await;
    let mut nodes = sims(cluster, ns, &names, Method::Command, &["--concurrency=2"]);
    nodes[0].start().unwrap();
    nodes[0].wait_ready(SETTLE).await.unwrap();
    // kubeadm labels a joining control-plane node after it registers.
    Api::<Node>::all(client.clone())
        .patch(
            &names[0],
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"labels": {"node-role.kubernetes.io/control-plane": ""}}}),
            ),
        )
        .await
        .unwrap();
    let status = nodes[0].wait_exit(SETTLE).await.unwrap();
    assert!(!status.success(), "{status}");
    let log = nodes[0].log();
    assert!(log.contains("labels changed"), "{log}");
    assert!(
        !log.contains('\x1b'),
        "plain text when not on a terminal: {log}"
    );
    // Restarted (as the DaemonSet would), it coordinates as a control-plane node.
    nodes[0].start().unwrap();
    nodes[0].wait_ready(SETTLE).await.unwrap();
    assert!(
        nodes[0].log().contains("control_plane=true"),
        "{}",
        nodes[0].log()
    );
}
