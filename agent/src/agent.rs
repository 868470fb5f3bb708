//! The I/O shell: watches this Node and the Lease, checks the maintenance flag, asks
//! [`machine::next_step`] what to do, and carries the step out. Every background task is
//! supervised: if one ends, the agent exits (and the DaemonSet restarts it).

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use anyhow::{Context, anyhow};
use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Node};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Client, Resource, ResourceExt};
use serde_json::Value;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::alerts::{Filter as AlertFilter, Prometheus};
use crate::config::AgentArgs;
use crate::drain::{Drainer, Progress as DrainProgress};
use crate::flag::{self, Flag, Source};
use crate::host::{Host, read_boot_id};
use crate::lease::{HolderNode, LeaseClient, LeaseError, LeaseView, Observer, Record};
use crate::machine::{self, AbortReason, NodeState, Observation, Phase, Step, Wait};
use crate::metrics::Metrics;
use crate::node::{self, Events, Update};
use crate::reboot::{self, Triggered};
use crate::server::{self, Readiness};
use crate::shutdown::Shutdown;
use crate::text::{REASON_MAX, truncate};

/// After triggering a reboot, how long to wait for the host to go down before triggering again:
/// a clean shutdown of a busy host takes minutes, and a second trigger is harmless but noisy.
const REBOOT_WAIT: Duration = Duration::from_secs(10 * 60);
/// Pause after a failed step before trying again: long enough not to hammer a struggling API
/// server, short enough that a transient error costs little.
const ERROR_RETRY: Duration = Duration::from_secs(5);
/// How often the post-reboot health gate is re-checked while it holds the baton: pods are not
/// watched, and a hand-off delayed by a second or two is harmless.
const HEALTH_POLL: Duration = Duration::from_secs(2);
/// The health gate applies to a reboot finished this recently (plus the settle time); an older
/// one is history, not a hand-off in progress.
const HEALTH_GATE_WINDOW: Duration = Duration::from_secs(30 * 60);
/// How long after start an unread pause ConfigMap only waits quietly: its first list takes
/// milliseconds; longer means something is wrong, and the Node should say so.
const PAUSE_READ_GRACE: Duration = Duration::from_secs(10);
/// The key of the pause ConfigMap that says why everything is paused.
const PAUSE_REASON_KEY: &str = "reason";
/// Margin added to a computed wake-up time (a Lease's expiry), so the check runs after it.
const WAKE_MARGIN: Duration = Duration::from_millis(50);

/// What a watched object looks like so far.
#[derive(Debug, Clone)]
enum Seen<K> {
    /// The first list has not completed.
    Unsynced,
    /// The object does not exist.
    Missing,
    /// The object.
    Present(Box<K>),
}

fn rv_number<K: Resource>(obj: &K) -> Option<u64> {
    obj.meta().resource_version.as_deref()?.parse().ok()
}

/// Keeps the newest version of an object from two sources (the watch and our own writes), so a
/// late watch event never rolls back what this agent just wrote.
#[derive(Debug)]
struct Latest<K> {
    current: Seen<K>,
}

impl<K: Resource + Clone> Latest<K> {
    fn offer(&mut self, seen: Seen<K>) {
        let newer = match (&self.current, &seen) {
            (Seen::Present(old), Seen::Present(new)) => {
                match (rv_number(&**old), rv_number(&**new)) {
                    (Some(o), Some(n)) => n >= o,
                    _ => true,
                }
            }
            _ => true,
        };
        if newer {
            self.current = seen;
        }
    }
}

