//! The operator's commands: `baton pause` / `resume` (the pause ConfigMap), `baton request` /
//! `cancel` (`baton.dev/reboot-requested`), `baton pause-node` / `resume-node`
//! (`baton.dev/pause`). What to write and what to say is decided by pure functions
//! ([`plan_node`], [`plan_pause`], [`plan_resume`]) from what is there now; the shell reads,
//! writes with the resourceVersion it read (a 409 means read again), and prints one line.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Node};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use serde_json::{Value, json};

use crate::machine::Phase;
use crate::node;
use crate::status::PauseInfo;
use crate::status::render::duration;

/// The ConfigMap key that says why every node is paused (the agents read it).
pub const PAUSE_REASON_KEY: &str = "reason";
/// The value `baton pause-node` writes without `--reason` (the agents repeat it).
const NO_REASON: &str = "no reason given";
/// How many times a write that lost a race (409) is tried again from a fresh read.
const CONFLICT_RETRIES: usize = 3;

/// Why an operator command failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The node does not exist (bad input).
    #[error("node/{0} not found")]
    NodeNotFound(String),
    /// An API request failed.
    #[error("{what}")]
    Api {
        /// What was being done.
        what: String,
        /// The failure.
        #[source]
        source: kube::Error,
    },
    /// The object kept changing under our writes.
    #[error("{0} kept changing under our writes; try again")]
    Conflict(String),
}

impl Error {
    /// The exit code: 2 for bad input (a node that does not exist, a request the API server
    /// refuses as invalid), 1 for the rest.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::NodeNotFound(_) => 2,
            Error::Api {
                source: kube::Error::Api(s),
                ..
            } if s.code == 400 || s.code == 422 => 2,
            _ => 1,
        }
    }
}

fn api(what: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
    let what = what.into();
    move |source| Error::Api { what, source }
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

// === Node annotations ===

/// A command on one node's annotations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeOp {
    /// `baton request`: set `baton.dev/reboot-requested`.
    Request,
    /// `baton cancel`: remove it.
    Cancel,
    /// `baton pause-node`: set `baton.dev/pause`.
    Pause,
    /// `baton resume-node`: remove it.
    Resume,
}

impl NodeOp {
    /// The annotation it sets or removes.
    pub fn annotation(self) -> &'static str {
        match self {
            NodeOp::Request | NodeOp::Cancel => node::REBOOT_REQUESTED,
            NodeOp::Pause | NodeOp::Resume => node::PAUSE,
        }
    }
}

/// What to write (the annotation's new value; `Value::Null` removes it), if anything, and the
/// line to print.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The annotation's new value, or `None` to leave the Node alone.
    pub write: Option<Value>,
    /// What was done, or found, in one line.
    pub message: String,
}

fn said(reason: &str) -> &str {
    if reason.trim().is_empty() {
        NO_REASON
    } else {
        reason
    }
}

/// The plan for `op` on node `name` with `annotations` now.
pub fn plan_node(
    op: NodeOp,
    name: &str,
    annotations: &BTreeMap<String, String>,
    reason: Option<&str>,
) -> Plan {
    let current = annotations.get(op.annotation()).map(String::as_str);
    let phase = node::read_state(annotations).map_or(Phase::Idle, |s| s.phase);
    let in_cycle = (phase != Phase::Idle).then_some(phase.as_str());
    let paused = annotations.get(node::PAUSE);
    let keep = |message: String| Plan {
        write: None,
        message,
    };
    match (op, current) {
        (NodeOp::Request, Some(was)) => keep(format!(
            "node/{name}: a reboot was already requested ({}); left as is",
            said(was)
        )),
        (NodeOp::Request, None) => {
            let value = reason.unwrap_or("").trim().to_owned();
            let mut message = format!("node/{name}: reboot requested ({})", said(&value));
            if let Some(p) = in_cycle {
                message.push_str(&format!("; it is already {p}"));
            } else if let Some(why) = paused {
                message.push_str(&format!(
                    "; the node is paused ({}: {}): it waits for `baton resume-node {name}`",
                    node::PAUSE,
                    said(why)
                ));
            }
            Plan {
                write: Some(Value::String(value)),
                message,
            }
        }
        (NodeOp::Cancel, None) => keep(format!(
            "node/{name}: no reboot request to withdraw; nothing to do"
        )),
        (NodeOp::Cancel, Some(was)) => {
            let mut message = format!("node/{name}: reboot request withdrawn (was: {})", said(was));
            match phase {
                Phase::Draining => message.push_str(
                    "; it is draining: its agent stops and uncordons unless its sentinel still asks for a reboot",
                ),
                Phase::Rebooting => {
                    message.push_str("; its reboot is already under way and finishes");
                }
                Phase::Idle => {}
            }
            Plan {
                write: Some(Value::Null),
                message,
            }
        }
        (NodeOp::Pause, Some(was)) => keep(format!(
            "node/{name}: already paused ({}); left as is",
            said(was)
        )),
        (NodeOp::Pause, None) => {
            let value = said(reason.unwrap_or("").trim()).to_owned();
            let mut message = format!("node/{name}: paused ({value}): no new cycle starts there");
            if let Some(p) = in_cycle {
                message.push_str(&format!("; the cycle under way ({p}) finishes"));
            }
            Plan {
                write: Some(Value::String(value)),
                message,
            }
        }
        (NodeOp::Resume, None) => keep(format!("node/{name}: not paused; nothing to do")),
        (NodeOp::Resume, Some(was)) => Plan {
            write: Some(Value::Null),
            message: format!("node/{name}: resumed (was paused: {})", said(was)),
        },
    }
}

