//! What `restore`, `resume`, `rollback` and `status` do, given a plan and its journal.

use std::fmt::Write as _;

use futures::future::join_all;
use serde::Serialize;

use quorate_proto::model::{Describe, Step, StepState};

use crate::agent_client::AgentClient;
use crate::journal::{Holder, Journal};
use crate::phases::Phase;
use crate::progress::Progress;
use crate::restore::{ClusterProbe, Report, Restore, RestoreError};
use crate::rollback::RollbackReport;

/// How a run ended.
#[derive(Debug)]
pub enum Ending {
    /// Every phase done: the cluster runs on the snapshot's data.
    Restored(Report),
    /// A phase failed and every member is back on its original data.
    RolledBack {
        error: RestoreError,
        rollback: RollbackReport,
    },
    /// A phase failed and rollback was not asked for, or could not complete.
    Stopped {
        error: RestoreError,
        rollback_error: Option<String>,
    },
    /// A phase after VERIFY failed: every member holds the verified snapshot data, which is
    /// never thrown away automatically; `resume` completes the restore.
    PastNoReturn { error: RestoreError },
}

/// Carries a restore forward from where its journal stands; on failure rolls back when asked.
pub async fn forward<C: AgentClient, P: ClusterProbe>(
    restore: &Restore<'_, C, P>,
    journal: &mut Journal,
    progress: &mut Progress,
    auto_rollback: bool,
) -> Ending {
    match restore.run(journal, progress).await {
        Ok(report) => Ending::Restored(report),
        // The point of no return: once VERIFY has passed, the cluster runs on the restored,
        // verified data, and the apiservers may already serve from it.
        Err(error) if progress.past_no_return() => Ending::PastNoReturn { error },
        Err(error) if auto_rollback => {
            if let Err(refused) = restore.may_roll_back(progress, false) {
                return Ending::Stopped {
                    error,
                    rollback_error: Some(refused.to_string()),
                };
            }
            restore
                .observer
                .note(&format!("{error}\nrolling back every member"));
            match restore.rollback(journal, progress, false).await {
                Ok(rollback) => Ending::RolledBack { error, rollback },
                Err(e) => Ending::Stopped {
                    error,
                    rollback_error: Some(e.to_string()),
                },
            }
        }
        Err(error) => Ending::Stopped {
            error,
            rollback_error: None,
        },
    }
}

/// One member's state as its agent reports it now.
#[derive(Debug, Clone, Serialize)]
pub struct MemberStatus {
    pub name: String,
    pub agent: String,
    pub reachable: bool,
    pub error: String,
    pub active_restore_id: String,
    pub last_step: String,
    pub last_step_state: String,
    pub etcd_running: bool,
    pub apiserver_running: bool,
}

/// Where a restore stands: from the journal and from every agent.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub restore_id: String,
    pub progress: Progress,
    /// The coordinator driving the restore now, if one is.
    pub held_by: Option<Holder>,
    pub members: Vec<MemberStatus>,
    pub next: String,
}

pub async fn status<C: AgentClient>(
    restore_id: &str,
    progress: Progress,
    held_by: Option<Holder>,
    names: &[(String, String)],
    agents: &[C],
) -> Status {
    let described = join_all(
        agents
            .iter()
            .map(|a| a.describe(std::time::Duration::from_secs(5))),
    )
    .await;
    let members: Vec<MemberStatus> = names
        .iter()
        .zip(described)
        .map(|((name, agent), d)| match d {
            Ok(d) => MemberStatus {
                name: name.clone(),
                agent: agent.clone(),
                reachable: true,
                error: String::new(),
                active_restore_id: d.active_restore_id.clone(),
                last_step: last_step(&d, |(step, _)| step.name()),
                last_step_state: last_step(&d, |(_, state)| state.name()),
                etcd_running: d.etcd_running,
                apiserver_running: d.apiserver_running,
            },
            Err(e) => MemberStatus {
                name: name.clone(),
                agent: agent.clone(),
                reachable: false,
                error: e.to_string(),
                active_restore_id: String::new(),
                last_step: String::new(),
                last_step_state: String::new(),
                etcd_running: false,
                apiserver_running: false,
            },
        })
        .collect();
    let mut next = next_step(restore_id, &progress, &members);
    if let Some(h) = &held_by {
        next = format!("a coordinator is driving it now ({h}): wait for it; then {next}");
    }
    Status {
        restore_id: restore_id.to_owned(),
        progress,
        held_by,
        members,
        next,
    }
}

