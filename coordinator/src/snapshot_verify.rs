//! `quorate snapshot verify`: the integrity chain of a snapshot file, as library functions that
//! `quorate restore`'s preflight can call.
//!
//! (a) the appended sha256, checked in Rust ([`snapshot::check`]); (b) `snapshot status` with
//! etcdutl (or `ETCDCTL_API=3 etcdctl` for 3.4) for the revision and size; (c) optionally a test
//! restore: `snapshot restore` into a temp dir, a throwaway single-member etcd on free loopback
//! ports, the keys counted and the namespaces every Kubernetes cluster has looked up; then the
//! etcd is stopped and the dir removed, also on failure.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use etcd_client::{Certificate, Client, ConnectOptions, GetOptions, Identity, TlsOptions};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use quorate_proto::tls::TlsFiles;
use serde::Serialize;
use tokio::process::{Child, Command};

use crate::snapshot::{self, SnapshotError};

/// Keys a restored Kubernetes etcd holds.
pub const NAMESPACES: [&str; 2] = [
    "/registry/namespaces/default",
    "/registry/namespaces/kube-system",
];
/// Budget for one `snapshot status` or `snapshot restore` run (a 1 GB db restores in ~3 s).
const TOOL_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Debug, Clone)]
pub struct VerifyOptions {
    pub test_restore: bool,
    /// A dir holding etcd and etcdutl (or etcdctl); else `QUORATE_ETCD_DIR`, else PATH.
    pub etcd_dir: Option<PathBuf>,
    /// How long the throwaway etcd may take to become healthy.
    pub start_timeout: Duration,
    /// Accept a file without a sha256 trailer (a raw `member/snap/db` copy).
    pub skip_hash_check: bool,
    /// The file's sha256 check, already done by the caller (preflight): not read again.
    pub checked: Option<snapshot::CheckedSnapshot>,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        Self {
            test_restore: false,
            etcd_dir: None,
            start_timeout: Duration::from_secs(60),
            skip_hash_check: false,
            checked: None,
        }
    }
}

/// The etcd binaries a verification used.
#[derive(Debug, Clone, Serialize)]
pub struct Tools {
    /// `--etcd-dir`, `QUORATE_ETCD_DIR` or `PATH`.
    pub source: String,
    /// etcdutl, or etcdctl (3.4), always run with `ETCDCTL_API=3`.
    pub snapshot_tool: PathBuf,
    pub etcd: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct VerifyReport {
    pub ok: bool,
    pub file: PathBuf,
    /// Of the whole file, trailer included.
    pub sha256: Option<String>,
    pub size: Option<u64>,
    pub revision: Option<i64>,
    /// `snapshot status`'s totalKey: bbolt entries in every bucket (each revision of each key and
    /// etcd's own records), not the live keys (those are `test_restore.keys`).
    pub total_keys: Option<i64>,
    pub total_size: Option<i64>,
    pub tools: Option<Tools>,
    pub test_restore: Option<TestRestore>,
    pub error: Option<String>,
    pub error_kind: Option<&'static str>,
    /// What passed but deserves a look (a test restore with an older etcd than the snapshot's).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TestRestore {
    /// Live keys in the restored etcd.
    pub keys: i64,
    pub revision: i64,
    pub namespaces_found: Vec<String>,
    pub etcd_version: String,
    pub seconds: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error(transparent)]
    Integrity(#[from] SnapshotError),
    #[error("{0}")]
    Tools(String),
    #[error("`{tool} snapshot status {file}` failed: {detail}")]
    Status {
        tool: PathBuf,
        file: PathBuf,
        detail: String,
    },
    #[error(
        "test restore failed: `{tool} snapshot restore` could not restore the snapshot: {detail}"
    )]
    Restore { tool: PathBuf, detail: String },
    #[error("test restore failed: the restored etcd ({etcd}) {detail}")]
    Start { etcd: PathBuf, detail: String },
    #[error(
        "test restore failed: the restored data ({keys} keys) has no {missing}: not a Kubernetes cluster's etcd, or its data is incomplete; use another snapshot"
    )]
    MissingNamespace { missing: String, keys: i64 },
    #[error(
        "test restore failed: the restored etcd is at revision {restored}, `snapshot status` says {status}"
    )]
    RevisionMismatch { restored: i64, status: i64 },
    #[error("test restore failed: {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

