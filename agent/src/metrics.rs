//! Prometheus metrics, all named `baton_*`, with no per-pod labels (cardinality stays fixed).

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::machine::{AbortReason, Phase};

/// Drain duration buckets in seconds: from a near-empty node to the 30-minute drains of PDB-heavy
/// nodes.
const DRAIN_BUCKETS: [f64; 10] = [
    1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0,
];

/// The values of `baton_blocked`'s label.
pub const BLOCKERS: [&str; 3] = ["pod", "alert", "pdb"];

/// The values of `baton_notifications_total`'s label.
pub const NOTIFICATION_OUTCOMES: [&str; 3] = ["sent", "failed", "dropped"];

/// Every metric baton exports.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    /// 1 when this node's maintenance flag says a reboot is required.
    pub reboot_required: IntGauge,
    /// 1 while this node holds the Lease.
    pub lock_held: IntGauge,
    /// 1 for the current phase, 0 for the others.
    pub phase: IntGaugeVec,
    /// How long drains took.
    pub drain_duration: Histogram,
    /// Eviction attempts by outcome.
    pub evictions: IntCounterVec,
    /// Reboots verified by a changed boot ID.
    pub reboots: IntCounter,
    /// Reboots triggered (a trigger without a verified reboot is not a reboot).
    pub reboot_triggers: IntCounter,
    /// Cycles that stopped without a reboot, by reason.
    pub aborts: IntCounterVec,
    /// Errors by kind.
    pub errors: IntCounterVec,
    /// Maintenance-flag checks that could not tell, by source.
    pub flag_check_failures: IntCounterVec,
    /// 1 while paused, by scope (`node`, `cluster`).
    pub paused: IntGaugeVec,
    /// 1 while the reboot window is open.
    pub in_window: IntGauge,
    /// 1 while a blocker stops new cycles, by blocker (`pod`, `alert`, `pdb`).
    pub blocked: IntGaugeVec,
    /// 1 while baton refuses to reboot again: reboots did not clear the flag, or triggers did
    /// not reboot the host (`--max-reboot-attempts`).
    pub reboot_loop_stopped: IntGauge,
    /// 1 for each Lease (slot) this node holds, by name: who holds which slot, for dashboards
    /// (names are bounded by --concurrency and the groups).
    pub lease_held: IntGaugeVec,
    /// The Leases `lease_held` shows.
    leases_shown: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    /// Notifications by outcome (`sent`, `failed` after every retry, `dropped` from a full
    /// queue); no per-URL label: URLs are secrets.
    pub notifications: IntCounterVec,
    /// 1 once the agent is ready (what `/readyz` answers), 0 before.
    pub ready: IntGauge,
}

