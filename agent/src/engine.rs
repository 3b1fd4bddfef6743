//! Runs one step on this member: checks, journal intent, act, journal result.
//!
//! A step request is first *prepared* (validated against this member, the lock and the journal;
//! nothing changes on a refusal, which the caller sees as a gRPC error) and then *performed* (the
//! intent is journaled, the step acts, the result is journaled; a failure here is an outcome with
//! `ok = false` and is recorded as `failed`).

use std::path::PathBuf;

use quorate_proto::model::{OutcomeDetails, RestoreId, Step, StepOutcome, StepRequest};

use crate::error::{AgentError, Result};
use crate::journal::{Journal, Op, StateDir, StepState};
use crate::manifest::EtcdMember;
use crate::runtime::{Progress, Runtime};
use crate::steps;
use crate::tool::RestoreTool;

/// The outcome of a step, as reported to the coordinator.
pub type Outcome = StepOutcome;

/// Everything the agent acts on: its state dir, the runtimes and the restore tool.
pub struct Engine {
    pub state: StateDir,
    /// `etcd.data_dir` from the config; `None` = `--data-dir` of the manifest.
    pub data_dir: Option<PathBuf>,
    /// `None` on an apiserver-only host (external etcd): it answers to `host_name` and refuses
    /// every etcd step.
    pub etcd: Option<Box<dyn Runtime>>,
    pub apiserver: Option<Box<dyn Runtime>>,
    /// kube-controller-manager and kube-scheduler, stopped with the kube-apiserver and started
    /// after it is ready, each where present; none without a kube-apiserver.
    pub controllers: Vec<Controller>,
    pub tool: Box<dyn RestoreTool>,
    /// The name an apiserver-only host answers to (the inventory's `[[apiserver]]` name).
    pub host_name: String,
    /// Runs child processes under the `[limits]` deadlines (the tool and the runtimes hold
    /// their own copies).
    pub runner: crate::child::Runner,
    /// The keys trusted to sign snapshots (`trusted_snapshot_keys`); none: not required.
    pub trust: crate::signing::Trust,
}

/// A control-plane component stopped and started with the kube-apiserver.
pub struct Controller {
    /// "kube-controller-manager", "kube-scheduler": its key in the journal and in outcomes.
    pub name: String,
    pub runtime: Box<dyn Runtime>,
}

/// A checked request, ready to act.
pub struct Plan {
    pub req: StepRequest,
    pub op: Op,
    pub journal: Journal,
    /// This etcd member; `None` on an apiserver-only host.
    pub member: Option<EtcdMember>,
    /// Who this host is in messages: the member's name, or the apiserver-only host's.
    pub name: String,
    /// The member's data dir; empty on an apiserver-only host, where no step touches it.
    pub data_dir: PathBuf,
}

impl Plan {
    /// This etcd member; refused on an apiserver-only host.
    pub fn etcd_member(&self) -> Result<&EtcdMember> {
        self.member.as_ref().ok_or_else(|| not_a_member(&self.name))
    }
}

/// Asking an apiserver-only host for its etcd member.
pub(crate) fn not_a_member(name: &str) -> AgentError {
    AgentError::Precondition(format!(
        "{name} is an apiserver-only host: it runs no etcd member"
    ))
}

pub enum Prepared {
    /// Nothing to do: the recorded outcome (or "never ran" for a revert).
    Answer(Outcome),
    Act(Box<Plan>),
}

impl Engine {
    /// etcd's runtime; refused on an apiserver-only host.
    pub fn etcd(&self) -> Result<&dyn Runtime> {
        self.etcd.as_deref().ok_or_else(|| {
            AgentError::Precondition(format!(
                "{} is an apiserver-only host (its agent config has no [etcd] section): it runs no \
                 etcd member; list it as an [[apiserver]] host in the inventory",
                self.host_name
            ))
        })
    }

    /// True when this host runs no etcd member.
    pub fn apiserver_only(&self) -> bool {
        self.etcd.is_none()
    }

    /// Where the etcd manifest waits while etcd is stopped for restore `id`.
    pub fn etcd_aside(&self, id: RestoreId) -> Result<PathBuf> {
        Ok(self.state.manifest_aside(id, self.etcd()?.definition()))
    }

    pub fn apiserver_aside(&self, id: RestoreId) -> Option<PathBuf> {
        self.apiserver
            .as_ref()
            .map(|a| self.state.manifest_aside(id, a.definition()))
    }

