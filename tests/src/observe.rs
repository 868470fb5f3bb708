//! Watches that record what happened during a test, to check baton's invariants afterwards:
//! how many nodes were disrupted at once, the fewest ready endpoints a Service ever had, and
//! when the Lease changed hands.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Client, Resource};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::fixtures::ready_endpoints;

/// One thing that happened, with when the test saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    /// When the watch delivered it.
    pub at: Instant,
    /// The same moment on the wall clock (to compare with what other processes log).
    pub wall: std::time::SystemTime,
    /// What it was.
    pub what: Change,
}

impl Seen {
    fn new(at: Instant, what: Change) -> Self {
        Self {
            at,
            wall: std::time::SystemTime::now(),
            what,
        }
    }
}

/// A change the watches report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A node's baton phase changed (`None`: idle).
    Phase(String, Option<String>),
    /// A node's cordon changed.
    Cordon(String, bool),
    /// A node's readiness changed.
    Ready(String, bool),
    /// The Lease's holder changed (`None`: released).
    Holder(Option<String>),
    /// A Service's ready endpoints changed.
    Endpoints(usize),
}

/// Everything recorded so far.
#[derive(Debug, Default)]
pub struct Record {
    /// Every change, in the order seen.
    pub log: Vec<Seen>,
    nodes: BTreeMap<String, NodeView>,
    /// The most nodes in a baton cycle (phase set) at one instant.
    pub max_in_cycle: usize,
    /// The most nodes cordoned by baton at one instant.
    pub max_cordoned_by_baton: usize,
    /// The fewest ready endpoints at any observed change (after the first).
    pub min_ready_endpoints: Option<usize>,
    /// How many endpoint changes were observed.
    pub endpoint_changes: usize,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct NodeView {
    phase: Option<String>,
    cordoned: bool,
    by_baton: bool,
    ready: bool,
}

/// A set of running watches and what they recorded.
#[derive(Debug, Clone, Default)]
pub struct Recorder {
    record: Arc<Mutex<Record>>,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

fn ready(node: &Node) -> bool {
    crate::cluster::node_is_ready(node)
}

impl Recorder {
    /// A recorder with no watches yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// A snapshot of what was recorded.
    pub fn with<T>(&self, f: impl FnOnce(&Record) -> T) -> T {
        f(&self.record.lock().unwrap())
    }

    fn spawn<K, F>(&self, api: Api<K>, config: watcher::Config, mut on: F)
    where
        K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
        F: FnMut(&mut Record, Option<&K>, &K) + Send + 'static,
    {
        let record = self.record.clone();
        let task = tokio::spawn(async move {
            let mut stream = std::pin::pin!(watcher::watcher(api, config).default_backoff());
            while let Some(ev) = stream.next().await {
                let mut r = record.lock().unwrap();
                match ev {
                    Ok(Event::Apply(o) | Event::InitApply(o)) => on(&mut r, Some(&o), &o),
                    Ok(Event::Delete(o)) => on(&mut r, None, &o),
                    _ => {}
                }
            }
        });
        self.tasks.lock().unwrap().push(task);
    }

    /// Watches the nodes matching `selector`.
    pub fn nodes(&self, client: &Client, selector: &str) {
        let api: Api<Node> = Api::all(client.clone());
        self.spawn(
            api,
            watcher::Config::default().labels(selector),
            |r, now, node| {
                let name = node.metadata.name.clone().unwrap_or_default();
                let ann = node.metadata.annotations.clone().unwrap_or_default();
                let view = now.map(|n| NodeView {
                    phase: ann.get("baton.dev/phase").cloned(),
                    cordoned: n
                        .spec
                        .as_ref()
                        .and_then(|s| s.unschedulable)
                        .unwrap_or(false),
                    by_baton: ann.get("baton.dev/cordoned").is_some_and(|v| v == "true"),
                    ready: ready(n),
                });
                let old = r.nodes.get(&name).cloned().unwrap_or_default();
                let new = view.clone().unwrap_or_default();
                let at = Instant::now();
                if old.phase != new.phase {
                    r.log.push(Seen::new(
                        at,
                        Change::Phase(name.clone(), new.phase.clone()),
                    ));
                }
                if old.cordoned != new.cordoned {
                    r.log
                        .push(Seen::new(at, Change::Cordon(name.clone(), new.cordoned)));
                }
                if old.ready != new.ready {
                    r.log
                        .push(Seen::new(at, Change::Ready(name.clone(), new.ready)));
                }
                match view {
                    Some(v) => r.nodes.insert(name, v),
                    None => r.nodes.remove(&name),
                };
                let in_cycle = r.nodes.values().filter(|v| v.phase.is_some()).count();
                let by_baton = r
                    .nodes
                    .values()
                    .filter(|v| v.cordoned && v.by_baton)
                    .count();
                r.max_in_cycle = r.max_in_cycle.max(in_cycle);
                r.max_cordoned_by_baton = r.max_cordoned_by_baton.max(by_baton);
            },
        );
    }

