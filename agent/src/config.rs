//! The agent's configuration file (TOML). Every table refuses unknown keys, so a typo is an
//! error that names the key instead of a setting silently ignored.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::runtime::UnitSource;

/// Problems loading the configuration; each names the file and says what to do.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the agent config {path}: {source} (pass the right file with --config)")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("agent config {path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("agent config {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// `agent.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Address the gRPC service listens on (mTLS only).
    pub listen: SocketAddr,
    /// Journal, restore lock and staged snapshots live here.
    pub state_dir: PathBuf,
    /// DNS names (SAN) accepted on client certificates signed by `tls.client_ca`.
    pub allowed_clients: Vec<String>,
    pub tls: ServerTls,
    /// Absent: this host runs no etcd member, only a kube-apiserver (an apiserver-only host of an
    /// external etcd cluster); it is fenced and unfenced, and refuses every etcd step.
    #[serde(default)]
    pub etcd: Option<EtcdSection>,
    /// Absent: there is no kube-apiserver on this host.
    #[serde(default)]
    pub apiserver: Option<ApiserverSection>,
    /// An apiserver-only host's name, as the inventory's `[[apiserver]]` entry gives it; default:
    /// the hostname. Not for an etcd member, which is named by its `--name`.
    #[serde(default)]
    pub host_name: Option<String>,
    /// Deadlines of the child processes the agent runs (restore tool, systemctl, probes).
    #[serde(default)]
    pub limits: crate::child::Limits,
    /// Public keys (PEM Ed25519, as `quorate snapshot keygen` writes them) trusted to sign
    /// snapshots. When any is set, this member stages and restores only a snapshot whose
    /// signature one of them made; empty: signatures are not required.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trusted_snapshot_keys: Vec<PathBuf>,
    /// The keys of `trusted_snapshot_keys`, read when the config was loaded.
    #[serde(skip)]
    pub trusted_keys: Vec<quorate_proto::signature::PublicKey>,
}

/// The agent's server certificate and the CA its clients must be signed by.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: PathBuf,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls")
            .field("cert", &self.cert)
            .field("key", &"<path hidden>")
            .field("client_ca", &self.client_ca)
            .finish()
    }
}

/// The path of a private key: shown as hidden in `Debug`, like every key-related setting.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct KeyPath(pub PathBuf);

impl fmt::Debug for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<path hidden>")
    }
}

/// How a component is run on this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RuntimeKind {
    /// A kubelet static pod: running while its manifest is in the watched manifests dir.
    StaticPod,
    /// A systemd unit, stopped and started with `systemctl`.
    Systemd,
}

impl RuntimeKind {
    pub fn name(self) -> &'static str {
        match self {
            RuntimeKind::StaticPod => "static-pod",
            RuntimeKind::Systemd => "systemd",
        }
    }
}

/// The root of systemd's unit search path unless `unit_root` says otherwise.
pub const DEFAULT_UNIT_ROOT: &str = "/";

