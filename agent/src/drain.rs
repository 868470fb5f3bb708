//! Draining this node with `kubectl drain`'s semantics: which pods to evict, delete, wait for or
//! leave alone, and why (pure: [`decide`], [`plan`]); then evicting them through the Eviction API
//! so PodDisruptionBudgets hold, under one deadline with real cancellation, retrying a pod that a
//! PDB refused as soon as that PDB allows a disruption again (a watch, not a fixed sleep), and
//! waiting on a watch until the pods are really gone.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{Api, DeleteParams, ListParams, PostParams, Preconditions};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Client, Resource};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::metrics::Metrics;

/// What to do when `--drain-timeout` passes with pods left.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TimeoutAction {
    /// Stop: the drain failed (uncordon, release, back off). PDBs are never bypassed.
    Abort,
    /// Delete the pods left, bypassing their PDBs, then wait for them to go.
    Delete,
}

/// How to drain (the `--drain-*` flags).
#[derive(Debug, Clone)]
pub struct Options {
    /// Leave DaemonSet pods alone (false: their presence refuses the drain).
    pub ignore_daemonsets: bool,
    /// Allow evicting pods with emptyDir volumes (their data is lost).
    pub delete_emptydir_data: bool,
    /// Allow evicting pods no controller will recreate, and orphaned DaemonSet pods.
    pub force: bool,
    /// Only pods matching this label selector are drained.
    pub pod_selector: Option<String>,
    /// Grace period for evicted and deleted pods; `None` keeps each pod's own.
    pub grace_period: Option<u32>,
    /// Pods terminating for longer than this are not waited for.
    pub skip_wait_for_delete_timeout: Option<Duration>,
    /// Delete pods instead of evicting them (bypasses PDBs).
    pub disable_eviction: bool,
    /// The drain's one deadline.
    pub timeout: Duration,
    /// What to do when it passes.
    pub timeout_action: TimeoutAction,
    /// Evictions in flight at once.
    pub parallelism: usize,
}

impl Options {
    /// Whether a pod terminating since `since` has done so for longer than
    /// `--skip-wait-for-delete-timeout` (and is no longer waited for).
    pub fn deleted_long_ago(&self, since: SystemTime, now: SystemTime) -> bool {
        self.skip_wait_for_delete_timeout
            .is_some_and(|skip| now.duration_since(since).is_ok_and(|d| d > skip))
    }
}

/// A pod, reduced to what the decision needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// UID (a replacement with the same name has another).
    pub uid: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// The controller, as the pod's controller ownerReference names it.
    pub controller: Option<Controller>,
    /// A mirror of a static pod.
    pub mirror: bool,
    /// Succeeded or Failed.
    pub finished: bool,
    /// Has an emptyDir volume.
    pub emptydir: bool,
    /// When deletion was requested.
    pub deleting_since: Option<SystemTime>,
}

/// A pod's controller: the ownerReference with `controller: true`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Controller {
    /// Its `apiVersion` (e.g. `apps/v1`).
    pub api_version: String,
    /// Its kind.
    pub kind: String,
    /// Its name.
    pub name: String,
}

/// The annotation that marks a mirror (static) pod.
const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";

impl PodInfo {
    /// Extracts the decision's inputs from a Pod.
    pub fn from_pod(pod: &Pod) -> Self {
        let m = &pod.metadata;
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        Self {
            namespace: m.namespace.clone().unwrap_or_default(),
            name: m.name.clone().unwrap_or_default(),
            uid: m.uid.clone().unwrap_or_default(),
            labels: m.labels.clone().unwrap_or_default(),
            controller: m
                .owner_references
                .iter()
                .flatten()
                .find(|o| o.controller == Some(true))
                .map(|o| Controller {
                    api_version: o.api_version.clone(),
                    kind: o.kind.clone(),
                    name: o.name.clone(),
                }),
            mirror: m
                .annotations
                .as_ref()
                .is_some_and(|a| a.contains_key(MIRROR_ANNOTATION)),
            finished: matches!(phase, Some("Succeeded" | "Failed")),
            emptydir: pod
                .spec
                .as_ref()
                .is_some_and(|s| s.volumes.iter().flatten().any(|v| v.empty_dir.is_some())),
            deleting_since: m.deletion_timestamp.as_ref().map(|t| SystemTime::from(t.0)),
        }
    }

    fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// The `apps/v1` DaemonSet that controls the pod, if one does. A DaemonSet of another API
    /// (e.g. OpenKruise's `apps.kruise.io` Advanced DaemonSet) does not count: to kubectl drain
    /// (`isControllerRefDaemonSet`) its pods are ordinary managed pods, evicted like the rest.
    pub fn daemonset(&self) -> Option<&str> {
        match &self.controller {
            Some(c)
                if c.kind == <DaemonSet as k8s_openapi::Resource>::KIND
                    && c.api_version == <DaemonSet as k8s_openapi::Resource>::API_VERSION =>
            {
                Some(&c.name)
            }
            _ => None,
        }
    }
}

/// What the drain does with one pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Evict it (PDBs apply).
    Evict,
    /// Delete it: it has finished (PDBs do not apply), or `--disable-eviction`.
    Delete,
    /// Already terminating: only wait for it to go.
    WaitOnly,
    /// Leave it: managed by a DaemonSet.
    SkipDaemonSet,
    /// Leave it: a mirror of a static pod, which the API cannot evict.
    SkipMirror,
    /// Leave it: terminating for longer than `--skip-wait-for-delete-timeout`.
    SkipDeletedLongAgo,
}

/// Why a pod refuses the drain (the drain stops before cordoning, naming the pods).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A DaemonSet pod while `--drain-ignore-daemonsets=false`.
    DaemonSet,
    /// Its DaemonSet no longer exists and `--force` is not set.
    OrphanedDaemonSet,
    /// Uses emptyDir and `--delete-emptydir-data` is not set.
    EmptyDir,
    /// No controller would recreate it and `--force` is not set.
    Unmanaged,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Refusal::DaemonSet => "managed by a DaemonSet (--drain-ignore-daemonsets=false)",
            Refusal::OrphanedDaemonSet => "its DaemonSet is gone (allow with --force)",
            Refusal::EmptyDir => "uses emptyDir (allow with --delete-emptydir-data)",
            Refusal::Unmanaged => "not managed by a controller (allow with --force)",
        })
    }
}

/// Decides what to do with one pod, in kubectl drain's order of checks.
pub fn decide(
    p: &PodInfo,
    daemonset_exists: bool,
    o: &Options,
    now: SystemTime,
) -> Result<Disposition, Refusal> {
    if p.deleting_since
        .is_some_and(|since| o.deleted_long_ago(since, now))
    {
        return Ok(Disposition::SkipDeletedLongAgo);
    }
    if p.mirror {
        return Ok(Disposition::SkipMirror);
    }
    let mut orphan = false;
    if p.daemonset().is_some() {
        if p.finished {
            return Ok(Disposition::Delete);
        }
        if daemonset_exists {
            return if o.ignore_daemonsets {
                Ok(Disposition::SkipDaemonSet)
            } else {
                Err(Refusal::DaemonSet)
            };
        }
        if !o.force {
            return Err(Refusal::OrphanedDaemonSet);
        }
        orphan = true;
    }
    if p.emptydir && !p.finished && !o.delete_emptydir_data {
        return Err(Refusal::EmptyDir);
    }
    if p.controller.is_none() && !orphan && !p.finished && !o.force {
        return Err(Refusal::Unmanaged);
    }
    Ok(if p.finished {
        Disposition::Delete
    } else if p.deleting_since.is_some() {
        Disposition::WaitOnly
    } else if o.disable_eviction {
        Disposition::Delete
    } else {
        Disposition::Evict
    })
}

