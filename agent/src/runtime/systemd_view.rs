//! systemd's own view of a unit, preferred where systemd runs (PID 1 is systemd:
//! `/run/systemd/system` exists). `systemctl show` says which files systemd loaded
//! (`FragmentPath`, `DropInPaths`), whether it could (`LoadState`), whether they changed on disk
//! since (`NeedDaemonReload`), and the command it will run (`ExecStart`). The agent reads those
//! files itself (for the environment files and specifiers) and checks that its reading gives
//! systemd's command; where `systemctl show` cannot answer, it reads the search path instead.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::unit::{HostFacts, Unit, UnitFiles, UnitName, UnitSource};
use crate::child::Runner;
use crate::error::{AgentError, Result};

/// The properties asked of `systemctl show`.
pub const PROPERTIES: &str = "Id,LoadState,FragmentPath,DropInPaths,NeedDaemonReload,ExecStart";

/// What `systemctl show` says about a unit.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Shown {
    pub id: String,
    pub load_state: String,
    pub fragment: Option<PathBuf>,
    pub drop_ins: Vec<PathBuf>,
    pub need_reload: bool,
    /// `(path, argv joined by spaces)` of each `ExecStart=` command.
    pub exec: Vec<(String, String)>,
}

/// True where systemd is the init system (`sd_booted()`).
pub fn systemd_runs() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

/// Reads unit `name`: from systemd's view when `systemctl` (with the runner that runs it under
/// its deadline) is given and answers, else from `source`'s search path.
pub fn load_unit(
    source: &UnitSource,
    name: &str,
    systemctl: Option<(&Path, &Runner)>,
    host: &HostFacts,
) -> Result<Unit> {
    if let Some((systemctl, runner)) = systemctl
        && let Some(shown) = ask(systemctl, runner, name)?
    {
        return from_shown(&shown, name, host);
    }
    Unit::load(source, name, host)
}

/// True when unit `name` exists: systemd knows it (when `systemctl` is given and answers), else
/// its file is found in `source`'s search path. A masked unit does not count: it cannot run.
pub fn unit_exists(source: &UnitSource, name: &str, systemctl: Option<(&Path, &Runner)>) -> bool {
    if let Some((systemctl, runner)) = systemctl {
        match ask(systemctl, runner, name) {
            Ok(Some(shown)) => return !matches!(shown.load_state.as_str(), "not-found" | "masked"),
            Ok(None) => {}
            Err(e) => tracing::warn!("{e}; looking for {name} on the search path instead"),
        }
    }
    UnitName::parse(name).is_some_and(|n| source.resolve(&n).is_ok())
}

/// Runs `systemctl show`; `None` (with a warning) when it cannot answer; an error when it hung
/// past its deadline (it was killed: systemd is in trouble, and the unit files may not be what
/// it runs).
fn ask(systemctl: &Path, runner: &Runner, name: &str) -> Result<Option<Shown>> {
    let mut cmd = Command::new(systemctl);
    cmd.args(["show", "--property", PROPERTIES, "--", name]);
    let out = runner.run(&mut cmd, runner.limits.systemctl, "systemctl");
    Ok(match out {
        Ok(o) if o.status.success() => Some(parse_show(&String::from_utf8_lossy(&o.stdout))),
        Ok(o) => {
            tracing::warn!(
                "`{} show {name}` failed ({}): {}; reading the unit files instead",
                systemctl.display(),
                o.status,
                String::from_utf8_lossy(&o.stderr).trim()
            );
            None
        }
        Err(e @ crate::child::ChildError::Deadline { .. }) => return Err(e.into()),
        Err(e) => {
            tracing::warn!("{e}; reading the unit files instead");
            None
        }
    })
}

