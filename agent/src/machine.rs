//! The node state machine: given what the agent observes (maintenance flag, Lease, Node, boot
//! ID), decide the one next step. Pure: no I/O, no clock of its own, so every transition is a
//! unit test. The shell in `agent` gathers the observation and carries the step out.
//!
//! baton's own annotations are input like any other: a phase is acted on only while what it
//! implies holds (draining or rebooting ⇒ the node is cordoned; a finished reboot counts only if
//! baton triggered one). Anything else is an inconsistency, and the cycle restarts from its safe
//! beginning.

use std::time::{Duration, SystemTime};

use crate::flag::Flag;
use crate::lease::LeaseView;

/// Where this node is in its maintenance cycle, as recorded on the Node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash, PartialOrd, Ord)]
pub enum Phase {
    /// Nothing in progress.
    #[default]
    Idle,
    /// Holding the Lease; cordoned; evicting pods.
    Draining,
    /// Drained; a reboot was (or is about to be) triggered from the recorded boot ID.
    Rebooting,
}

impl Phase {
    /// The phase's name on the Node and in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Idle => "idle",
            Phase::Draining => "draining",
            Phase::Rebooting => "rebooting",
        }
    }

    /// Parses a phase name written by [`Phase::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        [Phase::Idle, Phase::Draining, Phase::Rebooting]
            .into_iter()
            .find(|p| p.as_str() == s)
    }
}

/// baton's durable state for this node (kept in Node annotations, so it survives restarts).
#[derive(Debug, Clone, PartialEq, Eq, Default, Hash)]
pub struct NodeState {
    /// The current phase.
    pub phase: Phase,
    /// Whether baton cordoned the node (false: it was already unschedulable, so leave it so).
    pub cordoned_by_baton: bool,
    /// The boot ID when the cycle started (recorded with the cordon): another one later means the
    /// host rebooted.
    pub boot_id_before: Option<String>,
    /// Reboots triggered from `boot_id_before` so far.
    pub reboot_attempts: u32,
    /// When the last reboot was triggered (recorded before triggering): until the reboot wait
    /// has passed, the trigger is pending and the host may go down at any moment.
    pub triggered_at: Option<SystemTime>,
    /// No new cycle before this time (set after a failed drain).
    pub backoff_until: Option<SystemTime>,
    /// A dry run already ran during this boot; do not repeat it.
    pub dry_run_boot_id: Option<String>,
    /// baton gave up on rebooting during this boot (triggers did not reboot the host).
    pub gave_up_boot_id: Option<String>,
    /// Completed reboots while the flag stayed set; reset when the flag clears.
    pub consecutive_reboots: u32,
}

impl NodeState {
    /// This state with one more reboot trigger counted, triggered at `now`. Saturates: the
    /// count comes from an annotation and may already be at the maximum, and wrapping to 0
    /// would lift the cap.
    pub fn one_more_attempt(&self, now: SystemTime) -> NodeState {
        NodeState {
            reboot_attempts: self.reboot_attempts.saturating_add(1),
            triggered_at: Some(now),
            ..self.clone()
        }
    }

    /// The state once a reboot completed: idle, with one more completed reboot counted for the
    /// reboot-loop guard when baton triggered it (saturating, so a huge count never wraps back
    /// to "no loop").
    pub fn rebooted(&self, counted: bool) -> NodeState {
        NodeState {
            consecutive_reboots: if counted {
                self.consecutive_reboots.saturating_add(1)
            } else {
                self.consecutive_reboots
            },
            ..NodeState::default()
        }
    }

    /// The state once a cycle stops without a reboot: idle, keeping what guards the next cycles
    /// (the reboot-loop count, the dry-run and give-up records).
    pub fn aborted(&self) -> NodeState {
        NodeState {
            phase: Phase::Idle,
            consecutive_reboots: self.consecutive_reboots,
            dry_run_boot_id: self.dry_run_boot_id.clone(),
            gave_up_boot_id: self.gave_up_boot_id.clone(),
            ..NodeState::default()
        }
    }

    /// Whether baton triggered a reboot during this cycle.
    pub fn triggered(&self) -> bool {
        self.reboot_attempts > 0 || self.triggered_at.is_some()
    }

    /// Whether a trigger is pending at `now`: sent less than `reboot_wait` ago (a clock that
    /// went backwards counts as pending too).
    pub fn trigger_pending(&self, now: SystemTime, reboot_wait: Duration) -> bool {
        self.triggered_at
            .is_some_and(|t| now.duration_since(t).map_or(true, |d| d < reboot_wait))
    }
}

/// Time limits the decision depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The cap on reboot triggers per boot, and on reboots while the flag persists.
    pub max_reboot_attempts: u32,
    /// After a trigger, how long the host may take to go down before baton triggers again (or,
    /// after the last attempt, gives up).
    pub reboot_wait: Duration,
    /// How long a cycle may stay unable to tell the flag or the boot ID before baton gives the
    /// cycle up rather than hold the Lease for ever.
    pub stall: Duration,
}

