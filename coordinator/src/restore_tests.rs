//! The phase logic against a scripted fake agent and a fake cluster probe: no etcd, no network.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use quorate_proto::model::{
    ComponentFailure, Describe, EndpointHealth, EtcdHealthState, HealthEndpointKind, MemberHealth,
    RestoreId, Step, StepRequest,
};
use quorate_proto::pb;
use quorate_proto::tls::TlsFiles;

use super::*;
use crate::agent_client::{AgentClient, CallError, Outcome};
use crate::inventory::{ClusterSection, Inventory, Member};
use crate::plan;
use crate::snapshot::CheckedSnapshot;

/// What happened, in order, across all members.
#[derive(Default)]
struct World {
    log: Mutex<Vec<(String, Step)>>,
    /// Steps reverted, in order.
    reverted: Mutex<Vec<(usize, Step)>>,
    /// Members whose etcd runs (started, or the original brought back by a rollback).
    started: Mutex<Vec<usize>>,
    /// (member, step) → how the step behaves.
    script: BTreeMap<(usize, Step), Behaviour>,
    calls: Mutex<BTreeMap<(usize, Step), u32>>,
    /// Every step run or reverted and every verification, in order: "cp-1 fence",
    /// "api-1 revert fence", "verify".
    timeline: Mutex<Vec<String>>,
    /// member → what its agent's Health says instead of the truth.
    health: BTreeMap<usize, HealthScript>,
    health_calls: Mutex<BTreeMap<usize, u32>>,
    /// (member, bytes of snapshot it received).
    pushed: Mutex<Vec<(usize, usize)>>,
    /// Members whose agent already holds the staged snapshot (a resumed STAGE).
    holds: Vec<usize>,
    /// The member the cluster reports as its leader; `None`: the cluster does not answer.
    leader: Option<usize>,
}

#[derive(Clone, Copy)]
enum HealthScript {
    /// etcd answers its metrics /health with 503 RAFT NO LEADER, forever.
    NoLeader,
    /// The agent does not answer Health.
    AgentDown,
}

/// What the agent of a member at 127.0.0.1:2381 reports.
fn health(name: &str, state: EtcdHealthState) -> MemberHealth {
    let (status, detail) = match state {
        EtcdHealthState::Healthy => (Some(200), ""),
        EtcdHealthState::NoLeader => (Some(503), "RAFT NO LEADER"),
        EtcdHealthState::Unhealthy => (Some(503), "ALARM NOSPACE"),
        EtcdHealthState::NotAnswering => (None, "connect: Connection refused (os error 111)"),
    };
    MemberHealth {
        member_name: name.to_owned(),
        etcd: vec![EndpointHealth {
            url: "http://127.0.0.1:2381/health".into(),
            kind: HealthEndpointKind::Metrics,
            state,
            status,
            detail: detail.into(),
        }],
        apiserver: None,
    }
}

#[derive(Clone, Copy)]
enum Behaviour {
    Fail,
    Hang,
    /// Unreachable for the first N calls, then fine.
    FlakyTimes(u32),
}

struct FakeAgent<'w> {
    index: usize,
    name: String,
    /// How many etcd members there are (agents from `members` on are apiserver hosts).
    members: usize,
    world: &'w World,
}

