//! Perf program (prints figures, asserts nothing): a fleet of N kwok nodes, each with a real
//! agent process, on one control plane with an audit log. The agents idle first (what an
//! unflagged fleet costs the API server), then every node is flagged at once and the fleet rolls
//! at `--concurrency` (per zone with `--zones`, through `--group-by-label`), each reboot simulated
//! as the e2e harness does, several at a time. Prints the rollout time, the coordination
//! overhead per node, hand-off latencies, the agents' API requests by verb and resource, open
//! watches, the agents' memory and the API server's CPU and bytes sent.
//!
//! `cargo build --release -p baton && BATON_BIN=$CARGO_TARGET_DIR/release/baton \
//!  cargo run --release -p baton-tests --bin baton-fleet -- --nodes 50 --concurrency 10`

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use baton_tests::agent::{Method, SimNode};
use baton_tests::audit::{self, Request};
use baton_tests::cluster::{Cluster, Options};
use baton_tests::wait_for;
use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use tokio::time::Instant;

/// /proc reports CPU time in USER_HZ ticks, which Linux fixes at 100 for user space.
const USER_HZ: f64 = 100.0;
/// How often the harness looks for a node's reboot trigger (a local file).
const TRIGGER_POLL: Duration = Duration::from_millis(50);
/// How often the agents' memory is summed during the rollout.
const RSS_SAMPLE: Duration = Duration::from_secs(1);
/// Namespace of the Leases; also the prefix of the node names.
const NS: &str = "fleet";
/// The zone label of `--zones`.
const ZONE: &str = "topology.kubernetes.io/zone";
/// Nodes are created (and waited for) in batches this big: kwok takes them in quickly.
const NODE_BATCH: usize = 25;
/// The first metrics port tried (below the ephemeral range; above the well-known ones).
const FIRST_PORT: u16 = 20_000;
/// The idle window starts once the agents have asked nothing but watches for this long (their
/// start-up reads are over).
const QUIET: Duration = Duration::from_secs(5);

#[derive(Debug)]
struct Args {
    nodes: usize,
    concurrency: usize,
    zones: usize,
    idle_seconds: u64,
    timeout: Duration,
}

fn args() -> Result<Args> {
    let mut a = Args {
        nodes: 50,
        concurrency: 10,
        zones: 0,
        idle_seconds: 600,
        timeout: Duration::from_secs(1800),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--nodes" => a.nodes = value()?.parse()?,
            "--concurrency" => a.concurrency = value()?.parse()?,
            "--zones" => a.zones = value()?.parse()?,
            "--idle-seconds" => a.idle_seconds = value()?.parse()?,
            "--timeout-seconds" => a.timeout = Duration::from_secs(value()?.parse()?),
            other => bail!(
                "unknown flag {other}; flags: --nodes N --concurrency C --zones Z \
                 --idle-seconds S --timeout-seconds S"
            ),
        }
    }
    Ok(a)
}

/// User plus system CPU time of `pid`, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let ticks = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let f: Vec<u64> = s
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .skip(11)
                .take(2)
                .filter_map(|v| v.parse().ok())
                .collect();
            Some(f.iter().sum::<u64>())
        })
        .unwrap_or(0);
    ticks as f64 / USER_HZ
}

/// The running agents of this fleet: their summed resident memory (KiB), and each one's PID
/// and CPU time so far (seconds).
fn agents() -> (u64, Vec<(u32, f64)>) {
    let mut total = (0, Vec::new());
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return total;
    };
    let mine = format!("--lock-namespace={NS}\0");
    for e in dir.flatten() {
        let p = e.path();
        let Ok(cmd) = std::fs::read(p.join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd);
        if !cmd.starts_with(&format!(
            "{}\0agent\0",
            baton_tests::agent::baton_bin()
                .unwrap_or_default()
                .display()
        )) || !cmd.contains(&mine)
        {
            continue;
        }
        let rss = std::fs::read_to_string(p.join("status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            })
            .unwrap_or(0);
        let Some(pid) = p
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.parse().ok())
        else {
            continue;
        };
        total.0 += rss;
        total.1.push((pid, cpu_seconds(pid)));
    }
    total
}

