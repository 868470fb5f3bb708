//! The I/O shell: watches this Node, checks the maintenance flag and the boot ID, asks
//! [`machine::next_step`] what to do, and carries the step out. Its cost follows the work: an
//! idle, unflagged node watches only its own Node (the manual request and the pause annotation
//! are there) and makes no other request; the Leases, their holders' Nodes, the pause switch and
//! the health gate's pods and budgets are watched only while they can matter.
//!
//! - [`watch`]: the newest version of a watched object;
//! - [`slots`]: the Leases, who holds them, and the keepers that renew them;
//! - [`gates`]: pauses, the window and blockers, before a cycle starts;
//! - [`health`]: the post-reboot health gate;
//! - [`steps`]: one function per step.
//!
//! Every background task is supervised: if one ends, the agent exits (and the DaemonSet restarts
//! it). The agent never exits because the API server cannot be reached: it stays unready and
//! tries again.

mod gates;
mod health;
mod slots;
mod steps;
mod watch;

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use anyhow::{Context, anyhow};
use k8s_openapi::api::core::v1::{ConfigMap, Node};
use kube::api::Api;
use kube::{Client, ResourceExt};
use serde_json::Value;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::alerts::Prometheus;
use crate::config::AgentArgs;
use crate::drain::Drainer;
use crate::flag::{self, Flag, Source};
use crate::host::{Host, read_boot_id};
use crate::lease::{Coordination, LeaseView};
use crate::machine::{self, Limits, Observation, Phase};
use crate::metrics::Metrics;
use crate::node::{self, Events, Update};
use crate::notify::Notifier;
use crate::server::{self, Readiness};
use crate::shutdown::Shutdown;
use watch::{Latest, Seen, watch_named};

/// The post-reboot health gate's pure decision, for the model checker (`model/`).
pub use health::{Due, due};

/// After a trigger, how long the host may take to go down before baton triggers again (or, after
/// the last attempt, gives up): a clean shutdown of a busy host takes minutes.
pub const REBOOT_WAIT: Duration = Duration::from_secs(10 * 60);
/// Pause after a failed step before trying again: long enough not to hammer a struggling API
/// server, short enough that a transient error costs little.
const ERROR_RETRY: Duration = Duration::from_secs(5);
/// Margin added to a computed wake-up time (a Lease's expiry), so the check runs after it.
const WAKE_MARGIN: Duration = Duration::from_millis(50);

