//! Faults made with the real thing instead of failpoints: a restore run in the background while
//! the test damages a member, a tmpfs that fills up under a member's data dir, and a network
//! partition of one member's peer traffic (nftables). Every guard here undoes its fault when
//! dropped, also when the test fails.

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::faults;
use crate::lab::Lab;
use crate::layout::{self, Host};
use crate::procs;
use crate::testlab::{PATIENCE, TestLab};

/// True when running as root; otherwise prints the `SKIPPED:` line and returns false.
pub fn root_or_skip(what: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        true
    } else {
        eprintln!("SKIPPED: {what} needs root");
        false
    }
}

/// `quorate restore --yes --output json` running in the background. Its output is read by a
/// thread from the start, so a long run never blocks on a full pipe.
pub struct RestoreRun {
    started: Instant,
    output: Option<JoinHandle<std::io::Result<Output>>>,
}

impl RestoreRun {
    /// Starts the restore with the coordinator's `FAILPOINTS` (empty: none).
    pub fn start(lab: &Lab, snapshot: &Path, failpoints: &str) -> anyhow::Result<Self> {
        Self::start_with(lab, snapshot, failpoints, &[])
    }

    /// Like [`RestoreRun::start`], with more arguments (e.g. `--quorum-timeout 30s`).
    pub fn start_with(
        lab: &Lab,
        snapshot: &Path,
        failpoints: &str,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        let child = Command::new(crate::scenario::quorate_bin(lab))
            .args(["restore", "--yes", "--output", "json", "--inventory"])
            .arg(lab.dir().join("inventory.toml"))
            .arg("--snapshot")
            .arg(snapshot)
            .arg("--state-dir")
            .arg(faults::state_dir(lab))
            .args(extra)
            .env("FAILPOINTS", failpoints)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting quorate")?;
        Ok(Self {
            started: Instant::now(),
            output: Some(std::thread::spawn(move || child.wait_with_output())),
        })
    }

    /// `result`'s value; on an error, panics with `what`, the error and, when the coordinator
    /// has exited already (e.g. preflight refused), its output.
    pub fn expect<T>(&mut self, result: anyhow::Result<T>, what: &str) -> T {
        result.unwrap_or_else(|e| {
            let output = match self
                .output
                .take_if(|h| h.is_finished())
                .map(JoinHandle::join)
            {
                Some(Ok(Ok(out))) => format!(
                    "the coordinator exited ({}); stdout:\n{}\nstderr:\n{}",
                    out.status,
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ),
                Some(_) => "the coordinator's output is lost".into(),
                None => "the coordinator is still running".into(),
            };
            panic!("{what}: {e:#}; {output}")
        })
    }

    /// Waits for the coordinator to exit; returns its output and how long it ran.
    pub async fn finish(mut self) -> anyhow::Result<(Output, Duration)> {
        let output = self.output.take().context("the output was read already")?;
        let out = tokio::task::spawn_blocking(move || output.join())
            .await
            .context("joining the output reader")?
            .map_err(|_| anyhow::anyhow!("the output reader panicked"))?
            .context("reading quorate's output")?;
        Ok((out, self.started.elapsed()))
    }
}

/// The JSON lines `quorate --output json` printed (docs/events.md).
pub fn json_events(stdout: &[u8]) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// The `result` event that ends a `quorate --output json` run, if it printed one.
pub fn result_event(stdout: &[u8]) -> Option<serde_json::Value> {
    json_events(stdout)
        .into_iter()
        .rev()
        .find(|e| e["event"] == "result")
}

/// The run's `result` event if its outcome is `outcome` (`restored`, `rolled-back`,
/// `past-no-return`, `stopped`, ...).
pub fn outcome(stdout: &[u8], outcome: &str) -> Option<serde_json::Value> {
    result_event(stdout).filter(|r| r["outcome"] == outcome)
}

/// Waits up to `patience` until the coordinator's journal of the newest restore (after `known`
/// older ones) records `phase` `event`; for phases that end on a deadline longer than
/// [`faults::wait_journal`]'s.
pub async fn wait_journal_for(
    lab: &Lab,
    known: usize,
    phase: &str,
    event: &str,
    patience: Duration,
) -> anyhow::Result<()> {
    faults::wait_journal_for(lab, known, phase, event, patience)
        .await
        .map(drop)
}

