//! The node state machine: given what the agent observes (maintenance flag, Lease, Node, boot
//! ID), decide the one next step. Pure: no I/O, no clock of its own, so every transition is a
//! unit test. The shell in `agent` gathers the observation and carries the step out.

use std::time::SystemTime;

use crate::flag::Flag;
use crate::lease::LeaseView;

/// Where this node is in its maintenance cycle, as recorded on the Node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
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
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NodeState {
    /// The current phase.
    pub phase: Phase,
    /// Whether baton cordoned the node (false: it was already unschedulable, so leave it so).
    pub cordoned_by_baton: bool,
    /// The boot ID recorded before the reboot was triggered.
    pub boot_id_before: Option<String>,
    /// Reboots triggered from `boot_id_before` so far.
    pub reboot_attempts: u32,
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
    /// This state with one more reboot trigger counted. Saturates: the count comes from an
    /// annotation and may already be at the maximum, and wrapping to 0 would lift the cap.
    pub fn one_more_attempt(&self) -> NodeState {
        NodeState {
            reboot_attempts: self.reboot_attempts.saturating_add(1),
            ..self.clone()
        }
    }

    /// The state once a reboot completed: idle, with one more completed reboot counted for the
    /// reboot-loop guard (saturating, so a huge count never wraps back to "no loop").
    pub fn rebooted(&self) -> NodeState {
        NodeState {
            consecutive_reboots: self.consecutive_reboots.saturating_add(1),
            ..NodeState::default()
        }
    }
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
    /// The current boot ID of this host.
    pub boot_id: &'a str,
    /// Who holds the Lease, as judged by this agent.
    pub lease: &'a LeaseView,
    /// Wall-clock time, for the persisted back-off.
    pub now: SystemTime,
    /// The cap on reboot triggers per boot, and on reboots while the flag persists.
    pub max_reboot_attempts: u32,
    /// Why no new cycle may start now (outside the window, paused), if so.
    pub gate: Option<&'a str>,
    /// This node holds some of the Leases it needs but not all (`lease` is not `Mine`).
    pub partly_held: bool,
}

/// Why the agent is waiting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wait {
    /// No maintenance needed.
    NothingToDo,
    /// The flag could not be checked; that is never a reboot request.
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
    /// Record phase Draining and cordon (only if `cordon`: the node was schedulable).
    Cordon {
        /// Whether baton must cordon (and so later uncordon) the node.
        cordon: bool,
    },
    /// Evict the node's pods.
    Drain,
    /// Record one more attempt, check the Lease once more (fencing), and reboot.
    Reboot,
    /// The reboot happened and the node is Ready: uncordon (if baton cordoned), clear state,
    /// release the Lease, report.
    Finish {
        /// Whether to uncordon.
        uncordon: bool,
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
    /// Another node took the Lease before this node rebooted.
    LeaseLost,
    /// The drain failed or timed out (back off before the next try).
    DrainFailed,
    /// Triggered reboots did not change the boot ID: give up for this boot.
    RebootDidNotHappen,
    /// A dry run "rebooted".
    DryRun,
}

impl AbortReason {
    /// A short label for logs, metrics and Events.
    pub fn as_str(self) -> &'static str {
        match self {
            AbortReason::FlagCleared => "flag_cleared",
            AbortReason::LeaseLost => "lease_lost",
            AbortReason::DrainFailed => "drain_failed",
            AbortReason::RebootDidNotHappen => "reboot_did_not_happen",
            AbortReason::DryRun => "dry_run",
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
        }
    }

    /// Whether it is a warning (something went wrong) rather than news.
    pub fn is_warning(self) -> bool {
        matches!(
            self,
            AbortReason::DrainFailed | AbortReason::RebootDidNotHappen | AbortReason::LeaseLost
        )
    }
}

