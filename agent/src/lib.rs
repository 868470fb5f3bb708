//! baton: a node-local agent that drains, reboots and uncordons its own Kubernetes node when the
//! node needs maintenance, holding a `coordination.k8s.io/v1` Lease (the baton) so that only a
//! bounded number of nodes are disrupted at once.
//!
//! The crate is a pure core (decisions over plain data: [`machine`], [`lease::Observer`],
//! [`drain::decide`], [`flag::combine`]) wrapped by a thin I/O shell ([`agent`], Kubernetes,
//! files, processes, signals); `main.rs` only wires the modules together.
#![deny(missing_docs)]
#![warn(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod agent;
pub mod alerts;
pub mod api;
pub mod commands;
pub mod config;
pub mod drain;
pub mod flag;
pub mod host;
pub mod lease;
pub mod machine;
pub mod metrics;
pub mod node;
pub mod notify;
pub mod operate;
pub mod privilege;
pub mod reboot;
pub mod server;
pub mod shutdown;
pub mod status;
pub mod text;
pub mod window;
