//! Helpers for the fault tests: what an operator checks after a failed restore, and a
//! coordinator run that can be killed at a chosen boundary.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::etcd::{Dump, member_client};
use crate::lab::Lab;
use crate::scenario;

/// What an operator would compare before and after: the cluster and member IDs, and every key
/// except the apiservers' own heartbeats (they keep writing while the cluster runs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterState {
    pub cluster_id: u64,
    pub member_ids: BTreeMap<String, u64>,
    pub data: BTreeMap<Vec<u8>, Vec<u8>>,
}

const HEARTBEATS: &[u8] = b"/registry/leases/kube-system/apiserver-";

/// Reads the state of every member at one revision and fails if two members differ ("never a
/// mix": no member on restored data while another is on the original).
pub async fn cluster_state(lab: &Lab) -> anyhow::Result<ClusterState> {
    let mut member_ids = BTreeMap::new();
    let mut cluster_id = None;
    let mut revision = 0;
    for host in lab.hosts() {
        let mut c = member_client(&host.client_url(), &lab.etcd_tls()).await?;
        let status = c
            .status()
            .await
            .with_context(|| format!("status of {}", host.name))?;
        let header = status.header().context("status without header")?;
        if *cluster_id.get_or_insert(header.cluster_id()) != header.cluster_id() {
            bail!(
                "{} is in cluster {:x}, not {:x}",
                host.name,
                header.cluster_id(),
                cluster_id.unwrap_or(0)
            );
        }
        member_ids.insert(host.name.clone(), header.member_id());
        revision = revision.max(header.revision());
    }
    // Wait until every member has applied `revision`, then compare them at it.
    let deadline = Instant::now() + Duration::from_secs(20);
    let dumps = loop {
        match scenario::dumps_at(lab, Some(revision)).await {
            Ok(d) => break d,
            Err(e) if Instant::now() < deadline => {
                tracing::debug!("dump at {revision}: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e),
        }
    };
    let filtered = |d: &Dump| -> BTreeMap<Vec<u8>, Vec<u8>> {
        d.kvs
            .iter()
            .filter(|(k, _)| !k.starts_with(HEARTBEATS))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    };
    let first = filtered(&dumps[0].1);
    for (name, d) in &dumps[1..] {
        if filtered(d) != first {
            bail!(
                "{name}'s data differs from {}'s at revision {revision}: members are mixed",
                dumps[0].0
            );
        }
    }
    Ok(ClusterState {
        cluster_id: cluster_id.unwrap_or(0),
        member_ids,
        data: first,
    })
}

/// The snapshot's data without heartbeats, from a live dump at its revision.
pub fn without_heartbeats(d: &Dump) -> BTreeMap<Vec<u8>, Vec<u8>> {
    d.kvs
        .iter()
        .filter(|(k, _)| !k.starts_with(HEARTBEATS))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// `quorate restore` with the coordinator's `FAILPOINTS`, in the background.
pub fn spawn_restore(lab: &Lab, snapshot: &Path, failpoints: &str) -> anyhow::Result<Child> {
    Command::new(scenario::quorate_bin(lab))
        .args(["restore", "--yes", "--output", "json", "--inventory"])
        .arg(lab.dir().join("inventory.toml"))
        .arg("--snapshot")
        .arg(snapshot)
        .arg("--state-dir")
        .arg(state_dir(lab))
        .env("FAILPOINTS", failpoints)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting quorate")
}

pub fn state_dir(lab: &Lab) -> PathBuf {
    lab.dir().join("coordinator/state")
}

/// Runs a `quorate` subcommand on restore `id` (status, resume, rollback); returns stdout+stderr.
pub fn quorate_on(lab: &Lab, verb: &str, id: &str) -> anyhow::Result<(bool, String)> {
    quorate_with(lab, &[verb, id]).map(|(code, text)| (code == Some(0), text))
}

/// Runs `quorate ARGS --state-dir <the lab's>`; returns its exit code and stdout+stderr.
pub fn quorate_with(lab: &Lab, args: &[&str]) -> anyhow::Result<(Option<i32>, String)> {
    let out = Command::new(scenario::quorate_bin(lab))
        .args(args)
        .arg("--state-dir")
        .arg(state_dir(lab))
        .output()
        .context("running quorate")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status.code(), text))
}

/// The restore ids in the state dir, newest last.
pub fn restore_ids(lab: &Lab) -> Vec<String> {
    let mut dirs: Vec<(std::time::SystemTime, String)> = std::fs::read_dir(state_dir(lab))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let t = e.metadata().ok()?.modified().ok()?;
            Some((t, e.file_name().to_string_lossy().into_owned()))
        })
        .collect();
    dirs.sort();
    dirs.into_iter().map(|(_, n)| n).collect()
}

