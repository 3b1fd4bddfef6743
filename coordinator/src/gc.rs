//! `quorate gc`: what ended restores left on every host (the original data and WAL dirs
//! PRESERVE kept, failed copies set aside, each agent's own dir of the restore), listed per
//! member with size and age, and with `--yes` removed through the agents.
//!
//! A restore's leftovers go only when every agent answered, none holds it unfinished, its
//! coordinator journal (if this host has it) says it ended (finished or rolled back), and it
//! ended at least `--older-than` ago. Each agent checks every path again against its own
//! journal before removing it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use quorate_proto::model::{
    LeftoverKind, RemoveLeftovers, RestoreEnd, RestoreId, RestoreLeftovers,
};
use quorate_proto::pb;
use serde::Serialize;

use crate::agent_client::GrpcAgent;
use crate::inventory::Inventory;
use crate::journal::{Journal, JournalError};
use crate::output::{self, Format};
use crate::preflight::grpc_agents;
use crate::progress::Progress;

#[derive(clap::Args, Debug)]
pub struct GcArgs {
    /// The cluster: its agents and their TLS files (TOML).
    #[arg(long)]
    pub inventory: PathBuf,
    /// Only restores that ended at least this long ago on every host ("0s": all ended ones).
    #[arg(long, default_value = "7d", value_parser = humantime::parse_duration)]
    pub older_than: Duration,
    /// Remove what is listed as removable. Without it, nothing changes.
    #[arg(long)]
    pub yes: bool,
}

/// An agent that lists and removes leftovers (a scripted one in tests).
#[allow(async_fn_in_trait)]
pub trait LeftoverAgent {
    fn name(&self) -> &str;
    async fn list(&self, deadline: Duration) -> Result<Vec<RestoreLeftovers>, String>;
    async fn remove(
        &self,
        req: RemoveLeftovers,
        deadline: Duration,
    ) -> Result<Vec<pb::Removal>, String>;
}

impl LeftoverAgent for GrpcAgent {
    fn name(&self) -> &str {
        self.member()
    }

    async fn list(&self, deadline: Duration) -> Result<Vec<RestoreLeftovers>, String> {
        let mut req = tonic::Request::new(pb::ListLeftoversRequest {});
        req.set_timeout(deadline);
        let answer = tokio::time::timeout(deadline, self.client().list_leftovers(req))
            .await
            .map_err(|_| format!("no answer within {}", humantime::format_duration(deadline)))?
            .map_err(|s| s.message().to_owned())?;
        answer
            .into_inner()
            .restores
            .into_iter()
            .map(|r| RestoreLeftovers::try_from(r).map_err(|e| e.0))
            .collect()
    }

    async fn remove(
        &self,
        req: RemoveLeftovers,
        deadline: Duration,
    ) -> Result<Vec<pb::Removal>, String> {
        let mut r = tonic::Request::new(pb::RemoveLeftoversRequest::from(req));
        r.set_timeout(deadline);
        let answer = tokio::time::timeout(deadline, self.client().remove_leftovers(r))
            .await
            .map_err(|_| format!("no answer within {}", humantime::format_duration(deadline)))?
            .map_err(|s| s.message().to_owned())?;
        Ok(answer.into_inner().removals)
    }
}

/// What the coordinator's own journal says about a restore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CoordinatorView {
    /// No journal of it under --state-dir (it ran from another host): the agents decide.
    Absent,
    Ended,
    NotEnded(String),
}

/// Reads restore `id`'s journal under `state_dir`.
pub fn coordinator_view(state_dir: &Path, id: RestoreId) -> CoordinatorView {
    match Journal::read(state_dir, id) {
        Err(JournalError::Missing { .. }) => CoordinatorView::Absent,
        Err(e) => CoordinatorView::NotEnded(format!("its journal cannot be read: {e}")),
        Ok(read) => match Progress::from_entries(&read.entries) {
            Ok(p) if p.finished() || p.rollback_done => CoordinatorView::Ended,
            Ok(_) => CoordinatorView::NotEnded(format!(
                "its journal in {} says it has not ended: `quorate resume {id}` or `quorate \
                 rollback {id}`",
                state_dir.display()
            )),
            Err(e) => CoordinatorView::NotEnded(format!("its journal is inconsistent: {e}")),
        },
    }
}

/// Whether a restore's leftovers go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "verdict", content = "reason", rename_all = "kebab-case")]
pub enum Verdict {
    Remove,
    Keep(String),
}

