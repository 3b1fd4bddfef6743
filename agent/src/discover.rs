//! `quorate-agent discover`: what this host runs (etcd as a kubeadm static pod or a systemd
//! unit, a kube-apiserver beside it, the restore tool), and the `agent.toml` that fits it.
//!
//! `quorate agents install` runs it on every host over SSH, shows the facts, and writes the
//! config it prints. It reads files only; the generated config is checked by loading it and
//! reading etcd's member from it, exactly as the agent will.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::AgentConfig;

/// Where kubeadm keeps its static pod manifests.
pub const MANIFESTS: &str = "/etc/kubernetes/manifests";
/// Where systemd units are looked for, in systemd's order.
pub const UNIT_DIRS: [&str; 4] = [
    "/etc/systemd/system",
    "/run/systemd/system",
    "/usr/lib/systemd/system",
    "/lib/systemd/system",
];
/// Where a restore tool is looked for besides PATH: quorate's own dir first.
pub const TOOL_DIRS: [&str; 4] = ["/opt/quorate/bin", "/usr/local/bin", "/usr/bin", "/bin"];

/// What the generated config says apart from what is discovered.
#[derive(Debug, Clone)]
pub struct Wanted {
    /// The gRPC listen address (`host:port` of the inventory's agent URL).
    pub listen: String,
    /// Names accepted on the coordinator's client certificate.
    pub allowed_clients: Vec<String>,
    /// The TLS files as they are on this host.
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: PathBuf,
    pub state_dir: PathBuf,
    /// The name an apiserver-only host is known by in the inventory.
    pub host_name: Option<String>,
}

/// What was found on this host, and the config for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Discovery {
    /// `static-pod`, `systemd` or `apiserver-only`.
    pub runtime: String,
    /// The manifest or unit etcd was found in.
    pub etcd_definition: String,
    /// The kube-apiserver's manifest or unit, if this host runs one.
    pub apiserver: Option<String>,
    pub member: Option<String>,
    pub peer_urls: Vec<String>,
    pub data_dir: Option<String>,
    pub etcd_version: String,
    /// The restore tool: `etcdutl 3.5.16 at /usr/local/bin/etcdutl`.
    pub restore_tool: Option<String>,
    /// The generated agent.toml.
    pub config: String,
    /// What would keep the agent from working here, each with what to do.
    pub problems: Vec<String>,
}

/// `root` joined with an absolute host path (`/` in production; a temp dir in unit tests).
fn under(root: &Path, path: &str) -> PathBuf {
    root.join(path.trim_start_matches('/'))
}

/// A unit file of that name in systemd's search path under `root`.
fn find_unit(root: &Path, unit: &str) -> Option<String> {
    UNIT_DIRS
        .iter()
        .map(|d| format!("{d}/{unit}"))
        .find(|p| under(root, p).is_file())
}

/// Whether a `*.wants/` dir of `/etc/systemd/system` links `unit` (it starts at boot).
fn unit_enabled(root: &Path, unit: &str) -> bool {
    std::fs::read_dir(under(root, "/etc/systemd/system"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".wants"))
        .any(|e| e.path().join(unit).symlink_metadata().is_ok())
}

