//! `Describe`: read-only facts about this member, from its manifest, its disks and its journal.

use std::path::Path;

use quorate_proto::model::{RestoreId, active_step_fields};
use quorate_proto::{etcd_db, pb};

use crate::engine::Engine;
use crate::error::Result;
use crate::health::{self, EtcdEndpoint, HealthConfig};
use crate::manifest::{self, EtcdMember};
use crate::steps::layout::{Dir, Layout};
use crate::tool::{self, ToolKind};

/// The OS hostname (empty when unreadable).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default()
}

/// The etcd version this member runs and where it was read (or why it is unknown): a static
/// pod's image tag (etcd runs in a container: its binary is not on the host), a systemd unit's
/// binary `--version`; when neither says, the running etcd itself through `endpoints`.
pub fn etcd_version(
    engine: &Engine,
    member: &EtcdMember,
    endpoints: &[EtcdEndpoint],
    running: bool,
) -> (String, String) {
    let declared = if engine.etcd.as_deref().map(|e| e.kind()) == Some("static-pod") {
        match manifest::load_image(&member.command.path) {
            Ok(Some(image)) => {
                manifest::image_version(&image).map(|v| (v, format!("image {image}")))
            }
            Ok(None) => Err(format!("{} names no image", member.command.source)),
            Err(e) => Err(e.to_string()),
        }
    } else {
        let binary = member.command.argv.first().map_or("", String::as_str);
        tool::etcd_version(binary, &engine.runner)
            .map(|v| (v, format!("{binary} --version")))
            .ok_or_else(|| format!("cannot run {binary} --version"))
    };
    let why = match declared {
        Ok(found) => return found,
        Err(why) => why,
    };
    let asked = if running && !endpoints.is_empty() {
        health::block_on(health::running_version(endpoints)).flatten()
    } else {
        None
    };
    match asked {
        Some((v, url)) => (v, format!("running etcd ({url}); {why}")),
        None => (
            String::new(),
            format!("unknown: {why}, and the running etcd did not say"),
        ),
    }
}

/// Gathers the facts with the default health settings (no credentials configured).
pub fn describe(engine: &Engine) -> Result<pb::DescribeResponse> {
    describe_with(engine, &HealthConfig::default())
}

/// Gathers the facts. Blocking (runs the tools, walks the data dir, may ask etcd its version).
pub fn describe_with(
    engine: &Engine,
    health_config: &HealthConfig,
) -> Result<pb::DescribeResponse> {
    if engine.apiserver_only() {
        return describe_apiserver_host(engine, health_config);
    }
    let etcd = engine.etcd()?;
    let active = engine.state.active()?;
    let member = engine.member(active)?;
    let data_dir = engine.data_dir_of(&member);
    let restore_tool = match engine.tool.info() {
        Ok(info) => pb::RestoreTool {
            kind: match info.kind {
                ToolKind::Etcdutl => pb::RestoreToolKind::Etcdutl,
                ToolKind::Etcdctl => pb::RestoreToolKind::Etcdctl,
            } as i32,
            version: info.version,
            supports_bump_revision: info.supports_bump_revision,
        },
        Err(e) => {
            tracing::warn!("{e}");
            pb::RestoreTool::default()
        }
    };
    let (active_step, active_step_state) = active_step(engine, active)?;
    let layout = Layout::detect(&data_dir, member.wal_dir.as_deref())?;
    let etcd_aside = active.map(|id| engine.etcd_aside(id)).transpose()?;
    let api_aside = active.and_then(|id| engine.apiserver_aside(id));
    // Best effort, for the operator: the steps that need etcd down check it themselves.
    let etcd_running = etcd
        .is_running(etcd_aside.as_deref())
        .inspect_err(|e| tracing::warn!("{e}"))
        .unwrap_or(false);
    let (endpoints, health_problem) = match health::etcd_endpoints(&member, &health_config.etcd) {
        Ok(e) => (e, String::new()),
        Err(e) => (Vec::new(), e.to_string()),
    };
    let (etcd_version, etcd_version_source) =
        etcd_version(engine, &member, &endpoints, etcd_running);
    let (readiness_auth, readiness_problem) = readiness(engine, health_config);
    Ok(pb::DescribeResponse {
        agent_version: env!("CARGO_PKG_VERSION").into(),
        hostname: hostname(),
        member_name: member.name.clone(),
        peer_urls: member.peer_urls.clone(),
        client_urls: member.client_urls.clone(),
        etcd_version,
        restore_tool: Some(restore_tool),
        etcd_runtime: etcd.kind().into(),
        apiserver_runtime: engine
            .apiserver
            .as_ref()
            .map_or("none", |a| a.kind())
            .into(),
        data_dir: data_dir.display().to_string(),
        data_dir_bytes: layout.data.bytes,
        free_bytes: layout.data.place.free_bytes,
        etcd_running,
        apiserver_running: engine
            .apiserver
            .as_ref()
            .is_some_and(|a| a.is_running(api_aside.as_deref()).unwrap_or(false)),
        active_restore_id: active.map(|id| id.to_string()).unwrap_or_default(),
        active_step,
        active_step_state,
        trusted_snapshot_keys: engine.trust.ids(),
        metrics_url: member.metrics_url.clone().unwrap_or_default(),
        apiserver_present: engine.apiserver.is_some(),
        data_layout: Some(layout.data.to_proto()),
        wal_layout: layout.own_wal().map(Dir::to_proto),
        wal_dir: layout.wal_flag(),
        layout_problems: layout.problems(),
        readiness_problem,
        readiness_auth,
        etcd_version_source,
        health_probe: endpoints
            .iter()
            .map(EtcdEndpoint::describe)
            .collect::<Vec<_>>()
            .join("; "),
        health_problem,
        ..recorded_membership(&data_dir)
    })
}

