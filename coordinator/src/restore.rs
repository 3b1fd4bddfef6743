//! The lockstep restore: each phase ends on every member before the next starts.

use std::future::Future;
use std::time::{Duration, Instant};

use futures::future::join_all;
use quorate_proto::model::{ClusterFacts, RestoreId, Step, StepRequest};
use quorate_proto::tls::TlsFiles;
use serde::{Deserialize, Serialize};

use crate::agent_client::{AgentClient, CallError, Outcome};
use crate::inventory::Inventory;
use crate::journal::{Journal, Line};
use crate::plan::Plan;
use crate::verify::{self, Expect, MemberView, Verified};

/// The phases after preflight, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    Stage,
    Fence,
    Halt,
    Preserve,
    Restore,
    Quorum,
    Verify,
    Unfence,
    Finish,
}

impl Phase {
    pub const ALL: [Phase; 9] = [
        Phase::Stage,
        Phase::Fence,
        Phase::Halt,
        Phase::Preserve,
        Phase::Restore,
        Phase::Quorum,
        Phase::Verify,
        Phase::Unfence,
        Phase::Finish,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Phase::Stage => "stage",
            Phase::Fence => "fence",
            Phase::Halt => "halt",
            Phase::Preserve => "preserve",
            Phase::Restore => "restore",
            Phase::Quorum => "quorum",
            Phase::Verify => "verify",
            Phase::Unfence => "unfence",
            Phase::Finish => "finish",
        }
    }
}

/// The longest one Health call may take while waiting for members to become healthy.
const HEALTH_CALL: Duration = Duration::from_secs(5);

/// Per-phase deadlines.
#[derive(Debug, Clone)]
pub struct Deadlines {
    pub call: Duration,
    pub stop: Duration,
    pub start: Duration,
    pub quorum: Duration,
    /// Bytes per second assumed when scaling the stage and restore deadlines by snapshot size.
    pub min_throughput: u64,
}

impl Default for Deadlines {
    fn default() -> Self {
        Self {
            call: Duration::from_secs(30),
            stop: Duration::from_secs(90),
            start: Duration::from_secs(120),
            quorum: Duration::from_secs(120),
            min_throughput: 20 << 20,
        }
    }
}

impl Deadlines {
    fn for_size(&self, base: Duration, bytes: u64) -> Duration {
        base + Duration::from_secs(bytes / self.min_throughput.max(1))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PhaseTiming {
    pub phase: Phase,
    pub seconds: f64,
}

/// What the restore did; written as `report.json` in the restore's state dir.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub restore_id: RestoreId,
    pub cluster_token: String,
    pub snapshot_sha256: String,
    pub snapshot_revision: Option<i64>,
    /// The live revision preflight saw, and the bump the restore applied (0: none).
    pub revision_before: Option<i64>,
    pub revision_bump: u64,
    /// The snapshot had no sha256 trailer and was restored with `--skip-hash-check`.
    pub skip_hash_check: bool,
    /// Per member, the control-plane components restarted after the restore (so that none acts
    /// on a cache from before it).
    pub restarted: Vec<(String, String)>,
    pub before: Vec<MemberView>,
    pub after: Verified,
    pub phases: Vec<PhaseTiming>,
    pub total_seconds: f64,
    pub preserved_dirs: Vec<(String, String)>,
}

/// A restore that stopped in a phase.
#[derive(Debug, thiserror::Error)]
#[error(
    "restore {restore_id} failed in phase {phase}:\n{}\njournal: {journal}",
    .failures.iter().map(|(m, e)| format!("  - member {m}: {e}")).collect::<Vec<_>>().join("\n")
)]
pub struct RestoreError {
    pub restore_id: RestoreId,
    pub phase: &'static str,
    pub failures: Vec<(String, String)>,
    pub journal: String,
}

