//! RESTORE and its inverse: restore into a fresh sibling, adopt the original's owner and mode,
//! rename into place; on revert, move the restored dir away. Nothing is ever deleted.

use std::path::{Path, PathBuf};

use super::{Ctx, Done, done, sibling};
use crate::error::{AgentError, Result};
use crate::fsutil;
use crate::settings::{self, FileEdit};
use crate::snapshot;
use crate::tool::RestoreArgs;

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
    fsutil::rename_durable(dir, &to)?;
    Ok(to)
}

pub(super) fn restore(ctx: &mut Ctx<'_>) -> Result<Done> {
    let engine = ctx.engine;
    let id = ctx.req.restore_id;
    let original = ctx.journal.preserved.clone().ok_or_else(|| {
        AgentError::Precondition(format!(
            "restore {id}: the journal has no preserved data dir"
        ))
    })?;
    if !fsutil::exists(&original.preserved) {
        return Err(AgentError::Precondition(format!(
            "the preserved original {} is missing: stop and look for it before restoring",
            original.preserved.display()
        )));
    }
    let snapshot = snapshot::staged(&engine.state, id)?;
    let size = std::fs::metadata(&snapshot).map_or(0, |m| m.len());
    ctx.progress(format!(
        "checking the sha256 of the staged snapshot ({})",
        snapshot::human(size)
    ));
    snapshot::check_sha256(&snapshot, &ctx.req.facts.snapshot_sha256)?;
    let tool = engine.tool.info()?;

    let data_dir = ctx.data_dir.clone();
    let restoring = sibling(&data_dir, ctx.req, ".restoring");
    if fsutil::exists(&restoring) {
        move_aside(
            ctx,
            &restoring,
            &sibling(&data_dir, ctx.req, ".partial"),
            true,
        )?;
    }
    if fsutil::exists(&data_dir) {
        // The original is preserved; whatever is here came from an earlier attempt.
        move_aside(
            ctx,
            &data_dir,
            &sibling(&data_dir, ctx.req, ".failed"),
            false,
        )?;
    }
    ctx.progress(format!(
        "restoring {} snapshot with {} {}",
        snapshot::human(size),
        tool.kind.name(),
        tool.version
    ));
    let facts = &ctx.req.facts;
    engine.tool.restore(&RestoreArgs {
        snapshot: &snapshot,
        data_dir: &restoring,
        name: &facts.member_name,
        initial_cluster: &facts.initial_cluster,
        cluster_token: &facts.cluster_token,
        peer_urls: &facts.peer_urls,
        bump_revision: facts.bump_revision,
        skip_hash_check: facts.skip_hash_check,
    })?;
    let own = original.owner;
    ctx.progress(format!(
        "setting owner {}:{} and mode {:o}, syncing",
        own.uid, own.gid, own.mode
    ));
    fsutil::adopt_tree(&restoring, own)?;
    fsutil::rename_durable(&restoring, &data_dir)?;
    let rewritten = rewrite_settings(ctx)?;
    let facts = &ctx.req.facts;
    let mut d = done(format!(
        "restored the snapshot into {} as member {} with {} {}{}",
        data_dir.display(),
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
    if !rewritten.is_empty() {
        let paths: Vec<String> = rewritten
            .iter()
            .map(|e| e.path.display().to_string())
            .collect();
        d.details
            .insert("settings_rewritten".into(), paths.join(","));
    }
    if let Some(s) = &ctx.journal.staged {
        d.details.insert("revision".into(), s.revision.to_string());
        d.details
            .insert("total_keys".into(), s.total_keys.to_string());
    }
    d.details
        .insert("cluster_token".into(), facts.cluster_token.clone());
    Ok(d)
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
    let data_dir = ctx.data_dir.clone();
    let notes = revert_settings(ctx)?;
    let note = notes.iter().map(|n| format!("; {n}")).collect::<String>();
    if !fsutil::exists(&data_dir) {
        return Ok(done(format!(
            "{} does not exist; nothing to move away{note}",
            data_dir.display()
        )));
    }
    let preserved = sibling(&data_dir, ctx.req, "");
    if !fsutil::exists(&preserved) {
        return Err(AgentError::Precondition(format!(
            "{} may be the original data (no preserved copy at {}); refusing to move it",
            data_dir.display(),
            preserved.display()
        )));
    }
    let to = move_aside(
        ctx,
        &data_dir,
        &sibling(&data_dir, ctx.req, ".failed"),
        false,
    )?;
    let mut d = done(format!(
        "moved the restored data dir to {}{note}",
        to.display()
    ));
    d.details
        .insert("failed_dir".into(), to.display().to_string());
    Ok(d)
}