impl VerifyError {
    /// A stable name for the failure, for automation.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Integrity(SnapshotError::HashMismatch { .. }) => "corrupt",
            Self::Integrity(
                SnapshotError::NoTrailer { .. }
                | SnapshotError::NotDb { .. }
                | SnapshotError::Empty { .. },
            ) => "truncated",
            Self::Integrity(
                SnapshotError::Read { .. }
                | SnapshotError::Missing { .. }
                | SnapshotError::NotAFile { .. },
            ) => "unreadable",
            Self::Tools(_) => "tools",
            Self::Status { .. } => "status",
            Self::Restore { .. } => "restore",
            Self::Start { .. } => "start",
            Self::MissingNamespace { .. } => "missing-namespace",
            Self::RevisionMismatch { .. } => "revision-mismatch",
            Self::Io { .. } => "io",
        }
    }
}

impl VerifyReport {
    /// The human summary of a passed verification.
    pub fn render(&self) -> String {
        let opt = |v: Option<i64>| v.map_or_else(|| "?".to_owned(), |v| v.to_string());
        let mut out = format!(
            "snapshot {} is good\n  sha256 {} ({} bytes): the appended sha256 matches\n",
            self.file.display(),
            self.sha256.as_deref().unwrap_or("?"),
            self.size.unwrap_or(0)
        );
        if let Some(t) = &self.tools {
            out.push_str(&format!(
                "  snapshot status ({}, from {}): revision {}, {} bbolt entries, {} bytes of db\n",
                t.snapshot_tool.display(),
                t.source,
                opt(self.revision),
                opt(self.total_keys),
                opt(self.total_size)
            ));
        }
        if let (Some(r), Some(t)) = (&self.test_restore, &self.tools) {
            let etcd = t.etcd.as_deref().unwrap_or(Path::new("?")).display();
            out.push_str(&format!(
                "  test restore (etcd {} at {etcd}): {} keys at revision {}, found {}, in {:.1}s\n",
                r.etcd_version,
                r.keys,
                r.revision,
                r.namespaces_found.join(" and "),
                r.seconds
            ));
        }
        for w in &self.warnings {
            out.push_str(&format!("  warning: {w}\n"));
        }
        out
    }
}

/// Runs the integrity chain on `file`.
pub async fn verify(file: &Path, options: &VerifyOptions) -> Result<VerifyReport, VerifyError> {
    let mut report = VerifyReport::default();
    verify_into(file, options, &mut report).await?;
    Ok(report)
}

/// Like [`verify`], filling `report` as each check passes and recording a failure in it, so that a
/// report shows how far verification got.
pub async fn verify_into(
    file: &Path,
    options: &VerifyOptions,
    report: &mut VerifyReport,
) -> Result<(), VerifyError> {
    report.file = file.to_owned();
    let result = chain(file, options, report).await;
    report.ok = result.is_ok();
    if let Err(e) = &result {
        report.error = Some(e.to_string());
        report.error_kind = Some(e.kind());
    }
    result
}

async fn chain(
    file: &Path,
    options: &VerifyOptions,
    report: &mut VerifyReport,
) -> Result<(), VerifyError> {
    let checked = match &options.checked {
        Some(c) if c.path == file => c.clone(),
        _ => {
            let path = file.to_owned();
            let skip = options.skip_hash_check;
            tokio::task::spawn_blocking(move || snapshot::check_with(&path, skip))
                .await
                .expect("the sha256 check does not panic")?
        }
    };
    report.sha256 = Some(checked.sha256);
    report.size = Some(checked.size);
    let tools = find_tools(options.etcd_dir.as_deref(), options.test_restore)?;
    report.tools = Some(tools.clone());
    let args = ["snapshot", "status", "-w", "json"].map(OsStr::new);
    let out = run_tool(
        &tools.snapshot_tool,
        args.iter().copied().chain([file.as_os_str()]),
    )
    .await;
    let status_err = |detail: String| VerifyError::Status {
        tool: tools.snapshot_tool.clone(),
        file: file.to_owned(),
        detail,
    };
    let json: serde_json::Value = serde_json::from_slice(&out.map_err(status_err)?)
        .map_err(|e| status_err(format!("its output is not JSON: {e}")))?;
    let field = |name: &str| {
        json[name]
            .as_i64()
            .ok_or_else(|| status_err(format!("no {name} in {json}")))
    };
    let revision = field("revision")?;
    report.revision = Some(revision);
    report.total_keys = Some(field("totalKey")?);
    report.total_size = Some(field("totalSize")?);
    if options.test_restore {
        let restored = test_restore(file, &tools, revision, options.start_timeout).await?;
        if let Ok(Some(taken)) = file_cluster_version(file)
            && let Some(w) = older_tool(&taken, &restored.etcd_version, &tools.source)
        {
            report.warnings.push(w);
        }
        report.test_restore = Some(restored);
    }
    Ok(())
}

