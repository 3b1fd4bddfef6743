//! RESTORE and its inverse: take the copy PREPARE made before the halt when it matches this
//! request (see `prepare.rs`), else restore now into a fresh place on each dir's own filesystem
//! (beside it, or inside it when it is a mount point); adopt the original's owner and mode, move
//! into place; on revert, move the restored copy away. Nothing of etcd's is ever deleted (a
//! prepared copy that is not used is quorate's own, and is removed).

use std::path::{Path, PathBuf};
use std::time::Instant;

use quorate_proto::model::{EtcdDir, Step};

use super::aside::{Role, Spot};
use super::{Ctx, Done, done, prepare, spots};
use quorate_proto::durable;

use crate::error::{AgentError, Result};
use crate::fsutil;
use crate::settings::{self, FileEdit};
use crate::snapshot;
use crate::tool::{RestoreArgs, ToolInfo};

/// Moves `dir` to a fresh name based on `base`, records it, and returns the new path.
fn move_aside(ctx: &mut Ctx<'_>, dir: &Path, base: &Path, always_number: bool) -> Result<PathBuf> {
    let to = if always_number {
        fsutil::numbered(base)
    } else {
        fsutil::free_name(base)
    };
    ctx.journal.set_aside.push(to.clone());
    ctx.save()?;
    ctx.progress(format!(
        "moving {} aside to {}",
        dir.display(),
        to.display()
    ));
    durable::rename_durable(dir, &to)?;
    Ok(to)
}

/// A copy left in the restoring place by an interrupted attempt: removed when it is an empty
/// dir, else kept as `.partial-<n>`.
fn clear_restoring(ctx: &mut Ctx<'_>, spot: &Spot) -> Result<()> {
    let restoring = spot.restoring();
    if !fsutil::exists(&restoring) {
        return Ok(());
    }
    if restoring.is_dir() && super::aside::entries(&restoring).is_empty() {
        std::fs::remove_dir(&restoring)
            .map_err(|e| AgentError::io("removing empty dir", &restoring, e))?;
        return Ok(durable::fsync_dir(fsutil::parent(&restoring)?)?);
    }
    move_aside(ctx, &restoring, &spot.place(".partial"), true)?;
    Ok(())
}

/// Moves a restored copy out of the dir etcd uses into `.failed[-<n>]` (journaled first);
/// `None` when there is none. Only called while the original is preserved.
fn set_aside_copy(ctx: &mut Ctx<'_>, spot: &Spot) -> Result<Option<PathBuf>> {
    if !spot.holds_data() {
        return Ok(None);
    }
    let base = spot.place(".failed");
    if !spot.inside() {
        return move_aside(ctx, spot.home(), &base, false).map(Some);
    }
    let to = fsutil::free_name(&base);
    ctx.journal.set_aside.push(to.clone());
    ctx.save()?;
    fsutil::create_private_dir(&to, spot.home())?;
    for name in spot.etcd_entries(spot.home()) {
        let from = spot.home().join(&name);
        ctx.progress(format!(
            "moving {} aside to {}",
            from.display(),
            to.display()
        ));
        std::fs::rename(&from, to.join(&name))
            .map_err(|e| AgentError::io(format!("moving {} to", from.display()), &to, e))?;
    }
    durable::fsync_dir(&to)?;
    durable::fsync_dir(spot.home())?;
    Ok(Some(to))
}

/// Gives the copy in `restoring` the original's owner and mode and moves it into place.
fn install(ctx: &Ctx<'_>, spot: &Spot, restoring: &Path) -> Result<()> {
    let own = spot.rec.owner;
    ctx.progress(format!(
        "setting owner {}:{} and mode {:o} on {}, syncing",
        own.uid,
        own.gid,
        own.mode,
        restoring.display()
    ));
    if !spot.inside() {
        fsutil::adopt_tree(restoring, own)?;
        return Ok(durable::rename_durable(restoring, spot.home())?);
    }
    let names = super::aside::entries(restoring);
    for name in &names {
        fsutil::adopt_tree(&restoring.join(name), own)?;
    }
    durable::fsync_dir(restoring)?;
    for name in &names {
        let (from, to) = (restoring.join(name), spot.home().join(name));
        ctx.progress(format!("moving {} to {}", from.display(), to.display()));
        std::fs::rename(&from, &to)
            .map_err(|e| AgentError::io(format!("moving {} to", from.display()), &to, e))?;
    }
    durable::fsync_dir(spot.home())?;
    std::fs::remove_dir(restoring)
        .map_err(|e| AgentError::io("removing empty dir", restoring, e))?;
    Ok(durable::fsync_dir(spot.home())?)
}

