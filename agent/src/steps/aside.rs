//! One of etcd's dirs (its data dir, or a `--wal-dir` of its own) during a restore, and the
//! places around it: where PRESERVE keeps the original, where RESTORE prepares the copy, where a
//! failed copy goes. Every move looks at what is where first, so a repeat after a crash at any
//! point finishes the move (or finds it done) instead of doing it twice.

use std::fs;
use std::path::{Path, PathBuf};

use quorate_proto::model::{DirRole, RestoreId};

use quorate_proto::durable;

use crate::error::{AgentError, Result};
use crate::fsutil::{self, Ownership};
use crate::journal::{Moved, PreservedDir};

/// What a dir holds for etcd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `--data-dir`: etcd's entry is `member/` (and a `--wal-dir` inside it, if any).
    Data,
    /// `--wal-dir` outside the data dir: etcd's entries are its `*.wal` (and preallocated
    /// `*.tmp`) files.
    Wal,
}

impl From<Role> for DirRole {
    fn from(r: Role) -> Self {
        match r {
            Role::Data => DirRole::Data,
            Role::Wal => DirRole::Wal,
        }
    }
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Data => "data dir",
            Role::Wal => "wal dir",
        }
    }
}

/// `<dir>.quorate-<id><suffix>` beside `dir`, or `<dir>/.quorate-<id><suffix>` inside it when
/// it is a mount point: on `dir`'s filesystem either way, so every move is a rename.
pub fn place(dir: &Path, id: RestoreId, inside: bool, suffix: &str) -> PathBuf {
    if inside {
        dir.join(format!(".quorate-{id}{suffix}"))
    } else {
        PathBuf::from(format!("{}.quorate-{id}{suffix}", dir.display()))
    }
}

/// A WAL dir entry etcd owns: a segment or a preallocated next segment.
fn is_wal_entry(name: &str) -> bool {
    !name.starts_with('.') && (name.ends_with(".wal") || name.ends_with(".tmp"))
}

