//! The agent's durable state: the member's restore lock (`state_dir/active`) and one journal per
//! restore (`state_dir/restores/<id>/journal.json`). Every write is atomic and fsynced, so an agent
//! restarted at any instant reports the truth.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use quorate_proto::durable;
use quorate_proto::model::{
    ComponentFailure, DirRole, ErrorCode, EtcdDir, OutcomeDetails, RestoreId, Step,
};
use serde::{Deserialize, Serialize};

use crate::error::{AgentError, Result};
use crate::fsutil::Ownership;
use crate::settings::FileEdit;

/// Which way a step goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Op {
    Run,
    Revert,
}

/// Where a step stands on this member (the contract's type, so Describe reports it as journaled).
pub use quorate_proto::model::StepState;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRecord {
    pub op: Op,
    pub state: StepState,
    pub message: String,
    /// The outcome's typed facts. Journals written before they were typed hold a string map,
    /// read once through [`legacy_details`].
    #[serde(default, deserialize_with = "details")]
    pub details: OutcomeDetails,
    /// Seconds since the Unix epoch of the last change.
    pub at: u64,
}

/// A step record's details: the typed form, or the string map of older journals.
fn details<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<OutcomeDetails, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Repr {
        Typed(OutcomeDetails),
        Legacy(BTreeMap<String, String>),
    }
    match Repr::deserialize(d)? {
        Repr::Typed(t) => Ok(t),
        Repr::Legacy(map) => legacy_details(&map).map_err(serde::de::Error::custom),
    }
}

/// The typed form of an older journal's details map (`code` was the Debug name of the gRPC code;
/// dirs and controllers were keyed by name). Keys that only repeated the message are dropped.
pub fn legacy_details(
    map: &BTreeMap<String, String>,
) -> std::result::Result<OutcomeDetails, String> {
    let code = match map.get("code").map(String::as_str) {
        None => None,
        Some("InvalidArgument") => Some(ErrorCode::InvalidRequest),
        Some("FailedPrecondition") => Some(ErrorCode::Precondition),
        Some("DataLoss") => Some(ErrorCode::Corrupt),
        Some("Internal") => Some(ErrorCode::CommandFailed),
        Some("DeadlineExceeded") => Some(ErrorCode::Timeout),
        Some("Aborted") => Some(ErrorCode::Aborted),
        Some(other) => return Err(format!("unknown error code {other:?} in a step's details")),
    };
    let revision = map
        .get("revision")
        .map(|r| {
            r.parse::<i64>()
                .map_err(|e| format!("revision {r:?} in a step's details: {e}"))
        })
        .transpose()?;
    let dirs = |keys: [(&str, DirRole); 2]| {
        keys.into_iter()
            .filter_map(|(key, role)| {
                map.get(key).map(|p| EtcdDir {
                    role,
                    path: p.into(),
                })
            })
            .collect::<Vec<_>>()
    };
    let started = map
        .get("restarted")
        .map(|r| r.split(',').map(str::to_owned).collect())
        .unwrap_or_default();
    let not_started = map.get("restart_failed").map_or_else(Vec::new, |text| {
        crate::steps::CONTROLLERS
            .iter()
            .filter(|c| text.contains(&format!("{c} was not restarted")))
            .map(|c| ComponentFailure {
                component: (*c).to_owned(),
                message: text.clone(),
            })
            .collect()
    });
    Ok(OutcomeDetails {
        code,
        revision,
        preserved: dirs([
            ("preserved_dir", DirRole::Data),
            ("preserved_wal_dir", DirRole::Wal),
        ]),
        set_aside: dirs([
            ("failed_dir", DirRole::Data),
            ("failed_wal_dir", DirRole::Wal),
        ]),
        started,
        not_started,
    })
}

/// How PRESERVE moved one of etcd's dirs aside.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum Moved {
    /// The dir itself was renamed to `preserved`, a sibling on its filesystem. Journals written
    /// before mount points were supported have no `moved` field: they always renamed, so its
    /// absence records this case and nothing else.
    #[default]
    Renamed,
    /// The dir is a mount point (which cannot be renamed): it stays where it is, and the entries
    /// named, etcd's own, were moved into `preserved`, a hidden dir inside it on the same
    /// filesystem. Listed before the first move, so a repeat after a crash knows them all.
    Entries { names: Vec<String> },
}