/// Parses `systemctl show` output (`Key=Value` lines).
pub fn parse_show(text: &str) -> Shown {
    let mut shown = Shown::default();
    for line in text.lines() {
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        match key {
            "Id" => shown.id = value.to_owned(),
            "LoadState" => shown.load_state = value.to_owned(),
            "FragmentPath" if !value.is_empty() => shown.fragment = Some(value.into()),
            "DropInPaths" => shown
                .drop_ins
                .extend(value.split_whitespace().map(PathBuf::from)),
            "NeedDaemonReload" => shown.need_reload = value == "yes",
            "ExecStart" => shown.exec.extend(exec_of(value)),
            _ => {}
        }
    }
    shown
}

/// `{ path=/usr/bin/etcd ; argv[]=/usr/bin/etcd --name a ; ignore_errors=no ; … }` →
/// (path, argv).
fn exec_of(value: &str) -> Option<(String, String)> {
    let inner = value.trim().strip_prefix('{')?.strip_suffix('}')?.trim();
    let rest = inner.strip_prefix("path=")?;
    let (path, rest) = rest.split_once(" ; argv[]=")?;
    let end = [" ; ignore_errors=", " ; flags="]
        .iter()
        .filter_map(|m| rest.find(m))
        .min()
        .unwrap_or(rest.len());
    Some((path.to_owned(), rest[..end].to_owned()))
}

/// The unit as systemd loaded it, checked against systemd's command.
fn from_shown(shown: &Shown, name: &str, host: &HostFacts) -> Result<Unit> {
    let status = format!("check `systemctl status {name}`");
    match shown.load_state.as_str() {
        "loaded" => {}
        "not-found" => {
            return Err(AgentError::Precondition(format!(
                "systemd has no unit {name} (LoadState=not-found): set `unit` in the agent \
                 config to the unit that runs etcd (`systemctl list-units '*etcd*'`), or run \
                 `systemctl daemon-reload` if its file was just added"
            )));
        }
        "masked" => {
            return Err(AgentError::Precondition(format!(
                "systemd unit {name} is masked: systemd will not start it; unmask it \
                 (`systemctl unmask {name}`) or configure the unit that runs etcd"
            )));
        }
        other => {
            return Err(AgentError::Precondition(format!(
                "systemd could not load unit {name} (LoadState={other}): {status} and fix the \
                 unit file"
            )));
        }
    }
    if shown.need_reload {
        return Err(AgentError::Precondition(format!(
            "the unit files of {name} changed on disk since systemd loaded them \
             (NeedDaemonReload=yes): systemd would start etcd with settings no file shows; \
             review the change and run `systemctl daemon-reload`, then retry"
        )));
    }
    let id = UnitName::parse(&shown.id)
        .or_else(|| UnitName::parse(name))
        .ok_or_else(|| {
            AgentError::Precondition(format!(
                "systemctl show {name} gave the unit id {:?}, which is not a unit name",
                shown.id
            ))
        })?;
    let fragment = shown.fragment.clone().ok_or_else(|| {
        AgentError::Precondition(format!(
            "systemd runs {name} without a unit file (no FragmentPath: a transient or generated \
             unit): quorate cannot read its settings; run etcd from a unit file"
        ))
    })?;
    let files = UnitFiles {
        name: id,
        fragment,
        drop_ins: shown.drop_ins.clone(),
    };
    let unit = Unit::from_files(&files, host, "systemd (systemctl show)".into())?;
    let ours = unit.exec_start();
    let theirs = shown.exec.first();
    let same = shown.exec.len() == 1
        && theirs.is_some_and(|(path, argv)| {
            (*path == unit.program() || *path == ours.program) && *argv == ours.argv.join(" ")
        });
    if !same {
        return Err(AgentError::Precondition(format!(
            "systemd will run {name} as {} but its unit files ({}) say `{}`: quorate would \
             misread etcd's settings; {status}, run `systemctl daemon-reload` if the files \
             changed, then retry",
            shown
                .exec
                .iter()
                .map(|(p, a)| format!("`{a}` (program {p})"))
                .collect::<Vec<_>>()
                .join(" then "),
            unit.files(),
            ours.argv.join(" ")
        )));
    }
    Ok(unit)
}

#[cfg(test)]
#[path = "systemd_view_tests.rs"]
mod tests;
