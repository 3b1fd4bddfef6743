//! A restore's persistent state, rebuilt from its journal's entries.

use serde::{Deserialize, Serialize};

use crate::journal::{Entry, PhaseFacts};
use crate::phases::Phase;
use crate::verify::{MemberView, Verified};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PhaseTiming {
    pub phase: Phase,
    pub seconds: f64,
    /// How long each agent's step of the phase took (its stop, its start, …).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<MemberTiming>,
}

/// One agent's time in a phase.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemberTiming {
    pub member: String,
    pub seconds: f64,
}

/// Where a restore stands.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Progress {
    /// Preflight passed and was journaled.
    pub started: bool,
    pub before: Vec<MemberView>,
    pub snapshot_revision: Option<i64>,
    /// The restored cluster as VERIFY saw it: set once the point of no return is passed.
    pub verified: Option<Verified>,
    pub done: Vec<Phase>,
    /// The furthest phase begun (it may have finished on some members only).
    pub begun: Option<Phase>,
    pub failed: Option<Phase>,
    pub rollback_begun: bool,
    pub rollback_done: bool,
    /// Phases whose revert is done, newest first.
    pub reverted: Vec<Phase>,
    pub timings: Vec<PhaseTiming>,
    /// Per host, the control-plane components started after the apiserver came back.
    pub restarted: Vec<(String, String)>,
}

/// A journal whose entries contradict each other.
#[derive(Debug, thiserror::Error)]
#[error("journal entry {entry}: {what}")]
pub struct Inconsistent {
    /// 1-based, as the line number in journal.jsonl.
    pub entry: usize,
    pub what: String,
}

impl Progress {
    pub fn from_entries(entries: &[Entry]) -> Result<Self, Inconsistent> {
        let mut p = Progress::default();
        let mut last_begun = None;
        for (i, entry) in entries.iter().enumerate() {
            let bad = |what: String| Inconsistent { entry: i + 1, what };
            match entry {
                Entry::Preflight { before } => {
                    p.started = true;
                    p.before.clone_from(before);
                }
                Entry::Begin { phase } => {
                    if !p.started {
                        return Err(bad(format!("{phase} began before preflight was journaled")));
                    }
                    // The furthest phase begun: a journal written before a phase was added to
                    // the table runs that phase on resume after later ones.
                    p.begun = p.begun.max(Some(*phase));
                    last_begun = Some(*phase);
                }
                Entry::Done { phase, facts } => {
                    if last_begun != Some(*phase) {
                        return Err(bad(format!("{phase} done but not begun")));
                    }
                    match (phase, facts) {
                        (Phase::Stage, PhaseFacts::Staged { snapshot_revision }) => {
                            p.snapshot_revision = *snapshot_revision;
                        }
                        (Phase::Verify, PhaseFacts::Verified { verified }) => {
                            p.verified = Some(verified.clone());
                        }
                        (Phase::Unfence, PhaseFacts::Unfenced { restarted }) => {
                            p.restarted.clone_from(restarted);
                        }
                        (Phase::Stage | Phase::Verify | Phase::Unfence, other) => {
                            return Err(bad(format!(
                                "{phase} done without what it learnt (found {other:?})"
                            )));
                        }
                        (_, PhaseFacts::None) => {}
                        (_, other) => {
                            return Err(bad(format!(
                                "{phase} done with facts of another phase: {other:?}"
                            )));
                        }
                    }
                    if !p.done.contains(phase) {
                        p.done.push(*phase);
                    }
                }
                Entry::Failed { phase, .. } => p.failed = Some(*phase),
                Entry::RollbackBegin { .. } => p.rollback_begun = true,
                Entry::RevertBegin { .. } | Entry::RevertFailed { .. } => {
                    if !p.rollback_begun {
                        return Err(bad("a revert before the rollback began".into()));
                    }
                }
                Entry::RevertDone { phase } => {
                    if !p.reverted.contains(phase) {
                        p.reverted.push(*phase);
                    }
                }
                Entry::RollbackVerifyFailed { .. } => {}
                Entry::RollbackDone { .. } => p.rollback_done = true,
            }
        }
        Ok(p)
    }

    pub fn finished(&self) -> bool {
        self.done.contains(&Phase::Finish)
    }

    /// VERIFY passed: every member holds the verified snapshot data. Known from the journal's
    /// VERIFY `done`, or in the run that verified it as soon as it passed.
    pub fn past_no_return(&self) -> bool {
        self.verified.is_some() || self.done.contains(&Phase::point_of_no_return())
    }

    /// The phases a rollback must undo, newest first: every phase up to the last one begun.
    pub fn to_undo(&self) -> Vec<Phase> {
        let reached = self.begun.map_or(0, |b| b.index() + 1);
        Phase::ALL[..reached].iter().rev().copied().collect()
    }
}