/// The next step. See the README's "How it works" for the same table in prose.
pub fn next_step(o: &Observation<'_>) -> Step {
    let s = o.state;
    let uncordon = s.cordoned_by_baton;
    match s.phase {
        Phase::Idle => idle(o),
        Phase::Draining => match (o.flag, o.lease) {
            (Flag::NotRequired, _) => Step::Abort {
                uncordon,
                reason: AbortReason::FlagCleared,
            },
            (_, LeaseView::Free | LeaseView::Held { .. }) => Step::Abort {
                uncordon,
                reason: AbortReason::LeaseLost,
            },
            (Flag::Unknown(_), LeaseView::Mine) => Step::Wait(Wait::CouldNotCheck),
            (Flag::Required(_), LeaseView::Mine) => Step::Drain,
        },
        Phase::Rebooting => {
            let before = s.boot_id_before.as_deref().unwrap_or_default();
            if !before.is_empty() && before != o.boot_id {
                // The reboot happened. Finishing never depends on still holding the Lease.
                return if o.node_ready {
                    Step::Finish { uncordon }
                } else {
                    Step::Wait(Wait::NodeNotReady)
                };
            }
            if s.reboot_attempts >= o.max_reboot_attempts {
                return Step::Abort {
                    uncordon,
                    reason: AbortReason::RebootDidNotHappen,
                };
            }
            match (o.flag, o.lease) {
                (Flag::NotRequired, _) => Step::Abort {
                    uncordon,
                    reason: AbortReason::FlagCleared,
                },
                (Flag::Unknown(_), _) => Step::Wait(Wait::CouldNotCheck),
                (Flag::Required(_), LeaseView::Mine) => Step::Reboot,
                (Flag::Required(_), lease) => take_or_wait(lease),
            }
        }
    }
}

fn idle(o: &Observation<'_>) -> Step {
    // A node that cannot start now gives back the Leases it holds: holding one while waiting
    // for another would only hold others up.
    match idle_with_all(o) {
        Step::Wait(_) if o.partly_held => Step::Release,
        step => step,
    }
}

