//! The configurations checked: a quick set for `cargo test`, the full set for the `baton-model`
//! binary.
//!
//! Sizes (distinct states) decide what fits: two nodes with one fault of any kind take seconds to
//! a minute each; three nodes that all want a reboot take more states than this checker can hold
//! in memory, so the three-node configurations have one or two nodes flagged (a third agent still
//! watches, judges and may take every Lease).

use crate::config::{Config, Fault, NodeCfg};

/// Every fault, one configuration each.
pub const FAULTS: [Fault; 12] = [
    Fault::Kill,
    Fault::NoReboot,
    Fault::Flag,
    Fault::NotReady,
    Fault::DeleteNode,
    Fault::HumanCordon,
    Fault::HumanUncordon,
    Fault::DeleteLease,
    Fault::RenewFails,
    Fault::SelfReboot,
    Fault::DrainFails,
    Fault::Window,
];

fn node(zone: &'static str, control_plane: bool, flagged: bool) -> NodeCfg {
    NodeCfg {
        zone,
        control_plane,
        flagged,
    }
}

/// Two flagged nodes, no fault, with liveness; and the same with an agent killed once, at any
/// moment (between any two API calls, mid-drain, right after a trigger).
pub fn quick() -> Vec<Config> {
    let mut two = Config::base("two-nodes", 2);
    two.liveness = true;
    vec![two, with_fault(Fault::Kill)]
}

/// Two flagged nodes, fault `f` at most once.
fn with_fault(f: Fault) -> Config {
    Config::base(&format!("two-nodes+{}", f.as_str()), 2).with_faults(&[f], 1)
}

/// The quick set, then two nodes under each other fault in turn (one per run), two
/// control-plane nodes in two zones (grouped by zone: only the control-plane Lease keeps them
/// apart), and three nodes.
pub fn full() -> Vec<Config> {
    let mut all = quick();
    all.extend(FAULTS[1..].iter().map(|&f| with_fault(f)));
    let mut cp = Config::base("control-plane", 2);
    cp.group_by_zone = true;
    cp.nodes = vec![node("a", true, true), node("b", true, true)];
    all.push(cp);
    for (name, faults) in [
        ("three-nodes-one-flagged", &[][..]),
        ("three-nodes-one-flagged+kill", &[Fault::Kill][..]),
    ] {
        let mut three = Config::base(name, 3).with_faults(faults, 1);
        three.nodes[1].flagged = false;
        three.nodes[2].flagged = false;
        all.push(three);
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Fix;
    use crate::{Model, check};

    /// Fewer states than this would mean the exploration stopped short (two nodes reach about
    /// 218 000 without faults, counting renamings as one).
    const FLOOR: u64 = 100_000;

    #[test]
    fn the_quick_configurations_hold_every_property_in_every_reachable_state() {
        for cfg in quick() {
            let name = cfg.to_string();
            let m = Model::new(cfg);
            let o = check::explore(&m, 20_000_000);
            if let Some(c) = &o.counterexample {
                panic!(
                    "{name}: {}: {}\n{}",
                    c.violation.property,
                    c.violation.detail,
                    check::explain(&m, &c.trace).join("\n")
                );
            }
            assert!(!o.truncated, "{name}: stopped at the state limit");
            assert!(o.states > FLOOR, "{name}: only {} states", o.states);
            println!("{name}: {} states in {:.1?}", o.states, o.elapsed);
        }
    }

    #[test]
    fn the_window_gate_is_the_real_window_s_verdict() {
        assert_eq!(crate::glue::window_gate(false), None);
        let closed = crate::glue::window_gate(true).expect("closed at noon");
        assert!(closed.contains("outside the reboot window"), "{closed}");
    }

    /// Each shell fix reverted in the glue lets the checker find the race it closed, and the
    /// trace replays to the violation.
    #[test]
    fn each_shell_fix_reverted_is_caught_and_its_trace_replays() {
        let cases = [
            (Fix::Fence, None, "trigger-fenced"),
            // A restarted agent trusting the Lease's record, not its own renewal.
            (Fix::LeaseLost, Some(Fault::Kill), "concurrency"),
            // A cordon written over a human's: undone after the reboot.
            (
                Fix::CordonPrecondition,
                Some(Fault::HumanCordon),
                "human-cordon",
            ),
        ];
        for (fix, fault, property) in cases {
            let mut cfg = match fault {
                Some(f) => with_fault(f),
                None => Config::base("two-nodes", 2),
            };
            cfg.revert = Some(fix);
            let m = Model::new(cfg);
            let o = check::explore(&m, 2_000_000);
            let c = o
                .counterexample
                .unwrap_or_else(|| panic!("{}: nothing found", fix.as_str()));
            assert_eq!(c.violation.property, property, "{}", fix.as_str());
            let lines = check::explain(&m, &c.trace);
            assert!(
                lines
                    .last()
                    .is_some_and(|l| l.contains(&format!("✗ {property}"))),
                "{}: the replay ends at the violation: {lines:?}",
                fix.as_str()
            );
        }
    }
}
