//! What the human views share: the times each phase (and each member in it) took as the run
//! goes, the summary table printed at the end, and the wording of a member's line.
//!
//! Two views render a run for a person: [`crate::live::LiveView`] on a terminal (indicatif: a
//! phase header and one line per member, redrawn in place) and [`crate::lines::LineView`]
//! elsewhere (plain timestamped lines, no control characters). `--quiet` uses [`Quiet`]: only
//! the result is printed.

use std::fmt::Write as _;
use std::io::IsTerminal as _;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use quorate_proto::model::Step;

use crate::phases::Phase;
use crate::progress::{MemberTiming, PhaseTiming};
use crate::restore::{MemberState, Observer, Way};

/// The line of a phase (or its undo) that failed after `elapsed`.
pub fn failed_text(phase: Phase, direction: crate::engine::Direction, elapsed: Duration) -> String {
    match direction {
        crate::engine::Direction::Forward => format!("{phase} FAILED after {}", secs(elapsed)),
        crate::engine::Direction::Backward => {
            format!("rollback: undoing {phase} FAILED after {}", secs(elapsed))
        }
    }
}

/// The view for human output: live on a terminal, plain lines elsewhere, nothing with `quiet`.
/// `members` are the agents' names in inventory order (members, then apiserver hosts).
pub fn human(quiet: bool, members: Vec<String>) -> Box<dyn Observer> {
    if quiet {
        Box::new(Quiet)
    } else if std::io::stderr().is_terminal() {
        Box::new(crate::live::LiveView::new(members))
    } else {
        Box::new(crate::lines::LineView::new(members))
    }
}

/// `--quiet`: nothing but the result, which `output` prints.
pub struct Quiet;

impl Observer for Quiet {
    fn phase_started(&self, _phase: Phase, _index: usize) {}
    fn phase_done(&self, _phase: Phase, _elapsed: Duration) {}
    fn note(&self, _text: &str) {}
    fn revert_started(&self, _phase: Phase) {}
}

/// One row of the summary: a phase run forward, or undone in a rollback.
#[derive(Debug, Clone)]
pub struct Row {
    pub label: String,
    /// `None`: the phase did not end (the run stopped in it).
    pub seconds: Option<f64>,
    pub failed: bool,
    pub members: Vec<MemberTiming>,
    /// When the phase began (a member's copy of the snapshot is timed from it).
    pub began: Option<std::time::Instant>,
}

impl Row {
    pub fn from_timing(t: &PhaseTiming, label: String) -> Self {
        Self {
            label,
            seconds: Some(t.seconds),
            failed: false,
            members: t.members.clone(),
            began: None,
        }
    }
}

/// The rows of this run, filled from the observer's calls (which come from concurrent tasks).
#[derive(Debug, Default)]
pub struct Timings(Mutex<Vec<Row>>);

impl Timings {
    pub fn phase_started(&self, label: String) {
        self.with(|rows| {
            rows.push(Row {
                label,
                seconds: None,
                failed: false,
                members: Vec::new(),
                began: Some(std::time::Instant::now()),
            });
        });
    }

    /// The current phase ended after `elapsed`.
    pub fn phase_ended(&self, elapsed: Duration, failed: bool) {
        self.with(|rows| {
            if let Some(row) = rows.last_mut() {
                row.seconds = Some(elapsed.as_secs_f64());
                row.failed = failed;
            }
        });
    }

    /// One member's call in the current phase ended after `elapsed` (its calls add up).
    pub fn member_ended(&self, member: &str, elapsed: Duration) {
        self.with(|rows| {
            let Some(row) = rows.last_mut() else { return };
            match row.members.iter_mut().find(|m| m.member == member) {
                Some(m) => m.seconds += elapsed.as_secs_f64(),
                None => row.members.push(MemberTiming {
                    member: member.to_owned(),
                    seconds: elapsed.as_secs_f64(),
                }),
            }
        });
    }

    /// A member's copy of the snapshot is complete: its time in the phase is at least the time
    /// since the phase began (its claim, then its copy), as the report counts it.
    pub fn member_staged(&self, member: &str) {
        self.with(|rows| {
            let Some(row) = rows.last_mut() else { return };
            let Some(since) = row.began.map(|b| b.elapsed().as_secs_f64()) else {
                return;
            };
            match row.members.iter_mut().find(|m| m.member == member) {
                Some(m) => m.seconds = m.seconds.max(since),
                None => row.members.push(MemberTiming {
                    member: member.to_owned(),
                    seconds: since,
                }),
            }
        });
    }