/// Carries out `op` on Node `name`; returns the line to print.
pub async fn node_op(
    client: &Client,
    op: NodeOp,
    name: &str,
    reason: Option<&str>,
) -> Result<String, Error> {
    let nodes: Api<Node> = Api::all(client.clone());
    for _ in 0..CONFLICT_RETRIES {
        let n = nodes
            .get_opt(name)
            .await
            .map_err(api(format!("reading node/{name}")))?
            .ok_or_else(|| Error::NodeNotFound(name.to_owned()))?;
        let annotations = n.metadata.annotations.clone().unwrap_or_default();
        let plan = plan_node(op, name, &annotations, reason);
        let Some(value) = plan.write else {
            return Ok(plan.message);
        };
        // Written only onto the Node as read: the line says what was there before.
        let patch = json!({"metadata": {
            "resourceVersion": n.metadata.resource_version,
            "annotations": {op.annotation(): value},
        }});
        match nodes
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => return Ok(plan.message),
            Err(e) if is_conflict(&e) => {}
            Err(e) if is_not_found(&e) => return Err(Error::NodeNotFound(name.to_owned())),
            Err(e) => return Err(api(format!("writing node/{name}"))(e)),
        }
    }
    Err(Error::Conflict(format!("node/{name}")))
}

// === The cluster-wide pause ===

fn pause_text(configmap: &str, p: &PauseInfo, now: Timestamp) -> String {
    let since = p.since.map_or_else(String::new, |t| {
        format!(
            " since {} ({} ago)",
            crate::status::rfc3339(t),
            duration(now.as_second() - t.as_second())
        )
    });
    format!(
        "ConfigMap {configmap}{since}: {}",
        said(p.reason.as_deref().unwrap_or(""))
    )
}

/// `baton pause`: the line to print, and whether to create the ConfigMap.
pub fn plan_pause(
    configmap: &str,
    existing: Option<&PauseInfo>,
    reason: Option<&str>,
    now: Timestamp,
) -> (bool, String) {
    match existing {
        Some(p) => (
            false,
            format!(
                "already paused by {}; left as is",
                pause_text(configmap, p, now)
            ),
        ),
        None => (
            true,
            format!(
                "paused every node: created ConfigMap {configmap} ({}); cycles under way finish",
                said(reason.unwrap_or(""))
            ),
        ),
    }
}

/// `baton resume`: the line to print, and whether to delete the ConfigMap.
pub fn plan_resume(
    configmap: &str,
    existing: Option<&PauseInfo>,
    now: Timestamp,
) -> (bool, String) {
    match existing {
        Some(p) => (
            true,
            format!(
                "resumed every node: deleted {}",
                pause_text(configmap, p, now)
            ),
        ),
        None => (
            false,
            format!("not paused (no ConfigMap {configmap}); nothing to do"),
        ),
    }
}

