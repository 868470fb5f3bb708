//! Looking at a container's process from outside, as an auditor would: who it runs as, with which
//! capabilities and seccomp mode, and what a process with its identity can reach inside its own
//! mount namespace.

use std::ffi::CString;
use std::os::fd::AsRawFd;

use anyhow::{Context, Result, bail};

/// What `/proc/<pid>/status` says of a process's privileges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Privileges {
    /// Effective user ID.
    pub uid: u32,
    /// Effective group ID.
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
    /// Effective capabilities.
    pub cap_eff: u64,
    /// Permitted capabilities.
    pub cap_prm: u64,
    /// Seccomp mode: 0 none, 1 strict, 2 filter.
    pub seccomp: u32,
    /// Whether no_new_privs is set.
    pub no_new_privs: bool,
}

/// Reads the privileges of process `pid`.
pub fn privileges(pid: i32) -> Result<Privileges> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> Result<&str> {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .map(str::trim)
            .with_context(|| format!("no {name} in /proc/{pid}/status"))
    };
    let second = |name: &str| -> Result<u32> {
        Ok(field(name)?
            .split_whitespace()
            .nth(1)
            .context("short field")?
            .parse()?)
    };
    let hex = |name: &str| -> Result<u64> { Ok(u64::from_str_radix(field(name)?, 16)?) };
    Ok(Privileges {
        uid: second("Uid")?,
        gid: second("Gid")?,
        groups: field("Groups")?
            .split_whitespace()
            .map(str::parse)
            .collect::<Result<_, _>>()?,
        cap_eff: hex("CapEff")?,
        cap_prm: hex("CapPrm")?,
        seccomp: field("Seccomp")?.parse()?,
        no_new_privs: field("NoNewPrivs")? == "1",
    })
}

/// The processes in the PID namespace of `init_pid` whose command line starts with `argv`.
pub fn processes_in(init_pid: i32, argv: &[&str]) -> Vec<i32> {
    let ns = |pid: i32| std::fs::read_link(format!("/proc/{pid}/ns/pid")).ok();
    let Some(target) = ns(init_pid) else {
        return Vec::new();
    };
    let want: Vec<u8> = argv
        .iter()
        .flat_map(|a| [a.as_bytes(), b"\0"].concat())
        .collect();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| ns(pid).as_ref() == Some(&target))
        .filter(|&pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c.starts_with(&want))
        })
        .collect()
}

/// What a probe could do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reach {
    /// `connect()` to each socket: `Ok` or the errno.
    pub sockets: Vec<Result<(), i32>>,
    /// `open(O_RDONLY)` of each file: `Ok` or the errno.
    pub files: Vec<Result<(), i32>>,
}

/// From a child process placed in `pid`'s mount namespace with `pid`'s user, group and
/// supplementary groups and no capabilities, tries to connect to each Unix socket in `sockets`
/// and to open each file in `files` (paths as that process sees them).
///
/// The capabilities differ from the process's only where [`privileges`] shows them: a test
/// asserts those separately, so that together they say what the process can reach.
pub fn reach_as(pid: i32, sockets: &[&str], files: &[&str]) -> Result<Reach> {
    let p = privileges(pid)?;
    let mnt = std::fs::File::open(format!("/proc/{pid}/ns/mnt"))?;
    let cstr = |s: &str| CString::new(s).context("a path with a NUL byte");
    let socket_paths: Vec<CString> = sockets.iter().map(|s| cstr(s)).collect::<Result<_>>()?;
    let file_paths: Vec<CString> = files.iter().map(|s| cstr(s)).collect::<Result<_>>()?;
    let mut addrs = Vec::new();
    for path in &socket_paths {
        let mut addr: libc::sockaddr_un = unsafe_zeroed();
        addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
        let bytes = path.as_bytes_with_nul();
        if bytes.len() > addr.sun_path.len() {
            bail!("socket path too long: {path:?}");
        }
        for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
            *d = *s as libc::c_char;
        }
        addrs.push(addr);
    }
    let groups: Vec<libc::gid_t> = p.groups.clone();
    let (read_end, write_end) = nix::unistd::pipe()?;
    // SAFETY: after fork the child calls only async-signal-safe system calls on data prepared
    // before the fork (no allocation, no locks), then _exit.
    #[allow(unsafe_code)]
    let child = unsafe { libc::fork() };
    if child < 0 {
        bail!("fork: {}", std::io::Error::last_os_error());
    }
    if child == 0 {
        #[allow(unsafe_code)]
        // SAFETY: see above; every pointer refers to memory owned by this (copied) address space.
        unsafe {
            let out = write_end.as_raw_fd();
            let fail = |code: i32| -> ! {
                libc::_exit(code);
            };
            if libc::setns(mnt.as_raw_fd(), libc::CLONE_NEWNS) != 0 {
                fail(10);
            }
            if libc::chdir(c"/".as_ptr()) != 0 {
                fail(11);
            }
            if libc::setgroups(groups.len(), groups.as_ptr()) != 0 {
                fail(12);
            }
            if libc::setresgid(p.gid, p.gid, p.gid) != 0 {
                fail(13);
            }
            // From uid 0 to another user without PR_SET_KEEPCAPS: every capability is cleared.
            if libc::setresuid(p.uid, p.uid, p.uid) != 0 {
                fail(14);
            }
            for addr in &addrs {
                let s = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
                let rc = libc::connect(
                    s,
                    std::ptr::from_ref(addr).cast(),
                    std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
                );
                let errno = if rc == 0 {
                    0
                } else {
                    *libc::__errno_location()
                };
                libc::write(out, std::ptr::from_ref(&errno).cast(), 4);
                libc::close(s);
            }
            for path in &file_paths {
                let fd = libc::open(path.as_ptr(), libc::O_RDONLY);
                let errno = if fd >= 0 {
                    0
                } else {
                    *libc::__errno_location()
                };
                libc::write(out, std::ptr::from_ref(&errno).cast(), 4);
                if fd >= 0 {
                    libc::close(fd);
                }
            }
            libc::_exit(0);
        }
    }
    drop(write_end);
    let status = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(child), None)?;
    if !matches!(status, nix::sys::wait::WaitStatus::Exited(_, 0)) {
        bail!("the probe failed before trying anything: {status:?}");
    }
    let mut buf = Vec::new();
    std::io::Read::read_to_end(&mut std::fs::File::from(read_end), &mut buf)?;
    let results: Vec<Result<(), i32>> = buf
        .chunks_exact(4)
        .map(|c| match i32::from_ne_bytes([c[0], c[1], c[2], c[3]]) {
            0 => Ok(()),
            e => Err(e),
        })
        .collect();
    if results.len() != sockets.len() + files.len() {
        bail!("the probe reported {} results", results.len());
    }
    let (s, f) = results.split_at(sockets.len());
    Ok(Reach {
        sockets: s.to_vec(),
        files: f.to_vec(),
    })
}

fn unsafe_zeroed() -> libc::sockaddr_un {
    // SAFETY: sockaddr_un is plain old data; all-zero is a valid value.
    #[allow(unsafe_code)]
    unsafe {
        std::mem::zeroed()
    }
}
