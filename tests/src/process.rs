//! Child processes that cannot outlive the test binary: each runs in its own process group, is
//! killed by PID (the whole group) on drop, is killed by the kernel if the spawning thread dies
//! (`PR_SET_PDEATHSIG`), and is killed at exit by an `atexit` hook for those held in statics.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, Once};

use anyhow::{Context, Result};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

/// Process groups still alive, killed by the `atexit` hook.
static LIVE: Mutex<Vec<i32>> = Mutex::new(Vec::new());
/// Directories to remove at exit (those of clusters held in statics).
static DIRS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
static HOOK: Once = Once::new();

extern "C" fn kill_leftovers() {
    if let Ok(live) = LIVE.lock() {
        for pgid in live.iter() {
            let _ = killpg(Pid::from_raw(*pgid), Signal::SIGKILL);
        }
    }
    if let Ok(dirs) = DIRS.lock() {
        for dir in dirs.iter() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn install_hook() {
    HOOK.call_once(|| {
        // SAFETY: registers a plain `extern "C"` function with no arguments, as atexit expects.
        #[allow(unsafe_code)]
        unsafe {
            libc::atexit(kill_leftovers);
        }
    });
}

/// Removes `dir` when the process exits, for directories owned by statics that never drop.
pub fn remove_at_exit(dir: &Path) {
    install_hook();
    DIRS.lock().unwrap().push(dir.to_path_buf());
}

/// A running child process with its output captured in a log file.
#[derive(Debug)]
pub struct Process {
    name: String,
    child: Child,
    log: PathBuf,
    reaped: bool,
}

impl Process {
    /// Starts `cmd` with stdout and stderr appended to `log`.
    pub fn spawn(name: &str, cmd: &mut Command, log: &Path) -> Result<Self> {
        install_hook();
        let out = File::options()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        let err = out.try_clone()?;
        cmd.stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        #[allow(unsafe_code)]
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {name} ({:?})", cmd.get_program()))?;
        LIVE.lock().unwrap().push(child.id() as i32);
        Ok(Self {
            name: name.to_owned(),
            child,
            log: log.to_path_buf(),
            reaped: false,
        })
    }

    /// The process ID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The component's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the process has exited, and how.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        let status = self.child.try_wait().ok().flatten();
        if status.is_some() {
            self.forget();
        }
        status
    }

    /// The last `lines` lines of the process's log.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log, lines)
    }

    /// Sends `signal` to the process itself (not its group).
    pub fn signal(&self, signal: Signal) -> Result<()> {
        nix::sys::signal::kill(Pid::from_raw(self.child.id() as i32), signal)
            .with_context(|| format!("sending {signal} to {}", self.name))
    }

    /// Waits for the process to exit, returning its status.
    pub fn wait(&mut self) -> Result<std::process::ExitStatus> {
        let status = self.child.wait()?;
        self.forget();
        Ok(status)
    }

    /// Kills the whole process group and reaps the process.
    pub fn kill(&mut self) {
        if self.reaped {
            return;
        }
        let _ = killpg(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL);
        let _ = self.child.wait();
        self.forget();
    }

    fn forget(&mut self) {
        self.reaped = true;
        let pid = self.child.id() as i32;
        LIVE.lock().unwrap().retain(|p| *p != pid);
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The last `lines` lines of a log file, or a note that it could not be read.
pub fn log_tail(path: &Path, lines: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(could not read {}: {e})", path.display()),
    }
}

/// Runs `cmd` with `args`, feeding it `stdin`, and returns its standard output; panics, with
/// its standard error, unless it succeeds (for tests running kubectl, helm and the like).
pub fn output_of(mut cmd: Command, args: &[&str], stdin: Option<&str>) -> String {
    use std::io::Write;
    cmd.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let what = format!("{:?} {args:?}", cmd.get_program());
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}
