//! Carrying out the state machine's steps: one function per step. Each writes baton's state on
//! the Node in one PATCH together with the cordon change it goes with, so an agent killed between
//! any two calls resumes from a consistent record.

use std::time::{Duration, SystemTime};

use anyhow::{Context, anyhow};
use k8s_openapi::api::core::v1::Node;
use serde_json::Value;
use tokio::sync::watch;
use tokio::time::Instant;

use super::{Agent, Next};
use crate::drain::Progress as DrainProgress; // the drain's own progress report
use crate::flag::Flag;
use crate::machine::{self, AbortReason, NodeState, Phase, Step, Wait};
use crate::node::{self, Update};
use crate::reboot::{self, Triggered};

/// What the current step works on.
pub(super) struct Subject<'a> {
    pub(super) node: &'a Node,
    pub(super) state: &'a NodeState,
    pub(super) boot_id: Option<&'a str>,
    pub(super) flag: &'a Flag,
    /// The Lease an Acquire takes.
    pub(super) take: usize,
}

impl Agent {
    /// Carries out `step`.
    pub(super) async fn act(&mut self, step: Step, cx: &Subject<'_>) -> anyhow::Result<Next> {
        match step {
            Step::Wait(w) => Ok(self.wait(&w, cx).await),
            Step::Acquire => {
                let owner = owner_of(cx.node);
                if !self.slots.acquire(cx.take, owner.as_ref()).await? {
                    self.note_wait("another node took the lease first");
                }
                Ok(Next::Again)
            }
            Step::Release => {
                self.slots.release().await?;
                Ok(Next::Again)
            }
            Step::Cordon { cordon } => self.cordon(cx, cordon).await,
            Step::Drain => self.drain(cx).await,
            Step::Reboot => self.reboot(cx).await,
            Step::Finish { uncordon, counted } => self.finish(cx, uncordon, counted).await,
            Step::Abort { uncordon, reason } => self.abort(cx, uncordon, reason, None).await,
            Step::ResetHistory => {
                let next = NodeState {
                    consecutive_reboots: 0,
                    ..cx.state.clone()
                };
                self.write_state(&next, None, "resetting the reboot history")
                    .await?;
                Ok(Next::Again)
            }
        }
    }

    async fn wait(&mut self, w: &Wait, cx: &Subject<'_>) -> Next {
        let why = match w {
            Wait::NothingToDo => "no maintenance needed".to_owned(),
            Wait::CouldNotCheck => {
                "could not check the maintenance flag or read the boot ID".to_owned()
            }
            Wait::LeaseHeld(h) => format!("the lease is held by {h}"),
            Wait::Backoff => "backing off after a failed cycle".to_owned(),
            Wait::DryRunDone => "dry run already done for this boot".to_owned(),
            Wait::GaveUp => "gave up: triggered reboots did not reboot this host".to_owned(),
            Wait::FlagPersists => "the flag persists after repeated reboots".to_owned(),
            Wait::NodeNotReady => "rebooted; waiting for the node to be Ready".to_owned(),
            Wait::Gated(why) | Wait::Settling(why) => why.clone(),
            Wait::RebootPending => "reboot triggered; waiting for the host to go down".to_owned(),
        };
        let looping = matches!(w, Wait::FlagPersists | Wait::GaveUp);
        self.metrics.reboot_loop_stopped.set(i64::from(looping));
        if matches!(w, Wait::FlagPersists) && self.last_wait.as_deref() != Some(why.as_str()) {
            self.events(cx.node)
                .publish(true, "RebootLoopStopped", "Wait", format!(
                    "the maintenance flag is still set after {} reboot(s) in a row; not rebooting again until it clears (--max-reboot-attempts)",
                    cx.state.consecutive_reboots
                ))
                .await;
        }
        self.note_wait(&why);
        Next::Wait
    }

