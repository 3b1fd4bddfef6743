//! `Describe`: read-only facts about this member, from its manifest, its disks and its journal.

use quorate_proto::pb;

use crate::engine::Engine;
use crate::error::Result;
use crate::health::{self, EtcdEndpoint, HealthConfig};
use crate::manifest::{self, EtcdMember};
use crate::steps::layout::{Dir, Layout};
use crate::tool::{self, ToolKind};

fn hostname() -> String {
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
    let declared = if engine.etcd.kind() == "static-pod" {
        match manifest::load_image(&member.command.path) {
            Ok(Some(image)) => {
                manifest::image_version(&image).map(|v| (v, format!("image {image}")))
            }
            Ok(None) => Err(format!("{} names no image", member.command.source)),
            Err(e) => Err(e.to_string()),
        }
    } else {
        let binary = member.command.argv.first().map_or("", String::as_str);
        tool::etcd_version(binary)
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
    let etcd_running = engine.etcd.is_running(etcd_aside.as_deref());
    let (endpoints, health_problem) = match health::etcd_endpoints(&member, &health_config.etcd) {
        Ok(e) => (e, String::new()),
        Err(e) => (Vec::new(), e.to_string()),
    };
    let (etcd_version, etcd_version_source) =
        etcd_version(engine, &member, &endpoints, etcd_running);
    let (readiness_auth, readiness_problem) = match health::apiserver_readyz(engine, health_config)
    {
        None => (String::new(), String::new()),
        Some(Ok(p)) => (p.auth, String::new()),
        Some(Err(e)) => (String::new(), e.problem),
    };
    Ok(pb::DescribeResponse {
        agent_version: env!("CARGO_PKG_VERSION").into(),
        hostname: hostname(),
        member_name: member.name.clone(),
        peer_urls: member.peer_urls.clone(),
        client_urls: member.client_urls.clone(),
        etcd_version,
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
        etcd_running,
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
        readiness_problem,
        readiness_auth,
        etcd_version_source,
        health_probe: endpoints
            .iter()
            .map(EtcdEndpoint::describe)
            .collect::<Vec<_>>()
            .join("; "),
        health_problem,
    })
}
