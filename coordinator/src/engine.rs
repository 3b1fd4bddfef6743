//! The one loop that drives a restore forward (restore, resume) and backward (rollback), phase by
//! phase from the table in `phases.rs`: journal the beginning, act on every member, journal the
//! end. Each phase ends on every member before the next begins.

use std::time::{Duration, Instant};

use crate::agent_client::AgentClient;
use crate::failure::{FailureKind, Failures, MemberFailure};
use crate::journal::{Entry, Journal, PhaseFacts};
use crate::phases::{Action, Phase};
use crate::progress::{PhaseTiming, Progress};
use crate::restore::{ClusterProbe, Report, Restore, RestoreError, failpoint, report};
use crate::rollback::RollbackReport;

/// Which way the loop walks the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Forward,
    Backward,
}

/// Why a rollback is refused before anything is reverted.
#[derive(Debug, thiserror::Error)]
pub enum RollbackRefused {
    #[error(
        "restore {id} passed VERIFY: every member holds the snapshot's data, verified, and the cluster may be serving from it. A rollback would lose every write since then. `quorate resume {id}` completes the restore; `quorate rollback {id} --force` rolls it back anyway"
    )]
    PastNoReturn { id: String },
    #[error(
        "restore {id} began phase {phase}, which rolls forward only (members may be released already): `quorate resume {id}` completes it; the original data dirs are kept at <data-dir>.quorate-{id}"
    )]
    ForwardOnly { id: String, phase: Phase },
    #[error(
        "restore {id} finished: the cluster runs on the snapshot's data and the original data dirs are kept at <data-dir>.quorate-{id}; quorate does not undo a finished restore"
    )]
    Finished { id: String },
}

