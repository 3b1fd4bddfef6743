//! What `quorate agents install` learns from a host before it writes anything there: it runs
//! `quorate-agent discover` (the agent's own reading of manifests and units), from a temporary
//! copy when the binary there differs, and checks the answer against the inventory.

use std::time::Duration;

use serde::Deserialize;

use super::install::{InstallArgs, Wanted, differs, put};
use super::ssh::{Session, quote};
use super::{BINARY, Target};

/// The discovered facts as `quorate-agent discover` prints them.
#[derive(Debug, Clone, Deserialize)]
pub struct Discovery {
    runtime: String,
    etcd_definition: String,
    apiserver: Option<String>,
    member: Option<String>,
    etcd_version: String,
    restore_tool: Option<String>,
    pub config: String,
    problems: Vec<String>,
}

impl Discovery {
    pub fn summary(&self) -> String {
        let mut parts = vec![format!("runtime {}", self.runtime)];
        if !self.etcd_definition.is_empty() {
            parts.push(format!("etcd from {}", self.etcd_definition));
        }
        if let Some(m) = &self.member {
            parts.push(format!("member {m}"));
        }
        if !self.etcd_version.is_empty() {
            parts.push(format!("etcd {}", self.etcd_version));
        }
        if let Some(t) = &self.restore_tool {
            parts.push(format!("restore tool {t}"));
        }
        if let Some(a) = &self.apiserver {
            parts.push(format!("kube-apiserver from {a}"));
        }
        parts.join("; ")
    }
}

impl Discovery {
    /// Whether the host runs what the inventory says: the member of its name, or (an
    /// `[[apiserver]]` host) no etcd at all.
    pub fn fits(&self, target: &Target) -> Result<(), String> {
        if !self.problems.is_empty() {
            return Err(format!("not installed: {}", self.problems.join("; ")));
        }
        match (&self.member, target.apiserver_only) {
            (Some(m), false) if *m != target.name => Err(format!(
                "not installed: etcd on {} is member {m}, but the inventory names it {}: fix the inventory",
                target.host, target.name
            )),
            (None, false) => Err(format!(
                "not installed: the inventory lists {} as an etcd member, but no etcd was found on {} (no static pod manifest, no enabled etcd.service): fix the inventory, or list the host as an [[apiserver]]",
                target.name, target.host
            )),
            (Some(m), true) => Err(format!(
                "not installed: the inventory lists {} as an [[apiserver]] host, but {} runs etcd member {m}: list it as a [[member]]",
                target.name, target.host
            )),
            _ => Ok(()),
        }
    }
}

/// Runs `quorate-agent discover` on the host: the installed binary when it is the one to
/// install, else a temporary copy, removed again.
pub async fn discover(
    args: &InstallArgs,
    target: &Target,
    binary: &Wanted,
    state: &[(String, String, String)],
    s: &Session,
) -> Result<Discovery, String> {
    let mut bin = BINARY.to_owned();
    let mut temp = None;
    if differs(state, binary) {
        let tmp = s
            .check("making a temp dir", "mktemp -d", b"")
            .await
            .map_err(|e| e.to_string())?
            .stdout()
            .trim()
            .to_owned();
        let w = Wanted {
            path: format!("{tmp}/quorate-agent"),
            ..binary.clone()
        };
        temp = Some(tmp);
        put(s, &w).await?;
        bin = w.path;
    }
    let listen = if target.host.parse::<std::net::IpAddr>().is_ok() {
        if target.host.contains(':') {
            format!("[{}]:{}", target.host, target.port)
        } else {
            format!("{}:{}", target.host, target.port)
        }
    } else {
        format!("0.0.0.0:{}", target.port)
    };
    let mut cmd = format!("{} discover --listen {}", quote(&bin), quote(&listen));
    for c in &args.allowed_clients {
        cmd.push_str(&format!(" --allowed-client {}", quote(c)));
    }
    if target.apiserver_only {
        cmd.push_str(&format!(" --host-name {}", quote(&target.name)));
    }
    let out = s.check("running quorate-agent discover", &cmd, b"").await;
    if let Some(tmp) = temp {
        let _ = s
            .run(
                &format!("rm -rf {}", quote(&tmp)),
                b"",
                Duration::from_secs(30),
            )
            .await;
    }
    let out = out.map_err(|e| e.to_string())?;
    serde_json::from_slice(&out.stdout).map_err(|e| {
        format!(
            "quorate-agent discover printed something unreadable ({e}): {}",
            out.stdout()
        )
    })
}