/// What a drain will do with every pod on the node.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// Pods and what happens to them.
    pub pods: Vec<(PodInfo, Disposition)>,
    /// Pods that refuse the drain, and why.
    pub refused: Vec<(PodInfo, Refusal)>,
}

impl Plan {
    /// One line naming every refusing pod, or `None` when nothing refuses.
    pub fn refusal(&self) -> Option<String> {
        if self.refused.is_empty() {
            return None;
        }
        let list: Vec<String> = self
            .refused
            .iter()
            .map(|(p, r)| format!("{} ({r})", p.key()))
            .collect();
        Some(format!(
            "{} pod(s) refuse the drain: {}",
            list.len(),
            list.join(", ")
        ))
    }

    /// Pods the drain waits for (evicted, deleted or already terminating).
    pub fn targets(&self) -> impl Iterator<Item = &(PodInfo, Disposition)> {
        self.pods.iter().filter(|(_, d)| {
            matches!(
                d,
                Disposition::Evict | Disposition::Delete | Disposition::WaitOnly
            )
        })
    }
}

/// Plans the drain of `pods`; `daemonset_exists(namespace, name)` says whether a DaemonSet exists.
pub fn plan(
    pods: &[PodInfo],
    daemonset_exists: impl Fn(&str, &str) -> bool,
    o: &Options,
    now: SystemTime,
) -> Plan {
    let mut plan = Plan::default();
    for p in pods {
        let exists = p
            .daemonset()
            .is_some_and(|ds| daemonset_exists(&p.namespace, ds));
        match decide(p, exists, o, now) {
            Ok(d) => plan.pods.push((p.clone(), d)),
            Err(r) => plan.refused.push((p.clone(), r)),
        }
    }
    plan
}

/// Whether a label selector matches `labels` (a PDB's selector: empty matches every pod).
pub fn selector_matches(sel: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    // An operator kube does not know (the API server validates them) matches nothing.
    kube::core::Selector::try_from(sel.clone())
        .is_ok_and(|s| kube::core::SelectorExt::matches(&s, labels))
}

/// The PDBs that allow no disruption right now, with a pod of `pods` each would block: the
/// pre-flight check before cordoning (a drain started now would only wait on them).
pub fn blocked_by(pods: &[PodInfo], pdbs: &[PdbView]) -> Vec<String> {
    let mut out = Vec::new();
    for pdb in pdbs.iter().filter(|p| p.allowed <= 0) {
        let covered = pods.iter().find(|pod| pdb.covers(pod));
        if let Some(pod) = covered {
            out.push(format!(
                "{}/{} (covers {})",
                pdb.namespace,
                pdb.name,
                pod.key()
            ));
        }
    }
    out.sort();
    out
}

/// Why a drain did not finish.
#[derive(Debug, thiserror::Error)]
pub enum DrainError {
    /// Pods refuse the drain (nothing was evicted).
    #[error("{0}")]
    Refused(String),
    /// The deadline passed with pods left.
    #[error("drain timed out after {} with {left} pod(s) left (last error: {last_error}){}",
        crate::node::human(*timeout),
        if failed.is_empty() { String::new() } else { format!("; and {}", failures(failed)) })]
    Timeout {
        /// The drain timeout.
        timeout: Duration,
        /// Pods not yet gone.
        left: usize,
        /// The last eviction error seen.
        last_error: String,
        /// Pods that had failed before the deadline.
        failed: Vec<PodFailure>,
    },
    /// Pods could not be removed; every other pod was, and is gone.
    #[error("{}", failures(.0))]
    Failed(Vec<PodFailure>),
    /// A request failed.
    #[error("cannot {what}")]
    Api {
        /// What was attempted.
        what: &'static str,
        /// Why.
        #[source]
        source: kube::Error,
    },
    /// A watch the drain depends on stopped.
    #[error("the {0} watch stopped")]
    WatchStopped(&'static str),
}

/// One pod the drain could not remove, and why. The drain goes on with the other pods and
/// fails once they are gone, as `kubectl drain` does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodFailure {
    /// namespace/name.
    pub pod: String,
    /// Why.
    pub why: String,
}

/// One line naming every failed pod and why.
fn failures(failed: &[PodFailure]) -> String {
    let list: Vec<String> = failed
        .iter()
        .map(|f| format!("{}: {}", f.pod, f.why))
        .collect();
    format!(
        "{} pod(s) could not be drained: {}",
        failed.len(),
        list.join("; ")
    )
}

/// What to do after an eviction request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AfterError {
    /// 404, or 409 (the UID precondition failed: replaced): the pod is gone.
    Gone,
    /// 429: a PDB refused (or the API server sheds load): retry when a budget allows.
    WaitForBudget,
    /// 403 because the namespace is terminating: delete the pod instead.
    Delete,
    /// 500 "more than one PodDisruptionBudget": the Eviction API never evicts this pod.
    MultiplePdbs,
    /// Any other refusal (4xx): this pod fails; the others go on.
    Fail,
    /// A server error (5xx), a 408, or no answer: retry with backoff until the deadline.
    Retry,
}

/// Classifies an eviction error like `kubectl drain`, except that errors which may pass (a
/// server error, no answer) are retried until the deadline instead of failing the pod at once.
fn after_eviction_error(e: &kube::Error) -> AfterError {
    let kube::Error::Api(s) = e else {
        return AfterError::Retry;
    };
    match s.code {
        404 | 409 => AfterError::Gone,
        429 => AfterError::WaitForBudget,
        403 if namespace_terminating(s) => AfterError::Delete,
        500 if s.message.contains("more than one PodDisruptionBudget") => AfterError::MultiplePdbs,
        408 => AfterError::Retry,
        400..=499 => AfterError::Fail,
        _ => AfterError::Retry,
    }
}

/// What a finished drain did.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Pods evicted.
    pub evicted: usize,
    /// Pods deleted (finished, `--disable-eviction`, terminating namespace, or escalation).
    pub deleted: usize,
    /// Pods left alone (DaemonSet, mirror, long-terminating).
    pub skipped: usize,
    /// Pods deleted after the deadline by `--drain-timeout-action=delete`.
    pub escalated: usize,
}

/// Progress reported while draining.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    /// Pods not gone yet.
    pub pending: usize,
    /// The last error (e.g. a PDB refusal), if any.
    pub last_error: Option<String>,
}

/// The shortest time between two eviction attempts of one pod: a PDB watch event can arrive
/// while the disruption controller is still catching up, and we never spin.
const MIN_RETRY_SPACING: Duration = Duration::from_millis(250);
/// Retry a PDB-refused pod after this even if no PDB event arrived (kubectl's fixed interval).
const PDB_FALLBACK_RETRY: Duration = Duration::from_secs(5);
/// First wait after any other eviction error; doubles up to [`MAX_ERROR_BACKOFF`].
const ERROR_BACKOFF: Duration = Duration::from_millis(500);
/// Longest wait between retries after errors.
const MAX_ERROR_BACKOFF: Duration = Duration::from_secs(10);
/// After an escalation to delete, how long to wait for the deleted pods to go.
const ESCALATION_WAIT: Duration = Duration::from_secs(120);

