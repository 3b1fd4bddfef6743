//! Everything quorate prints: human text on the terminal, or JSON lines for runbook automation.
//! Progress goes to stderr (human) or stdout (JSON); results to stdout.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::events::{self, CommandResult, ErrorInfo, Event, Outcome};
use crate::journal::Journal;
use crate::ops::Ending;
use crate::restore::{Report, RestoreError};
use crate::rollback::RollbackReport;

/// How quorate talks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Human,
    Json,
}

/// Exit codes a runbook can branch on (also in `quorate --help` and docs/events.md).
pub mod exit {
    /// Success: the command did what it was asked (a restore: every member on the snapshot's
    /// data, verified, apiservers back).
    pub const OK: u8 = 0;
    /// Any other error (journal unreadable or held by another quorate, a snapshot that does not
    /// verify, an agent that does not answer `agents status`, certificates `certs check`
    /// finds wrong, ...).
    pub const ERROR: u8 = 1;
    /// Bad usage: the command line is wrong (clap's own code).
    pub const USAGE: u8 = 2;
    /// Failed after the point of no return (VERIFY passed): nothing was rolled back;
    /// `quorate resume <id>` completes the restore. Also a rollback refused for that reason.
    pub const PAST_NO_RETURN: u8 = 3;
    /// Refused in preflight (inventory, snapshot, agents, membership, disk room): nothing was
    /// touched.
    pub const REFUSED: u8 = 4;
    /// A phase failed and every member was rolled back to its original data, verified.
    pub const ROLLED_BACK: u8 = 5;
    /// Stopped before the point of no return and not rolled back: the rollback failed, or
    /// `--no-rollback` was given. Operator action needed: `quorate status <id>`, then
    /// `quorate rollback <id>` or `quorate resume <id>`.
    pub const ROLLBACK_INCOMPLETE: u8 = 6;
    /// Interrupted by SIGINT or SIGTERM: stopped at a phase boundary (and rolled back when
    /// before the point of no return), or at once on a second signal. `quorate status <id>`
    /// says where it stands.
    pub const INTERRUPTED: u8 = 7;
    /// `restore` was not confirmed (no --yes, and no terminal or a wrong cluster name): nothing
    /// was touched.
    pub const NOT_CONFIRMED: u8 = 8;

    /// The table `quorate --help` prints.
    pub const HELP: &str = "Exit codes:
  0  success
  1  other error (journal unreadable or held, snapshot does not verify, ...)
  2  bad usage
  3  failed after the point of no return: `quorate resume <id>` completes it
  4  refused in preflight: nothing was touched
  5  failed and rolled back: every member is on its original data
  6  stopped without a complete rollback: operator action needed (`quorate status <id>`)
  7  interrupted (SIGINT/SIGTERM): `quorate status <id>`, then resume or rollback
  8  not confirmed (no --yes, no terminal or wrong cluster name): nothing was touched
With --output json every line is an event of docs/events.md; the last is `result`, with exit_code.";
}

/// A word to the operator outside a run's phases: on stderr, or as a `note` event.
pub fn note(format: Format, text: &str) {
    match format {
        Format::Human => eprintln!("{text}"),
        Format::Json => events::emit(&Event::Note {
            text: text.to_owned(),
        }),
    }
}

