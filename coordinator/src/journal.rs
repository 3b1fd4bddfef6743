//! The coordinator's journal: JSON lines per restore id, fsynced before each phase transition.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::plan::Plan;

#[derive(Debug)]
pub struct Journal {
    dir: PathBuf,
    file: File,
}

#[derive(Debug, Serialize)]
struct Line<'a> {
    at_ms: u128,
    phase: &'a str,
    event: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    detail: &'a str,
}

impl Journal {
    /// Creates `<state_dir>/<restore id>/` with the plan and an empty journal.
    pub fn create(state_dir: &Path, plan: &Plan) -> std::io::Result<Self> {
        let dir = state_dir.join(plan.restore_id.to_string());
        fs::create_dir_all(&dir)?;
        write_atomic(&dir.join("plan.json"), &serde_json::to_vec_pretty(plan)?)?;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("journal.jsonl"))?;
        File::open(&dir)?.sync_all()?;
        Ok(Self { dir, file })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Appends one line and fsyncs it before returning.
    pub fn record(&mut self, phase: &str, event: &str, detail: &str) -> std::io::Result<()> {
        let at_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let mut line = serde_json::to_vec(&Line {
            at_ms,
            phase,
            event,
            detail,
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
