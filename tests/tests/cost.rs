//! What an agent costs the API server, read back from its audit log: an idle, unflagged agent
//! watches only its own Node (by name) and asks nothing else; a flagged one watches its Leases
//! by name for the length of its cycle, and the health gate waits on watches, not lists. (The
//! figures at scale are `baton-fleet`'s.)

use std::collections::BTreeMap;

use baton_tests::agent::Method;
use baton_tests::audit::{self, Request};
use baton_tests::scenario::*;
use baton_tests::{Cluster, fixtures, shared_audited, wait_for};
use jiff::Timestamp;
use serde_json::json;

/// The agent of `node`'s requests so far.
fn requests_of(cluster: &Cluster, node: &str) -> Vec<Request> {
    audit::read(&cluster.audit_log())
        .unwrap()
        .into_iter()
        .filter(|r| r.baton_node() == Some(node))
        .collect()
}

/// The agent of `node`'s watches open now: `verb resource fieldSelector` → how many.
fn open_watches(cluster: &Cluster, node: &str) -> BTreeMap<String, usize> {
    let now = Timestamp::now();
    let mut open = BTreeMap::new();
    for r in requests_of(cluster, node) {
        if r.watching_at(now) {
            let what = format!(
                "{} {}",
                r.kind(),
                r.query("fieldSelector").unwrap_or_default()
            );
            *open.entry(what).or_insert(0) += 1;
        }
    }
    open
}

/// Waits until the agent of `node` has exactly the watches `want` open.
async fn wait_watches(cluster: &Cluster, node: &str, want: &[&str]) {
    let want: BTreeMap<String, usize> = want.iter().map(|w| ((*w).to_owned(), 1)).collect();
    let seen = wait_for(
        &format!("{node}'s agent to watch exactly {want:?}"),
        SETTLE,
        || async {
            let open = open_watches(cluster, node);
            Ok((open == want).then_some(()))
        },
    )
    .await;
    if let Err(e) = seen {
        panic!("{e:#}; open: {:?}", open_watches(cluster, node));
    }
}

#[tokio::test]
async fn an_agent_watches_its_leases_only_from_its_flag_to_the_end_of_its_cycle() {
    let cluster = shared_audited();
    let ns = "cost-idle";
    let (client, names) = setup(cluster, ns, 1).await;
    let me = names[0].as_str();
    // A budget to gate on, and two slots: every watch there could be.
    fixtures::create_nginx(&client, ns, 1, ns, Some(json!({"maxUnavailable": 1})))
        .await
        .unwrap();
    let mut nodes = sims(
        cluster,
        ns,
        &names,
        Method::Command,
        &["--concurrency=2", "--gate-pdbs", "--settle-time=1s"],
    );
    nodes[0].start().unwrap();
    nodes[0].wait_ready(SETTLE).await.unwrap();

    // Idle and unflagged: its own Node by name, nothing else. At start it read each slot once
    // (it might hold one from before a restart) and listed its Node for the watch.
    let own = format!("watch nodes metadata.name={me}");
    wait_watches(cluster, me, &[&own]).await;
    let start: BTreeMap<String, usize> = audit::by_kind(&requests_of(cluster, me));
    assert_eq!(
        start,
        BTreeMap::from([
            ("get leases".to_owned(), 2),
            ("list nodes".to_owned(), 1),
            ("watch nodes".to_owned(), 1),
        ]),
        "an idle agent's requests"
    );

    // Flagged: the slots and the pause switch, by name, while it waits and cycles.
    nodes[0].flag().unwrap();
    wait_for("the agent to watch its leases", SETTLE, || async {
        let open = open_watches(cluster, me);
        Ok((open.contains_key("watch leases metadata.name=baton")
            && open.contains_key("watch leases metadata.name=baton-1")
            && open.contains_key("watch configmaps metadata.name=baton-pause"))
        .then_some(()))
    })
    .await
    .unwrap();
    roll(cluster, &client, ns, &names, &mut nodes).await;

    // The cycle is over: back to its own Node only.
    wait_watches(cluster, me, &[&own]).await;
    let all = requests_of(cluster, me);
    for r in all
        .iter()
        .filter(|r| r.verb == "watch" && r.resource == "leases")
    {
        assert!(
            r.query("fieldSelector")
                .is_some_and(|f| f.starts_with("metadata.name=")),
            "a Lease watch not by name: {}",
            r.uri
        );
    }
    // The health gate, run by the agent started after the reboot (from its Node watch's first
    // list on), waited on watches: each list of the node's pods or of the budgets began one.
    let restarted = all
        .iter()
        .filter(|r| r.kind() == "list nodes")
        .map(|r| r.received)
        .nth(1)
        .expect("the agent's second start");
    let after: Vec<&Request> = all.iter().filter(|r| r.received >= restarted).collect();
    let kinds = audit::by_kind(after.iter().copied());
    let count = |kind: &str| kinds.get(kind).copied().unwrap_or(0);
    for what in ["pods", "poddisruptionbudgets"] {
        let (lists, watches) = (
            count(&format!("list {what}")),
            count(&format!("watch {what}")),
        );
        assert!(
            watches >= 1 && lists == watches,
            "the health gate listed {what} without watching: {kinds:?}"
        );
    }
}
