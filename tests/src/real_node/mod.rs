//! Real nodes: containerd and a real kubelet, each node in PID, mount and network namespaces of
//! its own whose PID 1 is a small init ([`init`]) that stands in for the host and reboots when
//! told to, as systemd does. The node joins the test control plane with a client certificate
//! (`system:node:<name>`), runs real containers from images built here (no registry), and is
//! reached only from this process (see [`net`]).
//!
//! Nothing a node does reaches the machine's PID 1, its iptables or its global sysctls: kubelet's
//! kernel tunables and the boot ID are files bind-mounted in the node's mount namespace only, and
//! everything the node makes (processes, mounts, cgroups, its network) is removed when it stops.

pub mod init;
pub mod inspect;
pub mod install;
pub mod net;
pub mod web;

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::Client;
use kube::api::Api;
use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::cluster::{Cluster, boot_id};
use crate::process::Process;
use crate::wait::wait_for;
use init::files;

/// How long a node may take from start to Ready: images are imported and kubelet registers in a
/// few seconds on an idle machine; a loaded 2-core one is several times slower.
const READY_TIMEOUT: Duration = Duration::from_secs(180);
/// How long a node may take to stop after SIGTERM: its init gives processes 10 s, then kills.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// The label every real node carries (and kwok's label selector never matches).
pub const REAL_NODE_LABEL: (&str, &str) = ("baton.test/real-node", "true");
/// Where the Debian package puts the CNI plugins.
const CNI_BIN_DIR: &str = "/usr/lib/cni";
/// The kubelet tunables `protectKernelDefaults` checks, with the values it expects.
const KUBELET_SYSCTLS: [(&str, &str); 6] = [
    ("vm/overcommit_memory", "1"),
    ("vm/panic_on_oom", "0"),
    ("kernel/panic", "10"),
    ("kernel/panic_on_oops", "1"),
    ("kernel/keys/root_maxkeys", "1000000"),
    ("kernel/keys/root_maxbytes", "25000000"),
];

/// Images built by `tests/real-node/images.sh`.
#[derive(Debug, Clone)]
pub struct Images {
    dir: PathBuf,
}

impl Images {
    /// The images in `BATON_IMAGES` (the test command sets it).
    pub fn from_env() -> Result<Self> {
        let dir = std::env::var_os("BATON_IMAGES")
            .map(PathBuf::from)
            .context("BATON_IMAGES is not set: run the README's test command (tests/run.sh), which builds the images")?;
        for f in ["baton.tar", "pause.tar", "web.tar"] {
            if !dir.join(f).exists() {
                bail!("{f} is missing from {}", dir.display());
            }
        }
        Ok(Self { dir })
    }

    fn archives(&self) -> Vec<PathBuf> {
        ["pause.tar", "web.tar", "baton.tar"]
            .iter()
            .map(|f| self.dir.join(f))
            .collect()
    }
}

/// The sandbox image every pod's pause container runs.
pub const PAUSE_IMAGE: &str = "localhost/baton-test/pause:1";
/// busybox: a shell and an HTTP server.
pub const WEB_IMAGE: &str = "localhost/baton-test/web:1";

/// One real node.
#[derive(Debug)]
pub struct RealNode {
    /// The Node's name.
    pub name: String,
    index: u8,
    dir: PathBuf,
    supervisor: Option<Process>,
    pid: i32,
    forwarder: Option<net::Forwarder>,
    cgroup_root: String,
}

