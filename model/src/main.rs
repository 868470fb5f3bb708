use baton_model::config::{Config, Fault};
use baton_model::{Model, check};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let k: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(3);
    let budget: u8 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(0);
    let faults: Vec<Fault> = args.iter().skip(3).map(|f| match f.as_str() {
        "kill" => Fault::Kill, "flag" => Fault::Flag, "notready" => Fault::NotReady,
        "delnode" => Fault::DeleteNode, "cordon" => Fault::HumanCordon, "uncordon" => Fault::HumanUncordon,
        "dellease" => Fault::DeleteLease, "renew" => Fault::RenewFails, "noreboot" => Fault::NoReboot,
        "selfreboot" => Fault::SelfReboot, "drainfail" => Fault::DrainFails, _ => panic!("{f}"),
    }).collect();
    let mut cfg = Config::base("exp", k).with_faults(&faults, budget);
    if let Some(f) = std::env::var("FLAGGED").ok().and_then(|v| v.parse::<usize>().ok()) {
        for (i, n) in cfg.nodes.iter_mut().enumerate() { n.flagged = i < f; }
    }
    let m = Model::new(cfg);
    let o = check::explore(&m, 50_000_000);
    println!("states={} transitions={} depth={} truncated={} elapsed={:?}", o.states, o.transitions, o.depth, o.truncated, o.elapsed);
    if let Some(c) = o.counterexample {
        for l in check::explain(&m, &c.trace) { println!("{l}"); }
    }
}
