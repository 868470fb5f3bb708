//! The local demo: a real control plane with kwok nodes, the seed scenario (2 nginx pods, a
//! Service, a PodDisruptionBudget), every node flagged for a reboot, and one real baton agent
//! per node. Prints a live timeline and a summary; exits 0 only if the rollout was clean.
//!
//! With `--real-nodes`, the same scenario runs on real nodes (containerd + kubelet, rebooting
//! for real) with baton installed from `manifests/` as shipped, real web containers, and a client
//! sending requests to the Service's ready endpoints throughout; the summary counts them.
//!
//! `cargo run -p baton-tests --bin baton-demo -- --nodes 3 [--real-nodes]` (tests/demo.sh
//! builds what it needs).

use std::time::Duration;

use anyhow::{Context, Result, bail};
use baton_tests::agent::{Method, SimNode};
use baton_tests::observe::{Change, Recorder, p50_max};
use baton_tests::rollout::{drive_with, wait_idle};
use baton_tests::{Cluster, fixtures, wait_for};
use serde_json::json;
use tokio::time::Instant;

/// The whole rollout must finish in this time (about 10 s per node here).
const ROLLOUT_TIMEOUT: Duration = Duration::from_secs(600);
const NS: &str = "demo";

/// The demo's arguments: how many nodes, and whether they are real.
fn parse_args() -> Result<(usize, bool)> {
    let mut args = std::env::args().skip(1);
    let mut nodes = None;
    let mut real = false;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--nodes" => {
                nodes = Some(
                    args.next()
                        .context("--nodes needs a number")?
                        .parse()
                        .context("--nodes: expected a whole number")?,
                );
            }
            "--real-nodes" => real = true,
            other => {
                bail!("unknown argument {other:?} (usage: baton-demo [--nodes N] [--real-nodes])")
            }
        }
    }
    // Real nodes are real processes (kubelet, containerd, shims): a few fit on two cores.
    let (default, max) = if real { (2, 4) } else { (3, 20) };
    let nodes = nodes.unwrap_or(default);
    if !(2..=max).contains(&nodes) {
        bail!("--nodes must be between 2 and {max} (the seed's 2 web pods need 2 nodes)");
    }
    Ok((nodes, real))
}

/// Prints what the recorder sees every 100 ms, and everything left once told to stop.
fn print_timeline(
    rec: &Recorder,
    t0: Instant,
    service: &'static str,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let rec = rec.clone();
    let task = tokio::spawn(async move {
        let mut seen = 0;
        let mut last = false;
        loop {
            for s in rec.since(seen) {
                seen += 1;
                let at = format!("[{:>7.2}s]", s.at.duration_since(t0).as_secs_f64());
                let line = match s.what {
                    Change::Holder(Some(h)) => format!("baton (Lease) taken by {h}"),
                    Change::Holder(None) => "baton (Lease) released".to_owned(),
                    Change::Phase(n, Some(p)) => format!("{n}: phase {p}"),
                    Change::Phase(n, None) => format!("{n}: phase idle"),
                    Change::Cordon(n, true) => format!("{n}: cordoned"),
                    Change::Cordon(n, false) => format!("{n}: uncordoned"),
                    Change::Ready(n, r) => {
                        format!("{n}: {}", if r { "Ready" } else { "NotReady" })
                    }
                    Change::Endpoints(e) => format!("service {service}: {e} ready endpoint(s)"),
                };
                println!("{at} {line}");
            }
            if last {
                return;
            }
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(100)) => {}
                _ = &mut stopped => last = true,
            }
        }
    });
    (stop, task)
}

fn secs(d: Duration) -> String {
    format!("{:.2}s", d.as_secs_f64())
}

