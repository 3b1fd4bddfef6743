//! A kubelet stand-in: runs a node's static pods as plain child processes.
//!
//! It watches `<root>/etc/kubernetes/manifests/` like the kubelet's file source: every `.yaml`,
//! `.yml` or `.json` file whose name does not start with `.` is a pod that should run. As with the
//! real kubelet, a missing directory means "no static pods". Each pod runs `command + args` of its
//! first container in its own process group, with its output appended to
//! `<root>/var/log/pods/<name>.log` and its pid in `<root>/run/pods/<name>.pid` while it runs.
//!
//! - manifest removed: SIGTERM to the pod's process group, SIGKILL after its grace period;
//! - manifest changed: stopped as above, then started again once reaped;
//! - process exited by itself: restarted after a back-off (1 s doubling to 10 s, reset once a run
//!   lasted 30 s).
//!
//! When a pod's main process ends, what is left of its process group is killed, as a container
//! runtime does when a container's init process dies. The kubelet itself knows nothing about etcd.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde::Deserialize;
use tokio::process::{Child, Command};

const POLL: Duration = Duration::from_millis(200);
const DEFAULT_GRACE: Duration = Duration::from_secs(30);
const BACKOFF_INITIAL: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
const BACKOFF_RESET_AFTER: Duration = Duration::from_secs(30);
/// How long to wait for a process to be reaped after SIGKILL before giving up on it.
const KILL_PATIENCE: Duration = Duration::from_secs(5);

/// Where a node keeps container images, under its root (the default of `--images`).
pub const IMAGES_DIR: &str = "var/lib/containerd/lab-images";

/// Runs the static pods under `root` until the kubelet gets SIGTERM or SIGINT, then stops them
/// all. Images are looked up in `images` (default `<root>/var/lib/containerd/lab-images`).
pub async fn run(root: &Path, images: Option<&Path>) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    run_until(root, images, async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: stopping all pods"),
            _ = int.recv() => tracing::info!("SIGINT: stopping all pods"),
        }
    })
    .await
}

/// Runs the static pods under `root` until `shutdown` completes, then stops them all (each with
/// SIGTERM, then SIGKILL after its grace period) and removes their pid files.
pub async fn run_until(
    root: &Path,
    images: Option<&Path>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let mut kubelet = Kubelet::new(Layout::new(root, images))?;
    tracing::info!(manifests = %kubelet.layout.manifests.display(), "kubelet watching");
    tokio::pin!(shutdown);
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            _ = tick.tick() => kubelet.reconcile(Instant::now()),
        }
    }
    kubelet.shutdown().await;
    Ok(())
}

/// A static pod as this stand-in runs it, parsed from a Kubernetes Pod manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pod {
    name: String,
    /// The container image; its root file system is where `program` is looked up.
    image: Option<String>,
    program: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
    grace: Duration,
}

/// The parts of a Pod manifest the stand-in uses. Unknown fields are ignored on purpose: these
/// are real Kubernetes manifests, full of fields that only matter to a container runtime.
#[derive(Deserialize)]
struct Manifest {
    kind: Option<String>,
    metadata: Metadata,
    spec: Spec,
}

#[derive(Deserialize)]
struct Metadata {
    name: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Spec {
    termination_grace_period_seconds: Option<u64>,
    containers: Vec<Container>,
}

#[derive(Deserialize)]
struct Container {
    image: Option<String>,
    command: Option<Vec<String>>,
    args: Option<Vec<String>>,
    env: Option<Vec<EnvVar>>,
}

#[derive(Deserialize)]
struct EnvVar {
    name: String,
    value: Option<String>,
}

impl Pod {
    fn parse(file_name: &str, text: &[u8]) -> anyhow::Result<Self> {
        let manifest: Manifest = if file_name.ends_with(".json") {
            serde_json::from_slice(text)?
        } else {
            serde_yaml_ng::from_slice(text)?
        };
        if let Some(kind) = manifest.kind.as_deref().filter(|k| *k != "Pod") {
            anyhow::bail!("kind is {kind}, expected Pod");
        }
        let name = manifest.metadata.name;
        check_name(&name)?;
        let container = manifest
            .spec
            .containers
            .into_iter()
            .next()
            .context("spec.containers is empty")?;
        let image = container.image;
        let mut command = container.command.unwrap_or_default().into_iter();
        let program = command
            .next()
            .context("containers[0].command is empty (image entrypoints are not supported)")?;
        let args = command.chain(container.args.unwrap_or_default()).collect();
        let env = container
            .env
            .unwrap_or_default()
            .into_iter()
            .map(|e| (e.name, e.value.unwrap_or_default()))
            .collect();
        let grace = manifest
            .spec
            .termination_grace_period_seconds
            .map_or(DEFAULT_GRACE, Duration::from_secs);
        Ok(Self {
            name,
            image,
            program,
            args,
            env,
            grace,
        })
    }

