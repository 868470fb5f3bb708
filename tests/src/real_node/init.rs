//! The init of a simulated host: PID 1 of a node's own PID, mount and network namespaces. It
//! plays the part systemd plays on a real host, as far as baton can tell:
//!
//! - at boot it mounts a fresh `/run`, writes a new boot ID into the file that stands in for
//!   `/proc/sys/kernel/random/boot_id`, and starts containerd and then kubelet (restarting either
//!   if it dies, as `Restart=always` would);
//! - on signal 39 (systemd's SIGRTMIN+5, "reboot") — from baton's signal method, or from the
//!   node's own `systemctl reboot` — it SIGTERMs every process of the node, SIGKILLs what is left
//!   after a grace period, undoes every mount and cgroup made since boot, and boots again;
//! - on SIGTERM or SIGINT it stops everything and exits.
//!
//! A namespace's init only receives the signals it handles, so these are all it reacts to.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::Write;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sched::{CloneFlags, unshare};
use nix::sys::signal::{SigSet, Signal, kill};
use nix::sys::signalfd::SignalFd;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, fork};
use serde::{Deserialize, Serialize};

/// systemd's "reboot" signal, SIGRTMIN+5 (glibc's SIGRTMIN is 34); what baton sends by default.
pub const REBOOT_SIGNAL: i32 = 39;
/// How long the node's processes get between SIGTERM and SIGKILL at a reboot: systemd's
/// DefaultTimeoutStopSec is 90 s; a test node's kubelet and containerd stop in well under a second.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// How long containerd may take to open its socket: it starts in well under a second.
const CONTAINERD_START: Duration = Duration::from_secs(30);
/// How long the harness may take to wire the node's network before the first boot.
const NETWORK_WAIT: Duration = Duration::from_secs(60);
/// A service that died is started again after this pause, like systemd's RestartSec.
const RESTART_DELAY: Duration = Duration::from_secs(1);

/// What the init needs to know, written by the harness as JSON next to the node's files.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Config {
    /// The node's name (for the log).
    pub name: String,
    /// The node's folder (logs, state, configuration).
    pub dir: PathBuf,
    /// The boot ID of the first boot.
    pub boot_id: String,
    /// `/proc/sys` files kubelet insists on (`protectKernelDefaults`), with the values it
    /// expects: bind-mounted over in this node only, never written globally.
    pub sysctls: Vec<(PathBuf, String)>,
    /// The node's `systemctl`, bind-mounted over the host's in this node only.
    pub systemctl: PathBuf,
    /// The cgroup every pod of this node lives under (kubelet's `cgroupRoot`), in each hierarchy.
    pub cgroup_root: String,
    /// containerd's command line.
    pub containerd: Vec<String>,
    /// kubelet's command line.
    pub kubelet: Vec<String>,
    /// Image archives imported into containerd at the first boot (the node's "disk").
    pub images: Vec<PathBuf>,
}

/// Files the init writes into the node's folder.
pub mod files {
    /// The init's PID in the machine's PID namespace (written by its parent).
    pub const PID: &str = "init.pid";
    /// Created by the harness once the node's network is wired; the first boot waits for it.
    pub const NETWORK_READY: &str = "network-ready";
    /// One line per completed boot: `<n> <boot id> <unix time>`.
    pub const BOOTS: &str = "boots.log";
    /// The file standing in for `/proc/sys/kernel/random/boot_id`.
    pub const BOOT_ID: &str = "boot_id";
    /// Where the node's `systemctl` records how it was called.
    pub const SYSTEMCTL_LOG: &str = "systemctl.log";
}

/// The kernel's boot ID, as this node shows it.
const BOOT_ID_PATH: &str = "/proc/sys/kernel/random/boot_id";
/// Where cgroup v1 hierarchies (and the hybrid cgroup2) are mounted.
const CGROUP_MOUNTS: &str = "/sys/fs/cgroup";

fn log(msg: &str) {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    println!("{t:.3} init: {msg}");
}