/// Everything the decision depends on.
#[derive(Debug, Clone)]
pub struct Observation<'a> {
    /// The maintenance flag.
    pub flag: &'a Flag,
    /// baton's recorded state.
    pub state: &'a NodeState,
    /// Whether the Node is Ready.
    pub node_ready: bool,
    /// Whether the Node is unschedulable right now.
    pub node_unschedulable: bool,
    /// The current boot ID of this host (`None`: it could not be read).
    pub boot_id: Option<&'a str>,
    /// How long the flag has been "could not check" (zero while it is known).
    pub flag_unknown_for: Duration,
    /// How long the boot ID has been unreadable (zero while it is readable).
    pub boot_unknown_for: Duration,
    /// Who holds the Lease, as judged by this agent.
    pub lease: &'a LeaseView,
    /// Wall-clock time, for the persisted back-off and trigger time.
    pub now: SystemTime,
    /// Time limits.
    pub limits: Limits,
    /// Why no new cycle may start now (outside the window, paused, blocked), if so.
    pub gate: Option<&'a str>,
    /// This node holds some of the Leases it needs but not all (`lease` is not `Mine`).
    pub partly_held: bool,
    /// Why this node, holding the Lease right after its reboot, is not healthy enough yet to pass
    /// it on or start again (the post-reboot health gate), if so.
    pub settling: Option<&'a str>,
}

impl Observation<'_> {
    /// The flag has been "could not check" for the stall limit.
    fn flag_stalled(&self) -> bool {
        self.flag_unknown_for >= self.limits.stall
    }

    /// The boot ID has been unreadable for the stall limit.
    fn boot_stalled(&self) -> bool {
        self.boot_unknown_for >= self.limits.stall
    }
}

/// Why the agent is waiting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wait {
    /// No maintenance needed.
    NothingToDo,
    /// The flag (or the boot ID) could not be checked; that is never a reboot request.
    CouldNotCheck,
    /// Another node holds the Lease.
    LeaseHeld(String),
    /// Backing off after a failed drain.
    Backoff,
    /// The dry run for this boot is done.
    DryRunDone,
    /// Triggered reboots did not reboot the host; waiting for a human.
    GaveUp,
    /// The flag is still set after several completed reboots; waiting for a human.
    FlagPersists,
    /// Rebooted; waiting for the Node to be Ready before uncordoning.
    NodeNotReady,
    /// No new cycle now: outside the reboot window, or paused (the reason).
    Gated(String),
    /// A reboot was triggered; waiting for the host to go down.
    RebootPending,
    /// Rebooted and uncordoned; waiting until the node is healthy (the reason).
    Settling(String),
}

/// The next step for the shell to carry out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Nothing to do until something changes.
    Wait(Wait),
    /// Try to take the Lease.
    Acquire,
    /// Release the Lease (held while there is nothing to do).
    Release,
    /// Record phase Draining and the boot ID, and cordon (only if `cordon`: the node was
    /// schedulable).
    Cordon {
        /// Whether baton must cordon (and so later uncordon) the node.
        cordon: bool,
    },
    /// Evict the node's pods.
    Drain,
    /// Check the node is drained, record one more attempt and the trigger time, check the Lease
    /// once more (fencing), and reboot.
    Reboot,
    /// The host rebooted and the node is Ready: uncordon (if baton cordoned), clear state,
    /// report. The Lease is released by the next step, through the health gate.
    Finish {
        /// Whether to uncordon.
        uncordon: bool,
        /// Whether baton triggered the reboot (only then is it a reboot baton completed).
        counted: bool,
    },
    /// Stop the cycle without a reboot: uncordon (if baton cordoned), clear state, release.
    Abort {
        /// Whether to uncordon.
        uncordon: bool,
        /// Why.
        reason: AbortReason,
    },
    /// Forget the count of reboots that did not clear the flag (it has cleared).
    ResetHistory,
}

/// Why a cycle stopped without a reboot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AbortReason {
    /// The maintenance flag cleared before the reboot.
    FlagCleared,
    /// The Lease was lost (taken, deleted, or not renewed in time) before this node rebooted.
    LeaseLost,
    /// The drain failed or timed out (back off before the next try).
    DrainFailed,
    /// Triggered reboots did not change the boot ID: give up for this boot.
    RebootDidNotHappen,
    /// A dry run "rebooted".
    DryRun,
    /// The recorded phase does not match the node (e.g. rebooting, but schedulable and nothing
    /// triggered): start again from the safe beginning.
    Inconsistent,
    /// The flag or the boot ID stayed unknown longer than the stall limit mid-cycle.
    Stalled,
}

impl AbortReason {
    /// Every reason.
    pub const ALL: [AbortReason; 7] = [
        AbortReason::DrainFailed,
        AbortReason::RebootDidNotHappen,
        AbortReason::LeaseLost,
        AbortReason::FlagCleared,
        AbortReason::DryRun,
        AbortReason::Inconsistent,
        AbortReason::Stalled,
    ];