    fn command_line(&self) -> String {
        std::iter::once(&self.program)
            .chain(&self.args)
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// The pod name becomes a file name under the log and pid directories: it must not escape them.
fn check_name(name: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'));
    anyhow::ensure!(ok, "metadata.name {name:?} is not a valid pod name");
    Ok(())
}

fn is_manifest(file_name: &str) -> bool {
    !file_name.starts_with('.')
        && [".yaml", ".yml", ".json"]
            .iter()
            .any(|ext| file_name.ends_with(ext))
}

fn content_hash(bytes: &[u8]) -> u64 {
    let mut hasher = DefaultHasher::new();
    bytes.hash(&mut hasher);
    hasher.finish()
}

/// Where the kubelet reads manifests and writes logs and pid files.
struct Layout {
    manifests: PathBuf,
    /// Container images' root file systems (see [`image_rootfs`]).
    images: PathBuf,
    logs: PathBuf,
    pids: PathBuf,
}

impl Layout {
    fn new(root: &Path, images: Option<&Path>) -> Self {
        Self {
            manifests: root.join("etc/kubernetes/manifests"),
            images: images.map_or_else(|| root.join(IMAGES_DIR), Path::to_owned),
            logs: root.join("var/log/pods"),
            pids: root.join("run/pods"),
        }
    }

    fn log_path(&self, name: &str) -> PathBuf {
        self.logs.join(format!("{name}.log"))
    }

    fn pid_path(&self, name: &str) -> PathBuf {
        self.pids.join(format!("{name}.pid"))
    }

    fn open_log(&self, name: &str) -> std::io::Result<std::fs::File> {
        std::fs::create_dir_all(&self.logs)?;
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(name))
    }

    /// Logs a pod event, also into the pod's log.
    fn info(&self, pod: &str, message: &str) {
        tracing::info!(pod, "{message}");
        self.note(pod, message);
    }

    /// Logs a pod event that needs attention, also into the pod's log.
    fn warn(&self, pod: &str, message: &str) {
        tracing::warn!(pod, "{message}");
        self.note(pod, message);
    }

    /// Appends a kubelet line to the pod's log, next to the pod's own output.
    fn note(&self, name: &str, message: &str) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let line = format!(
            "--- kubelet [{}.{:03}]: {message}\n",
            now.as_secs(),
            now.subsec_millis()
        );
        let written = self
            .open_log(name)
            .and_then(|mut f| f.write_all(line.as_bytes()));
        if let Err(e) = written {
            tracing::warn!(
                pod = name,
                "cannot write to {}: {e}",
                self.log_path(name).display()
            );
        }
    }

    /// Writes the pid file through a temporary file, so a reader never sees half a pid.
    fn write_pid(&self, name: &str, pid: u32) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.pids)?;
        let tmp = self.pids.join(format!(".{name}.pid.tmp"));
        std::fs::write(&tmp, format!("{pid}\n"))?;
        std::fs::rename(&tmp, self.pid_path(name))
    }

    fn remove_pid(&self, name: &str) {
        let path = self.pid_path(name);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(pod = name, "cannot remove {}: {e}", path.display()),
        }
    }

    /// Manifest contents by file name, or `None` when the directory cannot be listed for a reason
    /// other than its absence (then nothing should change this round).
    fn read_manifests(&self) -> Option<BTreeMap<String, Vec<u8>>> {
        let entries = match std::fs::read_dir(&self.manifests) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Some(BTreeMap::new()),
            Err(e) => {
                tracing::warn!("cannot list {}: {e}", self.manifests.display());
                return None;
            }
        };
        let mut files = BTreeMap::new();
        for entry in entries.flatten() {
            let Ok(file_name) = entry.file_name().into_string() else {
                continue;
            };
            if !is_manifest(&file_name) {
                continue;
            }
            // A file removed since the listing is simply not there any more.
            if let Ok(bytes) = std::fs::read(entry.path()) {
                files.insert(file_name, bytes);
            }
        }
        Some(files)
    }
}