/// The pause as recorded in a ConfigMap.
pub fn pause_info(cm: &ConfigMap) -> PauseInfo {
    PauseInfo {
        reason: cm
            .data
            .as_ref()
            .and_then(|d| d.get(PAUSE_REASON_KEY))
            .cloned(),
        since: cm.metadata.creation_timestamp.as_ref().map(|t| t.0),
    }
}

/// `baton pause`: creates ConfigMap `name` in `namespace` unless it exists.
pub async fn pause(
    client: &Client,
    namespace: &str,
    name: &str,
    reason: Option<&str>,
) -> Result<String, Error> {
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let shown = format!("{namespace}/{name}");
    let read = |cms: Api<ConfigMap>| async move {
        cms.get_opt(name)
            .await
            .map_err(api(format!("reading ConfigMap {namespace}/{name}")))
    };
    let existing = read(cms.clone()).await?;
    let (create, message) = plan_pause(
        &shown,
        existing.as_ref().map(pause_info).as_ref(),
        reason,
        Timestamp::now(),
    );
    if !create {
        return Ok(message);
    }
    let mut data = BTreeMap::new();
    if let Some(r) = reason.map(str::trim).filter(|r| !r.is_empty()) {
        data.insert(PAUSE_REASON_KEY.to_owned(), r.to_owned());
    }
    let cm = ConfigMap {
        metadata: kube::api::ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/name".to_owned(),
                "baton".to_owned(),
            )])),
            ..Default::default()
        },
        data: Some(data),
        ..Default::default()
    };
    match cms.create(&PostParams::default(), &cm).await {
        Ok(_) => Ok(message),
        // Someone paused first: say what is there now.
        Err(e) if is_conflict(&e) => {
            let now = read(cms).await?;
            Ok(plan_pause(
                &shown,
                now.as_ref().map(pause_info).as_ref(),
                reason,
                Timestamp::now(),
            )
            .1)
        }
        Err(e) => Err(api(format!("creating ConfigMap {shown}"))(e)),
    }
}