    /// Feeds a member's step change in.
    pub fn member_step(&self, member: &str, state: &MemberState<'_>) {
        match state {
            MemberState::Done { elapsed } | MemberState::Failed { elapsed, .. } => {
                self.member_ended(member, *elapsed);
            }
            MemberState::Started | MemberState::Retrying { .. } => {}
        }
    }

    pub fn rows(&self) -> Vec<Row> {
        self.0.lock().map(|r| r.clone()).unwrap_or_default()
    }

    fn with(&self, f: impl FnOnce(&mut Vec<Row>)) {
        if let Ok(mut rows) = self.0.lock() {
            f(&mut rows);
        }
    }
}

/// The label of a phase undone in a rollback.
pub fn undo_label(phase: Phase) -> String {
    format!("undo {phase}")
}

/// The summary: a row per phase (forward, or undone), its time, and each member's time in it;
/// then the total. `members` gives the column order; a member in no row has no column.
pub fn summary_table(rows: &[Row], members: &[String]) -> String {
    let mut columns: Vec<&str> = members
        .iter()
        .map(String::as_str)
        .filter(|m| {
            rows.iter()
                .any(|r| r.members.iter().any(|t| t.member == *m))
        })
        .collect();
    // Members not named up front (none, normally) still get their column.
    for r in rows {
        for t in &r.members {
            if !columns.contains(&t.member.as_str()) {
                columns.push(&t.member);
            }
        }
    }
    let label_width = rows
        .iter()
        .map(|r| r.label.len())
        .chain(["phase".len(), "total".len()])
        .max()
        .unwrap_or(5);
    let widths: Vec<usize> = columns.iter().map(|c| c.len().max(8)).collect();
    let mut out = String::new();
    let _ = write!(out, "{:<label_width$}  {:>9}", "phase", "seconds");
    for (c, w) in columns.iter().zip(&widths) {
        let _ = write!(out, "  {c:>w$}");
    }
    out.push('\n');
    let mut total = 0.0;
    for r in rows {
        let seconds = match r.seconds {
            Some(s) => {
                total += s;
                format!("{s:.2}")
            }
            None => "-".to_owned(),
        };
        let _ = write!(out, "{:<label_width$}  {seconds:>9}", r.label);
        for (c, w) in columns.iter().zip(&widths) {
            let cell = r
                .members
                .iter()
                .find(|t| t.member == *c)
                .map_or("-".to_owned(), |t| format!("{:.2}", t.seconds));
            let _ = write!(out, "  {cell:>w$}");
        }
        if r.failed {
            out.push_str("  FAILED");
        } else if r.seconds.is_none() {
            out.push_str("  stopped");
        }
        out.push('\n');
    }
    let _ = writeln!(out, "{:<label_width$}  {total:>9.2}", "total");
    out
}

/// What a member's line says of its current step.
#[derive(Debug, Clone, PartialEq)]
pub enum Doing {
    /// Nothing yet in this phase.
    Idle,
    Running,
    Retrying(String),
    /// The coordinator waits on it (its etcd to answer, to be healthy).
    Waiting(String),
    Staging(Staging),
    Done(Duration),
    Failed(Duration, String),
}

/// How far the snapshot's copy to one member got.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Staging {
    pub sent: u64,
    pub total: u64,
    /// Bytes per second since the copy began, once it can be told.
    pub rate: Option<f64>,
}

/// One member's line: its name, its step (and which way), what it does, and for how long.
#[derive(Debug, Clone)]
pub struct MemberLine {
    pub name: String,
    pub step: Option<(Step, Way)>,
    pub doing: Doing,
    /// When the current state began (the step's start, the copy's start).
    pub since: Instant,
    /// The copy's first report: (when, bytes sent), to tell its rate.
    pub staging_from: Option<(Instant, u64)>,
}

impl MemberLine {
    pub fn new(name: String) -> Self {
        Self {
            name,
            step: None,
            doing: Doing::Idle,
            since: Instant::now(),
            staging_from: None,
        }
    }

    /// A new phase: nothing done in it yet.
    pub fn reset(&mut self) {
        self.step = None;
        self.doing = Doing::Idle;
        self.since = Instant::now();
        self.staging_from = None;
    }

