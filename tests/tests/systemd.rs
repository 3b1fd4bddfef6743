//! External etcd under systemd (the kubespray layout: `etcd.service` running the bare binary
//! with every setting in `/etc/etcd.env`), restored and rolled back by `quorate` end to end on
//! real etcd, through the lab's `systemctl` stand-in.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use quorate_lab::etcd::member_client;
use quorate_lab::lab::{Lab, LabRuntime};
use quorate_lab::testlab::{self, TestLab};
use quorate_lab::tools::EtcdVersion;
use quorate_lab::{faults, load, scenario};

/// Each member's (name → member ID) and the cluster ID, as the members report them.
async fn identity(lab: &Lab) -> (u64, BTreeMap<String, u64>) {
    let mut ids = BTreeMap::new();
    let mut cluster = 0;
    for host in lab.hosts() {
        let mut c = member_client(&host.client_url(), &lab.etcd_tls())
            .await
            .expect("client");
        let status = c.status().await.expect("status");
        let header = status.header().expect("header");
        cluster = header.cluster_id();
        ids.insert(host.name.clone(), header.member_id());
    }
    (cluster, ids)
}

/// Every host's `/etc/etcd.env`, byte for byte.
fn env_files(lab: &Lab) -> Vec<Vec<u8>> {
    lab.hosts()
        .iter()
        .map(|h| std::fs::read(h.etcd_env_file()).expect("etcd.env"))
        .collect()
}

/// The value of `key` in an environment file.
fn env_value(text: &[u8], key: &str) -> Option<String> {
    String::from_utf8_lossy(text)
        .lines()
        .filter_map(|l| l.split_once('='))
        .filter(|(k, _)| *k == key)
        .map(|(_, v)| v.to_owned())
        .next_back()
}

/// A systemd lab with data, a snapshot of it and changes made after the snapshot.
struct Staged {
    lab: TestLab,
    snapshot: PathBuf,
    snap_rev: i64,
    reference: BTreeMap<Vec<u8>, Vec<u8>>,
    /// The revision just before the restore.
    changed_rev: i64,
}

async fn staged_lab(members: u8, version: EtcdVersion, keys: usize) -> Staged {
    let lab = testlab::up_with(members, version, LabRuntime::Systemd).await;
    let etcd = lab.hosts()[0].clone();
    let client = member_client(&etcd.client_url(), &lab.etcd_tls())
        .await
        .expect("client");
    load::load(&client, keys, 42).await.expect("load");
    let snapshot = lab.dir().join("snapshot.db");
    let snap_rev = scenario::save_snapshot(&lab, &etcd, &snapshot).expect("etcdctl snapshot save");
    let reference = scenario::dumps_at(&lab, Some(snap_rev))
        .await
        .expect("dump at snapshot")[0]
        .1
        .kvs
        .clone();
    assert!(
        reference.len() >= keys,
        "the snapshot holds the loaded keys"
    );
    scenario::mutate(&lab)
        .await
        .expect("change data after the snapshot");
    let changed = scenario::dumps_at(&lab, None).await.expect("dump")[0]
        .1
        .clone();
    assert_ne!(
        changed.kvs, reference,
        "the data changed after the snapshot"
    );
    Staged {
        lab,
        snapshot,
        snap_rev,
        reference,
        changed_rev: changed.revision,
    }
}

