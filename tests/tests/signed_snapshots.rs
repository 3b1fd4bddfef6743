//! Members whose agents list `trusted_snapshot_keys` restore a snapshot signed by one of those
//! keys, and refuse an unsigned one, one signed by another key and a forged signature before
//! anything changes (etcd 3.5.16, real agents, real TLS).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use quorate_lab::faults::{self, ClusterState};
use quorate_lab::lab::Lab;
use quorate_lab::testlab::{self, PATIENCE};
use quorate_lab::tools::EtcdVersion;
use quorate_lab::{load, scenario};
use quorate_proto::signature::{SigningKey, SnapshotSignature};

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs `quorate snapshot ARGS`; its output, asserting success.
fn snapshot_cmd(lab: &Lab, args: &[&str]) -> String {
    let out = Command::new(scenario::quorate_bin(lab))
        .arg("snapshot")
        .args(args)
        .output()
        .expect("quorate snapshot");
    let t = text(&out);
    assert!(out.status.success(), "quorate snapshot {args:?}: {t}");
    t
}

/// `quorate snapshot keygen --out DIR/NAME.key`: the private key's path and the key id.
fn keygen(lab: &Lab, name: &str) -> (PathBuf, String) {
    let dir = lab.dir().join("signing");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let key = dir.join(format!("{name}.key"));
    let out = snapshot_cmd(
        lab,
        &[
            "keygen",
            "--out",
            &key.display().to_string(),
            "--output",
            "json",
        ],
    );
    // stdout's JSON line (stderr follows it in `out`: a test build announces its failpoints).
    let json = out
        .lines()
        .find(|l| l.starts_with('{'))
        .expect("keygen's JSON line");
    let v: serde_json::Value = serde_json::from_str(json).expect("keygen json");
    let id = v["result"]["keys"]["key_id"]
        .as_str()
        .expect("key id")
        .to_owned();
    (key, id)
}

/// Every agent trusts `public` (copied onto its host) and is restarted to read it.
async fn require_signatures(lab: &mut Lab, public: &Path) {
    for i in 0..lab.hosts().len() {
        let host = lab.hosts()[i].clone();
        let rel = "etc/quorate/snapshot-signing.pub";
        std::fs::copy(public, host.path(rel)).expect("copy the public key");
        let config = host.path("etc/quorate/agent.toml");
        let text = std::fs::read_to_string(&config).expect("agent.toml");
        let line = format!("trusted_snapshot_keys = [{:?}]\n", host.inner_str(rel));
        let text = text.replacen("\n[tls]", &format!("\n{line}\n[tls]"), 1);
        std::fs::write(&config, text).expect("agent.toml");
        lab.kill_agent(i).expect("stop the agent");
        lab.start_agent(i, None).await.expect("start the agent");
    }
}

fn no_restore_left(lab: &Lab) {
    for host in lab.hosts() {
        let extra = faults::restore_dirs(host);
        assert!(extra.is_empty(), "{} has {extra:?}", host.name);
        assert!(
            !faults::holds_restore_lock(host),
            "{} is still claimed",
            host.name
        );
    }
}

/// A refused restore: non-zero exit, the refusal's text, and the cluster as it was.
async fn refused(lab: &Lab, snapshot: &Path, extra: &[&str], before: &ClusterState) -> String {
    let mut args = vec!["--yes", "--step-timeout", "15s"];
    args.extend_from_slice(extra);
    let out = scenario::quorate_restore(lab, snapshot, &args).expect("quorate");
    let t = text(&out);
    assert!(!out.status.success(), "the restore was not refused: {t}");
    assert_eq!(
        &faults::cluster_state(lab).await.expect("state"),
        before,
        "a refused restore changed the cluster: {t}"
    );
    no_restore_left(lab);
    eprintln!("refused as expected:\n{t}");
    t
}

