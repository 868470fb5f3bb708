//! A real local Kubernetes control plane for baton's tests: etcd, kube-apiserver,
//! kube-controller-manager, kube-scheduler and kwok (fake kubelets), started on free loopback
//! ports in a temporary directory and stopped, by PID, when dropped.
#![allow(clippy::missing_panics_doc)]

pub mod agent;
pub mod assets;
pub mod audit;
pub mod cluster;
pub mod fixtures;
pub mod http;
pub mod observe;
pub mod pki;
pub mod process;
pub mod prometheus;
pub mod real_node;
pub mod relay;
pub mod rollout;
pub mod scenario;
pub mod wait;
pub mod webhook;

pub use cluster::{Cluster, shared, shared_audited};
pub use wait::wait_for;
