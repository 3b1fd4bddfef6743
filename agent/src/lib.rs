//! quorate-agent: runs on every etcd member, serves the `quorate.agent.v1.Agent` gRPC service over
//! mTLS, and owns every local path and process. The coordinator sends a restore id, a step and
//! cluster facts; the agent maps them onto its configured layout.
//!
//! - [`config`] holds `agent.toml`.
//! - [`engine`] and [`steps`] run one step at a time, journaled first, idempotent.
//! - [`runtime`] stops and starts etcd and the kube-apiserver (static pods or systemd units).
//! - [`settings`] keeps etcd's environment/config file truthful across a restore.
//! - [`tool`] wraps `etcdutl` / `etcdctl` snapshot restore.
//! - [`health`] probes etcd's `/health` and the apiserver's `/readyz` from this host.
//! - [`service`] and [`server`] are the gRPC service and its mTLS listener.
#![forbid(unsafe_code)]

pub mod child;
pub mod config;
pub mod describe;
pub mod engine;
pub mod error;
pub mod fsutil;
pub mod health;
pub mod journal;
pub mod kubeconfig;
pub mod manifest;
pub mod private;
pub mod push_guard;
pub mod runtime;
pub mod server;
pub mod service;
pub mod settings;
pub mod snapshot;
pub mod steps;
pub mod tool;

pub use config::AgentConfig;
pub use error::AgentError;
pub use service::AgentService;
