//! Static-pod manifests: the command line of a Kubernetes Pod's first container, and the etcd and
//! kube-apiserver flags the agent needs from it.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{AgentError, Result};

/// The parts of a Pod the agent reads. Unknown fields are ignored on purpose: real manifests are
/// full of fields that only matter to the container runtime.
#[derive(Deserialize)]
struct Pod {
    spec: Spec,
}

#[derive(Deserialize)]
struct Spec {
    containers: Vec<Container>,
}

#[derive(Deserialize)]
struct Container {
    /// The container image, e.g. `registry.k8s.io/etcd:3.5.16-0`.
    #[serde(default)]
    image: Option<String>,
    #[serde(default)]
    command: Vec<String>,
    #[serde(default)]
    args: Vec<String>,
}

/// A component's command line: a static pod's (`command` + `args` of its first container), or
/// the one a systemd unit's settings amount to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodCommand {
    /// The file that defines it (manifest or unit file).
    pub path: PathBuf,
    pub argv: Vec<String>,
    /// Where the flags come from, for messages, e.g. "static-pod manifest /etc/.../etcd.yaml".
    pub source: String,
}

impl PodCommand {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| AgentError::io("reading manifest", path, e))?;
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let bad = |why: String| {
            AgentError::Precondition(format!(
                "static-pod manifest {} {why}; fix the manifest or point the agent config at the right file",
                path.display()
            ))
        };
        let pod: Pod =
            serde_yaml_ng::from_str(text).map_err(|e| bad(format!("is not a Pod: {e}")))?;
        let container = pod
            .spec
            .containers
            .into_iter()
            .next()
            .ok_or_else(|| bad("has no containers".into()))?;
        let mut argv = container.command;
        argv.extend(container.args);
        if argv.is_empty() {
            return Err(bad("has no command".into()));
        }
        Ok(Self {
            path: path.to_owned(),
            argv,
            source: format!("static-pod manifest {}", path.display()),
        })
    }

    /// A boolean flag as Go's flag package reads it (`--k`, `--k=true|1|t|T|TRUE|True`, and the
    /// false forms); `default` when absent, and for a value Go would refuse.
    pub fn bool_flag(&self, name: &str, default: bool) -> bool {
        let long = format!("--{name}");
        let eq = format!("{long}=");
        let mut value = None;
        for arg in self.argv.iter().skip(1) {
            if *arg == long {
                value = Some(true);
            } else if let Some(v) = arg.strip_prefix(&eq) {
                value = match v {
                    "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
                    "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
                    _ => value,
                };
            }
        }
        value.unwrap_or(default)
    }

    /// The value of `--name=v` or `--name v`; the last occurrence wins, as in Go's flag package.
    pub fn flag(&self, name: &str) -> Option<&str> {
        let long = format!("--{name}");
        let eq = format!("{long}=");
        let mut found = None;
        let mut args = self.argv.iter().skip(1).peekable();
        while let Some(arg) = args.next() {
            if let Some(v) = arg.strip_prefix(&eq) {
                found = Some(v);
            } else if *arg == long
                && let Some(v) = args.peek().filter(|v| !v.starts_with("--"))
            {
                found = Some(v.as_str());
                args.next();
            }
        }
        found
    }

    /// A comma-separated flag as a list (empty when absent).
    pub fn flag_list(&self, name: &str) -> Vec<String> {
        self.flag(name)
            .map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default()
    }

    fn required(&self, name: &str) -> Result<&str> {
        self.flag(name).ok_or_else(|| {
            AgentError::Precondition(format!("{} has no --{name} flag", self.source))
        })
    }
}

/// What the etcd manifest says about this member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdMember {
    pub command: PodCommand,
    pub name: String,
    pub data_dir: PathBuf,
    /// `--wal-dir` (also `ETCD_WAL_DIR` or `wal-dir` in a config file, which the systemd
    /// runtime turns into the flag); `None` when unset or empty.
    pub wal_dir: Option<PathBuf>,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
    pub listen_urls: Vec<String>,
    /// First plain-HTTP `--listen-metrics-urls` entry, where `/health` answers without a leader.
    pub metrics_url: Option<String>,
    /// Every `--listen-metrics-urls` entry (http or https).
    pub metrics_urls: Vec<String>,
    /// `--listen-client-urls`.
    pub client_listen_urls: Vec<String>,
    /// `--trusted-ca-file`: the CA of client certificates (kubeadm's etcd CA signs the server
    /// certificate too).
    pub trusted_ca_file: Option<PathBuf>,
    /// `--client-cert-auth`: clients must present a certificate from `trusted_ca_file`.
    pub client_cert_auth: bool,
}

