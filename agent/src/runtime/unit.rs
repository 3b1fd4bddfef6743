//! systemd unit files as the agent reads them: `[Service]` `ExecStart=`, `Environment=`,
//! `EnvironmentFile=` (with drop-ins from `<unit>.d/*.conf`), and the environment files
//! themselves; and what they amount to for etcd: its command line with every setting as a flag,
//! whether it came from the command line, an `ETCD_*` variable or etcd's `--config-file` YAML.

use std::path::{Path, PathBuf};

use crate::error::{AgentError, Result};
use crate::fsutil;
use crate::manifest::PodCommand;

/// The `[Service]` settings of a unit the agent needs, drop-ins applied.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Unit {
    pub name: String,
    /// The unit file.
    pub path: PathBuf,
    /// `ExecStart=` split into words (prefixes like `-` or `+` removed, variables not expanded).
    pub exec_start: Vec<String>,
    /// `Environment=` assignments, in order.
    pub environment: Vec<(String, String)>,
    /// `EnvironmentFile=` paths, in order; `true` = optional (written with a leading `-`).
    pub environment_files: Vec<(PathBuf, bool)>,
}

impl Unit {
    /// Reads `<unit_dir>/<name>` and its drop-ins. A missing unit file is an error that names the
    /// unit and the dir.
    pub fn load(unit_dir: &Path, name: &str) -> Result<Self> {
        let path = unit_dir.join(name);
        if !path.is_file() {
            return Err(AgentError::Precondition(format!(
                "systemd unit {name} not found: there is no unit file {} in {}; set the unit's \
                 name (`unit`) and the directory holding its file (`unit_dir`) in the agent \
                 config (`systemctl cat {name}` shows where it lives)",
                path.display(),
                unit_dir.display()
            )));
        }
        let mut unit = Self {
            name: name.to_owned(),
            path: path.clone(),
            ..Self::default()
        };
        let mut files = vec![path];
        let drop_ins = unit_dir.join(format!("{name}.d"));
        if let Ok(entries) = std::fs::read_dir(&drop_ins) {
            let mut confs: Vec<PathBuf> = entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "conf"))
                .collect();
            confs.sort();
            files.extend(confs);
        }
        for file in files {
            let text = std::fs::read_to_string(&file)
                .map_err(|e| AgentError::io("reading unit file", &file, e))?;
            unit.apply(&text);
        }
        if unit.exec_start.is_empty() {
            return Err(AgentError::Precondition(format!(
                "systemd unit {name} ({}) has no ExecStart= in [Service]",
                unit.path.display()
            )));
        }
        Ok(unit)
    }

    /// Applies one unit file or drop-in: later settings override, an empty assignment resets.
    pub fn apply(&mut self, text: &str) {
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
            let value = value.trim();
            match key.trim() {
                "ExecStart" if value.is_empty() => self.exec_start.clear(),
                "ExecStart" => {
                    let value = value.trim_start_matches(['-', '@', '+', '!', ':']);
                    self.exec_start = split_words(value);
                }
                "Environment" if value.is_empty() => self.environment.clear(),
                "Environment" => self.environment.extend(
                    split_words(value)
                        .into_iter()
                        .filter_map(|w| w.split_once('=').map(|(k, v)| (k.into(), v.into()))),
                ),
                "EnvironmentFile" if value.is_empty() => self.environment_files.clear(),
                "EnvironmentFile" => {
                    let (path, optional) = match value.strip_prefix('-') {
                        Some(p) => (p, true),
                        None => (value, false),
                    };
                    self.environment_files.push((PathBuf::from(path), optional));
                }
                _ => {}
            }
        }
    }

    /// The environment the service gets: `Environment=` first, then every environment file in
    /// order (later assignments win). A missing required file is an error.
    pub fn environment(&self) -> Result<Vec<(String, String)>> {
        let mut env = self.environment.clone();
        for (file, optional) in &self.environment_files {
            match std::fs::read_to_string(file) {
                Ok(text) => env.extend(parse_env_file(&text)),
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

    /// `ExecStart=` with `${VAR}` and `$VAR` expanded as systemd does: what `/proc/<pid>/cmdline`
    /// of the service shows.
    pub fn argv(&self, env: &[(String, String)]) -> Vec<String> {
        let lookup = |name: &str| {
            env.iter()
                .rev()
                .find(|(k, _)| k == name)
                .map_or("", |(_, v)| v.as_str())
                .to_owned()
        };
        let mut argv = Vec::new();
        for word in &self.exec_start {
            if let Some(name) = word.strip_prefix('$').filter(|n| is_var_name(n)) {
                argv.extend(lookup(name).split_whitespace().map(String::from));
                continue;
            }
            let mut out = String::new();
            let mut rest = word.as_str();
            while let Some(at) = rest.find("${") {
                out.push_str(&rest[..at]);
                match rest[at + 2..].find('}') {
                    Some(end) => {
                        out.push_str(&lookup(&rest[at + 2..at + 2 + end]));
                        rest = &rest[at + 3 + end..];
                    }
                    None => {
                        out.push_str(&rest[at..]);
                        rest = "";
                    }
                }
            }
            out.push_str(rest);
            argv.push(out.replace("%%", "%"));
        }
        argv
    }
}

fn is_var_name(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Joins lines ending in a backslash with the next one.
fn logical_lines(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        match line.strip_suffix('\\') {
            Some(head) => {
                current.push_str(head);
                current.push(' ');
            }
            None => {
                current.push_str(line);
                out.push(std::mem::take(&mut current));
            }
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// Splits a command line into words: whitespace separates, `"…"` and `'…'` quote, a backslash
/// escapes the next character.
pub fn split_words(s: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (_, '\\') => {
                if let Some(n) = chars.next() {
                    word.push(n);
                }
                in_word = true;
            }
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => word.push(c),
            (None, '"' | '\'') => {
                quote = Some(c);
                in_word = true;
            }
            (None, c) if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            (None, c) => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

/// One assignment of an environment file: the key and where its value starts and ends in the
/// line, with the value's quote character.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvLine<'a> {
    pub key: &'a str,
    /// The line up to and including `=`.
    pub head: &'a str,
    pub raw_value: &'a str,
    pub quote: Option<char>,
}

/// Parses a line `[export ]KEY=VALUE` (comments and blank lines give `None`).
pub fn env_line(line: &str) -> Option<EnvLine<'_>> {
    let trimmed = line.trim_start();
    if trimmed.is_empty() || trimmed.starts_with(['#', ';']) {
        return None;
    }
    let eq = line.find('=')?;
    let key = line[..eq].trim();
    let key = key.strip_prefix("export ").map_or(key, str::trim);
    if !is_var_name(key) {
        return None;
    }
    let raw_value = line[eq + 1..].trim();
    let quote = raw_value
        .chars()
        .next()
        .filter(|c| matches!(c, '"' | '\''))
        .filter(|q| raw_value.len() >= 2 && raw_value.ends_with(*q));
    Some(EnvLine {
        key,
        head: &line[..=eq],
        raw_value,
        quote,
    })
}

/// The assignments of a systemd `EnvironmentFile=`, in order.
pub fn parse_env_file(text: &str) -> Vec<(String, String)> {
    logical_lines(text)
        .iter()
        .filter_map(|line| {
            let l = env_line(line)?;
            let value = match l.quote {
                Some(_) => split_words(l.raw_value).concat(),
                None => l.raw_value.to_owned(),
            };
            Some((l.key.to_owned(), value))
        })
        .collect()
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
/// scalar keys become the flags.
pub fn etcd_command(unit: &Unit, argv: &[String], env: &[(String, String)]) -> Result<PodCommand> {
    let (program, flags) = argv.split_first().ok_or_else(|| {
        AgentError::Precondition(format!(
            "systemd unit {} has an empty ExecStart=",
            unit.name
        ))
    })?;
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
            "systemd unit {} (flags on ExecStart in {}{})",
            unit.name,
            unit.path.display(),
            if files.is_empty() {
                String::new()
            } else {
                format!(" and ETCD_* variables in {}", files.join(", "))
            }
        ),
    };
    if let Some(config) = command.flag("config-file").map(PathBuf::from) {
        let text = std::fs::read_to_string(&config)
            .map_err(|e| AgentError::io("reading etcd's --config-file", &config, e))?;
        let mut argv = vec![
            program.clone(),
            format!("--config-file={}", config.display()),
        ];
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
