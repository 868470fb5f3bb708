//! baton's alerts and dashboard as shipped (`manifests/monitoring/`, the chart's `files/`): the
//! rules pass `promtool check rules` and the promtool unit tests of every alert
//! (`tests/monitoring/alerts.test.yaml`); kustomize and the chart ship the same rules and the same
//! dashboard; both read only metrics baton exports. Then a real Prometheus scrapes real agents
//! and evaluates the shipped rules, with every `for:` shortened to seconds (the one change, a
//! text substitution): a drain stuck on a PodDisruptionBudget fires `BatonDrainTooLong`, and
//! every dashboard query runs.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

use baton_tests::process::output_of as run;
use baton_tests::prometheus::Prometheus;
use baton_tests::scenario::*;
use baton_tests::{Cluster, shared, wait_for};

fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The rules as a plain Prometheus rules file (the chart's copy).
const RULES: &str = "manifests/helm/baton/files/prometheus-rules.yaml";
const DASHBOARD: &str = "manifests/monitoring/grafana-dashboard.json";

/// `promtool`: `BATON_PROMTOOL_BIN`, else the Debian package's.
fn promtool(args: &[&str]) -> String {
    let bin = std::env::var_os("BATON_PROMTOOL_BIN")
        .map_or_else(|| PathBuf::from("/usr/bin/promtool"), PathBuf::from);
    assert!(
        bin.exists(),
        "no promtool at {}: install Debian's `prometheus` package (tests/setup.sh does) or set BATON_PROMTOOL_BIN",
        bin.display()
    );
    let out = Command::new(&bin)
        .args(args)
        .current_dir(repo(""))
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?}:\n{text}");
    text
}

/// The text under `spec:` in a YAML document, moved two columns left.
fn spec_of(doc: &str) -> String {
    let (_, spec) = doc.split_once("\nspec:").expect("a spec");
    spec.lines()
        .skip(1)
        .take_while(|l| l.is_empty() || l.starts_with("  "))
        .map(|l| l.strip_prefix("  ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The document of `kind` in a multi-document YAML stream.
fn doc<'a>(yaml: &'a str, kind: &str) -> &'a str {
    yaml.split("\n---")
        .find(|d| d.contains(&format!("\nkind: {kind}\n")))
        .unwrap_or_else(|| panic!("no {kind} rendered"))
}

/// The dashboard's queries, with Grafana's interval variables set as Grafana would.
fn dashboard_queries(dashboard: &serde_json::Value) -> Vec<(String, String)> {
    let mut found = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for t in panel["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"]
                .as_str()
                .unwrap()
                .replace("$__rate_interval", "1m");
            found.push((panel["title"].as_str().unwrap().to_owned(), expr));
        }
    }
    found
}

/// The metric names (`baton_…`) `text` mentions, histogram series folded into their metric.
fn baton_metrics(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for (i, _) in text.match_indices("baton_") {
        if text[..i].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_' || c == '.') {
            continue;
        }
        let name: String = text[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        let name = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .map_or(name.clone(), str::to_owned);
        names.insert(name);
    }
    names
}

#[test]
fn the_rules_pass_promtool_and_kustomize_and_the_chart_ship_the_same() {
    let rules = read(RULES);
    let checked = promtool(&["check", "rules", RULES]);
    assert!(checked.contains("SUCCESS"), "{checked}");
    let tested = promtool(&["test", "rules", "tests/monitoring/alerts.test.yaml"]);
    assert!(tested.contains("SUCCESS"), "{tested}");
    // Every alert has its unit test.
    let unit_tests = read("tests/monitoring/alerts.test.yaml");
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    assert_eq!(alerts.len(), 9, "{alerts:?}");
    for a in &alerts {
        assert!(
            unit_tests.contains(&format!("alertname: {a}\n")),
            "no promtool test of {a}"
        );
    }

    // kustomize's PrometheusRule holds the same groups.
    let groups = &rules[rules.find("groups:").unwrap()..];
    assert_eq!(
        spec_of(&read("manifests/monitoring/prometheusrule.yaml")).trim(),
        groups.trim()
    );
    // The chart's copy of the dashboard is kustomize's.
    assert_eq!(
        read("manifests/helm/baton/files/grafana-dashboard.json"),
        read(DASHBOARD)
    );

    // Both render, and render the same files.
    let cluster: &Cluster = shared();
    let kustomized = run(
        cluster.kubectl(),
        &["kustomize", repo("manifests/monitoring").to_str().unwrap()],
        None,
    );
    let chart = repo("manifests/helm/baton");
    let rendered = run(
        cluster.helm(),
        &[
            "template",
            "baton",
            chart.to_str().unwrap(),
            "--namespace",
            "baton-system",
            "--set",
            "prometheusRule.enabled=true",
            "--set",
            "grafanaDashboard.enabled=true",
            "--set",
            "serviceMonitor.enabled=true",
        ],
        None,
    );
    assert_eq!(
        spec_of(doc(&rendered, "PrometheusRule")).trim(),
        rules.trim()
    );
    for yaml in [&kustomized, &rendered] {
        let config_map = doc(yaml, "ConfigMap");
        let json = run(
            cluster.kubectl(),
            &["create", "--dry-run=client", "-o", "json", "-f", "-"],
            Some(config_map),
        );
        let cm: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(cm["data"]["baton.json"], read(DASHBOARD));
        assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1");
        // The labels the rules and the dashboard expect.
        let monitor = doc(yaml, "ServiceMonitor");
        assert!(
            monitor.contains("jobLabel: app.kubernetes.io/name"),
            "{monitor}"
        );
        assert!(
            monitor.contains("__meta_kubernetes_pod_node_name")
                && monitor.contains("targetLabel: node"),
            "{monitor}"
        );
    }

    // Only metrics baton exports, as the README lists them (and Prometheus' own `up`).
    let readme = read("README.md");
    let dashboard: serde_json::Value = serde_json::from_str(&read(DASHBOARD)).unwrap();
    let exprs: String = dashboard_queries(&dashboard)
        .into_iter()
        .map(|(_, e)| e)
        .collect::<Vec<_>>()
        .join("\n");
    for (what, text) in [("the rules", &rules[..]), ("the dashboard", &exprs[..])] {
        let used = baton_metrics(text);
        assert!(used.len() >= 5, "{what}: {used:?}");
        for m in used {
            assert!(
                readme.contains(&format!("| `{m}`")) || readme.contains(&format!("| `{m}{{")),
                "{what} use {m}, which the README's metrics table does not list"
            );
        }
    }
}

