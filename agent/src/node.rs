//! baton's state on its own Node: annotations under `baton.dev/` (phase, whether baton
//! cordoned, the boot ID before the reboot, timestamps), written together with the cordon or
//! uncordon in one PATCH so that an agent killed at any point resumes from a consistent record.
//! Also the Events baton reports on the Node.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::{Node, ObjectReference};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use serde_json::{Value, json};

use crate::machine::{NodeState, Phase};
use crate::notify::{self, Notifier};

/// Set by a human (any value, used as the reason) to request a reboot; removed when done.
pub const REBOOT_REQUESTED: &str = "baton.dev/reboot-requested";
/// Set by a human (value = reason) on a Node to keep it from starting a cycle (every node: the
/// pause ConfigMap).
pub const PAUSE: &str = "baton.dev/pause";
/// Why a flagged node is not starting its cycle (outside the window, paused, blocked, or
/// [`WAITING_FOR_SLOT`]).
pub const WAITING: &str = "baton.dev/waiting";
/// [`WAITING`] while a flagged node waits only for a Lease slot. One text whoever holds the
/// slots, so a node writes it once per cycle, not once per hand-off.
pub const WAITING_FOR_SLOT: &str = "waiting for a free Lease slot";
/// The phase (`draining`, `rebooting`); absent when idle.
pub const PHASE: &str = "baton.dev/phase";
/// When the phase began (RFC 3339).
pub const PHASE_SINCE: &str = "baton.dev/phase-since";
/// `"true"` when baton cordoned the node (and so must uncordon it).
pub const CORDONED: &str = "baton.dev/cordoned";
/// The boot ID recorded before the reboot.
pub const BOOT_ID_BEFORE: &str = "baton.dev/boot-id-before";
/// Reboots triggered from that boot ID.
pub const REBOOT_ATTEMPTS: &str = "baton.dev/reboot-attempts";
/// When the last reboot was triggered (RFC 3339), written before triggering.
pub const TRIGGERED_AT: &str = "baton.dev/reboot-triggered-at";
/// No new cycle before this time (RFC 3339), after a failed drain.
pub const BACKOFF_UNTIL: &str = "baton.dev/backoff-until";
/// The boot during which a dry run already ran.
pub const DRY_RUN_BOOT_ID: &str = "baton.dev/dry-run-boot-id";
/// The boot during which baton gave up (reboots were triggered but did not happen).
pub const GAVE_UP_BOOT_ID: &str = "baton.dev/gave-up-boot-id";
/// Completed reboots that did not clear the flag.
pub const CONSECUTIVE_REBOOTS: &str = "baton.dev/consecutive-reboots";
/// Pods the running drain still waits for.
pub const DRAIN_PENDING: &str = "baton.dev/drain-pending";
/// The running drain's last error (e.g. a PodDisruptionBudget refusal).
pub const DRAIN_LAST_ERROR: &str = "baton.dev/drain-last-error";
/// When the last reboot completed (RFC 3339), informational.
pub const LAST_REBOOT: &str = "baton.dev/last-reboot";

/// An annotation baton cannot read back.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("node annotation {key}={value:?}: {problem}")]
pub struct AnnotationError {
    /// The annotation key.
    pub key: &'static str,
    /// Its value (truncated).
    pub value: String,
    /// What is wrong with it.
    pub problem: &'static str,
}

fn bad(key: &'static str, value: &str, problem: &'static str) -> AnnotationError {
    AnnotationError {
        key,
        value: value.chars().take(64).collect(),
        problem,
    }
}

fn parse_time(key: &'static str, v: &str) -> Result<SystemTime, AnnotationError> {
    let ts: Timestamp = v.parse().map_err(|_| {
        bad(
            key,
            v,
            "expected an RFC 3339 time such as 2026-01-02T03:04:05Z",
        )
    })?;
    Ok(SystemTime::from(ts))
}

/// The time recorded in annotation `key` of `node`, if there is a valid one.
pub fn time_of(node: &Node, key: &'static str) -> Option<SystemTime> {
    let v = node.metadata.annotations.as_ref()?.get(key)?;
    parse_time(key, v).ok()
}

/// baton's state as recorded on `node` (no annotations: idle).
pub fn state_of(node: &Node) -> Result<NodeState, AnnotationError> {
    read_state(
        node.metadata
            .annotations
            .as_ref()
            .unwrap_or(&BTreeMap::new()),
    )
}

