//! The host seen from the agent's container: running a command in the host's mount namespace
//! (entered with setns, no nsenter binary needed), signalling the host's init, and reading the
//! boot ID that proves a reboot happened.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use nix::sched::CloneFlags;

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
        cmd.args(args);
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

#[cfg(test)]
mod tests {
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

    #[test]
    fn real_boot_id_is_readable() {
        read_boot_id(Path::new("/proc/sys/kernel/random/boot_id")).unwrap();
    }
}