impl AgentClient for FakeAgent<'_> {
    async fn describe(&self, _: Duration) -> Result<Describe, CallError> {
        unreachable!("preflight is not part of these tests")
    }

    /// The truth as the member's own host sees it: a started member has a leader once a
    /// majority of the claimed members runs; unless the script says otherwise.
    async fn health(&self, _: Duration) -> Result<MemberHealth, CallError> {
        *self
            .world
            .health_calls
            .lock()
            .expect("lock")
            .entry(self.index)
            .or_default() += 1;
        match self.world.health.get(&self.index) {
            Some(HealthScript::NoLeader) => {
                return Ok(health(&self.name, EtcdHealthState::NoLeader));
            }
            Some(HealthScript::AgentDown) => {
                return Err(CallError::Unreachable("connection refused".into()));
            }
            None => {}
        }
        let started = self.world.started.lock().expect("lock");
        let claimed = self
            .world
            .log
            .lock()
            .expect("lock")
            .iter()
            .filter(|(_, s)| *s == Step::Claim)
            .count()
            .min(self.members);
        let state = if !started.contains(&self.index) {
            EtcdHealthState::NotAnswering
        } else if started.len() * 2 > claimed {
            EtcdHealthState::Healthy
        } else {
            EtcdHealthState::NoLeader
        };
        if state.answers() {
            let mut timeline = self.world.timeline.lock().expect("lock");
            let entry = format!("{} answers", self.name);
            if !timeline.contains(&entry) {
                timeline.push(entry);
            }
        }
        Ok(health(&self.name, state))
    }

    async fn push_snapshot(
        &self,
        _: RestoreId,
        _: &CheckedSnapshot,
        mut chunks: tokio::sync::mpsc::Receiver<crate::agent_client::Chunk>,
        _: Duration,
    ) -> Result<pb::SnapshotReceipt, CallError> {
        if self.world.holds.contains(&self.index) {
            // Answers at once, as an agent that staged it before does.
            return Ok(pb::SnapshotReceipt {
                revision: 42,
                already_present: true,
                ..Default::default()
            });
        }
        let mut bytes = 0;
        while let Some(c) = chunks.recv().await {
            bytes += c.len();
        }
        self.world
            .pushed
            .lock()
            .expect("lock")
            .push((self.index, bytes));
        Ok(pb::SnapshotReceipt {
            revision: 42,
            ..Default::default()
        })
    }

    async fn run(&self, request: StepRequest, deadline: Duration) -> Result<Outcome, CallError> {
        assert_eq!(
            request.facts.member_name, self.name,
            "each member gets its own facts"
        );
        // What a real agent checks first: every request the coordinator sends passes it (names,
        // URLs, the token exactly quorate-<restore id>).
        let wire = quorate_proto::pb::StepRequest::from(request.clone());
        if let Err(e) = StepRequest::try_from(wire) {
            panic!("the agent's contract check refuses {request:?}: {e}");
        }
        let step = request.step;
        let n = {
            let mut calls = self.world.calls.lock().expect("lock");
            let n = calls.entry((self.index, step)).or_default();
            *n += 1;
            *n
        };
        match self.world.script.get(&(self.index, step)) {
            Some(Behaviour::Fail) => {
                return Err(CallError::Agent {
                    code: quorate_proto::model::ErrorCode::CommandFailed,
                    message: format!("{step} broke"),
                });
            }
            Some(Behaviour::Hang) => {
                tokio::time::sleep(deadline).await;
                return Err(CallError::Timeout(deadline));
            }
            Some(Behaviour::FlakyTimes(k)) if n <= *k => {
                return Err(CallError::Unreachable("connection refused".into()));
            }
            _ => {}
        }
        // Steps take a moment, so that a phase that did not wait for all members would show.
        tokio::time::sleep(Duration::from_millis(5 * (self.index as u64 + 1))).await;
        self.world
            .log
            .lock()
            .expect("lock")
            .push((self.name.clone(), step));
        self.world
            .timeline
            .lock()
            .expect("lock")
            .push(format!("{} {step}", self.name));
        if step == Step::Start {
            self.world.started.lock().expect("lock").push(self.index);
        }
        let mut outcome = Outcome::ok("ok".into());
        // UNFENCE starts the controllers after the apiserver; on the second member the
        // scheduler will not start, which is reported and does not fail the step.
        if step == Step::Unfence {
            outcome.details.started = vec!["kube-controller-manager".into()];
            if self.index == 1 {
                outcome.details.not_started = vec![ComponentFailure {
                    component: "kube-scheduler".into(),
                    message: "kube-scheduler did not start (not up after 60s)".into(),
                }];
            } else {
                outcome.details.started.push("kube-scheduler".into());
            }
        }
        Ok(outcome)
    }

    async fn revert(&self, request: StepRequest, _: Duration) -> Result<Outcome, CallError> {
        let step = request.step;
        tokio::time::sleep(Duration::from_millis(5 * (self.index as u64 + 1))).await;
        self.world
            .reverted
            .lock()
            .expect("lock")
            .push((self.index, step));
        self.world
            .timeline
            .lock()
            .expect("lock")
            .push(format!("{} revert {step}", self.name));
        // Reverting HALT starts the original etcd.
        if step == Step::Halt {
            self.world.started.lock().expect("lock").push(self.index);
        }
        Ok(Outcome::ok("reverted".into()))
    }
}

/// The cluster as the coordinator sees it through etcd's client URLs.
struct FakeProbe<'w>(&'w World);

impl ClusterProbe for FakeProbe<'_> {
    async fn verify(&self, snapshot_revision: Option<i64>) -> Result<Verified, String> {
        self.0.timeline.lock().expect("lock").push("verify".into());
        Ok(Verified {
            cluster_id: 7,
            members: vec![],
            revision: snapshot_revision.unwrap_or(0),
            hash: 1,
            keys: 3,
        })
    }
    async fn observe(&self) -> Vec<MemberView> {
        let Some(leader) = self.0.leader else {
            return vec![];
        };
        (0..5)
            .map(|i| MemberView {
                name: format!("cp-{}", i + 1),
                member_id: 100 + i as u64,
                cluster_id: 7,
                leader: 100 + leader as u64,
                revision: 42,
            })
            .collect()
    }
}

struct Quiet;
impl Observer for Quiet {
    fn phase_started(&self, _: Phase, _: usize) {}
    fn phase_done(&self, _: Phase, _: Duration) {}
    fn note(&self, _: &str) {}
}

