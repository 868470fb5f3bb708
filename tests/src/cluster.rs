//! One real control plane: etcd, kube-apiserver (own CA, token auth, RBAC), kube-controller-manager
//! (all controllers), kube-scheduler and kwok, on free loopback ports in a temporary directory.
//!
//! Starting one costs seconds, so a test binary usually shares one ([`shared`]) and isolates its
//! tests by namespace and node names. Everything is stopped by PID when the cluster is dropped, or
//! at exit for the shared one.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use k8s_openapi::api::core::v1::{Namespace, Node, ServiceAccount};
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use serde_json::json;

use crate::pki::{self, Pki};
use crate::process::{Process, log_tail, remove_at_exit};
use crate::wait::wait_for;

/// How long a component may take to become ready: etcd and the API server start in seconds, but
/// a loaded 2-core machine can be several times slower than an idle one.
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a node may take to reach a Ready state: kwok reacts within a second or two.
const NODE_TIMEOUT: Duration = Duration::from_secs(60);
/// The admin's bearer token (cluster-admin through `system:masters`); loopback-only clusters.
const ADMIN_TOKEN: &str = "baton-test-admin-token";
/// The label kwok selects the nodes it manages by; dropping it makes a node "die".
pub const KWOK_LABEL: (&str, &str) = ("type", "kwok");
/// The label that makes kwok's node-not-ready stage take a node NotReady.
const NOT_READY_LABEL: &str = "node-not-ready.stage.kwok.x-k8s.io";

/// A running control plane.
#[derive(Debug)]
pub struct Cluster {
    dir: PathBuf,
    _tempdir: Option<tempfile::TempDir>,
    kubeconfig: PathBuf,
    config: Config,
    assets: PathBuf,
    pki: Pki,
    api_port: u16,
    processes: Mutex<Vec<Process>>,
}

/// The shared control plane of this test binary, started on first use.
pub fn shared() -> &'static Cluster {
    static SHARED: OnceLock<Result<Cluster, String>> = OnceLock::new();
    shared_in(&SHARED, Options::default())
}

/// Like [`shared`], with an audit log ([`Options::audit`]).
pub fn shared_audited() -> &'static Cluster {
    static SHARED: OnceLock<Result<Cluster, String>> = OnceLock::new();
    shared_in(&SHARED, Options { audit: true })
}

fn shared_in(
    cell: &'static OnceLock<Result<Cluster, String>>,
    options: Options,
) -> &'static Cluster {
    let started = cell.get_or_init(|| {
        // Start on a thread that lives as long as the process: children die with the thread that
        // spawned them (PR_SET_PDEATHSIG), and the atexit hook stops them at exit.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("shared-cluster".into())
            .spawn(move || {
                let started = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(anyhow::Error::from)
                    .and_then(|rt| rt.block_on(Cluster::start_with(options)));
                let ok = started.is_ok();
                let _ = tx.send(started.map_err(|e| format!("{e:#}")));
                if ok {
                    loop {
                        std::thread::park();
                    }
                }
            })
            .expect("spawning the shared-cluster thread");
        let cluster = rx.recv().map_err(|e| e.to_string()).and_then(|r| r);
        if let Ok(c) = &cluster {
            remove_at_exit(&c.dir);
        }
        cluster
    });
    match started {
        Ok(c) => c,
        Err(e) => panic!("the shared control plane did not start: {e}"),
    }
}

/// `N` distinct free loopback ports.
pub fn free_ports<const N: usize>() -> Result<[u16; N]> {
    // Hold every listener until all ports are picked, so no port is handed out twice.
    let listeners = (0..N)
        .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))
        .collect::<std::io::Result<Vec<_>>>()?;
    let mut ports = [0; N];
    for (p, l) in ports.iter_mut().zip(&listeners) {
        *p = l.local_addr()?.port();
    }
    Ok(ports)
}

/// A non-loopback IPv4 address of this machine: the API server refuses loopback as its
/// advertise address. It is only advertised (in the `kubernetes` Endpoints), never dialed.
fn advertise_address() -> Result<Ipv4Addr> {
    for ifa in nix::ifaddrs::getifaddrs()? {
        if let Some(ip) = ifa
            .address
            .as_ref()
            .and_then(|a| a.as_sockaddr_in())
            .map(|s| s.ip())
            && !ip.is_loopback()
        {
            return Ok(ip);
        }
    }
    bail!("this machine has no non-loopback IPv4 address for --advertise-address")
}

