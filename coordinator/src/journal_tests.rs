//! The journal's format (golden lines), its torn-line and corruption rules, and its lock.

use std::io::Write as _;

use super::*;
use crate::failure::FailureKind;
use crate::restore::tests::{inventory, plan_for};

fn line(entry: Entry) -> String {
    serde_json::to_string(&Line {
        v: FORMAT,
        at_ms: 1_700_000_000_000,
        entry,
    })
    .expect("json")
}

fn verified() -> Verified {
    Verified {
        cluster_id: 0xabc,
        members: vec![MemberView {
            name: "cp-1".into(),
            member_id: 1,
            cluster_id: 0xabc,
            leader: 1,
            revision: 42,
        }],
        revision: 42,
        hash: 7,
        keys: 3,
    }
}

/// Each entry as it is written. A change here is a format change: raise [`FORMAT`] and keep
/// reading the old one.
#[test]
fn golden_lines() {
    let golden = [
        (
            Entry::Preflight { before: vec![] },
            r#"{"v":1,"at_ms":1700000000000,"entry":"preflight","before":[]}"#,
        ),
        (
            Entry::Begin {
                phase: Phase::Stage,
            },
            r#"{"v":1,"at_ms":1700000000000,"entry":"begin","phase":"stage"}"#,
        ),
        (
            Entry::Done {
                phase: Phase::Stage,
                facts: PhaseFacts::Staged {
                    snapshot_revision: Some(42),
                },
            },
            r#"{"v":1,"at_ms":1700000000000,"entry":"done","phase":"stage","facts":{"kind":"staged","snapshot_revision":42}}"#,
        ),
        (
            Entry::Done {
                phase: Phase::Halt,
                facts: PhaseFacts::None,
            },
            r#"{"v":1,"at_ms":1700000000000,"entry":"done","phase":"halt","facts":{"kind":"none"}}"#,
        ),
        (
            Entry::Done {
                phase: Phase::Verify,
                facts: PhaseFacts::Verified {
                    verified: verified(),
                },
            },
            r#"{"v":1,"at_ms":1700000000000,"entry":"done","phase":"verify","facts":{"kind":"verified","verified":{"cluster_id":2748,"members":[{"name":"cp-1","member_id":1,"cluster_id":2748,"leader":1,"revision":42}],"revision":42,"hash":7,"keys":3}}}"#,
        ),
        (
            Entry::Done {
                phase: Phase::Unfence,
                facts: PhaseFacts::Unfenced {
                    restarted: vec![("cp-1".into(), "kube-scheduler".into())],
                },
            },
            r#"{"v":1,"at_ms":1700000000000,"entry":"done","phase":"unfence","facts":{"kind":"unfenced","restarted":[["cp-1","kube-scheduler"]]}}"#,
        ),
        (
            Entry::Failed {
                phase: Phase::Quorum,
                failures: vec![MemberFailure::new(
                    "cp-2",
                    FailureKind::Timeout,
                    "no answer",
                )],
            },
            r#"{"v":1,"at_ms":1700000000000,"entry":"failed","phase":"quorum","failures":[{"member":"cp-2","kind":"timeout","message":"no answer"}]}"#,
        ),
        (
            Entry::RollbackBegin { forced: true },
            r#"{"v":1,"at_ms":1700000000000,"entry":"rollback-begin","forced":true}"#,
        ),
        (
            Entry::RevertBegin { phase: Phase::Halt },
            r#"{"v":1,"at_ms":1700000000000,"entry":"revert-begin","phase":"halt"}"#,
        ),
        (
            Entry::RevertDone { phase: Phase::Halt },
            r#"{"v":1,"at_ms":1700000000000,"entry":"revert-done","phase":"halt"}"#,
        ),
        (
            Entry::RevertFailed {
                phase: Phase::Fence,
                failures: vec![MemberFailure::coordinator("x")],
            },
            r#"{"v":1,"at_ms":1700000000000,"entry":"revert-failed","phase":"fence","failures":[{"member":"coordinator","kind":"coordinator","message":"x"}]}"#,
        ),
        (
            Entry::RollbackVerifyFailed {
                failures: vec![MemberFailure::cluster("y")],
            },
            r#"{"v":1,"at_ms":1700000000000,"entry":"rollback-verify-failed","failures":[{"member":"cluster","kind":"unhealthy","message":"y"}]}"#,
        ),
        (
            Entry::RollbackDone {
                original: Verified {
                    members: vec![],
                    ..verified()
                },
            },
            r#"{"v":1,"at_ms":1700000000000,"entry":"rollback-done","original":{"cluster_id":2748,"members":[],"revision":42,"hash":7,"keys":3}}"#,
        ),
    ];
    for (entry, text) in golden {
        assert_eq!(line(entry.clone()), text, "written");
        assert_eq!(decode(text.as_bytes()), Ok(entry), "read back");
    }
}