/// What every agent says about its runtime, from `quorate plan --output json`.
fn planned_runtimes(lab: &Lab, snapshot: &std::path::Path) -> String {
    let out = Command::new(scenario::quorate_bin(lab))
        .args(["plan", "--output", "json", "--inventory"])
        .arg(lab.dir().join("inventory.toml"))
        .arg("--snapshot")
        .arg(snapshot)
        .output()
        .expect("quorate plan");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "quorate plan failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

async fn restore_round_trip(members: u8, version: EtcdVersion, keys: usize) {
    let started = Instant::now();
    let Staged {
        lab,
        snapshot,
        snap_rev,
        reference,
        changed_rev,
    } = staged_lab(members, version, keys).await;
    let plan = planned_runtimes(&lab, &snapshot);
    assert_eq!(
        plan.matches("\"etcd_runtime\":\"systemd\"").count(),
        usize::from(members),
        "every agent describes a systemd etcd: {plan}"
    );
    let originals = env_files(&lab);
    let (old_cluster, old_ids) = identity(&lab).await;

    let restore_started = Instant::now();
    let out = scenario::quorate_restore(&lab, &snapshot, &["--yes", "--output", "json"])
        .expect("quorate");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "quorate restore failed:\nstdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let done: serde_json::Value = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["event"] == "result" && v["outcome"] == "restored")
        .expect("a result event with the report");
    let report = &done["result"];
    eprintln!(
        "restore of {members} systemd members took {:.1?}; phases: {}",
        restore_started.elapsed(),
        report["phases"]
    );
    // Verified at the snapshot's revision plus the bump (etcdutl 3.5.16 bumps; older tools do
    // not, and then the snapshot's revision is still readable).
    let bump = report["revision_bump"].as_i64().expect("revision_bump");
    assert_eq!(report["after"]["revision"].as_i64(), Some(snap_rev + bump));
    let at = (bump == 0).then_some(snap_rev);

    // Every member holds exactly the snapshot's data, nothing written after it.
    let expected = quorate_lab::faults::without_heartbeats(&quorate_lab::etcd::Dump {
        revision: snap_rev,
        kvs: reference.clone(),
    });
    for (name, d) in scenario::dumps_at(&lab, at)
        .await
        .expect("dumps after restore")
    {
        assert!(
            quorate_lab::faults::without_heartbeats(&d) == expected,
            "{name}'s data after the restore (at {at:?}) differs from the snapshot"
        );
    }
    for (name, d) in &scenario::dumps_at(&lab, None).await.expect("dumps now") {
        assert_eq!(
            d.count_prefix("/registry/configmaps/after/"),
            0,
            "{name} kept keys added after the snapshot"
        );
    }

    // New cluster and member IDs; own names and peer URLs; all healthy.
    let (new_cluster, new_ids) = identity(&lab).await;
    assert_ne!(new_cluster, old_cluster, "the cluster ID is new");
    for (name, id) in &new_ids {
        assert_ne!(Some(id), old_ids.get(name), "{name}'s member ID is new");
    }
    let mut c = member_client(&lab.hosts()[0].client_url(), &lab.etcd_tls())
        .await
        .expect("client");
    let list = c.member_list().await.expect("member list");
    assert_eq!(list.members().len(), usize::from(members));
    for host in lab.hosts() {
        let m = list
            .members()
            .iter()
            .find(|m| m.name() == host.name)
            .expect("member by name");
        assert_eq!(m.peer_urls(), [host.peer_url()]);
        assert!(lab.member_healthy(host).await, "{} healthy", host.name);
    }

    // The preserved dirs hold the pre-restore data; the env files tell the new token, and each
    // agent keeps the original in its state dir.
    let id = report["restore_id"].as_str().expect("restore id");
    let token = format!("quorate-{id}");
    for (host, original) in lab.hosts().iter().zip(&originals) {
        let db = host
            .data_dir()
            .with_file_name(format!("etcd.quorate-{id}"))
            .join("member/snap/db");
        let rev = scenario::snapshot_revision(&lab, &db).expect("status of the preserved db");
        assert!(
            rev >= changed_rev,
            "{}: preserved db at revision {rev}, the cluster was at {changed_rev}",
            host.name
        );
        let now = std::fs::read(host.etcd_env_file()).expect("env file");
        assert_eq!(
            env_value(original, "ETCD_INITIAL_CLUSTER_TOKEN").as_deref(),
            Some("k8s_etcd")
        );
        assert_eq!(
            env_value(&now, "ETCD_INITIAL_CLUSTER_TOKEN").as_deref(),
            Some(token.as_str()),
            "{}'s etcd.env tells the new token",
            host.name
        );
        let cluster = env_value(&now, "ETCD_INITIAL_CLUSTER").expect("initial cluster");
        for h in lab.hosts() {
            assert!(
                cluster.contains(&format!("{}={}", h.name, h.peer_url())),
                "{cluster}"
            );
        }
        assert_eq!(
            env_value(&now, "ETCD_NAME"),
            env_value(original, "ETCD_NAME"),
            "other settings are untouched"
        );
        let state = host.path("var/lib/quorate-agent");
        let journal: serde_json::Value = serde_json::from_slice(
            &std::fs::read(state.join(format!("restores/{id}/journal.json"))).expect("journal"),
        )
        .expect("journal json");
        let kept = host.outside(&PathBuf::from(
            journal["edits"][0]["original"]
                .as_str()
                .expect("the journal records the edit"),
        ));
        assert!(
            kept.starts_with(&state),
            "{} kept in the state dir",
            kept.display()
        );
        assert_eq!(
            &std::fs::read(&kept).expect("kept original"),
            original,
            "{}: the kept copy is the original",
            host.name
        );
    }
    eprintln!(
        "{members}-member systemd round trip on etcd {version}: {:.1?} in all",
        started.elapsed()
    );
}

#[tokio::test]
async fn restores_three_systemd_members_on_etcd_35() {
    restore_round_trip(3, EtcdVersion::V35, 10_000).await;
}

#[tokio::test]
async fn restores_five_systemd_members_on_etcd_34() {
    if testlab::tools_or_skip(EtcdVersion::V34).is_none() {
        return;
    }
    restore_round_trip(5, EtcdVersion::V34, 5_000).await;
}

#[tokio::test]
async fn rollback_puts_back_the_env_files_and_the_original_cluster() {
    let started = Instant::now();
    let Staged { lab, snapshot, .. } = staged_lab(3, EtcdVersion::V35, 5_000).await;
    let originals = env_files(&lab);
    let before = faults::cluster_state(&lab).await.expect("state before");

    let child = faults::spawn_restore(&lab, &snapshot, "coordinator::after-quorum=return(x)")
        .expect("quorate");
    let out = child.wait_with_output().expect("quorate ran");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success(),
        "the injected failure fails the restore:\n{stdout}"
    );
    assert!(
        stdout.contains("rolled-back") || stdout.contains("\"error\""),
        "the restore reports its rollback:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let id = faults::restore_ids(&lab).pop().expect("a restore id");
    for (host, original) in lab.hosts().iter().zip(&originals) {
        let journal: serde_json::Value = serde_json::from_slice(
            &std::fs::read(host.path(&format!("var/lib/quorate-agent/restores/{id}/journal.json")))
                .expect("agent journal"),
        )
        .expect("journal json");
        assert_eq!(
            journal["edits"].as_array().map(Vec::len),
            Some(1),
            "{}: RESTORE rewrote etcd.env before the failure: {journal}",
            host.name
        );
        assert_eq!(
            journal["steps"]["restore"]["state"], "reverted",
            "{journal}"
        );
        assert_eq!(
            &std::fs::read(host.etcd_env_file()).expect("env file"),
            original,
            "{}'s etcd.env is back byte for byte",
            host.name
        );
    }
    let after = faults::cluster_state(&lab).await.expect("state after");
    assert_eq!(
        after.cluster_id, before.cluster_id,
        "the original cluster is back"
    );
    assert_eq!(after.member_ids, before.member_ids);
    assert!(after.data == before.data, "the original data is back");
    for host in lab.hosts() {
        assert!(lab.member_healthy(host).await, "{} healthy", host.name);
    }
    eprintln!("systemd rollback case: {:.1?} in all", started.elapsed());
}