/// One member's answer.
#[derive(Debug, Clone, Serialize)]
pub struct MemberLeftovers {
    pub member: String,
    pub restores: Vec<RestoreLeftovers>,
    /// Why the agent gave no list.
    pub error: Option<String>,
}

/// Decides per restore id, from every member's list, the coordinator's journals and the clock.
pub fn decide(
    members: &[MemberLeftovers],
    journal: &dyn Fn(RestoreId) -> CoordinatorView,
    now: u64,
    older_than: Duration,
) -> BTreeMap<RestoreId, Verdict> {
    let silent: Vec<&str> = members
        .iter()
        .filter(|m| m.error.is_some())
        .map(|m| m.member.as_str())
        .collect();
    let mut seen: BTreeMap<RestoreId, Vec<(&str, &RestoreLeftovers)>> = BTreeMap::new();
    for m in members {
        for r in &m.restores {
            seen.entry(r.restore_id).or_default().push((&m.member, r));
        }
    }
    seen.into_iter()
        .map(|(id, on)| {
            let verdict = if !silent.is_empty() {
                Verdict::Keep(format!(
                    "no list from {} (see its error): it may hold this restore unfinished",
                    silent.join(", ")
                ))
            } else if let Some((member, r)) =
                on.iter().find(|(_, r)| r.end == RestoreEnd::Unfinished)
            {
                Verdict::Keep(format!("unfinished on {member}: {}", r.why))
            } else if let CoordinatorView::NotEnded(why) = journal(id) {
                Verdict::Keep(why)
            } else {
                let latest = on.iter().map(|(_, r)| r.ended_at).max().unwrap_or(0);
                let age = Duration::from_secs(now.saturating_sub(latest));
                if age < older_than {
                    Verdict::Keep(format!(
                        "ended {} ago, less than --older-than {}",
                        humantime::format_duration(Duration::from_secs(age.as_secs())),
                        humantime::format_duration(older_than)
                    ))
                } else {
                    Verdict::Remove
                }
            };
            (id, verdict)
        })
        .collect()
}

/// `12.3 MB`.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KB", "MB", "GB", "TB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1000.0 && unit < UNITS.len() - 1 {
        v /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// What one removal did.
#[derive(Debug, Clone, Serialize)]
pub struct Removed {
    pub member: String,
    pub restore_id: RestoreId,
    pub path: String,
    pub removed: bool,
    pub message: String,
    pub bytes: u64,
}

/// Removes, on every member, the leftovers of the restores to remove: data dirs first, each
/// agent's own dir of the restore last.
pub async fn remove_all<A: LeftoverAgent>(
    agents: &[A],
    members: &[MemberLeftovers],
    verdicts: &BTreeMap<RestoreId, Verdict>,
    deadline: Duration,
) -> Vec<Removed> {
    let mut out = Vec::new();
    for (agent, m) in agents.iter().zip(members) {
        for r in &m.restores {
            if verdicts.get(&r.restore_id) != Some(&Verdict::Remove) || r.leftovers.is_empty() {
                continue;
            }
            let mut paths: Vec<_> = r.leftovers.iter().collect();
            paths.sort_by_key(|l| l.kind == LeftoverKind::RestoreState);
            let req = RemoveLeftovers {
                restore_id: r.restore_id,
                paths: paths.iter().map(|l| l.path.clone()).collect(),
            };
            match agent.remove(req, deadline).await {
                Ok(removals) => out.extend(removals.into_iter().map(|x| Removed {
                    member: m.member.clone(),
                    restore_id: r.restore_id,
                    path: x.path,
                    removed: x.removed,
                    message: x.message,
                    bytes: x.bytes,
                })),
                Err(e) => out.push(Removed {
                    member: m.member.clone(),
                    restore_id: r.restore_id,
                    path: String::new(),
                    removed: false,
                    message: format!(
                        "the agent's answer did not come ({e}): what it removed is unknown (it may go on removing); run gc again to see what is left"
                    ),
                    bytes: 0,
                }),
            }
        }
    }
    out
}