/// The agent's supervised background tasks.
type Tasks = JoinSet<(&'static str, anyhow::Result<()>)>;

/// What the loop does after a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    /// Decide again at once (the step changed something).
    Again,
    /// Nothing changes until an observation does.
    Wait,
    /// Stop requested.
    Stop,
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

    let mut tasks = Tasks::new();
    let (notifier, deliveries) = Notifier::start(
        args.notify.settings().map_err(anyhow::Error::msg)?,
        metrics.clone(),
    )
    .context("loading the system's CA certificates for --notify-url")?;
    tasks.spawn(async move {
        deliveries.await;
        ("notifications", Ok(()))
    });
    if !notifier.redacted().is_empty() {
        tracing::info!(urls = ?notifier.redacted(), "posting notifications to");
    }
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
    let (node_tx, mut node_rx) = tokio::sync::watch::channel(Seen::Unsynced);
    tasks.spawn(watch_named(
        Api::<Node>::all(watch_client.clone()),
        args.node_name.clone(),
        node_tx,
        metrics.clone(),
        "node",
    ));

    // The Leases follow this node's labels, so they are known once its Node is: until then the
    // agent is unready, and an API server that cannot be reached only delays it.
    let mut stopping = shutdown.clone();
    let labels = loop {
        if let Seen::Present(n) = &*node_rx.borrow_and_update() {
            break n.labels().clone();
        }
        tokio::select! {
            r = node_rx.changed() => r.context("the node watch stopped")?,
            Some(done) = tasks.join_next() => return Err(ended(done)),
            () = stopping.wait() => return Ok(()),
        }
    };
    let coordination = coordination_of(&args, &labels);
    let mut names = crate::lease::slot_names(&coordination.base, args.concurrency);
    let group = names.len();
    if coordination.control_plane {
        names.push(crate::lease::control_plane_lock_name(&args.lock_name));
    }
    tracing::info!(lease = %coordination.base, slots = args.concurrency, control_plane = coordination.control_plane, "coordinating through");
    let (stall_tx, stall_rx) = tokio::sync::watch::channel(None);
    let slots = slots::Slots::start(
        &mut tasks,
        slots::Settings {
            names,
            group,
            namespace: &args.lock_namespace,
            me: &args.node_name,
            ttl: args.lock_ttl,
            renew_every: args.lock_renew_interval(),
            not_ready_limit: args.lock_holder_not_ready_timeout,
            stall: args.stall_timeout,
        },
        &client,
        &watch_client,
        &stall_rx,
        &metrics,
    );
    let drainer = Drainer::new(
        client.clone(),
        watch_client.clone(),
        &args.node_name,
        args.drain.options(),
        metrics.clone(),
    );
    let alerts = match &args.prometheus_url {
        Some(url) => Some((
            Prometheus::new(url, args.api_timeout)
                .context("loading the system's CA certificates for --prometheus-url")?,
            args.alert_filter(),
        )),
        None => None,
    };
    let gates = gates::Gates::new(
        gates::Settings {
            node: args.node_name.clone(),
            switch: format!("ConfigMap {}/{}", args.lock_namespace, args.pause_configmap),
            window: args.window(),
            check_interval: args.check_interval,
            blocking_pod_selector: args.blocking_pod_selector.clone(),
            pdb_preflight: args.pdb_preflight,
            alerts,
        },
        // The cluster-wide pause switch: a ConfigMap that exists while all nodes are paused.
        (
            Api::<ConfigMap>::namespaced(watch_client.clone(), &args.lock_namespace),
            args.pause_configmap.clone(),
        ),
        client.clone(),
        drainer.clone(),
        metrics.clone(),
    );
    let health = health::Gate::new(
        watch_client.clone(),
        &args.node_name,
        args.settle_time,
        args.gate_pdbs,
    );
    let mut agent = Agent {
        host: Host::new(args.host_pid),
        nodes: Api::all(client.clone()),
        drainer,
        client,
        slots,
        gates,
        health,
        coordination,
        metrics,
        ready,
        events: None,
        notifier,
        wake_at: None,
        node_rx,
        node: Latest::default(),
        source_flag: Flag::Unknown("not checked yet".into()),
        flag_unknown_since: None,
        boot_unknown_since: None,
        next_check: Instant::now(),
        last_wait: None,
        last_error: None,
        stall_announced: false,
        health_wake: None,
        drain: None,
        stall: stall_tx,
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
                return Err(ended(done));
            }
        }
    }
}

