//! `lab bench`: in one run on one lab, quorate against the floor of a restore and against the
//! sequential runbook that SREs run by hand (node by node over ssh).
//!
//! - floor: the slowest member's `snapshot restore` (measured alone) plus an etcd cold start and
//!   an election (measured when the runbook starts the restored members);
//! - runbook: for each member in turn: stop the apiserver and etcd (move their manifests aside,
//!   wait until gone), move the data dir aside, `snapshot restore` with that member's flags;
//!   then start every etcd, wait until all are healthy, start the apiservers;
//! - quorate: `quorate restore` with its per-phase times and the coordinator's peak memory.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::etcd::member_client;
use crate::lab::Lab;
use crate::layout::Host;
use crate::{load, scenario};

/// `quorate restore`, sampling the coordinator's peak resident memory (VmHWM) while it runs.
fn quorate_restore_measured(
    lab: &Lab,
    snapshot: &Path,
) -> anyhow::Result<(std::process::Output, i64)> {
    use std::io::Read;
    let mut child = Command::new(scenario::quorate_bin(lab))
        .args(["restore", "--yes", "--output", "json", "--inventory"])
        .arg(lab.dir().join("inventory.toml"))
        .arg("--snapshot")
        .arg(snapshot)
        .arg("--state-dir")
        .arg(lab.dir().join("coordinator/state"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("starting quorate")?;
    let status_path = format!("/proc/{}/status", child.id());
    let mut peak = 0i64;
    // Drain stdout in a thread so a full pipe never stalls the coordinator.
    let mut stdout = child.stdout.take().context("stdout")?;
    let mut stderr = child.stderr.take().context("stderr")?;
    let out_thread = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stdout.read_to_end(&mut buf);
        buf
    });
    let err_thread = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf);
        buf
    });
    let status = loop {
        if let Ok(text) = std::fs::read_to_string(&status_path)
            && let Some(kib) = text
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<i64>().ok())
        {
            peak = peak.max(kib);
        }
        if let Some(status) = child.try_wait()? {
            break status;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = out_thread.join().unwrap_or_default();
    let stderr = err_thread.join().unwrap_or_default();
    Ok((
        std::process::Output {
            status,
            stdout,
            stderr,
        },
        peak,
    ))
}

/// Figures of one bench run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Figures {
    pub members: usize,
    pub keys: usize,
    pub snapshot_bytes: u64,
    pub restore_tool_seconds: f64,
    pub cold_start_seconds: f64,
    pub floor_seconds: f64,
    pub runbook_seconds: f64,
    pub quorate_seconds: f64,
    pub quorate_phases: serde_json::Value,
    pub coordinator_peak_rss_kib: i64,
}

/// `snapshot restore` into `out` with `host`'s identity; returns how long it took.
fn restore_tool(
    lab: &Lab,
    host: &Host,
    snapshot: &Path,
    out: &Path,
    token: &str,
) -> anyhow::Result<Duration> {
    let tools = &lab.state.tools;
    let mut cmd = match &tools.etcdutl {
        Some(etcdutl) => Command::new(etcdutl),
        None => {
            let mut c = Command::new(&tools.etcdctl);
            c.env("ETCDCTL_API", "3");
            c
        }
    };
    let started = Instant::now();
    let status = cmd
        .args(["snapshot", "restore"])
        .arg(snapshot)
        .arg("--data-dir")
        .arg(out)
        .arg(format!("--name={}", host.name))
        .arg(format!(
            "--initial-cluster={}",
            crate::layout::initial_cluster(lab.hosts())
        ))
        .arg(format!("--initial-cluster-token={token}"))
        .arg(format!("--initial-advertise-peer-urls={}", host.peer_url()))
        .output()
        .context("snapshot restore")?;
    if !status.status.success() {
        bail!(
            "snapshot restore for {}: {}",
            host.name,
            String::from_utf8_lossy(&status.stderr)
        );
    }
    Ok(started.elapsed())
}

