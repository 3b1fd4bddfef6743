//! The end of a rollback: once the engine has undone every phase begun (newest first, the original
//! etcd back in quorum order, then the apiservers), the original cluster is verified: its cluster
//! and member IDs, and one HashKV on every member.

use std::time::{Duration, Instant};

use quorate_proto::model::RestoreId;
use serde::{Deserialize, Serialize};

use crate::agent_client::AgentClient;
use crate::progress::{PhaseTiming, Progress};
use crate::restore::{ClusterProbe, Restore};
use crate::verify::Verified;

/// What a rollback did; written as `rollback.json` beside the journal.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RollbackReport {
    pub restore_id: RestoreId,
    pub reverted: Vec<PhaseTiming>,
    pub cluster_id: u64,
    pub original: Verified,
    pub total_seconds: f64,
}

impl<C: AgentClient, P: ClusterProbe> Restore<'_, C, P> {
    /// The original cluster is back: same cluster and member IDs as before the restore, and every
    /// member agrees (HashKV at one revision).
    pub(crate) async fn verify_original(&self, progress: &Progress) -> Result<Verified, String> {
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