fn idle_with_all(o: &Observation<'_>) -> Step {
    let s = o.state;
    let blocked = if let Some(reason) = o.gate {
        Some(Wait::Gated(reason.to_owned()))
    } else if s.backoff_until.is_some_and(|t| o.now < t) {
        Some(Wait::Backoff)
    } else if s.dry_run_boot_id.as_deref() == Some(o.boot_id) {
        Some(Wait::DryRunDone)
    } else if s.gave_up_boot_id.as_deref() == Some(o.boot_id) {
        Some(Wait::GaveUp)
    } else if s.consecutive_reboots >= o.max_reboot_attempts {
        Some(Wait::FlagPersists)
    } else {
        None
    };
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
    use std::time::Duration;

    use super::*;

    const BOOT: &str = "boot-1";
    const MAX: u32 = 3;

    fn required() -> Flag {
        Flag::Required("sentinel file".into())
    }

    fn held(expired: bool) -> LeaseView {
        LeaseView::Held {
            holder: "other".into(),
            expired,
        }
    }

    fn step(flag: &Flag, state: &NodeState, lease: &LeaseView, boot: &str) -> Step {
        step_with(flag, state, lease, boot, true, false)
    }

    fn step_with(
        flag: &Flag,
        state: &NodeState,
        lease: &LeaseView,
        boot: &str,
        ready: bool,
        unschedulable: bool,
    ) -> Step {
        next_step(&Observation {
            flag,
            state,
            node_ready: ready,
            node_unschedulable: unschedulable,
            boot_id: boot,
            lease,
            now: SystemTime::UNIX_EPOCH + Duration::from_secs(1_000),
            max_reboot_attempts: MAX,
            gate: None,
            partly_held: false,
        })
    }

    /// The step for a Ready, schedulable node with a gate and a partial hold.
    fn step_gated(
        flag: &Flag,
        state: &NodeState,
        lease: &LeaseView,
        gate: Option<&str>,
        partly_held: bool,
    ) -> Step {
        next_step(&Observation {
            flag,
            state,
            node_ready: true,
            node_unschedulable: false,
            boot_id: BOOT,
            lease,
            now: SystemTime::UNIX_EPOCH,
            max_reboot_attempts: MAX,
            gate,
            partly_held,
        })
    }

    fn rebooting(before: &str, attempts: u32) -> NodeState {
        NodeState {
            phase: Phase::Rebooting,
            cordoned_by_baton: true,
            boot_id_before: Some(before.into()),
            reboot_attempts: attempts,
            ..Default::default()
        }
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
        let unknown = Flag::Unknown("command exited 2".into());
        let s = NodeState::default();
        for lease in [LeaseView::Free, held(true), held(false)] {
            assert_eq!(
                step(&unknown, &s, &lease, BOOT),
                Step::Wait(Wait::CouldNotCheck)
            );
        }
        // Holding the lease with an unknown flag: give it back rather than start a drain.
        assert_eq!(step(&unknown, &s, &LeaseView::Mine, BOOT), Step::Release);
        // Mid-cycle, an unknown flag holds position: no drain progress, no reboot.
        let draining = NodeState {
            phase: Phase::Draining,
            ..Default::default()
        };
        assert_eq!(
            step(&unknown, &draining, &LeaseView::Mine, BOOT),
            Step::Wait(Wait::CouldNotCheck)
        );
        assert_eq!(
            step(&unknown, &rebooting(BOOT, 1), &LeaseView::Mine, BOOT),
            Step::Wait(Wait::CouldNotCheck)
        );
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
        let s = NodeState::default();
        let mine = LeaseView::Mine;
        assert_eq!(
            step_with(&required(), &s, &mine, BOOT, true, false),
            Step::Cordon { cordon: true }
        );
        assert_eq!(
            step_with(&required(), &s, &mine, BOOT, true, true),
            Step::Cordon { cordon: false }
        );
    }

    #[test]
    fn draining_continues_only_while_holding_the_lease_and_the_flag() {
        let s = NodeState {
            phase: Phase::Draining,
            cordoned_by_baton: true,
            ..Default::default()
        };
        assert_eq!(step(&required(), &s, &LeaseView::Mine, BOOT), Step::Drain);
        for lease in [LeaseView::Free, held(false), held(true)] {
            assert_eq!(
                step(&required(), &s, &lease, BOOT),
                Step::Abort {
                    uncordon: true,
                    reason: AbortReason::LeaseLost
                }
            );
        }
        assert_eq!(
            step(&Flag::NotRequired, &s, &LeaseView::Mine, BOOT),
            Step::Abort {
                uncordon: true,
                reason: AbortReason::FlagCleared
            }
        );
    }

    #[test]
    fn a_node_cordoned_by_hand_is_never_uncordoned() {
        let s = NodeState {
            phase: Phase::Draining,
            cordoned_by_baton: false,
            ..Default::default()
        };
        assert_eq!(
            step(&Flag::NotRequired, &s, &LeaseView::Mine, BOOT),
            Step::Abort {
                uncordon: false,
                reason: AbortReason::FlagCleared
            }
        );
        let mut r = rebooting("boot-0", 1);
        r.cordoned_by_baton = false;
        assert_eq!(
            step(&Flag::NotRequired, &r, &LeaseView::Free, BOOT),
            Step::Finish { uncordon: false }
        );
        assert_eq!(
            after_drain(false, false, false),
            Step::Abort {
                uncordon: false,
                reason: AbortReason::DrainFailed
            }
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
    fn same_boot_id_means_no_reboot_happened_so_reboot_again_then_give_up() {
        assert_eq!(
            step(&required(), &rebooting(BOOT, 1), &LeaseView::Mine, BOOT),
            Step::Reboot
        );
        assert_eq!(
            step(&required(), &rebooting(BOOT, MAX), &LeaseView::Mine, BOOT),
            Step::Abort {
                uncordon: true,
                reason: AbortReason::RebootDidNotHappen
            }
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
            assert_eq!(
                step_with(&required(), &s, &lease, BOOT, false, true),
                Step::Wait(Wait::NodeNotReady)
            );
            assert_eq!(
                step_with(&required(), &s, &lease, BOOT, true, true),
                Step::Finish { uncordon: true }
            );
        }
    }

    #[test]
    fn backoff_dry_run_and_persisting_flag_block_a_new_cycle() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
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
        let gated = |state: &NodeState, lease: &LeaseView| {
            step_gated(&required(), state, lease, Some("paused"), false)
        };
        let idle = NodeState::default();
        assert_eq!(
            gated(&idle, &LeaseView::Free),
            Step::Wait(Wait::Gated("paused".into()))
        );
        // Checked again before cordoning: a holder that became gated gives the lease back.
        assert_eq!(gated(&idle, &LeaseView::Mine), Step::Release);
        // A cycle in progress finishes.
        let draining = NodeState {
            phase: Phase::Draining,
            ..Default::default()
        };
        assert_eq!(gated(&draining, &LeaseView::Mine), Step::Drain);
        assert_eq!(
            gated(&rebooting("boot-0", 1), &LeaseView::Free),
            Step::Finish { uncordon: true }
        );
    }

    #[test]
    fn an_idle_node_holding_only_part_of_what_it_needs_gives_it_back() {
        let partly = |flag: &Flag, state: &NodeState, lease: &LeaseView, gate| {
            step_gated(flag, state, lease, gate, true)
        };
        let idle = NodeState::default();
        // Waiting for the other Lease while holding one would hold others up.
        assert_eq!(
            partly(&required(), &idle, &held(false), None),
            Step::Release
        );
        assert_eq!(
            partly(&required(), &idle, &LeaseView::Free, Some("paused")),
            Step::Release
        );
        assert_eq!(
            partly(&Flag::NotRequired, &idle, &held(false), None),
            Step::Release
        );
        // Takeable: take the rest.
        assert_eq!(
            partly(&required(), &idle, &LeaseView::Free, None),
            Step::Acquire
        );
        assert_eq!(partly(&required(), &idle, &held(true), None), Step::Acquire);
        // Mid-cycle nothing is given back early: a lost Lease aborts the drain as before.
        let draining = NodeState {
            phase: Phase::Draining,
            cordoned_by_baton: true,
            ..Default::default()
        };
        assert_eq!(
            partly(&required(), &draining, &held(false), None),
            Step::Abort {
                uncordon: true,
                reason: AbortReason::LeaseLost
            }
        );
    }

    #[test]
    fn counters_saturate_so_the_loop_guards_never_reset() {
        let done = rebooting("boot-0", 1).rebooted();
        assert_eq!((done.phase, done.consecutive_reboots), (Phase::Idle, 1));
        let at_max = NodeState {
            consecutive_reboots: u32::MAX,
            ..rebooting("boot-0", 1)
        };
        let done = at_max.rebooted();
        assert_eq!(done.consecutive_reboots, u32::MAX);
        assert_eq!(
            step(&required(), &done, &LeaseView::Free, BOOT),
            Step::Wait(Wait::FlagPersists)
        );
        let again = rebooting(BOOT, u32::MAX).one_more_attempt();
        assert_eq!(again.reboot_attempts, u32::MAX);
        assert_eq!(
            step(&required(), &again, &LeaseView::Mine, BOOT),
            Step::Abort {
                uncordon: true,
                reason: AbortReason::RebootDidNotHappen
            }
        );
        assert_eq!(rebooting(BOOT, 1).one_more_attempt().reboot_attempts, 2);
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
            Step::Abort {
                uncordon: true,
                reason: AbortReason::DrainFailed
            }
        );
    }

    #[test]
    fn phase_names_round_trip() {
        for p in [Phase::Idle, Phase::Draining, Phase::Rebooting] {
            assert_eq!(Phase::parse(p.as_str()), Some(p));
        }
        assert_eq!(Phase::parse("bogus"), None);
    }
}
