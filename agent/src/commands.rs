//! The operator's side of the binary: `baton status` and the commands that pause, resume and
//! request, also run as the kubectl plugin `kubectl baton`. Each gathers or writes through
//! [`crate::status`] and [`crate::operate`], prints, and maps failures to exit codes: 0 done, 1
//! an API failure, 2 bad input.

use std::ffi::OsString;
use std::io::{IsTerminal, Write};
use std::ops::ControlFlow;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use crate::config::{
    Colour, Command, NodeArgs, NodeReasonArgs, Output, PauseArgs, StatusArgs, SwitchArgs,
};
use crate::operate::{self, NodeOp};
use crate::status::gather::{self, Query, Update};
use crate::status::{Settings, render};

/// The name kubectl runs a plugin by: `kubectl baton ...` runs `kubectl-baton ...` from PATH.
pub const PLUGIN_NAME: &str = "kubectl-baton";
/// How `kubectl-baton` calls itself in its help.
pub const PLUGIN_BIN_NAME: &str = "kubectl baton";
/// In `--watch` on a terminal, the text is drawn again this often even without a change, so the
/// times it shows relative to now stay true (no API request: the watches feed it).
const TERMINAL_REFRESH: Duration = Duration::from_secs(5);

/// The arguments as given, and whether the binary runs as `kubectl-baton`. As the plugin,
/// `kubectl baton` alone, or with only flags, means `kubectl baton status ...`.
pub fn plugin_argv(args: Vec<OsString>) -> (Vec<OsString>, bool) {
    let plugin = args
        .first()
        .and_then(|a0| Path::new(a0).file_name())
        .is_some_and(|n| n == PLUGIN_NAME);
    if !plugin {
        return (args, false);
    }
    let first = args.get(1).map(|a| a.to_string_lossy().into_owned());
    let status_implied = match first.as_deref() {
        None => true,
        Some(a) => a.starts_with('-') && !["-h", "--help", "-V", "--version"].contains(&a),
    };
    let mut args = args;
    if status_implied {
        args.insert(1, "status".into());
    }
    (args, true)
}

/// Runs an operator command (`None` for the agent's own subcommands).
pub fn run(command: Command) -> Option<ExitCode> {
    Some(match command {
        Command::Status(a) => status(*a),
        Command::Pause(a) => pause(a),
        Command::Resume(a) => resume(a),
        Command::Request(a) => node_op(NodeOp::Request, a),
        Command::Cancel(a) => node_op(NodeOp::Cancel, with_reason(a)),
        Command::PauseNode(a) => node_op(NodeOp::Pause, a),
        Command::ResumeNode(a) => node_op(NodeOp::Resume, with_reason(a)),
        Command::Agent(_) | Command::Drain(_) => return None,
    })
}