/// The generated agent.toml, with the `trusted_snapshot_keys` of the one on the host (if any):
/// a re-install never stops a member from requiring signed snapshots.
pub fn keep_trusted_keys(generated: &str, existing: &Option<String>) -> Result<String, String> {
    let Some(existing) = existing else {
        return Ok(generated.to_owned());
    };
    let old: toml::Table = toml::from_str(existing).map_err(|e| {
        format!("not installed: the agent.toml on the host is not valid TOML ({e}): fix or move it, then run again")
    })?;
    let Some(keys) = old.get("trusted_snapshot_keys") else {
        return Ok(generated.to_owned());
    };
    let new: toml::Table = toml::from_str(generated)
        .map_err(|e| format!("the generated agent.toml is not valid TOML ({e})"))?;
    if new.contains_key("trusted_snapshot_keys") {
        return Ok(generated.to_owned());
    }
    let mut line = toml::Table::new();
    line.insert("trusted_snapshot_keys".into(), keys.clone());
    let line = toml::to_string(&line).map_err(|e| e.to_string())?;
    // A top-level key goes before the first table.
    Ok(format!(
        "# kept from the agent.toml this install replaced\n{line}{generated}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GENERATED: &str =
        "listen = \"10.0.0.11:7443\"\n\n[tls]\ncert = \"/etc/quorate/pki/agent.crt\"\n";

    #[test]
    fn trusted_snapshot_keys_survive_a_reinstall() {
        let old = "listen = \"x\"\ntrusted_snapshot_keys = [\"/etc/quorate/signing.pub\"]\n[tls]\ncert = \"a\"\n";
        let kept = keep_trusted_keys(GENERATED, &Some(old.into())).expect("kept");
        let t: toml::Table = toml::from_str(&kept).expect("valid TOML");
        assert_eq!(
            t["trusted_snapshot_keys"].as_array().map(Vec::len),
            Some(1),
            "{kept}"
        );
        assert!(
            t["tls"].get("trusted_snapshot_keys").is_none(),
            "top level: {kept}"
        );
        assert_eq!(t["listen"].as_str(), Some("10.0.0.11:7443"));
        assert_eq!(
            keep_trusted_keys(GENERATED, &Some("listen = \"x\"\n".into())).expect("none"),
            GENERATED
        );
        assert_eq!(
            keep_trusted_keys(GENERATED, &None).expect("none"),
            GENERATED
        );
        assert!(keep_trusted_keys(GENERATED, &Some("[[[".into())).is_err());
    }

    fn target(apiserver_only: bool) -> Target {
        Target {
            name: "cp-1".into(),
            url: "https://10.0.0.11:7443".into(),
            server_name: "10.0.0.11".into(),
            host: "10.0.0.11".into(),
            port: 7443,
            apiserver_only,
        }
    }

    fn found(member: Option<&str>) -> Discovery {
        Discovery {
            runtime: "static-pod".into(),
            etcd_definition: String::new(),
            apiserver: None,
            member: member.map(str::to_owned),
            etcd_version: String::new(),
            restore_tool: None,
            config: String::new(),
            problems: Vec::new(),
        }
    }

    #[test]
    fn a_host_must_run_what_the_inventory_says() {
        assert!(found(Some("cp-1")).fits(&target(false)).is_ok());
        assert!(found(None).fits(&target(true)).is_ok());
        let e = found(Some("cp-9"))
            .fits(&target(false))
            .expect_err("other member");
        assert!(e.contains("member cp-9"), "{e}");
        let e = found(None).fits(&target(false)).expect_err("no etcd");
        assert!(e.contains("no etcd was found"), "{e}");
        let e = found(Some("cp-1"))
            .fits(&target(true))
            .expect_err("etcd on an apiserver host");
        assert!(e.contains("list it as a [[member]]"), "{e}");
    }
}