pub(crate) fn inventory(n: usize) -> Inventory {
    let tls = TlsFiles {
        ca: PathBuf::from("/x/ca.crt"),
        cert: PathBuf::from("/x/c.crt"),
        key: PathBuf::from("/x/c.key"),
    };
    Inventory {
        cluster: ClusterSection { name: "t".into() },
        agent_tls: tls,
        etcd_tls: None,
        members: (1..=n)
            .map(|i| Member {
                name: format!("cp-{i}"),
                agent: format!("https://127.0.0.{}:7443", 10 + i),
                agent_server_name: None,
                peer_urls: vec![format!("https://127.0.0.{}:2380", 10 + i)],
                client_urls: vec![format!("https://127.0.0.{}:2379", 10 + i)],
            })
            .collect(),
        apiservers: vec![],
    }
}

pub(crate) fn plan_for(inv: &Inventory) -> plan::Plan {
    let members = inv.members.iter().map(|m| {
        Ok(pb::DescribeResponse {
            member_name: m.name.clone(),
            peer_urls: m.peer_urls.clone(),
            free_bytes: 10 << 30,
            etcd_version: "3.5.1".into(),
            restore_tool: Some(pb::RestoreTool {
                kind: pb::RestoreToolKind::Etcdutl as i32,
                version: "3.5.1".into(),
                supports_bump_revision: false,
            }),
            apiserver_present: inv.apiservers.is_empty(),
            ..Default::default()
        })
    });
    let hosts = inv.apiservers.iter().map(|h| {
        Ok(pb::DescribeResponse {
            role: pb::AgentRole::ApiserverHost as i32,
            host_name: h.name.clone(),
            apiserver_present: true,
            ..Default::default()
        })
    });
    let described: Vec<Result<Describe, String>> = members
        .chain(hosts)
        .map(|d: Result<pb::DescribeResponse, String>| {
            d.map(|d| Describe::try_from(d).expect("a description that keeps the contract"))
        })
        .collect();
    let snapshot = CheckedSnapshot {
        path: PathBuf::from("/x/snap.db"),
        size: 1 << 20,
        sha256: "a".repeat(64),
        trailer: true,
    };
    plan::build(inv, &described, snapshot, &plan::Options::default()).expect("plan")
}

/// The size of the snapshot file the phase tests stream: more than two chunks.
const SNAPSHOT_BYTES: usize = (5 << 20) / 2;

/// A plan whose snapshot is a real file in `dir`, for the tests that stage it.
fn plan_with_snapshot_in(inv: &Inventory, dir: &std::path::Path) -> plan::Plan {
    let mut plan = plan_for(inv);
    let path = dir.join("snap.db");
    std::fs::write(&path, vec![7u8; SNAPSHOT_BYTES]).expect("snapshot file");
    plan.snapshot.path = path;
    plan.snapshot.size = SNAPSHOT_BYTES as u64;
    plan
}

/// One fake agent per host of `inv` (its `n` members first), all in `world`.
fn fake_agents<'w>(inv: &Inventory, n: usize, world: &'w World) -> Vec<FakeAgent<'w>> {
    inv.agents()
        .iter()
        .enumerate()
        .map(|(index, a)| FakeAgent {
            index,
            name: a.name.to_owned(),
            members: n,
            world,
        })
        .collect()
}

/// Runs a restore; with `rollback`, rolls it back when it fails.
async fn run(
    n: usize,
    world: &World,
    deadlines: Deadlines,
) -> (Result<Report, RestoreError>, tempfile::TempDir) {
    let (result, _, dir) = run_then(n, 0, world, deadlines, false).await;
    (result, dir)
}

/// A restore of `n` members and `hosts` apiserver hosts; with `rollback`, a failed restore is
/// rolled back (and the rollback must succeed).
async fn run_external(
    n: usize,
    hosts: usize,
    world: &World,
    deadlines: Deadlines,
    rollback: bool,
) -> (Result<Report, RestoreError>, tempfile::TempDir) {
    let (result, rolled, dir) = run_then(n, hosts, world, deadlines, rollback).await;
    if let Some(r) = rolled {
        r.expect("rollback");
    }
    (result, dir)
}

/// A restore of `n` members and `hosts` apiserver hosts; with `rollback`, a failed restore is
/// rolled back and the rollback's result returned too.
async fn run_then(
    n: usize,
    hosts: usize,
    world: &World,
    deadlines: Deadlines,
    rollback: bool,
) -> (
    Result<Report, RestoreError>,
    Option<Result<crate::rollback::RollbackReport, RestoreError>>,
    tempfile::TempDir,
) {
    let mut inv = inventory(n);
    inv.apiservers = (1..=hosts)
        .map(|j| crate::inventory::ApiserverHost {
            name: format!("api-{j}"),
            agent: format!("https://127.0.0.{}:7443", 20 + j),
            agent_server_name: None,
        })
        .collect();
    let dir = tempfile::tempdir().expect("tempdir");
    let plan = plan_with_snapshot_in(&inv, dir.path());
    let agents = fake_agents(&inv, n, world);
    let mut journal = crate::journal::Journal::create(
        dir.path(),
        &plan,
        &inv,
        &crate::journal::Holder::me("restore"),
    )
    .expect("journal");
    let probe = FakeProbe(world);
    let restore = Restore {
        inventory: &inv,
        plan: &plan,
        agents: &agents,
        probe: &probe,
        deadlines,
        observer: &Quiet,
        member_times: Default::default(),
    };
    let mut progress = Progress::default();
    let result = restore.run(&mut journal, &mut progress).await;
    let rolled = if rollback && result.is_err() {
        Some(restore.rollback(&mut journal, &mut progress, false).await)
    } else {
        None
    };
    (result, rolled, dir)
}