#[test]
fn lines_of_another_format_or_with_missing_facts_are_unreadable() {
    let old = r#"{"at_ms":1,"phase":"stage","event":"begin"}"#;
    assert!(
        decode(old.as_bytes())
            .expect_err("v0")
            .contains("older quorate")
    );
    let newer = r#"{"v":2,"at_ms":1,"entry":"begin","phase":"stage"}"#;
    assert!(
        decode(newer.as_bytes())
            .expect_err("v2")
            .contains("format 2")
    );
    // VERIFY done without the verified cluster: no default stands in for it.
    let bare = r#"{"v":1,"at_ms":1,"entry":"done","phase":"verify","facts":{"kind":"verified"}}"#;
    assert!(decode(bare.as_bytes()).is_err());
    let unknown_phase = r#"{"v":1,"at_ms":1,"entry":"begin","phase":"defrost"}"#;
    assert!(decode(unknown_phase.as_bytes()).is_err());
}

struct Made {
    dir: tempfile::TempDir,
    id: RestoreId,
}

/// A journal with preflight and stage begun and done, its lock released.
fn made() -> Made {
    let dir = tempfile::tempdir().expect("tempdir");
    let inv = inventory(3);
    let plan = plan_for(&inv);
    let mut j = Journal::create(dir.path(), &plan, &inv, &Holder::me("restore")).expect("create");
    j.record(Entry::Preflight { before: vec![] })
        .expect("record");
    j.record(Entry::Begin {
        phase: Phase::Stage,
    })
    .expect("record");
    j.record(Entry::Done {
        phase: Phase::Stage,
        facts: PhaseFacts::Staged {
            snapshot_revision: Some(9),
        },
    })
    .expect("record");
    Made {
        dir,
        id: plan.restore_id,
    }
}

fn journal_file(m: &Made) -> PathBuf {
    m.dir.path().join(m.id.to_string()).join("journal.jsonl")
}

fn append(m: &Made, bytes: &[u8]) {
    let mut f = OpenOptions::new()
        .append(true)
        .open(journal_file(m))
        .expect("open");
    f.write_all(bytes).expect("append");
}

#[test]
fn a_torn_last_line_is_truncated_before_the_next_append() {
    let m = made();
    let full = line(Entry::Begin {
        phase: Phase::Fence,
    });
    append(&m, &full.as_bytes()[..full.len() / 2]);
    // status reads it without changing it.
    let read = Journal::read(m.dir.path(), m.id).expect("read");
    assert_eq!(read.entries.len(), 3);
    assert!(read.holder.is_none());
    let opened = Journal::open(m.dir.path(), m.id, &Holder::me("resume")).expect("open");
    assert_eq!(opened.truncated, Some(4));
    assert_eq!(opened.entries.len(), 3);
    let mut journal = opened.journal;
    journal
        .record(Entry::Begin {
            phase: Phase::Fence,
        })
        .expect("record");
    let text = std::fs::read_to_string(journal_file(&m)).expect("read");
    assert!(text.ends_with('\n'));
    for (n, l) in text.lines().enumerate() {
        decode(l.as_bytes()).unwrap_or_else(|e| panic!("line {}: {e}: {l}", n + 1));
    }
    assert_eq!(text.lines().count(), 4);
}