    /// A short label for logs, metrics and Events.
    pub fn as_str(self) -> &'static str {
        match self {
            AbortReason::FlagCleared => "flag_cleared",
            AbortReason::LeaseLost => "lease_lost",
            AbortReason::DrainFailed => "drain_failed",
            AbortReason::RebootDidNotHappen => "reboot_did_not_happen",
            AbortReason::DryRun => "dry_run",
            AbortReason::Inconsistent => "inconsistent",
            AbortReason::Stalled => "stalled",
        }
    }

    /// The reason of the Event it raises on the Node.
    pub fn event_reason(self) -> &'static str {
        match self {
            AbortReason::DrainFailed => "DrainFailed",
            AbortReason::RebootDidNotHappen => "RebootFailed",
            AbortReason::LeaseLost => "LeaseLost",
            AbortReason::FlagCleared => "MaintenanceCancelled",
            AbortReason::DryRun => "DryRun",
            AbortReason::Inconsistent => "InconsistentState",
            AbortReason::Stalled => "MaintenanceStalled",
        }
    }

    /// Whether it is a warning (something went wrong) rather than news.
    pub fn is_warning(self) -> bool {
        !matches!(self, AbortReason::FlagCleared | AbortReason::DryRun)
    }

    /// Whether the next cycle waits for `--drain-failure-backoff`: a retry at once would fail
    /// the same way, or (a lost Lease) would cut in front of the nodes waiting for it.
    pub fn backs_off(self) -> bool {
        matches!(
            self,
            AbortReason::DrainFailed | AbortReason::Stalled | AbortReason::LeaseLost
        )
    }
}

/// The next step. See the README's "How it works" for the same table in prose.
pub fn next_step(o: &Observation<'_>) -> Step {
    match o.state.phase {
        Phase::Idle => idle(o),
        Phase::Draining => draining(o),
        Phase::Rebooting => rebooting(o),
    }
}

fn abort(o: &Observation<'_>, reason: AbortReason) -> Step {
    Step::Abort {
        // Never uncordon what is not cordoned (a human uncordoned it) or what baton did not cordon.
        uncordon: o.state.cordoned_by_baton && o.node_unschedulable,
        reason,
    }
}

/// Whether the host rebooted since the cycle started (known only when both IDs are).
fn rebooted(o: &Observation<'_>) -> Option<bool> {
    let before = o.state.boot_id_before.as_deref()?;
    Some(o.boot_id? != before)
}

/// A reboot happened: finish once the node is Ready, whether or not this node still holds the
/// Lease; count it only if baton triggered it.
fn finish(o: &Observation<'_>) -> Step {
    if o.node_ready {
        Step::Finish {
            uncordon: o.state.cordoned_by_baton && o.node_unschedulable,
            counted: o.state.triggered(),
        }
    } else {
        Step::Wait(Wait::NodeNotReady)
    }
}

fn draining(o: &Observation<'_>) -> Step {
    // baton cordons before it drains: a schedulable node here was uncordoned by someone else (or
    // the record is not baton's). Stop rather than drain a node that takes new pods.
    if !o.node_unschedulable {
        return abort(o, AbortReason::Inconsistent);
    }
    // The host rebooted on its own mid-drain: the maintenance happened; do not reboot it again.
    if rebooted(o) == Some(true) {
        return finish(o);
    }
    match (o.flag, o.lease) {
        (Flag::NotRequired, _) => abort(o, AbortReason::FlagCleared),
        (_, LeaseView::Free | LeaseView::Held { .. }) => abort(o, AbortReason::LeaseLost),
        (Flag::Unknown(_), LeaseView::Mine) if o.flag_stalled() => abort(o, AbortReason::Stalled),
        (Flag::Unknown(_), LeaseView::Mine) => Step::Wait(Wait::CouldNotCheck),
        (Flag::Required(_), LeaseView::Mine) => Step::Drain,
    }
}

fn rebooting(o: &Observation<'_>) -> Step {
    let s = o.state;
    let pending = s.trigger_pending(o.now, o.limits.reboot_wait);
    match rebooted(o) {
        Some(true) => return finish(o),
        // The boot ID cannot be read: while a trigger is pending the host may be going down, so
        // nothing is undone; otherwise give up once it has been unknown too long.
        None if pending => return Step::Wait(Wait::RebootPending),
        None if o.boot_stalled() => return abort(o, AbortReason::Stalled),
        None => return Step::Wait(Wait::CouldNotCheck),
        Some(false) => {}
    }
    // Rebooting implies drained and cordoned: a schedulable node with nothing triggered is not
    // baton's record (it would reboot a node that was never drained).
    if !o.node_unschedulable && !s.triggered() {
        return abort(o, AbortReason::Inconsistent);
    }
    // A trigger was sent and the host may go down at any moment: nothing is undone meanwhile,
    // whatever the flag or the Lease say now.
    if pending {
        return Step::Wait(Wait::RebootPending);
    }
    if s.reboot_attempts >= o.limits.max_reboot_attempts {
        return abort(o, AbortReason::RebootDidNotHappen);
    }
    match (o.flag, o.lease) {
        (Flag::NotRequired, _) => abort(o, AbortReason::FlagCleared),
        (Flag::Unknown(_), _) if o.flag_stalled() => abort(o, AbortReason::Stalled),
        (Flag::Unknown(_), _) => Step::Wait(Wait::CouldNotCheck),
        (Flag::Required(_), LeaseView::Mine) => Step::Reboot,
        (Flag::Required(_), lease) => take_or_wait(lease),
    }
}