/// Host `i`'s agent journal of the restore it knows (the lab runs one restore at a time).
pub fn agent_journal(lab: &Lab, i: usize) -> Option<(String, serde_json::Value)> {
    let restores = lab.hosts()[i].path("var/lib/quorate-agent/restores");
    fs::read_dir(restores).ok()?.flatten().find_map(|entry| {
        let text = fs::read_to_string(entry.path().join("journal.json")).ok()?;
        let journal = serde_json::from_str(&text).ok()?;
        Some((entry.file_name().to_string_lossy().into_owned(), journal))
    })
}

/// Waits until host `i`'s agent has staged the snapshot (checked and journaled); returns the
/// staged file.
pub async fn wait_staged(lab: &Lab, i: usize) -> anyhow::Result<PathBuf> {
    let host = &lab.hosts()[i];
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some((id, journal)) = agent_journal(lab, i)
            && !journal["staged"].is_null()
        {
            let file = host.path(&format!("var/lib/quorate-agent/restores/{id}/snapshot.db"));
            if file.is_file() {
                return Ok(file);
            }
        }
        if Instant::now() > deadline {
            bail!("{}'s agent never staged the snapshot", host.name);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The state of `step` in host `i`'s agent journal (`None`: not begun).
pub fn agent_step_state(lab: &Lab, i: usize, step: &str) -> Option<String> {
    let (_, journal) = agent_journal(lab, i)?;
    journal["steps"][step]["state"].as_str().map(str::to_owned)
}

/// Inverts the byte in the middle of `file`, in place; returns its offset.
pub fn flip_middle_byte(file: &Path) -> anyhow::Result<u64> {
    let mut f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(file)
        .with_context(|| format!("opening {}", file.display()))?;
    let offset = f.metadata()?.len() / 2;
    let mut byte = [0u8; 1];
    f.seek(SeekFrom::Start(offset))?;
    f.read_exact(&mut byte)?;
    byte[0] = !byte[0];
    f.seek(SeekFrom::Start(offset))?;
    f.write_all(&byte)?;
    f.sync_all()?;
    Ok(offset)
}

/// Waits until nothing listens on any of `host`'s etcd ports.
pub async fn wait_etcd_down(host: &Host) -> anyhow::Result<()> {
    let ports = [layout::CLIENT_PORT, layout::PEER_PORT, layout::METRICS_PORT];
    let deadline = Instant::now() + PATIENCE;
    while ports.iter().any(|p| procs::port_open(host.ip, *p)) {
        if Instant::now() > deadline {
            bail!("{}'s etcd did not stop", host.name);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// Bytes the tree at `path` occupies on disk (allocated blocks, so preallocated WAL files count).
pub fn disk_usage(path: &Path) -> u64 {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return 0;
    };
    let own = meta.blocks() * 512;
    if !meta.is_dir() {
        return own;
    }
    let children: u64 = fs::read_dir(path)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| disk_usage(&e.path()))
        .sum();
    own + children
}

/// Binds `host`'s `port` on its address (inside its network namespace when it has one) as soon
/// as it is free, within 10 s: a squatter on a member's port.
pub fn bind_when_free(host: &Host, port: u16) -> anyhow::Result<std::net::TcpListener> {
    let netns = host
        .ns
        .as_ref()
        .map(|ns| Path::new("/run/netns").join(&ns.netns));
    let ip = host.ip;
    // A thread of its own enters the host's namespace: the socket stays in it, the test's
    // other threads stay where they are.
    std::thread::spawn(move || {
        if let Some(path) = netns {
            let file =
                fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                .with_context(|| format!("entering {}", path.display()))?;
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match std::net::TcpListener::bind((ip, port)) {
                Ok(l) => return Ok(l),
                Err(e) if Instant::now() < deadline => {
                    tracing::debug!("{ip}:{port} not free yet: {e}");
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => bail!("{ip}:{port} never became free: {e}"),
            }
        }
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the binding thread panicked"))?
}

/// Free bytes on the filesystem holding `path`.
pub fn free_bytes(path: &Path) -> anyhow::Result<u64> {
    let stat =
        nix::sys::statvfs::statvfs(path).with_context(|| format!("statvfs {}", path.display()))?;
    Ok(stat.blocks_available() * stat.fragment_size())
}

/// Writes zeros to `file` until the filesystem has at most `leave` bytes free; returns the bytes
/// written.
pub fn fill(file: &Path, leave: u64) -> anyhow::Result<u64> {
    let dir = file.parent().context("filler without a parent dir")?;
    let want = free_bytes(dir)?.saturating_sub(leave);
    let mut f = fs::File::create(file).with_context(|| format!("creating {}", file.display()))?;
    let chunk = vec![0u8; 1 << 20];
    let mut written = 0u64;
    while written < want {
        let n = usize::try_from((want - written).min(chunk.len() as u64))
            .expect("a chunk fits in usize");
        f.write_all(&chunk[..n])
            .with_context(|| format!("filling {}", file.display()))?;
        written += n as u64;
    }
    f.sync_all()?;
    Ok(written)
}

use crate::procs::run;

/// A lab in which one host's `var/lib` (etcd's data dir, and the agent's state dir where the
/// snapshot is staged and the manifests are set aside) is a small tmpfs. Dropping it stops the
/// lab first, then unmounts.
pub struct SmallDiskLab {
    pub lab: TestLab,
    mounted: Option<PathBuf>,
}

impl std::ops::Deref for SmallDiskLab {
    type Target = TestLab;
    fn deref(&self) -> &TestLab {
        &self.lab
    }
}

impl SmallDiskLab {
    pub fn new(lab: TestLab) -> Self {
        Self { lab, mounted: None }
    }

    /// Moves host `i`'s `var/lib` onto a tmpfs with `spare` bytes free beyond what its content
    /// occupies: stops its etcd and agent, copies the content over, starts them again.
    pub async fn shrink_var_lib(&mut self, i: usize, spare: u64) -> anyhow::Result<PathBuf> {
        let host = self.lab.hosts()[i].clone();
        self.lab.kill_agent(i)?;
        self.lab.remove_manifest(&host, "etcd")?;
        wait_etcd_down(&host).await?;
        let var_lib = host.path("var/lib");
        let held = host.path("var/lib.before-tmpfs");
        fs::rename(&var_lib, &held)?;
        fs::create_dir(&var_lib)?;
        let size = (disk_usage(&held) + spare).div_ceil(1 << 20);
        run(Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size}m,mode=755"),
                "tmpfs",
            ])
            .arg(&var_lib))?;
        self.mounted = Some(var_lib.clone());
        run(Command::new("cp")
            .arg("-a")
            .arg(held.join("."))
            .arg(&var_lib))?;
        fs::remove_dir_all(&held)?;
        self.lab.restore_manifest(&host, "etcd")?;
        self.lab.start_agent(i, None).await?;
        self.lab.wait_ready(PATIENCE).await?;
        // etcd preallocates its next WAL file again on start (the copy left it sparse): size the
        // tmpfs to what is used now, plus `spare`.
        let stat = nix::sys::statvfs::statvfs(&var_lib)?;
        let used = (stat.blocks() - stat.blocks_free()) * stat.fragment_size();
        let size = (used + spare).div_ceil(1 << 20);
        run(Command::new("mount")
            .args(["-o", &format!("remount,size={size}m")])
            .arg(&var_lib))?;
        Ok(var_lib)
    }
}

impl Drop for SmallDiskLab {
    fn drop(&mut self) {
        let Some(dir) = self.mounted.take() else {
            return;
        };
        // Nothing may run on the tmpfs when it goes: stop the lab first.
        if let Err(e) = self.lab.lab.down() {
            eprintln!("lab down before unmounting {}: {e:#}", dir.display());
        }
        if let Err(e) = run(Command::new("umount").arg(&dir)) {
            eprintln!("{e:#}; detaching it lazily");
            if let Err(e) = run(Command::new("umount").arg("-l").arg(&dir)) {
                eprintln!("{e:#}");
            }
        }
    }
}

/// Cuts one member off from its peers: an nftables table of this test's own drops packets to
/// its peer address, and every peer packet to a socket of its etcd. Its etcd dials out from
/// 127.0.0.1 (the kernel's source for loopback), so an address rule alone does not cut it off;
/// the member's kubelet is moved into a cgroup of its own, inherited by every etcd it starts,
/// and an input rule drops peer-port packets to sockets of that cgroup (the answers to its
/// dials). Dropping the guard deletes the table and the cgroup. On a host with namespaces the
/// table lives in the host's own network namespace and drops every peer-port packet there.
pub struct Partition {
    table: String,
    ip: std::net::Ipv4Addr,
    /// The host's netns, when it has one (then there is no cgroup).
    netns: Option<String>,
    /// The cgroup, and its path as nft names it (relative to /sys/fs/cgroup).
    cgroup: PathBuf,
    nft_cgroup: String,
    root_procs: PathBuf,
    cut: bool,
}

fn cgroup2_mount() -> anyhow::Result<PathBuf> {
    let mounts = fs::read_to_string("/proc/self/mounts")?;
    mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(f[1]))
        })
        .next()
        .context("no cgroup2 filesystem is mounted")
}

