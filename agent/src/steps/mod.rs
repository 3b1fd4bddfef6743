//! What each step does on this member, and its inverse. Every action looks at the actual state
//! first, so repeating a step after a crash mid-way finishes it instead of doing it twice.

use std::path::PathBuf;

use quorate_proto::model::{OutcomeDetails, Step, StepRequest};

use crate::engine::{Engine, Plan};
use crate::error::{AgentError, Result};
use crate::journal::{Journal, ManifestMove, Op, StepState};
use crate::manifest::EtcdMember;

use crate::runtime::{Progress, Runtime};
use crate::snapshot;

pub mod aside;
pub mod down;
mod fence;
pub mod layout;
pub mod prepare;
mod preserve;
mod restore;

pub use fence::CONTROLLERS;

use preserve::{preserve, unpreserve};
pub use preserve::{spots, start_refusal};
use restore::{restore, set_aside_restored};

/// The volatile context of one step.
pub struct Ctx<'a> {
    pub engine: &'a Engine,
    pub req: &'a StepRequest,
    pub journal: Journal,
    /// This etcd member; `None` on an apiserver-only host.
    pub member: Option<EtcdMember>,
    /// Who this host is in messages: the member's name, or the apiserver-only host's.
    pub name: String,
    pub data_dir: PathBuf,
    pub progress: Progress<'a>,
}

/// A step's result.
pub struct Done {
    pub message: String,
    pub details: OutcomeDetails,
}

pub(crate) fn done(message: String) -> Done {
    Done {
        message,
        details: OutcomeDetails::default(),
    }
}

impl Ctx<'_> {
    /// This etcd member; refused on an apiserver-only host (whose etcd steps are refused before
    /// they act, so an etcd step never sees the error).
    pub fn etcd_member(&self) -> Result<&EtcdMember> {
        self.member
            .as_ref()
            .ok_or_else(|| crate::engine::not_a_member(&self.name))
    }

    pub(crate) fn save(&self) -> Result<()> {
        self.engine.state.save(&self.journal)
    }

    pub(crate) fn progress(&self, message: String) {
        tracing::info!("{message}");
        (self.progress)(message);
    }
}

/// The steps an apiserver-only host runs: claim, fence, unfence, finish (and their reverts).
/// Anything that touches etcd is refused there before anything changes.
pub fn refuse_on_apiserver_host(req: &StepRequest, host_name: &str) -> Result<()> {
    match req.step {
        Step::Claim | Step::Fence | Step::Unfence | Step::Finish => Ok(()),
        Step::Prepare | Step::Halt | Step::Preserve | Step::Restore | Step::Start => {
            Err(AgentError::InvalidRequest(format!(
                "step {} touches etcd, and {host_name} is an apiserver-only host (no [etcd] in its \
                 agent config): list it as an [[apiserver]] host, not a [[member]], in the \
                 inventory",
                req.step
            )))
        }
    }
}

/// Whether `step`/`op` needs etcd provably down first: PRESERVE and RESTORE both ways, START
/// forward (except a repeat of a START that began: the etcd it started may be up).
fn needs_etcd_down(plan: &Plan) -> bool {
    match (plan.req.step, plan.op) {
        (Step::Preserve | Step::Restore, _) => true,
        (Step::Start, Op::Run) => plan
            .journal
            .steps
            .get(&Step::Start)
            .is_none_or(|r| r.op != Op::Run),
        _ => false,
    }
}