/// Runs the agent until a stop is requested (Ok) or something fails for good (Err).
pub async fn run(
    args: AgentArgs,
    shutdown: Shutdown,
    signals: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let metrics = Metrics::new().context("registering metrics")?;
    let ready = Readiness::default();
    if let Ok((effective, _)) = crate::privilege::current() {
        tracing::info!(version = env!("CARGO_PKG_VERSION"), uid = nix::unistd::geteuid().as_raw(), capabilities = format!("{effective:#x}"), method = ?args.reboot_method, "starting");
    }
    let listener = server::bind(args.metrics_address).await.with_context(|| {
        format!(
            "cannot listen on --metrics-address {}",
            args.metrics_address
        )
    })?;

    let (client, watch_client) =
        crate::api::clients(args.api_timeout, &format!("node {}", args.node_name)).await?;

    let (node_tx, node_rx) = watch::channel(Seen::Unsynced);

    let mut tasks: JoinSet<(&'static str, anyhow::Result<()>)> = JoinSet::new();
    {
        let (m, r, mut s) = (metrics.clone(), ready.clone(), shutdown.clone());
        tasks.spawn(async move {
            let res = server::serve(listener, m, r, async move { s.wait().await }).await;
            ("server", res.map_err(Into::into))
        });
    }
    tasks.spawn(async move {
        signals.await;
        ("signals", Ok(()))
    });
    let drainer = Drainer::new(
        client.clone(),
        watch_client.clone(),
        &args.node_name,
        args.drain.options(),
        metrics.clone(),
    );
    tasks.spawn(watch_named(
        Api::<Node>::all(watch_client.clone()),
        args.node_name.clone(),
        node_tx,
        metrics.clone(),
        "node",
    ));
    // The cluster-wide pause switch: a ConfigMap that exists while all nodes are paused.
    let (pause_tx, pause_rx) = watch::channel(Seen::Unsynced);
    tasks.spawn(watch_named(
        Api::<ConfigMap>::namespaced(watch_client.clone(), &args.lock_namespace),
        args.pause_configmap.clone(),
        pause_tx,
        metrics.clone(),
        "pause configmap",
    ));
    // One Lease per slot: `--concurrency` nodes may hold one each. With --group-by-label, the
    // limit applies per group: the slots are named after this node's value of the label. A
    // control-plane node also needs the control-plane Lease when slots alone could let two
    // control-plane nodes go at once. The labels are read at start; if they change later (a
    // joining node is labelled after it registers), the agent exits and its restart re-reads.
    let labels = Api::<Node>::all(client.clone())
        .get(&args.node_name)
        .await
        .with_context(|| format!("reading node {}'s labels", args.node_name))?
        .metadata
        .labels
        .unwrap_or_default();
    let coordination = coordination_of(&args, &labels);
    let mut names = crate::lease::slot_names(&coordination.base, args.concurrency);
    let group_slots = names.len();
    if coordination.control_plane {
        names.push(crate::lease::control_plane_lock_name(&args.lock_name));
    }
    tracing::info!(lease = %coordination.base, slots = args.concurrency, control_plane = coordination.control_plane, "coordinating through");
    let mut slots = Vec::new();
    for (i, name) in names.into_iter().enumerate() {
        let (tx, rx) = watch::channel(Seen::Unsynced);
        let client_for_slot = LeaseClient::new(
            Api::namespaced(client.clone(), &args.lock_namespace),
            &name,
            &args.node_name,
            args.lock_ttl,
        );
        tasks.spawn(watch_named(
            Api::<Lease>::namespaced(watch_client.clone(), &args.lock_namespace),
            name.clone(),
            tx,
            metrics.clone(),
            "lease",
        ));
        tasks.spawn(renew_loop(
            client_for_slot.clone(),
            rx.clone(),
            args.node_name.clone(),
            args.lock_renew_interval(),
            metrics.clone(),
        ));
        slots.push(Slot {
            client: client_for_slot,
            rx,
            seen: Latest {
                current: Seen::Unsynced,
            },
            observer: Observer::new(Instant::now()),
            holder: None,
            holder_node: HolderNode::Unknown,
            // The control-plane Lease is held through exactly the long NotReady spell of a
            // control-plane reboot: taking it over then would take a second one down.
            not_ready_takeover: i < group_slots,
        });
    }

    let alerts = match &args.prometheus_url {
        Some(url) => Some((
            Prometheus::new(url, args.api_timeout)
                .context("loading the system's CA certificates for --prometheus-url")?,
            args.alert_filter(),
        )),
        None => None,
    };
    let mut agent = Agent {
        host: Host::new(args.host_pid),
        alerts,
        blockers: None,
        nodes: Api::all(client.clone()),
        drainer,
        client,
        slots,
        group_slots,
        coordination,
        started: Instant::now(),
        slot: 0,
        metrics,
        ready,
        events: None,
        node_rx,
        pause_rx,
        node: Latest {
            current: Seen::Unsynced,
        },
        window: args.window(),
        watch_client: watch_client.clone(),
        source_flag: Flag::Unknown("not checked yet".into()),
        next_check: Instant::now(),
        triggered_at: None,
        last_wait: None,
        preflight_wait: None,
        health_retry_at: None,
        shutdown,
        args,
    };
    let stopping = agent.shutdown.clone();
    let agent_loop = agent.run_loop();
    tokio::pin!(agent_loop);
    loop {
        tokio::select! {
            res = &mut agent_loop => return res,
            Some(done) = tasks.join_next() => {
                // While stopping, the server ends by design; the agent loop decides when to exit.
                if stopping.requested() {
                    continue;
                }
                return match done {
                    Ok((name, Ok(()))) => Err(anyhow!("task {name} ended unexpectedly")),
                    Ok((name, Err(e))) => Err(e.context(format!("task {name} failed"))),
                    Err(e) => Err(anyhow!("a background task panicked: {e}")),
                };
            }
        }
    }
}

/// Mirrors one named object into `tx`, for ever, backing off on errors.
async fn watch_named<K>(
    api: Api<K>,
    name: String,
    tx: watch::Sender<Seen<K>>,
    metrics: Metrics,
    what: &'static str,
) -> (&'static str, anyhow::Result<()>)
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut stream = std::pin::pin!(watcher::watcher(api, config).default_backoff());
    let mut listed: Option<K> = None;
    while let Some(ev) = stream.next().await {
        match ev {
            Ok(Event::Init) => listed = None,
            Ok(Event::InitApply(o)) => listed = Some(o),
            Ok(Event::InitDone) => {
                let _ = tx.send(
                    listed
                        .take()
                        .map_or(Seen::Missing, |o| Seen::Present(Box::new(o))),
                );
            }
            Ok(Event::Apply(o)) => {
                let _ = tx.send(Seen::Present(Box::new(o)));
            }
            Ok(Event::Delete(_)) => {
                let _ = tx.send(Seen::Missing);
            }
            Err(e) => {
                metrics.errors.with_label_values(&["watch"]).inc();
                tracing::warn!(object = what, error = %e, "watch failed; retrying");
            }
        }
    }
    (what, Err(anyhow!("the {what} watch ended")))
}

/// Renews the Lease while this node holds it.
async fn renew_loop(
    lease: LeaseClient,
    rx: watch::Receiver<Seen<Lease>>,
    me: String,
    every: Duration,
    metrics: Metrics,
) -> (&'static str, anyhow::Result<()>) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let mine = matches!(&*rx.borrow(), Seen::Present(l)
            if Record::from_lease(l).holder.as_deref() == Some(me.as_str()));
        if !mine {
            continue;
        }
        match lease.renew().await {
            Ok(_) => tracing::debug!("renewed the lease"),
            Err(LeaseError::HeldByOther(holder)) => {
                tracing::warn!(%holder, "the lease is no longer ours");
            }
            Err(e) => {
                metrics.errors.with_label_values(&["lease"]).inc();
                tracing::warn!(error = %e, "could not renew the lease");
            }
        }
    }
}

/// How often drain progress is written to the Node at most: visible within seconds, without a
/// write per eviction.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// Writes drain progress (pods pending, last error) to the Node's annotations as it changes,
/// at most every [`PROGRESS_EVERY`]; returns when the drain drops its sender.
async fn report_progress(nodes: &Api<Node>, name: &str, mut rx: watch::Receiver<DrainProgress>) {
    let mut written: Option<DrainProgress> = None;
    loop {
        let now = rx.borrow_and_update().clone();
        if written.as_ref() != Some(&now) {
            let mut update = Update::default();
            update
                .annotations
                .insert(node::DRAIN_PENDING.into(), now.pending.to_string().into());
            update.annotations.insert(
                node::DRAIN_LAST_ERROR.into(),
                now.last_error.clone().map_or(Value::Null, Value::String),
            );
            if let Err(e) = node::apply(nodes, name, &update).await {
                tracing::debug!(error = %e, "could not write drain progress");
            }
            written = Some(now);
        }
        let over = tokio::time::timeout(PROGRESS_EVERY, async {
            while rx.changed().await.is_ok() {}
        })
        .await
        .is_ok();
        if over {
            return;
        }
    }
}

/// What the loop does after a step.
enum Progress {
    /// Decide again at once (the step changed something).
    Again,
    /// Nothing changes until an observation does.
    Wait,
    /// Stop requested.
    Stop,
}

/// One Lease slot: its client, its watch, and what this agent has seen of it.
struct Slot {
    client: LeaseClient,
    rx: watch::Receiver<Seen<Lease>>,
    seen: Latest<Lease>,
    observer: Observer,
    /// A watch on the Node of the slot's holder, while another node holds it and this node
    /// wants it: a deleted or long-NotReady holder frees the slot before its TTL.
    holder: Option<HolderWatch>,
    holder_node: HolderNode,
    /// Whether a holder NotReady for too long loses the slot (a deleted one always does).
    not_ready_takeover: bool,
}

