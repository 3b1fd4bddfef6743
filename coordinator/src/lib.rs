//! quorate: restore a multi-member etcd cluster from one snapshot, on every member at once.
#![forbid(unsafe_code)]

pub mod agent_client;
pub mod apiserver_hosts;
pub mod certs;
pub mod engine;
pub mod failure;
pub mod inventory;
pub mod journal;
pub mod member_checks;
pub mod membership;
pub mod ops;
pub mod output;
pub mod phases;
pub mod plan;
pub mod preflight;
pub mod progress;
pub mod restore;
pub mod revision;
pub mod rollback;
pub mod signing;
pub mod snapshot;
pub mod snapshot_cmd;
pub mod snapshot_save;
pub mod snapshot_sign;
pub mod snapshot_verify;
pub mod verify;