/// The init binary's entry: enters new PID, mount and network namespaces, forks the init (PID 1
/// there), records its PID for the harness, and exits with it. The parent stays in the
/// machine's namespaces so that the harness can signal and wait for it.
pub fn main(config_path: &Path) -> Result<()> {
    let text = std::fs::read_to_string(config_path)
        .with_context(|| format!("reading {}", config_path.display()))?;
    let config: Config = serde_json::from_str(&text).context("parsing the init's configuration")?;
    unshare(CloneFlags::CLONE_NEWPID | CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWNET)
        .context("unshare (needs root)")?;
    // SAFETY: the process is single-threaded here (no runtime, no threads started yet), so the
    // child may run arbitrary code after fork.
    #[allow(unsafe_code)]
    let forked = unsafe { fork() }.context("fork")?;
    match forked {
        ForkResult::Child => {
            // The node dies with its parent, which dies with the harness (PDEATHSIG both).
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
            let code = match Init::new(config).and_then(|mut i| i.run()) {
                Ok(()) => 0,
                Err(e) => {
                    log(&format!("failed: {e:#}"));
                    1
                }
            };
            std::process::exit(code);
        }
        ForkResult::Parent { child } => {
            std::fs::write(config.dir.join(files::PID), child.to_string())?;
            loop {
                match waitpid(child, None) {
                    Ok(WaitStatus::Exited(_, code)) => std::process::exit(code),
                    Ok(WaitStatus::Signaled(_, sig, _)) => std::process::exit(128 + sig as i32),
                    Ok(_) => {}
                    Err(nix::errno::Errno::EINTR) => {}
                    Err(e) => bail!("waiting for the init: {e}"),
                }
            }
        }
    }
}

/// A service the init keeps running.
struct Service {
    name: &'static str,
    argv: Vec<String>,
    child: Option<Child>,
    restart_at: Option<Instant>,
}

struct Init {
    config: Config,
    signals: SignalFd,
    containerd: Service,
    kubelet: Service,
    /// Mount points present before the first boot; everything else is undone at a reboot.
    baseline: BTreeSet<String>,
    boots: u32,
}

