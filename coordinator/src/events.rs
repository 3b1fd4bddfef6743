//! The event stream of `--output json`: one JSON object per line on stdout, each with
//! `schema_version`, `event`, `time` (RFC 3339, UTC) and, where known, the `command` and the
//! `restore_id`. Every command ends with exactly one `result` event carrying its exit code.
//! The schema is docs/events.md and docs/events.schema.json; bump [`SCHEMA_VERSION`] on any
//! change that is not a new optional field or a new event type.
//!
//! Commands emit through [`emit`] ([`Event`]) and end with [`finish`] ([`CommandResult`]):
//!
//! ```ignore
//! events::set_command("gc");
//! match format {
//!     Format::Human => print!("{}", listing.render()),
//!     Format::Json => return Ok(events::finish(CommandResult::ok(&listing))),
//! }
//! ```

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use quorate_proto::model::Step;
use serde::Serialize;

use crate::engine::Direction;
use crate::failure::{FailureKind, MemberFailure};
use crate::output::exit;
use crate::phases::Phase;
use crate::restore::{MemberState, Observer, Way};

pub use crate::events_error::{ErrorInfo, code_of};

/// The version of the stream's shape. Readers should refuse a major version they do not know.
pub const SCHEMA_VERSION: u32 = 1;

/// One line of the stream, less its envelope.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event {
    /// Preflight passed: what the restore will do (`quorate restore`, before anything changes).
    Plan { plan: serde_json::Value },
    /// A phase begins on every member (`index` 0 is preflight; 1..=total the engine's phases).
    PhaseStarted {
        phase: String,
        index: usize,
        total: usize,
    },
    /// A phase ended on every member.
    PhaseDone { phase: String, elapsed_seconds: f64 },
    /// A phase (or its undo, `direction: backward`) failed on the members of `errors`.
    PhaseFailed {
        phase: String,
        direction: DirectionName,
        elapsed_seconds: f64,
        errors: Vec<ErrorInfo>,
    },
    /// A rollback begins undoing `phase`.
    RevertStarted { phase: String },
    /// `phase` is undone on every member.
    RevertDone { phase: String, elapsed_seconds: f64 },
    /// One member's agent call of `step` changed state.
    MemberStep {
        #[serde(skip_serializing_if = "Option::is_none")]
        phase: Option<String>,
        member: String,
        step: Step,
        way: WayName,
        state: StepState,
        #[serde(skip_serializing_if = "Option::is_none")]
        elapsed_seconds: Option<f64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<ErrorInfo>,
    },
    /// `sent_bytes` of `total_bytes` of the snapshot went to `member` (every 200 ms and at the
    /// end).
    Staging {
        phase: String,
        member: String,
        sent_bytes: u64,
        total_bytes: u64,
    },
    /// The coordinator waits on `member` for `why`.
    Waiting {
        #[serde(skip_serializing_if = "Option::is_none")]
        phase: Option<String>,
        member: String,
        why: String,
    },
    /// Something to tell the operator that is not one of the above.
    Note { text: String },
    /// A signal arrived: the first stops at the next phase boundary, the second exits at once.
    Interrupt { signal: String, then: String },
    /// How the command ended: always the last line.
    Result(CommandResult),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DirectionName {
    Forward,
    Backward,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum WayName {
    Run,
    Revert,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum StepState {
    Started,
    Retrying,
    Done,
    Failed,
}

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// The command did what it was asked (every command but restore/resume/rollback).
    Ok,
    /// Every phase done: the cluster runs on the snapshot's data.
    Restored,
    /// A phase failed (or a signal stopped it) and every member is back on its original data.
    RolledBack,
    /// A phase after VERIFY failed or was interrupted: `quorate resume <id>` completes it.
    PastNoReturn,
    /// Stopped before the point of no return without a complete rollback: a rollback failed,
    /// or was not asked for (`--no-rollback`).
    Stopped,
    /// Refused before anything changed (preflight; a rollback past the point of no return).
    Refused,
    /// `restore` was not confirmed: nothing changed.
    NotConfirmed,
    /// A second signal ended the command at once; the journal makes resume possible.
    Interrupted,
    /// Any other error.
    Failed,
    /// The command line was wrong.
    Usage,
}

/// The last event of every command.
#[derive(Debug, Clone, Serialize)]
pub struct CommandResult {
    pub outcome: Outcome,
    pub ok: bool,
    pub exit_code: u8,
    /// What the command produced: the restore's report, the rollback's, the plan, the status,
    /// a snapshot report; any object for other commands.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    /// Where the command wrote its report (report.json, rollback.json).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub report_path: Option<PathBuf>,
    /// The phase that failed (`halt`, `rollback:halt`, `preflight`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed_phase: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<ErrorInfo>,
    /// The whole error as the human output prints it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Why the rollback that followed the failure did not complete.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollback_error: Option<String>,
    /// What to do next.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advice: Option<String>,
    /// A signal (SIGINT, SIGTERM) stopped the command.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interrupted_by: Option<String>,
}

impl CommandResult {
    /// A command that succeeded with `result` (serialised; `null` if it cannot be).
    pub fn ok(result: &impl Serialize) -> Self {
        Self::new(Outcome::Ok, exit::OK).with_result(result)
    }

    /// An ending with no result yet; `ok` follows from the exit code.
    pub fn new(outcome: Outcome, exit_code: u8) -> Self {
        Self {
            outcome,
            ok: exit_code == exit::OK,
            exit_code,
            result: None,
            report_path: None,
            failed_phase: None,
            errors: Vec::new(),
            error: None,
            rollback_error: None,
            advice: None,
            interrupted_by: None,
        }
    }

    /// A command that failed with one error.
    pub fn failed(outcome: Outcome, exit_code: u8, error: ErrorInfo) -> Self {
        let mut r = Self::new(outcome, exit_code);
        r.error = Some(error.message.clone());
        r.advice.clone_from(&error.advice);
        r.failed_phase.clone_from(&error.phase);
        r.errors.push(error);
        r
    }

    pub fn with_result(mut self, result: &impl Serialize) -> Self {
        self.result = Some(
            serde_json::to_value(result)
                .unwrap_or_else(|e| serde_json::json!({"unserialisable": e.to_string()})),
        );
        self
    }
}

/// What every line carries besides its event.
#[derive(Debug, Default, Clone)]
struct Context {
    command: Option<String>,
    restore_id: Option<String>,
}

static CONTEXT: Mutex<Context> = Mutex::new(Context {
    command: None,
    restore_id: None,
});

/// Names the command every following line belongs to (`restore`, `snapshot save`, `gc`).
pub fn set_command(command: &str) {
    if let Ok(mut c) = CONTEXT.lock() {
        c.command = Some(command.to_owned());
    }
}

/// The restore every following line belongs to.
pub fn set_restore_id(id: impl std::fmt::Display) {
    if let Ok(mut c) = CONTEXT.lock() {
        c.restore_id = Some(id.to_string());
    }
}

/// The restore id set by [`set_restore_id`], if any.
pub fn restore_id() -> Option<String> {
    CONTEXT.lock().ok().and_then(|c| c.restore_id.clone())
}

#[derive(Serialize)]
struct Line<'a> {
    schema_version: u32,
    #[serde(flatten)]
    event: &'a Event,
    time: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    command: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    restore_id: Option<String>,
}