/// The summed resident memory (KiB) and count of the running agents of this fleet.
fn agents_rss() -> (u64, usize) {
    let (rss, running) = agents();
    (rss, running.len())
}

/// The 1-minute load average: the figures depend on what else the machine runs.
fn load1() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

/// The API server's own metrics: sums of `name` over series whose labels contain all of `with`.
fn metric_sum(text: &str, name: &str, with: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with('{'))
        .filter(|l| with.iter().all(|w| l.contains(w)))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

async fn apiserver_metrics(client: &Client) -> Result<String> {
    Ok(client
        .request_text(http::Request::get("/metrics").body(Vec::new())?)
        .await?)
}

/// Bytes the API server sent for resource `plural` of `group` since `before`: watch events (to
/// every watcher) and responses.
fn bytes_sent(before: &str, after: &str, group: &str, plural: &str, kind: &str) -> (f64, f64) {
    let g = format!("group=\"{group}\"");
    let watch = |t: &str| {
        // The label is `kind` in older API servers, `resource` in newer ones.
        metric_sum(
            t,
            "apiserver_watch_events_sizes_sum",
            &[&g, &format!("kind=\"{kind}\"")],
        ) + metric_sum(
            t,
            "apiserver_watch_events_sizes_sum",
            &[&g, &format!("resource=\"{plural}\"")],
        )
    };
    let responses = |t: &str| {
        metric_sum(
            t,
            "apiserver_response_sizes_sum",
            &[&g, &format!("resource=\"{plural}\"")],
        )
    };
    (
        watch(after) - watch(before),
        responses(after) - responses(before),
    )
}

/// What the harness's own watches saw during the rollout, timed from the flagging.
#[derive(Debug, Default)]
struct Seen {
    /// (when, lease, holder) for every change of holder.
    holders: Vec<(Duration, String, Option<String>)>,
    /// (when, node, phase) for every change of a node's baton phase.
    phases: Vec<(Duration, String, Option<String>)>,
}

fn watch_rollout(
    client: &Client,
    t0: Instant,
    seen: &Arc<Mutex<Seen>>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), NS);
    let s = seen.clone();
    let lease_task = tokio::spawn(async move {
        let mut last: HashMap<String, Option<String>> = HashMap::new();
        let mut stream =
            std::pin::pin!(watcher::watcher(leases, watcher::Config::default()).default_backoff());
        while let Some(ev) = stream.next().await {
            let (lease, gone) = match ev {
                Ok(Event::Apply(l) | Event::InitApply(l)) => (l, false),
                Ok(Event::Delete(l)) => (l, true),
                _ => continue,
            };
            let name = lease.metadata.name.clone().unwrap_or_default();
            let holder = lease
                .spec
                .and_then(|s| s.holder_identity)
                .filter(|h| !h.is_empty() && !gone);
            if last.get(&name) != Some(&holder) {
                s.lock()
                    .unwrap()
                    .holders
                    .push((t0.elapsed(), name.clone(), holder.clone()));
                last.insert(name, holder);
            }
        }
    });
    let nodes: Api<Node> = Api::all(client.clone());
    let s = seen.clone();
    let node_task = tokio::spawn(async move {
        let mut last: HashMap<String, Option<String>> = HashMap::new();
        let config = watcher::Config::default().labels(&format!("baton.test/group={NS}"));
        let mut stream = std::pin::pin!(watcher::watcher(nodes, config).default_backoff());
        while let Some(ev) = stream.next().await {
            let Ok(Event::Apply(n) | Event::InitApply(n)) = ev else {
                continue;
            };
            let name = n.metadata.name.clone().unwrap_or_default();
            let phase = n
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get("baton.dev/phase").cloned());
            if last.get(&name) != Some(&phase) {
                s.lock()
                    .unwrap()
                    .phases
                    .push((t0.elapsed(), name.clone(), phase.clone()));
                last.insert(name, phase);
            }
        }
    });
    vec![lease_task, node_task]
}

/// One node's simulated reboot, as the harness times it.
#[derive(Debug, Clone, Copy)]
struct Reboot {
    /// When the harness saw the trigger (from the flagging).
    triggered: Duration,
    /// When the node was Ready again with its agent started.
    up: Duration,
}

