//! The human view where stderr is not a terminal (a log file, a pipe, CI): plain lines, each
//! with its UTC timestamp, no control characters: one per phase start and end, one per member
//! step's end (and retry, and wait), the snapshot's copy every few seconds per member; the
//! summary table at the end.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use quorate_proto::model::Step;

use crate::engine::Direction;
use crate::failure::Failures;
use crate::phases::Phase;
use crate::restore::{MemberState, Observer, Way};
use crate::view::{self, Staging, Timings};

/// How often a member's copy of the snapshot is reported.
const STAGING_EVERY: Duration = Duration::from_secs(3);

pub struct LineView {
    members: Vec<String>,
    timings: Timings,
    /// Per member: when its copy began (and with how many bytes), and when it was last reported.
    staging: Mutex<HashMap<String, StagingSeen>>,
}

#[derive(Clone, Copy)]
struct StagingSeen {
    from: Instant,
    from_sent: u64,
    told: Instant,
}

impl LineView {
    pub fn new(members: Vec<String>) -> Self {
        Self {
            members,
            timings: Timings::default(),
            staging: Mutex::new(HashMap::new()),
        }
    }

    fn say(&self, text: &str) {
        eprintln!("{}", line(SystemTime::now(), text));
    }
}

/// `2025-05-01T03:12:09.123Z text`; the lines of a text of several lines each get the stamp.
pub fn line(at: SystemTime, text: &str) -> String {
    let stamp = humantime::format_rfc3339_millis(at).to_string();
    text.lines()
        .map(|l| format!("{stamp} {}", strip_controls(l)))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Drops control characters (an agent's error text could carry some).
fn strip_controls(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// `m1 halt done in 1.20s`, `m2 undo halt FAILED after 0.31s: …`, `m3 start retrying: …`; `None`
/// for a step's start (the phase's start says it).
pub fn step_text(member: &str, step: Step, way: Way, state: &MemberState<'_>) -> Option<String> {
    let step = match way {
        Way::Run => step.name().to_owned(),
        Way::Revert => format!("undo {step}"),
    };
    match state {
        MemberState::Started => None,
        MemberState::Retrying { error } => Some(format!("{member} {step} retrying: {error}")),
        MemberState::Done { elapsed } => {
            Some(format!("{member} {step} done in {}", view::secs(*elapsed)))
        }
        MemberState::Failed { elapsed, failure } => Some(format!(
            "{member} {step} FAILED after {}: {}",
            view::secs(*elapsed),
            failure.message
        )),
    }
}

impl Observer for LineView {
    fn phase_started(&self, phase: Phase, index: usize) {
        self.timings.phase_started(phase.name().to_owned());
        self.say(&format!("[{index}/{}] {phase} started", Phase::ALL.len()));
    }

    fn phase_done(&self, phase: Phase, elapsed: Duration) {
        self.timings.phase_ended(elapsed, false);
        self.say(&format!("{phase} done in {}", view::secs(elapsed)));
    }

    fn note(&self, text: &str) {
        self.say(text);
    }

    fn revert_started(&self, phase: Phase) {
        self.timings.phase_started(view::undo_label(phase));
        self.say(&format!("rollback: undoing {phase}"));
    }

    fn revert_done(&self, phase: Phase, elapsed: Duration) {
        self.timings.phase_ended(elapsed, false);
        self.say(&format!(
            "rollback: {phase} undone in {}",
            view::secs(elapsed)
        ));
    }

    fn phase_failed(
        &self,
        phase: Phase,
        direction: Direction,
        elapsed: Duration,
        failures: &Failures,
    ) {
        self.timings.phase_ended(elapsed, true);
        self.say(&view::failed_text(phase, direction, elapsed));
        for f in failures {
            self.say(&format!("  {f}"));
        }
    }

    fn member_step(&self, member: &str, step: Step, way: Way, state: MemberState<'_>) {
        self.timings.member_step(member, &state);
        if let Some(text) = step_text(member, step, way, &state) {
            self.say(&text);
        }
    }

    fn staging(&self, member: &str, sent: u64, total: u64) {
        if sent >= total {
            self.timings.member_staged(member);
        }
        let now = Instant::now();
        let Ok(mut seen) = self.staging.lock() else {
            return;
        };
        let first = !seen.contains_key(member);
        let s = seen.entry(member.to_owned()).or_insert(StagingSeen {
            from: now,
            from_sent: sent,
            told: now,
        });
        let ended = sent >= total;
        if !(first || ended || now.duration_since(s.told) >= STAGING_EVERY) {
            return;
        }
        s.told = now;
        let seen_now = *s;
        drop(seen);
        let text = if ended {
            let took = now.duration_since(seen_now.from);
            format!(
                "{member} staged {} in {}",
                view::mib(total as f64),
                view::secs(took)
            )
        } else {
            let rate = view::rate(seen_now.from, seen_now.from_sent, now, sent);
            format!(
                "{member} {}",
                view::staging_text(&Staging { sent, total, rate })
            )
        };
        self.say(&text);
    }

    fn waiting(&self, member: &str, why: &str) {
        self.say(&format!("{member} waiting: {why}"));
    }

    fn finish(&self) {
        let rows = self.timings.rows();
        if rows.is_empty() {
            return;
        }
        eprintln!("{}", view::summary_table(&rows, &self.members).trim_end());
    }
}
