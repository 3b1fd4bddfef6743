//! A snapshot records the etcd cluster version it was taken at; `quorate restore` refuses one
//! from another etcd major.minor than the members run, before anything is touched.

use quorate::snapshot_verify::file_cluster_version;
use quorate_lab::faults;
use quorate_lab::scenario;
use quorate_lab::testlab;
use quorate_lab::tools::EtcdVersion;

#[tokio::test]
async fn a_snapshot_from_etcd_34_is_refused_by_a_35_cluster_naming_both() {
    let keep = tempfile::tempdir().expect("tempdir");
    let old = keep.path().join("etcd-34.db");
    if testlab::tools_or_skip(EtcdVersion::V34).is_some() {
        let lab34 = testlab::up(3, EtcdVersion::V34).await;
        scenario::save_snapshot(&lab34, &lab34.hosts()[0], &old).expect("3.4 snapshot save");
        let v = file_cluster_version(&old).expect("read the 3.4 snapshot");
        assert!(
            v.as_deref().is_some_and(|v| v.starts_with("3.4.")),
            "3.4 snapshot's clusterVersion: {v:?}"
        );
    }

    let lab = testlab::up(3, EtcdVersion::V35).await;
    let current = keep.path().join("etcd-35.db");
    scenario::save_snapshot(&lab, &lab.hosts()[0], &current).expect("3.5 snapshot save");
    let v = file_cluster_version(&current).expect("read the 3.5 snapshot");
    assert!(
        v.as_deref().is_some_and(|v| v.starts_with("3.5.")),
        "3.5 snapshot's clusterVersion: {v:?}"
    );
    // The same reader finds the revision `snapshot status` reports.
    assert_eq!(
        quorate::snapshot_verify::file_revision(&current).expect("revision"),
        scenario::snapshot_revision(&lab, &current).expect("status")
    );
    if !old.exists() {
        return;
    }

    let before = faults::cluster_state(&lab).await.expect("state");
    let out = scenario::quorate_restore(&lab, &old, &["--yes"]).expect("quorate");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "a 3.4 snapshot on 3.5: {text}");
    assert!(
        text.contains("taken on etcd 3.4")
            && text.contains("run etcd 3.5")
            && text.contains("same etcd version")
            && text.contains("nothing was changed"),
        "{text}"
    );
    assert_eq!(
        faults::cluster_state(&lab).await.expect("state"),
        before,
        "the refused restore changed the cluster"
    );
}
