//! systemd units as systemd resolves them: the unit file and its drop-ins (see
//! [`super::unit_files`], or systemd's own list where it runs, see [`super::systemd_view`]),
//! their `[Service]` `ExecStart=` (with its `-@:+!` prefixes), `Environment=` and
//! `EnvironmentFile=` with `%` specifiers resolved, and the environment files themselves; and
//! what they amount to for etcd: its command line with every setting as a flag, whether it came
//! from the command line, an `ETCD_*` variable or etcd's `--config-file` YAML.

use std::path::{Path, PathBuf};

pub use super::unit_files::{UnitFiles, UnitSource};
use super::unit_specifiers::Specifiers;
pub use super::unit_specifiers::{HostFacts, UnitName};
pub use super::unit_syntax::{EnvLine, env_line, parse_env_file, split_words};
use super::unit_syntax::{is_var_name, logical_lines, next_word, set_env};
use crate::error::{AgentError, Result};
use crate::fsutil;
use crate::manifest::PodCommand;

/// Where systemd looks for a program named without a path (its fixed `PATH`).
const EXEC_SEARCH_PATH: [&str; 6] = [
    "/usr/local/sbin",
    "/usr/local/bin",
    "/usr/sbin",
    "/usr/bin",
    "/sbin",
    "/bin",
];

/// One command of `ExecStart=`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ExecCommand {
    /// The program, as written (specifiers resolved, prefixes removed).
    pub program: String,
    /// The arguments systemd passes, `$VAR`s not yet expanded; `argv[0]` is the program unless
    /// the `@` prefix named another.
    pub argv: Vec<String>,
    /// `-`: a failing exit is not a failure.
    pub ignore_failure: bool,
    /// `:`: `$VAR` is not expanded.
    pub no_env_expand: bool,
    /// `+`, `!` or `!!`: how privileges are applied (no effect on what runs).
    pub privileges: Option<String>,
}

/// The `[Service]` settings of a unit the agent needs, drop-ins applied.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Unit {
    /// The name systemd knows the unit by, e.g. `etcd@member1.service`.
    pub name: String,
    /// The unit file.
    pub path: PathBuf,
    /// The drop-ins applied over it, in order.
    pub drop_ins: Vec<PathBuf>,
    /// The `ExecStart=` commands (a unit etcd runs from has exactly one).
    pub exec: Vec<ExecCommand>,
    /// `Environment=` assignments, one per variable (a later one replaces the value in place).
    pub environment: Vec<(String, String)>,
    /// `EnvironmentFile=` paths, in order; `true` = optional (written with a leading `-`).
    pub environment_files: Vec<(PathBuf, bool)>,
    /// Who decided which files make the unit: "systemd" or the search path that was read.
    pub resolved_by: String,
}

impl Unit {
    /// Finds unit `name` in `source` and reads it.
    pub fn load(source: &UnitSource, name: &str, host: &HostFacts) -> Result<Self> {
        let parsed = UnitName::parse(name).ok_or_else(|| {
            AgentError::Precondition(format!(
                "{name:?} is not a systemd unit name (e.g. etcd.service or etcd@member1.service): \
                 fix `unit` in the agent config"
            ))
        })?;
        let files = source.resolve(&parsed)?;
        let by = match source {
            UnitSource::Root(r) => format!("systemd's search path under {}", r.display()),
            UnitSource::Dir(d) => format!("unit_dir {}", d.display()),
        };
        Self::from_files(&files, host, by)
    }

