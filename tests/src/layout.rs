//! A lab host: kubeadm's file layout under a root dir, on its own loopback address.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::hostns::HostNs;
use crate::tools::{EtcdTools, EtcdVersion};

pub const CLIENT_PORT: u16 = 2379;
pub const PEER_PORT: u16 = 2380;
pub const METRICS_PORT: u16 = 2381;
pub const APISERVER_PORT: u16 = 6443;
pub const AGENT_PORT: u16 = 7443;

/// One control-plane host of the lab.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Host {
    pub name: String,
    pub ip: Ipv4Addr,
    /// The host's dir: its `/` when it has namespaces, a prefix of every path otherwise.
    pub root: PathBuf,
    /// The host's namespaces (root only); `None`: a flat host on the shared loopback.
    #[serde(default)]
    pub ns: Option<HostNs>,
}

impl Host {
    /// Host `index` (1-based) of a lab on `127.0.<net>.x`: `cp-<index>` at `127.0.<net>.(10+index)`.
    pub fn new(lab_dir: &Path, net: u8, index: u8) -> Self {
        let name = format!("cp-{index}");
        Self {
            root: lab_dir.join("hosts").join(&name),
            ip: Ipv4Addr::new(127, 0, net, 10 + index),
            name,
            ns: None,
        }
    }

    /// Control-plane host `index` (1-based) of an external etcd cluster: `api-<index>` at
    /// `127.0.<net>.(20+index)`, with kube-apiserver and no etcd.
    pub fn apiserver(lab_dir: &Path, net: u8, index: u8) -> Self {
        let name = format!("api-{index}");
        Self {
            root: lab_dir.join("hosts").join(&name),
            ip: Ipv4Addr::new(127, 0, net, 20 + index),
            name,
            ns: None,
        }
    }

    /// True when the host is its own network and mount namespace (kubeadm-faithful paths).
    pub fn faithful(&self) -> bool {
        self.ns.is_some()
    }

    /// A path on the host as the lab (outside every host) reaches it.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    /// A path on the host as the host's own processes see it: `/rel` on a faithful host.
    pub fn inner(&self, rel: &str) -> PathBuf {
        if self.faithful() {
            Path::new("/").join(rel)
        } else {
            self.root.join(rel)
        }
    }

    /// A path as the host's processes report it (in a journal, a message), as the lab reaches
    /// it: under the host's dir on a faithful host, unchanged on a flat one.
    pub fn outside(&self, path: &Path) -> PathBuf {
        match path.strip_prefix("/") {
            Ok(rel) if self.faithful() => self.root.join(rel),
            _ => path.to_owned(),
        }
    }

    /// [`Host::inner`] as a string, for command lines and config files.
    pub fn inner_str(&self, rel: &str) -> String {
        self.inner(rel).display().to_string()
    }