struct Agent {
    args: AgentArgs,
    host: Host,
    client: Client,
    nodes: Api<Node>,
    drainer: Drainer,
    /// The group's slots, then (for a control-plane node) the control-plane Lease.
    slots: Vec<Slot>,
    /// How many of `slots` are the group's.
    group_slots: usize,
    /// The Leases chosen from this node's labels at start.
    coordination: crate::lease::Coordination,
    /// When the agent started.
    started: Instant,
    /// The group slot this agent holds, or would take, or waits for.
    slot: usize,
    metrics: Metrics,
    ready: Readiness,
    events: Option<Events>,
    node_rx: watch::Receiver<Seen<Node>>,
    pause_rx: watch::Receiver<Seen<ConfigMap>>,
    node: Latest<Node>,
    window: crate::window::Window,
    watch_client: Client,
    source_flag: Flag,
    next_check: Instant,
    triggered_at: Option<Instant>,
    last_wait: Option<String>,
    preflight_wait: Option<(String, Instant)>,
    health_retry_at: Option<Instant>,
    /// Prometheus and the filter of its alerts, with `--prometheus-url`.
    alerts: Option<(Prometheus, AlertFilter)>,
    /// The last blocker check: what blocked (if anything) and when it was checked.
    blockers: Option<(Option<String>, Instant)>,
    shutdown: Shutdown,
}

impl Agent {
    async fn run_loop(&mut self) -> anyhow::Result<()> {
        // Not ready until the Node has been seen and the flag checked once.
        loop {
            if matches!(
                *self.node_rx.borrow_and_update(),
                Seen::Present(_) | Seen::Missing
            ) {
                break;
            }
            tokio::select! {
                r = self.node_rx.changed() => r.context("node watch stopped")?,
                () = self.shutdown.wait() => return Ok(()),
            }
        }
        self.check_flag().await;
        self.ready.set_ready();
        tracing::info!(node = %self.args.node_name, "ready");

        loop {
            if self.shutdown.requested() {
                return self.stop().await;
            }
            if Instant::now() >= self.next_check {
                self.check_flag().await;
            }
            self.node.offer(self.node_rx.borrow_and_update().clone());
            if let Seen::Present(n) = &self.node.current {
                let now = coordination_of(&self.args, n.labels());
                if now != self.coordination {
                    return Err(anyhow!(
                        "this node's labels changed the Leases it coordinates through ({:?} → {:?}); exiting so that the restart uses the new ones",
                        self.coordination,
                        now
                    ));
                }
            }
            for slot in &mut self.slots {
                slot.seen.offer(slot.rx.borrow_and_update().clone());
            }
            let progress = match self.decide_and_act().await {
                Ok(p) => p,
                Err(e) => {
                    self.metrics.errors.with_label_values(&["step"]).inc();
                    tracing::error!(error = format!("{e:#}"), "step failed; retrying");
                    self.sleep_or_stop(ERROR_RETRY).await
                }
            };
            match progress {
                Progress::Again => {}
                Progress::Wait => self.wait_for_change().await,
                Progress::Stop => return self.stop().await,
            }
        }
    }

    async fn sleep_or_stop(&mut self, d: Duration) -> Progress {
        tokio::select! {
            () = tokio::time::sleep(d) => Progress::Again,
            () = self.shutdown.wait() => Progress::Stop,
        }
    }

    async fn check_flag(&mut self) {
        let (flag, source) = match &self.args.reboot_sentinel_command {
            Some(argv) => (
                flag::check_command(
                    &self.host,
                    argv,
                    self.args.reboot_sentinel_timeout,
                    &mut self.shutdown,
                )
                .await,
                Source::Command,
            ),
            None => (
                flag::check_file(&self.args.reboot_sentinel).await,
                Source::File,
            ),
        };
        if self.shutdown.requested() {
            // Stopped mid-check: no answer, and none to record.
            return;
        }
        if let Flag::Unknown(why) = &flag {
            self.metrics
                .flag_check_failures
                .with_label_values(&[source.as_str()])
                .inc();
            tracing::warn!(source = source.as_str(), reason = %why, "could not check the maintenance flag (not a reboot request)");
        }
        if flag != self.source_flag {
            tracing::info!(source = source.as_str(), flag = ?flag, "maintenance flag changed");
        }
        self.source_flag = flag;
        self.next_check = Instant::now() + self.args.check_interval;
    }

