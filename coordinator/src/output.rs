//! Everything quorate prints: human text on the terminal, or JSON lines for runbook automation.
//! Progress goes to stderr (human) or stdout (JSON); results to stdout.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use crate::journal::Journal;
use crate::ops::Ending;
use crate::phases::Phase;
use crate::restore::{Observer, Report, RestoreError};
use crate::rollback::RollbackReport;

/// How quorate talks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Human,
    Json,
}

/// Exit codes.
pub mod exit {
    /// A restore that failed after VERIFY (resume completes it), and a rollback refused for that
    /// reason.
    pub const PAST_NO_RETURN: u8 = 3;
    /// `restore` without `--yes`: the plan was shown, nothing was changed.
    pub const NOT_CONFIRMED: u8 = 2;
}

/// Prints a run's progress.
pub struct Printer(pub Format);

impl Observer for Printer {
    fn phase_started(&self, phase: Phase, index: usize) {
        match self.0 {
            Format::Human => eprintln!("[{index}/{}] {phase} ...", Phase::ALL.len()),
            Format::Json => {
                emit(
                    &serde_json::json!({"event": "phase-started", "phase": phase, "index": index}),
                );
            }
        }
    }
    fn phase_done(&self, phase: Phase, elapsed: Duration) {
        match self.0 {
            Format::Human => eprintln!("      {phase} done in {:.2}s", elapsed.as_secs_f64()),
            Format::Json => emit(
                &serde_json::json!({"event": "phase-done", "phase": phase, "seconds": elapsed.as_secs_f64()}),
            ),
        }
    }
    fn note(&self, text: &str) {
        match self.0 {
            Format::Human => eprintln!("      {text}"),
            Format::Json => emit(&serde_json::json!({"event": "note", "text": text})),
        }
    }
}

/// One JSON line on stdout.
pub fn emit(value: &serde_json::Value) {
    println!("{value}");
}

/// Reports how a run ended, writes its report beside the journal, and returns the exit code.
pub fn ending(format: Format, journal: &Journal, ending: Ending) -> anyhow::Result<ExitCode> {
    let id = journal.id();
    match ending {
        Ending::Restored(report) => {
            let path = journal.write_json("report.json", &report)?;
            match format {
                Format::Human => print_report(&report, &path),
                Format::Json => emit(
                    &serde_json::json!({"event": "done", "report": report, "report_path": path}),
                ),
            }
            Ok(ExitCode::SUCCESS)
        }
        Ending::RolledBack { error, rollback } => {
            rolled_back(format, journal, &rollback, Some(&error))?;
            Ok(ExitCode::FAILURE)
        }
        Ending::PastNoReturn { error } => {
            let advice = format!(
                "The restore passed VERIFY: every member holds the snapshot's data, verified, and it is not rolled back. Fix what failed, then `quorate resume {id}` completes it (`quorate status {id}` shows where every member stands)."
            );
            match format {
                Format::Human => {
                    eprintln!("error: {error}");
                    eprintln!("{advice}");
                }
                Format::Json => emit(&serde_json::json!({
                    "event": "stopped",
                    "past_point_of_no_return": true,
                    "phase": error.phase,
                    "failures": error.failures,
                    "error": error.to_string(),
                    "advice": advice,
                })),
            }
            Ok(ExitCode::from(exit::PAST_NO_RETURN))
        }
        Ending::Stopped {
            error,
            rollback_error,
        } => {
            let advice = format!(
                "The members were left as they stand; nothing is deleted (original data dirs are kept at <data-dir>.quorate-{id}). See where every member stands: `quorate status {id}`; then `quorate resume {id}` or `quorate rollback {id}`."
            );
            match format {
                Format::Human => {
                    eprintln!("error: {error}");
                    if let Some(r) = &rollback_error {
                        eprintln!("error: the rollback did not complete: {r}");
                    }
                    eprintln!("{advice}");
                }
                Format::Json => emit(&serde_json::json!({
                    "event": "stopped",
                    "phase": error.phase,
                    "failures": error.failures,
                    "error": error.to_string(),
                    "rollback_error": rollback_error,
                    "advice": advice,
                })),
            }
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Reports a finished rollback and writes `rollback.json` beside the journal.
pub fn rolled_back(
    format: Format,
    journal: &Journal,
    rollback: &RollbackReport,
    error: Option<&RestoreError>,
) -> anyhow::Result<()> {
    let path = journal.write_json("rollback.json", rollback)?;
    match format {
        Format::Human => {
            if let Some(e) = error {
                eprintln!("error: {e}");
            }
            println!(
                "rolled back restore {} in {:.1}s: every member is on its original data (cluster ID {:x}, revision {}, HashKV {:x} on every member)",
                rollback.restore_id,
                rollback.total_seconds,
                rollback.cluster_id,
                rollback.original.revision,
                rollback.original.hash
            );
            println!("  report: {}", path.display());
        }
        Format::Json => emit(&serde_json::json!({
            "event": "rolled-back",
            "error": error.map(ToString::to_string),
            "phase": error.map(|e| e.phase.clone()),
            "failures": error.map(|e| e.failures.clone()),
            "rollback": rollback,
            "report_path": path,
        })),
    }
    Ok(())
}

/// An error that ended the command before or outside the phases.
pub fn error(format: Format, e: &anyhow::Error) {
    match format {
        Format::Human => eprintln!("error: {}", render_error(e)),
        Format::Json => emit(&serde_json::json!({"event": "error", "error": render_error(e)})),
    }
}

/// The error and its causes, each once: messages that already quote their cause are not
/// followed by it again.
pub fn render_error(e: &anyhow::Error) -> String {
    let mut text = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}

fn print_report(report: &Report, path: &Path) {
    println!(
        "restore {} done in {:.1}s",
        report.restore_id, report.total_seconds
    );
    if let Some(before) = report.before.first() {
        println!(
            "  cluster ID {:x} -> {:x}",
            before.cluster_id, report.after.cluster_id
        );
    } else {
        println!("  cluster ID {:x}", report.after.cluster_id);
    }
    let before = report
        .revision_before
        .map_or("unknown".to_owned(), |r| r.to_string());
    println!(
        "  revision {before} -> {} (snapshot's {} + bump {})  keys {}  HashKV {:x} on every member  token {}",
        report.after.revision,
        report
            .snapshot_revision
            .map_or("?".to_owned(), |r| r.to_string()),
        report.revision_bump,
        report.after.keys,
        report.after.hash,
        report.cluster_token
    );
    if report.skip_hash_check {
        println!(
            "  restored from a snapshot without a sha256 trailer (--skip-hash-check): its integrity was not checked"
        );
    }
    for (m, components) in &report.restarted {
        println!("  {m}: restarted {components}");
    }
    for (m, dir) in &report.preserved_dirs {
        println!("  {m}: original data kept at {dir}");
    }
    let phases: Vec<String> = report
        .phases
        .iter()
        .map(|p| {
            let slowest = p
                .members
                .iter()
                .max_by(|a, b| a.seconds.total_cmp(&b.seconds));
            match slowest {
                Some(m) if p.members.len() > 1 => format!(
                    "{} {:.2}s (slowest {} {:.2}s)",
                    p.phase, p.seconds, m.member, m.seconds
                ),
                _ => format!("{} {:.2}s", p.phase, p.seconds),
            }
        })
        .collect();
    println!("  phases: {}", phases.join(", "));
    println!("  report: {}", path.display());
}
