//! The step engine on a member in a temp dir, with a fake runtime and a fake restore tool.

mod common;

use std::os::unix::fs::PermissionsExt as _;
use std::sync::atomic::Ordering;

use common::{Member, request};
use quorate_agent::engine::{Engine, Outcome};
use quorate_agent::journal::Op;
use quorate_proto::model::{RestoreId, Step};

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
    for step in Step::ALL {
        let o = run(&engine, id, step, &sha);
        assert!(!o.replayed, "{step}");
    }
    let data = m.data_dir();
    let preserved = std::path::PathBuf::from(format!("{}.quorate-{id}", data.display()));
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
    }
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
    assert_eq!(o.details.get("code").map(String::as_str), Some("DataLoss"));
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
    assert_eq!(
        (d.active_step.as_str(), d.active_step_state.as_str()),
        ("halt", "done")
    );
    assert!(d.apiserver_present && !d.etcd_running);
    assert!(d.data_dir_bytes >= 8 && d.free_bytes > 0);
    assert_eq!(d.restore_tool.expect("tool").version, "3.5.1");
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