impl Metrics {
    /// Registers every metric in a new registry.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let m = Self {
            reboot_required: IntGauge::new(
                "baton_reboot_required",
                "1 when this node's maintenance flag says a reboot is required",
            )?,
            lock_held: IntGauge::new("baton_lock_held", "1 while this node holds the Lease")?,
            phase: IntGaugeVec::new(
                Opts::new("baton_phase", "1 for this node's current maintenance phase"),
                &["phase"],
            )?,
            drain_duration: Histogram::with_opts(
                HistogramOpts::new("baton_drain_duration_seconds", "How long drains took")
                    .buckets(DRAIN_BUCKETS.to_vec()),
            )?,
            evictions: IntCounterVec::new(
                Opts::new("baton_evictions_total", "Eviction attempts by outcome"),
                &["outcome"],
            )?,
            reboots: IntCounter::new(
                "baton_reboots_total",
                "Reboots completed and verified by a changed boot ID",
            )?,
            reboot_triggers: IntCounter::new(
                "baton_reboot_triggers_total",
                "Reboots triggered (signal sent or command run)",
            )?,
            aborts: IntCounterVec::new(
                Opts::new(
                    "baton_cycles_aborted_total",
                    "Cycles stopped without a reboot",
                ),
                &["reason"],
            )?,
            errors: IntCounterVec::new(
                Opts::new("baton_errors_total", "Errors by kind"),
                &["kind"],
            )?,
            flag_check_failures: IntCounterVec::new(
                Opts::new(
                    "baton_flag_check_failures_total",
                    "Maintenance-flag checks that could not tell (never a reboot request)",
                ),
                &["source"],
            )?,
            paused: IntGaugeVec::new(
                Opts::new("baton_paused", "1 while new cycles are paused, by scope"),
                &["scope"],
            )?,
            in_window: IntGauge::new("baton_in_window", "1 while the reboot window is open")?,
            blocked: IntGaugeVec::new(
                Opts::new(
                    "baton_blocked",
                    "1 while a blocker stops this node from starting a cycle, by blocker",
                ),
                &["blocker"],
            )?,
            reboot_loop_stopped: IntGauge::new(
                "baton_reboot_loop_stopped",
                "1 while baton refuses to reboot again (--max-reboot-attempts reached)",
            )?,
            leases_shown: Default::default(),
            lease_held: IntGaugeVec::new(
                Opts::new(
                    "baton_lease_held",
                    "1 for each Lease (slot) this node holds, by name",
                ),
                &["lease"],
            )?,
            notifications: IntCounterVec::new(
                Opts::new(
                    "baton_notifications_total",
                    "Notifications by outcome (sent, failed, dropped)",
                ),
                &["outcome"],
            )?,
            ready: IntGauge::new("baton_ready", "1 once the agent is ready (/readyz)")?,
            registry,
        };
        let r = &m.registry;
        r.register(Box::new(m.reboot_required.clone()))?;
        r.register(Box::new(m.lock_held.clone()))?;
        r.register(Box::new(m.phase.clone()))?;
        r.register(Box::new(m.drain_duration.clone()))?;
        r.register(Box::new(m.evictions.clone()))?;
        r.register(Box::new(m.reboots.clone()))?;
        r.register(Box::new(m.reboot_triggers.clone()))?;
        r.register(Box::new(m.aborts.clone()))?;
        r.register(Box::new(m.errors.clone()))?;
        r.register(Box::new(m.flag_check_failures.clone()))?;
        r.register(Box::new(m.paused.clone()))?;
        r.register(Box::new(m.in_window.clone()))?;
        r.register(Box::new(m.blocked.clone()))?;
        r.register(Box::new(m.reboot_loop_stopped.clone()))?;
        r.register(Box::new(m.lease_held.clone()))?;
        r.register(Box::new(m.notifications.clone()))?;
        r.register(Box::new(m.ready.clone()))?;
        for scope in ["node", "cluster"] {
            m.paused.with_label_values(&[scope]);
        }
        for b in BLOCKERS {
            m.blocked.with_label_values(&[b]);
        }
        for p in ["evicted", "gone", "pdb_blocked", "error"] {
            m.evictions.with_label_values(&[p]);
        }
        // Every series a rule or a dashboard reads exists from the start at 0: Prometheus'
        // increase() cannot see a counter's first step from nothing.
        for o in NOTIFICATION_OUTCOMES {
            m.notifications.with_label_values(&[o]);
        }
        for r in AbortReason::ALL {
            m.aborts.with_label_values(&[r.as_str()]);
        }
        m.set_phase(Phase::Idle);
        Ok(m)
    }

    /// Marks `phase` as the current one.
    pub fn set_phase(&self, phase: Phase) {
        for p in [Phase::Idle, Phase::Draining, Phase::Rebooting] {
            self.phase
                .with_label_values(&[p.as_str()])
                .set(i64::from(p == phase));
        }
    }

    /// Exactly the Leases in `held` show as held (the others' series are removed, never all
    /// at once: a scrape meanwhile sees no gap).
    pub fn set_leases_held(&self, held: &[&str]) {
        let mut shown = self.leases_shown.lock().unwrap_or_else(|p| p.into_inner());
        for gone in shown.iter().filter(|l| !held.contains(&l.as_str())) {
            let _ = self.lease_held.remove_label_values(&[gone]);
        }
        for lease in held {
            self.lease_held.with_label_values(&[lease]).set(1);
        }
        *shown = held.iter().map(|l| (*l).to_owned()).collect();
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::warn!(error = %e, "cannot encode metrics");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_named_baton_and_rendered() {
        let m = Metrics::new().unwrap();
        m.errors.with_label_values(&["api"]).inc();
        m.flag_check_failures.with_label_values(&["command"]).inc();
        let text = m.render();
        for name in [
            "baton_reboot_required",
            "baton_lock_held",
            "baton_phase{phase=\"idle\"} 1",
            "baton_drain_duration_seconds_bucket",
            "baton_evictions_total{outcome=\"pdb_blocked\"} 0",
            "baton_reboots_total 0",
            "baton_errors_total{kind=\"api\"} 1",
            "baton_flag_check_failures_total{source=\"command\"} 1",
            "baton_blocked{blocker=\"alert\"} 0",
            "baton_notifications_total{outcome=\"dropped\"} 0",
            "baton_cycles_aborted_total{reason=\"drain_failed\"} 0",
            "baton_ready 0",
        ] {
            assert!(text.contains(name), "{name} missing from:\n{text}");
        }
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(line.starts_with("baton_"), "{line}");
        }
    }

    #[test]
    fn only_the_leases_held_now_show() {
        let m = Metrics::new().unwrap();
        m.set_leases_held(&["baton", "baton-control-plane"]);
        m.set_leases_held(&["baton-1"]);
        let text = m.render();
        assert!(
            text.contains("baton_lease_held{lease=\"baton-1\"} 1"),
            "{text}"
        );
        assert!(!text.contains("lease=\"baton\""), "{text}");
        assert!(!text.contains("baton-control-plane"), "{text}");
        m.set_leases_held(&[]);
        assert!(!m.render().contains("baton_lease_held{"));
    }
}
