//! The coordinator's journal: one typed JSON entry per line, with its format version, fsynced before
//! each phase transition, beside the plan and the inventory it was made from. `quorate
//! status|resume|rollback <id>` rebuild the restore's state from it.
//!
//! One coordinator at a time: `restore`, `resume` and `rollback` hold an exclusive lock on the
//! restore's dir (`lock`, naming the holder's pid and host) for as long as they run; a second one
//! is refused. The lock is the kernel's (flock): it goes with the process, also on SIGKILL.
//!
//! A crash can cut the last line short. That line was never fsynced, so nothing acted on it: it is
//! truncated before the next append. Any other unreadable line is a corruption error naming the
//! file and the line; no default stands in for a missing fact.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use quorate_proto::durable;
use quorate_proto::model::{RestoreId, names};
use serde::{Deserialize, Serialize};

use crate::failure::MemberFailure;
use crate::inventory::Inventory;
use crate::phases::Phase;
use crate::plan::Plan;
use crate::verify::{MemberView, Verified};

/// The format of every line this quorate writes, and the only one it reads.
pub const FORMAT: u32 = 1;

/// One line of the journal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Line {
    /// The format version ([`FORMAT`]).
    pub v: u32,
    pub at_ms: u64,
    #[serde(flatten)]
    pub entry: Entry,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "entry", rename_all = "kebab-case")]
pub enum Entry {
    /// Preflight passed; each member's identity before anything changed (empty when the cluster
    /// did not answer).
    Preflight {
        before: Vec<MemberView>,
    },
    /// A phase began: some members may have done it.
    Begin {
        phase: Phase,
    },
    /// A phase ended on every member, with what it learnt.
    Done {
        phase: Phase,
        facts: PhaseFacts,
    },
    Failed {
        phase: Phase,
        failures: Vec<MemberFailure>,
    },
    /// A rollback began: the restore can no longer go forward.
    RollbackBegin {
        forced: bool,
    },
    RevertBegin {
        phase: Phase,
    },
    RevertDone {
        phase: Phase,
    },
    RevertFailed {
        phase: Phase,
        failures: Vec<MemberFailure>,
    },
    /// Every phase was undone, but the original cluster did not verify.
    RollbackVerifyFailed {
        failures: Vec<MemberFailure>,
    },
    /// Every member is back on its original data, verified.
    RollbackDone {
        original: Verified,
    },
}

/// What a phase learnt, journaled with its `done`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum PhaseFacts {
    None,
    Staged {
        /// The snapshot's revision as the agents read it (none from etcd 3.4's tool).
        snapshot_revision: Option<i64>,
    },
    Verified {
        verified: Verified,
    },
    Unfenced {
        /// Per host, the control-plane components started after the apiserver.
        restarted: Vec<(String, String)>,
    },
}

/// Who holds a restore's lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    pub pid: u32,
    pub host: String,
    pub command: String,
    pub since_ms: u64,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "pid {} on host {} (`quorate {}`, for {}s)",
            self.pid,
            self.host,
            self.command,
            now_ms().saturating_sub(self.since_ms) / 1000
        )
    }
}

impl Holder {
    /// This process, running `command` (e.g. `resume`).
    pub fn me(command: &str) -> Self {
        Self {
            pid: std::process::id(),
            host: hostname(),
            command: command.to_owned(),
            since_ms: now_ms(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("restore {id}: {path}: {source}")]
    Io {
        id: RestoreId,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "restore {id}: {path} line {line} is unreadable ({what}); it is not the last line, so it is not a torn write: the journal is corrupt. Nothing was changed. `quorate status {id}` shows the members as their agents see them"
    )]
    Corrupt {
        id: RestoreId,
        path: PathBuf,
        line: usize,
        what: String,
    },
    #[error("restore {id}: {path}: {what}")]
    Unreadable {
        id: RestoreId,
        path: PathBuf,
        what: String,
    },
    #[error(
        "restore {id} is held by another quorate: {holder}. Only one coordinator may drive a restore: wait for it to end, or stop it; nothing was changed"
    )]
    Held { id: RestoreId, holder: String },
    #[error("no restore {id} under {dir}: check the id and --state-dir")]
    Missing { id: RestoreId, dir: PathBuf },
}

/// An open journal, holding the restore's lock.
#[derive(Debug)]
pub struct Journal {
    id: RestoreId,
    dir: PathBuf,
    file: File,
    /// Held open for its flock; released when the journal is dropped.
    _lock: File,
}

/// A journal opened to carry its restore on.
#[derive(Debug)]
pub struct Opened {
    pub journal: Journal,
    pub plan: Plan,
    pub inventory: Inventory,
    pub entries: Vec<Entry>,
    /// The torn last line that was truncated, if any (1-based line number).
    pub truncated: Option<usize>,
}