/// The names in `dir`, sorted; empty when it cannot be read.
pub fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map(|it| {
            it.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// The entries of a mount-point dir that PRESERVE moves: `member` (plus the first component of a
/// `--wal-dir` inside the data dir), or a WAL dir's segments.
pub fn etcd_names(role: Role, dir: &Path, wal_in_data: Option<&Path>) -> Vec<String> {
    match role {
        Role::Data => {
            let mut names = vec!["member".to_owned()];
            if let Some(first) = wal_in_data.and_then(|r| r.components().next()) {
                let first = first.as_os_str().to_string_lossy().into_owned();
                if !names.contains(&first) {
                    names.push(first);
                }
            }
            names.retain(|n| fsutil::exists(&dir.join(n)));
            names
        }
        Role::Wal => entries(dir)
            .into_iter()
            .filter(|n| is_wal_entry(n))
            .collect(),
    }
}

/// One of etcd's dirs during restore `id`, as PRESERVE journaled it.
#[derive(Debug, Clone)]
pub struct Spot {
    pub role: Role,
    pub rec: PreservedDir,
    pub id: RestoreId,
}

impl Spot {
    pub fn home(&self) -> &Path {
        &self.rec.data_dir
    }

    pub fn preserved(&self) -> &Path {
        &self.rec.preserved
    }

    /// The dir is a mount point whose entries move (it is never renamed).
    pub fn inside(&self) -> bool {
        matches!(self.rec.moved, Moved::Entries { .. })
    }

    pub fn place(&self, suffix: &str) -> PathBuf {
        place(self.home(), self.id, self.inside(), suffix)
    }

    /// Where RESTORE prepares the copy.
    pub fn restoring(&self) -> PathBuf {
        self.place(".restoring")
    }

    /// etcd's entries now in `dir` (the home, or a failed copy's dir).
    pub fn etcd_entries(&self, dir: &Path) -> Vec<String> {
        match (&self.rec.moved, self.role) {
            (_, Role::Wal) => etcd_names(Role::Wal, dir, None),
            (Moved::Entries { names }, Role::Data) => names
                .iter()
                .filter(|n| fsutil::exists(&dir.join(n)))
                .cloned()
                .collect(),
            (Moved::Renamed, Role::Data) => etcd_names(Role::Data, dir, None),
        }
    }

    /// etcd would find data in this dir: the original, or a restored copy.
    pub fn holds_data(&self) -> bool {
        if self.inside() {
            !self.etcd_entries(self.home()).is_empty()
        } else {
            fsutil::exists(self.home())
        }
    }

    /// The original is preserved and something else is in place: RESTORE must be reverted first.
    pub fn conflict(&self) -> Option<String> {
        let both = match &self.rec.moved {
            Moved::Renamed => fsutil::exists(self.home()) && fsutil::exists(self.preserved()),
            Moved::Entries { names } => names.iter().any(|n| {
                fsutil::exists(&self.home().join(n)) && fsutil::exists(&self.preserved().join(n))
            }),
        };
        both.then(|| {
            format!(
                "{} {} holds data while the original is preserved at {}: revert the restore \
                 step first",
                self.role.name(),
                self.home().display(),
                self.preserved().display()
            )
        })
    }

    /// PRESERVE: moves the original aside (the whole dir, or its etcd entries). Idempotent.
    pub fn preserve(&self, progress: &dyn Fn(String)) -> Result<String> {
        let (home, preserved) = (self.home(), self.preserved());
        match &self.rec.moved {
            Moved::Renamed => match (fsutil::exists(home), fsutil::exists(preserved)) {
                (false, true) => Ok(format!(
                    "{} {} is preserved at {}",
                    self.role.name(),
                    home.display(),
                    preserved.display()
                )),
                (true, false) => {
                    progress(format!(
                        "moving {} to {}",
                        home.display(),
                        preserved.display()
                    ));
                    durable::rename_durable(home, preserved)?;
                    Ok(format!(
                        "preserved {} {} at {}",
                        self.role.name(),
                        home.display(),
                        preserved.display()
                    ))
                }
                (true, true) => Err(AgentError::Precondition(format!(
                    "both {} and {} exist: compare them by hand before going on",
                    home.display(),
                    preserved.display()
                ))),
                (false, false) => Err(self.lost()),
            },
            Moved::Entries { names } => {
                fsutil::create_private_dir(preserved, home)?;
                let mut moved = 0;
                for name in names {
                    let (from, to) = (home.join(name), preserved.join(name));
                    match (fsutil::exists(&from), fsutil::exists(&to)) {
                        (false, true) => {}
                        (true, false) => {
                            progress(format!("moving {} to {}", from.display(), to.display()));
                            fs::rename(&from, &to).map_err(|e| {
                                AgentError::io(format!("moving {} to", from.display()), &to, e)
                            })?;
                            moved += 1;
                        }
                        (true, true) => {
                            return Err(AgentError::Precondition(format!(
                                "both {} and {} exist: compare them by hand before going on",
                                from.display(),
                                to.display()
                            )));
                        }
                        (false, false) => return Err(self.lost()),
                    }
                }
                if moved > 0 {
                    durable::fsync_dir(preserved)?;
                    durable::fsync_dir(home)?;
                }
                Ok(format!(
                    "{} {} is a mount point: preserved {} in {} (same filesystem; the mount point \
                     stays)",
                    self.role.name(),
                    home.display(),
                    names.join(", "),
                    preserved.display()
                ))
            }
        }
    }

    /// Revert of PRESERVE: moves the original back exactly. Idempotent.
    pub fn unpreserve(&self, progress: &dyn Fn(String)) -> Result<String> {
        if let Some(c) = self.conflict() {
            return Err(AgentError::Precondition(c));
        }
        let (home, preserved) = (self.home(), self.preserved());
        match &self.rec.moved {
            Moved::Renamed => match (fsutil::exists(home), fsutil::exists(preserved)) {
                (true, _) => Ok(format!(
                    "{} is in place; nothing to move back",
                    home.display()
                )),
                (false, true) => {
                    progress(format!(
                        "moving {} back to {}",
                        preserved.display(),
                        home.display()
                    ));
                    durable::rename_durable(preserved, home)?;
                    Ok(format!(
                        "moved the original {} back to {}",
                        self.role.name(),
                        home.display()
                    ))
                }
                (false, false) => Err(self.lost()),
            },
            Moved::Entries { names } => {
                let mut moved = 0;
                for name in names.iter().rev() {
                    let (from, to) = (preserved.join(name), home.join(name));
                    match (fsutil::exists(&from), fsutil::exists(&to)) {
                        (_, true) => {}
                        (true, false) => {
                            progress(format!(
                                "moving {} back to {}",
                                from.display(),
                                to.display()
                            ));
                            fs::rename(&from, &to).map_err(|e| {
                                AgentError::io(format!("moving {} back to", from.display()), &to, e)
                            })?;
                            moved += 1;
                        }
                        (false, false) => return Err(self.lost()),
                    }
                }
                if moved > 0 {
                    durable::fsync_dir(home)?;
                }
                // The hidden dir is quorate's own and now empty: remove it so the mount point
                // is exactly as it was. Anything left in it stays.
                if fsutil::exists(preserved) && entries(preserved).is_empty() {
                    fs::remove_dir(preserved)
                        .map_err(|e| AgentError::io("removing empty dir", preserved, e))?;
                    durable::fsync_dir(home)?;
                }
                Ok(format!(
                    "moved the original {} back into {}",
                    names.join(", "),
                    home.display()
                ))
            }
        }
    }

    fn lost(&self) -> AgentError {
        AgentError::Precondition(format!(
            "the original content of {} {} is neither in place nor at {}: it is not where this \
             agent left it; look for it before doing anything else",
            self.role.name(),
            self.home().display(),
            self.preserved().display()
        ))
    }
}

/// Records for PRESERVE: how the dir `dir` (of `role`) will be moved aside for restore `id`.
/// Refuses, changing nothing, when there is nothing to preserve or the place is taken.
pub fn plan(
    role: Role,
    dir: &Path,
    mount_point: bool,
    id: RestoreId,
    wal_in_data: Option<&Path>,
) -> Result<PreservedDir> {
    let what = role.name();
    let flag = match role {
        Role::Data => "etcd.data_dir / --data-dir",
        Role::Wal => "--wal-dir",
    };
    if !fsutil::exists(dir) {
        return Err(AgentError::Precondition(format!(
            "{what} {} does not exist: there is nothing to preserve; check {flag}",
            dir.display()
        )));
    }
    let preserved = place(dir, id, mount_point, "");
    if fsutil::exists(&preserved) {
        return Err(AgentError::Precondition(format!(
            "both {} and {} exist: compare them by hand before going on",
            dir.display(),
            preserved.display()
        )));
    }
    if !mount_point {
        return Ok(PreservedDir {
            data_dir: dir.to_owned(),
            preserved,
            owner: Ownership::of(dir)?,
            moved: Moved::Renamed,
        });
    }
    let names = etcd_names(role, dir, wal_in_data);
    let Some(first) = names.first() else {
        return Err(AgentError::Precondition(format!(
            "{what} {} is a mount point holding no etcd data ({}): there is nothing to preserve; \
             check {flag}",
            dir.display(),
            match role {
                Role::Data => "no member/",
                Role::Wal => "no *.wal files",
            }
        )));
    };
    Ok(PreservedDir {
        data_dir: dir.to_owned(),
        owner: Ownership::of(&dir.join(first))?,
        preserved,
        moved: Moved::Entries { names },
    })
}