/// How a component is found and controlled: its static-pod manifest, or its systemd unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Definition {
    StaticPod {
        manifest: PathBuf,
    },
    Systemd {
        /// The unit's name, e.g. `etcd.service` or `etcd@member1.service`.
        unit: String,
        /// Where the unit file and its drop-ins are looked up.
        units: UnitSource,
        /// `systemctl` to run; default `systemctl` on PATH.
        systemctl: PathBuf,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdSection {
    pub runtime: RuntimeKind,
    /// static-pod: the etcd manifest, e.g. /etc/kubernetes/manifests/etcd.yaml.
    #[serde(default)]
    pub manifest: Option<PathBuf>,
    /// systemd: the unit, e.g. `etcd.service` or `etcd@member1.service`.
    #[serde(default)]
    pub unit: Option<String>,
    /// systemd: the root under which systemd's unit search path (`/etc/systemd/system`,
    /// `/run/systemd/system`, `/usr/lib/systemd/system`, ...) is read; default `/`. Where it is
    /// `/` and systemd runs, systemd's own view (`systemctl show`) is read first.
    #[serde(default)]
    pub unit_root: Option<PathBuf>,
    /// systemd (older configs): read the unit and its `<unit>.d/` drop-ins from this one
    /// directory only, instead of the search path under `unit_root`.
    #[serde(default)]
    pub unit_dir: Option<PathBuf>,
    /// systemd: the `systemctl` program; default `systemctl` on PATH.
    #[serde(default)]
    pub systemctl: Option<PathBuf>,
    /// Default: `--data-dir` (or `ETCD_DATA_DIR`, or `data-dir` in the config file) of etcd.
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
    /// Default: `etcdutl` on PATH (etcd >= 3.5).
    #[serde(default)]
    pub etcdutl: Option<PathBuf>,
    /// Used when there is no etcdutl (etcd 3.4): `ETCDCTL_API=3 etcdctl snapshot restore`.
    #[serde(default)]
    pub etcdctl: Option<PathBuf>,
    /// CA of etcd's serving certificate, for probing https listeners; default etcd's
    /// `--trusted-ca-file`.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// Client certificate for etcd's https listeners (health when etcd has no plain metrics
    /// URL); default kubeadm's `healthcheck-client.crt` beside `--trusted-ca-file`.
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    #[serde(default)]
    pub client_key: Option<KeyPath>,
    /// How long etcd may take to exit once asked to stop.
    #[serde(default = "default_stop", with = "humantime_serde")]
    pub stop_timeout: Duration,
    /// How long etcd may take to run and listen once asked to start.
    #[serde(default = "default_start", with = "humantime_serde")]
    pub start_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiserverSection {
    pub runtime: RuntimeKind,
    /// static-pod: the kube-apiserver manifest.
    #[serde(default)]
    pub manifest: Option<PathBuf>,
    /// systemd: the unit, e.g. `kube-apiserver.service`.
    #[serde(default)]
    pub unit: Option<String>,
    /// As `etcd.unit_root`.
    #[serde(default)]
    pub unit_root: Option<PathBuf>,
    /// As `etcd.unit_dir`.
    #[serde(default)]
    pub unit_dir: Option<PathBuf>,
    #[serde(default)]
    pub systemctl: Option<PathBuf>,
    /// CA of the apiserver's serving certificate, to probe `/readyz`.
    pub ca: PathBuf,
    /// A kubeconfig whose current user has a client certificate (kubeadm's
    /// /etc/kubernetes/admin.conf), presented on `/readyz`. Default: none, or admin.conf when the
    /// apiserver runs with `--anonymous-auth=false`.
    #[serde(default)]
    pub kubeconfig: Option<PathBuf>,
    /// Or a client certificate and key presented on `/readyz`.
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    #[serde(default)]
    pub client_key: Option<KeyPath>,
    #[serde(default = "default_stop", with = "humantime_serde")]
    pub stop_timeout: Duration,
    #[serde(default = "default_start", with = "humantime_serde")]
    pub start_timeout: Duration,
}

/// SIGTERM of etcd can take 7-15 s (leader transfer); leave room before calling it stuck.
fn default_stop() -> Duration {
    Duration::from_secs(30)
}

fn default_start() -> Duration {
    Duration::from_secs(60)
}

impl AgentConfig {
    /// What the agent probes health with.
    pub fn health(&self) -> crate::health::HealthConfig {
        let etcd = self.etcd.as_ref();
        crate::health::HealthConfig {
            etcd: crate::health::EtcdCredentials {
                ca: etcd.and_then(|e| e.ca.clone()),
                client_cert: etcd.and_then(|e| e.client_cert.clone()),
                client_key: etcd.and_then(|e| e.client_key.as_ref().map(|k| k.0.clone())),
            },
            readyz: self.apiserver.as_ref().map(ApiserverSection::readyz),
        }
    }
}

impl EtcdSection {
    /// The checked definition (see [`AgentConfig::check`]).
    pub fn definition(&self) -> Definition {
        definition(
            self.runtime,
            self.manifest.as_ref(),
            self.unit.as_ref(),
            units(self.unit_root.as_ref(), self.unit_dir.as_ref()),
            self.systemctl.as_ref(),
        )
    }
}

impl ApiserverSection {
    /// The `/readyz` settings (see [`AgentConfig::check`]: at most one kind of credentials).
    pub fn readyz(&self) -> crate::health::ReadyzConfig {
        use crate::health::{ReadyzConfig, ReadyzCredentials};
        let credentials = match (&self.kubeconfig, &self.client_cert, &self.client_key) {
            (Some(k), _, _) => ReadyzCredentials::Kubeconfig(k.clone()),
            (None, Some(cert), Some(key)) => ReadyzCredentials::ClientCert {
                cert: cert.clone(),
                key: key.0.clone(),
            },
            _ => ReadyzCredentials::Unset,
        };
        ReadyzConfig::new(self.ca.clone(), credentials)
    }

    pub fn definition(&self) -> Definition {
        definition(
            self.runtime,
            self.manifest.as_ref(),
            self.unit.as_ref(),
            units(self.unit_root.as_ref(), self.unit_dir.as_ref()),
            self.systemctl.as_ref(),
        )
    }
}

/// `unit_dir` (one directory, older configs) or the search path under `unit_root`.
fn units(unit_root: Option<&PathBuf>, unit_dir: Option<&PathBuf>) -> UnitSource {
    match (unit_dir, unit_root) {
        (Some(dir), _) => UnitSource::Dir(dir.clone()),
        (None, root) => {
            UnitSource::Root(root.map_or_else(|| PathBuf::from(DEFAULT_UNIT_ROOT), Clone::clone))
        }
    }
}

/// `etcd` → `etcd.service` (as `systemctl stop etcd` means).
fn unit_name(unit: &str) -> String {
    if unit.contains('.') {
        unit.to_owned()
    } else {
        format!("{unit}.service")
    }
}

fn definition(
    runtime: RuntimeKind,
    manifest: Option<&PathBuf>,
    unit: Option<&String>,
    units: UnitSource,
    systemctl: Option<&PathBuf>,
) -> Definition {
    match runtime {
        RuntimeKind::StaticPod => Definition::StaticPod {
            manifest: manifest.cloned().unwrap_or_default(),
        },
        RuntimeKind::Systemd => Definition::Systemd {
            unit: unit_name(unit.map_or("", String::as_str)),
            units,
            systemctl: systemctl.map_or_else(|| PathBuf::from("systemctl"), Clone::clone),
        },
    }
}

/// The systemd keys of a section, for [`check_runtime`].
struct SystemdKeys<'a> {
    unit: Option<&'a String>,
    unit_root: Option<&'a PathBuf>,
    unit_dir: Option<&'a PathBuf>,
    systemctl: Option<&'a PathBuf>,
}

impl SystemdKeys<'_> {
    fn any(&self) -> bool {
        self.unit.is_some()
            || self.unit_root.is_some()
            || self.unit_dir.is_some()
            || self.systemctl.is_some()
    }
}

