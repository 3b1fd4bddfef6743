//! Inventory against membership on real etcd: an inventory that leaves out a member is refused,
//! both when the cluster answers (its member list) and when it is down (what the members' data
//! dirs record), and the plan says which source it used. Nothing changes on a refusal.

use std::path::{Path, PathBuf};
use std::process::Command;

use quorate::inventory::Inventory;
use quorate_lab::faults;
use quorate_lab::lab::Lab;
use quorate_lab::layout::Host;
use quorate_lab::realfaults::wait_etcd_down;
use quorate_lab::scenario;
use quorate_lab::testlab::{self, eventually};
use quorate_lab::tools::EtcdVersion;

/// `quorate plan` with this inventory: (success, all output).
fn plan(lab: &Lab, inventory: &Path, snapshot: &Path, extra: &[&str]) -> (bool, String) {
    let out = Command::new(scenario::quorate_bin(lab))
        .arg("plan")
        .arg("--inventory")
        .arg(inventory)
        .arg("--snapshot")
        .arg(snapshot)
        .args(extra)
        .output()
        .expect("quorate");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The lab's inventory without its last member.
fn without_last(lab: &Lab) -> PathBuf {
    let mut inventory = Inventory::load(&lab.dir().join("inventory.toml")).expect("inventory");
    inventory.members.pop();
    let path = lab.dir().join("inventory-without-last.toml");
    std::fs::write(&path, inventory.to_toml()).expect("write");
    path
}

fn write_manifest(host: &Host, text: &str) {
    let path = host.manifests_dir().join("etcd.yaml");
    let tmp = host.path("etc/kubernetes/etcd.yaml.tmp");
    std::fs::write(&tmp, text).expect("write manifest");
    std::fs::rename(&tmp, &path).expect("replace manifest");
}

/// Makes `host`'s etcd exit at start (a flag it does not know) before it opens its data dir,
/// leaving its manifest in place; returns the manifest as it was.
fn crashloop(host: &Host) -> String {
    let path = host.manifests_dir().join("etcd.yaml");
    let original = std::fs::read_to_string(&path).expect("manifest");
    let mut pod: serde_yaml_ng::Value = serde_yaml_ng::from_str(&original).expect("yaml");
    pod["spec"]["containers"][0]["command"]
        .as_sequence_mut()
        .expect("command")
        .push("--quorate-test-crashloop".into());
    write_manifest(host, &serde_yaml_ng::to_string(&pod).expect("yaml"));
    original
}

fn assert_says(case: &str, (ok, text): (bool, String), success: bool, says: &[&str]) {
    assert_eq!(ok, success, "{case}:\n{text}");
    eprintln!("--- {case}:\n{text}");
    for s in says {
        assert!(text.contains(s), "{case}: expected {s:?} in:\n{text}");
    }
}

#[tokio::test]
async fn a_member_left_out_of_the_inventory_is_refused_whether_the_cluster_is_up_or_down() {
    let lab = testlab::up(3, EtcdVersion::V35).await;
    let left_out = lab.hosts()[2].name.clone();
    let snapshot = lab.dir().join("snap.db");
    scenario::save_snapshot(&lab, &lab.hosts()[0], &snapshot).expect("snapshot");
    let before = faults::cluster_state(&lab).await.expect("state");
    let full = lab.dir().join("inventory.toml");
    let partial = without_last(&lab);
    let missing = format!("has {left_out} (ID ");

    assert_says(
        "live, member left out",
        plan(&lab, &partial, &snapshot, &[]),
        false,
        &[
            "nothing was changed",
            &missing,
            "the membership from the live cluster (cp-1's member list) has",
            "Add it as a [[member]]",
        ],
    );
    assert_says(
        "live, member left out, allowed",
        plan(&lab, &partial, &snapshot, &["--allow-membership-change"]),
        true,
        &[
            "(1 difference, let through by --allow-membership-change",
            &missing,
        ],
    );
    assert_says(
        "live, full inventory",
        plan(&lab, &full, &snapshot, &[]),
        true,
        &["members: the inventory's match the membership from the live cluster"],
    );
    assert_eq!(
        faults::cluster_state(&lab).await.expect("state"),
        before,
        "plans change nothing"
    );

    // The cluster down, as after a disaster: every etcd crashlooping, its manifest in place.
    let originals: Vec<String> = lab.hosts().iter().map(crashloop).collect();
    for host in lab.hosts() {
        wait_etcd_down(host).await.expect("etcd down");
    }
    // etcd 3.5's db records the names of the members that bootstrapped the cluster only: a member
    // that joined (kubeadm join, `member add`) is known there by its ID and peer URL.
    let unnamed = format!(
        "has a member whose name is not recorded (ID {}, peer {})",
        before
            .member_ids
            .get(&left_out)
            .map(|id| format!("{id:x}"))
            .expect("the left-out member's ID"),
        lab.hosts()[2].peer_url()
    );
    assert_says(
        "down, member left out",
        plan(&lab, &partial, &snapshot, &[]),
        false,
        &[
            &unnamed,
            "the membership from the data dirs of cp-1, cp-2 has",
        ],
    );
    assert_says(
        "down, full inventory",
        plan(&lab, &full, &snapshot, &[]),
        true,
        &["members: the inventory's match the membership from the data dirs of cp-1, cp-2, cp-3"],
    );

    for (host, original) in lab.hosts().iter().zip(originals) {
        write_manifest(host, &original);
    }
    let state = eventually("the cluster back", || async {
        faults::cluster_state(&lab).await.ok()
    })
    .await;
    assert_eq!(state, before, "the data is as it was");
}
