//! Gathering a [`Snapshot`]: once (one list of each kind, each request under the client's
//! deadline), or continuously from watches ([`follow`]). The conversions from Kubernetes objects
//! to plain data are pure and tested here.

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::pin::Pin;
use std::time::Duration;

use futures::{FutureExt, Stream, StreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Event, Node, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};

use super::{AgentPod, EventInfo, LeaseInfo, NodeInfo, PauseInfo, Report, Settings, Snapshot};
use crate::node;

/// What to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// Names and the namespace.
    pub settings: Settings,
    /// Only Nodes matching this label selector.
    pub node_selector: Option<String>,
}

impl Query {
    fn node_params(&self) -> ListParams {
        let lp = ListParams::default();
        match &self.node_selector {
            Some(s) => lp.labels(s),
            None => lp,
        }
    }

    fn pause_params(&self) -> ListParams {
        ListParams::default().fields(&format!("metadata.name={}", self.settings.pause_configmap))
    }

    fn agent_params(&self) -> ListParams {
        ListParams::default().labels(&self.settings.agent_selector)
    }
}

/// Only baton's Events about Nodes (core/v1 sees the events.k8s.io `reportingController` as
/// `reportingComponent`).
const EVENT_FIELDS: &str = "involvedObject.kind=Node,reportingComponent=baton";

/// A list that failed, naming what was listed (a 403 then says which permission is missing).
#[derive(Debug, thiserror::Error)]
#[error("listing {what}")]
pub struct GatherError {
    /// What was listed.
    pub what: String,
    /// The failure.
    #[source]
    pub source: kube::Error,
}

impl GatherError {
    /// The exit code: 2 when the API server refuses the request as invalid (a bad selector),
    /// 1 for the rest.
    pub fn exit_code(&self) -> u8 {
        match &self.source {
            kube::Error::Api(s) if s.code == 400 || s.code == 422 => 2,
            _ => 1,
        }
    }
}

// === Conversions ===

/// A Lease as plain data.
pub fn lease_info(l: &Lease) -> LeaseInfo {
    let spec = l.spec.as_ref();
    LeaseInfo {
        name: l.name_any(),
        holder: spec
            .and_then(|s| s.holder_identity.clone())
            .filter(|h| !h.is_empty()),
        acquired: spec.and_then(|s| s.acquire_time.as_ref()).map(|t| t.0),
        renewed: spec.and_then(|s| s.renew_time.as_ref()).map(|t| t.0),
        duration_seconds: spec.and_then(|s| s.lease_duration_seconds).map(i64::from),
    }
}

/// A Node as plain data.
pub fn node_info(n: &Node) -> NodeInfo {
    NodeInfo {
        name: n.name_any(),
        annotations: n.metadata.annotations.clone().unwrap_or_default(),
        ready: node::is_ready(n),
        unschedulable: node::is_unschedulable(n),
        boot_id: n
            .status
            .as_ref()
            .and_then(|s| s.node_info.as_ref())
            .map(|i| i.boot_id.clone())
            .filter(|b| !b.is_empty()),
    }
}

/// An Event about a Node as plain data (`None` for any other object).
pub fn event_info(e: &Event) -> Option<EventInfo> {
    let about = &e.involved_object;
    if about.kind.as_deref() != Some("Node") {
        return None;
    }
    let last_seen = [
        e.series
            .as_ref()
            .and_then(|s| s.last_observed_time.as_ref())
            .map(|t| t.0),
        e.last_timestamp.as_ref().map(|t| t.0),
        e.event_time.as_ref().map(|t| t.0),
        e.first_timestamp.as_ref().map(|t| t.0),
        e.metadata.creation_timestamp.as_ref().map(|t| t.0),
    ]
    .into_iter()
    .flatten()
    .max();
    let count = [e.series.as_ref().and_then(|s| s.count), e.count]
        .into_iter()
        .flatten()
        .max()
        .and_then(|c| u32::try_from(c).ok())
        .unwrap_or(1);
    Some(EventInfo {
        node: about.name.clone()?,
        reason: e.reason.clone().unwrap_or_default(),
        note: e.message.clone().unwrap_or_default(),
        warning: e.type_.as_deref() == Some("Warning"),
        last_seen,
        count,
    })
}

/// The pause ConfigMap as plain data.
pub fn pause_info(cm: &ConfigMap) -> PauseInfo {
    crate::operate::pause_info(cm)
}