    /// Sleeps until the Node or the Lease changes, the next flag check, a Lease expiry, the end
    /// of a back-off, or a stop request.
    async fn wait_for_change(&mut self) {
        let mut wake = self.next_check;
        for slot in &self.slots {
            if let Some(t) = slot
                .observer
                .expires_at(&self.args.node_name, self.args.lock_ttl)
            {
                wake = wake.min(t + WAKE_MARGIN);
            }
        }
        if let Seen::Present(n) = &self.node.current
            && let Ok(state) = node::state_of(n)
            && let Some(until) = state.backoff_until
            && let Ok(left) = until.duration_since(SystemTime::now())
            // The time comes from an annotation: a far-off one must not overflow the clock.
            && let Some(at) = Instant::now().checked_add(left + WAKE_MARGIN)
        {
            wake = wake.min(at);
        }
        if let Some(t) = self.triggered_at {
            wake = wake.min(t + REBOOT_WAIT);
        }
        if let Some(t) = self.health_retry_at {
            wake = wake.min(t);
        }
        if let Some((Some(_), at)) = &self.blockers {
            wake = wake.min(*at + self.args.check_interval);
        }
        if self.pause_read_pending() {
            wake = wake.min(self.started + PAUSE_READ_GRACE);
        }
        for slot in &self.slots {
            if let Some(t) = slot
                .observer
                .holder_gone_at(slot.holder_node, self.args.lock_holder_not_ready_timeout)
            {
                wake = wake.min(t + WAKE_MARGIN);
            }
        }
        let (mut leases, mut holders) = (Vec::new(), Vec::new());
        for slot in &mut self.slots {
            leases.push(Box::pin(slot.rx.changed()));
            if let Some(h) = slot.holder.as_mut() {
                holders.push(Box::pin(h.rx.changed()));
            }
        }
        let holder_changed = async {
            if holders.is_empty() || futures::future::select_all(holders).await.0.is_err() {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            () = holder_changed => {}
            r = self.node_rx.changed() => if r.is_err() { tracing::error!("node watch stopped") },
            r = self.pause_rx.changed() => if r.is_err() { tracing::error!("pause watch stopped") },
            r = futures::future::select_all(leases) => {
                if r.0.is_err() { tracing::error!("lease watch stopped") }
            },
            () = tokio::time::sleep_until(wake) => {}
            () = self.shutdown.wait() => {}
        }
    }

    fn events(&mut self, node: &Node) -> Events {
        self.events
            .get_or_insert_with(|| Events::new(self.client.clone(), node))
            .clone()
    }

    async fn decide_and_act(&mut self) -> anyhow::Result<Progress> {
        let node = match &self.node.current {
            Seen::Present(n) => (**n).clone(),
            Seen::Missing => {
                self.note_wait("node not found");
                return Ok(Progress::Wait);
            }
            Seen::Unsynced => return Ok(Progress::Wait),
        };
        let annotations = node.metadata.annotations.clone().unwrap_or_default();
        let state = match node::read_state(&annotations) {
            Ok(s) => s,
            Err(e) => {
                // Never guess: a state baton cannot read leaves the node alone until fixed.
                self.metrics.errors.with_label_values(&["annotation"]).inc();
                self.note_wait(&e.to_string());
                return Ok(Progress::Wait);
            }
        };
        let boot_id = match read_boot_id(&self.args.boot_id_file) {
            Ok(b) => b,
            Err(e) => {
                self.metrics.errors.with_label_values(&["boot_id"]).inc();
                self.note_wait(&e.to_string());
                return Ok(Progress::Wait);
            }
        };
        let flag = flag::combine(
            self.source_flag.clone(),
            annotations.get(node::REBOOT_REQUESTED).map(String::as_str),
        );
        let now = Instant::now();
        // Holders' Nodes are watched only while this node wants a Lease: most nodes, most of
        // the time, want nothing and watch nothing.
        let wants = matches!(flag, Flag::Required(_)) || state.phase != Phase::Idle;
        let limit = self.args.lock_holder_not_ready_timeout;
        let mut views = Vec::with_capacity(self.slots.len());
        for slot in &mut self.slots {
            let record = match &slot.seen.current {
                Seen::Present(l) => Some(Record::from_lease(l)),
                Seen::Missing => None,
                Seen::Unsynced => return Ok(Progress::Wait),
            };
            slot.observer.observe(record.as_ref(), now);
            let mut view = slot
                .observer
                .view(&self.args.node_name, self.args.lock_ttl, now);
            match &mut view {
                LeaseView::Held { holder, expired } if wants => {
                    if slot.holder.as_ref().is_none_or(|h| h.name != *holder) {
                        slot.holder = Some(HolderWatch::start(
                            &self.watch_client,
                            holder,
                            &self.metrics,
                        ));
                    }
                    if let Some(h) = slot.holder.as_mut() {
                        slot.holder_node = h.observe(now).for_takeover(slot.not_ready_takeover);
                    }
                    if !*expired && slot.observer.holder_gone(slot.holder_node, limit, now) {
                        tracing::warn!(%holder, lease = slot.client.name(), node = ?slot.holder_node, "the lease holder's node is gone: the lease may be taken over");
                        *expired = true;
                    }
                }
                _ => {
                    slot.holder = None;
                    slot.holder_node = HolderNode::Unknown;
                }
            }
            views.push(view);
        }
        let groups = &views[..self.group_slots];
        let start = crate::lease::start_slot(&self.args.node_name, groups.len());
        self.slot = crate::lease::pick_slot(groups, start);
        let needed = self.needed();
        let needed_views: Vec<LeaseView> = needed.iter().map(|&i| views[i].clone()).collect();
        let (view, decider) = crate::lease::combine(&needed_views);
        // The slot an Acquire step takes: the first needed one that is not ours.
        let take = decider.map_or(self.slot, |k| needed[k]);
        let partly_held = view != LeaseView::Mine && needed_views.contains(&LeaseView::Mine);

        self.metrics.reboot_required.set(flag.gauge());
        self.metrics
            .lock_held
            .set(i64::from(view == LeaseView::Mine));
        self.metrics.set_phase(state.phase);

        let mut gate = self.gate(&annotations);
        if gate.is_none() && matches!(flag, Flag::Required(_)) && state.phase == Phase::Idle {
            // "Not blocked" is checked afresh whenever the Lease could be taken or is ours
            // (before taking it and again before cordoning); otherwise at most every
            // --check-interval.
            let fresh = !matches!(view, LeaseView::Held { expired: false, .. });
            gate = self.blockers(fresh).await?;
        } else {
            self.clear_blockers();
        }
        self.show_gate(&annotations, &flag, gate.as_deref()).await;

        let step = machine::next_step(&Observation {
            flag: &flag,
            state: &state,
            node_ready: node::is_ready(&node),
            node_unschedulable: node::is_unschedulable(&node),
            boot_id: &boot_id,
            lease: &view,
            now: SystemTime::now(),
            max_reboot_attempts: self.args.max_reboot_attempts,
            gate: gate.as_deref(),
            partly_held,
        });
        tracing::debug!(?step, phase = state.phase.as_str(), ?view, "decided");
        self.act(step, &node, &state, &boot_id, &flag, take).await
    }

    /// Why no new cycle may start now, if so: a cluster-wide pause (the `--pause-configmap`
    /// exists, or could not be read), a pause of this node, or the reboot window. Also sets the
    /// matching gauges.
    fn gate(&self, node_annotations: &BTreeMap<String, String>) -> Option<String> {
        let switch = format!(
            "ConfigMap {}/{}",
            self.args.lock_namespace, self.args.pause_configmap
        );
        // No new cycle before the pause switch has been read.
        let cluster = match &*self.pause_rx.borrow() {
            Seen::Unsynced if self.pause_read_pending() => Some(format!("{switch} not read yet")),
            Seen::Unsynced => Some(format!(
                "{switch} could not be read yet (can the agent's Role read ConfigMaps?)"
            )),
            Seen::Missing => None,
            Seen::Present(cm) => Some(format!(
                "{switch} exists: {}",
                cm.data
                    .as_ref()
                    .and_then(|d| d.get(PAUSE_REASON_KEY))
                    .map_or("no reason given".into(), |r| truncate(r, REASON_MAX))
            )),
        };
        let here = node_annotations
            .get(node::PAUSE)
            .map(|r| truncate(r, REASON_MAX).into_owned());
        let window = self.window.check(jiff::Timestamp::now());
        self.metrics
            .paused
            .with_label_values(&["cluster"])
            .set(i64::from(cluster.is_some() && !self.pause_read_pending()));
        self.metrics
            .paused
            .with_label_values(&["node"])
            .set(i64::from(here.is_some()));
        self.metrics.in_window.set(i64::from(window.is_ok()));
        let preflight = self
            .preflight_wait
            .as_ref()
            .filter(|(_, until)| Instant::now() < *until)
            .map(|(why, _)| why.clone());
        self.metrics
            .blocked
            .with_label_values(&["pdb"])
            .set(i64::from(preflight.is_some()));
        if let Some(r) = cluster {
            Some(format!("paused cluster-wide ({r})"))
        } else if let Some(r) = here {
            Some(format!("paused on this node ({}): {r}", node::PAUSE))
        } else if let Some(why) = window.err() {
            Some(why.to_string())
        } else {
            preflight
        }
    }

    /// Why a blocker stops a new cycle, if one does: a pod matching `--blocking-pod-selector`
    /// or an active Prometheus alert (failing closed). Checked only while a reboot is wanted.
    /// A result younger than `--check-interval` is reused, except "not blocked" when `fresh`
    /// (about to act on it): every event while blocked would otherwise ask again.
    async fn blockers(&mut self, fresh: bool) -> anyhow::Result<Option<String>> {
        let now = Instant::now();
        if let Some((why, at)) = &self.blockers
            && now < *at + self.args.check_interval
            && (why.is_some() || !fresh)
        {
            return Ok(why.clone());
        }
        let pod = self.blocking_pod().await?;
        let alert = match &self.alerts {
            Some((prometheus, filter)) => prometheus.gate(filter).await,
            None => None,
        };
        for (blocker, why) in [("pod", &pod), ("alert", &alert)] {
            self.metrics
                .blocked
                .with_label_values(&[blocker])
                .set(i64::from(why.is_some()));
        }
        let why = pod.or(alert);
        if why != self.blockers.as_ref().and_then(|(w, _)| w.clone()) {
            match &why {
                Some(w) => tracing::info!(reason = %w, "blocked"),
                None if self.blockers.is_some() => tracing::info!("no longer blocked"),
                None => {}
            }
        }
        self.blockers = Some((why.clone(), now));
        Ok(why)
    }

    /// Forgets the last blocker check (no reboot is wanted, or a cycle is under way).
    fn clear_blockers(&mut self) {
        if self.blockers.take().is_some() {
            for blocker in ["pod", "alert"] {
                self.metrics.blocked.with_label_values(&[blocker]).set(0);
            }
        }
    }

    /// A pod on this node matching `--blocking-pod-selector`, if any.
    async fn blocking_pod(&self) -> anyhow::Result<Option<String>> {
        let Some(selector) = &self.args.blocking_pod_selector else {
            return Ok(None);
        };
        let lp = kube::api::ListParams::default()
            .fields(&format!("spec.nodeName={}", self.args.node_name))
            .labels(selector);
        let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::all(self.client.clone());
        let found = pods.list(&lp).await.context("listing blocking pods")?;
        Ok(found
            .items
            .iter()
            .find(|p| p.metadata.deletion_timestamp.is_none())
            .map(|p| {
                format!(
                    "blocked by pod {}/{} (matches --blocking-pod-selector {selector})",
                    p.metadata.namespace.as_deref().unwrap_or_default(),
                    p.metadata.name.as_deref().unwrap_or_default()
                )
            }))
    }

    /// Shows on the Node why a flagged node waits (window or pause), and clears it after; a
    /// write only when the reason changes.
    async fn show_gate(
        &mut self,
        annotations: &BTreeMap<String, String>,
        flag: &Flag,
        gate: Option<&str>,
    ) {
        let want = gate.filter(|_| matches!(flag, Flag::Required(_)));
        // Moments after start, an unread pause switch is no news worth a write.
        if annotations.get(node::WAITING).map(String::as_str) == want || self.pause_read_pending() {
            return;
        }
        let mut update = Update::default();
        update.annotations.insert(
            node::WAITING.into(),
            want.map_or(Value::Null, |w| Value::String(w.to_owned())),
        );
        if let Err(e) = self.write(update, "showing why the node waits").await {
            tracing::debug!(error = format!("{e:#}"), "could not show the wait reason");
        }
    }

    /// Whether the pause ConfigMap is unread within [`PAUSE_READ_GRACE`] of the start.
    fn pause_read_pending(&self) -> bool {
        matches!(*self.pause_rx.borrow(), Seen::Unsynced)
            && self.started.elapsed() < PAUSE_READ_GRACE
    }

    fn note_wait(&mut self, why: &str) {
        if self.last_wait.as_deref() != Some(why) {
            tracing::info!(reason = why, "waiting");
            self.last_wait = Some(why.to_owned());
        }
    }

    /// Carries out `step`; an Acquire takes slot `take`.
    async fn act(
        &mut self,
        step: Step,
        node: &Node,
        state: &NodeState,
        boot_id: &str,
        flag: &Flag,
        take: usize,
    ) -> anyhow::Result<Progress> {
        let name = self.args.node_name.clone();
        match step {
            Step::Wait(w) => {
                let why = match &w {
                    Wait::NothingToDo => "no maintenance needed".to_owned(),
                    Wait::CouldNotCheck => "could not check the maintenance flag".to_owned(),
                    Wait::LeaseHeld(h) => format!("the lease is held by {h}"),
                    Wait::Backoff => "backing off after a failed drain".to_owned(),
                    Wait::DryRunDone => "dry run already done for this boot".to_owned(),
                    Wait::GaveUp => {
                        "gave up: triggered reboots did not reboot this host".to_owned()
                    }
                    Wait::FlagPersists => "the flag persists after repeated reboots".to_owned(),
                    Wait::NodeNotReady => "rebooted; waiting for the node to be Ready".to_owned(),
                    Wait::Gated(why) => why.clone(),
                };
                let looping = matches!(w, Wait::FlagPersists | Wait::GaveUp);
                self.metrics.reboot_loop_stopped.set(i64::from(looping));
                if matches!(w, Wait::FlagPersists)
                    && self.last_wait.as_deref() != Some(why.as_str())
                {
                    self.events(node)
                        .publish(true, "RebootLoopStopped", "Wait", format!(
                            "the maintenance flag is still set after {} reboot(s) in a row; not rebooting again until it clears (--max-reboot-attempts)",
                            state.consecutive_reboots
                        ))
                        .await;
                }
                self.note_wait(&why);
                Ok(Progress::Wait)
            }
            Step::Acquire => {
                let slot = &mut self.slots[take];
                match slot
                    .client
                    .acquire(slot.observer.last(), owner_of(node).as_ref())
                    .await
                {
                    Ok(lease) => {
                        tracing::info!(node = %name, lease = slot.client.name(), "took the lease");
                        slot.seen.offer(Seen::Present(Box::new(lease)));
                        Ok(Progress::Again)
                    }
                    Err(LeaseError::HeldByOther(h)) => {
                        // Lost a race: record the Lease as it is now (the watch may lag), so
                        // the next decision sees it held and another slot may be tried at once.
                        let fresh = slot.client.get().await?;
                        slot.seen
                            .offer(fresh.map_or(Seen::Missing, |l| Seen::Present(Box::new(l))));
                        self.note_wait(&format!("the lease is held by {h}"));
                        Ok(Progress::Again)
                    }
                    Err(e) => Err(e.into()),
                }
            }
            Step::Release => {
                // Right after a reboot, the baton passes on only once this node is healthy.
                if let Some(why) = self.health_gate(node).await? {
                    self.note_wait(&why);
                    self.health_retry_at = Some(Instant::now() + HEALTH_POLL);
                    return Ok(Progress::Wait);
                }
                self.health_retry_at = None;
                self.release().await?;
                Ok(Progress::Again)
            }
            Step::Cordon { cordon } => {
                // Pre-flight: pods that refuse the drain (emptyDir, unmanaged...) stop the cycle
                // before anything is cordoned, naming them.
                let plan = self.drainer.plan().await?;
                if let Some(why) = plan.refusal() {
                    self.metrics.errors.with_label_values(&["drain"]).inc();
                    return self
                        .abort(
                            node,
                            state,
                            boot_id,
                            false,
                            AbortReason::DrainFailed,
                            Some(why),
                        )
                        .await;
                }
                // Pre-flight: a budget that allows no disruption now would only make the drain
                // wait with the node cordoned. Wait with the lease released instead.
                if self.args.pdb_preflight {
                    let blocked = self.drainer.blocking_pdbs(&plan).await?;
                    if !blocked.is_empty() {
                        let why = format!(
                            "not cordoning: PodDisruptionBudget {} allows no disruption now",
                            blocked.join(", ")
                        );
                        self.preflight_wait =
                            Some((why, Instant::now() + self.args.check_interval));
                        self.release().await?;
                        return Ok(Progress::Again);
                    }
                }
                let next = NodeState {
                    phase: Phase::Draining,
                    cordoned_by_baton: cordon,
                    boot_id_before: None,
                    reboot_attempts: 0,
                    backoff_until: None,
                    ..state.clone()
                };
                let update = Update {
                    annotations: node::state_annotations(&next, SystemTime::now()),
                    unschedulable: cordon.then_some(true),
                    resource_version: node.metadata.resource_version.clone(),
                };
                self.write(update, "cordoning the node").await?;
                let reason = match flag {
                    Flag::Required(r) => r.clone(),
                    _ => String::new(),
                };
                tracing::info!(node = %name, cordoned = cordon, reason = %reason, "maintenance started");
                self.events(node)
                    .publish(false, "MaintenanceStarted", "Cordon", format!(
                        "baton holds the lease and {} the node to drain and reboot it ({reason})",
                        if cordon { "cordoned" } else { "found already cordoned" }
                    ))
                    .await;
                Ok(Progress::Again)
            }
            Step::Drain => self.drain(node, state, boot_id).await,
            Step::Reboot => self.reboot(node, state, boot_id).await,
            Step::Finish { uncordon } => {
                let next = state.rebooted();
                let mut annotations = node::state_annotations(&next, SystemTime::now());
                annotations.insert(node::REBOOT_REQUESTED.into(), Value::Null);
                annotations.insert(
                    node::LAST_REBOOT.into(),
                    node::format_time(SystemTime::now()).into(),
                );
                let update = Update {
                    annotations,
                    unschedulable: uncordon.then_some(false),
                    resource_version: None,
                };
                self.write(update, "uncordoning the node").await?;
                self.triggered_at = None;
                self.metrics.reboots.inc();
                let took = phase_age(node);
                tracing::info!(node = %name, uncordoned = uncordon, took = %took, boot_id, "reboot completed");
                self.events(node)
                    .publish(
                        false,
                        "RebootCompleted",
                        "Uncordon",
                        format!(
                            "rebooted (new boot ID {boot_id}) and {} in {took}",
                            if uncordon {
                                "uncordoned"
                            } else {
                                "left cordoned as it was before"
                            }
                        ),
                    )
                    .await;
                // The Lease is released by the next step, through the health gate.
                Ok(Progress::Again)
            }
            Step::Abort { uncordon, reason } => {
                self.abort(node, state, boot_id, uncordon, reason, None)
                    .await
            }
            Step::ResetHistory => {
                let next = NodeState {
                    consecutive_reboots: 0,
                    ..state.clone()
                };
                self.write_state(&next, None, "resetting the reboot history")
                    .await?;
                Ok(Progress::Again)
            }
        }
    }

    /// Writes `update` to this Node and keeps the result as the newest Node seen.
    async fn write(&mut self, update: Update, what: &'static str) -> anyhow::Result<()> {
        let written = node::apply(&self.nodes, &self.args.node_name, &update)
            .await
            .context(what)?;
        self.node.offer(Seen::Present(Box::new(written)));
        Ok(())
    }

    /// Records `next` on the Node, with a cordon change if `unschedulable` is set.
    async fn write_state(
        &mut self,
        next: &NodeState,
        unschedulable: Option<bool>,
        what: &'static str,
    ) -> anyhow::Result<()> {
        let update = Update {
            annotations: node::state_annotations(next, SystemTime::now()),
            unschedulable,
            resource_version: None,
        };
        self.write(update, what).await
    }

    /// Why the baton may not be passed on yet after this node's reboot: the settle time has not
    /// passed, a DaemonSet pod on the node is not Ready, or (with `--gate-pdbs`) a
    /// PodDisruptionBudget is not back to all its pods healthy. `None` when it may, or when no
    /// reboot just completed here.
    async fn health_gate(&self, node: &Node) -> anyhow::Result<Option<String>> {
        let Some(finished) = node::time_of(node, node::LAST_REBOOT) else {
            return Ok(None);
        };
        let since = SystemTime::now()
            .duration_since(finished)
            .unwrap_or_default();
        if since > HEALTH_GATE_WINDOW + self.args.settle_time {
            return Ok(None);
        }
        if since < self.args.settle_time {
            return Ok(Some(format!(
                "settling after the reboot ({} left)",
                node::human(self.args.settle_time - since)
            )));
        }
        let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::all(self.client.clone());
        let on_node = pods
            .list(
                &kube::api::ListParams::default()
                    .fields(&format!("spec.nodeName={}", self.args.node_name)),
            )
            .await
            .context("listing the node's pods for the health gate")?;
        for p in &on_node.items {
            let info = crate::drain::PodInfo::from_pod(p);
            if info.daemonset().is_some() && !info.finished && !pod_ready(p) {
                return Ok(Some(format!(
                    "waiting for DaemonSet pod {}/{} on this node to be Ready",
                    info.namespace, info.name
                )));
            }
        }
        if self.args.gate_pdbs {
            let pdbs: Api<k8s_openapi::api::policy::v1::PodDisruptionBudget> =
                Api::all(self.client.clone());
            for pdb in pdbs.list(&kube::api::ListParams::default()).await?.items {
                let st = pdb.status.unwrap_or_default();
                if st.current_healthy.unwrap_or(0) < st.expected_pods.unwrap_or(0) {
                    return Ok(Some(format!(
                        "waiting for PodDisruptionBudget {}/{} to have all its pods healthy again",
                        pdb.metadata.namespace.unwrap_or_default(),
                        pdb.metadata.name.unwrap_or_default()
                    )));
                }
            }
        }
        Ok(None)
    }

    /// Releases every Lease this node holds (its slot, and the control-plane Lease).
    async fn release(&mut self) -> anyhow::Result<()> {
        let me = self.args.node_name.clone();
        let mut held = self.held();
        if held.is_empty() {
            held.push(self.slot);
        }
        for i in held {
            let slot = &mut self.slots[i];
            let lease = slot.client.release().await.context("releasing the lease")?;
            if let Some(l) = lease {
                if Record::from_lease(&l).holder.is_none() {
                    tracing::info!(node = %me, lease = slot.client.name(), "released the lease");
                }
                slot.seen.offer(Seen::Present(Box::new(l)));
            }
        }
        Ok(())
    }

    /// The slots this node needs at once: the control-plane Lease first (so a control-plane
    /// node waiting for it holds nothing of its group's), then its group slot.
    fn needed(&self) -> Vec<usize> {
        (self.group_slots..self.slots.len())
            .chain([self.slot])
            .collect()
    }

    /// The slots this node holds, as last seen.
    fn held(&self) -> Vec<usize> {
        let me = self.args.node_name.as_str();
        (0..self.slots.len())
            .filter(|&i| {
                matches!(&self.slots[i].seen.current, Seen::Present(l)
                    if Record::from_lease(l).holder.as_deref() == Some(me))
            })
            .collect()
    }

    async fn drain(
        &mut self,
        node: &Node,
        state: &NodeState,
        boot_id: &str,
    ) -> anyhow::Result<Progress> {
        let started = Instant::now();
        let events = self.events(node);
        events
            .publish(
                false,
                "DrainStarted",
                "Drain",
                format!(
                    "draining (timeout {}, then {:?})",
                    node::human(self.args.drain.drain_timeout),
                    self.args.drain.drain_timeout_action
                ),
            )
            .await;
        let (progress_tx, progress_rx) = watch::channel(DrainProgress::default());
        let drainer = self.drainer.clone();
        // The progress writer ends once the drain drops its sender, after its last write.
        let drain_then_close = async move { drainer.drain(&progress_tx).await };
        let both = async {
            tokio::join!(
                drain_then_close,
                report_progress(&self.nodes, &self.args.node_name, progress_rx)
            )
            .0
        };
        let drained = tokio::select! {
            r = both => r,
            () = self.shutdown.wait() => {
                tracing::info!("stop requested mid-drain; the next start resumes");
                return Ok(Progress::Stop);
            }
        };
        self.metrics
            .drain_duration
            .observe(started.elapsed().as_secs_f64());
        let failure = match &drained {
            Ok(report) => {
                tracing::info!(evicted = report.evicted, deleted = report.deleted, skipped = report.skipped, escalated = report.escalated, took = %node::human(started.elapsed()), "drained");
                if report.escalated > 0 {
                    events
                        .publish(true, "DrainEscalated", "Delete", format!(
                            "--drain-timeout passed: deleted {} pod(s), bypassing their disruption budgets (--drain-timeout-action=delete)",
                            report.escalated
                        ))
                        .await;
                }
                events
                    .publish(
                        false,
                        "Drained",
                        "Drain",
                        format!(
                            "evicted {} and deleted {} pod(s), left {} alone, in {}",
                            report.evicted,
                            report.deleted,
                            report.skipped,
                            node::human(started.elapsed())
                        ),
                    )
                    .await;
                None
            }
            Err(e) => {
                self.metrics.errors.with_label_values(&["drain"]).inc();
                tracing::warn!(error = %e, force_reboot = self.args.force_reboot, "drain failed");
                Some(e.to_string())
            }
        };
        match machine::after_drain(
            failure.is_none(),
            self.args.force_reboot,
            state.cordoned_by_baton,
        ) {
            Step::Reboot => {
                let next = NodeState {
                    phase: Phase::Rebooting,
                    boot_id_before: Some(boot_id.to_owned()),
                    reboot_attempts: 0,
                    ..state.clone()
                };
                self.write_state(&next, None, "recording the boot ID before the reboot")
                    .await?;
                Ok(Progress::Again)
            }
            Step::Abort { uncordon, reason } => {
                self.abort(node, state, boot_id, uncordon, reason, failure)
                    .await
            }
            other => Err(anyhow!("unexpected step after a drain: {other:?}")),
        }
    }

    async fn reboot(
        &mut self,
        node: &Node,
        state: &NodeState,
        boot_id: &str,
    ) -> anyhow::Result<Progress> {
        if self.triggered_at.is_some_and(|t| t.elapsed() < REBOOT_WAIT) {
            self.note_wait("reboot triggered; waiting for the host to go down");
            return Ok(Progress::Wait);
        }
        // Fencing: a successful renewal proves this node holds every Lease it needs right now.
        for i in self.needed() {
            let slot = &mut self.slots[i];
            match slot.client.renew().await {
                Ok(l) => slot.seen.offer(Seen::Present(Box::new(l))),
                Err(e) => {
                    self.metrics.errors.with_label_values(&["fence"]).inc();
                    tracing::warn!(error = %e, lease = slot.client.name(), "not rebooting: this node does not hold the lease");
                    return Ok(Progress::Wait);
                }
            }
        }
        let next = state.one_more_attempt();
        self.write_state(&next, None, "recording the reboot attempt")
            .await?;
        let events = self.events(node);
        if self.args.reboot_method != crate::config::RebootMethod::None {
            events
                .publish(
                    false,
                    "Rebooting",
                    "Reboot",
                    format!(
                        "rebooting (attempt {}, method {:?}, boot ID {boot_id})",
                        next.reboot_attempts, self.args.reboot_method
                    ),
                )
                .await;
        }
        let triggered = reboot::trigger(
            self.args.reboot_method,
            self.host,
            &self.args.reboot_command,
            self.args.reboot_signal,
            &mut self.shutdown,
        )
        .await;
        match triggered {
            Ok(Triggered::Requested) => {
                self.metrics.reboot_triggers.inc();
                self.triggered_at = Some(Instant::now());
                self.note_wait("reboot triggered; waiting for the host to go down");
                Ok(Progress::Wait)
            }
            Ok(Triggered::Stopped) => {
                tracing::info!(
                    "stop requested while the reboot command ran; the next start resumes"
                );
                Ok(Progress::Stop)
            }
            Ok(Triggered::DryRun) => {
                self.abort(
                    node,
                    &next,
                    boot_id,
                    state.cordoned_by_baton,
                    AbortReason::DryRun,
                    None,
                )
                .await
            }
            Err(e) => {
                self.metrics.errors.with_label_values(&["reboot"]).inc();
                Err(anyhow::Error::from(e).context("triggering the reboot"))
            }
        }
    }

    async fn abort(
        &mut self,
        node: &Node,
        state: &NodeState,
        boot_id: &str,
        uncordon: bool,
        reason: AbortReason,
        detail: Option<String>,
    ) -> anyhow::Result<Progress> {
        let now = SystemTime::now();
        let mut next = NodeState {
            phase: Phase::Idle,
            consecutive_reboots: state.consecutive_reboots,
            dry_run_boot_id: state.dry_run_boot_id.clone(),
            gave_up_boot_id: state.gave_up_boot_id.clone(),
            ..NodeState::default()
        };
        match reason {
            AbortReason::DrainFailed => {
                next.backoff_until = Some(now + self.args.drain_failure_backoff);
            }
            AbortReason::RebootDidNotHappen => next.gave_up_boot_id = Some(boot_id.to_owned()),
            AbortReason::DryRun => next.dry_run_boot_id = Some(boot_id.to_owned()),
            AbortReason::FlagCleared | AbortReason::LeaseLost => {}
        }
        self.write_state(&next, uncordon.then_some(false), "uncordoning the node")
            .await?;
        self.triggered_at = None;
        self.metrics
            .aborts
            .with_label_values(&[reason.as_str()])
            .inc();
        let warning = reason.is_warning();
        let what = match reason {
            AbortReason::DrainFailed => format!(
                "drain failed ({}); {} the node, released the lease; next try after {}",
                detail.unwrap_or_default(),
                if uncordon {
                    "uncordoned"
                } else {
                    "left cordoned as before"
                },
                node::human(self.args.drain_failure_backoff)
            ),
            AbortReason::RebootDidNotHappen => format!(
                "{} reboot trigger(s) did not change the boot ID; giving up until the host reboots",
                state.reboot_attempts
            ),
            AbortReason::LeaseLost => "another node took the lease; maintenance stopped".to_owned(),
            AbortReason::FlagCleared => {
                "the maintenance flag cleared; maintenance stopped".to_owned()
            }
            AbortReason::DryRun => "dry run: the node would have rebooted now".to_owned(),
        };
        if warning {
            tracing::warn!(reason = reason.as_str(), uncordoned = uncordon, "{what}");
        } else {
            tracing::info!(reason = reason.as_str(), uncordoned = uncordon, "{what}");
        }
        self.events(node)
            .publish(warning, reason.event_reason(), "Abort", what)
            .await;
        self.release().await?;
        Ok(Progress::Again)
    }

    /// On a stop request: an idle holder releases the Lease; mid-cycle, and while the
    /// post-reboot health gate has not passed, everything is kept, so the next start resumes
    /// (the reboot itself stops the agent). An agent that never comes back frees it at its TTL.
    async fn stop(&mut self) -> anyhow::Result<()> {
        let node = match &self.node.current {
            Seen::Present(n) => Some((**n).clone()),
            _ => None,
        };
        let idle = node
            .as_ref()
            .is_none_or(|n| node::state_of(n).is_ok_and(|s| s.phase == Phase::Idle));
        let mine = !self.held().is_empty();
        // Right after a reboot the baton passes on only through the health gate; a restart
        // then (a DaemonSet update, say) keeps it, and the next start resumes the gate.
        let gated = match (&node, idle && mine) {
            (Some(n), true) => match self.health_gate(n).await {
                Ok(why) => why,
                Err(e) => Some(format!("could not check the health gate ({e:#})")),
            },
            _ => None,
        };
        if let Some(why) = gated {
            tracing::info!(reason = %why, "stopping during the post-reboot health gate: keeping the lease");
        } else if idle && mine {
            tracing::info!("stopping while idle: releasing the lease");
            self.release().await?;
        } else if mine {
            tracing::info!("stopping mid-cycle: keeping the lease and the node's state");
        }
        tracing::info!("stopped");
        Ok(())
    }
}

/// The Leases a node with `labels` coordinates through, under `args`.
fn coordination_of(
    args: &AgentArgs,
    labels: &BTreeMap<String, String>,
) -> crate::lease::Coordination {
    crate::lease::Coordination::for_node(
        &args.lock_name,
        args.concurrency,
        args.group_by_label.as_deref(),
        args.serialize_control_plane,
        labels,
    )
}

/// An owner reference to this Node, for the Lease (deleted with the Node).
fn owner_of(node: &Node) -> Option<OwnerReference> {
    Some(OwnerReference {
        api_version: "v1".into(),
        kind: "Node".into(),
        name: node.metadata.name.clone()?,
        uid: node.metadata.uid.clone()?,
        ..OwnerReference::default()
    })
}

/// A watch on the current holder's Node, replaced when the holder changes.
struct HolderWatch {
    name: String,
    rx: watch::Receiver<Seen<Node>>,
    task: tokio::task::JoinHandle<(&'static str, anyhow::Result<()>)>,
    not_ready_since: Option<Instant>,
}

impl Drop for HolderWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl HolderWatch {
    fn start(client: &Client, name: &str, metrics: &Metrics) -> Self {
        let (tx, rx) = watch::channel(Seen::Unsynced);
        let task = tokio::spawn(watch_named(
            Api::<Node>::all(client.clone()),
            name.to_owned(),
            tx,
            metrics.clone(),
            "holder node",
        ));
        Self {
            name: name.to_owned(),
            rx,
            task,
            not_ready_since: None,
        }
    }

    /// What is known of the holder's Node now.
    fn observe(&mut self, now: Instant) -> HolderNode {
        match &*self.rx.borrow_and_update() {
            Seen::Unsynced => HolderNode::Unknown,
            Seen::Missing => HolderNode::Missing,
            Seen::Present(n) if node::is_ready(n) => {
                self.not_ready_since = None;
                HolderNode::Ready
            }
            Seen::Present(_) => HolderNode::NotReadySince(*self.not_ready_since.get_or_insert(now)),
        }
    }
}

fn pod_ready(p: &k8s_openapi::api::core::v1::Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn phase_age(node: &Node) -> String {
    node::time_of(node, node::PHASE_SINCE)
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .map_or_else(|| "unknown time".to_owned(), node::human)
}
