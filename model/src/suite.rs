//! The configurations checked: a quick set for `cargo test`, the full set for the `baton-model`
//! binary.
//!
//! Sizes (distinct states) decide what fits: two nodes with one fault of any kind take seconds to
//! a minute each; three nodes that all want a reboot take more states than this checker can hold
//! in memory, so the three-node configurations have one or two nodes flagged (a third agent still
//! watches, judges and may take every Lease).

use crate::config::{Config, Fault, NodeCfg};

/// Every fault, one configuration each.
pub const FAULTS: [Fault; 11] = [
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
];

fn node(zone: &'static str, control_plane: bool, flagged: bool) -> NodeCfg {
    NodeCfg {
        zone,
        control_plane,
        flagged,
    }
}

/// Two flagged nodes, no fault, with liveness; and two control-plane nodes in two zones
/// (grouped by zone, so only the control-plane Lease keeps them apart).
pub fn quick() -> Vec<Config> {
    let mut two = Config::base("two-nodes", 2);
    two.liveness = true;
    let mut cp = Config::base("control-plane", 2);
    cp.group_by_zone = true;
    cp.nodes = vec![node("a", true, true), node("b", true, true)];
    vec![two, cp]
}

/// The quick set, then two nodes under each fault in turn (one per run), then three nodes.
pub fn full() -> Vec<Config> {
    let mut all = quick();
    for f in FAULTS {
        let name = format!("two-nodes+{}", f.as_str());
        all.push(Config::base(&name, 2).with_faults(&[f], 1));
    }
    let mut three = Config::base("three-nodes-one-flagged", 3).with_faults(&[Fault::Flag], 1);
    three.nodes[1].flagged = false;
    three.nodes[2].flagged = false;
    all.push(three);
    all
}
