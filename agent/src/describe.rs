//! `Describe`: read-only facts about this member, from its manifest, its disks and its journal.

use std::path::Path;

use quorate_proto::model::RestoreId;
use quorate_proto::{etcd_db, pb};

use crate::engine::Engine;
use crate::error::Result;
use crate::fsutil;
use crate::tool::{self, ToolKind};

/// The OS hostname (empty when unreadable).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default()
}

/// Gathers the facts. Blocking (runs the tools, walks the data dir).
pub fn describe(engine: &Engine) -> Result<pb::DescribeResponse> {
    if engine.apiserver_only() {
        return describe_apiserver_host(engine);
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
    let etcd_aside = active.map(|id| engine.state.manifest_aside(id, etcd.definition()));
    let api_aside = active.and_then(|id| engine.apiserver_aside(id));
    Ok(pb::DescribeResponse {
        agent_version: env!("CARGO_PKG_VERSION").into(),
        hostname: hostname(),
        member_name: member.name.clone(),
        peer_urls: member.peer_urls.clone(),
        client_urls: member.client_urls.clone(),
        etcd_version: member
            .command
            .argv
            .first()
            .and_then(|b| tool::etcd_version(b))
            .unwrap_or_default(),
        restore_tool: Some(restore_tool),
        etcd_runtime: etcd.kind().into(),
        apiserver_runtime: engine
            .apiserver
            .as_ref()
            .map_or("none", |a| a.kind())
            .into(),
        data_dir: data_dir.display().to_string(),
        data_dir_bytes: fsutil::tree_size(&data_dir),
        free_bytes: fsutil::free_bytes(&data_dir)?,
        etcd_running: etcd.is_running(etcd_aside.as_deref()),
        apiserver_running: engine
            .apiserver
            .as_ref()
            .is_some_and(|a| a.is_running(api_aside.as_deref())),
        active_restore_id: active.map(|id| id.to_string()).unwrap_or_default(),
        active_step,
        active_step_state,
        metrics_url: member.metrics_url.clone().unwrap_or_default(),
        apiserver_present: engine.apiserver.is_some(),
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

/// The last step of the unfinished restore `active`, and its state.
fn active_step(engine: &Engine, active: Option<RestoreId>) -> Result<(String, String)> {
    let Some(journal) = active.map(|id| engine.state.load(id)).transpose()? else {
        return Ok(Default::default());
    };
    Ok(journal.last.map_or_else(Default::default, |step| {
        let state = journal.state(step).map(|s| s.name().to_owned());
        (step.to_string(), state.unwrap_or_default())
    }))
}

/// An apiserver-only host: its name, its kube-apiserver, its lock; no etcd facts.
fn describe_apiserver_host(engine: &Engine) -> Result<pb::DescribeResponse> {
    let active = engine.state.active()?;
    let (active_step, active_step_state) = active_step(engine, active)?;
    let api_aside = active.and_then(|id| engine.apiserver_aside(id));
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
            .is_some_and(|a| a.is_running(api_aside.as_deref())),
        apiserver_present: engine.apiserver.is_some(),
        active_restore_id: active.map(|id| id.to_string()).unwrap_or_default(),
        active_step,
        active_step_state,
        role: pb::AgentRole::ApiserverHost as i32,
        host_name: engine.host_name.clone(),
        ..Default::default()
    })
}
