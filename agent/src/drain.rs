//! Draining this node: which pods to evict and why (pure), and evicting them through the
//! Eviction API so PodDisruptionBudgets hold, under one deadline, then waiting until they are
//! really gone.

use std::collections::HashSet;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, EvictParams, ListParams};
use tokio::time::Instant;

use crate::metrics::Metrics;

/// What to do with one pod of the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Evict it.
    Evict,
    /// Already terminating: only wait for it to go.
    WaitOnly,
    /// Leave it: it belongs to a DaemonSet (it would come straight back).
    SkipDaemonSet,
    /// Leave it: a mirror of a static pod, which the API cannot evict.
    SkipMirror,
}

/// The annotation that marks a mirror (static) pod.
const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";

/// Decides what to do with `pod`.
pub fn classify(pod: &Pod) -> Action {
    let meta = &pod.metadata;
    if meta
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(MIRROR_ANNOTATION))
    {
        return Action::SkipMirror;
    }
    let daemonset = meta.owner_references.iter().flatten().any(|o| {
        o.controller == Some(true) && o.kind == "DaemonSet" && o.api_version.starts_with("apps/")
    });
    if daemonset {
        return Action::SkipDaemonSet;
    }
    if meta.deletion_timestamp.is_some() {
        return Action::WaitOnly;
    }
    Action::Evict
}

/// Why a drain did not finish.
#[derive(Debug, thiserror::Error)]
pub enum DrainError {
    /// The deadline passed with pods left.
    #[error("drain timed out after {timeout:?} with {left} pod(s) left (last error: {last_error})")]
    Timeout {
        /// The drain timeout.
        timeout: Duration,
        /// Pods not yet gone.
        left: usize,
        /// The last eviction error seen.
        last_error: String,
    },
    /// Listing the node's pods failed.
    #[error("cannot list the node's pods")]
    List(#[source] kube::Error),
}

/// What a finished drain did.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Pods evicted.
    pub evicted: usize,
    /// Pods left alone (DaemonSet, mirror).
    pub skipped: usize,
}

/// Evictions in flight at once: enough to drain a busy node quickly, few enough that the API
/// server's priority-and-fairness limits are never the bottleneck.
const PARALLEL_EVICTIONS: usize = 8;
/// Wait between retries of a pod whose eviction a PDB refused (429): kubectl waits 5 s; the
/// blocking PDB only changes when a replacement becomes ready, which takes seconds.
const PDB_RETRY: Duration = Duration::from_secs(2);
/// First wait after any other eviction error; doubles up to [`MAX_ERROR_BACKOFF`].
const ERROR_BACKOFF: Duration = Duration::from_millis(500);
/// Longest wait between retries after errors.
const MAX_ERROR_BACKOFF: Duration = Duration::from_secs(10);
/// How often the node's pods are listed while waiting for evicted pods to be gone.
const GONE_POLL: Duration = Duration::from_secs(1);

fn node_pods(node: &str) -> ListParams {
    ListParams::default().fields(&format!("spec.nodeName={node}"))
}

/// Drains node `node` before `timeout` passes.
pub async fn drain(
    pods: &Api<Pod>,
    node: &str,
    timeout: Duration,
    metrics: &Metrics,
) -> Result<Report, DrainError> {
    let deadline = Instant::now() + timeout;
    let listed = pods
        .list(&node_pods(node))
        .await
        .map_err(DrainError::List)?;
    let mut report = Report::default();
    let mut to_evict = Vec::new();
    let mut waiting: HashSet<(String, String)> = HashSet::new();
    for pod in &listed.items {
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        match classify(pod) {
            Action::SkipDaemonSet | Action::SkipMirror => report.skipped += 1,
            Action::WaitOnly => {
                waiting.insert((ns, uid));
            }
            Action::Evict => {
                to_evict.push((ns.clone(), name));
                waiting.insert((ns, uid));
            }
        }
    }
    tracing::info!(
        node,
        evict = to_evict.len(),
        skipped = report.skipped,
        "draining"
    );

    let last_error = std::sync::Mutex::new(String::from("none"));
    let client = pods.clone().into_client();
    let evictions = futures::stream::iter(to_evict)
        .map(|(ns, name)| {
            let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
            let last_error = &last_error;
            async move { evict_until_done(&api, &ns, &name, metrics, last_error).await }
        })
        .buffer_unordered(PARALLEL_EVICTIONS)
        .fold(0usize, |n, evicted| async move { n + usize::from(evicted) });
    // One deadline for everything: when it passes, the stream is dropped and no eviction keeps
    // retrying in the background.
    let timed_out = |left: usize, last_error: &std::sync::Mutex<String>| DrainError::Timeout {
        timeout,
        left,
        last_error: last_error.lock().map(|e| e.clone()).unwrap_or_default(),
    };
    report.evicted = match tokio::time::timeout_at(deadline, evictions).await {
        Ok(n) => n,
        Err(_) => {
            let left = remaining(pods, node, &waiting)
                .await
                .unwrap_or(waiting.len());
            return Err(timed_out(left, &last_error));
        }
    };

    loop {
        let left = remaining(pods, node, &waiting)
            .await
            .map_err(DrainError::List)?;
        if left == 0 {
            return Ok(report);
        }
        if Instant::now() + GONE_POLL > deadline {
            return Err(timed_out(left, &last_error));
        }
        tokio::time::sleep(GONE_POLL).await;
    }
}

