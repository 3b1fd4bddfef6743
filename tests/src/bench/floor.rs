//! The floor: etcd's own best restore, measured on the lab's hosts with the lab's control plane
//! stopped. Every member's `snapshot restore` in parallel, then a rolling cold start: each
//! member started (etcd alone, as the kubelet would run it from kubeadm's manifest) as soon as
//! the previous one gives any HTTP answer on its metrics `/health` (a 503 counts: the listener
//! appears only after the corrupt check), until every member is healthy. Once with kubeadm's
//! `--experimental-initial-corrupt-check=true`, once without.
//!
//! One flag differs from kubeadm's: `--listen-metrics-urls` also listens on the host's address,
//! so that the bench (outside the hosts) can probe it; that costs etcd nothing.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;

use crate::lab::Lab;
use crate::layout::{self, ClusterState, Host, METRICS_PORT};
use crate::procs;

/// The floor of one run.
#[derive(Debug, Clone, Serialize)]
pub struct FloorFigures {
    /// Every member's `snapshot restore`, in parallel (wall clock), before the start with the
    /// corrupt check (the start without it has a restore of its own, in its total).
    pub restore_seconds: f64,
    /// First start to every member healthy, with kubeadm's corrupt check.
    pub cold_start_check_seconds: f64,
    /// ... without it (after a fresh restore: a started data dir is not a restored one).
    pub cold_start_no_check_seconds: f64,
    /// restore + cold start, with the check (what a kubeadm cluster can at best do).
    pub with_check_seconds: f64,
    /// restore + cold start, without the check.
    pub without_check_seconds: f64,
}

/// Where the floor restores to, beside the data dir.
const SCRATCH: &str = "var/lib/etcd-floor";

/// Stops the lab's etcd and apiservers (manifests aside, not timed), measures, and puts them
/// back (also on failure).
pub async fn measure(lab: &Lab, snapshot: &Path) -> anyhow::Result<FloorFigures> {
    for host in lab.hosts() {
        lab.remove_manifest(host, "kube-apiserver")?;
        lab.remove_manifest(host, "etcd")?;
    }
    let measured = async {
        wait_ports_closed(lab).await?;
        let (restore, check) = cold_start(lab, snapshot, true, "floor-check").await?;
        let (restore_2, no_check) = cold_start(lab, snapshot, false, "floor-nocheck").await?;
        anyhow::Ok(FloorFigures {
            restore_seconds: restore.as_secs_f64(),
            cold_start_check_seconds: check.as_secs_f64(),
            cold_start_no_check_seconds: no_check.as_secs_f64(),
            with_check_seconds: (restore + check).as_secs_f64(),
            without_check_seconds: (restore_2 + no_check).as_secs_f64(),
        })
    }
    .await;
    for host in lab.hosts() {
        lab.restore_manifest(host, "etcd")?;
    }
    for host in lab.hosts() {
        lab.restore_manifest(host, "kube-apiserver")?;
    }
    measured
}