/// What PRESERVE needs to undo itself and RESTORE needs to copy: one of etcd's dirs (its data
/// dir, or its `--wal-dir` in [`Journal::preserved_wal`]) and where its original content went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreservedDir {
    /// The dir etcd uses (the field keeps its first name for older journals).
    pub data_dir: PathBuf,
    pub preserved: PathBuf,
    /// Owner and mode the restored copy gets: those of the dir when renamed, of the first entry
    /// moved when its entries were.
    pub owner: Ownership,
    #[serde(default)]
    pub moved: Moved,
}

/// A manifest moved (or about to be moved) out of the watched dir.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestMove {
    pub home: PathBuf,
    pub aside: PathBuf,
    /// The last move asked for: `Op::Run` = out (stop), `Op::Revert` = back in (start).
    pub last: Op,
}

/// The staged snapshot, as received and checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Staged {
    pub sha256: String,
    pub size: u64,
    pub revision: i64,
    pub total_keys: u64,
}

/// What a copy PREPARE made was restored from and with: RESTORE uses the copy only when this is
/// exactly what it would restore now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint {
    pub snapshot_sha256: String,
    pub member_name: String,
    pub peer_urls: Vec<String>,
    pub initial_cluster: String,
    pub cluster_token: String,
    pub bump_revision: u64,
    pub mark_compacted: bool,
    pub skip_hash_check: bool,
    /// `etcdutl` or `etcdctl`, and its version.
    pub tool: String,
    pub tool_version: String,
    /// etcd's `--wal-dir` relative to the data dir, when it lies inside it.
    pub wal_in_data: Option<PathBuf>,
}

/// One dir of a prepared copy: where it is, for which of etcd's dirs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreparedDir {
    /// The dir etcd uses (its data dir, or its `--wal-dir` of its own).
    pub home: PathBuf,
    /// `<home>.quorate-<id>.prepared`, or `<home>/.quorate-<id>.prepared` in a mount point.
    pub path: PathBuf,
    /// `home` is a mount point (the copy is inside it).
    pub inside: bool,
}

/// The copy PREPARE restored while etcd still served.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreparedCopy {
    pub fingerprint: Fingerprint,
    /// The data dir's copy, then the WAL dir's when it has its own; journaled before they are
    /// made, so whatever an interrupted PREPARE left is known and removed.
    pub dirs: Vec<PreparedDir>,
    /// Every file of the copy with its size, recorded once the restore completed and was synced;
    /// `None` while it is being made: such a copy is never used.
    pub files: Option<BTreeMap<PathBuf, u64>>,
}

/// Everything this member did for one restore.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Journal {
    pub restore_id: RestoreId,
    #[serde(default)]
    pub steps: BTreeMap<Step, StepRecord>,
    /// The step changed most recently.
    #[serde(default)]
    pub last: Option<Step>,
    #[serde(default)]
    pub preserved: Option<PreservedDir>,
    /// etcd's `--wal-dir` when it lies outside the data dir: preserved and restored beside it.
    #[serde(default)]
    pub preserved_wal: Option<PreservedDir>,
    /// etcd's `--wal-dir` relative to the data dir when it lies inside it (it moves with it).
    #[serde(default)]
    pub wal_in_data: Option<PathBuf>,
    /// Keyed by component ("etcd", "kube-apiserver").
    #[serde(default)]
    pub manifests: BTreeMap<String, ManifestMove>,
    /// Dirs moved out of the way (failed or partial restores); never deleted by the agent.
    #[serde(default)]
    pub set_aside: Vec<PathBuf>,
    #[serde(default)]
    pub staged: Option<Staged>,
    /// Settings files RESTORE rewrote (environment file, etcd config file), with where their
    /// originals are kept.
    #[serde(default)]
    pub edits: Vec<FileEdit>,
    /// The copy PREPARE made and RESTORE has not used (or removed) yet.
    #[serde(default)]
    pub prepared: Option<PreparedCopy>,
    /// The snapshot signature CLAIM verified, on a member that requires signatures; the push,
    /// PREPARE and RESTORE check it again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<quorate_proto::signature::SnapshotSignature>,
}

impl Journal {
    pub fn new(restore_id: RestoreId) -> Self {
        Self {
            restore_id,
            steps: BTreeMap::new(),
            last: None,
            preserved: None,
            preserved_wal: None,
            wal_in_data: None,
            manifests: BTreeMap::new(),
            set_aside: Vec::new(),
            staged: None,
            edits: Vec::new(),
            prepared: None,
            signature: None,
        }
    }

    pub fn state(&self, step: Step) -> Option<StepState> {
        self.steps.get(&step).map(|r| r.state)
    }

