//! The properties: checked in every reachable state ([`check_state`]) and on the transitions
//! they are about (the trigger, an uncordon, a decision).
//!
//! Each is named as in the README's Guarantees:
//! - `concurrency`: at most `--concurrency` nodes of a group in a cycle (phase set, cordoned by
//!   baton, draining, or down in a reboot baton triggered);
//! - `control-plane`: never two control-plane nodes in a cycle with `--serialize-control-plane`;
//! - `trigger-holds-leases`, `trigger-not-takeable`, `trigger-fenced`: no trigger unless the
//!   node holds every Lease it needs, no other agent could take one of them now (by the TTL on
//!   its own clock or by the holder-gone rules), and each was renewed by the fence in this step;
//! - `one-reboot-per-request`: no trigger to a host that already rebooted since its flag was
//!   set;
//! - `human-cordon`: baton never uncordons a node a human cordoned;
//! - `baton-cordon-left`: a node baton cordoned is not left cordoned once its cycle is over;
//! - `could-not-check`: a flag that could not be checked never starts, continues or reboots a
//!   cycle.
//!
//! The README's documented limits are excluded, by name: a node whose Lease was taken over at
//! its TTL while its agent could not act (killed, restarting, or its host down — a reboot longer
//! than the TTL), or taken by an agent that never saw the Lease before it was deleted by hand,
//! is an *orphan* and not counted until its cycle is over. Deleted Nodes are not counted (their
//! pods are gone with them).

use baton::flag::Flag;
use baton::lease::HolderNode;
use baton::machine::{Phase, Step};

use crate::glue::{holder_gone, observer};
use crate::state::{Drain, Power, Seen, State, Tenure};
use crate::{Model, ago};

/// A property that does not hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The property's name.
    pub property: &'static str,
    /// What was seen.
    pub detail: String,
}

fn fail(property: &'static str, detail: String) -> Result<(), Violation> {
    Err(Violation { property, detail })
}

/// Whether node `n` is in a cycle: its phase set, baton's cordon on it, draining, or down (or
/// going down) in a reboot baton triggered. A deleted Node is not.
pub fn in_cycle(s: &State, n: usize) -> bool {
    let Some(node) = s.nodes[n] else {
        return false;
    };
    node.ann.phase != Phase::Idle
        || (node.ann.cordoned_by_baton && node.unschedulable)
        || (s.ghost.baton_cordon[n] && node.unschedulable)
        || (s.agents[n].alive && s.agents[n].drain == Drain::Running)
        || (s.hosts[n].power != Power::Up && s.ghost.baton_reboot[n])
}

/// Whether node `p`'s agent can act: running, on a host that is up, and not still proving
/// (after a restart) that a Lease naming it is its own.
pub fn can_act(m: &Model, s: &State, p: usize) -> bool {
    let a = &s.agents[p];
    a.alive
        && s.hosts[p].power == Power::Up
        && !m.needs[p].leases.iter().any(|&l| {
            s.leases[l].is_some_and(|r| r.holder == Some(Model::id(p)))
                && a.keep[l].tenure == Tenure::NotHeld
        })
}

/// Whether node `n`'s agent believes (by its keeper's word) it holds a Lease the server gives
/// to someone else, or to nobody.
pub fn stale_hold(m: &Model, s: &State, n: usize) -> bool {
    let a = &s.agents[n];
    a.alive
        && m.needs[n].leases.iter().any(|&l| {
            a.keep[l].tenure == Tenure::Held
                && s.leases[l].is_none_or(|r| r.holder != Some(Model::id(n)))
        })
}

/// The state properties.
pub fn check_state(m: &Model, s: &State) -> Result<(), Violation> {
    let counted = |n: usize| in_cycle(s, n) && !s.ghost.orphan[n];
    let mut groups: Vec<&str> = m.needs.iter().map(|x| x.base.as_str()).collect();
    groups.sort_unstable();
    groups.dedup();
    for g in groups {
        let inside: Vec<usize> = (0..m.k)
            .filter(|&n| m.needs[n].base == g && counted(n))
            .collect();
        if inside.len() > usize::from(m.cfg.concurrency) {
            return fail(
                "concurrency",
                format!(
                    "{} nodes of group {g} in a cycle: {}",
                    inside.len(),
                    names(m, &inside)
                ),
            );
        }
    }
    if m.cfg.serialize_control_plane {
        let cp: Vec<usize> = (0..m.k)
            .filter(|&n| m.cfg.nodes[n].control_plane && counted(n))
            .collect();
        if cp.len() > 1 {
            return fail(
                "control-plane",
                format!("control-plane nodes in a cycle at once: {}", names(m, &cp)),
            );
        }
    }
    for n in 0..m.k {
        if let Some(node) = s.nodes[n]
            && s.ghost.baton_cordon[n]
            && node.unschedulable
            && node.ann.phase == Phase::Idle
        {
            return fail(
                "baton-cordon-left",
                format!("{} is idle but still cordoned by baton", m.names[n]),
            );
        }
    }
    Ok(())
}