    async fn cordon(&mut self, cx: &Subject<'_>, cordon: bool) -> anyhow::Result<Next> {
        let boot_id = cx
            .boot_id
            .ok_or_else(|| anyhow!("no boot ID to start a cycle from"))?;
        // Pods that refuse the drain (emptyDir, unmanaged...) stop the cycle before anything is
        // cordoned, naming them. (This decision's blocker check may just have listed them.)
        let (plan, budgets_checked) = match self.gates.take_plan() {
            Some(p) => (p, true),
            None => (self.drainer.plan().await?, false),
        };
        if let Some(why) = plan.refusal() {
            self.metrics.errors.with_label_values(&["drain"]).inc();
            return self
                .abort(cx, false, AbortReason::DrainFailed, Some(why))
                .await;
        }
        // The budgets were checked before the Lease was taken; once more now, holding it (unless
        // this decision's check just did). A budget at zero gives the Lease back (the gate then
        // says why).
        if !budgets_checked && self.gates.recheck_budgets(&plan).await?.is_some() {
            self.slots.release().await?;
            return Ok(Next::Again);
        }
        let next = NodeState {
            phase: Phase::Draining,
            cordoned_by_baton: cordon,
            boot_id_before: Some(boot_id.to_owned()),
            reboot_attempts: 0,
            triggered_at: None,
            backoff_until: None,
            ..cx.state.clone()
        };
        let mut annotations = node::state_annotations(&next, SystemTime::now());
        // The wait is over: cleared with the cordon, not by a write of its own.
        annotations.insert(node::WAITING.into(), Value::Null);
        let update = Update {
            annotations,
            // --pre-reboot-node-labels, with the cordon.
            labels: self.args.node_labels(true),
            unschedulable: cordon.then_some(true),
            resource_version: cx.node.metadata.resource_version.clone(),
        };
        // Written only over the Node this decision read: if it changed meanwhile (kubelet's
        // status updates do), read it again and decide again at once.
        match node::apply(&self.nodes, &self.args.node_name, &update).await {
            Ok(written) => self
                .node
                .offer(super::watch::Seen::Present(Box::new(written))),
            Err(kube::Error::Api(s)) if s.code == 409 => {
                let fresh = self.nodes.get(&self.args.node_name).await?;
                self.node
                    .offer(super::watch::Seen::Present(Box::new(fresh)));
                return Ok(Next::Again);
            }
            Err(e) => return Err(anyhow::Error::from(e).context("cordoning the node")),
        }
        let reason = match cx.flag {
            Flag::Required(r) => r.clone(),
            _ => String::new(),
        };
        tracing::info!(node = %self.args.node_name, cordoned = cordon, reason = %reason, boot_id, "maintenance started");
        self.events(cx.node)
            .publish(
                false,
                "MaintenanceStarted",
                "Cordon",
                format!(
                    "baton holds the lease and {} the node to drain and reboot it ({reason})",
                    if cordon {
                        "cordoned"
                    } else {
                        "found already cordoned"
                    }
                ),
            )
            .await;
        Ok(Next::Again)
    }