fn with_reason(target: NodeArgs) -> NodeReasonArgs {
    NodeReasonArgs {
        target,
        reason: None,
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("baton: error: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        })
}

fn failed(code: u8, e: &(dyn std::error::Error + 'static)) -> ExitCode {
    eprintln!("baton: error: {}", error_chain(e));
    ExitCode::from(code)
}

/// An error and its causes, on one line.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    parts.join(": ").replace('\n', " ")
}

async fn clients(
    cluster_timeout: Duration,
    who: &str,
) -> Result<(kube::Client, kube::Client), ExitCode> {
    crate::api::clients(cluster_timeout, who)
        .await
        .map_err(|e| {
            eprintln!("baton: error: {e:#}");
            ExitCode::FAILURE
        })
}

// === baton status ===

/// The query `baton status` runs with `args`.
pub fn query(args: &StatusArgs) -> Query {
    Query {
        settings: Settings {
            namespace: args.cluster.namespace.clone(),
            lock_name: args.lock_name.clone(),
            pause_configmap: args.pause_configmap.clone(),
            agent_selector: args.agent_selector.clone(),
            max_reboot_attempts: args.max_reboot_attempts,
        },
        node_selector: args.selector.clone(),
    }
}

/// Whether to colour: `auto` means stdout is a terminal and `NO_COLOR` is not set.
pub fn colour(choice: Colour, terminal: bool, no_color: bool) -> bool {
    match choice {
        Colour::Always => true,
        Colour::Never => false,
        Colour::Auto => terminal && !no_color,
    }
}

fn status(args: StatusArgs) -> ExitCode {
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let terminal = std::io::stdout().is_terminal();
    let colour = colour(
        args.color,
        terminal,
        std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty()),
    );
    let q = query(&args);
    rt.block_on(async move {
        let (client, watch_client) = match clients(args.cluster.api_timeout, "status").await {
            Ok(c) => c,
            Err(code) => return code,
        };
        // Once, first: a missing permission or a bad selector fails here, with its exit code,
        // rather than in a watch that retries for ever.
        let mut last = match gather::snapshot(&client, &q).await {
            Ok(s) => s,
            Err(e) => return failed(e.exit_code(), &e),
        };
        let now = k8s_openapi::jiff::Timestamp::now;
        let report = crate::status::report(&last, &q.settings, now());
        let print = |r: &crate::status::Report, first: bool| -> bool {
            let text = match args.output {
                Output::Json if args.watch => serde_json::to_string(r).map(|j| j + "\n"),
                Output::Json => serde_json::to_string_pretty(r).map(|j| j + "\n"),
                Output::Text => Ok(render::text(r, colour)),
            };
            let Ok(text) = text else {
                return false;
            };
            let mut out = std::io::stdout().lock();
            let framed = match (args.output, args.watch, terminal) {
                // Redrawn in place on a terminal.
                (Output::Text, true, true) => format!("\x1b[H\x1b[2J{text}"),
                (Output::Text, true, false) if !first => format!("\n{text}"),
                _ => text,
            };
            out.write_all(framed.as_bytes())
                .and_then(|()| out.flush())
                .is_ok()
        };
        if !print(&report, true) {
            return ExitCode::SUCCESS; // stdout closed (`| head`)
        }
        if !args.watch {
            return ExitCode::SUCCESS;
        }
        let refresh = (args.output == Output::Text && terminal).then_some(TERMINAL_REFRESH);
        let settings = q.settings.clone();
        gather::follow(&watch_client, &q, refresh, |u| match u {
            Update::Changed(s) | Update::Tick(s) => {
                // A change baton does not show (a heartbeat, the watches' first list) prints
                // nothing.
                if matches!(u, Update::Changed(_)) && *s == last {
                    return ControlFlow::Continue(());
                }
                last = s.clone();
                // Until stdout is closed (`| head`).
                if print(&crate::status::report(s, &settings, now()), false) {
                    ControlFlow::Continue(())
                } else {
                    ControlFlow::Break(())
                }
            }
            Update::WatchError(e) => {
                eprintln!(
                    "baton: warning: a watch failed (retrying): {}",
                    error_chain(e)
                );
                ControlFlow::Continue(())
            }
        })
        .await;
        ExitCode::SUCCESS
    })
}

// === Operator commands ===

fn one_line(result: Result<String, operate::Error>) -> ExitCode {
    match result {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => failed(e.exit_code(), &e),
    }
}

fn cluster_command<F, Fut>(api_timeout: Duration, who: &str, f: F) -> ExitCode
where
    F: FnOnce(kube::Client) -> Fut,
    Fut: Future<Output = Result<String, operate::Error>>,
{
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    rt.block_on(async move {
        match clients(api_timeout, who).await {
            Ok((client, _)) => one_line(f(client).await),
            Err(code) => code,
        }
    })
}

fn pause(a: PauseArgs) -> ExitCode {
    let s = a.switch;
    cluster_command(s.cluster.api_timeout, "pause", |c| async move {
        operate::pause(
            &c,
            &s.cluster.namespace,
            &s.pause_configmap,
            a.reason.as_deref(),
        )
        .await
    })
}

fn resume(a: SwitchArgs) -> ExitCode {
    cluster_command(a.cluster.api_timeout, "resume", |c| async move {
        operate::resume(&c, &a.cluster.namespace, &a.pause_configmap).await
    })
}

fn node_op(op: NodeOp, a: NodeReasonArgs) -> ExitCode {
    let who = match op {
        NodeOp::Request => "request",
        NodeOp::Cancel => "cancel",
        NodeOp::Pause => "pause-node",
        NodeOp::Resume => "resume-node",
    };
    cluster_command(a.target.api_timeout, who, |c| async move {
        operate::node_op(&c, op, &a.target.node, a.reason.as_deref()).await
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn as_kubectl_baton_the_binary_runs_status_by_default() {
        let (args, plugin) = plugin_argv(os(&["/home/me/.krew/bin/kubectl-baton"]));
        assert!(plugin);
        assert_eq!(args, os(&["/home/me/.krew/bin/kubectl-baton", "status"]));
        let (args, _) = plugin_argv(os(&["kubectl-baton", "-o", "json"]));
        assert_eq!(args, os(&["kubectl-baton", "status", "-o", "json"]));
        let (args, _) = plugin_argv(os(&["kubectl-baton", "pause", "--reason", "x"]));
        assert_eq!(args, os(&["kubectl-baton", "pause", "--reason", "x"]));
        let (args, _) = plugin_argv(os(&["kubectl-baton", "--help"]));
        assert_eq!(args, os(&["kubectl-baton", "--help"]));
        // As `baton`, nothing changes.
        let (args, plugin) = plugin_argv(os(&["/usr/bin/baton"]));
        assert!(!plugin);
        assert_eq!(args, os(&["/usr/bin/baton"]));
    }

    #[test]
    fn colour_only_on_a_terminal_unless_told() {
        assert!(colour(Colour::Auto, true, false));
        assert!(!colour(Colour::Auto, false, false));
        assert!(!colour(Colour::Auto, true, true), "NO_COLOR");
        assert!(colour(Colour::Always, false, true));
        assert!(!colour(Colour::Never, true, false));
    }
}
