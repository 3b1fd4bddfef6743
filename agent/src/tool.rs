//! The snapshot tool: `etcdutl` (etcd >= 3.5) or `ETCDCTL_API=3 etcdctl` (etcd 3.4), found at
//! startup and again on every use, behind a trait so unit tests can fake it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use serde::Deserialize;

use crate::child::{ChildError, Runner};
use crate::error::{AgentError, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolKind {
    Etcdutl,
    Etcdctl,
}

impl ToolKind {
    pub fn name(self) -> &'static str {
        match self {
            ToolKind::Etcdutl => "etcdutl",
            ToolKind::Etcdctl => "etcdctl",
        }
    }
}

/// The tool found on this member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolInfo {
    pub kind: ToolKind,
    pub program: PathBuf,
    pub version: String,
    /// `--bump-revision`/`--mark-compacted` exist from etcdutl 3.5.10.
    pub supports_bump_revision: bool,
}

/// `snapshot status -w json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotStatus {
    pub hash: u64,
    pub revision: i64,
    pub total_key: u64,
    pub total_size: u64,
}

/// One member's `snapshot restore`.
#[derive(Debug, Clone)]
pub struct RestoreArgs<'a> {
    pub snapshot: &'a Path,
    pub data_dir: &'a Path,
    /// `--wal-dir` (etcdutl and 3.4's etcdctl both take it); `None`: `<data_dir>/member/wal`.
    pub wal_dir: Option<&'a Path>,
    pub name: &'a str,
    pub initial_cluster: &'a str,
    pub cluster_token: &'a str,
    pub peer_urls: &'a [String],
    /// 0: no bump. Otherwise `--bump-revision N --mark-compacted`.
    pub bump_revision: u64,
    /// The snapshot is a raw `member/snap/db` copy without a sha256 trailer.
    pub skip_hash_check: bool,
}

impl RestoreArgs<'_> {
    /// The arguments after the program (both tools take the same flags).
    /// `--skip-hash-check` only for a raw `member/snap/db` copy: a saved snapshot carries a
    /// hash, and corruption in it must fail the restore.
    pub fn argv(&self) -> Vec<String> {
        let mut argv = vec![
            "snapshot".into(),
            "restore".into(),
            self.snapshot.display().to_string(),
            "--data-dir".into(),
            self.data_dir.display().to_string(),
        ];
        if let Some(wal) = self.wal_dir {
            argv.extend(["--wal-dir".into(), wal.display().to_string()]);
        }
        argv.extend([
            "--name".into(),
            self.name.into(),
            "--initial-cluster".into(),
            self.initial_cluster.into(),
            "--initial-cluster-token".into(),
            self.cluster_token.into(),
            "--initial-advertise-peer-urls".into(),
            self.peer_urls.join(","),
        ]);
        if self.skip_hash_check {
            argv.push("--skip-hash-check".into());
        }
        if self.bump_revision > 0 {
            argv.extend([
                "--bump-revision".into(),
                self.bump_revision.to_string(),
                "--mark-compacted".into(),
            ]);
        }
        argv
    }
}

