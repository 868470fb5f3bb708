//! Why a flagged node may not start a cycle now: the cluster-wide pause (a ConfigMap), a pause
//! of this node (an annotation), the reboot window, and blockers — a pod matching
//! `--blocking-pod-selector`, an active Prometheus alert (failing closed), and a
//! PodDisruptionBudget that allows no disruption of a pod here (the pre-flight). All are checked
//! before the Lease is taken, read-only, so a blocked node never takes and returns the Lease in
//! a loop; the holder checks the budgets once more before it cordons. The pause ConfigMap is
//! watched only while this node is flagged: an unflagged node never consults it.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::Client;
use kube::api::{Api, ListParams};
use tokio::time::Instant;

use super::watch::{Seen, Watched};
use crate::alerts::{Filter as AlertFilter, Prometheus};
use crate::drain::Drainer;
use crate::metrics::Metrics;
use crate::node;
use crate::text::{REASON_MAX, truncate};
use crate::window::Window;

/// How long after start an unread pause ConfigMap only waits quietly: its first list takes
/// milliseconds; longer means something is wrong, and the Node should say so.
const PAUSE_READ_GRACE: Duration = Duration::from_secs(10);
/// The key of the pause ConfigMap that says why everything is paused.
const PAUSE_REASON_KEY: &str = "reason";

/// What the gates need to know.
pub(super) struct Settings {
    pub(super) node: String,
    pub(super) switch: String,
    pub(super) window: Window,
    pub(super) check_interval: Duration,
    pub(super) blocking_pod_selector: Option<String>,
    pub(super) pdb_preflight: bool,
    pub(super) alerts: Option<(Prometheus, AlertFilter)>,
}

/// The gates of one node.
pub(super) struct Gates {
    settings: Settings,
    /// The pause ConfigMap and its name, and its watch while this node is flagged (since when).
    switch_api: (Api<ConfigMap>, String),
    pause: Option<(Watched<ConfigMap>, Instant)>,
    /// The last blocker check: what blocked (if anything) and when.
    last: Option<(Option<String>, Instant)>,
    /// The node's pods as the last check planned them (its budgets checked against them), for
    /// the cordon that may follow in the same decision.
    plan: Option<crate::drain::Plan>,
    client: Client,
    drainer: Drainer,
    metrics: Metrics,
}

impl Gates {
    /// Gates with `settings`; `switch` is the pause ConfigMap's API (a watch client) and name.
    pub(super) fn new(
        settings: Settings,
        switch: (Api<ConfigMap>, String),
        client: Client,
        drainer: Drainer,
        metrics: Metrics,
    ) -> Self {
        Self {
            settings,
            switch_api: switch,
            pause: None,
            plan: None,
            last: None,
            client,
            drainer,
            metrics,
        }
    }

    /// Watches the pause switch while `flagged`, and stops watching it otherwise.
    pub(super) fn watch_pause(&mut self, flagged: bool) {
        match (flagged, self.pause.is_some()) {
            (true, false) => {
                let (api, name) = &self.switch_api;
                let w = Watched::start(api.clone(), name, &self.metrics, "pause configmap");
                self.pause = Some((w, Instant::now()));
            }
            (false, true) => self.pause = None,
            _ => {}
        }
    }

    /// An error if the pause watch ended (supervision: the agent then exits).
    pub(super) fn check(&self) -> anyhow::Result<()> {
        self.pause.as_ref().map_or(Ok(()), |(w, _)| w.check())
    }

