//! Real faults during a restore, on real etcd: a client port taken by another process, a staged
//! snapshot damaged on disk, a disk that fills up, a member cut off from its peers. Each one
//! fails the restore in the phase it hits, names the member, and every member is rolled back to
//! exactly the original cluster (cluster and member IDs, data), never a mix.
//!
//! The disk and network faults need root (tmpfs, nftables, a cgroup) and print `SKIPPED:`
//! otherwise; the disk fault also needs the failpoints compiled in
//! (`--features quorate-lab/failpoints`) to hold the coordinator while the disk fills.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use quorate_lab::etcd::member_client;
use quorate_lab::faults::{self, ClusterState};
use quorate_lab::lab::Lab;
use quorate_lab::layout::CLIENT_PORT;
use quorate_lab::realfaults::{self, Partition, RestoreRun};
use quorate_lab::testlab::{self, PATIENCE};
use quorate_lab::tools::EtcdVersion;
use quorate_lab::{load, scenario};

struct Setup {
    snapshot: PathBuf,
    /// The snapshot's data (without heartbeats), read live at its revision.
    snapshot_data: BTreeMap<Vec<u8>, Vec<u8>>,
}

/// Loads a few thousand keys and saves a snapshot with plain etcdctl.
async fn load_and_snapshot(lab: &Lab) -> Setup {
    let cp1 = lab.hosts()[0].clone();
    let client = member_client(&cp1.client_url(), &lab.etcd_tls())
        .await
        .expect("client");
    load::load(&client, 3000, 11).await.expect("load");
    let snapshot = lab.dir().join("snapshot.db");
    let rev = scenario::save_snapshot(lab, &cp1, &snapshot).expect("snapshot");
    let at_rev = scenario::dumps_at(lab, Some(rev)).await.expect("dump")[0]
        .1
        .clone();
    Setup {
        snapshot,
        snapshot_data: faults::without_heartbeats(&at_rev),
    }
}

/// Changes the data so that it differs from the snapshot; returns the state to come back to.
async fn changed_original(lab: &Lab, s: &Setup) -> ClusterState {
    scenario::mutate(lab).await.expect("mutate");
    let state = faults::cluster_state(lab).await.expect("state before");
    assert_ne!(
        state.data, s.snapshot_data,
        "the data differs from the snapshot before the fault"
    );
    state
}

/// The restore failed, rolled back on its own, and its error names `member` and `phase` and no
/// other member. Returns the error.
fn assert_rolled_back(out: &Output, case: &str, member: &str, phase: &str) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "{case}: the restore reports failure; stdout {stdout}"
    );
    let events = realfaults::json_events(&out.stdout);
    let rolled = events
        .iter()
        .find(|e| e["event"] == "result" && e["outcome"] == "rolled-back")
        .unwrap_or_else(|| {
            panic!("{case}: rolled back automatically; stdout {stdout} stderr {stderr}")
        });
    let error = rolled["error"].as_str().unwrap_or_default().to_owned();
    assert!(
        error.contains(&format!("failed in phase {phase}")),
        "{case}: the error names phase {phase}: {error}"
    );
    assert!(
        error.contains(&format!("member {member}:")),
        "{case}: the error names {member}: {error}"
    );
    for other in ["cp-1", "cp-2", "cp-3"]
        .into_iter()
        .filter(|m| *m != member)
    {
        assert!(
            !error.contains(&format!("member {other}:")),
            "{case}: the error blames {member} only, not {other}: {error}"
        );
    }
    error
}

async fn assert_back_to(lab: &Lab, original: &ClusterState, case: &str) {
    let now = faults::cluster_state(lab)
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
    scenario::wait_apiservers(lab, PATIENCE)
        .await
        .unwrap_or_else(|e| panic!("{case}: {e:#}"));
}