/// A warning when the etcd that test-restored is older (major.minor) than the cluster the
/// snapshot was taken on: it proves little about a restore on the members' etcd.
fn older_tool(taken: &str, used: &str, source: &str) -> Option<String> {
    let minor = |v: &str| -> Option<(u32, u32)> {
        let mut it = v.trim_start_matches('v').split('.');
        Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
    };
    (minor(used)? < minor(taken)?).then(|| {
        format!(
            "the test restore used etcd {used} (from {source}), older than the cluster the snapshot was taken on ({taken}): restore-test it with the members' etcd version (--etcd-dir DIR, or that version first on PATH)"
        )
    })
}

/// etcd tools from `etcd_dir`, else `QUORATE_ETCD_DIR`, else PATH: etcdutl (else etcdctl) for
/// `snapshot status`/`restore`, and etcd when `need_etcd`.
pub fn find_tools(etcd_dir: Option<&Path>, need_etcd: bool) -> Result<Tools, VerifyError> {
    let env = std::env::var_os("QUORATE_ETCD_DIR").filter(|v| !v.is_empty());
    let (dirs, source): (Vec<PathBuf>, &str) = match (etcd_dir, env) {
        (Some(d), _) => (vec![d.to_owned()], "--etcd-dir"),
        (None, Some(d)) => (vec![d.into()], "QUORATE_ETCD_DIR"),
        (None, None) => (
            std::env::var_os("PATH")
                .map(|p| std::env::split_paths(&p).collect())
                .unwrap_or_default(),
            "PATH",
        ),
    };
    let place = match dirs.as_slice() {
        [one] => format!("{} (from {source})", one.display()),
        _ => "PATH".to_owned(),
    };
    let find = |name: &str| dirs.iter().map(|d| d.join(name)).find(|p| p.is_file());
    let snapshot_tool = find("etcdutl").or_else(|| find("etcdctl")).ok_or_else(|| {
        VerifyError::Tools(format!(
            "neither etcdutl nor etcdctl found in {place}: pass --etcd-dir DIR (holding etcd and etcdutl, or etcdctl for etcd 3.4) or set QUORATE_ETCD_DIR"
        ))
    })?;
    let etcd = find("etcd");
    if need_etcd && etcd.is_none() {
        return Err(VerifyError::Tools(format!(
            "--test-restore needs etcd, and there is none in {place}: pass --etcd-dir DIR"
        )));
    }
    Ok(Tools {
        source: source.to_owned(),
        snapshot_tool,
        etcd,
    })
}

/// Runs `tool args` with `ETCDCTL_API=3` and a deadline; its stdout, or why it failed.
async fn run_tool<'a>(
    tool: &Path,
    args: impl IntoIterator<Item = &'a OsStr>,
) -> Result<Vec<u8>, String> {
    let out = Command::new(tool)
        .env("ETCDCTL_API", "3")
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(TOOL_TIMEOUT, out)
        .await
        .map_err(|_| format!("no answer within {TOOL_TIMEOUT:?}"))?
        .map_err(|e| format!("cannot run it: {e}"))?;
    if out.status.success() {
        Ok(out.stdout)
    } else {
        Err(format!("{}: {}", out.status, last_lines(&out.stderr, 3)))
    }
}