/// `baton resume`: deletes ConfigMap `name` in `namespace` if it exists (the one read: its
/// uid is a precondition).
pub async fn resume(client: &Client, namespace: &str, name: &str) -> Result<String, Error> {
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let shown = format!("{namespace}/{name}");
    for _ in 0..CONFLICT_RETRIES {
        let existing = cms
            .get_opt(name)
            .await
            .map_err(api(format!("reading ConfigMap {shown}")))?;
        let (delete, message) = plan_resume(
            &shown,
            existing.as_ref().map(pause_info).as_ref(),
            Timestamp::now(),
        );
        let Some(cm) = existing.filter(|_| delete) else {
            return Ok(message);
        };
        let dp = DeleteParams {
            preconditions: Some(Preconditions {
                uid: cm.metadata.uid.clone(),
                resource_version: None,
            }),
            ..Default::default()
        };
        match cms.delete(name, &dp).await {
            Ok(_) => return Ok(message),
            Err(e) if is_conflict(&e) || is_not_found(&e) => {}
            Err(e) => return Err(api(format!("deleting ConfigMap {shown}"))(e)),
        }
    }
    Err(Error::Conflict(format!("ConfigMap {shown}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn request_writes_the_reason_or_says_what_was_there() {
        let p = plan_node(NodeOp::Request, "n1", &ann(&[]), Some("kernel 6.12"));
        assert_eq!(p.write, Some(Value::String("kernel 6.12".into())));
        assert_eq!(p.message, "node/n1: reboot requested (kernel 6.12)");
        // No reason: an empty value, which the agent reads as "requested by annotation".
        let p = plan_node(NodeOp::Request, "n1", &ann(&[]), None);
        assert_eq!(p.write, Some(Value::String(String::new())));
        assert!(p.message.contains("no reason given"), "{}", p.message);
        let p = plan_node(
            NodeOp::Request,
            "n1",
            &ann(&[(node::REBOOT_REQUESTED, "old")]),
            Some("new"),
        );
        assert_eq!(p.write, None);
        assert_eq!(
            p.message,
            "node/n1: a reboot was already requested (old); left as is"
        );
        let p = plan_node(
            NodeOp::Request,
            "n1",
            &ann(&[(node::PAUSE, "disk")]),
            Some("x"),
        );
        assert!(
            p.message.contains("paused (baton.dev/pause: disk)")
                && p.message.contains("baton resume-node n1"),
            "{}",
            p.message
        );
    }

    #[test]
    fn cancel_removes_the_request_and_says_what_the_agent_does_next() {
        let none = plan_node(NodeOp::Cancel, "n1", &ann(&[]), None);
        assert_eq!(none.write, None);
        assert!(none.message.contains("nothing to do"));
        let draining = ann(&[
            (node::REBOOT_REQUESTED, "kernel"),
            (node::PHASE, "draining"),
        ]);
        let p = plan_node(NodeOp::Cancel, "n1", &draining, None);
        assert_eq!(p.write, Some(Value::Null));
        assert!(
            p.message
                .starts_with("node/n1: reboot request withdrawn (was: kernel)")
                && p.message.contains("stops and uncordons"),
            "{}",
            p.message
        );
        let rebooting = ann(&[
            (node::REBOOT_REQUESTED, ""),
            (node::PHASE, "rebooting"),
            (node::BOOT_ID_BEFORE, "b"),
        ]);
        let p = plan_node(NodeOp::Cancel, "n1", &rebooting, None);
        assert!(
            p.message.contains("(was: no reason given)") && p.message.contains("finishes"),
            "{}",
            p.message
        );
    }

    #[test]
    fn pause_and_resume_of_a_node_are_idempotent_and_say_so() {
        let p = plan_node(NodeOp::Pause, "n1", &ann(&[]), None);
        assert_eq!(p.write, Some(Value::String(NO_REASON.into())));
        let p = plan_node(
            NodeOp::Pause,
            "n1",
            &ann(&[(node::PHASE, "draining")]),
            Some("disk"),
        );
        assert_eq!(
            p.message,
            "node/n1: paused (disk): no new cycle starts there; the cycle under way (draining) finishes"
        );
        let p = plan_node(
            NodeOp::Pause,
            "n1",
            &ann(&[(node::PAUSE, "disk")]),
            Some("x"),
        );
        assert_eq!(
            (p.write, p.message.as_str()),
            (None, "node/n1: already paused (disk); left as is")
        );
        let p = plan_node(NodeOp::Resume, "n1", &ann(&[(node::PAUSE, "disk")]), None);
        assert_eq!(
            (p.write, p.message.as_str()),
            (Some(Value::Null), "node/n1: resumed (was paused: disk)")
        );
        let p = plan_node(NodeOp::Resume, "n1", &ann(&[]), None);
        assert_eq!(p.write, None);
    }

    #[test]
    fn the_cluster_pause_says_since_when_and_why() {
        let now: Timestamp = "2026-11-29T10:00:00Z".parse().unwrap();
        let p = PauseInfo {
            reason: Some("change freeze".into()),
            since: Some("2026-11-29T09:48:00Z".parse().unwrap()),
        };
        let (create, line) = plan_pause("baton-system/baton-pause", Some(&p), Some("x"), now);
        assert!(!create);
        assert_eq!(
            line,
            "already paused by ConfigMap baton-system/baton-pause since 2026-11-29T09:48:00Z (12m0s ago): change freeze; left as is"
        );
        let (create, line) = plan_pause("ns/p", None, None, now);
        assert!(create);
        assert_eq!(
            line,
            "paused every node: created ConfigMap ns/p (no reason given); cycles under way finish"
        );
        let (delete, line) = plan_resume("ns/p", Some(&p), now);
        assert!(delete && line.starts_with("resumed every node: deleted ConfigMap ns/p since"));
        let (delete, line) = plan_resume("ns/p", None, now);
        assert!(!delete && line.contains("nothing to do"), "{line}");
    }

    #[test]
    fn exit_codes_tell_bad_input_from_api_failures() {
        let status = |code| {
            kube::Error::Api(
                kube::core::Status::failure("x", "y")
                    .with_code(code)
                    .boxed(),
            )
        };
        assert_eq!(Error::NodeNotFound("n".into()).exit_code(), 2);
        let e = |code| Error::Api {
            what: "w".into(),
            source: status(code),
        };
        assert_eq!(e(400).exit_code(), 2);
        assert_eq!(e(403).exit_code(), 1);
        assert_eq!(e(500).exit_code(), 1);
        assert_eq!(Error::Conflict("x".into()).exit_code(), 1);
    }
}
