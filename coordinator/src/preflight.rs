//! Preflight: everything checked before anything changes. The inventory, the snapshot (its
//! sha256, its etcd version, `snapshot status` when a local etcdutl exists), every agent's
//! description, the live cluster's revision and membership; the result is the plan.

use std::path::PathBuf;
use std::time::Duration;

use futures::future::join_all;

use crate::agent_client::{AgentClient, GrpcAgent};
use crate::inventory::Inventory;
use crate::plan::{self, Plan};
use crate::{snapshot, snapshot_verify};

/// What the operator asked for.
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub inventory: PathBuf,
    pub snapshot: PathBuf,
    pub no_bump_revision: bool,
    pub skip_hash_check: bool,
    pub allow_membership_change: bool,
    /// Where to find etcdutl (or etcdctl) for `snapshot status`; default: `QUORATE_ETCD_DIR`,
    /// else PATH.
    pub etcd_dir: Option<PathBuf>,
    /// The snapshot's signature file; default: `<snapshot>.sig` when it exists.
    pub signature: Option<PathBuf>,
}

/// One client per agent: the members', then the apiserver hosts' ([`Inventory::agents`]).
pub fn grpc_agents(inventory: &Inventory) -> anyhow::Result<Vec<GrpcAgent>> {
    inventory
        .agents()
        .into_iter()
        .map(|a| {
            let server_name = a.agent_server_name.unwrap_or_else(|| host_of(a.agent));
            GrpcAgent::new(a.name, a.agent, server_name, &inventory.agent_tls)
        })
        .collect()
}

fn host_of(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or(rest);
    authority
        .rsplit_once(':')
        .map_or(authority, |(h, _)| h)
        .trim_matches(['[', ']'])
}

/// Loads the inventory, connects to its agents and checks everything; the plan, or why not.
pub async fn preflight(request: &Request) -> anyhow::Result<(Inventory, Vec<GrpcAgent>, Plan)> {
    let inventory = Inventory::load(&request.inventory)?;
    let agents = grpc_agents(&inventory)?;
    let plan = check(request, &inventory, &agents).await?;
    Ok((inventory, agents, plan))
}

/// Every check, with the agents given (the real ones, or fakes in tests). Changes nothing.
pub async fn check<C: AgentClient>(
    request: &Request,
    inventory: &Inventory,
    agents: &[C],
) -> anyhow::Result<Plan> {
    let path = request.snapshot.clone();
    let skip = request.skip_hash_check;
    let checked = tokio::task::spawn_blocking(move || snapshot::check_with(&path, skip))
        .await
        .map_err(|e| anyhow::anyhow!("checking the snapshot's sha256: {e}"))??;
    let signature = crate::signing::read(&checked, request.signature.as_deref())?;
    // etcd restores the data format of its own major.minor only.
    let (snapshot_etcd_version, snapshot_version_unread) =
        match snapshot_verify::file_cluster_version(&request.snapshot) {
            Ok(v) => (v, None),
            Err(e) => (None, Some(e)),
        };
    let described = join_all(agents.iter().map(|a| async {
        a.describe(Duration::from_secs(10))
            .await
            .map_err(|e| e.to_string())
    }))
    .await;
    // The live cluster's revision, when it answers: the bump must pass it. Its membership too:
    // the inventory must list every member.
    let revisions = join_all(inventory.members.iter().map(|m| async {
        let view = crate::verify::view(&m.name, &m.client_urls[0], inventory.etcd_tls.as_ref());
        tokio::time::timeout(Duration::from_secs(3), view)
            .await
            .ok()
            .and_then(Result::ok)
            .map(|v| v.revision)
    }));
    let (live, live_membership) = tokio::join!(revisions, crate::membership::live(inventory));
    let options = plan::Options {
        live_revision: live.into_iter().flatten().max(),
        no_bump_revision: request.no_bump_revision,
        skip_hash_check: request.skip_hash_check,
        snapshot_etcd_version,
        snapshot_version_unread,
        live_membership,
        allow_membership_change: request.allow_membership_change,
        signature,
    };
    let mut plan = plan::build(inventory, &described, checked.clone(), &options)?;
    // The same chain as `quorate snapshot verify` (its sha256 was checked above): `snapshot
    // status` with a local etcdutl, when there is one; the agents run it again when staging.
    let verify_options = snapshot_verify::VerifyOptions {
        skip_hash_check: request.skip_hash_check,
        checked: Some(checked),
        ..snapshot_verify::VerifyOptions::default()
    };
    match snapshot_verify::find_tools(request.etcd_dir.as_deref(), false) {
        Ok(_) => {
            snapshot_verify::verify(&request.snapshot, &verify_options)
                .await
                .map_err(|e| {
                    anyhow::anyhow!("preflight refused the snapshot; nothing was changed: {e}")
                })?;
        }
        Err(e) => plan.warnings.push(format!(
            "no local etcdutl/etcdctl to run `snapshot status` here ({e}); the agents run it when the snapshot is staged"
        )),
    }
    Ok(plan)
}

#[cfg(test)]
#[path = "preflight_tests.rs"]
mod tests;
