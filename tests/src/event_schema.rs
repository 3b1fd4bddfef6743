//! Checks a command's `--output json` stream against docs/events.schema.json, as a runbook
//! reading it would: every line JSON and valid, exactly one `result`, last, whose `exit_code` is
//! the process's.

use serde_json::Value;

const SCHEMA: &str = include_str!("../../docs/events.schema.json");

/// The events of `stdout`, each checked; panics naming `case` and the line on any violation.
pub fn valid_stream(stdout: &str, exit_code: Option<i32>, case: &str) -> Vec<Value> {
    let schema: Value = serde_json::from_str(SCHEMA).expect("schema JSON");
    let validator = jsonschema::draft202012::new(&schema).expect("schema");
    assert!(!stdout.trim().is_empty(), "{case}: no events");
    let mut events = Vec::new();
    for line in stdout.lines() {
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("{case}: a line that is not JSON ({e}): {line}"));
        let errors: Vec<String> = validator.iter_errors(&v).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{case}: {line}\ninvalid: {errors:#?}");
        events.push(v);
    }
    let last = events.last().expect("one event");
    assert_eq!(
        last["event"], "result",
        "{case}: the last line is the result"
    );
    assert_eq!(
        last["exit_code"].as_i64(),
        exit_code.map(i64::from),
        "{case}: the result's exit code is the process's"
    );
    assert_eq!(
        events.iter().filter(|e| e["event"] == "result").count(),
        1,
        "{case}: one result"
    );
    events
}

/// Runs `quorate ARGS --output json --state-dir <the lab's>` and returns its checked events.
pub fn run_json(lab: &crate::lab::Lab, args: &[&str], case: &str) -> Vec<Value> {
    let out = std::process::Command::new(crate::scenario::quorate_bin(lab))
        .args(args)
        .args(["--output", "json", "--state-dir"])
        .arg(crate::faults::state_dir(lab))
        .output()
        .unwrap_or_else(|e| panic!("{case}: running quorate: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{case}:\n{stdout}{}", String::from_utf8_lossy(&out.stderr));
    valid_stream(&stdout, out.status.code(), case)
}
