//! How etcd and the kube-apiserver are stopped and started on this host.
//!
//! "Stopped" means the process is gone and its ports are closed, not that a file moved; "started"
//! means the process runs and its ports listen (and, for the apiserver, `/readyz` answers 200).

mod procs;
mod static_pod;

use std::path::Path;

pub use procs::{find_processes, listening};
pub use static_pod::{Component, StaticPod, move_manifest};

use crate::error::Result;

/// Reports progress of a long operation to the caller (streamed to the coordinator).
pub type Progress<'a> = &'a (dyn Fn(String) + Sync);

/// Process control for one component. Every operation is idempotent: asking to stop a stopped
/// component (e.g. after the agent restarted mid-step) succeeds.
pub trait Runtime: Send + Sync {
    /// "static-pod", ...
    fn kind(&self) -> &'static str;
    /// Where the component's definition lives while it should run (the manifest path).
    fn definition(&self) -> &Path;
    /// True when the component's process is present. `aside` is where the definition may have
    /// been moved by a stop.
    fn is_running(&self, aside: Option<&Path>) -> bool;
    /// Moves the definition to `aside` and waits until the component is down.
    fn stop(&self, aside: &Path, progress: Progress<'_>) -> Result<String>;
    /// Moves the definition back from `aside` and waits until the component is up.
    fn start(&self, aside: &Path, progress: Progress<'_>) -> Result<String>;
}