fn last_lines(bytes: &[u8], n: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

/// Restores `file` into a temp dir and runs it as a throwaway etcd on free loopback ports, reads
/// it, then stops it and removes the dir, whatever happened in between.
async fn test_restore(
    file: &Path,
    tools: &Tools,
    status_revision: i64,
    start_timeout: Duration,
) -> Result<TestRestore, VerifyError> {
    let started = Instant::now();
    let etcd = tools
        .etcd
        .clone()
        .expect("find_tools found etcd for a test restore");
    let io = |what, path: &Path, source| VerifyError::Io {
        what,
        path: path.to_owned(),
        source,
    };
    let dir = tempfile::Builder::new()
        .prefix("quorate-verify-")
        .tempdir()
        .map_err(|e| io("creating a temp dir in", &std::env::temp_dir(), e))?;
    let ports = free_ports().map_err(|e| io("finding free ports on", Path::new("127.0.0.1"), e))?;
    let [client_url, peer_url, metrics_url] = ports.map(|p| format!("http://127.0.0.1:{p}"));
    let cluster = format!("verify={peer_url}");
    let token = format!("quorate-verify-{}", uuid::Uuid::new_v4());
    let data = dir.path().join("data");
    let member = [
        "--name",
        "verify",
        "--initial-cluster",
        &cluster,
        "--initial-advertise-peer-urls",
        &peer_url,
        "--initial-cluster-token",
        &token,
    ];
    let restore = [
        OsStr::new("snapshot"),
        OsStr::new("restore"),
        file.as_os_str(),
    ]
    .into_iter();
    let restore = restore
        .chain(member.iter().map(OsStr::new))
        .chain([OsStr::new("--data-dir"), data.as_os_str()]);
    run_tool(&tools.snapshot_tool, restore)
        .await
        .map_err(|detail| VerifyError::Restore {
            tool: tools.snapshot_tool.clone(),
            detail,
        })?;

    let etcd_version = run_tool(&etcd, [OsStr::new("--version")])
        .await
        .ok()
        .and_then(|out| {
            let text = String::from_utf8_lossy(&out).into_owned();
            text.lines()
                .find_map(|l| l.strip_prefix("etcd Version: "))
                .map(|v| v.trim().to_owned())
        });
    let log_path = dir.path().join("etcd.log");
    let log = std::fs::File::create(&log_path).map_err(|e| io("creating", &log_path, e))?;
    let mut cmd = Command::new(&etcd);
    // The operator's ETCD_* settings (data dir, URLs) must not reach the throwaway member.
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("ETCD") && key != "ETCD_UNSUPPORTED_ARCH" {
            cmd.env_remove(key);
        }
    }
    cmd.args(member).arg("--data-dir").arg(&data);
    cmd.args([
        "--listen-peer-urls",
        &peer_url,
        "--listen-client-urls",
        &client_url,
        "--advertise-client-urls",
        &client_url,
    ]);
    cmd.args(["--listen-metrics-urls", &metrics_url]);
    let stderr = log.try_clone().map_err(|e| io("opening", &log_path, e))?;
    cmd.stdin(Stdio::null())
        .stdout(log)
        .stderr(stderr)
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|e| io("starting", &etcd, e))?;
    let read = read_restored(
        &mut child,
        &client_url,
        &metrics_url,
        &log_path,
        start_timeout,
    )
    .await;
    stop(&mut child).await;
    let removed = dir.path().to_owned();
    dir.close().map_err(|e| io("removing", &removed, e))?;
    let (keys, revision, found) = read.map_err(|detail| VerifyError::Start {
        etcd: etcd.clone(),
        detail,
    })?;
    if let Some(missing) = NAMESPACES.iter().find(|ns| !found.iter().any(|f| f == *ns)) {
        return Err(VerifyError::MissingNamespace {
            missing: (*missing).to_owned(),
            keys,
        });
    }
    if revision != status_revision {
        return Err(VerifyError::RevisionMismatch {
            restored: revision,
            status: status_revision,
        });
    }
    Ok(TestRestore {
        keys,
        revision,
        namespaces_found: found,
        etcd_version: etcd_version.unwrap_or_else(|| "unknown".to_owned()),
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Three distinct free loopback ports (client, peer, metrics), bound at once and released.
fn free_ports() -> std::io::Result<[u16; 3]> {
    let bind = || std::net::TcpListener::bind(("127.0.0.1", 0));
    let held = [bind()?, bind()?, bind()?];
    let port = |l: &std::net::TcpListener| l.local_addr().map(|a| a.port());
    Ok([port(&held[0])?, port(&held[1])?, port(&held[2])?])
}

/// Waits for the restored member's metrics `/health` (its client port hangs until it has elected
/// itself), then counts its keys and looks up [`NAMESPACES`]: (keys, revision, namespaces found).
async fn read_restored(
    child: &mut Child,
    client_url: &str,
    metrics_url: &str,
    log: &Path,
    patience: Duration,
) -> Result<(i64, i64, Vec<String>), String> {
    let deadline = Instant::now() + patience;
    let tail = || last_lines(&std::fs::read(log).unwrap_or_default(), 3);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "exited ({status}) before it became healthy; its log ends: {}",
                tail()
            ));
        }
        if crate::verify::metrics_healthy(metrics_url).await {
            break;
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "was not healthy within {patience:?}; its log ends: {}",
                tail()
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let options = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(Duration::from_secs(60));
    let answer = async {
        let mut client = Client::connect([client_url], Some(options)).await?;
        let all = GetOptions::new().with_range(vec![0u8]).with_count_only();
        let resp = client.get(vec![0u8], Some(all)).await?;
        let revision = resp.header().map_or(0, |h| h.revision());
        let mut found = Vec::new();
        for ns in NAMESPACES {
            if client
                .get(ns, Some(GetOptions::new().with_count_only()))
                .await?
                .count()
                > 0
            {
                found.push(ns.to_owned());
            }
        }
        Ok::<_, etcd_client::Error>((resp.count(), revision, found))
    };
    answer
        .await
        .map_err(|e| format!("is healthy but reading it at {client_url} failed: {e}"))
}

