//! The seed scenario on real containers: a busybox web server that records its own shutdown (the
//! preStop hook, SIGTERM, and finishing its work before its grace period ends), its Service and
//! PodDisruptionBudget, and a client that sends requests without pause to the Service's ready
//! endpoints, as kube-proxy routes them, counting every failure.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::Client;
use kube::api::{Api, ListParams, PostParams};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;

use super::WEB_IMAGE;

/// The web server's name (Deployment, Service, PDB, label `app`).
pub const NAME: &str = "web";
/// The port it serves on.
const PORT: u16 = 8080;
/// What the server does after SIGTERM before it exits: a graceful shutdown that takes time, so
/// that a SIGKILL before the grace period ends would show (no `done` line).
const SHUTDOWN_WORK_SECS: u32 = 2;
/// The preStop hook's sleep: long enough for every client to see the endpoint go unready before
/// the server stops listening.
const PRESTOP_SECS: u32 = 3;
/// The pods' grace period: covers the preStop hook and the shutdown work with room to spare.
const GRACE_SECS: i64 = 30;

/// Creates the Deployment (`replicas` pods), its Service and a PDB with `minAvailable` in `ns`;
/// each pod appends its lifecycle to `<records>/<pod name>` (a host folder every node sees).
pub async fn create(
    client: &Client,
    ns: &str,
    replicas: i32,
    min_available: i32,
    records: &Path,
) -> Result<()> {
    std::fs::create_dir_all(records)?;
    let script = format!(
        r#"rec=/records/$(cat /etc/hostname)
log() {{ echo "$1 $(date +%s)" >> "$rec"; }}
log start
mkdir -p /tmp/www && cat /etc/hostname > /tmp/www/index.html
httpd -f -p {PORT} -h /tmp/www &
pid=$!
trap 'log term; sleep {SHUTDOWN_WORK_SECS}; log done; kill $pid; exit 0' TERM
wait $pid
log exited"#
    );
    let prestop =
        format!("echo prestop $(date +%s) >> /records/$(cat /etc/hostname); sleep {PRESTOP_SECS}");
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": NAME},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": NAME}},
            "template": {
                "metadata": {"labels": {"app": NAME}},
                "spec": {
                    "terminationGracePeriodSeconds": GRACE_SECS,
                    "topologySpreadConstraints": [{
                        "maxSkew": 1,
                        "topologyKey": "kubernetes.io/hostname",
                        "whenUnsatisfiable": "ScheduleAnyway",
                        "labelSelector": {"matchLabels": {"app": NAME}},
                    }],
                    "containers": [{
                        "name": "web",
                        "image": WEB_IMAGE,
                        "imagePullPolicy": "Never",
                        "command": ["/bin/sh", "-c", script],
                        "ports": [{"containerPort": PORT}],
                        "readinessProbe": {
                            "httpGet": {"path": "/", "port": PORT},
                            "periodSeconds": 1,
                            "failureThreshold": 1,
                        },
                        "lifecycle": {"preStop": {"exec": {"command": ["/bin/sh", "-c", prestop]}}},
                        "volumeMounts": [{"name": "records", "mountPath": "/records"}],
                    }],
                    "volumes": [{"name": "records", "hostPath": {"path": records, "type": "Directory"}}],
                },
            },
        },
    }))?;
    let service: Service = serde_json::from_value(json!({
        "metadata": {"name": NAME},
        "spec": {"selector": {"app": NAME}, "ports": [{"port": 80, "targetPort": PORT}]},
    }))?;
    let pdb: PodDisruptionBudget = serde_json::from_value(json!({
        "metadata": {"name": NAME},
        "spec": {"minAvailable": min_available, "selector": {"matchLabels": {"app": NAME}}},
    }))?;
    let pp = PostParams::default();
    Api::<Deployment>::namespaced(client.clone(), ns)
        .create(&pp, &deployment)
        .await?;
    Api::<Service>::namespaced(client.clone(), ns)
        .create(&pp, &service)
        .await?;
    Api::<PodDisruptionBudget>::namespaced(client.clone(), ns)
        .create(&pp, &pdb)
        .await?;
    Ok(())
}

/// Waits until `replicas` web pods are Ready in `ns`.
pub async fn wait_ready(client: &Client, ns: &str, replicas: usize) -> Result<()> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    crate::wait_for("the web pods to be Ready", READY_TIMEOUT, || {
        let pods = pods.clone();
        async move {
            let items = pods
                .list(&ListParams::default().labels(&format!("app={NAME}")))
                .await?
                .items;
            let ready = items
                .iter()
                .filter(|p| crate::fixtures::pod_is_ready(p))
                .count();
            Ok((ready == replicas).then_some(()))
        }
    })
    .await
}

/// How long the web pods may take to start and pass their probe on fresh nodes.
const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// What one pod recorded: `(event, unix second)` in order (`start`, `prestop`, `term`, `done`).
pub fn records(dir: &Path) -> BTreeMap<String, Vec<(String, u64)>> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| {
            let text = std::fs::read_to_string(e.path()).unwrap_or_default();
            let events = text
                .lines()
                .filter_map(|l| {
                    let (what, t) = l.split_once(' ')?;
                    Some((what.to_owned(), t.trim().parse().ok()?))
                })
                .collect();
            (e.file_name().to_string_lossy().into_owned(), events)
        })
        .collect()
}