impl EtcdMember {
    pub fn from_command(command: PodCommand) -> Result<Self> {
        let name = command.required("name")?.to_owned();
        let data_dir = PathBuf::from(command.required("data-dir")?);
        let wal_dir = command
            .flag("wal-dir")
            .filter(|w| !w.trim().is_empty())
            .map(PathBuf::from);
        let peer_urls = command.flag_list("initial-advertise-peer-urls");
        if peer_urls.is_empty() {
            command.required("initial-advertise-peer-urls")?;
        }
        let client_urls = command.flag_list("advertise-client-urls");
        let metrics = command.flag_list("listen-metrics-urls");
        let metrics_url = metrics.iter().find(|u| u.starts_with("http://")).cloned();
        let client_listen_urls = command.flag_list("listen-client-urls");
        let mut listen_urls = client_listen_urls.clone();
        listen_urls.extend(command.flag_list("listen-peer-urls"));
        listen_urls.extend(metrics.iter().cloned());
        let trusted_ca_file = command.flag("trusted-ca-file").map(PathBuf::from);
        let client_cert_auth = command.bool_flag("client-cert-auth", false);
        Ok(Self {
            command,
            name,
            data_dir,
            wal_dir,
            peer_urls,
            client_urls,
            listen_urls,
            metrics_url,
            metrics_urls: metrics,
            client_listen_urls,
            trusted_ca_file,
            client_cert_auth,
        })
    }

    pub fn load(path: &Path) -> Result<Self> {
        Self::from_command(PodCommand::load(path)?)
    }

    /// The address:port pairs etcd listens on.
    pub fn ports(&self) -> Vec<(String, u16)> {
        self.listen_urls
            .iter()
            .filter_map(|u| host_port(u))
            .collect()
    }
}

/// What the kube-apiserver manifest says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Apiserver {
    pub command: PodCommand,
    pub address: String,
    pub port: u16,
    /// `--anonymous-auth` (default true): false means `/readyz` needs client credentials.
    pub anonymous_auth: bool,
}

impl Apiserver {
    pub fn from_command(command: PodCommand) -> Result<Self> {
        let address = command.required("advertise-address")?.to_owned();
        let port = match command.flag("secure-port") {
            None => 6443,
            Some(p) => p.parse().map_err(|_| {
                AgentError::Precondition(format!(
                    "{}: --secure-port={p} is not a port",
                    command.source
                ))
            })?,
        };
        let anonymous_auth = command.bool_flag("anonymous-auth", true);
        Ok(Self {
            command,
            address,
            port,
            anonymous_auth,
        })
    }

    pub fn readyz_url(&self) -> String {
        if self.address.contains(':') {
            format!("https://[{}]:{}/readyz", self.address, self.port)
        } else {
            format!("https://{}:{}/readyz", self.address, self.port)
        }
    }
}

/// The image of a static pod's first container; `None` when it names none.
pub fn load_image(path: &Path) -> Result<Option<String>> {
    let text =
        std::fs::read_to_string(path).map_err(|e| AgentError::io("reading manifest", path, e))?;
    let pod: Pod = serde_yaml_ng::from_str(&text).map_err(|e| {
        AgentError::Precondition(format!(
            "static-pod manifest {} is not a Pod: {e}",
            path.display()
        ))
    })?;
    Ok(pod.spec.containers.into_iter().next().and_then(|c| c.image))
}

/// The etcd version an image reference names by its tag: `registry.k8s.io/etcd:3.5.16-0`,
/// `quay.io/coreos/etcd:v3.5.16`, `my.registry:5000/etcd:3.5.16-0@sha256:...` → `3.5.16`. An
/// image without a version tag (`:latest`, none, a digest only) gives why it says nothing.
pub fn image_version(image: &str) -> std::result::Result<String, String> {
    let (name_tag, digest) = match image.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (image, None),
    };
    let last_slash = name_tag.rfind('/');
    let tag = name_tag
        .rfind(':')
        .filter(|&i| last_slash.is_none_or(|s| i > s))
        .map(|i| &name_tag[i + 1..]);
    let Some(tag) = tag else {
        return Err(match digest {
            Some(_) => format!(
                "image {image} is pinned by digest only: its etcd version cannot be read from it"
            ),
            None => format!("image {image} has no tag (latest): its etcd version is unknown"),
        });
    };
    version_of_tag(tag).ok_or_else(|| {
        format!("the tag {tag:?} of image {image} is not an etcd version (like 3.5.16-0)")
    })
}