fn port_open(port: u16) -> bool {
    TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok()
}

fn write_kubeconfig(path: &Path, pki: &Pki, port: u16) -> Result<()> {
    let text = format!(
        "apiVersion: v1
kind: Config
clusters:
- name: local
  cluster:
    server: https://127.0.0.1:{port}
    certificate-authority: {ca}
users:
- name: admin
  user:
    token: {ADMIN_TOKEN}
contexts:
- name: local
  context:
    cluster: local
    user: admin
current-context: local
",
        ca = pki.ca_cert.display()
    );
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

fn tmp_root() -> PathBuf {
    // etcd fsyncs less on tmpfs, and nothing of a test cluster needs to survive a reboot.
    let shm = Path::new("/dev/shm");
    if shm.is_dir() && tempfile::tempdir_in(shm).is_ok() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

/// Removes the directories of clusters whose test process died without cleaning up (SIGKILL
/// skips every exit hook; the kernel already killed their children through PDEATHSIG).
fn sweep_stale_dirs(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let is_ours = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(DIR_PREFIX));
        let owner = std::fs::read_to_string(path.join("owner.pid"))
            .ok()
            .and_then(|p| p.trim().parse::<u32>().ok());
        if let (true, Some(pid)) = (is_ours, owner)
            && !Path::new(&format!("/proc/{pid}")).exists()
        {
            let _ = std::fs::remove_dir_all(&path);
        }
    }
}

/// The prefix of every cluster directory.
const DIR_PREFIX: &str = "baton-cluster-";

/// Optional features of a control plane.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Write an audit log (`audit.log`, JSON lines, metadata level) of every API request.
    pub audit: bool,
}

/// The audit policy: evictions and pod deletions with their bodies (to check grace periods),
/// every other request at metadata level, once it completes.
const AUDIT_POLICY: &str = "apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: Request
  verbs: [create, delete]
  resources:
  - group: \"\"
    resources: [pods/eviction]
- level: Metadata
";

impl Cluster {
    /// Starts a control plane and waits until it serves and its controllers run.
    pub async fn start() -> Result<Self> {
        Self::start_with(Options::default()).await
    }

    /// The audit log's path (written when started with [`Options::audit`]).
    pub fn audit_log(&self) -> PathBuf {
        self.dir.join("audit.log")
    }

