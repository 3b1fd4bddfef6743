//! `report` and `list` over state dirs written by the real journal, report and rollback types: a
//! finished restore, a rolled-back one, a stopped one, one past the point of no return, one
//! under way.

use super::*;
use crate::failure::FailureKind;
use crate::journal::PhaseFacts;
use crate::progress::{MemberTiming, PhaseTiming};
use crate::report_doc;
use crate::restore::tests::{inventory, plan_for};
use crate::verify::{MemberView, Verified};

fn views(cluster_id: u64, first_id: u64) -> Vec<MemberView> {
    (1..=3)
        .map(|i| MemberView {
            name: format!("cp-{i}"),
            member_id: first_id + i,
            cluster_id,
            leader: first_id + 1,
            revision: 900,
        })
        .collect()
}

fn verified(cluster_id: u64, first_id: u64, revision: i64) -> Verified {
    Verified {
        cluster_id,
        members: views(cluster_id, first_id),
        revision,
        hash: 0xbeef,
        keys: 12,
    }
}

/// A new restore's state dir under `state`, journaled up to (not including) `upto`.
fn journal_upto(state: &Path, upto: Phase) -> (Journal, Plan) {
    let inv = inventory(3);
    let plan = plan_for(&inv);
    let mut j = Journal::create(state, &plan, &inv, &Holder::me("restore")).expect("create");
    j.record(Entry::Preflight {
        before: views(0x1111, 0x100),
    })
    .expect("record");
    for phase in Phase::ALL.into_iter().take_while(|p| *p < upto) {
        j.record(Entry::Begin { phase }).expect("record");
        let facts = match phase {
            Phase::Stage => PhaseFacts::Staged {
                snapshot_revision: Some(850),
            },
            Phase::Verify => PhaseFacts::Verified {
                verified: verified(0x2222, 0x200, 1850),
            },
            Phase::Unfence => PhaseFacts::Unfenced {
                restarted: vec![(
                    "cp-1".into(),
                    "kube-controller-manager, kube-scheduler".into(),
                )],
            },
            _ => PhaseFacts::None,
        };
        j.record(Entry::Done { phase, facts }).expect("record");
    }
    (j, plan)
}

fn failure(member: &str, message: &str) -> MemberFailure {
    MemberFailure::new(member, FailureKind::Failed, message)
}

fn finished(state: &Path) -> RestoreId {
    let (j, plan) = journal_upto(state, Phase::Finish);
    let mut j = j;
    j.record(Entry::Begin {
        phase: Phase::Finish,
    })
    .expect("record");
    j.record(Entry::Done {
        phase: Phase::Finish,
        facts: PhaseFacts::None,
    })
    .expect("record");
    let report = Report {
        restore_id: plan.restore_id,
        cluster_token: plan.cluster_token.clone(),
        snapshot_sha256: plan.snapshot.sha256.clone(),
        snapshot_revision: Some(850),
        revision_before: Some(900),
        revision_bump: 1000,
        skip_hash_check: false,
        restarted: vec![(
            "cp-1".into(),
            "kube-controller-manager, kube-scheduler".into(),
        )],
        before: views(0x1111, 0x100),
        after: verified(0x2222, 0x200, 1850),
        phases: Phase::ALL
            .iter()
            .map(|p| PhaseTiming {
                phase: *p,
                seconds: 1.0,
                members: (1..=3)
                    .map(|i| MemberTiming {
                        member: format!("cp-{i}"),
                        seconds: 0.25 * f64::from(i),
                    })
                    .collect(),
            })
            .collect(),
        total_seconds: 10.5,
        preserved_dirs: plan
            .members
            .iter()
            .map(|m| (m.name.clone(), m.preserved_text(plan.restore_id)))
            .collect(),
    };
    j.write_json("report.json", &report).expect("report");
    plan.restore_id
}

fn rolled_back(state: &Path) -> RestoreId {
    let (mut j, plan) = journal_upto(state, Phase::Fence);
    j.record(Entry::Begin {
        phase: Phase::Fence,
    })
    .expect("record");
    j.record(Entry::Failed {
        phase: Phase::Fence,
        failures: vec![failure("cp-2", "step fence: kube-apiserver did not stop")],
    })
    .expect("record");
    j.record(Entry::RollbackBegin { forced: false })
        .expect("record");
    for phase in [Phase::Fence, Phase::Prepare, Phase::Stage] {
        j.record(Entry::RevertBegin { phase }).expect("record");
        j.record(Entry::RevertDone { phase }).expect("record");
    }
    let original = verified(0x1111, 0x100, 900);
    j.record(Entry::RollbackDone {
        original: original.clone(),
    })
    .expect("record");
    let rollback = RollbackReport {
        restore_id: plan.restore_id,
        reverted: vec![PhaseTiming {
            phase: Phase::Fence,
            seconds: 0.5,
            members: vec![MemberTiming {
                member: "cp-2".into(),
                seconds: 0.4,
            }],
        }],
        cluster_id: 0x1111,
        original,
        total_seconds: 2.5,
    };
    j.write_json("rollback.json", &rollback).expect("rollback");
    plan.restore_id
}

fn stopped(state: &Path, at: Phase) -> RestoreId {
    let (mut j, plan) = journal_upto(state, at);
    j.record(Entry::Begin { phase: at }).expect("record");
    j.record(Entry::Failed {
        phase: at,
        failures: vec![failure("cp-3", "step preserve: rename: permission denied")],
    })
    .expect("record");
    plan.restore_id
}

