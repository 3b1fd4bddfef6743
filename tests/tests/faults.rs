//! Failures at every phase boundary on real etcd: injected errors, a coordinator killed with
//! SIGKILL, an agent killed and restarted. After any of them, the cluster ends either exactly as it
//! was (rollback) or exactly on the snapshot (resume), never a mix.
//!
//! Needs the failpoints compiled in (the lab crate's default feature `failpoints`).
#![cfg(all(feature = "failpoints", debug_assertions))]

use std::time::Duration;

use quorate_lab::faults;
use quorate_lab::matrix::{
    EXIT_PAST_NO_RETURN, Setup, assert_back_to, assert_restored, fresh_original,
};
use quorate_lab::realfaults::json_events;
use quorate_lab::scenario;

/// The phases after which a failure is still a failed restore (after finish it is done).
const BOUNDARIES: [&str; 9] = [
    "stage", "prepare", "fence", "halt", "preserve", "restore", "quorum", "verify", "unfence",
];

/// Boundaries past the point of no return: VERIFY has passed, every member holds the verified
/// snapshot data, and nothing is rolled back unless the operator forces it.
fn past_no_return(phase: &str) -> bool {
    matches!(phase, "verify" | "unfence")
}

#[tokio::test]
async fn an_error_at_each_coordinator_boundary_rolls_back_before_verify_and_stops_after_it() {
    let s = quorate_lab::matrix::setup(3).await;
    for phase in BOUNDARIES {
        let case = format!("error after {phase}");
        let original = fresh_original(&s).await;
        let child = faults::spawn_restore(
            &s.lab,
            &s.snapshot,
            &format!("coordinator::after-{phase}=return(injected)"),
        )
        .expect("quorate");
        let out = child.wait_with_output().expect("quorate output");
        assert!(!out.status.success(), "{case}: the restore reports failure");
        let events = json_events(&out.stdout);
        let output = format!(
            "stdout {} stderr {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if past_no_return(phase) {
            assert_eq!(
                out.status.code(),
                Some(EXIT_PAST_NO_RETURN),
                "{case}: {output}"
            );
            assert!(
                !events.iter().any(|e| e["outcome"] == "rolled-back"),
                "{case}: nothing rolled back after VERIFY: {output}"
            );
            let stopped = events
                .iter()
                .find(|e| e["event"] == "result")
                .unwrap_or_else(|| panic!("{case}: a result event: {output}"));
            assert_eq!(stopped["outcome"], "past-no-return", "{case}: {output}");
            let id = faults::restore_ids(&s.lab).pop().expect("restore id");
            let (ok, text) = faults::quorate_on(&s.lab, "resume", &id).expect("resume");
            assert!(ok, "{case}: resume completes it: {text}");
            assert_restored(&s, &original, &case).await;
            eprintln!("{case}: stopped past the point of no return, resumed to the snapshot");
            continue;
        }
        let rolled = events
            .iter()
            .find(|e| e["event"] == "result" && e["outcome"] == "rolled-back");
        assert!(
            rolled.is_some(),
            "{case}: rolled back automatically; {output}"
        );
        assert!(
            rolled.expect("event")["error"]
                .as_str()
                .unwrap_or("")
                .contains(&format!("phase {phase}"))
        );
        assert_back_to(&s, &original, &case).await;
        eprintln!("{case}: rolled back, original cluster verified");
    }
}