/// An agent's pod as plain data: Ready, or its phase and why not.
pub fn agent_pod(p: &Pod) -> AgentPod {
    let status = p.status.as_ref();
    let conditions = status.and_then(|s| s.conditions.as_deref()).unwrap_or(&[]);
    let ready_condition = conditions.iter().find(|c| c.type_ == "Ready");
    let terminating = p.metadata.deletion_timestamp.is_some();
    let ready = !terminating && ready_condition.is_some_and(|c| c.status == "True");
    let phase = status
        .and_then(|s| s.phase.clone())
        .unwrap_or_else(|| "Unknown".into());
    let mut why = Vec::new();
    if terminating {
        why.push("terminating".to_owned());
    }
    for cs in status
        .and_then(|s| s.container_statuses.as_deref())
        .unwrap_or(&[])
    {
        let st = cs.state.as_ref();
        if let Some(w) = st.and_then(|s| s.waiting.as_ref()) {
            why.push(format!(
                "container {} waiting: {}",
                cs.name,
                w.reason.as_deref().unwrap_or("?")
            ));
        } else if let Some(t) = st.and_then(|s| s.terminated.as_ref()) {
            why.push(format!(
                "container {} terminated: {}",
                cs.name,
                t.reason.as_deref().unwrap_or("?")
            ));
        }
        if cs.restart_count > 0 {
            why.push(format!("{} restart(s)", cs.restart_count));
        }
    }
    if let Some(c) = conditions
        .iter()
        .find(|c| c.type_ == "PodScheduled" && c.status != "True")
    {
        why.push(format!(
            "not scheduled: {}{}",
            c.reason.as_deref().unwrap_or("?"),
            c.message
                .as_deref()
                .map_or_else(String::new, |m| format!(" ({m})"))
        ));
    } else if let Some(c) = ready_condition.filter(|_| !ready && why.is_empty()) {
        why.push(format!(
            "{}{}",
            c.reason.as_deref().unwrap_or("not ready"),
            c.message
                .as_deref()
                .map_or_else(String::new, |m| format!(": {m}"))
        ));
    }
    AgentPod {
        name: p.name_any(),
        node: p.spec.as_ref().and_then(|s| s.node_name.clone()),
        ready,
        state: if why.is_empty() {
            phase
        } else {
            format!("{phase}: {}", why.join(", "))
        },
    }
}

/// Keeps only the Leases that are `lock_name`'s and the Events about the selected Nodes, in
/// one order whatever the source (a list, or the watches' mirrors), so snapshots compare.
fn keep_relevant(mut s: Snapshot, settings: &Settings) -> Snapshot {
    s.leases.sort_by(|a, b| a.name.cmp(&b.name));
    s.nodes.sort_by(|a, b| a.name.cmp(&b.name));
    s.events.sort_by(|a, b| {
        (&a.node, &a.reason, a.last_seen, &a.note).cmp(&(&b.node, &b.reason, b.last_seen, &b.note))
    });
    s.agents.sort_by(|a, b| a.name.cmp(&b.name));
    s.leases
        .retain(|l| super::slot_of(&settings.lock_name, &l.name).is_some());
    let names: std::collections::BTreeSet<&str> = s.nodes.iter().map(|n| n.name.as_str()).collect();
    s.events.retain(|e| names.contains(e.node.as_str()));
    s
}

// === Once ===

async fn list<K>(api: Api<K>, lp: ListParams, what: String) -> Result<Vec<K>, GatherError>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.list(&lp)
        .await
        .map(|l| l.items)
        .map_err(|source| GatherError { what, source })
}

/// One snapshot, read now (five lists at once, each under `client`'s deadline).
pub async fn snapshot(client: &Client, q: &Query) -> Result<Snapshot, GatherError> {
    let ns = &q.settings.namespace;
    let (leases, nodes, events, pause, agents) = tokio::try_join!(
        list(
            Api::<Lease>::namespaced(client.clone(), ns),
            ListParams::default(),
            format!("Leases in {ns}"),
        ),
        list(
            Api::<Node>::all(client.clone()),
            q.node_params(),
            "Nodes".to_owned()
        ),
        list(
            Api::<Event>::all(client.clone()),
            ListParams::default().fields(EVENT_FIELDS),
            "Events about Nodes".to_owned(),
        ),
        list(
            Api::<ConfigMap>::namespaced(client.clone(), ns),
            q.pause_params(),
            format!("the pause ConfigMap {ns}/{}", q.settings.pause_configmap),
        ),
        list(
            Api::<Pod>::namespaced(client.clone(), ns),
            q.agent_params(),
            format!("the agents' pods in {ns}"),
        ),
    )?;
    let s = Snapshot {
        leases: leases.iter().map(lease_info).collect(),
        nodes: nodes.iter().map(node_info).collect(),
        events: events.iter().filter_map(event_info).collect(),
        pause: pause.first().map(pause_info),
        agents: agents.iter().map(agent_pod).collect(),
    };
    Ok(keep_relevant(s, &q.settings))
}