impl Partition {
    /// Prepares a partition of host `i` (nothing is cut yet): its kubelet moves into a fresh
    /// cgroup, so the etcd it starts next is in it.
    pub fn prepare(lab: &Lab, i: usize) -> anyhow::Result<Self> {
        let host = &lab.hosts()[i];
        if let Some(ns) = &host.ns {
            return Ok(Self {
                table: format!("quorate_test_{}", std::process::id()),
                ip: host.ip,
                netns: Some(ns.netns.clone()),
                cgroup: PathBuf::new(),
                nft_cgroup: String::new(),
                root_procs: PathBuf::new(),
                cut: false,
            });
        }
        let mount = cgroup2_mount()?;
        let name = format!("quorate_test_{}", std::process::id());
        let relative = mount
            .strip_prefix("/sys/fs/cgroup")
            .context("nft names cgroups under /sys/fs/cgroup; cgroup2 is mounted elsewhere")?;
        let cgroup = mount.join(&name);
        fs::create_dir(&cgroup).with_context(|| format!("creating {}", cgroup.display()))?;
        let partition = Self {
            table: name.clone(),
            ip: host.ip,
            netns: None,
            nft_cgroup: relative.join(&name).display().to_string(),
            root_procs: mount.join("cgroup.procs"),
            cgroup,
            cut: false,
        };
        let kubelet = lab.state.kubelets[i];
        fs::write(partition.cgroup.join("cgroup.procs"), kubelet.to_string())
            .with_context(|| format!("moving {}'s kubelet into the cgroup", host.name))?;
        Ok(partition)
    }

