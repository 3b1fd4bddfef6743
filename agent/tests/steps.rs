//! The step engine on a member in a temp dir, with a fake runtime and a fake restore tool.

mod common;

use std::os::unix::fs::PermissionsExt as _;
use std::sync::atomic::Ordering;

use common::{Member, request};
use quorate_agent::engine::{Engine, Outcome};
use quorate_agent::journal::Op;
use quorate_proto::model::{Describe, DirRole, ErrorCode, EtcdDir, RestoreId, Step, StepState};

fn run(engine: &Engine, id: RestoreId, step: Step, sha: &str) -> Outcome {
    let outcome = engine
        .execute(&request(id, step, sha), Op::Run, &|_| {})
        .unwrap_or_else(|e| panic!("{step}: {e}"));
    assert!(outcome.ok, "{step}: {}", outcome.message);
    outcome
}

fn revert(engine: &Engine, id: RestoreId, step: Step, sha: &str) -> Outcome {
    let outcome = engine
        .execute(&request(id, step, sha), Op::Revert, &|_| {})
        .unwrap_or_else(|e| panic!("revert {step}: {e}"));
    assert!(outcome.ok, "revert {step}: {}", outcome.message);
    outcome
}

fn read(path: &std::path::Path) -> String {
    std::fs::read_to_string(path.join("member/snap/db")).expect("db readable")
}

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).expect("stat").permissions().mode() & 0o777
}

#[test]
fn full_restore_then_every_step_replays_without_acting() {
    let m = Member::new();
    let engine = m.engine();
    let id = RestoreId::new();
    let sha = m.stage(id, b"SNAP:");
    let mut outcomes = std::collections::BTreeMap::new();
    for step in Step::ALL {
        let o = run(&engine, id, step, &sha);
        assert!(!o.replayed, "{step}");
        outcomes.insert(step, o);
    }
    let data = m.data_dir();
    let preserved = std::path::PathBuf::from(format!("{}.quorate-{id}", data.display()));
    // The outcomes' typed facts: where the data dir went, the restored revision, the
    // controllers started after the apiserver.
    assert_eq!(
        outcomes[&Step::Preserve].details.preserved,
        [EtcdDir {
            role: DirRole::Data,
            path: preserved.clone()
        }]
    );
    assert_eq!(outcomes[&Step::Restore].details.revision, Some(42));
    assert_eq!(
        outcomes[&Step::Unfence].details.started,
        ["kube-controller-manager", "kube-scheduler"]
    );
    assert_eq!(read(&data), "SNAP:cp-1");
    assert_eq!(read(&preserved), "original");
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&preserved), 0o700);
    assert_eq!(
        engine.state.active().expect("lock"),
        None,
        "finish releases the lock"
    );
    assert!(
        !engine.state.snapshot_path(id).exists(),
        "finish deletes the staged copy"
    );
    assert!(m.etcd.running.load(Ordering::SeqCst));
    assert!(m.root().join("etc/kubernetes/manifests/etcd.yaml").exists());
    let counts = |m: &Member| {
        (
            m.etcd.stops.load(Ordering::SeqCst),
            m.etcd.starts.load(Ordering::SeqCst),
            m.apiserver.stops.load(Ordering::SeqCst),
            m.apiserver.starts.load(Ordering::SeqCst),
            m.tool.restores(),
        )
    };
    assert_eq!(counts(&m), (1, 1, 1, 1, 1));
    for step in Step::ALL {
        let o = run(&engine, id, step, &sha);
        assert!(o.replayed, "{step} repeated must replay");
        assert_eq!(
            o.details, outcomes[&step].details,
            "{step} replays its facts"
        );
    }
    assert!(m.controllers.iter().all(|c| c.running()));
    assert_eq!(
        m.controllers.each_ref().map(|c| (
            c.stops.load(Ordering::SeqCst),
            c.starts.load(Ordering::SeqCst)
        )),
        [(1, 1); 2],
        "each controller stopped at fence and started at unfence, once"
    );
    assert_eq!(counts(&m), (1, 1, 1, 1, 1), "replays do not act");
    assert_eq!(read(&data), "SNAP:cp-1");
}