/// The report as of now, read with `client` (what `baton status` prints once).
pub async fn report_now(client: &Client, q: &Query) -> Result<Report, GatherError> {
    let s = snapshot(client, q).await?;
    Ok(super::report(&s, &q.settings, Timestamp::now()))
}

/// The text `baton status` prints, read now with `client` (the demo prints it too).
pub async fn text_now(client: &Client, q: &Query, colour: bool) -> Result<String, GatherError> {
    Ok(super::render::text(&report_now(client, q).await?, colour))
}

// === Following ===

/// The objects one watch mirrors, keyed by namespace/name, as its events say.
#[derive(Debug)]
struct Mirror<T> {
    items: BTreeMap<String, T>,
    /// Objects of a (re)list in progress; they replace `items` when it is done.
    listing: Option<BTreeMap<String, T>>,
    synced: bool,
}

impl<T> Default for Mirror<T> {
    fn default() -> Self {
        Self {
            items: BTreeMap::new(),
            listing: None,
            synced: false,
        }
    }
}

impl<T: Clone> Mirror<T> {
    fn apply<K: Resource>(&mut self, ev: watcher::Event<K>, convert: impl Fn(&K) -> Option<T>) {
        let key = |k: &K| {
            format!(
                "{}/{}",
                k.meta().namespace.as_deref().unwrap_or(""),
                k.meta().name.as_deref().unwrap_or("")
            )
        };
        match ev {
            watcher::Event::Init => self.listing = Some(BTreeMap::new()),
            watcher::Event::InitApply(k) => {
                if let (Some(l), Some(v)) = (self.listing.as_mut(), convert(&k)) {
                    l.insert(key(&k), v);
                }
            }
            watcher::Event::InitDone => {
                if let Some(l) = self.listing.take() {
                    self.items = l;
                }
                self.synced = true;
            }
            watcher::Event::Apply(k) => match convert(&k) {
                Some(v) => {
                    self.items.insert(key(&k), v);
                }
                None => {
                    self.items.remove(&key(&k));
                }
            },
            watcher::Event::Delete(k) => {
                self.items.remove(&key(&k));
            }
        }
    }

    fn values(&self) -> Vec<T> {
        self.items.values().cloned().collect()
    }
}

/// One change from any of the watches (boxed: objects differ much in size).
enum Change {
    Lease(Box<watcher::Event<Lease>>),
    Node(Box<watcher::Event<Node>>),
    Event(Box<watcher::Event<Event>>),
    Pause(Box<watcher::Event<ConfigMap>>),
    Agent(Box<watcher::Event<Pod>>),
}

type Changes = Pin<Box<dyn Stream<Item = Result<Change, watcher::Error>> + Send>>;

fn watch<K>(
    api: Api<K>,
    config: watcher::Config,
    wrap: fn(Box<watcher::Event<K>>) -> Change,
) -> Changes
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    watcher::watcher(api, config)
        .default_backoff()
        .map(move |r| r.map(|e| wrap(Box::new(e))))
        .boxed()
}

/// Every kind, mirrored.
#[derive(Debug, Default)]
struct Mirrors {
    leases: Mirror<LeaseInfo>,
    nodes: Mirror<NodeInfo>,
    events: Mirror<EventInfo>,
    pause: Mirror<PauseInfo>,
    agents: Mirror<AgentPod>,
}

impl Mirrors {
    fn apply(&mut self, c: Change) {
        match c {
            Change::Lease(e) => self.leases.apply(*e, |l| Some(lease_info(l))),
            Change::Node(e) => self.nodes.apply(*e, |n| Some(node_info(n))),
            Change::Event(e) => self.events.apply(*e, event_info),
            Change::Pause(e) => self.pause.apply(*e, |c| Some(pause_info(c))),
            Change::Agent(e) => self.agents.apply(*e, |p| Some(agent_pod(p))),
        }
    }

    fn synced(&self) -> bool {
        self.leases.synced
            && self.nodes.synced
            && self.events.synced
            && self.pause.synced
            && self.agents.synced
    }

    fn snapshot(&self, settings: &Settings) -> Snapshot {
        keep_relevant(
            Snapshot {
                leases: self.leases.values(),
                nodes: self.nodes.values(),
                events: self.events.values(),
                pause: self.pause.values().into_iter().next(),
                agents: self.agents.values(),
            },
            settings,
        )
    }
}