/// Formats a time as RFC 3339, to the millisecond (a settle time of a few seconds counts from
/// the real moment, not from a rounded one).
pub fn format_time(t: SystemTime) -> String {
    Timestamp::try_from(t)
        .and_then(|ts| ts.round(k8s_openapi::jiff::Unit::Millisecond))
        .map_or_else(|_| String::new(), |ts| ts.to_string())
}

/// A count: digits only; more than `u32::MAX` saturates (a count that large already stops
/// every loop guard, which is what it means; refusing it would leave the node stuck instead).
fn parse_count(key: &'static str, v: &str) -> Result<u32, AnnotationError> {
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad(key, v, "expected a whole number"));
    }
    Ok(v.parse().unwrap_or(u32::MAX))
}

/// Reads baton's state from a Node's annotations.
pub fn read_state(annotations: &BTreeMap<String, String>) -> Result<NodeState, AnnotationError> {
    let get = |k: &str| {
        annotations
            .get(k)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    };
    let phase = match get(PHASE) {
        None => Phase::Idle,
        Some(v) => Phase::parse(v)
            .ok_or_else(|| bad(PHASE, v, "expected one of idle, draining, rebooting"))?,
    };
    let cordoned_by_baton = match get(CORDONED) {
        None | Some("false") => false,
        Some("true") => true,
        Some(v) => return Err(bad(CORDONED, v, "expected true or false")),
    };
    let boot_id_before = get(BOOT_ID_BEFORE).map(str::to_owned);
    if phase == Phase::Rebooting && boot_id_before.is_none() {
        return Err(bad(BOOT_ID_BEFORE, "", "required in phase rebooting"));
    }
    Ok(NodeState {
        phase,
        cordoned_by_baton,
        boot_id_before,
        reboot_attempts: get(REBOOT_ATTEMPTS)
            .map(|v| parse_count(REBOOT_ATTEMPTS, v))
            .transpose()?
            .unwrap_or(0),
        triggered_at: get(TRIGGERED_AT)
            .map(|v| parse_time(TRIGGERED_AT, v))
            .transpose()?,
        backoff_until: get(BACKOFF_UNTIL)
            .map(|v| parse_time(BACKOFF_UNTIL, v))
            .transpose()?,
        dry_run_boot_id: get(DRY_RUN_BOOT_ID).map(str::to_owned),
        gave_up_boot_id: get(GAVE_UP_BOOT_ID).map(str::to_owned),
        consecutive_reboots: get(CONSECUTIVE_REBOOTS)
            .map(|v| parse_count(CONSECUTIVE_REBOOTS, v))
            .transpose()?
            .unwrap_or(0),
    })
}

/// The annotations (as a merge patch: `null` removes) that record `state`.
pub fn state_annotations(state: &NodeState, now: SystemTime) -> serde_json::Map<String, Value> {
    let opt = |v: Option<String>| v.map_or(Value::Null, Value::String);
    let idle = state.phase == Phase::Idle;
    let mut m = serde_json::Map::new();
    m.insert(
        PHASE.into(),
        if idle {
            Value::Null
        } else {
            state.phase.as_str().into()
        },
    );
    m.insert(
        PHASE_SINCE.into(),
        if idle {
            Value::Null
        } else {
            format_time(now).into()
        },
    );
    m.insert(
        CORDONED.into(),
        if state.cordoned_by_baton {
            "true".into()
        } else {
            Value::Null
        },
    );
    m.insert(BOOT_ID_BEFORE.into(), opt(state.boot_id_before.clone()));
    m.insert(
        REBOOT_ATTEMPTS.into(),
        if state.reboot_attempts > 0 {
            state.reboot_attempts.to_string().into()
        } else {
            Value::Null
        },
    );
    m.insert(
        TRIGGERED_AT.into(),
        opt(state.triggered_at.map(format_time)),
    );
    m.insert(
        BACKOFF_UNTIL.into(),
        opt(state.backoff_until.map(format_time)),
    );
    m.insert(DRY_RUN_BOOT_ID.into(), opt(state.dry_run_boot_id.clone()));
    // Drain progress belongs to one drain: every state change clears it.
    m.insert(DRAIN_PENDING.into(), Value::Null);
    m.insert(DRAIN_LAST_ERROR.into(), Value::Null);
    m.insert(GAVE_UP_BOOT_ID.into(), opt(state.gave_up_boot_id.clone()));
    m.insert(
        CONSECUTIVE_REBOOTS.into(),
        if state.consecutive_reboots > 0 {
            state.consecutive_reboots.to_string().into()
        } else {
            Value::Null
        },
    );
    m
}

