//! STAGE's copy: every member claimed, then the snapshot read once and each chunk handed to
//! every member's stream, telling the observer how far each copy got.

use std::time::{Duration, Instant};

use futures::future::join_all;
use quorate_proto::model::Step;

use crate::agent_client::{AgentClient, Chunk};
use crate::failure::{Failures, MemberFailure};
use crate::restore::{ClusterProbe, Observer, Restore, Timer, Way, collect};

/// How much of the snapshot one message carries. Each member's stream holds about one encoded
/// message at a time, so this is what every further member adds to the coordinator's memory.
const CHUNK: usize = 256 * 1024;

/// Chunks queued per member's stream. A chunk is read once and shared by every stream, so at most
/// this many chunks are held however many members there are.
const QUEUED_CHUNKS: usize = 8;

impl<C: AgentClient, P: ClusterProbe> Restore<'_, C, P> {
    /// Claims every agent of `targets` with `claim`, then streams the snapshot to every member:
    /// the file is read once and each chunk handed to every member's stream (a member that
    /// already holds it answers at once and gets no more). Returns the snapshot's revision as the
    /// agents read it.
    pub(crate) async fn stage(
        &self,
        targets: &[usize],
        claim: Step,
        deadline: Duration,
    ) -> Result<Option<i64>, Failures> {
        self.call_on(targets, claim, self.deadlines.call, Way::Run)
            .await?;
        let members = self.members();
        let mut senders = Vec::new();
        let pushes: Vec<_> = members
            .iter()
            .map(|&i| {
                let (tx, rx) = tokio::sync::mpsc::channel::<Chunk>(QUEUED_CHUNKS);
                senders.push(tx);
                async move {
                    let name = self.name_of(i);
                    // The phase's time per member includes its copy, not only its claim.
                    let _timer = Timer {
                        times: &self.member_times,
                        name: name.clone(),
                        started: Instant::now(),
                    };
                    let receipt = self.agents[i]
                        .push_snapshot(self.plan.restore_id, &self.plan.snapshot, rx, deadline)
                        .await
                        .map_err(|e| MemberFailure::call(name.clone(), "staging the snapshot", &e));
                    if receipt.is_ok() {
                        let size = self.plan.snapshot.size;
                        self.observer.staging(&name, size, size);
                    }
                    receipt
                }
            })
            .collect();
        let path = self.plan.snapshot.path.clone();
        let names: Vec<String> = members.iter().map(|&i| self.name_of(i)).collect();
        let progress = StageProgress {
            observer: self.observer,
            names: &names,
            total: self.plan.snapshot.size,
        };
        let (read, receipts) = tokio::join!(fan_out(&path, senders, progress), join_all(pushes));
        let receipts = collect(receipts)?;
        read.map_err(|e| {
            vec![MemberFailure::coordinator(format!(
                "reading the snapshot {}: {e}",
                path.display()
            ))]
        })?;
        Ok(receipts.first().map(|r| r.revision).filter(|r| *r > 0))
    }
}

/// Reads `path` once, in [`CHUNK`] pieces, and hands each piece to every sender still listening;
/// closes them all at the end of the file. A sender whose agent stopped listening (it answered,
/// or failed) is dropped; the rest go on at the pace of the slowest.
async fn fan_out(
    path: &std::path::Path,
    senders: Vec<tokio::sync::mpsc::Sender<Chunk>>,
    progress: StageProgress<'_>,
) -> std::io::Result<()> {
    use tokio::io::AsyncReadExt;
    let mut file = tokio::fs::File::open(path).await?;
    // Each sender with its member's index in `progress.names`.
    let mut senders: Vec<(usize, tokio::sync::mpsc::Sender<Chunk>)> =
        senders.into_iter().enumerate().collect();
    let mut sent: u64 = 0;
    let mut told = Instant::now();
    loop {
        if senders.is_empty() {
            return Ok(());
        }
        if told.elapsed() >= STAGE_PROGRESS_EVERY {
            told = Instant::now();
            for (k, _) in &senders {
                progress
                    .observer
                    .staging(&progress.names[*k], sent, progress.total);
            }
        }
        let mut buf = vec![0u8; CHUNK];
        let mut filled = 0;
        while filled < buf.len() {
            let n = file.read(&mut buf[filled..]).await?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        if filled == 0 {
            return Ok(());
        }
        buf.truncate(filled);
        let chunk = Chunk::from(buf);
        let results = join_all(senders.iter().map(|(_, tx)| tx.send(chunk.clone()))).await;
        let mut kept = Vec::with_capacity(senders.len());
        for (sender, result) in senders.into_iter().zip(results) {
            if result.is_ok() {
                kept.push(sender);
            }
        }
        senders = kept;
        sent += filled as u64;
    }
}

/// How often the stage tells the observer how far each member's copy got.
const STAGE_PROGRESS_EVERY: Duration = Duration::from_millis(200);

/// Whom the stage tells how far each member's copy got.
struct StageProgress<'a> {
    observer: &'a dyn Observer,
    names: &'a [String],
    total: u64,
}
