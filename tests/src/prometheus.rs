//! A real Prometheus server (Debian's `prometheus` package). For the alert-blocker tests
//! ([`Prometheus::start`]) it scrapes nothing and evaluates two rules that never change state:
//! one always firing, one always pending. For the monitoring tests ([`Prometheus::scraping`]) it
//! scrapes real agents, as job `baton` with a `node` label each (as the shipped ServiceMonitor
//! labels them), and evaluates the rules it is given; both every second.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::cluster::free_ports;
use crate::process::Process;
use crate::wait::wait_for;

/// The alert that fires from the first rule evaluation on.
pub const FIRING: &str = "BatonTestAlwaysFiring";
/// The alert that stays pending: its `for` is longer than any test.
pub const PENDING: &str = "BatonTestAlwaysPending";

/// How long Prometheus may take to start and evaluate its rules once: it replays an empty
/// write-ahead log and evaluates every second, so seconds; generous for a loaded machine.
const START_TIMEOUT: Duration = Duration::from_secs(60);

const RULES: &str = "groups:
  - name: baton-test
    interval: 1s
    rules:
      - alert: BatonTestAlwaysFiring
        expr: vector(1)
      - alert: BatonTestAlwaysPending
        expr: vector(1)
        for: 24h
";

/// A running Prometheus, stopped (by PID) when dropped.
#[derive(Debug)]
pub struct Prometheus {
    process: Process,
    port: u16,
    _dir: tempfile::TempDir,
}

/// The `prometheus` binary: `BATON_PROMETHEUS_BIN`, else the Debian package's.
fn binary() -> Result<PathBuf> {
    let path = std::env::var_os("BATON_PROMETHEUS_BIN")
        .map_or_else(|| PathBuf::from("/usr/bin/prometheus"), PathBuf::from);
    if !path.exists() {
        bail!(
            "no Prometheus at {}: install Debian's `prometheus` package (tests/setup.sh does) or set BATON_PROMETHEUS_BIN",
            path.display()
        );
    }
    Ok(path)
}

impl Prometheus {
    /// Starts Prometheus on a free loopback port and waits until [`FIRING`] fires.
    pub async fn start() -> Result<Self> {
        let prometheus = Self::launch(
            "global:\n  evaluation_interval: 1s\nrule_files: [rules.yml]\n",
            RULES,
        )?;
        prometheus
            .ready(&format!("to fire {FIRING}"), || async {
                let alerts = prometheus.alerts().await?;
                Ok(alerts
                    .iter()
                    .any(|(name, state)| name == FIRING && state == "firing")
                    .then_some(()))
            })
            .await?;
        Ok(prometheus)
    }

    /// Starts Prometheus scraping the agents `targets` (node name, metrics port), every second,
    /// as job `baton` with a `node` label each, and evaluating `rules` (a rules file); waits
    /// until every target is up.
    pub async fn scraping(targets: &[(String, u16)], rules: &str) -> Result<Self> {
        let mut config = String::from(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files: [rules.yml]\nscrape_configs:\n  - job_name: baton\n    static_configs:\n",
        );
        for (node, port) in targets {
            config.push_str(&format!(
                "      - targets: ['127.0.0.1:{port}']\n        labels: {{node: '{node}'}}\n"
            ));
        }
        let prometheus = Self::launch(&config, rules)?;
        prometheus
            .ready("to scrape every agent", || async {
                let up = prometheus.query("up{job=\"baton\"} == 1").await?;
                Ok((up.len() == targets.len()).then_some(()))
            })
            .await?;
        Ok(prometheus)
    }

    /// Starts Prometheus with `config` and the rules file `rules`, without waiting.
    fn launch(config: &str, rules: &str) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("baton-prometheus-")
            .tempdir()?;
        let config_file = dir.path().join("prometheus.yml");
        std::fs::write(&config_file, config)?;
        std::fs::write(dir.path().join("rules.yml"), rules)?;
        let [port] = free_ports()?;
        let mut cmd = Command::new(binary()?);
        cmd.arg(format!("--config.file={}", config_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn");
        let process = Process::spawn("prometheus", &mut cmd, &dir.path().join("prometheus.log"))?;
        Ok(Self {
            process,
            port,
            _dir: dir,
        })
    }

    /// Waits until `check` passes, which proves Prometheus started (and did `what`).
    async fn ready<F, Fut>(&self, what: &str, check: F) -> Result<()>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<Option<()>>>,
    {
        wait_for(
            &format!("Prometheus on port {} {what}", self.port),
            START_TIMEOUT,
            check,
        )
        .await
        .with_context(|| {
            format!(
                "Prometheus did not start; its log:\n{}",
                self.process.log_tail(20)
            )
        })
    }

    /// The result of the instant query `expr`: each series' labels and value. An expression
    /// Prometheus refuses is an error.
    pub async fn query(&self, expr: &str) -> Result<Vec<(BTreeMap<String, String>, f64)>> {
        let (code, body) =
            crate::http::get(self.port, &format!("/api/v1/query?query={}", encode(expr))).await?;
        let v: serde_json::Value = serde_json::from_str(&body)
            .with_context(|| format!("HTTP {code}, not JSON: {body}"))?;
        if v["status"] != "success" {
            bail!("{expr}: {}", v["error"]);
        }
        Ok(v["data"]["result"]
            .as_array()
            .context("no data.result")?
            .iter()
            .map(|r| {
                let labels = r["metric"]
                    .as_object()
                    .map(|m| {
                        m.iter()
                            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                            .collect()
                    })
                    .unwrap_or_default();
                let value = r["value"][1]
                    .as_str()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(f64::NAN);
                (labels, value)
            })
            .collect())
    }

    /// The base URL, for `--prometheus-url`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The active alerts as (name, state), read from the HTTP API.
    pub async fn alerts(&self) -> Result<Vec<(String, String)>> {
        let (code, body) = crate::http::get(self.port, "/api/v1/alerts").await?;
        if code != 200 {
            bail!("HTTP {code}: {body}");
        }
        let v: serde_json::Value = serde_json::from_str(&body)?;
        Ok(v["data"]["alerts"]
            .as_array()
            .context("no data.alerts")?
            .iter()
            .map(|a| {
                (
                    a["labels"]["alertname"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                    a["state"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect())
    }
}

/// `s` percent-encoded for a URL query value.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