#[test]
fn rollback_of_restore_and_preserve_puts_the_original_back() {
    let m = Member::new();
    let engine = m.engine();
    let id = RestoreId::new();
    let sha = m.stage(id, b"SNAP:");
    for step in [
        Step::Claim,
        Step::Fence,
        Step::Halt,
        Step::Preserve,
        Step::Restore,
    ] {
        run(&engine, id, step, &sha);
    }
    for step in [Step::Restore, Step::Preserve, Step::Halt, Step::Fence] {
        assert!(!revert(&engine, id, step, &sha).replayed);
    }
    assert!(
        revert(&engine, id, Step::Restore, &sha).replayed,
        "a repeated revert replays"
    );
    let data = m.data_dir();
    assert_eq!(read(&data), "original");
    assert_eq!(mode(&data), 0o700);
    let failed = std::path::PathBuf::from(format!("{}.quorate-{id}.failed", data.display()));
    assert_eq!(
        read(&failed),
        "SNAP:cp-1",
        "the restored dir is kept for forensics"
    );
    assert!(m.etcd.running.load(Ordering::SeqCst) && m.apiserver.running.load(Ordering::SeqCst));
    // Reverting a step that never ran does nothing.
    let o = revert(&engine, id, Step::Start, &sha);
    assert!(o.message.contains("never ran"), "{}", o.message);
    revert(&engine, id, Step::Claim, &sha);
    assert_eq!(engine.state.active().expect("lock"), None);
}

#[test]
fn claim_cannot_be_released_while_steps_are_in_effect() {
    let m = Member::new();
    let engine = m.engine();
    let id = RestoreId::new();
    let sha = m.stage(id, b"S");
    run(&engine, id, Step::Claim, &sha);
    run(&engine, id, Step::Halt, &sha);
    let err = engine
        .execute(&request(id, Step::Claim, &sha), Op::Revert, &|_| {})
        .expect_err("halt still done");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert!(err.to_string().contains("halt"), "{err}");
}

#[test]
fn second_restore_is_refused_naming_the_first() {
    let m = Member::new();
    let engine = m.engine();
    let (first, second) = (RestoreId::new(), RestoreId::new());
    let sha = m.stage(first, b"S");
    run(&engine, first, Step::Claim, &sha);
    for step in [Step::Claim, Step::Halt] {
        let err = engine
            .execute(&request(second, step, &sha), Op::Run, &|_| {})
            .expect_err("locked");
        assert_eq!(err.code(), tonic::Code::FailedPrecondition);
        let msg = err.to_string();
        assert!(
            msg.contains(&first.to_string()) && msg.contains("quorate rollback"),
            "{msg}"
        );
    }
    assert_eq!(m.etcd.stops.load(Ordering::SeqCst), 0);
}

#[test]
fn steps_need_the_claim_and_refuse_unsafe_orders() {
    let m = Member::new();
    let engine = m.engine();
    let id = RestoreId::new();
    let sha = m.stage(id, b"S");
    let err = engine
        .execute(&request(id, Step::Halt, &sha), Op::Run, &|_| {})
        .expect_err("unclaimed");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    run(&engine, id, Step::Claim, &sha);
    let err = engine
        .execute(&request(id, Step::Preserve, &sha), Op::Run, &|_| {})
        .expect_err("not halted");
    assert!(err.to_string().contains("has not halted etcd"), "{err}");
    run(&engine, id, Step::Halt, &sha);
    let err = engine
        .execute(&request(id, Step::Restore, &sha), Op::Run, &|_| {})
        .expect_err("not preserved");
    assert!(err.to_string().contains("preserve"), "{err}");
    run(&engine, id, Step::Preserve, &sha);
    let err = engine
        .execute(&request(id, Step::Start, &sha), Op::Run, &|_| {})
        .expect_err("no data dir");
    assert!(err.to_string().contains("empty new member"), "{err}");
    assert_eq!(
        read(&std::path::PathBuf::from(format!(
            "{}.quorate-{id}",
            m.data_dir().display()
        ))),
        "original"
    );
}