    /// What etcd's definition says about this member: its manifest in the manifests dir or set
    /// aside by restore `id` (or by the restore holding the lock), or its systemd unit.
    pub fn member(&self, id: Option<RestoreId>) -> Result<EtcdMember> {
        let etcd = self.etcd()?;
        let asides: Vec<PathBuf> = [id, self.state.active()?]
            .into_iter()
            .flatten()
            .map(|id| self.state.manifest_aside(id, etcd.definition()))
            .collect();
        let command = etcd.command(&asides).map_err(|e| match e {
            AgentError::Precondition(m) => AgentError::Precondition(format!("etcd: {m}")),
            other => other,
        })?;
        EtcdMember::from_command(command)
    }

    pub fn data_dir_of(&self, member: &EtcdMember) -> PathBuf {
        self.data_dir
            .clone()
            .unwrap_or_else(|| member.data_dir.clone())
    }

    /// Prepares and performs a step (what the service does, in one call).
    pub fn execute(&self, req: &StepRequest, op: Op, progress: Progress<'_>) -> Result<Outcome> {
        match self.prepare(req, op)? {
            Prepared::Answer(o) => Ok(o),
            Prepared::Act(plan) => Ok(self.perform(*plan, progress)),
        }
    }

    /// Checks a request against this member, its lock and its journal. Changes nothing.
    pub fn prepare(&self, req: &StepRequest, op: Op) -> Result<Prepared> {
        let (member, name) = if self.apiserver_only() {
            steps::refuse_on_apiserver_host(req, &self.host_name)?;
            check_host_identity(req, &self.host_name)?;
            (None, self.host_name.clone())
        } else {
            let member = self.member(Some(req.restore_id))?;
            check_identity(req, &member)?;
            let name = member.name.clone();
            (Some(member), name)
        };
        let journal = self.state.load(req.restore_id)?;
        let (step, id) = (req.step, req.restore_id);
        if op == Op::Run {
            refuse_after_revert(&journal, &name)?;
        }
        if let Some(rec) = journal.steps.get(&step) {
            let finished = match op {
                Op::Run => rec.state == StepState::Done,
                Op::Revert => rec.state == StepState::Reverted,
            };
            if finished {
                return Ok(Prepared::Answer(Outcome {
                    replayed: true,
                    details: rec.details.clone(),
                    ..Outcome::ok(rec.message.clone())
                }));
            }
        }
        let active = self.state.active()?;
        // Claim takes the lock; a finish that began (and released it) before the agent
        // restarted may run again.
        let lock_free_ok = step == Step::Claim
            || (step == Step::Finish && op == Op::Run && journal.steps.contains_key(&Step::Finish));
        match active {
            Some(held) if held != id => {
                return Err(AgentError::LockedByOther {
                    member: name,
                    held,
                    wanted: id,
                });
            }
            None if !lock_free_ok => {
                return Err(AgentError::Precondition(format!(
                    "member {} is not claimed by restore {id}: run the claim step first (or the \
                     restore has finished here)",
                    name
                )));
            }
            _ => {}
        }
        if op == Op::Revert && !journal.steps.contains_key(&step) {
            return Ok(Prepared::Answer(Outcome::ok(format!(
                "nothing to revert: {step} never ran on {name} for restore {id}"
            ))));
        }
        let data_dir = member
            .as_ref()
            .map(|m| self.data_dir_of(m))
            .unwrap_or_default();
        let plan = Plan {
            req: req.clone(),
            op,
            journal,
            member,
            name,
            data_dir,
        };
        steps::precheck(self, &plan)?;
        Ok(Prepared::Act(Box::new(plan)))
    }

    /// Journals the intent, acts, journals the result.
    pub fn perform(&self, plan: Plan, progress: Progress<'_>) -> Outcome {
        let Plan {
            req,
            op,
            mut journal,
            member,
            name,
            data_dir,
        } = plan;
        let (intent, done) = match op {
            Op::Run => (StepState::Running, StepState::Done),
            Op::Revert => (StepState::Reverting, StepState::Reverted),
        };
        let verb = if op == Op::Run {
            "running"
        } else {
            "reverting"
        };
        journal.record(
            req.step,
            op,
            intent,
            format!("{verb} {}", req.step),
            Some(OutcomeDetails::default()),
        );
        if let Err(e) = self.state.save(&journal) {
            return failed(&e, "journaling the intent failed; nothing was done");
        }
        let mut ctx = steps::Ctx {
            engine: self,
            req: &req,
            journal,
            member,
            name,
            data_dir,
            progress,
        };
        let tag = match op {
            Op::Run => req.step.name().to_owned(),
            Op::Revert => format!("revert-{}", req.step.name()),
        };
        let result = failpoint(&format!("agent::before-{tag}"))
            .and_then(|()| steps::act(&mut ctx, op))
            .and_then(|done| failpoint(&format!("agent::after-{tag}")).map(|()| done));
        let mut journal = ctx.journal;
        let (state, message, details) = match result {
            Ok(done_) => (done, done_.message, done_.details),
            Err(e) => {
                tracing::warn!(step = %req.step, ?op, "step failed: {e}");
                let details = OutcomeDetails::failed(e.error_code());
                (StepState::Failed, e.to_string(), details)
            }
        };
        journal.record(req.step, op, state, message.clone(), Some(details.clone()));
        if let Err(e) = self.state.save(&journal) {
            return failed(&e, &format!("{message}; but journaling the result failed"));
        }
        Outcome {
            ok: state != StepState::Failed,
            message,
            replayed: false,
            details,
        }
    }
}

