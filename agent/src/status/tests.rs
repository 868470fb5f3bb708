use super::*;
use crate::lease::{control_plane_lock_name, group_lock_name, slot_names};

fn at(s: &str) -> Timestamp {
    s.parse().unwrap()
}

const NOW: &str = "2026-11-29T10:00:00Z";

fn settings() -> Settings {
    Settings {
        namespace: "baton-system".into(),
        lock_name: "baton".into(),
        pause_configmap: "baton-pause".into(),
        agent_selector: "app.kubernetes.io/name=baton".into(),
        max_reboot_attempts: 3,
    }
}

fn node(name: &str, annotations: &[(&str, &str)]) -> NodeInfo {
    NodeInfo {
        name: name.into(),
        annotations: annotations
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        ready: true,
        unschedulable: false,
        boot_id: Some(format!("boot-{name}")),
    }
}

fn held(name: &str, holder: &str, acquired: &str, renewed: &str, secs: i64) -> LeaseInfo {
    LeaseInfo {
        name: name.into(),
        holder: Some(holder.into()),
        acquired: Some(at(acquired)),
        renewed: Some(at(renewed)),
        duration_seconds: Some(secs),
    }
}

fn warning(node: &str, reason: &str, when: &str) -> EventInfo {
    EventInfo {
        node: node.into(),
        reason: reason.into(),
        note: format!("{reason} note"),
        warning: true,
        last_seen: Some(at(when)),
        count: 1,
    }
}

/// A cluster in the middle of things: n1 drains on a PDB holding `baton`; n2 was requested by
/// hand; n3 is paused and flagged; n4 backs off; n5 gave up (flag persists); n6 gave up (reboot
/// did not happen); n7 idle and rebooted lately; an agent pod Pending.
fn staged() -> Snapshot {
    Snapshot {
        leases: vec![
            held(
                "baton",
                "n1",
                "2026-11-29T09:57:50Z",
                "2026-11-29T09:59:40Z",
                1800,
            ),
            LeaseInfo {
                name: "baton-1".into(),
                ..Default::default()
            },
            LeaseInfo {
                name: "other-lease".into(),
                holder: Some("x".into()),
                ..Default::default()
            },
        ],
        nodes: vec![
            NodeInfo {
                unschedulable: true,
                ..node(
                    "n1",
                    &[
                        (node::PHASE, "draining"),
                        (node::PHASE_SINCE, "2026-11-29T09:58:00.123Z"),
                        (node::CORDONED, "true"),
                        (node::BOOT_ID_BEFORE, "boot-n1"),
                        (node::DRAIN_PENDING, "1"),
                        (
                            node::DRAIN_LAST_ERROR,
                            "ns/web-1: Cannot evict pod as it would violate the pod's disruption budget.",
                        ),
                    ],
                )
            },
            node("n2", &[(node::REBOOT_REQUESTED, "kernel 6.12")]),
            node(
                "n3",
                &[
                    (node::PAUSE, "disk replacement"),
                    (
                        node::WAITING,
                        "paused on this node (baton.dev/pause): disk replacement",
                    ),
                ],
            ),
            node("n4", &[(node::BACKOFF_UNTIL, "2026-11-29T10:04:00Z")]),
            node(
                "n5",
                &[
                    (node::CONSECUTIVE_REBOOTS, "3"),
                    (node::LAST_REBOOT, "2026-11-29T09:30:00Z"),
                ],
            ),
            node("n6", &[(node::GAVE_UP_BOOT_ID, "boot-n6")]),
            node("n7", &[(node::LAST_REBOOT, "2026-11-29T09:50:00Z")]),
        ],
        events: vec![
            warning("n5", "RebootLoopStopped", "2026-11-29T09:31:00Z"),
            warning("n6", "RebootFailed", "2026-11-29T09:45:00Z"),
            EventInfo {
                warning: false,
                ..warning("n7", "RebootCompleted", "2026-11-29T09:50:00Z")
            },
            warning("gone-node", "DrainFailed", "2026-11-29T09:55:00Z"),
        ],
        pause: None,
        agents: vec![
            AgentPod {
                name: "baton-a".into(),
                node: Some("n1".into()),
                ready: true,
                state: "Running".into(),
            },
            AgentPod {
                name: "baton-b".into(),
                node: None,
                ready: false,
                state: "Pending: not scheduled: Unschedulable".into(),
            },
        ],
    }
}

