//! `quorate report <id>` and `quorate list`: what past restores did, read from their state dirs
//! (the journal, the plan, and `report.json` or `rollback.json` when the run wrote one). Nothing
//! here talks to an agent or changes a file.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use quorate_proto::model::RestoreId;
use serde::{Deserialize, Serialize};

use crate::failure::MemberFailure;
use crate::journal::{Entry, Holder, Journal, JournalError, Line};
use crate::output::{self, Format};
use crate::phases::Phase;
use crate::plan::Plan;
use crate::progress::{Inconsistent, Progress};
use crate::restore::Report;
use crate::rollback::RollbackReport;

/// How `quorate report` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum DocFormat {
    #[default]
    Markdown,
    Text,
}

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error(
        "restore {id}: {path}: {source}; the journal is not consistent, see `quorate status {id}`"
    )]
    Inconsistent {
        id: RestoreId,
        path: PathBuf,
        source: Inconsistent,
    },
    #[error(
        "restore {id}: {path} is unreadable ({what}): it was written by another quorate, or damaged"
    )]
    Unreadable {
        id: RestoreId,
        path: PathBuf,
        what: String,
    },
    #[error("{dir}: {source}: check --state-dir")]
    StateDir {
        dir: PathBuf,
        source: std::io::Error,
    },
}

/// How a restore ended, or where it stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
pub enum Outcome {
    /// Every phase done.
    Restored,
    /// Every member back on its original data, verified.
    RolledBack,
    /// A coordinator holds the restore now.
    UnderWay { phase: String },
    /// Stopped after VERIFY: `resume` completes it.
    PastNoReturn { phase: String },
    /// A rollback began and did not finish.
    RollbackStopped { phase: String },
    /// Stopped before VERIFY: `resume` or `rollback`.
    Stopped { phase: String },
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Restored => f.write_str("restored"),
            Outcome::RolledBack => f.write_str("rolled back"),
            Outcome::UnderWay { phase } => write!(f, "under way (in {phase})"),
            Outcome::PastNoReturn { phase } => {
                write!(f, "past no return (stopped in {phase})")
            }
            Outcome::RollbackStopped { phase } => write!(f, "rollback stopped in {phase}"),
            Outcome::Stopped { phase } => write!(f, "stopped in {phase}"),
        }
    }
}

/// A phase's time as the journal saw it (its begin to its end); no per-member times.
#[derive(Debug, Clone, Serialize)]
pub struct JournalPhase {
    /// `halt`, or `undo halt`.
    pub label: String,
    /// `None`: it began and did not end.
    pub seconds: Option<f64>,
    pub failed: bool,
}

/// Everything known of one restore from its state dir.
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    pub id: RestoreId,
    pub dir: PathBuf,
    pub plan: Plan,
    pub progress: Progress,
    pub outcome: Outcome,
    /// When the journal's first and last lines were written (ms since the epoch).
    pub started_ms: Option<u64>,
    pub last_ms: Option<u64>,
    pub held_by: Option<Holder>,
    /// Every failure journaled: the phase (`halt`, `undo halt`, `rollback verify`) and who failed.
    pub failures: Vec<(String, Vec<MemberFailure>)>,
    pub journal_phases: Vec<JournalPhase>,
    pub report: Option<Report>,
    pub rollback: Option<RollbackReport>,
}

impl Record {
    /// Reads restore `id` under `state_dir`.
    pub fn read(state_dir: &Path, id: RestoreId) -> Result<Self, ReportError> {
        let read = Journal::read(state_dir, id)?;
        let dir = state_dir.join(id.to_string());
        let journal = dir.join("journal.jsonl");
        let progress =
            Progress::from_entries(&read.entries).map_err(|source| ReportError::Inconsistent {
                id,
                path: journal.clone(),
                source,
            })?;
        let lines = timed_lines(&journal);
        let outcome = outcome(&progress, read.holder.is_some());
        let report = optional_json::<Report>(&dir.join("report.json"), id)?;
        let rollback = optional_json::<RollbackReport>(&dir.join("rollback.json"), id)?;
        Ok(Self {
            id,
            plan: read.plan,
            outcome,
            started_ms: lines.first().map(|l| l.at_ms),
            last_ms: lines.last().map(|l| l.at_ms),
            held_by: read.holder,
            failures: failures(&read.entries),
            journal_phases: journal_phases(&lines),
            progress,
            report,
            rollback,
            dir,
        })
    }