/// The Node's Ready condition.
pub fn is_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .is_some_and(|c| c.status == "True")
}

/// Whether the Node is cordoned.
pub fn is_unschedulable(node: &Node) -> bool {
    node.spec
        .as_ref()
        .and_then(|s| s.unschedulable)
        .unwrap_or(false)
}

/// A change to write to the Node in one PATCH.
#[derive(Debug, Clone, Default)]
pub struct Update {
    /// New annotation values (`null` removes).
    pub annotations: serde_json::Map<String, Value>,
    /// Labels to set (`--pre-reboot-node-labels`, `--post-reboot-node-labels`).
    pub labels: BTreeMap<String, String>,
    /// `Some(true)` cordons, `Some(false)` uncordons.
    pub unschedulable: Option<bool>,
    /// Apply only if the Node is still at this resourceVersion.
    pub resource_version: Option<String>,
}

impl Update {
    /// The JSON merge patch.
    pub fn patch(&self) -> Value {
        let mut meta = json!({"annotations": self.annotations});
        if !self.labels.is_empty() {
            meta["labels"] = json!(self.labels);
        }
        if let Some(rv) = &self.resource_version {
            meta["resourceVersion"] = rv.clone().into();
        }
        let mut p = json!({"metadata": meta});
        if let Some(u) = self.unschedulable {
            // `null` rather than `false`: an uncordoned node has no field, like kubectl leaves it.
            p["spec"] = json!({"unschedulable": if u { Value::Bool(true) } else { Value::Null }});
        }
        p
    }
}

/// Writes an [`Update`] to Node `name`.
pub async fn apply(api: &Api<Node>, name: &str, update: &Update) -> Result<Node, kube::Error> {
    api.patch(name, &PatchParams::default(), &Patch::Merge(update.patch()))
        .await
}

/// Publishes Events about this Node, and the notifications of a cycle's Events.
#[derive(Clone)]
pub struct Events {
    recorder: Recorder,
    reference: ObjectReference,
    notifier: Notifier,
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events").finish_non_exhaustive()
    }
}

impl Events {
    /// Events reported by `baton` on Node `node`.
    pub fn new(client: kube::Client, node: &Node) -> Self {
        let name = node.metadata.name.clone().unwrap_or_default();
        let reporter = Reporter {
            controller: "baton".into(),
            instance: Some(name.clone()),
        };
        let reference = ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Node".into()),
            name: Some(name),
            uid: node.metadata.uid.clone(),
            ..Default::default()
        };
        Self {
            recorder: Recorder::new(client, reporter),
            reference,
            notifier: Notifier::default(),
        }
    }

    /// Also posts every cycle Event to `notifier`'s webhooks.
    pub fn notifying(self, notifier: Notifier) -> Self {
        Self { notifier, ..self }
    }

    /// Publishes one Event, its note cut to the API's limit; a failure is logged, never fatal.
    /// A cycle's Event is also queued as a notification (which never waits).
    pub async fn publish(&self, warning: bool, reason: &str, action: &str, note: String) {
        if let Some(kind) = notify::Kind::of_reason(reason) {
            self.notifier.send(&notify::Notice {
                node: self.reference.name.clone().unwrap_or_default(),
                kind,
                reason: reason.to_owned(),
                message: crate::text::truncate(&note, crate::text::EVENT_NOTE_MAX).into_owned(),
                warning,
                time: SystemTime::now(),
            });
        }
        let ev = Event {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.into(),
            // Over the API's limit the whole Event would be refused and lost.
            note: Some(crate::text::truncate(&note, crate::text::EVENT_NOTE_MAX).into_owned()),
            action: action.into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, &self.reference).await {
            tracing::warn!(error = %e, reason, "could not publish event");
        }
    }
}