    /// The drain runs in the background while the loop keeps deciding: it goes on only while
    /// the machine keeps saying Drain (holding the Leases, the flag set, the node cordoned), and
    /// is cancelled the moment it says anything else. This step starts it, or takes its result.
    async fn drain(&mut self, cx: &Subject<'_>) -> anyhow::Result<Next> {
        let Some(run) = self.drain.as_mut() else {
            if self.delayed(
                cx,
                self.args.drain_delay,
                "--drain-delay: draining",
                "the cordon",
            ) {
                return Ok(Next::Wait);
            }
            self.events(cx.node)
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
            self.drain = Some(DrainRun::start(
                self.drainer.clone(),
                self.nodes.clone(),
                self.args.node_name.clone(),
            ));
            return Ok(Next::Wait);
        };
        if !run.task.as_ref().is_some_and(|t| t.is_finished()) {
            return Ok(Next::Wait);
        }
        let started = run.started;
        let task = run.task.take();
        self.drain = None;
        let drained = task
            .ok_or_else(|| anyhow!("the drain's result was already taken"))?
            .await
            .map_err(|e| anyhow!("the drain task failed: {e}"))?;
        let events = self.events(cx.node);
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
            cx.state.cordoned_by_baton,
        ) {
            Step::Reboot => {
                // The boot the reboot must change: recorded at the cordon (older records: now).
                let before = cx
                    .state
                    .boot_id_before
                    .as_deref()
                    .or(cx.boot_id)
                    .ok_or_else(|| anyhow!("no boot ID to reboot from"))?;
                let next = NodeState {
                    phase: Phase::Rebooting,
                    boot_id_before: Some(before.to_owned()),
                    reboot_attempts: 0,
                    triggered_at: None,
                    ..cx.state.clone()
                };
                self.write_state(&next, None, "recording the drained node")
                    .await?;
                Ok(Next::Again)
            }
            Step::Abort { uncordon, reason } => self.abort(cx, uncordon, reason, failure).await,
            other => Err(anyhow!("unexpected step after a drain: {other:?}")),
        }
    }

    /// Whether `delay`, counted from the current phase's start, is still running; if so, says
    /// so (`{what} <delay> after {after}`) and wakes the loop when it ends.
    fn delayed(&mut self, cx: &Subject<'_>, delay: Duration, what: &str, after: &str) -> bool {
        let since = node::time_of(cx.node, node::PHASE_SINCE);
        let Some(left) = delay_left(since, SystemTime::now(), delay) else {
            return false;
        };
        self.note_wait(&format!("{what} {} after {after}", node::human(delay)));
        self.wake_at = Some(Instant::now() + left);
        true
    }

    async fn reboot(&mut self, cx: &Subject<'_>) -> anyhow::Result<Next> {
        // --reboot-delay counts from the drain's end (when the phase became rebooting), before
        // the first trigger only; the check below that the node is drained comes after it.
        if !cx.state.triggered()
            && self.delayed(
                cx,
                self.args.reboot_delay,
                "--reboot-delay: rebooting",
                "the drain",
            )
        {
            return Ok(Next::Wait);
        }
        // "Rebooting" is a record, not proof: before the first trigger, the node's own pods say
        // whether it is drained. If not, drain (again).
        if !cx.state.triggered() && !self.args.force_reboot {
            let plan = self.drainer.plan().await?;
            let left: Vec<String> = plan
                .targets()
                .map(|(p, _)| format!("{}/{}", p.namespace, p.name))
                .collect();
            if !left.is_empty() {
                tracing::warn!(pods = ?left, "recorded as rebooting, but pods are left to drain: draining first");
                let next = NodeState {
                    phase: Phase::Draining,
                    ..cx.state.clone()
                };
                self.write_state(&next, None, "going back to draining")
                    .await?;
                return Ok(Next::Again);
            }
        }
        // Fencing: a successful renewal proves this node holds every Lease it needs right now.
        if let Err(why) = self.slots.fence().await {
            tracing::warn!(reason = %why, "not rebooting: this node does not hold every lease it needs");
            self.note_wait(&format!("not rebooting: {why}"));
            return Ok(Next::Wait);
        }
        // The attempt and its time are recorded before the trigger: whatever happens next (the
        // host going down, this agent killed), the next decision knows a trigger may be pending.
        let next = cx.state.one_more_attempt(SystemTime::now());
        self.write_state(&next, None, "recording the reboot attempt")
            .await?;
        if self.args.reboot_method != crate::config::RebootMethod::None {
            self.events(cx.node)
                .publish(
                    false,
                    "Rebooting",
                    "Reboot",
                    format!(
                        "rebooting (attempt {}, method {:?}, boot ID {})",
                        next.reboot_attempts,
                        self.args.reboot_method,
                        cx.boot_id.unwrap_or("unknown")
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
                self.note_wait("reboot triggered; waiting for the host to go down");
                Ok(Next::Wait)
            }
            Ok(Triggered::Stopped) => {
                tracing::info!(
                    "stop requested while the reboot command ran; the next start waits for the host, then tries again"
                );
                Ok(Next::Stop)
            }
            Ok(Triggered::DryRun) => {
                let done = Subject {
                    state: &next,
                    ..*cx
                };
                self.abort(&done, cx.state.cordoned_by_baton, AbortReason::DryRun, None)
                    .await
            }
            Err(e) => {
                self.metrics.errors.with_label_values(&["reboot"]).inc();
                // Nothing was triggered (the command failed, the signal was refused): the next
                // attempt need not wait for a host that is not going down.
                let failed = NodeState {
                    triggered_at: None,
                    ..next
                };
                self.write_state(&failed, None, "recording the failed trigger")
                    .await?;
                Err(anyhow::Error::from(e).context("triggering the reboot"))
            }
        }
    }

    async fn finish(
        &mut self,
        cx: &Subject<'_>,
        uncordon: bool,
        counted: bool,
    ) -> anyhow::Result<Next> {
        let next = cx.state.rebooted(counted);
        let now = SystemTime::now();
        let mut annotations = node::state_annotations(&next, now);
        annotations.insert(node::REBOOT_REQUESTED.into(), Value::Null);
        annotations.insert(node::LAST_REBOOT.into(), node::format_time(now).into());
        let update = Update {
            annotations,
            // --post-reboot-node-labels, with the uncordon.
            labels: self.args.node_labels(false),
            unschedulable: uncordon.then_some(false),
            resource_version: None,
        };
        self.write(update, "uncordoning the node").await?;
        let took = phase_age(cx.node);
        let boot_id = cx.boot_id.unwrap_or("unknown");
        let done = if uncordon {
            "uncordoned"
        } else {
            "left cordoned as it was before"
        };
        if counted {
            self.metrics.reboots.inc();
            tracing::info!(node = %self.args.node_name, uncordoned = uncordon, took = %took, boot_id, "reboot completed");
            self.events(cx.node)
                .publish(
                    false,
                    "RebootCompleted",
                    "Uncordon",
                    format!("rebooted (new boot ID {boot_id}) and {done} in {took}"),
                )
                .await;
        } else {
            // The host rebooted, but not by baton's hand: the cycle ends, uncounted.
            tracing::warn!(node = %self.args.node_name, uncordoned = uncordon, boot_id, "the host rebooted without a trigger from baton; ending the cycle without counting it");
            self.events(cx.node)
                .publish(
                    true,
                    "RebootNotTriggered",
                    "Uncordon",
                    format!(
                        "the host rebooted (new boot ID {boot_id}) without a trigger from baton; the cycle ended and the node is {done}; not counted as baton's reboot"
                    ),
                )
                .await;
        }
        // The Lease is released by the next step, through the health gate.
        Ok(Next::Again)
    }

    pub(super) async fn abort(
        &mut self,
        cx: &Subject<'_>,
        uncordon: bool,
        reason: AbortReason,
        detail: Option<String>,
    ) -> anyhow::Result<Next> {
        let state = cx.state;
        let mut next = state.aborted();
        if reason.backs_off() {
            next.backoff_until = SystemTime::now().checked_add(self.args.drain_failure_backoff);
        }
        match reason {
            AbortReason::RebootDidNotHappen => {
                next.gave_up_boot_id = cx.boot_id.map(str::to_owned);
            }
            AbortReason::DryRun => next.dry_run_boot_id = cx.boot_id.map(str::to_owned),
            _ => {}
        }
        // A cycle that set --pre-reboot-node-labels sets --post-reboot-node-labels as it ends,
        // whether or not it rebooted (as kured's uncordon after a failed drain does).
        let labels = if state.phase == Phase::Idle {
            Default::default()
        } else {
            self.args.node_labels(false)
        };
        let update = Update {
            annotations: node::state_annotations(&next, SystemTime::now()),
            labels,
            unschedulable: uncordon.then_some(false),
            resource_version: None,
        };
        self.write(update, "ending the cycle").await?;
        self.metrics
            .aborts
            .with_label_values(&[reason.as_str()])
            .inc();
        let done = if uncordon {
            "uncordoned the node"
        } else {
            "left the node's cordon as it was"
        };
        let backoff = node::human(self.args.drain_failure_backoff);
        let what = match reason {
            AbortReason::DrainFailed => format!(
                "drain failed ({}); {done}, released the lease; next try after {backoff}",
                detail.unwrap_or_default(),
            ),
            AbortReason::RebootDidNotHappen => format!(
                "{} reboot trigger(s) did not change the boot ID; {done}; giving up until the host reboots",
                state.reboot_attempts
            ),
            AbortReason::LeaseLost => {
                format!(
                    "the lease was lost before the reboot; maintenance stopped; {done}; next try after {backoff}"
                )
            }
            AbortReason::FlagCleared => {
                format!("the maintenance flag cleared; maintenance stopped; {done}")
            }
            AbortReason::DryRun => format!("dry run: the node would have rebooted now; {done}"),
            AbortReason::Inconsistent => format!(
                "baton's record (phase {}) does not match the node (schedulable: {}, reboot triggered: {}); not acting on it; {done}; a flagged node starts again from the beginning",
                state.phase.as_str(),
                !node::is_unschedulable(cx.node),
                state.triggered()
            ),
            AbortReason::Stalled => format!(
                "could not check the maintenance flag or read the boot ID for {}; maintenance stopped; {done}; next try after {backoff}",
                node::human(self.args.stall_timeout)
            ),
        };
        if reason.is_warning() {
            tracing::warn!(reason = reason.as_str(), uncordoned = uncordon, "{what}");
        } else {
            tracing::info!(reason = reason.as_str(), uncordoned = uncordon, "{what}");
        }
        self.events(cx.node)
            .publish(reason.is_warning(), reason.event_reason(), "Abort", what)
            .await;
        self.slots.release().await?;
        Ok(Next::Again)
    }

    /// Writes `update` to this Node and keeps the result as the newest Node seen.
    pub(super) async fn write(&mut self, update: Update, what: &'static str) -> anyhow::Result<()> {
        let written = node::apply(&self.nodes, &self.args.node_name, &update)
            .await
            .context(what)?;
        self.node
            .offer(super::watch::Seen::Present(Box::new(written)));
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
            ..Update::default()
        };
        self.write(update, what).await
    }
}

