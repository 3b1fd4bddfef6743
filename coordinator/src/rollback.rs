//! Rollback: every phase begun is reverted on every member, newest first, in lockstep; the
//! original etcd comes back in quorum order, then the apiservers (on the apiserver hosts too);
//! then the original cluster is verified (its cluster and member IDs, and one HashKV on every
//! member).

use std::time::{Duration, Instant};

use quorate_proto::model::RestoreId;
use serde::Serialize;

use crate::agent_client::AgentClient;
use crate::journal::Journal;
use crate::restore::{
    ClusterProbe, Phase, PhaseTiming, Progress, Restore, RestoreError, failpoint,
};
use crate::verify::Verified;

/// What a rollback did; written as `rollback.json` beside the journal.
#[derive(Debug, Clone, Serialize)]
pub struct RollbackReport {
    pub restore_id: RestoreId,
    pub reverted: Vec<PhaseTiming>,
    pub cluster_id: u64,
    pub original: Verified,
    pub total_seconds: f64,
}

impl<C: AgentClient, P: ClusterProbe> Restore<'_, C, P> {
    /// Reverts every phase up to the last one begun. Idempotent: a rollback that stopped half-way
    /// can be run again.
    pub async fn rollback(
        &self,
        journal: &mut Journal,
        progress: &mut Progress,
    ) -> Result<RollbackReport, RestoreError> {
        let total = Instant::now();
        let journal_path = journal.dir().join("journal.jsonl").display().to_string();
        let fail = |phase: &'static str, failures: Vec<(String, String)>| RestoreError {
            restore_id: self.plan.restore_id,
            phase,
            failures,
            journal: journal_path.clone(),
        };
        let io = |e: std::io::Error| {
            fail(
                "rollback",
                vec![("coordinator".into(), format!("writing the journal: {e}"))],
            )
        };
        let reached = progress.begun.map_or(0, |b| {
            Phase::ALL.iter().position(|p| *p == b).map_or(0, |i| i + 1)
        });
        journal.record("rollback", "begin", "").map_err(io)?;
        progress.rollback_begun = true;
        let mut reverted = Vec::new();
        for phase in Phase::ALL[..reached].iter().rev().copied() {
            let name = rollback_name(phase);
            self.observer
                .note(&format!("rolling back {}", phase.name()));
            journal.record(name, "begin", "").map_err(io)?;
            let started = Instant::now();
            let result = match phase {
                Phase::Verify | Phase::Finish => Ok(()),
                Phase::Halt => self.restart_original().await,
                other => {
                    let (step, deadline) = self.step_of(other);
                    self.call_on(&self.targets(other), step, deadline, true)
                        .await
                        .map(drop)
                }
            };
            let result = result.and_then(|()| {
                failpoint(&format!("coordinator::after-{name}"))
                    .map_err(|e| vec![("coordinator".into(), e)])
            });
            if let Err(failures) = result {
                let detail = failures
                    .iter()
                    .map(|(m, e)| format!("{m}: {e}"))
                    .collect::<Vec<_>>()
                    .join("; ");
                let _ = journal.record(name, "failed", &detail);
                return Err(fail(name, failures));
            }
            journal.record(name, "done", "").map_err(io)?;
            reverted.push(PhaseTiming {
                phase,
                seconds: started.elapsed().as_secs_f64(),
            });
        }
        let original = self.verify_original(progress).await.map_err(|e| {
            let _ = journal.record("rollback:verify", "failed", &e);
            fail("rollback:verify", vec![("cluster".into(), e)])
        })?;
        journal.record("rollback", "done", "").map_err(io)?;
        progress.rollback_done = true;
        Ok(RollbackReport {
            restore_id: self.plan.restore_id,
            reverted,
            cluster_id: original.cluster_id,
            original,
            total_seconds: total.elapsed().as_secs_f64(),
        })
    }

    /// Starts the original etcd: a majority together, wait for a leader, then the rest.
    async fn restart_original(&self) -> Result<(), Vec<(String, String)>> {
        let (step, deadline) = self.step_of(Phase::Halt);
        let first: Vec<usize> = (0..self.plan.quorum_first.len()).collect();
        let rest: Vec<usize> = (first.len()..self.inventory.members.len()).collect();
        self.call_on(&first, step, deadline, true).await?;
        self.wait_healthy(&first, self.deadlines.quorum).await?;
        if !rest.is_empty() {
            self.call_on(&rest, step, deadline, true).await?;
        }
        self.wait_healthy(&self.all(), self.deadlines.quorum).await
    }

    /// The original cluster is back: same cluster and member IDs as before the restore, and every
    /// member agrees (HashKV at one revision).
    async fn verify_original(&self, progress: &Progress) -> Result<Verified, String> {
        let started = Instant::now();
        loop {
            let result = self.probe.verify(None).await.and_then(|v| {
                check_identity(progress, &v)?;
                Ok(v)
            });
            match result {
                Ok(v) => return Ok(v),
                Err(e) if started.elapsed() < self.deadlines.call => {
                    tracing::debug!("original cluster not verified yet: {e}");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

fn check_identity(progress: &Progress, v: &Verified) -> Result<(), String> {
    let Some(first) = progress.before.first() else {
        // The cluster did not answer before the restore: nothing to compare with.
        return Ok(());
    };
    if v.cluster_id != first.cluster_id {
        return Err(format!(
            "after rollback the cluster ID is {:x}, before the restore it was {:x}",
            v.cluster_id, first.cluster_id
        ));
    }
    for b in &progress.before {
        match v.members.iter().find(|m| m.name == b.name) {
            Some(m) if m.member_id == b.member_id => {}
            Some(m) => {
                return Err(format!(
                    "member {} has ID {:x} after rollback, {:x} before the restore",
                    b.name, m.member_id, b.member_id
                ));
            }
            None => return Err(format!("member {} is missing after rollback", b.name)),
        }
    }
    Ok(())
}

fn rollback_name(phase: Phase) -> &'static str {
    match phase {
        Phase::Stage => "rollback:stage",
        Phase::Fence => "rollback:fence",
        Phase::Halt => "rollback:halt",
        Phase::Preserve => "rollback:preserve",
        Phase::Restore => "rollback:restore",
        Phase::Quorum => "rollback:quorum",
        Phase::Verify => "rollback:verify",
        Phase::Unfence => "rollback:unfence",
        Phase::Finish => "rollback:finish",
    }
}
