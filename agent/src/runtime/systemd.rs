//! systemd units: stopped with `systemctl stop`, started with `systemctl start --no-block`. The
//! unit file never moves. Whether the component is down or up is judged by its process and its
//! ports (see [`super::checks`]), never by systemctl's exit code: `--no-block` returns once the
//! job is queued, and an etcd unit of `Type=notify` would otherwise block `start` until the
//! member has a quorum, which a restored member started alone never has.
//!
//! The unit is read as systemd resolves it: where systemd runs and the agent reads the host's
//! own units, from systemd's view (`systemctl show`, see [`super::systemd_view`]); otherwise from
//! the search path under the configured root (see [`super::unit_files`]).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::checks::{self, Component, Target};
use super::systemd_view;
use super::unit::{self, HostFacts, Unit, UnitSource};
use super::{Progress, Runtime, SettingsFile, SettingsFormat};
use crate::child::{Runner, Running};
use crate::error::{AgentError, Result};
use crate::manifest::PodCommand;

/// Variables that tell one etcd apart from another with the same command line (in a lab, or on
/// a host with two etcd units): they do not change when RESTORE rewrites the cluster settings.
const IDENTITY_ENV: [&str; 2] = ["ETCD_NAME", "ETCD_DATA_DIR"];

/// A component run by systemd from a unit.
#[derive(Debug, Clone)]
pub struct Systemd {
    pub component: Component,
    /// e.g. `etcd.service`, `etcd@member1.service`.
    pub unit: String,
    /// Where the unit's files are looked up.
    pub units: UnitSource,
    pub systemctl: PathBuf,
    pub stop_timeout: Duration,
    pub start_timeout: Duration,
    /// Whether systemd's own view is asked first: the host's units, with systemd running.
    pub ask_systemd: bool,
    /// Runs `systemctl` under the `[limits]` deadline.
    pub runner: Runner,
    /// The unit's nominal file (see [`UnitSource::nominal_path`]); it never moves.
    path: PathBuf,
}

impl Systemd {
    pub fn new(
        component: Component,
        unit: String,
        units: UnitSource,
        systemctl: PathBuf,
        stop_timeout: Duration,
        start_timeout: Duration,
        runner: Runner,
    ) -> Self {
        let path = units.nominal_path(&unit);
        Self {
            component,
            runner,
            unit,
            ask_systemd: units.is_host_root() && systemd_view::systemd_runs(),
            units,
            systemctl,
            stop_timeout,
            start_timeout,
            path,
        }
    }

    fn load(&self) -> Result<Unit> {
        let systemctl = self
            .ask_systemd
            .then_some((self.systemctl.as_path(), &self.runner));
        systemd_view::load_unit(&self.units, &self.unit, systemctl, &HostFacts::read())
    }

    /// The process as it runs and the flags it runs with, from the unit as it is now.
    fn target(&self) -> Result<Target> {
        let unit = self.load()?;
        let env = unit.environment()?;
        let argv = unit.argv(&env);
        let (command, identity) = match self.component {
            Component::Etcd => {
                let identity = env
                    .iter()
                    .filter(|(k, _)| IDENTITY_ENV.contains(&k.as_str()))
                    .cloned()
                    .collect();
                (unit::etcd_command(&unit, &argv, &env)?, identity)
            }
            Component::Apiserver { .. } | Component::Controller { .. } => {
                let command = PodCommand {
                    path: unit.path.clone(),
                    argv: std::iter::once(unit.program())
                        .chain(argv.iter().skip(1).cloned())
                        .collect(),
                    source: format!(
                        "systemd unit {} (ExecStart in {}; files as resolved by {})",
                        unit.name,
                        unit.files(),
                        unit.resolved_by
                    ),
                };
                (command, Vec::new())
            }
        };
        Ok(Target {
            argv,
            env: identity,
            command,
        })
    }

    fn spawn(&self, args: &[&str]) -> Result<Running> {
        let mut cmd = Command::new(&self.systemctl);
        cmd.args(args).arg(&self.unit);
        self.runner
            .spawn(&mut cmd, self.runner.limits.systemctl, "systemctl")
            .map_err(|e| {
                AgentError::CommandFailed(format!(
                    "{e}; install systemd's systemctl or set `systemctl` in the agent config"
                ))
            })
    }