fn fast() -> Deadlines {
    Deadlines {
        call: Duration::from_millis(400),
        stop: Duration::from_millis(400),
        start: Duration::from_millis(400),
        quorum: Duration::from_millis(400),
        member_answer: Duration::from_millis(300),
        min_throughput: 1 << 30,
    }
}

#[tokio::test]
async fn phases_run_in_lockstep_and_in_order() {
    let world = World::default();
    let (result, dir) = run(5, &world, fast()).await;
    let report = result.expect("restore");
    let steps: Vec<Step> = world
        .log
        .lock()
        .expect("lock")
        .iter()
        .map(|(_, s)| *s)
        .collect();
    // Lockstep: a step starts on any member only after the previous step ended on every member.
    let mut sorted = steps.clone();
    sorted.sort();
    assert_eq!(steps, sorted, "steps interleaved across phases: {steps:?}");
    for step in Step::ALL {
        assert_eq!(
            steps.iter().filter(|s| **s == step).count(),
            5,
            "{step} ran once on each member"
        );
    }
    assert_eq!(report.snapshot_revision, Some(42));
    let halt = report
        .phases
        .iter()
        .find(|p| p.phase == Phase::Halt)
        .expect("halt timed");
    let mut stopped: Vec<&str> = halt.members.iter().map(|m| m.member.as_str()).collect();
    stopped.sort_unstable();
    assert_eq!(
        stopped,
        ["cp-1", "cp-2", "cp-3", "cp-4", "cp-5"],
        "how long each member's stop took"
    );
    assert!(halt.members.iter().all(|m| m.seconds > 0.0));
    let mut pushed = world.pushed.lock().expect("lock").clone();
    pushed.sort_unstable();
    assert_eq!(
        pushed,
        (0..5).map(|i| (i, SNAPSHOT_BYTES)).collect::<Vec<_>>(),
        "the whole snapshot reached every member"
    );
    // The report names, per member, the controllers started after the apiserver came back, and
    // the one that would not start.
    assert_eq!(report.restarted.len(), 6, "{:?}", report.restarted);
    assert_eq!(
        report.restarted[1..3],
        [
            ("cp-2".to_owned(), "kube-controller-manager".to_owned()),
            (
                "cp-2".to_owned(),
                "FAILED: kube-scheduler did not start (not up after 60s)".to_owned()
            ),
        ]
    );
    assert_eq!(
        report.restarted[0],
        (
            "cp-1".to_owned(),
            "kube-controller-manager,kube-scheduler".to_owned()
        )
    );
    let journal = std::fs::read_to_string(
        dir.path()
            .join(report.restore_id.to_string())
            .join("journal.jsonl"),
    )
    .expect("journal");
    let entries: Vec<serde_json::Value> = journal
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    let kinds: Vec<&str> = entries
        .iter()
        .map(|e| e["entry"].as_str().expect("entry"))
        .collect();
    assert_eq!(kinds[0], "preflight");
    let done: Vec<&str> = entries
        .iter()
        .filter(|e| e["entry"] == "done")
        .map(|e| e["phase"].as_str().expect("phase"))
        .collect();
    let all: Vec<&str> = Phase::ALL.iter().map(|p| p.name()).collect();
    assert_eq!(done, all, "every phase journaled as done, in order");
    assert!(
        entries.iter().all(|e| e["v"] == 1),
        "format version on each line"
    );
}

#[tokio::test]
async fn members_start_one_at_a_time_each_as_soon_as_the_previous_one_answers() {
    let world = World::default();
    run(5, &world, fast()).await.0.expect("restore");
    let started = world.started.lock().expect("lock").clone();
    assert_eq!(started, [0, 1, 2, 3, 4], "in the plan's order");
    let timeline = world.timeline.lock().expect("lock").clone();
    for k in 1..=4 {
        assert!(
            at(&timeline, &format!("cp-{k} answers"))
                < at(&timeline, &format!("cp-{} start", k + 1)),
            "cp-{} started only after cp-{k} answered: {timeline:?}",
            k + 1
        );
    }
}

#[tokio::test]
async fn a_member_that_never_answers_delays_the_next_by_the_bound_and_fails_the_health_gate() {
    let mut world = World::default();
    world.health.insert(1, HealthScript::AgentDown);
    let (result, _dir) = run(3, &world, fast()).await;
    let err = result.expect_err("cp-2 never reports health");
    assert_eq!(err.phase, "quorum");
    let named: Vec<&str> = err.failures.iter().map(|f| f.member.as_str()).collect();
    assert_eq!(named, ["cp-2"], "{:?}", err.failures);
    let started = world.started.lock().expect("lock").clone();
    assert_eq!(started, [0, 1, 2], "cp-3 started anyway after the bound");
}