/// Something to tell the operator as the restore goes.
pub trait Observer: Sync {
    fn phase_started(&self, phase: Phase, index: usize);
    fn phase_done(&self, phase: Phase, elapsed: Duration);
    fn note(&self, text: &str);
}

/// How the coordinator sees etcd itself through its advertised client URLs: the final
/// verification and each member's identity before the restore. Behind a trait so the phase logic
/// can be unit-tested without etcd. Health while members start is asked of each member's agent
/// (`AgentClient::health`): metrics listeners are often on the member's loopback only.
pub trait ClusterProbe: Sync {
    fn verify(
        &self,
        snapshot_revision: Option<i64>,
    ) -> impl Future<Output = Result<Verified, String>> + Send;
    /// Each member's identity before the restore (best effort: the cluster may be down already).
    fn observe(&self) -> impl Future<Output = Vec<MemberView>> + Send;
}

/// The real probe: etcd-client on each member's advertised client URL.
pub struct EtcdProbe<'a> {
    pub inventory: &'a Inventory,
}

impl ClusterProbe for EtcdProbe<'_> {
    async fn verify(&self, snapshot_revision: Option<i64>) -> Result<Verified, String> {
        let expected: Vec<Expect<'_>> = self
            .inventory
            .members
            .iter()
            .map(|m| Expect {
                name: &m.name,
                peer_urls: &m.peer_urls,
                client_url: &m.client_urls[0],
            })
            .collect();
        verify::verify(
            &expected,
            self.inventory.etcd_tls.as_ref(),
            snapshot_revision,
        )
        .await
    }

    async fn observe(&self) -> Vec<MemberView> {
        let views = self.inventory.members.iter().map(|m| async move {
            let tls: Option<&TlsFiles> = self.inventory.etcd_tls.as_ref();
            tokio::time::timeout(
                Duration::from_secs(3),
                verify::view(&m.name, &m.client_urls[0], tls),
            )
            .await
            .ok()
            .and_then(Result::ok)
        });
        join_all(views).await.into_iter().flatten().collect()
    }
}

pub struct Restore<'a, C: AgentClient, P: ClusterProbe> {
    pub inventory: &'a Inventory,
    pub plan: &'a Plan,
    /// One client per agent in [`Inventory::agents`] order: the members', then the apiserver
    /// hosts'.
    pub agents: &'a [C],
    pub probe: &'a P,
    pub deadlines: Deadlines,
    pub observer: &'a dyn Observer,
}

