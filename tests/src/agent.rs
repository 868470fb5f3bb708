//! Real `baton agent` processes, one per kwok node, and the simulated host each one reboots.
//!
//! A node's "host" is a folder: the sentinel file, the boot ID file, and the file the reboot
//! command (or the signal catcher) touches. When the reboot is triggered, [`SimNode::reboot`]
//! does what a real reboot does: the agent gets SIGTERM, the node goes NotReady, the boot ID
//! changes, `/var/run` (the sentinel) is emptied, the node comes back Ready and the agent starts
//! again.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use k8s_openapi::api::coordination::v1::Lease;
use kube::Client;
use kube::api::Api;
use nix::sys::signal::Signal;

use crate::cluster::{Cluster, boot_id, free_ports};
use crate::process::Process;
use crate::wait::wait_for;

/// How the simulated host is asked to reboot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// `--reboot-method=command`, a command that touches the trigger file.
    Command,
    /// `--reboot-method=signal` aimed at a helper process that touches the trigger file when
    /// it receives signal 39.
    Signal,
}

/// The `baton` binary under test.
pub fn baton_bin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("BATON_BIN") {
        return Ok(PathBuf::from(p));
    }
    // Integration tests run from target/<profile>/deps/; the binary is one level up.
    let exe = std::env::current_exe()?;
    let candidate = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("baton"))
        .context("locating the target directory")?;
    if candidate.exists() {
        Ok(candidate)
    } else {
        bail!(
            "no baton binary at {}: run `cargo build -p baton` or tests/run.sh",
            candidate.display()
        )
    }
}

/// One simulated node: its host folder and its agent process.
#[derive(Debug)]
pub struct SimNode {
    /// The node's name.
    pub name: String,
    dir: PathBuf,
    kubeconfig: PathBuf,
    lock_namespace: String,
    method: Method,
    extra: Vec<String>,
    metrics_port: u16,
    boots: u32,
    agent: Option<Process>,
    catcher: Option<Process>,
    starts: u32,
    /// The Leases this node held when its host last went down.
    pub held_at_reboot: Vec<String>,
}

