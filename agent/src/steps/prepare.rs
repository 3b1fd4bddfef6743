//! PREPARE and its inverse, and what RESTORE asks of the copy it made. While etcd still serves,
//! the staged snapshot is restored with this member's identity into `<dir>.quorate-<id>.prepared`
//! beside each of etcd's dirs (or `<dir>/.quorate-<id>.prepared` inside one that is a mount point,
//! where RESTORE would otherwise prepare its `.restoring` copy): on that dir's own filesystem, so
//! that after HALT and PRESERVE the copy goes into place by renames only. The journal records what
//! the copy was made from (the fingerprint) and, once it is complete and synced, every file of it
//! with its size; RESTORE uses it only when both still hold, and otherwise removes it and restores
//! as without it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use quorate_proto::durable;
use quorate_proto::model::{RestoreId, StepRequest};

use super::aside;
use super::aside::Spot;
use super::layout::{Layout, Wal};
use super::{Ctx, Done, done};
use crate::error::{AgentError, Result};
use crate::fsutil::{self, Ownership};
use crate::journal::{Fingerprint, Journal, PreparedCopy, PreparedDir};
use crate::snapshot;
use crate::tool::{RestoreArgs, ToolInfo};

/// The suffix of a prepared copy's dirs.
pub const SUFFIX: &str = ".prepared";

/// What restoring `req`'s snapshot with `tool` would be made from.
pub fn fingerprint(req: &StepRequest, tool: &ToolInfo, wal_in_data: Option<&Path>) -> Fingerprint {
    let f = &req.facts;
    Fingerprint {
        snapshot_sha256: f.snapshot_sha256.clone(),
        member_name: f.member_name.clone(),
        peer_urls: f.peer_urls.clone(),
        initial_cluster: f.initial_cluster.clone(),
        cluster_token: f.cluster_token.clone(),
        bump_revision: f.bump_revision,
        mark_compacted: f.mark_compacted,
        skip_hash_check: f.skip_hash_check,
        tool: tool.kind.name().to_owned(),
        tool_version: tool.version.clone(),
        wal_in_data: wal_in_data.map(Path::to_owned),
    }
}

/// What differs between the fingerprint a copy was made with and the one wanted now.
fn differences(made: &Fingerprint, want: &Fingerprint) -> Vec<String> {
    let mut out = Vec::new();
    let mut field = |name: &str, a: String, b: String| {
        if a != b {
            out.push(format!("{name} {a} (now {b})"));
        }
    };
    field(
        "snapshot sha256",
        made.snapshot_sha256.clone(),
        want.snapshot_sha256.clone(),
    );
    field(
        "member name",
        made.member_name.clone(),
        want.member_name.clone(),
    );
    field(
        "peer URLs",
        made.peer_urls.join(","),
        want.peer_urls.join(","),
    );
    field(
        "initial cluster",
        made.initial_cluster.clone(),
        want.initial_cluster.clone(),
    );
    field(
        "cluster token",
        made.cluster_token.clone(),
        want.cluster_token.clone(),
    );
    field(
        "revision bump",
        made.bump_revision.to_string(),
        want.bump_revision.to_string(),
    );
    field(
        "mark compacted",
        made.mark_compacted.to_string(),
        want.mark_compacted.to_string(),
    );
    field(
        "skip hash check",
        made.skip_hash_check.to_string(),
        want.skip_hash_check.to_string(),
    );
    field(
        "restore tool",
        format!("{} {}", made.tool, made.tool_version),
        format!("{} {}", want.tool, want.tool_version),
    );
    let show = |p: &Option<PathBuf>| {
        p.as_ref()
            .map_or("unset".into(), |p| p.display().to_string())
    };
    field(
        "--wal-dir inside the data dir",
        show(&made.wal_in_data),
        show(&want.wal_in_data),
    );
    out
}

/// The copy's dir for etcd's dir `home`.
fn dir_for(home: &Path, id: RestoreId, inside: bool) -> PreparedDir {
    PreparedDir {
        home: home.to_owned(),
        path: aside::place(home, id, inside, SUFFIX),
        inside,
    }
}

