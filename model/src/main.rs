use baton_model::config::{Config, Fault};
use baton_model::{Model, check};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let budget: u8 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(0);
    let faults: Vec<Fault> = args[2..].iter().map(|f| match f.as_str() {
        "kill" => Fault::Kill, "flag" => Fault::Flag, "notready" => Fault::NotReady,
        "delnode" => Fault::DeleteNode, "cordon" => Fault::HumanCordon, "uncordon" => Fault::HumanUncordon,
        "dellease" => Fault::DeleteLease, "renew" => Fault::RenewFails, "noreboot" => Fault::NoReboot,
        "selfreboot" => Fault::SelfReboot, "drainfail" => Fault::DrainFails, _ => panic!("{f}"),
    }).collect();
    let cfg = Config::base("exp").with_faults(&faults, budget);
    let m = Model::new(cfg);
    println!("state size {}", std::mem::size_of::<baton_model::state::State>());
    let o = check::explore(&m, 50_000_000);
    println!("states={} transitions={} depth={} truncated={} elapsed={:?}", o.states, o.transitions, o.depth, o.truncated, o.elapsed);
    if let Some(c) = o.counterexample {
        for l in check::explain(&m, &c.trace) { println!("{l}"); }
    }
}
