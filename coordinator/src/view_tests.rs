//! The human views' wording, without a terminal: a member's line while it stages (bytes, rate,
//! ETA), the summary table, the plain lines; and the live view under calls from many threads.

use std::time::{Duration, Instant, UNIX_EPOCH};

use super::*;
use crate::failure::{FailureKind, MemberFailure};

const MIB: u64 = 1 << 20;

#[test]
fn a_member_staging_shows_its_bytes_rate_and_eta() {
    let t0 = Instant::now();
    let mut line = MemberLine::new("cp-1".into());
    line.step(
        Step::Claim,
        Way::Run,
        &MemberState::Done {
            elapsed: Duration::from_millis(30),
        },
        t0,
    );
    line.staging(0, 100 * MIB, t0);
    line.staging(48 * MIB, 100 * MIB, t0 + Duration::from_secs(4));
    let text = line.render(6, t0 + Duration::from_secs(4));
    assert_eq!(
        text,
        "cp-1    stage        staging 48.0 MiB / 100.0 MiB (48%)  12.0 MiB/s  ETA 5s  4.00s"
    );
    assert!(line.busy(), "a copy under way turns the spinner");

    // The last report (every byte sent) ends the copy: done, with how long it took.
    line.staging(100 * MIB, 100 * MIB, t0 + Duration::from_secs(8));
    assert_eq!(
        line.render(6, t0 + Duration::from_secs(9)),
        "cp-1    stage        done in 8.00s"
    );
    assert!(!line.busy());
}

#[test]
fn the_first_report_of_a_copy_has_no_rate_yet() {
    let s = Staging {
        sent: 3 * MIB,
        total: 10 * MIB,
        rate: None,
    };
    assert_eq!(staging_text(&s), "staging 3.0 MiB / 10.0 MiB (30%)  ETA -");
    assert_eq!(rate(Instant::now(), 5, Instant::now(), 5), None);
}

#[test]
fn eta_reads_in_seconds_minutes_and_hours() {
    assert_eq!(eta(Duration::from_millis(4_200)), "5s");
    assert_eq!(eta(Duration::from_secs(65)), "1m05s");
    assert_eq!(eta(Duration::from_secs(2 * 3600 + 3 * 60)), "2h03m");
}

#[test]
fn member_lines_say_the_step_its_way_and_its_state() {
    let t0 = Instant::now();
    let later = t0 + Duration::from_millis(1500);
    let mut line = MemberLine::new("cp-2".into());
    assert_eq!(line.render(4, t0), "cp-2  -");
    line.step(Step::Start, Way::Run, &MemberState::Started, t0);
    line.waiting("its etcd to answer");
    assert_eq!(
        line.render(4, later),
        "cp-2  start        waiting: its etcd to answer  1.50s"
    );
    assert!(line.busy());
    let failure = MemberFailure::new("cp-2", FailureKind::Failed, "reverting halt: no etcd");
    line.step(
        Step::Halt,
        Way::Revert,
        &MemberState::Failed {
            elapsed: Duration::from_millis(310),
            failure: &failure,
        },
        later,
    );
    assert_eq!(
        line.render(4, later),
        "cp-2  undo halt    FAILED after 0.31s: reverting halt: no etcd"
    );
}

fn timing(member: &str, seconds: f64) -> MemberTiming {
    MemberTiming {
        member: member.into(),
        seconds,
    }
}

#[test]
fn the_summary_has_a_row_per_phase_a_column_per_member_and_the_total() {
    let rows = vec![
        Row {
            label: "stage".into(),
            seconds: Some(1.5),
            failed: false,
            members: vec![timing("cp-1", 1.25), timing("cp-2", 1.5)],
            began: None,
        },
        Row {
            label: "halt".into(),
            seconds: Some(2.0),
            failed: true,
            members: vec![timing("cp-2", 2.0)],
            began: None,
        },
        Row {
            label: undo_label(Phase::Halt),
            seconds: None,
            failed: false,
            members: vec![],
            began: None,
        },
    ];
    let members = vec!["cp-1".to_owned(), "cp-2".to_owned(), "cp-3".to_owned()];
    let table = summary_table(&rows, &members);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(
        lines,
        [
            "phase        seconds      cp-1      cp-2",
            "stage           1.50      1.25      1.50",
            "halt            2.00         -      2.00  FAILED",
            "undo halt          -         -         -  stopped",
            "total           3.50",
        ],
        "{table}"
    );
}