/// Where the copy goes for the layout found now: the data dir's, then the WAL dir's when it has
/// its own; and `--wal-dir` relative to the data dir when it lies inside it.
fn places(ctx: &Ctx<'_>) -> Result<(Vec<PreparedDir>, Option<PathBuf>)> {
    let id = ctx.req.restore_id;
    let member = ctx.etcd_member()?;
    let layout = Layout::detect(&ctx.data_dir, member.wal_dir.as_deref())?;
    let problems = layout.problems();
    if !problems.is_empty() {
        return Err(AgentError::Precondition(format!(
            "{}: {}; nothing was prepared",
            member.name,
            problems.join("; ")
        )));
    }
    let mut dirs = vec![dir_for(
        &layout.data.path,
        id,
        layout.data.place.mount_point,
    )];
    if let Some(w) = layout.own_wal() {
        dirs.push(dir_for(&w.path, id, w.place.mount_point));
    }
    let wal_in_data = match layout.wal {
        Some(Wal::InData { rel, .. }) => Some(rel),
        _ => None,
    };
    Ok((dirs, wal_in_data))
}

/// Every file under the copy's dirs with its size.
fn listing(dirs: &[PreparedDir]) -> BTreeMap<PathBuf, u64> {
    fn walk(path: &Path, out: &mut BTreeMap<PathBuf, u64>) {
        let Ok(meta) = std::fs::symlink_metadata(path) else {
            return;
        };
        if meta.is_dir() {
            for e in std::fs::read_dir(path).into_iter().flatten().flatten() {
                walk(&e.path(), out);
            }
        } else {
            out.insert(path.to_owned(), meta.len());
        }
    }
    let mut out = BTreeMap::new();
    for d in dirs {
        walk(&d.path, &mut out);
    }
    out
}

/// Why the copy's files are not those recorded when it was made, if they are not.
fn damage(recorded: &BTreeMap<PathBuf, u64>, dirs: &[PreparedDir]) -> Option<String> {
    let now = listing(dirs);
    if now == *recorded {
        return None;
    }
    let missing = recorded.keys().find(|p| !now.contains_key(*p));
    let changed = recorded
        .iter()
        .find(|(p, size)| now.get(*p).is_some_and(|s| s != *size));
    let extra = now.keys().find(|p| !recorded.contains_key(*p));
    Some(match (missing, changed, extra) {
        (Some(p), _, _) => format!("{} is missing", p.display()),
        (_, Some((p, size)), _) => format!(
            "{} has {} bytes, {size} when it was made",
            p.display(),
            now.get(p).copied().unwrap_or_default()
        ),
        (_, _, Some(p)) => format!("{} was added", p.display()),
        (None, None, None) => "its files changed".to_owned(),
    })
}

/// Refuses a journaled dir that is not where PREPARE puts its copies for restore `id`: removing
/// it could delete something else.
fn guard(d: &PreparedDir, id: RestoreId) -> Result<()> {
    if d.path == aside::place(&d.home, id, d.inside, SUFFIX) {
        Ok(())
    } else {
        Err(AgentError::Precondition(format!(
            "the journal of restore {id} names {} as a prepared copy of {}, which is not where \
             the prepare step puts it: look at the journal before going on; nothing was removed",
            d.path.display(),
            d.home.display()
        )))
    }
}

fn remove_tree(path: &Path) -> Result<bool> {
    if !fsutil::exists(path) {
        return Ok(false);
    }
    std::fs::remove_dir_all(path).map_err(|e| AgentError::io("removing", path, e))?;
    durable::fsync_dir(fsutil::parent(path)?)?;
    Ok(true)
}

/// Removes the copy PREPARE made (or began) for this restore and forgets it. Returns what was
/// removed. Idempotent.
pub(super) fn discard(ctx: &mut Ctx<'_>) -> Result<Vec<PathBuf>> {
    let Some(copy) = ctx.journal.prepared.clone() else {
        return Ok(Vec::new());
    };
    let id = ctx.req.restore_id;
    for d in &copy.dirs {
        guard(d, id)?;
    }
    let mut removed = Vec::new();
    for d in &copy.dirs {
        if remove_tree(&d.path)? {
            ctx.progress(format!("removed the prepared copy {}", d.path.display()));
            removed.push(d.path.clone());
        }
    }
    ctx.journal.prepared = None;
    ctx.save()?;
    Ok(removed)
}

/// `; removed the prepared copy a, b` (empty when nothing was there).
pub(super) fn removed_note(removed: &[PathBuf]) -> String {
    if removed.is_empty() {
        return String::new();
    }
    let paths: Vec<String> = removed.iter().map(|p| p.display().to_string()).collect();
    format!("; removed the prepared copy {}", paths.join(", "))
}

