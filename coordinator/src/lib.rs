//! quorate: restore a multi-member etcd cluster from one snapshot, on every member at once.
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
pub const FAILPOINTS_WARNING: &str = "quorate: this build has failpoints (FAILPOINTS in the environment makes it fail on purpose): a test build, not for production";

pub mod agent_client;
pub mod agents;
pub mod apiserver_hosts;
pub mod certs;
pub mod certs_check;
pub mod certs_cmd;
pub mod confirm;
pub mod engine;
pub mod events;
mod events_error;
pub mod failure;
pub mod gc;
pub mod interrupt;
pub mod inventory;
pub mod journal;
pub mod lines;
pub mod live;
pub mod log_writer;
pub mod member_checks;
pub mod membership;
pub mod ops;
pub mod output;
pub mod phases;
pub mod plan;
pub mod preflight;
pub mod progress;
pub mod report_cmd;
pub mod report_doc;
pub mod restore;
pub mod revision;
pub mod rollback;
pub mod signing;
pub mod snapshot;
pub mod snapshot_cmd;
pub mod snapshot_save;
pub mod snapshot_sign;
pub mod snapshot_verify;
mod stage;
pub mod verify;
pub mod view;