/// A journal read without its lock (`quorate status`).
#[derive(Debug)]
pub struct Snapshot {
    pub plan: Plan,
    pub inventory: Inventory,
    pub entries: Vec<Entry>,
    /// The coordinator running it now, if one is.
    pub holder: Option<Holder>,
}

impl Journal {
    /// Creates `<state_dir>/<restore id>/` with its lock held, the plan, the inventory and an
    /// empty journal.
    pub fn create(
        state_dir: &Path,
        plan: &Plan,
        inventory: &Inventory,
        holder: &Holder,
    ) -> Result<Self, JournalError> {
        let id = plan.restore_id;
        let dir = state_dir.join(id.to_string());
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| JournalError::Io { id, path, source }
        };
        create_dir_durable(&dir).map_err(io(&dir))?;
        let lock = lock(&dir, id, holder)?;
        let plan_path = dir.join("plan.json");
        let json = serde_json::to_vec_pretty(plan).map_err(std::io::Error::other);
        json.and_then(|j| write_atomic(&plan_path, &j))
            .map_err(io(&plan_path))?;
        let inv_path = dir.join("inventory.toml");
        write_atomic(&inv_path, inventory.to_toml().as_bytes()).map_err(io(&inv_path))?;
        let path = dir.join("journal.jsonl");
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(FILE_MODE)
            .open(&path)
            .map_err(io(&path))?;
        File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(io(&dir))?;
        Ok(Self {
            id,
            dir,
            file,
            _lock: lock,
        })
    }

    /// Opens restore `id` to carry it on (`resume`, `rollback`): takes its lock, reads its plan,
    /// inventory and entries, and truncates a torn last line.
    pub fn open(state_dir: &Path, id: RestoreId, holder: &Holder) -> Result<Opened, JournalError> {
        let dir = restore_dir(state_dir, id)?;
        let lock = lock(&dir, id, holder)?;
        let (plan, inventory) = read_plan(&dir, id)?;
        let path = dir.join("journal.jsonl");
        let io = |source| JournalError::Io {
            id,
            path: path.clone(),
            source,
        };
        let bytes = fs::read(&path).map_err(io)?;
        let read = parse(&bytes, id, &path)?;
        let mut file = OpenOptions::new().write(true).open(&path).map_err(io)?;
        let truncated = if read.good_len < bytes.len() {
            file.set_len(read.good_len as u64).map_err(io)?;
            file.sync_all().map_err(io)?;
            Some(read.entries.len() + 1)
        } else {
            None
        };
        file.seek(SeekFrom::End(0)).map_err(io)?;
        Ok(Opened {
            journal: Self {
                id,
                dir,
                file,
                _lock: lock,
            },
            plan,
            inventory,
            entries: read.entries,
            truncated,
        })
    }

    /// Reads restore `id` without taking its lock or changing anything (`quorate status`). A torn
    /// last line is left for the next `resume` or `rollback` to truncate.
    pub fn read(state_dir: &Path, id: RestoreId) -> Result<Snapshot, JournalError> {
        let dir = restore_dir(state_dir, id)?;
        let (plan, inventory) = read_plan(&dir, id)?;
        let path = dir.join("journal.jsonl");
        let bytes = fs::read(&path).map_err(|source| JournalError::Io {
            id,
            path: path.clone(),
            source,
        })?;
        let read = parse(&bytes, id, &path)?;
        Ok(Snapshot {
            plan,
            inventory,
            entries: read.entries,
            holder: holder_of(&dir),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn id(&self) -> RestoreId {
        self.id
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join("journal.jsonl")
    }

    /// Appends one entry and fsyncs it before returning.
    pub fn record(&mut self, entry: Entry) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(&Line {
            v: FORMAT,
            at_ms: now_ms(),
            entry,
        })?;
        line.push(b'\n');
        self.file.write_all(&line)?;
        self.file.sync_data()
    }

    /// Writes `name` (e.g. `report.json`) beside the journal.
    pub fn write_json(&self, name: &str, value: &impl Serialize) -> std::io::Result<PathBuf> {
        let path = self.dir.join(name);
        write_atomic(&path, &serde_json::to_vec_pretty(value)?)?;
        Ok(path)
    }
}

fn restore_dir(state_dir: &Path, id: RestoreId) -> Result<PathBuf, JournalError> {
    let dir = state_dir.join(id.to_string());
    if !dir.join("journal.jsonl").exists() {
        return Err(JournalError::Missing {
            id,
            dir: state_dir.to_owned(),
        });
    }
    Ok(dir)
}

fn read_plan(dir: &Path, id: RestoreId) -> Result<(Plan, Inventory), JournalError> {
    let plan_path = dir.join("plan.json");
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| JournalError::Io { id, path, source }
    };
    let unreadable = |path: &Path, what: String| JournalError::Unreadable {
        id,
        path: path.to_owned(),
        what,
    };
    let plan: Plan = serde_json::from_slice(&fs::read(&plan_path).map_err(io(&plan_path))?)
        .map_err(|e| unreadable(&plan_path, e.to_string()))?;
    let inv_path = dir.join("inventory.toml");
    let inventory: Inventory =
        toml::from_str(&fs::read_to_string(&inv_path).map_err(io(&inv_path))?)
            .map_err(|e| unreadable(&inv_path, e.to_string()))?;
    // The files may have been edited since: the same checks as at plan time.
    inventory
        .validate()
        .map_err(|e| unreadable(&inv_path, e.to_string()))?;
    names::check_token(id, &plan.cluster_token)
        .and_then(|()| names::check_initial_cluster(&plan.initial_cluster).map(|_| ()))
        .map_err(|e| unreadable(&plan_path, e.0))?;
    Ok((plan, inventory))
}