impl RealNode {
    /// Starts node `name` (its `index`, 1..=250, picks its addresses) joined to `cluster`, and
    /// waits until it is Ready.
    pub async fn start(
        cluster: &Cluster,
        client: &Client,
        name: &str,
        index: u8,
        images: &Images,
    ) -> Result<Self> {
        if !nix::unistd::geteuid().is_root() {
            bail!("real nodes need root (namespaces, mounts, cgroups): run the tests as root");
        }
        sweep_stale_cgroups();
        let dir = cluster.dir().join("real-nodes").join(name);
        std::fs::create_dir_all(dir.join("logs"))?;
        let cgroup_root = format!("{CGROUP_PREFIX}{}-{name}", std::process::id());
        let config = write_config(cluster, name, index, &dir, &cgroup_root, images)?;
        let init_bin = init_binary()?;
        let supervisor = Process::spawn(
            &format!("node {name}"),
            Command::new(&init_bin).arg(&config),
            &dir.join("logs/init.log"),
        )?;
        let mut node = Self {
            name: name.to_owned(),
            index,
            dir,
            supervisor: Some(supervisor),
            pid: 0,
            forwarder: None,
            cgroup_root,
        };
        node.pid = wait_for(
            &format!("node {name}'s init"),
            Duration::from_secs(20),
            || {
                let f = node.dir.join(files::PID);
                async move {
                    Ok(std::fs::read_to_string(f)
                        .ok()
                        .and_then(|p| p.trim().parse().ok()))
                }
            },
        )
        .await?;
        node.wire_network(cluster.api_port())?;
        let boot = boot_id(name, 0);
        let nodes: Api<Node> = Api::all(client.clone());
        let result = wait_for(&format!("node {name} to be Ready"), READY_TIMEOUT, || {
            let nodes = nodes.clone();
            let dead = node.dead();
            let boot = boot.clone();
            async move {
                if let Some(why) = dead {
                    bail!("DEAD: {why}");
                }
                let Some(n) = nodes.get_opt(name).await? else {
                    return Ok(None);
                };
                Ok((crate::cluster::node_is_ready(&n) && boot_id_of(&n) == boot).then_some(()))
            }
        })
        .await;
        if let Err(e) = result {
            bail!(
                "{e:#}\nlast lines of the node's logs:\n{}",
                node.log_tails()
            );
        }
        Ok(node)
    }