/// The error for a supervised task that ended.
fn ended(
    done: Result<(&'static str, anyhow::Result<()>), tokio::task::JoinError>,
) -> anyhow::Error {
    match done {
        Ok((name, Ok(()))) => anyhow!("task {name} ended unexpectedly"),
        Ok((name, Err(e))) => e.context(format!("task {name} failed")),
        Err(e) => anyhow!("a background task panicked: {e}"),
    }
}

struct Agent {
    args: AgentArgs,
    host: Host,
    client: Client,
    nodes: Api<Node>,
    drainer: Drainer,
    slots: slots::Slots,
    gates: gates::Gates,
    health: health::Gate,
    /// The Leases chosen from this node's labels at start.
    coordination: Coordination,
    metrics: Metrics,
    ready: Readiness,
    events: Option<Events>,
    /// Posts a cycle's Events to the --notify-url webhooks.
    notifier: Notifier,
    /// When a step that waits (--drain-delay, --reboot-delay) wants to decide again.
    wake_at: Option<Instant>,
    node_rx: tokio::sync::watch::Receiver<Seen<Node>>,
    node: Latest<Node>,
    source_flag: Flag,
    flag_unknown_since: Option<Instant>,
    boot_unknown_since: Option<Instant>,
    next_check: Instant,
    last_wait: Option<String>,
    last_error: Option<String>,
    stall_announced: bool,
    /// When the health gate may change with time alone (the end of the settle time).
    health_wake: Option<Instant>,
    /// The drain running in the background, while the machine says Drain.
    drain: Option<steps::DrainRun>,
    /// Since when the loop has been unable to act (a failing step, an unreadable record); the
    /// keepers stop renewing past `--stall-timeout`.
    stall: tokio::sync::watch::Sender<Option<Instant>>,
    shutdown: Shutdown,
}

impl Agent {
    async fn run_loop(&mut self) -> anyhow::Result<()> {
        // Not ready until the Node has been seen and the flag checked once.
        self.check_flag().await;
        self.ready.set_ready();
        tracing::info!(node = %self.args.node_name, "ready");

        loop {
            if self.shutdown.requested() {
                return self.stop().await;
            }
            // The watches started and stopped on the way are supervised here.
            self.slots.check()?;
            self.gates.check()?;
            self.health.check()?;
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
            // A stop request cancels the step in flight (an API call may wait out its whole
            // deadline): every step survives being cut at any point, as it survives a kill.
            let mut stopping = self.shutdown.clone();
            let decided = tokio::select! {
                r = self.decide_and_act() => r,
                () = stopping.wait() => Ok(Next::Stop),
            };
            let progress = match decided {
                Ok(p) => {
                    self.stall.send_if_modified(|s| s.take().is_some());
                    self.last_error = None;
                    self.stall_announced = false;
                    p
                }
                Err(e) => {
                    // No evictions while the agent cannot tell what it is doing.
                    self.drain = None;
                    self.metrics.errors.with_label_values(&["step"]).inc();
                    let text = format!("{e:#}");
                    if self.last_error.as_deref() == Some(text.as_str()) {
                        tracing::debug!(error = %text, "step failed again; retrying");
                    } else {
                        tracing::error!(error = %text, "step failed; retrying");
                        self.last_error = Some(text.clone());
                    }
                    self.stall.send_if_modified(|s| {
                        let start = s.is_none();
                        s.get_or_insert_with(Instant::now);
                        start
                    });
                    self.announce_stall(&text).await;
                    self.sleep_or_stop(ERROR_RETRY).await
                }
            };
            match progress {
                Next::Again => {}
                Next::Wait => self.wait_for_change().await,
                Next::Stop => return self.stop().await,
            }
        }
    }

    /// Once the loop has been unable to act for `--stall-timeout`, says so on the Node: the
    /// keepers stop renewing now, and the Leases this node holds expire after `--lock-ttl`.
    async fn announce_stall(&mut self, why: &str) {
        let since = *self.stall.borrow();
        let long = since.is_some_and(|t| t.elapsed() >= self.args.stall_timeout);
        if !long || self.stall_announced {
            return;
        }
        self.stall_announced = true;
        let held = self.slots.held().len();
        tracing::warn!(reason = %why, leases = held, "baton cannot act: no longer renewing its leases, so that others may go");
        if let Some(node) = self.node.current.get().cloned() {
            self.events(&node)
                .publish(
                    true,
                    "MaintenanceStalled",
                    "Wait",
                    format!(
                        "baton could not act for {} ({why}); it no longer renews the {held} lease(s) it holds, which expire after {}; the node is left as it is",
                        node::human(self.args.stall_timeout),
                        node::human(self.args.lock_ttl)
                    ),
                )
                .await;
        }
    }

    async fn sleep_or_stop(&mut self, d: Duration) -> Next {
        tokio::select! {
            () = tokio::time::sleep(d) => Next::Again,
            () = self.shutdown.wait() => Next::Stop,
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
        if let Flag::Unknown(why) = &flag {
            self.metrics
                .flag_check_failures
                .with_label_values(&[source.as_str()])
                .inc();
            tracing::warn!(source = source.as_str(), reason = %why, "could not check the maintenance flag (not a reboot request)");
            self.flag_unknown_since.get_or_insert_with(Instant::now);
        } else {
            self.flag_unknown_since = None;
        }
        if flag != self.source_flag {
            tracing::info!(source = source.as_str(), flag = ?flag, "maintenance flag changed");
        }
        self.source_flag = flag;
        self.next_check = Instant::now() + self.args.check_interval;
    }

    /// Sleeps until something the decision depends on may have changed: the Node, a Lease, a
    /// holder's Node, the pause switch, the next flag check, or a time (a Lease's expiry, the end
    /// of a back-off, of a pending trigger or of a stall, the next health-gate check).
    async fn wait_for_change(&mut self) {
        let mut wake = self.next_check;
        let mut at = |t: Option<Instant>| {
            if let Some(t) = t {
                wake = wake.min(t);
            }
        };
        at(self.slots.wake_at().map(|t| t + WAKE_MARGIN));
        at(self.gates.wake_at());
        at(self.health_wake);
        at(self.wake_at.take());
        if let Some(state) = self.node.current.get().and_then(|n| node::state_of(n).ok()) {
            let now = SystemTime::now();
            let until = |t: SystemTime| t.duration_since(now).ok().map(|d| Instant::now() + d);
            at(state.backoff_until.and_then(until).map(|t| t + WAKE_MARGIN));
            at(state
                .triggered_at
                .and_then(|t| t.checked_add(REBOOT_WAIT))
                .and_then(until)
                .map(|t| t + WAKE_MARGIN));
        }
        let unknown = [self.flag_unknown_since, self.boot_unknown_since]
            .into_iter()
            .flatten()
            .min();
        at(unknown.map(|t| t + self.args.stall_timeout + WAKE_MARGIN));
        let drain_done = async {
            match self.drain.as_mut() {
                Some(run) if !*run.done.borrow() => {
                    let _ = run.done.changed().await;
                }
                Some(_) => {}
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = drain_done => {}
            () = self.slots.changed() => {}
            r = self.node_rx.changed() => if r.is_err() { tracing::error!("node watch stopped") },
            () = self.gates.pause_changed() => {}
            () = self.health.changed() => {}
            () = tokio::time::sleep_until(wake) => {}
            () = self.shutdown.wait() => {}
        }
    }

    fn events(&mut self, node: &Node) -> Events {
        self.events
            .get_or_insert_with(|| {
                Events::new(self.client.clone(), node).notifying(self.notifier.clone())
            })
            .clone()
    }

    fn note_wait(&mut self, why: &str) {
        if self.last_wait.as_deref() != Some(why) {
            tracing::info!(reason = why, "waiting");
            self.last_wait = Some(why.to_owned());
        }
    }

    async fn decide_and_act(&mut self) -> anyhow::Result<Next> {
        let node = match &self.node.current {
            Seen::Present(n) => (**n).clone(),
            Seen::Missing => {
                self.note_wait("node not found");
                return Ok(Next::Wait);
            }
            Seen::Unsynced => return Ok(Next::Wait),
        };
        let annotations = node.metadata.annotations.clone().unwrap_or_default();
        // Never guess: a record baton cannot read leaves the node alone until it is fixed (and
        // stalls the loop, so a held Lease expires).
        let state = node::read_state(&annotations).map_err(|e| {
            self.metrics.errors.with_label_values(&["annotation"]).inc();
            anyhow!(
                "{e}; fix or remove baton.dev/ annotations on node {}",
                self.args.node_name
            )
        })?;
        let now = Instant::now();
        let boot_id = match read_boot_id(&self.args.boot_id_file) {
            Ok(b) => {
                self.boot_unknown_since = None;
                Some(b)
            }
            Err(e) => {
                self.metrics.errors.with_label_values(&["boot_id"]).inc();
                if self.boot_unknown_since.is_none() {
                    tracing::warn!(error = %e, "cannot read the boot ID");
                }
                self.boot_unknown_since.get_or_insert(now);
                None
            }
        };
        let flag = flag::combine(
            self.source_flag.clone(),
            annotations.get(node::REBOOT_REQUESTED).map(String::as_str),
        );
        let flagged = matches!(flag, Flag::Required(_));
        let wall = SystemTime::now();
        let limits = Limits {
            max_reboot_attempts: self.args.max_reboot_attempts,
            reboot_wait: REBOOT_WAIT,
            stall: self.args.stall_timeout,
        };
        // The pause switch is consulted, so watched, only while this node is flagged.
        self.gates.watch_pause(flagged);
        let paused = self.gates.paused(&annotations);
        // The Leases and their holders' Nodes are watched only while this node is mid-cycle or
        // could start one now (or holds a Lease): most nodes, most of the time, want nothing and
        // watch nothing of them.
        let wants = state.phase != Phase::Idle
            || (flagged
                && machine::start_blocked(
                    paused.as_deref(),
                    &state,
                    boot_id.as_deref(),
                    wall,
                    &limits,
                )
                .is_none());
        self.slots.refresh(wants).await?;
        let Some(judged) = self.slots.judge(wants, now) else {
            // A watch has not synced yet, or a Lease naming this node is being proven ours.
            return Ok(Next::Wait);
        };
        self.metrics.reboot_required.set(flag.gauge());
        self.metrics
            .lock_held
            .set(i64::from(judged.view == LeaseView::Mine));
        self.metrics.set_leases_held(&self.slots.held_names());
        self.metrics.set_phase(state.phase);

        let mut gate = paused;
        if gate.is_none() && flagged && state.phase == Phase::Idle {
            // Checked when the Lease could be taken (a result up to --check-interval old will
            // do) and afresh once it is ours, before cordoning; not while another node holds it:
            // then the Lease is the wait.
            if !matches!(judged.view, LeaseView::Held { expired: false, .. }) {
                gate = self.gates.blockers(judged.view == LeaseView::Mine).await?;
            }
        } else {
            self.gates.clear();
        }
        // With no gate, a flagged idle node whose Lease another node holds waits for a slot:
        // shown too, so that `baton status` lists it. Kept while a freed slot is raced for, and
        // once taken until the cordon's own write clears it: no write of its own between two
        // nodes' cycles (a node that finds its slot free takes it without writing this first).
        let slot_wait = flagged
            && state.phase == Phase::Idle
            && match judged.view {
                LeaseView::Held { .. } => true,
                LeaseView::Free | LeaseView::Mine => {
                    annotations.get(node::WAITING).map(String::as_str)
                        == Some(node::WAITING_FOR_SLOT)
                }
            };
        let shown = gate
            .as_deref()
            .or_else(|| slot_wait.then_some(node::WAITING_FOR_SLOT));
        self.show_gate(&annotations, &flag, shown).await;
        // Right after its reboot, the holder keeps the baton until it is healthy.
        let settling = if state.phase == Phase::Idle && judged.view == LeaseView::Mine {
            let (why, wake) = self.health.settling(&node);
            self.health_wake = wake;
            why
        } else {
            self.health.stop();
            self.health_wake = None;
            None
        };
        // How long what the machine reads has been unknown: the flag only when it is unknown
        // after the manual request is taken into account.
        let since = |t: Option<Instant>| t.map_or(Duration::ZERO, |t| now.duration_since(t));
        let flag_unknown_for = if matches!(flag, Flag::Unknown(_)) {
            since(self.flag_unknown_since)
        } else {
            Duration::ZERO
        };
        let step = machine::next_step(&Observation {
            flag: &flag,
            state: &state,
            node_ready: node::is_ready(&node),
            node_unschedulable: node::is_unschedulable(&node),
            boot_id: boot_id.as_deref(),
            flag_unknown_for,
            boot_unknown_for: since(self.boot_unknown_since),
            lease: &judged.view,
            now: wall,
            limits,
            gate: gate.as_deref(),
            partly_held: judged.partly_held,
            settling: settling.as_deref(),
        });
        tracing::debug!(?step, phase = state.phase.as_str(), view = ?judged.view, "decided");
        if step != machine::Step::Drain && self.drain.take().is_some() {
            tracing::info!(
                ?step,
                "stopping the drain: the machine no longer says drain"
            );
        }
        self.act(
            step,
            &steps::Subject {
                node: &node,
                state: &state,
                boot_id: boot_id.as_deref(),
                flag: &flag,
                take: judged.take,
            },
        )
        .await
    }

    /// Shows on the Node why a flagged node waits (window, pause, blocker, a Lease slot), and
    /// clears it after; a write only when the reason changes.
    async fn show_gate(
        &mut self,
        annotations: &BTreeMap<String, String>,
        flag: &Flag,
        gate: Option<&str>,
    ) {
        let want = gate.filter(|_| matches!(flag, Flag::Required(_)));
        // Moments after start, an unread pause switch is no news worth a write.
        if annotations.get(node::WAITING).map(String::as_str) == want
            || self.gates.pause_read_pending()
        {
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

    /// On a stop request: an idle holder releases the Lease; mid-cycle, and while the
    /// post-reboot health gate has not passed, everything is kept, so the next start resumes
    /// (the reboot itself stops the agent). An agent that never comes back frees it at its TTL.
    async fn stop(&mut self) -> anyhow::Result<()> {
        if self.drain.take().is_some() {
            tracing::info!("stop requested mid-drain; the next start resumes");
        }
        let node = self.node.current.get().cloned();
        let idle = node
            .as_ref()
            .is_none_or(|n| node::state_of(n).is_ok_and(|s| s.phase == Phase::Idle));
        let mine = !self.slots.held().is_empty();
        // Right after a reboot the baton passes on only through the health gate; a restart
        // then (a DaemonSet update, say) keeps it, and the next start resumes the gate.
        // (Unread pods or budgets count as not healthy: the next start resumes the gate.)
        let gated = match (&node, idle && mine) {
            (Some(n), true) => self.health.settling(n).0,
            _ => None,
        };
        if let Some(why) = gated {
            tracing::info!(reason = %why, "stopping during the post-reboot health gate: keeping the lease");
        } else if idle && mine {
            tracing::info!("stopping while idle: releasing the lease");
            self.slots.release().await?;
        } else if mine {
            tracing::info!("stopping mid-cycle: keeping the lease and the node's state");
        }
        self.notifier.flush(crate::notify::FLUSH_GRACE).await;
        tracing::info!("stopped");
        Ok(())
    }
}

/// The Leases a node with `labels` coordinates through, under `args`.
fn coordination_of(args: &AgentArgs, labels: &BTreeMap<String, String>) -> Coordination {
    Coordination::for_node(
        &args.lock_name,
        args.concurrency,
        args.group_by_label.as_deref(),
        args.serialize_control_plane,
        labels,
    )
}