/// PRESERVE began: the data dir may be moved aside already, and nothing is prepared any more.
fn preserve_began(journal: &Journal) -> bool {
    journal.preserved.is_some()
}

pub(super) fn prepare(ctx: &mut Ctx<'_>) -> Result<Done> {
    let id = ctx.req.restore_id;
    if preserve_began(&ctx.journal) {
        return Ok(done(format!(
            "the preserve step of restore {id} has begun on {}: nothing is prepared now; the \
             restore step restores the snapshot itself",
            ctx.name
        )));
    }
    let started = Instant::now();
    let (dirs, wal_in_data) = places(ctx)?;
    let engine = ctx.engine;
    let snapshot = snapshot::staged(&engine.state, id)?;
    let size = std::fs::metadata(&snapshot).map_or(0, |m| m.len());
    let tool = engine.tool.info()?;
    let want = fingerprint(ctx.req, &tool, wal_in_data.as_deref());
    if let Some(copy) = &ctx.journal.prepared
        && copy.fingerprint == want
        && copy.dirs == dirs
        && copy
            .files
            .as_ref()
            .is_some_and(|f| damage(f, &dirs).is_none())
    {
        return Ok(done(format!(
            "the snapshot is already prepared for member {} in {}",
            want.member_name,
            show_dirs(&dirs)
        )));
    }
    let removed = discard(ctx)?;
    ctx.progress(format!(
        "checking the sha256 of the staged snapshot ({})",
        snapshot::human(size)
    ));
    snapshot::check_sha256(&snapshot, &ctx.req.facts.snapshot_sha256)?;
    // Copies at these places are this restore's own (the id is in the name), from an attempt
    // whose journal entry was lost.
    for d in &dirs {
        remove_tree(&d.path)?;
    }
    ctx.journal.prepared = Some(PreparedCopy {
        fingerprint: want,
        dirs: dirs.clone(),
        files: None,
    });
    ctx.save()?;
    let data = &dirs[0];
    let wal_dir = match (dirs.get(1), &wal_in_data) {
        (Some(w), _) => Some(w.path.clone()),
        (None, Some(rel)) => Some(data.path.join(rel)),
        (None, None) => None,
    };
    ctx.progress(format!(
        "restoring the {} snapshot into {} with {} {} while etcd serves",
        snapshot::human(size),
        show_dirs(&dirs),
        tool.kind.name(),
        tool.version
    ));
    let facts = &ctx.req.facts;
    let restored = engine.tool.restore(&RestoreArgs {
        snapshot: &snapshot,
        data_dir: &data.path,
        wal_dir: wal_dir.as_deref(),
        name: &facts.member_name,
        initial_cluster: &facts.initial_cluster,
        cluster_token: &facts.cluster_token,
        peer_urls: &facts.peer_urls,
        bump_revision: facts.bump_revision,
        skip_hash_check: facts.skip_hash_check,
    });
    if let Err(e) = restored {
        // A failed restore leaves a partial dir: it is of no use to anyone.
        if let Err(cleanup) = discard(ctx) {
            tracing::warn!("removing the partial prepared copy: {cleanup}");
        }
        return Err(e);
    }
    // Synced now, so that the copy RESTORE moves into place is on disk whole.
    for d in &dirs {
        fsutil::adopt_tree(&d.path, Ownership::of(&d.path)?)?;
    }
    let files = listing(&dirs);
    if let Some(copy) = ctx.journal.prepared.as_mut() {
        copy.files = Some(files);
    }
    ctx.save()?;
    let facts = &ctx.req.facts;
    Ok(done(format!(
        "prepared the {} snapshot for member {} under token {} in {} with {} {} in {:.2} s while \
         etcd served; the restore step moves it into place{}",
        snapshot::human(size),
        facts.member_name,
        facts.cluster_token,
        show_dirs(&dirs),
        tool.kind.name(),
        tool.version,
        started.elapsed().as_secs_f64(),
        if removed.is_empty() {
            ""
        } else {
            " (an earlier copy that no longer matched was removed first)"
        }
    )))
}

pub(super) fn unprepare(ctx: &mut Ctx<'_>) -> Result<Done> {
    let removed = discard(ctx)?;
    Ok(done(if removed.is_empty() {
        format!(
            "no prepared copy of restore {} is left on {}",
            ctx.req.restore_id, ctx.name
        )
    } else {
        removed_note(&removed).trim_start_matches("; ").to_owned()
    }))
}