/// Asks every agent for its leftovers, in parallel.
pub async fn collect<A: LeftoverAgent>(agents: &[A], deadline: Duration) -> Vec<MemberLeftovers> {
    let lists = futures::future::join_all(agents.iter().map(|a| a.list(deadline))).await;
    agents
        .iter()
        .zip(lists)
        .map(|(a, l)| match l {
            Ok(restores) => MemberLeftovers {
                member: a.name().to_owned(),
                restores,
                error: None,
            },
            Err(e) => MemberLeftovers {
                member: a.name().to_owned(),
                restores: Vec::new(),
                error: Some(e),
            },
        })
        .collect()
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

pub async fn run(
    args: GcArgs,
    state_dir: &Path,
    format: Format,
    deadline: Duration,
) -> anyhow::Result<ExitCode> {
    let inventory = Inventory::load(&args.inventory)?;
    let agents = grpc_agents(&inventory)?;
    let members = collect(&agents, deadline).await;
    let verdicts = decide(
        &members,
        &|id| coordinator_view(state_dir, id),
        now(),
        args.older_than,
    );
    let removed = if args.yes {
        remove_all(&agents, &members, &verdicts, deadline).await
    } else {
        Vec::new()
    };
    let failed = members.iter().any(|m| m.error.is_some()) || removed.iter().any(|r| !r.removed);
    if format == Format::Human {
        print!("{}", render(&members, &verdicts, &removed, args.yes));
    }
    let value = serde_json::json!({
        "members": members,
        "verdicts": verdicts.iter().map(|(id, v)| serde_json::json!({"restore_id": id, "decision": v})).collect::<Vec<_>>(),
        "removed": removed,
    });
    let error = failed.then(|| {
        "an agent gave no list or a removal failed (see each member above); nothing of an unfinished restore was touched: fix it and run gc again".to_owned()
    });
    Ok(output::finish_command(format, &value, error))
}

/// The listing per member, then what was (or would be) removed.
pub fn render(
    members: &[MemberLeftovers],
    verdicts: &BTreeMap<RestoreId, Verdict>,
    removed: &[Removed],
    yes: bool,
) -> String {
    let now = now();
    let mut out = String::new();
    let (mut count, mut bytes) = (0usize, 0u64);
    for m in members {
        out.push_str(&format!("{}\n", m.member));
        if let Some(e) = &m.error {
            out.push_str(&format!("  no list from its agent: {e}\n"));
            continue;
        }
        if m.restores.is_empty() {
            out.push_str("  nothing left by any restore\n");
        }
        for r in &m.restores {
            let age = if r.ended_at > 0 {
                format!(
                    ", {} ago",
                    humantime::format_duration(Duration::from_secs(now.saturating_sub(r.ended_at)))
                )
            } else {
                String::new()
            };
            let failed_here = removed
                .iter()
                .any(|x| !x.removed && x.member == m.member && x.restore_id == r.restore_id);
            let verdict = match verdicts.get(&r.restore_id) {
                Some(Verdict::Remove) if yes && failed_here => {
                    "removal incomplete here (see below)".to_owned()
                }
                Some(Verdict::Remove) if yes => "removed".to_owned(),
                Some(Verdict::Remove) => "removable".to_owned(),
                Some(Verdict::Keep(why)) => format!("kept: {why}"),
                None => "kept".to_owned(),
            };
            out.push_str(&format!(
                "  restore {} {}{age}: {verdict}\n",
                r.restore_id,
                r.end.name()
            ));
            for l in &r.leftovers {
                out.push_str(&format!(
                    "    {:<17} {:>9}  {}\n",
                    l.kind.name(),
                    human(l.bytes),
                    l.path.display()
                ));
                if verdicts.get(&r.restore_id) == Some(&Verdict::Remove) {
                    count += 1;
                    bytes += l.bytes;
                }
            }
        }
    }
    if yes {
        let ok: Vec<&Removed> = removed.iter().filter(|r| r.removed).collect();
        let freed: u64 = ok.iter().map(|r| r.bytes).sum();
        out.push_str(&format!(
            "Removed {} path(s), {} freed.\n",
            ok.len(),
            human(freed)
        ));
        for r in removed.iter().filter(|r| !r.removed) {
            out.push_str(&format!(
                "Not removed on {} (restore {}): {} {}\n",
                r.member, r.restore_id, r.path, r.message
            ));
        }
    } else if count > 0 {
        out.push_str(&format!(
            "{count} path(s), {}, can be removed: re-run with --yes to remove them. Nothing was \
             changed.\n",
            human(bytes)
        ));
    } else {
        out.push_str("Nothing to remove. Nothing was changed.\n");
    }
    out
}

#[cfg(test)]
#[path = "gc_tests.rs"]
mod tests;