    /// [`Cluster::start`] with options.
    pub async fn start_with(options: Options) -> Result<Self> {
        let assets = crate::assets::dir()?;
        let root = tmp_root();
        sweep_stale_dirs(&root);
        let tempdir = tempfile::Builder::new()
            .prefix(DIR_PREFIX)
            .tempdir_in(&root)?;
        let dir = tempdir.path().to_path_buf();
        std::fs::write(dir.join("owner.pid"), std::process::id().to_string())?;
        let pki = pki::write(&dir.join("pki"))?;
        let [
            etcd_client,
            etcd_peer,
            api_port,
            kcm_port,
            sched_port,
            kwok_port,
        ] = free_ports()?;
        let kubeconfig = dir.join("admin.kubeconfig");
        write_kubeconfig(&kubeconfig, &pki, api_port)?;
        let tokens = dir.join("tokens.csv");
        std::fs::write(
            &tokens,
            format!("{ADMIN_TOKEN},admin,admin,system:masters\n"),
        )?;

        let mut cluster = Self {
            config: Config::from_custom_kubeconfig(
                Kubeconfig::read_from(&kubeconfig)?,
                &KubeConfigOptions::default(),
            )
            .await?,
            dir: dir.clone(),
            _tempdir: Some(tempdir),
            kubeconfig: kubeconfig.clone(),
            assets: assets.clone(),
            pki: pki.clone(),
            api_port,
            processes: Mutex::new(Vec::new()),
        };
        let bin = |name: &str| assets.join(name);
        let kc = kubeconfig.display().to_string();

        let etcd_url = format!("http://127.0.0.1:{etcd_client}");
        let peer_url = format!("http://127.0.0.1:{etcd_peer}");
        cluster.spawn(
            "etcd",
            Command::new(bin("etcd")).args([
                "--name=default",
                &format!("--data-dir={}", dir.join("etcd").display()),
                &format!("--listen-client-urls={etcd_url}"),
                &format!("--advertise-client-urls={etcd_url}"),
                &format!("--listen-peer-urls={peer_url}"),
                &format!("--initial-advertise-peer-urls={peer_url}"),
                &format!("--initial-cluster=default={peer_url}"),
                "--unsafe-no-fsync",
                "--log-level=warn",
            ]),
        )?;
        cluster
            .wait_component("etcd", || async move {
                Ok(port_open(etcd_client).then_some(()))
            })
            .await?;

        let mut apiserver = Command::new(bin("kube-apiserver"));
        if options.audit {
            let policy = dir.join("audit-policy.yaml");
            std::fs::write(&policy, AUDIT_POLICY)?;
            apiserver.args([
                format!("--audit-policy-file={}", policy.display()),
                format!("--audit-log-path={}", dir.join("audit.log").display()),
                "--audit-log-mode=blocking".to_owned(),
            ]);
        }
        cluster.spawn(
            "kube-apiserver",
            apiserver.args([
                &format!("--etcd-servers={etcd_url}"),
                "--bind-address=127.0.0.1",
                &format!("--secure-port={api_port}"),
                &format!("--advertise-address={}", advertise_address()?),
                &format!("--cert-dir={}", dir.join("apiserver-certs").display()),
                &format!("--tls-cert-file={}", pki.serving_cert.display()),
                &format!("--tls-private-key-file={}", pki.serving_key.display()),
                &format!("--client-ca-file={}", pki.ca_cert.display()),
                &format!("--token-auth-file={}", tokens.display()),
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                &format!("--service-account-key-file={}", pki.sa_pub.display()),
                &format!(
                    "--service-account-signing-key-file={}",
                    pki.sa_key.display()
                ),
                "--authorization-mode=Node,RBAC",
                "--service-cluster-ip-range=10.96.0.0/16",
                "--allow-privileged=true",
                "--profiling=false",
                "--v=1",
            ]),
        )?;
        let client = cluster.client().await?;
        cluster
            .wait_component("kube-apiserver", || {
                let client = client.clone();
                async move {
                    let req = http::Request::get("/readyz").body(Vec::new())?;
                    let body = client.request_text(req).await?;
                    Ok((body.trim() == "ok").then_some(()))
                }
            })
            .await?;

        cluster.spawn(
            "kube-controller-manager",
            Command::new(bin("kube-controller-manager")).args([
                &format!("--kubeconfig={kc}"),
                &format!("--authentication-kubeconfig={kc}"),
                &format!("--authorization-kubeconfig={kc}"),
                "--leader-elect=false",
                "--use-service-account-credentials=false",
                &format!(
                    "--service-account-private-key-file={}",
                    pki.sa_key.display()
                ),
                &format!("--root-ca-file={}", pki.ca_cert.display()),
                &format!("--cluster-signing-cert-file={}", pki.ca_cert.display()),
                &format!("--cluster-signing-key-file={}", pki.ca_key.display()),
                "--controllers=*",
                "--bind-address=127.0.0.1",
                &format!("--secure-port={kcm_port}"),
                &format!("--cert-dir={}", dir.join("kcm-certs").display()),
                "--profiling=false",
                "--v=1",
            ]),
        )?;
        cluster.spawn(
            "kube-scheduler",
            Command::new(bin("kube-scheduler")).args([
                &format!("--kubeconfig={kc}"),
                &format!("--authentication-kubeconfig={kc}"),
                &format!("--authorization-kubeconfig={kc}"),
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                &format!("--secure-port={sched_port}"),
                &format!("--cert-dir={}", dir.join("scheduler-certs").display()),
                "--profiling=false",
                "--v=1",
            ]),
        )?;
        cluster.spawn(
            "kwok",
            Command::new(bin("kwok")).args([
                &format!("--kubeconfig={kc}"),
                &format!(
                    "--manage-nodes-with-label-selector={}={}",
                    KWOK_LABEL.0, KWOK_LABEL.1
                ),
                &format!("--config={}", assets.join("kwok-stages.yaml").display()),
                "--node-lease-duration-seconds=40",
                // Pod IPs and the node IP are only written into objects, never dialed.
                "--cidr=10.0.0.0/16",
                "--node-ip=127.0.0.1",
                &format!("--server-address=127.0.0.1:{kwok_port}"),
            ]),
        )?;
        // The controller-manager runs once it has made the `default` ServiceAccount.
        let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
        cluster
            .wait_component("kube-controller-manager", || {
                let sas = sas.clone();
                async move { Ok(sas.get_opt("default").await?.map(|_| ())) }
            })
            .await?;
        cluster
            .wait_component("kube-scheduler", || async move {
                Ok(port_open(sched_port).then_some(()))
            })
            .await?;
        cluster
            .wait_component(
                "kwok",
                || async move { Ok(port_open(kwok_port).then_some(())) },
            )
            .await?;
        Ok(cluster)
    }

