//! What "down" and "up" mean, shared by every runtime: the process (found by its command line)
//! is gone and its ports are closed; or it runs, its ports listen and, for the apiserver,
//! `/readyz` answers 200. A runtime's own success report (a moved manifest, systemctl's exit
//! code) is never taken as proof.

use std::time::{Duration, Instant};

use super::{Progress, find_processes_with_env, listening};
use crate::error::{AgentError, Result};
use crate::health::{self, ReadyzConfig};
use crate::manifest::{Apiserver, EtcdMember, PodCommand};

/// How often a wait looks again (a /proc scan and a few connects: cheap).
const POLL: Duration = Duration::from_millis(25);
/// How often a wait repeats its progress message.
const REPORT_EVERY: Duration = Duration::from_secs(5);

/// Which component a runtime controls; decides which ports and probes mean "up".
#[derive(Debug, Clone)]
pub enum Component {
    Etcd,
    /// With how its `/readyz` is probed (CA, client credentials).
    Apiserver {
        readyz: ReadyzConfig,
    },
    /// Another control-plane static pod (kube-controller-manager, kube-scheduler): up means its
    /// process runs.
    Controller {
        name: String,
    },
}

impl Component {
    pub fn label(&self) -> &str {
        match self {
            Component::Etcd => "etcd",
            Component::Apiserver { .. } => "kube-apiserver",
            Component::Controller { name } => name,
        }
    }
}

/// The running form of a component: how to recognise its process and where it listens.
#[derive(Debug, Clone)]
pub struct Target {
    /// The process's exact argv.
    pub argv: Vec<String>,
    /// Variables the process's environment must also hold (tells apart processes with the same
    /// argv, e.g. several etcds configured only through their environment).
    pub env: Vec<(String, String)>,
    /// The effective command line, flags included (for ports and probes).
    pub command: PodCommand,
}

impl Target {
    pub fn pids(&self) -> Result<Vec<u32>> {
        find_processes_with_env(&self.argv, &self.env)
    }

    pub fn ports(&self, component: &Component) -> Result<Vec<(String, u16)>> {
        Ok(match component {
            Component::Etcd => EtcdMember::from_command(self.command.clone())?.ports(),
            Component::Apiserver { .. } => {
                let a = Apiserver::from_command(self.command.clone())?;
                vec![(a.address, a.port)]
            }
            Component::Controller { .. } => Vec::new(),
        })
    }
}

pub fn join(pids: &[u32]) -> String {
    pids.iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Why the apiserver is not ready yet, `None` when `/readyz` answers 200; an error when it
/// cannot be probed at all (no credentials for an apiserver that refuses anonymous requests).
fn readyz(component: &Component, command: &PodCommand) -> Result<Option<String>> {
    let Component::Apiserver { readyz } = component else {
        return Ok(None);
    };
    let probe = health::readyz_probe(readyz, &Apiserver::from_command(command.clone())?)?;
    let answer = health::block_on(health::probe_readyz(&probe)).ok_or_else(|| {
        AgentError::Precondition("probing /readyz needs the agent's runtime".into())
    })?;
    Ok(match answer.status {
        Some(200) => None,
        Some(status) => Some(format!(
            "GET {} answered {status} ({}): {}",
            answer.url, answer.auth, answer.detail
        )),
        None => Some(answer.detail),
    })
}

/// What still keeps the component from being down, or `None` when it is down; an error when
/// its processes or sockets cannot be read.
pub fn still_up(
    component: &Component,
    target: &Target,
    ports: &[(String, u16)],
) -> Result<Option<String>> {
    let pids = target.pids()?;
    if !pids.is_empty() {
        return Ok(Some(format!(
            "waiting for {} (pid {}) to exit",
            component.label(),
            join(&pids)
        )));
    }
    let mut open = Vec::new();
    for (h, p) in ports {
        if listening(h, *p)? {
            open.push(format!("{h}:{p}"));
        }
    }
    Ok((!open.is_empty()).then(|| format!("waiting for {} to close", open.join(", "))))
}

/// What still keeps the component from being up, or `None` when it is up. `starter` names who
/// should start it ("the kubelet", "systemd").
pub fn not_up(
    component: &Component,
    target: &Target,
    ports: &[(String, u16)],
    starter: &str,
) -> Result<Option<String>> {
    let pids = target.pids()?;
    if pids.is_empty() {
        return Ok(Some(format!(
            "waiting for {starter} to start {}",
            component.label()
        )));
    }
    let mut closed = Vec::new();
    for (h, p) in ports {
        if !listening(h, *p)? {
            closed.push(format!("{h}:{p}"));
        }
    }
    if !closed.is_empty() {
        return Ok(Some(format!(
            "waiting for {} (pid {}) to listen on {}",
            component.label(),
            join(&pids),
            closed.join(", ")
        )));
    }
    Ok(readyz(component, &target.command)?.map(|why| format!("waiting for /readyz: {why}")))
}

/// Polls `check` until it returns `None`, reporting its message every few seconds. `Ok(Err(why))`
/// is a timeout with the last reason.
pub fn wait(
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