/// Each node's cycle step by step, in seconds: what the harness's watches saw and its reboot.
fn breakdown(seen: &Seen, names: &[String], reboots: &[Reboot]) -> Vec<(&'static str, Vec<f64>)> {
    let mut steps: Vec<(&'static str, Vec<f64>)> = [
        "take → draining (pre-flight, cordon)",
        "draining → rebooting (the drain)",
        "rebooting → trigger seen (fence, record, trigger)",
        "trigger seen → up (simulated reboot)",
        "up → finished (agent start, finish)",
        "finished → released (health gate, release)",
    ]
    .into_iter()
    .map(|s| (s, Vec::new()))
    .collect();
    let secs = |a: Duration, b: Duration| b.saturating_sub(a).as_secs_f64();
    for (name, reboot) in names.iter().zip(reboots) {
        let Some((taken, lease)) = seen
            .holders
            .iter()
            .find(|(_, _, h)| h.as_deref() == Some(name.as_str()))
            .map(|(t, l, _)| (*t, l))
        else {
            continue;
        };
        let phase = |p: Option<&str>, after: Duration| {
            seen.phases
                .iter()
                .find(|(t, n, ph)| n == name && ph.as_deref() == p && *t >= after)
                .map(|(t, _, _)| *t)
        };
        let released = seen
            .holders
            .iter()
            .find(|(t, l, h)| l == lease && h.is_none() && *t > taken)
            .map(|(t, _, _)| *t);
        let (Some(draining), Some(rebooting), Some(released)) = (
            phase(Some("draining"), taken),
            phase(Some("rebooting"), taken),
            released,
        ) else {
            continue;
        };
        let Some(finished) = phase(None, reboot.up.min(released)) else {
            continue;
        };
        let at = [
            taken,
            draining,
            rebooting,
            reboot.triggered,
            reboot.up,
            finished.max(reboot.up),
            released,
        ];
        for (i, (_, v)) in steps.iter_mut().enumerate() {
            v.push(secs(at[i], at[i + 1]));
        }
    }
    steps
}

/// Waits for `node`'s agent to trigger a reboot, then simulates it.
async fn reboot_when_asked(
    cluster: &Cluster,
    client: &Client,
    node: &mut SimNode,
    t0: Instant,
    deadline: Instant,
) -> Result<Reboot> {
    loop {
        if node.triggers() > 0 {
            let triggered = t0.elapsed();
            let holder = node.reboot(cluster, client).await?;
            if holder.as_deref() != Some(node.name.as_str()) {
                eprintln!(
                    "FENCING: {} rebooted while the holder was {holder:?}",
                    node.name
                );
            }
            return Ok(Reboot {
                triggered,
                up: t0.elapsed(),
            });
        }
        if let Some(status) = node.exited() {
            bail!(
                "the agent of {} exited ({status}):\n{}",
                node.name,
                node.log()
            );
        }
        if Instant::now() >= deadline {
            bail!(
                "{} did not trigger a reboot in time:\n{}",
                node.name,
                node.log()
            );
        }
        tokio::time::sleep(TRIGGER_POLL).await;
    }
}

fn pct(mut v: Vec<f64>, p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    // Nearest rank.
    let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
    v[rank.min(v.len()) - 1]
}

fn print_kinds(title: &str, counts: &BTreeMap<String, usize>) {
    let total: usize = counts.values().sum();
    println!("{title}: {total}");
    for (k, n) in counts {
        println!("  {n:>7}  {k}");
    }
}