    /// Watches the holder of Lease `name` in `ns`.
    pub fn lease(&self, client: &Client, ns: &str, name: &str) {
        let api: Api<Lease> = Api::namespaced(client.clone(), ns);
        let mut last: Option<Option<String>> = None;
        self.spawn(
            api,
            watcher::Config::default().fields(&format!("metadata.name={name}")),
            move |r, now, lease| {
                let holder = now
                    .and(lease.spec.as_ref())
                    .and_then(|s| s.holder_identity.clone())
                    .filter(|h| !h.is_empty());
                if last.as_ref() != Some(&holder) {
                    r.log
                        .push(Seen::new(Instant::now(), Change::Holder(holder.clone())));
                    last = Some(holder);
                }
            },
        );
    }

    /// Watches the ready endpoints of Service `service` in `ns`.
    pub fn endpoints(&self, client: &Client, ns: &str, service: &str) {
        let api: Api<EndpointSlice> = Api::namespaced(client.clone(), ns);
        let mut slices: BTreeMap<String, EndpointSlice> = BTreeMap::new();
        let mut first = true;
        self.spawn(
            api,
            watcher::Config::default().labels(&format!("kubernetes.io/service-name={service}")),
            move |r, now, slice| {
                let name = slice.metadata.name.clone().unwrap_or_default();
                match now {
                    Some(s) => slices.insert(name, s.clone()),
                    None => slices.remove(&name),
                };
                let all: Vec<EndpointSlice> = slices.values().cloned().collect();
                let n = ready_endpoints(&all);
                r.log.push(Seen::new(Instant::now(), Change::Endpoints(n)));
                r.endpoint_changes += 1;
                if !first {
                    r.min_ready_endpoints = Some(r.min_ready_endpoints.map_or(n, |m| m.min(n)));
                }
                first = false;
            },
        );
    }

    /// Lock hand-off latencies: from each release of the Lease to the next node entering a
    /// cycle (its phase set) after it.
    pub fn handoffs(&self) -> Vec<Duration> {
        self.with(|r| {
            let mut out = Vec::new();
            let mut released: Option<Instant> = None;
            for s in &r.log {
                match &s.what {
                    Change::Holder(None) => released = Some(s.at),
                    Change::Phase(_, Some(p)) if p == "draining" => {
                        if let Some(t) = released.take() {
                            out.push(s.at.duration_since(t));
                        }
                    }
                    _ => {}
                }
            }
            out
        })
    }

    /// The changes recorded from index `from` on.
    pub fn since(&self, from: usize) -> Vec<Seen> {
        self.with(|r| r.log.get(from..).map(<[Seen]>::to_vec).unwrap_or_default())
    }

    /// Whether, as recorded, every watched node is idle and not cordoned by baton, and the
    /// last Lease change (if any) was a release: the rollout's end has reached the watches.
    pub fn settled(&self) -> bool {
        self.with(|r| {
            let nodes_idle = r.nodes.values().all(|n| n.phase.is_none() && !n.by_baton);
            let released = r
                .log
                .iter()
                .rev()
                .find_map(|s| match &s.what {
                    Change::Holder(h) => Some(h.is_none()),
                    _ => None,
                })
                .unwrap_or(true);
            nodes_idle && released
        })
    }

    /// Stops every watch.
    pub fn stop(&self) {
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
    }
}

/// The p50 and max of some durations.
pub fn p50_max(mut v: Vec<Duration>) -> Option<(Duration, Duration)> {
    if v.is_empty() {
        return None;
    }
    v.sort();
    Some((v[(v.len() - 1) / 2], v[v.len() - 1]))
}
