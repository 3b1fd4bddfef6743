//! `quorate restore` end to end on real etcd: the data is the snapshot's on every member, under
//! new cluster and member IDs, with every member under its own name and peer URL.

use std::collections::BTreeMap;

use quorate_lab::etcd::member_client;
use quorate_lab::lab::Lab;
use quorate_lab::testlab::{self, PATIENCE};
use quorate_lab::tools::{EtcdTools, EtcdVersion};
use quorate_lab::{load, scenario};

/// Whether the etcd tools restore with `--bump-revision` (etcdutl 3.5.10+: `snapshot restore
/// --help` lists it); etcdctl (3.4) never does.
fn bumps(tools: &EtcdTools) -> bool {
    let Some(etcdutl) = &tools.etcdutl else {
        return false;
    };
    let out = std::process::Command::new(etcdutl)
        .args(["snapshot", "restore", "--help"])
        .output()
        .expect("etcdutl snapshot restore --help");
    let help = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    help.contains("--bump-revision")
}

/// When the kubelet stand-in logged `verb` for `pid` in a pod's log.
fn kubelet_event(log: &std::path::Path, verb: &str, pid: u32) -> f64 {
    quorate_lab::kubelet::logged_at(log, verb, pid)
        .expect("pod log")
        .unwrap_or_else(|| panic!("no \"{verb} pid {pid}\" in {}", log.display()))
}

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