pub trait RestoreTool: Send + Sync {
    /// The tool, or `ToolMissing` saying what to install or configure.
    fn info(&self) -> Result<ToolInfo>;
    fn status(&self, snapshot: &Path) -> Result<SnapshotStatus>;
    /// Restores into `args.data_dir`, which must not exist yet; returns the tool's output.
    fn restore(&self, args: &RestoreArgs<'_>) -> Result<String>;
}

/// The real tools, looked up on every call (an operator may install one mid-restore).
#[derive(Debug, Clone, Default)]
pub struct CliTool {
    /// Configured `etcd.etcdutl`; default `etcdutl` on PATH.
    pub etcdutl: Option<PathBuf>,
    /// Configured `etcd.etcdctl`; default `etcdctl` on PATH.
    pub etcdctl: Option<PathBuf>,
    /// Runs the tool under the `[limits]` deadlines.
    pub runner: Runner,
}

/// Runs the tool under `deadline` (set by the `[limits]` key `limit`).
fn run(
    runner: &Runner,
    kind: ToolKind,
    program: &Path,
    args: &[String],
    (deadline, limit): (Duration, &'static str),
) -> Result<Output, ChildError> {
    let mut cmd = Command::new(program);
    cmd.args(args);
    if kind == ToolKind::Etcdctl {
        cmd.env("ETCDCTL_API", "3");
    }
    runner.run(&mut cmd, deadline, limit)
}

/// The restore tool's deadline for `snapshot` (by its size; the base alone when it cannot be
/// read, and then the tool fails on it anyway).
fn tool_deadline(runner: &Runner, snapshot: &Path) -> (Duration, &'static str) {
    let bytes = std::fs::metadata(snapshot).map_or(0, |m| m.len());
    (runner.limits.restore_tool_for(bytes), "restore_tool")
}

/// `etcdutl version: 3.5.1` → `3.5.1`.
fn version_line(text: &str, prefix: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.trim().strip_prefix(prefix))
        .map(|v| v.trim().to_owned())
}

fn at_least(version: &str, want: (u64, u64, u64)) -> bool {
    let mut parts = version
        .trim_start_matches('v')
        .split(['.', '-'])
        .map(|p| p.parse::<u64>().unwrap_or(0));
    let v = (
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    );
    v >= want
}

fn tail(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(10)..].join("\n")
}

impl CliTool {
    /// Configured tools only when any is configured (never a surprise from PATH); otherwise
    /// `etcdutl`, then `etcdctl`, on PATH.
    fn candidates(&self) -> Vec<(ToolKind, PathBuf)> {
        let configured: Vec<(ToolKind, PathBuf)> = [
            (ToolKind::Etcdutl, self.etcdutl.clone()),
            (ToolKind::Etcdctl, self.etcdctl.clone()),
        ]
        .into_iter()
        .filter_map(|(k, p)| Some((k, p?)))
        .collect();
        if configured.is_empty() {
            vec![
                (ToolKind::Etcdutl, PathBuf::from("etcdutl")),
                (ToolKind::Etcdctl, PathBuf::from("etcdctl")),
            ]
        } else {
            configured
        }
    }
}

