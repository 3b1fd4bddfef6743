//! Production layouts, each restored and rolled back on real etcd in the lab: a data dir that
//! is its own disk, a WAL dir on a disk of its own, external etcd with its apiservers on other
//! hosts, and apiservers that refuse anonymous requests. Every case checks what an operator
//! would: the data, cluster and member IDs after a failed restore (rolled back) and after a
//! good one, and that the layout itself is as it was (a mount point stays a mount point).
#![cfg(all(feature = "failpoints", debug_assertions))]

use std::collections::BTreeMap;
use std::path::Path;

use quorate_lab::etcd::member_client;
use quorate_lab::faults::{self, ClusterState};
use quorate_lab::hostns;
use quorate_lab::kubelet;
use quorate_lab::lab::{Disk, Lab, LabLayout, LabRuntime, WAL_MOUNT};
use quorate_lab::layout::CONTROLLERS;
use quorate_lab::testlab::{self, PATIENCE, TestLab};
use quorate_lab::tools::EtcdVersion;
use quorate_lab::{load, procs, scenario};

/// What a case starts from: the lab, a snapshot file, and the snapshot's data.
type Setup = (TestLab, std::path::PathBuf, BTreeMap<Vec<u8>, Vec<u8>>);

/// True when `rel` is a mount point as `host` itself sees it (inside its mount namespace when
/// it has one), and as the lab sees it from outside.
fn mount_point_on(host: &quorate_lab::layout::Host, rel: &str) -> bool {
    let outside = hostns::is_mount_point(&host.path(rel));
    let inside = match &host.ns {
        Some(ns) => ns
            .command("mountpoint")
            .args(["-q", &format!("/{rel}")])
            .status()
            .expect("mountpoint on the host")
            .success(),
        None => outside,
    };
    outside && inside
}

/// A lab of three with `layout`, loaded, with a snapshot of it, and the snapshot's data.
async fn setup(runtime: LabRuntime, layout: LabLayout) -> Option<Setup> {
    setup_n(3, runtime, layout).await
}

async fn setup_n(members: u8, runtime: LabRuntime, layout: LabLayout) -> Option<Setup> {
    if !quorate_lab::realfaults::root_or_skip("layouts with their own disks and hosts") {
        return None;
    }
    let lab = testlab::up_layout(members, EtcdVersion::V35, runtime, layout).await;
    let cp1 = lab.hosts()[0].clone();
    let client = member_client(&cp1.client_url(), &lab.etcd_tls())
        .await
        .expect("client");
    load::load(&client, 2000, 9).await.expect("load");
    let snapshot = lab.dir().join("snapshot.db");
    let rev = scenario::save_snapshot(&lab, &cp1, &snapshot).expect("snapshot");
    let at_rev = scenario::dumps_at(&lab, Some(rev)).await.expect("dump")[0]
        .1
        .clone();
    Some((lab, snapshot, faults::without_heartbeats(&at_rev)))
}

