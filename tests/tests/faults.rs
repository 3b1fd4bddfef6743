//! Failures at every phase boundary on real etcd: injected errors, a coordinator killed with
//! SIGKILL, an agent killed and restarted. After any of them, the cluster ends either exactly as it
//! was (rollback) or exactly on the snapshot (resume), never a mix.
//!
//! Needs the failpoints compiled in (the lab crate's default feature `failpoints`).
#![cfg(feature = "failpoints")]

use std::time::Duration;

use quorate_lab::etcd::member_client;
use quorate_lab::faults::{self, ClusterState};
use quorate_lab::testlab::{self, PATIENCE, TestLab};
use quorate_lab::tools::EtcdVersion;
use quorate_lab::{load, scenario};

/// The phases after which a failure is still a failed restore (after finish it is done).
const BOUNDARIES: [&str; 8] = [
    "stage", "fence", "halt", "preserve", "restore", "quorum", "verify", "unfence",
];

struct Setup {
    lab: TestLab,
    snapshot: std::path::PathBuf,
    /// The snapshot's data (without heartbeats), read live at its revision.
    snapshot_data: std::collections::BTreeMap<Vec<u8>, Vec<u8>>,
}

async fn setup() -> Setup {
    let lab = testlab::up(3, EtcdVersion::V35).await;
    let cp1 = lab.hosts()[0].clone();
    let client = member_client(&cp1.client_url(), &lab.etcd_tls())
        .await
        .expect("client");
    load::load(&client, 3000, 5).await.expect("load");
    let snapshot = lab.dir().join("snapshot.db");
    let rev = scenario::save_snapshot(&lab, &cp1, &snapshot).expect("snapshot");
    let at_rev = scenario::dumps_at(&lab, Some(rev)).await.expect("dump")[0]
        .1
        .clone();
    Setup {
        snapshot_data: faults::without_heartbeats(&at_rev),
        lab,
        snapshot,
    }
}

/// Changes the data so that it differs from the snapshot, and returns the state to come back to.
async fn fresh_original(s: &Setup) -> ClusterState {
    scenario::mutate(&s.lab).await.expect("mutate");
    let state = faults::cluster_state(&s.lab).await.expect("state before");
    assert_ne!(
        state.data, s.snapshot_data,
        "the data differs from the snapshot before the case"
    );
    state
}

async fn assert_back_to(s: &Setup, original: &ClusterState, case: &str) {
    let now = faults::cluster_state(&s.lab)
        .await
        .unwrap_or_else(|e| panic!("{case}: {e:#}"));
    assert_eq!(
        now.cluster_id, original.cluster_id,
        "{case}: the original cluster ID is back"
    );
    assert_eq!(
        now.member_ids, original.member_ids,
        "{case}: the original member IDs are back"
    );
    assert!(
        now.data == original.data,
        "{case}: every member holds the original data"
    );
    scenario::wait_apiservers(&s.lab, PATIENCE)
        .await
        .unwrap_or_else(|e| panic!("{case}: {e:#}"));
}

async fn assert_restored(s: &Setup, original: &ClusterState, case: &str) {
    let now = faults::cluster_state(&s.lab)
        .await
        .unwrap_or_else(|e| panic!("{case}: {e:#}"));
    assert_ne!(
        now.cluster_id, original.cluster_id,
        "{case}: a new cluster ID"
    );
    assert!(
        now.data == s.snapshot_data,
        "{case}: every member holds the snapshot's data"
    );
    scenario::wait_apiservers(&s.lab, PATIENCE)
        .await
        .unwrap_or_else(|e| panic!("{case}: {e:#}"));
}

fn json_events(stdout: &[u8]) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[tokio::test]
async fn an_error_at_each_coordinator_boundary_rolls_every_member_back() {
    let s = setup().await;
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
        let rolled = events.iter().find(|e| e["event"] == "rolled-back");
        assert!(
            rolled.is_some(),
            "{case}: rolled back automatically; stdout {} stderr {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
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

#[tokio::test]
async fn a_coordinator_killed_at_a_boundary_is_resumed_or_rolled_back_from_its_journal() {
    let s = setup().await;
    for (i, phase) in BOUNDARIES.into_iter().enumerate() {
        let original = fresh_original(&s).await;
        let known = faults::restore_ids(&s.lab).len();
        // Held at the start of the next phase: `phase` is journaled done, nothing of the next began.
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
        if i % 2 == 0 {
            let case = format!("crash after {phase}, then resume");
            let (ok, text) = faults::quorate_on(&s.lab, "resume", &id).expect("resume");
            assert!(ok, "{case}: {text}");
            assert_restored(&s, &original, &case).await;
            eprintln!("{case}: restored");
        } else {
            let case = format!("crash after {phase}, then rollback");
            let (ok, text) = faults::quorate_on(&s.lab, "rollback", &id).expect("rollback");
            assert!(ok, "{case}: {text}");
            assert_back_to(&s, &original, &case).await;
            eprintln!("{case}: rolled back");
        }
    }
}

#[tokio::test]
async fn an_agent_killed_mid_step_and_restarted_reports_the_truth_and_the_restore_completes() {
    let mut s = setup().await;
    for (step, member) in [
        ("halt", 1usize),
        ("preserve", 2),
        ("restore", 0),
        ("start", 1),
    ] {
        let case = format!("agent of cp-{} killed during {step}", member + 1);
        let original = fresh_original(&s).await;
        s.lab.kill_agent(member).expect("kill agent");
        s.lab
            .start_agent(member, Some(&format!("agent::after-{step}=sleep(600000)")))
            .await
            .expect("agent with failpoint");
        let child = faults::spawn_restore(&s.lab, &s.snapshot, "").expect("quorate");
        faults::wait_agent_step(&s.lab, member, step, "running")
            .await
            .expect("agent reached the step");
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
    let mut s = setup().await;
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
                .any(|e| e["event"] == "rolled-back"),
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