#[test]
fn a_finished_restore_reports_its_plan_ids_revisions_times_and_preserved_dirs() {
    let state = tempfile::tempdir().expect("tempdir");
    let id = finished(state.path());
    let r = Record::read(state.path(), id).expect("read");
    assert_eq!(r.outcome, Outcome::Restored);
    assert_eq!(r.seconds(), Some(10.5));
    let md = report_doc::render(&r, DocFormat::Markdown);
    for m in &r.plan.members {
        assert!(md.contains(&m.name), "{md}");
        assert!(md.contains(&m.peer_urls[0]), "peer URL of {}: {md}", m.name);
        assert!(md.contains(&m.preserved_text(id)), "{md}");
    }
    for needle in [
        "# Restore",
        "- **outcome:** restored",
        &r.plan.cluster_token,
        &"a".repeat(64),
        "- **snapshot revision:** 850",
        "- **cluster ID before:** 1111",
        "- **cluster ID after:** 2222",
        "- **revision before:** 900",
        "- **revision after:** 1850 (12 keys, HashKV beef on every member)",
        "| cp-2 | 102 | 202 |",
        "| phase | total | cp-1 | cp-2 | cp-3 |",
        "| quorum | 1.00 | 0.25 | 0.50 | 0.75 |",
        "- **cp-1:** kube-controller-manager, kube-scheduler",
    ] {
        assert!(md.contains(needle), "no {needle:?} in\n{md}");
    }
    assert!(!md.contains("## Failures"), "{md}");
    let text = report_doc::render(&r, DocFormat::Text);
    assert!(text.contains("  outcome: restored"), "{text}");
    assert!(!text.contains("**") && !text.contains('|'), "{text}");
}

#[test]
fn a_rolled_back_restore_reports_what_failed_and_the_original_cluster_back() {
    let state = tempfile::tempdir().expect("tempdir");
    let id = rolled_back(state.path());
    let r = Record::read(state.path(), id).expect("read");
    assert_eq!(r.outcome, Outcome::RolledBack);
    let text = report_doc::render(&r, DocFormat::Text);
    for needle in [
        "outcome: rolled back",
        "kube-apiserver did not stop",
        "cluster ID after rollback: 1111",
        "revision after rollback: 900",
        "Rolled back in 2.5s",
        "undo fence",
    ] {
        assert!(text.contains(needle), "no {needle:?} in\n{text}");
    }
    // The undo's per-member time comes from rollback.json.
    let undo = report_doc::rows(&r)
        .into_iter()
        .find(|row| row.label == "undo fence")
        .expect("undo fence row");
    assert_eq!(undo.members.len(), 1);
    assert!(
        !text.contains("Original data dirs"),
        "preserve never began: {text}"
    );
}

#[test]
fn a_stopped_restore_names_its_phase_failures_and_where_the_data_is() {
    let state = tempfile::tempdir().expect("tempdir");
    let id = stopped(state.path(), Phase::Preserve);
    let r = Record::read(state.path(), id).expect("read");
    assert_eq!(
        r.outcome,
        Outcome::Stopped {
            phase: "preserve".into()
        }
    );
    let md = report_doc::render(&r, DocFormat::Markdown);
    for needle in [
        "stopped in preserve",
        "| preserve | cp-3 | failed | step preserve: rename: permission denied |",
        "## Original data dirs",
        &format!("quorate resume {id}"),
        &format!("quorate rollback {id}"),
    ] {
        assert!(md.contains(needle), "no {needle:?} in\n{md}");
    }
    let preserve = report_doc::rows(&r)
        .into_iter()
        .find(|row| row.label == "preserve")
        .expect("preserve row");
    assert!(preserve.failed && preserve.seconds.is_some());
}

#[test]
fn a_restore_stopped_after_verify_is_past_no_return() {
    let state = tempfile::tempdir().expect("tempdir");
    let id = stopped(state.path(), Phase::Unfence);
    let r = Record::read(state.path(), id).expect("read");
    assert_eq!(
        r.outcome,
        Outcome::PastNoReturn {
            phase: "unfence".into()
        }
    );
    assert!(r.outcome.to_string().starts_with("past no return"));
}

#[test]
fn list_shows_every_restore_newest_first_with_its_outcome() {
    let state = tempfile::tempdir().expect("tempdir");
    let old = finished(state.path());
    std::thread::sleep(std::time::Duration::from_millis(20));
    let middle = rolled_back(state.path());
    std::thread::sleep(std::time::Duration::from_millis(20));
    // Held: its journal (and lock) stays open while list reads.
    let (held, plan) = journal_upto(state.path(), Phase::Halt);
    // A stray dir and a dir without a journal are not restores.
    fs::create_dir(state.path().join("not-a-restore")).expect("dir");
    fs::create_dir(state.path().join(RestoreId::new().to_string())).expect("dir");
    let records = list(state.path()).expect("list");
    let lines: Vec<String> = records.iter().map(list_line).collect();
    assert_eq!(lines.len(), 3, "{lines:#?}");
    assert!(
        lines[0].starts_with(&plan.restore_id.to_string()),
        "{lines:#?}"
    );
    assert!(lines[0].contains("under way (in fence)"), "{lines:#?}");
    assert!(lines[1].starts_with(&middle.to_string()), "{lines:#?}");
    assert!(lines[1].contains("  rolled back  "), "{lines:#?}");
    assert!(lines[2].starts_with(&old.to_string()), "{lines:#?}");
    assert!(
        lines[2].contains("snap.db (sha256 aaaaaaaaaaaa)  restored  10.5s"),
        "{lines:#?}"
    );
    drop(held);
    let records = list(state.path()).expect("list");
    assert!(list_line(&records[0]).contains("stopped in fence"));
}

#[test]
fn list_of_a_missing_state_dir_is_empty() {
    let state = tempfile::tempdir().expect("tempdir");
    let records = list(&state.path().join("none")).expect("list");
    assert!(records.is_empty());
}