/// `quorate restore` with the coordinator's `FAILPOINTS`; (succeeded, stdout+stderr).
fn restore(lab: &Lab, snapshot: &Path, failpoints: &str) -> (bool, String) {
    let out = faults::spawn_restore(lab, snapshot, failpoints)
        .expect("quorate")
        .wait_with_output()
        .expect("quorate output");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// A restore that fails after QUORUM (every member restored and running) is rolled back to
/// exactly `original`; then a restore that succeeds leaves every member on the snapshot's data
/// under a new cluster ID. `check` asserts the layout after each.
async fn fail_then_restore(
    lab: &Lab,
    snapshot: &Path,
    snapshot_data: &BTreeMap<Vec<u8>, Vec<u8>>,
    check: impl Fn(&Lab, &str),
) {
    scenario::mutate(lab).await.expect("mutate");
    let original: ClusterState = faults::cluster_state(lab).await.expect("state before");
    assert_ne!(
        &original.data, snapshot_data,
        "the data differs from the snapshot"
    );
    check(lab, "before");

    let (ok, text) = restore(lab, snapshot, "coordinator::after-quorum=return(injected)");
    assert!(!ok, "the injected failure fails the restore:\n{text}");
    let now = faults::cluster_state(lab)
        .await
        .expect("state after rollback");
    assert_eq!(
        now.cluster_id, original.cluster_id,
        "rolled back: the original cluster ID"
    );
    assert_eq!(
        now.member_ids, original.member_ids,
        "rolled back: the original member IDs"
    );
    assert!(
        now.data == original.data,
        "rolled back: every member holds the original data"
    );
    scenario::wait_apiservers(lab, PATIENCE)
        .await
        .expect("apiservers back");
    check(lab, "after rollback");

    let (ok, text) = restore(lab, snapshot, "");
    assert!(ok, "the restore succeeds:\n{text}");
    let now = faults::cluster_state(lab)
        .await
        .expect("state after restore");
    assert_ne!(
        now.cluster_id, original.cluster_id,
        "restored: a new cluster ID"
    );
    assert!(
        &now.data == snapshot_data,
        "restored: every member holds the snapshot's data"
    );
    scenario::wait_apiservers(lab, PATIENCE)
        .await
        .expect("apiservers ready");
    check(lab, "after restore");
}

/// kubeadm's own layout on five hosts: rolled back after quorum, then restored.
#[tokio::test]
async fn five_kubeadm_members() {
    let Some((lab, snapshot, data)) = setup_n(5, LabRuntime::StaticPod, LabLayout::default()).await
    else {
        return;
    };
    fail_then_restore(&lab, &snapshot, &data, |lab, when| {
        for host in lab.hosts() {
            assert!(
                host.data_dir().join("member/snap/db").is_file(),
                "{when}: {} has its data dir",
                host.name
            );
        }
    })
    .await;
}

#[tokio::test]
async fn data_dir_on_its_own_ext4_disk() {
    let layout = LabLayout {
        data_mount: Some(Disk::Ext4),
        ..LabLayout::default()
    };
    let Some((lab, snapshot, data)) = setup(LabRuntime::StaticPod, layout).await else {
        return;
    };
    fail_then_restore(&lab, &snapshot, &data, |lab, when| {
        for host in lab.hosts() {
            let dir = host.data_dir();
            assert!(
                mount_point_on(host, "var/lib/etcd"),
                "{when}: {}'s data dir is still its disk",
                host.name
            );
            assert!(
                dir.join("lost+found").is_dir(),
                "{when}: {}'s lost+found stays",
                host.name
            );
            assert!(
                dir.join("member/snap/db").is_file(),
                "{when}: {} has a member dir",
                host.name
            );
        }
    })
    .await;
    // The original data was kept on the data disk itself.
    for host in lab.hosts() {
        let kept = std::fs::read_dir(host.data_dir())
            .expect("data dir")
            .flatten()
            .any(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.starts_with(".quorate-") && e.path().join("member/snap/db").is_file()
            });
        assert!(
            kept,
            "{}: the original member dir is kept on its disk",
            host.name
        );
    }
}

#[tokio::test]
async fn wal_dir_on_its_own_disk() {
    let layout = LabLayout {
        wal_dir: true,
        wal_mount: Some(Disk::Tmpfs),
        ..LabLayout::default()
    };
    let Some((lab, snapshot, data)) = setup(LabRuntime::StaticPod, layout).await else {
        return;
    };
    fail_then_restore(&lab, &snapshot, &data, |lab, when| {
        for host in lab.hosts() {
            let mount = host.path(WAL_MOUNT);
            assert!(
                mount_point_on(host, WAL_MOUNT),
                "{when}: {}'s WAL disk is mounted",
                host.name
            );
            let wals = std::fs::read_dir(mount.join("wal"))
                .expect("wal dir")
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".wal"))
                .count();
            assert!(wals > 0, "{when}: {}'s WAL is on its disk", host.name);
            assert!(
                !host.data_dir().join("member/wal").exists(),
                "{when}: {} has no WAL in its data dir",
                host.name
            );
        }
    })
    .await;
}

