//! Every child process the agent runs (`etcdutl`, `etcdctl`, `systemctl`, `etcd --version`) goes
//! through here: it runs in a process group of its own, is waited for with a deadline, and when
//! the deadline passes the whole group is killed (SIGKILL) and reaped. A hung tool therefore
//! cannot hold the member's step lock: the step fails, saying which command on which member hung.

use std::ffi::OsStr;
use std::io::Read as _;
use std::os::unix::process::CommandExt as _;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::error::AgentError;

/// How long the agent's child processes may run: agent.toml's optional `[limits]` table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// `snapshot restore` and `snapshot status`: this much, plus one second per
    /// `restore_tool_mib_per_s` MiB of snapshot.
    #[serde(default = "default_restore_tool", with = "humantime_serde")]
    pub restore_tool: Duration,
    /// The slowest rate (MiB/s) the restore tool is expected to read a snapshot at.
    #[serde(default = "default_rate")]
    pub restore_tool_mib_per_s: u64,
    /// `systemctl stop|start|show`.
    #[serde(default = "default_systemctl", with = "humantime_serde")]
    pub systemctl: Duration,
    /// Quick probes: `etcdutl version`, `etcd --version`.
    #[serde(default = "default_probe", with = "humantime_serde")]
    pub probe: Duration,
    /// Room (MiB) a snapshot push must leave free on the state dir's filesystem; default: the
    /// larger of 512 MiB and 5 % of that filesystem (see [`Limits::stage_reserve`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage_reserve_mib: Option<u64>,
}

fn default_restore_tool() -> Duration {
    Duration::from_secs(60)
}

fn default_rate() -> u64 {
    20
}

fn default_systemctl() -> Duration {
    Duration::from_secs(90)
}

fn default_probe() -> Duration {
    Duration::from_secs(10)
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            restore_tool: default_restore_tool(),
            restore_tool_mib_per_s: default_rate(),
            systemctl: default_systemctl(),
            probe: default_probe(),
            stage_reserve_mib: None,
        }
    }
}

impl Limits {
    /// Refuses limits that would fail every step.
    pub fn check(&self) -> Result<(), String> {
        let durations = [
            ("restore_tool", self.restore_tool),
            ("systemctl", self.systemctl),
            ("probe", self.probe),
        ];
        for (key, d) in durations {
            if d.is_zero() {
                return Err(format!(
                    "limits.{key} = \"0s\" would fail every command at once: give a deadline, \
                     e.g. \"{}\", or remove the key for the default",
                    humantime::format_duration(Self::default().get(key))
                ));
            }
        }
        if self.restore_tool_mib_per_s == 0 {
            return Err(
                "limits.restore_tool_mib_per_s = 0: give the slowest rate (MiB/s) the restore \
                 tool reads a snapshot at, e.g. 20"
                    .into(),
            );
        }
        Ok(())
    }

    fn get(&self, key: &str) -> Duration {
        match key {
            "restore_tool" => self.restore_tool,
            "systemctl" => self.systemctl,
            _ => self.probe,
        }
    }

    /// The bytes a snapshot push must leave free on a filesystem of `total` bytes:
    /// `stage_reserve_mib` when set, else the larger of 512 MiB and 5 % of it.
    pub fn stage_reserve(&self, total: u64) -> u64 {
        match self.stage_reserve_mib {
            Some(mib) => mib.saturating_mul(1 << 20),
            None => (512u64 << 20).max(total / 20),
        }
    }

    /// The restore tool's deadline for a snapshot of `bytes`.
    pub fn restore_tool_for(&self, bytes: u64) -> Duration {
        let rate = self.restore_tool_mib_per_s.max(1).saturating_mul(1 << 20);
        self.restore_tool + Duration::from_secs(bytes.div_ceil(rate))
    }
}

/// Runs child processes for this agent: with its limits, naming it in errors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Runner {
    pub limits: Limits,
    /// Who runs them, in messages: this member's (or apiserver-only host's) name.
    pub who: String,
}

