//! PRESERVE and its inverse for the data dir and a `--wal-dir` of its own. The layout is looked
//! at once, the moves journaled before the first one, and every later repeat works from the
//! journal, so a crash between (or during) moves resumes or reverts exactly.

use std::path::Path;

use quorate_proto::model::{EtcdDir, RestoreId};

use super::aside::{self, Role, Spot};
use super::layout::{Layout, Wal};
use super::{Ctx, Done, done};
use crate::error::{AgentError, Result};
use crate::fsutil;
use crate::journal::Journal;

/// The dirs PRESERVE journaled for restore `id`: the data dir, then the WAL dir.
pub fn spots(journal: &Journal, id: RestoreId) -> Vec<Spot> {
    let data = journal.preserved.clone().map(|rec| Spot {
        role: Role::Data,
        rec,
        id,
    });
    let wal = journal.preserved_wal.clone().map(|rec| Spot {
        role: Role::Wal,
        rec,
        id,
    });
    data.into_iter().chain(wal).collect()
}

/// Looks at the layout, refuses what the steps cannot move, and journals how each dir will move.
fn plan(ctx: &mut Ctx<'_>) -> Result<()> {
    let id = ctx.req.restore_id;
    let member = ctx.etcd_member()?;
    let layout = Layout::detect(&ctx.data_dir, member.wal_dir.as_deref())?;
    let problems = layout.problems();
    if !problems.is_empty() {
        return Err(AgentError::Precondition(format!(
            "{}: {}; nothing was moved",
            member.name,
            problems.join("; ")
        )));
    }
    let wal_in_data = match &layout.wal {
        Some(Wal::InData { rel, .. }) => Some(rel.clone()),
        _ => None,
    };
    let data = aside::plan(
        Role::Data,
        &layout.data.path,
        layout.data.place.mount_point,
        id,
        wal_in_data.as_deref(),
    )?;
    let wal = match layout.own_wal() {
        Some(w) => Some(aside::plan(
            Role::Wal,
            &w.path,
            w.place.mount_point,
            id,
            None,
        )?),
        None => None,
    };
    ctx.journal.preserved = Some(data);
    ctx.journal.preserved_wal = wal;
    ctx.journal.wal_in_data = wal_in_data;
    ctx.save()
}

pub(super) fn preserve(ctx: &mut Ctx<'_>) -> Result<Done> {
    if ctx.journal.preserved.is_none() {
        plan(ctx)?;
    }
    let spots = spots(&ctx.journal, ctx.req.restore_id);
    let mut messages = Vec::new();
    for spot in &spots {
        let own = spot.rec.owner;
        messages.push(format!(
            "{} (owner {}:{}, mode {:o})",
            spot.preserve(&|m| ctx.progress(m))?,
            own.uid,
            own.gid,
            own.mode
        ));
    }
    let mut d = done(messages.join("; "));
    for spot in &spots {
        d.details.preserved.push(EtcdDir {
            role: spot.role.into(),
            path: spot.preserved().to_owned(),
        });
    }
    Ok(d)
}

pub(super) fn unpreserve(ctx: &mut Ctx<'_>) -> Result<Done> {
    let spots = spots(&ctx.journal, ctx.req.restore_id);
    if spots.is_empty() {
        return Ok(done(format!(
            "nothing was moved aside for restore {}; {} is untouched",
            ctx.req.restore_id,
            ctx.data_dir.display()
        )));
    }
    let mut messages = Vec::new();
    // The WAL first: the data dir back in place is what lets etcd start.
    for spot in spots.iter().rev() {
        messages.push(spot.unpreserve(&|m| ctx.progress(m))?);
    }
    Ok(done(messages.join("; ")))
}

/// Why etcd must not start on this member now, if it must not: without its data it would start
/// as a new empty member; without a WAL in a `--wal-dir` of its own it would create one, which
/// first empties that dir (the preserved original too, when the dir is a mount point).
pub fn start_refusal(data_dir: &Path, wal_dir: Option<&Path>) -> Option<String> {
    if !fsutil::exists(&data_dir.join("member")) {
        return Some(format!(
            "{} does not exist: etcd would start as an empty new member; run the restore step \
             (or revert the preserve step) first",
            data_dir.join("member").display()
        ));
    }
    let wal = wal_dir.filter(|w| super::layout::wal_in_data(data_dir, w).is_none())?;
    if aside::etcd_names(Role::Wal, wal, None)
        .iter()
        .any(|n| n.ends_with(".wal"))
    {
        return None;
    }
    Some(format!(
        "wal dir {} holds no *.wal file: etcd would create a new WAL, emptying that dir first; \
         run the restore step (or revert the preserve step) first",
        wal.display()
    ))
}
