//! The revision bump end to end on etcd 3.5.16, whose etcdutl restores with `--bump-revision`
//! and `--mark-compacted`: after `quorate restore`, every member's revision is above the one the
//! cluster had before the restore, a read or a watch at an older revision is refused as
//! compacted (so a Kubernetes watch cache relists instead of missing changes), and the data is
//! the snapshot's.

use quorate_lab::etcd::{Dump, member_client};
use quorate_lab::lab::Lab;
use quorate_lab::testlab::{self, PATIENCE};
use quorate_lab::tools::EtcdVersion;
use quorate_lab::{faults, load, scenario};

/// The highest revision any member reports.
async fn cluster_revision(lab: &Lab) -> i64 {
    let mut highest = 0;
    for host in lab.hosts() {
        let mut c = member_client(&host.client_url(), &lab.etcd_tls())
            .await
            .expect("client");
        let status = c.status().await.expect("status");
        highest = highest.max(status.header().expect("header").revision());
    }
    highest
}

#[tokio::test]
async fn a_restore_bumps_the_revision_above_the_live_one_and_compacts_below_it() {
    let lab = testlab::up(3, EtcdVersion::V35).await;
    assert_eq!(
        lab.state.tools.full_version, "3.5.16",
        "the default lab runs etcd 3.5.16"
    );
    let cp1 = lab.hosts()[0].clone();
    let client = member_client(&cp1.client_url(), &lab.etcd_tls())
        .await
        .expect("client");
    load::load(&client, 2_000, 42).await.expect("load");

    let snapshot = lab.dir().join("snapshot.db");
    let snap_rev = scenario::save_snapshot(&lab, &cp1, &snapshot).expect("etcdctl snapshot save");
    let reference: Dump = scenario::dumps_at(&lab, Some(snap_rev))
        .await
        .expect("dump at the snapshot")
        .remove(0)
        .1;
    scenario::mutate(&lab)
        .await
        .expect("change data after the snapshot");
    let before = cluster_revision(&lab).await;
    assert!(before > snap_rev, "the cluster moved on after the snapshot");

    let plan = scenario::plan_text(&lab, &snapshot);
    assert!(
        plan.contains("--bump-revision, --mark-compacted") && !plan.contains("cannot bump"),
        "the plan says the revision is bumped:\n{plan}"
    );
    let report = scenario::restore_report(&lab, &snapshot);
    let bump = report["revision_bump"].as_i64().expect("revision_bump");
    assert!(bump > 0, "{report}");
    assert_eq!(report["snapshot_revision"].as_i64(), Some(snap_rev));
    scenario::wait_apiservers(&lab, PATIENCE)
        .await
        .expect("apiservers ready after the restore");

    let snapshot_data = faults::without_heartbeats(&reference);
    for host in lab.hosts() {
        let mut c = member_client(&host.client_url(), &lab.etcd_tls())
            .await
            .expect("client");
        // Above the revision the cluster had before the restore, by the bump.
        let now = c
            .status()
            .await
            .expect("status")
            .header()
            .expect("header")
            .revision();
        assert!(
            now > before && now >= snap_rev + bump,
            "{}: revision {now} after the restore; before it {before}, snapshot {snap_rev}, bump {bump}",
            host.name
        );
        // A read at a revision from before the restore is refused as compacted.
        for old in [before, snap_rev] {
            let err = c
                .get(
                    "/registry/",
                    Some(etcd_client::GetOptions::new().with_revision(old)),
                )
                .await
                .expect_err("a read at a revision from before the restore")
                .to_string();
            assert!(
                err.contains("compacted"),
                "{}: a read at revision {old}: {err}",
                host.name
            );
        }
        // So is a watch from there: the watcher is told to relist.
        let mut watch = c
            .watch(
                "/registry/",
                Some(
                    etcd_client::WatchOptions::new()
                        .with_prefix()
                        .with_start_revision(before),
                ),
            )
            .await
            .expect("watch");
        // The first answer may only confirm the watch was created; the refusal follows.
        let resp = tokio::time::timeout(PATIENCE, async {
            loop {
                let resp = watch
                    .message()
                    .await
                    .expect("watch stream")
                    .expect("a watch response");
                if resp.canceled() || resp.compact_revision() > 0 || !resp.events().is_empty() {
                    return resp;
                }
            }
        })
        .await
        .expect("a watch answer");
        assert!(
            resp.canceled() && resp.compact_revision() >= snap_rev + bump,
            "{}: a watch from revision {before} is cancelled as compacted at {}",
            host.name,
            resp.compact_revision()
        );
        // The data is the snapshot's (the apiservers' lease heartbeats aside).
        let data = faults::without_heartbeats(
            &quorate_lab::etcd::dump(&mut c)
                .await
                .expect("dump after the restore"),
        );
        assert!(
            data == snapshot_data,
            "{}: {} keys after the restore, the snapshot holds {}",
            host.name,
            data.len(),
            snapshot_data.len()
        );
    }

    // The next write lands above every revision a client saw before the restore.
    let mut c = member_client(&cp1.client_url(), &lab.etcd_tls())
        .await
        .expect("client");
    let put = c
        .put("/registry/configmaps/default/after-restore", "x", None)
        .await
        .expect("write after the restore");
    assert!(put.header().expect("header").revision() > before);
}
