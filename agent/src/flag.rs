//! Maintenance-flag sources: a sentinel file, a sentinel command, and a node annotation that
//! requests a reboot by hand. A check that fails is "could not check", which is never a reboot
//! request.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use crate::host::{self, Ended, Host};
use crate::shutdown::Shutdown;
use crate::text;

/// The combined answer to "does this node need a reboot?".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Flag {
    /// A reboot is required, and why.
    Required(String),
    /// No reboot is required.
    NotRequired,
    /// The flag could not be checked, and why. Never treated as a reboot request.
    Unknown(String),
}

impl Flag {
    /// Whether a reboot is required (1) or not (0), for the gauge; unknown counts as 0.
    pub fn gauge(&self) -> i64 {
        i64::from(matches!(self, Flag::Required(_)))
    }
}

/// Where the flag was read from, for logs and the failure metric's label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The sentinel file.
    File,
    /// The sentinel command.
    Command,
}

impl Source {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::File => "file",
            Source::Command => "command",
        }
    }
}

/// A manual request (the annotation's value, its reason) wins over the file or command; a
/// failed check stays a failed check otherwise. The reason is cut to [`text::REASON_MAX`]: it
/// travels into logs, Events and the Node.
pub fn combine(source: Flag, annotation: Option<&str>) -> Flag {
    match annotation {
        Some(reason) if reason.trim().is_empty() => {
            Flag::Required("requested by annotation".to_owned())
        }
        Some(reason) => Flag::Required(format!(
            "requested by annotation: {}",
            text::truncate(reason.trim(), text::REASON_MAX)
        )),
        None => source,
    }
}

/// What a sentinel command's exit means: 0 = required, 1 = not required, anything else
/// (including death by a signal, `None`) = could not check.
pub fn from_exit_code(code: Option<i32>, command: &str) -> Flag {
    match code {
        Some(0) => Flag::Required(format!("sentinel command `{command}` exited 0")),
        Some(1) => Flag::NotRequired,
        Some(c) => Flag::Unknown(format!("sentinel command `{command}` exited {c}")),
        None => Flag::Unknown(format!(
            "sentinel command `{command}` was killed by a signal"
        )),
    }
}

/// Checks the sentinel file.
pub async fn check_file(path: &Path) -> Flag {
    match tokio::fs::try_exists(path).await {
        Ok(true) => Flag::Required(format!("sentinel file {} exists", path.display())),
        Ok(false) => Flag::NotRequired,
        Err(e) => Flag::Unknown(format!(
            "cannot check sentinel file {}: {e}",
            path.display()
        )),
    }
}

/// Runs the sentinel command (in the host's mount namespace, in its own process group) with a
/// timeout. A timeout or a stop request kills its whole process group at once.
pub async fn check_command(
    host: &Host,
    argv: &[String],
    timeout: Duration,
    shutdown: &mut Shutdown,
) -> Flag {
    let shown = argv.join(" ");
    let mut cmd = match host.command(argv) {
        Ok(c) => c,
        Err(e) => return Flag::Unknown(format!("cannot prepare sentinel command `{shown}`: {e}")),
    };
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    match host::run(cmd, timeout, shutdown).await {
        Ok(Ended::Exited(status)) => from_exit_code(status.code(), &shown),
        Err(e) => Flag::Unknown(format!("cannot run sentinel command `{shown}`: {e}")),
        Ok(Ended::TimedOut) => Flag::Unknown(format!(
            "sentinel command `{shown}` timed out after {}",
            humantime::format_duration(timeout)
        )),
        Ok(Ended::Stopped) => Flag::Unknown(format!(
            "sentinel command `{shown}` was stopped: the agent is stopping"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::testing::{self, Grandchild};

    #[test]
    fn exit_codes_map_to_flags_and_never_guess() {
        assert!(matches!(from_exit_code(Some(0), "x"), Flag::Required(_)));
        assert_eq!(from_exit_code(Some(1), "x"), Flag::NotRequired);
        for code in [Some(2), Some(127), Some(-1), None] {
            assert!(
                matches!(from_exit_code(code, "x"), Flag::Unknown(_)),
                "{code:?}"
            );
        }
    }

    #[test]
    fn a_long_annotation_reason_is_cut_before_it_travels() {
        let reason = format!("CVE-2026-1234 {}", "x".repeat(4000));
        let flag = combine(Flag::NotRequired, Some(&reason));
        assert!(matches!(flag, Flag::Required(_)), "{flag:?}");
        let why = match flag {
            Flag::Required(why) => why,
            _ => String::new(),
        };
        assert!(why.contains("CVE-2026-1234"), "{why}");
        assert!(why.len() <= 300, "{} bytes", why.len());
        assert!(why.ends_with('…'), "{why}");
    }

    #[test]
    fn annotation_requests_a_reboot_whatever_the_source_says() {
        for source in [Flag::NotRequired, Flag::Unknown("x".into())] {
            assert_eq!(
                combine(source, Some("kernel 6.12")),
                Flag::Required("requested by annotation: kernel 6.12".into())
            );
        }
        assert_eq!(
            combine(Flag::NotRequired, Some("")),
            Flag::Required("requested by annotation".into())
        );
        assert_eq!(
            combine(Flag::Unknown("x".into()), None),
            Flag::Unknown("x".into())
        );
    }

    #[tokio::test]
    async fn file_check_reports_presence() {
        let dir = std::env::temp_dir().join(format!("baton-flag-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("reboot-required");
        assert_eq!(check_file(&f).await, Flag::NotRequired);
        std::fs::write(&f, "").unwrap();
        assert!(matches!(check_file(&f).await, Flag::Required(_)));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn command_check_maps_failures_to_unknown() {
        let host = testing::host();
        let t = Duration::from_secs(10);
        let (_stop, mut shutdown) = crate::shutdown::channel();
        let shutdown = &mut shutdown;
        let sh = testing::sh;
        assert!(matches!(
            check_command(&host, &sh("exit 0"), t, shutdown).await,
            Flag::Required(_)
        ));
        assert_eq!(
            check_command(&host, &sh("exit 1"), t, shutdown).await,
            Flag::NotRequired
        );
        assert!(matches!(
            check_command(&host, &sh("exit 2"), t, shutdown).await,
            Flag::Unknown(_)
        ));
        let missing = vec!["/nonexistent/baton-sentinel".to_owned()];
        assert!(matches!(
            check_command(&host, &missing, t, shutdown).await,
            Flag::Unknown(_)
        ));
    }

    #[tokio::test]
    async fn a_sentinel_that_times_out_leaves_nothing_running() {
        let g = Grandchild::new();
        let (_stop, mut shutdown) = crate::shutdown::channel();
        // Long enough for the shell to start its grandchild on a loaded machine.
        let timeout = Duration::from_secs(2);
        let flag = check_command(&testing::host(), &g.waiting(), timeout, &mut shutdown).await;
        assert!(
            matches!(flag, Flag::Unknown(ref m) if m.contains("timed out")),
            "{flag:?}"
        );
        g.assert_gone().await;
    }

    #[tokio::test]
    async fn a_stop_request_ends_a_hanging_sentinel_at_once() {
        let g = Grandchild::new();
        let (stop, mut shutdown) = crate::shutdown::channel();
        let (host, argv) = (testing::host(), g.waiting());
        let check = check_command(&host, &argv, Duration::from_secs(600), &mut shutdown);
        let flag = g.stop_once_started(check, &stop).await;
        assert!(
            matches!(flag, Flag::Unknown(ref m) if m.contains("stopped")),
            "{flag:?}"
        );
        g.assert_gone().await;
    }
}