async fn wait_until(what: &str, mut check: impl AsyncFnMut() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !check().await {
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// The runbook, member by member; returns (total, cold start + election).
async fn runbook(lab: &Lab, snapshot: &Path) -> anyhow::Result<(Duration, Duration)> {
    let started = Instant::now();
    let token = format!("runbook-{}", std::process::id());
    for host in lab.hosts() {
        lab.remove_manifest(host, "kube-apiserver")?;
        lab.remove_manifest(host, "etcd")?;
        wait_until("etcd to stop", async || {
            !crate::procs::port_open(host.ip, 2379) && !crate::procs::port_open(host.ip, 2380)
        })
        .await?;
        let data = host.data_dir();
        std::fs::rename(&data, data.with_file_name("etcd.runbook-old"))?;
        restore_tool(lab, host, snapshot, &data, &token)?;
    }
    let cold = Instant::now();
    for host in lab.hosts() {
        lab.restore_manifest(host, "etcd")?;
    }
    for host in lab.hosts() {
        wait_until("etcd to be healthy", async || {
            lab.member_healthy(host).await
        })
        .await?;
    }
    let cold_start = cold.elapsed();
    for host in lab.hosts() {
        lab.restore_manifest(host, "kube-apiserver")?;
    }
    scenario::wait_apiservers(lab, Duration::from_secs(120)).await?;
    Ok((started.elapsed(), cold_start))
}

pub async fn run(lab: &Lab, keys: usize) -> anyhow::Result<Figures> {
    let cp1 = lab.hosts()[0].clone();
    let client = member_client(&cp1.client_url(), &lab.etcd_tls()).await?;
    load::load(&client, keys, 9).await?;
    let snapshot = lab.dir().join("bench.db");
    scenario::save_snapshot(lab, &cp1, &snapshot)?;
    let snapshot_bytes = std::fs::metadata(&snapshot)?.len();

    let scratch = lab.dir().join("bench-restore");
    let _ = std::fs::remove_dir_all(&scratch);
    let tool = restore_tool(lab, &cp1, &snapshot, &scratch, "bench")?;
    std::fs::remove_dir_all(&scratch)?;

    let (runbook_total, cold_start) = runbook(lab, &snapshot).await?;
    scenario::mutate(lab).await?;

    let started = Instant::now();
    let (out, peak_kib) = quorate_restore_measured(lab, &snapshot)?;
    let quorate_seconds = started.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!(
            "quorate restore failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let phases = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["event"] == "done")
        .map(|v| v["report"]["phases"].clone())
        .unwrap_or_default();
    Ok(Figures {
        members: lab.hosts().len(),
        keys,
        snapshot_bytes,
        restore_tool_seconds: tool.as_secs_f64(),
        cold_start_seconds: cold_start.as_secs_f64(),
        floor_seconds: (tool + cold_start).as_secs_f64(),
        runbook_seconds: runbook_total.as_secs_f64(),
        quorate_seconds,
        quorate_phases: phases,
        coordinator_peak_rss_kib: peak_kib,
    })
}

impl Figures {
    pub fn render(&self) -> String {
        format!(
            "bench: {} members, {} keys, snapshot {:.1} MB\n\
             floor    {:>7.2}s  (snapshot restore {:.2}s + cold start and election {:.2}s)\n\
             runbook  {:>7.2}s  ({:.2}x the floor; member by member, as by hand)\n\
             quorate  {:>7.2}s  ({:.2}x the floor, {:.2}x the runbook)\n\
             quorate phases: {}\n\
             coordinator peak RSS: {:.1} MB (the snapshot is {:.1} MB: it streams, it is never held)",
            self.members,
            self.keys,
            self.snapshot_bytes as f64 / 1e6,
            self.floor_seconds,
            self.restore_tool_seconds,
            self.cold_start_seconds,
            self.runbook_seconds,
            self.runbook_seconds / self.floor_seconds,
            self.quorate_seconds,
            self.quorate_seconds / self.floor_seconds,
            self.quorate_seconds / self.runbook_seconds,
            self.quorate_phases,
            self.coordinator_peak_rss_kib as f64 / 1024.0,
            self.snapshot_bytes as f64 / 1e6,
        )
    }
}