/// Refusals that change nothing; seen by the caller as a gRPC error.
pub fn precheck(engine: &Engine, plan: &Plan) -> Result<()> {
    let id = plan.req.restore_id;
    if (plan.req.step, plan.op) == (Step::Preserve, Op::Run) {
        let halt = plan.journal.state(Step::Halt);
        if halt != Some(StepState::Done) {
            return Err(AgentError::Precondition(format!(
                "restore {id} has not halted etcd on {} (HALT is {} in this agent's journal): \
                 run the halt step first",
                plan.name,
                halt.map_or("not run", StepState::name)
            )));
        }
    }
    if needs_etcd_down(plan) {
        down::etcd_down(engine, plan)?;
    }
    match (plan.req.step, plan.op) {
        (Step::Claim, Op::Revert) => {
            let live: Vec<String> = plan
                .journal
                .steps
                .iter()
                .filter(|(s, r)| **s != Step::Claim && r.state != StepState::Reverted)
                .map(|(s, r)| format!("{s} ({})", r.state.name()))
                .collect();
            if !live.is_empty() {
                return Err(AgentError::Precondition(format!(
                    "cannot release the lock of restore {id}: {} not reverted yet; revert them first",
                    live.join(", ")
                )));
            }
        }
        (Step::Preserve, Op::Run) if plan.journal.preserved.is_none() => {
            let member = plan.etcd_member()?;
            let layout = layout::Layout::detect(&plan.data_dir, member.wal_dir.as_deref())?;
            let problems = layout.problems();
            if !problems.is_empty() {
                return Err(AgentError::Precondition(format!(
                    "{}: {}",
                    member.name,
                    problems.join("; ")
                )));
            }
        }
        (Step::Preserve, Op::Revert) => {
            if let Some(c) = spots(&plan.journal, id)
                .iter()
                .find_map(aside::Spot::conflict)
            {
                return Err(AgentError::Precondition(c));
            }
        }
        (Step::Claim, Op::Run) => {
            engine.trust.check_claim(
                &plan.name,
                &plan.req.facts.snapshot_sha256,
                plan.req.signature.as_ref(),
            )?;
        }
        (Step::Prepare, Op::Run) => {
            snapshot::staged(&engine.state, id)?;
            check_signed(engine, plan)?;
        }
        (Step::Restore, Op::Run) => {
            snapshot::staged(&engine.state, id)?;
            check_signed(engine, plan)?;
            if plan.journal.state(Step::Preserve) != Some(StepState::Done) {
                return Err(AgentError::Precondition(format!(
                    "restore {id} has not preserved the data dir of {}: run the preserve step first",
                    plan.name
                )));
            }
        }
        (Step::Start, Op::Run) | (Step::Halt, Op::Revert) => {
            let wal_dir = plan.etcd_member()?.wal_dir.as_deref();
            if let Some(why) = start_refusal(&plan.data_dir, wal_dir) {
                return Err(AgentError::Precondition(why));
            }
        }
        _ => {}
    }
    Ok(())
}

/// On a member that requires signatures, the staged snapshot PREPARE and RESTORE use (checked
/// against the request's sha256 as they start) must be the one the claim's signature is for.
fn check_signed(engine: &Engine, plan: &Plan) -> Result<()> {
    let staged = plan.journal.staged.as_ref().map(|s| s.size);
    engine.trust.check_staging(
        &plan.name,
        &plan.journal,
        &plan.req.facts.snapshot_sha256,
        staged,
    )
}

/// Performs `op` of the request's step.
pub fn act(ctx: &mut Ctx<'_>, op: Op) -> Result<Done> {
    let engine = ctx.engine;
    let id = ctx.req.restore_id;
    match (ctx.req.step, op) {
        (Step::Claim, Op::Run) => {
            // Journaled with the outcome: the push, PREPARE and RESTORE check it again.
            ctx.journal.signature = engine.trust.check_claim(
                &ctx.name,
                &ctx.req.facts.snapshot_sha256,
                ctx.req.signature.as_ref(),
            )?;
            engine.state.set_active(id)?;
            Ok(done(format!("{} is claimed by restore {id}", ctx.name)))
        }
        (Step::Claim, Op::Revert) | (Step::Finish, Op::Run) => release(ctx),
        (Step::Finish, Op::Revert) => Ok(done("nothing to undo for finish".into())),
        (Step::Fence, Op::Run) | (Step::Unfence, Op::Revert) => fence::stop(ctx),
        (Step::Fence, Op::Revert) | (Step::Unfence, Op::Run) => fence::start(ctx),
        (Step::Halt, Op::Run) | (Step::Start, Op::Revert) => {
            control(ctx, "etcd", engine.etcd()?, Op::Run)
        }
        (Step::Halt, Op::Revert) | (Step::Start, Op::Run) => {
            control(ctx, "etcd", engine.etcd()?, Op::Revert)
        }
        (Step::Prepare, Op::Run) => prepare::prepare(ctx),
        (Step::Prepare, Op::Revert) => prepare::unprepare(ctx),
        (Step::Preserve, Op::Run) => preserve(ctx),
        (Step::Preserve, Op::Revert) => unpreserve(ctx),
        (Step::Restore, Op::Run) => restore(ctx),
        (Step::Restore, Op::Revert) => set_aside_restored(ctx),
    }
}

