//! The inventory: the cluster as the operator describes it (TOML, unknown keys refused).

use std::collections::HashSet;
use std::path::Path;

use quorate_proto::model::names;
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
    /// Hosts that run a kube-apiserver but no etcd member (external etcd): fenced before etcd
    /// halts and unfenced after the restored cluster is verified.
    #[serde(rename = "apiserver", default, skip_serializing_if = "Vec::is_empty")]
    pub apiservers: Vec<ApiserverHost>,
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

/// An apiserver-only host: its agent has an `[apiserver]` section and no `[etcd]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiserverHost {
    /// The host's name: its agent's `host_name` (default: its hostname).
    pub name: String,
    /// The agent's endpoint, `https://host:port`.
    pub agent: String,
    /// The name the agent's certificate must carry; default: the host of `agent`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_server_name: Option<String>,
}

/// Where one agent is: an etcd member's or an apiserver host's.
#[derive(Debug, Clone, Copy)]
pub struct AgentEntry<'a> {
    pub name: &'a str,
    pub agent: &'a str,
    pub agent_server_name: Option<&'a str>,
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

    /// Every agent: the members' in inventory order, then the apiserver hosts'. Restores address
    /// agents by this order.
    pub fn agents(&self) -> Vec<AgentEntry<'_>> {
        let members = self.members.iter().map(|m| AgentEntry {
            name: &m.name,
            agent: &m.agent,
            agent_server_name: m.agent_server_name.as_deref(),
        });
        let hosts = self.apiservers.iter().map(|h| AgentEntry {
            name: &h.name,
            agent: &h.agent,
            agent_server_name: h.agent_server_name.as_deref(),
        });
        members.chain(hosts).collect()
    }

    /// Structural checks that need no network: names and URLs present and unique.
    pub fn validate(&self) -> Result<(), InventoryError> {
        if self.members.is_empty() {
            return Err(InventoryError::Invalid("no [[member]] entries".into()));
        }
        // `restore` asks for it to be typed: it must be something one can type and tell apart.
        names::check_name("[cluster] name", &self.cluster.name).map_err(invalid)?;
        let mut seen = HashSet::new();
        let mut peers = HashSet::new();
        for m in &self.members {
            names::check_name("member name", &m.name).map_err(invalid)?;
            if !seen.insert(m.name.as_str()) {
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
                names::check_url("peer URL", &m.name, url).map_err(invalid)?;
                if !peers.insert(url.as_str()) {
                    return Err(InventoryError::Invalid(format!(
                        "peer URL {url} appears twice (member {}): every member needs its own",
                        m.name
                    )));
                }
            }
            for url in &m.client_urls {
                names::check_url("client URL", &m.name, url).map_err(invalid)?;
            }
            check_agent("member", &m.name, &m.agent, m.agent_server_name.as_deref())?;
        }
        for h in &self.apiservers {
            names::check_name("[[apiserver]] name (its agent's host_name)", &h.name)
                .map_err(invalid)?;
            if !seen.insert(h.name.as_str()) {
                return Err(InventoryError::Invalid(format!(
                    "name {} appears twice: every [[member]] and [[apiserver]] host needs its own",
                    h.name
                )));
            }
            check_agent(
                "apiserver host",
                &h.name,
                &h.agent,
                h.agent_server_name.as_deref(),
            )?;
        }
        let mut agents = HashSet::new();
        for a in self.agents() {
            if !agents.insert(a.agent) {
                return Err(InventoryError::Invalid(format!(
                    "agent {} appears twice (at {}): a host stacking etcd and a kube-apiserver is \
                     one [[member]], never also an [[apiserver]] host",
                    a.agent, a.name
                )));
            }
        }
        Ok(())
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("an inventory always serialises to TOML")
    }
}

fn invalid(e: quorate_proto::model::ModelError) -> InventoryError {
    InventoryError::Invalid(e.0)
}