    pub fn manifests_dir(&self) -> PathBuf {
        self.path("etc/kubernetes/manifests")
    }
    pub fn pki_dir(&self) -> PathBuf {
        self.path("etc/kubernetes/pki")
    }
    pub fn etcd_pki_dir(&self) -> PathBuf {
        self.path("etc/kubernetes/pki/etcd")
    }
    pub fn quorate_pki_dir(&self) -> PathBuf {
        self.path("etc/quorate/pki")
    }
    pub fn data_dir(&self) -> PathBuf {
        self.path("var/lib/etcd")
    }
    pub fn pod_log(&self, pod: &str) -> PathBuf {
        self.path(&format!("var/log/pods/{pod}.log"))
    }
    pub fn unit_dir(&self) -> PathBuf {
        self.path("etc/systemd/system")
    }
    /// kubespray's environment file for etcd.
    pub fn etcd_env_file(&self) -> PathBuf {
        self.path("etc/etcd.env")
    }
    /// The `systemctl` stand-in of this host (on its PATH when it is faithful).
    pub fn systemctl(&self) -> PathBuf {
        if self.faithful() {
            self.path("usr/local/bin/systemctl")
        } else {
            self.path("usr/bin/systemctl")
        }
    }
    pub fn pod_pid_file(&self, pod: &str) -> PathBuf {
        self.path(&format!("run/pods/{pod}.pid"))
    }
    /// The log of a static pod (`etcd`, `kube-apiserver`), of a systemd unit (`etcd.service`) or
    /// of a host process (`kubelet`, `quorate-agent`).
    pub fn log_of(&self, what: &str) -> PathBuf {
        match what {
            "kubelet" | "quorate-agent" => self.path(&format!("var/log/{what}.log")),
            unit if unit.ends_with(".service") => self.path(&format!("var/log/{unit}.log")),
            pod => self.pod_log(pod),
        }
    }
    pub fn client_url(&self) -> String {
        format!("https://{}:{CLIENT_PORT}", self.ip)
    }
    pub fn peer_url(&self) -> String {
        format!("https://{}:{PEER_PORT}", self.ip)
    }
    /// Where etcd serves plain-HTTP `/health`, as the host sees it (kubeadm: its own loopback).
    pub fn metrics_url(&self) -> String {
        if self.faithful() {
            format!("http://127.0.0.1:{METRICS_PORT}")
        } else {
            format!("http://{}:{METRICS_PORT}", self.ip)
        }
    }
    /// etcd's `--listen-client-urls`: kubeadm's loopback and host address.
    pub fn listen_client_urls(&self) -> String {
        if self.faithful() {
            format!("https://127.0.0.1:{CLIENT_PORT},{}", self.client_url())
        } else {
            self.client_url()
        }
    }
    /// The etcd an apiserver on this host uses (kubeadm's stacked etcd: the local member).
    pub fn local_etcd_url(&self) -> String {
        if self.faithful() {
            format!("https://127.0.0.1:{CLIENT_PORT}")
        } else {
            self.client_url()
        }
    }
    pub fn apiserver_url(&self) -> String {
        format!("https://{}:{APISERVER_PORT}", self.ip)
    }
    pub fn agent_url(&self) -> String {
        format!("https://{}:{AGENT_PORT}", self.ip)
    }
    pub fn ports(&self) -> [u16; 5] {
        [
            CLIENT_PORT,
            PEER_PORT,
            METRICS_PORT,
            APISERVER_PORT,
            AGENT_PORT,
        ]
    }

    /// The real etcd command line as kubeadm writes it (flags sorted, as kubeadm sorts them):
    /// `etcd` resolved from the image by the kubelet, paths as the host sees them. `joined`:
    /// a member added by `kubeadm join --control-plane` (`--initial-cluster-state=existing`,
    /// the members known when it joined); otherwise kubeadm init's (`initial_cluster` of one) or,
    /// on a flat host, the whole cluster started at once.
    pub fn etcd_command(
        &self,
        tools: &EtcdTools,
        initial_cluster: &str,
        state: ClusterState,
        wal_dir: Option<&str>,
    ) -> Vec<String> {
        let p = |f: &str| self.inner_str(&format!("etc/kubernetes/pki/etcd/{f}"));
        let mut flags = vec![
            format!("--advertise-client-urls={}", self.client_url()),
            format!("--cert-file={}", p("server.crt")),
            "--client-cert-auth=true".into(),
            format!("--data-dir={}", self.inner_str("var/lib/etcd")),
            format!("--initial-advertise-peer-urls={}", self.peer_url()),
            format!("--initial-cluster={initial_cluster}"),
            format!("--key-file={}", p("server.key")),
            format!("--listen-client-urls={}", self.listen_client_urls()),
            format!("--listen-metrics-urls={}", self.metrics_url()),
            format!("--listen-peer-urls={}", self.peer_url()),
            format!("--name={}", self.name),
            format!("--peer-cert-file={}", p("peer.crt")),
            "--peer-client-cert-auth=true".into(),
            format!("--peer-key-file={}", p("peer.key")),
            format!("--peer-trusted-ca-file={}", p("ca.crt")),
            "--snapshot-count=10000".into(),
            format!("--trusted-ca-file={}", p("ca.crt")),
        ];
        if let Some(wal) = wal_dir {
            flags.push(format!("--wal-dir={}", self.inner_str(wal)));
        }
        match state {
            ClusterState::Init => {}
            ClusterState::New => flags.push("--initial-cluster-state=new".into()),
            ClusterState::Existing => flags.push("--initial-cluster-state=existing".into()),
        }
        if tools.version != EtcdVersion::V34 {
            flags.push("--experimental-initial-corrupt-check=true".into());
            flags.push("--experimental-watch-progress-notify-interval=5s".into());
        }
        flags.sort();
        std::iter::once("etcd".to_owned()).chain(flags).collect()
    }

