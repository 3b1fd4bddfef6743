//! Leftovers of ended restores (`quorate gc`): the original data and WAL dirs PRESERVE kept, the
//! failed copies RESTORE set aside, and each restore's own dir under the state dir.
//!
//! A restore has ended on this host when FINISH ran, or when every step was reverted and its
//! claim released. Nothing of a restore that holds the lock or has a step not ended is listed,
//! and a removal is checked again against the journal: the agent removes only a path it lists
//! itself for that ended restore, never one the request merely names.

use std::path::{Path, PathBuf};

use quorate_proto::durable;
use quorate_proto::model::{
    Leftover, LeftoverKind, RemoveLeftovers, RestoreEnd, RestoreId, RestoreLeftovers, Step,
};
use quorate_proto::pb;

use crate::engine::Engine;
use crate::error::{AgentError, Result};
use crate::fsutil;
use crate::journal::{Journal, Op, StateDir, StepState};

/// How restore `journal` stands on this host: its end, when (seconds since the epoch), and why
/// it is not over.
pub fn end_of(journal: &Journal, active: Option<RestoreId>) -> (RestoreEnd, u64, String) {
    let id = journal.restore_id;
    if active == Some(id) {
        return (
            RestoreEnd::Unfinished,
            0,
            format!(
                "restore {id} holds this member's lock: finish it (`quorate resume {id}`) or \
                 roll it back (`quorate rollback {id}`)"
            ),
        );
    }
    let rec = |step| journal.steps.get(&step);
    if let Some(r) = rec(Step::Finish).filter(|r| r.op == Op::Run && r.state == StepState::Done) {
        return (RestoreEnd::Finished, r.at, String::new());
    }
    if let Some(r) = rec(Step::Claim).filter(|r| r.state == StepState::Reverted) {
        return (RestoreEnd::RolledBack, r.at, String::new());
    }
    let last = journal
        .last
        .and_then(|s| rec(s).map(|r| format!("; last: {s} {}", r.state.name())))
        .unwrap_or_default();
    (
        RestoreEnd::Unfinished,
        0,
        format!(
            "restore {id} neither finished nor rolled back its claim on this member{last}: \
             finish it (`quorate resume {id}`) or roll it back (`quorate rollback {id}`)"
        ),
    )
}

/// A path made for restore `id`: its name carries the id, whatever dir it is in.
fn names_restore(path: &Path, id: RestoreId) -> bool {
    let id = id.to_string();
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n == id || n.contains(&format!("quorate-{id}")))
}

/// The dirs etcd uses on this host now (its data dir and its WAL dir), canonical where they
/// exist: a leftover is never one of them nor holds one (an operator may have pointed etcd at
/// a preserved dir by hand). None on an apiserver-only host.
pub fn live_dirs(engine: &Engine) -> Result<Vec<PathBuf>> {
    if engine.apiserver_only() {
        return Ok(Vec::new());
    }
    let member = engine.member(None).map_err(|e| {
        AgentError::Precondition(format!(
            "cannot tell which dirs etcd uses on this member, so nothing is listed or removed: {e}"
        ))
    })?;
    let mut dirs = vec![engine.data_dir_of(&member)];
    dirs.extend(member.wal_dir.clone());
    let canonical: Vec<PathBuf> = dirs.iter().filter_map(|d| d.canonicalize().ok()).collect();
    dirs.extend(canonical);
    Ok(dirs)
}

/// `path` is, or holds, one of the dirs etcd uses.
fn is_live(path: &Path, live: &[PathBuf]) -> bool {
    let canonical = path.canonicalize().ok();
    [Some(path.to_owned()), canonical]
        .into_iter()
        .flatten()
        .any(|p| live.iter().any(|l| l.starts_with(&p)))
}

/// What restore `journal` left on this host now (only what exists, never a dir etcd uses).
fn leftovers(state: &StateDir, journal: &Journal, live: &[PathBuf]) -> Vec<Leftover> {
    let id = journal.restore_id;
    let mut found: Vec<(PathBuf, LeftoverKind)> = Vec::new();
    if let Some(p) = &journal.preserved {
        found.push((p.preserved.clone(), LeftoverKind::PreservedData));
    }
    if let Some(p) = &journal.preserved_wal {
        found.push((p.preserved.clone(), LeftoverKind::PreservedWal));
    }
    for p in &journal.set_aside {
        found.push((p.clone(), LeftoverKind::FailedCopy));
    }
    found.push((state.restore_dir(id), LeftoverKind::RestoreState));
    let mut seen = std::collections::BTreeSet::new();
    found
        .into_iter()
        .filter(|(p, _)| names_restore(p, id) && p.symlink_metadata().is_ok())
        .filter(|(p, _)| !is_live(p, live))
        .filter(|(p, _)| seen.insert(p.clone()))
        .map(|(path, kind)| Leftover {
            bytes: fsutil::tree_size(&path),
            path,
            kind,
        })
        .collect()
}

/// The ids of the restores with a dir under the state dir.
fn restore_ids(state: &StateDir) -> Result<Vec<RestoreId>> {
    let dir = state.root().join("restores");
    let entries = match std::fs::read_dir(&dir) {
        Ok(it) => it,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(AgentError::io("listing", &dir, e)),
    };
    let mut ids: Vec<RestoreId> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
        .collect();
    ids.sort();
    Ok(ids)
}