#[tokio::test]
async fn the_quorum_waits_on_agent_health_and_names_a_member_without_a_leader() {
    let mut world = World::default();
    world.health.insert(2, HealthScript::NoLeader);
    let (result, _dir) = run(5, &world, fast()).await;
    let err = result.expect_err("cp-3 never gets a leader");
    assert_eq!(err.phase, "quorum");
    assert_eq!(err.failures.len(), 1, "{:?}", err.failures);
    let (member, why) = (&err.failures[0].member, &err.failures[0].message);
    assert_eq!(member, "cp-3");
    assert!(
        why.contains("as its agent sees it from its host")
            && why.contains(
                "answers but has no leader (http://127.0.0.1:2381/health answered 503: RAFT NO LEADER)"
            ),
        "{why}"
    );
    // Every member was started: the rolling start moves on once a member answers, and a 503
    // is an answer; the health gate at the end names the one without a leader.
    let started = world.started.lock().expect("lock").clone();
    assert_eq!(started, [0, 1, 2, 3, 4]);
    assert!(
        world.health_calls.lock().expect("lock")[&2] > 1,
        "health was asked again until the deadline"
    );
}

#[tokio::test]
async fn an_agent_that_does_not_report_health_is_named_at_the_deadline() {
    let mut world = World::default();
    world.health.insert(0, HealthScript::AgentDown);
    let (result, _dir) = run(3, &world, fast()).await;
    let err = result.expect_err("cp-1's agent is down");
    assert_eq!(err.phase, "quorum");
    assert_eq!(err.failures[0].member, "cp-1");
    assert!(
        err.failures[0]
            .message
            .contains("its agent did not report health: unreachable: connection refused"),
        "{}",
        err.failures[0].message
    );
}

#[tokio::test]
async fn a_rollback_restarts_the_original_etcd_one_at_a_time_waiting_on_agent_health() {
    let mut world = World::default();
    world.script.insert((4, Step::Restore), Behaviour::Fail);
    let (result, rolled, _dir) = run_then(5, 0, &world, fast(), true).await;
    assert_eq!(result.expect_err("restore fails on cp-5").phase, "restore");
    let report = rolled.expect("rolled back").expect("rollback");
    let phases: Vec<Phase> = report.reverted.iter().map(|t| t.phase).collect();
    assert_eq!(
        phases,
        [
            Phase::Restore,
            Phase::Preserve,
            Phase::Halt,
            Phase::Fence,
            Phase::Prepare,
            Phase::Stage
        ]
    );
    let halts: Vec<usize> = world
        .reverted
        .lock()
        .expect("lock")
        .iter()
        .filter(|(_, s)| *s == Step::Halt)
        .map(|(i, _)| *i)
        .collect();
    assert_eq!(
        halts,
        [0, 1, 2, 3, 4],
        "the originals one at a time, in order"
    );
    let timeline = world.timeline.lock().expect("lock").clone();
    for k in 1..=4 {
        assert!(
            at(&timeline, &format!("cp-{k} answers"))
                < at(&timeline, &format!("cp-{} revert halt", k + 1)),
            "cp-{} started only after cp-{k} answered: {timeline:?}",
            k + 1
        );
    }
    let calls = world.health_calls.lock().expect("lock").clone();
    assert!(
        (0..5).all(|i| calls.get(&i).is_some_and(|n| *n >= 1)),
        "every member's agent was asked: {calls:?}"
    );
}

#[tokio::test]
async fn a_failing_member_stops_the_restore_in_that_phase_naming_it() {
    let mut world = World::default();
    world.script.insert((1, Step::Halt), Behaviour::Fail);
    let (result, _dir) = run(3, &world, fast()).await;
    let err = result.expect_err("halt fails on cp-2");
    assert_eq!(err.phase, "halt");
    assert_eq!(err.failures.len(), 1);
    assert_eq!(err.failures[0].member, "cp-2");
    assert_eq!(
        err.failures[0].code,
        Some(quorate_proto::model::ErrorCode::CommandFailed),
        "the agent's code travels with the failure"
    );
    assert!(err.to_string().contains("halt broke"), "{err}");
    let steps: Vec<Step> = world
        .log
        .lock()
        .expect("lock")
        .iter()
        .map(|(_, s)| *s)
        .collect();
    assert!(
        !steps.contains(&Step::Preserve),
        "no later phase ran: {steps:?}"
    );
}

#[tokio::test]
async fn a_member_that_does_not_answer_is_reported_unknown_at_the_deadline() {
    let mut world = World::default();
    world.script.insert((2, Step::Fence), Behaviour::Hang);
    let started = std::time::Instant::now();
    let (result, _dir) = run(3, &world, fast()).await;
    let err = result.expect_err("fence hangs on cp-3");
    assert_eq!(err.phase, "fence");
    assert_eq!(err.failures[0].member, "cp-3");
    assert!(
        err.failures[0].message.contains("state is unknown"),
        "{}",
        err.failures[0].message
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the deadline held"
    );
}

