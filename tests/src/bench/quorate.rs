//! quorate as the operator feels it: `quorate restore --output json` against the lab, with
//! its phase timings, the API-down window seen from the bastion (from the FENCE phase's start,
//! as the coordinator announces it, to every apiserver answering `/readyz` 200 again, polled
//! every 50 ms), and the peak RSS (VmHWM) of the coordinator and of the first host's agent
//! (restarted just before, so that its peak is this run's).

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;

use crate::lab::{Lab, LabRuntime};
use crate::scenario;

/// quorate's figures of one run.
#[derive(Debug, Clone, Serialize)]
pub struct QuorateFigures {
    /// `quorate restore` from start to exit.
    pub total_seconds: f64,
    /// FENCE's start to every apiserver ready again, as polled from the bastion.
    pub api_down_seconds: f64,
    /// The same window from the report's phase timings (FENCE to UNFENCE).
    pub api_down_from_phases_seconds: f64,
    /// Each phase's seconds, in order.
    pub phases: Vec<PhaseSeconds>,
    pub coordinator_peak_rss_kib: u64,
    /// The agent on the first host.
    pub agent_peak_rss_kib: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct PhaseSeconds {
    pub phase: String,
    pub seconds: f64,
}

/// Phases inside the API-down window.
const DOWN_PHASES: [&str; 7] = [
    "fence", "halt", "preserve", "restore", "quorum", "verify", "unfence",
];

/// What the coordinator did, as its process showed it.
struct Run {
    status: ExitStatus,
    stdout: String,
    stderr: String,
    peak_kib: u64,
    fence_at: Option<Instant>,
    ended: Instant,
}

pub async fn measure(lab: &mut Lab, snapshot: &Path) -> anyhow::Result<QuorateFigures> {
    lab.kill_agent(0)?;
    lab.start_agent(0, None).await?;
    let agent_pid = *lab.state.agents.first().context("the lab runs no agents")?;
    let mut cmd = Command::new(scenario::quorate_bin(lab));
    cmd.args(["restore", "--yes", "--output", "json", "--inventory"])
        .arg(lab.dir().join("inventory.toml"))
        .arg("--snapshot")
        .arg(snapshot)
        .arg("--state-dir")
        .arg(lab.dir().join("coordinator/state"));
    let started = Instant::now();
    let task = tokio::task::spawn_blocking(move || run_sampled(cmd));
    let samples = poll_readyz(lab, &task).await;
    let run = task.await.context("the coordinator's watcher")??;
    if !run.status.success() {
        bail!(
            "quorate restore failed ({}):\n{}\n{}",
            run.status,
            run.stdout,
            run.stderr
        );
    }
    let phases: Vec<PhaseSeconds> = run
        .stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["event"] == "result" && v["outcome"] == "restored")
        .and_then(|v| v["result"]["phases"].as_array().cloned())
        .context("quorate printed no report")?
        .iter()
        .map(|p| PhaseSeconds {
            phase: p["phase"].as_str().unwrap_or("?").to_owned(),
            seconds: p["seconds"].as_f64().unwrap_or(f64::NAN),
        })
        .collect();
    let fence_at = run.fence_at.context("quorate announced no FENCE phase")?;
    let last_down = samples
        .iter()
        .filter(|(t, ready)| !ready && *t >= fence_at)
        .map(|(t, _)| *t)
        .next_back()
        .context("no apiserver was seen down after FENCE began")?;
    let up_again = samples
        .iter()
        .find(|(t, ready)| *ready && *t > last_down)
        .map(|(t, _)| *t)
        .context("the apiservers were not seen ready again")?;
    let figures = QuorateFigures {
        total_seconds: (run.ended - started).as_secs_f64(),
        api_down_seconds: (up_again - fence_at).as_secs_f64(),
        api_down_from_phases_seconds: phases
            .iter()
            .filter(|p| DOWN_PHASES.contains(&p.phase.as_str()))
            .map(|p| p.seconds)
            .sum(),
        phases,
        coordinator_peak_rss_kib: run.peak_kib,
        agent_peak_rss_kib: vm_hwm_kib(agent_pid).context("reading the agent's VmHWM")?,
    };
    super::remove_beside_data_dir(lab, "etcd.quorate-")?;
    Ok(figures)
}

/// Polls every apiserver's `/readyz` until the coordinator has exited and all are ready (or
/// 180 s after its exit); (when, all ready).
async fn poll_readyz<T>(lab: &Lab, task: &tokio::task::JoinHandle<T>) -> Vec<(Instant, bool)> {
    let stacked = lab.state.runtime == LabRuntime::StaticPod;
    let hosts: Vec<_> = lab
        .hosts()
        .iter()
        .filter(|_| stacked)
        .chain(lab.state.apiservers.iter().map(|a| &a.host))
        .collect();
    let mut samples = Vec::new();
    let mut finished_at: Option<Instant> = None;
    loop {
        let t = Instant::now();
        let answers =
            futures::future::join_all(hosts.iter().map(|h| lab.apiserver_readyz(h))).await;
        let ready = answers.iter().all(|a| *a == Some(200));
        samples.push((t, ready));
        if task.is_finished() {
            let since = *finished_at.get_or_insert(t);
            if ready || since.elapsed() > Duration::from_secs(180) {
                return samples;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs the coordinator, sampling its VmHWM every 20 ms and timing its FENCE announcement.
fn run_sampled(mut cmd: Command) -> anyhow::Result<Run> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting quorate")?;
    let pid = child.id();
    let fence_at: Arc<Mutex<Option<Instant>>> = Arc::default();
    let stdout = child.stdout.take().context("quorate's stdout")?;
    let mut stderr = child.stderr.take().context("quorate's stderr")?;
    let seen = Arc::clone(&fence_at);
    // Read as it comes (a full pipe would stall the coordinator), timing each line.
    let out_thread = std::thread::spawn(move || {
        let mut text = String::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                && v["event"] == "phase-started"
                && v["phase"] == "fence"
                && let Ok(mut at) = seen.lock()
            {
                at.get_or_insert_with(Instant::now);
            }
            text.push_str(&line);
            text.push('\n');
        }
        text
    });
    let err_thread = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    });
    let mut peak = 0;
    let (status, ended) = loop {
        if let Some(kib) = vm_hwm_kib(pid) {
            peak = peak.max(kib);
        }
        if let Some(status) = child.try_wait()? {
            break (status, Instant::now());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = out_thread.join().unwrap_or_default();
    let stderr = err_thread.join().unwrap_or_default();
    let fence_at = fence_at.lock().map(|g| *g).unwrap_or(None);
    Ok(Run {
        status,
        stdout,
        stderr,
        peak_kib: peak,
        fence_at,
        ended,
    })
}

/// A process's peak resident memory (VmHWM), in KiB.
fn vm_hwm_kib(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}