/// The tool at `program`; `Err(Ok(why))` when it is not there or not usable, `Err(Err(e))`
/// when it hung (a tool that is there but does not answer is not a missing tool).
fn probe(
    runner: &Runner,
    kind: ToolKind,
    program: PathBuf,
) -> std::result::Result<ToolInfo, std::result::Result<String, AgentError>> {
    let deadline = (runner.limits.probe, "probe");
    let out = match run(runner, kind, &program, &["version".into()], deadline) {
        Ok(out) => out,
        Err(e @ ChildError::Deadline { .. }) => return Err(Err(e.into())),
        Err(e) => return Err(Ok(format!("{} {} ({e})", kind.name(), program.display()))),
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let version = version_line(&stdout, &format!("{} version:", kind.name()))
        .filter(|_| out.status.success())
        .ok_or_else(|| {
            Ok(format!(
                "{} {} (`version` printed no version)",
                kind.name(),
                program.display()
            ))
        })?;
    Ok(ToolInfo {
        kind,
        supports_bump_revision: kind == ToolKind::Etcdutl && at_least(&version, (3, 5, 10)),
        program,
        version,
    })
}

impl RestoreTool for CliTool {
    fn info(&self) -> Result<ToolInfo> {
        let mut tried = Vec::new();
        for (kind, program) in self.candidates() {
            match probe(&self.runner, kind, program) {
                Ok(info) => return Ok(info),
                Err(Ok(why)) => tried.push(why),
                Err(Err(hung)) => return Err(hung),
            }
        }
        Err(AgentError::ToolMissing(format!(
            "no snapshot restore tool on this member (tried {}): install etcdutl matching the etcd \
             version (etcd >= 3.5) or etcdctl (etcd 3.4), and set etcd.etcdutl or etcd.etcdctl in \
             the agent config",
            tried.join(", ")
        )))
    }

    fn status(&self, snapshot: &Path) -> Result<SnapshotStatus> {
        let info = self.info()?;
        let args = [
            "snapshot".into(),
            "status".into(),
            snapshot.display().to_string(),
            "-w".into(),
            "json".into(),
        ];
        let deadline = tool_deadline(&self.runner, snapshot);
        let out = run(&self.runner, info.kind, &info.program, &args, deadline)?;
        if !out.status.success() {
            return Err(AgentError::Corrupt(format!(
                "{} snapshot status {} failed ({}): {}; the snapshot is damaged: take or copy it again",
                info.kind.name(),
                snapshot.display(),
                out.status,
                tail(&out.stderr)
            )));
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        let json = stdout
            .lines()
            .rev()
            .find(|l| l.trim_start().starts_with('{'))
            .unwrap_or("");
        serde_json::from_str(json).map_err(|e| {
            AgentError::CommandFailed(format!(
                "{} snapshot status printed no JSON status ({e}): {}",
                info.kind.name(),
                tail(&out.stdout)
            ))
        })
    }

    fn restore(&self, args: &RestoreArgs<'_>) -> Result<String> {
        let info = self.info()?;
        if args.bump_revision > 0 && !info.supports_bump_revision {
            return Err(AgentError::ToolMissing(format!(
                "--bump-revision needs etcdutl >= 3.5.10; this member has {} {}: install a newer \
                 etcdutl or restore without a revision bump",
                info.kind.name(),
                info.version
            )));
        }
        let runner = self.runner.for_member(args.name);
        let deadline = tool_deadline(&runner, args.snapshot);
        let out = run(&runner, info.kind, &info.program, &args.argv(), deadline)?;
        if !out.status.success() {
            return Err(AgentError::CommandFailed(format!(
                "{} snapshot restore into {}{} failed ({}): {}",
                info.kind.name(),
                args.data_dir.display(),
                args.wal_dir
                    .map(|w| format!(" (wal dir {})", w.display()))
                    .unwrap_or_default(),
                out.status,
                tail(&out.stderr)
            )));
        }
        Ok(tail(&out.stderr))
    }
}

/// `etcd --version` of the binary the manifest runs (`etcd Version: 3.5.1`); `None` when it
/// cannot be run (or does not answer within the probe limit).
pub fn etcd_version(binary: &str, runner: &Runner) -> Option<String> {
    let mut cmd = Command::new(binary);
    cmd.arg("--version");
    let out = match runner.run(&mut cmd, runner.limits.probe, "probe") {
        Ok(out) => out,
        Err(e @ ChildError::Deadline { .. }) => {
            tracing::warn!("{e}");
            return None;
        }
        Err(_) => return None,
    };
    version_line(&String::from_utf8_lossy(&out.stdout), "etcd Version:")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_and_flags() {
        assert_eq!(
            version_line(
                "etcdutl version: 3.5.1\nAPI version: 3.5",
                "etcdutl version:"
            )
            .as_deref(),
            Some("3.5.1")
        );
        assert!(!at_least("3.5.1", (3, 5, 10)));
        assert!(at_least("3.5.10", (3, 5, 10)));
        assert!(at_least("3.6.0-rc.1", (3, 5, 10)));
        let peers = vec!["https://a:2380".to_owned()];
        let mut args = RestoreArgs {
            snapshot: Path::new("/s/snapshot.db"),
            data_dir: Path::new("/d"),
            wal_dir: None,
            name: "cp-1",
            initial_cluster: "cp-1=https://a:2380",
            cluster_token: "quorate-x",
            peer_urls: &peers,
            bump_revision: 0,
            skip_hash_check: false,
        };
        let argv = args.argv();
        assert!(
            !argv
                .iter()
                .any(|a| a.contains("skip-hash-check") || a.contains("bump"))
        );
        assert!(!argv.iter().any(|a| a == "--wal-dir"));
        args.wal_dir = Some(Path::new("/w/.quorate-x.restoring"));
        let argv = args.argv();
        let at = argv
            .iter()
            .position(|a| a == "--wal-dir")
            .expect("--wal-dir");
        assert_eq!(argv[at + 1], "/w/.quorate-x.restoring");
        args.wal_dir = None;
        args.bump_revision = 7;
        assert!(args.argv().ends_with(&[
            "--bump-revision".into(),
            "7".into(),
            "--mark-compacted".into()
        ]));
        args.bump_revision = 0;
        args.skip_hash_check = true;
        let raw = args.argv();
        assert_eq!(
            raw.iter().filter(|a| *a == "--skip-hash-check").count(),
            1,
            "{raw:?}"
        );
    }

    #[test]
    fn status_json_parses() {
        let s: SnapshotStatus =
            serde_json::from_str(r#"{"hash":123,"revision":45,"totalKey":6,"totalSize":20480}"#)
                .expect("json");
        assert_eq!((s.revision, s.total_key), (45, 6));
    }

    /// A tool that answers `version` and hangs on everything else, under short limits.
    fn hanging_tool(dir: &Path) -> CliTool {
        use std::os::unix::fs::PermissionsExt as _;
        let script = dir.join("etcdutl");
        std::fs::write(
            &script,
            "#!/bin/sh\nif [ \"$1\" = version ]; then echo 'etcdutl version: 3.5.16'; exit 0; fi\nsleep 30\n",
        )
        .expect("script");
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let limits = crate::child::Limits {
            restore_tool: Duration::from_millis(300),
            probe: Duration::from_millis(300),
            ..crate::child::Limits::default()
        };
        CliTool {
            etcdutl: Some(script),
            etcdctl: None,
            runner: Runner::new(limits, "host-1"),
        }
    }

    #[test]
    fn a_hung_restore_tool_is_killed_at_its_deadline_naming_the_member() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tool = hanging_tool(dir.path());
        assert_eq!(tool.info().expect("version answers").version, "3.5.16");
        let peers = vec!["https://a:2380".to_owned()];
        let started = std::time::Instant::now();
        let err = tool
            .restore(&RestoreArgs {
                snapshot: &dir.path().join("absent.db"),
                data_dir: &dir.path().join("restoring"),
                wal_dir: None,
                name: "cp-1",
                initial_cluster: "cp-1=https://a:2380",
                cluster_token: "quorate-x",
                peer_urls: &peers,
                bump_revision: 0,
                skip_hash_check: false,
            })
            .expect_err("hangs");
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(err.code(), tonic::Code::DeadlineExceeded);
        let text = err.to_string();
        assert!(
            text.contains("etcdutl snapshot restore")
                && text.contains("on member cp-1 (host-1)")
                && text.contains("`restore_tool`"),
            "{text}"
        );
        // A probe that hangs is a hung tool, not a missing one.
        std::fs::write(dir.path().join("etcdutl"), "#!/bin/sh\nsleep 30\n").expect("rewrite");
        let err = tool.info().expect_err("hangs");
        assert_eq!(err.code(), tonic::Code::DeadlineExceeded, "{err}");
        assert!(
            err.to_string().contains("etcdutl version` on host-1"),
            "{err}"
        );
    }

    #[test]
    fn missing_tool_says_what_to_install() {
        let tool = CliTool {
            etcdutl: Some("/nonexistent/etcdutl".into()),
            etcdctl: Some("/nonexistent/etcdctl".into()),
            runner: Runner::default(),
        };
        let err = tool.info().expect_err("missing");
        assert_eq!(err.code(), tonic::Code::FailedPrecondition);
        assert!(err.to_string().contains("install etcdutl"), "{err}");
    }
}
