//! Starts a local control plane with kwok nodes and keeps it up until Ctrl-C or SIGTERM, for poking at by
//! hand: `cargo run -p baton-tests --bin baton-cluster -- 3` prints a KUBECONFIG to export.

use anyhow::Result;

#[tokio::main]
async fn main() -> Result<()> {
    let nodes: usize = std::env::args().nth(1).map_or(Ok(3), |n| n.parse())?;
    let cluster = baton_tests::Cluster::start().await?;
    let client = cluster.client().await?;
    let names: Vec<String> = (1..=nodes).map(|i| format!("node-{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    cluster.add_nodes(&client, &refs, &[]).await?;
    println!("export KUBECONFIG={}", cluster.kubeconfig().display());
    println!(
        "logs in {}; Ctrl-C or SIGTERM stops everything",
        cluster.dir().display()
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    Ok(())
}