/// Checks the runtime keys of section `section`: the ones its runtime needs are there, the others
/// are not.
fn check_runtime(
    section: &str,
    runtime: RuntimeKind,
    manifest: Option<&PathBuf>,
    keys: &SystemdKeys<'_>,
) -> Result<(), String> {
    match runtime {
        RuntimeKind::StaticPod => {
            let Some(m) = manifest else {
                return Err(format!(
                    "{section}.runtime = \"static-pod\" needs {section}.manifest (the static-pod \
                     manifest, e.g. /etc/kubernetes/manifests/etcd.yaml)"
                ));
            };
            if m.file_name().is_none() {
                return Err(format!("{section}.manifest must name a file"));
            }
            if keys.any() {
                return Err(format!(
                    "{section}.unit, unit_root, unit_dir and systemctl are for runtime = \
                     \"systemd\"; remove them or change {section}.runtime"
                ));
            }
        }
        RuntimeKind::Systemd => {
            let Some(u) = keys.unit else {
                return Err(format!(
                    "{section}.runtime = \"systemd\" needs {section}.unit (the unit's name, e.g. \
                     \"etcd.service\")"
                ));
            };
            let bad = u.is_empty() || u.contains('/') || u.starts_with('.') || u.contains('\0');
            let parsed = crate::runtime::unit::UnitName::parse(&unit_name(u));
            if bad || parsed.is_none() {
                return Err(format!(
                    "{section}.unit = {u:?} is not a unit name: give the name only, e.g. \
                     \"etcd.service\" or \"etcd@member1.service\", and the root of the unit \
                     search path as {section}.unit_root"
                ));
            }
            if parsed.is_some_and(|n| n.is_template()) {
                return Err(format!(
                    "{section}.unit = {u:?} is a template, not a unit that runs: name the \
                     instance, e.g. \"etcd@member1.service\""
                ));
            }
            if keys.unit_root.is_some() && keys.unit_dir.is_some() {
                return Err(format!(
                    "{section}.unit_root and {section}.unit_dir are both set: keep unit_root \
                     (the root of systemd's unit search path, e.g. \"/\"); unit_dir reads one \
                     directory only"
                ));
            }
            if manifest.is_some() {
                return Err(format!(
                    "{section}.manifest is for runtime = \"static-pod\"; remove it or change \
                     {section}.runtime"
                ));
            }
        }
    }
    Ok(())
}