/// How many of `waiting` (namespace, UID) are still on the node. A pod with the same name but
/// a new UID is a replacement, so it counts as gone.
async fn remaining(
    pods: &Api<Pod>,
    node: &str,
    waiting: &HashSet<(String, String)>,
) -> Result<usize, kube::Error> {
    let listed = pods.list(&node_pods(node)).await?;
    Ok(listed
        .items
        .iter()
        .filter(|p| {
            let key = (
                p.metadata.namespace.clone().unwrap_or_default(),
                p.metadata.uid.clone().unwrap_or_default(),
            );
            waiting.contains(&key)
        })
        .count())
}

/// Evicts one pod, retrying 429 and transient errors until it succeeds or the pod is gone.
/// Returns whether this call evicted it. Cancelled by dropping.
async fn evict_until_done(
    api: &Api<Pod>,
    ns: &str,
    name: &str,
    metrics: &Metrics,
    last_error: &std::sync::Mutex<String>,
) -> bool {
    let mut backoff = ERROR_BACKOFF;
    loop {
        match api.evict(name, &EvictParams::default()).await {
            Ok(_) => {
                metrics.evictions.with_label_values(&["evicted"]).inc();
                tracing::info!(namespace = ns, pod = name, "evicted");
                return true;
            }
            Err(kube::Error::Api(s)) if s.code == 404 => {
                metrics.evictions.with_label_values(&["gone"]).inc();
                return false;
            }
            Err(kube::Error::Api(s)) if s.code == 429 => {
                metrics.evictions.with_label_values(&["pdb_blocked"]).inc();
                tracing::debug!(namespace = ns, pod = name, reason = %s.message, "eviction refused by a disruption budget");
                if let Ok(mut e) = last_error.lock() {
                    *e = format!("{ns}/{name}: {}", s.message);
                }
                tokio::time::sleep(PDB_RETRY).await;
            }
            Err(e) => {
                metrics.evictions.with_label_values(&["error"]).inc();
                tracing::warn!(namespace = ns, pod = name, error = %e, "eviction failed; retrying");
                if let Ok(mut le) = last_error.lock() {
                    *le = format!("{ns}/{name}: {e}");
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_ERROR_BACKOFF);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(v: serde_json::Value) -> Pod {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn pods_are_classified_like_kubectl_drain_does_by_default() {
        let cases = [
            (json!({"metadata": {"name": "plain"}}), Action::Evict),
            (
                json!({"metadata": {"name": "rs", "ownerReferences": [{
                    "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "x", "uid": "u",
                    "controller": true}]}}),
                Action::Evict,
            ),
            (
                json!({"metadata": {"name": "ds", "ownerReferences": [{
                    "apiVersion": "apps/v1", "kind": "DaemonSet", "name": "x", "uid": "u",
                    "controller": true}]}}),
                Action::SkipDaemonSet,
            ),
            (
                // Owned by a DaemonSet but not as its controller: an ordinary pod.
                json!({"metadata": {"name": "ds-ref", "ownerReferences": [{
                    "apiVersion": "apps/v1", "kind": "DaemonSet", "name": "x", "uid": "u"}]}}),
                Action::Evict,
            ),
            (
                json!({"metadata": {"name": "static", "annotations": {
                    "kubernetes.io/config.mirror": "abc"}}}),
                Action::SkipMirror,
            ),
            (
                json!({"metadata": {"name": "going", "deletionTimestamp": "2026-01-01T00:00:00Z"}}),
                Action::WaitOnly,
            ),
        ];
        for (p, want) in cases {
            let p = pod(p);
            assert_eq!(classify(&p), want, "{:?}", p.metadata.name);
        }
    }
}
