//! Dropping root at start-up (`--user`). The signal method needs one capability, CAP_KILL (to
//! signal the host's PID 1), but Kubernetes cannot give a non-root container an effective
//! capability (there are no ambient capabilities in a pod spec). So the signal variant starts as
//! root and, before anything else, switches to `--user` keeping exactly the capabilities its
//! reboot method needs. As that user it cannot connect to the host's root-owned sockets
//! (containerd, systemd) or read root-only files in the host folder it mounts.

use crate::config::RebootMethod;

/// A user (and group) to run as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct User {
    /// The user ID.
    pub uid: u32,
    /// The group ID (the only group kept).
    pub gid: u32,
}

impl User {
    /// Parses `UID` or `UID:GID` (numbers: the image has no user database). The group defaults
    /// to the user ID.
    pub fn parse(s: &str) -> Result<Self, String> {
        let number = |v: &str, what: &str| {
            v.trim()
                .parse::<u32>()
                .map_err(|_| format!("expected UID or UID:GID (numbers), got {what} {v:?}"))
        };
        let (u, g) = s.split_once(':').unwrap_or((s, s));
        let user = Self {
            uid: number(u, "user")?,
            gid: number(g, "group")?,
        };
        if user.uid == 0 {
            return Err("must not be root (0): that is what it drops".to_owned());
        }
        Ok(user)
    }
}

/// A capability, by its number in `<linux/capability.h>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capability(u32);

impl Capability {
    /// Send signals to processes of other users (the host's PID 1).
    pub const KILL: Capability = Capability(5);

    fn bit(self) -> u64 {
        1 << self.0
    }
}

/// Why the privileges could not be dropped.
#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    /// The reboot method needs root itself.
    #[error(
        "--user cannot be used with --reboot-method=command: the reboot command runs as root in the host"
    )]
    NeedsRoot,
    /// Not started as root, and not already the user with the capabilities needed.
    #[error(
        "--user {uid}:{gid} needs the agent to start as root (the container's runAsUser: 0) with CAP_SETUID, CAP_SETGID and the capabilities it keeps"
    )]
    NotRoot {
        /// The user asked for.
        uid: u32,
        /// Its group.
        gid: u32,
    },
    /// A system call failed.
    #[error("dropping privileges: {step} failed")]
    Syscall {
        /// Which step.
        step: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The result is not what was asked for.
    #[error(
        "dropping privileges: still uid {uid}, effective capabilities {effective:#x} after the switch"
    )]
    Unexpected {
        /// The effective user ID afterwards.
        uid: u32,
        /// The effective capability set afterwards.
        effective: u64,
    },
}

/// The capabilities `method` needs once running: the signal method signals the host's init;
/// a dry run needs none; the command method cannot run as another user at all.
pub fn needed(method: RebootMethod) -> Result<&'static [Capability], PrivilegeError> {
    match method {
        RebootMethod::Signal => Ok(&[Capability::KILL]),
        RebootMethod::None => Ok(&[]),
        RebootMethod::Command => Err(PrivilegeError::NeedsRoot),
    }
}

/// The effective and permitted capability sets of this thread.
pub fn current() -> Result<(u64, u64), PrivilegeError> {
    let (effective, permitted, _) = capget()?;
    Ok((effective, permitted))
}

/// Switches this process to `user`, keeping exactly `keep` (effective and permitted). Must run
/// while the process has a single thread: capabilities belong to threads.
pub fn drop_to(user: User, keep: &[Capability]) -> Result<(), PrivilegeError> {
    let want = keep.iter().fold(0, |acc, c| acc | c.bit());
    let euid = nix::unistd::geteuid().as_raw();
    if euid == user.uid {
        // Already that user (e.g. a restart inside the same process image): just check.
        let (effective, _) = current()?;
        return if effective & want == want {
            Ok(())
        } else {
            Err(PrivilegeError::Unexpected {
                uid: euid,
                effective,
            })
        };
    }
    if euid != 0 {
        return Err(PrivilegeError::NotRoot {
            uid: user.uid,
            gid: user.gid,
        });
    }
    let sys = |step: &'static str| {
        move |e: nix::errno::Errno| PrivilegeError::Syscall {
            step,
            source: e.into(),
        }
    };
    nix::sys::prctl::set_keepcaps(true).map_err(sys("prctl(PR_SET_KEEPCAPS)"))?;
    let gid = nix::unistd::Gid::from_raw(user.gid);
    nix::unistd::setgroups(&[gid]).map_err(sys("setgroups"))?;
    nix::unistd::setresgid(gid, gid, gid).map_err(sys("setresgid"))?;
    let uid = nix::unistd::Uid::from_raw(user.uid);
    nix::unistd::setresuid(uid, uid, uid).map_err(sys("setresuid"))?;
    capset(want, want).map_err(|source| PrivilegeError::Syscall {
        step: "capset",
        source,
    })?;
    nix::sys::prctl::set_keepcaps(false).map_err(sys("prctl(PR_SET_KEEPCAPS)"))?;
    let (effective, permitted) = current()?;
    let now = nix::unistd::geteuid().as_raw();
    if now != user.uid || effective != want || permitted != want {
        return Err(PrivilegeError::Unexpected {
            uid: now,
            effective,
        });
    }
    Ok(())
}