fn idle(o: &Observation<'_>) -> Step {
    // Right after its reboot, a node holding the Lease keeps it until it is healthy: it neither
    // passes it on nor starts again before then.
    if let (Some(why), LeaseView::Mine) = (o.settling, o.lease) {
        return Step::Wait(Wait::Settling(why.to_owned()));
    }
    // A node that cannot start now gives back the Leases it holds: holding one while waiting
    // for another would only hold others up.
    match idle_with_all(o) {
        Step::Wait(_) if o.partly_held => Step::Release,
        step => step,
    }
}

/// Why an idle node may not start a cycle now, whatever the Leases say: a gate (pause, window,
/// blocker), a back-off, an unknown boot ID, a dry run or a give-up for this boot, or a flag
/// that survived its reboots. `None`: it may start once it holds the Leases it needs (so only
/// then does the shell watch them).
pub fn start_blocked(
    gate: Option<&str>,
    s: &NodeState,
    boot: Option<&str>,
    now: SystemTime,
    limits: &Limits,
) -> Option<Wait> {
    if let Some(reason) = gate {
        Some(Wait::Gated(reason.to_owned()))
    } else if s.backoff_until.is_some_and(|t| now < t) {
        Some(Wait::Backoff)
    } else if boot.is_none() {
        // A cycle records the boot ID it starts from; without it, no cycle.
        Some(Wait::CouldNotCheck)
    } else if s.dry_run_boot_id.as_deref() == boot {
        Some(Wait::DryRunDone)
    } else if s.gave_up_boot_id.as_deref() == boot {
        Some(Wait::GaveUp)
    } else if s.consecutive_reboots >= limits.max_reboot_attempts {
        Some(Wait::FlagPersists)
    } else {
        None
    }
}

fn idle_with_all(o: &Observation<'_>) -> Step {
    let s = o.state;
    let blocked = start_blocked(o.gate, s, o.boot_id, o.now, &o.limits);
    match o.flag {
        Flag::Required(_) => match (blocked, o.lease) {
            (Some(_), LeaseView::Mine) => Step::Release,
            (Some(wait), _) => Step::Wait(wait),
            (None, LeaseView::Mine) => Step::Cordon {
                cordon: !o.node_unschedulable,
            },
            (None, lease) => take_or_wait(lease),
        },
        Flag::NotRequired if s.consecutive_reboots > 0 => Step::ResetHistory,
        Flag::NotRequired | Flag::Unknown(_) if matches!(o.lease, LeaseView::Mine) => Step::Release,
        Flag::NotRequired => Step::Wait(Wait::NothingToDo),
        Flag::Unknown(_) => Step::Wait(Wait::CouldNotCheck),
    }
}

/// For a Lease that is not ours (callers decide `Mine` first): take it if it may be taken,
/// else wait for its live holder.
fn take_or_wait(lease: &LeaseView) -> Step {
    match lease {
        LeaseView::Held {
            holder,
            expired: false,
        } => Step::Wait(Wait::LeaseHeld(holder.clone())),
        LeaseView::Free | LeaseView::Held { expired: true, .. } | LeaseView::Mine => Step::Acquire,
    }
}