#[tokio::test]
async fn members_requiring_signatures_restore_only_a_snapshot_signed_by_a_trusted_key() {
    let mut lab = testlab::up(3, EtcdVersion::V35).await;
    let (trusted_key, trusted_id) = keygen(&lab, "trusted");
    let (other_key, other_id) = keygen(&lab, "other");
    require_signatures(&mut lab, &trusted_key.with_extension("pub")).await;
    lab.wait_ready(PATIENCE).await.expect("ready");

    let h1 = lab.hosts()[0].clone();
    let client = quorate_lab::etcd::member_client(&h1.client_url(), &lab.etcd_tls())
        .await
        .expect("client");
    load::load(&client, 1_000, 5).await.expect("load");
    // `snapshot save --sign-key`: signed at once (by a key the members do not trust).
    let snap = lab.dir().join("etcd-1.db");
    let snap_arg = snap.display().to_string();
    let inventory = lab.dir().join("inventory.toml").display().to_string();
    let saved = snapshot_cmd(
        &lab,
        &[
            "save",
            "--inventory",
            &inventory,
            "--out",
            &snap_arg,
            "--sign-key",
            &other_key.display().to_string(),
        ],
    );
    assert!(saved.contains(&format!("with key {other_id}")), "{saved}");
    let snap_rev = scenario::snapshot_revision(&lab, &snap).expect("snapshot status");
    let at_snapshot = faults::cluster_state(&lab)
        .await
        .expect("state at the snapshot");
    scenario::mutate(&lab)
        .await
        .expect("change data after the snapshot");
    let before = faults::cluster_state(&lab).await.expect("state");

    // Unsigned (its signature moved away): refused in preflight, naming the member, the keys it
    // trusts and what to do.
    let sig_file = PathBuf::from(format!("{snap_arg}.sig"));
    let aside = lab.dir().join("aside.sig");
    std::fs::rename(&sig_file, &aside).expect("move the signature away");
    let t = refused(&lab, &snap, &[], &before).await;
    assert!(
        t.contains("requires snapshots signed by a trusted key")
            && t.contains(&trusted_id)
            && t.contains("quorate snapshot sign"),
        "{t}"
    );

    // Signed by a key the members do not trust: refused in preflight.
    std::fs::rename(&aside, &sig_file).expect("put the signature back");
    let t = refused(&lab, &snap, &[], &before).await;
    assert!(
        t.contains(&format!("is signed by key {other_id}")) && t.contains(&trusted_id),
        "{t}"
    );

    // Forged: another key's signature claiming the trusted key's id passes preflight (which
    // sees key ids only) and is refused by every agent at the claim.
    let other = SigningKey::load(&other_key).expect("other key");
    let genuine = SnapshotSignature::load(&sig_file).expect("signature");
    let mut forged = SnapshotSignature::sign(genuine.facts.clone(), &other).expect("sign");
    forged.key_id = trusted_id.clone();
    let forged_file = lab.dir().join("forged.sig");
    std::fs::write(&forged_file, forged.to_json()).expect("write");
    let forged_arg = forged_file.display().to_string();
    let t = refused(&lab, &snap, &["--signature", &forged_arg], &before).await;
    assert!(
        t.contains("does not verify") && t.contains("requires snapshots signed"),
        "{t}"
    );

    // Signed by the trusted key: `snapshot verify` checks it, the plan says so, and the
    // restore completes with the snapshot's data on every member.
    snapshot_cmd(
        &lab,
        &[
            "sign",
            &snap_arg,
            "--key",
            &trusted_key.display().to_string(),
        ],
    );
    let verified = snapshot_cmd(
        &lab,
        &[
            "verify",
            &snap_arg,
            "--trusted-key",
            &trusted_key.with_extension("pub").display().to_string(),
        ],
    );
    assert!(
        verified.contains(&format!("by trusted key {trusted_id}")),
        "{verified}"
    );
    let plan = scenario::plan_text(&lab, &snap);
    assert!(
        plan.contains(&format!("signed by key {trusted_id}"))
            && plan.contains("every member requires signatures"),
        "{plan}"
    );
    let report = scenario::restore_report(&lab, &snap);
    assert_eq!(
        report["snapshot_revision"].as_i64(),
        Some(snap_rev),
        "{report}"
    );
    let after = faults::cluster_state(&lab).await.expect("state after");
    assert_ne!(after.cluster_id, before.cluster_id, "a new cluster ID");
    assert_eq!(
        after.data, at_snapshot.data,
        "every member holds the snapshot's keys and values, and nothing written since"
    );
    scenario::wait_apiservers(&lab, PATIENCE)
        .await
        .expect("apiservers ready after the restore");
}
