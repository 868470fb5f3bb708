//! Perf program (prints figures, asserts nothing): the idle footprint of one agent with nothing
//! to do — resident memory, CPU time, and every API request it makes (from the API server's
//! audit log) — over a window of `--seconds` (default 300).
//!
//! `cargo build -p baton && cargo run -p baton-tests --bin baton-idle -- --seconds 300`

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result};
use baton_tests::Cluster;
use baton_tests::agent::{Method, SimNode};
use baton_tests::cluster::Options;

/// /proc reports CPU time in USER_HZ ticks, which Linux fixes at 100 for user space.
const USER_HZ: f64 = 100.0;

fn proc_status(pid: u32, key: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// User plus system CPU time of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = s.rsplit_once(')')?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// Requests by baton agents in the audit log, from line `from` on: (verb resource) -> count.
fn audit_requests(path: &std::path::Path, from: usize) -> Result<(usize, BTreeMap<String, usize>)> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut counts = BTreeMap::new();
    let mut seen = std::collections::HashSet::new();
    let lines: Vec<&str> = text.lines().collect();
    for line in lines.iter().skip(from) {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let ua = v["userAgent"].as_str().unwrap_or_default();
        if !ua.starts_with("baton/") {
            continue;
        }
        let id = v["auditID"].as_str().unwrap_or_default().to_owned();
        if !seen.insert(id) {
            continue;
        }
        let key = format!(
            "{} {}",
            v["verb"].as_str().unwrap_or("?"),
            v["objectRef"]["resource"].as_str().unwrap_or("?")
        );
        *counts.entry(key).or_insert(0) += 1;
    }
    Ok((lines.len(), counts))
}

#[tokio::main]
async fn main() -> Result<()> {
    let mut seconds = 300u64;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--seconds" {
            seconds = args.next().context("--seconds needs a number")?.parse()?;
        }
    }
    let cluster = Cluster::start_with(Options { audit: true }).await?;
    let client = cluster.client().await?;
    cluster.add_nodes(&client, &["idle-1"], &[]).await?;
    cluster.namespace(&client, "idle").await?;
    // The defaults a real deployment runs with, bar the host paths.
    let mut node = SimNode::new(
        &cluster,
        "idle-1",
        "idle",
        Method::Command,
        &["--check-interval=30s", "--lock-ttl=30m", "--log-level=info"],
    )?;
    node.start()?;
    node.wait_ready(Duration::from_secs(60)).await?;
    let pid = node.pid().context("agent not running")?;
    let (start_line, startup) = audit_requests(&cluster.audit_log(), 0)?;
    let cpu0 = cpu_ticks(pid).unwrap_or(0);
    println!("agent ready; start-up requests: {startup:?}");
    println!("measuring {seconds}s of idling...");
    let mut max_rss = 0;
    for _ in 0..seconds {
        tokio::time::sleep(Duration::from_secs(1)).await;
        max_rss = max_rss.max(proc_status(pid, "VmRSS:").unwrap_or(0));
    }
    let cpu1 = cpu_ticks(pid).unwrap_or(0);
    let hz = USER_HZ;
    let (_, idle) = audit_requests(&cluster.audit_log(), start_line)?;
    let total: usize = idle.values().sum();
    println!("=== idle footprint of one agent over {seconds}s");
    println!(
        "resident memory:  now {} KiB, max {} KiB, peak (VmHWM) {} KiB",
        proc_status(pid, "VmRSS:").unwrap_or(0),
        max_rss,
        proc_status(pid, "VmHWM:").unwrap_or(0)
    );
    println!(
        "cpu time:         {:.3}s ({:.4}% of one core)",
        (cpu1 - cpu0) as f64 / hz,
        (cpu1 - cpu0) as f64 / hz / seconds as f64 * 100.0
    );
    println!("api requests:     {total} in the window {idle:?}");
    println!("(watches still open at the end are not in the audit log until they complete)");
    Ok(())
}
