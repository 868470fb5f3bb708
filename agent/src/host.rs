//! The host seen from the agent's container: running a command in the host's mount namespace
//! (entered with setns, no nsenter binary needed), signalling the host's init, and reading the
//! boot ID that proves a reboot happened. Commands run in their own process group, which is
//! killed as a whole when they end, time out, or the agent stops: nothing they start outlives
//! them.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::ExitStatus;
use std::time::Duration;

use nix::sched::CloneFlags;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use crate::shutdown::Shutdown;

/// The host, identified by a PID whose namespaces are the host's (PID 1 with `hostPID: true`).
#[derive(Debug, Clone, Copy)]
pub struct Host {
    pid: i32,
}

/// A boot ID file that could not be read or holds something else.
#[derive(Debug, thiserror::Error)]
pub enum BootIdError {
    /// The file could not be read.
    #[error("cannot read boot ID from {path}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file does not hold a boot ID.
    #[error("{path} does not hold a boot ID (got {got:?})")]
    Invalid {
        /// The file.
        path: String,
        /// What it held (truncated).
        got: String,
    },
}

/// Reads and validates a boot ID (a UUID-like token of hex digits and dashes).
pub fn read_boot_id(path: &Path) -> Result<String, BootIdError> {
    let text = std::fs::read_to_string(path).map_err(|source| BootIdError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let id = text.trim();
    let valid =
        (8..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
    if valid {
        Ok(id.to_owned())
    } else {
        Err(BootIdError::Invalid {
            path: path.display().to_string(),
            got: id.chars().take(40).collect(),
        })
    }
}

impl Host {
    /// The host whose namespaces are those of `pid`.
    pub fn new(pid: i32) -> Self {
        Self { pid }
    }

    /// The host's PID.
    pub fn pid(self) -> i32 {
        self.pid
    }

    /// A command that runs in the host's mount namespace. When the agent already shares it
    /// (tests, or a host-mounted agent) no namespace is entered.
    pub fn command(self, argv: &[String]) -> std::io::Result<tokio::process::Command> {
        let (program, args) = argv
            .split_first()
            .ok_or_else(|| std::io::Error::other("empty command"))?;
        let mut cmd = tokio::process::Command::new(program);
        // Its own process group (ID = its PID), so that [`run`] can kill what it starts too.
        cmd.args(args).process_group(0);
        let ns_path = format!("/proc/{}/ns/mnt", self.pid);
        let target = File::open(&ns_path)?;
        let same = target.metadata()?.ino() == std::fs::metadata("/proc/self/ns/mnt")?.ino();
        if !same {
            // SAFETY: between fork and exec the child only calls setns(2) and chdir(2), both
            // async-signal-safe, on a file descriptor it owns; it allocates nothing.
            #[allow(unsafe_code)]
            unsafe {
                cmd.pre_exec(move || {
                    nix::sched::setns(&target, CloneFlags::CLONE_NEWNS)?;
                    nix::unistd::chdir("/")?;
                    Ok(())
                });
            }
        }
        Ok(cmd)
    }

    /// Sends signal number `signal` to the host's init. Takes a raw number because real-time
    /// signals (39 = SIGRTMIN+5 for systemd) differ between libcs and have no name in nix.
    pub fn signal(self, signal: i32) -> std::io::Result<()> {
        // SAFETY: kill(2) has no memory-safety preconditions.
        #[allow(unsafe_code)]
        let rc = unsafe { nix::libc::kill(self.pid, signal) };
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }
}

/// How a command run by [`run`] ended.
#[derive(Debug)]
pub enum Ended {
    /// It exited by itself, with this status.
    Exited(ExitStatus),
    /// It was still running when the timeout passed.
    TimedOut,
    /// A stop was requested while it ran.
    Stopped,
}

/// A command's process group, killed with SIGKILL when dropped: on every way out of [`run`],
/// including the future being dropped mid-way.
struct Group(Option<Pid>);

impl Drop for Group {
    fn drop(&mut self) {
        if let Some(pgid) = self.0.take() {
            // ESRCH: nothing is left in the group.
            let _ = killpg(pgid, Signal::SIGKILL);
        }
    }
}

/// Runs `cmd` (made by [`Host::command`], so the leader of its own process group) until it
/// exits, `timeout` passes, or `shutdown` asks to stop. Then its whole process group is killed
/// (grandchildren such as `sh -c 'sleep 1000; true'` included), also when this future is
/// dropped, and the leader is reaped.
pub async fn run(
    mut cmd: tokio::process::Command,
    timeout: Duration,
    shutdown: &mut Shutdown,
) -> std::io::Result<Ended> {
    cmd.kill_on_drop(true);
    let mut child = cmd.spawn()?;
    // Declared after `child`, so dropped (killing the group) before it.
    let group = Group(
        child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .map(Pid::from_raw),
    );
    let ended = tokio::select! {
        status = child.wait() => Ended::Exited(status?),
        () = tokio::time::sleep(timeout) => Ended::TimedOut,
        () = shutdown.wait() => Ended::Stopped,
    };
    // The leader's PID stays reserved while anything is left in its group, so the group is
    // still this command's even when the leader was already reaped.
    drop(group);
    if !matches!(ended, Ended::Exited(_)) {
        let _ = child.wait().await;
    }
    Ok(ended)
}

/// Helpers for tests that run real processes.
#[cfg(test)]
pub(crate) mod testing {
    use std::path::PathBuf;
    use std::time::Duration;

    use tokio::sync::watch;
    use tokio::time::Instant;

    use super::Host;

    /// How long a test waits for a process to appear or go: generous for a loaded machine.
    pub const PATIENCE: Duration = Duration::from_secs(10);

    /// This process as the "host" (no namespace is entered).
    pub fn host() -> Host {
        Host::new(i32::try_from(std::process::id()).unwrap())
    }

    /// `sh -c script`.
    pub fn sh(script: &str) -> Vec<String> {
        vec!["/bin/sh".to_owned(), "-c".to_owned(), script.to_owned()]
    }

    /// A process's state and start time (fields 3 and 22 of `/proc/PID/stat`), if it exists.
    fn stat(pid: i32) -> Option<(String, String)> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The command name (field 2) is in parentheses and may hold spaces.
        let rest = &text[text.rfind(')')? + 2..];
        let fields: Vec<&str> = rest.split(' ').collect();
        Some((fields.first()?.to_string(), fields.get(19)?.to_string()))
    }

    /// A command that starts a grandchild `sleep 1000`, and how to find that grandchild.
    pub struct Grandchild {
        dir: tempfile::TempDir,
    }

    impl Grandchild {
        /// A grandchild-to-be, with a folder of its own.
        pub fn new() -> Self {
            Self {
                dir: tempfile::tempdir().unwrap(),
            }
        }

        /// A file in its folder.
        pub fn file(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }

        /// `sh -c` running `before`, then starting the grandchild (its PID written to a file),
        /// then `then` (`wait` to hang on it, `exit 3` to leave it behind).
        pub fn script(&self, before: &str, then: &str) -> Vec<String> {
            sh(&format!(
                "{before}; sleep 1000 >/dev/null 2>&1 & echo $! > {0}.tmp && mv {0}.tmp {0}; {then}",
                self.file("pid").display()
            ))
        }

        /// A command that starts the grandchild and waits for it.
        pub fn waiting(&self) -> Vec<String> {
            self.script(":", "wait")
        }

        /// The grandchild's PID and start time, once it runs.
        pub async fn started(&self) -> (i32, String) {
            let deadline = Instant::now() + PATIENCE;
            loop {
                if let Ok(text) = std::fs::read_to_string(self.file("pid")) {
                    let pid: i32 = text.trim().parse().unwrap();
                    let (_, started) = stat(pid).expect("the grandchild runs");
                    return (pid, started);
                }
                assert!(
                    Instant::now() < deadline,
                    "no grandchild within {PATIENCE:?}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }

        /// Asserts that the grandchild is gone (a zombie, or another process under its PID,
        /// counts as gone) within [`PATIENCE`].
        pub async fn assert_gone(&self) {
            let (pid, started) = self.started().await;
            let deadline = Instant::now() + PATIENCE;
            loop {
                match stat(pid) {
                    None => return,
                    Some((state, start)) if state == "Z" || start != started => return,
                    Some(_) => assert!(Instant::now() < deadline, "grandchild {pid} survived"),
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }

        /// Runs `work` (which runs [`Grandchild::waiting`]), asks it to stop through `stop` once
        /// the grandchild runs, and returns what it returned; fails unless that is soon after.
        pub async fn stop_once_started<T>(
            &self,
            work: impl Future<Output = T>,
            stop: &watch::Sender<bool>,
        ) -> T {
            let stopper = async {
                self.started().await;
                stop.send(true).unwrap();
            };
            let both = async { tokio::join!(work, stopper).0 };
            tokio::time::timeout(PATIENCE, both)
                .await
                .expect("the work ends soon after the stop request")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;

    #[test]
    fn boot_ids_are_validated() {
        let dir = std::env::temp_dir().join(format!("baton-boot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("boot_id");
        std::fs::write(&f, "0f3c1f6e-6f0a-4c1e-9d0b-2a1b3c4d5e6f\n").unwrap();
        assert_eq!(
            read_boot_id(&f).unwrap(),
            "0f3c1f6e-6f0a-4c1e-9d0b-2a1b3c4d5e6f"
        );
        std::fs::write(&f, "not a boot id\n").unwrap();
        let err = read_boot_id(&f).unwrap_err().to_string();
        assert!(err.contains("does not hold a boot ID"), "{err}");
        assert!(read_boot_id(&dir.join("missing")).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_cancelled_run_kills_the_whole_process_group() {
        let g = Grandchild::new();
        let cmd = host().command(&g.waiting()).unwrap();
        let (_stop, mut shutdown) = crate::shutdown::channel();
        tokio::select! {
            r = run(cmd, Duration::from_secs(600), &mut shutdown) => panic!("ended: {r:?}"),
            _ = g.started() => {}
        }
        g.assert_gone().await;
    }

    #[tokio::test]
    async fn a_command_in_another_mount_namespace_is_still_killed_as_a_group() {
        // A process in a mount namespace of its own stands in for the host's init. Creating one
        // needs CAP_SYS_ADMIN: without it there is nothing to test here.
        let mut other = match tokio::process::Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sleep", "1000"])
            .kill_on_drop(true)
            .spawn()
        {
            Ok(c) => c,
            Err(e) => return eprintln!("skipped: cannot run unshare: {e}"),
        };
        let pid = i32::try_from(other.id().unwrap()).unwrap();
        let ns = |pid: &str| std::fs::read_link(format!("/proc/{pid}/ns/mnt")).ok();
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while ns(&pid.to_string()) == ns("self") {
            if other.try_wait().unwrap().is_some() || tokio::time::Instant::now() > deadline {
                return eprintln!("skipped: unshare --mount is not permitted here");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let g = Grandchild::new();
        let nsfile = g.file("ns");
        let argv = g.script(
            &format!("readlink /proc/self/ns/mnt > {}", nsfile.display()),
            "wait",
        );
        let cmd = Host::new(pid).command(&argv).unwrap();
        let (_stop, mut shutdown) = crate::shutdown::channel();
        let ended = run(cmd, Duration::from_secs(2), &mut shutdown).await;
        assert!(matches!(ended, Ok(Ended::TimedOut)), "{ended:?}");
        let entered = std::fs::read_to_string(&nsfile).unwrap();
        let target = ns(&pid.to_string()).unwrap();
        assert_eq!(
            entered.trim(),
            target.to_str().unwrap(),
            "ran in the target's namespace"
        );
        g.assert_gone().await;
        other.kill().await.unwrap();
    }

    #[tokio::test]
    async fn what_a_command_leaves_running_is_killed_when_it_exits() {
        let g = Grandchild::new();
        let cmd = host().command(&g.script(":", "exit 3")).unwrap();
        let (_stop, mut shutdown) = crate::shutdown::channel();
        let ended = run(cmd, Duration::from_secs(600), &mut shutdown).await;
        assert!(
            matches!(ended, Ok(Ended::Exited(s)) if s.code() == Some(3)),
            "{ended:?}"
        );
        g.assert_gone().await;
    }

    #[test]
    fn real_boot_id_is_readable() {
        read_boot_id(Path::new("/proc/sys/kernel/random/boot_id")).unwrap();
    }
}