/// What to do once a drain has ended.
pub fn after_drain(drained: bool, force_reboot: bool, cordoned_by_baton: bool) -> Step {
    if drained || force_reboot {
        Step::Reboot
    } else {
        Step::Abort {
            uncordon: cordoned_by_baton,
            reason: AbortReason::DrainFailed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOOT: &str = "boot-1";
    const MAX: u32 = 3;
    const WAIT: Duration = Duration::from_secs(600);
    const STALL: Duration = Duration::from_secs(300);

    fn t(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn required() -> Flag {
        Flag::Required("sentinel file".into())
    }

    fn unknown() -> Flag {
        Flag::Unknown("command exited 2".into())
    }

    fn held(expired: bool) -> LeaseView {
        LeaseView::Held {
            holder: "other".into(),
            expired,
        }
    }

    /// One observation, built field by field from a Ready, schedulable node at t(1000) whose
    /// flag and boot ID are known.
    #[derive(Clone)]
    struct Given {
        flag: Flag,
        state: NodeState,
        ready: bool,
        unschedulable: bool,
        boot: Option<&'static str>,
        flag_unknown_for: Duration,
        boot_unknown_for: Duration,
        lease: LeaseView,
        now: SystemTime,
        gate: Option<&'static str>,
        partly_held: bool,
        settling: Option<&'static str>,
    }

    fn given(flag: Flag, state: NodeState, lease: LeaseView) -> Given {
        Given {
            flag,
            // Draining and rebooting nodes are cordoned, as baton leaves them.
            unschedulable: state.phase != Phase::Idle,
            state,
            ready: true,
            boot: Some(BOOT),
            flag_unknown_for: Duration::ZERO,
            boot_unknown_for: Duration::ZERO,
            lease,
            now: t(1000),
            gate: None,
            partly_held: false,
            settling: None,
        }
    }

    impl Given {
        fn step(&self) -> Step {
            next_step(&Observation {
                flag: &self.flag,
                state: &self.state,
                node_ready: self.ready,
                node_unschedulable: self.unschedulable,
                boot_id: self.boot,
                flag_unknown_for: self.flag_unknown_for,
                boot_unknown_for: self.boot_unknown_for,
                lease: &self.lease,
                now: self.now,
                limits: Limits {
                    max_reboot_attempts: MAX,
                    reboot_wait: WAIT,
                    stall: STALL,
                },
                gate: self.gate,
                partly_held: self.partly_held,
                settling: self.settling,
            })
        }
        fn with(mut self, f: impl FnOnce(&mut Self)) -> Self {
            f(&mut self);
            self
        }
    }

    fn step(flag: &Flag, state: &NodeState, lease: &LeaseView, boot: &'static str) -> Step {
        given(flag.clone(), state.clone(), lease.clone())
            .with(|g| g.boot = Some(boot))
            .step()
    }

    fn draining() -> NodeState {
        NodeState {
            phase: Phase::Draining,
            cordoned_by_baton: true,
            boot_id_before: Some(BOOT.into()),
            ..Default::default()
        }
    }

    /// Rebooting from `before`, `attempts` triggers so far, the last long enough ago not to be
    /// pending any more.
    fn rebooting(before: &str, attempts: u32) -> NodeState {
        NodeState {
            phase: Phase::Rebooting,
            cordoned_by_baton: true,
            boot_id_before: Some(before.into()),
            reboot_attempts: attempts,
            triggered_at: (attempts > 0).then(|| t(0)),
            ..Default::default()
        }
    }

    fn abort(uncordon: bool, reason: AbortReason) -> Step {
        Step::Abort { uncordon, reason }
    }

    #[test]
    fn an_aborted_cycle_is_idle_and_keeps_only_the_guards_of_the_next_ones() {
        let s = NodeState {
            phase: Phase::Rebooting,
            cordoned_by_baton: true,
            boot_id_before: Some(BOOT.into()),
            reboot_attempts: 2,
            triggered_at: Some(t(5)),
            backoff_until: Some(t(9)),
            dry_run_boot_id: Some("dry".into()),
            gave_up_boot_id: Some("gave-up".into()),
            consecutive_reboots: 1,
        };
        assert_eq!(
            s.aborted(),
            NodeState {
                dry_run_boot_id: Some("dry".into()),
                gave_up_boot_id: Some("gave-up".into()),
                consecutive_reboots: 1,
                ..NodeState::default()
            }
        );
    }

    #[test]
    fn idle_node_without_a_flag_does_nothing() {
        let s = NodeState::default();
        assert_eq!(
            step(&Flag::NotRequired, &s, &LeaseView::Free, BOOT),
            Step::Wait(Wait::NothingToDo)
        );
    }

    #[test]
    fn could_not_check_is_never_a_reboot_request() {
        let s = NodeState::default();
        for lease in [LeaseView::Free, held(true), held(false)] {
            assert_eq!(
                step(&unknown(), &s, &lease, BOOT),
                Step::Wait(Wait::CouldNotCheck)
            );
        }
        // Holding the lease with an unknown flag: give it back rather than start a drain.
        assert_eq!(step(&unknown(), &s, &LeaseView::Mine, BOOT), Step::Release);
        // Mid-cycle, an unknown flag holds position: no drain progress, no reboot.
        assert_eq!(
            step(&unknown(), &draining(), &LeaseView::Mine, BOOT),
            Step::Wait(Wait::CouldNotCheck)
        );
        assert_eq!(
            step(&unknown(), &rebooting(BOOT, 1), &LeaseView::Mine, BOOT),
            Step::Wait(Wait::CouldNotCheck)
        );
        // An unreadable boot ID starts no cycle either.
        let no_boot = given(required(), s, LeaseView::Free).with(|g| g.boot = None);
        assert_eq!(no_boot.step(), Step::Wait(Wait::CouldNotCheck));
        let holding = no_boot.with(|g| g.lease = LeaseView::Mine);
        assert_eq!(holding.step(), Step::Release);
    }

    #[test]
    fn a_cycle_that_cannot_tell_for_too_long_gives_up_instead_of_holding_the_lease() {
        let stalled = |g: Given| {
            g.with(|g| {
                g.flag_unknown_for = STALL;
                g.boot_unknown_for = if g.boot.is_none() {
                    STALL
                } else {
                    Duration::ZERO
                };
            })
        };
        let d = given(unknown(), draining(), LeaseView::Mine);
        assert_eq!(d.clone().step(), Step::Wait(Wait::CouldNotCheck));
        assert_eq!(stalled(d).step(), abort(true, AbortReason::Stalled));
        let r = given(unknown(), rebooting(BOOT, 1), LeaseView::Mine);
        assert_eq!(stalled(r).step(), abort(true, AbortReason::Stalled));
        // An unreadable boot ID mid-reboot: wait, then give up...
        let r = given(required(), rebooting(BOOT, 1), LeaseView::Mine).with(|g| g.boot = None);
        assert_eq!(r.clone().step(), Step::Wait(Wait::CouldNotCheck));
        assert_eq!(stalled(r.clone()).step(), abort(true, AbortReason::Stalled));
        // Each unknown counts for itself: a boot ID unreadable only now is not stalled because the
        // flag was unknown for long.
        let just = r.clone().with(|g| g.flag_unknown_for = STALL);
        assert_eq!(just.step(), Step::Wait(Wait::CouldNotCheck));
        // ...but never while a trigger is pending: the host may be going down.
        let pending = r.with(|g| g.state.triggered_at = Some(t(900)));
        assert_eq!(stalled(pending).step(), Step::Wait(Wait::RebootPending));
        assert!(AbortReason::Stalled.backs_off() && AbortReason::Stalled.is_warning());
        // A node that lost its Lease mid-drain goes behind the nodes that waited for it.
        assert!(AbortReason::LeaseLost.backs_off());
        assert!(!AbortReason::FlagCleared.backs_off());
    }

    #[test]
    fn flagged_node_takes_a_free_or_expired_lease_and_waits_for_a_live_one() {
        let s = NodeState::default();
        assert_eq!(step(&required(), &s, &LeaseView::Free, BOOT), Step::Acquire);
        assert_eq!(step(&required(), &s, &held(true), BOOT), Step::Acquire);
        assert_eq!(
            step(&required(), &s, &held(false), BOOT),
            Step::Wait(Wait::LeaseHeld("other".into()))
        );
    }

    #[test]
    fn holder_cordons_only_a_schedulable_node() {
        let g = given(required(), NodeState::default(), LeaseView::Mine);
        assert_eq!(g.clone().step(), Step::Cordon { cordon: true });
        let cordoned = g.with(|g| g.unschedulable = true);
        assert_eq!(cordoned.step(), Step::Cordon { cordon: false });
    }

    #[test]
    fn draining_continues_only_while_holding_the_lease_and_the_flag() {
        let s = draining();
        assert_eq!(step(&required(), &s, &LeaseView::Mine, BOOT), Step::Drain);
        for lease in [LeaseView::Free, held(false), held(true)] {
            assert_eq!(
                step(&required(), &s, &lease, BOOT),
                abort(true, AbortReason::LeaseLost)
            );
        }
        assert_eq!(
            step(&Flag::NotRequired, &s, &LeaseView::Mine, BOOT),
            abort(true, AbortReason::FlagCleared)
        );
    }

    #[test]
    fn a_node_uncordoned_mid_cycle_or_forged_into_a_phase_starts_over_safely() {
        // Draining on a schedulable node: stop (nothing to uncordon), release.
        let uncordoned =
            given(required(), draining(), LeaseView::Mine).with(|g| g.unschedulable = false);
        assert_eq!(uncordoned.step(), abort(false, AbortReason::Inconsistent));
        // `phase=rebooting` with the current boot ID on a schedulable node, nothing triggered:
        // never a reboot of a node that was not drained.
        let forged = NodeState {
            phase: Phase::Rebooting,
            boot_id_before: Some(BOOT.into()),
            ..Default::default()
        };
        for lease in [LeaseView::Mine, LeaseView::Free, held(true)] {
            let g = given(required(), forged.clone(), lease).with(|g| g.unschedulable = false);
            assert_eq!(g.step(), abort(false, AbortReason::Inconsistent));
        }
        // `phase=rebooting` from another boot with nothing triggered: the host did reboot (on its
        // own, or the record is not baton's). Finish, but it is not a reboot baton completed.
        let other_boot = NodeState {
            boot_id_before: Some("boot-0".into()),
            ..forged
        };
        let g = given(required(), other_boot, LeaseView::Free);
        assert_eq!(
            g.step(),
            Step::Finish {
                uncordon: false,
                counted: false
            }
        );
        assert_eq!(g.state.rebooted(false).consecutive_reboots, 0);
    }

    #[test]
    fn a_host_that_reboots_on_its_own_mid_drain_is_not_rebooted_again() {
        let g = given(required(), draining(), LeaseView::Mine).with(|g| g.boot = Some("boot-2"));
        assert_eq!(
            g.clone().step(),
            Step::Finish {
                uncordon: true,
                counted: false
            }
        );
        let not_ready = g.with(|g| g.ready = false);
        assert_eq!(not_ready.step(), Step::Wait(Wait::NodeNotReady));
        // A record without the boot ID (an older agent's) drains on.
        let mut old = draining();
        old.boot_id_before = None;
        assert_eq!(
            step(&required(), &old, &LeaseView::Mine, "boot-2"),
            Step::Drain
        );
    }

    #[test]
    fn a_node_cordoned_by_hand_is_never_uncordoned() {
        let mut s = draining();
        s.cordoned_by_baton = false;
        assert_eq!(
            step(&Flag::NotRequired, &s, &LeaseView::Mine, BOOT),
            abort(false, AbortReason::FlagCleared)
        );
        let mut r = rebooting("boot-0", 1);
        r.cordoned_by_baton = false;
        assert_eq!(
            step(&Flag::NotRequired, &r, &LeaseView::Free, BOOT),
            Step::Finish {
                uncordon: false,
                counted: true
            }
        );
        assert_eq!(
            after_drain(false, false, false),
            abort(false, AbortReason::DrainFailed)
        );
    }

    #[test]
    fn reboot_is_triggered_only_while_holding_the_lease() {
        let s = rebooting(BOOT, 0);
        assert_eq!(step(&required(), &s, &LeaseView::Mine, BOOT), Step::Reboot);
        assert_eq!(step(&required(), &s, &LeaseView::Free, BOOT), Step::Acquire);
        assert_eq!(step(&required(), &s, &held(true), BOOT), Step::Acquire);
        assert_eq!(
            step(&required(), &s, &held(false), BOOT),
            Step::Wait(Wait::LeaseHeld("other".into()))
        );
    }

    #[test]
    fn a_pending_trigger_waits_for_the_host_whatever_the_flag_or_the_lease_say() {
        // The last allowed attempt was just triggered: the host is going down. Neither the
        // count, nor the flag clearing, nor the Lease (its watch event, or losing it) may undo
        // the cordon now.
        let just = NodeState {
            triggered_at: Some(t(999)),
            ..rebooting(BOOT, MAX)
        };
        for flag in [required(), Flag::NotRequired, unknown()] {
            for lease in [LeaseView::Mine, LeaseView::Free, held(false), held(true)] {
                let g = given(flag.clone(), just.clone(), lease.clone());
                assert_eq!(
                    g.step(),
                    Step::Wait(Wait::RebootPending),
                    "{flag:?} {lease:?}"
                );
            }
        }
        // Once the wait has passed without a reboot: the next attempt, or give up after the last.
        let later = |s: &NodeState| {
            given(required(), s.clone(), LeaseView::Mine).with(|g| g.now = t(999) + WAIT)
        };
        assert_eq!(
            later(&just).step(),
            abort(true, AbortReason::RebootDidNotHappen)
        );
        let second = NodeState {
            triggered_at: Some(t(999)),
            ..rebooting(BOOT, 1)
        };
        assert_eq!(later(&second).step(), Step::Reboot);
        // A clock that went backwards keeps the trigger pending rather than re-trigger.
        assert!(second.trigger_pending(t(10), WAIT));
        // The reboot happening while pending finishes the cycle.
        let done =
            given(Flag::NotRequired, just, LeaseView::Free).with(|g| g.boot = Some("boot-2"));
        assert_eq!(
            done.step(),
            Step::Finish {
                uncordon: true,
                counted: true
            }
        );
    }

    #[test]
    fn same_boot_id_means_no_reboot_happened_so_reboot_again_then_give_up() {
        assert_eq!(
            step(&required(), &rebooting(BOOT, 1), &LeaseView::Mine, BOOT),
            Step::Reboot
        );
        assert_eq!(
            step(&required(), &rebooting(BOOT, MAX), &LeaseView::Mine, BOOT),
            abort(true, AbortReason::RebootDidNotHappen)
        );
        // Given up for this boot: no new cycle until the boot ID changes.
        let gave_up = NodeState {
            gave_up_boot_id: Some(BOOT.into()),
            ..Default::default()
        };
        assert_eq!(
            step(&required(), &gave_up, &LeaseView::Free, BOOT),
            Step::Wait(Wait::GaveUp)
        );
        assert_eq!(
            step(&required(), &gave_up, &LeaseView::Free, "boot-2"),
            Step::Acquire
        );
    }

    #[test]
    fn changed_boot_id_finishes_once_ready_even_without_the_lease() {
        let s = rebooting("boot-0", 1);
        for lease in [LeaseView::Mine, LeaseView::Free, held(false)] {
            let g = given(required(), s.clone(), lease);
            assert_eq!(
                g.clone().with(|g| g.ready = false).step(),
                Step::Wait(Wait::NodeNotReady)
            );
            assert_eq!(
                g.step(),
                Step::Finish {
                    uncordon: true,
                    counted: true
                }
            );
        }
    }

    #[test]
    fn after_its_reboot_a_holder_settles_before_passing_on_or_starting_again() {
        let s = NodeState {
            consecutive_reboots: 1,
            ..Default::default()
        };
        let settling = |flag: Flag| {
            given(flag, s.clone(), LeaseView::Mine)
                .with(|g| g.settling = Some("DaemonSet pod x not Ready"))
        };
        let wait = Step::Wait(Wait::Settling("DaemonSet pod x not Ready".into()));
        // The flag is still set: no new cordon before the node is healthy...
        assert_eq!(settling(required()).step(), wait);
        // ...and no release either.
        assert_eq!(settling(Flag::NotRequired).step(), wait);
        assert_eq!(
            settling(required())
                .with(|g| g.gate = Some("paused"))
                .step(),
            wait
        );
        // Healthy: the flag still set starts a new cycle (counted against the loop cap).
        assert_eq!(
            given(required(), s.clone(), LeaseView::Mine).step(),
            Step::Cordon { cordon: true }
        );
        // Settling only matters to the holder.
        let other = given(required(), s, LeaseView::Free).with(|g| g.settling = Some("x"));
        assert_eq!(other.step(), Step::Acquire);
    }

    #[test]
    fn backoff_dry_run_and_persisting_flag_block_a_new_cycle() {
        let now = t(1000);
        let backoff = NodeState {
            backoff_until: Some(now + Duration::from_secs(1)),
            ..Default::default()
        };
        assert_eq!(
            step(&required(), &backoff, &LeaseView::Free, BOOT),
            Step::Wait(Wait::Backoff)
        );
        assert_eq!(
            step(&required(), &backoff, &LeaseView::Mine, BOOT),
            Step::Release
        );
        let expired = NodeState {
            backoff_until: Some(now),
            ..Default::default()
        };
        assert_eq!(
            step(&required(), &expired, &LeaseView::Free, BOOT),
            Step::Acquire
        );

        let dry = NodeState {
            dry_run_boot_id: Some(BOOT.into()),
            ..Default::default()
        };
        assert_eq!(
            step(&required(), &dry, &LeaseView::Free, BOOT),
            Step::Wait(Wait::DryRunDone)
        );

        let persists = NodeState {
            consecutive_reboots: MAX,
            ..Default::default()
        };
        assert_eq!(
            step(&required(), &persists, &LeaseView::Free, BOOT),
            Step::Wait(Wait::FlagPersists)
        );
        assert_eq!(
            step(&Flag::NotRequired, &persists, &LeaseView::Free, BOOT),
            Step::ResetHistory
        );
    }

    #[test]
    fn a_closed_window_or_a_pause_blocks_only_new_cycles() {
        let gated = |state: NodeState, lease: LeaseView| {
            given(required(), state, lease)
                .with(|g| g.gate = Some("paused"))
                .step()
        };
        let idle = NodeState::default();
        assert_eq!(
            gated(idle.clone(), LeaseView::Free),
            Step::Wait(Wait::Gated("paused".into()))
        );
        // Checked again before cordoning: a holder that became gated gives the lease back.
        assert_eq!(gated(idle, LeaseView::Mine), Step::Release);
        // A cycle in progress finishes.
        assert_eq!(gated(draining(), LeaseView::Mine), Step::Drain);
        assert_eq!(
            gated(rebooting("boot-0", 1), LeaseView::Free),
            Step::Finish {
                uncordon: true,
                counted: true
            }
        );
    }

    #[test]
    fn an_idle_node_holding_only_part_of_what_it_needs_gives_it_back() {
        let partly = |flag: Flag, state: NodeState, lease: LeaseView, gate| {
            given(flag, state, lease)
                .with(|g| {
                    g.gate = gate;
                    g.partly_held = true;
                })
                .step()
        };
        let idle = NodeState::default();
        // Waiting for the other Lease while holding one would hold others up.
        assert_eq!(
            partly(required(), idle.clone(), held(false), None),
            Step::Release
        );
        assert_eq!(
            partly(required(), idle.clone(), LeaseView::Free, Some("paused")),
            Step::Release
        );
        assert_eq!(
            partly(Flag::NotRequired, idle.clone(), held(false), None),
            Step::Release
        );
        // Takeable: take the rest.
        assert_eq!(
            partly(required(), idle.clone(), LeaseView::Free, None),
            Step::Acquire
        );
        assert_eq!(partly(required(), idle, held(true), None), Step::Acquire);
        // Mid-cycle nothing is given back early: a lost Lease aborts the drain as before.
        assert_eq!(
            partly(required(), draining(), held(false), None),
            abort(true, AbortReason::LeaseLost)
        );
    }

    #[test]
    fn idle_holder_without_work_releases() {
        let s = NodeState::default();
        assert_eq!(
            step(&Flag::NotRequired, &s, &LeaseView::Mine, BOOT),
            Step::Release
        );
    }

    #[test]
    fn drain_outcome_decides_between_reboot_and_abort() {
        assert_eq!(after_drain(true, false, true), Step::Reboot);
        assert_eq!(after_drain(false, true, true), Step::Reboot);
        assert_eq!(
            after_drain(false, false, true),
            abort(true, AbortReason::DrainFailed)
        );
    }

    #[test]
    fn counters_saturate_so_the_loop_guards_never_reset() {
        let done = rebooting("boot-0", 1).rebooted(true);
        assert_eq!((done.phase, done.consecutive_reboots), (Phase::Idle, 1));
        let at_max = NodeState {
            consecutive_reboots: u32::MAX,
            ..rebooting("boot-0", 1)
        };
        let done = at_max.rebooted(true);
        assert_eq!(done.consecutive_reboots, u32::MAX);
        assert_eq!(
            step(&required(), &done, &LeaseView::Free, BOOT),
            Step::Wait(Wait::FlagPersists)
        );
        let again = rebooting(BOOT, u32::MAX).one_more_attempt(t(0));
        assert_eq!(again.reboot_attempts, u32::MAX);
        assert_eq!(
            step(&required(), &again, &LeaseView::Mine, BOOT),
            abort(true, AbortReason::RebootDidNotHappen)
        );
        let next = rebooting(BOOT, 1).one_more_attempt(t(5));
        assert_eq!((next.reboot_attempts, next.triggered_at), (2, Some(t(5))));
    }

    #[test]
    fn phase_names_round_trip() {
        for p in [Phase::Idle, Phase::Draining, Phase::Rebooting] {
            assert_eq!(Phase::parse(p.as_str()), Some(p));
        }
        assert_eq!(Phase::parse("bogus"), None);
    }
}