impl SimNode {
    /// Prepares node `name`'s host folder under the cluster's folder (the Node must exist).
    pub fn new(
        cluster: &Cluster,
        name: &str,
        lock_namespace: &str,
        method: Method,
        extra: &[&str],
    ) -> Result<Self> {
        let dir = cluster.dir().join("hosts").join(name);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("boot_id"), format!("{}\n", boot_id(name, 0)))?;
        Ok(Self {
            name: name.to_owned(),
            dir,
            kubeconfig: cluster.kubeconfig().to_path_buf(),
            lock_namespace: lock_namespace.to_owned(),
            method,
            extra: extra.iter().map(|s| (*s).to_owned()).collect(),
            metrics_port: free_ports::<1>()?[0],
            boots: 0,
            agent: None,
            catcher: None,
            starts: 0,
            held_at_reboot: Vec::new(),
        })
    }

    /// Serves the agent's metrics on `port` instead of the free port picked at creation (which
    /// the kernel may hand to an outgoing connection while the agent is down: a fleet of agents
    /// makes many).
    pub fn set_metrics_port(&mut self, port: u16) {
        self.metrics_port = port;
    }

    /// Replaces the extra flags, from the agent's next start on.
    pub fn set_extra(&mut self, extra: &[&str]) {
        self.extra = extra.iter().map(|s| (*s).to_owned()).collect();
    }

    /// Makes the agent authenticate with `kubeconfig` (e.g. a ServiceAccount token) from its
    /// next start on.
    pub fn use_kubeconfig(&mut self, kubeconfig: &Path) {
        self.kubeconfig = kubeconfig.to_path_buf();
    }

    /// The host folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The port of the agent's /metrics (and probes), on 127.0.0.1.
    pub fn metrics_port(&self) -> u16 {
        self.metrics_port
    }

    /// How many times this node rebooted.
    pub fn boots(&self) -> u32 {
        self.boots
    }

    fn trigger_file(&self) -> PathBuf {
        self.dir.join("reboot-triggered")
    }

    /// Creates the sentinel file: this node needs a reboot.
    pub fn flag(&self) -> Result<()> {
        std::fs::write(self.dir.join("reboot-required"), "")?;
        Ok(())
    }

    /// How many times a reboot was triggered since the last simulated reboot.
    pub fn triggers(&self) -> usize {
        std::fs::read_to_string(self.trigger_file()).map_or(0, |s| s.lines().count())
    }

    /// Starts (or restarts) the agent.
    pub fn start(&mut self) -> Result<()> {
        let mut args: Vec<String> = vec![
            "agent".into(),
            format!("--node-name={}", self.name),
            format!("--lock-namespace={}", self.lock_namespace),
            "--check-interval=1s".into(),
            "--lock-ttl=30s".into(),
            "--api-timeout=5s".into(),
            "--drain-timeout=60s".into(),
            format!(
                "--reboot-sentinel={}",
                self.dir.join("reboot-required").display()
            ),
            format!("--boot-id-file={}", self.dir.join("boot_id").display()),
            format!("--metrics-address=127.0.0.1:{}", self.metrics_port),
            "--log-level=info,baton=debug".into(),
        ];
        match self.method {
            Method::Command => {
                // Appends a line per trigger, so tests can count them.
                let cmd = format!("/bin/sh -c 'echo x >> {}'", self.trigger_file().display());
                args.push("--reboot-method=command".into());
                args.push(format!("--reboot-command={cmd}"));
                args.push(format!("--host-pid={}", std::process::id()));
            }
            Method::Signal => {
                if self.catcher.is_none() {
                    let script = format!(
                        "trap 'echo x >> {}' 39; while :; do sleep 1 & wait $!; done",
                        self.trigger_file().display()
                    );
                    let mut c = Command::new("/bin/bash");
                    c.args(["-c", &script]);
                    self.catcher = Some(Process::spawn(
                        "catcher",
                        &mut c,
                        &self.dir.join("catcher.log"),
                    )?);
                }
                let pid = self.catcher.as_ref().map(Process::pid).unwrap_or_default();
                args.push("--reboot-method=signal".into());
                args.push(format!("--host-pid={pid}"));
            }
        }
        args.extend(self.extra.iter().cloned());
        let mut cmd = Command::new(baton_bin()?);
        cmd.args(&args).env("KUBECONFIG", &self.kubeconfig);
        self.starts += 1;
        let log = self.dir.join("agent.log");
        std::fs::write(&log, format!("--- start {} ---\n", self.starts)).ok();
        self.agent = Some(Process::spawn(
            &format!("baton-{}", self.name),
            &mut cmd,
            &log,
        )?);
        Ok(())
    }

    /// Stops the agent with SIGTERM (as a reboot does) and waits for it to exit.
    pub async fn stop(&mut self) -> Result<()> {
        if let Some(mut p) = self.agent.take() {
            p.signal(Signal::SIGTERM)?;
            let status = tokio::task::spawn_blocking(move || p.wait()).await??;
            if !status.success() {
                bail!(
                    "the agent of {} exited with {status} on SIGTERM:\n{}",
                    self.name,
                    self.log()
                );
            }
        }
        Ok(())
    }

    /// Kills the agent with SIGKILL (no chance to clean up).
    pub fn kill(&mut self) {
        if let Some(mut p) = self.agent.take() {
            p.kill();
        }
    }

    /// The agent's PID, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.agent.as_ref().map(Process::pid)
    }

    /// The agent's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }

    /// The agent's exit status, if it exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.agent.as_mut().and_then(Process::exited)
    }

    /// Waits until the agent exits on its own, up to `timeout`; returns how it exited.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Result<std::process::ExitStatus> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.exited() {
                return Ok(status);
            }
            if tokio::time::Instant::now() >= deadline {
                bail!("{}'s agent did not exit within {timeout:?}", self.name);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the agent triggered a reboot (the trigger file exists).
    pub async fn wait_triggered(&self, timeout: Duration) -> Result<()> {
        wait_for(
            &format!("{} to trigger a reboot", self.name),
            timeout,
            || async { Ok(self.trigger_file().exists().then_some(())) },
        )
        .await
    }

    /// Simulates the reboot the agent triggered: returns the Lease holder at the instant the
    /// host went down (it must be this node), then takes the node down and up with a new boot
    /// ID and an empty sentinel folder, and restarts the agent.
    pub async fn reboot(&mut self, cluster: &Cluster, client: &Client) -> Result<Option<String>> {
        self.reboot_with(cluster, client, |_, _| {}).await
    }

    /// [`SimNode::reboot`], calling `on_down(node, holder)` as the host goes down.
    pub async fn reboot_with(
        &mut self,
        cluster: &Cluster,
        client: &Client,
        mut on_down: impl FnMut(&str, Option<&str>),
    ) -> Result<Option<String>> {
        let holder = self.go_down(cluster, client).await?;
        on_down(&self.name, holder.as_deref());
        self.come_up(cluster, client).await?;
        Ok(holder)
    }

    /// The first half of a reboot: records the Lease holder at this instant (returned; the
    /// holder of the slot this node holds, else of the first slot), stops the agent with
    /// SIGTERM and takes the node NotReady. The host stays down until [`SimNode::come_up`].
    pub async fn go_down(&mut self, cluster: &Cluster, client: &Client) -> Result<Option<String>> {
        // Slots: baton, baton-1, baton-<group>, ...
        let leases: Api<Lease> = Api::namespaced(client.clone(), &self.lock_namespace);
        let holders: Vec<(String, Option<String>)> = leases
            .list(&kube::api::ListParams::default())
            .await?
            .items
            .into_iter()
            .filter_map(|l| {
                let name = l.metadata.name.clone()?;
                let slot = name == "baton" || name.starts_with("baton-");
                slot.then(|| (name, l.spec.and_then(|s| s.holder_identity)))
            })
            .collect();
        let holder = holders
            .iter()
            .find(|(_, h)| h.as_deref() == Some(self.name.as_str()))
            .or_else(|| holders.iter().find(|(n, _)| n == "baton"))
            .and_then(|(_, h)| h.clone());
        self.held_at_reboot = holders
            .iter()
            .filter(|(_, h)| h.as_deref() == Some(self.name.as_str()))
            .map(|(n, _)| n.clone())
            .collect();
        self.stop().await?;
        cluster.node_down(client, &self.name).await?;
        Ok(holder)
    }

    /// The second half of a reboot: a new boot ID, an empty sentinel folder, the node Ready
    /// again, and the agent started.
    pub async fn come_up(&mut self, cluster: &Cluster, client: &Client) -> Result<()> {
        self.boots += 1;
        std::fs::write(
            self.dir.join("boot_id"),
            format!("{}\n", boot_id(&self.name, self.boots)),
        )?;
        let _ = std::fs::remove_file(self.dir.join("reboot-required"));
        let _ = std::fs::remove_file(self.trigger_file());
        cluster.node_up(client, &self.name, self.boots).await?;
        self.start()
    }

    /// GETs a path from the agent's HTTP server; returns the status code and body.
    pub async fn http_get(&self, path: &str) -> Result<(u16, String)> {
        crate::http::get(self.metrics_port, path).await
    }

    /// The value of metric `name` (exact series, e.g. `baton_reboots_total`), if exported.
    pub async fn metric(&self, series: &str) -> Result<Option<f64>> {
        let (_, body) = self.http_get("/metrics").await?;
        Ok(body.lines().find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
                .and_then(|v| v.trim().parse().ok())
        }))
    }

    /// Waits until metric `series` is exported with a value that passes `ok`; returns it.
    pub async fn wait_metric(
        &self,
        series: &str,
        timeout: Duration,
        ok: impl Fn(f64) -> bool,
    ) -> Result<f64> {
        wait_for(&format!("{}'s {series}", self.name), timeout, || async {
            Ok(self.metric(series).await?.filter(|v| ok(*v)))
        })
        .await
    }

    /// Waits until the agent's /readyz answers 200.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<()> {
        wait_for(
            &format!("{}'s agent to be ready", self.name),
            timeout,
            || async { Ok(matches!(self.http_get("/readyz").await, Ok((200, _))).then_some(())) },
        )
        .await
    }
}

impl Drop for SimNode {
    fn drop(&mut self) {
        self.kill();
        if let Some(mut c) = self.catcher.take() {
            c.kill();
        }
    }
}