/// Whether a pod's record shows a graceful stop: the preStop hook ran, then SIGTERM came, and
/// the server finished its shutdown work (it was not killed before its grace period ended).
pub fn stopped_gracefully(events: &[(String, u64)]) -> bool {
    let names: Vec<&str> = events.iter().map(|(e, _)| e.as_str()).collect();
    let at = |e: &str| names.iter().position(|n| *n == e);
    matches!((at("prestop"), at("term"), at("done")), (Some(p), Some(t), Some(d)) if p < t && t < d)
        && events
            .iter()
            .find(|(e, _)| e == "term")
            .zip(events.iter().find(|(e, _)| e == "done"))
            .is_some_and(|((_, t), (_, d))| d >= t)
}

/// What the client saw.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    /// Requests sent.
    pub sent: u64,
    /// Requests answered `200`.
    pub ok: u64,
    /// Requests that failed (refused, reset, timed out, not 200, or no ready endpoint at all).
    pub failed: u64,
    /// The first few failures, with the endpoint.
    pub errors: Vec<String>,
    /// The fewest ready endpoints seen when picking one (`None` before the first request).
    pub min_ready: Option<usize>,
    /// Requests answered per node.
    pub by_node: BTreeMap<String, u64>,
}

/// A client sending requests to the ready endpoints of a Service, round robin, until stopped.
#[derive(Debug)]
pub struct Traffic {
    stats: Arc<Mutex<Stats>>,
    stop: Arc<AtomicBool>,
    task: Option<JoinHandle<()>>,
}

/// Pause between two requests: about 50 requests a second, enough to hit every moment of an
/// endpoint change, light for two cores.
const PACE: Duration = Duration::from_millis(20);
/// A request that takes longer than this failed (the server answers in microseconds).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

impl Traffic {
    /// Starts sending to Service [`NAME`] in `ns`. `nodes` maps each node's name to its network
    /// namespace (an endpoint's pod is reached inside its node, as kube-proxy would).
    pub async fn start(
        client: &Client,
        ns: &str,
        nodes: BTreeMap<String, PathBuf>,
    ) -> Result<Self> {
        let api: Api<EndpointSlice> = Api::namespaced(client.clone(), ns);
        let (reader, writer) = reflector::store();
        let config =
            watcher::Config::default().labels(&format!("kubernetes.io/service-name={NAME}"));
        let watch = reflector::reflector(writer, watcher::watcher(api, config).default_backoff())
            .applied_objects()
            .for_each(|_| async {});
        let stats = Arc::new(Mutex::new(Stats::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (stats.clone(), stop.clone());
        let task = tokio::spawn(async move {
            tokio::pin!(watch);
            let run = async {
                let _ = reader.wait_until_ready().await;
                let mut next = 0usize;
                while !sp.load(Ordering::Relaxed) {
                    let ready: Vec<(String, String)> = reader
                        .state()
                        .iter()
                        .flat_map(|s| s.endpoints.clone().into_iter().flatten())
                        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
                        .filter_map(|e| Some((e.addresses.first()?.clone(), e.node_name?)))
                        .collect();
                    let outcome = match ready.get(next % ready.len().max(1)) {
                        None => Err("no ready endpoint".to_owned()),
                        Some((ip, node)) => match nodes.get(node) {
                            None => Err(format!("endpoint {ip} on unknown node {node}")),
                            Some(netns) => get(netns, ip)
                                .await
                                .map(|()| node.clone())
                                .map_err(|e| format!("{ip} on {node}: {e:#}")),
                        },
                    };
                    next = next.wrapping_add(1);
                    {
                        let mut s = st.lock().unwrap();
                        s.sent += 1;
                        s.min_ready = Some(s.min_ready.map_or(ready.len(), |m| m.min(ready.len())));
                        match outcome {
                            Ok(node) => {
                                s.ok += 1;
                                *s.by_node.entry(node).or_default() += 1;
                            }
                            Err(e) => {
                                s.failed += 1;
                                if s.errors.len() < 10 {
                                    s.errors.push(e);
                                }
                            }
                        }
                    }
                    tokio::time::sleep(PACE).await;
                }
            };
            tokio::select! {
                () = run => {}
                () = &mut watch => {}
            }
        });
        Ok(Self {
            stats,
            stop,
            task: Some(task),
        })
    }

    /// What the client saw so far.
    pub fn stats(&self) -> Stats {
        self.stats.lock().unwrap().clone()
    }

    /// Stops the client after its current request and returns what it saw.
    pub async fn stop(mut self) -> Stats {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
        self.stats()
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

/// One `GET /` to `ip:PORT` from inside the node's network; Ok on `200`.
async fn get(netns: &Path, ip: &str) -> Result<()> {
    let addr = format!("{ip}:{PORT}").parse().context("endpoint address")?;
    let socket = super::net::socket_in(netns)?;
    let exchange = async {
        let mut stream = socket.connect(addr).await.context("connect")?;
        stream
            .write_all(b"GET / HTTP/1.0\r\nHost: web\r\n\r\n")
            .await
            .context("send")?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.context("receive")?;
        let head = String::from_utf8_lossy(&response);
        let status = head.lines().next().unwrap_or_default().to_owned();
        anyhow::ensure!(status.contains(" 200 "), "answered {status:?}");
        Ok(())
    };
    tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .context("timed out")?
}
