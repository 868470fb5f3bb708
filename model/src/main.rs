//! `baton-model`: checks baton's coordination protocol over its real pure core, every
//! configuration of the suite in turn, and prints each configuration, its figures and any
//! counterexample; last, one line `model: states=<n> configurations=<n> violations=<n>`.
//!
//! `baton-model` runs the full suite; `--quick` the one `cargo test` runs; `--only <name>` one
//! configuration of the full suite; `--revert <fix>` runs them with a fix of the shell's glue
//! reverted (`lease-lost`, `fence`, `cordon-precondition`), to show the checker bites there too
//! (fixes of the pure core are reverted by patching a scratch copy: see the README).

use std::process::ExitCode;

use baton_model::config::Fix;
use baton_model::{Model, check, suite};

/// Most distinct states one configuration may reach before the check counts as incomplete
/// (about 4 GB of memory at this size).
const STATE_LIMIT: u64 = 40_000_000;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut configs = suite::full();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => configs = suite::quick(),
            "--only" => {
                let Some(name) = it.next() else {
                    eprintln!("baton-model: --only needs a configuration name");
                    return ExitCode::from(2);
                };
                configs.retain(|c| &c.name == name);
                if configs.is_empty() {
                    eprintln!("baton-model: --only {name}: no such configuration");
                    return ExitCode::from(2);
                }
            }
            "--revert" => {
                let Some(fix) = it.next().and_then(|f| Fix::parse(f)) else {
                    eprintln!(
                        "baton-model: --revert needs one of lease-lost, fence, cordon-precondition"
                    );
                    return ExitCode::from(2);
                };
                for c in &mut configs {
                    c.revert = Some(fix);
                }
            }
            other => {
                eprintln!(
                    "baton-model: unknown argument {other:?} (--quick, --only <name>, --revert <fix>)"
                );
                return ExitCode::from(2);
            }
        }
    }
    let (mut states, mut violations, mut incomplete) = (0u64, 0u64, 0u64);
    for cfg in &configs {
        println!("{cfg}");
        let m = Model::new(cfg.clone());
        let o = check::explore(&m, STATE_LIMIT);
        states += o.states;
        println!(
            "  states={} transitions={} depth={} time={:.1}s{}",
            o.states,
            o.transitions,
            o.depth,
            o.elapsed.as_secs_f64(),
            if o.truncated {
                " INCOMPLETE (state limit)"
            } else {
                ""
            }
        );
        if o.truncated {
            incomplete += 1;
        }
        if let Some(c) = o.counterexample {
            violations += 1;
            println!(
                "  VIOLATION {}: {}",
                c.violation.property, c.violation.detail
            );
            for line in check::explain(&m, &c.trace) {
                println!("  {line}");
            }
        }
    }
    if incomplete > 0 {
        println!("model: {incomplete} configuration(s) incomplete");
    }
    println!(
        "model: states={states} configurations={} violations={violations}",
        configs.len()
    );
    if violations > 0 || incomplete > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