#[tokio::test]
async fn retryable_errors_are_retried_within_the_phase() {
    let mut world = World::default();
    world
        .script
        .insert((0, Step::Preserve), Behaviour::FlakyTimes(1));
    run(
        3,
        &world,
        Deadlines {
            call: Duration::from_secs(3),
            ..fast()
        },
    )
    .await
    .0
    .expect("restore despite one dropped call");
    assert_eq!(world.calls.lock().expect("lock")[&(0, Step::Preserve)], 2);
}

/// Where `entry` first appears in the timeline.
fn at(timeline: &[String], entry: &str) -> usize {
    timeline
        .iter()
        .position(|e| e == entry)
        .unwrap_or_else(|| panic!("{entry} not in {timeline:?}"))
}

#[tokio::test]
async fn apiserver_hosts_are_fenced_before_halt_and_unfenced_after_verify() {
    let world = World::default();
    let (result, _dir) = run_external(3, 2, &world, fast(), false).await;
    let report = result.expect("restore");
    let timeline = world.timeline.lock().expect("lock").clone();
    for host in ["api-1", "api-2"] {
        // Their steps: claim, fence, unfence, finish; nothing that touches etcd.
        let steps: Vec<&String> = timeline
            .iter()
            .filter(|e| e.starts_with(&format!("{host} ")))
            .collect();
        assert_eq!(
            steps,
            [
                &format!("{host} claim"),
                &format!("{host} fence"),
                &format!("{host} unfence"),
                &format!("{host} finish")
            ],
            "{timeline:?}"
        );
        let fenced = at(&timeline, &format!("{host} fence"));
        for m in ["cp-1", "cp-2", "cp-3"] {
            assert!(fenced < at(&timeline, &format!("{m} halt")), "{timeline:?}");
            // The snapshot is prepared on the members while every apiserver still serves.
            assert!(
                at(&timeline, &format!("{m} prepare")) < at(&timeline, "api-1 fence"),
                "{timeline:?}"
            );
        }
        assert!(
            at(&timeline, "verify") < at(&timeline, &format!("{host} unfence")),
            "{timeline:?}"
        );
    }
    // The hosts were fenced in the same phase as the members' apiservers.
    let fences: Vec<usize> = timeline
        .iter()
        .enumerate()
        .filter(|(_, e)| e.ends_with(" fence"))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(fences.len(), 5);
    assert_eq!(fences[4] - fences[0], 4, "one phase: {timeline:?}");
    assert_eq!(report.after.keys, 3);
}

#[tokio::test]
async fn a_rollback_unfences_the_apiserver_hosts_after_the_original_etcd_is_back() {
    let mut world = World::default();
    world.script.insert((1, Step::Preserve), Behaviour::Fail);
    let (result, _dir) = run_external(3, 2, &world, fast(), true).await;
    assert_eq!(
        result.expect_err("preserve fails on cp-2").phase,
        "preserve"
    );
    let timeline = world.timeline.lock().expect("lock").clone();
    for host in ["api-1", "api-2"] {
        let unfenced = at(&timeline, &format!("{host} revert fence"));
        for m in ["cp-1", "cp-2", "cp-3"] {
            assert!(
                at(&timeline, &format!("{m} revert halt")) < unfenced,
                "etcd first, then the apiservers: {timeline:?}"
            );
        }
        assert!(
            unfenced < at(&timeline, &format!("{host} revert claim")),
            "{timeline:?}"
        );
        for etcd_step in ["halt", "preserve", "restore", "start"] {
            assert!(
                !timeline
                    .iter()
                    .any(|e| e.starts_with(&format!("{host} "))
                        && e.ends_with(&format!(" {etcd_step}"))),
                "no etcd step on {host}: {timeline:?}"
            );
        }
    }
}

#[test]
fn progress_from_the_journal_names_the_last_phase_begun_even_when_it_failed() {
    use crate::journal::{Entry, PhaseFacts};
    let entries = vec![
        Entry::Preflight { before: vec![] },
        Entry::Begin {
            phase: Phase::Stage,
        },
        Entry::Done {
            phase: Phase::Stage,
            facts: PhaseFacts::Staged {
                snapshot_revision: Some(42),
            },
        },
        Entry::Begin {
            phase: Phase::Restore,
        },
        Entry::Failed {
            phase: Phase::Restore,
            failures: vec![],
        },
        Entry::RollbackBegin { forced: false },
        Entry::RevertBegin {
            phase: Phase::Restore,
        },
        Entry::RevertFailed {
            phase: Phase::Restore,
            failures: vec![],
        },
    ];
    let p = Progress::from_entries(&entries).expect("consistent");
    assert!(p.started);
    assert_eq!(
        p.begun,
        Some(Phase::Restore),
        "a rollback must revert the restore phase too"
    );
    assert_eq!(p.failed, Some(Phase::Restore));
    assert_eq!(p.done, vec![Phase::Stage]);
    assert_eq!(p.snapshot_revision, Some(42));
    assert!(p.rollback_begun && !p.rollback_done);
    assert_eq!(
        p.to_undo(),
        vec![
            Phase::Restore,
            Phase::Preserve,
            Phase::Halt,
            Phase::Fence,
            Phase::Prepare,
            Phase::Stage
        ],
        "phases a rollback undoes, newest first: every one up to the last begun"
    );
}