/// Waits until the coordinator's journal of the newest restore records `phase` `event`.
pub async fn wait_journal(
    lab: &Lab,
    known: usize,
    phase: &str,
    event: &str,
) -> anyhow::Result<String> {
    wait_journal_for(lab, known, phase, event, Duration::from_secs(120)).await
}

/// Waits up to `patience` until the coordinator's journal of the newest restore records `phase`
/// (`halt`, or `rollback:halt` for its undo) `event` (`begin`, `done`, `failed`); returns the
/// restore id.
pub async fn wait_journal_for(
    lab: &Lab,
    known: usize,
    phase: &str,
    event: &str,
    patience: Duration,
) -> anyhow::Result<String> {
    let deadline = Instant::now() + patience;
    loop {
        let ids = restore_ids(lab);
        if ids.len() > known {
            let id = ids.last().expect("one id").clone();
            let journal = state_dir(lab).join(&id).join("journal.jsonl");
            let text = std::fs::read_to_string(&journal).unwrap_or_default();
            if text.lines().any(|l| journal_line_is(l, phase, event)) {
                return Ok(id);
            }
        }
        if Instant::now() > deadline {
            bail!("the journal did not record {phase} {event} within {patience:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One line of the coordinator's journal records `phase` `event` (see [`wait_journal_for`]).
pub fn journal_line_is(line: &str, phase: &str, event: &str) -> bool {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
        return false;
    };
    let (entry, phase) = match phase.strip_prefix("rollback:") {
        Some(undone) => (format!("revert-{event}"), undone),
        None => (event.to_owned(), phase),
    };
    v["entry"] == entry.as_str() && v["phase"] == phase
}

/// Waits until host `i`'s agent journal for restore `id` shows `step` in `state`.
pub async fn wait_agent_step(
    lab: &Lab,
    i: usize,
    step: &str,
    state: &str,
) -> anyhow::Result<String> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let restores = lab.hosts()[i].path("var/lib/quorate-agent/restores");
    loop {
        for entry in std::fs::read_dir(&restores).into_iter().flatten().flatten() {
            let journal = entry.path().join("journal.json");
            if let Ok(text) = std::fs::read_to_string(&journal) {
                let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
                if v["steps"][step]["state"] == state {
                    return Ok(entry.file_name().to_string_lossy().into_owned());
                }
            }
        }
        if Instant::now() > deadline {
            bail!(
                "{}'s agent never recorded {step} {state}",
                lab.hosts()[i].name
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The dirs a restore left beside `host`'s data dir (`etcd.quorate-*`: preserved, prepared or
/// failed copies).
pub fn restore_dirs(host: &crate::layout::Host) -> Vec<String> {
    let parent = host.data_dir().parent().expect("parent").to_owned();
    std::fs::read_dir(&parent)
        .expect("var/lib")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("etcd.quorate-"))
        .collect()
}

/// Whether `host`'s agent holds a restore's lock (it is claimed).
pub fn holds_restore_lock(host: &crate::layout::Host) -> bool {
    host.path("var/lib/quorate-agent/active").exists()
}
