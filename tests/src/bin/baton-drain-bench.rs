//! Benchmark (prints figures, asserts nothing): `baton drain` against `kubectl drain` on
//! identical nodes of one local control plane, with the API requests each made (from the API
//! server's audit log).
//!
//! (a) 100 pods from 10 Deployments, no PDB; (b) 20 pods of one Deployment under a PDB with
//! `maxUnavailable: 1`, so every eviction waits for the previous pod's replacement.
//!
//! `cargo build -p baton && cargo run -p baton-tests --bin baton-drain-bench`

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use baton_tests::agent::baton_bin;
use baton_tests::cluster::Options;
use baton_tests::{Cluster, fixtures};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::Client;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Tool {
    Kubectl,
    Baton,
}

impl Tool {
    fn name(self) -> &'static str {
        match self {
            Tool::Kubectl => "kubectl",
            Tool::Baton => "baton",
        }
    }
}

/// Builds one scenario for one tool: a node full of pods and an open spare node.
async fn prepare(cluster: &Cluster, client: &Client, scenario: char, tool: Tool) -> Result<String> {
    let group = format!("bench-{scenario}-{}", tool.name());
    let (node, spare) = (format!("{group}-1"), format!("{group}-2"));
    cluster
        .add_nodes(client, &[&node, &spare], &[("baton.test/group", &group)])
        .await?;
    fixtures::cordon(client, &spare, true).await?;
    cluster.namespace(client, &group).await?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &group);
    let pp = PostParams::default();
    let total = if scenario == 'a' {
        for i in 0..10 {
            deployments
                .create(
                    &pp,
                    &fixtures::nginx_deployment(&format!("app{i}"), 10, &group)?,
                )
                .await?;
        }
        100
    } else {
        deployments
            .create(&pp, &fixtures::nginx_deployment("web", 20, &group)?)
            .await?;
        let pdb: PodDisruptionBudget = serde_json::from_value(json!({
            "metadata": {"name": "web"},
            "spec": {"maxUnavailable": 1, "selector": {"matchLabels": {"app": "web"}}},
        }))?;
        Api::<PodDisruptionBudget>::namespaced(client.clone(), &group)
            .create(&pp, &pdb)
            .await?;
        20
    };
    let selector = if scenario == 'a' { "app" } else { "app=web" };
    fixtures::wait_ready_pods(client, &group, selector, total).await?;
    if scenario == 'b' {
        baton_tests::wait_for("the PDB to allow 1", Duration::from_secs(60), || async {
            let p = Api::<PodDisruptionBudget>::namespaced(client.clone(), &group)
                .get("web")
                .await?;
            Ok((p.status.and_then(|s| s.disruptions_allowed) == Some(1)).then_some(()))
        })
        .await?;
    }
    fixtures::cordon(client, &spare, false).await?;
    Ok(node)
}

/// Requests in the audit log from line `from` on whose user agent starts with `agent`.
fn requests(cluster: &Cluster, from: usize, agent: &str) -> (usize, usize) {
    let text = std::fs::read_to_string(cluster.audit_log()).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let mut ids = HashSet::new();
    for l in lines.iter().skip(from) {
        let Ok(v) = serde_json::from_str::<Value>(l) else {
            continue;
        };
        if v["userAgent"]
            .as_str()
            .is_some_and(|ua| ua.starts_with(agent))
        {
            ids.insert(v["auditID"].as_str().unwrap_or_default().to_owned());
        }
    }
    (lines.len(), ids.len())
}

async fn run(cluster: &Cluster, tool: Tool, node: &str) -> Result<(Duration, usize)> {
    let (start_line, _) = requests(cluster, 0, "-");
    let mut cmd = match tool {
        Tool::Kubectl => {
            // The kubectl built with the control plane: same version as the API server.
            let mut c = tokio::process::Command::from(cluster.kubectl());
            c.args([
                "drain",
                node,
                "--ignore-daemonsets",
                "--delete-emptydir-data",
                "--timeout=10m",
            ]);
            c
        }
        Tool::Baton => {
            let mut c = tokio::process::Command::new(baton_bin()?);
            c.args([
                "drain",
                node,
                "--delete-emptydir-data",
                "--drain-timeout=10m",
            ]);
            c
        }
    };
    cmd.env("KUBECONFIG", cluster.kubeconfig());
    let t = Instant::now();
    let out = cmd
        .output()
        .await
        .with_context(|| format!("running {}", tool.name()))?;
    let took = t.elapsed();
    if !out.status.success() {
        bail!(
            "{} drain failed: {}",
            tool.name(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let agent = if tool == Tool::Kubectl {
        "kubectl"
    } else {
        "baton/"
    };
    Ok((took, requests(cluster, start_line, agent).1))
}

#[tokio::main]
async fn main() -> Result<()> {
    let cluster = Cluster::start_with(Options { audit: true }).await?;
    let version = cluster.kubectl().args(["version", "--client"]).output()?;
    let version = String::from_utf8_lossy(&version.stdout);
    println!("kubectl {}", version.lines().next().unwrap_or("?"));
    let client = cluster.client().await?;
    for (scenario, what, target) in [
        ('a', "100 pods from 10 Deployments, no PDB", 1.0),
        ('b', "20 pods of one Deployment, PDB maxUnavailable=1", 0.5),
    ] {
        let k_node = prepare(&cluster, &client, scenario, Tool::Kubectl).await?;
        let b_node = prepare(&cluster, &client, scenario, Tool::Baton).await?;
        let (k, k_req) = run(&cluster, Tool::Kubectl, &k_node).await?;
        let (b, b_req) = run(&cluster, Tool::Baton, &b_node).await?;
        let ratio = b.as_secs_f64() / k.as_secs_f64();
        println!(
            "({scenario}) {what}: kubectl {:.2}s ({k_req} requests), baton {:.2}s ({b_req} requests); baton/kubectl = {ratio:.2} (target <= {target})",
            k.as_secs_f64(),
            b.as_secs_f64(),
        );
    }
    Ok(())
}