/// The coordinator waits 3 s once every member halted, so the port is surely taken before
/// PRESERVE looks at it (cp-2 may be the leader, halted last, right before PRESERVE).
#[cfg(all(feature = "failpoints", debug_assertions))]
#[tokio::test]
async fn a_taken_client_port_fails_the_preserve_phase_on_that_member_and_rolls_back() {
    let case = "cp-2's client port taken while its etcd is down";
    let lab = testlab::up(3, EtcdVersion::V35).await;
    let s = load_and_snapshot(&lab).await;
    let original = changed_original(&lab, &s).await;
    let victim = 1;
    let host = lab.hosts()[victim].clone();
    let known = faults::restore_ids(&lab).len();

    let mut run = RestoreRun::start(&lab, &s.snapshot, "coordinator::after-halt=sleep(3000)")
        .expect("quorate");
    let halted = faults::wait_agent_step(&lab, victim, "halt", "done").await;
    run.expect(halted, "cp-2's etcd halted");
    let squatter = realfaults::bind_when_free(&host, CLIENT_PORT).expect("take the port");
    assert_eq!(
        realfaults::agent_step_state(&lab, victim, "start"),
        None,
        "{case}: the port was taken before the restored etcd started"
    );
    // PRESERVE needs etcd provably down, its ports refusing connections: nothing is moved.
    let failed = faults::wait_journal(&lab, known, "preserve", "failed").await;
    run.expect(failed, "the preserve phase fails");
    // Rollback starts the original etcd on the same port (it waits for it to come up): give the
    // port back.
    drop(squatter);
    let (out, took) = run.finish().await.expect("quorate output");

    let error = assert_rolled_back(&out, case, &host.name, "preserve");
    assert!(
        error.contains(&format!(
            ":{CLIENT_PORT} (--listen-client-urls) accepts connections"
        )),
        "{case}: the error names the taken port: {error}"
    );
    eprintln!("{case}: failed and rolled back in {took:.1?}: {error}");
    assert_back_to(&lab, &original, case).await;
}

/// The staged copy is checked where it is restored from: in PREPARE, before the fence.
#[cfg(all(feature = "failpoints", debug_assertions))]
#[tokio::test]
async fn a_staged_snapshot_damaged_after_staging_fails_the_prepare_phase_and_rolls_back() {
    let case = "cp-3's staged snapshot damaged after staging";
    let lab = testlab::up(3, EtcdVersion::V35).await;
    let s = load_and_snapshot(&lab).await;
    let original = changed_original(&lab, &s).await;
    let victim = 2;
    let host = lab.hosts()[victim].clone();

    // The coordinator waits 3 s once every member staged: the check below makes sure the
    // damage came before the prepare step.
    let mut run = RestoreRun::start(&lab, &s.snapshot, "coordinator::after-stage=sleep(3000)")
        .expect("quorate");
    let staged = realfaults::wait_staged(&lab, victim).await;
    let staged = run.expect(staged, "staged on cp-3");
    let offset = realfaults::flip_middle_byte(&staged).expect("damage the staged copy");
    assert_eq!(
        realfaults::agent_step_state(&lab, victim, "prepare"),
        None,
        "{case}: the copy was damaged before the prepare step began"
    );
    eprintln!(
        "{case}: flipped the byte at {offset} of {}",
        staged.display()
    );
    let (out, took) = run.finish().await.expect("quorate output");

    let error = assert_rolled_back(&out, case, &host.name, "prepare");
    assert!(
        error.contains("sha256") && error.contains("damaged after staging"),
        "{case}: the error says the staged copy is damaged: {error}"
    );
    eprintln!("{case}: failed and rolled back in {took:.1?}: {error}");
    assert_back_to(&lab, &original, case).await;
}

/// The lab keeps the agent's state dir under `var/lib`, so a tmpfs there also holds it (and the
/// staged snapshot); set-aside manifests stay beside the manifests dir. The snapshot is restored
/// (PREPARE) before anything stops, so a full disk fails the restore while the API still serves;
/// RESTORE itself only renames.
#[cfg(all(feature = "failpoints", debug_assertions))]
#[tokio::test]
async fn a_disk_that_fills_before_the_prepare_step_fails_it_while_the_api_serves_and_rolls_back() {
    use quorate_lab::realfaults::SmallDiskLab;

    if !realfaults::root_or_skip("mounting a tmpfs as a member's var/lib") {
        return;
    }
    let case = "cp-1's disk full before its prepare step";
    let mut lab = SmallDiskLab::new(testlab::up(3, EtcdVersion::V35).await);
    let s = load_and_snapshot(&lab).await;
    let victim = 0;
    let host = lab.hosts()[victim].clone();

    // Enough for the preflight (twice the snapshot plus three 64 MB WAL segments), with some
    // margin, and for the push, which leaves the agent's stage reserve (512 MiB by default on a
    // small filesystem) free.
    let size = std::fs::metadata(&s.snapshot).expect("snapshot").len();
    let var_lib = lab
        .shrink_var_lib(victim, 2 * size + 3 * (64 << 20) + (48 << 20) + (512 << 20))
        .await
        .expect("cp-1's var/lib on a tmpfs");
    let original = changed_original(&lab, &s).await;
    let free_before = realfaults::free_bytes(&var_lib).expect("free");

    // The coordinator waits 3 s once every member staged the snapshot: the disk fills before
    // any prepare step begins.
    let mut run = RestoreRun::start(&lab, &s.snapshot, "coordinator::after-stage=sleep(3000)")
        .expect("quorate");
    let staged = realfaults::wait_staged(&lab, victim).await;
    run.expect(staged, "staged on cp-1");
    let filler = var_lib.join("filler");
    let filled = realfaults::fill(&filler, 1 << 20).expect("fill cp-1's disk");
    assert_eq!(
        realfaults::agent_step_state(&lab, victim, "prepare"),
        None,
        "{case}: the disk filled before the prepare step began"
    );
    let (out, took) = run.finish().await.expect("quorate output");
    std::fs::remove_file(&filler).expect("remove the filler");
    let error = assert_rolled_back(&out, case, &host.name, "prepare");
    assert!(
        error.to_lowercase().contains("no space left on device"),
        "{case}: the error says the disk is full: {error}"
    );
    let fenced = realfaults::json_events(&out.stdout)
        .iter()
        .any(|e| e["event"] == "phase-started" && e["phase"] == "fence");
    assert!(
        !fenced,
        "{case}: no apiserver was stopped: the API served throughout"
    );
    eprintln!(
        "{case}: filled {} MB; failed and rolled back in {took:.1?}: {error}",
        filled >> 20
    );
    assert_back_to(&lab, &original, case).await;
    let left: Vec<String> = std::fs::read_dir(&var_lib)
        .expect("var/lib")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !left.iter().any(|n| n.ends_with(".prepared")),
        "{case}: no prepared copy is left: {left:?}"
    );
    let free_after = realfaults::free_bytes(&var_lib).expect("free");
    eprintln!(
        "{case}: after the rollback cp-1's var/lib holds {left:?}; free {} MB, {} MB before the restore",
        free_after >> 20,
        free_before >> 20
    );
}

