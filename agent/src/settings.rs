//! Rewriting the initial-cluster settings that an etcd environment file (`ETCD_INITIAL_CLUSTER`,
//! `ETCD_INITIAL_CLUSTER_TOKEN`, as kubespray writes them) or etcd config file
//! (`initial-cluster`, `initial-cluster-token`) restates, so that after a restore they describe
//! the restored cluster; and putting the originals back when the restore is reverted.
//!
//! etcd ignores these settings once its data dir exists, but operators read them. Only keys the
//! file already sets are changed; every other byte is kept. Each file is replaced atomically
//! (temp file with the original's owner and mode, fsync, rename, fsync the dir), and the original
//! is copied to the restore's state dir first.

use std::fs;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use quorate_proto::durable;

use crate::error::{AgentError, Result};
use crate::fsutil::{self, Ownership};
use crate::runtime::unit::{env_line, etcd_env_of_flag};
use crate::runtime::{SettingsFile, SettingsFormat};

/// The etcd settings RESTORE rewrites, by flag name.
pub const CLUSTER_TOKEN: &str = "initial-cluster-token";
pub const INITIAL_CLUSTER: &str = "initial-cluster";

/// One file rewritten by RESTORE, as journaled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEdit {
    pub path: PathBuf,
    pub format: SettingsFormat,
    /// The copy of the original in the restore's state dir.
    pub original: PathBuf,
    /// The keys changed, as written in the file.
    pub keys: Vec<String>,
    /// The file's owner and mode before RESTORE changed it: every rewrite keeps them, and a
    /// revert that finds the file gone puts it back with them. Absent in older journals.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<Ownership>,
}

/// Owner and mode of the file at `path` (a symlink followed, as the rewrite follows it).
pub fn owner_of(path: &Path) -> Result<Ownership> {
    let meta = fs::metadata(path).map_err(|e| AgentError::io("reading owner of", path, e))?;
    Ok(Ownership {
        uid: meta.uid(),
        gid: meta.gid(),
        mode: meta.mode() & 0o7777,
    })
}

/// `text` with each `(flag, value)` set where an assignment of it already exists; returns the new
/// text and the keys changed (in the file's spelling). Refuses a file it cannot edit safely.
pub fn rewrite(
    text: &str,
    format: SettingsFormat,
    values: &[(&str, &str)],
    path: &Path,
) -> Result<(String, Vec<String>)> {
    match format {
        SettingsFormat::Env => rewrite_env(text, values, path),
        SettingsFormat::EtcdYaml => rewrite_yaml(text, values, path),
    }
}

fn rewrite_env(text: &str, values: &[(&str, &str)], path: &Path) -> Result<(String, Vec<String>)> {
    let wanted: Vec<(String, &str)> = values
        .iter()
        .map(|(flag, v)| (etcd_env_of_flag(flag), *v))
        .collect();
    let mut out = String::with_capacity(text.len());
    let mut changed = Vec::new();
    let mut continued = false;
    for line in text.split_inclusive('\n') {
        let (body, end) = split_eol(line);
        let parsed = if continued { None } else { env_line(body) };
        continued = body.ends_with('\\');
        let Some(l) = parsed else {
            out.push_str(line);
            continue;
        };
        let Some((key, value)) = wanted.iter().find(|(k, _)| k == l.key) else {
            out.push_str(line);
            continue;
        };
        if continued {
            return Err(AgentError::Precondition(format!(
                "cannot rewrite {key} in {}: its value continues on the next line; edit it by \
                 hand",
                path.display()
            )));
        }
        let quoted = env_value(value, l.quote).ok_or_else(|| {
            AgentError::InvalidRequest(format!(
                "cannot write {key} into {}: the value {value:?} holds a control character",
                path.display()
            ))
        })?;
        out.push_str(l.head);
        out.push_str(&quoted);
        out.push_str(end);
        if !changed.contains(key) {
            changed.push(key.clone());
        }
    }
    Ok((out, changed))
}

/// `value` written so that systemd (`EnvironmentFile=`) and a POSIX shell (`. file`) both read
/// exactly `value`, in the file's quoting where that can hold it: bare when every character is
/// plain (letters, digits, `_ . , : / = @ % + -`) and the file had it bare; single quotes when it
/// had them, or when a bare value would not be plain and holds no `'`; else double quotes with
/// `"`, `\`, `$` and the backquote escaped (both read those four escapes, and keep any other
/// backslash as it is). `None` for
/// a control character (a newline would end the assignment for systemd, not for a shell).
pub fn env_value(value: &str, quote: Option<char>) -> Option<String> {
    if value.chars().any(char::is_control) {
        return None;
    }
    let plain = |c: char| c.is_ascii_alphanumeric() || "_.,:/=@%+-".contains(c);
    let bare = !value.is_empty() && value.chars().all(plain);
    Some(match quote {
        None if bare => value.to_owned(),
        None | Some('\'') if !value.contains('\'') => format!("'{value}'"),
        _ => {
            let mut out = String::with_capacity(value.len() + 2);
            out.push('"');
            for c in value.chars() {
                if matches!(c, '"' | '\\' | '$' | '`') {
                    out.push('\\');
                }
                out.push(c);
            }
            out.push('"');
            out
        }
    })
}