/// What one manifest file asks for.
struct Desired {
    hash: u64,
    pod: Pod,
}

/// A pod whose manifest is present, running or waiting to be restarted.
struct Slot {
    pod: Pod,
    hash: u64,
    /// The delay before the next restart.
    backoff: Duration,
    state: State,
}

enum State {
    Running(Running),
    Waiting { until: Instant },
}

/// A live process of a pod.
struct Running {
    child: Child,
    pid: u32,
    started_at: Instant,
}

/// A pod being stopped: SIGTERM sent, SIGKILL due at `deadline`.
struct Stopping {
    name: String,
    child: Child,
    pid: u32,
    deadline: Instant,
    killed_at: Option<Instant>,
}

struct Kubelet {
    layout: Layout,
    /// By manifest file name.
    slots: BTreeMap<String, Slot>,
    stopping: Vec<Stopping>,
    /// Manifests already reported as unusable, by file name, with the content hash reported.
    rejected: HashMap<String, u64>,
}

impl Kubelet {
    fn new(layout: Layout) -> anyhow::Result<Self> {
        for dir in [&layout.logs, &layout.pids] {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        Ok(Self {
            layout,
            slots: BTreeMap::new(),
            stopping: Vec::new(),
            rejected: HashMap::new(),
        })
    }

    fn reconcile(&mut self, now: Instant) {
        self.reap_stopping(now);
        for slot in self.slots.values_mut() {
            slot.check_exit(&self.layout, now);
        }
        let Some(files) = self.layout.read_manifests() else {
            return;
        };
        let desired = self.desired(files);
        let stale: Vec<String> = self
            .slots
            .iter()
            .filter(|(file, slot)| desired.get(*file).map(|d| d.hash) != Some(slot.hash))
            .map(|(file, _)| file.clone())
            .collect();
        for file in stale {
            let slot = self
                .slots
                .remove(&file)
                .expect("file was listed from slots");
            let why = if desired.contains_key(&file) {
                "manifest changed"
            } else {
                "manifest removed"
            };
            self.stop(slot, now, why);
        }
        for (file, want) in desired {
            // A pod being stopped still holds its name (pid file, ports): wait for it.
            if self.stopping.iter().any(|s| s.name == want.pod.name) {
                continue;
            }
            match self.slots.get_mut(&file) {
                Some(slot) => slot.restart_if_due(&self.layout, now),
                None => {
                    let slot = Slot::start(&self.layout, want, now);
                    self.slots.insert(file, slot);
                }
            }
        }
    }

    /// Parses the manifests, reporting each unusable one once per content.
    fn desired(&mut self, files: BTreeMap<String, Vec<u8>>) -> BTreeMap<String, Desired> {
        self.rejected.retain(|file, _| files.contains_key(file));
        let mut desired: BTreeMap<String, Desired> = BTreeMap::new();
        for (file, bytes) in files {
            let hash = content_hash(&bytes);
            let parsed = Pod::parse(&file, &bytes).and_then(|pod| {
                match desired.iter().find(|(_, d)| d.pod.name == pod.name) {
                    Some((other, _)) => {
                        anyhow::bail!("pod name {} is already used by {other}", pod.name)
                    }
                    None => Ok(pod),
                }
            });
            match parsed {
                Ok(pod) => {
                    self.rejected.remove(&file);
                    desired.insert(file, Desired { hash, pod });
                }
                Err(e) => {
                    if self.rejected.insert(file.clone(), hash) != Some(hash) {
                        let path = self.layout.manifests.join(&file);
                        tracing::warn!("ignoring manifest {}: {e:#}", path.display());
                    }
                }
            }
        }
        desired
    }

    /// Sends SIGTERM to the pod's process group (SIGKILL at once with a zero grace period).
    fn stop(&mut self, slot: Slot, now: Instant, why: &str) {
        let State::Running(running) = slot.state else {
            return;
        };
        let name = slot.pod.name;
        let grace = slot.pod.grace;
        let pid = running.pid;
        let (signal, killed_at) = if grace.is_zero() {
            (Signal::SIGKILL, Some(now))
        } else {
            (Signal::SIGTERM, None)
        };
        let message = format!("stopping pid {pid} ({why}): {signal}, grace {grace:?}");
        self.layout.info(&name, &message);
        signal_group(pid, signal);
        self.stopping.push(Stopping {
            name,
            child: running.child,
            pid,
            deadline: now + grace,
            killed_at,
        });
    }

    /// Reaps stopped pods; sends SIGKILL to those past their grace period.
    fn reap_stopping(&mut self, now: Instant) {
        let layout = &self.layout;
        self.stopping.retain_mut(|s| match s.child.try_wait() {
            Ok(Some(status)) => {
                reaped(layout, &s.name, s.pid);
                layout.info(&s.name, &format!("stopped pid {} ({status})", s.pid));
                false
            }
            Ok(None) => match s.killed_at {
                None if now >= s.deadline => {
                    let message = format!("grace period over: SIGKILL to pid {}", s.pid);
                    layout.warn(&s.name, &message);
                    signal_group(s.pid, Signal::SIGKILL);
                    s.killed_at = Some(now);
                    true
                }
                Some(killed_at) if now >= killed_at + KILL_PATIENCE => {
                    let message = format!(
                        "pid {} not reaped {KILL_PATIENCE:?} after SIGKILL; leaving it and its pid file",
                        s.pid
                    );
                    layout.warn(&s.name, &message);
                    false
                }
                _ => true,
            },
            Err(e) => {
                tracing::error!(pod = %s.name, pid = s.pid, "cannot wait for the process: {e}");
                false
            }
        });
    }

    /// Stops every pod concurrently and waits until all are reaped.
    async fn shutdown(mut self) {
        let now = Instant::now();
        for (_, slot) in std::mem::take(&mut self.slots) {
            self.stop(slot, now, "kubelet shutting down");
        }
        while !self.stopping.is_empty() {
            tokio::time::sleep(Duration::from_millis(50)).await;
            self.reap_stopping(Instant::now());
        }
        tracing::info!("kubelet stopped all pods");
    }
}

impl Slot {
    /// Starts a pod from its manifest; a pod that cannot start waits for a retry like a crash.
    fn start(layout: &Layout, want: Desired, now: Instant) -> Self {
        let mut slot = Self {
            pod: want.pod,
            hash: want.hash,
            backoff: BACKOFF_INITIAL,
            state: State::Waiting { until: now },
        };
        slot.launch(layout, now, "started");
        slot
    }