/// The first executable `name` on `path_var`'s dirs, then in [`TOOL_DIRS`].
fn find_tool(root: &Path, name: &str, path_var: &str) -> Option<String> {
    use std::os::unix::fs::PermissionsExt as _;
    path_var
        .split(':')
        .filter(|d| d.starts_with('/'))
        .chain(TOOL_DIRS)
        .map(|d| format!("{}/{name}", d.trim_end_matches('/')))
        .find(|p| {
            std::fs::metadata(under(root, p))
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// The config sections for what the files under `root` show, and what is missing.
pub fn sections(root: &Path, path_var: &str, etcd_minor: Option<&str>) -> Layout {
    let manifest = format!("{MANIFESTS}/etcd.yaml");
    let api_manifest = format!("{MANIFESTS}/kube-apiserver.yaml");
    let static_pod = under(root, &manifest).is_file();
    let unit = find_unit(root, "etcd.service");
    let mut problems = Vec::new();
    let (runtime, etcd_definition, etcd) = match (static_pod, &unit) {
        // A packaged etcd.service that is not enabled (Debian's etcd-server ships one) is no
        // second etcd; an enabled one is.
        (true, Some(u)) if unit_enabled(root, "etcd.service") => {
            problems.push(format!(
                "both {manifest} and an enabled {u} exist: etcd runs one way only; disable the one not in use and run install again"
            ));
            ("static-pod", manifest.clone(), None)
        }
        (true, _) => (
            "static-pod",
            manifest.clone(),
            Some(format!(
                "runtime = \"static-pod\"\nmanifest = {manifest:?}\n"
            )),
        ),
        (false, Some(u)) => (
            "systemd",
            u.clone(),
            Some("runtime = \"systemd\"\nunit = \"etcd.service\"\n".to_owned()),
        ),
        (false, None) => ("apiserver-only", String::new(), None),
    };
    let ca = "/etc/kubernetes/pki/ca.crt";
    let apiserver = if under(root, &api_manifest).is_file() {
        Some((
            api_manifest.clone(),
            format!("runtime = \"static-pod\"\nmanifest = {api_manifest:?}\nca = {ca:?}\n"),
        ))
    } else {
        find_unit(root, "kube-apiserver.service").map(|u| {
            (
                u,
                format!("runtime = \"systemd\"\nunit = \"kube-apiserver.service\"\nca = {ca:?}\n"),
            )
        })
    };
    if etcd.is_none() && apiserver.is_none() && problems.is_empty() {
        problems.push(format!(
            "no etcd found: neither {manifest} nor an etcd.service unit ({}), and no kube-apiserver either; install the agent on the etcd members and the apiserver hosts only",
            UNIT_DIRS.join(", ")
        ));
    }
    let mut tool = None;
    if etcd.is_some() {
        // etcd 3.4 has no etcdutl: its etcdctl restores.
        let names: &[&str] = if etcd_minor == Some("3.4") {
            &["etcdctl"]
        } else {
            &["etcdutl"]
        };
        tool = names
            .iter()
            .find_map(|n| find_tool(root, n, path_var).map(|p| format!("{n} = {p:?}\n")));
        if tool.is_none() {
            problems.push(format!(
                "no {} on this host (looked on PATH and in {}): install the one of etcd's version (a kubeadm node has it only inside the etcd image), e.g. into /opt/quorate/bin, and run install again",
                names.join(" or "),
                TOOL_DIRS.join(", ")
            ));
        }
    }
    Layout {
        runtime: runtime.to_owned(),
        etcd_definition,
        etcd: etcd.map(|e| format!("{e}{}", tool.unwrap_or_default())),
        apiserver,
        problems,
    }
}

/// The runtime sections of a host, before they are checked.
#[derive(Debug, Clone)]
pub struct Layout {
    pub runtime: String,
    pub etcd_definition: String,
    /// The `[etcd]` section's body.
    pub etcd: Option<String>,
    /// The kube-apiserver's definition and the `[apiserver]` section's body.
    pub apiserver: Option<(String, String)>,
    pub problems: Vec<String>,
}

/// The agent.toml text for `layout`.
pub fn config_text(wanted: &Wanted, layout: &Layout) -> String {
    let mut text = format!(
        "# quorate-agent, written by `quorate agents install` from what this host runs ({runtime}).\n\
         # Check it with: quorate-agent check-config --config /etc/quorate/agent.toml\n\
         listen = {listen:?}\n\
         state_dir = {state:?}\n\
         allowed_clients = {clients:?}\n",
        runtime = layout.runtime,
        listen = wanted.listen,
        state = wanted.state_dir.display().to_string(),
        clients = wanted.allowed_clients,
    );
    if layout.etcd.is_none()
        && let Some(name) = &wanted.host_name
    {
        text.push_str(&format!("host_name = {name:?}\n"));
    }
    text.push_str(&format!(
        "\n[tls]\ncert = {:?}\nkey = {:?}\nclient_ca = {:?}\n",
        wanted.cert.display().to_string(),
        wanted.key.display().to_string(),
        wanted.client_ca.display().to_string(),
    ));
    if let Some(etcd) = &layout.etcd {
        text.push_str(&format!("\n[etcd]\n{etcd}"));
    }
    if let Some((_, apiserver)) = &layout.apiserver {
        text.push_str(&format!("\n[apiserver]\n{apiserver}"));
    }
    text
}

/// The etcd version a static pod's manifest names (its image tag), for choosing the tool.
fn manifest_minor(root: &Path) -> Option<String> {
    let image = crate::manifest::load_image(&under(root, &format!("{MANIFESTS}/etcd.yaml")))
        .ok()
        .flatten()?;
    let version = crate::manifest::image_version(&image).ok()?;
    let mut parts = version.split('.');
    Some(format!("{}.{}", parts.next()?, parts.next()?))
}

/// Discovers this host (at `/`) and checks the config it generates by loading it as the agent
/// does and reading etcd's member, version and restore tool with it.
pub fn discover(wanted: &Wanted) -> Discovery {
    let root = Path::new("/");
    let path_var = std::env::var("PATH").unwrap_or_default();
    let minor = manifest_minor(root);
    let layout = sections(root, &path_var, minor.as_deref());
    let config = config_text(wanted, &layout);
    let mut found = Discovery {
        runtime: layout.runtime.clone(),
        etcd_definition: layout.etcd_definition.clone(),
        apiserver: layout.apiserver.as_ref().map(|(d, _)| d.clone()),
        member: None,
        peer_urls: Vec::new(),
        data_dir: None,
        etcd_version: String::new(),
        restore_tool: None,
        config: config.clone(),
        problems: layout.problems.clone(),
    };
    if !found.problems.is_empty() {
        return found;
    }
    let parsed = match AgentConfig::parse(&config, Path::new("agent.toml (generated)")) {
        Ok(c) => c,
        Err(e) => {
            found.problems.push(format!("the generated config: {e}"));
            return found;
        }
    };
    let engine = crate::service::engine_from_config(&parsed);
    if engine.apiserver_only() {
        return found;
    }
    let member = match engine.member(None) {
        Ok(m) => m,
        Err(e) => {
            found.problems.push(format!("reading etcd's member: {e}"));
            return found;
        }
    };
    found.member = Some(member.name.clone());
    found.peer_urls = member.peer_urls.clone();
    found.data_dir = Some(engine.data_dir_of(&member).display().to_string());
    let health = parsed.health();
    let endpoints = crate::health::etcd_endpoints(&member, &health.etcd).unwrap_or_default();
    let running = engine
        .etcd()
        .ok()
        .and_then(|e| e.is_running(None).ok())
        .unwrap_or(false);
    let (version, source) = crate::describe::etcd_version(&engine, &member, &endpoints, running);
    found.etcd_version = if version.is_empty() {
        source
    } else {
        format!("{version} ({source})")
    };
    match engine.tool.info() {
        Ok(t) => {
            found.restore_tool = Some(format!(
                "{} {} at {}",
                t.kind.name(),
                t.version,
                t.program.display()
            ));
        }
        Err(e) => found.problems.push(format!("the restore tool: {e}")),
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wanted() -> Wanted {
        Wanted {
            listen: "10.0.0.11:7443".into(),
            allowed_clients: vec!["quorate-coordinator".into()],
            cert: "/etc/quorate/pki/agent.crt".into(),
            key: "/etc/quorate/pki/agent.key".into(),
            client_ca: "/etc/quorate/pki/ca.crt".into(),
            state_dir: "/var/lib/quorate-agent".into(),
            host_name: Some("api-1".into()),
        }
    }

    fn touch(root: &Path, path: &str, mode: u32) {
        use std::os::unix::fs::PermissionsExt as _;
        let p = under(root, path);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(&p, "x").expect("write");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }

    fn parse(text: &str) -> AgentConfig {
        AgentConfig::parse(text, Path::new("t.toml")).expect("a config the agent loads")
    }

    #[test]
    fn kubeadm_node_gets_static_pod_sections_and_the_tool_found() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        touch(root, "/etc/kubernetes/manifests/etcd.yaml", 0o600);
        touch(root, "/etc/kubernetes/manifests/kube-apiserver.yaml", 0o600);
        touch(root, "/opt/quorate/bin/etcdutl", 0o755);
        touch(root, "/usr/bin/etcdutl", 0o644); // not executable: passed over
        let layout = sections(root, "/usr/bin", Some("3.5"));
        assert!(layout.problems.is_empty(), "{:?}", layout.problems);
        let text = config_text(&wanted(), &layout);
        let config = parse(&text);
        assert_eq!(config.listen.to_string(), "10.0.0.11:7443");
        assert_eq!(config.allowed_clients, ["quorate-coordinator"]);
        let etcd = config.etcd.expect("[etcd]");
        assert_eq!(etcd.runtime.name(), "static-pod");
        assert_eq!(
            etcd.manifest.as_deref(),
            Some(Path::new("/etc/kubernetes/manifests/etcd.yaml"))
        );
        assert_eq!(
            etcd.etcdutl.as_deref(),
            Some(Path::new("/opt/quorate/bin/etcdutl"))
        );
        let api = config.apiserver.expect("[apiserver]");
        assert_eq!(api.ca, Path::new("/etc/kubernetes/pki/ca.crt"));
        assert_eq!(config.host_name, None, "a member is named by its --name");
    }

    #[test]
    fn systemd_etcd_34_uses_etcdctl_and_no_apiserver() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        touch(root, "/lib/systemd/system/etcd.service", 0o644);
        touch(root, "/usr/local/bin/etcdctl", 0o755);
        touch(root, "/usr/local/bin/etcdutl", 0o755);
        let layout = sections(root, "", Some("3.4"));
        let config = parse(&config_text(&wanted(), &layout));
        let etcd = config.etcd.expect("[etcd]");
        assert_eq!(etcd.runtime.name(), "systemd");
        assert_eq!(etcd.unit.as_deref(), Some("etcd.service"));
        assert_eq!(
            etcd.etcdctl.as_deref(),
            Some(Path::new("/usr/local/bin/etcdctl"))
        );
        assert_eq!(etcd.etcdutl, None);
        assert!(config.apiserver.is_none());
    }

    #[test]
    fn apiserver_only_host_is_named_and_a_bare_host_or_missing_tool_is_a_problem() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        let bare = sections(root, "", None);
        assert!(bare.problems[0].contains("no etcd found"), "{bare:?}");
        touch(root, "/etc/kubernetes/manifests/kube-apiserver.yaml", 0o600);
        let api = sections(root, "", None);
        assert!(api.problems.is_empty());
        let config = parse(&config_text(&wanted(), &api));
        assert!(config.etcd.is_none());
        assert_eq!(config.host_name.as_deref(), Some("api-1"));
        touch(root, "/etc/kubernetes/manifests/etcd.yaml", 0o600);
        let no_tool = sections(root, "", None);
        assert!(
            no_tool.problems[0].contains("no etcdutl"),
            "{:?}",
            no_tool.problems
        );
        touch(root, "/opt/quorate/bin/etcdutl", 0o755);
        touch(root, "/usr/lib/systemd/system/etcd.service", 0o644);
        let packaged = sections(root, "", None);
        assert!(
            packaged.problems.is_empty(),
            "a unit not enabled is no second etcd"
        );
        assert_eq!(packaged.runtime, "static-pod");
        let wants = under(root, "/etc/systemd/system/multi-user.target.wants");
        std::fs::create_dir_all(&wants).expect("mkdir");
        std::os::unix::fs::symlink(
            "/usr/lib/systemd/system/etcd.service",
            wants.join("etcd.service"),
        )
        .expect("link");
        let both = sections(root, "", None);
        assert!(both.problems[0].contains("both"), "{:?}", both.problems);
    }
}
