//! The coordinator's journal: JSON lines per restore id, fsynced before each phase transition,
//! beside the plan and the inventory it was made from. `quorate status|resume|rollback <id>`
//! rebuild the restore's persistent state from it.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use quorate_proto::model::RestoreId;
use serde::{Deserialize, Serialize};

use crate::inventory::Inventory;
use crate::plan::Plan;

#[derive(Debug)]
pub struct Journal {
    dir: PathBuf,
    file: File,
}

/// One line of the journal.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Line {
    pub at_ms: u128,
    /// A phase name, or `rollback:<phase>` while rolling back.
    pub phase: String,
    /// `begin`, `done` or `failed`.
    pub event: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
}

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal of restore {id} in {dir}: {source}")]
    Io {
        id: String,
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("journal of restore {id} in {dir}: {what}")]
    Corrupt {
        id: String,
        dir: PathBuf,
        what: String,
    },
}

impl Journal {
    /// Creates `<state_dir>/<restore id>/` with the plan, the inventory and an empty journal.
    pub fn create(state_dir: &Path, plan: &Plan, inventory: &Inventory) -> std::io::Result<Self> {
        let dir = state_dir.join(plan.restore_id.to_string());
        fs::create_dir_all(&dir)?;
        write_atomic(&dir.join("plan.json"), &serde_json::to_vec_pretty(plan)?)?;
        write_atomic(&dir.join("inventory.toml"), inventory.to_toml().as_bytes())?;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("journal.jsonl"))?;
        File::open(&dir)?.sync_all()?;
        Ok(Self { dir, file })
    }

    /// Opens the journal of restore `id` to carry it on: its plan, inventory and lines so far.
    pub fn open(
        state_dir: &Path,
        id: RestoreId,
    ) -> Result<(Self, Plan, Inventory, Vec<Line>), JournalError> {
        let dir = state_dir.join(id.to_string());
        let io = |source| JournalError::Io {
            id: id.to_string(),
            dir: dir.clone(),
            source,
        };
        let corrupt = |what: String| JournalError::Corrupt {
            id: id.to_string(),
            dir: dir.clone(),
            what,
        };
        let plan: Plan = serde_json::from_slice(&fs::read(dir.join("plan.json")).map_err(io)?)
            .map_err(|e| corrupt(format!("plan.json: {e}")))?;
        let inventory: Inventory =
            toml::from_str(&fs::read_to_string(dir.join("inventory.toml")).map_err(io)?)
                .map_err(|e| corrupt(format!("inventory.toml: {e}")))?;
        let text = fs::read_to_string(dir.join("journal.jsonl")).map_err(io)?;
        let mut lines = Vec::new();
        for (n, raw) in text.lines().enumerate() {
            match serde_json::from_str::<Line>(raw) {
                Ok(line) => lines.push(line),
                // A crash can cut the last line short; the phase it began is then unknown and is
                // treated as begun (every step is idempotent).
                Err(_) if n + 1 == text.lines().count() => {}
                Err(e) => return Err(corrupt(format!("journal.jsonl line {}: {e}", n + 1))),
            }
        }
        let file = OpenOptions::new()
            .append(true)
            .open(dir.join("journal.jsonl"))
            .map_err(io)?;
        Ok((Self { dir, file }, plan, inventory, lines))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Appends one line and fsyncs it before returning.
    pub fn record(&mut self, phase: &str, event: &str, detail: &str) -> std::io::Result<()> {
        self.record_data(phase, event, detail, None)
    }

    pub fn record_data(
        &mut self,
        phase: &str,
        event: &str,
        detail: &str,
        data: Option<serde_json::Value>,
    ) -> std::io::Result<()> {
        let at_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let mut line = serde_json::to_vec(&Line {
            at_ms,
            phase: phase.to_owned(),
            event: event.to_owned(),
            detail: detail.to_owned(),
            data,
        })?;
        line.push(b'\n');
        self.file.write_all(&line)?;
        self.file.sync_data()
    }

    pub fn write_report(&self, report: &impl Serialize) -> std::io::Result<PathBuf> {
        let path = self.dir.join("report.json");
        write_atomic(&path, &serde_json::to_vec_pretty(report)?)?;
        Ok(path)
    }
}

/// Write temp, fsync, rename, fsync the dir.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name()
            .map_or("file".into(), |n| n.to_string_lossy())
    ));
    let mut f = File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    fs::rename(&tmp, path)?;
    File::open(dir)?.sync_all()
}
