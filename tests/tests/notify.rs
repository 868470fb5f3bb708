//! Notifications through a real agent cycle against a real control plane: every cycle event
//! reaches real local webhooks (generic JSON, Slack's and Teams' shapes) — a whole cycle, a drain
//! that fails, a reboot loop baton gives up on — and a webhook that is down or hangs neither
//! delays nor fails the cycle, only counts its failures. The URLs carry a
//! secret token, which never shows in the agent's log.

use std::time::{Duration, Instant};

use baton_tests::agent::Method;
use baton_tests::scenario::*;
use baton_tests::shared;
use baton_tests::webhook::{Answer, Receiver, down_port};

/// The events a whole cycle notifies, in order.
const CYCLE: [&str; 4] = ["started", "drained", "rebooting", "completed"];

#[tokio::test]
async fn every_cycle_event_reaches_json_slack_and_teams_webhooks() {
    let cluster = shared();
    let ns = "notify-all";
    let (client, names) = setup(cluster, ns, 1).await;
    let hook = Receiver::start(Answer::Ok).await.unwrap();
    let url = hook.url();
    let generic = format!("--notify-url={url}/generic/SECRET-TOKEN-1");
    let slack = format!("--notify-url=slack+{url}/slack/SECRET-TOKEN-2");
    let teams = format!("--notify-url=teams+{url}/teams/SECRET-TOKEN-3");
    let mut nodes = sims(
        cluster,
        ns,
        &names,
        Method::Command,
        &[
            &generic,
            &slack,
            &teams,
            // kured's name and placeholder.
            "--message-template-drain=Draining node %s",
        ],
    );
    flag_and_start(&mut nodes);
    roll(cluster, &client, ns, &names, &mut nodes).await;
    // The restarted agent says the reboot completed, to each webhook.
    nodes[0]
        .wait_metric("baton_notifications_total{outcome=\"sent\"}", SETTLE, |v| {
            v >= 3.0
        })
        .await
        .unwrap();
    let node = names[0].as_str();

    let generic = hook.to("/generic/SECRET-TOKEN-1");
    let events: Vec<String> = generic
        .iter()
        .map(|r| r.json()["event"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(events, CYCLE, "{generic:#?}");
    let reasons: Vec<String> = generic
        .iter()
        .map(|r| r.json()["reason"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(
        reasons,
        [
            "MaintenanceStarted",
            "Drained",
            "Rebooting",
            "RebootCompleted"
        ]
    );
    for r in &generic {
        let j = r.json();
        assert_eq!(r.content_type.as_deref(), Some("application/json"));
        assert_eq!(j["source"], "baton");
        assert_eq!(j["node"], node);
        assert_eq!(j["warning"], false);
        assert!(j["time"].as_str().is_some_and(|t| t.ends_with('Z')), "{j}");
        assert!(!j["message"].as_str().unwrap_or_default().is_empty(), "{j}");
    }
    assert_eq!(generic[0].json()["text"], format!("Draining node {node}"));
    let last = generic[3].json();
    assert_eq!(
        last["text"],
        format!(
            "{node}: rebooted and back ({})",
            last["message"].as_str().unwrap()
        )
    );

    // Slack: its incoming-webhook shape, {"text": ...}, nothing else.
    let slack = hook.to("/slack/");
    assert_eq!(slack.len(), CYCLE.len(), "{slack:#?}");
    assert_eq!(
        slack[0].json(),
        serde_json::json!({"text": format!("Draining node {node}")})
    );
    assert!(
        slack[2].json()["text"]
            .as_str()
            .is_some_and(|t| t.starts_with(&format!("{node}: rebooting ("))),
        "{:?}",
        slack[2]
    );

    // Teams: a message with an Adaptive Card, the facts naming node and event.
    let teams = hook.to("/teams/");
    let teams_events: Vec<String> = teams
        .iter()
        .map(|r| {
            let card = &r.json()["attachments"][0];
            assert_eq!(
                card["contentType"],
                "application/vnd.microsoft.card.adaptive"
            );
            assert_eq!(card["content"]["type"], "AdaptiveCard");
            let facts = &card["content"]["body"][1]["facts"];
            assert_eq!(facts[0]["value"], node);
            facts[1]["value"].as_str().unwrap_or_default().to_owned()
        })
        .collect();
    assert_eq!(teams_events, CYCLE);

    // The README shows these (`-- --nocapture`).
    for r in [&generic[3], &slack[3], &teams[3]] {
        println!("{} {}", r.path, r.body);
    }

    // The URLs' tokens never reach the log; their scheme and host do.
    let log = nodes[0].log();
    assert!(!log.contains("SECRET-TOKEN"), "{log}");
    assert!(
        log.contains(&format!(
            "slack+http://127.0.0.1:{}/…",
            url.rsplit(':').next().unwrap()
        )),
        "{log}"
    );
}

#[tokio::test]
async fn a_webhook_that_is_down_or_hangs_never_delays_the_cycle() {
    let cluster = shared();
    let ns = "notify-down";
    let (client, names) = setup(cluster, ns, 1).await;
    let hangs = Receiver::start(Answer::Hang).await.unwrap();
    let down = down_port().unwrap();
    let hanging = format!("--notify-url={}/hang/SECRET-TOKEN-4", hangs.url());
    let refused = format!("--notify-url=http://127.0.0.1:{down}/down/SECRET-TOKEN-5");
    // Each attempt may take a minute: a delivery that held the cycle up would cost at least
    // that, per event.
    let mut nodes = sims(
        cluster,
        ns,
        &names,
        Method::Command,
        &[&hanging, &refused, "--notify-timeout=60s"],
    );
    let started = Instant::now();
    flag_and_start(&mut nodes);
    roll(cluster, &client, ns, &names, &mut nodes).await;
    let took = started.elapsed();
    // A whole cycle here takes seconds (the stop before the reboot waits at most 3 s for the
    // queue); a cycle that waited for the hanging webhook would spend three 60 s attempts on its
    // first notification alone. The bound sits well between, for a loaded machine.
    assert!(took < Duration::from_secs(120), "the cycle took {took:?}");
    assert!(
        !hangs.to("/hang/").is_empty(),
        "the hanging webhook was asked during the cycle"
    );
    // The restarted agent's `completed` fails at the webhook that is down, after its retries.
    nodes[0]
        .wait_metric(
            "baton_notifications_total{outcome=\"failed\"}",
            SETTLE,
            |v| v >= 1.0,
        )
        .await
        .unwrap();
    let log = nodes[0].log();
    assert!(!log.contains("SECRET-TOKEN"), "{log}");
    assert!(
        log.contains(&format!("json+http://127.0.0.1:{down}/…"))
            && log.contains("could not deliver a notification"),
        "{log}"
    );
}

/// The receiver's notifications of `event`, once there is one.
async fn wait_event(hook: &Receiver, event: &str) -> Vec<serde_json::Value> {
    baton_tests::wait_for(&format!("a {event:?} notification"), SETTLE, || async {
        let got: Vec<serde_json::Value> = hook
            .requests()
            .iter()
            .map(|r| r.json())
            .filter(|j| j["event"] == event)
            .collect();
        Ok((!got.is_empty()).then_some(got))
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn a_failed_drain_is_notified_as_failed() {
    let cluster = shared();
    let ns = "notify-failed";
    let hook = Receiver::start(Answer::Ok).await.unwrap();
    let url = format!("--notify-url={}/failed/SECRET-TOKEN-6", hook.url());
    // Node 1's only pod has a PodDisruptionBudget that allows no eviction: its drain times out.
    let (_client, names, nodes) = stuck_draining(cluster, ns, &["--drain-timeout=5s", &url]).await;
    let failed = wait_event(&hook, "failed").await;
    let j = &failed[0];
    assert_eq!(j["node"], names[0]);
    assert_eq!(j["reason"], "DrainFailed");
    assert_eq!(j["warning"], true);
    assert!(
        j["message"]
            .as_str()
            .is_some_and(|m| m.contains("disruption budget")),
        "{j}"
    );
    assert!(
        j["text"].as_str().is_some_and(
            |t| t.starts_with(&format!("{}: maintenance failed, DrainFailed (", names[0]))
        ),
        "{j}"
    );
    // It came after the cycle's start, and no reboot was announced.
    let events: Vec<String> = hook
        .requests()
        .iter()
        .map(|r| r.json()["event"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(
        events.first().map(String::as_str),
        Some("started"),
        "{events:?}"
    );
    assert!(!events.iter().any(|e| e == "rebooting"), "{events:?}");
    assert!(!nodes[0].log().contains("SECRET-TOKEN"));
}

#[tokio::test]
async fn a_reboot_that_leaves_the_flag_set_is_notified_as_gave_up() {
    let cluster = shared();
    let ns = "notify-gave-up";
    let (client, names) = setup(cluster, ns, 1).await;
    let hook = Receiver::start(Answer::Ok).await.unwrap();
    let url = format!("--notify-url=teams+{}/gave-up/SECRET-TOKEN-7", hook.url());
    let generic = format!("--notify-url={}/json/SECRET-TOKEN-8", hook.url());
    // A sentinel the simulated reboot does not clear (it empties the node's own folder): the
    // flag is still set after the reboot, and with one attempt allowed, baton gives up.
    let sentinel_dir = tempfile::tempdir().unwrap();
    let sentinel = sentinel_dir.path().join("reboot-required");
    std::fs::write(&sentinel, "").unwrap();
    let persisting = format!("--reboot-sentinel={}", sentinel.display());
    let mut nodes = sims(
        cluster,
        ns,
        &names,
        Method::Command,
        &[&url, &generic, "--max-reboot-attempts=1", &persisting],
    );
    nodes[0].start().unwrap();
    baton_tests::rollout::drive(cluster, &client, &mut nodes, 1, ROLLOUT)
        .await
        .unwrap();
    let gave_up = wait_event(&hook, "gave-up").await;
    assert_eq!(gave_up[0]["node"], names[0]);
    assert_eq!(gave_up[0]["reason"], "RebootLoopStopped");
    assert_eq!(gave_up[0]["warning"], true);
    // Teams' card says it too, in red.
    let card = baton_tests::wait_for("the Teams card of gave-up", SETTLE, || async {
        Ok(hook
            .to("/gave-up/")
            .into_iter()
            .map(|r| r.json())
            .find(|j| j["attachments"][0]["content"]["body"][1]["facts"][1]["value"] == "gave-up"))
    })
    .await
    .unwrap();
    let body = &card["attachments"][0]["content"]["body"];
    assert_eq!(body[0]["color"], "Attention");
    assert_eq!(body[1]["facts"][2]["value"], "RebootLoopStopped");
    assert!(
        body[0]["text"].as_str().is_some_and(
            |t| t.starts_with(&format!("{}: baton gave up, RebootLoopStopped", names[0]))
        ),
        "{card}"
    );
}
