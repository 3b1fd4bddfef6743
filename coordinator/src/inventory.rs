//! The inventory: the cluster as the operator describes it (TOML, unknown keys refused).

use std::collections::HashSet;
use std::path::Path;

use quorate_proto::tls::TlsFiles;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Inventory {
    pub cluster: ClusterSection,
    /// The coordinator's client certificate for the agents, and the CA that signed the agents'.
    pub agent_tls: TlsFiles,
    /// A client certificate for etcd itself (used to verify the restored cluster).
    pub etcd_tls: Option<TlsFiles>,
    #[serde(rename = "member")]
    pub members: Vec<Member>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Member {
    /// The etcd member name (`--name`).
    pub name: String,
    /// The agent's endpoint, `https://host:port`.
    pub agent: String,
    /// The name the agent's certificate must carry; default: the host of `agent`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_server_name: Option<String>,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    #[error("cannot read inventory {path}: {source}")]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("inventory {path} is not valid: {source}")]
    Parse {
        path: std::path::PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("inventory: {0}")]
    Invalid(String),
}

impl Inventory {
    pub fn load(path: &Path) -> Result<Self, InventoryError> {
        let text = std::fs::read_to_string(path).map_err(|source| InventoryError::Read {
            path: path.to_owned(),
            source,
        })?;
        let inventory: Self = toml::from_str(&text).map_err(|source| InventoryError::Parse {
            path: path.to_owned(),
            source: Box::new(source),
        })?;
        inventory.validate()?;
        Ok(inventory)
    }

    /// Structural checks that need no network: names and URLs present and unique.
    pub fn validate(&self) -> Result<(), InventoryError> {
        if self.members.is_empty() {
            return Err(InventoryError::Invalid("no [[member]] entries".into()));
        }
        let mut names = HashSet::new();
        let mut peers = HashSet::new();
        for m in &self.members {
            if m.name.is_empty() {
                return Err(InventoryError::Invalid("a member has an empty name".into()));
            }
            if !names.insert(m.name.as_str()) {
                return Err(InventoryError::Invalid(format!(
                    "member name {} appears twice: every member needs its own name",
                    m.name
                )));
            }
            if m.peer_urls.is_empty() {
                return Err(InventoryError::Invalid(format!(
                    "member {} has no peer_urls",
                    m.name
                )));
            }
            for url in &m.peer_urls {
                if !peers.insert(url.as_str()) {
                    return Err(InventoryError::Invalid(format!(
                        "peer URL {url} appears twice (member {}): every member needs its own",
                        m.name
                    )));
                }
            }
            if !m.agent.starts_with("https://") {
                return Err(InventoryError::Invalid(format!(
                    "member {}: agent {} must be an https:// URL (agents speak mTLS only)",
                    m.name, m.agent
                )));
            }
        }
        Ok(())
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("an inventory always serialises to TOML")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[cluster]
name = "lab"
[agent_tls]
ca = "/a/ca.crt"
cert = "/a/c.crt"
key = "/a/c.key"
[[member]]
name = "cp-1"
agent = "https://127.0.0.11:7443"
peer_urls = ["https://127.0.0.11:2380"]
client_urls = ["https://127.0.0.11:2379"]
[[member]]
name = "cp-2"
agent = "https://127.0.0.12:7443"
peer_urls = ["https://127.0.0.12:2380"]
client_urls = ["https://127.0.0.12:2379"]
"#;

    fn load(text: &str) -> Result<Inventory, InventoryError> {
        let f = tempfile::NamedTempFile::new().expect("tempfile");
        std::fs::write(f.path(), text).expect("write");
        Inventory::load(f.path())
    }

    #[test]
    fn a_good_inventory_round_trips() {
        let inv = load(GOOD).expect("good");
        assert_eq!(inv.members.len(), 2);
        assert_eq!(load(&inv.to_toml()).expect("round trip"), inv);
    }

    #[test]
    fn typos_duplicates_and_plaintext_agents_are_refused_with_what_is_wrong() {
        let typo = GOOD.replace(
            "peer_urls = [\"https://127.0.0.12:2380\"]",
            "peer_url = [\"https://127.0.0.12:2380\"]",
        );
        assert!(
            load(&typo)
                .expect_err("typo")
                .to_string()
                .contains("peer_url")
        );
        let dup_name = GOOD.replace("name = \"cp-2\"", "name = \"cp-1\"");
        assert!(
            load(&dup_name)
                .expect_err("dup")
                .to_string()
                .contains("cp-1 appears twice")
        );
        let dup_peer = GOOD.replace("https://127.0.0.12:2380", "https://127.0.0.11:2380");
        assert!(
            load(&dup_peer)
                .expect_err("dup peer")
                .to_string()
                .contains("https://127.0.0.11:2380 appears twice")
        );
        let plain = GOOD.replace("https://127.0.0.12:7443", "http://127.0.0.12:7443");
        assert!(
            load(&plain)
                .expect_err("plaintext")
                .to_string()
                .contains("mTLS only")
        );
        assert!(
            load("")
                .expect_err("empty")
                .to_string()
                .contains("missing field")
        );
    }
}
