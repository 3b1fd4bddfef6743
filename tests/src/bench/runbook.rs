//! The runbook as the published ones run it, by hand, member by member over SSH from a bastion.
//!
//! It follows the restore section of kubernetes.io's "Operating etcd clusters for Kubernetes"
//! (stop every API server, restore every etcd member from the snapshot with its own
//! `--name`/`--initial-cluster`/`--initial-advertise-peer-urls`, restart the API servers) in the
//! form the kubeadm runbooks without an etcd operator give it (e.g. OpenShift's "Restoring to a
//! previous cluster state" for static pods, and the kubeadm HA restore write-ups): copy the
//! snapshot to every control-plane node; on each node move the kube-apiserver and etcd static
//! pod manifests out of `/etc/kubernetes/manifests`, wait until the kubelet has stopped etcd
//! (their `crictl ps | grep etcd` check, here a `sleep`-and-look loop on etcd's port, as the
//! nodes have no crictl), move `/var/lib/etcd` aside and `etcdutl snapshot restore` into it;
//! then put the etcd manifests back member by member, poll `etcdctl endpoint health` on each
//! member until it is healthy, and put the kube-apiserver manifests back. etcdutl and etcdctl
//! are the etcd image's (what `crictl exec` into the etcd container gives). Nothing is slowed
//! on purpose: the loops re-check every `--runbook-poll` (1 s, the scripts' `sleep 1`).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;

use super::floor::{image_bin, restore_flags};
use super::sshd::Sshd;
use crate::hostns::shell_quote;
use crate::lab::Lab;
use crate::layout::Host;

/// The runbook of one run.
#[derive(Debug, Clone, Serialize)]
pub struct RunbookFigures {
    /// From the first scp to every apiserver ready.
    pub total_seconds: f64,
    /// From the first apiserver manifest moved aside to every apiserver ready.
    pub api_down_seconds: f64,
    /// scp of the snapshot to every member (before anything stops).
    pub copy_seconds: f64,
    /// Per member in turn: stop apiserver and etcd, wait, move the data dir, restore.
    pub stop_and_restore_seconds: f64,
    /// etcd manifests back member by member, then `endpoint health` loops until all healthy.
    pub etcd_start_seconds: f64,
    /// apiserver manifests back until every `/readyz` answers 200.
    pub apiserver_start_seconds: f64,
}

const SNAPSHOT_ON_NODE: &str = "/root/etcd-snapshot.db";

/// Runs the runbook against the lab (which ends up serving the snapshot's data), then removes
/// the copies and backups it left on the nodes.
pub async fn measure(
    lab: &Lab,
    ssh: &Sshd,
    snapshot: &Path,
    poll: Duration,
) -> anyhow::Result<RunbookFigures> {
    let sleep = format!("sleep {}", poll.as_secs_f64());
    let token = format!(
        "runbook-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or_default()
    );
    let t0 = Instant::now();
    for host in lab.hosts() {
        ssh.copy(snapshot, host, SNAPSHOT_ON_NODE)?;
    }
    let down_at = Instant::now();
    for host in lab.hosts() {
        ssh.run(host, &stop_and_restore(lab, host, &token, &sleep)?)?;
    }
    let restored_at = Instant::now();
    for host in lab.hosts() {
        ssh.run(
            host,
            "mv /etc/kubernetes/etcd.yaml.runbook /etc/kubernetes/manifests/etcd.yaml",
        )?;
    }
    for host in lab.hosts() {
        ssh.run(host, &health_loop(lab, host, &sleep)?)?;
    }
    let etcd_at = Instant::now();
    for host in lab.hosts() {
        ssh.run(
            host,
            "mv /etc/kubernetes/kube-apiserver.yaml.runbook /etc/kubernetes/manifests/kube-apiserver.yaml",
        )?;
    }
    crate::scenario::wait_apiservers(lab, Duration::from_secs(180))
        .await
        .context("the apiservers after the runbook")?;
    let end = Instant::now();
    for host in lab.hosts() {
        let _ = std::fs::remove_file(host.outside(Path::new(SNAPSHOT_ON_NODE)));
    }
    super::remove_beside_data_dir(lab, "etcd.runbook-")?;
    Ok(RunbookFigures {
        total_seconds: (end - t0).as_secs_f64(),
        api_down_seconds: (end - down_at).as_secs_f64(),
        copy_seconds: (down_at - t0).as_secs_f64(),
        stop_and_restore_seconds: (restored_at - down_at).as_secs_f64(),
        etcd_start_seconds: (etcd_at - restored_at).as_secs_f64(),
        apiserver_start_seconds: (end - etcd_at).as_secs_f64(),
    })
}

/// What the operator types on one node to stop it and restore its member.
fn stop_and_restore(lab: &Lab, host: &Host, token: &str, sleep: &str) -> anyhow::Result<String> {
    let (tool, env) = match lab.state.tools.etcdutl {
        Some(_) => (image_bin(lab, host, "etcdutl")?, ""),
        None => (image_bin(lab, host, "etcdctl")?, "ETCDCTL_API=3 "),
    };
    let flags: Vec<String> = restore_flags(lab, host, token)
        .iter()
        .map(|f| shell_quote(f))
        .collect();
    Ok(format!(
        "set -e\n\
         mv /etc/kubernetes/manifests/kube-apiserver.yaml /etc/kubernetes/kube-apiserver.yaml.runbook\n\
         mv /etc/kubernetes/manifests/etcd.yaml /etc/kubernetes/etcd.yaml.runbook\n\
         while ss -Hltn 'sport = :2379' | grep -q .; do {sleep}; done\n\
         mv /var/lib/etcd /var/lib/{token_dir}\n\
         {env}{tool} snapshot restore {SNAPSHOT_ON_NODE} --data-dir /var/lib/etcd {flags}\n",
        token_dir = format_args!("etcd.{token}"),
        tool = tool.display(),
        flags = flags.join(" "),
    ))
}

/// `etcdctl endpoint health` on the node's own member until it answers healthy.
fn health_loop(lab: &Lab, host: &Host, sleep: &str) -> anyhow::Result<String> {
    let etcdctl = image_bin(lab, host, "etcdctl")?;
    let pki = "/etc/kubernetes/pki/etcd";
    Ok(format!(
        "until ETCDCTL_API=3 {etcdctl} --endpoints=https://127.0.0.1:2379 \
         --cacert={pki}/ca.crt --cert={pki}/healthcheck-client.crt \
         --key={pki}/healthcheck-client.key endpoint health >/dev/null 2>&1; do {sleep}; done",
        etcdctl = etcdctl.display(),
    ))
}
