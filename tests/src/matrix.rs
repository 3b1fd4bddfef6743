//! The restore engine's fault matrix (tests/tests/engine.rs, tests/tests/engine_journal.rs): one
//! lab per test function with a loaded cluster and a snapshot of it, what an operator checks
//! after each case (cluster and member IDs, keys, HashKV on every member), and coordinators run
//! in the background so that a test can hold, race and kill them.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::etcd::member_client;
use crate::faults::{self, ClusterState};
use crate::lab::Lab;
use crate::testlab::{self, PATIENCE, TestLab};
use crate::tools::EtcdVersion;
use crate::{load, scenario};

/// The exit code of a restore stopped after VERIFY, and of a rollback refused for that reason.
pub const EXIT_PAST_NO_RETURN: i32 = 3;

/// A lab, a snapshot of its loaded cluster, and the snapshot's data.
pub struct Setup {
    pub lab: TestLab,
    pub snapshot: PathBuf,
    /// The snapshot's data (without heartbeats), read live at its revision.
    pub snapshot_data: BTreeMap<Vec<u8>, Vec<u8>>,
}

/// A lab of `members` on etcd 3.5, loaded with a few thousand keys, and a snapshot saved with
/// plain `etcdctl snapshot save`.
pub async fn setup(members: u8) -> Setup {
    let lab = testlab::up(members, EtcdVersion::V35).await;
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

/// Changes the data so that it differs from the snapshot; returns the state to come back to.
pub async fn fresh_original(s: &Setup) -> ClusterState {
    scenario::mutate(&s.lab).await.expect("mutate");
    let state = faults::cluster_state(&s.lab).await.expect("state before");
    assert_ne!(
        state.data, s.snapshot_data,
        "the data differs from the snapshot before the case"
    );
    state
}

/// Every member is back on the original cluster: its cluster ID, member IDs and data, the same
/// HashKV everywhere, and every apiserver ready.
pub async fn assert_back_to(s: &Setup, original: &ClusterState, case: &str) {
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
    assert_same_hash(&s.lab, case).await;
    scenario::wait_apiservers(&s.lab, PATIENCE)
        .await
        .unwrap_or_else(|e| panic!("{case}: {e:#}"));
}

/// Every member holds the snapshot's data under a new cluster ID, with the same HashKV
/// everywhere (apiservers not checked: see [`assert_restored`]).
pub async fn assert_on_snapshot(s: &Setup, original: &ClusterState, case: &str) {
    let now = faults::cluster_state(&s.lab)
        .await
        .unwrap_or_else(|e| panic!("{case}: {e:#}"));
    assert_ne!(
        now.cluster_id, original.cluster_id,
        "{case}: a new cluster ID"
    );
    for (name, id) in &now.member_ids {
        assert_ne!(
            Some(id),
            original.member_ids.get(name),
            "{case}: {name} has a new member ID"
        );
    }
    assert!(
        now.data == s.snapshot_data,
        "{case}: every member holds the snapshot's data"
    );
    assert_same_hash(&s.lab, case).await;
}

/// The restore is complete: every member on the snapshot's data, every apiserver ready.
pub async fn assert_restored(s: &Setup, original: &ClusterState, case: &str) {
    assert_on_snapshot(s, original, case).await;
    scenario::wait_apiservers(&s.lab, PATIENCE)
        .await
        .unwrap_or_else(|e| panic!("{case}: {e:#}"));
}

/// Asserts that every member reports the same HashKV at a revision all of them have applied;
/// returns that revision and hash.
pub async fn assert_same_hash(lab: &Lab, case: &str) -> (i64, u32) {
    let hashes = hashes(lab)
        .await
        .unwrap_or_else(|e| panic!("{case}: {e:#}"));
    let (revision, hashes) = hashes;
    let (first, hash) = hashes.first().cloned().expect("at least one member");
    for (name, h) in &hashes {
        assert_eq!(
            *h, hash,
            "{case}: {name}'s HashKV at revision {revision} is {h:x}, {first}'s {hash:x}"
        );
    }
    (revision, hash)
}

/// Every member's HashKV at the lowest revision among them (which every member has applied).
pub async fn hashes(lab: &Lab) -> anyhow::Result<(i64, Vec<(String, u32)>)> {
    let mut clients = Vec::new();
    let mut revision = i64::MAX;
    for host in lab.hosts() {
        let mut c = member_client(&host.client_url(), &lab.etcd_tls()).await?;
        let status = c
            .status()
            .await
            .with_context(|| format!("status of {}", host.name))?;
        let header = status.header().context("status without header")?;
        revision = revision.min(header.revision());
        clients.push((host.name.clone(), c));
    }
    let mut out = Vec::new();
    for (name, mut c) in clients {
        let hash = c
            .hash_kv(revision)
            .await
            .with_context(|| format!("HashKV of {name} at revision {revision}"))?
            .hash();
        out.push((name, hash));
    }
    Ok((revision, out))
}

/// `quorate ARGS --state-dir <the lab's>` in the background, with the coordinator's
/// `FAILPOINTS` (empty: none).
pub fn spawn_quorate(lab: &Lab, args: &[&str], failpoints: &str) -> anyhow::Result<Child> {
    Command::new(scenario::quorate_bin(lab))
        .args(args)
        .arg("--state-dir")
        .arg(faults::state_dir(lab))
        .env("FAILPOINTS", failpoints)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting quorate")
}

/// Kills a coordinator with SIGKILL (a crash) and reaps it.
pub fn crash(mut child: Child) {
    child.kill().expect("SIGKILL the coordinator");
    let _ = child.wait();
}

/// A coordinator's stdout and stderr, for messages.
pub fn output_text(out: &Output) -> String {
    format!(
        "exit {}; stdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Kills `child` and panics with `what`, the error and the coordinator's output.
pub fn fail_with(mut child: Child, what: &str, e: &anyhow::Error) -> ! {
    let _ = child.kill();
    let out = child.wait_with_output().expect("quorate output");
    panic!("{what}: {e:#}; quorate {}", output_text(&out))
}

/// The coordinator journal of restore `id`.
pub fn journal_path(lab: &Lab, id: &str) -> PathBuf {
    faults::state_dir(lab).join(id).join("journal.jsonl")
}

/// A restore whose coordinator was killed (SIGKILL) right after `phase` ended on every member and
/// was journaled done, before `next` began. Returns its id.
pub async fn crash_after(s: &Setup, phase: &str, next: &str) -> String {
    let known = faults::restore_ids(&s.lab).len();
    let child = faults::spawn_restore(
        &s.lab,
        &s.snapshot,
        &format!("coordinator::before-{next}=sleep(600000)"),
    )
    .expect("quorate");
    match faults::wait_journal(&s.lab, known, phase, "done").await {
        Ok(id) => {
            crash(child);
            id
        }
        Err(e) => fail_with(child, &format!("crash after {phase}"), &e),
    }
}

/// This machine's host name, as the coordinator names the lock's holder.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .expect("reading /proc/sys/kernel/hostname")
        .trim()
        .to_owned()
}

/// Waits until `child` exits, at most `patience`; `None` if it still runs.
pub async fn wait_exit(child: &mut Child, patience: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + patience;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The agent steps of restore `id` as `quorate status <id> --output json` reports every member:
/// (name, active restore, last step, its state, etcd running).
pub fn member_steps(lab: &Lab, id: &str) -> anyhow::Result<Vec<serde_json::Value>> {
    let (code, text) = faults::quorate_with(lab, &["status", id, "--output", "json"])?;
    if code != Some(0) {
        bail!("quorate status {id} failed: {text}");
    }
    let status: serde_json::Value = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["event"] == "result")
        .with_context(|| format!("no result event in quorate status: {text}"))?;
    let members = status["result"]["members"]
        .as_array()
        .with_context(|| format!("no members in quorate status: {text}"))?;
    Ok(members
        .iter()
        .map(|m| {
            serde_json::json!({
                "name": m["name"],
                "reachable": m["reachable"],
                "active_restore_id": m["active_restore_id"],
                "last_step": m["last_step"],
                "last_step_state": m["last_step_state"],
                "etcd_running": m["etcd_running"],
            })
        })
        .collect())
}

/// Host `i`'s agent restarted with `failpoints` (or none).
pub async fn restart_agent(lab: &mut Lab, i: usize, failpoints: Option<&str>) {
    lab.kill_agent(i).expect("kill agent");
    lab.start_agent(i, failpoints)
        .await
        .expect("agent restarted");
}