/// What [`follow`] passes on.
#[derive(Debug)]
pub enum Update<'a> {
    /// The watches saw changes: the snapshot now (the same as before when only fields baton
    /// does not show changed, e.g. a Node's heartbeat).
    Changed(&'a Snapshot),
    /// The refresh interval passed without a change: the snapshot now.
    Tick(&'a Snapshot),
    /// A watch failed; it is retried with a back-off.
    WatchError(&'a watcher::Error),
}

/// Watches every kind the snapshot needs with `watch_client` and calls `on` with a new
/// snapshot after each batch of changes once all are synced (and every `refresh`, if given, so
/// that times shown relative to now stay true). Returns when `on` breaks, or if every watch
/// ends.
pub async fn follow(
    watch_client: &Client,
    q: &Query,
    refresh: Option<Duration>,
    mut on: impl FnMut(Update<'_>) -> ControlFlow<()>,
) {
    let ns = &q.settings.namespace;
    let c = watch_client;
    let node_config = match &q.node_selector {
        Some(s) => watcher::Config::default().labels(s),
        None => watcher::Config::default(),
    };
    let streams: Vec<Changes> = vec![
        watch(
            Api::<Lease>::namespaced(c.clone(), ns),
            watcher::Config::default(),
            Change::Lease,
        ),
        watch(Api::<Node>::all(c.clone()), node_config, Change::Node),
        watch(
            Api::<Event>::all(c.clone()),
            watcher::Config::default().fields(EVENT_FIELDS),
            Change::Event,
        ),
        watch(
            Api::<ConfigMap>::namespaced(c.clone(), ns),
            watcher::Config::default()
                .fields(&format!("metadata.name={}", q.settings.pause_configmap)),
            Change::Pause,
        ),
        watch(
            Api::<Pod>::namespaced(c.clone(), ns),
            watcher::Config::default().labels(&q.settings.agent_selector),
            Change::Agent,
        ),
    ];
    let mut changes = futures::stream::select_all(streams);
    let mut mirrors = Mirrors::default();
    loop {
        let next = match refresh.filter(|_| mirrors.synced()) {
            Some(every) => match tokio::time::timeout(every, changes.next()).await {
                Ok(n) => n,
                Err(_) => {
                    if on(Update::Tick(&mirrors.snapshot(&q.settings))).is_break() {
                        return;
                    }
                    continue;
                }
            },
            None => changes.next().await,
        };
        let Some(first) = next else {
            return;
        };
        // One snapshot per batch: take every change already waiting.
        let mut batch = vec![first];
        while let Some(Some(more)) = changes.next().now_or_never() {
            batch.push(more);
        }
        let mut changed = false;
        for item in batch {
            match item {
                Ok(c) => {
                    mirrors.apply(c);
                    changed = true;
                }
                Err(e) => {
                    if on(Update::WatchError(&e)).is_break() {
                        return;
                    }
                }
            }
        }
        if changed
            && mirrors.synced()
            && on(Update::Changed(&mirrors.snapshot(&q.settings))).is_break()
        {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn objects_become_plain_data() {
        let lease: Lease = serde_json::from_value(json!({
            "metadata": {"name": "baton"},
            "spec": {"holderIdentity": "n1", "leaseDurationSeconds": 1800,
                     "acquireTime": "2026-11-29T10:00:00.000000Z",
                     "renewTime": "2026-11-29T10:10:00.000000Z"}
        }))
        .unwrap();
        let l = lease_info(&lease);
        assert_eq!(l.holder.as_deref(), Some("n1"));
        assert_eq!(l.duration_seconds, Some(1800));
        assert_eq!(l.renewed.unwrap().to_string(), "2026-11-29T10:10:00Z");
        let free: Lease = serde_json::from_value(
            json!({"metadata": {"name": "baton"}, "spec": {"holderIdentity": ""}}),
        )
        .unwrap();
        assert_eq!(lease_info(&free).holder, None);

        let node: Node = serde_json::from_value(json!({
            "metadata": {"name": "n1", "annotations": {"baton.dev/phase": "draining"}},
            "spec": {"unschedulable": true},
            "status": {"conditions": [{"type": "Ready", "status": "True"}],
                       "nodeInfo": {"bootID": "b1", "architecture": "", "containerRuntimeVersion": "",
                                    "kernelVersion": "", "kubeProxyVersion": "", "kubeletVersion": "",
                                    "machineID": "", "operatingSystem": "", "osImage": "", "systemUUID": ""}}
        }))
        .unwrap();
        let n = node_info(&node);
        assert!(n.ready && n.unschedulable);
        assert_eq!(n.boot_id.as_deref(), Some("b1"));
        assert_eq!(n.annotations["baton.dev/phase"], "draining");
    }

    #[test]
    fn events_count_their_series_and_take_the_latest_time() {
        let ev: Event = serde_json::from_value(json!({
            "metadata": {"name": "e", "namespace": "default",
                         "creationTimestamp": "2026-11-29T09:00:00Z"},
            "involvedObject": {"kind": "Node", "name": "n1"},
            "reason": "DrainFailed", "message": "drain timed out", "type": "Warning",
            "eventTime": "2026-11-29T09:00:00.000000Z",
            "series": {"count": 3, "lastObservedTime": "2026-11-29T09:30:00.000000Z"},
            "reportingComponent": "baton"
        }))
        .unwrap();
        let e = event_info(&ev).unwrap();
        assert_eq!(
            (e.node.as_str(), e.reason.as_str(), e.count),
            ("n1", "DrainFailed", 3)
        );
        assert!(e.warning);
        assert_eq!(e.last_seen.unwrap().to_string(), "2026-11-29T09:30:00Z");
        let pod_event: Event = serde_json::from_value(json!({
            "metadata": {"name": "e"}, "involvedObject": {"kind": "Pod", "name": "p"}
        }))
        .unwrap();
        assert_eq!(event_info(&pod_event), None);
    }

    #[test]
    fn an_agent_pod_says_why_it_is_not_ready() {
        let pod = |v: serde_json::Value| agent_pod(&serde_json::from_value::<Pod>(v).unwrap());
        let ready = pod(json!({
            "metadata": {"name": "baton-a"}, "spec": {"nodeName": "n1", "containers": []},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
        }));
        assert!(ready.ready);
        assert_eq!(ready.node.as_deref(), Some("n1"));
        let pending = pod(json!({
            "metadata": {"name": "baton-b"}, "spec": {"containers": []},
            "status": {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False",
                "reason": "Unschedulable", "message": "0/3 nodes are available"}]}
        }));
        assert!(!pending.ready);
        assert_eq!(
            pending.state,
            "Pending: not scheduled: Unschedulable (0/3 nodes are available)"
        );
        let crashing = pod(json!({
            "metadata": {"name": "baton-c"}, "spec": {"nodeName": "n2", "containers": []},
            "status": {"phase": "Running",
                "conditions": [{"type": "Ready", "status": "False", "reason": "ContainersNotReady"}],
                "containerStatuses": [{"name": "baton", "image": "", "imageID": "", "ready": false,
                    "restartCount": 4, "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}
        }));
        assert_eq!(
            crashing.state,
            "Running: container baton waiting: CrashLoopBackOff, 4 restart(s)"
        );
        let terminating = pod(json!({
            "metadata": {"name": "baton-d", "deletionTimestamp": "2026-11-29T09:00:00Z"},
            "spec": {"nodeName": "n3", "containers": []},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
        }));
        assert!(!terminating.ready);
        assert_eq!(terminating.state, "Running: terminating");
    }

    #[test]
    fn a_mirror_follows_lists_and_changes() {
        let lease = |name: &str, holder: &str| -> Lease {
            serde_json::from_value(json!({"metadata": {"name": name, "namespace": "ns"},
                                          "spec": {"holderIdentity": holder}}))
            .unwrap()
        };
        let mut m: Mirror<LeaseInfo> = Mirror::default();
        let conv = |l: &Lease| Some(lease_info(l));
        m.apply(watcher::Event::Init, conv);
        m.apply(watcher::Event::InitApply(lease("baton", "n1")), conv);
        assert!(
            !m.synced && m.values().is_empty(),
            "nothing before the list is done"
        );
        m.apply(watcher::Event::InitDone, conv);
        assert!(m.synced);
        assert_eq!(m.values()[0].holder.as_deref(), Some("n1"));
        m.apply(watcher::Event::Apply(lease("baton", "n2")), conv);
        m.apply(watcher::Event::Apply(lease("baton-1", "n3")), conv);
        assert_eq!(m.values().len(), 2);
        assert_eq!(m.values()[0].holder.as_deref(), Some("n2"));
        m.apply(watcher::Event::Delete(lease("baton-1", "n3")), conv);
        assert_eq!(m.values().len(), 1);
        // A relist replaces everything: what it does not list is gone.
        m.apply(watcher::Event::Init, conv);
        m.apply(watcher::Event::InitApply(lease("baton-2", "n4")), conv);
        assert_eq!(m.values()[0].name, "baton", "kept until the relist is done");
        m.apply(watcher::Event::InitDone, conv);
        assert_eq!(m.values().len(), 1);
        assert_eq!(m.values()[0].name, "baton-2");
    }
}
