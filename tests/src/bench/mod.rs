//! `lab bench`: the restore as the field measures it. For each member count it makes its own lab
//! (`lab up`, hosts as namespaces), loads Kubernetes-shaped keys, saves a snapshot per size, and
//! then measures per run, in that one run:
//!
//! - quorate ([`quorate`]): `quorate restore`, its phases, the **API-down window** (from the
//!   FENCE phase's start to every apiserver answering `/readyz` 200 again, polled from the
//!   bastion), and the peak RSS (VmHWM) of the coordinator and of one agent;
//! - the floor ([`floor`]): etcd's own best: every member's `etcdutl snapshot restore` in parallel,
//!   then a rolling cold start (each member started as soon as the previous one answers on its
//!   metrics `/health`), with kubeadm's `--experimental-initial-corrupt-check=true` and without;
//! - the runbook ([`runbook`]): the published manual procedure, member by member over SSH, with
//!   an sshd in every lab host ([`sshd`]).
//!
//! Nothing here asserts a time: this is a measurement, never a test.

mod floor;
mod quorate;
mod runbook;
pub mod sshd;
mod table;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;

use crate::etcd::member_client;
use crate::lab::{Lab, UpOptions};
use crate::tools::EtcdVersion;
use crate::{load, scenario};

pub use table::render;

/// The snapshot sizes to measure: key counts, or megabytes (turned into key counts at the
/// issue's measured density: 100,000 keys made a 354 MB snapshot).
#[derive(Debug, Clone)]
pub enum Sizes {
    Keys(Vec<usize>),
    Megabytes(Vec<u64>),
}

impl Sizes {
    /// Key counts, ascending (a lab's keys grow from one size to the next).
    fn keys(&self) -> Vec<usize> {
        let mut keys: Vec<usize> = match self {
            Self::Keys(k) => k.clone(),
            Self::Megabytes(mb) => mb
                .iter()
                .map(|m| usize::try_from(m * 100_000 / 354).unwrap_or(usize::MAX))
                .collect(),
        };
        keys.sort_unstable();
        keys.dedup();
        keys
    }
}

/// What `lab bench` is asked to measure.
#[derive(Debug, Clone)]
pub struct Options {
    /// Member counts, one lab each.
    pub members: Vec<u8>,
    pub sizes: Sizes,
    /// Runs per (members, size).
    pub runs: usize,
    pub version: EtcdVersion,
    /// Where the labs, snapshots and SSH keys go (removed at the end; kept on failure, with
    /// the logs).
    pub dir: PathBuf,
    /// One JSON object per run on stdout (the table then goes to stderr).
    pub json: bool,
    /// How often the runbook re-checks (etcd gone, `endpoint health`): its `sleep`.
    pub runbook_poll: Duration,
}

/// The figures of one run: one (members, size, run).
#[derive(Debug, Clone, Serialize)]
pub struct Figures {
    pub members: usize,
    pub keys: usize,
    pub snapshot_bytes: u64,
    pub run: usize,
    pub etcd: String,
    pub quorate: quorate::QuorateFigures,
    pub floor: floor::FloorFigures,
    pub runbook: runbook::RunbookFigures,
    pub ratios: Ratios,
}

/// The comparisons the targets are written in.
#[derive(Debug, Clone, Serialize)]
pub struct Ratios {
    /// quorate's API-down window over the floor with kubeadm's corrupt check.
    pub api_down_over_floor: f64,
    /// The runbook's total over quorate's total.
    pub runbook_over_quorate: f64,
    /// The runbook's API-down window over quorate's.
    pub runbook_api_down_over_quorate: f64,
}

/// Runs the bench; prints a JSON line per run as it ends (with `json`), returns every run's
/// figures.
pub async fn run(opts: &Options) -> anyhow::Result<Vec<Figures>> {
    if !crate::hostns::available() {
        bail!(
            "lab bench runs the runbook over SSH into lab hosts that are namespaces: run it as root (and without QUORATE_LAB_FLAT)"
        );
    }
    sshd::check_installed()?;
    if opts.members.is_empty() || opts.runs == 0 {
        bail!("nothing to measure: give --members and --runs ≥ 1");
    }
    std::fs::create_dir_all(&opts.dir)
        .with_context(|| format!("creating {}", opts.dir.display()))?;
    let snapshots = opts.dir.join("snapshots");
    std::fs::create_dir_all(&snapshots)?;
    let keys = opts.sizes.keys();
    let mut all = Vec::new();
    for &members in &opts.members {
        let lab_dir = opts.dir.join(format!("lab-{members}"));
        let (net, _slot) = crate::testlab::take_net_slot();
        let mut up = UpOptions::new(lab_dir.clone(), members, opts.version, net)?;
        up.patience = Duration::from_secs(120);
        let started = Instant::now();
        let lab = Lab::up(&up).await?;
        eprintln!(
            "bench: lab of {members} members up at 127.0.{net}.x in {:.1?}",
            started.elapsed()
        );
        let mut guard = LabGuard { lab: Some(lab) };
        let measured = measure_lab(guard.lab_mut(), opts, &keys, &snapshots, &mut all).await;
        let down = guard.down();
        measured.with_context(|| {
            format!(
                "bench on {members} members (logs kept in {})",
                lab_dir.display()
            )
        })?;
        down?;
        std::fs::remove_dir_all(&lab_dir)
            .with_context(|| format!("removing {}", lab_dir.display()))?;
    }
    std::fs::remove_dir_all(&snapshots)?;
    // The dir itself only if nothing else is in it.
    let _ = std::fs::remove_dir(&opts.dir);
    Ok(all)
}

/// A lab the bench made: taken down when dropped (an error or a panic halfway included).
struct LabGuard {
    lab: Option<Lab>,
}

