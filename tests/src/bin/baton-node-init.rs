//! PID 1 of a real test node: see `baton_tests::real_node::init`.

fn main() {
    let Some(config) = std::env::args_os().nth(1) else {
        eprintln!("usage: baton-node-init CONFIG.json");
        std::process::exit(2);
    };
    if let Err(e) = baton_tests::real_node::init::main(std::path::Path::new(&config)) {
        eprintln!("baton-node-init: {e:#}");
        std::process::exit(1);
    }
}