/// Aborts a spawned task when dropped, so no watch outlives its drain.
pub(crate) struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> AbortOnDrop<T> {
    /// Whether the task has ended (a mirror's never does by itself).
    pub(crate) fn is_finished(&self) -> bool {
        self.0.is_finished()
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Mirrors a watched collection into a map, keyed by `key`, for as long as the task lives
/// (`None` until the first list is in).
pub(crate) fn mirror<K, V>(
    api: Api<K>,
    config: watcher::Config,
    key: fn(&K) -> String,
    value: fn(&K) -> V,
) -> (watch::Receiver<Option<HashMap<String, V>>>, AbortOnDrop<()>)
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    let (tx, rx) = watch::channel(None);
    let task = tokio::spawn(async move {
        let mut stream = std::pin::pin!(watcher::watcher(api, config).default_backoff());
        let mut buffer: HashMap<String, V> = HashMap::new();
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(Event::Init) => buffer.clear(),
                Ok(Event::InitApply(o)) => {
                    buffer.insert(key(&o), value(&o));
                }
                Ok(Event::InitDone) => {
                    let _ = tx.send(Some(buffer.clone()));
                }
                Ok(Event::Apply(o)) => {
                    tx.send_modify(|m| {
                        if let Some(m) = m {
                            m.insert(key(&o), value(&o));
                        }
                    });
                }
                Ok(Event::Delete(o)) => {
                    tx.send_modify(|m| {
                        if let Some(m) = m {
                            m.remove(&key(&o));
                        }
                    });
                }
                Err(e) => tracing::debug!(error = %e, "drain watch error; retrying"),
            }
        }
    });
    (rx, AbortOnDrop(task))
}

/// A PDB as the drain sees it.
#[derive(Debug, Clone)]
pub struct PdbView {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Its pod selector.
    pub selector: Option<LabelSelector>,
    /// `status.disruptionsAllowed`.
    pub allowed: i32,
}

impl PdbView {
    /// Whether this budget covers `pod` (same namespace, selector matches).
    pub fn covers(&self, pod: &PodInfo) -> bool {
        self.namespace == pod.namespace
            && self
                .selector
                .as_ref()
                .is_some_and(|s| selector_matches(s, &pod.labels))
    }
}

fn pdb_key(p: &PodDisruptionBudget) -> String {
    format!(
        "{}/{}",
        p.metadata.namespace.as_deref().unwrap_or_default(),
        p.metadata.name.as_deref().unwrap_or_default()
    )
}

fn pdb_view(p: &PodDisruptionBudget) -> PdbView {
    PdbView {
        namespace: p.metadata.namespace.clone().unwrap_or_default(),
        name: p.metadata.name.clone().unwrap_or_default(),
        selector: p.spec.as_ref().and_then(|s| s.selector.clone()),
        allowed: p
            .status
            .as_ref()
            .and_then(|s| s.disruptions_allowed)
            .unwrap_or(0),
    }
}

fn pod_uid(p: &Pod) -> String {
    p.metadata.uid.clone().unwrap_or_default()
}

fn pod_deleting_since(p: &Pod) -> Option<SystemTime> {
    p.metadata
        .deletion_timestamp
        .as_ref()
        .map(|t| SystemTime::from(t.0))
}

fn covering(pdbs: &HashMap<String, PdbView>, pod: &PodInfo) -> Vec<PdbView> {
    pdbs.values().filter(|p| p.covers(pod)).cloned().collect()
}

/// ` (PodDisruptionBudget ns/a, ns/b)`, naming the budgets behind a refusal (the API's 429
/// message does not), or nothing when none is known.
fn budgets_named(budgets: &[PdbView]) -> String {
    let mut names: Vec<String> = budgets
        .iter()
        .map(|p| format!("{}/{}", p.namespace, p.name))
        .collect();
    if names.is_empty() {
        return String::new();
    }
    names.sort();
    format!(" (PodDisruptionBudget {})", names.join(", "))
}

/// Drains `node`. Everything the drain starts is cancelled when the returned future is dropped.
#[derive(Clone)]
pub struct Drainer {
    client: Client,
    watch_client: Client,
    node: String,
    options: Options,
    metrics: Metrics,
}