#[test]
fn corruption_after_staging_fails_restore_and_is_journaled() {
    let m = Member::new();
    let engine = m.engine();
    let id = RestoreId::new();
    let sha = m.stage(id, b"SNAP:");
    for step in [Step::Claim, Step::Halt, Step::Preserve] {
        run(&engine, id, step, &sha);
    }
    std::fs::write(engine.state.snapshot_path(id), b"SNAQ:").expect("corrupt");
    let o = engine
        .execute(&request(id, Step::Restore, &sha), Op::Run, &|_| {})
        .expect("performed");
    assert!(!o.ok && o.message.contains("sha256"), "{}", o.message);
    assert_eq!(o.details.code, Some(ErrorCode::Corrupt));
    assert_eq!(m.tool.restores(), 0);
    let journal = engine.state.load(id).expect("journal");
    assert_eq!(
        journal.state(Step::Restore).map(|s| s.name()),
        Some("failed")
    );
    // Reverting the failed restore and the preserve gives the original back.
    revert(&engine, id, Step::Restore, &sha);
    revert(&engine, id, Step::Preserve, &sha);
    assert_eq!(read(&m.data_dir()), "original");
}

#[test]
fn leftover_restoring_dir_is_moved_aside_not_deleted() {
    let m = Member::new();
    let engine = m.engine();
    let id = RestoreId::new();
    let sha = m.stage(id, b"SNAP:");
    for step in [Step::Claim, Step::Halt, Step::Preserve] {
        run(&engine, id, step, &sha);
    }
    let leftover =
        std::path::PathBuf::from(format!("{}.quorate-{id}.restoring", m.data_dir().display()));
    std::fs::create_dir_all(leftover.join("member")).expect("leftover");
    run(&engine, id, Step::Restore, &sha);
    let partial =
        std::path::PathBuf::from(format!("{}.quorate-{id}.partial-1", m.data_dir().display()));
    assert!(partial.join("member").is_dir());
    assert!(!leftover.exists());
    assert_eq!(read(&m.data_dir()), "SNAP:cp-1");
}

#[test]
fn facts_must_match_this_member() {
    let m = Member::new();
    let engine = m.engine();
    let id = RestoreId::new();
    let mut req = request(id, Step::Claim, &"a".repeat(64));
    req.facts.member_name = "cp-9".into();
    req.facts.initial_cluster = format!("cp-9={}", common::PEER);
    let err = engine
        .execute(&req, Op::Run, &|_| {})
        .expect_err("wrong name");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.to_string().contains("cp-9") && err.to_string().contains("cp-1"),
        "{err}"
    );
    let mut req = request(id, Step::Claim, &"a".repeat(64));
    req.facts.peer_urls = vec!["https://127.0.0.99:2380".into()];
    let err = engine
        .execute(&req, Op::Run, &|_| {})
        .expect_err("wrong peer");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
}

#[test]
fn describe_reports_the_journal_after_a_restart() {
    let m = Member::new();
    let id = RestoreId::new();
    let sha = m.stage(id, b"S");
    {
        let engine = m.engine();
        for step in [Step::Claim, Step::Fence, Step::Halt] {
            run(&engine, id, step, &sha);
        }
    }
    // A new engine (a restarted agent) finds the manifest where the journal says it went.
    let engine = m.engine();
    let d = quorate_agent::describe::describe(&engine).expect("describe");
    assert_eq!(d.member_name, "cp-1");
    assert_eq!(d.active_restore_id, id.to_string());
    let checked = Describe::try_from(d.clone()).expect("a description that keeps the contract");
    assert_eq!(
        checked.active.and_then(|a| a.last),
        Some((Step::Halt, StepState::Done))
    );
    assert!(d.apiserver_present && !d.etcd_running);
    assert!(d.data_dir_bytes >= 8 && d.free_bytes > 0);
    assert_eq!(d.restore_tool.expect("tool").version, "3.5.1");
}

