//! The restore scenario the demo and the end-to-end tests share: load, snapshot with plain
//! `etcdctl snapshot save`, change the data, restore with `quorate`, compare.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{Context, bail};

use crate::etcd::{Dump, dump, dump_at, member_client};
use crate::lab::Lab;
use crate::layout::Host;

/// Runs plain etcdctl against `host` with the lab's client certificate, as an operator would.
pub fn etcdctl(lab: &Lab, host: &Host, args: &[&str]) -> anyhow::Result<String> {
    let tls = lab.etcd_tls();
    let out = Command::new(&lab.state.tools.etcdctl)
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", host.client_url()))
        .arg(format!("--cacert={}", tls.ca.display()))
        .arg(format!("--cert={}", tls.cert.display()))
        .arg(format!("--key={}", tls.key.display()))
        .args(args)
        .output()
        .context("running etcdctl")?;
    if !out.status.success() {
        bail!("etcdctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `etcdctl snapshot save` from `host`; returns the snapshot's revision (from `snapshot status`).
pub fn save_snapshot(lab: &Lab, host: &Host, out: &Path) -> anyhow::Result<i64> {
    etcdctl(lab, host, &["snapshot", "save", &out.display().to_string()])?;
    snapshot_revision(lab, out)
}

/// The revision `snapshot status` reports for a snapshot file or a raw `member/snap/db`.
pub fn snapshot_revision(lab: &Lab, file: &Path) -> anyhow::Result<i64> {
    let tools = &lab.state.tools;
    let mut cmd = match &tools.etcdutl {
        Some(etcdutl) => Command::new(etcdutl),
        None => {
            let mut c = Command::new(&tools.etcdctl);
            c.env("ETCDCTL_API", "3");
            c
        }
    };
    let out = cmd
        .args(["snapshot", "status", "-w", "json"])
        .arg(file)
        .output()
        .context("snapshot status")?;
    if !out.status.success() {
        bail!(
            "snapshot status {}: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    v["revision"]
        .as_i64()
        .context("snapshot status without revision")
}

/// Every member's full key/value dump at `revision` (`None`: the current one).
pub async fn dumps_at(lab: &Lab, revision: Option<i64>) -> anyhow::Result<Vec<(String, Dump)>> {
    let mut out = Vec::new();
    for host in lab.hosts() {
        let mut client = member_client(&host.client_url(), &lab.etcd_tls()).await?;
        let d = dump_at(&mut client, revision).await?;
        out.push((host.name.clone(), d));
    }
    Ok(out)
}

/// Changes the data after the snapshot: deletes, overwrites and adds keys.
pub async fn mutate(lab: &Lab) -> anyhow::Result<()> {
    let host = &lab.hosts()[0];
    let mut client = member_client(&host.client_url(), &lab.etcd_tls()).await?;
    let current = dump(&mut client).await?;
    for (i, key) in current.kvs.keys().enumerate() {
        if key.starts_with(b"/registry/leases/kube-system/apiserver-") {
            continue;
        }
        match i % 10 {
            0 => {
                client.delete(key.clone(), None).await?;
            }
            5 => {
                client
                    .put(key.clone(), b"changed after the snapshot".to_vec(), None)
                    .await?;
            }
            _ => {}
        }
    }
    for i in 0..200 {
        client
            .put(
                format!("/registry/configmaps/after/cm-{i}"),
                "added after the snapshot",
                None,
            )
            .await?;
    }
    Ok(())
}

/// The `quorate` binary built beside `lab`.
pub fn quorate_bin(lab: &Lab) -> PathBuf {
    lab.state.lab_bin.with_file_name("quorate")
}

/// Runs `quorate restore` against the lab.
pub fn quorate_restore(lab: &Lab, snapshot: &Path, extra: &[&str]) -> anyhow::Result<Output> {
    Command::new(quorate_bin(lab))
        .arg("restore")
        .arg("--inventory")
        .arg(lab.dir().join("inventory.toml"))
        .arg("--snapshot")
        .arg(snapshot)
        .arg("--state-dir")
        .arg(lab.dir().join("coordinator/state"))
        .args(extra)
        .output()
        .context("running quorate")
}

/// `quorate plan`'s human output against the lab; panics if the plan is refused.
pub fn plan_text(lab: &Lab, snapshot: &Path) -> String {
    let out = Command::new(quorate_bin(lab))
        .arg("plan")
        .arg("--inventory")
        .arg(lab.dir().join("inventory.toml"))
        .arg("--snapshot")
        .arg(snapshot)
        .output()
        .expect("quorate plan");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "quorate plan failed: {text}");
    text
}

/// Runs `quorate restore --yes --output json`; its report. Panics if the restore fails.
pub fn restore_report(lab: &Lab, snapshot: &Path) -> serde_json::Value {
    let out = quorate_restore(lab, snapshot, &["--yes", "--output", "json"]).expect("quorate");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "quorate restore failed:\nstdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    crate::realfaults::outcome(&out.stdout, "restored")
        .expect("a result event with the report")["result"]
        .clone()
}

/// Waits until every apiserver (on stacked members, or on an external cluster's control-plane
/// hosts) answers `/readyz` with 200.
pub async fn wait_apiservers(lab: &Lab, patience: Duration) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + patience;
    let stacked = lab.state.runtime == crate::lab::LabRuntime::StaticPod;
    let hosts = lab
        .hosts()
        .iter()
        .filter(|_| stacked)
        .chain(lab.state.apiservers.iter().map(|a| &a.host));
    for host in hosts {
        while lab.apiserver_readyz(host).await != Some(200) {
            if std::time::Instant::now() > deadline {
                bail!("{}'s apiserver is not ready", host.name);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}