/// A journal written before PREPARE was in the table, resumed after FENCE: PREPARE runs then, and
/// a rollback from it still undoes FENCE.
#[test]
fn a_phase_added_to_the_table_and_run_late_on_resume_keeps_the_furthest_phase_to_undo() {
    use crate::journal::{Entry, PhaseFacts};
    let mut entries = vec![Entry::Preflight { before: vec![] }];
    for phase in [Phase::Stage, Phase::Fence] {
        entries.push(Entry::Begin { phase });
        entries.push(Entry::Done {
            phase,
            facts: match phase {
                Phase::Stage => PhaseFacts::Staged {
                    snapshot_revision: Some(42),
                },
                _ => PhaseFacts::None,
            },
        });
    }
    entries.push(Entry::Begin {
        phase: Phase::Prepare,
    });
    entries.push(Entry::Done {
        phase: Phase::Prepare,
        facts: PhaseFacts::None,
    });
    let p = Progress::from_entries(&entries).expect("consistent");
    assert_eq!(p.begun, Some(Phase::Fence));
    assert_eq!(
        p.to_undo(),
        [Phase::Fence, Phase::Prepare, Phase::Stage],
        "FENCE is undone although PREPARE began after it"
    );
}

#[test]
fn a_journal_whose_entries_contradict_each_other_is_refused() {
    use crate::journal::{Entry, PhaseFacts};
    let done_not_begun = vec![
        Entry::Preflight { before: vec![] },
        Entry::Done {
            phase: Phase::Halt,
            facts: PhaseFacts::None,
        },
    ];
    let err = Progress::from_entries(&done_not_begun).expect_err("inconsistent");
    assert_eq!(err.entry, 2);
    let verify_without_facts = vec![
        Entry::Preflight { before: vec![] },
        Entry::Begin {
            phase: Phase::Verify,
        },
        Entry::Done {
            phase: Phase::Verify,
            facts: PhaseFacts::None,
        },
    ];
    let err = Progress::from_entries(&verify_without_facts).expect_err("no verified cluster");
    assert!(err.to_string().contains("verify done without"), "{err}");
}

/// `quorate restore` with automatic rollback, as the CLI runs it: how it ended.
async fn forward(n: usize, world: &World) -> crate::ops::Ending {
    let inv = inventory(n);
    let dir = tempfile::tempdir().expect("tempdir");
    let plan = plan_with_snapshot_in(&inv, dir.path());
    let agents = fake_agents(&inv, n, world);
    let mut journal = crate::journal::Journal::create(
        dir.path(),
        &plan,
        &inv,
        &crate::journal::Holder::me("restore"),
    )
    .expect("journal");
    let probe = FakeProbe(world);
    let restore = Restore {
        inventory: &inv,
        plan: &plan,
        agents: &agents,
        probe: &probe,
        deadlines: fast(),
        observer: &Quiet,
        member_times: Default::default(),
    };
    let mut progress = Progress::default();
    crate::ops::forward(&restore, &mut journal, &mut progress, true).await
}

#[tokio::test]
async fn after_verify_a_failure_stops_and_nothing_is_rolled_back() {
    let mut world = World::default();
    world.script.insert((1, Step::Unfence), Behaviour::Fail);
    match forward(3, &world).await {
        crate::ops::Ending::PastNoReturn { error } => assert_eq!(error.phase, "unfence"),
        other => panic!("a failure after VERIFY must stop without a rollback: {other:?}"),
    }
    let reverted = world.reverted.lock().expect("lock").clone();
    assert!(reverted.is_empty(), "nothing was reverted: {reverted:?}");
    let verified = world
        .timeline
        .lock()
        .expect("lock")
        .iter()
        .any(|t| t == "verify");
    assert!(verified, "the failure came after VERIFY passed");
}

#[tokio::test]
async fn before_verify_a_failure_is_rolled_back() {
    let mut world = World::default();
    world.script.insert((1, Step::Preserve), Behaviour::Fail);
    match forward(3, &world).await {
        crate::ops::Ending::RolledBack { error, .. } => assert_eq!(error.phase, "preserve"),
        other => panic!("a failure before VERIFY is rolled back: {other:?}"),
    }
    let reverted = world.reverted.lock().expect("lock").clone();
    assert!(
        reverted.iter().any(|(_, s)| *s == Step::Halt),
        "HALT was reverted (the original etcd started): {reverted:?}"
    );
}