#[test]
fn slot_names_are_read_back_as_the_agent_writes_them() {
    let lock = "baton";
    for name in slot_names(lock, 3) {
        assert_eq!(slot_of(lock, &name), Some((None, false)), "{name}");
    }
    assert_eq!(
        slot_of(lock, &control_plane_lock_name(lock)),
        Some((None, true))
    );
    for value in ["eu-west-1a", "", "Zone_B", "123456", &"z".repeat(80)] {
        let base = group_lock_name(lock, value);
        let want = base
            .strip_prefix("baton-")
            .unwrap()
            .rsplit_once('-')
            .map_or("none".to_owned(), |(g, _)| g.to_owned());
        for name in slot_names(&base, 3) {
            assert_eq!(
                slot_of(lock, &name),
                Some((Some(want.clone()), false)),
                "{value:?}: {name}"
            );
        }
    }
    for other in [
        "batons",
        "kube-scheduler",
        "baton-",
        "baton-zone",
        "x-baton",
    ] {
        assert_eq!(slot_of(lock, other), None, "{other}");
    }
}

#[test]
fn a_slot_shows_its_holder_phase_and_an_estimated_ttl() {
    let r = report(&staged(), &settings(), at(NOW));
    let names: Vec<&str> = r.slots.iter().map(|s| s.lease.as_str()).collect();
    assert_eq!(names, ["baton", "baton-1"], "other Leases are not slots");
    let s = &r.slots[0];
    assert_eq!(s.holder.as_deref(), Some("n1"));
    assert_eq!((s.phase, s.phase_seconds), (Some("draining"), Some(120)));
    assert_eq!(s.held_seconds, Some(130));
    // renewed 20 s ago, for 1800 s.
    assert_eq!(s.ttl_left_seconds_estimate, Some(1780));
    assert_eq!(s.holder_node, Some("ready"));
    assert_eq!(r.slots[1].holder, None);
    assert_eq!(r.slots[1].ttl_left_seconds_estimate, None);
}

#[test]
fn an_overdue_or_orphaned_hold_says_so() {
    let mut s = staged();
    s.leases[0].renewed = Some(at("2026-11-29T09:00:00Z"));
    let r = report(&s, &settings(), at(NOW));
    assert_eq!(r.slots[0].ttl_left_seconds_estimate, Some(-1800));
    assert!(
        r.slots[0]
            .note
            .as_deref()
            .unwrap()
            .starts_with("not renewed"),
        "{:?}",
        r.slots[0].note
    );
    s.leases[0].holder = Some("deleted-node".into());
    let r = report(&s, &settings(), at(NOW));
    assert_eq!(r.slots[0].holder_node, Some("missing"));
    // A holder right after its reboot settles before passing the baton on.
    let mut s = staged();
    s.leases[0].holder = Some("n7".into());
    s.leases[0].acquired = Some(at("2026-11-29T09:40:00Z"));
    let r = report(&s, &settings(), at(NOW));
    assert_eq!(r.slots[0].phase, Some("idle"));
    assert!(r.slots[0].note.as_deref().unwrap().contains("settling"));
}