/// An agent runs for an etcd member, an apiserver-only host, or both on one host (stacked); a
/// name of its own only as an apiserver-only host.
fn check_role(config: &AgentConfig) -> Result<(), String> {
    match (&config.etcd, &config.apiserver, &config.host_name) {
        (None, None, _) => Err(
            "neither [etcd] nor [apiserver]: an etcd member's agent needs [etcd] (and [apiserver] \
             when a kube-apiserver runs beside it); an apiserver-only host's agent needs \
             [apiserver]"
                .into(),
        ),
        (Some(_), _, Some(_)) => Err(
            "host_name is for apiserver-only hosts (no [etcd] section): an etcd member answers to \
             its --name; remove host_name"
                .into(),
        ),
        (None, Some(_), Some(name)) if !valid_host_name(name) => Err(format!(
            "host_name = {name:?} is not a name (letters, digits, - . _): give the name of this \
             host's [[apiserver]] entry in the inventory"
        )),
        _ => Ok(()),
    }
}

fn valid_host_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
}

/// A client certificate needs its key, and a key its certificate.
fn check_pair(section: &str, cert: bool, key: bool) -> Result<(), String> {
    if cert == key {
        Ok(())
    } else {
        Err(format!(
            "{section}.client_cert and {section}.client_key go together: set both or neither"
        ))
    }
}

