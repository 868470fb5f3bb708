//! Command-line and environment configuration. Every flag has a `BATON_*` environment twin, and
//! everything is validated at start-up so that bad input fails fast with one readable line.

use clap::{Parser, Subcommand};

/// baton: drain, reboot and uncordon this node, one node at a time.
#[derive(Debug, Parser)]
#[command(name = "baton", version, about, long_about = None)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// baton's subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the node agent (the DaemonSet's entry point).
    Agent,
}
