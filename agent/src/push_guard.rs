//! What a snapshot push must satisfy before a byte of it is written: this member is claimed by
//! the push's restore (the claim done and journaled here, not reverted, the restore not ended),
//! and the announced size fits in the state dir's filesystem with the reserve left free. A
//! refused push changes nothing.

use quorate_proto::model::{RestoreId, Step};

use crate::engine::{Engine, refuse_after_revert};
use crate::error::{AgentError, Result};
use crate::fsutil;
use crate::journal::{Journal, Op, StepState};
use crate::snapshot::human;

/// Who this member is in messages.
fn who(engine: &Engine) -> String {
    engine
        .member(None)
        .map_or_else(|_| "this member".into(), |m| m.name)
}

/// The journal of restore `id` when this member is claimed by it and the restore is live here;
/// else a refusal (FailedPrecondition) saying why and what to do.
pub fn claimed(engine: &Engine, id: RestoreId) -> Result<Journal> {
    match engine.state.active()? {
        Some(held) if held != id => {
            return Err(AgentError::LockedByOther {
                member: who(engine),
                held,
                wanted: id,
            });
        }
        Some(_) => {}
        None => {
            return Err(AgentError::Precondition(format!(
                "{} is not claimed by restore {id} (no restore holds it): a snapshot is accepted \
                 only for the restore that claimed this member; `quorate restore` claims every \
                 member before it pushes, `quorate resume {id}` continues a restore that did",
                who(engine)
            )));
        }
    }
    let journal = engine.state.load(id)?;
    let claim = journal.steps.get(&Step::Claim);
    if !claim.is_some_and(|r| r.op == Op::Run && r.state == StepState::Done) {
        return Err(AgentError::Precondition(format!(
            "the claim of {} by restore {id} is not complete in its journal ({}): run the claim \
             step again with `quorate resume {id}` before pushing",
            who(engine),
            claim.map_or("never ran", |r| r.state.name())
        )));
    }
    if journal.steps.contains_key(&Step::Finish) {
        return Err(AgentError::Precondition(format!(
            "restore {id} has finished on {}: it takes no snapshot any more; start a new restore",
            who(engine)
        )));
    }
    refuse_after_revert(&journal, &who(engine))?;
    Ok(journal)
}

/// Refuses a snapshot of `size` bytes that would leave less than the reserve free on the state
/// dir's filesystem.
pub fn room(engine: &Engine, id: RestoreId, size: u64) -> Result<()> {
    let root = engine.state.root();
    let (free, total) = fsutil::space(root)?;
    let reserve = engine.runner.limits.stage_reserve(total);
    if size.saturating_add(reserve) <= free {
        return Ok(());
    }
    Err(AgentError::Precondition(format!(
        "{} has no room for the snapshot of restore {id}: it announces {} ({size} bytes), the \
         filesystem of the state dir {} has {} free and {} of it stays free as a reserve \
         ([limits] stage_reserve_mib): nothing was written; free space there or move state_dir \
         to a larger filesystem, then `quorate resume {id}`",
        who(engine),
        human(size),
        root.display(),
        human(free),
        human(reserve)
    )))
}