impl std::fmt::Debug for Drainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Drainer")
            .field("node", &self.node)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl Drainer {
    /// A drainer for `node`: requests go through `client`, watches through `watch_client`
    /// (which has no read timeout: a watch may stay quiet for minutes).
    pub fn new(
        client: Client,
        watch_client: Client,
        node: &str,
        options: Options,
        metrics: Metrics,
    ) -> Self {
        Self {
            client,
            watch_client,
            node: node.to_owned(),
            options,
            metrics,
        }
    }

    /// Lists the node's pods and plans the drain (used before cordoning, too).
    pub async fn plan(&self) -> Result<Plan, DrainError> {
        let mut lp = ListParams::default().fields(&format!("spec.nodeName={}", self.node));
        if let Some(sel) = &self.options.pod_selector {
            lp = lp.labels(sel);
        }
        let pods: Vec<PodInfo> = Api::<Pod>::all(self.client.clone())
            .list(&lp)
            .await
            .map_err(|source| DrainError::Api {
                what: "list the node's pods",
                source,
            })?
            .items
            .iter()
            .map(PodInfo::from_pod)
            .collect();
        let mut daemonsets = HashSet::new();
        for p in &pods {
            if let Some(ds) = p.daemonset()
                && !p.finished
            {
                let api: Api<DaemonSet> = Api::namespaced(self.client.clone(), &p.namespace);
                let found = api.get_opt(ds).await.map_err(|source| DrainError::Api {
                    what: "check a pod's DaemonSet",
                    source,
                })?;
                if found.is_some() {
                    daemonsets.insert((p.namespace.clone(), ds.to_owned()));
                }
            }
        }
        Ok(plan(
            &pods,
            |ns, ds| daemonsets.contains(&(ns.to_owned(), ds.to_owned())),
            &self.options,
            SystemTime::now(),
        ))
    }

    /// Pre-flight: the PDBs that currently allow no disruption of a pod this drain would evict.
    pub async fn blocking_pdbs(&self, plan: &Plan) -> Result<Vec<String>, DrainError> {
        let evict: Vec<PodInfo> = plan
            .pods
            .iter()
            .filter(|(_, d)| *d == Disposition::Evict)
            .map(|(p, _)| p.clone())
            .collect();
        if evict.is_empty() {
            return Ok(Vec::new());
        }
        let pdbs: Vec<PdbView> = Api::<PodDisruptionBudget>::all(self.client.clone())
            .list(&ListParams::default())
            .await
            .map_err(|source| DrainError::Api {
                what: "list PodDisruptionBudgets",
                source,
            })?
            .items
            .iter()
            .map(pdb_view)
            .collect();
        Ok(blocked_by(&evict, &pdbs))
    }

    /// Drains the node, reporting progress on `progress`.
    pub async fn drain(&self, progress: &watch::Sender<Progress>) -> Result<Report, DrainError> {
        let started = Instant::now();
        let deadline = started + self.options.timeout;
        // Watch first, so no deletion is missed between the plan and the wait.
        let (pods_rx, _pods_task) = mirror(
            Api::<Pod>::all(self.watch_client.clone()),
            watcher::Config::default().fields(&format!("spec.nodeName={}", self.node)),
            pod_uid,
            pod_deleting_since,
        );
        let (pdbs_rx, _pdbs_task) = mirror(
            Api::<PodDisruptionBudget>::all(self.watch_client.clone()),
            watcher::Config::default(),
            pdb_key,
            pdb_view,
        );
        let plan = self.plan().await?;
        if let Some(why) = plan.refusal() {
            return Err(DrainError::Refused(why));
        }
        let targets: Vec<(PodInfo, Disposition)> = plan.targets().cloned().collect();
        let mut report = Report {
            skipped: plan.pods.len() - targets.len(),
            ..Report::default()
        };
        tracing::info!(
            node = %self.node,
            pods = targets.len(),
            skipped = report.skipped,
            "draining"
        );
        let pending = |left: usize| progress.send_modify(|p| p.pending = left);
        pending(targets.len());

        // A pod that fails (e.g. under two PDBs) fails alone: the others are still evicted and
        // waited for, and the drain fails at the end naming each failed pod.
        let mut failed: Vec<PodFailure> = Vec::new();
        let failed_uids = |failed: &[PodFailure]| -> HashSet<String> {
            targets
                .iter()
                .filter(|(p, _)| failed.iter().any(|f| f.pod == p.key()))
                .map(|(p, _)| p.uid.clone())
                .collect()
        };
        let work = async {
            let mut outcomes = futures::stream::iter(targets.iter().cloned())
                .map(|(pod, d)| {
                    let pdbs = pdbs_rx.clone();
                    async move { (self.remove(&pod, d, pdbs, progress).await, pod) }
                })
                .buffer_unordered(self.options.parallelism.max(1));
            while let Some((outcome, pod)) = outcomes.next().await {
                match outcome {
                    Ok(Removed::Evicted) => report.evicted += 1,
                    Ok(Removed::Deleted) => report.deleted += 1,
                    Ok(Removed::Nothing) => {}
                    Err(why) => {
                        tracing::warn!(namespace = %pod.namespace, pod = %pod.name, %why, "cannot remove the pod; draining the others");
                        failed.push(PodFailure {
                            pod: pod.key(),
                            why,
                        });
                    }
                }
            }
            self.wait_gone(&targets, &failed_uids(&failed), pods_rx.clone(), &pending)
                .await
        };
        // One deadline for everything: when it passes, the work is dropped, and with it every
        // eviction still retrying.
        let timed_out = tokio::time::timeout_at(deadline, work).await;
        failed.sort_by(|a, b| a.pod.cmp(&b.pod));
        let failed_uids = failed_uids(&failed);
        match timed_out {
            Ok(Ok(())) if failed.is_empty() => Ok(report),
            Ok(Ok(())) => Err(DrainError::Failed(failed)),
            Ok(Err(e)) => Err(e),
            Err(_) => {
                let left = self.left(&targets, &failed_uids, &pods_rx.borrow());
                let last = progress
                    .borrow()
                    .last_error
                    .clone()
                    .unwrap_or_else(|| "none".into());
                if self.options.timeout_action == TimeoutAction::Abort {
                    return Err(DrainError::Timeout {
                        timeout: self.options.timeout,
                        left: left.len(),
                        last_error: last,
                        failed,
                    });
                }
                // The pods that failed are not escalated: the drain fails for them anyway.
                tracing::warn!(
                    left = left.len(),
                    "drain timed out: deleting the pods left, bypassing their disruption budgets"
                );
                let mut failed_uids = failed_uids;
                for p in &left {
                    match self.delete(p).await {
                        Ok(_) => report.escalated += 1,
                        Err(e) => {
                            failed.push(PodFailure {
                                pod: p.key(),
                                why: crate::text::error_chain(&e),
                            });
                            failed_uids.insert(p.uid.clone());
                        }
                    }
                }
                failed.sort_by(|a, b| a.pod.cmp(&b.pod));
                match tokio::time::timeout(
                    ESCALATION_WAIT,
                    self.wait_gone(&targets, &failed_uids, pods_rx.clone(), &pending),
                )
                .await
                {
                    Ok(Ok(())) if failed.is_empty() => Ok(report),
                    Ok(Ok(())) => Err(DrainError::Failed(failed)),
                    Ok(Err(e)) => Err(e),
                    Err(_) => Err(DrainError::Timeout {
                        timeout: self.options.timeout + ESCALATION_WAIT,
                        left: self.left(&targets, &failed_uids, &pods_rx.borrow()).len(),
                        last_error: last,
                        failed,
                    }),
                }
            }
        }
    }

    /// The targets still on the node, but those that failed (by UID), which are not waited for.
    fn left(
        &self,
        targets: &[(PodInfo, Disposition)],
        failed: &HashSet<String>,
        live: &Option<HashMap<String, Option<SystemTime>>>,
    ) -> Vec<PodInfo> {
        let targets = targets.iter().filter(|(p, _)| !failed.contains(&p.uid));
        let Some(live) = live else {
            return targets.map(|(p, _)| p.clone()).collect();
        };
        let now = SystemTime::now();
        targets
            .filter(|(p, _)| match live.get(&p.uid) {
                None => false,
                Some(since) => !since.is_some_and(|s| self.options.deleted_long_ago(s, now)),
            })
            .map(|(p, _)| p.clone())
            .collect()
    }

    /// Waits until no target but the failed ones is left on the node (a new UID under the
    /// same name is a replacement: the target is gone).
    async fn wait_gone(
        &self,
        targets: &[(PodInfo, Disposition)],
        failed: &HashSet<String>,
        mut live: watch::Receiver<Option<HashMap<String, Option<SystemTime>>>>,
        pending: &impl Fn(usize),
    ) -> Result<(), DrainError> {
        loop {
            let left = {
                let seen = live.borrow_and_update();
                if seen.is_some() {
                    Some(self.left(targets, failed, &seen).len())
                } else {
                    None
                }
            };
            if let Some(left) = left {
                pending(left);
                if left == 0 {
                    return Ok(());
                }
            }
            // Long-terminating pods stop counting as time passes, without any event.
            let tick = self
                .options
                .skip_wait_for_delete_timeout
                .map_or(Duration::from_secs(3600), |_| Duration::from_secs(1));
            tokio::select! {
                r = live.changed() => r.map_err(|_| DrainError::WatchStopped("pod"))?,
                () = tokio::time::sleep(tick) => {}
            }
        }
    }

    /// The Eviction object for `pod`. Built here because kube's `Api::evict` serialises its
    /// delete options under a key the API server ignores (`delete_options`), which silently
    /// drops the grace period and the UID precondition.
    fn eviction(&self, pod: &PodInfo) -> serde_json::Value {
        let mut delete_options = serde_json::json!({"preconditions": {"uid": pod.uid}});
        if let Some(g) = self.options.grace_period {
            delete_options["gracePeriodSeconds"] = g.into();
        }
        serde_json::json!({
            "apiVersion": "policy/v1",
            "kind": "Eviction",
            "metadata": {"name": pod.name, "namespace": pod.namespace},
            "deleteOptions": delete_options,
        })
    }

    fn delete_params(&self, uid: &str) -> DeleteParams {
        DeleteParams {
            grace_period_seconds: self.options.grace_period,
            preconditions: Some(Preconditions {
                uid: Some(uid.to_owned()),
                resource_version: None,
            }),
            ..DeleteParams::default()
        }
    }

    async fn delete(&self, pod: &PodInfo) -> Result<bool, DrainError> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &pod.namespace);
        match api.delete(&pod.name, &self.delete_params(&pod.uid)).await {
            Ok(_) => {
                tracing::info!(namespace = %pod.namespace, pod = %pod.name, "deleted");
                Ok(true)
            }
            // Gone already, or replaced (the UID precondition failed).
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(false),
            Err(source) => Err(DrainError::Api {
                what: "delete a pod",
                source,
            }),
        }
    }

    /// Deletes `pod` and counts it (`Nothing` when it was already gone); `Err` says why not.
    async fn delete_counted(&self, pod: &PodInfo) -> Result<Removed, String> {
        match self.delete(pod).await {
            Ok(true) => {
                self.metrics.evictions.with_label_values(&["deleted"]).inc();
                Ok(Removed::Deleted)
            }
            Ok(false) => Ok(Removed::Nothing),
            Err(e) => {
                self.metrics.evictions.with_label_values(&["error"]).inc();
                Err(crate::text::error_chain(&e))
            }
        }
    }

    /// Evicts or deletes one pod, retrying until it is done; cancelled by dropping. `Err`
    /// says why this pod cannot be removed (the drain goes on with the others).
    async fn remove(
        &self,
        pod: &PodInfo,
        d: Disposition,
        mut pdbs: watch::Receiver<Option<HashMap<String, PdbView>>>,
        progress: &watch::Sender<Progress>,
    ) -> Result<Removed, String> {
        match d {
            Disposition::Delete => {
                return self.delete_counted(pod).await;
            }
            Disposition::Evict => {}
            _ => return Ok(Removed::Nothing),
        }
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &pod.namespace);
        let eviction = self.eviction(pod);
        let note = |msg: String| {
            progress.send_modify(|p| p.last_error = Some(msg));
        };
        let mut backoff = ERROR_BACKOFF;
        loop {
            let attempt = Instant::now();
            let evicted: Result<serde_json::Value, kube::Error> = api
                .create_subresource("eviction", &pod.name, &PostParams::default(), &eviction)
                .await;
            let e = match evicted {
                Ok(_) => {
                    self.metrics.evictions.with_label_values(&["evicted"]).inc();
                    tracing::info!(namespace = %pod.namespace, pod = %pod.name, "evicted");
                    return Ok(Removed::Evicted);
                }
                Err(e) => e,
            };
            match after_eviction_error(&e) {
                AfterError::Gone => {
                    self.metrics.evictions.with_label_values(&["gone"]).inc();
                    return Ok(Removed::Nothing);
                }
                AfterError::WaitForBudget => {
                    self.metrics
                        .evictions
                        .with_label_values(&["pdb_blocked"])
                        .inc();
                    let budgets = pdbs
                        .borrow()
                        .as_ref()
                        .map(|m| budgets_named(&covering(m, pod)))
                        .unwrap_or_default();
                    note(format!("{}: {}{budgets}", pod.key(), api_message(&e)));
                    self.wait_for_budget(pod, attempt, &mut pdbs).await;
                }
                // The Eviction API refuses pods of a terminating namespace; they are being
                // deleted anyway, so delete this one.
                AfterError::Delete => return self.delete_counted(pod).await,
                AfterError::MultiplePdbs => {
                    self.metrics.evictions.with_label_values(&["error"]).inc();
                    let mut names: Vec<String> = pdbs
                        .borrow()
                        .as_ref()
                        .map(|m| covering(m, pod))
                        .unwrap_or_default()
                        .into_iter()
                        .map(|p| p.name)
                        .collect();
                    names.sort();
                    let names = if names.is_empty() {
                        "unknown".to_owned()
                    } else {
                        names.join(", ")
                    };
                    return Err(format!(
                        "the Eviction API cannot evict a pod covered by more than one PodDisruptionBudget ({names})"
                    ));
                }
                AfterError::Fail => {
                    self.metrics.evictions.with_label_values(&["error"]).inc();
                    return Err(format!("the eviction was refused: {}", api_message(&e)));
                }
                AfterError::Retry => {
                    self.metrics.evictions.with_label_values(&["error"]).inc();
                    tracing::warn!(namespace = %pod.namespace, pod = %pod.name, error = %e, "eviction failed; retrying");
                    note(format!("{}: {e}", pod.key()));
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_ERROR_BACKOFF);
                }
            }
        }
    }

    /// After a 429: waits until a PDB covering `pod` allows a disruption again (or the fallback
    /// interval passes), but never less than [`MIN_RETRY_SPACING`] after the last attempt.
    async fn wait_for_budget(
        &self,
        pod: &PodInfo,
        attempt: Instant,
        pdbs: &mut watch::Receiver<Option<HashMap<String, PdbView>>>,
    ) {
        let fallback = attempt + PDB_FALLBACK_RETRY;
        let allows = |m: &Option<HashMap<String, PdbView>>| {
            m.as_ref().is_some_and(|m| {
                let c = covering(m, pod);
                !c.is_empty() && c.iter().all(|p| p.allowed > 0)
            })
        };
        // The budget may have risen between the refusal and now: then only the spacing applies.
        if allows(&pdbs.borrow_and_update()) {
            tokio::time::sleep_until(attempt + MIN_RETRY_SPACING).await;
            return;
        }
        loop {
            tokio::select! {
                r = pdbs.changed() => {
                    if r.is_err() {
                        tokio::time::sleep_until(fallback).await;
                        return;
                    }
                    if allows(&pdbs.borrow_and_update()) {
                        break;
                    }
                }
                () = tokio::time::sleep_until(fallback) => return,
            }
        }
        tokio::time::sleep_until(attempt + MIN_RETRY_SPACING).await;
    }
}