/// An agent endpoint: `https://host:port` (agents speak mTLS only), and the server name its
/// certificate must carry, when given, a DNS name or an IP address.
fn check_agent(
    kind: &str,
    name: &str,
    agent: &str,
    server_name: Option<&str>,
) -> Result<(), InventoryError> {
    let parts = names::check_url("agent URL", name, agent).map_err(invalid)?;
    if !parts.https {
        return Err(InventoryError::Invalid(format!(
            "{kind} {name}: agent {agent} must be an https:// URL (agents speak mTLS only)"
        )));
    }
    if let Some(server_name) = server_name {
        names::check_host("agent_server_name", name, server_name).map_err(invalid)?;
    }
    Ok(())
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
    fn a_cluster_name_one_cannot_type_is_refused() {
        for bad in ["", " ", "lab prod", "lab\\n"] {
            let text = GOOD.replace("name = \"lab\"", &format!("name = \"{bad}\""));
            let e = load(&text).expect_err(bad).to_string();
            assert!(e.contains("[cluster] name"), "{bad:?}: {e}");
        }
    }

    const EXTERNAL: &str = r#"
[[apiserver]]
name = "api-1"
agent = "https://10.0.0.21:7443"
[[apiserver]]
name = "api-2"
agent = "https://10.0.0.22:7443"
agent_server_name = "api-2.example.internal"
"#;

    #[test]
    fn apiserver_hosts_parse_round_trip_and_follow_the_members_in_agent_order() {
        let inv = load(&format!("{GOOD}{EXTERNAL}")).expect("external");
        assert_eq!(inv.apiservers.len(), 2);
        assert_eq!(
            inv.apiservers[1].agent_server_name.as_deref(),
            Some("api-2.example.internal")
        );
        let order: Vec<&str> = inv.agents().iter().map(|a| a.name).collect();
        assert_eq!(order, ["cp-1", "cp-2", "api-1", "api-2"]);
        assert_eq!(load(&inv.to_toml()).expect("round trip"), inv);
        assert!(load(GOOD).expect("stacked").apiservers.is_empty());
        assert!(!load(GOOD).expect("stacked").to_toml().contains("apiserver"));
    }

    #[test]
    fn bad_apiserver_hosts_are_refused_naming_the_host() {
        let cases = [
            (
                EXTERNAL.replace("\"api-2\"", "\"cp-1\""),
                "name cp-1 appears twice",
            ),
            (
                EXTERNAL.replace("https://10.0.0.22:7443", "http://10.0.0.22:7443"),
                "apiserver host api-2: agent http://10.0.0.22:7443 must be an https:// URL",
            ),
            (
                EXTERNAL.replace("https://10.0.0.22:7443", "https://127.0.0.11:7443"),
                "agent https://127.0.0.11:7443 appears twice",
            ),
            (
                EXTERNAL.replace("\"api-1\"", "\"\""),
                "[[apiserver]] name (its agent's host_name) \"\" is refused",
            ),
            (
                EXTERNAL.replace("agent_server_name", "server_name"),
                "server_name",
            ),
        ];
        for (extra, says) in cases {
            let err = load(&format!("{GOOD}{extra}")).expect_err(says).to_string();
            assert!(err.contains(says), "{says}: {err}");
        }
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

    /// Each field with values that would carry shell, env-file or URL syntax: refused at load,
    /// naming the field, the member and the escaped value.
    #[test]
    fn hostile_names_hosts_and_urls_are_refused_naming_field_member_and_value() {
        let hostile = [
            "cp-2;touch /tmp/x",
            "cp-2$(id)",
            "cp-2`id`",
            "cp-2'x",
            "cp-2 x",
            "cp-2\\nETCD_X=1",
            "cp-2#",
        ];
        for bad in hostile {
            // As TOML basic strings: `\\n` above is a newline in the value.
            let quoted = format!("\"{}\"", bad.replace('"', "\\\""));
            let cases = [
                (
                    GOOD.replace("\"cp-2\"", &quoted),
                    "member name \"cp-2".to_owned(),
                ),
                (
                    GOOD.replace(
                        "\"https://127.0.0.12:2380\"",
                        &format!("\"https://{}:2380\"", &quoted[1..quoted.len() - 1]),
                    ),
                    "peer URL of cp-2 \"https://cp-2".to_owned(),
                ),
                (
                    GOOD.replace(
                        "\"https://127.0.0.12:2379\"",
                        &format!(
                            "\"https://127.0.0.12:2379/{}\"",
                            &quoted[1..quoted.len() - 1]
                        ),
                    ),
                    "client URL of cp-2 \"https://127.0.0.12:2379/cp-2".to_owned(),
                ),
                (
                    GOOD.replace(
                        "\"https://127.0.0.12:7443\"",
                        &format!("\"https://{}:7443\"", &quoted[1..quoted.len() - 1]),
                    ),
                    "agent URL of cp-2 \"https://cp-2".to_owned(),
                ),
                (
                    format!("{GOOD}agent_server_name = {quoted}\n"),
                    "agent_server_name of cp-2 \"cp-2".to_owned(),
                ),
                (
                    format!("{GOOD}{}", EXTERNAL.replace("\"api-1\"", &quoted)),
                    "[[apiserver]] name (its agent's host_name) \"cp-2".to_owned(),
                ),
            ];
            for (text, says) in cases {
                let err = load(&text).expect_err(&says).to_string();
                assert!(err.contains(&says), "{bad:?}: expected {says:?} in {err}");
                assert!(err.contains("is refused: a"), "{bad:?}: the rule: {err}");
                assert!(!err.contains('\n'), "{bad:?}: escaped: {err:?}");
            }
        }
    }
}