#[test]
fn a_complete_last_line_without_its_newline_is_torn_too() {
    let m = made();
    append(
        &m,
        line(Entry::Begin {
            phase: Phase::Fence,
        })
        .as_bytes(),
    );
    let opened = Journal::open(m.dir.path(), m.id, &Holder::me("resume")).expect("open");
    assert_eq!(opened.truncated, Some(4));
    assert_eq!(
        opened.entries.len(),
        3,
        "never acknowledged, so never acted on"
    );
}

#[test]
fn an_unreadable_line_before_the_last_is_corruption_naming_file_and_line() {
    let m = made();
    append(&m, b"{\"v\":1,\"garbage\n");
    append(
        &m,
        format!(
            "{}\n",
            line(Entry::Begin {
                phase: Phase::Fence
            })
        )
        .as_bytes(),
    );
    let before = std::fs::read(journal_file(&m)).expect("read");
    let err = Journal::open(m.dir.path(), m.id, &Holder::me("resume")).expect_err("corrupt");
    let text = err.to_string();
    assert!(
        matches!(err, JournalError::Corrupt { line: 4, .. }),
        "{text}"
    );
    assert!(text.contains("journal.jsonl line 4"), "{text}");
    assert_eq!(
        std::fs::read(journal_file(&m)).expect("read"),
        before,
        "nothing was changed"
    );
    assert!(
        Journal::read(m.dir.path(), m.id).is_err(),
        "status says so too"
    );
}

#[test]
fn a_second_coordinator_is_refused_naming_the_holder_and_the_lock_goes_with_it() {
    let m = made();
    let first = Journal::open(m.dir.path(), m.id, &Holder::me("resume")).expect("first");
    let err = Journal::open(m.dir.path(), m.id, &Holder::me("rollback")).expect_err("second");
    let text = err.to_string();
    assert!(matches!(err, JournalError::Held { .. }), "{text}");
    assert!(
        text.contains(&format!("pid {}", std::process::id())) && text.contains(&hostname()),
        "{text}"
    );
    assert!(text.contains("`quorate resume`"), "{text}");
    let read = Journal::read(m.dir.path(), m.id).expect("status is never refused");
    assert_eq!(read.holder.map(|h| h.command), Some("resume".to_owned()));
    drop(first);
    Journal::open(m.dir.path(), m.id, &Holder::me("rollback")).expect("free again");
}

#[test]
fn a_missing_restore_says_where_it_looked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let id = RestoreId::new();
    let err = Journal::read(dir.path(), id).expect_err("missing");
    assert!(err.to_string().contains("--state-dir"), "{err}");
}

/// A plan or inventory edited after planning (another token, a hostile name) is not carried to
/// the agents: resume and rollback refuse it, naming the file.
#[test]
fn an_edited_plan_token_or_inventory_name_is_refused_on_resume() {
    let m = made();
    let dir = m.dir.path().join(m.id.to_string());
    let plan_path = dir.join("plan.json");
    let plan = fs::read_to_string(&plan_path).expect("plan");
    let token = m.id.cluster_token();
    assert!(plan.contains(&token), "the plan holds the restore's token");
    fs::write(&plan_path, plan.replace(&token, "quorate-other")).expect("edit");
    let err = Journal::open(m.dir.path(), m.id, &Holder::me("resume")).expect_err("edited token");
    let text = err.to_string();
    assert!(
        text.contains("plan.json") && text.contains("cluster token"),
        "{text}"
    );
    fs::write(&plan_path, &plan).expect("put back");
    Journal::open(m.dir.path(), m.id, &Holder::me("resume")).expect("the original plan");

    let inv_path = dir.join("inventory.toml");
    let inv = fs::read_to_string(&inv_path).expect("inventory");
    fs::write(&inv_path, inv.replacen("cp-1", "cp-1;id", 1)).expect("edit");
    let err = Journal::open(m.dir.path(), m.id, &Holder::me("resume")).expect_err("edited name");
    let text = err.to_string();
    assert!(
        text.contains("inventory.toml") && text.contains("\"cp-1;id\""),
        "{text}"
    );
}