    fn restart_if_due(&mut self, layout: &Layout, now: Instant) {
        if matches!(self.state, State::Waiting { until } if now >= until) {
            self.launch(layout, now, "restarted");
        }
    }

    fn launch(&mut self, layout: &Layout, now: Instant, verb: &str) {
        let name = &self.pod.name;
        match spawn(layout, &self.pod) {
            Ok(running) => {
                let pid = running.pid;
                layout.info(
                    name,
                    &format!("{verb} pid {pid}: {}", self.pod.command_line()),
                );
                if let Err(e) = layout.write_pid(name, pid) {
                    tracing::warn!(pod = %name, pid, "cannot write the pid file: {e}");
                }
                self.state = State::Running(running);
            }
            Err(e) => {
                let delay = next_delay(&mut self.backoff);
                layout.warn(
                    name,
                    &format!("cannot start ({e:#}); retrying in {delay:?}"),
                );
                self.state = State::Waiting { until: now + delay };
            }
        }
    }

    /// Notices a process that exited by itself and schedules its restart.
    fn check_exit(&mut self, layout: &Layout, now: Instant) {
        let State::Running(running) = &mut self.state else {
            return;
        };
        let status = match running.child.try_wait() {
            Ok(Some(status)) => status,
            Ok(None) => return,
            Err(e) => {
                tracing::error!(pod = %self.pod.name, "cannot wait for the process: {e}");
                return;
            }
        };
        let pid = running.pid;
        let ran = now.saturating_duration_since(running.started_at);
        reaped(layout, &self.pod.name, pid);
        if ran >= BACKOFF_RESET_AFTER {
            self.backoff = BACKOFF_INITIAL;
        }
        let delay = next_delay(&mut self.backoff);
        let message =
            format!("pid {pid} exited by itself ({status}) after {ran:?}; restarting in {delay:?}");
        layout.warn(&self.pod.name, &message);
        self.state = State::Waiting { until: now + delay };
    }
}

/// The delay before the next restart; doubles the following one, up to the maximum.
fn next_delay(backoff: &mut Duration) -> Duration {
    let delay = *backoff;
    *backoff = (delay * 2).min(BACKOFF_MAX);
    delay
}

/// Where an image's root file system is kept: `<images>/<registry>/<name>/<tag>/rootfs`.
pub fn image_rootfs(images: &Path, image: &str) -> anyhow::Result<PathBuf> {
    let (name, tag) = match image.rsplit_once(':') {
        Some((n, t)) if !t.contains('/') => (n, t),
        _ => (image, "latest"),
    };
    let ok = |s: &str| {
        !s.is_empty()
            && s.split('/')
                .all(|part| !part.is_empty() && part != "." && part != "..")
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '/'))
    };
    anyhow::ensure!(
        ok(name) && ok(tag),
        "image {image:?} is not a valid reference"
    );
    Ok(images.join(name).join(tag).join("rootfs"))
}

