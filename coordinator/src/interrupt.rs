//! SIGINT and SIGTERM while a restore, resume or rollback runs.
//!
//! The first signal asks the engine to stop at the next phase boundary: the calls of the phase
//! under way end on every member (a half-done phase is the one state no one wants), then no new
//! phase begins. The engine journals the stop as a failure of the next phase; the restore is
//! then rolled back (unless `--no-rollback`) and `restore`/`resume` exit with
//! [`exit::INTERRUPTED`]. Past the point of no return (VERIFY passed) the signal changes nothing:
//! only UNFENCE and FINISH remain, and they bring the API back, so the restore carries on to its
//! end. A rollback under way is not stopped by the first signal either: it is what brings the
//! cluster back (a `rollback` command that completes exits 0).
//!
//! The second signal exits at once with the same code. The journal, written before every
//! transition, and the agents' own journals make `quorate resume <id>` or `quorate rollback <id>`
//! possible from there, as after a crash.
//!
//! SIGHUP (the operator's SSH session dropped) does not stop the run: stdout and stderr that were
//! the lost terminal are pointed at /dev/null and the run goes on to its end, as under `nohup`;
//! `quorate list` and `quorate status <id>` tell how it ended.

use std::sync::OnceLock;

use tokio::signal::unix::{SignalKind, signal};

use crate::events::{self, CommandResult, ErrorInfo, Event, Outcome};
use crate::output::{Format, exit};

/// The first signal received, if any.
static REQUESTED: OnceLock<&'static str> = OnceLock::new();

/// The signal that asked the run to stop (`SIGINT`, `SIGTERM`), if one did.
pub fn requested() -> Option<&'static str> {
    REQUESTED.get().copied()
}

/// Listens for SIGINT and SIGTERM for the rest of the process (call from within the runtime).
pub fn install(format: Format) -> std::io::Result<()> {
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut hup = signal(SignalKind::hangup())?;
    // Which of them is the terminal, asked now: once it hung up, it may not say so any more.
    let ttys = {
        use std::io::IsTerminal as _;
        (
            std::io::stdout().is_terminal(),
            std::io::stderr().is_terminal(),
        )
    };
    tokio::spawn(async move {
        loop {
            let name = tokio::select! {
                Some(()) = int.recv() => "SIGINT",
                Some(()) = term.recv() => "SIGTERM",
                Some(()) = hup.recv() => {
                    detach(ttys);
                    continue;
                }
                else => return,
            };
            if REQUESTED.set(name).is_ok() {
                first(format, name);
            } else {
                second(format, name);
            }
        }
    });
    Ok(())
}

/// The terminal is gone: whatever of stdout and stderr was that terminal now goes nowhere, so
/// that no write to it fails (a failed `eprintln!` would end the run mid-phase).
fn detach((stdout_tty, stderr_tty): (bool, bool)) {
    tracing::warn!("SIGHUP: the terminal is gone; the run goes on to its end without it");
    let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") else {
        return;
    };
    if stdout_tty {
        let _ = nix::unistd::dup2_stdout(&null);
    }
    if stderr_tty {
        let _ = nix::unistd::dup2_stderr(&null);
    }
}

fn first(format: Format, name: &str) {
    let then = "stopping after the current phase's calls end on every member, then rolling every member back; past the point of no return (VERIFY passed), or in a rollback, the run carries on to its end instead: that is what brings the API back. A second signal exits at once (the journal keeps it resumable)";
    match format {
        Format::Human => eprintln!("\n{name}: {then}"),
        Format::Json => events::emit(&Event::Interrupt {
            signal: name.to_owned(),
            then: then.to_owned(),
        }),
    }
}

fn second(format: Format, name: &str) -> ! {
    let id = events::restore_id().unwrap_or_else(|| "<id>".to_owned());
    let advice = format!(
        "the restore was left where it stood, in the middle of a phase; `quorate status {id}` shows every member; then `quorate resume {id}` carries it forward or `quorate rollback {id}` puts every member back"
    );
    let message = format!("{name} again: exiting at once");
    match format {
        Format::Human => eprintln!("\n{message}: {advice}"),
        Format::Json => {
            let mut result = CommandResult::failed(
                Outcome::Interrupted,
                exit::INTERRUPTED,
                ErrorInfo::new("interrupted", message).with_advice(advice),
            );
            result.interrupted_by = Some(name.to_owned());
            events::emit(&Event::Result(result));
        }
    }
    std::process::exit(i32::from(exit::INTERRUPTED));
}