/// Reports how a run ended, writes its report beside the journal, and returns the exit code.
pub fn ending(format: Format, journal: &Journal, ending: Ending) -> anyhow::Result<ExitCode> {
    let id = journal.id();
    let interrupted = crate::interrupt::requested();
    // A signal that stopped the run makes the exit code `interrupted`, whatever followed.
    let code = |normal: u8| interrupted.map_or(normal, |_| exit::INTERRUPTED);
    if let (Some(signal), Format::Human, false) =
        (interrupted, format, matches!(ending, Ending::Restored(_)))
    {
        eprintln!("interrupted by {signal}");
    }
    match ending {
        Ending::Restored(report) => {
            let path = written(journal, "report.json", &report);
            match format {
                Format::Human => print_report(&report, path.as_deref()),
                Format::Json => {
                    let mut result =
                        CommandResult::new(Outcome::Restored, exit::OK).with_result(&report);
                    result.report_path = path;
                    events::emit(&Event::Result(result));
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Ending::RolledBack { error, rollback } => rolled_back(
            format,
            journal,
            &rollback,
            Some(&error),
            code(exit::ROLLED_BACK),
        ),
        Ending::PastNoReturn { error } => {
            let advice = format!(
                "The restore passed VERIFY: every member holds the snapshot's data, verified, and it is not rolled back. Fix what failed, then `quorate resume {id}` completes it (`quorate status {id}` shows where every member stands)."
            );
            let exit_code = code(exit::PAST_NO_RETURN);
            match format {
                Format::Human => {
                    eprintln!("error: {error}");
                    eprintln!("{advice}");
                }
                Format::Json => {
                    let mut result = failed_result(Outcome::PastNoReturn, exit_code, &error);
                    result.advice = Some(advice);
                    events::emit(&Event::Result(result));
                }
            }
            Ok(ExitCode::from(exit_code))
        }
        Ending::Stopped {
            error,
            rollback_error,
        } => {
            let advice = format!(
                "The members were left as they stand; nothing is deleted (original data dirs are kept at <data-dir>.quorate-{id}). See where every member stands: `quorate status {id}`; then `quorate resume {id}` or `quorate rollback {id}`."
            );
            let exit_code = code(exit::ROLLBACK_INCOMPLETE);
            match format {
                Format::Human => {
                    eprintln!("error: {error}");
                    if let Some(r) = &rollback_error {
                        eprintln!("error: the rollback did not complete: {r}");
                    }
                    eprintln!("{advice}");
                }
                Format::Json => {
                    let mut result = failed_result(Outcome::Stopped, exit_code, &error);
                    result.rollback_error = rollback_error;
                    result.advice = Some(advice);
                    events::emit(&Event::Result(result));
                }
            }
            Ok(ExitCode::from(exit_code))
        }
    }
}

/// Writes `name` beside the journal; a failure to write it is told, not fatal: the run's ending
/// (and exit code) is what it is, and the journal holds its story.
fn written(journal: &Journal, name: &str, value: &impl serde::Serialize) -> Option<PathBuf> {
    match journal.write_json(name, value) {
        Ok(path) => Some(path),
        Err(e) => {
            tracing::error!(
                "writing {name} beside {}: {e}; the journal there holds the same story (`quorate report {}`)",
                journal.path().display(),
                journal.id()
            );
            None
        }
    }
}

/// The `result` of a run that stopped on `error`.
fn failed_result(outcome: Outcome, exit_code: u8, error: &RestoreError) -> CommandResult {
    let mut result = CommandResult::new(outcome, exit_code);
    result.failed_phase = Some(error.phase.clone());
    result.errors = error
        .failures
        .iter()
        .map(|f| ErrorInfo::from_failure(f, Some(&error.phase)))
        .collect();
    result.error = Some(error.to_string());
    result.interrupted_by = crate::interrupt::requested().map(str::to_owned);
    result
}

/// Reports a finished rollback, writes `rollback.json` beside the journal, and returns
/// `exit_code`.
pub fn rolled_back(
    format: Format,
    journal: &Journal,
    rollback: &RollbackReport,
    error: Option<&RestoreError>,
    exit_code: u8,
) -> anyhow::Result<ExitCode> {
    let path = written(journal, "rollback.json", rollback);
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
            if let Some(path) = &path {
                println!("  report: {}", path.display());
            }
        }
        Format::Json => {
            let mut result = match error {
                Some(e) => failed_result(Outcome::RolledBack, exit_code, e),
                None => CommandResult::new(Outcome::RolledBack, exit_code),
            };
            result.result = CommandResult::ok(rollback).result;
            result.report_path = path;
            events::emit(&Event::Result(result));
        }
    }
    Ok(ExitCode::from(exit_code))
}

/// An error that ended the command before or outside the phases; returns `exit_code`.
pub fn fail(format: Format, e: &anyhow::Error, outcome: Outcome, exit_code: u8) -> ExitCode {
    match format {
        Format::Human => eprintln!("error: {}", render_error(e)),
        Format::Json => {
            let mut info = ErrorInfo::from_anyhow(e);
            if outcome == Outcome::Refused && exit_code == exit::REFUSED {
                info = info
                    .with_phase("preflight")
                    .with_advice("nothing was changed: fix what preflight names, then run again");
            }
            events::emit(&Event::Result(CommandResult::failed(
                outcome, exit_code, info,
            )));
        }
    }
    ExitCode::from(exit_code)
}

/// Ends a command that is not a restore: JSON gets its one `result` event with `value`, ok, or
/// failed with `error` (exit code 1); human text was printed as the command went, and `error`
/// goes to stderr.
pub fn finish_command(
    format: Format,
    value: &impl serde::Serialize,
    error: Option<String>,
) -> ExitCode {
    match (format, error) {
        (Format::Json, None) => events::finish(CommandResult::ok(value)),
        (Format::Json, Some(e)) => events::finish(
            CommandResult::failed(Outcome::Failed, exit::ERROR, ErrorInfo::new("error", e))
                .with_result(value),
        ),
        (Format::Human, None) => ExitCode::SUCCESS,
        (Format::Human, Some(e)) => {
            eprintln!("error: {e}");
            ExitCode::from(exit::ERROR)
        }
    }
}

/// Any other error that ended the command (exit code 1).
pub fn error(format: Format, e: &anyhow::Error) -> ExitCode {
    fail(format, e, Outcome::Failed, exit::ERROR)
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

fn print_report(report: &Report, path: Option<&Path>) {
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
    if let Some(path) = path {
        println!("  report: {}", path.display());
    }
}