    pub fn step(&mut self, step: Step, way: Way, state: &MemberState<'_>, now: Instant) {
        self.step = Some((step, way));
        self.doing = match state {
            MemberState::Started => {
                self.since = now;
                Doing::Running
            }
            MemberState::Retrying { error } => Doing::Retrying((*error).to_owned()),
            MemberState::Done { elapsed } => Doing::Done(*elapsed),
            MemberState::Failed { elapsed, failure } => {
                Doing::Failed(*elapsed, failure.message.clone())
            }
        };
    }

    pub fn staging(&mut self, sent: u64, total: u64, now: Instant) {
        let (from_at, from_sent) = *self.staging_from.get_or_insert_with(|| {
            self.since = now;
            (now, sent)
        });
        if sent >= total {
            self.doing = Doing::Done(now.duration_since(self.since));
            return;
        }
        self.doing = Doing::Staging(Staging {
            sent,
            total,
            rate: rate(from_at, from_sent, now, sent),
        });
    }

    pub fn waiting(&mut self, why: &str) {
        self.doing = Doing::Waiting(why.to_owned());
    }

    /// Whether a spinner turns on this line (something is under way).
    pub fn busy(&self) -> bool {
        matches!(
            self.doing,
            Doing::Running | Doing::Retrying(_) | Doing::Waiting(_) | Doing::Staging(_)
        )
    }

    /// The line, with `name_width` for the name column, at `now`.
    pub fn render(&self, name_width: usize, now: Instant) -> String {
        let step = match self.step {
            // The copy of the snapshot follows the claim in STAGE.
            _ if self.staging_from.is_some() => "stage".to_owned(),
            None => String::new(),
            Some((s, Way::Run)) => s.name().to_owned(),
            Some((s, Way::Revert)) => format!("undo {s}"),
        };
        let elapsed = secs(now.saturating_duration_since(self.since));
        let what = match &self.doing {
            Doing::Idle => return format!("{:<name_width$}  -", self.name),
            Doing::Running => format!("running  {elapsed}"),
            Doing::Retrying(e) => format!("retrying  {elapsed}  ({e})"),
            Doing::Waiting(why) => format!("waiting: {why}  {elapsed}"),
            Doing::Staging(s) => format!("{}  {elapsed}", staging_text(s)),
            Doing::Done(took) => format!("done in {}", secs(*took)),
            Doing::Failed(took, why) => format!("FAILED after {}: {why}", secs(*took)),
        };
        format!("{:<name_width$}  {step:<12} {what}", self.name)
    }
}

/// Bytes per second between two reports of a copy; `None` until time and bytes have passed.
pub fn rate(from: Instant, from_sent: u64, at: Instant, sent: u64) -> Option<f64> {
    let took = at.saturating_duration_since(from).as_secs_f64();
    let bytes = sent.saturating_sub(from_sent);
    (took > 0.0 && bytes > 0).then(|| bytes as f64 / took)
}

/// `staging 48.0 MiB / 100.0 MiB (48%)  12.0 MiB/s  ETA 4s`.
pub fn staging_text(s: &Staging) -> String {
    let percent = s
        .sent
        .saturating_mul(100)
        .checked_div(s.total)
        .unwrap_or(100);
    let mut text = format!(
        "staging {} / {} ({percent}%)",
        mib(s.sent as f64),
        mib(s.total as f64)
    );
    match s.rate {
        Some(r) => {
            let left = s.total.saturating_sub(s.sent) as f64 / r;
            let _ = write!(
                text,
                "  {}/s  ETA {}",
                mib(r),
                eta(Duration::from_secs_f64(left.min(1e9)))
            );
        }
        None => text.push_str("  ETA -"),
    }
    text
}

/// Bytes in MiB with one decimal.
pub fn mib(bytes: f64) -> String {
    format!("{:.1} MiB", bytes / (1024.0 * 1024.0))
}

/// `4s`, `1m05s`, `2h03m`: whole seconds, rounded up.
pub fn eta(d: Duration) -> String {
    let s = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
    }
}

/// `1.23s`.
pub fn secs(d: Duration) -> String {
    format!("{:.2}s", d.as_secs_f64())
}

#[cfg(test)]
#[path = "view_tests.rs"]
mod tests;
