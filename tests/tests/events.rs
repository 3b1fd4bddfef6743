//! The event stream and the exit codes, on one 3-member lab of real etcd: every line of a
//! successful restore, of a rolled-back one and of every other ending validates against
//! docs/events.schema.json and tells the whole story (each phase started and done, each member's
//! step started and ended in each phase, the final result); and each exit code comes from a real
//! scenario: usage (2), not confirmed (8: no terminal, or a wrong name typed on one; the right
//! name restores), refused in preflight (4), success (0), rolled back (5), past the point of no
//! return (3), rollback incomplete (6), interrupted by SIGINT (7: once, rolled back; twice,
//! exited at once and rolled back afterwards by `quorate rollback`); SIGHUP does not stop a run.
//!
//! Needs the failpoints compiled in (the lab crate's default feature `failpoints`).
#![cfg(all(feature = "failpoints", debug_assertions))]
#![forbid(unsafe_code)]

use std::process::{Command, Output, Stdio};
use std::time::Instant;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use quorate_lab::matrix::{self, Setup};
use quorate_lab::realfaults::json_events;
use quorate_lab::{faults, scenario};
use serde_json::Value;

const PHASES: [&str; 10] = [
    "stage", "prepare", "fence", "halt", "preserve", "restore", "quorum", "verify", "unfence",
    "finish",
];

/// The agent step a phase runs and reverts (VERIFY runs none).
fn step_of(phase: &str) -> Option<&'static str> {
    match phase {
        "stage" => Some("claim"),
        "quorum" => Some("start"),
        "verify" => None,
        other => PHASES.iter().find(|p| **p == other).copied(),
    }
}

/// Every line is JSON and valid against the schema; the last one is the `result` with
/// `exit_code` equal to the process's. Returns the events.
fn valid_stream(out: &Output, case: &str) -> Vec<Value> {
    let text = matrix::output_text(out);
    eprintln!("{case}:\n{text}");
    quorate_lab::event_schema::valid_stream(
        &String::from_utf8_lossy(&out.stdout),
        out.status.code(),
        case,
    )
}

fn of<'a>(events: &'a [Value], event: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["event"] == event).collect()
}

/// Every phase of `forward` started and ended (done, or failed for the last when `failed`), in
/// order, and in each one every member's step started and ended (way `run`).
fn assert_forward_story(events: &[Value], forward: &[&str], failed: bool, case: &str) {
    let started: Vec<&str> = of(events, "phase-started")
        .iter()
        .filter_map(|e| e["phase"].as_str())
        .collect();
    let mut expected = vec!["preflight"];
    expected.extend(forward);
    assert_eq!(started, expected, "{case}: the phases started, in order");
    let done: Vec<&str> = of(events, "phase-done")
        .iter()
        .filter_map(|e| e["phase"].as_str())
        .collect();
    let ended = if failed {
        &expected[..expected.len() - 1]
    } else {
        &expected[..]
    };
    assert_eq!(done, ended, "{case}: the phases done, in order");
    for phase in forward {
        assert_member_steps(events, phase, "run", case);
    }
}

/// In `phase`, each of cp-1..cp-3 has its step `way` started and then done.
fn assert_member_steps(events: &[Value], phase: &str, way: &str, case: &str) {
    let Some(step) = step_of(phase) else { return };
    for member in ["cp-1", "cp-2", "cp-3"] {
        let states: Vec<&str> = of(events, "member-step")
            .iter()
            .filter(|e| e["phase"] == phase && e["member"] == member && e["way"] == way)
            .map(|e| {
                assert_eq!(e["step"], step, "{case}: {e}");
                e["state"].as_str().unwrap_or_default()
            })
            .collect();
        assert!(
            states.first() == Some(&"started") && states.last() == Some(&"done"),
            "{case}: {member}'s {way} of {step} in {phase} started and ended: {states:?}"
        );
    }
}