/// The program a container runs, as a container runtime finds it: `command[0]` looked up in the
/// image's root file system (its PATH when the name has no slash). A pod without an image runs
/// its command on the host as it is.
fn resolve(images: &Path, pod: &Pod) -> anyhow::Result<PathBuf> {
    let Some(image) = &pod.image else {
        return Ok(PathBuf::from(&pod.program));
    };
    let rootfs = image_rootfs(images, image)?;
    let program = Path::new(&pod.program);
    // A test pod naming a host binary by its absolute path runs it from the host.
    if program.is_absolute() && !rootfs.exists() {
        return Ok(program.to_owned());
    }
    anyhow::ensure!(
        rootfs.is_dir(),
        "image {image} is not present on this node (ErrImageNeverPull: no {})",
        rootfs.display()
    );
    let candidates: Vec<PathBuf> = if program.is_absolute() {
        vec![rootfs.join(program.strip_prefix("/").unwrap_or(program))]
    } else if pod.program.contains('/') {
        anyhow::bail!("command {} is relative to no working dir", pod.program)
    } else {
        [
            "usr/local/sbin",
            "usr/local/bin",
            "usr/sbin",
            "usr/bin",
            "sbin",
            "bin",
        ]
        .iter()
        .map(|d| rootfs.join(d).join(program))
        .collect()
    };
    candidates
        .into_iter()
        .find(|c| c.is_file())
        .with_context(|| {
            format!(
                "exec: {:?}: executable file not found in $PATH of image {image}",
                pod.program
            )
        })
}

fn spawn(layout: &Layout, pod: &Pod) -> anyhow::Result<Running> {
    let program = resolve(&layout.images, pod)?;
    let log = layout
        .open_log(&pod.name)
        .with_context(|| format!("opening {}", layout.log_path(&pod.name).display()))?;
    // A container starts with its image's PATH and its pod's env, nothing of the kubelet's.
    let child = Command::new(&program)
        .arg0(&pod.program)
        .env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .args(&pod.args)
        .envs(pod.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(log.try_clone().context("duplicating the log file handle")?)
        .stderr(log)
        .process_group(0)
        .kill_on_drop(false)
        .spawn()
        .with_context(|| format!("running {}", pod.program))?;
    let pid = child.id().context("the new process has no pid")?;
    Ok(Running {
        child,
        pid,
        started_at: Instant::now(),
    })
}

/// Cleans up after a reaped pod process: kills what is left of its group, removes its pid file.
fn reaped(layout: &Layout, name: &str, pid: u32) {
    signal_group(pid, Signal::SIGKILL);
    layout.remove_pid(name);
}

/// Signals the process group led by `pid` (each pod is started as its own group leader).
fn signal_group(pid: u32, signal: Signal) {
    let Ok(raw) = i32::try_from(pid) else {
        return;
    };
    match killpg(Pid::from_raw(raw), signal) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
        Err(e) => tracing::warn!(pid, "cannot send {signal} to process group: {e}"),
    }
}

/// When the kubelet logged `verb` ("started", "stopped") for `pid` in a pod's log (its notes read
/// `--- kubelet [secs.millis]: stopped pid N (...)`), in seconds since the epoch; `None` when it
/// did not.
pub fn logged_at(log: &Path, verb: &str, pid: u32) -> anyhow::Result<Option<f64>> {
    let text = std::fs::read_to_string(log)
        .with_context(|| format!("reading the pod log {}", log.display()))?;
    let wanted = format!("]: {verb} pid {pid}");
    Ok(text
        .lines()
        .filter_map(|l| l.strip_prefix("--- kubelet ["))
        .filter(|l| {
            l.split_once(&wanted)
                .is_some_and(|(_, rest)| !rest.starts_with(|c: char| c.is_ascii_digit()))
        })
        .find_map(|l| l.split(']').next()?.parse::<f64>().ok()))
}

#[cfg(test)]
#[path = "kubelet_tests.rs"]
mod tests;