#[test]
fn timings_add_up_each_members_calls_in_the_phase_under_way() {
    let t = Timings::default();
    t.phase_started("start".into());
    let done = |ms| MemberState::Done {
        elapsed: Duration::from_millis(ms),
    };
    t.member_step("cp-1", &MemberState::Started);
    t.member_step("cp-1", &done(250));
    t.member_step("cp-1", &done(500));
    t.member_step("cp-2", &done(100));
    t.phase_ended(Duration::from_secs(1), false);
    let rows = t.rows();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].seconds, Some(1.0));
    let cp1 = rows[0].members.iter().find(|m| m.member == "cp-1");
    assert_eq!(cp1.map(|m| m.seconds), Some(0.75));
}

/// A member's STAGE time counts its copy, not only its claim, as the report does.
#[test]
fn a_members_stage_time_runs_until_its_copy_is_complete() {
    let t = Timings::default();
    t.phase_started("stage".into());
    t.member_step(
        "cp-1",
        &MemberState::Done {
            elapsed: Duration::from_millis(10),
        },
    );
    std::thread::sleep(Duration::from_millis(60));
    t.member_staged("cp-1");
    t.phase_ended(Duration::from_millis(70), false);
    let rows = t.rows();
    let cp1 = rows[0].members.iter().find(|m| m.member == "cp-1");
    assert!(cp1.is_some_and(|m| m.seconds >= 0.06), "{rows:?}");
}

#[test]
fn plain_lines_carry_a_timestamp_and_no_control_characters() {
    let at = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
    let text = crate::lines::line(at, "cp-1 halt FAILED: \u{1b}[31mred\u{7}\nsecond line");
    assert_eq!(
        text,
        "2023-11-14T22:13:20.123Z cp-1 halt FAILED:  [31mred \n2023-11-14T22:13:20.123Z second line"
    );
    let step = crate::lines::step_text(
        "cp-3",
        Step::Halt,
        Way::Run,
        &MemberState::Done {
            elapsed: Duration::from_millis(1200),
        },
    );
    assert_eq!(step.as_deref(), Some("cp-3 halt done in 1.20s"));
}

/// Many tasks report at once, as the stage does: the view neither deadlocks nor panics, and its
/// summary holds every member's time.
#[test]
fn the_live_view_takes_calls_from_many_threads() {
    let names: Vec<String> = (1..=5).map(|i| format!("cp-{i}")).collect();
    let view = crate::live::LiveView::new(names.clone());
    view.phase_started(Phase::Stage, 1);
    std::thread::scope(|s| {
        for name in &names {
            let view = &view;
            s.spawn(move || {
                view.member_step(name, Step::Claim, Way::Run, MemberState::Started);
                for k in 0..=500u64 {
                    view.staging(name, k * MIB, 500 * MIB);
                }
                view.waiting(name, "its etcd to answer");
                view.member_step(
                    name,
                    Step::Claim,
                    Way::Run,
                    MemberState::Done {
                        elapsed: Duration::from_millis(5),
                    },
                );
            });
        }
    });
    view.phase_done(Phase::Stage, Duration::from_millis(50));
    let rows = view_rows(&view);
    assert_eq!(rows.len(), 1);
    assert_eq!(
        rows[0].members.len(),
        5,
        "every member's time is in the summary"
    );
    view.finish();
}

fn view_rows(view: &crate::live::LiveView) -> Vec<Row> {
    view.rows()
}
