//! How etcd and the kube-apiserver are stopped and started on this host.
//!
//! "Stopped" means the process is gone and its ports are closed, not that a file moved or a
//! command succeeded; "started" means the process runs and its ports listen (and, for the
//! apiserver, `/readyz` answers 200).

mod checks;
mod procs;
mod static_pod;
mod systemd;
pub mod systemd_view;
pub mod unit;
mod unit_files;
mod unit_specifiers;
mod unit_syntax;

use std::path::{Path, PathBuf};

pub use checks::{Component, Target};
pub use procs::{find_processes, find_processes_with_env, listening};
pub use static_pod::{StaticPod, move_manifest};
pub use systemd::Systemd;
pub use unit_files::UnitSource;

use crate::error::{AgentError, Result};
use crate::fsutil;
use crate::manifest::PodCommand;

/// Reports progress of a long operation to the caller (streamed to the coordinator).
pub type Progress<'a> = &'a (dyn Fn(String) + Sync);

/// A file outside the agent's state dir that restates cluster settings etcd reads only when it
/// bootstraps (`ETCD_INITIAL_CLUSTER*` in an environment file, `initial-cluster*` in a config
/// file). RESTORE rewrites it so that it tells the truth about the restored cluster.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SettingsFile {
    pub path: PathBuf,
    pub format: SettingsFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SettingsFormat {
    /// systemd `EnvironmentFile=`: `ETCD_INITIAL_CLUSTER_TOKEN=...`.
    Env,
    /// etcd `--config-file` YAML: `initial-cluster-token: ...`.
    EtcdYaml,
}

/// Process control for one component. Every operation is idempotent: asking to stop a stopped
/// component (e.g. after the agent restarted mid-step) succeeds.
pub trait Runtime: Send + Sync {
    /// "static-pod", "systemd", ...
    fn kind(&self) -> &'static str;
    /// Where the component's definition lives while it should run (manifest or unit file path).
    fn definition(&self) -> &Path;
    /// True when the component's process is present. `aside` is where the definition may have
    /// been moved by a stop. An error when that cannot be found out (its definition or /proc
    /// cannot be read): never "not running" on a doubt.
    fn is_running(&self, aside: Option<&Path>) -> Result<bool>;
    /// Stops the component (moving its definition to `aside` where the runtime works that way)
    /// and waits until it is down.
    fn stop(&self, aside: &Path, progress: Progress<'_>) -> Result<String>;
    /// Starts the component (moving its definition back from `aside` where needed) and waits
    /// until it is up.
    fn start(&self, aside: &Path, progress: Progress<'_>) -> Result<String>;

    /// The component's effective command line, with every flag it runs with. `asides` are where
    /// a stop may have moved the definition. Default: a static-pod manifest at home or aside.
    fn command(&self, asides: &[PathBuf]) -> Result<PodCommand> {
        let home = self.definition();
        if fsutil::exists(home) {
            return PodCommand::load(home);
        }
        let mut looked = vec![home.display().to_string()];
        for aside in asides {
            if fsutil::exists(aside) {
                return PodCommand::load(aside);
            }
            looked.push(aside.display().to_string());
        }
        Err(AgentError::Precondition(format!(
            "the manifest is not at {}: put it back (or fix the manifest path in the agent config)",
            looked.join(" nor at ")
        )))
    }

    /// True when the component exists on this host, running or not: its definition is at home
    /// or at `aside` (where a stop moved it). Default: a static-pod manifest in either place.
    fn present(&self, aside: &Path) -> bool {
        fsutil::exists(self.definition()) || fsutil::exists(aside)
    }

    /// Files besides the definition that restate the initial cluster settings. Default: none.
    fn settings_files(&self) -> Result<Vec<SettingsFile>> {
        Ok(Vec::new())
    }
}