/// Kills the coordinator (SIGKILL) right after `phase` is journaled done, before the next phase
/// begins; returns the restore id once `quorate status` has named the next step.
async fn crash_after(s: &Setup, i: usize, phase: &str) -> String {
    let known = faults::restore_ids(&s.lab).len();
    let next = BOUNDARIES.get(i + 1).copied().unwrap_or("finish");
    let mut child = faults::spawn_restore(
        &s.lab,
        &s.snapshot,
        &format!("coordinator::before-{next}=sleep(600000)"),
    )
    .expect("quorate");
    let id = match faults::wait_journal(&s.lab, known, phase, "done").await {
        Ok(id) => id,
        Err(e) => {
            let _ = child.kill();
            let out = child.wait_with_output().expect("quorate output");
            panic!(
                "{e:#}; quorate: {}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    };
    child.kill().expect("SIGKILL the coordinator");
    let _ = child.wait();
    let (ok, status) = faults::quorate_on(&s.lab, "status", &id).expect("status");
    assert!(
        ok && status.contains(&format!("quorate resume {id}")),
        "status names the next step: {status}"
    );
    id
}

#[tokio::test]
async fn a_coordinator_killed_at_each_boundary_is_resumed_to_the_same_end_as_an_uninterrupted_restore()
 {
    let s = quorate_lab::matrix::setup(3).await;
    for (i, phase) in BOUNDARIES.into_iter().enumerate() {
        let original = fresh_original(&s).await;
        let id = crash_after(&s, i, phase).await;
        let case = format!("crash after {phase}, then resume");
        let (ok, text) = faults::quorate_on(&s.lab, "resume", &id).expect("resume");
        assert!(ok, "{case}: {text}");
        assert_restored(&s, &original, &case).await;
        eprintln!("{case}: restored");
    }
}

#[tokio::test]
async fn a_coordinator_killed_at_each_boundary_is_rolled_back_to_the_original_cluster() {
    let s = quorate_lab::matrix::setup(3).await;
    for (i, phase) in BOUNDARIES.into_iter().enumerate() {
        let original = fresh_original(&s).await;
        let id = crash_after(&s, i, phase).await;
        let case = format!("crash after {phase}, then rollback");
        if past_no_return(phase) {
            let (code, text) = faults::quorate_with(&s.lab, &["rollback", &id]).expect("rollback");
            assert_eq!(code, Some(EXIT_PAST_NO_RETURN), "{case}: refused: {text}");
            assert!(
                text.contains("passed VERIFY") && text.contains("--force"),
                "{case}: says why and how: {text}"
            );
            let (code, text) =
                faults::quorate_with(&s.lab, &["rollback", &id, "--force"]).expect("rollback");
            assert_eq!(code, Some(0), "{case}: --force rolls back: {text}");
            assert_back_to(&s, &original, &case).await;
            eprintln!("{case}: refused, then rolled back with --force");
            continue;
        }
        let (ok, text) = faults::quorate_on(&s.lab, "rollback", &id).expect("rollback");
        assert!(ok, "{case}: {text}");
        assert_back_to(&s, &original, &case).await;
        eprintln!("{case}: rolled back");
    }
}

#[tokio::test]
async fn a_rollback_that_loses_an_agent_for_good_stops_naming_it_and_finishes_once_it_is_back() {
    let mut s = quorate_lab::matrix::setup(3).await;
    let original = fresh_original(&s).await;
    // cp-2's agent will hang while reverting its restore step, then disappear.
    s.lab.kill_agent(1).expect("kill agent");
    s.lab
        .start_agent(1, Some("agent::before-revert-restore=sleep(600000)"))
        .await
        .expect("agent with failpoint");
    let known = faults::restore_ids(&s.lab).len();
    let child = std::process::Command::new(scenario::quorate_bin(&s.lab))
        .args([
            "restore",
            "--yes",
            "--output",
            "json",
            "--start-timeout",
            "15s",
            "--inventory",
        ])
        .arg(s.lab.dir().join("inventory.toml"))
        .arg("--snapshot")
        .arg(&s.snapshot)
        .arg("--state-dir")
        .arg(faults::state_dir(&s.lab))
        .env("FAILPOINTS", "coordinator::after-restore=return(injected)")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("quorate");
    let id = faults::wait_journal(&s.lab, known, "rollback:restore", "begin")
        .await
        .expect("the rollback began");
    faults::wait_agent_step(&s.lab, 1, "restore", "reverting")
        .await
        .or(Ok::<String, anyhow::Error>(String::new()))
        .expect("cp-2 reached the revert");
    s.lab.kill_agent(1).expect("cp-2's agent is gone for good");
    let out = child.wait_with_output().expect("quorate output");
    assert!(!out.status.success(), "the rollback could not complete");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stopped = json_events(&out.stdout)
        .into_iter()
        .find(|e| e["event"] == "result" && e["outcome"] == "stopped")
        .unwrap_or_else(|| panic!("a stopped result: {stdout}"));
    let rollback_error = stopped["rollback_error"].as_str().unwrap_or_default();
    assert!(
        rollback_error.contains("member cp-2") && rollback_error.contains("rollback:restore"),
        "the rollback names the member and where it stopped: {rollback_error}"
    );
    let (ok, status) = faults::quorate_on(&s.lab, "status", &id).expect("status");
    assert!(ok, "status: {status}");
    assert!(
        status.contains("cp-2") && status.contains("UNKNOWN"),
        "status: {status}"
    );
    assert!(
        status.contains(&format!("run `quorate rollback {id}` again"))
            && status.contains("first bring back the agent on cp-2"),
        "status names the next step: {status}"
    );
    let journal = faults::state_dir(&s.lab).join(&id).join("journal.jsonl");
    assert!(
        std::fs::read_to_string(&journal).is_ok_and(|t| t
            .lines()
            .any(|l| faults::journal_line_is(l, "rollback:restore", "failed"))),
        "the journal records where the rollback stopped"
    );
    // The agent comes back: the same rollback finishes.
    s.lab.start_agent(1, None).await.expect("agent back");
    let (ok, text) = faults::quorate_on(&s.lab, "rollback", &id).expect("rollback");
    assert!(ok, "the rollback finishes once the agent is back: {text}");
    assert_back_to(&s, &original, "rollback after the agent came back").await;
}

#[tokio::test]
async fn an_agent_killed_mid_step_and_restarted_reports_the_truth_and_the_restore_completes() {
    let mut s = quorate_lab::matrix::setup(3).await;
    for (step, member) in [
        ("claim", 0usize),
        ("prepare", 1),
        ("fence", 2),
        ("halt", 1),
        ("preserve", 2),
        ("restore", 0),
        ("start", 1),
        ("unfence", 2),
        ("finish", 0),
    ] {
        let case = format!("agent of cp-{} killed during {step}", member + 1);
        let original = fresh_original(&s).await;
        s.lab.kill_agent(member).expect("kill agent");
        s.lab
            .start_agent(member, Some(&format!("agent::after-{step}=sleep(600000)")))
            .await
            .expect("agent with failpoint");
        let mut child = faults::spawn_restore(&s.lab, &s.snapshot, "").expect("quorate");
        if let Err(e) = faults::wait_agent_step(&s.lab, member, step, "running").await {
            let _ = child.kill();
            let out = child.wait_with_output().expect("quorate output");
            panic!(
                "{case}: {e:#}; quorate: {}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        s.lab.kill_agent(member).expect("kill agent mid-step");
        tokio::time::sleep(Duration::from_millis(500)).await;
        s.lab
            .start_agent(member, None)
            .await
            .expect("agent restarted");
        let out = child.wait_with_output().expect("quorate output");
        assert!(
            out.status.success(),
            "{case}: the coordinator retried and finished; stdout {} stderr {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_restored(&s, &original, &case).await;
        eprintln!("{case}: restore completed");
    }
}

#[tokio::test]
async fn an_error_on_one_member_rolls_every_member_back() {
    let mut s = quorate_lab::matrix::setup(3).await;
    for (fp, member) in [
        ("agent::after-restore", 1usize),
        ("agent::before-halt", 2),
        ("agent::after-start", 0),
    ] {
        let case = format!("{fp} on cp-{}", member + 1);
        let original = fresh_original(&s).await;
        s.lab.kill_agent(member).expect("kill agent");
        s.lab
            .start_agent(member, Some(&format!("{fp}=return(injected)")))
            .await
            .expect("agent with failpoint");
        let out = faults::spawn_restore(&s.lab, &s.snapshot, "")
            .expect("quorate")
            .wait_with_output()
            .expect("out");
        assert!(!out.status.success(), "{case}: fails");
        assert!(
            json_events(&out.stdout)
                .iter()
                .any(|e| e["outcome"] == "rolled-back"),
            "{case}: rolled back; stdout {} stderr {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_back_to(&s, &original, &case).await;
        s.lab.kill_agent(member).expect("kill agent");
        s.lab
            .start_agent(member, None)
            .await
            .expect("agent without failpoint");
        eprintln!("{case}: rolled back, original cluster verified");
    }
}