fn release(ctx: &mut Ctx<'_>) -> Result<Done> {
    let state = &ctx.engine.state;
    let id = ctx.req.restore_id;
    if state.active()? == Some(id) {
        state.clear_active()?;
    }
    let mut message = format!("{} is no longer claimed by restore {id}", ctx.name);
    // The staged copy holds every Secret of the cluster: it goes when the restore ends here,
    // finished or rolled back.
    snapshot::remove_staged(state, id)?;
    message.push_str("; the staged snapshot copy is deleted");
    let removed = prepare::discard(ctx)?;
    message.push_str(&prepare::removed_note(&removed));
    if ctx.req.step == Step::Finish {
        for spot in spots(&ctx.journal, id) {
            message.push_str(&format!(
                "; the original {} is kept at {}",
                spot.role.name(),
                spot.preserved().display()
            ));
        }
    }
    Ok(done(message))
}

/// `Op::Run` = stop (manifest out), `Op::Revert` = start (manifest back in). The move is
/// journaled under `component` before it is made.
fn control(ctx: &mut Ctx<'_>, component: &str, rt: &dyn Runtime, way: Op) -> Result<Done> {
    control_all(ctx, &[(component, rt)], way)
        .pop()
        .unwrap_or_else(|| Ok(done(String::new())))
}

/// [`control`] for several components at once: every move is journaled first (one save), then
/// each component is stopped or started and waited for in its own thread. The results are in
/// the order of `components`.
fn control_all(
    ctx: &mut Ctx<'_>,
    components: &[(&str, &dyn Runtime)],
    way: Op,
) -> Vec<Result<Done>> {
    let mut asides = Vec::with_capacity(components.len());
    for (component, rt) in components {
        let aside = ctx
            .engine
            .state
            .manifest_aside(ctx.req.restore_id, rt.definition());
        // Journal the move before making it: a restarted agent then knows where to look.
        ctx.journal.manifests.insert(
            (*component).to_owned(),
            ManifestMove {
                home: rt.definition().to_owned(),
                aside: aside.clone(),
                last: way,
            },
        );
        asides.push(aside);
    }
    if let Err(e) = ctx.save() {
        let text = e.to_string();
        let mut errors = vec![Err(e)];
        errors.extend(
            components[1..]
                .iter()
                .map(|_| Err(AgentError::Aborted(text.clone()))),
        );
        return errors;
    }
    let ctx = &*ctx;
    let progress = |m: String| ctx.progress(m);
    let act = |rt: &dyn Runtime, aside: &std::path::Path| {
        let message = match way {
            Op::Run => rt.stop(aside, &progress)?,
            Op::Revert => rt.start(aside, &progress)?,
        };
        Ok(done(message))
    };
    if let [(_, rt)] = components {
        return vec![act(*rt, &asides[0])];
    }
    std::thread::scope(|scope| {
        let running: Vec<_> = components
            .iter()
            .zip(&asides)
            .map(|((_, rt), aside)| scope.spawn(move || act(*rt, aside)))
            .collect();
        running
            .into_iter()
            .zip(components)
            .map(|(thread, (component, _))| {
                thread.join().unwrap_or_else(|_| {
                    Err(AgentError::Aborted(format!(
                        "controlling {component} panicked; run the step again"
                    )))
                })
            })
            .collect()
    })
}