/// `3.5.16-0`, `v3.5.16`, `3.5.16-debian-12-r5`, `3.5` → the dotted numbers.
fn version_of_tag(tag: &str) -> Option<String> {
    let rest = tag.strip_prefix('v').unwrap_or(tag);
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    let (version, suffix) = rest.split_at(end);
    let parts: Vec<&str> = version.split('.').collect();
    let numeric = parts.iter().all(|p| !p.is_empty() && p.len() <= 6);
    let separated = suffix.is_empty() || suffix.starts_with(['-', '_', '+']);
    (numeric && (2..=3).contains(&parts.len()) && separated).then(|| version.to_owned())
}

/// `scheme://host:port[/...]` → (host, port).
pub fn host_port(url: &str) -> Option<(String, u16)> {
    let (_, rest) = url.split_once("://")?;
    let authority = rest.split('/').next()?;
    let (host, port) = authority.rsplit_once(':')?;
    Some((host.trim_matches(['[', ']']).to_owned(), port.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape kubeadm writes (and the lab copies), flags as `--k=v`.
    pub const ETCD: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: etcd
  namespace: kube-system
  labels: {component: etcd, tier: control-plane}
spec:
  hostNetwork: true
  containers:
  - name: etcd
    image: registry.k8s.io/etcd:3.5.1-0
    command:
    - /usr/local/bin/etcd
    - --advertise-client-urls=https://127.0.0.11:2379
    - --cert-file=/etc/kubernetes/pki/etcd/server.crt
    - --client-cert-auth=true
    - --data-dir=/var/lib/etcd
    - --initial-advertise-peer-urls=https://127.0.0.11:2380
    - --initial-cluster=cp-1=https://127.0.0.11:2380,cp-2=https://127.0.0.12:2380
    - --initial-cluster-state=new
    - --listen-client-urls=https://127.0.0.1:2379,https://127.0.0.11:2379
    - --listen-metrics-urls=http://127.0.0.11:2381
    - --listen-peer-urls=https://127.0.0.11:2380
    - --name=cp-1
    - --snapshot-count=10000
"#;

    #[test]
    fn kubeadm_etcd_manifest() {
        let m = EtcdMember::from_command(
            PodCommand::parse(ETCD, Path::new("/m/etcd.yaml")).expect("parse"),
        )
        .expect("member");
        assert_eq!(m.name, "cp-1");
        assert_eq!(m.data_dir, PathBuf::from("/var/lib/etcd"));
        assert_eq!(m.peer_urls, vec!["https://127.0.0.11:2380"]);
        assert_eq!(m.client_urls, vec!["https://127.0.0.11:2379"]);
        assert_eq!(m.metrics_url.as_deref(), Some("http://127.0.0.11:2381"));
        assert_eq!(m.command.argv[0], "/usr/local/bin/etcd");
        assert_eq!(m.command.argv.len(), 13);
        let ports = m.ports();
        assert_eq!(ports.len(), 4);
        assert!(ports.contains(&("127.0.0.11".to_owned(), 2381)));
    }

    #[test]
    fn space_separated_flags_and_args() {
        let text = r#"
spec:
  containers:
  - command: [etcd]
    args: ["--name", "m1", "--data-dir", "/d", "--initial-advertise-peer-urls", "http://a:1,http://b:2"]
"#;
        let m = EtcdMember::from_command(PodCommand::parse(text, Path::new("x")).expect("parse"))
            .expect("member");
        assert_eq!(m.name, "m1");
        assert_eq!(m.wal_dir, None);
        assert_eq!(m.peer_urls.len(), 2);
        assert_eq!(m.metrics_url, None);
    }

    #[test]
    fn wal_dir_from_a_flag_an_environment_variable_or_a_config_file() {
        use crate::runtime::unit::{config_flags, etcd_flag_of_env};
        let with = |extra: &str| {
            let text = ETCD.replace(
                "    - --name=cp-1\n",
                &format!("    - --name=cp-1\n    - \"{extra}\"\n"),
            );
            EtcdMember::from_command(PodCommand::parse(&text, Path::new("/m")).expect("parse"))
                .expect("member")
                .wal_dir
        };
        assert_eq!(with("--wal-dir=/w"), Some(PathBuf::from("/w")));
        assert_eq!(with("--wal-dir="), None);
        let env = format!(
            "--{}=/env/wal",
            etcd_flag_of_env("ETCD_WAL_DIR").expect("flag")
        );
        assert_eq!(with(&env), Some(PathBuf::from("/env/wal")));
        let file = config_flags("wal-dir: /cfg/wal\nname: x\n", Path::new("c.yaml")).expect("yaml");
        assert_eq!(with(&file[0]), Some(PathBuf::from("/cfg/wal")));
    }

    #[test]
    fn missing_flag_names_the_file() {
        let text = ETCD.replace("    - --name=cp-1\n", "");
        let err = EtcdMember::from_command(
            PodCommand::parse(&text, Path::new("/m/etcd.yaml")).expect("parse"),
        )
        .expect_err("no name")
        .to_string();
        assert!(
            err.contains("--name") && err.contains("/m/etcd.yaml"),
            "{err}"
        );
        assert!(PodCommand::parse("kind: Pod", Path::new("/m/x.yaml")).is_err());
    }

    #[test]
    fn apiserver_readyz() {
        let text = "spec:\n  containers:\n  - command: [kube-apiserver, --advertise-address=10.0.0.1, --secure-port=6443]\n";
        let a = Apiserver::from_command(PodCommand::parse(text, Path::new("a")).expect("parse"))
            .expect("apiserver");
        assert_eq!(a.readyz_url(), "https://10.0.0.1:6443/readyz");
        assert!(
            a.anonymous_auth,
            "anonymous auth is kube-apiserver's default"
        );
        for (flag, anonymous) in [
            ("--anonymous-auth=false", false),
            ("--anonymous-auth=False", false),
            ("--anonymous-auth=0", false),
            ("--anonymous-auth=true", true),
            ("--anonymous-auth", true),
            ("--anonymous-auth=maybe", true),
        ] {
            let text = text.replace("--secure-port=6443", flag);
            let a =
                Apiserver::from_command(PodCommand::parse(&text, Path::new("a")).expect("parse"))
                    .expect("apiserver");
            assert_eq!(a.anonymous_auth, anonymous, "{flag}");
        }
    }

    #[test]
    fn kubeadm_manifest_image_and_health_flags() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("etcd.yaml");
        std::fs::write(&path, ETCD).expect("write");
        assert_eq!(
            load_image(&path).expect("image").as_deref(),
            Some("registry.k8s.io/etcd:3.5.1-0")
        );
        let m = EtcdMember::load(&path).expect("member");
        assert!(m.client_cert_auth);
        assert_eq!(m.trusted_ca_file, None);
        assert_eq!(m.metrics_urls, vec!["http://127.0.0.11:2381"]);
        assert_eq!(
            m.client_listen_urls,
            vec!["https://127.0.0.1:2379", "https://127.0.0.11:2379"]
        );
        std::fs::write(&path, "spec:\n  containers:\n  - command: [etcd]\n").expect("write");
        assert_eq!(load_image(&path).expect("no image"), None);
    }

    #[test]
    fn etcd_version_from_the_image_tag() {
        let known = [
            ("registry.k8s.io/etcd:3.5.16-0", "3.5.16"),
            ("registry.k8s.io/etcd:3.5.1-0", "3.5.1"),
            ("k8s.gcr.io/etcd:3.4.13-0", "3.4.13"),
            ("quay.io/coreos/etcd:v3.5.16", "3.5.16"),
            ("gcr.io/etcd-development/etcd:v3.5.17-arm64", "3.5.17"),
            ("bitnami/etcd:3.5.16-debian-12-r5", "3.5.16"),
            ("etcd:3.5", "3.5"),
            ("my.registry:5000/k8s/etcd:3.5.16-0", "3.5.16"),
            (
                "my.registry:5000/etcd:3.5.16-0@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
                "3.5.16",
            ),
        ];
        for (image, version) in known {
            assert_eq!(image_version(image).as_deref(), Ok(version), "{image}");
        }
        let unknown = [
            (
                "registry.k8s.io/etcd@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
                "pinned by digest only",
            ),
            ("my.registry:5000/etcd", "has no tag"),
            ("registry.k8s.io/etcd", "has no tag"),
            ("registry.k8s.io/etcd:latest", "not an etcd version"),
            ("registry.k8s.io/etcd:3", "not an etcd version"),
            ("registry.k8s.io/etcd:3.5.16rc1", "not an etcd version"),
        ];
        for (image, says) in unknown {
            let why = image_version(image).expect_err(image);
            assert!(why.contains(says) && why.contains(image), "{image}: {why}");
        }
    }
}