fn names(m: &Model, ns: &[usize]) -> String {
    ns.iter()
        .map(|&n| m.names[n].as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// At node `n`'s trigger.
pub fn at_trigger(m: &Model, s: &State, n: usize) -> Result<(), Violation> {
    let a = &s.agents[n];
    let need = crate::glue::needed(m, n, usize::from(a.slot));
    // A node whose Node was deleted is no longer part of the cluster (its pods are gone); an
    // orphan lost its Lease to a documented limit (a Lease deleted by hand between its fence
    // and its trigger, say).
    if s.nodes[n].is_none() || s.ghost.orphan[n] {
        return Ok(());
    }
    for &l in &need {
        // A Lease deleted (by hand, or with a deleted Node) between the fence and the trigger
        // is a documented limit; one that another node holds, or that is free, is not.
        let held = s.leases[l].is_none_or(|r| r.holder == Some(Model::id(n)));
        if !held {
            return fail(
                "trigger-holds-leases",
                format!(
                    "{} triggers its reboot without holding {} (it is {})",
                    m.names[n],
                    m.lease_names[l],
                    match s.leases[l] {
                        None => "deleted".to_owned(),
                        Some(r) => r.holder.map_or("free".to_owned(), |h| format!(
                            "held by {}",
                            m.names[usize::from(h)]
                        )),
                    }
                ),
            );
        }
    }
    for &l in &need {
        let Some(current) = s.leases[l] else { continue };
        for o in (0..m.k).filter(|&o| o != n && s.agents[o].alive) {
            if !m.needs[o].leases.contains(&l) {
                continue;
            }
            let obs = &s.agents[o].obs[l];
            if obs.last != Some(current) || obs.deleted {
                continue;
            }
            let ob = observer(m, obs);
            let expired = ob.view(&m.names[o], m.cfg.ttl, ago(0)).may_take();
            let node = match s.agents[o].holder[l] {
                Some(w) if usize::from(w.holder) == n => match w.seen {
                    Seen::Unsynced => HolderNode::Unknown,
                    Seen::Missing => HolderNode::Missing,
                    Seen::Present(h) => HolderNode::Seen {
                        not_ready_since: (!h.ready).then(|| ago(w.not_ready_age.unwrap_or(0))),
                        phase: h.phase,
                    },
                },
                _ => HolderNode::Unknown,
            };
            let takeover = m.needs[o].leases[..m.needs[o].group].contains(&l);
            if expired || holder_gone(m, &ob, node, takeover) {
                return fail(
                    "trigger-not-takeable",
                    format!(
                        "{} triggers its reboot while {} could take {} ({})",
                        m.names[n],
                        m.names[o],
                        m.lease_names[l],
                        if expired {
                            "expired on its clock"
                        } else {
                            "holder gone"
                        }
                    ),
                );
            }
        }
    }
    if s.hosts[n].power == Power::Up && s.ghost.boots_since_request[n] > 0 {
        return fail(
            "one-reboot-per-request",
            format!(
                "{} triggers a reboot though its host already rebooted since the request",
                m.names[n]
            ),
        );
    }
    for &l in &need {
        if a.fenced & (1 << l) == 0 {
            return fail(
                "trigger-fenced",
                format!(
                    "{} triggers without renewing {} first",
                    m.names[n], m.lease_names[l]
                ),
            );
        }
    }
    Ok(())
}

/// When baton uncordons node `n`.
pub fn uncordon(m: &Model, s: &State, n: usize) -> Result<(), Violation> {
    if s.ghost.human_cordon[n] {
        return fail(
            "human-cordon",
            format!("{} uncordons a node a human cordoned", m.names[n]),
        );
    }
    Ok(())
}

/// When node `n` decides `step` on `flag`.
pub fn could_not_check(m: &Model, n: usize, flag: &Flag, step: &Step) -> Result<(), Violation> {
    let moves = matches!(
        step,
        Step::Acquire | Step::Cordon { .. } | Step::Drain | Step::Reboot
    );
    if matches!(flag, Flag::Unknown(_)) && moves {
        return fail(
            "could-not-check",
            format!(
                "{} decides {step:?} on a flag it could not check",
                m.names[n]
            ),
        );
    }
    Ok(())
}