fn split_eol(line: &str) -> (&str, &str) {
    let body = line.trim_end_matches(['\n', '\r']);
    (body, &line[body.len()..])
}

fn rewrite_yaml(text: &str, values: &[(&str, &str)], path: &Path) -> Result<(String, Vec<String>)> {
    let mut out = String::with_capacity(text.len());
    let mut changed: Vec<String> = Vec::new();
    for line in text.split_inclusive('\n') {
        let (body, end) = split_eol(line);
        let hit = values.iter().find(|(key, _)| {
            body.strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with(':'))
        });
        match hit {
            Some((key, value)) => {
                out.push_str(&format!("{key}: '{}'{end}", value.replace('\'', "''")));
                if !changed.iter().any(|c| c == key) {
                    changed.push((*key).to_owned());
                }
            }
            None => out.push_str(line),
        }
    }
    // Check the result means what was meant: the new values, every other key as before.
    let parse = |t: &str| -> Result<serde_yaml_ng::Mapping> {
        serde_yaml_ng::from_str(t).map_err(|e| {
            AgentError::Precondition(format!(
                "cannot rewrite {}: it is not a YAML mapping ({e}); edit it by hand",
                path.display()
            ))
        })
    };
    let (mut before, mut after) = (parse(text)?, parse(&out)?);
    for (key, value) in values {
        let got = after.remove(*key);
        let had = before.remove(*key);
        let ok = if changed.iter().any(|c| c == key) {
            got.as_ref().and_then(|v| v.as_str()) == Some(*value)
        } else {
            got == had
        };
        if !ok {
            return Err(AgentError::Precondition(format!(
                "cannot rewrite {key} in {} line by line (a multi-line or nested value?); edit it \
                 by hand",
                path.display()
            )));
        }
    }
    if before != after {
        return Err(AgentError::Precondition(format!(
            "rewriting {} line by line would change other settings; edit it by hand",
            path.display()
        )));
    }
    Ok((out, changed))
}

/// Replaces `path` with `bytes` atomically, keeping its owner and mode: temp file in the same
/// dir, fsync, rename, fsync the dir.
pub fn replace_file(path: &Path, bytes: &[u8]) -> Result<()> {
    let meta = fs::metadata(path).map_err(|e| AgentError::io("reading", path, e))?;
    let owner = Some((meta.uid(), meta.gid()));
    Ok(durable::write_atomic_owned(
        path,
        bytes,
        meta.mode() & 0o7777,
        owner,
    )?)
}

/// Where the original of the `index`-th settings file is kept for restore dir `restore_dir`.
pub fn original_copy(restore_dir: &Path, index: usize, file: &Path) -> PathBuf {
    let name = file
        .file_name()
        .map_or_else(|| "settings".into(), |n| n.to_string_lossy().into_owned());
    restore_dir.join("settings").join(format!("{index}-{name}"))
}

/// Keeps a copy of `file` at `copy` unless one is there already (a repeated step must not
/// overwrite the original with its own edit).
pub fn keep_original(file: &SettingsFile, copy: &Path) -> Result<()> {
    if fsutil::exists(copy) {
        return Ok(());
    }
    let bytes = fs::read(&file.path).map_err(|e| AgentError::io("reading", &file.path, e))?;
    // Settings may hold secrets: the kept copy is private, in a private dir.
    durable::create_dir_durable(fsutil::parent(copy)?, 0o700)?;
    Ok(durable::write_atomic(copy, &bytes, 0o600)?)
}

/// Rewrites `file` from its current content; returns the keys changed (none: left alone).
pub fn apply(file: &SettingsFile, values: &[(&str, &str)]) -> Result<Vec<String>> {
    let text =
        fs::read_to_string(&file.path).map_err(|e| AgentError::io("reading", &file.path, e))?;
    let (new, keys) = rewrite(&text, file.format, values, &file.path)?;
    if new != text {
        replace_file(&file.path, new.as_bytes())?;
    }
    Ok(keys)
}

/// Puts the original back; `false` when the file already holds it.
pub fn revert(edit: &FileEdit) -> Result<bool> {
    let original =
        fs::read(&edit.original).map_err(|e| AgentError::io("reading", &edit.original, e))?;
    match fs::read(&edit.path) {
        Ok(now) if now == original => Ok(false),
        Ok(_) => replace_file(&edit.path, &original).map(|()| true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // Gone since: put the original back with the owner and mode it had (older journals
            // did not record them: a root-owned config, 0644).
            durable::create_dir_durable(fsutil::parent(&edit.path)?, 0o755)?;
            let (mode, owner) = edit
                .owner
                .map_or((0o644, None), |o| (o.mode, Some((o.uid, o.gid))));
            durable::write_atomic_owned(&edit.path, &original, mode, owner)?;
            Ok(true)
        }
        Err(e) => Err(AgentError::io("reading", &edit.path, e)),
    }
}

#[cfg(test)]
#[path = "settings_tests.rs"]
mod tests;
