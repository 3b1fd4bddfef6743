//! `quorate agents status`: every agent's version, runtime and health, asked over mTLS.

use std::process::ExitCode;
use std::time::Duration;

use serde::Serialize;

use crate::agent_client::{AgentClient as _, GrpcAgent};
use crate::inventory::Inventory;
use crate::output::Format;

#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    /// The inventory (agent URLs and the coordinator's TLS files).
    #[arg(long)]
    pub inventory: std::path::PathBuf,
}

/// One agent's row.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub name: String,
    pub agent: String,
    pub reachable: bool,
    pub version: String,
    pub runtime: String,
    pub etcd_version: String,
    pub health: String,
    /// The unfinished restore this member is locked by.
    pub active_restore: Option<String>,
    pub error: Option<String>,
}

async fn row(inventory: &Inventory, t: &super::Target) -> Row {
    let mut row = Row {
        name: t.name.clone(),
        agent: t.url.clone(),
        reachable: false,
        version: String::new(),
        runtime: String::new(),
        etcd_version: String::new(),
        health: String::new(),
        active_restore: None,
        error: None,
    };
    let agent = match GrpcAgent::new(&t.name, &t.url, &t.server_name, &inventory.agent_tls) {
        Ok(a) => a,
        Err(e) => {
            row.error = Some(format!("{e:#}"));
            return row;
        }
    };
    let deadline = Duration::from_secs(5);
    match agent.describe(deadline).await {
        Ok(d) => {
            row.reachable = true;
            row.version = d.agent_version.clone();
            row.runtime = if d.etcd_runtime.is_empty() {
                format!("apiserver-only ({})", d.apiserver_runtime)
            } else {
                d.etcd_runtime.clone()
            };
            row.etcd_version = d.etcd_version.clone();
            row.active_restore = d.active.as_ref().map(|a| a.to_string());
        }
        Err(e) => {
            row.error = Some(e.to_string());
            return row;
        }
    }
    match agent.health(deadline).await {
        Ok(h) if h.etcd.is_empty() => {
            row.health = match &h.apiserver {
                Some(a) => format!("readyz {}", a.status.map_or("-".into(), |c| c.to_string())),
                None => "no etcd".into(),
            };
        }
        Ok(h) => row.health = format!("{:?}", h.state()).to_lowercase(),
        Err(e) => row.health = format!("unknown: {e}"),
    }
    row
}

pub async fn rows(inventory: &Inventory) -> anyhow::Result<Vec<Row>> {
    let targets = super::targets(inventory)?;
    Ok(futures::future::join_all(targets.iter().map(|t| row(inventory, t))).await)
}

pub fn render(rows: &[Row]) -> String {
    let mut out = format!(
        "{:<12} {:<28} {:<10} {:<12} {:<10} {:<14} {}\n",
        "MEMBER", "AGENT", "VERSION", "RUNTIME", "ETCD", "HEALTH", "RESTORE"
    );
    for r in rows {
        if let Some(e) = &r.error {
            out.push_str(&format!(
                "{:<12} {:<28} UNREACHABLE: {e}\n",
                r.name, r.agent
            ));
            continue;
        }
        out.push_str(&format!(
            "{:<12} {:<28} {:<10} {:<12} {:<10} {:<14} {}\n",
            r.name,
            r.agent,
            r.version,
            r.runtime,
            r.etcd_version,
            r.health,
            r.active_restore.as_deref().unwrap_or("-")
        ));
    }
    out
}

pub async fn run(args: &StatusArgs, format: Format) -> anyhow::Result<ExitCode> {
    let inventory = Inventory::load(&args.inventory)?;
    let rows = rows(&inventory).await?;
    if format == Format::Human {
        print!("{}", render(&rows));
    }
    let silent = rows.iter().filter(|r| !r.reachable).count();
    let error = (silent > 0).then(|| {
        format!(
            "{silent} of {} agents did not answer: check the unit on each (`systemctl status quorate-agent`), or install it (`quorate agents install`)",
            rows.len()
        )
    });
    Ok(crate::output::finish_command(
        format,
        &serde_json::json!({ "agents": rows }),
        error,
    ))
}