/// `baton drain NODE`: cordons the node (as `kubectl drain` does) and drains it.
pub async fn cordon_and_drain(
    client: Client,
    watch_client: Client,
    node: &str,
    options: Options,
    metrics: Metrics,
) -> Result<Report, DrainError> {
    let drainer = Drainer::new(client.clone(), watch_client, node, options, metrics);
    if let Some(why) = drainer.plan().await?.refusal() {
        return Err(DrainError::Refused(why));
    }
    let cordon = crate::node::Update {
        unschedulable: Some(true),
        ..crate::node::Update::default()
    };
    crate::node::apply(&Api::all(client), node, &cordon)
        .await
        .map_err(|source| DrainError::Api {
            what: "cordon the node",
            source,
        })?;
    let (tx, _rx) = watch::channel(Progress::default());
    drainer.drain(&tx).await
}

/// The API server's message for an API error, or the error itself.
fn api_message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => s.message.clone(),
        e => e.to_string(),
    }
}

fn namespace_terminating(s: &kube::core::Status) -> bool {
    s.details
        .as_ref()
        .is_some_and(|d| d.causes.iter().any(|c| c.reason == "NamespaceTerminating"))
        || s.message.contains("being terminated")
}

#[derive(Debug)]
enum Removed {
    Evicted,
    Deleted,
    Nothing,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Exact-call tests of the eviction outcomes the real API server cannot be made to produce
    /// on demand (a terminating namespace, a transient 503); the rest are end-to-end tests.
    mod outcomes {
        use super::*;
        use http::{Request, Response};
        use kube::client::Body;
        use tokio::time::error::Elapsed;
        use tower_test::mock::{self, Handle};