impl AgentConfig {
    /// Reads and checks `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses `text`; `path` is only used in messages. Reads the trusted snapshot keys.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let mut config: Self = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        config.check(path)?;
        config.trusted_keys =
            crate::signing::load_keys(&config.trusted_snapshot_keys).map_err(|message| {
                ConfigError::Invalid {
                    path: path.to_owned(),
                    message,
                }
            })?;
        Ok(config)
    }

    fn check(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            path: path.to_owned(),
            message,
        };
        if self.allowed_clients.is_empty() {
            return Err(invalid(
                "allowed_clients is empty: list the DNS names on the coordinator's client \
                 certificate, e.g. allowed_clients = [\"quorate-coordinator\"]"
                    .into(),
            ));
        }
        let mut absolute = vec![
            ("state_dir", &self.state_dir),
            ("tls.cert", &self.tls.cert),
            ("tls.key", &self.tls.key),
            ("tls.client_ca", &self.tls.client_ca),
        ];
        check_role(self).map_err(&invalid)?;
        self.limits.check().map_err(&invalid)?;
        let etcd_key = self
            .etcd
            .as_ref()
            .and_then(|e| e.client_key.as_ref().map(|k| k.0.clone()));
        if let Some(e) = &self.etcd {
            let optional = [
                ("etcd.manifest", &e.manifest),
                ("etcd.data_dir", &e.data_dir),
                ("etcd.unit_root", &e.unit_root),
                ("etcd.unit_dir", &e.unit_dir),
                ("etcd.ca", &e.ca),
                ("etcd.client_cert", &e.client_cert),
                ("etcd.client_key", &etcd_key),
            ];
            check_pair("etcd", e.client_cert.is_some(), e.client_key.is_some())
                .map_err(&invalid)?;
            absolute.extend(
                optional
                    .into_iter()
                    .filter_map(|(k, p)| Some((k, p.as_ref()?))),
            );
            check_runtime(
                "etcd",
                e.runtime,
                e.manifest.as_ref(),
                &SystemdKeys {
                    unit: e.unit.as_ref(),
                    unit_root: e.unit_root.as_ref(),
                    unit_dir: e.unit_dir.as_ref(),
                    systemctl: e.systemctl.as_ref(),
                },
            )
            .map_err(&invalid)?;
        }
        let api_key = self
            .apiserver
            .as_ref()
            .and_then(|a| a.client_key.as_ref().map(|k| k.0.clone()));
        if let Some(a) = &self.apiserver {
            check_pair("apiserver", a.client_cert.is_some(), a.client_key.is_some())
                .map_err(&invalid)?;
            if a.kubeconfig.is_some() && a.client_cert.is_some() {
                return Err(invalid(
                    "apiserver.kubeconfig and apiserver.client_cert both give /readyz \
                     credentials: keep one"
                        .into(),
                ));
            }
            let optional = [
                ("apiserver.manifest", &a.manifest),
                ("apiserver.unit_root", &a.unit_root),
                ("apiserver.unit_dir", &a.unit_dir),
                ("apiserver.kubeconfig", &a.kubeconfig),
                ("apiserver.client_cert", &a.client_cert),
                ("apiserver.client_key", &api_key),
            ];
            absolute.extend(
                optional
                    .into_iter()
                    .filter_map(|(k, p)| Some((k, p.as_ref()?))),
            );
            absolute.push(("apiserver.ca", &a.ca));
            check_runtime(
                "apiserver",
                a.runtime,
                a.manifest.as_ref(),
                &SystemdKeys {
                    unit: a.unit.as_ref(),
                    unit_root: a.unit_root.as_ref(),
                    unit_dir: a.unit_dir.as_ref(),
                    systemctl: a.systemctl.as_ref(),
                },
            )
            .map_err(&invalid)?;
        }
        for p in &self.trusted_snapshot_keys {
            absolute.push(("trusted_snapshot_keys", p));
        }
        for (key, p) in absolute {
            if !p.is_absolute() {
                return Err(invalid(format!(
                    "{key} = {:?} must be an absolute path",
                    p.display()
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
listen = "127.0.0.11:7443"
state_dir = "/var/lib/quorate-agent"
allowed_clients = ["quorate-coordinator"]
[tls]
cert = "/etc/quorate/pki/agent.crt"
key = "/etc/quorate/pki/agent.key"
client_ca = "/etc/quorate/pki/ca.crt"
[etcd]
runtime = "static-pod"
manifest = "/etc/kubernetes/manifests/etcd.yaml"
stop_timeout = "45s"
[apiserver]
runtime = "static-pod"
manifest = "/etc/kubernetes/manifests/kube-apiserver.yaml"
ca = "/etc/kubernetes/pki/ca.crt"
start_timeout = "2m"
"#;

    fn parse(text: &str) -> Result<AgentConfig, ConfigError> {
        AgentConfig::parse(text, Path::new("/etc/quorate/agent.toml"))
    }

    #[test]
    fn example_parses_with_defaults_and_durations() {
        let c = parse(EXAMPLE).expect("example config");
        let e = c.etcd.as_ref().expect("etcd section");
        assert_eq!(e.runtime, RuntimeKind::StaticPod);
        assert_eq!(e.stop_timeout, Duration::from_secs(45));
        assert_eq!(e.start_timeout, Duration::from_secs(60));
        assert_eq!(e.data_dir, None);
        assert_eq!(e.etcdutl, None);
        let a = c.apiserver.expect("apiserver section");
        assert_eq!(a.stop_timeout, Duration::from_secs(30));
        assert_eq!(a.start_timeout, Duration::from_secs(120));
    }

    #[test]
    fn apiserver_section_is_optional() {
        let text = EXAMPLE.split("[apiserver]").next().expect("split");
        assert_eq!(parse(text).expect("no apiserver").apiserver, None);
    }

    #[test]
    fn unknown_key_is_refused_by_name() {
        let text = EXAMPLE.replace("stop_timeout = \"45s\"", "stop_timeuot = \"45s\"");
        let err = parse(&text).expect_err("typo").to_string();
        assert!(err.contains("stop_timeuot"), "{err}");
        assert!(err.contains("/etc/quorate/agent.toml"), "{err}");
        let text = EXAMPLE.replace("listen =", "listen_addr =");
        assert!(
            parse(&text)
                .expect_err("typo")
                .to_string()
                .contains("listen_addr")
        );
    }

    #[test]
    fn bad_values_are_refused_with_the_key() {
        let text = EXAMPLE.replace("\"45s\"", "\"45 parsecs\"");
        assert!(
            parse(&text)
                .expect_err("duration")
                .to_string()
                .contains("stop_timeout")
        );
        let text = EXAMPLE.replace("\"static-pod\"", "\"systemd\"");
        assert!(parse(&text).is_err());
        let text = EXAMPLE.replace("\"/var/lib/quorate-agent\"", "\"state\"");
        assert!(
            parse(&text)
                .expect_err("relative")
                .to_string()
                .contains("state_dir")
        );
        let text = EXAMPLE.replace("[\"quorate-coordinator\"]", "[]");
        assert!(
            parse(&text)
                .expect_err("empty")
                .to_string()
                .contains("allowed_clients")
        );
    }

    #[test]
    fn deploy_examples_parse() {
        for text in [
            include_str!("../../deploy/agent.example.toml"),
            include_str!("../../deploy/agent.systemd.example.toml"),
        ] {
            parse(text).expect("a deploy example");
        }
    }

    #[test]
    fn readyz_and_etcd_credentials() {
        use crate::health::ReadyzCredentials;
        let c = parse(EXAMPLE).expect("example");
        let readyz = c.health().readyz.expect("apiserver section");
        assert_eq!(readyz.credentials, ReadyzCredentials::Unset);
        assert_eq!(
            readyz.default_kubeconfig,
            Path::new(crate::health::KUBEADM_ADMIN_CONF)
        );
        let text = format!("{EXAMPLE}kubeconfig = \"/etc/kubernetes/admin.conf\"\n");
        assert_eq!(
            parse(&text)
                .expect("kubeconfig")
                .health()
                .readyz
                .expect("readyz")
                .credentials,
            ReadyzCredentials::Kubeconfig("/etc/kubernetes/admin.conf".into())
        );
        let text = format!(
            "{EXAMPLE}client_cert = \"/pki/readyz.crt\"\nclient_key = \"/pki/readyz.key\"\n"
        );
        let c = parse(&text).expect("client cert");
        assert_eq!(
            c.health().readyz.expect("readyz").credentials,
            ReadyzCredentials::ClientCert {
                cert: "/pki/readyz.crt".into(),
                key: "/pki/readyz.key".into()
            }
        );
        let debug = format!("{c:?}");
        assert!(!debug.contains("readyz.key"), "{debug}");
        let etcd = EXAMPLE.replace(
            "stop_timeout = \"45s\"",
            "client_cert = \"/pki/hc.crt\"\nclient_key = \"/pki/hc.key\"\nca = \"/pki/ca.crt\"",
        );
        let h = parse(&etcd).expect("etcd creds").health();
        assert_eq!(h.etcd.client_key.as_deref(), Some(Path::new("/pki/hc.key")));
        assert!(!format!("{h:?}").contains("hc.key"));
        let refused = [
            (
                format!("{EXAMPLE}client_cert = \"/pki/a.crt\"\n"),
                "go together",
            ),
            (
                format!(
                    "{EXAMPLE}kubeconfig = \"/k\"\nclient_cert = \"/a\"\nclient_key = \"/b\"\n"
                ),
                "keep one",
            ),
            (
                format!("{EXAMPLE}kubeconfig = \"admin.conf\"\n"),
                "apiserver.kubeconfig",
            ),
            (
                EXAMPLE.replace("stop_timeout = \"45s\"", "client_key = \"/k\""),
                "etcd.client_cert and etcd.client_key",
            ),
        ];
        for (text, says) in refused {
            let err = parse(&text).expect_err(says).to_string();
            assert!(err.contains(says), "{says}: {err}");
        }
    }

    #[test]
    fn systemd_sections() {
        let base = EXAMPLE.split("[etcd]").next().expect("split");
        let c = parse(&format!(
            "{base}[etcd]\nruntime = \"systemd\"\nunit = \"etcd\"\n"
        ))
        .expect("systemd etcd, no apiserver");
        assert_eq!(c.apiserver, None);
        assert_eq!(
            c.etcd.expect("etcd section").definition(),
            Definition::Systemd {
                unit: "etcd.service".into(),
                units: UnitSource::Root(PathBuf::from("/")),
                systemctl: PathBuf::from("systemctl"),
            }
        );
        // The search path under another root (a lab host), and a template's instance.
        let text = format!(
            "{base}[etcd]\nruntime = \"systemd\"\nunit = \"etcd@member1.service\"\nunit_root = \"/srv/host1\"\n"
        );
        assert_eq!(
            parse(&text)
                .expect("unit_root")
                .etcd
                .expect("etcd section")
                .definition(),
            Definition::Systemd {
                unit: "etcd@member1.service".into(),
                units: UnitSource::Root(PathBuf::from("/srv/host1")),
                systemctl: PathBuf::from("systemctl"),
            }
        );
        let text = format!(
            "{base}[etcd]\nruntime = \"systemd\"\nunit = \"etcd.service\"\nunit_dir = \"/lib/systemd/system\"\nsystemctl = \"/usr/bin/systemctl\"\n"
        );
        assert!(matches!(
            parse(&text)
                .expect("full")
                .etcd
                .expect("etcd section")
                .definition(),
            Definition::Systemd { units: UnitSource::Dir(d), .. } if d == Path::new("/lib/systemd/system")
        ));
        let refused = [
            ("runtime = \"systemd\"\n", "etcd.unit"),
            (
                "runtime = \"systemd\"\nunit = \"../etcd.service\"\n",
                "not a unit name",
            ),
            (
                "runtime = \"systemd\"\nunit = \"etcd\"\nmanifest = \"/m.yaml\"\n",
                "etcd.manifest",
            ),
            ("runtime = \"static-pod\"\n", "etcd.manifest"),
            (
                "runtime = \"static-pod\"\nmanifest = \"/m.yaml\"\nunit = \"etcd\"\n",
                "etcd.unit",
            ),
            (
                "runtime = \"systemd\"\nunit = \"etcd\"\nunit_dir = \"units\"\n",
                "etcd.unit_dir",
            ),
            (
                "runtime = \"systemd\"\nunit = \"etcd\"\nunit_root = \"host\"\n",
                "etcd.unit_root",
            ),
            (
                "runtime = \"systemd\"\nunit = \"etcd\"\nunit_root = \"/\"\nunit_dir = \"/u\"\n",
                "both set",
            ),
            (
                "runtime = \"systemd\"\nunit = \"etcd@.service\"\n",
                "is a template",
            ),
            (
                "runtime = \"static-pod\"\nmanifest = \"/m.yaml\"\nunit_root = \"/\"\n",
                "unit_root",
            ),
        ];
        for (section, says) in refused {
            let err = parse(&format!("{base}[etcd]\n{section}"))
                .expect_err(section)
                .to_string();
            assert!(err.contains(says), "{section}: {err}");
        }
    }

    /// The agent of an apiserver-only host (external etcd): `[apiserver]`, no `[etcd]`.
    const APISERVER_ONLY: &str = r#"
listen = "10.0.0.21:7443"
state_dir = "/var/lib/quorate-agent"
allowed_clients = ["quorate-coordinator"]
host_name = "api-1"
[tls]
cert = "/etc/quorate/pki/agent.crt"
key = "/etc/quorate/pki/agent.key"
client_ca = "/etc/quorate/pki/ca.crt"
[apiserver]
runtime = "systemd"
unit = "kube-apiserver.service"
ca = "/etc/kubernetes/pki/ca.crt"
"#;

    #[test]
    fn an_apiserver_only_host_needs_no_etcd_section() {
        let c = parse(APISERVER_ONLY).expect("apiserver-only agent");
        assert_eq!(c.etcd, None);
        assert_eq!(c.host_name.as_deref(), Some("api-1"));
        let unnamed = APISERVER_ONLY.replace("host_name = \"api-1\"\n", "");
        assert_eq!(
            parse(&unnamed).expect("hostname by default").host_name,
            None
        );
        parse(include_str!("../../deploy/agent.apiserver.example.toml"))
            .expect("the deploy example parses");
    }

    #[test]
    fn an_agent_with_neither_etcd_nor_apiserver_or_a_misplaced_host_name_is_refused() {
        let base = APISERVER_ONLY.split("[apiserver]").next().expect("split");
        let err = parse(base).expect_err("neither").to_string();
        assert!(
            err.contains("neither [etcd] nor [apiserver]")
                && err.contains("/etc/quorate/agent.toml"),
            "{err}"
        );
        let stacked = format!("host_name = \"cp-1\"\n{EXAMPLE}");
        let err = parse(&stacked)
            .expect_err("host_name on a member")
            .to_string();
        assert!(err.contains("its --name"), "{err}");
        let bad = APISERVER_ONLY.replace("\"api-1\"", "\"api 1;\"");
        let err = parse(&bad).expect_err("bad name").to_string();
        assert!(err.contains("host_name = \"api 1;\""), "{err}");
    }
}