#[tokio::test]
async fn a_member_cut_off_from_its_peers_fails_the_quorum_phase_and_rolls_back() {
    if !realfaults::root_or_skip("an nftables partition") {
        return;
    }
    let case = "cp-3 cut off from its peers during the quorum phase";
    let lab = testlab::up(3, EtcdVersion::V35).await;
    let s = load_and_snapshot(&lab).await;
    let original = changed_original(&lab, &s).await;
    // cp-3 is not in the first majority (cp-1, cp-2): they elect a leader, cp-3 never joins.
    let victim = 2;
    let host = lab.hosts()[victim].clone();
    let mut partition = Partition::prepare(&lab, victim).expect("cp-3's kubelet in a cgroup");
    let known = faults::restore_ids(&lab).len();

    // A healthy member joins in about a second: 30 s is plenty, and keeps the test short.
    let mut run = RestoreRun::start_with(&lab, &s.snapshot, "", &["--quorum-timeout", "30s"])
        .expect("quorate");
    // Every etcd is down once halt is done: nothing needs the peer ports until quorum.
    let halted = faults::wait_journal(&lab, known, "halt", "done").await;
    run.expect(halted, "halted");
    partition.cut().expect("cut cp-3 off");
    let failed =
        realfaults::wait_journal_for(&lab, known, "quorum", "failed", Duration::from_secs(150))
            .await;
    run.expect(failed, "the quorum phase fails");
    // The rollback restarts the original etcd on every member: they must talk again.
    partition.heal().expect("heal the partition");
    let (out, took) = run.finish().await.expect("quorate output");

    let error = assert_rolled_back(&out, case, &host.name, "quorum");
    assert!(
        error.contains("not healthy") && error.contains("after 30s"),
        "{case}: the error says cp-3's etcd never became healthy: {error}"
    );
    eprintln!("{case}: failed and rolled back in {took:.1?}: {error}");
    assert_back_to(&lab, &original, case).await;
}

#[tokio::test]
async fn a_state_dir_on_another_filesystem_than_the_manifests_dir_restores() {
    use quorate_lab::realfaults::SmallDiskLab;

    if !realfaults::root_or_skip("mounting a tmpfs as a member's var/lib") {
        return;
    }
    let mut lab = SmallDiskLab::new(testlab::up(3, EtcdVersion::V35).await);
    let s = load_and_snapshot(&lab).await;
    lab.shrink_var_lib(0, 1 << 30)
        .await
        .expect("cp-1's var/lib on a tmpfs");
    changed_original(&lab, &s).await;
    let out = scenario::quorate_restore(&lab, &s.snapshot, &["--yes", "--output", "json"])
        .expect("quorate");
    assert!(
        out.status.success(),
        "the restore succeeds with cp-1's /var/lib on its own filesystem: stdout {} stderr {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let now = faults::cluster_state(&lab).await.expect("state after");
    assert!(
        now.data == s.snapshot_data,
        "every member holds the snapshot's data"
    );
}
