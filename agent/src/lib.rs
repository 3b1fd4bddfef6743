//! quorate-agent: runs on every etcd member, serves the `quorate.agent.v1.Agent` gRPC service over
//! mTLS, and owns every local path and process. The coordinator sends a restore id, a step and
//! cluster facts; the agent maps them onto its configured layout.
//!
//! - [`config`] holds `agent.toml`.
//! - [`engine`] and [`steps`] run one step at a time, journaled first, idempotent.
//! - [`runtime`] stops and starts etcd and the kube-apiserver (static pods or systemd units).
//! - [`settings`] keeps etcd's environment/config file truthful across a restore.
//! - [`tool`] wraps `etcdutl` / `etcdctl` snapshot restore.
//! - [`signing`] refuses snapshots not signed by a trusted key, when the config lists any.
//! - [`health`] probes etcd's `/health` and the apiserver's `/readyz` from this host.
//! - [`service`] and [`server`] are the gRPC service and its mTLS listener.
#![forbid(unsafe_code)]

/// Whether this build has failpoints: only a build with the `failpoints` feature AND debug
/// assertions (a test build). A release build has none, whatever features a workspace build
/// unifies (the lab turns the feature on): see docs/failpoints.md.
pub const FAILPOINTS: bool = cfg!(all(feature = "failpoints", debug_assertions));

/// What `--version` prints: the version, and in a build with failpoints, that it is one.
pub const VERSION: &str = if FAILPOINTS {
    concat!(
        env!("CARGO_PKG_VERSION"),
        " (with failpoints: a test build, not for production)"
    )
} else {
    env!("CARGO_PKG_VERSION")
};

/// The line a build with failpoints prints on stderr at startup.
pub const FAILPOINTS_WARNING: &str = "quorate-agent: this build has failpoints (FAILPOINTS in the environment makes it fail on purpose): a test build, not for production";

pub mod child;
pub mod config;
pub mod describe;
pub mod discover;
pub mod engine;
pub mod error;
pub mod fsutil;
pub mod gc;
pub mod health;
pub mod journal;
pub mod kubeconfig;
pub mod manifest;
pub mod peers;
pub mod private;
pub mod push_guard;
pub mod runtime;
pub mod server;
pub mod service;
pub mod settings;
pub mod signing;
pub mod snapshot;
pub mod steps;
pub mod tool;

pub use config::AgentConfig;
pub use error::AgentError;
pub use service::AgentService;