/// FENCE stops the apiserver, kube-controller-manager and kube-scheduler together; between fence
/// and unfence none of them runs and the journal says where each manifest went; UNFENCE starts
/// the apiserver first, then the controllers. A restarted agent (a new engine) finds them aside.
#[test]
fn controllers_are_fenced_with_the_apiserver_and_come_back_after_it() {
    let m = Member::new();
    let id = RestoreId::new();
    let sha = m.stage(id, b"SNAP:");
    {
        let engine = m.engine();
        run(&engine, id, Step::Claim, &sha);
        let fenced = run(&engine, id, Step::Fence, &sha);
        assert!(
            fenced.message.contains("kube-scheduler stopped"),
            "{}",
            fenced.message
        );
    }
    assert_eq!(
        sorted(m.take_events()),
        [
            "stop kube-apiserver",
            "stop kube-controller-manager",
            "stop kube-scheduler"
        ]
    );
    assert!(!m.apiserver.running() && m.controllers.iter().all(|c| !c.running()));
    let engine = m.engine();
    let journal = engine.state.load(id).expect("journal");
    for c in &m.controllers {
        let name = c.manifest.file_stem().expect("stem").to_string_lossy();
        let moved = &journal.manifests[name.as_ref()];
        assert_eq!(moved.home, c.manifest);
        assert!(moved.aside.exists() && !c.manifest.exists(), "{name} aside");
    }
    for step in [Step::Halt, Step::Preserve, Step::Restore, Step::Start] {
        run(&engine, id, step, &sha);
        assert!(m.controllers.iter().all(|c| !c.running()), "{step}");
    }
    let o = run(&engine, id, Step::Unfence, &sha);
    assert_eq!(
        apiserver_first(m.take_events()),
        [
            "start kube-apiserver",
            "start kube-controller-manager",
            "start kube-scheduler"
        ]
    );
    assert_eq!(
        o.details.started,
        ["kube-controller-manager", "kube-scheduler"]
    );
    assert!(o.details.not_started.is_empty());
    assert!(
        m.controllers
            .iter()
            .all(|c| c.running() && c.manifest.exists())
    );
}

/// A rollback mirrors it: reverting FENCE starts the apiserver, then the controllers; reverting
/// UNFENCE stops the apiserver and the controllers together.
#[test]
fn reverts_mirror_fence_and_unfence() {
    let m = Member::new();
    let engine = m.engine();
    let id = RestoreId::new();
    let sha = m.stage(id, b"S");
    run(&engine, id, Step::Claim, &sha);
    run(&engine, id, Step::Fence, &sha);
    m.take_events();
    let o = revert(&engine, id, Step::Fence, &sha);
    assert_eq!(
        apiserver_first(m.take_events()),
        [
            "start kube-apiserver",
            "start kube-controller-manager",
            "start kube-scheduler"
        ]
    );
    assert_eq!(
        o.details.started,
        ["kube-controller-manager", "kube-scheduler"]
    );
    revert(&engine, id, Step::Claim, &sha);
    let id = RestoreId::new();
    let sha = m.stage(id, b"S");
    run(&engine, id, Step::Claim, &sha);
    run(&engine, id, Step::Unfence, &sha);
    m.take_events();
    revert(&engine, id, Step::Unfence, &sha);
    assert_eq!(
        sorted(m.take_events()),
        [
            "stop kube-apiserver",
            "stop kube-controller-manager",
            "stop kube-scheduler"
        ]
    );
}

/// A controller that will not start does not fail UNFENCE (the data is restored and verified by
/// then) nor FENCE's revert: the outcome names it, and a replay reports it again.
#[test]
fn a_controller_that_will_not_start_is_reported_not_failed() {
    // Fence's revert (a rollback) and unfence, each on its own restore: no restore goes forward
    // after a revert.
    for what in ["fence's revert", "unfence"] {
        let m = Member::new();
        let engine = m.engine();
        let id = RestoreId::new();
        let sha = m.stage(id, b"S");
        run(&engine, id, Step::Claim, &sha);
        run(&engine, id, Step::Fence, &sha);
        m.controllers[1]
            .fails_to_start
            .store(true, Ordering::SeqCst);
        let o = if what == "unfence" {
            run(&engine, id, Step::Unfence, &sha)
        } else {
            revert(&engine, id, Step::Fence, &sha)
        };
        assert!(o.ok, "{what}");
        assert!(m.apiserver.running(), "{what}: the apiserver serves");
        assert_eq!(o.details.started, ["kube-controller-manager"], "{what}");
        let [failure] = o.details.not_started.as_slice() else {
            panic!("{what}: {:?}", o.details.not_started);
        };
        assert_eq!(failure.component, "kube-scheduler");
        assert!(
            failure.message.contains("start kube-scheduler by hand")
                && o.message.contains(&failure.message),
            "{what}: {failure:?} / {}",
            o.message
        );
        if what == "unfence" {
            let replayed = run(&engine, id, Step::Unfence, &sha);
            assert!(replayed.replayed);
            assert_eq!(replayed.details.not_started[0].component, "kube-scheduler");
        }
    }
}