/// A name from the member's last step and its state; empty when it has none.
fn last_step(d: &Describe, name: impl Fn((Step, StepState)) -> &'static str) -> String {
    d.active
        .and_then(|a| a.last)
        .map(name)
        .unwrap_or_default()
        .to_owned()
}

fn next_step(id: &str, p: &Progress, members: &[MemberStatus]) -> String {
    let unreachable: Vec<&str> = members
        .iter()
        .filter(|m| !m.reachable)
        .map(|m| m.name.as_str())
        .collect();
    let mut text = if p.rollback_done {
        "rolled back: every member is on its original data; nothing to do".to_owned()
    } else if p.finished() {
        "finished: the cluster runs on the snapshot's data; nothing to do".to_owned()
    } else if p.rollback_begun {
        format!("a rollback began and did not finish: run `quorate rollback {id}` again")
    } else if !p.started {
        format!("nothing was changed yet: `quorate rollback {id}` releases the members")
    } else if p.past_no_return() {
        let at = p.failed.or(p.begun).map_or("verify", Phase::name);
        format!(
            "passed VERIFY, stopped in phase {at}: every member holds the verified snapshot data; `quorate resume {id}` completes the restore (`quorate rollback {id} --force` would lose what was written since)"
        )
    } else {
        let at = p.failed.or(p.begun).map_or("preflight", Phase::name);
        format!(
            "stopped in phase {at}: `quorate resume {id}` carries it forward, `quorate rollback {id}` puts every member back"
        )
    };
    if !unreachable.is_empty() {
        let _ = write!(
            text,
            "; first bring back the agent on {} (its state there is unknown until it answers)",
            unreachable.join(", ")
        );
    }
    text
}

impl Status {
    pub fn render(&self) -> String {
        let p = &self.progress;
        let mut out = String::new();
        let _ = writeln!(out, "restore {}", self.restore_id);
        if let Some(h) = &self.held_by {
            let _ = writeln!(out, "  driven now by {h}");
        }
        let done: Vec<&str> = p.done.iter().map(|ph| ph.name()).collect();
        let _ = writeln!(
            out,
            "  phases done: {}",
            if done.is_empty() {
                "none".into()
            } else {
                done.join(", ")
            }
        );
        if let Some(f) = p.failed {
            let _ = writeln!(out, "  failed in: {}", f.name());
        } else if let Some(b) = p.begun.filter(|b| !p.done.contains(b)) {
            let _ = writeln!(out, "  begun, not finished: {}", b.name());
        }
        if p.rollback_begun {
            let _ = writeln!(
                out,
                "  rollback: {}",
                if p.rollback_done {
                    "done"
                } else {
                    "begun, not finished"
                }
            );
        }
        for m in &self.members {
            if m.reachable {
                let _ = writeln!(
                    out,
                    "  {:<8} agent {}  restore {}  last step {} {}  etcd {}  apiserver {}",
                    m.name,
                    m.agent,
                    if m.active_restore_id.is_empty() {
                        "none"
                    } else {
                        &m.active_restore_id
                    },
                    if m.last_step.is_empty() {
                        "-"
                    } else {
                        &m.last_step
                    },
                    m.last_step_state,
                    if m.etcd_running { "running" } else { "stopped" },
                    if m.apiserver_running {
                        "running"
                    } else {
                        "stopped"
                    },
                );
            } else {
                let _ = writeln!(
                    out,
                    "  {:<8} agent {}  UNKNOWN: {}",
                    m.name, m.agent, m.error
                );
            }
        }
        let _ = writeln!(out, "next: {}", self.next);
        out
    }
}