impl<C: AgentClient, P: ClusterProbe> Restore<'_, C, P> {
    fn request(&self, i: usize, step: Step) -> StepRequest {
        // An apiserver host is named by its host name and has no peer URLs.
        let (name, peer_urls) = match self.inventory.members.get(i) {
            Some(m) => (m.name.clone(), m.peer_urls.clone()),
            None => (self.name_of(i), Vec::new()),
        };
        StepRequest {
            restore_id: self.plan.restore_id,
            step,
            facts: ClusterFacts {
                member_name: name,
                peer_urls,
                initial_cluster: self.plan.initial_cluster.clone(),
                cluster_token: self.plan.cluster_token.clone(),
                snapshot_sha256: self.plan.snapshot.sha256.clone(),
                bump_revision: self.plan.revision.bump,
                mark_compacted: self.plan.revision.bump > 0,
                skip_hash_check: self.plan.skip_hash_check,
            },
        }
    }

    /// Runs `step` on the members `which`, in parallel; retries retryable errors until `deadline`.
    async fn step_on(
        &self,
        which: &[usize],
        step: Step,
        deadline: Duration,
    ) -> Result<Vec<Outcome>, Vec<(String, String)>> {
        self.call_on(which, step, deadline, false).await
    }

    /// Runs or reverts `step` on the members `which`, in parallel, retrying retryable errors
    /// (a dropped connection, an agent restarting) until `deadline`.
    pub(crate) async fn call_on(
        &self,
        which: &[usize],
        step: Step,
        deadline: Duration,
        revert: bool,
    ) -> Result<Vec<Outcome>, Vec<(String, String)>> {
        let started = Instant::now();
        let calls = which.iter().map(|&i| async move {
            let mut backoff = Duration::from_millis(250);
            loop {
                let left = deadline.saturating_sub(started.elapsed());
                let request = self.request(i, step);
                let result = if revert {
                    self.agents[i].revert(request, left).await
                } else {
                    self.agents[i].run(request, left).await
                };
                match result {
                    Ok(o) => return Ok(o),
                    Err(e) if e.is_retryable() && started.elapsed() + backoff < deadline => {
                        tracing::warn!(member = %self.name_of(i), %step, revert, "retrying: {e}");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                    Err(e) => {
                        let what = if revert {
                            format!("reverting {step}")
                        } else {
                            format!("step {step}")
                        };
                        return Err((self.name_of(i), step_error(&what, &e)));
                    }
                }
            }
        });
        let results = join_all(calls).await;
        let failures: Vec<_> = results
            .iter()
            .filter_map(|r| r.as_ref().err().cloned())
            .collect();
        if failures.is_empty() {
            Ok(results.into_iter().filter_map(Result::ok).collect())
        } else {
            Err(failures)
        }
    }

    /// The etcd members.
    pub(crate) fn all(&self) -> Vec<usize> {
        (0..self.inventory.members.len()).collect()
    }

    /// The name of agent `i`: a member's, else an apiserver host's.
    pub(crate) fn name_of(&self, i: usize) -> String {
        let n = self.inventory.members.len();
        match i.checked_sub(n) {
            None => self.inventory.members[i].name.clone(),
            Some(j) => self.inventory.apiservers[j].name.clone(),
        }
    }

    /// The agents a phase's step runs on: every agent for claim, fence, unfence and finish (the
    /// apiserver hosts too); the etcd members for the rest.
    pub(crate) fn targets(&self, phase: Phase) -> Vec<usize> {
        match phase {
            Phase::Stage | Phase::Fence | Phase::Unfence | Phase::Finish => {
                (0..self.inventory.members.len() + self.inventory.apiservers.len()).collect()
            }
            _ => self.all(),
        }
    }

    async fn stage(&self) -> Result<Option<i64>, Vec<(String, String)>> {
        self.step_on(
            &self.targets(Phase::Stage),
            Step::Claim,
            self.deadlines.call,
        )
        .await?;
        let deadline = self
            .deadlines
            .for_size(self.deadlines.call, self.plan.snapshot.size);
        let pushes = self.all().into_iter().map(|i| async move {
            self.agents[i]
                .push_snapshot(self.plan.restore_id, &self.plan.snapshot, deadline)
                .await
                .map_err(|e| {
                    (
                        self.inventory.members[i].name.clone(),
                        format!("staging the snapshot: {e}"),
                    )
                })
        });
        let receipts = join_all(pushes).await;
        let failures: Vec<_> = receipts
            .iter()
            .filter_map(|r| r.as_ref().err().cloned())
            .collect();
        if !failures.is_empty() {
            return Err(failures);
        }
        let revisions: Vec<i64> = receipts
            .into_iter()
            .filter_map(|r| r.ok().map(|r| r.revision))
            .collect();
        Ok(revisions.first().copied().filter(|r| *r > 0))
    }

    /// Asks the agents of `which` for their etcd's health until every one is healthy. What each
    /// member's agent last saw is logged as it changes and named at the deadline.
    pub(crate) async fn wait_healthy(
        &self,
        which: &[usize],
        deadline: Duration,
    ) -> Result<(), Vec<(String, String)>> {
        let started = Instant::now();
        let mut last: Vec<String> = vec![String::new(); which.len()];
        loop {
            let call = HEALTH_CALL.min(
                deadline
                    .saturating_sub(started.elapsed())
                    .max(Duration::from_millis(200)),
            );
            let seen = join_all(which.iter().map(|&i| self.agents[i].health(call))).await;
            let mut waiting = Vec::new();
            for ((k, &i), answer) in which.iter().enumerate().zip(seen) {
                let name = &self.inventory.members[i].name;
                let why = match answer {
                    Ok(h) if h.member_name != *name => format!(
                        "its agent reports the health of member {}, not {name}: fix the inventory or the agent",
                        h.member_name
                    ),
                    Ok(h) if h.healthy() => continue,
                    Ok(h) => h.summary(),
                    Err(e) => format!("its agent did not report health: {e}"),
                };
                if last[k] != why {
                    tracing::info!(member = %name, "waiting: {why}");
                    last[k] = why.clone();
                }
                waiting.push((name.clone(), why));
            }
            if waiting.is_empty() {
                return Ok(());
            }
            if started.elapsed() >= deadline {
                return Err(waiting
                    .into_iter()
                    .map(|(name, why)| {
                        (
                            name,
                            format!(
                                "etcd not healthy after {deadline:?}, as its agent sees it from its host: {why}; see the etcd log on that host"
                            ),
                        )
                    })
                    .collect());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn quorum(&self) -> Result<(), Vec<(String, String)>> {
        let first: Vec<usize> = (0..self.plan.quorum_first.len()).collect();
        let rest: Vec<usize> = (first.len()..self.inventory.members.len()).collect();
        self.step_on(&first, Step::Start, self.deadlines.start)
            .await?;
        self.wait_healthy(&first, self.deadlines.quorum).await?;
        self.observer
            .note(&format!("quorum of {} has a leader", first.len()));
        if !rest.is_empty() {
            self.step_on(&rest, Step::Start, self.deadlines.start)
                .await?;
        }
        self.wait_healthy(&self.all(), self.deadlines.quorum).await
    }

    async fn verify(
        &self,
        snapshot_revision: Option<i64>,
    ) -> Result<Verified, Vec<(String, String)>> {
        let started = Instant::now();
        // Members that just joined may take a moment to apply the last entries.
        loop {
            match self.probe.verify(snapshot_revision).await {
                Ok(v) => return Ok(v),
                Err(e) if started.elapsed() < self.deadlines.call => {
                    tracing::debug!("verify not yet: {e}");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => return Err(vec![("cluster".into(), e)]),
            }
        }
    }

    /// Runs the phases not yet done in `progress` (all of them for a new restore), recording
    /// each transition in the journal first. Stops at the first failing phase.
    pub async fn run(
        &self,
        journal: &mut Journal,
        progress: &mut Progress,
    ) -> Result<Report, RestoreError> {
        let total = Instant::now();
        let journal_path = journal.dir().join("journal.jsonl").display().to_string();
        let fail = |phase: &'static str, failures: Vec<(String, String)>| RestoreError {
            restore_id: self.plan.restore_id,
            phase,
            failures,
            journal: journal_path.clone(),
        };
        let io = |phase: &'static str, e: std::io::Error| {
            fail(
                phase,
                vec![("coordinator".into(), format!("writing the journal: {e}"))],
            )
        };
        if !progress.started {
            progress.before = self.probe.observe().await;
            let data = serde_json::json!({ "before": progress.before });
            journal
                .record_data("preflight", "done", "", Some(data))
                .map_err(|e| io("preflight", e))?;
            progress.started = true;
        }
        for (index, phase) in Phase::ALL.into_iter().enumerate() {
            if progress.done.contains(&phase) {
                continue;
            }
            self.observer.phase_started(phase, index + 1);
            failpoint(&format!("coordinator::before-{}", phase.name()))
                .map_err(|e| fail(phase.name(), vec![("coordinator".into(), e)]))?;
            journal
                .record(phase.name(), "begin", "")
                .map_err(|e| io(phase.name(), e))?;
            progress.begun = Some(phase);
            let started = Instant::now();
            let mut data = None;
            let result = match phase {
                Phase::Stage => self.stage().await.map(|r| {
                    progress.snapshot_revision = r;
                    data = Some(serde_json::json!({ "snapshot_revision": r }));
                }),
                Phase::Quorum => self.quorum().await,
                Phase::Verify => self
                    .verify(expected_revision(
                        progress.snapshot_revision,
                        self.plan.revision.bump,
                    ))
                    .await
                    .map(|v| {
                        data = Some(serde_json::json!({ "verified": v }));
                        progress.verified = Some(v);
                    }),
                Phase::Unfence => {
                    let (step, deadline) = self.step_of(phase);
                    let which = self.targets(phase);
                    self.step_on(&which, step, deadline).await.map(|outcomes| {
                        let names: Vec<String> = which.iter().map(|&i| self.name_of(i)).collect();
                        progress.restarted = restarted(&names, &outcomes);
                        data = Some(serde_json::json!({ "restarted": progress.restarted }));
                    })
                }
                other => {
                    let (step, deadline) = self.step_of(other);
                    self.step_on(&self.targets(other), step, deadline)
                        .await
                        .map(drop)
                }
            };
            let result = result.and_then(|()| {
                failpoint(&format!("coordinator::after-{}", phase.name()))
                    .map_err(|e| vec![("coordinator".into(), e)])
            });
            if let Err(failures) = result {
                let detail = failures
                    .iter()
                    .map(|(m, e)| format!("{m}: {e}"))
                    .collect::<Vec<_>>()
                    .join("; ");
                let _ = journal.record(phase.name(), "failed", &detail);
                progress.failed = Some(phase);
                return Err(fail(phase.name(), failures));
            }
            journal
                .record_data(phase.name(), "done", "", data)
                .map_err(|e| io(phase.name(), e))?;
            progress.done.push(phase);
            self.observer.phase_done(phase, started.elapsed());
            progress.timings.push(PhaseTiming {
                phase,
                seconds: started.elapsed().as_secs_f64(),
            });
        }
        Ok(Report {
            restore_id: self.plan.restore_id,
            cluster_token: self.plan.cluster_token.clone(),
            snapshot_sha256: self.plan.snapshot.sha256.clone(),
            snapshot_revision: progress.snapshot_revision,
            revision_before: self.plan.revision.live_revision,
            revision_bump: self.plan.revision.bump,
            skip_hash_check: self.plan.skip_hash_check,
            restarted: progress.restarted.clone(),
            before: progress.before.clone(),
            after: progress
                .verified
                .clone()
                .expect("the verify phase ran before finish"),
            phases: progress.timings.clone(),
            total_seconds: total.elapsed().as_secs_f64(),
            preserved_dirs: self
                .plan
                .members
                .iter()
                .map(|m| (m.name.clone(), m.preserved_text(self.plan.restore_id)))
                .collect(),
        })
    }

    /// The agent step and deadline of a phase that is one step on every member.
    pub(crate) fn step_of(&self, phase: Phase) -> (Step, Duration) {
        let d = &self.deadlines;
        match phase {
            Phase::Stage => (Step::Claim, d.call),
            Phase::Fence => (Step::Fence, d.stop),
            Phase::Halt => (Step::Halt, d.stop),
            Phase::Preserve => (Step::Preserve, d.call),
            Phase::Restore => (Step::Restore, d.for_size(d.start, self.plan.snapshot.size)),
            Phase::Quorum => (Step::Start, d.start),
            Phase::Unfence => (Step::Unfence, d.start),
            Phase::Verify | Phase::Finish => (Step::Finish, d.call),
        }
    }
}

/// The revision every member must report after the restore: the snapshot's plus the bump.
fn expected_revision(snapshot: Option<i64>, bump: u64) -> Option<i64> {
    snapshot.map(|r| r.saturating_add(i64::try_from(bump).unwrap_or(i64::MAX)))
}

/// A restore's persistent state, rebuilt from its journal after a crash.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Progress {
    pub started: bool,
    pub before: Vec<MemberView>,
    pub snapshot_revision: Option<i64>,
    pub verified: Option<Verified>,
    pub done: Vec<Phase>,
    /// The last phase begun (it may have finished on some members only).
    pub begun: Option<Phase>,
    pub failed: Option<Phase>,
    pub rollback_begun: bool,
    pub rollback_done: bool,
    pub timings: Vec<PhaseTiming>,
    /// Per member, the control-plane components restarted after the apiserver came back.
    #[serde(default)]
    pub restarted: Vec<(String, String)>,
}

/// The controllers each agent's unfence outcome started, and those it could not
/// (`names[i]` answered `outcomes[i]`).
fn restarted(names: &[String], outcomes: &[Outcome]) -> Vec<(String, String)> {
    names
        .iter()
        .zip(outcomes)
        .flat_map(|(name, o)| {
            let d = &o.details;
            let ok = (!d.started.is_empty()).then(|| (name.clone(), d.started.join(",")));
            let failed = (!d.not_started.is_empty()).then(|| {
                let why: Vec<&str> = d.not_started.iter().map(|f| f.message.as_str()).collect();
                (name.clone(), format!("FAILED: {}", why.join("; ")))
            });
            ok.into_iter().chain(failed)
        })
        .collect()
}

impl Progress {
    pub fn from_lines(lines: &[Line]) -> Self {
        let mut p = Progress::default();
        for line in lines {
            let data = line.data.as_ref();
            if line.phase == "preflight" && line.event == "done" {
                p.started = true;
                if let Some(before) = data.and_then(|d| d.get("before")) {
                    p.before = serde_json::from_value(before.clone()).unwrap_or_default();
                }
                continue;
            }
            if let Some(rest) = line.phase.strip_prefix("rollback") {
                p.rollback_begun = true;
                p.rollback_done |= rest.is_empty() && line.event == "done";
                continue;
            }
            let Some(phase) = Phase::ALL.into_iter().find(|ph| ph.name() == line.phase) else {
                continue;
            };
            match line.event.as_str() {
                "begin" => p.begun = Some(phase),
                "failed" => p.failed = Some(phase),
                "done" => {
                    if let Some(r) = data.and_then(|d| d.get("snapshot_revision")) {
                        p.snapshot_revision = r.as_i64();
                    }
                    if let Some(r) = data.and_then(|d| d.get("restarted")) {
                        p.restarted = serde_json::from_value(r.clone()).unwrap_or_default();
                    }
                    if let Some(v) = data.and_then(|d| d.get("verified")) {
                        p.verified = serde_json::from_value(v.clone()).ok();
                    }
                    if !p.done.contains(&phase) {
                        p.done.push(phase);
                    }
                }
                _ => {}
            }
        }
        p
    }

    pub fn finished(&self) -> bool {
        self.done.contains(&Phase::Finish)
    }
}

/// A named failpoint (cargo feature `failpoints`, configured by `FAILPOINTS`): `return(msg)`
/// injects an error; `sleep(ms)` holds the coordinator there (tests kill it to simulate a crash);
/// `panic` aborts it. Release builds contain none.
pub fn failpoint(name: &str) -> Result<(), String> {
    #[cfg(feature = "failpoints")]
    if let Some(msg) = fail::eval(name, |arg| arg.unwrap_or_default()) {
        return Err(format!("failpoint {name}: {msg}"));
    }
    let _ = name;
    Ok(())
}

fn step_error(what: &str, e: &CallError) -> String {
    match e {
        CallError::Timeout(d) => format!(
            "{what}: no answer within {d:?}; its state is unknown: check the agent, then `quorate status`"
        ),
        other => format!("{what}: {other}"),
    }
}

#[cfg(test)]
#[path = "restore_tests.rs"]
mod tests;