    /// etcd's settings as kubespray writes them to `/etc/etcd.env`: every flag of
    /// [`Host::etcd_command`] as an `ETCD_*` variable, and kubespray's cluster token.
    pub fn etcd_env(
        &self,
        tools: &EtcdTools,
        initial_cluster: &str,
        wal_dir: Option<&str>,
    ) -> String {
        let mut out = format!("# Environment file for etcd {}\n", tools.full_version);
        for flag in &self.etcd_command(tools, initial_cluster, ClusterState::New, wal_dir)[1..] {
            if let Some((k, v)) = flag.trim_start_matches("--").split_once('=') {
                out.push_str(&format!(
                    "ETCD_{}={v}\n",
                    k.to_uppercase().replace('-', "_")
                ));
            }
        }
        out.push_str("ETCD_INITIAL_CLUSTER_TOKEN=k8s_etcd\n");
        out
    }

    /// Where the etcd binary of a systemd host is (kubespray installs it in /usr/local/bin).
    pub fn etcd_binary(&self, tools: &EtcdTools) -> String {
        if self.faithful() {
            "/usr/local/bin/etcd".into()
        } else {
            tools.etcd.display().to_string()
        }
    }

    /// kubespray's etcd unit: the bare binary, every setting in the environment file.
    pub fn etcd_unit(&self, tools: &EtcdTools) -> String {
        format!(
            "[Unit]\n\
             Description=etcd ({name})\n\
             After=network.target\n\
             \n\
             [Service]\n\
             Type=notify\n\
             User=root\n\
             EnvironmentFile={env}\n\
             ExecStart={etcd}\n\
             NotifyAccess=all\n\
             Restart=always\n\
             RestartSec=10s\n\
             TimeoutStopSec=30s\n\
             LimitNOFILE=40000\n\
             \n\
             [Install]\n\
             WantedBy=multi-user.target\n",
            name = self.name,
            env = self.inner_str("etc/etcd.env"),
            etcd = self.etcd_binary(tools),
        )
    }

    /// A controller stand-in's command line, as kubeadm writes the component's (its own
    /// kubeconfig; on a flat host that path is also what tells the hosts' processes apart).
    pub fn controller_command(&self, name: &str) -> Vec<String> {
        let conf = match name {
            "kube-controller-manager" => "controller-manager.conf",
            _ => "scheduler.conf",
        };
        vec![
            name.to_owned(),
            "--bind-address=127.0.0.1".into(),
            format!(
                "--kubeconfig={}",
                self.inner_str(&format!("etc/kubernetes/{conf}"))
            ),
            "--leader-elect=true".into(),
        ]
    }