impl LabGuard {
    fn lab_mut(&mut self) -> &mut Lab {
        self.lab.as_mut().expect("the lab is up until down()")
    }

    fn down(&mut self) -> anyhow::Result<()> {
        match self.lab.take() {
            Some(mut lab) => lab.down(),
            None => Ok(()),
        }
    }
}

impl Drop for LabGuard {
    fn drop(&mut self) {
        if let Err(e) = self.down() {
            eprintln!("bench: lab down left things behind: {e:#}");
        }
    }
}

/// Every size and run on one lab, with an sshd on each of its hosts for the runbook.
async fn measure_lab(
    lab: &mut Lab,
    opts: &Options,
    keys: &[usize],
    snapshots: &Path,
    all: &mut Vec<Figures>,
) -> anyhow::Result<()> {
    let ssh = sshd::Sshd::start(lab, &opts.dir.join(format!("ssh-{}", lab.hosts().len())))?;
    let result = async {
        for &k in keys {
            let snapshot = ensure_snapshot(lab, snapshots, k).await?;
            let snapshot_bytes = std::fs::metadata(&snapshot)?.len();
            for run in 1..=opts.runs {
                let figures = one_run(lab, &ssh, opts, &snapshot, k, snapshot_bytes, run).await?;
                if opts.json {
                    println!("{}", serde_json::to_string(&figures)?);
                }
                eprintln!("{}", table::one_line(&figures));
                all.push(figures);
            }
        }
        anyhow::Ok(())
    }
    .await;
    let stopped = ssh.stop();
    result?;
    stopped
}

/// The snapshot of `keys` keys: made once (in the first lab, whose keys grow from one size to
/// the next), then used by every lab. Its data is the same whatever lab restores it.
async fn ensure_snapshot(lab: &Lab, dir: &Path, keys: usize) -> anyhow::Result<PathBuf> {
    let path = dir.join(format!("{keys}.db"));
    if path.is_file() {
        return Ok(path);
    }
    let cp1 = lab.hosts()[0].clone();
    let client = member_client(&cp1.client_url(), &lab.etcd_tls()).await?;
    // The keys of the largest snapshot made so far are in the lab (it holds that snapshot's
    // data, restored): write only the rest.
    let have = std::fs::read_dir(dir)?
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_suffix(".db")?
                .parse::<usize>()
                .ok()
        })
        .filter(|k| *k < keys)
        .max()
        .unwrap_or(0);
    let started = Instant::now();
    let report = load::load_from(&client, have, keys, SEED).await?;
    let partial = path.with_extension("db.partial");
    scenario::save_snapshot(lab, &cp1, &partial)?;
    std::fs::rename(&partial, &path)?;
    eprintln!(
        "bench: loaded {} keys ({:.1} MB of values) in {:.1?}; snapshot of {keys} keys: {:.1} MB",
        report.keys,
        report.bytes as f64 / 1e6,
        started.elapsed(),
        std::fs::metadata(&path)?.len() as f64 / 1e6
    );
    Ok(path)
}

/// The seed of the bench's keys.
const SEED: u64 = 13;

/// One run: the floor, the runbook, then quorate, each from a healthy lab.
async fn one_run(
    lab: &mut Lab,
    ssh: &sshd::Sshd,
    opts: &Options,
    snapshot: &Path,
    keys: usize,
    snapshot_bytes: u64,
    run: usize,
) -> anyhow::Result<Figures> {
    let patience = Duration::from_secs(180);
    let floor = floor::measure(lab, snapshot)
        .await
        .context("measuring the floor")?;
    lab.wait_ready(patience).await?;
    let runbook = runbook::measure(lab, ssh, snapshot, opts.runbook_poll)
        .await
        .context("running the runbook over SSH")?;
    lab.wait_ready(patience).await?;
    let quorate = quorate::measure(lab, snapshot)
        .await
        .context("measuring quorate restore")?;
    lab.wait_ready(patience).await?;
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
    let ratios = Ratios {
        api_down_over_floor: ratio(quorate.api_down_seconds, floor.with_check_seconds),
        runbook_over_quorate: ratio(runbook.total_seconds, quorate.total_seconds),
        runbook_api_down_over_quorate: ratio(runbook.api_down_seconds, quorate.api_down_seconds),
    };
    Ok(Figures {
        members: lab.hosts().len(),
        keys,
        snapshot_bytes,
        run,
        etcd: lab.state.tools.full_version.clone(),
        quorate,
        floor,
        runbook,
        ratios,
    })
}

/// Removes what a restore left beside a host's data dir (`<data-dir>.<suffix>*`: preserved
/// originals, runbook backups), so that runs do not fill the disk.
fn remove_beside_data_dir(lab: &Lab, prefix: &str) -> anyhow::Result<()> {
    for host in lab.hosts() {
        let parent = host.path("var/lib");
        for entry in std::fs::read_dir(&parent)?.flatten() {
            if entry.file_name().to_string_lossy().starts_with(prefix) {
                std::fs::remove_dir_all(entry.path())
                    .with_context(|| format!("removing {}", entry.path().display()))?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::Sizes;

    #[test]
    fn sizes_in_megabytes_become_key_counts_at_the_measured_density_ascending() {
        // The figure: 100,000 keys made a 354 MB snapshot.
        assert_eq!(
            Sizes::Megabytes(vec![1024, 354, 10]).keys(),
            vec![2824, 100_000, 289_265]
        );
        assert_eq!(
            Sizes::Keys(vec![5000, 2000, 5000]).keys(),
            vec![2000, 5000],
            "a lab's keys grow from one size to the next: ascending, each once"
        );
    }
}