impl Default for Runner {
    /// The default limits, naming this host by its hostname.
    fn default() -> Self {
        Self::new(Limits::default(), crate::describe::hostname())
    }
}

impl Runner {
    /// The same runner, naming member `name` (on this host) in its errors.
    pub fn for_member(&self, name: &str) -> Self {
        Self::new(self.limits, format!("member {name} ({})", self.who))
    }

    pub fn new(limits: Limits, who: impl Into<String>) -> Self {
        Self {
            limits,
            who: who.into(),
        }
    }

    /// Starts `cmd` in a process group of its own, stdin closed, output captured. `limit` names
    /// the `[limits]` key that set `deadline`, for the error.
    pub fn spawn(
        &self,
        cmd: &mut Command,
        deadline: Duration,
        limit: &'static str,
    ) -> Result<Running, ChildError> {
        let line = command_line(cmd);
        cmd.process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|source| ChildError::Spawn {
            line: line.clone(),
            who: self.who.clone(),
            source,
        })?;
        let (tx, rx) = mpsc::channel();
        let pipes: [(bool, Option<Box<dyn std::io::Read + Send>>); 2] = [
            (
                false,
                child
                    .stdout
                    .take()
                    .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
            ),
            (
                true,
                child
                    .stderr
                    .take()
                    .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
            ),
        ];
        let mut readers = 0;
        for (is_err, pipe) in pipes {
            let Some(mut pipe) = pipe else { continue };
            let tx = tx.clone();
            readers += 1;
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let _partial = pipe.read_to_end(&mut buf);
                let _gone = tx.send((is_err, buf));
            });
        }
        Ok(Running {
            child,
            line,
            who: self.who.clone(),
            deadline,
            limit,
            started: Instant::now(),
            output: rx,
            readers,
            stdout: Vec::new(),
            stderr: Vec::new(),
            status: None,
            done: false,
        })
    }

    /// Runs `cmd` to its end or its deadline (see [`Runner::spawn`]).
    pub fn run(
        &self,
        cmd: &mut Command,
        deadline: Duration,
        limit: &'static str,
    ) -> Result<Output, ChildError> {
        self.spawn(cmd, deadline, limit)?.wait()
    }
}

/// A child that failed to run to its end.
#[derive(Debug, thiserror::Error)]
pub enum ChildError {
    #[error("cannot run `{line}` on {who}: {source}")]
    Spawn {
        line: String,
        who: String,
        source: std::io::Error,
    },
    #[error(
        "`{line}` on {who} did not finish within {}: it was killed, with every process it \
         started; the step failed and holds nothing (the member's step lock is released): find \
         out why it hangs (or, if it is only slow, raise `{limit}` in the agent config's \
         [limits]), then run the step again",
        humantime::format_duration(*deadline)
    )]
    Deadline {
        line: String,
        who: String,
        deadline: Duration,
        limit: &'static str,
    },
    #[error("waiting for `{line}` on {who}: {source}")]
    Wait {
        line: String,
        who: String,
        source: std::io::Error,
    },
}

impl From<ChildError> for AgentError {
    fn from(e: ChildError) -> Self {
        match e {
            ChildError::Deadline { .. } => AgentError::Timeout(e.to_string()),
            ChildError::Spawn { .. } | ChildError::Wait { .. } => {
                AgentError::CommandFailed(e.to_string())
            }
        }
    }
}

/// A child process under its deadline. Dropped before it finished, its group is killed.
pub struct Running {
    child: Child,
    line: String,
    who: String,
    deadline: Duration,
    limit: &'static str,
    started: Instant,
    output: mpsc::Receiver<(bool, Vec<u8>)>,
    readers: usize,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    status: Option<ExitStatus>,
    done: bool,
}