/// The membership recorded in `data_dir`'s db (fields 30-33), read without starting etcd.
fn recorded_membership(data_dir: &Path) -> pb::DescribeResponse {
    let db = data_dir.join("member/snap/db");
    let mut facts = pb::DescribeResponse {
        role: pb::AgentRole::EtcdMember as i32,
        ..Default::default()
    };
    match etcd_db::membership(&db) {
        Ok(m) => {
            facts.recorded_members = m
                .members
                .into_iter()
                .map(|m| pb::RecordedMember {
                    id: m.id,
                    name: m.name,
                    peer_urls: m.peer_urls,
                    client_urls: m.client_urls,
                    is_learner: m.is_learner,
                })
                .collect();
            facts.recorded_applied_index = m.applied_index.unwrap_or(0);
        }
        Err(e) => facts.recorded_members_error = e.to_string(),
    }
    facts
}

/// The last step of the unfinished restore `active` and its state, as the contract's
/// `active_step` and `active_step_state`.
fn active_step(engine: &Engine, active: Option<RestoreId>) -> Result<(i32, i32)> {
    let Some(journal) = active.map(|id| engine.state.load(id)).transpose()? else {
        return Ok((0, 0));
    };
    let last = journal
        .last
        .and_then(|step| journal.state(step).map(|state| (step, state)));
    Ok(active_step_fields(last))
}

/// How `/readyz` is checked, or why it cannot be (both empty without a kube-apiserver).
fn readiness(engine: &Engine, health_config: &HealthConfig) -> (String, String) {
    match health::apiserver_readyz(engine, health_config) {
        None => (String::new(), String::new()),
        Some(Ok(p)) => (p.auth, String::new()),
        Some(Err(e)) => (String::new(), e.problem),
    }
}

/// An apiserver-only host: its name, its kube-apiserver and how its `/readyz` is checked, its
/// lock; no etcd facts.
fn describe_apiserver_host(
    engine: &Engine,
    health_config: &HealthConfig,
) -> Result<pb::DescribeResponse> {
    let active = engine.state.active()?;
    let (active_step, active_step_state) = active_step(engine, active)?;
    let api_aside = active.and_then(|id| engine.apiserver_aside(id));
    let (readiness_auth, readiness_problem) = readiness(engine, health_config);
    Ok(pb::DescribeResponse {
        agent_version: env!("CARGO_PKG_VERSION").into(),
        hostname: hostname(),
        etcd_runtime: "none".into(),
        apiserver_runtime: engine
            .apiserver
            .as_ref()
            .map_or("none", |a| a.kind())
            .into(),
        apiserver_running: engine
            .apiserver
            .as_ref()
            .is_some_and(|a| a.is_running(api_aside.as_deref()).unwrap_or(false)),
        apiserver_present: engine.apiserver.is_some(),
        active_restore_id: active.map(|id| id.to_string()).unwrap_or_default(),
        active_step,
        active_step_state,
        trusted_snapshot_keys: engine.trust.ids(),
        readiness_problem,
        readiness_auth,
        role: pb::AgentRole::ApiserverHost as i32,
        host_name: engine.host_name.clone(),
        ..Default::default()
    })
}