    /// How long it ran: the report's total when it finished; else the journal's first to last
    /// line (to now while it is under way).
    pub fn seconds(&self) -> Option<f64> {
        if let Some(r) = &self.report {
            return Some(r.total_seconds);
        }
        let end = if self.held_by.is_some() {
            Some(now_ms())
        } else {
            self.last_ms
        };
        let (start, end) = (self.started_ms?, end?);
        Some(end.saturating_sub(start) as f64 / 1000.0)
    }
}

/// Where a restore stands from its journal, and whether a coordinator holds it now.
pub fn outcome(p: &Progress, held: bool) -> Outcome {
    let phase = || {
        p.failed
            .or(p.begun)
            .map_or("preflight", Phase::name)
            .to_owned()
    };
    if held {
        Outcome::UnderWay { phase: phase() }
    } else if p.rollback_done {
        Outcome::RolledBack
    } else if p.finished() {
        Outcome::Restored
    } else if p.rollback_begun {
        let undone = p.to_undo().into_iter().find(|ph| !p.reverted.contains(ph));
        Outcome::RollbackStopped {
            phase: undone.map_or("its verify".to_owned(), |ph| format!("undo {ph}")),
        }
    } else if p.past_no_return() {
        Outcome::PastNoReturn { phase: phase() }
    } else {
        Outcome::Stopped { phase: phase() }
    }
}

fn failures(entries: &[Entry]) -> Vec<(String, Vec<MemberFailure>)> {
    entries
        .iter()
        .filter_map(|e| match e {
            Entry::Failed { phase, failures } => Some((phase.name().to_owned(), failures.clone())),
            Entry::RevertFailed { phase, failures } => {
                Some((crate::view::undo_label(*phase), failures.clone()))
            }
            Entry::RollbackVerifyFailed { failures } => {
                Some(("rollback verify".to_owned(), failures.clone()))
            }
            _ => None,
        })
        .collect()
}

/// The journal's readable lines with their times; a torn last line is left out (`Journal::read`
/// has judged the rest).
fn timed_lines(path: &Path) -> Vec<Line> {
    fs::read_to_string(path)
        .map(|text| {
            text.lines()
                .filter_map(|l| serde_json::from_str::<Line>(l).ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Each phase's begin to end (or failure), in the order they ran.
fn journal_phases(lines: &[Line]) -> Vec<JournalPhase> {
    let mut out: Vec<JournalPhase> = Vec::new();
    let mut began: Option<u64> = None;
    let secs = |from: Option<u64>, to: u64| from.map(|f| to.saturating_sub(f) as f64 / 1000.0);
    for l in lines {
        match &l.entry {
            Entry::Begin { phase } => {
                began = Some(l.at_ms);
                out.push(JournalPhase {
                    label: phase.name().to_owned(),
                    seconds: None,
                    failed: false,
                });
            }
            Entry::RevertBegin { phase } => {
                began = Some(l.at_ms);
                out.push(JournalPhase {
                    label: crate::view::undo_label(*phase),
                    seconds: None,
                    failed: false,
                });
            }
            Entry::Done { .. } | Entry::RevertDone { .. } => {
                if let Some(last) = out.last_mut() {
                    last.seconds = secs(began.take(), l.at_ms);
                }
            }
            Entry::Failed { .. } | Entry::RevertFailed { .. } => {
                if let Some(last) = out.last_mut() {
                    last.seconds = secs(began.take(), l.at_ms);
                    last.failed = true;
                }
            }
            _ => {}
        }
    }
    out
}

fn optional_json<T: for<'de> Deserialize<'de>>(
    path: &Path,
    id: RestoreId,
) -> Result<Option<T>, ReportError> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(ReportError::Unreadable {
                id,
                path: path.to_owned(),
                what: e.to_string(),
            });
        }
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| ReportError::Unreadable {
            id,
            path: path.to_owned(),
            what: e.to_string(),
        })
}

/// One restore of `list`: its record, or its id and why it could not be read.
pub type Listed = Result<Record, (RestoreId, ReportError)>;

/// Every restore under `state_dir`, newest first; a dir that cannot be read is listed with why.
pub fn list(state_dir: &Path) -> Result<Vec<Listed>, ReportError> {
    let entries = match fs::read_dir(state_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(ReportError::StateDir {
                dir: state_dir.to_owned(),
                source,
            });
        }
    };
    let mut records: Vec<Listed> = entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<RestoreId>().ok())
        .filter(|id| {
            state_dir
                .join(id.to_string())
                .join("journal.jsonl")
                .exists()
        })
        .map(|id| Record::read(state_dir, id).map_err(|e| (id, e)))
        .collect();
    let started = |r: &Listed| r.as_ref().ok().and_then(|r| r.started_ms).unwrap_or(0);
    records.sort_by_key(|r| std::cmp::Reverse(started(r)));
    Ok(records)
}