/// The line `event` makes, without its newline.
pub fn line(event: &Event) -> String {
    let context = CONTEXT.lock().map(|c| c.clone()).unwrap_or_default();
    let line = Line {
        schema_version: SCHEMA_VERSION,
        event,
        time: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
        command: context.command,
        restore_id: context.restore_id,
    };
    serde_json::to_string(&line).unwrap_or_else(|e| {
        format!(
            "{{\"schema_version\":{SCHEMA_VERSION},\"event\":\"note\",\"text\":\"an event could not be serialised: {e}\"}}"
        )
    })
}

/// Whether the command's `result` was written: there is exactly one, whoever comes first (the
/// command's ending, or a second signal exiting at once).
static RESULT_WRITTEN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Writes one event as one line on stdout. A reader that went away (`| jq` ended, the terminal
/// hung up) does not stop the command: the line is dropped, the run goes on and its journal
/// keeps the story.
pub fn emit(event: &Event) {
    use std::io::Write as _;
    use std::sync::atomic::Ordering;
    if matches!(event, Event::Result(_)) && RESULT_WRITTEN.swap(true, Ordering::SeqCst) {
        tracing::debug!("a second result event was dropped: {}", line(event));
        return;
    }
    let text = line(event);
    let mut out = std::io::stdout().lock();
    if let Err(e) = writeln!(out, "{text}").and_then(|()| out.flush()) {
        tracing::debug!("stdout refused an event ({e}): {text}");
    }
}

/// Writes the command's `result` event; returns its exit code for `main` to return.
pub fn finish(result: CommandResult) -> ExitCode {
    let code = result.exit_code;
    emit(&Event::Result(result));
    ExitCode::from(code)
}

/// The engine's phases as the event stream hears them (see `Observer`): every member's step,
/// staging progress, waits, and every phase's start, end, failure and undo.
#[derive(Debug, Default)]
pub struct JsonObserver {
    /// The phase under way (forward or being undone): phases are lockstep, so every member
    /// step belongs to it.
    current: Mutex<Option<Phase>>,
}

impl JsonObserver {
    fn set_current(&self, phase: Phase) {
        if let Ok(mut c) = self.current.lock() {
            *c = Some(phase);
        }
    }

    fn current(&self) -> Option<String> {
        self.current
            .lock()
            .ok()
            .and_then(|c| *c)
            .map(|p| p.name().to_owned())
    }
}

impl JsonObserver {
    /// The `member-step` event of one agent call's change of state.
    pub fn member_event(
        &self,
        member: &str,
        step: Step,
        way: Way,
        state: MemberState<'_>,
    ) -> Event {
        let phase = self.current();
        let (state, elapsed_seconds, error) = match state {
            MemberState::Started => (StepState::Started, None, None),
            MemberState::Retrying { error } => (
                StepState::Retrying,
                None,
                Some(ErrorInfo::from_failure(
                    &MemberFailure::new(member, FailureKind::Unreachable, error),
                    phase.as_deref(),
                )),
            ),
            MemberState::Done { elapsed } => (StepState::Done, Some(seconds(elapsed)), None),
            MemberState::Failed { elapsed, failure } => (
                StepState::Failed,
                Some(seconds(elapsed)),
                Some(ErrorInfo::from_failure(failure, phase.as_deref())),
            ),
        };
        Event::MemberStep {
            phase,
            member: member.to_owned(),
            step,
            way: match way {
                Way::Run => WayName::Run,
                Way::Revert => WayName::Revert,
            },
            state,
            elapsed_seconds,
            error,
        }
    }
}

/// How the stream names the engine's direction.
pub fn direction_name(direction: Direction) -> DirectionName {
    match direction {
        Direction::Forward => DirectionName::Forward,
        Direction::Backward => DirectionName::Backward,
    }
}

fn seconds(d: Duration) -> f64 {
    d.as_secs_f64()
}

impl Observer for JsonObserver {
    fn phase_started(&self, phase: Phase, index: usize) {
        self.set_current(phase);
        emit(&Event::PhaseStarted {
            phase: phase.name().to_owned(),
            index,
            total: Phase::ALL.len(),
        });
    }

    fn phase_done(&self, phase: Phase, elapsed: Duration) {
        emit(&Event::PhaseDone {
            phase: phase.name().to_owned(),
            elapsed_seconds: seconds(elapsed),
        });
    }

    fn note(&self, text: &str) {
        emit(&Event::Note {
            text: text.to_owned(),
        });
    }

    fn revert_started(&self, phase: Phase) {
        self.set_current(phase);
        emit(&Event::RevertStarted {
            phase: phase.name().to_owned(),
        });
    }

    fn revert_done(&self, phase: Phase, elapsed: Duration) {
        emit(&Event::RevertDone {
            phase: phase.name().to_owned(),
            elapsed_seconds: seconds(elapsed),
        });
    }

    fn phase_failed(
        &self,
        phase: Phase,
        direction: Direction,
        elapsed: Duration,
        failures: &crate::failure::Failures,
    ) {
        let tag = match direction {
            Direction::Forward => phase.name().to_owned(),
            Direction::Backward => format!("rollback:{phase}"),
        };
        emit(&Event::PhaseFailed {
            phase: phase.name().to_owned(),
            direction: direction_name(direction),
            elapsed_seconds: seconds(elapsed),
            errors: failures
                .iter()
                .map(|f| ErrorInfo::from_failure(f, Some(&tag)))
                .collect(),
        });
    }

    fn member_step(&self, member: &str, step: Step, way: Way, state: MemberState<'_>) {
        emit(&self.member_event(member, step, way, state));
    }

    fn staging(&self, member: &str, sent: u64, total: u64) {
        emit(&Event::Staging {
            phase: Phase::Stage.name().to_owned(),
            member: member.to_owned(),
            sent_bytes: sent,
            total_bytes: total,
        });
    }

    fn waiting(&self, member: &str, why: &str) {
        emit(&Event::Waiting {
            phase: self.current(),
            member: member.to_owned(),
            why: why.to_owned(),
        });
    }
}

#[cfg(test)]
#[path = "events_tests.rs"]
mod tests;
