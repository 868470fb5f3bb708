//! Rebooting this host: by signal to the host's init, by a command in the host's mount
//! namespace, or not at all (dry run).

use std::process::Stdio;
use std::time::Duration;

use crate::config::RebootMethod;
use crate::host::{self, Ended, Host};
use crate::shutdown::Shutdown;

/// A reboot that could not be triggered.
#[derive(Debug, thiserror::Error)]
pub enum RebootError {
    /// The signal could not be sent.
    #[error("cannot send signal {signal} to PID {pid}")]
    Signal {
        /// The signal number.
        signal: i32,
        /// The target.
        pid: i32,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The command could not be started.
    #[error("reboot command `{command}` failed to run")]
    Spawn {
        /// The command line.
        command: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The command did not finish in time (its process group was killed).
    #[error("reboot command `{command}` did not finish within {}", crate::node::human(*timeout))]
    Timeout {
        /// The command line.
        command: String,
        /// How long it had.
        timeout: Duration,
    },
    /// The command ran and failed.
    #[error("reboot command `{command}` exited with {status}")]
    Exit {
        /// The command line.
        command: String,
        /// Its exit status.
        status: std::process::ExitStatus,
    },
}

/// How long the reboot command may run: `systemctl reboot` returns at once; a command that
/// hangs must not block the agent forever.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// What a trigger did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Triggered {
    /// A reboot was requested from the host.
    Requested,
    /// Dry run: nothing was done.
    DryRun,
    /// A stop was requested while the reboot command ran; its process group was killed.
    Stopped,
}

/// Triggers the reboot with `method`. The reboot command runs in its own process group, killed
/// as a whole on timeout or when `shutdown` asks to stop.
pub async fn trigger(
    method: RebootMethod,
    host: Host,
    command: &[String],
    signal: i32,
    shutdown: &mut Shutdown,
) -> Result<Triggered, RebootError> {
    match method {
        RebootMethod::None => {
            tracing::warn!("dry run (--reboot-method=none): the host would reboot now");
            Ok(Triggered::DryRun)
        }
        RebootMethod::Signal => {
            tracing::info!(
                signal,
                pid = host.pid(),
                "rebooting: sending signal to the host's init"
            );
            host.signal(signal).map_err(|source| RebootError::Signal {
                signal,
                pid: host.pid(),
                source,
            })?;
            Ok(Triggered::Requested)
        }
        RebootMethod::Command => {
            let shown = command.join(" ");
            tracing::info!(command = %shown, "rebooting: running the reboot command on the host");
            let spawn_err = |source| RebootError::Spawn {
                command: shown.clone(),
                source,
            };
            let mut cmd = host.command(command).map_err(spawn_err)?;
            cmd.stdin(Stdio::null());
            let status = match host::run(cmd, COMMAND_TIMEOUT, shutdown)
                .await
                .map_err(spawn_err)?
            {
                Ended::Exited(status) => status,
                Ended::Stopped => return Ok(Triggered::Stopped),
                Ended::TimedOut => {
                    return Err(RebootError::Timeout {
                        command: shown,
                        timeout: COMMAND_TIMEOUT,
                    });
                }
            };
            if status.success() {
                Ok(Triggered::Requested)
            } else {
                Err(RebootError::Exit {
                    command: shown,
                    status,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::testing::{self, Grandchild};

    #[tokio::test]
    async fn a_stop_request_ends_a_hanging_reboot_command_and_all_it_started() {
        let g = Grandchild::new();
        let (stop, mut shutdown) = crate::shutdown::channel();
        let argv = g.waiting();
        let reboot = trigger(
            RebootMethod::Command,
            testing::host(),
            &argv,
            39,
            &mut shutdown,
        );
        let triggered = g.stop_once_started(reboot, &stop).await;
        assert!(matches!(triggered, Ok(Triggered::Stopped)), "{triggered:?}");
        g.assert_gone().await;
    }

    #[tokio::test]
    async fn a_failing_reboot_command_is_an_error_naming_it() {
        let (_stop, mut shutdown) = crate::shutdown::channel();
        let argv = testing::sh("exit 4");
        let err = trigger(
            RebootMethod::Command,
            testing::host(),
            &argv,
            39,
            &mut shutdown,
        )
        .await
        .unwrap_err();
        assert!(matches!(err, RebootError::Exit { .. }), "{err:?}");
        assert!(err.to_string().contains("exit 4"), "{err}");
    }
}