/// `quorate report`.
pub fn run_report(
    state_dir: &Path,
    id: RestoreId,
    doc: DocFormat,
    format: Format,
) -> anyhow::Result<ExitCode> {
    let record = Record::read(state_dir, id)?;
    if format == Format::Human {
        print!("{}", crate::report_doc::render(&record, doc));
    }
    Ok(output::finish_command(format, &record, None))
}

/// `quorate list`.
pub fn run_list(state_dir: &Path, format: Format) -> anyhow::Result<ExitCode> {
    let records = list(state_dir)?;
    match format {
        Format::Human => {
            if records.is_empty() {
                println!("no restores under {}", state_dir.display());
            }
            for r in &records {
                println!("{}", list_line(r));
            }
        }
        Format::Json => {
            let mut restores = Vec::new();
            for r in &records {
                let value = match r {
                    Ok(r) => serde_json::json!({
                        "restore_id": r.id,
                        "started_ms": r.started_ms,
                        "snapshot": r.plan.snapshot.path,
                        "snapshot_sha256": r.plan.snapshot.sha256,
                        "outcome": r.outcome,
                        "seconds": r.seconds(),
                    }),
                    Err((id, e)) => serde_json::json!({"restore_id": id, "error": e.to_string()}),
                };
                restores.push(value);
            }
            return Ok(output::finish_command(
                format,
                &serde_json::json!({ "restores": restores }),
                None,
            ));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `<id>  <started>  <snapshot> (sha256 <12 hex>)  <outcome>  <duration>`.
pub fn list_line(r: &Listed) -> String {
    match r {
        Ok(r) => {
            let name = r.plan.snapshot.path.file_name().map_or_else(
                || r.plan.snapshot.path.display().to_string(),
                |n| n.to_string_lossy().into_owned(),
            );
            let sha = r
                .plan
                .snapshot
                .sha256
                .get(..12)
                .unwrap_or(&r.plan.snapshot.sha256);
            format!(
                "{}  {}  {name} (sha256 {sha})  {}  {}",
                r.id,
                r.started_ms.map_or("-".to_owned(), stamp),
                r.outcome,
                r.seconds().map_or("-".to_owned(), |s| format!("{s:.1}s"))
            )
        }
        Err((id, e)) => format!("{id}  unreadable: {e}"),
    }
}

/// `2025-05-01T03:12:09Z` (UTC).
pub fn stamp(ms: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + std::time::Duration::from_millis(ms)).to_string()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
#[path = "report_tests.rs"]
mod tests;