#[tokio::test]
async fn apiservers_that_refuse_anonymous_requests() {
    let layout = LabLayout {
        no_anonymous_auth: true,
        ..LabLayout::default()
    };
    let Some((lab, snapshot, data)) = setup(LabRuntime::StaticPod, layout).await else {
        return;
    };
    // The apiserver really refuses anonymous /readyz: quorate must use the host's credentials.
    let host = &lab.hosts()[0];
    let anonymous = quorate_proto::tls::client_config(&host.pki_dir().join("ca.crt"), None)
        .expect("tls config");
    let answer = quorate_proto::probe::get(
        &format!("{}/readyz", host.apiserver_url()),
        Some(std::sync::Arc::new(anonymous)),
        std::time::Duration::from_secs(3),
    )
    .await
    .expect("the apiserver answers");
    assert_eq!(answer.status, 401, "anonymous /readyz is refused");
    fail_then_restore(&lab, &snapshot, &data, |_, _| {}).await;
}

#[tokio::test]
async fn external_etcd_with_apiservers_on_other_hosts() {
    let layout = LabLayout {
        apiserver_hosts: 2,
        ..LabLayout::default()
    };
    let Some((lab, snapshot, data)) = setup(LabRuntime::Systemd, layout).await else {
        return;
    };
    let pods = ["kube-apiserver", CONTROLLERS[0], CONTROLLERS[1]];
    let pids = |lab: &Lab| -> Vec<(String, &str, Option<u32>)> {
        lab.state
            .apiservers
            .iter()
            .flat_map(|a| {
                pods.map(|pod| {
                    let pid = procs::read_pid(&a.host.pod_pid_file(pod));
                    (a.host.name.clone(), pod, pid)
                })
            })
            .collect()
    };
    let before = pids(&lab);
    assert!(
        before.iter().all(|(_, _, pid)| pid.is_some()),
        "every apiserver host runs its apiserver and controllers: {before:?}"
    );
    fail_then_restore(&lab, &snapshot, &data, |_, _| {}).await;
    // Fenced and unfenced by their agents: each apiserver, and each controller with it, was
    // stopped and started again.
    let after = pids(&lab);
    for ((host, pod, b), (_, _, a)) in before.iter().zip(&after) {
        assert!(
            a.is_some() && a != b,
            "{host}'s {pod} was restarted: {b:?} then {a:?}"
        );
    }
    // The controllers went down with the fence, before the apiserver came back, and came back
    // after it (the kubelet's record).
    for a in &lab.state.apiservers {
        let at = |pod: &str, verb: &str, pid: Option<u32>| {
            let pid = pid.expect("pid");
            kubelet::logged_at(&a.host.pod_log(pod), verb, pid)
                .expect("pod log")
                .unwrap_or_else(|| panic!("{}'s {pod}: no \"{verb} pid {pid}\"", a.host.name))
        };
        let pid = |set: &[(String, &str, Option<u32>)], pod: &str| {
            set.iter()
                .find(|(h, p, _)| *h == a.host.name && *p == pod)
                .and_then(|(_, _, pid)| *pid)
        };
        let apiserver_back = at("kube-apiserver", "started", pid(&after, "kube-apiserver"));
        for c in CONTROLLERS {
            let stopped = at(c, "stopped", pid(&before, c));
            let started = at(c, "started", pid(&after, c));
            assert!(
                stopped < apiserver_back && started > apiserver_back,
                "{}'s {c}: stopped at {stopped}s, started at {started}s, kube-apiserver started \
                 at {apiserver_back}s",
                a.host.name
            );
        }
    }
}