    /// Records `step` as `state` with `message` (details kept unless given).
    pub fn record(
        &mut self,
        step: Step,
        op: Op,
        state: StepState,
        message: String,
        details: Option<OutcomeDetails>,
    ) {
        let details = details
            .or_else(|| self.steps.get(&step).map(|r| r.details.clone()))
            .unwrap_or_default();
        let at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.steps.insert(
            step,
            StepRecord {
                op,
                state,
                message,
                details,
                at,
            },
        );
        self.last = Some(step);
    }
}

/// The lock file's content.
#[derive(Debug, Serialize, Deserialize)]
struct Active {
    restore_id: RestoreId,
}

/// The agent's state dir.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `restores/<id>`: a UUID, so it cannot escape the state dir.
    pub fn restore_dir(&self, id: RestoreId) -> PathBuf {
        self.root.join("restores").join(id.to_string())
    }

    pub fn journal_path(&self, id: RestoreId) -> PathBuf {
        self.restore_dir(id).join("journal.json")
    }

    pub fn snapshot_path(&self, id: RestoreId) -> PathBuf {
        self.restore_dir(id).join("snapshot.db")
    }

    pub fn partial_path(&self, id: RestoreId) -> PathBuf {
        self.restore_dir(id).join("snapshot.db.partial")
    }

    /// Where a stopped component's manifest waits: beside the watched manifests dir (never in
    /// it), `<manifests dir>/../quorate-aside/<id>/<file>`, so that the move is a rename on the
    /// manifests' own filesystem even when the state dir is on another one.
    pub fn manifest_aside(&self, id: RestoreId, file: &Path) -> PathBuf {
        let name = file
            .file_name()
            .map_or_else(|| "manifest".into(), ToOwned::to_owned);
        match file.parent().and_then(Path::parent) {
            Some(base) if !base.as_os_str().is_empty() => {
                base.join("quorate-aside").join(id.to_string()).join(name)
            }
            _ => self.restore_dir(id).join("manifests").join(name),
        }
    }

    fn lock_path(&self) -> PathBuf {
        self.root.join("active")
    }

    /// The restore holding this member's lock.
    pub fn active(&self) -> Result<Option<RestoreId>> {
        let path = self.lock_path();
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice::<Active>(&bytes)
                .map(|a| Some(a.restore_id))
                .map_err(|e| {
                    AgentError::Precondition(format!(
                        "restore lock {} is unreadable ({e}); look at it and at {}/restores before \
                         removing it",
                        path.display(),
                        self.root.display()
                    ))
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(AgentError::io("reading restore lock", &path, e)),
        }
    }

    pub fn set_active(&self, id: RestoreId) -> Result<()> {
        let json =
            serde_json::to_vec(&Active { restore_id: id }).expect("a restore id always serialises");
        write_private(&self.lock_path(), &json)
    }

    pub fn clear_active(&self) -> Result<()> {
        let path = self.lock_path();
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(durable::fsync_dir(&self.root)?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(AgentError::io("removing restore lock", &path, e)),
        }
    }

    /// The journal of `id`; a fresh one when this member has none yet.
    pub fn load(&self, id: RestoreId) -> Result<Journal> {
        let path = self.journal_path(id);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                AgentError::Precondition(format!(
                    "journal {} is unreadable ({e}); this member's state for restore {id} is \
                     unknown: inspect it by hand",
                    path.display()
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Journal::new(id)),
            Err(e) => Err(AgentError::io("reading journal", &path, e)),
        }
    }

    pub fn save(&self, journal: &Journal) -> Result<()> {
        let json = serde_json::to_vec_pretty(journal).expect("a journal always serialises");
        write_private(&self.journal_path(journal.restore_id), &json)
    }
}

