//! Every event type, as serialised, against docs/events.schema.json.

use std::time::Duration;

use quorate_proto::model::{ErrorCode, Step};
use serde_json::{Value, json};

use super::*;
use crate::engine::Direction;
use crate::failure::{FailureKind, MemberFailure};
use crate::output::exit;
use crate::restore::{MemberState, Way};

const SCHEMA: &str = include_str!("../../docs/events.schema.json");

fn validator() -> jsonschema::Validator {
    let schema: Value = serde_json::from_str(SCHEMA).expect("the schema is JSON");
    jsonschema::draft202012::new(&schema).expect("the schema is a valid 2020-12 schema")
}

fn parsed(event: &Event) -> Value {
    serde_json::from_str(&line(event)).expect("a line is JSON")
}

#[track_caller]
fn assert_valid(v: &jsonschema::Validator, value: &Value) {
    let errors: Vec<String> = v
        .iter_errors(value)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{value}\ndoes not validate: {errors:#?}");
}

#[track_caller]
fn assert_invalid(v: &jsonschema::Validator, value: &Value, why: &str) {
    assert!(!v.is_valid(value), "{why}: {value} must not validate");
}

fn failure(code: Option<ErrorCode>, kind: FailureKind) -> MemberFailure {
    let mut f = MemberFailure::new("cp-2", kind, "step halt: etcd did not stop within 90s");
    f.code = code;
    f
}

fn restore_report() -> Value {
    json!({
        "restore_id": "5f0c1d2e-3a4b-4c5d-8e6f-7a8b9c0d1e2f",
        "cluster_token": "quorate-5f0c1d2e-3a4b-4c5d-8e6f-7a8b9c0d1e2f",
        "snapshot_sha256": "ab",
        "snapshot_revision": 4100,
        "revision_before": 4200,
        "revision_bump": 1000,
        "skip_hash_check": false,
        "restarted": [["cp-1", "kube-controller-manager, kube-scheduler"]],
        "before": [],
        "after": {"cluster_id": 1, "members": [], "revision": 5200, "hash": 7, "keys": 3000},
        "phases": [{"phase": "stage", "seconds": 0.5, "members": [{"member": "cp-1", "seconds": 0.4}]}],
        "total_seconds": 9.5,
        "preserved_dirs": [["cp-1", "/var/lib/etcd.quorate-5f0c"]]
    })
}

fn rollback_report() -> Value {
    json!({
        "restore_id": "5f0c1d2e-3a4b-4c5d-8e6f-7a8b9c0d1e2f",
        "reverted": [{"phase": "restore", "seconds": 0.1}],
        "cluster_id": 1,
        "original": {"cluster_id": 1, "members": [], "revision": 4200, "hash": 7, "keys": 3000},
        "total_seconds": 4.0
    })
}

/// Every event the engine's observer emits, and every kind of result, validates.
#[test]
fn every_event_type_validates_against_the_schema() {
    let v = validator();
    set_command("restore");
    set_restore_id("5f0c1d2e-3a4b-4c5d-8e6f-7a8b9c0d1e2f");
    let mut lines = vec![
        parsed(&Event::Plan {
            plan: json!({
                "restore_id": "5f0c1d2e-3a4b-4c5d-8e6f-7a8b9c0d1e2f",
                "cluster_token": "quorate-5f0c1d2e-3a4b-4c5d-8e6f-7a8b9c0d1e2f",
                "snapshot": {}, "initial_cluster": "cp-1=https://10.0.0.1:2380",
                "members": [{"name": "cp-1", "agent": "https://10.0.0.1:7443",
                    "peer_urls": ["https://10.0.0.1:2380"], "data_dir": "/var/lib/etcd",
                    "etcd_version": "3.5.16", "etcd_runtime": "static-pod"}],
                "warnings": []
            }),
        }),
        parsed(&Event::PhaseStarted {
            phase: "preflight".into(),
            index: 0,
            total: 10,
        }),
        parsed(&Event::Note { text: "hi".into() }),
        parsed(&Event::Interrupt {
            signal: "SIGINT".into(),
            then: "stopping".into(),
        }),
    ];
    // The observer's own lines, captured by serialising what it would emit.
    let observer = JsonObserver::default();
    observer.set_current(Phase::Halt);
    let phase = observer.current();
    lines.push(parsed(&Event::PhaseStarted {
        phase: "halt".into(),
        index: 4,
        total: 10,
    }));
    for (state, elapsed, error) in [
        (StepState::Started, None, None),
        (
            StepState::Retrying,
            None,
            Some(ErrorInfo::new("unreachable", "connection refused")),
        ),
        (StepState::Done, Some(1.5), None),
        (
            StepState::Failed,
            Some(2.0),
            Some(ErrorInfo::from_failure(
                &failure(None, FailureKind::Timeout),
                Some("halt"),
            )),
        ),
    ] {
        lines.push(parsed(&Event::MemberStep {
            phase: phase.clone(),
            member: "cp-1".into(),
            step: Step::Halt,
            way: WayName::Run,
            state,
            elapsed_seconds: elapsed,
            error,
        }));
    }
    lines.extend([
        parsed(&Event::Staging {
            phase: "stage".into(),
            member: "cp-1".into(),
            sent_bytes: 10,
            total_bytes: 20,
        }),
        parsed(&Event::Waiting {
            phase: Some("quorum".into()),
            member: "cp-2".into(),
            why: "its etcd to answer".into(),
        }),
        parsed(&Event::PhaseDone {
            phase: "halt".into(),
            elapsed_seconds: 7.0,
        }),
        parsed(&Event::PhaseFailed {
            phase: "halt".into(),
            direction: DirectionName::Backward,
            elapsed_seconds: 7.0,
            errors: vec![ErrorInfo::from_failure(
                &failure(Some(ErrorCode::Locked), FailureKind::Failed),
                Some("rollback:halt"),
            )],
        }),
        parsed(&Event::RevertStarted {
            phase: "halt".into(),
        }),
        parsed(&Event::RevertDone {
            phase: "halt".into(),
            elapsed_seconds: 3.0,
        }),
    ]);
    for line in &lines {
        assert_valid(&v, line);
        assert_eq!(line["schema_version"], 1, "{line}");
        assert_eq!(line["command"], "restore", "{line}");
    }
}

/// The observer's calls give lines that validate, each naming the phase under way.
#[test]
fn the_observer_names_the_phase_of_each_member_step() {
    let observer = JsonObserver::default();
    observer.revert_started(Phase::Preserve);
    assert_eq!(observer.current().as_deref(), Some("preserve"));
    observer.phase_started(Phase::Quorum, 7);
    assert_eq!(observer.current().as_deref(), Some("quorum"));
    // The calls themselves print; what they print is the `line` of the same event, checked
    // above. Here: that every state maps to an event that validates.
    let v = validator();
    let f = failure(Some(ErrorCode::CommandFailed), FailureKind::Failed);
    for state in [
        MemberState::Started,
        MemberState::Retrying { error: "gone" },
        MemberState::Done {
            elapsed: Duration::from_millis(5),
        },
        MemberState::Failed {
            elapsed: Duration::from_millis(5),
            failure: &f,
        },
    ] {
        let event = observer.member_event("cp-3", Step::Start, Way::Revert, state);
        assert_valid(&v, &parsed(&event));
    }
    let failed = Event::PhaseFailed {
        phase: "quorum".into(),
        direction: direction_name(Direction::Forward),
        elapsed_seconds: 1.0,
        errors: vec![ErrorInfo::from_failure(&f, Some("quorum"))],
    };
    assert_valid(&v, &parsed(&failed));
}

/// Every outcome with its exit code validates; mismatched ones do not.
#[test]
fn every_result_validates_and_its_exit_code_matches_its_outcome() {
    let v = validator();
    set_command("restore");
    let error = ErrorInfo::from_failure(&failure(None, FailureKind::Coordinator), Some("restore"));
    let with_errors = |outcome, code| CommandResult::failed(outcome, code, error.clone());
    let mut restored = CommandResult::new(Outcome::Restored, exit::OK);
    restored.result = Some(restore_report());
    restored.report_path = Some("/var/lib/quorate/x/report.json".into());
    let mut rolled_back = with_errors(Outcome::RolledBack, exit::ROLLED_BACK);
    rolled_back.result = Some(rollback_report());
    rolled_back.report_path = Some("/var/lib/quorate/x/rollback.json".into());
    let mut rollback_cmd = CommandResult::new(Outcome::RolledBack, exit::OK);
    rollback_cmd.result = Some(rollback_report());
    rollback_cmd.report_path = Some("/var/lib/quorate/x/rollback.json".into());
    let mut past = with_errors(Outcome::PastNoReturn, exit::PAST_NO_RETURN);
    past.advice = Some("resume".into());
    let mut stopped = with_errors(Outcome::Stopped, exit::ROLLBACK_INCOMPLETE);
    stopped.rollback_error = Some("rollback of halt failed".into());
    stopped.advice = Some("quorate status".into());
    let mut interrupted = CommandResult::failed(
        Outcome::Interrupted,
        exit::INTERRUPTED,
        ErrorInfo::new("interrupted", "SIGINT again"),
    );
    interrupted.interrupted_by = Some("SIGINT".into());
    let good = [
        restored,
        rolled_back,
        rollback_cmd,
        past,
        stopped,
        interrupted,
        with_errors(Outcome::Refused, exit::REFUSED),
        with_errors(Outcome::Refused, exit::PAST_NO_RETURN),
        with_errors(Outcome::NotConfirmed, exit::NOT_CONFIRMED),
        with_errors(Outcome::Failed, exit::ERROR),
        with_errors(Outcome::Usage, exit::USAGE),
        CommandResult::ok(&json!({"members": []})),
        // Other commands' generic results: any object, or a list.
        CommandResult::ok(&json!([{"restore_id": "x", "outcome": "restored"}])),
    ];
    for r in good {
        assert_valid(&v, &parsed(&Event::Result(r)));
    }
    for command in ["agents install", "certs check", "gc", "report", "list"] {
        set_command(command);
        assert_valid(
            &v,
            &parsed(&Event::Result(CommandResult::ok(&json!({"any": "thing"})))),
        );
    }
    set_command("restore");
    let bad = [
        (
            with_errors(Outcome::RolledBack, exit::PAST_NO_RETURN),
            "rolled back with the past-no-return code",
        ),
        (
            CommandResult::new(Outcome::Restored, exit::OK),
            "restored without its report",
        ),
        (
            CommandResult::new(Outcome::Failed, exit::ERROR),
            "a failure without errors",
        ),
        (
            with_errors(Outcome::NotConfirmed, exit::USAGE),
            "not confirmed with the usage code",
        ),
    ];
    for (r, why) in bad {
        assert_invalid(&v, &parsed(&Event::Result(r)), why);
    }
}

/// The schema is strict: an unknown event, an unknown field, a missing field, another version
/// or a local time are refused (so the tests above can fail).
#[test]
fn the_schema_refuses_what_the_stream_never_prints() {
    let v = validator();
    let good = parsed(&Event::PhaseDone {
        phase: "fence".into(),
        elapsed_seconds: 1.0,
    });
    assert_valid(&v, &good);
    let changed = |f: &dyn Fn(&mut Value), why: &str| {
        let mut value = good.clone();
        f(&mut value);
        assert_invalid(&v, &value, why);
    };
    changed(&|v| v["event"] = json!("phase-ended"), "an unknown event");
    changed(&|v| v["extra"] = json!(1), "an unknown field");
    changed(
        &|v| {
            v.as_object_mut().map(|o| o.remove("elapsed_seconds"));
        },
        "a missing field",
    );
    changed(&|v| v["schema_version"] = json!(2), "another version");
    changed(
        &|v| v["time"] = json!("2026-12-01T01:00:00+01:00"),
        "a time that is not UTC",
    );
    changed(&|v| v["phase"] = json!("warmup"), "an unknown phase");
    changed(
        &|v| v["command"] = json!("frobnicate"),
        "an unknown command",
    );
}

/// Every failure kind and agent error code gives a code the schema accepts, and the agent's
/// code wins over the kind.
#[test]
fn every_failure_kind_and_agent_code_is_a_valid_code() {
    let v = validator();
    let kinds = [
        FailureKind::Failed,
        FailureKind::Timeout,
        FailureKind::Unreachable,
        FailureKind::Unhealthy,
        FailureKind::Coordinator,
        FailureKind::Interrupted,
    ];
    let codes = ErrorCode::ALL.into_iter().map(Some).chain([None]);
    for code in codes {
        for kind in kinds {
            let info = ErrorInfo::from_failure(&failure(code, kind), Some("rollback:halt"));
            let expected = code.map_or_else(
                || {
                    serde_json::to_value(kind)
                        .expect("kind")
                        .as_str()
                        .map(str::to_owned)
                },
                |c| Some(c.name().to_owned()),
            );
            assert_eq!(Some(info.code.clone()), expected);
            let event = Event::PhaseFailed {
                phase: "halt".into(),
                direction: DirectionName::Backward,
                elapsed_seconds: 0.0,
                errors: vec![info],
            };
            assert_valid(&v, &parsed(&event));
        }
    }
}

/// Errors before any phase are classified by their type.
#[test]
fn command_errors_get_their_code() {
    let inventory = crate::inventory::Inventory::load(std::path::Path::new("/nonexistent.toml"))
        .expect_err("no such inventory");
    assert_eq!(code_of(&anyhow::Error::from(inventory)), "inventory");
    let preflight = crate::plan::PreflightError {
        problems: vec!["cp-2: agent unreachable".into()],
    };
    let e = anyhow::Error::from(preflight).context("restore");
    assert_eq!(code_of(&e), "preflight-refused");
    assert_eq!(code_of(&anyhow::anyhow!("something else")), "error");
}
