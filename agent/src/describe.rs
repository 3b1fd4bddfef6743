//! `Describe`: read-only facts about this member, from its manifest, its disks and its journal.

use quorate_proto::pb;

use crate::engine::Engine;
use crate::error::Result;
use crate::steps::layout::{Dir, Layout};
use crate::tool::{self, ToolKind};

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default()
}

/// Gathers the facts. Blocking (runs the tools, walks the data dir).
pub fn describe(engine: &Engine) -> Result<pb::DescribeResponse> {
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
    let (mut active_step, mut active_step_state) = (String::new(), String::new());
    if let Some(id) = active {
        let journal = engine.state.load(id)?;
        if let Some(step) = journal.last {
            active_step = step.to_string();
            active_step_state = journal
                .state(step)
                .map(|s| s.name().to_owned())
                .unwrap_or_default();
        }
    }
    let layout = Layout::detect(&data_dir, member.wal_dir.as_deref())?;
    let etcd_aside = active.map(|id| engine.etcd_aside(id));
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
        etcd_runtime: engine.etcd.kind().into(),
        apiserver_runtime: engine
            .apiserver
            .as_ref()
            .map_or("none", |a| a.kind())
            .into(),
        data_dir: data_dir.display().to_string(),
        data_dir_bytes: layout.data.bytes,
        free_bytes: layout.data.place.free_bytes,
        etcd_running: engine.etcd.is_running(etcd_aside.as_deref()),
        apiserver_running: engine
            .apiserver
            .as_ref()
            .is_some_and(|a| a.is_running(api_aside.as_deref())),
        active_restore_id: active.map(|id| id.to_string()).unwrap_or_default(),
        active_step,
        active_step_state,
        metrics_url: member.metrics_url.clone().unwrap_or_default(),
        apiserver_present: engine.apiserver.is_some(),
        data_layout: Some(layout.data.to_proto()),
        wal_layout: layout.own_wal().map(Dir::to_proto),
        wal_dir: layout.wal_flag(),
        layout_problems: layout.problems(),
    })
}