/// Writes one of the agent's own files (0600), creating its directories (0700) as needed.
fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent() {
        durable::create_dir_durable(dir, 0o700)?;
    }
    Ok(durable::write_atomic(path, bytes, 0o600)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_and_lock_round_trip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = StateDir::new(dir.path());
        let id = RestoreId::new();
        assert_eq!(state.active().expect("lock"), None);
        state.set_active(id).expect("lock");
        assert_eq!(state.active().expect("lock"), Some(id));
        let mut j = state.load(id).expect("fresh");
        j.record(
            Step::Halt,
            Op::Run,
            StepState::Done,
            "etcd stopped".into(),
            None,
        );
        state.save(&j).expect("save");
        assert_eq!(state.load(id).expect("load"), j);
        state.clear_active().expect("unlock");
        state.clear_active().expect("unlock twice");
        assert_eq!(state.active().expect("lock"), None);
    }

    /// A journal written before mount points and `--wal-dir` were supported: its data dir was
    /// renamed, and it has no WAL dir of its own.
    #[test]
    fn an_older_journal_reads_as_a_renamed_data_dir() {
        let old = r#"{"restore_id":"7f1c3a52-9d7e-4c1b-8f7a-0b6a6f0e2a11",
            "preserved":{"data_dir":"/var/lib/etcd",
                "preserved":"/var/lib/etcd.quorate-7f1c3a52-9d7e-4c1b-8f7a-0b6a6f0e2a11",
                "owner":{"uid":0,"gid":0,"mode":448}}}"#;
        let j: Journal = serde_json::from_str(old).expect("older journal");
        let p = j.preserved.expect("preserved");
        assert_eq!(p.moved, Moved::Renamed);
        assert_eq!(p.owner.mode, 0o700);
        assert_eq!((j.preserved_wal, j.wal_in_data), (None, None));
    }

    /// Step records of journals written before outcomes were typed read as the typed details.
    #[test]
    fn older_string_map_details_read_as_typed_details() {
        let old = r#"{"restore_id":"7f1c3a52-9d7e-4c1b-8f7a-0b6a6f0e2a11",
            "steps":{
              "preserve":{"op":"run","state":"done","message":"moved","at":1,
                "details":{"preserved_dir":"/var/lib/etcd.quorate-x","preserved_bytes":"12"}},
              "restore":{"op":"run","state":"done","message":"restored","at":2,
                "details":{"revision":"42","total_keys":"7","cluster_token":"quorate-x"}},
              "unfence":{"op":"run","state":"done","message":"up","at":3,
                "details":{"restarted":"kube-controller-manager",
                  "restart_failed":"kube-scheduler was not restarted (timeout); restart it by hand"}},
              "halt":{"op":"run","state":"failed","message":"not down","at":4,
                "details":{"code":"DeadlineExceeded"}},
              "claim":{"op":"run","state":"done","message":"claimed","at":0}}}"#;
        let j: Journal = serde_json::from_str(old).expect("older journal");
        let d = |s: Step| j.steps[&s].details.clone();
        assert_eq!(
            d(Step::Preserve).preserved,
            [EtcdDir {
                role: DirRole::Data,
                path: "/var/lib/etcd.quorate-x".into()
            }]
        );
        assert_eq!(d(Step::Restore).revision, Some(42));
        assert_eq!(d(Step::Unfence).started, ["kube-controller-manager"]);
        assert_eq!(d(Step::Unfence).not_started[0].component, "kube-scheduler");
        assert_eq!(d(Step::Halt).code, Some(ErrorCode::Timeout));
        assert_eq!(d(Step::Claim), OutcomeDetails::default());
        let bad = old.replace("\"42\"", "\"forty-two\"");
        let err = serde_json::from_str::<Journal>(&bad).expect_err("an unreadable revision");
        assert!(err.to_string().contains("forty-two"), "{err}");
        // Written back, they are typed.
        let json = serde_json::to_value(&j).expect("json");
        assert_eq!(
            json["steps"]["halt"]["details"],
            serde_json::json!({"code": "timeout"})
        );
    }

    /// The records of a mount-point data dir with a `--wal-dir` of its own, pinned.
    #[test]
    fn mount_point_and_wal_records_are_pinned() {
        let id: RestoreId = "7f1c3a52-9d7e-4c1b-8f7a-0b6a6f0e2a11"
            .parse()
            .expect("uuid");
        let mut j = Journal::new(id);
        let owner = Ownership {
            uid: 0,
            gid: 0,
            mode: 0o700,
        };
        j.preserved = Some(PreservedDir {
            data_dir: "/var/lib/etcd".into(),
            preserved: format!("/var/lib/etcd/.quorate-{id}").into(),
            owner,
            moved: Moved::Entries {
                names: vec!["member".into()],
            },
        });
        j.preserved_wal = Some(PreservedDir {
            data_dir: "/var/lib/etcd-wal".into(),
            preserved: format!("/var/lib/etcd-wal.quorate-{id}").into(),
            owner,
            moved: Moved::Renamed,
        });
        let json = serde_json::to_value(&j).expect("json");
        assert_eq!(
            json["preserved"]["moved"],
            serde_json::json!({"kind": "entries", "names": ["member"]})
        );
        assert_eq!(
            json["preserved_wal"]["moved"],
            serde_json::json!({"kind": "renamed"})
        );
        assert_eq!(json["wal_in_data"], serde_json::Value::Null);
        let back: Journal = serde_json::from_value(json).expect("round trip");
        assert_eq!(back, j);
    }
}
