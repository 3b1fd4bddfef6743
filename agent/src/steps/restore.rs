//! RESTORE and its inverse: restore into a fresh sibling, adopt the original's owner and mode,
//! rename into place; on revert, move the restored dir away. Nothing is ever deleted.

use std::path::{Path, PathBuf};

use super::{Ctx, Done, done, sibling};
use crate::error::{AgentError, Result};
use crate::fsutil;
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
    })?;
    let own = original.owner;
    ctx.progress(format!(
        "setting owner {}:{} and mode {:o}, syncing",
        own.uid, own.gid, own.mode
    ));
    fsutil::adopt_tree(&restoring, own)?;
    fsutil::rename_durable(&restoring, &data_dir)?;
    let mut d = done(format!(
        "restored the snapshot into {} as member {} with {} {}",
        data_dir.display(),
        facts.member_name,
        tool.kind.name(),
        tool.version
    ));
    if let Some(s) = &ctx.journal.staged {
        d.details.insert("revision".into(), s.revision.to_string());
        d.details
            .insert("total_keys".into(), s.total_keys.to_string());
    }
    d.details
        .insert("cluster_token".into(), facts.cluster_token.clone());
    Ok(d)
}

pub(super) fn set_aside_restored(ctx: &mut Ctx<'_>) -> Result<Done> {
    let data_dir = ctx.data_dir.clone();
    if !fsutil::exists(&data_dir) {
        return Ok(done(format!(
            "{} does not exist; nothing to move away",
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
    let mut d = done(format!("moved the restored data dir to {}", to.display()));
    d.details
        .insert("failed_dir".into(), to.display().to_string());
    Ok(d)
}