#[tokio::main]
async fn main() -> Result<()> {
    let (count, real) = parse_args()?;
    if real {
        return real_nodes(count).await;
    }
    let t0 = Instant::now();
    let stamp = move || format!("[{:>7.2}s]", t0.elapsed().as_secs_f64());
    println!(
        "{} starting a local control plane (etcd, kube-apiserver, controller-manager, scheduler, kwok)",
        stamp()
    );
    let cluster = Cluster::start().await?;
    let client = cluster.client().await?;
    let names: Vec<String> = (1..=count).map(|i| format!("node-{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    cluster
        .add_nodes(&client, &refs, &[("baton.test/group", NS)])
        .await?;
    cluster.namespace(&client, NS).await?;
    fixtures::create_nginx(&client, NS, 2, NS, Some(json!({"minAvailable": 1}))).await?;
    fixtures::wait_ready_endpoints(&client, NS, "nginx", 2).await?;
    println!(
        "{} {count} nodes Ready; nginx: 2 pods, Service with 2 ready endpoints, PDB minAvailable=1",
        stamp()
    );

    let rec = Recorder::new();
    rec.nodes(&client, &format!("baton.test/group={NS}"));
    rec.lease(&client, NS, "baton");
    rec.endpoints(&client, NS, "nginx");
    let (stop_printer, printer) = print_timeline(&rec, t0, "nginx");

    let mut nodes: Vec<SimNode> = names
        .iter()
        .map(|n| SimNode::new(&cluster, n, NS, Method::Command, &[]))
        .collect::<Result<_>>()?;
    for n in &mut nodes {
        n.flag()?;
        n.start()?;
    }
    println!(
        "{} flagged every node (/var/run/reboot-required) and started {count} baton agents",
        stamp()
    );
    let rollout_start = Instant::now();
    let driven = drive_with(
        &cluster,
        &client,
        &mut nodes,
        1,
        ROLLOUT_TIMEOUT,
        |node, holder| {
            println!(
                "{} {node}: host rebooting (simulated; lease holder at that instant: {})",
                stamp(),
                holder.unwrap_or("nobody")
            );
        },
    )
    .await?;
    // Wait for the last node to finish: uncordoned and the lease free.
    wait_idle(&client, &names, Duration::from_secs(60)).await?;
    let total = rollout_start.elapsed();
    fixtures::wait_ready_pods(&client, NS, "app=nginx", 2).await?;
    wait_for(
        "the watches to see the rollout end",
        Duration::from_secs(10),
        || async { Ok(rec.settled().then_some(())) },
    )
    .await?;
    rec.stop();
    let _ = stop_printer.send(());
    printer.await?;

    let handoffs = rec.handoffs();
    let (min_ep, max_cycle) = rec.with(|r| (r.min_ready_endpoints, r.max_in_cycle));
    println!();
    println!("=== summary");
    println!(
        "nodes rebooted:          {} of {count} ({})",
        driven.order.len(),
        driven.order.join(", ")
    );
    println!("rollout time:            {}", secs(total));
    match p50_max(handoffs.clone()) {
        Some((p50, max)) => println!(
            "lock hand-off latency:   p50 {}, max {} over {} hand-offs (release -> next node draining)",
            secs(p50),
            secs(max),
            handoffs.len()
        ),
        None => println!("lock hand-off latency:   no hand-offs observed"),
    }
    println!(
        "min ready endpoints:     {}",
        min_ep.map_or("n/a".to_owned(), |m| m.to_string())
    );
    println!("max nodes in a cycle:    {max_cycle}");
    println!(
        "fencing violations:      {}",
        driven.fencing_violations.len()
    );
    let clean = driven.order.len() == count
        && driven.fencing_violations.is_empty()
        && min_ep.is_some_and(|m| m >= 1)
        && max_cycle <= 1;
    println!(
        "result:                  {}",
        if clean { "CLEAN" } else { "NOT CLEAN" }
    );
    print_status(&client, NS, &format!("baton.test/group={NS}")).await?;
    drop(nodes);
    drop(cluster);
    if !clean {
        std::process::exit(1);
    }
    Ok(())
}

/// Prints what `baton status -n <ns> -l <selector>` prints, through the same function.
async fn print_status(client: &kube::Client, ns: &str, selector: &str) -> Result<()> {
    use baton::config::Colour;
    use std::io::IsTerminal;
    let query = baton::status::gather::Query {
        settings: baton::status::Settings {
            namespace: ns.to_owned(),
            lock_name: "baton".to_owned(),
            pause_configmap: "baton-pause".to_owned(),
            agent_selector: "app.kubernetes.io/name=baton".to_owned(),
            max_reboot_attempts: 3,
        },
        node_selector: Some(selector.to_owned()),
    };
    let colour = baton::commands::colour(
        Colour::Auto,
        std::io::stdout().is_terminal(),
        std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty()),
    );
    let text = baton::status::gather::text_now(client, &query, colour).await?;
    println!();
    println!("=== baton status -n {ns} -l {selector}");
    print!("{text}");
    Ok(())
}

/// The seed scenario on `count` real nodes, baton installed from `manifests/` as shipped.
async fn real_nodes(count: usize) -> Result<()> {
    use baton_tests::real_node::install::{self, NAMESPACE, Variant};
    use baton_tests::real_node::{Images, REAL_NODE_LABEL, RealNode, web};

    let t0 = Instant::now();
    let stamp = move || format!("[{:>7.2}s]", t0.elapsed().as_secs_f64());
    let images = Images::from_env()?;
    println!(
        "{} starting a local control plane (etcd, kube-apiserver, controller-manager, scheduler)",
        stamp()
    );
    let cluster = Cluster::start().await?;
    let client = cluster.client().await?;
    let mut nodes = Vec::new();
    for i in 1..=count {
        let name = format!("node-{i}");
        let index = u8::try_from(i).context("node index")?;
        nodes.push(RealNode::start(&cluster, &client, &name, index, &images).await?);
        println!(
            "{} {name}: real node Ready (containerd + kubelet, its own PID, mount and network namespaces)",
            stamp()
        );
    }
    cluster.namespace(&client, NS).await?;
    let records = cluster.dir().join("web-records");
    web::create(&client, NS, 2, 1, &records).await?;
    web::wait_ready(&client, NS, 2).await?;
    println!(
        "{} web: 2 busybox httpd pods Ready, a Service, PDB minAvailable=1",
        stamp()
    );
    let netns = nodes.iter().map(|n| (n.name.clone(), n.netns())).collect();
    let traffic = web::Traffic::start(&client, NS, netns).await?;
    println!(
        "{} a client sends requests to the Service's ready endpoints without pause",
        stamp()
    );

    let rec = Recorder::new();
    rec.nodes(
        &client,
        &format!("{}={}", REAL_NODE_LABEL.0, REAL_NODE_LABEL.1),
    );
    rec.lease(&client, NAMESPACE, "baton");
    rec.endpoints(&client, NS, web::NAME);
    let (stop_printer, printer) = print_timeline(&rec, t0, web::NAME);
    for n in &nodes {
        std::fs::write(n.host_path("/run/reboot-required"), "")?;
    }
    println!(
        "{} flagged every node (/run/reboot-required on each host)",
        stamp()
    );
    let rollout_start = Instant::now();
    install::apply(&cluster, &install::render(&cluster, Variant::Command)?)?;
    println!(
        "{} installed baton from manifests/ (its image, its DaemonSet, its RBAC)",
        stamp()
    );
    let finished = wait_for(
        "every node to reboot and finish",
        ROLLOUT_TIMEOUT,
        || async {
            for n in &nodes {
                if !n.cycle_finished(&client, NAMESPACE).await? {
                    return Ok(None);
                }
            }
            Ok(Some(()))
        },
    )
    .await;
    let total = rollout_start.elapsed();
    let stats = traffic.stop().await;
    wait_for(
        "the watches to see the rollout end",
        Duration::from_secs(10),
        || async { Ok(rec.settled().then_some(())) },
    )
    .await
    .ok();
    rec.stop();
    let _ = stop_printer.send(());
    printer.await?;
    finished?;

    let handoffs = rec.handoffs();
    let (min_ep, max_cycle) = rec.with(|r| (r.min_ready_endpoints, r.max_in_cycle));
    let rebooted: Vec<String> = nodes
        .iter()
        .filter(|n| n.boots().len() == 2)
        .map(|n| n.name.clone())
        .collect();
    let graceful = web::records(&records)
        .values()
        .filter(|ev| ev.iter().any(|(e, _)| e == "term"))
        .map(|ev| web::stopped_gracefully(ev))
        .fold((0, 0), |(ok, all), g| (ok + usize::from(g), all + 1));
    println!();
    println!("=== summary (real nodes)");
    println!(
        "nodes rebooted:          {} of {count} ({})",
        rebooted.len(),
        rebooted.join(", ")
    );
    println!("rollout time:            {}", secs(total));
    if let Some((p50, max)) = p50_max(handoffs.clone()) {
        println!(
            "lock hand-off latency:   p50 {}, max {} over {} hand-offs",
            secs(p50),
            secs(max),
            handoffs.len()
        );
    }
    println!(
        "min ready endpoints:     {}",
        min_ep.map_or("n/a".to_owned(), |m| m.to_string())
    );
    println!("max nodes in a cycle:    {max_cycle}");
    println!(
        "evicted pods stopped gracefully (preStop, SIGTERM, shutdown done): {} of {}",
        graceful.0, graceful.1
    );
    println!(
        "client requests:         {} sent, {} answered, {} failed",
        stats.sent, stats.ok, stats.failed
    );
    for e in &stats.errors {
        println!("  failure: {e}");
    }
    let clean = rebooted.len() == count
        && stats.failed == 0
        && min_ep.is_some_and(|m| m >= 1)
        && max_cycle <= 1
        && graceful.0 == graceful.1;
    println!(
        "result:                  {}",
        if clean { "CLEAN" } else { "NOT CLEAN" }
    );
    print_status(
        &client,
        NAMESPACE,
        &format!("{}={}", REAL_NODE_LABEL.0, REAL_NODE_LABEL.1),
    )
    .await?;
    drop(nodes);
    drop(cluster);
    if !clean {
        std::process::exit(1);
    }
    Ok(())
}