        type Mock = Handle<Request<Body>, Response<Body>>;

        fn drainer() -> (Drainer, Mock) {
            let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
            let client = Client::new(service, "default");
            let d = Drainer::new(
                client.clone(),
                client,
                "n1",
                opts(),
                Metrics::new().unwrap(),
            );
            (d, handle)
        }

        fn status(
            code: u16,
            reason: &str,
            message: &str,
            causes: serde_json::Value,
        ) -> Response<Body> {
            let body = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                "code": code, "reason": reason, "message": message,
                "details": {"causes": causes}});
            Response::builder()
                .status(code)
                .body(Body::from(serde_json::to_vec(&body).unwrap()))
                .unwrap()
        }

        fn ok(code: u16) -> Response<Body> {
            let body =
                json!({"kind": "Status", "apiVersion": "v1", "status": "Success", "code": code});
            Response::builder()
                .status(code)
                .body(Body::from(serde_json::to_vec(&body).unwrap()))
                .unwrap()
        }

        async fn expect(
            h: &mut Mock,
            method: &str,
            path: &str,
            reply: Response<Body>,
        ) -> serde_json::Value {
            let (req, send) = h.next_request().await.expect("a request");
            assert_eq!(req.method().as_str(), method);
            assert_eq!(req.uri().path(), path);
            let body = req.into_body().collect_bytes().await.unwrap();
            send.send_response(reply);
            serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null)
        }

        fn web() -> PodInfo {
            pod(
                json!({"metadata": {"namespace": "ns", "name": "web", "uid": "u1",
                "ownerReferences": owned("ReplicaSet")}}),
            )
        }

        const EVICT: &str = "/api/v1/namespaces/ns/pods/web/eviction";
        const POD: &str = "/api/v1/namespaces/ns/pods/web";

        #[tokio::test(start_paused = true)]
        async fn a_terminating_namespace_turns_the_eviction_into_a_delete() {
            let (d, mut h) = drainer();
            let pod = web();
            let (_tx, pdbs) = watch::channel(Some(HashMap::new()));
            let (progress, _) = watch::channel(Progress::default());
            let server = async {
                let sent = expect(&mut h, "POST", EVICT, status(403, "Forbidden",
                    "pods \"web\" is forbidden: unable to create new content in namespace ns because it is being terminated",
                    json!([{"reason": "NamespaceTerminating", "field": "metadata.namespace"}]))).await;
                assert_eq!(sent["deleteOptions"]["preconditions"]["uid"], "u1");
                expect(&mut h, "DELETE", POD, ok(200)).await;
            };
            let (removed, ()) =
                tokio::join!(d.remove(&pod, Disposition::Evict, pdbs, &progress), server);
            assert!(matches!(removed, Ok(Removed::Deleted)));
        }

        #[tokio::test(start_paused = true)]
        async fn other_errors_are_retried_with_backoff() {
            let (d, mut h) = drainer();
            let pod = web();
            let (_tx, pdbs) = watch::channel(Some(HashMap::new()));
            let (progress, _) = watch::channel(Progress::default());
            let server = async {
                expect(
                    &mut h,
                    "POST",
                    EVICT,
                    status(503, "ServiceUnavailable", "etcd leader changed", json!([])),
                )
                .await;
                expect(&mut h, "POST", EVICT, ok(201)).await;
                Instant::now()
            };
            let started = Instant::now();
            let (removed, second_at) =
                tokio::join!(d.remove(&pod, Disposition::Evict, pdbs, &progress), server);
            assert!(matches!(removed, Ok(Removed::Evicted)));
            assert!(
                second_at.duration_since(started) >= ERROR_BACKOFF,
                "no retry before the backoff"
            );
            assert!(
                progress
                    .borrow()
                    .last_error
                    .as_deref()
                    .is_some_and(|e| e.contains("etcd leader changed"))
            );
        }

        /// A 429 for "web" under a budget allowing nothing, then the budget allows a disruption
        /// `raise_after` later (at once if zero) and the retry succeeds: returns the time from
        /// the first attempt to the retry, in the paused (virtual) clock.
        async fn retry_gap(raise_after: Duration) -> Duration {
            let (d, mut h) = drainer();
            let pod = web();
            let mut view = pdb_view_with_selector(PdbView {
                namespace: "ns".into(),
                name: "web".into(),
                selector: None,
                allowed: 0,
            });
            let (tx, pdbs) =
                watch::channel(Some(HashMap::from([("ns/web".to_owned(), view.clone())])));
            let (progress, _) = watch::channel(Progress::default());
            let server = async {
                let first = Instant::now();
                expect(
                    &mut h,
                    "POST",
                    EVICT,
                    status(
                        429,
                        "TooManyRequests",
                        "Cannot evict pod as it would violate the pod's disruption budget.",
                        json!([]),
                    ),
                )
                .await;
                // The paused clock only moves once every task is idle: the drainer is then
                // waiting for the budget, and no earlier than this does the budget change.
                tokio::time::sleep(raise_after).await;
                view.allowed = 1;
                tx.send_replace(Some(HashMap::from([("ns/web".to_owned(), view.clone())])));
                expect(&mut h, "POST", EVICT, ok(201)).await;
                first.elapsed()
            };
            let (removed, gap) =
                tokio::join!(d.remove(&pod, Disposition::Evict, pdbs, &progress), server);
            assert!(matches!(removed, Ok(Removed::Evicted)), "{removed:?}");
            gap
        }

        #[tokio::test(start_paused = true)]
        async fn the_pdb_watch_wakes_the_retry_as_soon_as_the_budget_allows() {
            let raise_after = Duration::from_secs(1);
            let gap = retry_gap(raise_after).await;
            assert!(
                gap >= raise_after && gap < raise_after + MIN_RETRY_SPACING,
                "retried when the budget allowed it, not by the {PDB_FALLBACK_RETRY:?} fallback: {gap:?}"
            );
        }

        #[tokio::test(start_paused = true)]
        async fn a_budget_that_allows_at_once_is_retried_no_sooner_than_the_spacing() {
            let gap = retry_gap(Duration::ZERO).await;
            assert_eq!(gap, MIN_RETRY_SPACING);
        }

        fn pdb_view_with_selector(mut p: PdbView) -> PdbView {
            p.selector = Some(serde_json::from_value(json!({"matchLabels": {}})).unwrap());
            p
        }

        /// Runs `remove` for "web" against one answer to its eviction; a retry finds no server
        /// and would go on until the (virtual) minute passes.
        async fn remove_once(
            reply: Response<Body>,
            pdbs: HashMap<String, PdbView>,
        ) -> Result<Result<Removed, impl std::fmt::Display + std::fmt::Debug>, Elapsed> {
            let (d, mut h) = drainer();
            let pod = web();
            let (_tx, pdbs) = watch::channel(Some(pdbs));
            let (progress, _) = watch::channel(Progress::default());
            let server = async move {
                expect(&mut h, "POST", EVICT, reply).await;
            };
            let remove = tokio::time::timeout(
                Duration::from_secs(60),
                d.remove(&pod, Disposition::Evict, pdbs, &progress),
            );
            tokio::join!(remove, server).0
        }

        #[tokio::test(start_paused = true)]
        async fn two_pdbs_fail_the_pod_for_good_naming_them() {
            let budget = |name: &str| {
                let view = pdb_view_with_selector(PdbView {
                    namespace: "ns".into(),
                    name: name.into(),
                    selector: None,
                    allowed: 1,
                });
                (format!("ns/{name}"), view)
            };
            let removed = remove_once(
                status(
                    500,
                    "InternalError",
                    "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.",
                    json!([]),
                ),
                HashMap::from([budget("one"), budget("two")]),
            )
            .await
            .expect("no retry");
            let why = removed.expect_err("failed").to_string();
            assert!(
                why.contains(
                    "cannot evict a pod covered by more than one PodDisruptionBudget (one, two)"
                ),
                "{why}"
            );
        }

        #[tokio::test(start_paused = true)]
        async fn a_refusal_other_than_a_budget_fails_the_pod_without_retrying() {
            let removed = remove_once(
                status(
                    403,
                    "Forbidden",
                    "pods \"web\" is forbidden: User \"baton\" cannot create resource \"pods/eviction\"",
                    json!([]),
                ),
                HashMap::new(),
            )
            .await
            .expect("no retry");
            let why = removed.expect_err("failed").to_string();
            assert!(why.contains("cannot create resource"), "{why}");
        }
    }

    fn opts() -> Options {
        Options {
            ignore_daemonsets: true,
            delete_emptydir_data: false,
            force: false,
            pod_selector: None,
            grace_period: None,
            skip_wait_for_delete_timeout: None,
            disable_eviction: false,
            timeout: Duration::from_secs(600),
            timeout_action: TimeoutAction::Abort,
            parallelism: 8,
        }
    }

    fn pod(v: serde_json::Value) -> PodInfo {
        PodInfo::from_pod(&serde_json::from_value(v).unwrap())
    }

    fn owned(kind: &str) -> serde_json::Value {
        owned_by("apps/v1", kind)
    }

    fn owned_by(api_version: &str, kind: &str) -> serde_json::Value {
        json!([{"apiVersion": api_version, "kind": kind, "name": "x", "uid": "u", "controller": true}])
    }

    const NOW: Duration = Duration::from_secs(1_800_000_000);

    fn decide_now(p: &PodInfo, ds_exists: bool, o: &Options) -> Result<Disposition, Refusal> {
        decide(p, ds_exists, o, SystemTime::UNIX_EPOCH + NOW)
    }

    #[test]
    fn pods_are_classified_like_kubectl_drain() {
        let o = opts();
        let force = Options {
            force: true,
            ..opts()
        };
        let strict_ds = Options {
            ignore_daemonsets: false,
            ..opts()
        };
        let emptydir = Options {
            delete_emptydir_data: true,
            ..opts()
        };
        let rs = pod(json!({"metadata": {"name": "rs", "ownerReferences": owned("ReplicaSet")}}));
        let ds = pod(json!({"metadata": {"name": "ds", "ownerReferences": owned("DaemonSet")}}));
        let bare = pod(json!({"metadata": {"name": "bare"}}));
        let mirror =
            pod(json!({"metadata": {"name": "static", "annotations": {MIRROR_ANNOTATION: "x"}}}));
        let scratch = pod(
            json!({"metadata": {"name": "scratch", "ownerReferences": owned("ReplicaSet")},
            "spec": {"containers": [], "volumes": [{"name": "tmp", "emptyDir": {}}]}}),
        );
        let done = pod(json!({"metadata": {"name": "done"}, "status": {"phase": "Succeeded"}}));
        let done_ds = pod(
            json!({"metadata": {"name": "done-ds", "ownerReferences": owned("DaemonSet")},
            "status": {"phase": "Failed"}}),
        );
        let done_scratch = pod(json!({"metadata": {"name": "done-scratch"},
            "spec": {"containers": [], "volumes": [{"name": "tmp", "emptyDir": {}}]},
            "status": {"phase": "Succeeded"}}));
        let ds_ref = pod(json!({"metadata": {"name": "ds-ref", "ownerReferences": [{
            "apiVersion": "apps/v1", "kind": "DaemonSet", "name": "x", "uid": "u"}]}}));
        // OpenKruise's Advanced DaemonSet: kubectl's DaemonSet rules are for apps/v1 only.
        let kruise = pod(json!({"metadata": {"name": "kruise",
            "ownerReferences": owned_by("apps.kruise.io/v1alpha1", "DaemonSet")}}));

        let cases: Vec<(&PodInfo, bool, &Options, Result<Disposition, Refusal>)> = vec![
            (&rs, false, &o, Ok(Disposition::Evict)),
            (&ds, true, &o, Ok(Disposition::SkipDaemonSet)),
            (&ds, true, &strict_ds, Err(Refusal::DaemonSet)),
            (&ds, false, &o, Err(Refusal::OrphanedDaemonSet)),
            (&ds, false, &force, Ok(Disposition::Evict)),
            (&mirror, false, &o, Ok(Disposition::SkipMirror)),
            (&bare, false, &o, Err(Refusal::Unmanaged)),
            (&bare, false, &force, Ok(Disposition::Evict)),
            (&scratch, false, &o, Err(Refusal::EmptyDir)),
            (&scratch, false, &emptydir, Ok(Disposition::Evict)),
            // Finished pods need no flag and are deleted, PDBs or not.
            (&done, false, &o, Ok(Disposition::Delete)),
            (&done_ds, true, &o, Ok(Disposition::Delete)),
            (&done_scratch, false, &o, Ok(Disposition::Delete)),
            // A DaemonSet owner that is not the controller does not make a DaemonSet pod.
            (&ds_ref, false, &o, Err(Refusal::Unmanaged)),
            // Nor does a DaemonSet of another API: an ordinary managed pod, evicted.
            (&kruise, false, &o, Ok(Disposition::Evict)),
            (&kruise, false, &strict_ds, Ok(Disposition::Evict)),
        ];
        for (p, exists, o, want) in cases {
            assert_eq!(decide_now(p, exists, o), want, "{}", p.name);
        }
    }

    #[test]
    fn disable_eviction_deletes_and_terminating_pods_are_only_waited_for() {
        let rs = pod(json!({"metadata": {"name": "rs", "ownerReferences": owned("ReplicaSet")}}));
        let o = Options {
            disable_eviction: true,
            ..opts()
        };
        assert_eq!(decide_now(&rs, false, &o), Ok(Disposition::Delete));
        let going = pod(
            json!({"metadata": {"name": "going", "ownerReferences": owned("ReplicaSet"),
            "deletionTimestamp": "2027-01-15T08:00:00Z"}}),
        );
        assert_eq!(
            decide_now(&going, false, &opts()),
            Ok(Disposition::WaitOnly)
        );
    }

    #[test]
    fn pods_terminating_longer_than_the_skip_timeout_are_not_waited_for() {
        let since = SystemTime::UNIX_EPOCH + NOW - Duration::from_secs(120);
        let mut going =
            pod(json!({"metadata": {"name": "going", "ownerReferences": owned("ReplicaSet")}}));
        going.deleting_since = Some(since);
        let o = Options {
            skip_wait_for_delete_timeout: Some(Duration::from_secs(60)),
            ..opts()
        };
        assert_eq!(
            decide_now(&going, false, &o),
            Ok(Disposition::SkipDeletedLongAgo)
        );
        let o = Options {
            skip_wait_for_delete_timeout: Some(Duration::from_secs(300)),
            ..opts()
        };
        assert_eq!(decide_now(&going, false, &o), Ok(Disposition::WaitOnly));
    }

    #[test]
    fn a_plan_names_every_refusing_pod() {
        let pods = vec![
            pod(json!({"metadata": {"namespace": "a", "name": "bare"}})),
            pod(
                json!({"metadata": {"namespace": "b", "name": "rs", "ownerReferences": owned("ReplicaSet")}}),
            ),
            pod(
                json!({"metadata": {"namespace": "c", "name": "scratch", "ownerReferences": owned("ReplicaSet")},
                "spec": {"containers": [], "volumes": [{"name": "t", "emptyDir": {}}]}}),
            ),
            pod(json!({"metadata": {"namespace": "d", "name": "kruise",
                "ownerReferences": owned_by("apps.kruise.io/v1alpha1", "DaemonSet")}})),
        ];
        // Every apps/v1 DaemonSet exists; the Kruise pod is not looked up, and is evicted.
        let p = plan(&pods, |_, _| true, &opts(), SystemTime::UNIX_EPOCH + NOW);
        let why = p.refusal().unwrap();
        assert!(why.contains("a/bare") && why.contains("--force"), "{why}");
        assert!(!why.contains("d/kruise"), "{why}");
        assert!(
            why.contains("c/scratch") && why.contains("--delete-emptydir-data"),
            "{why}"
        );
        assert!(!why.contains("b/rs"), "{why}");
        assert_eq!(p.targets().count(), 2);
        assert!(pods[3].daemonset().is_none());
    }

    #[test]
    fn eviction_errors_are_handled_like_kubectl_but_transient_ones_are_retried() {
        let api = |code: u16, message: &str, cause: &str| {
            kube::Error::Api(
                serde_json::from_value(json!({"status": "Failure", "code": code,
                    "message": message, "details": {"causes": [{"reason": cause}]}}))
                .unwrap(),
            )
        };
        let cases = [
            (api(404, "not found", ""), AfterError::Gone),
            (api(409, "Precondition failed: UID", ""), AfterError::Gone),
            (api(429, "disruption budget", ""), AfterError::WaitForBudget),
            (
                api(403, "being terminated", "NamespaceTerminating"),
                AfterError::Delete,
            ),
            (
                api(500, "This pod has more than one PodDisruptionBudget", ""),
                AfterError::MultiplePdbs,
            ),
            // kubectl fails the pod on every other error; so does baton on a refusal...
            (api(403, "forbidden", ""), AfterError::Fail),
            (api(400, "bad request", ""), AfterError::Fail),
            (api(422, "invalid", ""), AfterError::Fail),
            // ...but retries what may pass: a server error, a timeout, no answer.
            (
                api(500, "etcdserver: leader changed", ""),
                AfterError::Retry,
            ),
            (api(503, "unavailable", ""), AfterError::Retry),
            (api(408, "timeout", ""), AfterError::Retry),
            (
                kube::Error::Service(std::io::Error::other("connection reset").into()),
                AfterError::Retry,
            ),
        ];
        for (e, want) in cases {
            assert_eq!(after_eviction_error(&e), want, "{e}");
        }
    }

    #[test]
    fn a_failed_drain_names_each_failed_pod_and_why() {
        let failed = vec![
            PodFailure {
                pod: "a/w-1".into(),
                why: "the Eviction API cannot evict a pod covered by more than one \
                      PodDisruptionBudget (one, two)"
                    .into(),
            },
            PodFailure {
                pod: "b/x".into(),
                why: "the eviction was refused: forbidden".into(),
            },
        ];
        let msg = DrainError::Failed(failed.clone()).to_string();
        assert_eq!(
            msg,
            "2 pod(s) could not be drained: a/w-1: the Eviction API cannot evict a pod covered \
             by more than one PodDisruptionBudget (one, two); b/x: the eviction was refused: \
             forbidden"
        );
        let timeout = |failed| DrainError::Timeout {
            timeout: Duration::from_secs(60),
            left: 1,
            last_error: "c/y: budget".into(),
            failed,
        };
        let msg = timeout(failed).to_string();
        assert!(
            msg.starts_with("drain timed out after 1m with 1 pod(s) left (last error: c/y: budget); and 2 pod(s) could not be drained: a/w-1: "),
            "{msg}"
        );
        assert!(!timeout(Vec::new()).to_string().contains("could not"));
    }

    #[test]
    fn preflight_names_the_budgets_that_allow_no_disruption_now() {
        let web =
            pod(json!({"metadata": {"namespace": "a", "name": "web-1", "labels": {"app": "web"}}}));
        let db =
            pod(json!({"metadata": {"namespace": "a", "name": "db-1", "labels": {"app": "db"}}}));
        let pdb = |name: &str, app: &str, allowed: i32| PdbView {
            namespace: "a".into(),
            name: name.into(),
            selector: Some(serde_json::from_value(json!({"matchLabels": {"app": app}})).unwrap()),
            allowed,
        };
        let other_ns = PdbView {
            namespace: "b".into(),
            ..pdb("web-b", "web", 0)
        };
        let blocked = blocked_by(
            &[web.clone(), db.clone()],
            &[pdb("web", "web", 0), pdb("db", "db", 1), other_ns],
        );
        assert_eq!(blocked, ["a/web (covers a/web-1)"]);
        assert!(blocked_by(&[db], &[pdb("web", "web", 0)]).is_empty());
    }

    #[test]
    fn a_refusal_names_the_budgets_the_api_message_does_not() {
        let pdb = |ns: &str, name: &str| PdbView {
            namespace: ns.into(),
            name: name.into(),
            selector: None,
            allowed: 0,
        };
        assert_eq!(budgets_named(&[]), "");
        assert_eq!(
            budgets_named(&[pdb("a", "web"), pdb("a", "all")]),
            " (PodDisruptionBudget a/all, a/web)"
        );
    }

    #[test]
    fn selectors_match_like_the_api_server() {
        let labels: BTreeMap<String, String> = [
            ("app".to_owned(), "web".to_owned()),
            ("tier".to_owned(), "a".to_owned()),
        ]
        .into();
        let sel = |v: serde_json::Value| -> LabelSelector { serde_json::from_value(v).unwrap() };
        assert!(selector_matches(&sel(json!({})), &labels));
        assert!(selector_matches(
            &sel(json!({"matchLabels": {"app": "web"}})),
            &labels
        ));
        assert!(!selector_matches(
            &sel(json!({"matchLabels": {"app": "db"}})),
            &labels
        ));
        for (op, values, want) in [
            ("In", json!(["a", "b"]), true),
            ("In", json!(["b"]), false),
            ("NotIn", json!(["b"]), true),
            ("NotIn", json!(["a"]), false),
            ("Exists", json!(null), true),
            ("DoesNotExist", json!(null), false),
        ] {
            let s = sel(
                json!({"matchExpressions": [{"key": "tier", "operator": op, "values": values}]}),
            );
            assert_eq!(selector_matches(&s, &labels), want, "{op} {values}");
        }
    }
}