async fn restore_round_trip(members: u8, version: EtcdVersion, keys: usize) {
    let lab = testlab::up(members, version).await;
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
        .clone();
    assert!(
        reference.kvs.len() >= keys,
        "the snapshot holds the loaded keys"
    );

    scenario::mutate(&lab)
        .await
        .expect("change data after the snapshot");
    let (old_cluster, old_ids) = identity(&lab).await;
    let changed = scenario::dumps_at(&lab, None).await.expect("dump")[0]
        .1
        .clone();
    assert_ne!(
        changed.kvs, reference.kvs,
        "the data changed after the snapshot"
    );
    let pre_restore_rev = changed.revision;

    let mut controller_pids = BTreeMap::new();
    let mut etcd_pids = BTreeMap::new();
    for host in lab.hosts() {
        for c in quorate_lab::layout::CONTROLLERS {
            let pid = quorate_lab::procs::read_pid(&host.pod_pid_file(c)).expect("controller pid");
            controller_pids.insert((host.name.clone(), c), pid);
        }
        let pid = quorate_lab::procs::read_pid(&host.pod_pid_file("etcd")).expect("etcd pid");
        etcd_pids.insert(host.name.clone(), pid);
    }
    // Without --bump-revision in the members' tool, the plan says the revision goes back.
    let can_bump = bumps(&lab.state.tools);
    let plan = scenario::plan_text(&lab, &snapshot);
    assert_eq!(
        plan.contains("cannot bump the revision"),
        !can_bump,
        "the plan's revision warning:\n{plan}"
    );
    let report = &scenario::restore_report(&lab, &snapshot);
    eprintln!("phases ({members} members): {}", report["phases"]);
    // HALT stopped every member without a leadership transfer: the leader's agent held its stop
    // until its followers had left, so its SIGTERM had no one to hand leadership to (a transfer
    // to a member that is stopping waits etcd's request timeout, ~7 s).
    for host in lab.hosts() {
        let log = std::fs::read_to_string(host.path("var/log/pods/etcd.log")).unwrap_or_default();
        assert!(
            !log.contains("leadership transfer starting"),
            "{}'s etcd tried to hand over leadership while stopping",
            host.name
        );
    }

    // The restored cluster was verified at the snapshot's revision (plus the bump, if any) before
    // the apiservers returned: nothing wrote between fence and unfence.
    assert_eq!(report["snapshot_revision"].as_i64(), Some(snap_rev));
    let bump = report["revision_bump"].as_i64().expect("revision_bump");
    if can_bump {
        assert!(bump > 0, "{report}");
    } else {
        assert_eq!(bump, 0, "no bump without --bump-revision: {report}");
        assert_eq!(report["after"]["revision"].as_i64(), Some(snap_rev));
    }

    // Every member holds exactly the snapshot's data: at the snapshot's revision, or, with the
    // bump (which compacts everything below the new revision, see revision_bump.rs), now, the
    // apiservers' lease heartbeats aside.
    if can_bump {
        let snapshot_data = quorate_lab::faults::without_heartbeats(&reference);
        for (name, d) in scenario::dumps_at(&lab, None).await.expect("dumps now") {
            assert!(
                quorate_lab::faults::without_heartbeats(&d) == snapshot_data,
                "{name}'s data differs from the snapshot"
            );
        }
    } else {
        for (name, d) in scenario::dumps_at(&lab, Some(snap_rev))
            .await
            .expect("dumps after restore")
        {
            assert!(
                d.kvs == reference.kvs,
                "{name}'s data at revision {snap_rev} differs from the snapshot"
            );
        }
    }
    let now = scenario::dumps_at(&lab, None).await.expect("dumps now");
    for (name, d) in &now {
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
    let mut c = member_client(&etcd.client_url(), &lab.etcd_tls())
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
    scenario::wait_apiservers(&lab, PATIENCE)
        .await
        .expect("apiservers ready after restore");

    // No controller keeps a cache from before the restore: each was restarted, and the report
    // says so.
    let restarted = report["restarted"].as_array().expect("restarted list");
    assert_eq!(restarted.len(), usize::from(members), "{restarted:?}");
    for entry in restarted {
        assert_eq!(
            entry[1], "kube-controller-manager,kube-scheduler",
            "{entry}"
        );
    }
    for host in lab.hosts() {
        // The kubelet's own record: each controller was stopped at FENCE, before etcd was halted,
        // and started at UNFENCE, after the kube-apiserver was started again.
        let etcd_halted = kubelet_event(&host.pod_log("etcd"), "stopped", etcd_pids[&host.name]);
        let apiserver = quorate_lab::procs::read_pid(&host.pod_pid_file("kube-apiserver"))
            .expect("apiserver pid");
        let apiserver_back = kubelet_event(&host.pod_log("kube-apiserver"), "started", apiserver);
        for c in quorate_lab::layout::CONTROLLERS {
            let before = controller_pids[&(host.name.clone(), c)];
            let now = quorate_lab::procs::read_pid(&host.pod_pid_file(c));
            let Some(now) = now.filter(|now| *now != before) else {
                panic!("{}'s {c} was restarted ({before} -> {now:?})", host.name);
            };
            let stopped = kubelet_event(&host.pod_log(c), "stopped", before);
            let started = kubelet_event(&host.pod_log(c), "started", now);
            assert!(
                stopped < etcd_halted && started > apiserver_back,
                "{}'s {c}: stopped at {stopped}s (etcd halted at {etcd_halted}s), started at \
                 {started}s (kube-apiserver started at {apiserver_back}s)",
                host.name
            );
        }
    }

    // The preserved dirs hold the pre-restore data.
    let id = report["restore_id"].as_str().expect("restore id");
    for host in lab.hosts() {
        let db = host
            .data_dir()
            .with_file_name(format!("etcd.quorate-{id}"))
            .join("member/snap/db");
        let rev = scenario::snapshot_revision(&lab, &db).expect("status of the preserved db");
        assert!(
            rev >= pre_restore_rev,
            "{}: preserved db at revision {rev}, the cluster was at {pre_restore_rev} before the restore",
            host.name
        );
    }
}

#[tokio::test]
async fn restores_three_members_on_etcd_35() {
    restore_round_trip(3, EtcdVersion::V35, 20_000).await;
}

#[tokio::test]
async fn restores_five_members_on_etcd_35() {
    restore_round_trip(5, EtcdVersion::V35, 20_000).await;
}

#[tokio::test]
async fn restores_seven_members_on_etcd_35() {
    restore_round_trip(7, EtcdVersion::V35, 20_000).await;
}

#[tokio::test]
async fn restores_three_members_on_etcd_351_without_a_bump() {
    restore_round_trip(3, EtcdVersion::V351, 10_000).await;
}

#[tokio::test]
async fn restores_three_members_on_etcd_34() {
    if testlab::tools_or_skip(EtcdVersion::V34).is_none() {
        return;
    }
    restore_round_trip(3, EtcdVersion::V34, 5_000).await;
}
