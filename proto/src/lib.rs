//! The quorate agent contract.
//!
//! - [`pb`]: the generated gRPC types and tonic client/server for `quorate.agent.v1`.
//! - [`tls`]: the rustls configurations both sides use (mTLS only; there is no plaintext mode).
//! - [`probe`]: a small HTTP(S) GET used for `/health` and `/readyz` probes.
//! - [`bbolt`] and [`etcd_db`]: read what an etcd db file records (revision, cluster version,
//!   membership) page by page, without starting etcd.
//! - [`signature`]: Ed25519 snapshot signatures (`<snapshot>.sig`), made by `quorate snapshot
//!   sign` and checked by agents that require them.
//! - [`durable`]: crash-safe writes, renames and new directories (write temp, fsync, rename,
//!   fsync the directory), used by the agent, the coordinator and the lab.
#![forbid(unsafe_code)]

pub mod bbolt;
pub mod channel;
pub mod durable;
pub mod etcd_db;
pub mod model;
pub mod probe;
pub mod server;
pub mod signature;
pub mod tls;

/// Generated code for `quorate/agent/v1/agent.proto`.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod pb {
    tonic::include_proto!("quorate.agent.v1");
}