type DrainTask = tokio::task::JoinHandle<Result<crate::drain::Report, crate::drain::DrainError>>;

/// A drain running in the background.
pub(super) struct DrainRun {
    started: Instant,
    /// Taken once it has finished.
    task: Option<DrainTask>,
    /// Turns true when the drain ends, to wake the loop.
    pub(super) done: watch::Receiver<bool>,
}

impl DrainRun {
    fn start(drainer: crate::drain::Drainer, nodes: kube::Api<Node>, name: String) -> Self {
        let (done_tx, done) = watch::channel(false);
        let task = tokio::spawn(async move {
            let (progress_tx, progress_rx) = watch::channel(DrainProgress::default());
            // The progress writer ends once the drain drops its sender, after its last write.
            let drain_then_close = async move { drainer.drain(&progress_tx).await };
            let (result, ()) = tokio::join!(
                drain_then_close,
                report_progress(&nodes, &name, progress_rx)
            );
            let _ = done_tx.send(true);
            result
        });
        Self {
            started: Instant::now(),
            task: Some(task),
            done,
        }
    }
}

impl Drop for DrainRun {
    fn drop(&mut self) {
        // Cancels the drain (and every eviction it retries) if it still runs.
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

/// How often drain progress is written to the Node at most: visible within seconds, without a
/// write per eviction.
const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// Writes drain progress (pods pending, last error) to the Node's annotations as it changes,
/// at most every [`PROGRESS_EVERY`]; returns when the drain drops its sender.
async fn report_progress(
    nodes: &kube::Api<Node>,
    name: &str,
    mut rx: watch::Receiver<DrainProgress>,
) {
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

/// An owner reference to this Node, for the Lease (deleted with the Node).
fn owner_of(node: &Node) -> Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference> {
    Some(
        k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
            api_version: "v1".into(),
            kind: "Node".into(),
            name: node.metadata.name.clone()?,
            uid: node.metadata.uid.clone()?,
            ..Default::default()
        },
    )
}

/// How much of `delay` is left at `now`, counted from `since` (the phase's start, recorded on
/// the Node, so a restarted agent does not wait again); `None` when nothing is left or nothing
/// was recorded. A `since` in the future (a clock set back) waits no more.
fn delay_left(
    since: Option<SystemTime>,
    now: SystemTime,
    delay: std::time::Duration,
) -> Option<std::time::Duration> {
    let elapsed = now.duration_since(since?).unwrap_or(delay);
    delay.checked_sub(elapsed).filter(|left| !left.is_zero())
}

fn phase_age(node: &Node) -> String {
    node::time_of(node, node::PHASE_SINCE)
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .map_or_else(|| "unknown time".to_owned(), node::human)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delay_counts_from_the_phase_start_once() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let d = Duration::from_secs(30);
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert_eq!(
            delay_left(Some(t0), at(10), d),
            Some(Duration::from_secs(20))
        );
        assert_eq!(delay_left(Some(t0), at(30), d), None);
        assert_eq!(delay_left(Some(t0), at(3_000), d), None);
        assert_eq!(delay_left(Some(t0), at(0), Duration::ZERO), None);
        // Nothing recorded, or a start in the future: no waiting.
        assert_eq!(delay_left(None, at(0), d), None);
        assert_eq!(delay_left(Some(at(60)), at(0), d), None);
    }
}