/// Waits until no member's client, peer or metrics port, nor its apiserver, is listening.
async fn wait_ports_closed(lab: &Lab) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    for host in lab.hosts() {
        for port in [
            layout::CLIENT_PORT,
            layout::PEER_PORT,
            layout::APISERVER_PORT,
        ] {
            while procs::port_open(host.ip, port) {
                if Instant::now() > deadline {
                    bail!(
                        "{}:{port} on {} still listening 60 s after its manifest was moved aside",
                        host.ip,
                        host.name
                    );
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    Ok(())
}

/// One restore (parallel) and rolling cold start; returns (restore, cold start). The members
/// are stopped and their scratch dirs removed before it returns.
async fn cold_start(
    lab: &Lab,
    snapshot: &Path,
    check: bool,
    token: &str,
) -> anyhow::Result<(Duration, Duration)> {
    let token = format!("{token}-{}", std::process::id());
    let restore = restore_all(lab, snapshot, &token)?;
    let mut started = Started(Vec::new());
    let result = async {
        let t0 = Instant::now();
        for host in lab.hosts() {
            started.0.push(spawn_etcd(lab, host, check)?);
            let child = started.0.last_mut().expect("just pushed");
            wait_metrics_answer(host, child).await?;
        }
        for host in lab.hosts() {
            let deadline = Instant::now() + Duration::from_secs(120);
            while !lab.member_healthy(host).await {
                if Instant::now() > deadline {
                    bail!(
                        "floor: {}'s etcd is not healthy 120 s after its start; {}",
                        host.name,
                        procs::tail(&host.log_of("etcd-floor"), 6)
                    );
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        anyhow::Ok(t0.elapsed())
    }
    .await;
    drop(started);
    for host in lab.hosts() {
        let scratch = host.path(SCRATCH);
        if scratch.exists() {
            std::fs::remove_dir_all(&scratch)
                .with_context(|| format!("removing {}", scratch.display()))?;
        }
    }
    Ok((restore, result?))
}

/// The floor's etcd processes: killed (by PID) and reaped when dropped, also when the bench is
/// interrupted halfway.
struct Started(Vec<Child>);

impl Drop for Started {
    fn drop(&mut self) {
        for child in &self.0 {
            procs::signal(child.id(), nix::sys::signal::Signal::SIGKILL);
        }
        for child in &mut self.0 {
            let _ = child.wait();
        }
    }
}

/// Every member's `snapshot restore` into its scratch dir, all at once; the wall time.
fn restore_all(lab: &Lab, snapshot: &Path, token: &str) -> anyhow::Result<Duration> {
    let t0 = Instant::now();
    let results: Vec<anyhow::Result<()>> = std::thread::scope(|s| {
        let threads: Vec<_> = lab
            .hosts()
            .iter()
            .map(|host| s.spawn(move || restore_one(lab, host, snapshot, token)))
            .collect();
        threads
            .into_iter()
            .map(|t| {
                t.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a restore thread panicked")))
            })
            .collect()
    });
    let elapsed = t0.elapsed();
    results.into_iter().collect::<anyhow::Result<Vec<()>>>()?;
    Ok(elapsed)
}

fn restore_one(lab: &Lab, host: &Host, snapshot: &Path, token: &str) -> anyhow::Result<()> {
    let out_dir = host.path(SCRATCH);
    if out_dir.exists() {
        std::fs::remove_dir_all(&out_dir)?;
    }
    let tools = &lab.state.tools;
    let mut cmd = match &tools.etcdutl {
        Some(etcdutl) => std::process::Command::new(etcdutl),
        None => {
            let mut c = std::process::Command::new(&tools.etcdctl);
            c.env("ETCDCTL_API", "3");
            c
        }
    };
    let out = cmd
        .args(["snapshot", "restore"])
        .arg(snapshot)
        .arg("--data-dir")
        .arg(&out_dir)
        .args(restore_flags(lab, host, token))
        .output()
        .context("running snapshot restore")?;
    if !out.status.success() {
        bail!(
            "floor: snapshot restore for {} failed: {}",
            host.name,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// A member's identity flags of `snapshot restore`.
pub fn restore_flags(lab: &Lab, host: &Host, token: &str) -> Vec<String> {
    vec![
        format!("--name={}", host.name),
        format!("--initial-cluster={}", layout::initial_cluster(lab.hosts())),
        format!("--initial-cluster-token={token}"),
        format!("--initial-advertise-peer-urls={}", host.peer_url()),
    ]
}

/// The etcd image's binaries as a host sees them (what a container of the image runs).
pub fn image_bin(lab: &Lab, host: &Host, name: &str) -> anyhow::Result<PathBuf> {
    let images = Path::new("/").join(crate::kubelet::IMAGES_DIR);
    let rootfs = crate::kubelet::image_rootfs(&images, &layout::etcd_image(&lab.state.tools))?;
    let bin = rootfs.join("usr/local/bin").join(name);
    let outside = host.outside(&bin);
    if !outside.is_file() {
        bail!("{} has no {}", host.name, bin.display());
    }
    Ok(bin)
}

/// Starts etcd on `host` as kubeadm's manifest runs it, on the scratch dir.
fn spawn_etcd(lab: &Lab, host: &Host, check: bool) -> anyhow::Result<Child> {
    let tools = &lab.state.tools;
    let all = layout::initial_cluster(lab.hosts());
    let argv = host.etcd_command(tools, &all, ClusterState::New, None);
    let scratch = host.inner_str(SCRATCH);
    let flags: Vec<String> = argv[1..]
        .iter()
        .filter(|f| check || !f.starts_with("--experimental-initial-corrupt-check"))
        .map(|f| {
            if f.starts_with("--data-dir=") {
                format!("--data-dir={scratch}")
            } else if f.starts_with("--listen-metrics-urls=") {
                format!(
                    "--listen-metrics-urls={},http://{}:{METRICS_PORT}",
                    host.metrics_url(),
                    host.ip
                )
            } else {
                f.clone()
            }
        })
        .collect();
    let log = std::fs::File::create(host.log_of("etcd-floor"))?;
    let etcd = image_bin(lab, host, "etcd")?;
    let mut cmd = Lab::host_command(host, &etcd.display().to_string());
    cmd.args(&flags)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    cmd.spawn()
        .with_context(|| format!("floor: starting etcd on {}", host.name))
}

/// Waits until `host`'s etcd gives any HTTP answer on its metrics `/health`.
async fn wait_metrics_answer(host: &Host, child: &mut Child) -> anyhow::Result<()> {
    let url = format!("http://{}:{METRICS_PORT}/health", host.ip);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if quorate_proto::probe::get(&url, None, Duration::from_millis(500))
            .await
            .is_ok()
        {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            bail!(
                "floor: etcd on {} exited ({status}): {}",
                host.name,
                procs::tail(&host.log_of("etcd-floor"), 6)
            );
        }
        if Instant::now() > deadline {
            bail!(
                "floor: {}'s etcd gave no answer on {url} in 120 s",
                host.name
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
