//! The `baton` binary: parses the configuration, sets up logging and signals, and runs the
//! agent. Bad input ends here with one line on stderr and a non-zero exit.

use std::io::IsTerminal;
use std::process::ExitCode;

use baton::config::{AgentArgs, Cli, Command, DrainCommand, LogFormat, one_line_error};
use clap::error::ErrorKind;
use clap::{CommandFactory, FromArgMatches, Parser};
use tracing_subscriber::EnvFilter;

/// Exit code for bad flags or environment (as clap uses).
const USAGE_EXIT: u8 = 2;

fn main() -> ExitCode {
    // As `kubectl-baton` (kubectl runs `kubectl baton ...` so), the same commands.
    let (args, plugin) = baton::commands::plugin_argv(std::env::args_os().collect());
    let parsed = if plugin {
        Cli::command()
            .bin_name(baton::commands::PLUGIN_BIN_NAME)
            .try_get_matches_from(args)
            .and_then(|m| Cli::from_arg_matches(&m))
    } else {
        Cli::try_parse_from(args)
    };
    let cli = match parsed {
        Ok(c) => c,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("{}", one_line_error(&e));
            return ExitCode::from(USAGE_EXIT);
        }
    };
    match cli.command {
        Command::Agent(args) => agent(*args),
        Command::Drain(args) => drain(*args),
        other => baton::commands::run(other).unwrap_or(ExitCode::FAILURE),
    }
}

fn runtime() -> Option<tokio::runtime::Runtime> {
    // One thread is plenty for an agent that mostly waits, and keeps its footprint small.
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => Some(r),
        Err(e) => {
            eprintln!("baton: error: cannot start the async runtime: {e}");
            None
        }
    }
}

/// Log lines on stderr, filtered by `filter`; colours only on a terminal, so `kubectl logs`
/// and log shippers get plain text.
fn log_builder(
    filter: EnvFilter,
) -> tracing_subscriber::fmt::SubscriberBuilder<
    tracing_subscriber::fmt::format::DefaultFields,
    tracing_subscriber::fmt::format::Format,
    EnvFilter,
    fn() -> std::io::Stderr,
> {
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr as fn() -> std::io::Stderr)
        .with_ansi(std::io::stderr().is_terminal())
}

fn drain(args: DrainCommand) -> ExitCode {
    log_builder(EnvFilter::new("info,kube=warn")).init();
    let Some(runtime) = runtime() else {
        return ExitCode::FAILURE;
    };
    let node = args.node.clone();
    let result: anyhow::Result<baton::drain::Report> = runtime.block_on(async move {
        let (client, watch_client) = baton::api::clients(args.api_timeout, "drain").await?;
        let metrics = baton::metrics::Metrics::new()?;
        let options = args.drain.options();
        Ok(
            baton::drain::cordon_and_drain(client, watch_client, &args.node, options, metrics)
                .await?,
        )
    });
    match result {
        Ok(r) => {
            println!(
                "node/{} drained: {} evicted, {} deleted, {} left alone",
                node, r.evicted, r.deleted, r.skipped
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("baton: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn agent(args: AgentArgs) -> ExitCode {
    if let Err(e) = args.check() {
        eprintln!("baton: error: {e}");
        return ExitCode::from(USAGE_EXIT);
    }
    // First, while the process has a single thread (capabilities belong to threads).
    if let Some(user) = args.user {
        let dropped = baton::privilege::needed(args.reboot_method)
            .and_then(|keep| baton::privilege::drop_to(user, keep));
        if let Err(e) = dropped {
            eprintln!("baton: error: {e}");
            return ExitCode::FAILURE;
        }
    }
    let filter = match EnvFilter::try_new(&args.log_level) {
        Ok(f) => f,
        Err(e) => {
            eprintln!(
                "baton: error: invalid value {:?} for '--log-level': {e}",
                args.log_level
            );
            return ExitCode::from(USAGE_EXIT);
        }
    };
    let builder = log_builder(filter);
    match args.log_format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
    if args.annotate_nodes.is_some() {
        tracing::info!(
            "--annotate-nodes (kured) has no effect: baton always keeps its state in baton.dev/ annotations on the Node"
        );
    }
    let Some(runtime) = runtime() else {
        return ExitCode::FAILURE;
    };
    let result = runtime.block_on(async move {
        let (shutdown, signals) = baton::shutdown::install()?;
        baton::agent::run(args, shutdown, signals).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "exiting");
            eprintln!("baton: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