/// `n` loopback ports below the kernel's ephemeral range, free now: an agent's metrics port
/// must stay free while it reboots, and the agents' own connections take ephemeral ports.
fn metrics_ports(n: usize) -> Result<Vec<u16>> {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")?;
    let low: u16 = range
        .split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .context("reading the ephemeral port range")?;
    let ports: Vec<u16> = (FIRST_PORT..low)
        .filter(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .take(n)
        .collect();
    if ports.len() < n {
        bail!("only {} free ports below {low}", ports.len());
    }
    Ok(ports)
}

/// Waits until the agents have sent nothing but watches for [`QUIET`].
async fn wait_quiet(cluster: &Cluster) -> Result<()> {
    wait_for(
        "the agents' start-up requests to end",
        Duration::from_secs(300),
        || async {
            let reqs = audit::read(&cluster.audit_log())?;
            let last = reqs
                .iter()
                .filter(|r| r.is_baton() && r.verb != "watch")
                .map(|r| r.received)
                .max();
            let quiet = last.is_none_or(|t| {
                Timestamp::now().duration_since(t) >= jiff::SignedDuration::try_from(QUIET).unwrap()
            });
            Ok(quiet.then_some(()))
        },
    )
    .await
}

/// Watch events the API server sent to agents for writes of `resource` objects in `reqs`
/// (each successful write goes to every agent watching that object by name at that instant).
fn events_to_agents(reqs: &[Request], resource: &str, names: &dyn Fn(&str) -> bool) -> usize {
    let mut watches: HashMap<String, Vec<(Timestamp, Option<Timestamp>)>> = HashMap::new();
    for r in reqs
        .iter()
        .filter(|r| r.is_baton() && r.verb == "watch" && r.resource == resource)
    {
        if let Some(n) = r
            .query("fieldSelector")
            .and_then(|f| f.strip_prefix("metadata.name=").map(str::to_owned))
        {
            watches
                .entry(n)
                .or_default()
                .push((r.received, r.completed));
        }
    }
    reqs.iter()
        .filter(|r| {
            matches!(r.verb.as_str(), "create" | "update" | "patch")
                && r.code.is_some_and(|c| (200..300).contains(&c))
                && r.resource.split('/').next() == Some(resource)
                && names(&r.name)
        })
        .filter_map(|w| {
            let t = w.completed?;
            Some(
                watches
                    .get(&w.name)?
                    .iter()
                    .filter(|(from, to)| *from <= t && to.is_none_or(|to| to > t))
                    .count(),
            )
        })
        .sum()
}

/// The size of an object as its watch events carry it (JSON, managed fields included).
fn json_size<K: serde::Serialize>(k: &K) -> usize {
    serde_json::to_vec(k).map_or(0, |v| v.len())
}

fn baton_in(reqs: &[Request], from: Timestamp, to: Timestamp) -> Vec<&Request> {
    reqs.iter()
        .filter(|r| r.is_baton() && r.received >= from && r.received < to)
        .collect()
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = args()?;
    let bin = baton_tests::agent::baton_bin()?;
    println!(
        "fleet: {} nodes, concurrency {}{}, agent binary {}",
        args.nodes,
        args.concurrency,
        if args.zones > 0 {
            format!(" per zone, {} zones (--group-by-label={ZONE})", args.zones)
        } else {
            String::new()
        },
        bin.display()
    );
    let cluster = Cluster::start_with(Options { audit: true }).await?;
    let client = cluster.client().await?;
    let apiserver = cluster.pid("kube-apiserver").context("no API server PID")?;
    cluster.namespace(&client, NS).await?;
    let names: Vec<String> = (1..=args.nodes).map(|i| format!("{NS}-{i}")).collect();
    let zone_of = |i: usize| format!("zone-{}", i % args.zones.max(1));
    for (b, batch) in names.chunks(NODE_BATCH).enumerate() {
        if args.zones == 0 {
            let refs: Vec<&str> = batch.iter().map(String::as_str).collect();
            cluster
                .add_nodes(&client, &refs, &[("baton.test/group", NS)])
                .await?;
        } else {
            for (j, n) in batch.iter().enumerate() {
                let zone = zone_of(b * NODE_BATCH + j);
                cluster
                    .add_nodes(&client, &[n], &[("baton.test/group", NS), (ZONE, &zone)])
                    .await?;
            }
        }
    }
    // The defaults a deployment runs with (bar the host paths), and the slots.
    let concurrency = format!("--concurrency={}", args.concurrency);
    let mut extra = vec![
        "--check-interval=30s",
        "--lock-ttl=30m",
        "--log-level=info",
        &concurrency,
    ];
    let group = format!("--group-by-label={ZONE}");
    if args.zones > 0 {
        extra.push(&group);
    }
    let mut ports = metrics_ports(args.nodes)?.into_iter();
    let mut nodes: Vec<SimNode> = Vec::with_capacity(args.nodes);
    for name in &names {
        let mut node = SimNode::new(&cluster, name, NS, Method::Command, &extra)?;
        node.set_metrics_port(ports.next().context("out of ports")?);
        nodes.push(node);
    }
    let started = Instant::now();
    for n in &mut nodes {
        n.start()?;
    }
    for n in &nodes {
        n.wait_ready(Duration::from_secs(300)).await?;
    }
    println!(
        "{} agents ready in {:.1}s",
        nodes.len(),
        started.elapsed().as_secs_f64()
    );

    // === Idle: nothing flagged.
    wait_quiet(&cluster).await?;
    let idle_from = Timestamp::now();
    println!(
        "idling {}s (load average {})...",
        args.idle_seconds,
        load1()
    );
    tokio::time::sleep(Duration::from_secs(args.idle_seconds)).await;
    let idle_to = Timestamp::now();
    let (idle_rss, idle_agents) = agents_rss();
    let reqs = audit::read(&cluster.audit_log())?;
    let idle = baton_in(&reqs, idle_from, idle_to);
    let open: Vec<&Request> = reqs
        .iter()
        .filter(|r| r.is_baton() && r.watching_at(idle_to))
        .collect();
    let minutes = args.idle_seconds as f64 / 60.0;
    let n = args.nodes as f64;
    let idle_per_min = idle.len() as f64 / n / minutes;
    // Steady state: each open watch is re-made once per its timeout; nothing else is asked.
    let others = idle.iter().filter(|r| r.verb != "watch").count() as f64;
    let projected = others / n / minutes
        + open
            .iter()
            .filter_map(|r| r.query("timeoutSeconds")?.parse::<f64>().ok())
            .map(|t| 60.0 / t)
            .sum::<f64>()
            / n;
    let open_kinds = audit::by_kind(open.iter().copied());
    let by_name = open
        .iter()
        .filter(|r| {
            r.query("fieldSelector")
                .is_some_and(|f| f.starts_with("metadata.name="))
        })
        .count();
    println!(
        "=== idle: {} agents, nothing flagged, {}s",
        args.nodes, args.idle_seconds
    );
    print_kinds(
        "agent requests received in the window",
        &audit::by_kind(idle.iter().copied()),
    );
    print_kinds("agent watches open at its end", &open_kinds);
    println!(
        "  ({by_name} of them by name, fieldSelector=metadata.name=...; lists in the window: {})",
        idle.iter().filter(|r| r.verb == "list").count()
    );
    println!(
        "per agent: {:.2} open watches; {:.3} requests/min measured, {:.3}/min in steady state \
         (each open watch is re-made once per its timeoutSeconds)",
        open.len() as f64 / n,
        idle_per_min,
        projected
    );
    println!(
        "agents' memory: {} MiB resident in all ({idle_agents} agents, {:.1} MiB each)",
        idle_rss / 1024,
        idle_rss as f64 / 1024.0 / idle_agents.max(1) as f64
    );

    // === Rollout: flag every node at once.
    let load_idle = load1();
    let metrics_before = apiserver_metrics(&client).await?;
    let cpu_before = cpu_seconds(apiserver);
    let etcd_cpu_before = cluster.pid("etcd").map_or(0.0, cpu_seconds);
    let seen = Arc::new(Mutex::new(Seen::default()));
    let t0 = Instant::now();
    let roll_from = Timestamp::now();
    let watches = watch_rollout(&client, t0, &seen);
    let nodes_api: Api<Node> = Api::all(client.clone());
    let flag = serde_json::json!({"metadata": {"annotations": {"baton.dev/reboot-requested": "fleet benchmark"}}});
    for name in &names {
        nodes_api
            .patch(name, &PatchParams::default(), &Patch::Merge(&flag))
            .await?;
    }
    let flagged_in = t0.elapsed();
    let deadline = t0 + args.timeout;
    let peak_rss = Arc::new(Mutex::new((0u64, 0usize)));
    // Each agent process's CPU time: (at its first sample, at its last).
    let agent_cpu: Arc<Mutex<HashMap<u32, (f64, f64)>>> = Arc::default();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (peak, cpu, done) = (peak_rss.clone(), agent_cpu.clone(), done.clone());
        let first = agents().1;
        tokio::spawn(async move {
            for (pid, t) in first {
                cpu.lock().unwrap().insert(pid, (t, t));
            }
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let (rss, running) = agents();
                {
                    let mut p = peak.lock().unwrap();
                    if rss > p.0 {
                        *p = (rss, running.len());
                    }
                    let mut c = cpu.lock().unwrap();
                    for (pid, t) in running {
                        // An agent started during the rollout counts from zero.
                        c.entry(pid).or_insert((0.0, t)).1 = t;
                    }
                }
                tokio::time::sleep(RSS_SAMPLE).await;
            }
        })
    };
    let others_before: Vec<(&str, f64)> = ["kwok", "kube-controller-manager", "kube-scheduler"]
        .into_iter()
        .map(|c| (c, cluster.pid(c).map_or(0.0, cpu_seconds)))
        .collect();
    let harness_before = cpu_seconds(std::process::id());
    let reboots: Vec<Result<Reboot>> = futures::future::join_all(
        nodes
            .iter_mut()
            .map(|node| reboot_when_asked(&cluster, &client, node, t0, deadline)),
    )
    .await;
    let reboots: Vec<Reboot> = reboots.into_iter().collect::<Result<_>>()?;
    // The end: every node idle again and every Lease free, as the harness's watches saw it.
    wait_for(
        "every node idle and every lease free",
        Duration::from_secs(300),
        || async {
            let s = seen.lock().unwrap();
            let mut phase: HashMap<&str, bool> = HashMap::new();
            for (_, n, p) in &s.phases {
                phase.insert(n, p.is_some());
            }
            let mut held: HashMap<&str, bool> = HashMap::new();
            for (_, l, h) in &s.holders {
                held.insert(l, h.is_some());
            }
            Ok((phase.values().all(|b| !b) && held.values().all(|b| !b)).then_some(()))
        },
    )
    .await?;
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    sampler.await?;
    for w in watches {
        w.abort();
    }
    let roll_to = Timestamp::now();
    let load_rolled = load1();
    let cpu = cpu_seconds(apiserver) - cpu_before;
    let others: Vec<(&str, f64)> = others_before
        .iter()
        .map(|(c, before)| (*c, cluster.pid(c).map_or(0.0, cpu_seconds) - before))
        .collect();
    let harness_cpu = cpu_seconds(std::process::id()) - harness_before;
    let agents_cpu: f64 = agent_cpu
        .lock()
        .unwrap()
        .values()
        .map(|(first, last)| last - first)
        .sum();
    let etcd_cpu = cluster.pid("etcd").map_or(0.0, cpu_seconds) - etcd_cpu_before;
    let metrics_after = apiserver_metrics(&client).await?;
    let seen = std::mem::take(&mut *seen.lock().unwrap());

    // Rollout time: from the first flag to the last release.
    let end = seen
        .holders
        .iter()
        .filter(|(_, _, h)| h.is_none())
        .map(|(t, _, _)| *t)
        .max()
        .unwrap_or_default();
    // Each node's drain, as the phases show it: from `draining` to `rebooting`.
    let mut draining: HashMap<&str, Duration> = HashMap::new();
    let mut drains: Vec<f64> = Vec::new();
    for (t, n, p) in &seen.phases {
        match p.as_deref() {
            Some("draining") => {
                draining.insert(n, *t);
            }
            Some("rebooting") => {
                if let Some(d) = draining.remove(n.as_str()) {
                    drains.push((*t - d).as_secs_f64());
                }
            }
            _ => {}
        }
    }
    let reboot_times: Vec<f64> = reboots
        .iter()
        .map(|r| (r.up - r.triggered).as_secs_f64())
        .collect();
    let work: f64 = drains.iter().sum::<f64>() + reboot_times.iter().sum::<f64>();
    let slots = args.concurrency * args.zones.max(1);
    let overhead = (slots as f64 * end.as_secs_f64() - work) / n;
    // Hand-offs: each release of a slot, to the next node that starts draining after it (the
    // releases are matched first in, first out).
    let mut events: Vec<(Duration, bool)> = seen
        .holders
        .iter()
        .filter(|(_, _, h)| h.is_none())
        .map(|(t, _, _)| (*t, true))
        .chain(
            seen.phases
                .iter()
                .filter(|(_, _, p)| p.as_deref() == Some("draining"))
                .map(|(t, _, _)| (*t, false)),
        )
        .collect();
    events.sort();
    let mut pending = std::collections::VecDeque::new();
    let mut handoffs: Vec<f64> = Vec::new();
    for (t, release) in events {
        if release {
            pending.push_back(t);
        } else if let Some(r) = pending.pop_front() {
            handoffs.push((t - r).as_secs_f64());
        }
    }
    let takes = seen.holders.iter().filter(|(_, _, h)| h.is_some()).count();

    let reqs = audit::read(&cluster.audit_log())?;
    let rolled = baton_in(&reqs, roll_from, roll_to);
    let all_in: Vec<&Request> = reqs
        .iter()
        .filter(|r| r.received >= roll_from && r.received < roll_to)
        .collect();
    let (peak, peak_at) = audit::peak_watches(reqs.iter().filter(|r| r.is_baton()));
    let peak_kinds =
        peak_at.map(|t| audit::by_kind(reqs.iter().filter(|r| r.is_baton() && r.watching_at(t))));
    let watch_names: Vec<&Request> = rolled
        .iter()
        .copied()
        .filter(|r| r.verb == "watch")
        .collect();
    let lease_watches = watch_names
        .iter()
        .filter(|r| r.resource == "leases")
        .count();
    let lease_by_name = watch_names
        .iter()
        .filter(|r| {
            r.resource == "leases"
                && r.query("fieldSelector")
                    .is_some_and(|f| f.starts_with("metadata.name="))
        })
        .count();
    let secs = end.as_secs_f64();
    let (lease_watch_b, lease_resp_b) = bytes_sent(
        &metrics_before,
        &metrics_after,
        "coordination.k8s.io",
        "leases",
        "Lease",
    );
    let (node_watch_b, node_resp_b) =
        bytes_sent(&metrics_before, &metrics_after, "", "nodes", "Node");
    let (peak_rss, peak_agents) = *peak_rss.lock().unwrap();
    let in_rollout: Vec<Request> = reqs
        .iter()
        .filter(|r| r.received < roll_to)
        .cloned()
        .collect();
    let is_slot = |n: &str| n == "baton" || n.starts_with("baton-");
    let lease_events = events_to_agents(&in_rollout, "leases", &is_slot);
    let node_events = events_to_agents(&in_rollout, "nodes", &|n: &str| n.starts_with("fleet-"));
    let lease_size = match Api::<Lease>::namespaced(client.clone(), NS)
        .list(&Default::default())
        .await?
        .items
        .first()
    {
        Some(l) => json_size(l),
        None => 0,
    };
    let node_size = json_size(&nodes_api.get(&names[0]).await?);

    println!(
        "=== rollout: {} nodes flagged at once (in {:.2}s), {slots} slot(s)",
        args.nodes,
        flagged_in.as_secs_f64()
    );
    println!("rollout time: {secs:.1}s (from the first flag to the last release)");
    println!(
        "simulated work: drain {:.1}s + reboot {:.1}s in all (drain: phase draining to rebooting, \
         as the Node showed; reboot: from the harness seeing the trigger to the node Ready again \
         with its agent started; mean reboot {:.2}s)",
        drains.iter().sum::<f64>(),
        reboot_times.iter().sum::<f64>(),
        reboot_times.iter().sum::<f64>() / n
    );
    println!(
        "coordination overhead per node: {overhead:.3}s = (slots × rollout time − simulated work) / \
         nodes = ({slots} × {secs:.1} − {work:.1}) / {}: the slot time not spent draining or \
         rebooting (taking, pre-flight, cordon, the agent's restart, finish, health gate, \
         release, hand-off, and slots idle at the tail)",
        args.nodes
    );
    println!(
        "hand-offs: {} (a release to the next node starting to drain), p50 {:.3}s, p99 {:.3}s, \
         max {:.3}s; lease takes {takes}",
        handoffs.len(),
        pct(handoffs.clone(), 50.0),
        pct(handoffs.clone(), 99.0),
        pct(handoffs.clone(), 100.0)
    );
    println!("each node's cycle, step by step (p50 / mean / max, seconds):");
    for (step, v) in breakdown(&seen, &names, &reboots) {
        let mean = v.iter().sum::<f64>() / v.len().max(1) as f64;
        println!(
            "  {:>6.3} {mean:>6.3} {:>6.3}  {step}",
            pct(v.clone(), 50.0),
            pct(v, 100.0)
        );
    }
    print_kinds(
        "agent requests during the rollout",
        &audit::by_kind(rolled.iter().copied()),
    );
    println!(
        "  per node: {:.1}; all clients (harness, kwok, controllers too): {} ({:.0}/s)",
        rolled.len() as f64 / n,
        all_in.len(),
        all_in.len() as f64 / secs
    );
    let lease_writes: Vec<&&Request> = rolled
        .iter()
        .filter(|r| r.resource == "leases" && matches!(r.verb.as_str(), "create" | "update"))
        .collect();
    let conflicts = lease_writes.iter().filter(|r| r.code == Some(409)).count();
    println!(
        "  lease writes: {} ({:.1} per node), {conflicts} of them refused with 409 Conflict \
         (another node wrote first)",
        lease_writes.len(),
        lease_writes.len() as f64 / n
    );
    println!(
        "  lease watches opened: {lease_watches}, {lease_by_name} of them by name (fieldSelector=metadata.name=...)"
    );
    println!(
        "peak open agent watches: {peak} ({:.1} per agent)",
        peak as f64 / n
    );
    if let Some(k) = peak_kinds {
        for (kind, c) in k {
            println!("  {c:>7}  {kind}");
        }
    }
    println!(
        "agents' memory: peak {} MiB resident in all ({peak_agents} agents running, {:.1} MiB each)",
        peak_rss / 1024,
        peak_rss as f64 / 1024.0 / peak_agents.max(1) as f64
    );
    println!(
        "API server CPU: {cpu:.1}s over {secs:.1}s ({:.0}% of one core); etcd {etcd_cpu:.1}s",
        cpu / secs * 100.0
    );
    let all_cpu =
        cpu + etcd_cpu + agents_cpu + harness_cpu + others.iter().map(|o| o.1).sum::<f64>();
    println!(
        "CPU during the rollout, all of this benchmark's processes: {all_cpu:.1}s ({:.2} cores): \
         API server {cpu:.1}s, etcd {etcd_cpu:.1}s, agents {agents_cpu:.1}s (sampled every \
         second: an agent's last second before it exits is not counted), {}, harness {harness_cpu:.1}s \
         (it simulates the reboots)",
        all_cpu / secs,
        others
            .iter()
            .map(|(c, t)| format!("{c} {t:.1}s"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "API server bytes sent (all clients): Lease watch events {:.0} KiB, Lease responses {:.0} \
         KiB ({:.1} KiB per lease take); Node watch events {:.0} KiB, Node responses {:.0} KiB \
         ({:.1} KiB per node rolled)",
        lease_watch_b / 1024.0,
        lease_resp_b / 1024.0,
        (lease_watch_b + lease_resp_b) / 1024.0 / takes.max(1) as f64,
        node_watch_b / 1024.0,
        node_resp_b / 1024.0,
        (node_watch_b + node_resp_b) / 1024.0 / n
    );
    println!(
        "watch events sent to agents: Lease {lease_events} ({:.1} per hand-off), Node \
         {node_events} ({:.1} per node rolled); at this cluster's sizes (Lease {lease_size} B, \
         kwok Node {node_size} B): {:.1} KiB of Lease events per hand-off, {:.1} KiB of Node \
         events per node rolled",
        lease_events as f64 / handoffs.len().max(1) as f64,
        node_events as f64 / n,
        lease_events as f64 * lease_size as f64 / 1024.0 / handoffs.len().max(1) as f64,
        node_events as f64 * node_size as f64 / 1024.0 / n
    );
    println!(
        "load average (1 min): {load_idle} at the end of the idle window, {load_rolled} at the \
         end of the rollout; {} cores",
        std::thread::available_parallelism().map_or(0, usize::from)
    );
    println!(
        "fleet: nodes={} concurrency={} overhead_per_node_s={overhead:.3} handoff_p99_s={:.3} \
         idle_watches_per_agent={:.2} idle_requests_per_min={projected:.3}",
        args.nodes,
        args.concurrency,
        pct(handoffs, 99.0),
        open.len() as f64 / n
    );
    drop(nodes);
    Ok(())
}
