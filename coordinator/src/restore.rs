//! The phases' actions on the members: the agent calls, in parallel with retries, the stage
//! (claim and stream), the start in quorum order (used forward by QUORUM and backward by HALT's
//! undo), the health wait and the verification. The order and the journal are the engine's
//! (`engine.rs`); what each phase does is the table's (`phases.rs`).

use std::future::Future;
use std::time::{Duration, Instant};

use futures::future::join_all;
use quorate_proto::model::{ClusterFacts, RestoreId, Step, StepRequest};
use quorate_proto::tls::TlsFiles;
use serde::{Deserialize, Serialize};

use crate::agent_client::{AgentClient, Outcome};
use crate::failure::{Failures, MemberFailure};
use crate::inventory::Inventory;
use crate::journal::PhaseFacts;
use crate::phases::{Action, Deadlines, Phase, PhaseDef, Targets};
use crate::plan::Plan;
use crate::progress::{MemberTiming, PhaseTiming, Progress};
use crate::verify::{self, Expect, MemberView, Verified};

/// The longest one Health call may take while waiting for members to become healthy.
const HEALTH_CALL: Duration = Duration::from_secs(5);

/// What the restore did; written as `report.json` in the restore's state dir.
#[derive(Debug, Clone, Serialize, Deserialize)]
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

/// A restore (or its rollback) that stopped in a phase.
#[derive(Debug, thiserror::Error)]
#[error(
    "restore {restore_id} failed in {}:\n{}\njournal: {journal}",
    if .phase.starts_with("rollback") { format!("its {}", .phase) } else { format!("phase {}", .phase) },
    .failures.iter().map(|f| format!("  - {f}")).collect::<Vec<_>>().join("\n")
)]
pub struct RestoreError {
    pub restore_id: RestoreId,
    /// The phase (`halt`), or its undo (`rollback:halt`), or `rollback:verify`.
    pub phase: String,
    pub failures: Failures,
    pub journal: String,
}

/// Something to tell the operator as the restore goes.
///
/// The engine tells it every phase's start and end (forward, and backward in a rollback), and
/// every member's step as it starts and ends; the stage tells it how far each member's copy
/// got, the start in quorum order what it waits for. The live view and the event stream are
/// both made from these calls.
pub trait Observer: Sync {
    fn phase_started(&self, phase: Phase, index: usize);
    fn phase_done(&self, phase: Phase, elapsed: Duration);
    fn note(&self, text: &str);
    /// A rollback begins undoing `phase`.
    fn revert_started(&self, phase: Phase) {
        self.note(&format!("rolling back {phase}"));
    }
    /// `phase` is undone on every agent.
    fn revert_done(&self, _phase: Phase, _elapsed: Duration) {}
    /// `phase` (or its undo, `Direction::Backward`) failed on the members of `failures`.
    fn phase_failed(
        &self,
        _phase: Phase,
        _direction: crate::engine::Direction,
        _elapsed: Duration,
        _failures: &Failures,
    ) {
    }
    /// One agent's call of `step` (run or revert) changed state.
    fn member_step(&self, _member: &str, _step: Step, _way: Way, _state: MemberState<'_>) {}
    /// `sent` of `total` bytes of the snapshot went to `member`'s stream.
    fn staging(&self, _member: &str, _sent: u64, _total: u64) {}
    /// The coordinator waits on `member` for `why` (its etcd to answer, to be healthy).
    fn waiting(&self, _member: &str, _why: &str) {}
    /// The run is over (however it ended), before its result is printed: a view draws its last
    /// state and its summary.
    fn finish(&self) {}
}

/// Where one agent's call of a step stands.
#[derive(Debug, Clone, Copy)]
pub enum MemberState<'a> {
    Started,
    /// A retryable error (the agent restarting, a dropped connection): the call is made again.
    Retrying {
        error: &'a str,
    },
    Done {
        elapsed: Duration,
    },
    Failed {
        elapsed: Duration,
        failure: &'a MemberFailure,
    },
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
    /// How long each agent took in the phase under way; the engine files it with the phase.
    pub member_times: MemberTimes,
}