    fn spawn(&mut self, name: &str, cmd: &mut Command) -> Result<()> {
        let log = self.dir.join(format!("{name}.log"));
        let p = Process::spawn(name, cmd, &log)?;
        self.processes.get_mut().unwrap().push(p);
        Ok(())
    }

    /// Waits for `check`, failing early (with the log's tail) if any component has exited.
    async fn wait_component<F, Fut>(&self, name: &str, mut check: F) -> Result<()>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<Option<()>>>,
    {
        let waited = wait_for(&format!("{name} to become ready"), START_TIMEOUT, || {
            let dead = self.dead_component();
            let fut = check();
            async move {
                if let Some(dead) = dead {
                    return Err(anyhow!("DEAD: {dead}"));
                }
                fut.await
            }
        })
        .await;
        match waited {
            Ok(()) => Ok(()),
            Err(e) => {
                let log = self.dir.join(format!("{name}.log"));
                Err(e.context(format!(
                    "{name} did not start; last lines of {}:\n{}",
                    log.display(),
                    log_tail(&log, 40)
                )))
            }
        }
    }

    fn dead_component(&self) -> Option<String> {
        let mut procs = self.processes.lock().unwrap();
        procs.iter_mut().find_map(|p| {
            p.exited().map(|status| {
                format!(
                    "{} exited ({status}); last lines of its log:\n{}",
                    p.name(),
                    p.log_tail(40)
                )
            })
        })
    }

    /// A new client for the admin, bound to the calling tokio runtime. It does not retry 429s
    /// by itself (kube's default does, for minutes), so tests see what the API server said.
    pub async fn client(&self) -> Result<Client> {
        let mut config = self.config.clone();
        config.default_retry = false;
        Ok(Client::try_from(config)?)
    }

    /// The admin kubeconfig (token auth, cluster-admin).
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// A `kubectl` (built with the control plane) pointed at this cluster as the admin.
    pub fn kubectl(&self) -> Command {
        let mut c = Command::new(self.assets.join("kubectl"));
        c.env("KUBECONFIG", &self.kubeconfig);
        c
    }

    /// A `helm` (built with the control plane) pointed at this cluster as the admin.
    pub fn helm(&self) -> Command {
        let mut c = Command::new(self.assets.join("helm"));
        c.env("KUBECONFIG", &self.kubeconfig);
        c
    }

    /// Writes a kubeconfig that authenticates with `token` (e.g. a ServiceAccount's).
    pub fn kubeconfig_for_token(&self, name: &str, token: &str) -> Result<PathBuf> {
        let path = self.dir.join(format!("{name}.kubeconfig"));
        let text = std::fs::read_to_string(&self.kubeconfig)?
            .replace(&format!("token: {ADMIN_TOKEN}"), &format!("token: {token}"));
        std::fs::write(&path, text)?;
        Ok(path)
    }

    /// The certificates and keys of this control plane.
    pub fn pki(&self) -> &Pki {
        &self.pki
    }

    /// The PID of component `name` (`kube-apiserver`, `etcd`, ...), while it runs.
    pub fn pid(&self, name: &str) -> Option<u32> {
        let procs = self.processes.lock().unwrap();
        procs.iter().find(|p| p.name() == name).map(Process::pid)
    }

    /// The API server's port on 127.0.0.1.
    pub fn api_port(&self) -> u16 {
        self.api_port
    }