    /// Why no new cycle may start now because of a pause or the window, if so: the cluster-wide
    /// pause (the ConfigMap exists, or could not be read; consulted only while it is watched,
    /// i.e. while the node is flagged), this node's pause annotation, or the reboot window. Also
    /// sets the matching gauges.
    pub(super) fn paused(&self, node_annotations: &BTreeMap<String, String>) -> Option<String> {
        let switch = &self.settings.switch;
        // No new cycle before the pause switch has been read.
        let pending = self.pause_read_pending();
        let cluster = match self.pause.as_ref().map(|(w, _)| w.rx.borrow()).as_deref() {
            None | Some(Seen::Missing) => None,
            Some(Seen::Unsynced) if pending => Some(format!("{switch} not read yet")),
            Some(Seen::Unsynced) => Some(format!(
                "{switch} could not be read yet (can the agent's Role read ConfigMaps?)"
            )),
            Some(Seen::Present(cm)) => Some(format!(
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
        let window = self.settings.window.check(jiff::Timestamp::now());
        self.metrics
            .paused
            .with_label_values(&["cluster"])
            .set(i64::from(cluster.is_some() && !pending));
        self.metrics
            .paused
            .with_label_values(&["node"])
            .set(i64::from(here.is_some()));
        self.metrics.in_window.set(i64::from(window.is_ok()));
        if let Some(r) = cluster {
            Some(format!("paused cluster-wide ({r})"))
        } else if let Some(r) = here {
            Some(format!("paused on this node ({}): {r}", node::PAUSE))
        } else {
            window.err().map(|why| why.to_string())
        }
    }

    /// Why a blocker stops a new cycle, if one does: a blocking pod, an active alert, or a
    /// PodDisruptionBudget covering a pod of this node that allows no disruption now. Checked
    /// only while a reboot is wanted and the Lease could be taken. A result younger than
    /// `--check-interval` is reused, except "not blocked" when `holding` (about to cordon):
    /// otherwise every waiting node would ask again at every hand-off, and every event while
    /// blocked would.
    pub(super) async fn blockers(&mut self, holding: bool) -> anyhow::Result<Option<String>> {
        self.plan = None;
        let now = Instant::now();
        if let Some((why, at)) = &self.last
            && now < *at + self.settings.check_interval
            && (why.is_some() || !holding)
        {
            return Ok(why.clone());
        }
        let pod = self.blocking_pod().await?;
        let alert = match &self.settings.alerts {
            Some((prometheus, filter)) => prometheus.gate(filter).await,
            None => None,
        };
        let pdb = if pod.is_none() && alert.is_none() {
            self.pdb_preflight().await?
        } else {
            None
        };
        self.record(&[("pod", pod), ("alert", alert), ("pdb", pdb)], now)
    }

    /// Checks the PodDisruptionBudgets once more against `plan` (the node's pods as just
    /// listed), for the holder about to cordon; a refusal is remembered like any blocker's.
    pub(super) async fn recheck_budgets(
        &mut self,
        plan: &crate::drain::Plan,
    ) -> anyhow::Result<Option<String>> {
        let pdb = self.budgets_block(plan).await?;
        if pdb.is_none() {
            return Ok(None);
        }
        self.record(&[("pdb", pdb)], Instant::now())
    }

    fn record(
        &mut self,
        found: &[(&'static str, Option<String>)],
        now: Instant,
    ) -> anyhow::Result<Option<String>> {
        for (blocker, why) in found {
            self.metrics
                .blocked
                .with_label_values(&[blocker])
                .set(i64::from(why.is_some()));
        }
        let why = found.iter().find_map(|(_, w)| w.clone());
        let before = self.last.as_ref().and_then(|(w, _)| w.clone());
        if why != before {
            match &why {
                Some(w) => tracing::info!(reason = %w, "blocked"),
                None if before.is_some() => tracing::info!("no longer blocked"),
                None => {}
            }
        }
        self.last = Some((why.clone(), now));
        Ok(why)
    }

    /// The node's pods as planned by this decision's blocker check, if it made one: their
    /// budgets were checked against them just now.
    pub(super) fn take_plan(&mut self) -> Option<crate::drain::Plan> {
        self.plan.take()
    }

    /// Forgets the last blocker check (no reboot is wanted, or a cycle is under way).
    pub(super) fn clear(&mut self) {
        self.plan = None;
        if self.last.take().is_some() {
            for blocker in crate::metrics::BLOCKERS {
                self.metrics.blocked.with_label_values(&[blocker]).set(0);
            }
        }
    }

    /// A pod on this node matching `--blocking-pod-selector`, if any.
    async fn blocking_pod(&self) -> anyhow::Result<Option<String>> {
        let Some(selector) = &self.settings.blocking_pod_selector else {
            return Ok(None);
        };
        let lp = ListParams::default()
            .fields(&format!("spec.nodeName={}", self.settings.node))
            .labels(selector);
        let pods: Api<Pod> = Api::all(self.client.clone());
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

    /// A PodDisruptionBudget that would only make the drain wait with the node cordoned.
    async fn pdb_preflight(&mut self) -> anyhow::Result<Option<String>> {
        if !self.settings.pdb_preflight {
            return Ok(None);
        }
        let plan = self.drainer.plan().await?;
        let why = self.budgets_block(&plan).await?;
        self.plan = Some(plan);
        Ok(why)
    }

    /// The budgets that would only make the drain of `plan` wait with the node cordoned.
    async fn budgets_block(&self, plan: &crate::drain::Plan) -> anyhow::Result<Option<String>> {
        if !self.settings.pdb_preflight {
            return Ok(None);
        }
        let blocked = self.drainer.blocking_pdbs(plan).await?;
        Ok((!blocked.is_empty()).then(|| {
            format!(
                "not cordoning: PodDisruptionBudget {} allows no disruption now",
                blocked.join(", ")
            )
        }))
    }

    /// Whether the pause ConfigMap is unread within [`PAUSE_READ_GRACE`] of its watch's start.
    pub(super) fn pause_read_pending(&self) -> bool {
        self.pause.as_ref().is_some_and(|(w, since)| {
            matches!(*w.rx.borrow(), Seen::Unsynced) && since.elapsed() < PAUSE_READ_GRACE
        })
    }

    /// When the gates may change with time alone: a blocked result going stale, the end of the
    /// quiet time for an unread pause switch.
    pub(super) fn wake_at(&self) -> Option<Instant> {
        let stale = match &self.last {
            Some((Some(_), at)) => Some(*at + self.settings.check_interval),
            _ => None,
        };
        let grace = self
            .pause
            .as_ref()
            .filter(|_| self.pause_read_pending())
            .map(|(_, since)| *since + PAUSE_READ_GRACE);
        stale.into_iter().chain(grace).min()
    }

    /// Resolves when the pause switch changes (or its watch ended, which
    /// [`Gates::check`] then reports); never while it is not watched.
    pub(super) async fn pause_changed(&mut self) {
        match self.pause.as_mut() {
            Some((w, _)) => {
                let _ = w.rx.changed().await;
            }
            None => std::future::pending().await,
        }
    }
}
