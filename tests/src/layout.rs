//! A lab host: kubeadm's file layout under a root dir, on its own loopback address.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::json;

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
    pub root: PathBuf,
}

impl Host {
    /// Host `index` (1-based) of a lab on `127.0.<net>.x`: `cp-<index>` at `127.0.<net>.(10+index)`.
    pub fn new(lab_dir: &Path, net: u8, index: u8) -> Self {
        let name = format!("cp-{index}");
        Self {
            root: lab_dir.join("hosts").join(&name),
            ip: Ipv4Addr::new(127, 0, net, 10 + index),
            name,
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
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
    /// The `systemctl` stand-in wrapper of this host.
    pub fn systemctl(&self) -> PathBuf {
        self.path("usr/bin/systemctl")
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
    pub fn metrics_url(&self) -> String {
        format!("http://{}:{METRICS_PORT}", self.ip)
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

    /// The real etcd command line, as kubeadm writes it (paths under this host's root).
    pub fn etcd_command(&self, tools: &EtcdTools, initial_cluster: &str) -> Vec<String> {
        let pki = self.etcd_pki_dir();
        let p = |f: &str| pki.join(f).display().to_string();
        let mut cmd = vec![
            tools.etcd.display().to_string(),
            format!("--advertise-client-urls={}", self.client_url()),
            format!("--cert-file={}", p("server.crt")),
            "--client-cert-auth=true".into(),
            format!("--data-dir={}", self.data_dir().display()),
            format!("--initial-advertise-peer-urls={}", self.peer_url()),
            format!("--initial-cluster={initial_cluster}"),
            "--initial-cluster-state=new".into(),
            format!("--key-file={}", p("server.key")),
            format!("--listen-client-urls={}", self.client_url()),
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
        if tools.version == EtcdVersion::V35 {
            cmd.push("--experimental-initial-corrupt-check=true".into());
            cmd.push("--experimental-watch-progress-notify-interval=5s".into());
        }
        cmd
    }

    /// etcd's settings as kubespray writes them to `/etc/etcd.env`: every flag of
    /// [`Host::etcd_command`] as an `ETCD_*` variable, and kubespray's cluster token.
    pub fn etcd_env(&self, tools: &EtcdTools, initial_cluster: &str) -> String {
        let mut out = format!("# Environment file for etcd {}\n", tools.full_version);
        for flag in &self.etcd_command(tools, initial_cluster)[1..] {
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
            env = self.etcd_env_file().display(),
            etcd = tools.etcd.display(),
        )
    }

    /// A controller stand-in's command line: a process that runs until stopped.
    pub fn controller_command(&self, lab_bin: &Path, name: &str) -> Vec<String> {
        vec![
            lab_bin.display().to_string(),
            "component".into(),
            format!("--name={name}"),
            format!("--node-name={}", self.name),
            // As kubeadm writes it; it also makes the command line unique to this host, as the
            // agent finds a pod's process by its command line.
            format!(
                "--kubeconfig={}",
                self.path(&format!("etc/kubernetes/{name}.conf")).display()
            ),
        ]
    }

    /// The apiserver stand-in's command line (flags named like kube-apiserver's).
    pub fn apiserver_command(&self, lab_bin: &Path) -> Vec<String> {
        let pki = |f: &str| self.pki_dir().join(f).display().to_string();
        vec![
            lab_bin.display().to_string(),
            "apiserver".into(),
            format!("--advertise-address={}", self.ip),
            format!("--secure-port={APISERVER_PORT}"),
            format!("--etcd-servers={}", self.client_url()),
            format!("--etcd-cafile={}", pki("etcd/ca.crt")),
            format!("--etcd-certfile={}", pki("apiserver-etcd-client.crt")),
            format!("--etcd-keyfile={}", pki("apiserver-etcd-client.key")),
            format!("--tls-cert-file={}", pki("apiserver.crt")),
            format!("--tls-private-key-file={}", pki("apiserver.key")),
            format!("--node-name={}", self.name),
        ]
    }
}

/// The other control-plane static pods of a kubeadm node (stand-ins that only run).
pub const CONTROLLERS: [&str; 2] = ["kube-controller-manager", "kube-scheduler"];

/// A kubeadm-style static pod manifest running `command`.
pub fn static_pod(name: &str, component: &str, command: &[String], grace_seconds: u32) -> String {
    let pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": "kube-system",
            "labels": { "component": component, "tier": "control-plane" },
        },
        "spec": {
            "hostNetwork": true,
            "priorityClassName": "system-node-critical",
            "terminationGracePeriodSeconds": grace_seconds,
            "containers": [{
                "name": component,
                "image": format!("registry.k8s.io/{component}"),
                "command": command,
            }],
        },
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