    /// `None` while systemctl runs; an error when it ended with a failure, naming its output,
    /// or ran past its deadline (it is then killed).
    fn finished(&self, child: &mut Option<Running>) -> Result<Option<()>> {
        let Some(c) = child.as_mut() else {
            return Ok(Some(()));
        };
        let Some(out) = c.poll()? else {
            return Ok(None);
        };
        let what = c.line().to_owned();
        *child = None;
        if out.status.success() {
            return Ok(Some(()));
        }
        Err(AgentError::CommandFailed(format!(
            "`{what}` on {} failed ({}): {}{}; check `systemctl status {}` and `journalctl -u {}`",
            self.runner.who,
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim(),
            self.unit,
            self.unit
        )))
    }

    /// Runs `systemctl <args> <unit>` and waits until it has returned and `check` passes.
    fn drive(
        &self,
        args: &[&str],
        timeout: Duration,
        progress: Progress<'_>,
        mut check: impl FnMut() -> Result<Option<String>>,
    ) -> Result<std::result::Result<Duration, String>> {
        let what = format!("systemctl {} {}", args.join(" "), self.unit);
        progress(what.clone());
        let mut child = Some(self.spawn(args)?);
        // Dropped still running (the step's own timeout passed first), systemctl is killed.
        checks::wait(timeout, progress, || {
            if self.finished(&mut child)?.is_none() {
                return Ok(Some(format!("waiting for `{what}` to return")));
            }
            check()
        })
    }
}

impl Runtime for Systemd {
    fn kind(&self) -> &'static str {
        "systemd"
    }

    fn definition(&self) -> &Path {
        &self.path
    }

    fn is_running(&self, _aside: Option<&Path>) -> Result<bool> {
        let target = self.target().map_err(|e| {
            AgentError::Precondition(format!(
                "cannot tell whether {} runs: its unit {} cannot be read ({e})",
                self.component.label(),
                self.unit
            ))
        })?;
        Ok(!target.pids()?.is_empty())
    }

    fn present(&self, _aside: &Path) -> bool {
        let systemctl = self
            .ask_systemd
            .then_some((self.systemctl.as_path(), &self.runner));
        systemd_view::unit_exists(&self.units, &self.unit, systemctl)
    }

    fn stop(&self, _aside: &Path, progress: Progress<'_>) -> Result<String> {
        let target = self.target()?;
        let ports = target.ports(&self.component)?;
        let label = self.component.label();
        // Asked even when already down, so that systemd does not restart it (Restart=always).
        let waited = self.drive(&["stop"], self.stop_timeout, progress, || {
            checks::still_up(&self.component, &target, &ports)
        })?;
        match waited {
            Ok(took) => Ok(format!(
                "{label} stopped with systemctl stop {} ({:.1}s)",
                self.unit,
                took.as_secs_f64()
            )),
            Err(why) => Err(AgentError::Timeout(format!(
                "{label} is not down {:?} after `systemctl stop {}` ({why}); check `systemctl \
                 status {}` and `journalctl -u {}`, then run the step again",
                self.stop_timeout, self.unit, self.unit, self.unit
            ))),
        }
    }

    fn start(&self, _aside: &Path, progress: Progress<'_>) -> Result<String> {
        let target = self.target()?;
        let ports = target.ports(&self.component)?;
        let label = self.component.label();
        let waited = self.drive(
            &["start", "--no-block"],
            self.start_timeout,
            progress,
            || checks::not_up(&self.component, &target, &ports, "systemd"),
        )?;
        match waited {
            Ok(took) => Ok(format!(
                "{label} is up, started with systemctl start {} ({:.1}s)",
                self.unit,
                took.as_secs_f64()
            )),
            Err(why) => Err(AgentError::Timeout(format!(
                "{label} is not up {:?} after `systemctl start {}` ({why}); check `systemctl \
                 status {}` and `journalctl -u {}`, then run the step again",
                self.start_timeout, self.unit, self.unit, self.unit
            ))),
        }
    }

    fn command(&self, _asides: &[PathBuf]) -> Result<PodCommand> {
        Ok(self.target()?.command)
    }

    fn settings_files(&self) -> Result<Vec<SettingsFile>> {
        if !matches!(self.component, Component::Etcd) {
            return Ok(Vec::new());
        }
        let unit = self.load()?;
        let mut files: Vec<SettingsFile> = unit
            .existing_env_files()
            .into_iter()
            .map(|path| SettingsFile {
                path,
                format: SettingsFormat::Env,
            })
            .collect();
        if let Some(config) = self.target()?.command.flag("config-file") {
            files.push(SettingsFile {
                path: config.into(),
                format: SettingsFormat::EtcdYaml,
            });
        }
        Ok(files)
    }
}