fn show_dirs(dirs: &[PreparedDir]) -> String {
    let paths: Vec<String> = dirs.iter().map(|d| d.path.display().to_string()).collect();
    paths.join(" and ")
}

/// The prepared copy's dirs, one for each of `spots` and in their order, when RESTORE may move
/// them into place: made to completion for exactly what `want` restores, from the staged
/// snapshot, in the places PRESERVE's record implies, and its files as they were made. Else why
/// not.
pub(super) fn usable(
    journal: &Journal,
    spots: &[Spot],
    want: &Fingerprint,
) -> std::result::Result<Vec<PathBuf>, String> {
    let Some(copy) = &journal.prepared else {
        return Err("no copy was prepared".into());
    };
    let Some(files) = &copy.files else {
        return Err("its preparation did not complete".into());
    };
    let differ = differences(&copy.fingerprint, want);
    if !differ.is_empty() {
        return Err(format!("it was made with {}", differ.join(", ")));
    }
    match &journal.staged {
        Some(s) if s.sha256 == copy.fingerprint.snapshot_sha256 => {}
        Some(s) => {
            return Err(format!(
                "the staged snapshot is {}, not the one it was made from",
                s.sha256
            ));
        }
        None => return Err("the journal records no staged snapshot".into()),
    }
    let expected: Vec<PreparedDir> = spots
        .iter()
        .map(|s| dir_for(s.home(), s.id, s.inside()))
        .collect();
    if copy.dirs != expected {
        return Err(format!(
            "it is in {}, and the preserved layout wants {}",
            show_dirs(&copy.dirs),
            show_dirs(&expected)
        ));
    }
    if let Some(why) = damage(files, &copy.dirs) {
        return Err(format!("it changed since it was made: {why}"));
    }
    Ok(copy.dirs.iter().map(|d| d.path.clone()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp() -> Fingerprint {
        Fingerprint {
            snapshot_sha256: "a".repeat(64),
            member_name: "cp-1".into(),
            peer_urls: vec!["https://127.0.0.11:2380".into()],
            initial_cluster: "cp-1=https://127.0.0.11:2380".into(),
            cluster_token: "quorate-x".into(),
            bump_revision: 0,
            mark_compacted: false,
            skip_hash_check: false,
            tool: "etcdutl".into(),
            tool_version: "3.5.16".into(),
            wal_in_data: None,
        }
    }

    #[test]
    fn every_difference_is_named_with_both_values() {
        assert!(differences(&fp(), &fp()).is_empty());
        let other = Fingerprint {
            cluster_token: "quorate-y".into(),
            tool_version: "3.5.17".into(),
            ..fp()
        };
        assert_eq!(
            differences(&fp(), &other),
            [
                "cluster token quorate-x (now quorate-y)",
                "restore tool etcdutl 3.5.16 (now etcdutl 3.5.17)"
            ]
        );
    }

    #[test]
    fn damage_names_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = PreparedDir {
            home: dir.path().join("etcd"),
            path: dir.path().join("etcd.p"),
            inside: false,
        };
        std::fs::create_dir_all(d.path.join("member/snap")).expect("mkdir");
        std::fs::write(d.path.join("member/snap/db"), b"12345").expect("db");
        let dirs = [d.clone()];
        let made = listing(&dirs);
        assert_eq!(damage(&made, &dirs), None);
        std::fs::write(d.path.join("member/snap/db"), b"12").expect("truncate");
        let why = damage(&made, &dirs).expect("damaged");
        assert!(why.contains("member/snap/db has 2 bytes, 5"), "{why}");
        std::fs::remove_file(d.path.join("member/snap/db")).expect("rm");
        let why = damage(&made, &dirs).expect("damaged");
        assert!(why.ends_with("member/snap/db is missing"), "{why}");
    }

    #[test]
    fn only_the_prepare_steps_own_places_are_removed() {
        let id = RestoreId::new();
        let home = Path::new("/var/lib/etcd");
        assert!(guard(&dir_for(home, id, false), id).is_ok());
        assert!(guard(&dir_for(home, id, true), id).is_ok());
        let elsewhere = PreparedDir {
            path: home.to_owned(),
            ..dir_for(home, id, false)
        };
        let err = guard(&elsewhere, id).expect_err("refused");
        assert!(err.to_string().contains("nothing was removed"), "{err}");
        assert!(guard(&dir_for(home, RestoreId::new(), false), id).is_err());
    }
}
