//! Perf program (prints figures, asserts nothing): the idle footprint of one agent with nothing
//! to do — resident memory, CPU time, every API request it makes and the watches it keeps open
//! (from the API server's audit log) — over a window of `--seconds` (default 300; watches are
//! re-made every 5–10 minutes, so 660 s sees each at least once).
//!
//! `cargo build -p baton && cargo run -p baton-tests --bin baton-idle -- --seconds 300`

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result};
use baton_tests::Cluster;
use baton_tests::agent::{Method, SimNode};
use baton_tests::audit;
use baton_tests::cluster::Options;
use jiff::Timestamp;

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

/// The agent's requests received in `[from, to)`, by `verb resource`, and its watches open at `to`.
fn audit_window(
    path: &std::path::Path,
    from: Timestamp,
    to: Timestamp,
) -> Result<(BTreeMap<String, usize>, Vec<String>)> {
    let reqs = audit::read(path)?;
    let window = audit::by_kind(
        reqs.iter()
            .filter(|r| r.is_baton() && r.received >= from && r.received < to),
    );
    let open = reqs
        .iter()
        .filter(|r| r.is_baton() && r.watching_at(to))
        .map(|r| {
            format!(
                "{} {} (timeoutSeconds {})",
                r.kind(),
                r.query("fieldSelector").unwrap_or_default(),
                r.query("timeoutSeconds").unwrap_or_default()
            )
        })
        .collect();
    Ok((window, open))
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
    // The start-up reads (its Node, its Lease once) take milliseconds; the window starts after.
    baton_tests::wait_for("the start-up reads", Duration::from_secs(60), || async {
        let (seen, _) = audit_window(
            &cluster.audit_log(),
            Timestamp::UNIX_EPOCH,
            Timestamp::now(),
        )?;
        Ok(seen.contains_key("get leases").then_some(()))
    })
    .await?;
    let from = Timestamp::now();
    let (startup, _) = audit_window(&cluster.audit_log(), Timestamp::UNIX_EPOCH, from)?;
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
    let (idle, open) = audit_window(&cluster.audit_log(), from, Timestamp::now())?;
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
    println!(
        "api requests:     {total} received in the window ({:.3}/min) {idle:?}",
        total as f64 / (seconds as f64 / 60.0)
    );
    println!("open watches:     {} at the end {open:?}", open.len());
    Ok(())
}