#[test]
fn the_queue_lists_who_waits_why_and_in_what_order() {
    let r = report(&staged(), &settings(), at(NOW));
    let order: Vec<(&str, Tier)> = r.queue.iter().map(|q| (q.node.as_str(), q.tier)).collect();
    assert_eq!(
        order,
        [("n2", Tier::Next), ("n4", Tier::Timed), ("n3", Tier::Held)]
    );
    assert_eq!(
        r.queue.iter().map(|q| q.position).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    let n2 = &r.queue[0];
    assert_eq!(n2.requested.as_deref(), Some("kernel 6.12"));
    assert_eq!(n2.reasons[0].kind, WaitKind::Slot);
    let n4 = &r.queue[1];
    assert_eq!(n4.reasons[0].kind, WaitKind::Backoff);
    assert_eq!(n4.reasons[0].until.as_deref(), Some("2026-11-29T10:04:00Z"));
    assert!(
        n4.reasons[0].text.contains("in 4m0s"),
        "{}",
        n4.reasons[0].text
    );
    let n3 = &r.queue[2];
    assert_eq!(n3.reasons[0].kind, WaitKind::NodePause);
    // In flight, gave up, holders and idle nodes are not queued.
    for n in ["n1", "n5", "n6", "n7"] {
        assert!(r.queue.iter().all(|q| q.node != n), "{n} queued");
    }
}

#[test]
fn back_offs_go_in_the_order_they_end_and_a_past_one_is_no_wait() {
    let mut s = staged();
    s.nodes
        .push(node("n0", &[(node::BACKOFF_UNTIL, "2026-11-29T10:09:00Z")]));
    s.nodes
        .push(node("n9", &[(node::BACKOFF_UNTIL, "2026-11-29T10:01:00Z")]));
    s.nodes
        .push(node("n8", &[(node::BACKOFF_UNTIL, "2026-11-29T09:00:00Z")]));
    let r = report(&s, &settings(), at(NOW));
    let timed: Vec<&str> = r
        .queue
        .iter()
        .filter(|q| q.tier == Tier::Timed)
        .map(|q| q.node.as_str())
        .collect();
    assert_eq!(timed, ["n9", "n4", "n0"]);
    assert!(r.queue.iter().all(|q| q.node != "n8"));
}

#[test]
fn waits_are_classified_from_the_agents_own_words() {
    use crate::window::Closed;
    for (text, kind) in [
        (
            "paused cluster-wide (ConfigMap ns/baton-pause exists: change freeze)".to_owned(),
            WaitKind::ClusterPause,
        ),
        (
            "paused on this node (baton.dev/pause): disk".to_owned(),
            WaitKind::NodePause,
        ),
        (Closed::Hours.to_string(), WaitKind::Window),
        (
            Closed::Day(jiff::civil::Weekday::Monday).to_string(),
            WaitKind::Window,
        ),
        (
            Closed::Blackout(jiff::civil::date(2026, 12, 24)).to_string(),
            WaitKind::Window,
        ),
        (
            "blocked by pod ns/backup (matches --blocking-pod-selector app=backup)".to_owned(),
            WaitKind::Pod,
        ),
        (
            "blocked by active Prometheus alert(s): NodeDown".to_owned(),
            WaitKind::Alert,
        ),
        (
            "blocked: could not check Prometheus alerts (timeout)".to_owned(),
            WaitKind::Alert,
        ),
        (
            "not cordoning: PodDisruptionBudget ns/web allows no disruption now".to_owned(),
            WaitKind::Pdb,
        ),
        (node::WAITING_FOR_SLOT.to_owned(), WaitKind::Slot),
        ("something new".to_owned(), WaitKind::Other),
    ] {
        assert_eq!(classify_wait(&text), kind, "{text}");
    }
}

#[test]
fn drains_show_pods_left_and_the_last_error() {
    let r = report(&staged(), &settings(), at(NOW));
    assert_eq!(r.in_flight.len(), 1);
    let d = &r.in_flight[0];
    assert_eq!((d.node.as_str(), d.phase), ("n1", "draining"));
    assert_eq!(d.pods_left, Some(1));
    assert!(
        d.last_error
            .as_deref()
            .unwrap()
            .contains("disruption budget")
    );
    assert_eq!(d.holds, ["baton"]);
    assert!(d.cordoned_by_baton);
    assert_eq!(d.since.as_deref(), Some("2026-11-29T09:58:00Z"));
}

#[test]
fn history_lists_reboots_failures_and_who_gave_up() {
    let r = report(&staged(), &settings(), at(NOW));
    let reboots: Vec<(&str, i64)> = r
        .history
        .last_reboots
        .iter()
        .map(|l| (l.node.as_str(), l.seconds_ago))
        .collect();
    assert_eq!(reboots, [("n7", 600), ("n5", 1800)]);
    // Warnings only, about the Nodes shown, newest first.
    let failures: Vec<&str> = r
        .history
        .failures
        .iter()
        .map(|f| f.reason.as_str())
        .collect();
    assert_eq!(failures, ["RebootFailed", "RebootLoopStopped"]);
    let gave_up: Vec<(&str, GaveUpKind)> = r
        .history
        .gave_up
        .iter()
        .map(|g| (g.node.as_str(), g.kind))
        .collect();
    assert_eq!(
        gave_up,
        [
            ("n5", GaveUpKind::FlagPersists),
            ("n6", GaveUpKind::RebootDidNotHappen)
        ]
    );
    // Below the agents' cap, a persisting flag is no give-up; after the next boot, a give-up
    // of the last one no longer holds.
    let lenient = Settings {
        max_reboot_attempts: 4,
        ..settings()
    };
    let mut s = staged();
    s.nodes[5].boot_id = Some("boot-after".into());
    let r = report(&s, &lenient, at(NOW));
    assert!(r.history.gave_up.is_empty(), "{:?}", r.history.gave_up);
}

#[test]
fn the_pause_paused_nodes_agents_and_unreadable_records_are_reported() {
    let mut s = staged();
    s.pause = Some(PauseInfo {
        reason: Some("change freeze".into()),
        since: Some(at("2026-11-29T09:00:00Z")),
    });
    s.nodes.push(node("bad", &[(node::PHASE, "exploding")]));
    let r = report(&s, &settings(), at(NOW));
    assert!(r.pause.paused);
    assert_eq!(r.pause.config_map, "baton-system/baton-pause");
    assert_eq!(r.pause.reason.as_deref(), Some("change freeze"));
    assert_eq!(r.pause.for_seconds, Some(3600));
    assert_eq!(r.paused_nodes.len(), 1);
    assert_eq!(r.paused_nodes[0].reason, "disk replacement");
    assert_eq!((r.agents.pods, r.agents.ready), (2, 1));
    assert_eq!(r.agents.not_ready[0].pod, "baton-b");
    // The cluster pause holds every queued node, whatever its agent wrote yet.
    assert!(r.queue.iter().all(|q| q.tier == Tier::Held));
    let n3: Vec<WaitKind> = r
        .queue
        .iter()
        .find(|q| q.node == "n3")
        .unwrap()
        .reasons
        .iter()
        .map(|w| w.kind)
        .collect();
    assert_eq!(n3, [WaitKind::NodePause, WaitKind::ClusterPause]);
    assert_eq!(r.problems.len(), 1);
    assert_eq!(r.problems[0].node, "bad");
    assert!(r.problems[0].problem.contains(node::PHASE));
}

#[test]
fn the_text_view_has_every_section_and_colours_only_when_asked() {
    let r = report(&staged(), &settings(), at(NOW));
    let text = render::text(&r, false);
    assert!(!text.contains('\x1b'), "{text}");
    for part in [
        "baton status: namespace baton-system at 2026-11-29T10:00:00Z",
        "Cluster pause: not paused (no ConfigMap baton-system/baton-pause)",
        "Slots",
        "draining for 2m0s",
        "~29m40s",
        "Queue",
        "1  n2    next   a free slot; requested: kernel 6.12",
        "In flight",
        "last error: ns/web-1: Cannot evict pod",
        "Paused nodes",
        "n3    disk replacement",
        "n7  10m0s ago (2026-11-29T09:50:00Z)",
        "RebootFailed",
        "n5  the maintenance flag was still set after 3 reboot(s)",
        "Agents: 2 pod(s) matching app.kubernetes.io/name=baton in baton-system, 1 Ready",
        "not Ready: baton-b on no node yet: Pending",
    ] {
        assert!(text.contains(part), "missing {part:?} in\n{text}");
    }
    assert!(!text.contains("Problems"), "{text}");
    let coloured = render::text(&r, true);
    assert!(coloured.contains("\x1b[1mSlots\x1b[0m"), "{coloured}");
    // Colour never shifts the columns: without its codes, the text is the same.
    let stripped = regex::Regex::new("\x1b\\[[0-9;]*m")
        .unwrap()
        .replace_all(&coloured, "");
    assert_eq!(stripped, text);
}

#[test]
fn an_empty_cluster_reads_plainly() {
    let r = report(&Snapshot::default(), &settings(), at(NOW));
    let text = render::text(&r, false);
    for part in [
        "no Lease yet",
        "no flagged node waits",
        "no node in a cycle",
        "none recorded",
        "no agent pod found",
    ] {
        assert!(text.contains(part), "missing {part:?} in\n{text}");
    }
}

#[test]
fn durations_read_in_their_two_largest_units() {
    assert_eq!(render::duration(0), "0s");
    assert_eq!(render::duration(59), "59s");
    assert_eq!(render::duration(61), "1m1s");
    assert_eq!(render::duration(3 * 3600 + 125), "3h2m");
    assert_eq!(render::duration(2 * 86_400 + 3 * 3600 + 5), "2d3h");
    assert_eq!(render::duration(-90), "-1m30s");
}

/// Every key of the JSON report, as `a.b.c` (array items under `a[]`).
fn key_paths(v: &serde_json::Value, prefix: &str, out: &mut std::collections::BTreeSet<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                out.insert(p.clone());
                key_paths(v, &p, out);
            }
        }
        serde_json::Value::Array(a) => {
            for v in a {
                key_paths(v, &format!("{prefix}[]"), out);
            }
        }
        _ => {}
    }
}

#[test]
fn the_json_schema_is_the_one_the_readme_documents() {
    let mut s = staged();
    s.pause = Some(PauseInfo::default());
    s.nodes.push(node("bad", &[(node::PHASE, "exploding")]));
    let json = serde_json::to_value(report(&s, &settings(), at(NOW))).unwrap();
    assert_eq!(json["schema"], SCHEMA);
    let mut paths = std::collections::BTreeSet::new();
    key_paths(&json, "", &mut paths);
    let readme = include_str!("../../../README.md");
    let start = readme
        .find("<!-- status-schema -->")
        .expect("the README's schema block");
    let block = &readme[start..];
    let block = &block[..block.find("<!-- /status-schema -->").unwrap()];
    for p in &paths {
        let leaf = p.rsplit(['.', ']']).next().unwrap();
        assert!(
            block.contains(&format!("\"{leaf}\"")),
            "{p} is not documented in the README's schema"
        );
    }
}