    /// The network namespace: lo up with the node's address, and the path to the API server: the
    /// `kubernetes` Service address is sent to the forwarder (what kube-proxy would do), and the
    /// API server's own port on the node's loopback is relayed too (for kubelet).
    fn wire_network(&mut self, api_port: u16) -> Result<()> {
        let netns = self.netns();
        let ns = format!("--net={}", netns.display());
        let ip = self.ip().to_string();
        let forward = format!("{ip}:{api_port}");
        let kubernetes = crate::pki::KUBERNETES_SERVICE_IP;
        let steps: Vec<Vec<&str>> = vec![
            vec!["ip", "link", "set", "lo", "up"],
            // A /32 on lo is local like any other address (this kernel has no dummy devices).
            vec!["ip", "addr", "add", &ip, "dev", "lo"],
            vec![
                "iptables",
                "-t",
                "nat",
                "-A",
                "PREROUTING",
                "-d",
                kubernetes,
                "-p",
                "tcp",
                "--dport",
                "443",
                "-j",
                "DNAT",
                "--to-destination",
                &forward,
            ],
            vec![
                "iptables",
                "-t",
                "nat",
                "-A",
                "OUTPUT",
                "-d",
                kubernetes,
                "-p",
                "tcp",
                "--dport",
                "443",
                "-j",
                "DNAT",
                "--to-destination",
                &forward,
            ],
        ];
        for step in steps {
            let out = Command::new("nsenter")
                .arg(&ns)
                .arg("--")
                .args(&step)
                .output()?;
            if !out.status.success() {
                bail!(
                    "in node {}: {} failed: {}",
                    self.name,
                    step.join(" "),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        self.forwarder = Some(net::Forwarder::start(
            &netns,
            SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, api_port)),
            SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, api_port)),
        )?);
        std::fs::write(self.dir.join(files::NETWORK_READY), "")?;
        Ok(())
    }

    /// The node's address (on the loopback device of its network namespace).
    pub fn ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 201, 0, self.index)
    }

    /// The node's pod subnet: `10.244.<index>.0/24`.
    pub fn pod_subnet(&self) -> String {
        format!("10.244.{}.0/24", self.index)
    }

    /// The node's network namespace.
    pub fn netns(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/ns/net", self.pid))
    }

    /// `path` as the node sees it (through its init's root, so inside its mount namespace).
    pub fn host_path(&self, path: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root", self.pid)).join(path.trim_start_matches('/'))
    }

    /// The init's PID in this machine's PID namespace.
    pub fn init_pid(&self) -> i32 {
        self.pid
    }

    /// The node's folder (logs, configuration, boot records).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The boots so far, in order: (boot ID, unix time the boot finished).
    pub fn boots(&self) -> Vec<(String, f64)> {
        std::fs::read_to_string(self.dir.join(files::BOOTS))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let mut parts = l.split_whitespace().skip(1);
                Some((parts.next()?.to_owned(), parts.next()?.parse().ok()?))
            })
            .collect()
    }

    /// Every call of the node's `systemctl`: `<unix time> <uid> <args>` lines.
    pub fn systemctl_calls(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.join(files::SYSTEMCTL_LOG))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// A TCP socket inside the node's network (to reach its pods, as kube-proxy would).
    pub fn socket(&self) -> Result<tokio::net::TcpSocket> {
        net::socket_in(&self.netns())
    }

    /// The logs of the containers of the pods in `namespace` whose names start with `pod` on
    /// this node, container by container (kubelet's files: they outlive `kubectl logs`).
    pub fn pod_logs(&self, namespace: &str, pod: &str) -> String {
        let root = self.dir.join("pod-logs");
        let prefix = format!("{namespace}_{pod}");
        let mut out = String::new();
        for entry in std::fs::read_dir(&root).into_iter().flatten().flatten() {
            if !entry.file_name().to_string_lossy().starts_with(&prefix) {
                continue;
            }
            for container in std::fs::read_dir(entry.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                let mut files: Vec<_> = std::fs::read_dir(container.path())
                    .into_iter()
                    .flatten()
                    .flatten()
                    .map(|f| f.path())
                    .collect();
                files.sort();
                for f in files {
                    out.push_str(&std::fs::read_to_string(&f).unwrap_or_default());
                }
            }
        }
        out
    }

    /// Whether this node has finished a maintenance cycle: rebooted at least once, idle (no
    /// `baton.dev/phase`), schedulable, kubelet reporting the latest boot's ID, and no Lease in
    /// `lease_namespace` held by it.
    pub async fn cycle_finished(&self, client: &Client, lease_namespace: &str) -> Result<bool> {
        let n = Api::<Node>::all(client.clone()).get(&self.name).await?;
        let phase = n
            .metadata
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key("baton.dev/phase"));
        let cordoned = n
            .spec
            .as_ref()
            .and_then(|s| s.unschedulable)
            .unwrap_or(false);
        let leases = Api::<Lease>::namespaced(client.clone(), lease_namespace)
            .list(&Default::default())
            .await?;
        let holds = leases.items.iter().any(|l| {
            l.spec.as_ref().and_then(|s| s.holder_identity.as_deref()) == Some(self.name.as_str())
        });
        let boots = self.boots();
        let latest = boots.last().map(|(id, _)| id.as_str()).unwrap_or_default();
        Ok(boots.len() >= 2 && !phase && !cordoned && !holds && boot_id_of(&n) == latest)
    }

    fn dead(&self) -> Option<String> {
        let supervisor = self.supervisor.as_ref()?;
        nix::sys::wait::waitpid(
            Pid::from_raw(supervisor.pid() as i32),
            Some(nix::sys::wait::WaitPidFlag::WNOHANG | nix::sys::wait::WaitPidFlag::WNOWAIT),
        )
        .ok()
        .filter(|s| !matches!(s, nix::sys::wait::WaitStatus::StillAlive))
        .map(|s| format!("node {}'s init exited: {s:?}", self.name))
    }

    /// The last lines of the init's, containerd's and kubelet's logs.
    pub fn log_tails(&self) -> String {
        ["init", "containerd", "kubelet"]
            .iter()
            .map(|f| {
                let p = self.dir.join(format!("logs/{f}.log"));
                format!("--- {}\n{}", p.display(), crate::process::log_tail(&p, 25))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Stops the node: its init stops every process, then its cgroups and network go.
    pub fn stop(&mut self) {
        if let Some(mut supervisor) = self.supervisor.take() {
            if self.pid > 0 {
                let _ = nix::sys::signal::kill(Pid::from_raw(self.pid), Signal::SIGTERM);
            }
            let deadline = std::time::Instant::now() + STOP_TIMEOUT;
            while supervisor.exited().is_none() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            supervisor.kill();
        }
        if let Some(f) = self.forwarder.take() {
            f.stop();
        }
        for h in init::cgroup_hierarchies() {
            init::remove_cgroup_tree(&h.join(&self.cgroup_root), true);
        }
    }
}

impl Drop for RealNode {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The boot ID kubelet reports for `node`.
pub fn boot_id_of(node: &Node) -> String {
    node.status
        .as_ref()
        .and_then(|s| s.node_info.as_ref())
        .map(|i| i.boot_id.clone())
        .unwrap_or_default()
}

/// Every node's cgroup root is named `<prefix><test process id>-<node>`.
const CGROUP_PREFIX: &str = "baton-node-";

/// Removes the cgroups of nodes whose test process is gone (killed before it could clean up).
fn sweep_stale_cgroups() {
    for h in init::cgroup_hierarchies() {
        for e in std::fs::read_dir(&h).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(rest) = name.strip_prefix(CGROUP_PREFIX) else {
                continue;
            };
            let owner = rest.split('-').next().and_then(|p| p.parse::<u32>().ok());
            if owner.is_some_and(|p| !Path::new(&format!("/proc/{p}")).exists()) {
                init::remove_cgroup_tree(&e.path(), true);
            }
        }
    }
}

/// The node init binary, built with the tests (`baton-node-init`).
fn init_binary() -> Result<PathBuf> {
    if let Some(p) = option_env!("CARGO_BIN_EXE_baton-node-init") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    for dir in exe.ancestors().skip(1).take(2) {
        let candidate = dir.join("baton-node-init");
        if candidate.exists() {
            return Ok(candidate);
        }
    }
    bail!(
        "no baton-node-init binary next to {}: build the tests package",
        exe.display()
    )
}

/// Writes the node's certificates and the configuration of its init, containerd, kubelet and
/// CNI. Returns the init's configuration file.
fn write_config(
    cluster: &Cluster,
    name: &str,
    index: u8,
    dir: &Path,
    cgroup_root: &str,
    images: &Images,
) -> Result<PathBuf> {
    let d = dir.display();
    let pki = cluster.pki();
    let (cert, key) = pki.client_cert(&format!("system:node:{name}"), &["system:nodes"])?;
    std::fs::write(dir.join("kubelet-client.crt"), cert)?;
    std::fs::write(dir.join("kubelet-client.key"), key)?;
    std::fs::write(
        dir.join("kubelet.kubeconfig"),
        format!(
            "apiVersion: v1
kind: Config
clusters:
- name: local
  cluster:
    server: https://127.0.0.1:{port}
    certificate-authority: {ca}
users:
- name: kubelet
  user:
    client-certificate: {d}/kubelet-client.crt
    client-key: {d}/kubelet-client.key
contexts:
- name: local
  context: {{cluster: local, user: kubelet}}
current-context: local
",
            port = cluster.api_port(),
            ca = pki.ca_cert.display(),
        ),
    )?;
    // containerd: its own root; its state and socket in the node's /run, which every boot
    // empties; the sandbox image built here; runc may not lower oom_score_adj on this machine.
    std::fs::write(
        dir.join("containerd.toml"),
        format!(
            r#"version = 2
root = "{d}/containerd"
state = "/run/containerd"
[grpc]
  address = "/run/containerd/containerd.sock"
[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/containerd-opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN_DIR}"
    conf_dir = "{d}/cni"
"#
        ),
    )?;
    std::fs::create_dir_all(dir.join("cni"))?;
    std::fs::write(
        dir.join("cni/10-baton-test.conflist"),
        format!(
            r#"{{"cniVersion": "1.0.0", "name": "baton-test", "plugins": [
  {{"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
    "ipam": {{"type": "host-local", "ranges": [[{{"subnet": "10.244.{index}.0/24"}}]],
              "routes": [{{"dst": "0.0.0.0/0"}}], "dataDir": "/run/cni-ipam"}}}}
]}}
"#
        ),
    )?;
    std::fs::write(
        dir.join("kubelet.yaml"),
        format!(
            "apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: /{cgroup_root}
cgroupsPerQOS: true
failSwapOn: false
protectKernelDefaults: true
makeIPTablesUtilChains: false
address: 127.0.0.1
healthzBindAddress: 127.0.0.1
readOnlyPort: 0
authentication:
  anonymous: {{enabled: false}}
  webhook: {{enabled: false}}
authorization: {{mode: AlwaysAllow}}
podLogsDir: {d}/pod-logs
containerRuntimeEndpoint: unix:///run/containerd/containerd.sock
evictionHard: {{memory.available: 1Mi, nodefs.available: 1%, nodefs.inodesFree: 1%, imagefs.available: 1%}}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
resolvConf: \"\"
"
        ),
    )?;
    let systemctl = dir.join("systemctl");
    std::fs::write(
        &systemctl,
        format!(
            "#!/bin/sh
# This node's systemctl (bind-mounted over the host's in the node's mount namespace only): it
# records how it was called, and `systemctl reboot` asks the node's init to reboot.
echo \"$(date +%s.%N) uid=$(id -u) $*\" >> {d}/{log}
[ \"$1\" = reboot ] || exit 1
exec kill -s {sig} 1
",
            log = files::SYSTEMCTL_LOG,
            sig = init::REBOOT_SIGNAL,
        ),
    )?;
    std::fs::set_permissions(
        &systemctl,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )?;
    let assets = cluster.assets();
    let config = init::Config {
        name: name.to_owned(),
        dir: dir.to_path_buf(),
        boot_id: boot_id(name, 0),
        sysctls: KUBELET_SYSCTLS
            .iter()
            .map(|(k, v)| (PathBuf::from("/proc/sys").join(k), (*v).to_owned()))
            .collect(),
        systemctl,
        cgroup_root: cgroup_root.to_owned(),
        containerd: vec![
            "/bin/sh".into(),
            "-c".into(),
            format!("exec containerd --config {d}/containerd.toml >>{d}/logs/containerd.log 2>&1"),
        ],
        kubelet: vec![
            "/bin/sh".into(),
            "-c".into(),
            format!(
                "exec {kubelet} --config={d}/kubelet.yaml --kubeconfig={d}/kubelet.kubeconfig \
                 --root-dir={d}/kubelet --hostname-override={name} --node-ip={ip} \
                 --node-labels={label} --v=1 >>{d}/logs/kubelet.log 2>&1",
                kubelet = assets.join("kubelet").display(),
                ip = Ipv4Addr::new(10, 201, 0, index),
                label = format!("{}={}", REAL_NODE_LABEL.0, REAL_NODE_LABEL.1),
            ),
        ],
        images: images.archives(),
    };
    let path = dir.join("init.json");
    std::fs::write(&path, serde_json::to_string_pretty(&config)?)?;
    Ok(path)
}