impl Init {
    fn new(config: Config) -> Result<Self> {
        let mut mask = SigSet::empty();
        for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGCHLD] {
            mask.add(s);
        }
        // SAFETY: 39 is a valid real-time signal number on Linux.
        #[allow(unsafe_code)]
        unsafe {
            nix::libc::sigaddset(std::ptr::from_mut(&mut mask).cast(), REBOOT_SIGNAL);
        }
        mask.thread_block()?;
        let signals = SignalFd::new(&mask)?;
        Ok(Self {
            containerd: Service {
                name: "containerd",
                argv: config.containerd.clone(),
                child: None,
                restart_at: None,
            },
            kubelet: Service {
                name: "kubelet",
                argv: config.kubelet.clone(),
                child: None,
                restart_at: None,
            },
            config,
            signals,
            baseline: BTreeSet::new(),
            boots: 0,
        })
    }

    fn run(&mut self) -> Result<()> {
        self.setup_once()?;
        self.wait_for_network()?;
        self.boot(true)?;
        loop {
            let next_restart = [&self.containerd, &self.kubelet]
                .iter()
                .filter_map(|s| s.restart_at)
                .min();
            let timeout = next_restart.map_or(PollTimeout::NONE, |t| {
                let ms = t.saturating_duration_since(Instant::now()).as_millis();
                PollTimeout::try_from(ms.min(60_000) as i32).unwrap_or(PollTimeout::NONE)
            });
            let mut fds = [PollFd::new(self.signals.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, timeout) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => bail!("poll: {e}"),
            }
            while let Some(info) = self.signals.read_signal()? {
                match info.ssi_signo as i32 {
                    s if s == Signal::SIGCHLD as i32 => self.reap(),
                    s if s == REBOOT_SIGNAL => {
                        log("signal 39: rebooting");
                        self.stop_everything()?;
                        self.boot(false)?;
                    }
                    s => {
                        log(&format!("signal {s}: shutting down"));
                        self.stop_everything()?;
                        self.remove_cgroups(true);
                        return Ok(());
                    }
                }
            }
            self.restart_due()?;
        }
    }

    /// Mounts that last for the node's whole life (a real host's are part of its image).
    fn setup_once(&mut self) -> Result<()> {
        let none: Option<&str> = None;
        mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_PRIVATE, none)
            .context("making / private")?;
        // This PID namespace's own /proc.
        mount(
            Some("proc"),
            "/proc",
            Some("proc"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            none,
        )
        .context("mounting /proc")?;
        let dir = self.config.dir.clone();
        // Boot ID and kernel tunables: files of this node, bind-mounted over /proc/sys.
        let boot_id = dir.join(files::BOOT_ID);
        std::fs::write(&boot_id, format!("{}\n", self.config.boot_id))?;
        bind(&boot_id, Path::new(BOOT_ID_PATH))?;
        for (i, (path, value)) in self.config.sysctls.iter().enumerate() {
            let f = dir.join(format!("sysctl-{i}"));
            std::fs::write(&f, format!("{value}\n"))?;
            bind(&f, path)?;
        }
        bind(&self.config.systemctl, Path::new("/usr/bin/systemctl"))?;
        // kubelet writes /var/log/containers whatever it is told: give it this node's own.
        mount(
            Some("tmpfs"),
            "/var/log",
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=755"),
        )
        .context("mounting /var/log")?;
        self.baseline = mount_points()?;
        for hierarchy in cgroup_hierarchies() {
            let d = hierarchy.join(&self.config.cgroup_root);
            std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
            // A new cpuset cgroup starts with no CPUs and no memory nodes: copy the parent's.
            for f in ["cpuset.cpus", "cpuset.mems"] {
                if let Ok(v) = std::fs::read_to_string(hierarchy.join(f)) {
                    std::fs::write(d.join(f), v)?;
                }
            }
        }
        Ok(())
    }

    fn wait_for_network(&self) -> Result<()> {
        let ready = self.config.dir.join(files::NETWORK_READY);
        let deadline = Instant::now() + NETWORK_WAIT;
        while !ready.exists() {
            if Instant::now() > deadline {
                bail!("the harness did not wire the network within {NETWORK_WAIT:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    fn boot(&mut self, first: bool) -> Result<()> {
        let started = Instant::now();
        mount(
            Some("tmpfs"),
            "/run",
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=755"),
        )
        .context("mounting /run")?;
        let id = if first {
            self.config.boot_id.clone()
        } else {
            std::fs::read_to_string("/proc/sys/kernel/random/uuid")?
                .trim()
                .to_owned()
        };
        // Written in place: the bind mount follows the file's inode.
        let mut f = File::options()
            .write(true)
            .truncate(true)
            .open(self.config.dir.join(files::BOOT_ID))?;
        writeln!(f, "{id}")?;
        drop(f);
        start(&mut self.containerd)?;
        let socket = Path::new("/run/containerd/containerd.sock");
        let deadline = Instant::now() + CONTAINERD_START;
        while !socket.exists() {
            if Instant::now() > deadline {
                bail!("containerd did not open {}", socket.display());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if first {
            for image in &self.config.images {
                let status = Command::new("ctr")
                    .args([
                        "--address",
                        "/run/containerd/containerd.sock",
                        "-n",
                        "k8s.io",
                    ])
                    .args(["images", "import"])
                    .arg(image)
                    .stdout(Stdio::null())
                    .status()?;
                if !status.success() {
                    bail!("importing {} failed: {status}", image.display());
                }
            }
        }
        start(&mut self.kubelet)?;
        self.boots += 1;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        let mut boots = File::options()
            .create(true)
            .append(true)
            .open(self.config.dir.join(files::BOOTS))?;
        writeln!(boots, "{} {id} {now:.3}", self.boots)?;
        log(&format!(
            "boot {} ({id}) started containerd and kubelet in {:?}",
            self.boots,
            started.elapsed()
        ));
        Ok(())
    }

    /// Reaps every exited child (orphans are re-parented to PID 1) and schedules a restart of
    /// a service that died.
    fn reap(&mut self) {
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(status) => {
                    let Some(pid) = status.pid() else { continue };
                    for s in [&mut self.containerd, &mut self.kubelet] {
                        if s.child
                            .as_ref()
                            .is_some_and(|c| c.id() as i32 == pid.as_raw())
                        {
                            log(&format!("{} exited ({status:?}); restarting", s.name));
                            s.child = None;
                            s.restart_at = Some(Instant::now() + RESTART_DELAY);
                        }
                    }
                }
            }
        }
    }

    fn restart_due(&mut self) -> Result<()> {
        for s in [&mut self.containerd, &mut self.kubelet] {
            if s.restart_at.is_some_and(|t| Instant::now() >= t) {
                start(s)?;
            }
        }
        Ok(())
    }

    /// Stops every process of the node (SIGTERM, then SIGKILL after [`STOP_GRACE`]) and undoes
    /// what the boot left behind: mounts, `/run`, pod cgroups.
    fn stop_everything(&mut self) -> Result<()> {
        for s in [&mut self.containerd, &mut self.kubelet] {
            s.restart_at = None;
        }
        let term_sent = Instant::now();
        signal_all(Signal::SIGTERM);
        loop {
            self.reap();
            if other_processes().is_empty() {
                break;
            }
            if term_sent.elapsed() > STOP_GRACE {
                log("processes left after the grace period: SIGKILL");
                signal_all(Signal::SIGKILL);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.reap();
        for s in [&mut self.containerd, &mut self.kubelet] {
            s.child = None;
        }
        log(&format!(
            "every process stopped in {:?}",
            term_sent.elapsed()
        ));
        // Deepest first, so that nothing is busy under a mount being removed.
        let mut extra: Vec<String> = mount_points()?
            .difference(&self.baseline)
            .cloned()
            .collect();
        extra.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in extra {
            if let Err(e) = umount2(m.as_str(), MntFlags::MNT_DETACH) {
                log(&format!("cannot unmount {m}: {e}"));
            }
        }
        self.remove_cgroups(false);
        Ok(())
    }

    /// Removes the cgroups under this node's root in every hierarchy (and the root itself when
    /// `all`); empty ones only, leaves first.
    fn remove_cgroups(&self, all: bool) {
        for hierarchy in cgroup_hierarchies() {
            let root = hierarchy.join(&self.config.cgroup_root);
            remove_cgroup_tree(&root, all);
        }
    }
}

/// Removes the cgroup directories under `dir` (and `dir` itself when `including`), leaves first.
pub fn remove_cgroup_tree(dir: &Path, including: bool) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&e.path(), true);
            }
        }
    }
    if including {
        let _ = std::fs::remove_dir(dir);
    }
}

/// The mounted cgroup hierarchies (one directory each under `/sys/fs/cgroup`).
pub fn cgroup_hierarchies() -> Vec<PathBuf> {
    std::fs::read_dir(CGROUP_MOUNTS)
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

fn start(s: &mut Service) -> Result<()> {
    s.restart_at = None;
    let (program, args) = s.argv.split_first().context("empty command")?;
    let child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", s.name))?;
    s.child = Some(child);
    Ok(())
}

fn bind(source: &Path, target: &Path) -> Result<()> {
    let none: Option<&str> = None;
    mount(Some(source), target, none, MsFlags::MS_BIND, none).with_context(|| {
        format!(
            "bind-mounting {} over {}",
            source.display(),
            target.display()
        )
    })
}

/// The node's processes other than the init.
fn other_processes() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
                .filter(|&p| p != 1)
                .collect()
        })
        .unwrap_or_default()
}

fn signal_all(sig: Signal) {
    for pid in other_processes() {
        let _ = kill(Pid::from_raw(pid), sig);
    }
}

/// The mount points of this mount namespace.
fn mount_points() -> Result<BTreeSet<String>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")?;
    Ok(text
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_owned))
        .collect())
}
