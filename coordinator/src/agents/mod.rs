//! `quorate agents install | status | uninstall`: the agents put on every host over SSH, checked
//! over mTLS, and taken off again.

pub mod discovery;
pub mod install;
pub mod known_hosts;
pub mod ssh;
pub mod status;
pub mod uninstall;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use crate::inventory::Inventory;
use crate::output::Format;

/// Where install puts things on a host.
pub const BINARY: &str = "/usr/local/bin/quorate-agent";
pub const CONFIG: &str = "/etc/quorate/agent.toml";
pub const PKI: &str = "/etc/quorate/pki";
pub const UNIT: &str = "quorate-agent.service";
pub const UNIT_FILE: &str = "/etc/systemd/system/quorate-agent.service";
/// What install wrote on the host, for uninstall.
pub const MANIFEST: &str = "/etc/quorate/installed.json";
/// The unit, as deploy/ ships it.
pub const UNIT_TEXT: &str = include_str!("../../../deploy/quorate-agent.service");

#[derive(clap::Subcommand, Debug)]
pub enum AgentsCmd {
    /// Install (or update) the agent on every host of the inventory over SSH: binary,
    /// certificates, a generated agent.toml, the systemd unit; start it and wait until it answers
    /// over mTLS. A re-run changes only what differs.
    Install(install::InstallArgs),
    /// Version, runtime and health of every agent, asked over mTLS.
    Status(status::StatusArgs),
    /// Stop and disable the agent on every host and remove what install wrote (refused on a host
    /// whose agent holds an unfinished restore).
    Uninstall(uninstall::UninstallArgs),
}

impl AgentsCmd {
    /// The command's name in the event stream.
    pub fn name(&self) -> &'static str {
        match self {
            AgentsCmd::Install(_) => "agents install",
            AgentsCmd::Status(_) => "agents status",
            AgentsCmd::Uninstall(_) => "agents uninstall",
        }
    }
}

/// How to reach the hosts over SSH (shared by install and uninstall).
#[derive(clap::Args, Debug, Clone)]
pub struct SshArgs {
    /// The inventory: every member's (and apiserver host's) agent URL names its host.
    #[arg(long)]
    pub inventory: PathBuf,
    /// The user to log in as (root, or a user with passwordless sudo).
    #[arg(long)]
    pub ssh_user: String,
    /// A private key file (unencrypted; load an encrypted one into ssh-agent instead). Default:
    /// ssh-agent (SSH_AUTH_SOCK), then ~/.ssh/id_ed25519, id_ecdsa, id_rsa.
    #[arg(long, value_name = "FILE")]
    pub ssh_key: Option<PathBuf>,
    #[arg(long, default_value_t = 22)]
    pub ssh_port: u16,
    /// Host keys are checked against this file. Default: ~/.ssh/known_hosts.
    #[arg(long, value_name = "FILE")]
    pub known_hosts: Option<PathBuf>,
    /// Accept and record the key of a host not in known_hosts (a CHANGED key is still refused).
    #[arg(long)]
    pub accept_new_host_keys: bool,
}

impl SshArgs {
    pub fn options(&self) -> ssh::SshOptions {
        ssh::SshOptions {
            user: self.ssh_user.clone(),
            port: self.ssh_port,
            key: self.ssh_key.clone(),
            known_hosts: self
                .known_hosts
                .clone()
                .unwrap_or_else(known_hosts::default_path),
            accept_new: self.accept_new_host_keys,
            timeout: Duration::from_secs(20),
        }
    }
}

/// One agent of the inventory and the host it runs on.
#[derive(Debug, Clone)]
pub struct Target {
    pub name: String,
    pub url: String,
    pub server_name: String,
    /// The host of the agent URL: where SSH goes.
    pub host: String,
    pub port: u16,
    /// Whether it is an `[[apiserver]]` host (no etcd).
    pub apiserver_only: bool,
}

/// `https://host:port` → (host, port).
pub fn split_url(url: &str) -> Option<(String, u16)> {
    let rest = url.strip_prefix("https://")?;
    let authority = rest.split('/').next()?;
    let (host, port) = authority.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Some((host.to_owned(), port.parse().ok()?))
}

pub fn targets(inventory: &Inventory) -> anyhow::Result<Vec<Target>> {
    let members = inventory.members.len();
    inventory
        .agents()
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let (host, port) = split_url(a.agent).ok_or_else(|| {
                anyhow::anyhow!("{}: agent {} is not https://host:port", a.name, a.agent)
            })?;
            Ok(Target {
                name: a.name.to_owned(),
                url: a.agent.to_owned(),
                server_name: a.agent_server_name.unwrap_or(&host).to_owned(),
                host,
                port,
                apiserver_only: i >= members,
            })
        })
        .collect()
}

pub async fn run(cmd: AgentsCmd, format: Format) -> anyhow::Result<ExitCode> {
    match cmd {
        AgentsCmd::Install(mut args) => install::run(&mut args, format).await,
        AgentsCmd::Status(args) => status::run(&args, format).await,
        AgentsCmd::Uninstall(args) => uninstall::run(&args, format).await,
    }
}

/// Prints one host's line: human text, or a JSON object.
pub fn report(format: Format, host: &str, result: &Result<String, String>, dry_run: bool) {
    match format {
        Format::Human => match result {
            Ok(done) => println!("{host}: {done}"),
            Err(e) => println!("{host}: FAILED: {e}"),
        },
        Format::Json => crate::events::emit(&crate::events::Event::Note {
            text: match result {
                Ok(done) => format!("{host}: {done}"),
                Err(e) => format!("{host}: FAILED: {e}"),
            },
        }),
    }
    let _ = dry_run;
}

/// One host's outcome, in the `result` of `agents install|uninstall --output json`.
pub fn host_results(
    names: impl Iterator<Item = String>,
    results: &[Result<String, String>],
    dry_run: bool,
) -> serde_json::Value {
    let hosts: Vec<serde_json::Value> = names
        .zip(results)
        .map(|(host, r)| {
            serde_json::json!({
                "host": host,
                "ok": r.is_ok(),
                "dry_run": dry_run,
                "message": match r { Ok(m) | Err(m) => m },
            })
        })
        .collect();
    serde_json::json!({ "hosts": hosts })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_urls_name_their_host() {
        assert_eq!(
            split_url("https://10.0.0.11:7443"),
            Some(("10.0.0.11".into(), 7443))
        );
        assert_eq!(
            split_url("https://[fd00::1]:7443/"),
            Some(("fd00::1".into(), 7443))
        );
        assert_eq!(split_url("http://x:1"), None);
        assert!(UNIT_TEXT.contains(&format!("ExecStart={BINARY} --config {CONFIG}")));
    }
}
