//! Static pods: the kubelet runs every manifest in its manifests dir. Stopping moves the manifest
//! out (one atomic rename) into the restore's state dir; starting moves it back.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Progress, Runtime, find_processes, listening};
use crate::error::{AgentError, Result};
use crate::fsutil;
use crate::manifest::{Apiserver, EtcdMember, PodCommand};

const POLL: Duration = Duration::from_millis(100);
/// How often a wait repeats its progress message.
const REPORT_EVERY: Duration = Duration::from_secs(5);
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Which component a static pod runs; decides which ports and probes mean "up".
#[derive(Debug, Clone)]
pub enum Component {
    Etcd,
    /// With the CA of the apiserver's serving certificate, for `/readyz`.
    Apiserver {
        ca: PathBuf,
    },
}

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
            std::fs::create_dir_all(dir).map_err(|e| AgentError::io("creating", dir, e))?;
            fsutil::rename_durable(from, to)?;
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

    fn label(&self) -> &'static str {
        match self.component {
            Component::Etcd => "etcd",
            Component::Apiserver { .. } => "kube-apiserver",
        }
    }

    /// The manifest where it currently is: home first, then `aside`.
    fn command(&self, aside: Option<&Path>) -> Result<PodCommand> {
        match aside {
            Some(a) if !fsutil::exists(&self.manifest) && fsutil::exists(a) => PodCommand::load(a),
            _ => PodCommand::load(&self.manifest),
        }
    }

    fn ports(&self, command: &PodCommand) -> Result<Vec<(String, u16)>> {
        Ok(match self.component {
            Component::Etcd => EtcdMember::from_command(command.clone())?.ports(),
            Component::Apiserver { .. } => {
                let a = Apiserver::from_command(command.clone())?;
                vec![(a.address, a.port)]
            }
        })
    }

    fn readyz(&self, command: &PodCommand) -> Result<Option<String>> {
        let Component::Apiserver { ca } = &self.component else {
            return Ok(None);
        };
        let url = Apiserver::from_command(command.clone())?.readyz_url();
        let tls = quorate_proto::tls::client_config(ca, None).map_err(|e| {
            AgentError::Precondition(format!("apiserver.ca: {e}; fix the agent config"))
        })?;
        let handle = tokio::runtime::Handle::try_current().map_err(|_| {
            AgentError::Precondition("probing /readyz needs the agent's runtime".into())
        })?;
        let answer = handle.block_on(quorate_proto::probe::get(
            &url,
            Some(Arc::new(tls)),
            PROBE_TIMEOUT,
        ));
        Ok(match answer {
            Ok(r) if r.status == 200 => None,
            Ok(r) => Some(format!("GET {url} answered {}", r.status)),
            Err(e) => Some(e.to_string()),
        })
    }

    /// What still keeps the component from being down, or `None` when it is down.
    fn still_up(&self, argv: &[String], ports: &[(String, u16)]) -> Option<String> {
        let pids = find_processes(argv);
        if !pids.is_empty() {
            return Some(format!(
                "waiting for {} (pid {}) to exit",
                self.label(),
                join(&pids)
            ));
        }
        let open: Vec<String> = ports
            .iter()
            .filter(|(h, p)| listening(h, *p))
            .map(|(h, p)| format!("{h}:{p}"))
            .collect();
        (!open.is_empty()).then(|| format!("waiting for {} to close", open.join(", ")))
    }

    /// What still keeps the component from being up, or `None` when it is up.
    fn not_up(&self, command: &PodCommand, ports: &[(String, u16)]) -> Result<Option<String>> {
        let pids = find_processes(&command.argv);
        if pids.is_empty() {
            return Ok(Some(format!(
                "waiting for the kubelet to start {}",
                self.label()
            )));
        }
        let closed: Vec<String> = ports
            .iter()
            .filter(|(h, p)| !listening(h, *p))
            .map(|(h, p)| format!("{h}:{p}"))
            .collect();
        if !closed.is_empty() {
            return Ok(Some(format!(
                "waiting for {} (pid {}) to listen on {}",
                self.label(),
                join(&pids),
                closed.join(", ")
            )));
        }
        Ok(self
            .readyz(command)?
            .map(|why| format!("waiting for /readyz: {why}")))
    }
}

fn join(pids: &[u32]) -> String {
    pids.iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Polls `check` until it returns `None`, reporting its message every few seconds.
fn wait(
    timeout: Duration,
    progress: Progress<'_>,
    mut check: impl FnMut() -> Result<Option<String>>,
) -> Result<std::result::Result<Duration, String>> {
    let start = Instant::now();
    let mut last_report: Option<(Instant, String)> = None;
    loop {
        let Some(why) = check()? else {
            return Ok(Ok(start.elapsed()));
        };
        if start.elapsed() >= timeout {
            return Ok(Err(why));
        }
        let due = last_report
            .as_ref()
            .is_none_or(|(at, msg)| *msg != why || at.elapsed() >= REPORT_EVERY);
        if due {
            progress(why.clone());
            last_report = Some((Instant::now(), why));
        }
        std::thread::sleep(POLL);
    }
}

impl Runtime for StaticPod {
    fn kind(&self) -> &'static str {
        "static-pod"
    }

    fn definition(&self) -> &Path {
        &self.manifest
    }

    fn is_running(&self, aside: Option<&Path>) -> bool {
        self.command(aside)
            .is_ok_and(|c| !find_processes(&c.argv).is_empty())
    }

    fn stop(&self, aside: &Path, progress: Progress<'_>) -> Result<String> {
        let file = self.file_name();
        if fsutil::exists(&self.manifest) {
            progress(format!("moving {file} out of the manifests dir"));
        }
        move_manifest(&self.manifest, aside)?;
        let command = PodCommand::load(aside)?;
        let ports = self.ports(&command)?;
        let waited = wait(self.stop_timeout, progress, || {
            Ok(self.still_up(&command.argv, &ports))
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
        let command = PodCommand::load(&self.manifest)?;
        let ports = self.ports(&command)?;
        let waited = wait(self.start_timeout, progress, || {
            self.not_up(&command, &ports)
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