/// How often a wait looks at the child.
const POLL: Duration = Duration::from_millis(20);
/// How long the output of a killed group is waited for (a process that left the group may hold
/// the pipes open; its output is then abandoned).
const DRAIN: Duration = Duration::from_secs(1);

impl Running {
    /// The command line, as shown in messages.
    pub fn line(&self) -> &str {
        &self.line
    }

    /// The child's pid, which is also its process group's id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `Some(output)` once the child has exited and closed its output; `None` while it runs
    /// within its deadline; past the deadline, its group is killed and reaped and the error says
    /// so.
    pub fn poll(&mut self) -> Result<Option<Output>, ChildError> {
        self.take_output(Duration::ZERO);
        if self.status.is_none() {
            self.status = self.child.try_wait().map_err(|source| ChildError::Wait {
                line: self.line.clone(),
                who: self.who.clone(),
                source,
            })?;
        }
        if let Some(status) = self.status
            && self.readers == 0
        {
            self.done = true;
            return Ok(Some(Output {
                status,
                stdout: std::mem::take(&mut self.stdout),
                stderr: std::mem::take(&mut self.stderr),
            }));
        }
        if self.started.elapsed() >= self.deadline {
            self.kill();
            return Err(ChildError::Deadline {
                line: self.line.clone(),
                who: self.who.clone(),
                deadline: self.deadline,
                limit: self.limit,
            });
        }
        Ok(None)
    }

    /// Waits for the child's end or its deadline.
    pub fn wait(mut self) -> Result<Output, ChildError> {
        loop {
            if let Some(out) = self.poll()? {
                return Ok(out);
            }
            let left = self.deadline.saturating_sub(self.started.elapsed());
            self.take_output(left.min(POLL));
        }
    }

    /// Collects output that arrived, waiting up to `wait` for the first piece.
    fn take_output(&mut self, wait: Duration) {
        let mut first = !wait.is_zero();
        while self.readers > 0 {
            let got = if first {
                first = false;
                self.output.recv_timeout(wait).ok()
            } else {
                self.output.try_recv().ok()
            };
            let Some((is_err, buf)) = got else { break };
            self.readers -= 1;
            if is_err {
                self.stderr = buf;
            } else {
                self.stdout = buf;
            }
        }
    }

    /// SIGKILL to the whole group, then reap the child and collect what output comes.
    fn kill(&mut self) {
        self.done = true;
        // The group's id is the child's pid (process_group(0)); while the child is unreaped, or
        // any member of its group lives, that id cannot be reused.
        let pgid = i32::try_from(self.child.id()).map(Pid::from_raw);
        if let Ok(pgid) = pgid
            && let Err(e) = killpg(pgid, Signal::SIGKILL)
            && e != nix::errno::Errno::ESRCH
        {
            tracing::warn!("killing the process group of `{}`: {e}", self.line);
        }
        if self.status.is_none()
            && let Err(e) = self.child.wait()
        {
            tracing::warn!("reaping `{}`: {e}", self.line);
        }
        let until = Instant::now() + DRAIN;
        while self.readers > 0 && Instant::now() < until {
            self.take_output(POLL);
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if !self.done {
            tracing::warn!(
                "`{}` is still running and no longer awaited: killing it",
                self.line
            );
            self.kill();
        }
    }
}

/// `NAME=value program arg ...`, quoting what a shell would split.
pub fn command_line(cmd: &Command) -> String {
    let quote = |s: &OsStr| {
        let s = s.to_string_lossy();
        if !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@%+".contains(c))
        {
            s.into_owned()
        } else {
            format!("'{}'", s.replace('\'', r"'\''"))
        }
    };
    let env = cmd
        .get_envs()
        .filter_map(|(k, v)| v.map(|v| format!("{}={}", k.to_string_lossy(), quote(v))));
    env.chain(std::iter::once(quote(cmd.get_program())))
        .chain(cmd.get_args().map(quote))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
#[path = "child_tests.rs"]
mod tests;
