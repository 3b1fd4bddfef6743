//! quorate: restore a multi-member etcd cluster from one snapshot, on every member at once.
#![forbid(unsafe_code)]

pub mod agent_client;
pub mod certs;
pub mod inventory;
pub mod journal;
pub mod plan;
pub mod restore;
pub mod snapshot;
pub mod verify;