// === capget(2) / capset(2): not wrapped by nix ===

/// `_LINUX_CAPABILITY_VERSION_3`: 64-bit sets, as two 32-bit halves.
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

fn capget() -> Result<(u64, u64, u64), PrivilegeError> {
    let mut header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: capget(2) writes two `CapData` for version 3 into `data`, which has room for two.
    #[allow(unsafe_code)]
    let rc = unsafe {
        nix::libc::syscall(
            nix::libc::SYS_capget,
            std::ptr::from_mut(&mut header),
            data.as_mut_ptr(),
        )
    };
    if rc != 0 {
        return Err(PrivilegeError::Syscall {
            step: "capget",
            source: std::io::Error::last_os_error(),
        });
    }
    let join = |lo: u32, hi: u32| u64::from(lo) | (u64::from(hi) << 32);
    Ok((
        join(data[0].effective, data[1].effective),
        join(data[0].permitted, data[1].permitted),
        join(data[0].inheritable, data[1].inheritable),
    ))
}

fn capset(effective: u64, permitted: u64) -> std::io::Result<()> {
    let mut header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let half = |v: u64, high: bool| (if high { v >> 32 } else { v } & 0xffff_ffff) as u32;
    let data = [false, true].map(|high| CapData {
        effective: half(effective, high),
        permitted: half(permitted, high),
        inheritable: 0,
    });
    // SAFETY: capset(2) reads two `CapData` for version 3 from `data`.
    #[allow(unsafe_code)]
    let rc = unsafe {
        nix::libc::syscall(
            nix::libc::SYS_capset,
            std::ptr::from_mut(&mut header),
            data.as_ptr(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_are_numbers_and_never_root() {
        assert_eq!(
            User::parse("65532").unwrap(),
            User {
                uid: 65532,
                gid: 65532
            }
        );
        assert_eq!(
            User::parse("1000:2000").unwrap(),
            User {
                uid: 1000,
                gid: 2000
            }
        );
        for bad in ["", "nobody", "1000:", ":1000", "0", "0:0", "-1", "1:2:3"] {
            assert!(User::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn each_method_keeps_only_what_it_needs() {
        assert_eq!(needed(RebootMethod::Signal).unwrap(), &[Capability::KILL]);
        assert!(needed(RebootMethod::None).unwrap().is_empty());
        assert!(matches!(
            needed(RebootMethod::Command),
            Err(PrivilegeError::NeedsRoot)
        ));
    }

    #[test]
    fn this_thread_capabilities_can_be_read() {
        let (effective, permitted) = current().unwrap();
        assert_eq!(
            effective & !permitted,
            0,
            "effective is a subset of permitted"
        );
    }

    /// The real switch, in a child process (it cannot be undone): as root only.
    #[test]
    fn dropping_to_a_user_keeps_exactly_kill() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let exe = std::env::current_exe().unwrap();
        let out = std::process::Command::new(exe)
            .args([
                "--exact",
                "privilege::tests::child_drops_privileges",
                "--include-ignored",
                "--nocapture",
            ])
            .env("BATON_PRIVILEGE_CHILD", "1")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{text}");
        assert!(
            text.contains("dropped: uid=65532 gid=65532 effective=0x20"),
            "{text}"
        );
    }

    #[test]
    #[ignore = "run by dropping_to_a_user_keeps_exactly_kill in a child process"]
    fn child_drops_privileges() {
        if std::env::var_os("BATON_PRIVILEGE_CHILD").is_none() {
            return;
        }
        drop_to(
            User {
                uid: 65532,
                gid: 65532,
            },
            &[Capability::KILL],
        )
        .unwrap();
        let (effective, permitted) = current().unwrap();
        assert_eq!(effective, permitted);
        println!(
            "dropped: uid={} gid={} effective={effective:#x}",
            nix::unistd::geteuid(),
            nix::unistd::getegid()
        );
        // Root-only files are out of reach now.
        let err = std::fs::read("/proc/1/environ").unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied);
    }
}
