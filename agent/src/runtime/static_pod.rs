//! Static pods: the kubelet runs every manifest in its manifests dir. Stopping moves the manifest
//! out (one atomic rename) into the restore's state dir; starting moves it back.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::checks::{self, Component, Target};
use super::{Progress, Runtime, find_processes};
use crate::error::{AgentError, Result};
use crate::fsutil;
use crate::manifest::PodCommand;

/// A component run by the kubelet from a manifest.
#[derive(Debug, Clone)]
pub struct StaticPod {
    pub component: Component,
    pub manifest: PathBuf,
    pub stop_timeout: Duration,
    pub start_timeout: Duration,
}

/// Moves a manifest from `from` to `to` (creating `to`'s directory). Idempotent: when the file is
/// already at `to`, nothing happens and `false` is returned. Refuses when it is in both places or
/// in neither, naming both paths.
pub fn move_manifest(from: &Path, to: &Path) -> Result<bool> {
    match (fsutil::exists(from), fsutil::exists(to)) {
        (false, true) => Ok(false),
        (true, false) => {
            let dir = fsutil::parent(to)?;
            // Missing dirs (`quorate-aside/<id>`) are the agent's own: 0700.
            quorate_proto::durable::create_dir_durable(dir, 0o700)?;
            quorate_proto::durable::rename_durable(from, to)?;
            Ok(true)
        }
        (true, true) => Err(AgentError::Precondition(format!(
            "manifest exists both at {} and at {}: compare them, keep the right one at {} and \
             remove the other, then run the step again",
            from.display(),
            to.display(),
            from.display()
        ))),
        (false, false) => Err(AgentError::Precondition(format!(
            "manifest is neither at {} nor at {}: restore it from a backup (or kubeadm) to {}, \
             then run the step again",
            from.display(),
            to.display(),
            from.display()
        ))),
    }
}

impl StaticPod {
    fn file_name(&self) -> String {
        self.manifest
            .file_name()
            .map_or_else(|| "manifest".into(), |n| n.to_string_lossy().into_owned())
    }

    /// The manifest where it currently is: home first, then `aside`.
    fn current_command(&self, aside: Option<&Path>) -> Result<PodCommand> {
        match aside {
            Some(a) if !fsutil::exists(&self.manifest) && fsutil::exists(a) => PodCommand::load(a),
            _ => PodCommand::load(&self.manifest),
        }
    }

    fn label(&self) -> &str {
        self.component.label()
    }

    fn target(command: PodCommand) -> Target {
        Target {
            argv: command.argv.clone(),
            env: Vec::new(),
            command,
        }
    }
}

impl Runtime for StaticPod {
    fn kind(&self) -> &'static str {
        "static-pod"
    }

    fn definition(&self) -> &Path {
        &self.manifest
    }

    fn is_running(&self, aside: Option<&Path>) -> Result<bool> {
        let command = self.current_command(aside).map_err(|e| {
            AgentError::Precondition(format!(
                "cannot tell whether {} runs: its manifest cannot be read ({e})",
                self.label()
            ))
        })?;
        Ok(!find_processes(&command.argv)?.is_empty())
    }

    fn stop(&self, aside: &Path, progress: Progress<'_>) -> Result<String> {
        let file = self.file_name();
        if fsutil::exists(&self.manifest) {
            progress(format!("moving {file} out of the manifests dir"));
        }
        move_manifest(&self.manifest, aside)?;
        let target = Self::target(PodCommand::load(aside)?);
        let ports = target.ports(&self.component)?;
        let waited = checks::wait(self.stop_timeout, progress, || {
            checks::still_up(&self.component, &target, &ports)
        })?;
        match waited {
            Ok(took) => Ok(format!(
                "{} stopped ({:.1}s)",
                self.label(),
                took.as_secs_f64()
            )),
            Err(why) => Err(AgentError::Timeout(format!(
                "{} is not down {:?} after its manifest was moved to {} ({why}); the kubelet \
                 should have stopped it: check the kubelet and the pod, then run the step again",
                self.label(),
                self.stop_timeout,
                aside.display()
            ))),
        }
    }

    fn start(&self, aside: &Path, progress: Progress<'_>) -> Result<String> {
        let file = self.file_name();
        if fsutil::exists(aside) {
            progress(format!("moving {file} back into the manifests dir"));
        }
        move_manifest(aside, &self.manifest)?;
        let target = Self::target(PodCommand::load(&self.manifest)?);
        let ports = target.ports(&self.component)?;
        let waited = checks::wait(self.start_timeout, progress, || {
            checks::not_up(&self.component, &target, &ports, "the kubelet")
        })?;
        match waited {
            Ok(took) => Ok(format!(
                "{} is up ({:.1}s)",
                self.label(),
                took.as_secs_f64()
            )),
            Err(why) => Err(AgentError::Timeout(format!(
                "{} is not up {:?} after its manifest was put back at {} ({why}); check the \
                 pod's log and the kubelet, then run the step again",
                self.label(),
                self.start_timeout,
                self.manifest.display()
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_moves_are_idempotent_and_name_both_paths() {
        let dir = tempfile::tempdir().expect("tempdir");
        let home = dir.path().join("manifests/etcd.yaml");
        let aside = dir.path().join("state/restores/x/manifests/etcd.yaml");
        std::fs::create_dir_all(home.parent().expect("parent")).expect("mkdir");
        std::fs::write(&home, "x").expect("write");
        assert!(move_manifest(&home, &aside).expect("out"));
        assert!(!move_manifest(&home, &aside).expect("again"));
        assert!(move_manifest(&aside, &home).expect("in"));
        std::fs::remove_file(&home).expect("rm");
        let err = move_manifest(&home, &aside)
            .expect_err("neither")
            .to_string();
        assert!(
            err.contains(&home.display().to_string()) && err.contains(&aside.display().to_string())
        );
    }
}