/// Formats a duration for humans in logs and Events.
pub fn human(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect()
    }

    fn as_strings(m: &serde_json::Map<String, Value>) -> BTreeMap<String, String> {
        m.iter()
            .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_owned())))
            .collect()
    }

    #[test]
    fn no_annotations_is_idle() {
        assert_eq!(read_state(&BTreeMap::new()).unwrap(), NodeState::default());
    }

    #[test]
    fn state_round_trips_through_annotations() {
        // Times keep their milliseconds: a settle time counts from the real moment.
        let now = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        let state = NodeState {
            phase: Phase::Rebooting,
            cordoned_by_baton: true,
            boot_id_before: Some("abc-123-def".into()),
            reboot_attempts: 2,
            triggered_at: Some(now - Duration::from_millis(1_500)),
            backoff_until: Some(now),
            dry_run_boot_id: Some("d".into()),
            gave_up_boot_id: Some("g".into()),
            consecutive_reboots: 1,
        };
        let written = as_strings(&state_annotations(&state, now));
        assert_eq!(read_state(&written).unwrap(), state);
        let idle = state_annotations(&NodeState::default(), now);
        assert!(idle.values().all(Value::is_null), "{idle:?}");
    }

    #[test]
    fn bad_annotations_name_the_key_and_the_problem() {
        let cases = [
            (ann(&[(PHASE, "exploding")]), PHASE),
            (ann(&[(CORDONED, "yes")]), CORDONED),
            (ann(&[(REBOOT_ATTEMPTS, "-1")]), REBOOT_ATTEMPTS),
            (ann(&[(BACKOFF_UNTIL, "tomorrow")]), BACKOFF_UNTIL),
            (ann(&[(TRIGGERED_AT, "soon")]), TRIGGERED_AT),
            (ann(&[(PHASE, "rebooting")]), BOOT_ID_BEFORE),
        ];
        for (a, key) in cases {
            let err = read_state(&a).unwrap_err();
            assert_eq!(err.key, key);
            let line = err.to_string();
            assert!(line.contains(key) && !line.contains('\n'), "{line}");
        }
    }

    #[test]
    fn counts_beyond_the_maximum_saturate_instead_of_stopping_the_node() {
        let huge = "99999999999999999999999";
        let s = read_state(&ann(&[
            (CONSECUTIVE_REBOOTS, huge),
            (REBOOT_ATTEMPTS, "4294967296"),
        ]))
        .unwrap();
        assert_eq!(
            (s.consecutive_reboots, s.reboot_attempts),
            (u32::MAX, u32::MAX)
        );
        for bad in ["-1", "1e3", "+", " 7"] {
            let err = read_state(&ann(&[(REBOOT_ATTEMPTS, bad)])).unwrap_err();
            assert_eq!(err.key, REBOOT_ATTEMPTS, "{bad:?}");
        }
    }

    #[tokio::test]
    async fn a_long_event_note_is_cut_to_the_api_limit_not_lost() {
        use http::{Request, Response};
        use kube::client::Body;
        let (service, mut h) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let node: Node =
            serde_json::from_value(json!({"metadata": {"name": "n1", "uid": "u"}})).unwrap();
        let events = Events::new(kube::Client::new(service, "default"), &node);
        let note = format!("maintenance ({})", "r".repeat(4000));
        let server = async {
            let (req, send) = h.next_request().await.expect("a POST");
            assert_eq!(req.method().as_str(), "POST");
            assert_eq!(
                req.uri().path(),
                "/apis/events.k8s.io/v1/namespaces/default/events"
            );
            let body = req.into_body().collect_bytes().await.unwrap();
            send.send_response(
                Response::builder()
                    .status(201)
                    .body(Body::from(body.clone()))
                    .unwrap(),
            );
            serde_json::from_slice::<Value>(&body).unwrap()
        };
        let ((), sent) = tokio::join!(
            events.publish(false, "MaintenanceStarted", "Cordon", note),
            server
        );
        let sent = sent["note"].as_str().unwrap();
        assert!(sent.len() <= 1024, "{} bytes", sent.len());
        assert!(
            sent.starts_with("maintenance (rrr") && sent.ends_with('…'),
            "{sent}"
        );
    }

    #[test]
    fn cordon_and_state_go_in_one_patch_with_a_precondition() {
        let mut u = Update {
            unschedulable: Some(true),
            resource_version: Some("42".into()),
            ..Default::default()
        };
        u.annotations.insert(PHASE.into(), "draining".into());
        let p = u.patch();
        assert_eq!(p["spec"]["unschedulable"], json!(true));
        assert_eq!(p["metadata"]["resourceVersion"], json!("42"));
        assert_eq!(p["metadata"]["annotations"][PHASE], json!("draining"));
        u.unschedulable = Some(false);
        assert_eq!(u.patch()["spec"]["unschedulable"], Value::Null);
        assert!(
            u.patch()["metadata"].get("labels").is_none(),
            "no labels, no field"
        );
        u.labels
            .insert("example.com/maintenance".into(), "true".into());
        assert_eq!(
            u.patch()["metadata"]["labels"],
            json!({"example.com/maintenance": "true"})
        );
    }
}
