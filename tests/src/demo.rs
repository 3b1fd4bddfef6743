//! `lab demo`: a fresh lab, a snapshot, a change, a `quorate restore`, and the proof.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::etcd::member_client;
use crate::lab::{Lab, UpOptions};
use crate::tools::EtcdVersion;
use crate::{load, scenario};
use anyhow::{Context, bail};

fn say(text: &str) {
    println!("\n==> {text}");
}

pub async fn run(
    dir: PathBuf,
    members: u8,
    keys: usize,
    etcd: EtcdVersion,
    keep: bool,
) -> anyhow::Result<()> {
    let lab_bin = std::env::current_exe().context("locating the lab binary")?;
    say(&format!(
        "lab up: {members} etcd {etcd} members with TLS in {}",
        dir.display()
    ));
    let mut lab = Lab::up(&UpOptions {
        dir,
        members,
        version: etcd,
        net: 0,
        agent_bin: Some(lab_bin.with_file_name("quorate-agent")),
        lab_bin,
        patience: Duration::from_secs(60),
        runtime: crate::lab::LabRuntime::StaticPod,
        faithful: crate::hostns::available(),
        layout: crate::lab::LabLayout::default(),
    })
    .await?;
    let result = story(&lab, keys).await;
    if keep {
        println!(
            "\nThe lab is still running: source {}/lab.env; stop it with `lab down --dir {}`",
            lab.dir().display(),
            lab.dir().display()
        );
    } else {
        say("lab down");
        lab.down()?;
    }
    result
}

async fn story(lab: &Lab, keys: usize) -> anyhow::Result<()> {
    let cp1 = lab.hosts()[0].clone();
    let client = member_client(&cp1.client_url(), &lab.etcd_tls()).await?;
    say(&format!("load {keys} Kubernetes-shaped keys"));
    let started = Instant::now();
    let report = load::load(&client, keys, 1).await?;
    println!(
        "    {} keys, {:.1} MB in {:.1?}",
        report.keys,
        report.bytes as f64 / 1e6,
        started.elapsed()
    );

    let snapshot = lab.dir().join("snapshot.db");
    say(&format!("etcdctl snapshot save {}", snapshot.display()));
    let snap_rev = scenario::save_snapshot(lab, &cp1, &snapshot)?;
    let reference = scenario::dumps_at(lab, Some(snap_rev)).await?.remove(0).1;
    println!(
        "    snapshot at revision {snap_rev}: {} keys",
        reference.kvs.len()
    );

    say("change the data after the snapshot: delete and overwrite keys, add new ones");
    scenario::mutate(lab).await?;
    let changed = scenario::dumps_at(lab, None).await?.remove(0).1;
    let differing = reference
        .kvs
        .iter()
        .filter(|(k, v)| changed.kvs.get(*k) != Some(*v))
        .count();
    println!(
        "    now {} keys at revision {}; {differing} of the snapshot's keys differ or are gone",
        changed.kvs.len(),
        changed.revision
    );

    let inventory = lab.dir().join("inventory.toml");
    say(&format!(
        "quorate restore --inventory {} --snapshot {} --yes",
        inventory.display(),
        snapshot.display()
    ));
    let status = Command::new(scenario::quorate_bin(lab))
        .arg("restore")
        .arg("--inventory")
        .arg(&inventory)
        .arg("--snapshot")
        .arg(&snapshot)
        .arg("--state-dir")
        .arg(lab.dir().join("coordinator/state"))
        .arg("--yes")
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .status()
        .context("running quorate")?;
    if !status.success() {
        bail!("quorate restore failed ({status})");
    }

    say("compare every member with the snapshot");
    let now = scenario::dumps_at(lab, None).await?;
    for (name, d) in &now {
        if d.count_prefix("/registry/configmaps/after/") != 0 {
            bail!("{name}: keys added after the snapshot survived the restore");
        }
    }
    // With the revision bump (etcdutl >= 3.5.10) every revision below the restored one is
    // compacted: compare the data now, the apiservers' lease heartbeats aside.
    let snapshot_data = crate::faults::without_heartbeats(&reference);
    for (name, d) in &now {
        if crate::faults::without_heartbeats(d) != snapshot_data {
            bail!("{name}: data differs from the snapshot");
        }
        println!(
            "    {name}: {} keys identical to the snapshot (snapshot revision {snap_rev}, now {})",
            snapshot_data.len(),
            d.revision
        );
    }
    scenario::wait_apiservers(lab, Duration::from_secs(60)).await?;
    println!("    apiservers ready; the data is back to the snapshot on every member");
    Ok(())
}
