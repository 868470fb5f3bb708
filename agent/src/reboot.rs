//! Rebooting this host: by signal to the host's init, by a command in the host's mount
//! namespace, or not at all (dry run).

use std::process::Stdio;
use std::time::Duration;

use crate::config::RebootMethod;
use crate::host::Host;

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
    /// The command could not be started or did not finish in time.
    #[error("reboot command `{command}` failed to run")]
    Spawn {
        /// The command line.
        command: String,
        /// Why.
        #[source]
        source: std::io::Error,
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
}

/// Triggers the reboot with `method`.
pub async fn trigger(
    method: RebootMethod,
    host: Host,
    command: &[String],
    signal: i32,
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
            cmd.stdin(Stdio::null()).kill_on_drop(true);
            let status = tokio::time::timeout(COMMAND_TIMEOUT, cmd.status())
                .await
                .map_err(|_| spawn_err(std::io::Error::other("timed out")))?
                .map_err(spawn_err)?;
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