/// The dirs PRESERVE journaled, checked against etcd's settings now: a data dir or `--wal-dir`
/// changed since then would restore into the wrong place.
fn journaled_spots(ctx: &Ctx<'_>) -> Result<Vec<Spot>> {
    let id = ctx.req.restore_id;
    let member = ctx.etcd_member()?;
    let spots = spots(&ctx.journal, id);
    let Some(data) = spots.first() else {
        return Err(AgentError::Precondition(format!(
            "restore {id}: the journal has no preserved data dir"
        )));
    };
    let changed = |what: &str, then: String, now: String| {
        AgentError::Precondition(format!(
            "etcd's {what} on {} changed since the preserve step (then {then}, now {now}): put it \
             back, or roll back restore {id}",
            member.name
        ))
    };
    if data.home() != ctx.data_dir {
        return Err(changed(
            "data dir",
            data.home().display().to_string(),
            ctx.data_dir.display().to_string(),
        ));
    }
    let show = |p: Option<&Path>| p.map_or("unset".to_owned(), |p| p.display().to_string());
    let then = spots.get(1).map(|w| w.home().to_owned()).or_else(|| {
        ctx.journal
            .wal_in_data
            .as_ref()
            .map(|r| data.home().join(r))
    });
    if then.as_deref() != member.wal_dir.as_deref() {
        return Err(changed(
            "--wal-dir",
            show(then.as_deref()),
            show(member.wal_dir.as_deref()),
        ));
    }
    for spot in &spots {
        if !fsutil::exists(spot.preserved()) {
            return Err(AgentError::Precondition(format!(
                "the preserved original {} is missing: stop and look for it before restoring",
                spot.preserved().display()
            )));
        }
    }
    Ok(spots)
}

pub(super) fn restore(ctx: &mut Ctx<'_>) -> Result<Done> {
    let engine = ctx.engine;
    let spots = journaled_spots(ctx)?;
    let tool = engine.tool.info()?;
    let want = prepare::fingerprint(ctx.req, &tool, ctx.journal.wal_in_data.as_deref());
    let (how, note) = match prepare::usable(&ctx.journal, &spots, &want) {
        Ok(dirs) => {
            ctx.progress("using the copy prepared before the halt".into());
            (How::Prepared(dirs), String::new())
        }
        Err(why) => {
            let removed = prepare::discard(ctx)?;
            let note = if ctx.journal.steps.contains_key(&Step::Prepare) {
                format!(
                    "; the copy prepared before the halt was not used ({why}){}",
                    prepare::removed_note(&removed)
                )
            } else {
                String::new()
            };
            (How::Now, note)
        }
    };

    // What an earlier attempt left: a partial copy, or a restored copy already in place.
    for spot in &spots {
        clear_restoring(ctx, spot)?;
        set_aside_copy(ctx, spot)?;
    }
    let data = &spots[0];
    let wal = spots.iter().find(|s| s.role == Role::Wal);
    let started = Instant::now();
    let used_prepared = matches!(how, How::Prepared(_));
    let sources: Vec<PathBuf> = match how {
        How::Prepared(dirs) => dirs,
        How::Now => {
            restore_now(ctx, &spots, &tool)?;
            spots.iter().map(Spot::restoring).collect()
        }
    };
    // The WAL first: the data dir's member/ in place is what lets etcd start.
    for (spot, from) in spots.iter().zip(&sources).rev() {
        install(ctx, spot, from)?;
    }
    if used_prepared {
        // Moved into place: nothing of it is left to remove.
        ctx.journal.prepared = None;
        ctx.save()?;
    }
    let took = started.elapsed().as_secs_f64();
    let rewritten = rewrite_settings(ctx)?;
    let facts = &ctx.req.facts;
    let mut d = done(format!(
        "{} into {}{} as member {} with {} {} in {took:.3} s{note}{}",
        if used_prepared {
            "moved the snapshot prepared before the halt"
        } else {
            "restored the snapshot"
        },
        data.home().display(),
        wal.map(|w| format!(" (wal dir {})", w.home().display()))
            .unwrap_or_default(),
        facts.member_name,
        tool.kind.name(),
        tool.version,
        rewritten
            .iter()
            .map(|e| format!(
                "; set {} in {} (original kept at {})",
                e.keys.join(", "),
                e.path.display(),
                e.original.display()
            ))
            .collect::<String>()
    ));
    if let Some(s) = &ctx.journal.staged {
        d.message.push_str(&format!(
            "; the snapshot is at revision {} with {} keys",
            s.revision, s.total_keys
        ));
        d.details.revision = Some(s.revision);
    }
    d.message
        .push_str(&format!("; cluster token {}", facts.cluster_token));
    Ok(d)
}

/// Where RESTORE's copy comes from.
enum How {
    /// PREPARE's copy, one dir per spot.
    Prepared(Vec<PathBuf>),
    /// Restored now from the staged snapshot into each spot's restoring place.
    Now,
}