/// SIGTERM to the one process started here, SIGKILL after 15 s.
async fn stop(child: &mut Child) {
    if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
        let _already_gone = kill(Pid::from_raw(pid), Signal::SIGTERM);
        if tokio::time::timeout(Duration::from_secs(15), child.wait())
            .await
            .is_ok()
        {
            return;
        }
    }
    let _already_gone = child.kill().await;
}

/// A client for one etcd member with the given request timeout (a stream is not bound by it:
/// the timeout covers a call until its response starts).
pub async fn member_client_with(
    url: &str,
    tls: Option<&TlsFiles>,
    timeout: Duration,
) -> anyhow::Result<Client> {
    let mut options = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(5))
        .with_timeout(timeout)
        .with_require_leader(true);
    if let Some(tls) = tls {
        let identity = tls.read_identity()?;
        let ca = Certificate::from_pem(tls.read_ca()?);
        options = options.with_tls(
            TlsOptions::new()
                .ca_certificate(ca)
                .identity(Identity::from_pem(identity.cert, identity.key)),
        );
    }
    Ok(Client::connect([url], Some(options)).await?)
}

/// The revision a snapshot holds, read from its bbolt file as `snapshot status` does.
pub fn file_revision(path: &Path) -> Result<i64, String> {
    quorate_proto::etcd_db::revision(path).map_err(|e| e.to_string())
}

/// The etcd cluster version a snapshot was taken at (`3.5.0`); `None` when the file holds none.
/// etcd 3.5's `snapshot status` does not report it.
pub fn file_cluster_version(path: &Path) -> Result<Option<String>, String> {
    quorate_proto::etcd_db::cluster_version(path).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::older_tool;

    #[test]
    fn a_test_restore_with_an_older_etcd_than_the_snapshots_is_a_warning() {
        let w = older_tool("3.5.0", "3.4.23", "PATH").expect("older");
        assert!(
            w.contains("etcd 3.4.23 (from PATH)") && w.contains("3.5.0"),
            "{w}"
        );
        assert!(older_tool("3.5.0", "3.5.16", "PATH").is_none());
        assert!(older_tool("3.4.0", "3.5.16", "PATH").is_none());
        assert!(older_tool("3.5.0", "unknown", "PATH").is_none());
    }
}