struct Parsed {
    entries: Vec<Entry>,
    /// The bytes up to the end of the last readable line.
    good_len: usize,
}

/// Reads every line; a torn last line (cut short, or unreadable) is dropped and the length of the
/// good part returned; any other unreadable line is corruption.
fn parse(bytes: &[u8], id: RestoreId, path: &Path) -> Result<Parsed, JournalError> {
    let mut entries = Vec::new();
    let mut good_len = 0;
    let mut rest = bytes;
    let mut n = 0;
    while !rest.is_empty() {
        n += 1;
        let (raw, next, complete) = match rest.iter().position(|b| *b == b'\n') {
            Some(i) => (&rest[..i], &rest[i + 1..], true),
            None => (rest, &rest[rest.len()..], false),
        };
        let last = next.is_empty();
        match decode(raw) {
            Ok(entry) if complete => {
                entries.push(entry);
                good_len += raw.len() + 1;
            }
            // A last line without its newline was never acknowledged (fsynced): torn.
            Ok(_) => break,
            Err(_) if last => break,
            Err(what) => {
                return Err(JournalError::Corrupt {
                    id,
                    path: path.to_owned(),
                    line: n,
                    what,
                });
            }
        }
        rest = next;
    }
    Ok(Parsed { entries, good_len })
}

fn decode(raw: &[u8]) -> Result<Entry, String> {
    #[derive(Deserialize)]
    struct Version {
        v: Option<u32>,
    }
    let version: Version = serde_json::from_slice(raw).map_err(|e| e.to_string())?;
    match version.v {
        Some(FORMAT) => {}
        Some(v) => {
            return Err(format!(
                "journal format {v}; this quorate reads format {FORMAT}: use the quorate that wrote it"
            ));
        }
        None => {
            return Err(
                "no format version: a journal of an older quorate; use the quorate that wrote it"
                    .into(),
            );
        }
    }
    serde_json::from_slice::<Line>(raw)
        .map(|l| l.entry)
        .map_err(|e| e.to_string())
}

/// Takes the exclusive lock of a restore's dir and records who holds it.
fn lock(dir: &Path, id: RestoreId, holder: &Holder) -> Result<File, JournalError> {
    let path = dir.join("lock");
    let io = |source| JournalError::Io {
        id,
        path: path.clone(),
        source,
    };
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .mode(FILE_MODE)
        .open(&path)
        .map_err(io)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let holder = holder_of(dir).map_or_else(
                || "a process that has not yet said who it is (try again in a moment)".to_owned(),
                |h| h.to_string(),
            );
            return Err(JournalError::Held { id, holder });
        }
        Err(TryLockError::Error(e)) => return Err(io(e)),
    }
    let text = serde_json::to_vec(holder).map_err(|e| io(std::io::Error::other(e)))?;
    file.set_len(0).map_err(io)?;
    file.write_all(&text).map_err(io)?;
    file.sync_data().map_err(io)?;
    Ok(file)
}

/// The holder of a restore's lock, if it is held.
fn holder_of(dir: &Path) -> Option<Holder> {
    let path = dir.join("lock");
    let file = File::open(&path).ok()?;
    match file.try_lock_shared() {
        // Nobody holds it: what the file says is a past holder.
        Ok(()) => None,
        Err(_) => serde_json::from_slice(&fs::read(&path).ok()?).ok(),
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn hostname() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

/// The restore's files hold its plan and inventory: readable by the coordinator's user alone.
const FILE_MODE: u32 = 0o600;
const DIR_MODE: u32 = 0o700;

/// Writes `path` crash-safely ([`durable::write_atomic`]).
fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    durable::write_atomic(path, bytes, FILE_MODE)
        .map_err(|e| std::io::Error::new(e.source.kind(), e.to_string()))
}

/// Creates `dir` and any missing parents, each durable ([`durable::create_dir_durable`]).
fn create_dir_durable(dir: &Path) -> std::io::Result<()> {
    durable::create_dir_durable(dir, DIR_MODE)
        .map(drop)
        .map_err(|e| std::io::Error::new(e.source.kind(), e.to_string()))
}

#[cfg(test)]
#[path = "journal_tests.rs"]
mod tests;