/// The shipped rules with every `for:` set to `for`: the one templating step of the e2e test.
fn with_short_for(rules: &str, short: &str) -> String {
    rules
        .lines()
        .map(|l| match l.trim_start().strip_prefix("for: ") {
            Some(_) => format!("{}for: {short}", &l[..l.len() - l.trim_start().len()]),
            None => l.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test]
async fn a_real_prometheus_scraping_real_agents_fires_the_alert_of_a_drain_stuck_on_a_pdb() {
    let cluster = shared();
    let ns = "monitoring-stuck";
    // Node 1 drains for ever (its only pod's PDB allows no eviction); node 2, idle, is scraped
    // too.
    let (_client, names, mut nodes) = stuck_draining(cluster, ns, &["--drain-timeout=10m"]).await;
    nodes[1].start().unwrap();
    nodes[1].wait_ready(SETTLE).await.unwrap();
    let shipped = read(RULES);
    let rules = with_short_for(&shipped, "3s");
    assert_eq!(
        rules.lines().filter(|l| l.contains("for: 3s")).count(),
        shipped
            .lines()
            .filter(|l| l.trim_start().starts_with("for: "))
            .count()
    );
    let targets: Vec<(String, u16)> = nodes
        .iter()
        .map(|n| (n.name.clone(), n.metrics_port()))
        .collect();
    let prometheus = Prometheus::scraping(&targets, &rules).await.unwrap();

    let firing = "ALERTS{alertstate=\"firing\"}";
    let fired = wait_for("BatonDrainTooLong to fire", SETTLE, || async {
        let alerts = prometheus.query(firing).await?;
        Ok(alerts
            .iter()
            .find(|(l, _)| l["alertname"] == "BatonDrainTooLong")
            .map(|(l, _)| l.clone()))
    })
    .await
    .unwrap();
    assert_eq!(fired["node"], names[0]);
    assert_eq!(fired["severity"], "warning");
    // Nothing else is wrong: at most the Lease held (as long as the drain) fires with it.
    let all: BTreeSet<(String, String)> = prometheus
        .query(firing)
        .await
        .unwrap()
        .into_iter()
        .map(|(l, _)| (l["alertname"].clone(), l["node"].clone()))
        .collect();
    let expected: BTreeSet<(String, String)> = [
        ("BatonDrainTooLong".to_owned(), names[0].clone()),
        ("BatonLeaseHeldTooLong".to_owned(), names[0].clone()),
    ]
    .into();
    assert!(all.is_subset(&expected), "{all:?}");

    // Every dashboard query runs on the real series; the main panels show this scene.
    let dashboard: serde_json::Value = serde_json::from_str(&read(DASHBOARD)).unwrap();
    let queries = dashboard_queries(&dashboard);
    assert!(queries.len() >= 20, "{}", queries.len());
    for (title, expr) in &queries {
        prometheus
            .query(expr)
            .await
            .unwrap_or_else(|e| panic!("panel {title:?}: {e:#}"));
    }
    let panel = |title: &str| {
        queries
            .iter()
            .find(|(t, _)| t == title)
            .map(|(_, e)| e.clone())
            .unwrap_or_else(|| panic!("no panel {title:?}"))
    };
    let holders = prometheus
        .query(&panel("Who holds each slot"))
        .await
        .unwrap();
    let holders: Vec<(&str, &str, &str)> = holders
        .iter()
        .map(|(l, _)| (l["lease"].as_str(), l["node"].as_str(), l["phase"].as_str()))
        .collect();
    assert_eq!(holders, [("baton", names[0].as_str(), "draining")]);
    for (title, want) in [
        ("In a cycle", 1.0),
        ("Flagged nodes", 1.0),
        ("Agents up", 2.0),
        ("Agents ready", 2.0),
        ("Waiting", 0.0),
    ] {
        let got = prometheus.query(&panel(title)).await.unwrap();
        assert_eq!(got.first().map(|(_, v)| *v), Some(want), "panel {title:?}");
    }
}