/// Restores the staged snapshot into each spot's restoring place (the halt has happened: this is
/// the slow way, inside the API-down window).
fn restore_now(ctx: &Ctx<'_>, spots: &[Spot], tool: &ToolInfo) -> Result<()> {
    let engine = ctx.engine;
    let snapshot = snapshot::staged(&engine.state, ctx.req.restore_id)?;
    let size = std::fs::metadata(&snapshot).map_or(0, |m| m.len());
    ctx.progress(format!(
        "checking the sha256 of the staged snapshot ({})",
        snapshot::human(size)
    ));
    snapshot::check_sha256(&snapshot, &ctx.req.facts.snapshot_sha256)?;
    let data = &spots[0];
    let wal = spots.iter().find(|s| s.role == Role::Wal);
    let wal_dir = match (wal, &ctx.journal.wal_in_data) {
        (Some(w), _) => Some(w.restoring()),
        (None, Some(rel)) => Some(data.restoring().join(rel)),
        (None, None) => None,
    };
    ctx.progress(format!(
        "restoring {} snapshot with {} {}",
        snapshot::human(size),
        tool.kind.name(),
        tool.version
    ));
    let facts = &ctx.req.facts;
    engine.tool.restore(&RestoreArgs {
        snapshot: &snapshot,
        data_dir: &data.restoring(),
        wal_dir: wal_dir.as_deref(),
        name: &facts.member_name,
        initial_cluster: &facts.initial_cluster,
        cluster_token: &facts.cluster_token,
        peer_urls: &facts.peer_urls,
        bump_revision: facts.bump_revision,
        skip_hash_check: facts.skip_hash_check,
    })?;
    Ok(())
}

/// Sets the new token and initial cluster in every settings file of etcd that restates them
/// (journaled before each file changes; the original copied to the restore's state dir first).
fn rewrite_settings(ctx: &mut Ctx<'_>) -> Result<Vec<FileEdit>> {
    let files = ctx.engine.etcd()?.settings_files()?;
    let facts = ctx.req.facts.clone();
    let values = [
        (settings::CLUSTER_TOKEN, facts.cluster_token.as_str()),
        (settings::INITIAL_CLUSTER, facts.initial_cluster.as_str()),
    ];
    let restore_dir = ctx.engine.state.restore_dir(ctx.req.restore_id);
    let mut edits = Vec::new();
    for (i, file) in files.iter().enumerate() {
        let text = std::fs::read_to_string(&file.path)
            .map_err(|e| AgentError::io("reading", &file.path, e))?;
        let (_, keys) = settings::rewrite(&text, file.format, &values, &file.path)?;
        if keys.is_empty() {
            continue;
        }
        let known = ctx
            .journal
            .edits
            .iter()
            .find(|e| e.path == file.path)
            .cloned();
        let edit = match known {
            Some(e) => e,
            None => {
                let original = settings::original_copy(&restore_dir, i, &file.path);
                settings::keep_original(file, &original)?;
                let e = FileEdit {
                    path: file.path.clone(),
                    format: file.format,
                    original,
                    keys,
                    owner: Some(settings::owner_of(&file.path)?),
                };
                ctx.journal.edits.push(e.clone());
                ctx.save()?;
                e
            }
        };
        ctx.progress(format!(
            "setting {} in {}",
            edit.keys.join(", "),
            edit.path.display()
        ));
        settings::apply(file, &values)?;
        edits.push(edit);
    }
    Ok(edits)
}

/// Puts back the originals of the settings files RESTORE rewrote.
fn revert_settings(ctx: &mut Ctx<'_>) -> Result<Vec<String>> {
    let mut notes = Vec::new();
    for edit in ctx.journal.edits.clone() {
        if settings::revert(&edit)? {
            ctx.progress(format!(
                "put the original {} back (from {})",
                edit.path.display(),
                edit.original.display()
            ));
            notes.push(format!("put the original {} back", edit.path.display()));
        }
    }
    Ok(notes)
}

pub(super) fn set_aside_restored(ctx: &mut Ctx<'_>) -> Result<Done> {
    let notes = revert_settings(ctx)?;
    let mut note = notes.iter().map(|n| format!("; {n}")).collect::<String>();
    let spots = spots(&ctx.journal, ctx.req.restore_id);
    if spots.is_empty() {
        return Ok(done(format!(
            "nothing was preserved by restore {}, so nothing was restored here{note}",
            ctx.req.restore_id
        )));
    }
    for spot in &spots {
        if spot.holds_data() && !fsutil::exists(spot.preserved()) {
            return Err(AgentError::Precondition(format!(
                "{} may hold the original data (no preserved copy at {}); refusing to move it",
                spot.home().display(),
                spot.preserved().display()
            )));
        }
    }
    let mut d = done(String::new());
    let mut moved = Vec::new();
    // The data dir first: without member/ in place etcd cannot start on a half-moved copy.
    for spot in &spots {
        match set_aside_copy(ctx, spot)? {
            Some(to) => {
                moved.push(format!(
                    "moved the restored {} to {}",
                    spot.role.name(),
                    to.display()
                ));
                d.details.set_aside.push(EtcdDir {
                    role: spot.role.into(),
                    path: to,
                });
            }
            None => {
                note.push_str(&format!(
                    "; {} holds no restored copy; nothing to move away",
                    spot.home().display()
                ));
            }
        }
    }
    d.message = if moved.is_empty() {
        note.trim_start_matches("; ").to_owned()
    } else {
        format!("{}{note}", moved.join("; "))
    };
    Ok(d)
}