impl<C: AgentClient, P: ClusterProbe> Restore<'_, C, P> {
    /// Runs the phases not yet done (all of them for a new restore), journaling each transition
    /// first. Stops at the first failing phase.
    pub async fn run(
        &self,
        journal: &mut Journal,
        progress: &mut Progress,
    ) -> Result<Report, RestoreError> {
        let total = Instant::now();
        if !progress.started {
            progress.before = self.probe.observe().await;
            journal
                .record(Entry::Preflight {
                    before: progress.before.clone(),
                })
                .map_err(|e| self.journal_error(journal, "preflight", &e))?;
            progress.started = true;
        }
        self.walk(journal, progress, Direction::Forward).await?;
        let after = progress.verified.clone().ok_or_else(|| RestoreError {
            restore_id: self.plan.restore_id,
            phase: "finish".into(),
            failures: vec![MemberFailure::coordinator(
                "every phase is done but the journal holds no verified cluster",
            )],
            journal: journal.path().display().to_string(),
        })?;
        Ok(report(self, progress, after, total.elapsed()))
    }

    /// Whether a rollback may begin: refused after FINISH began (it rolls forward only), and
    /// after VERIFY unless `force`.
    pub fn may_roll_back(&self, progress: &Progress, force: bool) -> Result<(), RollbackRefused> {
        let id = self.plan.restore_id.to_string();
        if progress.finished() {
            return Err(RollbackRefused::Finished { id });
        }
        if let Some(phase) = progress
            .to_undo()
            .into_iter()
            .find(|p| p.def().backward == Action::RollForwardOnly)
        {
            return Err(RollbackRefused::ForwardOnly { id, phase });
        }
        if progress.past_no_return() && !progress.rollback_begun && !force {
            return Err(RollbackRefused::PastNoReturn { id });
        }
        Ok(())
    }

    /// Undoes every phase up to the last one begun, newest first, then verifies that the original
    /// cluster is back. Idempotent: a rollback that stopped half-way can be run again. Check
    /// [`Self::may_roll_back`] first.
    pub async fn rollback(
        &self,
        journal: &mut Journal,
        progress: &mut Progress,
        forced: bool,
    ) -> Result<RollbackReport, RestoreError> {
        let total = Instant::now();
        journal
            .record(Entry::RollbackBegin { forced })
            .map_err(|e| self.journal_error(journal, "rollback", &e))?;
        progress.rollback_begun = true;
        let timings_before = progress.timings.len();
        self.walk(journal, progress, Direction::Backward).await?;
        let original = match self.verify_original(progress).await {
            Ok(v) => v,
            Err(e) => {
                let failures = vec![MemberFailure::cluster(e)];
                let _ = journal.record(Entry::RollbackVerifyFailed {
                    failures: failures.clone(),
                });
                return Err(self.error(journal, "rollback:verify".into(), failures));
            }
        };
        journal
            .record(Entry::RollbackDone {
                original: original.clone(),
            })
            .map_err(|e| self.journal_error(journal, "rollback", &e))?;
        progress.rollback_done = true;
        Ok(RollbackReport {
            restore_id: self.plan.restore_id,
            reverted: progress.timings[timings_before.min(progress.timings.len())..].to_vec(),
            cluster_id: original.cluster_id,
            original,
            total_seconds: total.elapsed().as_secs_f64(),
        })
    }

    /// The loop: every phase still to do in `direction`, each journaled, acted on every member,
    /// and journaled again.
    async fn walk(
        &self,
        journal: &mut Journal,
        progress: &mut Progress,
        direction: Direction,
    ) -> Result<(), RestoreError> {
        let phases: Vec<Phase> = match direction {
            Direction::Forward => Phase::ALL
                .into_iter()
                .filter(|p| !progress.done.contains(p))
                .collect(),
            Direction::Backward => progress
                .to_undo()
                .into_iter()
                .filter(|p| !progress.reverted.contains(p))
                .collect(),
        };
        for phase in phases {
            let def = phase.def();
            let (tag, action) = match direction {
                Direction::Forward => (def.name.to_owned(), def.forward),
                Direction::Backward => (format!("rollback:{}", def.name), def.backward),
            };
            // A signal stops the restore between phases (a rollback goes on: see interrupt.rs).
            // Past the point of no return only UNFENCE and FINISH remain, and they are what
            // brings the API back: the restore carries on.
            if let (Direction::Forward, Some(signal), false) = (
                direction,
                crate::interrupt::requested(),
                progress.past_no_return(),
            ) {
                let failures = vec![MemberFailure::new(
                    "coordinator",
                    FailureKind::Interrupted,
                    format!("interrupted by {signal} before phase {phase} began"),
                )];
                return Err(self.failed(
                    journal,
                    progress,
                    (direction, phase, None),
                    tag,
                    failures,
                ));
            }
            match direction {
                Direction::Forward => self.observer.phase_started(phase, phase.index() + 1),
                Direction::Backward => self.observer.revert_started(phase),
            }
            failpoint(&format!("coordinator::before-{tag}")).map_err(|e| {
                self.error(journal, tag.clone(), vec![MemberFailure::coordinator(e)])
            })?;
            let begin = match direction {
                Direction::Forward => Entry::Begin { phase },
                Direction::Backward => Entry::RevertBegin { phase },
            };
            journal
                .record(begin)
                .map_err(|e| self.journal_error(journal, &tag, &e))?;
            if direction == Direction::Forward {
                // The furthest phase begun (see `Progress::from_entries`).
                progress.begun = progress.begun.max(Some(phase));
            }
            let started = Instant::now();
            self.member_times.take();
            let result = self.act(def, action, progress).await.and_then(|facts| {
                // What the phase learnt holds even if what follows fails: a VERIFY that passed
                // puts the restore past the point of no return.
                learn(progress, &facts);
                failpoint(&format!("coordinator::after-{tag}"))
                    .map(|()| facts)
                    .map_err(|e| vec![MemberFailure::coordinator(e)])
            });
            let facts = match result {
                Ok(facts) => facts,
                Err(failures) => {
                    return Err(self.failed(
                        journal,
                        progress,
                        (direction, phase, Some(started.elapsed())),
                        tag,
                        failures,
                    ));
                }
            };
            let done = match direction {
                Direction::Forward => Entry::Done {
                    phase,
                    facts: facts.clone(),
                },
                Direction::Backward => Entry::RevertDone { phase },
            };
            journal
                .record(done)
                .map_err(|e| self.journal_error(journal, &tag, &e))?;
            match direction {
                Direction::Forward => {
                    if !progress.done.contains(&phase) {
                        progress.done.push(phase);
                    }
                    self.observer.phase_done(phase, started.elapsed());
                }
                Direction::Backward => {
                    progress.reverted.push(phase);
                    self.observer.revert_done(phase, started.elapsed());
                }
            }
            progress.timings.push(PhaseTiming {
                phase,
                seconds: started.elapsed().as_secs_f64(),
                members: self.member_times.take(),
            });
        }
        Ok(())
    }

    /// Tells the observer (when the phase began: a signal stops the run before the next one
    /// does), journals a failed phase (best effort: the failure is what matters) and builds its
    /// error. Which way, which phase, and how long it ran if it began.
    fn failed(
        &self,
        journal: &mut Journal,
        progress: &mut Progress,
        (direction, phase, elapsed): (Direction, Phase, Option<Duration>),
        tag: String,
        failures: Failures,
    ) -> RestoreError {
        if let Some(elapsed) = elapsed {
            self.observer
                .phase_failed(phase, direction, elapsed, &failures);
        }
        let entry = match direction {
            Direction::Forward => {
                progress.failed = Some(phase);
                Entry::Failed {
                    phase,
                    failures: failures.clone(),
                }
            }
            Direction::Backward => Entry::RevertFailed {
                phase,
                failures: failures.clone(),
            },
        };
        if let Err(e) = journal.record(entry) {
            tracing::error!("journaling the failure of {tag}: {e}");
        }
        self.error(journal, tag, failures)
    }

    fn error(&self, journal: &Journal, phase: String, failures: Failures) -> RestoreError {
        RestoreError {
            restore_id: self.plan.restore_id,
            phase,
            failures,
            journal: journal.path().display().to_string(),
        }
    }

    fn journal_error(&self, journal: &Journal, phase: &str, e: &std::io::Error) -> RestoreError {
        self.error(
            journal,
            phase.to_owned(),
            vec![MemberFailure::coordinator(format!(
                "writing the journal {}: {e}",
                journal.path().display()
            ))],
        )
    }
}

/// What a phase learnt, into the restore's state.
fn learn(progress: &mut Progress, facts: &PhaseFacts) {
    match facts {
        PhaseFacts::None => {}
        PhaseFacts::Staged { snapshot_revision } => progress.snapshot_revision = *snapshot_revision,
        PhaseFacts::Verified { verified } => progress.verified = Some(verified.clone()),
        PhaseFacts::Unfenced { restarted } => progress.restarted.clone_from(restarted),
    }
}