    /// The apiserver stand-in's command line with kube-apiserver's flags, as kubeadm writes
    /// them (sorted): `etcd_servers` is the local member on stacked etcd, every member on
    /// external etcd. `no_anonymous_auth`: `--anonymous-auth=false`, as hardened clusters set.
    pub fn apiserver_command_for(
        &self,
        etcd_servers: &str,
        no_anonymous_auth: bool,
    ) -> Vec<String> {
        let pki = |f: &str| self.inner_str(&format!("etc/kubernetes/pki/{f}"));
        let mut flags = vec![
            format!("--advertise-address={}", self.ip),
            format!("--client-ca-file={}", pki("ca.crt")),
            format!("--etcd-cafile={}", pki("etcd/ca.crt")),
            format!("--etcd-certfile={}", pki("apiserver-etcd-client.crt")),
            format!("--etcd-keyfile={}", pki("apiserver-etcd-client.key")),
            format!("--etcd-servers={etcd_servers}"),
            format!("--node-name={}", self.name),
            format!("--secure-port={APISERVER_PORT}"),
            format!("--tls-cert-file={}", pki("apiserver.crt")),
            format!("--tls-private-key-file={}", pki("apiserver.key")),
        ];
        if no_anonymous_auth {
            flags.push("--anonymous-auth=false".into());
        }
        flags.sort();
        std::iter::once("kube-apiserver".to_owned())
            .chain(flags)
            .collect()
    }

    /// kubeadm's etcd static pod for this host.
    pub fn etcd_manifest(&self, tools: &EtcdTools, command: &[String]) -> String {
        let wal = command
            .iter()
            .find_map(|a| a.strip_prefix("--wal-dir="))
            .map(str::to_owned);
        let probe = |path: &str, failures: u32, delay: u32| {
            json!({
                "failureThreshold": failures,
                "httpGet": { "host": "127.0.0.1", "path": path, "port": METRICS_PORT, "scheme": "HTTP" },
                "initialDelaySeconds": delay,
                "periodSeconds": 10,
                "timeoutSeconds": 15,
            })
        };
        // kubeadm probes /livez and /readyz from etcd 3.5.11 on, /health before.
        let patch = |v: &str| v.strip_prefix("3.5.").and_then(|p| p.parse::<u32>().ok());
        let (live, ready) = if patch(&tools.full_version).is_some_and(|p| p >= 11) {
            ("/livez", "/readyz")
        } else {
            (
                "/health?exclude=NOSPACE&serializable=true",
                "/health?serializable=false",
            )
        };
        // kubeadm 1.31+ (etcd 3.5.15+) also probes readiness, every second.
        let readiness = if live == "/livez" {
            json!({
                "failureThreshold": 3,
                "httpGet": { "host": "127.0.0.1", "path": "/readyz", "port": METRICS_PORT, "scheme": "HTTP" },
                "periodSeconds": 1,
                "timeoutSeconds": 15,
            })
        } else {
            serde_json::Value::Null
        };
        let mut pod = json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "annotations": {
                    "kubeadm.kubernetes.io/etcd.advertise-client-urls": self.client_url(),
                },
                "creationTimestamp": null,
                "labels": { "component": "etcd", "tier": "control-plane" },
                "name": "etcd",
                "namespace": "kube-system",
            },
            "spec": {
                "containers": [{
                    "command": command,
                    "image": etcd_image(tools),
                    "imagePullPolicy": "IfNotPresent",
                    "livenessProbe": probe(live, 8, 10),
                    "name": "etcd",
                    "resources": { "requests": { "cpu": "100m", "memory": "100Mi" } },
                    "readinessProbe": readiness,
                    "startupProbe": probe(ready, 24, 10),
                    "volumeMounts": volume_mounts(wal.as_deref()),
                }],
                "hostNetwork": true,
                "priority": 2_000_001_000,
                "priorityClassName": "system-node-critical",
                "securityContext": { "seccompProfile": { "type": "RuntimeDefault" } },
                "volumes": self.volumes(wal.as_deref()),
            },
            "status": {},
        });
        if let Some(c) = pod["spec"]["containers"][0].as_object_mut()
            && c["readinessProbe"].is_null()
        {
            c.remove("readinessProbe");
        }
        serde_yaml_ng::to_string(&pod).expect("a pod manifest always serialises")
    }
}