    /// The directory holding the control-plane binaries (and kubelet).
    pub fn assets(&self) -> &Path {
        &self.assets
    }

    /// The cluster's temporary directory (logs, PKI, etcd data).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Creates a namespace named `name` and waits for its `default` ServiceAccount, which the
    /// controller-manager adds (pods cannot be created before it exists).
    pub async fn namespace(&self, client: &Client, name: &str) -> Result<()> {
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                ..Default::default()
            },
            ..Default::default()
        };
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .with_context(|| format!("creating namespace {name}"))?;
        let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), name);
        wait_for(
            &format!("the default ServiceAccount in {name}"),
            START_TIMEOUT,
            || {
                let sas = sas.clone();
                async move { Ok(sas.get_opt("default").await?.map(|_| ())) }
            },
        )
        .await
    }

    /// Adds kwok-managed nodes with the given names and extra labels, and waits until all are
    /// Ready.
    pub async fn add_nodes(
        &self,
        client: &Client,
        names: &[&str],
        labels: &[(&str, &str)],
    ) -> Result<()> {
        let nodes: Api<Node> = Api::all(client.clone());
        for name in names {
            let mut all: BTreeMap<String, String> = labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect();
            all.insert(KWOK_LABEL.0.into(), KWOK_LABEL.1.into());
            all.insert("kubernetes.io/hostname".into(), (*name).to_owned());
            let node: Node = serde_json::from_value(json!({
                "metadata": {
                    "name": name,
                    "labels": all,
                    "annotations": {"kwok.x-k8s.io/node": "fake"},
                },
                "status": {
                    "allocatable": {"cpu": "32", "memory": "256Gi", "pods": "110"},
                    "capacity": {"cpu": "32", "memory": "256Gi", "pods": "110"},
                    "nodeInfo": {"bootID": boot_id(name, 0)},
                },
            }))?;
            nodes
                .create(&PostParams::default(), &node)
                .await
                .with_context(|| format!("creating node {name}"))?;
        }
        for name in names {
            self.wait_node_ready(client, name, true).await?;
        }
        Ok(())
    }

    /// Waits until node `name` is Ready (`ready`) or not Ready (`!ready`).
    pub async fn wait_node_ready(&self, client: &Client, name: &str, ready: bool) -> Result<()> {
        let nodes: Api<Node> = Api::all(client.clone());
        let what = format!(
            "node {name} to be {}",
            if ready { "Ready" } else { "NotReady" }
        );
        wait_for(&what, NODE_TIMEOUT, || {
            let nodes = nodes.clone();
            async move { Ok((node_is_ready(&nodes.get(name).await?) == ready).then_some(())) }
        })
        .await
    }

    /// Takes a node down, as a reboot does: kwok reports it NotReady until [`Self::node_up`].
    pub async fn node_down(&self, client: &Client, name: &str) -> Result<()> {
        let patch = json!({"metadata": {"labels": {NOT_READY_LABEL: "true"}}});
        Api::<Node>::all(client.clone())
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        self.wait_node_ready(client, name, false).await
    }

    /// Brings a node back up, with a new boot ID (`boot` counts the node's boots), and waits
    /// until it is Ready again.
    pub async fn node_up(&self, client: &Client, name: &str, boot: u32) -> Result<()> {
        let nodes: Api<Node> = Api::all(client.clone());
        let status = json!({"status": {"nodeInfo": {"bootID": boot_id(name, boot)}}});
        nodes
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
            .await?;
        let patch = json!({"metadata": {"labels": {NOT_READY_LABEL: null}}});
        nodes
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        self.wait_node_ready(client, name, true).await
    }
}

/// A deterministic, distinct boot ID for boot number `boot` of node `name`.
pub fn boot_id(name: &str, boot: u32) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        (h >> 32) as u32,
        (h >> 16) as u16,
        h as u16 & 0xfff,
        boot & 0xfff,
        u64::from(boot) << 8 | (h & 0xff)
    )
}

/// Whether a Node's Ready condition is True.
pub fn node_is_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .is_some_and(|c| c.status == "True")
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Stop in reverse order of start: clients of the API server before the server, etcd last.
        let procs = self.processes.get_mut().unwrap();
        while let Some(mut p) = procs.pop() {
            p.kill();
        }
    }
}