/// Per agent, how long its calls of the current phase took.
#[derive(Debug, Default)]
pub struct MemberTimes(std::sync::Mutex<Vec<MemberTiming>>);

impl MemberTimes {
    fn add(&self, name: String, took: Duration) {
        if let Ok(mut v) = self.0.lock() {
            match v.iter_mut().find(|t| t.member == name) {
                Some(t) => t.seconds += took.as_secs_f64(),
                None => v.push(MemberTiming {
                    member: name,
                    seconds: took.as_secs_f64(),
                }),
            }
        }
    }

    /// The times so far, leaving none.
    pub(crate) fn take(&self) -> Vec<MemberTiming> {
        self.0
            .lock()
            .map(|mut v| std::mem::take(&mut *v))
            .unwrap_or_default()
    }
}

/// Which way a step goes on an agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Way {
    Run,
    Revert,
}

impl<C: AgentClient, P: ClusterProbe> Restore<'_, C, P> {
    /// Performs one of the table's actions for phase `def`.
    pub(crate) async fn act(
        &self,
        def: &PhaseDef,
        action: Action,
        progress: &Progress,
    ) -> Result<PhaseFacts, Failures> {
        let deadline = self.deadlines.of(
            def.bound,
            self.plan.snapshot.size,
            self.inventory.members.len(),
        );
        let targets = self.targets(def.targets);
        let step = || {
            def.step.ok_or_else(|| {
                vec![MemberFailure::coordinator(format!(
                    "phase {} has no agent step for {action:?}",
                    def.name
                ))]
            })
        };
        match action {
            Action::Nothing => Ok(PhaseFacts::None),
            Action::Run => {
                self.call_on(&targets, step()?, deadline, Way::Run).await?;
                Ok(PhaseFacts::None)
            }
            Action::RunLeaderLast => {
                self.run_leader_last(&targets, step()?, deadline).await?;
                Ok(PhaseFacts::None)
            }
            Action::RunReportingStarted => {
                let outcomes = self.call_on(&targets, step()?, deadline, Way::Run).await?;
                let names: Vec<String> = targets.iter().map(|&i| self.name_of(i)).collect();
                Ok(PhaseFacts::Unfenced {
                    restarted: restarted(&names, &outcomes),
                })
            }
            Action::Revert => {
                self.call_on(&targets, step()?, deadline, Way::Revert)
                    .await?;
                Ok(PhaseFacts::None)
            }
            Action::Stage => {
                let snapshot_revision = self.stage(&targets, step()?, deadline).await?;
                Ok(PhaseFacts::Staged { snapshot_revision })
            }
            Action::QuorumOrderRun => {
                self.start_in_quorum_order(step()?, Way::Run, deadline)
                    .await?;
                Ok(PhaseFacts::None)
            }
            Action::QuorumOrderRevert => {
                self.start_in_quorum_order(step()?, Way::Revert, deadline)
                    .await?;
                Ok(PhaseFacts::None)
            }
            Action::Verify => {
                let expected =
                    expected_revision(progress.snapshot_revision, self.plan.revision.bump);
                let verified = self.verify(expected).await?;
                Ok(PhaseFacts::Verified { verified })
            }
            Action::RollForwardOnly => Err(vec![MemberFailure::coordinator(format!(
                "phase {} rolls forward only: once begun, the restore can only be completed with `quorate resume {}`",
                def.name, self.plan.restore_id
            ))]),
        }
    }

    /// `targets` split into the followers and the leader, as the members report it now; all of
    /// them followers when no leader is known (the cluster does not answer).
    async fn followers_and_leader(&self, targets: &[usize]) -> (Vec<usize>, Vec<usize>) {
        let views = self.probe.observe().await;
        let leader = views
            .iter()
            .find(|v| v.leader != 0 && v.member_id == v.leader)
            .map(|v| v.name.clone());
        let (leader, followers): (Vec<usize>, Vec<usize>) = targets
            .iter()
            .partition(|&&i| leader.as_deref() == Some(self.name_of(i).as_str()));
        (followers, leader)
    }

    /// HALT: the followers first, then the leader as soon as no follower's etcd answers (a
    /// stopping etcd closes its listeners and its raft streams at once, then lingers ~1 s for
    /// its peer connections). A leader stopped while a follower is still up hands leadership to
    /// it; one stopped while a follower is stopping waits etcd's request timeout (~7 s). The
    /// leader's agent also holds its stop until its etcd reports no active peer.
    async fn run_leader_last(
        &self,
        targets: &[usize],
        step: Step,
        deadline: Duration,
    ) -> Result<(), Failures> {
        let (followers, leader) = self.followers_and_leader(targets).await;
        if leader.is_empty() || followers.is_empty() {
            return self
                .call_on(targets, step, deadline, Way::Run)
                .await
                .map(drop);
        }
        let leader_last = async {
            self.wait_not_answering(&followers, LEADER_WAIT).await;
            self.call_on(&leader, step, deadline, Way::Run).await
        };
        let (followers_done, leader_done) = tokio::join!(
            self.call_on(&followers, step, deadline, Way::Run),
            leader_last
        );
        match (followers_done, leader_done) {
            (Ok(_), Ok(_)) => Ok(()),
            (Err(mut a), Err(b)) => {
                a.extend(b);
                Err(a)
            }
            (Err(e), _) | (_, Err(e)) => Err(e),
        }
    }

    /// Waits until the etcd of every member of `which` gives no answer, as its agent sees it, at
    /// most `bound` (then the caller goes on anyway).
    async fn wait_not_answering(&self, which: &[usize], bound: Duration) {
        let started = Instant::now();
        while started.elapsed() < bound {
            let seen = join_all(which.iter().map(|&i| self.agents[i].health(HEALTH_CALL))).await;
            if seen
                .iter()
                .all(|h| matches!(h, Ok(h) if !h.state().answers()))
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tracing::info!(
            "a follower's etcd still answers after {bound:?}; stopping the leader anyway"
        );
    }

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
                // Always the restore id's own token, whatever a plan file says: agents refuse
                // any other.
                cluster_token: self.plan.restore_id.cluster_token(),
                snapshot_sha256: self.plan.snapshot.sha256.clone(),
                bump_revision: self.plan.revision.bump,
                mark_compacted: self.plan.revision.bump > 0,
                skip_hash_check: self.plan.skip_hash_check,
            },
            // Sent with the claim: members that require signatures verify it there.
            signature: (step == Step::Claim)
                .then(|| self.plan.signing.signature.clone())
                .flatten(),
        }
    }

    /// Runs or reverts `step` on the agents `which`, in parallel, retrying retryable errors
    /// (a dropped connection, an agent restarting) until `deadline`.
    pub(crate) async fn call_on(
        &self,
        which: &[usize],
        step: Step,
        deadline: Duration,
        way: Way,
    ) -> Result<Vec<Outcome>, Failures> {
        let started = Instant::now();
        let calls = which.iter().map(|&i| async move {
            let mut backoff = Duration::from_millis(250);
            let name = self.name_of(i);
            let _timer = Timer {
                times: &self.member_times,
                name: name.clone(),
                started: Instant::now(),
            };
            let begun = Instant::now();
            self.observer
                .member_step(&name, step, way, MemberState::Started);
            loop {
                let left = deadline.saturating_sub(started.elapsed());
                let request = self.request(i, step);
                let result = match way {
                    Way::Run => self.agents[i].run(request, left).await,
                    Way::Revert => self.agents[i].revert(request, left).await,
                };
                match result {
                    Ok(o) => {
                        let elapsed = begun.elapsed();
                        self.observer
                            .member_step(&name, step, way, MemberState::Done { elapsed });
                        return Ok(o);
                    }
                    Err(e) if e.is_retryable() && started.elapsed() + backoff < deadline => {
                        tracing::warn!(member = %name, %step, ?way, "retrying: {e}");
                        let error = e.to_string();
                        self.observer.member_step(
                            &name,
                            step,
                            way,
                            MemberState::Retrying { error: &error },
                        );
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                    Err(e) => {
                        let what = match way {
                            Way::Run => format!("step {step}"),
                            Way::Revert => format!("reverting {step}"),
                        };
                        let failure = MemberFailure::call(name.clone(), &what, &e);
                        self.observer.member_step(
                            &name,
                            step,
                            way,
                            MemberState::Failed {
                                elapsed: begun.elapsed(),
                                failure: &failure,
                            },
                        );
                        return Err(failure);
                    }
                }
            }
        });
        collect(join_all(calls).await)
    }

    /// The etcd members.
    pub(crate) fn members(&self) -> Vec<usize> {
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

    /// The agents of `targets`: the etcd members, or the apiserver hosts too.
    pub(crate) fn targets(&self, targets: Targets) -> Vec<usize> {
        match targets {
            Targets::Members => self.members(),
            Targets::AllAgents => {
                (0..self.inventory.members.len() + self.inventory.apiservers.len()).collect()
            }
        }
    }

    /// Starts etcd member by member in the plan's quorum order: `step` run (or reverted) on one
    /// member, then the next as soon as the previous one's etcd gives any HTTP answer on its
    /// health endpoint, as its own agent probes it (or after `deadlines.member_answer`, whichever
    /// comes first); then waits until every member is healthy. A member that starts while its
    /// peers are still in kubeadm's initial corruption check waits 7 s for each of them; one at a
    /// time, no peer is ever in that check. Forward this starts the restored members (QUORUM);
    /// backward the original ones (HALT undone).
    pub(crate) async fn start_in_quorum_order(
        &self,
        step: Step,
        way: Way,
        deadline: Duration,
    ) -> Result<(), Failures> {
        let order = self.members();
        for (k, &i) in order.iter().enumerate() {
            self.call_on(&[i], step, deadline, way).await?;
            if k + 1 < order.len() {
                self.wait_answering(i).await;
            }
        }
        self.wait_healthy(&order, self.deadlines.quorum).await
    }

    /// Waits until member `i`'s etcd answers on its health endpoint (healthy or not), at most
    /// `deadlines.member_answer`. Not answering by then is not a failure here: the health gate
    /// after the last member decides.
    async fn wait_answering(&self, i: usize) {
        let started = Instant::now();
        let bound = self.deadlines.member_answer;
        let name = self.name_of(i);
        let mut announced = false;
        loop {
            let left = bound.saturating_sub(started.elapsed());
            let call = HEALTH_CALL.min(left.max(Duration::from_millis(200)));
            let seen = self.agents[i].health(call).await;
            match seen {
                Ok(h) if h.state().answers() => {
                    tracing::info!(member = %name, "etcd answers after {:?}: {}", started.elapsed(), h.summary());
                    return;
                }
                Ok(h) => tracing::debug!(member = %name, "not answering yet: {}", h.summary()),
                Err(e) => tracing::debug!(member = %name, "its agent did not report health: {e}"),
            }
            if !std::mem::replace(&mut announced, true) {
                self.observer.waiting(&name, "its etcd to answer");
            }
            if started.elapsed() >= bound {
                self.observer.note(&format!(
                    "etcd on {name} gave no answer within {bound:?}; starting the next member anyway"
                ));
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Asks the agents of `which` for their etcd's health until every one is healthy. What each
    /// member's agent last saw is logged as it changes and named at the deadline.
    pub(crate) async fn wait_healthy(
        &self,
        which: &[usize],
        deadline: Duration,
    ) -> Result<(), Failures> {
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
                    self.observer.waiting(name, &why);
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
                        MemberFailure::new(
                            name,
                            crate::failure::FailureKind::Unhealthy,
                            format!(
                                "etcd not healthy after {deadline:?}, as its agent sees it from its host: {why}; see the etcd log on that host"
                            ),
                        )
                    })
                    .collect());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The restored cluster, verified; retried until the call deadline (members that just joined
    /// may take a moment to apply the last entries).
    async fn verify(&self, snapshot_revision: Option<i64>) -> Result<Verified, Failures> {
        let started = Instant::now();
        loop {
            match self.probe.verify(snapshot_revision).await {
                Ok(v) => return Ok(v),
                Err(e) if started.elapsed() < self.deadlines.call => {
                    tracing::debug!("verify not yet: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(vec![MemberFailure::cluster(e)]),
            }
        }
    }
}

/// How long HALT waits for the followers' etcd to stop answering before it stops the leader.
const LEADER_WAIT: Duration = Duration::from_secs(5);

/// Files one agent's call time when the call ends, however it ends.
pub(crate) struct Timer<'t> {
    pub(crate) times: &'t MemberTimes,
    pub(crate) name: String,
    pub(crate) started: Instant,
}

impl Drop for Timer<'_> {
    fn drop(&mut self) {
        self.times
            .add(std::mem::take(&mut self.name), self.started.elapsed());
    }
}

/// Every result, or every failure.
pub(crate) fn collect<T>(results: Vec<Result<T, MemberFailure>>) -> Result<Vec<T>, Failures> {
    let mut ok = Vec::new();
    let mut failures = Vec::new();
    for r in results {
        match r {
            Ok(t) => ok.push(t),
            Err(f) => failures.push(f),
        }
    }
    if failures.is_empty() {
        Ok(ok)
    } else {
        Err(failures)
    }
}

/// The revision every member must report after the restore: the snapshot's plus the bump.
fn expected_revision(snapshot: Option<i64>, bump: u64) -> Option<i64> {
    snapshot.map(|r| r.saturating_add(i64::try_from(bump).unwrap_or(i64::MAX)))
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

/// A named failpoint (cargo feature `failpoints`, configured by `FAILPOINTS`): `return(msg)`
/// injects an error; `sleep(ms)` holds the coordinator there (tests kill it to simulate a crash);
/// `panic` aborts it. Release builds contain none.
pub fn failpoint(name: &str) -> Result<(), String> {
    #[cfg(all(feature = "failpoints", debug_assertions))]
    if let Some(msg) = fail::eval(name, |arg| arg.unwrap_or_default()) {
        return Err(format!("failpoint {name}: {msg}"));
    }
    let _ = name;
    Ok(())
}

/// The restore's report, once every phase is done.
pub(crate) fn report<C: AgentClient, P: ClusterProbe>(
    restore: &Restore<'_, C, P>,
    progress: &Progress,
    after: Verified,
    total: Duration,
) -> Report {
    let plan = restore.plan;
    Report {
        restore_id: plan.restore_id,
        cluster_token: plan.cluster_token.clone(),
        snapshot_sha256: plan.snapshot.sha256.clone(),
        snapshot_revision: progress.snapshot_revision,
        revision_before: plan.revision.live_revision,
        revision_bump: plan.revision.bump,
        skip_hash_check: plan.skip_hash_check,
        restarted: progress.restarted.clone(),
        before: progress.before.clone(),
        after,
        phases: progress.timings.clone(),
        total_seconds: total.as_secs_f64(),
        preserved_dirs: plan
            .members
            .iter()
            .map(|m| (m.name.clone(), m.preserved_text(plan.restore_id)))
            .collect(),
    }
}

#[cfg(test)]
#[path = "restore_tests.rs"]
pub(crate) mod tests;