/// Every restore this host journaled, ended or not, with the leftovers of the ended ones.
pub fn list(engine: &Engine) -> Result<Vec<RestoreLeftovers>> {
    let state = &engine.state;
    let active = state.active()?;
    let live = live_dirs(engine)?;
    let mut out = Vec::new();
    for id in restore_ids(state)? {
        // One journal this agent cannot read keeps that restore (never a guess that it ended),
        // not every other one.
        let journal = match state.load(id) {
            Ok(journal) => journal,
            Err(e) => {
                out.push(RestoreLeftovers {
                    restore_id: id,
                    end: RestoreEnd::Unfinished,
                    ended_at: 0,
                    why: format!(
                        "its journal on this host is unreadable ({e}): kept; look at {} on this host",
                        state.restore_dir(id).display()
                    ),
                    leftovers: Vec::new(),
                });
                continue;
            }
        };
        let (end, ended_at, why) = end_of(&journal, active);
        let leftovers = match end {
            RestoreEnd::Unfinished => Vec::new(),
            _ => leftovers(state, &journal, &live),
        };
        out.push(RestoreLeftovers {
            restore_id: id,
            end,
            ended_at,
            why,
            leftovers,
        });
    }
    Ok(out)
}

/// Removes the requested leftovers of one ended restore, in the order given; each path is
/// removed only if [`list`] would list it now. The restore's state dir goes only once nothing
/// else of it is left (its journal is what lists the rest).
pub fn remove(engine: &Engine, req: &RemoveLeftovers) -> Result<Vec<pb::Removal>> {
    let state = &engine.state;
    let id = req.restore_id;
    if !state.restore_dir(id).exists() {
        return Err(AgentError::Precondition(format!(
            "restore {id} left nothing on {}: it has no dir under {}",
            engine.host_name,
            state.root().display()
        )));
    }
    let journal = state.load(id)?;
    let (end, _, why) = end_of(&journal, state.active()?);
    if end == RestoreEnd::Unfinished {
        return Err(AgentError::Precondition(format!("nothing removed: {why}")));
    }
    let live = live_dirs(engine)?;
    let mut removals = Vec::new();
    for path in &req.paths {
        let now = leftovers(state, &journal, &live);
        let refuse = |message: String| pb::Removal {
            path: path.display().to_string(),
            removed: false,
            message,
            bytes: 0,
        };
        let Some(item) = now.iter().find(|l| &l.path == path) else {
            removals.push(refuse(format!(
                "not a leftover of restore {id} on this member (any more): nothing removed"
            )));
            continue;
        };
        if item.kind == LeftoverKind::RestoreState {
            let rest: Vec<String> = now
                .iter()
                .filter(|l| l.kind != LeftoverKind::RestoreState)
                .map(|l| l.path.display().to_string())
                .collect();
            if !rest.is_empty() {
                removals.push(refuse(format!(
                    "kept: its journal lists {} still there; remove those first",
                    rest.join(", ")
                )));
                continue;
            }
        }
        match remove_tree(path) {
            Ok(()) => {
                tracing::info!(restore_id = %id, path = %path.display(), "removed a leftover");
                removals.push(pb::Removal {
                    path: path.display().to_string(),
                    removed: true,
                    message: format!("removed the {} of restore {id}", item.kind.name()),
                    bytes: item.bytes,
                });
            }
            Err(e) => removals.push(refuse(format!("{e}; what is left is listed again"))),
        }
    }
    Ok(removals)
}

/// Removes a dir (without following symlinks in it) or a file, then syncs its parent.
fn remove_tree(path: &Path) -> Result<()> {
    let meta = path
        .symlink_metadata()
        .map_err(|e| AgentError::io("looking at", path, e))?;
    let removed = if meta.is_dir() {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    };
    removed.map_err(|e| AgentError::io("removing", path, e))?;
    let parent = fsutil::parent(path)?;
    Ok(durable::fsync_dir(parent)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::PreservedDir;

    #[test]
    fn only_paths_named_for_the_restore_count() {
        let id = RestoreId::new();
        let data = PathBuf::from(format!("/var/lib/etcd.quorate-{id}"));
        assert!(names_restore(&data, id));
        assert!(names_restore(
            &PathBuf::from(format!("/var/lib/etcd/.quorate-{id}")),
            id
        ));
        assert!(names_restore(
            &PathBuf::from(format!("/var/lib/etcd.quorate-{id}.failed-2")),
            id
        ));
        assert!(names_restore(
            &PathBuf::from(format!("/s/restores/{id}")),
            id
        ));
        assert!(!names_restore(&PathBuf::from("/var/lib/etcd"), id));
        let other = RestoreId::new();
        assert!(!names_restore(&data, other));
    }

    #[test]
    fn a_journal_naming_a_live_dir_or_another_path_lists_nothing_of_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = StateDir::new(dir.path().join("state"));
        let id = RestoreId::new();
        // etcd was pointed at the preserved dir by hand: it is live, whatever its name.
        let live = dir.path().join(format!("etcd.quorate-{id}"));
        std::fs::create_dir_all(live.join("member")).expect("mkdir");
        let mut j = Journal::new(id);
        j.preserved = Some(PreservedDir {
            data_dir: live.clone(),
            preserved: live.clone(),
            owner: fsutil::Ownership {
                uid: 0,
                gid: 0,
                mode: 0o700,
            },
            moved: Default::default(),
        });
        j.set_aside.push(dir.path().to_owned());
        state.save(&j).expect("save");
        let listed = leftovers(&state, &j, std::slice::from_ref(&live));
        assert_eq!(
            listed.iter().map(|l| l.kind).collect::<Vec<_>>(),
            [LeftoverKind::RestoreState],
            "{listed:?}"
        );
    }
}