/// The etcd container's mounts: kubeadm's two, and the WAL dir (kubeadm's local etcd has no
/// extra volumes: operators add it with a `--patches` patch, as here).
fn volume_mounts(wal: Option<&str>) -> serde_json::Value {
    let mut mounts = vec![
        json!({ "mountPath": "/var/lib/etcd", "name": "etcd-data" }),
        json!({ "mountPath": "/etc/kubernetes/pki/etcd", "name": "etcd-certs" }),
    ];
    if let Some(wal) = wal {
        mounts.push(json!({ "mountPath": wal, "name": "etcd-wal" }));
    }
    serde_json::Value::Array(mounts)
}

impl Host {
    fn volumes(&self, wal: Option<&str>) -> serde_json::Value {
        let host_path = |path: String, name: &str| json!({ "hostPath": { "path": path, "type": "DirectoryOrCreate" }, "name": name });
        let mut volumes = vec![
            host_path(self.inner_str("etc/kubernetes/pki/etcd"), "etcd-certs"),
            host_path(self.inner_str("var/lib/etcd"), "etcd-data"),
        ];
        if let Some(wal) = wal {
            volumes.push(host_path(wal.to_owned(), "etcd-wal"));
        }
        serde_json::Value::Array(volumes)
    }
}

/// kubeadm's etcd image for these binaries, e.g. `registry.k8s.io/etcd:3.5.16-0`.
pub fn etcd_image(tools: &EtcdTools) -> String {
    format!("registry.k8s.io/etcd:{}-0", tools.full_version)
}

/// The Kubernetes release of the control-plane stand-ins' images.
pub const KUBERNETES_VERSION: &str = "v1.32.0";

/// How a member's etcd joins its cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterState {
    /// `kubeadm init`: a cluster of one, no `--initial-cluster-state`.
    Init,
    /// Every member started together (flat hosts, systemd hosts).
    New,
    /// `kubeadm join --control-plane`: added to a running cluster.
    Existing,
}

/// The other control-plane static pods of a kubeadm node (stand-ins that only run).
pub const CONTROLLERS: [&str; 2] = ["kube-controller-manager", "kube-scheduler"];

/// A kubeadm-style control-plane static pod manifest running `command` from the component's image.
pub fn static_pod(host: &Host, component: &str, command: &[String], grace_seconds: u32) -> String {
    let pki = host.inner_str("etc/kubernetes/pki");
    let pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "creationTimestamp": null,
            "labels": { "component": component, "tier": "control-plane" },
            "name": component,
            "namespace": "kube-system",
        },
        "spec": {
            "containers": [{
                "command": command,
                "image": format!("registry.k8s.io/{component}:{KUBERNETES_VERSION}"),
                "imagePullPolicy": "IfNotPresent",
                "name": component,
                "volumeMounts": [
                    { "mountPath": "/etc/kubernetes/pki", "name": "k8s-certs", "readOnly": true },
                ],
            }],
            "hostNetwork": true,
            "priority": 2_000_001_000,
            "priorityClassName": "system-node-critical",
            "securityContext": { "seccompProfile": { "type": "RuntimeDefault" } },
            "terminationGracePeriodSeconds": grace_seconds,
            "volumes": [
                { "hostPath": { "path": pki, "type": "DirectoryOrCreate" }, "name": "k8s-certs" },
            ],
        },
        "status": {},
    });
    serde_yaml_ng::to_string(&pod).expect("a pod manifest always serialises")
}

/// `name=peer-url,...` for every host.
pub fn initial_cluster(hosts: &[Host]) -> String {
    hosts
        .iter()
        .map(|h| format!("{}={}", h.name, h.peer_url()))
        .collect::<Vec<_>>()
        .join(",")
}