#[tokio::test]
async fn a_failure_in_phase_k_reverts_phases_k_to_1_newest_first_each_on_every_member() {
    use crate::phases::TABLE;
    for def in TABLE.iter().take_while(|d| d.phase != Phase::Verify) {
        let step = def.step.expect("a phase before verify runs a step");
        let mut world = World::default();
        world.script.insert((1, step), Behaviour::Fail);
        let (result, rolled, _dir) = run_then(3, 0, &world, fast(), true).await;
        let err = result.expect_err("the scripted failure");
        assert_eq!(err.phase, def.name);
        let report = rolled.expect("rolled back").expect("rollback");
        let reverted_phases: Vec<Phase> = report.reverted.iter().map(|t| t.phase).collect();
        let expected: Vec<Phase> = Phase::ALL[..=def.phase.index()]
            .iter()
            .rev()
            .copied()
            .collect();
        assert_eq!(reverted_phases, expected, "failure in {}", def.name);
        // Each phase's step reverted on every member before the next older one began.
        let reverted = world.reverted.lock().expect("lock").clone();
        let order: Vec<Step> = reverted.iter().map(|(_, s)| *s).collect();
        let mut phases_of: Vec<Step> = order.clone();
        phases_of.dedup();
        let expected_steps: Vec<Step> = expected.iter().filter_map(|p| p.def().step).collect();
        assert_eq!(phases_of, expected_steps, "failure in {}", def.name);
        for s in expected_steps {
            let on: Vec<usize> = reverted
                .iter()
                .filter(|(_, r)| *r == s)
                .map(|(i, _)| *i)
                .collect();
            assert_eq!(on.len(), 3, "{s} reverted on every member: {on:?}");
        }
        // The original etcd came back a majority first.
        if def.phase >= Phase::Halt {
            let timeline = world.timeline.lock().expect("lock").clone();
            let starts: Vec<&String> = timeline
                .iter()
                .filter(|t| t.ends_with("revert halt"))
                .collect();
            assert_eq!(
                starts.iter().map(|t| t.as_str()).collect::<Vec<_>>()[2],
                "cp-3 revert halt",
                "the third member started last, after the majority: {timeline:?}"
            );
        }
    }
}

#[tokio::test]
async fn a_rollback_is_refused_once_finish_began_and_after_verify_unless_forced() {
    let mut world = World::default();
    world.script.insert((1, Step::Finish), Behaviour::Fail);
    let inv = inventory(3);
    let dir = tempfile::tempdir().expect("tempdir");
    let plan = plan_with_snapshot_in(&inv, dir.path());
    let agents = fake_agents(&inv, 3, &world);
    let mut journal = crate::journal::Journal::create(
        dir.path(),
        &plan,
        &inv,
        &crate::journal::Holder::me("restore"),
    )
    .expect("journal");
    let probe = FakeProbe(&world);
    let restore = Restore {
        inventory: &inv,
        plan: &plan,
        agents: &agents,
        probe: &probe,
        deadlines: fast(),
        observer: &Quiet,
        member_times: Default::default(),
    };
    let mut progress = Progress::default();
    let err = restore
        .run(&mut journal, &mut progress)
        .await
        .expect_err("finish fails on cp-2");
    assert_eq!(err.phase, "finish");
    assert!(progress.past_no_return());
    let refused = restore
        .may_roll_back(&progress, true)
        .expect_err("finish rolls forward only, even forced");
    assert!(
        matches!(
            refused,
            crate::engine::RollbackRefused::ForwardOnly {
                phase: Phase::Finish,
                ..
            }
        ),
        "{refused}"
    );
    // Past VERIFY but before FINISH: refused unless forced.
    progress.begun = Some(Phase::Unfence);
    let refused = restore
        .may_roll_back(&progress, false)
        .expect_err("past VERIFY");
    assert!(refused.to_string().contains("--force"), "{refused}");
    restore.may_roll_back(&progress, true).expect("forced");
}

#[tokio::test]
async fn a_member_that_already_holds_the_snapshot_is_not_sent_it_again_and_does_not_stall_the_rest()
{
    let world = World {
        holds: vec![0, 2],
        ..World::default()
    };
    run(3, &world, fast()).await.0.expect("restore");
    let pushed = world.pushed.lock().expect("lock").clone();
    assert_eq!(
        pushed,
        [(1, SNAPSHOT_BYTES)],
        "only cp-2 was sent the snapshot"
    );
}

#[tokio::test]
async fn halt_reaches_the_leader_without_waiting_for_the_followers_steps() {
    // The leader is asked as soon as no follower's etcd answers, not when their steps end (each
    // lingers ~1 s after SIGTERM): every member is halted before any goes on to preserve.
    let world = World {
        leader: Some(1),
        ..World::default()
    };
    run(5, &world, fast()).await.0.expect("restore");
    let timeline = world.timeline.lock().expect("lock").clone();
    let halts: Vec<_> = (1..=5)
        .map(|k| at(&timeline, &format!("cp-{k} halt")))
        .collect();
    let first_done = at(&timeline, "cp-1 preserve");
    for (k, halt) in halts.iter().enumerate() {
        assert!(
            *halt < first_done,
            "cp-{} was asked to halt before any member went on to preserve: {timeline:?}",
            k + 1
        );
    }
}
