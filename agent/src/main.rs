//! The `baton` binary: parses the configuration and wires the modules together.

use clap::Parser;

fn main() -> anyhow::Result<()> {
    let cli = baton::config::Cli::parse();
    match cli.command {
        baton::config::Command::Agent => anyhow::bail!("the agent is not implemented yet"),
    }
}