/// A restore whose rollback began on this member (any step reverting, reverted, or whose revert
/// failed) never goes forward again, not even as a replay: two coordinators on one restore (a
/// rollback in one terminal, a `resume` in another) must not undo each other. A rollback reverts
/// phases newest first, so it never needs a forward step after a revert.
pub(crate) fn refuse_after_revert(journal: &Journal, name: &str) -> Result<()> {
    let reverts = || journal.steps.iter().filter(|(_, r)| r.op == Op::Revert);
    // The latest revert: the step changed last when it is one, else the newest by time.
    let latest = reverts()
        .find(|(s, _)| Some(**s) == journal.last)
        .or_else(|| reverts().max_by_key(|(_, r)| r.at));
    let Some((step, rec)) = latest else {
        return Ok(());
    };
    let id = journal.restore_id;
    let what = match rec.state {
        StepState::Failed => format!("the revert of {step} failed"),
        state => format!("{step} {}", state.name()),
    };
    Err(AgentError::Precondition(format!(
        "restore {id} began rolling back on {name} ({what}): it cannot go forward again; finish \
         the rollback with `quorate rollback {id}`"
    )))
}

/// A named failpoint (cargo feature `failpoints`, configured by `FAILPOINTS`; see
/// docs/failpoints.md): `return(msg)` fails the step there; `sleep(ms)` holds the agent there
/// (tests kill it to simulate a crash). Release builds contain none.
fn failpoint(name: &str) -> Result<()> {
    #[cfg(all(feature = "failpoints", debug_assertions))]
    if let Some(msg) = fail::eval(name, |arg| arg.unwrap_or_default()) {
        return Err(AgentError::Injected(format!("failpoint {name}: {msg}")));
    }
    let _ = name;
    Ok(())
}

fn failed(e: &AgentError, context: &str) -> Outcome {
    Outcome::failed(e.error_code(), format!("{context}: {e}"))
}

/// The coordinator's idea of this member must match the manifest: a restore with the wrong name
/// starts silently with it.
fn check_identity(req: &StepRequest, member: &EtcdMember) -> Result<()> {
    let facts = &req.facts;
    if facts.member_name != member.name {
        return Err(AgentError::InvalidRequest(format!(
            "the request is for member {:?} but this member's {} says --name={}: fix the inventory",
            facts.member_name, member.command.source, member.name
        )));
    }
    let mut want = facts.peer_urls.clone();
    let mut have = member.peer_urls.clone();
    want.sort();
    have.sort();
    if want != have {
        return Err(AgentError::InvalidRequest(format!(
            "the request gives member {} peer URLs {} but its {} says \
             --initial-advertise-peer-urls={}: fix the inventory",
            member.name,
            facts.peer_urls.join(","),
            member.command.source,
            member.peer_urls.join(",")
        )));
    }
    Ok(())
}

/// An apiserver-only host answers to its own name, and has no peer URLs to match.
fn check_host_identity(req: &StepRequest, host_name: &str) -> Result<()> {
    let facts = &req.facts;
    if facts.member_name != host_name {
        return Err(AgentError::InvalidRequest(format!(
            "the request is for {:?} but this apiserver-only host is {host_name:?} (its agent's \
             host_name, else its hostname): fix the inventory's [[apiserver]] name or the agent's \
             host_name",
            facts.member_name
        )));
    }
    if !facts.peer_urls.is_empty() {
        return Err(AgentError::InvalidRequest(format!(
            "the request gives {host_name} etcd peer URLs {}, but it is an apiserver-only host: \
             list it as an [[apiserver]] host, not a [[member]], in the inventory",
            facts.peer_urls.join(",")
        )));
    }
    Ok(())
}