    /// Reads the unit file and drop-ins of `files`, in order.
    pub fn from_files(files: &UnitFiles, host: &HostFacts, resolved_by: String) -> Result<Self> {
        let mut unit = Self {
            name: files.name.full.clone(),
            path: files.fragment.clone(),
            drop_ins: files.drop_ins.clone(),
            resolved_by,
            ..Self::default()
        };
        let spec = Specifiers {
            name: &files.name,
            fragment: &files.fragment,
            host,
        };
        for file in std::iter::once(&files.fragment).chain(&files.drop_ins) {
            let text = std::fs::read_to_string(file)
                .map_err(|e| AgentError::io("reading unit file", file, e))?;
            unit.apply(&text, file, &spec)?;
        }
        match unit.exec.len() {
            1 => Ok(unit),
            0 => Err(AgentError::Precondition(format!(
                "systemd unit {} ({}) has no ExecStart= in [Service]",
                unit.name,
                unit.files()
            ))),
            n => Err(AgentError::Precondition(format!(
                "systemd unit {} ({}) has {n} ExecStart= commands; the unit that runs etcd must \
                 have exactly one (systemd allows several only for Type=oneshot)",
                unit.name,
                unit.files()
            ))),
        }
    }

    /// The unit file and drop-ins, for messages.
    pub fn files(&self) -> String {
        std::iter::once(&self.path)
            .chain(&self.drop_ins)
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The one `ExecStart=` command (checked when loaded).
    pub fn exec_start(&self) -> &ExecCommand {
        self.exec.first().expect("a loaded unit has one ExecStart=")
    }

    /// Applies one unit file or drop-in: later settings override, an empty assignment resets.
    pub fn apply(&mut self, text: &str, file: &Path, spec: &Specifiers<'_>) -> Result<()> {
        let mut section = String::new();
        for line in logical_lines(text) {
            let line = line.trim();
            if line.is_empty() || line.starts_with(['#', ';']) {
                continue;
            }
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = name.to_owned();
                continue;
            }
            if section != "Service" {
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            let (key, value) = (key.trim(), value.trim());
            let bad = |why: String| {
                AgentError::Precondition(format!(
                    "systemd unit {}: {}: {key}={value}: {why}; fix the line",
                    self.name,
                    file.display()
                ))
            };
            match key {
                "ExecStart" if value.is_empty() => self.exec.clear(),
                "ExecStart" => self.exec.extend(parse_exec(value, spec).map_err(bad)?),
                "Environment" if value.is_empty() => self.environment.clear(),
                "Environment" => {
                    for word in split_words(value).map_err(|e| bad(e.to_string()))? {
                        let word = spec.expand(&word).map_err(|e| bad(e.to_string()))?;
                        match word.split_once('=') {
                            Some((k, v)) if is_var_name(k) => {
                                set_env(&mut self.environment, k.into(), v.into());
                            }
                            _ => tracing::warn!(
                                "systemd unit {}: {}: ignoring {word:?} in Environment= (not \
                                 NAME=VALUE), as systemd does",
                                self.name,
                                file.display()
                            ),
                        }
                    }
                }
                "EnvironmentFile" if value.is_empty() => self.environment_files.clear(),
                "EnvironmentFile" => {
                    let value = spec.expand(value).map_err(|e| bad(e.to_string()))?;
                    let (path, optional) = match value.strip_prefix('-') {
                        Some(p) => (p, true),
                        None => (value.as_str(), false),
                    };
                    if !Path::new(path).is_absolute() {
                        return Err(bad("an EnvironmentFile= must be an absolute path".into()));
                    }
                    self.environment_files.push((PathBuf::from(path), optional));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The environment the service gets: `Environment=` first, then every environment file in
    /// order (later assignments win), one entry per variable. A missing required file is an
    /// error.
    pub fn environment(&self) -> Result<Vec<(String, String)>> {
        let mut env = self.environment.clone();
        for (file, optional) in &self.environment_files {
            match std::fs::read_to_string(file) {
                Ok(text) => {
                    for (k, v) in parse_env_file(&text) {
                        set_env(&mut env, k, v);
                    }
                }
                Err(e) if *optional && e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(AgentError::io(
                        format!("reading EnvironmentFile of {}:", self.name),
                        file,
                        e,
                    ));
                }
            }
        }
        Ok(env)
    }

    /// The environment files that exist.
    pub fn existing_env_files(&self) -> Vec<PathBuf> {
        self.environment_files
            .iter()
            .filter(|(p, _)| fsutil::exists(p))
            .map(|(p, _)| p.clone())
            .collect()
    }

    /// `ExecStart=`'s arguments with `$VAR`, `${VAR}` and `$$` expanded as systemd does (not
    /// with the `:` prefix): what `/proc/<pid>/cmdline` of the service shows.
    pub fn argv(&self, env: &[(String, String)]) -> Vec<String> {
        let exec = self.exec_start();
        if exec.no_env_expand {
            return exec.argv.clone();
        }
        expand_argv(&exec.argv, env)
    }

    /// The program systemd runs: an absolute path as written, a bare name looked up in
    /// systemd's fixed `PATH`.
    pub fn program(&self) -> String {
        let program = &self.exec_start().program;
        if program.contains('/') {
            return program.clone();
        }
        EXEC_SEARCH_PATH
            .iter()
            .map(|d| Path::new(d).join(program))
            .find(|p| p.is_file())
            .map_or_else(|| program.clone(), |p| p.display().to_string())
    }
}

/// Parses an `ExecStart=` value: one or more commands separated by a lone `;`, each with its
/// prefixes, words unquoted and unescaped, then specifiers resolved word by word.
fn parse_exec(value: &str, spec: &Specifiers<'_>) -> std::result::Result<Vec<ExecCommand>, String> {
    let mut commands = Vec::new();
    let mut rest = value;
    loop {
        let Some((first, tail)) = next_word(rest).map_err(|e| e.to_string())? else {
            return Ok(commands);
        };
        let mut cmd = ExecCommand::default();
        let mut argv0 = false;
        let mut f = first.as_str();
        loop {
            match f.chars().next() {
                Some('-') if !cmd.ignore_failure => cmd.ignore_failure = true,
                Some('@') if !argv0 => argv0 = true,
                Some(':') if !cmd.no_env_expand => cmd.no_env_expand = true,
                Some('+' | '!') if cmd.privileges.is_none() => {
                    cmd.privileges = Some(f[..1].to_owned());
                }
                Some('!') if cmd.privileges.as_deref() == Some("!") => {
                    cmd.privileges = Some("!!".into());
                }
                _ => break,
            }
            f = &f[1..];
        }
        if f.is_empty() {
            return Err("the command has no program".into());
        }
        cmd.program = spec.expand(f).map_err(|e| e.to_string())?;
        let mut words = Vec::new();
        rest = tail;
        let mut more = false;
        loop {
            let t = rest.trim_start();
            let lone = |s: &str| s.is_empty() || s.starts_with(char::is_whitespace);
            if let Some(after) = t.strip_prefix(';').filter(|a| lone(a)) {
                rest = after;
                more = true;
                break;
            }
            if let Some(after) = t.strip_prefix("\\;").filter(|a| lone(a)) {
                words.push(";".to_owned());
                rest = after;
                continue;
            }
            match next_word(t).map_err(|e| e.to_string())? {
                Some((w, tail)) => {
                    words.push(spec.expand(&w).map_err(|e| e.to_string())?);
                    rest = tail;
                }
                None => break,
            }
        }
        cmd.argv = if argv0 {
            if words.is_empty() {
                return Err("the @ prefix needs the argv[0] to pass after the program".into());
            }
            words
        } else {
            std::iter::once(cmd.program.clone()).chain(words).collect()
        };
        commands.push(cmd);
        if !more {
            return Ok(commands);
        }
    }
}

/// systemd's expansion of an argv: a word that is exactly `$NAME` becomes the variable's value
/// split at whitespace (no word when unset); `${NAME}` anywhere is replaced by the value, unsplit;
/// `$$` is `$`; any other `$` stays.
pub fn expand_argv(argv: &[String], env: &[(String, String)]) -> Vec<String> {
    let lookup = |name: &str| {
        env.iter()
            .rev()
            .find(|(k, _)| k == name)
            .map_or("", |(_, v)| v.as_str())
    };
    let mut out = Vec::new();
    for word in argv {
        if let Some(name) = word.strip_prefix('$').filter(|n| is_var_name(n)) {
            out.extend(lookup(name).split_whitespace().map(String::from));
            continue;
        }
        let mut w = String::new();
        let mut rest = word.as_str();
        while let Some(at) = rest.find('$') {
            w.push_str(&rest[..at]);
            let after = &rest[at + 1..];
            if let Some(tail) = after.strip_prefix('$') {
                w.push('$');
                rest = tail;
            } else if let Some((name, tail)) = after
                .strip_prefix('{')
                .and_then(|a| a.split_once('}'))
                .filter(|(n, _)| is_var_name(n))
            {
                w.push_str(lookup(name));
                rest = tail;
            } else {
                w.push('$');
                rest = after;
            }
        }
        w.push_str(rest);
        out.push(w);
    }
    out
}

/// `ETCD_INITIAL_CLUSTER_TOKEN` → `initial-cluster-token`; `None` for other variables.
pub fn etcd_flag_of_env(key: &str) -> Option<String> {
    let rest = key.strip_prefix("ETCD_")?;
    (!rest.is_empty()).then(|| rest.to_ascii_lowercase().replace('_', "-"))
}

/// `initial-cluster-token` → `ETCD_INITIAL_CLUSTER_TOKEN`.
pub fn etcd_env_of_flag(flag: &str) -> String {
    format!("ETCD_{}", flag.to_ascii_uppercase().replace('-', "_"))
}

/// etcd's settings from its unit: `ETCD_*` variables as flags, then the flags of `ExecStart`
/// (which win, as in etcd). With `--config-file`, etcd reads only that file: its top-level
/// scalar keys become the flags. `argv` is the expanded `ExecStart` (see [`Unit::argv`]).
pub fn etcd_command(unit: &Unit, argv: &[String], env: &[(String, String)]) -> Result<PodCommand> {
    let program = unit.program();
    let flags = argv.get(1..).unwrap_or_default();
    let mut full = vec![program.clone()];
    full.extend(
        env.iter()
            .filter_map(|(k, v)| Some(format!("--{}={v}", etcd_flag_of_env(k)?))),
    );
    full.extend(flags.iter().cloned());
    let files: Vec<String> = unit
        .environment_files
        .iter()
        .map(|(p, _)| p.display().to_string())
        .collect();
    let mut command = PodCommand {
        path: unit.path.clone(),
        argv: full,
        source: format!(
            "systemd unit {} (flags on ExecStart in {}{}; files as resolved by {})",
            unit.name,
            unit.files(),
            if files.is_empty() {
                String::new()
            } else {
                format!(" and ETCD_* variables in {}", files.join(", "))
            },
            unit.resolved_by
        ),
    };
    if let Some(config) = command.flag("config-file").map(PathBuf::from) {
        let text = std::fs::read_to_string(&config)
            .map_err(|e| AgentError::io("reading etcd's --config-file", &config, e))?;
        let mut argv = vec![program, format!("--config-file={}", config.display())];
        argv.extend(config_flags(&text, &config)?);
        command.argv = argv;
        command.source = format!(
            "etcd config file {} (of systemd unit {})",
            config.display(),
            unit.name
        );
    }
    Ok(command)
}

/// The top-level scalar settings of an etcd config file as `--key=value` flags.
pub fn config_flags(text: &str, path: &Path) -> Result<Vec<String>> {
    let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(text).map_err(|e| {
        AgentError::Precondition(format!(
            "etcd config file {} is not valid YAML: {e}",
            path.display()
        ))
    })?;
    let serde_yaml_ng::Value::Mapping(map) = doc else {
        return Ok(Vec::new());
    };
    Ok(map
        .iter()
        .filter_map(|(k, v)| {
            let value = match v {
                serde_yaml_ng::Value::String(s) => s.clone(),
                serde_yaml_ng::Value::Bool(b) => b.to_string(),
                serde_yaml_ng::Value::Number(n) => n.to_string(),
                _ => return None,
            };
            Some(format!("--{}={value}", k.as_str()?))
        })
        .collect())
}

#[cfg(test)]
#[path = "unit_tests.rs"]
mod tests;