    /// Drops the member's peer traffic from now on.
    pub fn cut(&mut self) -> anyhow::Result<()> {
        let (ip, port, cg) = (self.ip, layout::PEER_PORT, &self.nft_cgroup);
        let script = if self.netns.is_some() {
            format!(
                "table inet {table} {{\n\
                 \tchain input {{\n\
                 \t\ttype filter hook input priority 0; policy accept;\n\
                 \t\ttcp dport {port} drop\n\
                 \t\ttcp sport {port} drop\n\
                 \t}}\n\
                 \tchain output {{\n\
                 \t\ttype filter hook output priority 0; policy accept;\n\
                 \t\ttcp dport {port} drop\n\
                 \t\ttcp sport {port} drop\n\
                 \t}}\n\
                 }}\n",
                table = self.table
            )
        } else {
            format!(
                "table inet {table} {{\n\
             \tchain input {{\n\
             \t\ttype filter hook input priority 0; policy accept;\n\
             \t\tip daddr {ip} tcp dport {port} drop\n\
             \t\tip saddr {ip} tcp sport {port} drop\n\
             \t\tsocket cgroupv2 level 1 \"{cg}\" tcp sport {port} drop\n\
             \t}}\n\
             \tchain output {{\n\
             \t\ttype filter hook output priority 0; policy accept;\n\
             \t\tip daddr {ip} tcp dport {port} drop\n\
             \t\tip saddr {ip} tcp sport {port} drop\n\
             \t}}\n\
             }}\n",
                table = self.table
            )
        };
        let mut child = self
            .nft()
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("running nft")?;
        child
            .stdin
            .take()
            .context("nft stdin")?
            .write_all(script.as_bytes())?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "nft refused the partition table: {}\n{script}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        self.cut = true;
        Ok(())
    }

    /// `nft` in the partitioned host's network namespace (or the machine's).
    fn nft(&self) -> Command {
        match &self.netns {
            Some(ns) => {
                let mut cmd = Command::new("ip");
                cmd.args(["netns", "exec", ns, "nft"]);
                cmd
            }
            None => Command::new("nft"),
        }
    }

    /// Lets the member's peer traffic through again.
    pub fn heal(&mut self) -> anyhow::Result<()> {
        if self.cut {
            run(self.nft().args(["delete", "table", "inet", &self.table]))?;
            self.cut = false;
        }
        Ok(())
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        if let Err(e) = self.heal() {
            eprintln!("deleting nft table {}: {e:#}", self.table);
        }
        if self.netns.is_some() {
            return;
        }
        let procs = fs::read_to_string(self.cgroup.join("cgroup.procs")).unwrap_or_default();
        for pid in procs.lines() {
            let _gone_already = fs::write(&self.root_procs, pid);
        }
        if let Err(e) = fs::remove_dir(&self.cgroup) {
            eprintln!("removing cgroup {}: {e}", self.cgroup.display());
        }
    }
}