/// `quorate restore` without --yes on a terminal (a pty from util-linux `script`) where
/// `typed` is typed; its exit code and everything the terminal showed.
fn on_terminal(s: &Setup, typed: &str) -> (Option<i32>, String) {
    use std::io::Write;
    let command = format!(
        "{} restore --inventory {} --snapshot {} --state-dir {}",
        scenario::quorate_bin(&s.lab).display(),
        s.lab.dir().join("inventory.toml").display(),
        s.snapshot.display(),
        faults::state_dir(&s.lab).display()
    );
    let mut child = Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("script (util-linux)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(typed.as_bytes())
        .expect("type");
    let out = child.wait_with_output().expect("script output");
    (out.status.code(), matrix::output_text(&out))
}

fn quorate(s: &Setup, args: &[&str], failpoints: &str) -> Output {
    matrix::spawn_quorate(&s.lab, args, failpoints)
        .expect("quorate")
        .wait_with_output()
        .expect("quorate output")
}

fn restore_args(s: &Setup) -> Vec<String> {
    let inventory = s.lab.dir().join("inventory.toml");
    [
        "restore",
        "--yes",
        "--output",
        "json",
        "--inventory",
        &inventory.display().to_string(),
        "--snapshot",
        &s.snapshot.display().to_string(),
    ]
    .map(str::to_owned)
    .to_vec()
}

fn restore(s: &Setup, failpoints: &str) -> Output {
    let args = restore_args(s);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    quorate(s, &args, failpoints)
}

#[tokio::test]
async fn event_stream_and_exit_codes() {
    let s = matrix::setup(3).await;
    let bin = scenario::quorate_bin(&s.lab);
    let inventory = s.lab.dir().join("inventory.toml");

    // Usage: clap's code, and a result event even so.
    let out = Command::new(&bin)
        .args(["--output", "json", "restore", "--no-such-flag"])
        .output()
        .expect("quorate");
    let events = valid_stream(&out, "usage");
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(events[0]["outcome"], "usage");

    // Not confirmed: no --yes and no terminal on stdin. The plan is shown, nothing is touched.
    let out = Command::new(&bin)
        .args(["restore", "--output", "json", "--inventory"])
        .arg(&inventory)
        .arg("--snapshot")
        .arg(&s.snapshot)
        .arg("--state-dir")
        .arg(faults::state_dir(&s.lab))
        .stdin(Stdio::null())
        .output()
        .expect("quorate");
    let events = valid_stream(&out, "not confirmed");
    assert_eq!(out.status.code(), Some(8), "{}", matrix::output_text(&out));
    assert_eq!(of(&events, "plan").len(), 1, "the plan is shown first");
    let result = events.last().expect("result");
    assert_eq!(result["outcome"], "not-confirmed");
    assert!(
        result["error"]
            .as_str()
            .unwrap_or_default()
            .contains("(lab)"),
        "the refusal names the cluster to type: {result}"
    );
    assert!(
        faults::restore_ids(&s.lab).is_empty(),
        "not confirmed: no restore was journaled"
    );
    for i in 0..3 {
        assert!(
            quorate_lab::realfaults::agent_journal(&s.lab, i).is_none(),
            "not confirmed: no agent was claimed"
        );
    }

    // On a terminal: a wrong name refuses, the cluster's name confirms.
    let case = "confirmed on a terminal";
    let original = matrix::fresh_original(&s).await;
    let (code, text) = on_terminal(&s, "prod\n");
    assert_eq!(code, Some(8), "a wrong name: {text}");
    assert!(text.contains("is not the cluster's name (lab)"), "{text}");
    assert!(
        faults::restore_ids(&s.lab).is_empty(),
        "a wrong name: nothing journaled"
    );
    let (code, text) = on_terminal(&s, "lab\n");
    assert_eq!(code, Some(0), "the cluster's name: {text}");
    matrix::assert_restored(&s, &original, case).await;

    // Refused in preflight: a snapshot that is not there.
    let mut args = restore_args(&s);
    args[7] = s.lab.dir().join("no-such.db").display().to_string();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = quorate(&s, &args, "");
    let events = valid_stream(&out, "preflight refused");
    assert_eq!(out.status.code(), Some(4), "{}", matrix::output_text(&out));
    let failed = of(&events, "phase-failed");
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["phase"], "preflight");
    assert_eq!(failed[0]["errors"][0]["code"], "snapshot", "{}", failed[0]);
    assert_eq!(events.last().expect("result")["outcome"], "refused");

    // Success: the whole story.
    let case = "success";
    let original = matrix::fresh_original(&s).await;
    let started = Instant::now();
    let out = restore(&s, "");
    let events = valid_stream(&out, case);
    assert_eq!(out.status.code(), Some(0), "{}", matrix::output_text(&out));
    assert_forward_story(&events, &PHASES, false, case);
    assert!(
        of(&events, "staging")
            .iter()
            .any(|e| e["sent_bytes"] == e["total_bytes"]),
        "{case}: staging reports the end of a copy"
    );
    let result = events.last().expect("result");
    assert_eq!(result["outcome"], "restored");
    let id = result["restore_id"].as_str().expect("restore id");
    assert!(
        events.iter().skip(2).all(|e| e["restore_id"] == id),
        "{case}: every line after preflight names the restore"
    );
    matrix::assert_restored(&s, &original, case).await;
    eprintln!(
        "{case}: {} events in {:.1?}",
        events.len(),
        started.elapsed()
    );

    // Rolled back: RESTORE fails on the coordinator; every phase begun is undone, newest first.
    let case = "rolled back";
    let original = matrix::fresh_original(&s).await;
    let out = restore(&s, "coordinator::after-restore=return(injected)");
    let events = valid_stream(&out, case);
    assert_eq!(out.status.code(), Some(5), "{}", matrix::output_text(&out));
    assert_forward_story(&events, &PHASES[..6], true, case);
    let failed = of(&events, "phase-failed");
    assert_eq!(failed.len(), 1, "{case}");
    assert_eq!(failed[0]["phase"], "restore");
    assert_eq!(failed[0]["direction"], "forward");
    assert_eq!(failed[0]["errors"][0]["code"], "coordinator");
    let reverted: Vec<&str> = of(&events, "revert-done")
        .iter()
        .filter_map(|e| e["phase"].as_str())
        .collect();
    assert_eq!(
        reverted,
        ["restore", "preserve", "halt", "fence", "prepare", "stage"],
        "{case}: every phase begun undone, newest first"
    );
    assert_eq!(of(&events, "revert-started").len(), 6, "{case}");
    for phase in &PHASES[..6] {
        assert_member_steps(&events, phase, "revert", case);
    }
    let result = events.last().expect("result");
    assert_eq!(result["outcome"], "rolled-back");
    assert_eq!(result["failed_phase"], "restore");
    matrix::assert_back_to(&s, &original, case).await;

    // Past the point of no return: resume completes it.
    let case = "past no return";
    let original = matrix::fresh_original(&s).await;
    let out = restore(&s, "coordinator::after-verify=return(injected)");
    let events = valid_stream(&out, case);
    assert_eq!(out.status.code(), Some(3), "{}", matrix::output_text(&out));
    assert_eq!(events.last().expect("result")["outcome"], "past-no-return");
    assert!(
        of(&events, "revert-started").is_empty(),
        "{case}: no rollback"
    );
    let id = faults::restore_ids(&s.lab).pop().expect("restore id");
    let out = quorate(&s, &["resume", &id, "--output", "json"], "");
    let events = valid_stream(&out, "resume");
    assert_eq!(out.status.code(), Some(0), "{}", matrix::output_text(&out));
    assert_eq!(events.last().expect("result")["outcome"], "restored");
    matrix::assert_restored(&s, &original, case).await;

    // Rollback incomplete: the undo of HALT fails; `quorate rollback` then finishes it.
    let case = "rollback incomplete";
    let original = matrix::fresh_original(&s).await;
    let out = restore(
        &s,
        "coordinator::after-restore=return(injected);coordinator::after-rollback:halt=return(injected)",
    );
    let events = valid_stream(&out, case);
    assert_eq!(out.status.code(), Some(6), "{}", matrix::output_text(&out));
    let result = events.last().expect("result");
    assert_eq!(result["outcome"], "stopped");
    assert!(
        result["rollback_error"]
            .as_str()
            .unwrap_or_default()
            .contains("rollback:halt"),
        "{case}: {result}"
    );
    let id = faults::restore_ids(&s.lab).pop().expect("restore id");
    let out = quorate(&s, &["rollback", &id, "--output", "json"], "");
    let events = valid_stream(&out, "rollback");
    assert_eq!(out.status.code(), Some(0), "{}", matrix::output_text(&out));
    assert_eq!(events.last().expect("result")["outcome"], "rolled-back");
    matrix::assert_back_to(&s, &original, case).await;

    // Interrupted: SIGINT while PREPARE is held; FENCE never begins, the restore is rolled back.
    let case = "interrupted";
    let original = matrix::fresh_original(&s).await;
    let known = faults::restore_ids(&s.lab).len();
    let args = restore_args(&s);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let child = matrix::spawn_quorate(&s.lab, &args, "coordinator::after-prepare=sleep(3000)")
        .expect("quorate");
    if let Err(e) = faults::wait_journal(&s.lab, known, "prepare", "begin").await {
        matrix::fail_with(child, "PREPARE began", &e);
    }
    let pid = i32::try_from(child.id()).expect("pid");
    kill(Pid::from_raw(pid), Signal::SIGINT).expect("SIGINT the coordinator");
    let out = child.wait_with_output().expect("quorate output");
    let events = valid_stream(&out, case);
    assert_eq!(out.status.code(), Some(7), "{}", matrix::output_text(&out));
    assert_eq!(of(&events, "interrupt").len(), 1, "{case}");
    assert!(
        !events
            .iter()
            .any(|e| e["event"] == "phase-started" && e["phase"] == "fence"),
        "{case}: no apiserver was stopped after the signal"
    );
    let result = events.last().expect("result");
    assert_eq!(result["outcome"], "rolled-back", "{case}: {result}");
    assert_eq!(result["interrupted_by"], "SIGINT");
    assert_eq!(result["errors"][0]["code"], "interrupted");
    assert_eq!(
        json_events(&out.stdout)
            .iter()
            .filter(|e| e["event"] == "revert-done")
            .count(),
        2,
        "{case}: PREPARE and STAGE undone"
    );
    matrix::assert_back_to(&s, &original, case).await;

    // A second SIGINT exits at once, in the middle of HALT; `quorate rollback` finishes from the
    // journal.
    let case = "interrupted twice";
    let known = faults::restore_ids(&s.lab).len();
    let child = matrix::spawn_quorate(&s.lab, &args, "coordinator::after-halt=sleep(20000)")
        .expect("quorate");
    if let Err(e) = faults::wait_journal(&s.lab, known, "halt", "begin").await {
        matrix::fail_with(child, "HALT began", &e);
    }
    let pid = Pid::from_raw(i32::try_from(child.id()).expect("pid"));
    let signalled = Instant::now();
    kill(pid, Signal::SIGINT).expect("SIGINT");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    kill(pid, Signal::SIGINT).expect("SIGINT again");
    let out = child.wait_with_output().expect("quorate output");
    assert!(
        signalled.elapsed() < std::time::Duration::from_secs(10),
        "{case}: exited at once, not after the held phase"
    );
    let events = valid_stream(&out, case);
    assert_eq!(out.status.code(), Some(7), "{}", matrix::output_text(&out));
    let result = events.last().expect("result");
    assert_eq!(result["outcome"], "interrupted", "{case}: {result}");
    let id = faults::restore_ids(&s.lab).pop().expect("restore id");
    assert!(
        result["advice"]
            .as_str()
            .unwrap_or_default()
            .contains(&format!("quorate rollback {id}")),
        "{case}: {result}"
    );
    let out = quorate(&s, &["rollback", &id, "--output", "json"], "");
    valid_stream(&out, "rollback after a second SIGINT");
    assert_eq!(out.status.code(), Some(0), "{}", matrix::output_text(&out));
    matrix::assert_back_to(&s, &original, case).await;

    // SIGHUP (the operator's session dropped) does not stop the run: it goes on to its end.
    let case = "hung up";
    let known = faults::restore_ids(&s.lab).len();
    let child = matrix::spawn_quorate(&s.lab, &args, "coordinator::after-prepare=sleep(2000)")
        .expect("quorate");
    if let Err(e) = faults::wait_journal(&s.lab, known, "prepare", "begin").await {
        matrix::fail_with(child, "PREPARE began", &e);
    }
    let pid = Pid::from_raw(i32::try_from(child.id()).expect("pid"));
    kill(pid, Signal::SIGHUP).expect("SIGHUP");
    let out = child.wait_with_output().expect("quorate output");
    let events = valid_stream(&out, case);
    assert_eq!(out.status.code(), Some(0), "{}", matrix::output_text(&out));
    assert_eq!(
        of(&events, "interrupt").len(),
        0,
        "{case}: not an interrupt"
    );
    assert_eq!(
        events.last().expect("result")["outcome"],
        "restored",
        "{case}"
    );
}