/// Without controller manifests beside the apiserver's (not every control plane runs them
/// there), fence and unfence act on the apiserver alone.
#[test]
fn a_member_without_controllers_fences_the_apiserver_alone() {
    let m = Member::new();
    for c in &m.controllers {
        std::fs::remove_file(&c.manifest).expect("rm");
    }
    let engine = m.engine();
    let id = RestoreId::new();
    let sha = m.stage(id, b"S");
    run(&engine, id, Step::Claim, &sha);
    run(&engine, id, Step::Fence, &sha);
    let o = run(&engine, id, Step::Unfence, &sha);
    assert_eq!(
        m.take_events(),
        ["stop kube-apiserver", "start kube-apiserver"]
    );
    assert!(o.details.started.is_empty() && o.details.not_started.is_empty());
    assert!(engine.state.load(id).expect("journal").manifests.len() == 1);
}

/// Two coordinators on one restore: one rolled FENCE back; the other must not fence again.
#[test]
fn a_forward_step_after_a_revert_is_refused_and_changes_nothing() {
    let m = Member::new();
    let engine = m.engine();
    let id = RestoreId::new();
    let sha = m.stage(id, b"S");
    run(&engine, id, Step::Claim, &sha);
    run(&engine, id, Step::Fence, &sha);
    revert(&engine, id, Step::Fence, &sha);
    let manifest = m
        .root()
        .join("etc/kubernetes/manifests/kube-apiserver.yaml");
    assert!(manifest.exists() && m.apiserver.running.load(Ordering::SeqCst));
    let journal = std::fs::read(engine.state.journal_path(id)).expect("journal");
    for step in [Step::Fence, Step::Claim, Step::Halt] {
        let err = engine
            .execute(&request(id, step, &sha), Op::Run, &|_| {})
            .expect_err("forward after a revert");
        assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{step}: {err}");
        let msg = err.to_string();
        assert!(
            msg.contains(&format!(
                "restore {id} began rolling back on cp-1 (fence reverted): it cannot go forward \
                 again; finish the rollback with `quorate rollback {id}`"
            )),
            "{step}: {msg}"
        );
    }
    // Nothing changed: the apiserver was stopped once and started once, and still runs.
    assert_eq!(m.apiserver.stops.load(Ordering::SeqCst), 1);
    assert_eq!(m.apiserver.starts.load(Ordering::SeqCst), 1);
    assert!(manifest.exists() && m.apiserver.running.load(Ordering::SeqCst));
    assert_eq!(m.etcd.stops.load(Ordering::SeqCst), 0);
    assert_eq!(
        std::fs::read(engine.state.journal_path(id)).expect("journal"),
        journal,
        "the journal is untouched"
    );
    // The rollback itself goes on: a repeated revert replays, and the claim is released.
    assert!(revert(&engine, id, Step::Fence, &sha).replayed);
    revert(&engine, id, Step::Claim, &sha);
    assert_eq!(engine.state.active().expect("lock"), None);
    let err = engine
        .execute(&request(id, Step::Claim, &sha), Op::Run, &|_| {})
        .expect_err("claim after the rollback");
    assert!(err.to_string().contains("(claim reverted)"), "{err}");
}

/// The events in a stable order (components stopped together come in any order).
fn sorted(mut events: Vec<String>) -> Vec<String> {
    events.sort();
    events
}

/// The apiserver's start must come first; the controllers after it, in any order.
fn apiserver_first(events: Vec<String>) -> Vec<String> {
    assert_eq!(
        events.first().map(String::as_str),
        Some("start kube-apiserver"),
        "the apiserver starts before its controllers: {events:?}"
    );
    let mut rest = events[1..].to_vec();
    rest.sort();
    std::iter::once(events[0].clone()).chain(rest).collect()
}
