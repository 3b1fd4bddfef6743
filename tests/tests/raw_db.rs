//! A raw copy of a member's `member/snap/db` has no sha256 trailer: `quorate restore` refuses it
//! and names `--skip-hash-check`; with the flag it restores it on every member.

use std::process::Output;

use quorate_lab::etcd::member_client;
use quorate_lab::faults::{self, ClusterState};
use quorate_lab::lab::Lab;
use quorate_lab::layout::Host;
use quorate_lab::testlab::{self, eventually};
use quorate_lab::tools::EtcdVersion;
use quorate_lab::{load, procs, scenario};

const MARKERS: usize = 50;

fn marker(i: usize) -> String {
    format!("/registry/configmaps/default/before-copy-{i}")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn no_restore_dirs(lab: &Lab) {
    for host in lab.hosts() {
        let extra = faults::restore_dirs(host);
        assert!(extra.is_empty(), "{} has {extra:?}", host.name);
    }
}

/// The revision `host` has applied, as it reports it itself.
async fn applied(lab: &Lab, host: &Host) -> Option<i64> {
    let mut c = member_client(&host.client_url(), &lab.etcd_tls())
        .await
        .ok()?;
    let status = c.status().await.ok()?;
    status.header().map(|h| h.revision())
}

#[tokio::test]
async fn a_raw_db_copy_is_refused_without_skip_hash_check_and_restored_with_it() {
    let lab = testlab::up(3, EtcdVersion::V35).await;
    let (h1, h3) = (lab.hosts()[0].clone(), lab.hosts()[2].clone());
    let mut client = member_client(&h1.client_url(), &lab.etcd_tls())
        .await
        .expect("client");
    load::load(&client, 2_000, 7).await.expect("load");
    let mut written = 0;
    for i in 0..MARKERS {
        let put = client
            .put(marker(i), format!("v{i}"), None)
            .await
            .expect("put marker");
        written = put.header().map_or(0, |h| h.revision());
    }

    // Copy cp-3's db while its etcd is stopped, once it holds every marker.
    eventually("cp-3 to apply the markers", || async {
        applied(&lab, &h3).await.filter(|r| *r >= written)
    })
    .await;
    lab.remove_manifest(&h3, "etcd").expect("stop cp-3's etcd");
    eventually("cp-3's etcd ports to close", || async {
        [2379, 2380, 2381]
            .iter()
            .all(|p| !procs::port_open(h3.ip, *p))
            .then_some(())
    })
    .await;
    let raw = lab.dir().join("raw.db");
    std::fs::copy(h3.data_dir().join("member/snap/db"), &raw).expect("copy member/snap/db");
    lab.restore_manifest(&h3, "etcd")
        .expect("put cp-3's manifest back");
    eventually("cp-3 healthy again", || async {
        lab.member_healthy(&h3).await.then_some(())
    })
    .await;
    lab.wait_ready(testlab::PATIENCE)
        .await
        .expect("every member and apiserver ready again");
    let copied = scenario::snapshot_revision(&lab, &raw).expect("status of the raw db");
    assert!(copied >= written, "the copy holds the markers");

    // Changes after the copy, which the restore must undo.
    scenario::mutate(&lab).await.expect("change data");
    let before: ClusterState = faults::cluster_state(&lab).await.expect("state");

    let out = scenario::quorate_restore(&lab, &raw, &["--yes", "--step-timeout", "10s"])
        .expect("quorate");
    let refusal = text(&out);
    assert!(
        !out.status.success(),
        "a raw db without the flag: {refusal}"
    );
    assert!(
        refusal.contains("no sha256 trailer") && refusal.contains("--skip-hash-check"),
        "{refusal}"
    );
    assert_eq!(
        faults::cluster_state(&lab).await.expect("state"),
        before,
        "the refused restore changed the cluster"
    );
    no_restore_dirs(&lab);

    // The plan says what the flag costs.
    let plan = std::process::Command::new(scenario::quorate_bin(&lab))
        .arg("plan")
        .arg("--inventory")
        .arg(lab.dir().join("inventory.toml"))
        .arg("--snapshot")
        .arg(&raw)
        .arg("--skip-hash-check")
        .output()
        .expect("quorate plan");
    let plan_text = text(&plan);
    assert!(plan.status.success(), "{plan_text}");
    assert!(
        plan_text.contains("integrity cannot be checked")
            && plan_text.contains("uncommitted or inconsistent"),
        "{plan_text}"
    );

    let started = std::time::Instant::now();
    let out = scenario::quorate_restore(
        &lab,
        &raw,
        &["--skip-hash-check", "--yes", "--output", "json"],
    )
    .expect("quorate");
    assert!(
        out.status.success(),
        "restore with --skip-hash-check: {}",
        text(&out)
    );
    eprintln!(
        "raw db restore took {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let done: serde_json::Value = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["event"] == "result" && v["outcome"] == "restored")
        .expect("a done event with the report");
    let report = &done["result"];
    assert_eq!(report["skip_hash_check"], true, "{report}");
    assert_eq!(report["snapshot_revision"].as_i64(), Some(copied));

    // One cluster, the same data on every member: the copy's, markers included, later changes
    // gone.
    let after = faults::cluster_state(&lab)
        .await
        .expect("state after restore");
    assert_ne!(after.cluster_id, before.cluster_id, "a new cluster ID");
    for i in 0..MARKERS {
        assert_eq!(
            after.data.get(marker(i).as_bytes()).map(Vec::as_slice),
            Some(format!("v{i}").as_bytes()),
            "{} after the restore",
            marker(i)
        );
    }
    assert!(
        !after
            .data
            .keys()
            .any(|k| k.starts_with(b"/registry/configmaps/after/")),
        "keys added after the copy survived the restore"
    );
    scenario::wait_apiservers(&lab, testlab::PATIENCE)
        .await
        .expect("apiservers ready after restore");
}
