//! A real Prometheus server (Debian's `prometheus` package) for the alert-blocker tests, with
//! two rules that never change state: one always firing, one always pending. It scrapes
//! nothing; it only evaluates its rules, every second.

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
            "no Prometheus at {}: install Debian's `prometheus` package (.ci/run does) or set BATON_PROMETHEUS_BIN",
            path.display()
        );
    }
    Ok(path)
}

impl Prometheus {
    /// Starts Prometheus on a free loopback port and waits until [`FIRING`] fires.
    pub async fn start() -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("baton-prometheus-")
            .tempdir()?;
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            "global:\n  evaluation_interval: 1s\nrule_files: [rules.yml]\n",
        )?;
        std::fs::write(dir.path().join("rules.yml"), RULES)?;
        let [port] = free_ports()?;
        let mut cmd = Command::new(binary()?);
        cmd.arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn");
        let process = Process::spawn("prometheus", &mut cmd, &dir.path().join("prometheus.log"))?;
        let prometheus = Self {
            process,
            port,
            _dir: dir,
        };
        wait_for(
            &format!("Prometheus on port {port} to fire {FIRING}"),
            START_TIMEOUT,
            || async {
                let alerts = prometheus.alerts().await?;
                Ok(alerts
                    .iter()
                    .any(|(name, state)| name == FIRING && state == "firing")
                    .then_some(()))
            },
        )
        .await
        .with_context(|| {
            format!(
                "Prometheus did not start; its log:\n{}",
                prometheus.process.log_tail(20)
            )
        })?;
        Ok(prometheus)
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
