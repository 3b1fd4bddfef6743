//! `lab up` / `lab down`: N control-plane hosts with real etcd, run either as static pods by a
//! kubelet stand-in per host (stacked etcd, with an apiserver stand-in) or as systemd units through
//! a `systemctl` stand-in (external etcd, kubespray's layout, no apiserver), and the files an
//! operator (or quorate) needs to drive them.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::Signal;
use quorate::inventory::{ClusterSection, Inventory, Member};
use quorate_proto::durable;
use quorate_proto::tls::TlsFiles;
use serde::{Deserialize, Serialize};

use crate::hostns::{self, HostNs};
use crate::layout::{self, ClusterState, Host};
use crate::pki::LabPki;
use crate::procs;
use crate::store;
use crate::tools::{EtcdTools, EtcdVersion};

/// How the lab's hosts run etcd.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LabRuntime {
    /// kubeadm's stacked etcd: static pods run by a kubelet stand-in, with an apiserver stand-in.
    #[default]
    StaticPod,
    /// An external etcd cluster the kubespray way: `etcd.service` with `/etc/etcd.env`, run by a
    /// `systemctl` stand-in; no apiserver on the etcd hosts.
    Systemd,
}

impl std::str::FromStr for LabRuntime {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        match s {
            "static-pod" => Ok(Self::StaticPod),
            "systemd" => Ok(Self::Systemd),
            other => bail!("runtime {other} is not one the lab knows (static-pod or systemd)"),
        }
    }
}

/// A file system the lab can give a host's data or WAL dir, mounted at that dir (as etcd on a
/// dedicated disk is).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Disk {
    Tmpfs,
    /// A loop-mounted ext4 image (with its `lost+found`, as a real disk has).
    Ext4,
}

impl std::str::FromStr for Disk {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        match s {
            "tmpfs" => Ok(Self::Tmpfs),
            "ext4" => Ok(Self::Ext4),
            other => bail!("disk {other} is not one the lab knows (tmpfs or ext4)"),
        }
    }
}

/// The production layouts a lab can have, beyond kubeadm's defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabLayout {
    /// The data dir (`/var/lib/etcd`) is a mount point of its own.
    #[serde(default)]
    pub data_mount: Option<Disk>,
    /// etcd keeps its WAL apart, in `--wal-dir=/var/lib/etcd-wal`.
    #[serde(default)]
    pub wal_dir: bool,
    /// ... and that WAL dir is a mount point of its own.
    #[serde(default)]
    pub wal_mount: Option<Disk>,
    /// External etcd (etcd hosts under systemd) with this many control-plane hosts whose
    /// apiservers use every etcd member; 0: stacked etcd or etcd alone.
    #[serde(default)]
    pub apiserver_hosts: u8,
    /// The apiservers refuse anonymous requests (`--anonymous-auth=false`).
    #[serde(default)]
    pub no_anonymous_auth: bool,
}

/// Where a lab puts etcd's WAL when [`LabLayout::wal_dir`] is set: a dir on the WAL disk, not
/// the disk's mount point itself, as etcd makes a new WAL by renaming a temporary dir over the
/// WAL dir (a mount point cannot be renamed over: EBUSY).
pub const WAL_DIR: &str = "var/lib/etcd-wal/wal";

/// Where the WAL disk is mounted when [`LabLayout::wal_mount`] is set.
pub const WAL_MOUNT: &str = "var/lib/etcd-wal";

/// The etcd unit of a systemd lab host.
pub const ETCD_UNIT: &str = "etcd.service";

/// What `lab up` started, persisted as `DIR/lab.json` so that `lab down` (from any shell) can end it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabState {
    pub dir: PathBuf,
    pub net: u8,
    pub tools: EtcdTools,
    pub lab_bin: PathBuf,
    pub hosts: Vec<Host>,
    #[serde(default)]
    pub runtime: LabRuntime,
    #[serde(default)]
    pub layout: LabLayout,
    /// The kubelet stand-in's PID per host, in host order (empty for a systemd lab).
    pub kubelets: Vec<u32>,
    /// The quorate agent's PID per host, in host order (empty when the lab runs no agents).
    #[serde(default)]
    pub agents: Vec<u32>,
    /// External etcd: the control-plane hosts whose apiservers use the etcd hosts.
    #[serde(default)]
    pub apiservers: Vec<ApiserverHost>,
}

/// A control-plane host of an external etcd cluster: kube-apiserver, kube-controller-manager
/// and kube-scheduler as static pods, its own quorate agent, no etcd.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiserverHost {
    pub host: Host,
    pub kubelet: Option<u32>,
    pub agent: Option<u32>,
}

#[derive(Debug, Clone)]
pub struct UpOptions {
    pub dir: PathBuf,
    pub members: u8,
    pub version: EtcdVersion,
    /// Hosts live on 127.0.<net>.(10+i).
    pub net: u8,
    /// The `lab` binary, run as the kubelet and apiserver stand-ins.
    pub lab_bin: PathBuf,
    /// The `quorate-agent` binary to run on every host; `None`: no agents.
    pub agent_bin: Option<PathBuf>,
    pub patience: Duration,
    pub runtime: LabRuntime,
    /// Hosts as network and mount namespaces with kubeadm's real paths (needs root); `false`:
    /// flat hosts on the shared loopback, paths under each host's dir (not kubeadm-faithful).
    pub faithful: bool,
    pub layout: LabLayout,
}

impl UpOptions {
    /// Options for a lab of `members` on etcd `version` in `dir`: faithful hosts where this
    /// process can make them (root), the `lab` and `quorate-agent` binaries beside this one.
    pub fn new(dir: PathBuf, members: u8, version: EtcdVersion, net: u8) -> anyhow::Result<Self> {
        let lab_bin = std::env::current_exe().context("locating the lab binary")?;
        Ok(Self {
            dir,
            members,
            version,
            net,
            agent_bin: Some(lab_bin.with_file_name("quorate-agent")),
            lab_bin,
            patience: Duration::from_secs(60),
            runtime: LabRuntime::StaticPod,
            faithful: hostns::available(),
            layout: LabLayout::default(),
        })
    }
}

/// A running lab. Dropping it does not stop it; call [`Lab::down`] (tests use [`crate::TestLab`]).
#[derive(Debug)]
pub struct Lab {
    pub state: LabState,
    children: Vec<Child>,
}

const STATE_FILE: &str = "lab.json";

impl Lab {
    pub async fn up(opts: &UpOptions) -> anyhow::Result<Self> {
        if !(1..=9).contains(&opts.members) {
            bail!("--members {} is out of range (1 to 9)", opts.members);
        }
        if opts.faithful && opts.net == 0 {
            bail!(
                "--net 0 would route 127.0.0.x to the lab's bridge (a local resolver on 127.0.0.53 with it): pick --net 1 to 255"
            );
        }
        if opts.faithful && !nix::unistd::geteuid().is_root() {
            bail!("hosts as namespaces need root; run as root, or without them (flat hosts)");
        }
        let tools = EtcdTools::find(opts.version)?;
        prepare_dir(&opts.dir)?;
        let dir = fs::canonicalize(&opts.dir)?;
        let hosts: Vec<Host> = (1..=opts.members)
            .map(|i| Host::new(&dir, opts.net, i))
            .collect();
        if opts.faithful {
            check_net_free(opts.net)?;
        } else {
            check_ports_free(&hosts, opts.net)?;
        }
        let pki = LabPki::new()?;
        pki.write_lab(&dir)?;
        store::write(&dir, &tools, opts)?;
        let mut lab = Self {
            state: LabState {
                dir: dir.clone(),
                net: opts.net,
                tools,
                lab_bin: opts.lab_bin.clone(),
                hosts,
                runtime: opts.runtime,
                layout: opts.layout.clone(),
                kubelets: Vec::new(),
                agents: Vec::new(),
                apiservers: (1..=opts.layout.apiserver_hosts)
                    .map(|i| ApiserverHost {
                        host: Host::apiserver(&dir, opts.net, i),
                        kubelet: None,
                        agent: None,
                    })
                    .collect(),
            },
            children: Vec::new(),
        };
        lab.save()?;
        if let Err(e) = lab.start(opts, &pki).await {
            return Err(match lab.down() {
                Ok(()) => e.context("the lab did not come up; everything it started was stopped"),
                Err(down) => e.context(format!(
                    "the lab did not come up, and stopping it left things behind: {down:#}"
                )),
            });
        }
        Ok(lab)
    }

    /// Lays out every host, makes their namespaces, and starts etcd, the control plane and the
    /// agents; then waits until all are ready.
    async fn start(&mut self, opts: &UpOptions, pki: &LabPki) -> anyhow::Result<()> {
        let dir = self.state.dir.clone();
        if opts.faithful {
            // What is about to be made is recorded first: `lab down` removes what a failure
            // halfway leaves.
            let ns_dir = dir.join("ns");
            for (i, host) in self.state.hosts.iter_mut().enumerate() {
                let index = u8::try_from(i + 1).expect("at most 9 hosts");
                host.ns = Some(HostNs::planned(&ns_dir, opts.net, index, &host.name));
            }
            for (i, a) in self.state.apiservers.iter_mut().enumerate() {
                let index = u8::try_from(i + 11).expect("at most 9 apiserver hosts");
                a.host.ns = Some(HostNs::planned(&ns_dir, opts.net, index, &a.host.name));
            }
            self.save()?;
            hostns::make_private(&dir)?;
            hostns::create_bridge(opts.net)?;
            hostns::prepare_ns_dir(&dir)?;
            let api = self.state.apiservers.iter().map(|a| &a.host);
            for host in self.state.hosts.iter().chain(api) {
                store::write_host_base(host)?;
                store::install_on(&dir, host)?;
                let ns = host.ns.as_ref().expect("planned above");
                ns.make(opts.net, &host.name, host.ip, &host.root)?;
            }
        }
        let hosts = self.state.hosts.clone();
        let tools = self.state.tools.clone();
        let all = layout::initial_cluster(&hosts);
        let agents = opts.agent_bin.is_some();
        let api_hosts: Vec<Host> = self
            .state
            .apiservers
            .iter()
            .map(|a| a.host.clone())
            .collect();
        pki.write_certs_dir(&dir, &hosts.iter().chain(&api_hosts).collect::<Vec<_>>())?;
        for host in &hosts {
            pki.write_host(host, agents)?;
            fs::create_dir_all(host.data_dir())?;
            fs::create_dir_all(host.path("var/log/pods"))?;
            if let Some(disk) = opts.layout.data_mount {
                mount_disk(&dir, host, "var/lib/etcd", disk)?;
            }
            if opts.layout.wal_dir {
                fs::create_dir_all(host.path(WAL_MOUNT))?;
                if let Some(disk) = opts.layout.wal_mount {
                    mount_disk(&dir, host, WAL_MOUNT, disk)?;
                }
            }
            if opts.runtime == LabRuntime::Systemd {
                write_systemd_host(host, &tools, &all, self.wal(), &opts.lab_bin)?;
            }
        }
        match opts.runtime {
            LabRuntime::Systemd => {
                for host in &hosts {
                    systemctl(host, "start")?;
                }
            }
            LabRuntime::StaticPod if opts.faithful => self.kubeadm_join_all(&tools).await?,
            LabRuntime::StaticPod => {
                for host in &hosts {
                    let etcd = host.etcd_command(&tools, &all, ClusterState::New, self.wal());
                    write_manifests(host, &tools, &etcd, opts.layout.no_anonymous_auth)?;
                    self.start_kubelet(host)?;
                }
            }
        }
        self.start_apiserver_hosts(pki, &tools, agents)?;
        if let Some(agent_bin) = &opts.agent_bin {
            for host in &hosts {
                let config = write_agent_config(host, &tools, opts.runtime)?;
                let child = spawn_agent(agent_bin, host, &config, None)?;
                self.state.agents.push(child.id());
                self.children.push(child);
            }
            for i in 0..self.state.apiservers.len() {
                let host = self.state.apiservers[i].host.clone();
                let config = write_apiserver_agent_config(&host)?;
                let child = spawn_agent(agent_bin, &host, &config, None)?;
                self.state.apiservers[i].agent = Some(child.id());
                self.children.push(child);
            }
        }
        self.save()?;
        durable::write_atomic(
            &dir.join("inventory.toml"),
            self.inventory().to_toml().as_bytes(),
            0o644,
        )?;
        durable::write_atomic(&dir.join("lab.env"), self.env_file().as_bytes(), 0o644)?;
        self.wait_ready(opts.patience).await
    }

    /// External etcd's control-plane hosts: kubeadm's files, and kube-apiserver (using every
    /// etcd member), kube-controller-manager and kube-scheduler as static pods.
    fn start_apiserver_hosts(
        &mut self,
        pki: &LabPki,
        tools: &EtcdTools,
        agents: bool,
    ) -> anyhow::Result<()> {
        let servers: Vec<String> = self.state.hosts.iter().map(Host::client_url).collect();
        for i in 0..self.state.apiservers.len() {
            let host = self.state.apiservers[i].host.clone();
            pki.write_host(&host, agents)?;
            fs::create_dir_all(host.path("var/log/pods"))?;
            let apiserver =
                host.apiserver_command_for(&servers.join(","), self.state.layout.no_anonymous_auth);
            write_control_plane(&host, &apiserver)?;
            let _ = tools;
            let child = spawn_kubelet(&self.state.lab_bin, &self.state.dir, &host)?;
            self.state.apiservers[i].kubelet = Some(child.id());
            self.children.push(child);
            self.save()?;
        }
        Ok(())
    }

    /// kubeadm's way: `kubeadm init` on the first host (a cluster of one), then `kubeadm join
    /// --control-plane` on each other host in turn: the member is added through the running
    /// cluster, and its manifest names the members known then, with
    /// `--initial-cluster-state=existing`.
    async fn kubeadm_join_all(&mut self, tools: &EtcdTools) -> anyhow::Result<()> {
        let hosts = self.state.hosts.clone();
        let first = &hosts[0];
        let init = format!("{}={}", first.name, first.peer_url());
        let anon = self.state.layout.no_anonymous_auth;
        write_manifests(
            first,
            tools,
            &first.etcd_command(tools, &init, ClusterState::Init, self.wal()),
            anon,
        )?;
        self.start_kubelet(first)?;
        self.wait_member(first, Duration::from_secs(60)).await?;
        for (i, host) in hosts.iter().enumerate().skip(1) {
            let endpoints: Vec<String> = hosts[..i].iter().map(Host::client_url).collect();
            let mut client = etcd_client::Client::connect(
                &endpoints,
                Some(crate::etcd::connect_options(
                    &self.etcd_tls(),
                    Duration::from_secs(10),
                )?),
            )
            .await
            .with_context(|| format!("connecting to the cluster to add {}", host.name))?;
            // kubeadm 1.32 (etcd 3.5.16) adds a learner and promotes it once it is in sync;
            // earlier releases add a voting member. etcd refuses either until the leader has
            // been connected to every voting member for 5 s ("unhealthy cluster"): kubeadm
            // retries, so does the lab.
            let learner = learner_joins(tools);
            let options = learner.then(|| etcd_client::MemberAddOptions::new().with_is_learner());
            let deadline = Instant::now() + Duration::from_secs(30);
            let added = loop {
                match client.member_add([host.peer_url()], options.clone()).await {
                    Ok(added) => break added,
                    Err(e)
                        if e.to_string().contains("unhealthy cluster")
                            && Instant::now() < deadline =>
                    {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                    Err(e) => {
                        return Err(anyhow::Error::new(e)
                            .context(format!("adding {} to the cluster", host.name)));
                    }
                }
            };
            let new_id = added.member().map(|m| m.id());
            let initial: Vec<String> = added
                .member_list()
                .iter()
                .flat_map(|m| {
                    let name = if Some(m.id()) == new_id || m.name().is_empty() {
                        host.name.clone()
                    } else {
                        m.name().to_owned()
                    };
                    m.peer_urls()
                        .iter()
                        .map(move |u| format!("{name}={u}"))
                        .collect::<Vec<_>>()
                })
                .collect();
            let etcd = host.etcd_command(
                tools,
                &initial.join(","),
                ClusterState::Existing,
                self.wal(),
            );
            write_manifests(host, tools, &etcd, anon)?;
            self.start_kubelet(host)?;
            if let (true, Some(id)) = (learner, new_id) {
                promote(&mut client, id, &host.name).await?;
            }
            self.wait_member(host, Duration::from_secs(60)).await?;
        }
        Ok(())
    }

    /// etcd's `--wal-dir`, relative to a host's root, when the lab keeps the WAL apart.
    fn wal(&self) -> Option<&'static str> {
        self.state.layout.wal_dir.then_some(WAL_DIR)
    }

    fn start_kubelet(&mut self, host: &Host) -> anyhow::Result<()> {
        let child = spawn_kubelet(&self.state.lab_bin, &self.state.dir, host)?;
        self.state.kubelets.push(child.id());
        self.children.push(child);
        self.save()
    }

    /// Waits until `host`'s etcd is healthy.
    async fn wait_member(&self, host: &Host, patience: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + patience;
        while !self.member_healthy(host).await {
            if Instant::now() >= deadline {
                bail!(
                    "{}'s etcd is not healthy after {patience:?}; last lines of {}:\n{}",
                    host.name,
                    host.log_of("etcd").display(),
                    procs::tail(&host.log_of("etcd"), 8)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    /// Opens a lab from `DIR/lab.json`.
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        let path = dir.join(STATE_FILE);
        let text = fs::read_to_string(&path).with_context(|| {
            format!("no lab in {}: {} unreadable", dir.display(), path.display())
        })?;
        Ok(Self {
            state: serde_json::from_str(&text)
                .with_context(|| format!("parsing {}", path.display()))?,
            children: Vec::new(),
        })
    }

    fn save(&self) -> anyhow::Result<()> {
        let text = serde_json::to_string_pretty(&self.state)?;
        durable::write_atomic(&self.state.dir.join(STATE_FILE), text.as_bytes(), 0o644)?;
        Ok(())
    }

    pub fn dir(&self) -> &Path {
        &self.state.dir
    }

    pub fn hosts(&self) -> &[Host] {
        &self.state.hosts
    }

    /// The coordinator's client certificate for etcd.
    pub fn etcd_tls(&self) -> TlsFiles {
        let c = self.state.dir.join("coordinator");
        TlsFiles {
            ca: c.join("etcd-ca.crt"),
            cert: c.join("etcd-client.crt"),
            key: c.join("etcd-client.key"),
        }
    }

    /// The coordinator's client certificate for the agents.
    pub fn agent_tls(&self) -> TlsFiles {
        let c = self.state.dir.join("coordinator");
        TlsFiles {
            ca: c.join("quorate-ca.crt"),
            cert: c.join("coordinator.crt"),
            key: c.join("coordinator.key"),
        }
    }

    pub fn inventory(&self) -> Inventory {
        Inventory {
            cluster: ClusterSection { name: "lab".into() },
            agent_tls: self.agent_tls(),
            etcd_tls: Some(self.etcd_tls()),
            members: self
                .state
                .hosts
                .iter()
                .map(|h| Member {
                    name: h.name.clone(),
                    agent: h.agent_url(),
                    agent_server_name: None,
                    peer_urls: vec![h.peer_url()],
                    client_urls: vec![h.client_url()],
                })
                .collect(),
            apiservers: self
                .state
                .apiservers
                .iter()
                .map(|a| quorate::inventory::ApiserverHost {
                    name: a.host.name.clone(),
                    agent: a.host.agent_url(),
                    agent_server_name: None,
                })
                .collect(),
        }
    }

    fn env_file(&self) -> String {
        let endpoints: Vec<String> = self.state.hosts.iter().map(Host::client_url).collect();
        let tls = self.etcd_tls();
        let tools_dir = self
            .state
            .tools
            .etcd
            .parent()
            .expect("etcd has a parent dir");
        format!(
            "# source this file to drive the lab with plain etcdctl\n\
             export ETCDCTL_API=3\n\
             export ETCDCTL_ENDPOINTS={}\n\
             export ETCDCTL_CACERT={}\n\
             export ETCDCTL_CERT={}\n\
             export ETCDCTL_KEY={}\n\
             export PATH={}:$PATH\n",
            endpoints.join(","),
            tls.ca.display(),
            tls.cert.display(),
            tls.key.display(),
            tools_dir.display()
        )
    }

    /// True when the member says it is healthy (it has a leader): etcd's `/health` on its
    /// advertised client URL with the lab's etcd client certificate, reachable from outside
    /// every host (kubeadm's metrics URL is the host's own loopback).
    pub async fn member_healthy(&self, host: &Host) -> bool {
        let tls = self.etcd_tls();
        let Ok(config) = quorate_proto::tls::client_config(&tls.ca, Some((&tls.cert, &tls.key)))
        else {
            return false;
        };
        let url = format!("{}/health", host.client_url());
        quorate_proto::probe::get(&url, Some(Arc::new(config)), Duration::from_secs(2))
            .await
            .is_ok_and(|r| r.status == 200 && r.body.contains("\"health\":\"true\""))
    }

    /// The apiserver stand-in's `/readyz` status as the cluster admin sees it, or `None` when
    /// it does not answer.
    pub async fn apiserver_readyz(&self, host: &Host) -> Option<u16> {
        let pki = self.state.dir.join("pki");
        let config = quorate_proto::tls::client_config(
            &host.pki_dir().join("ca.crt"),
            Some((&pki.join("admin.crt"), &pki.join("admin.key"))),
        )
        .ok()?;
        let url = format!("{}/readyz", host.apiserver_url());
        quorate_proto::probe::get(&url, Some(Arc::new(config)), Duration::from_secs(3))
            .await
            .ok()
            .map(|r| r.status)
    }

    /// A command that runs `program` on `host`: inside its namespaces when it has them, plainly
    /// otherwise.
    pub fn host_command(host: &Host, program: &str) -> Command {
        match &host.ns {
            Some(ns) => ns.command(program),
            None => Command::new(program),
        }
    }

    /// Waits until every member is healthy and every apiserver ready; on timeout, says which
    /// member is not, with the tail of its logs.
    pub async fn wait_ready(&self, patience: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + patience;
        loop {
            let mut waiting = Vec::new();
            let systemd = self.state.runtime == LabRuntime::Systemd;
            let etcd_log = if systemd { ETCD_UNIT } else { "etcd" };
            for host in &self.state.hosts {
                if !self.member_healthy(host).await {
                    waiting.push((host, etcd_log, "etcd is not healthy"));
                } else if !systemd && self.apiserver_readyz(host).await != Some(200) {
                    waiting.push((host, "kube-apiserver", "kube-apiserver is not ready"));
                } else if !self.state.agents.is_empty()
                    && !procs::port_open(host.ip, layout::AGENT_PORT)
                {
                    waiting.push((host, "quorate-agent", "quorate-agent is not listening"));
                }
            }
            for a in &self.state.apiservers {
                let host = &a.host;
                if self.apiserver_readyz(host).await != Some(200) {
                    waiting.push((host, "kube-apiserver", "kube-apiserver is not ready"));
                } else if a.agent.is_some() && !procs::port_open(host.ip, layout::AGENT_PORT) {
                    waiting.push((host, "quorate-agent", "quorate-agent is not listening"));
                }
            }
            if waiting.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let detail: Vec<String> = waiting
                    .iter()
                    .map(|(h, pod, what)| {
                        format!(
                            "{} ({}): {what}; last lines of {}:\n{}",
                            h.name,
                            h.ip,
                            h.log_of(pod).display(),
                            procs::tail(&h.log_of(pod), 8)
                        )
                    })
                    .collect();
                bail!("not ready after {patience:?}:\n{}", detail.join("\n"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops everything the lab started and checks that nothing of it is left: no port
    /// listening (flat hosts), no process, namespace, link or mount (hosts as namespaces).
    pub fn down(&mut self) -> anyhow::Result<()> {
        let api: Vec<Host> = self
            .state
            .apiservers
            .iter()
            .map(|a| a.host.clone())
            .collect();
        let api_agents: Vec<u32> = self
            .state
            .apiservers
            .iter()
            .map(|a| a.agent.unwrap_or(0))
            .collect();
        let api_kubelets: Vec<u32> = self
            .state
            .apiservers
            .iter()
            .map(|a| a.kubelet.unwrap_or(0))
            .collect();
        stop_processes(&api, &api_agents, "quorate-agent", Duration::from_secs(10));
        stop_processes(&api, &api_kubelets, "kubelet", Duration::from_secs(15));
        for host in &api {
            stop_leftovers(host);
        }
        let hosts = self.state.hosts.clone();
        stop_processes(
            &hosts,
            &self.state.agents,
            "quorate-agent",
            Duration::from_secs(10),
        );
        // The kubelet stops its pods (etcd may take ~15 s with a leader transfer) and exits.
        stop_processes(
            &hosts,
            &self.state.kubelets,
            "kubelet",
            Duration::from_secs(45),
        );
        for child in &mut self.children {
            let _ = child.try_wait();
        }
        let mut errors = Vec::new();
        if self.state.runtime == LabRuntime::Systemd
            && let Err(e) = stop_units(&hosts)
        {
            errors.push(format!("{e:#}"));
        }
        for host in &hosts {
            stop_leftovers(host);
        }
        if hosts.iter().any(Host::faithful) {
            if let Err(e) = self.remove_namespaces() {
                errors.push(format!("{e:#}"));
            }
        } else if let Err(e) = self.wait_ports_closed() {
            errors.push(format!("{e:#}"));
        }
        // Disks mounted for a layout (on flat hosts too), and the lab dir's own mount.
        if let Err(e) = hostns::unmount_all(&self.state.dir) {
            errors.push(format!("{e:#}"));
        }
        if !errors.is_empty() {
            bail!("lab down left things behind:\n  {}", errors.join("\n  "));
        }
        // Done: a second `lab down` of this dir must not touch a newer lab that took the same
        // net (its namespaces have the same names) or reused a PID.
        for host in &mut self.state.hosts {
            host.ns = None;
        }
        for a in &mut self.state.apiservers {
            a.host.ns = None;
            a.kubelet = None;
            a.agent = None;
        }
        self.state.kubelets.clear();
        self.state.agents.clear();
        self.save()
    }

    /// Waits until no flat host's port is open (10 s).
    fn wait_ports_closed(&self) -> anyhow::Result<()> {
        let hosts = &self.state.hosts;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let open: Vec<String> = hosts
                .iter()
                .flat_map(|h| h.ports().map(move |p| (h.ip, p)))
                .filter(|(ip, p)| procs::port_open(*ip, *p))
                .map(|(ip, p)| format!("{ip}:{p}"))
                .collect();
            if open.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("after lab down, still listening: {}", open.join(", "));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Removes every host's namespaces, the mounts the lab made under the lab dir, and the bridge.
    fn remove_namespaces(&mut self) -> anyhow::Result<()> {
        let mut errors = Vec::new();
        let api = self.state.apiservers.iter().map(|a| &a.host);
        for host in self.state.hosts.iter().chain(api) {
            if let Some(ns) = &host.ns {
                let left = ns.pids();
                if !left.is_empty() {
                    errors.push(format!(
                        "{}: processes still running: {}",
                        host.name,
                        left.iter()
                            .map(u32::to_string)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                    continue;
                }
                if let Err(e) = ns.destroy() {
                    errors.push(format!("{}: {e:#}", host.name));
                }
            }
            if let Err(e) = hostns::unmount_all(&host.root) {
                errors.push(format!("{}: {e:#}", host.name));
            }
        }
        if let Err(e) = hostns::unmount_all(&self.state.dir.join("ns")) {
            errors.push(format!("{e:#}"));
        }
        if errors.is_empty()
            && let Err(e) = hostns::delete_bridge(self.state.net)
        {
            errors.push(format!("{e:#}"));
        }
        if !errors.is_empty() {
            bail!("{}", errors.join("\n  "));
        }
        Ok(())
    }

    /// Runs `argv` on host `name` (inside its namespaces), with the terminal's stdio; returns
    /// its exit status.
    pub fn exec(&self, name: &str, argv: &[String]) -> anyhow::Result<std::process::ExitStatus> {
        let all: Vec<&Host> = self
            .state
            .hosts
            .iter()
            .chain(self.state.apiservers.iter().map(|a| &a.host))
            .collect();
        let host = all.iter().find(|h| h.name == name).with_context(|| {
            let names: Vec<&str> = all.iter().map(|h| h.name.as_str()).collect();
            format!("no host {name} in this lab (hosts: {})", names.join(", "))
        })?;
        let (program, args) = argv.split_first().context("no command given")?;
        let mut cmd = Self::host_command(host, program);
        if !host.faithful() {
            cmd.current_dir(&host.root);
        }
        cmd.args(args)
            .status()
            .with_context(|| format!("running {program} on {name}"))
    }

    /// Kills host `i`'s agent with SIGKILL (a crash), and waits until it is gone.
    pub fn kill_agent(&mut self, i: usize) -> anyhow::Result<()> {
        let host = &self.state.hosts[i];
        let pid = *self.state.agents.get(i).context("the lab runs no agents")?;
        procs::signal(pid, Signal::SIGKILL);
        let deadline = Instant::now() + Duration::from_secs(10);
        while is_ours(host, pid, "quorate-agent") {
            if Instant::now() > deadline {
                bail!("{}'s agent (pid {pid}) survived SIGKILL", host.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // An exiting process loses its command line before it closes its sockets: wait until
        // its port is really free, or the next agent cannot bind it.
        let deadline = Instant::now() + Duration::from_secs(10);
        while procs::port_open(host.ip, layout::AGENT_PORT) {
            if Instant::now() > deadline {
                bail!("{}'s agent port is still open after SIGKILL", host.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        for child in &mut self.children {
            let _ = child.try_wait();
        }
        Ok(())
    }

    /// Starts host `i`'s agent again (after [`Lab::kill_agent`]), with `failpoints` (the
    /// `FAILPOINTS` syntax of builds with the `failpoints` feature) if given; waits until it listens.
    pub async fn start_agent(&mut self, i: usize, failpoints: Option<&str>) -> anyhow::Result<()> {
        let host = self.state.hosts[i].clone();
        let agent_bin = self.state.lab_bin.with_file_name("quorate-agent");
        let config = host.inner("etc/quorate/agent.toml");
        let mut child = spawn_agent(&agent_bin, &host, &config, failpoints)?;
        let pid = child.id();
        self.state.agents[i] = pid;
        self.save()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while !procs::port_open(host.ip, layout::AGENT_PORT) {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "{}'s agent (pid {pid}) exited ({status}): {}",
                    host.name,
                    procs::tail(&host.log_of("quorate-agent"), 4)
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "{}'s agent did not listen again: {}",
                    host.name,
                    procs::tail(&host.log_of("quorate-agent"), 8)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.children.push(child);
        Ok(())
    }

    /// Stops one static pod by moving its manifest out of the watched dir (as an operator would).
    pub fn remove_manifest(&self, host: &Host, pod: &str) -> anyhow::Result<PathBuf> {
        let from = host.manifests_dir().join(format!("{pod}.yaml"));
        let to = host.path(&format!("etc/kubernetes/{pod}.yaml.removed"));
        fs::rename(&from, &to).with_context(|| format!("moving {} aside", from.display()))?;
        Ok(to)
    }

    /// Puts back a manifest moved aside by [`Lab::remove_manifest`].
    pub fn restore_manifest(&self, host: &Host, pod: &str) -> anyhow::Result<()> {
        let from = host.path(&format!("etc/kubernetes/{pod}.yaml.removed"));
        let to = host.manifests_dir().join(format!("{pod}.yaml"));
        fs::rename(&from, &to).with_context(|| format!("putting back {}", to.display()))
    }
}

/// Whether kubeadm of this etcd's release joins members as learners (kubeadm 1.32, etcd 3.5.16;
/// the feature is on by default from kubeadm 1.29, etcd 3.5.10).
fn learner_joins(tools: &EtcdTools) -> bool {
    tools
        .full_version
        .strip_prefix("3.5.")
        .and_then(|p| p.parse::<u32>().ok())
        .is_some_and(|patch| patch >= 10)
}

/// Promotes learner `id` as soon as etcd lets it (once it has caught up with the leader), as
/// `kubeadm join` does.
async fn promote(client: &mut etcd_client::Client, id: u64, name: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match client.member_promote(id).await {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() < deadline => {
                tracing::debug!("{name} not promotable yet: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => {
                return Err(anyhow::Error::new(e).context(format!("promoting learner {name}")));
            }
        }
    }
}

/// True when `pid` is the lab's `what` (`quorate-agent`, `kubelet`) on `host`: on a host with
/// namespaces, a process in its network namespace with that name in its command line; on a flat
/// host, a process whose command line names the host's dir.
fn is_ours(host: &Host, pid: u32, what: &str) -> bool {
    match &host.ns {
        Some(ns) => ns.holds(pid) && procs::is_ours(pid, what),
        None => procs::is_ours(pid, &host.root.display().to_string()),
    }
}

/// SIGTERM to each of `pids` (one per host, 0: none) that is the lab's `what` on its host,
/// SIGKILL to those still running after `patience`.
fn stop_processes(hosts: &[Host], pids: &[u32], what: &str, patience: Duration) {
    let ours: Vec<(&Host, u32)> = hosts
        .iter()
        .zip(pids)
        .filter(|(h, pid)| **pid != 0 && is_ours(h, **pid, what))
        .map(|(h, pid)| (h, *pid))
        .collect();
    for (_, pid) in &ours {
        procs::signal(*pid, Signal::SIGTERM);
    }
    let deadline = Instant::now() + patience;
    for (host, pid) in ours {
        while is_ours(host, pid, what) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        if is_ours(host, pid, what) {
            procs::signal(pid, Signal::SIGKILL);
        }
    }
}

/// Ends whatever still runs on `host` (pods whose kubelet died without stopping them): SIGTERM,
/// then SIGKILL after 20 s. On a flat host, only the pods whose pid files it holds.
fn stop_leftovers(host: &Host) {
    let pids: Vec<u32> = match &host.ns {
        Some(ns) => ns.pids(),
        None => fs::read_dir(host.path("run/pods"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| procs::read_pid(&e.path()))
            .filter(|p| procs::is_ours(*p, &host.root.display().to_string()))
            .collect(),
    };
    for p in &pids {
        procs::signal(*p, Signal::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let alive = |p: &u32| match &host.ns {
        Some(ns) => ns.holds(*p),
        None => procs::is_ours(*p, &host.root.display().to_string()),
    };
    while pids.iter().any(alive) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    for p in pids.iter().filter(|p| alive(p)) {
        procs::signal(*p, Signal::SIGKILL);
    }
    if let Some(ns) = &host.ns {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !ns.pids().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn spawn_logged(
    host: &Host,
    bin: &str,
    args: &[&std::ffi::OsStr],
    log: &Path,
    env: &[(&str, &str)],
) -> anyhow::Result<Child> {
    use std::os::unix::process::CommandExt;
    let file = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    Lab::host_command(host, bin)
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {bin} on {}", host.name))
}

fn spawn_kubelet(lab_bin: &Path, lab_dir: &Path, host: &Host) -> anyhow::Result<Child> {
    if host.faithful() {
        let args = ["kubelet".as_ref(), "--root".as_ref(), "/".as_ref()];
        return spawn_logged(
            host,
            "/usr/local/bin/lab",
            &args,
            &host.log_of("kubelet"),
            &[],
        );
    }
    let images = lab_dir.join("images");
    let args = [
        "kubelet".as_ref(),
        "--root".as_ref(),
        host.root.as_os_str(),
        "--images".as_ref(),
        images.as_os_str(),
    ];
    let bin = lab_bin.display().to_string();
    spawn_logged(host, &bin, &args, &host.log_of("kubelet"), &[])
}

fn spawn_agent(
    agent_bin: &Path,
    host: &Host,
    config: &Path,
    failpoints: Option<&str>,
) -> anyhow::Result<Child> {
    if !agent_bin.is_file() {
        bail!(
            "{} not found: build it first (cargo build --workspace)",
            agent_bin.display()
        );
    }
    let args = ["--config".as_ref(), config.as_os_str()];
    let env: Vec<(&str, &str)> = failpoints.map(|f| ("FAILPOINTS", f)).into_iter().collect();
    let bin = if host.faithful() {
        "/usr/local/bin/quorate-agent".to_owned()
    } else {
        agent_bin.display().to_string()
    };
    spawn_logged(host, &bin, &args, &host.log_of("quorate-agent"), &env)
}

/// Writes a host's static pod manifests as kubeadm does: etcd (`etcd` as given), kube-apiserver
/// (using the local member), kube-controller-manager and kube-scheduler.
fn write_manifests(
    host: &Host,
    tools: &EtcdTools,
    etcd: &[String],
    no_anonymous_auth: bool,
) -> anyhow::Result<()> {
    fs::create_dir_all(host.manifests_dir())?;
    durable::write_atomic(
        &host.manifests_dir().join("etcd.yaml"),
        host.etcd_manifest(tools, etcd).as_bytes(),
        0o644,
    )?;
    let apiserver = host.apiserver_command_for(&host.local_etcd_url(), no_anonymous_auth);
    write_control_plane(host, &apiserver)
}

/// Writes kube-apiserver (running `apiserver`), kube-controller-manager and kube-scheduler.
fn write_control_plane(host: &Host, apiserver: &[String]) -> anyhow::Result<()> {
    fs::create_dir_all(host.manifests_dir())?;
    durable::write_atomic(
        &host.manifests_dir().join("kube-apiserver.yaml"),
        layout::static_pod(host, "kube-apiserver", apiserver, 5).as_bytes(),
        0o644,
    )?;
    for controller in layout::CONTROLLERS {
        let command = host.controller_command(controller);
        durable::write_atomic(
            &host.manifests_dir().join(format!("{controller}.yaml")),
            layout::static_pod(host, controller, &command, 5).as_bytes(),
            0o644,
        )?;
    }
    Ok(())
}

/// A systemd lab host the kubespray way: `etcd.service` running the bare etcd binary with every
/// setting in `/etc/etcd.env`, and the `systemctl` stand-in (on a flat host, a wrapper).
fn write_systemd_host(
    host: &Host,
    tools: &EtcdTools,
    initial_cluster: &str,
    wal: Option<&str>,
    lab_bin: &Path,
) -> anyhow::Result<()> {
    for dir in [
        host.unit_dir(),
        host.path("run/systemd"),
        host.path("var/log"),
    ] {
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    durable::write_atomic(
        &host.etcd_env_file(),
        host.etcd_env(tools, initial_cluster, wal).as_bytes(),
        0o644,
    )?;
    durable::write_atomic(
        &host.unit_dir().join(ETCD_UNIT),
        host.etcd_unit(tools).as_bytes(),
        0o644,
    )?;
    if !host.faithful() {
        let wrapper = host.systemctl();
        fs::create_dir_all(wrapper.parent().expect("systemctl has a dir"))?;
        durable::write_atomic(
            &wrapper,
            crate::systemctl::wrapper_script(lab_bin, &host.root).as_bytes(),
            0o755,
        )?;
    }
    Ok(())
}

/// `systemctl <verb> etcd.service` on `host`, through its stand-in.
fn systemctl(host: &Host, verb: &str) -> anyhow::Result<()> {
    let program = if host.faithful() {
        "systemctl".to_owned()
    } else {
        host.systemctl().display().to_string()
    };
    let out = Lab::host_command(host, &program)
        .args([verb, ETCD_UNIT])
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {program} on {}", host.name))?;
    if !out.status.success() {
        bail!(
            "systemctl {verb} {ETCD_UNIT} on {}: {} {}",
            host.name,
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Stops etcd on every systemd host at once (one at a time, each stop would wait for a leader
/// transfer).
fn stop_units(hosts: &[Host]) -> anyhow::Result<()> {
    let errors: Vec<String> = std::thread::scope(|s| {
        let stops: Vec<_> = hosts
            .iter()
            .filter(|h| h.path("etc/systemd/system").join(ETCD_UNIT).is_file())
            .filter(|h| h.ns.as_ref().is_none_or(|ns| ns.netns_inode().is_some()))
            .map(|h| s.spawn(move || systemctl(h, "stop")))
            .collect();
        stops
            .into_iter()
            .filter_map(|t| match t.join() {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(format!("{e:#}")),
                Err(_) => Some("a stop thread panicked".into()),
            })
            .collect()
    });
    if !errors.is_empty() {
        bail!("stopping etcd units: {}", errors.join("; "));
    }
    Ok(())
}

/// True when `host`'s etcd unit has a live main process.
fn unit_running(host: &Host) -> bool {
    crate::systemctl::Service::load(&host.root, ETCD_UNIT)
        .ok()
        .flatten()
        .is_some_and(|s| s.main_pid(&host.root).is_some())
}

/// The agent's `[etcd]` section (and `[apiserver]`, for static pods) on a lab host: on a
/// faithful host, only what differs from the agent's production defaults.
fn agent_runtime_sections(host: &Host, tool: &str, runtime: LabRuntime) -> String {
    let s = |p: PathBuf| format!("{:?}", p.display().to_string());
    match runtime {
        LabRuntime::Systemd if host.faithful() => {
            format!("[etcd]\nruntime = \"systemd\"\nunit = \"{ETCD_UNIT}\"\n{tool}\n")
        }
        LabRuntime::Systemd => format!(
            "[etcd]\nruntime = \"systemd\"\nunit = \"{ETCD_UNIT}\"\nunit_root = {}\nsystemctl = {}\n{tool}\n",
            s(host.root.clone()),
            s(host.systemctl()),
        ),
        LabRuntime::StaticPod => format!(
            "[etcd]\nruntime = \"static-pod\"\nmanifest = {}\n{tool}\n\n[apiserver]\nruntime = \"static-pod\"\nmanifest = {}\nca = {}\n",
            s(host.inner("etc/kubernetes/manifests/etcd.yaml")),
            s(host.inner("etc/kubernetes/manifests/kube-apiserver.yaml")),
            s(host.inner("etc/kubernetes/pki/ca.crt")),
        ),
    }
}

/// The agent's config on a lab host: the runtime's sections, the restore tool. Written where
/// the host has it (`/etc/quorate/agent.toml`); returns the path as the host sees it.
fn write_agent_config(
    host: &Host,
    tools: &EtcdTools,
    runtime: LabRuntime,
) -> anyhow::Result<PathBuf> {
    let tool_path = |name: &str, outside: &Path| {
        if host.faithful() {
            format!("{}/{name}", store::RESTORE_TOOL_DIR)
        } else {
            outside.display().to_string()
        }
    };
    let tool = match &tools.etcdutl {
        Some(etcdutl) => format!("etcdutl = {:?}", tool_path("etcdutl", etcdutl)),
        None => format!("etcdctl = {:?}", tool_path("etcdctl", &tools.etcdctl)),
    };
    let q = |f: &str| host.inner_str(&format!("etc/quorate/pki/{f}"));
    let text = format!(
        r#"# quorate-agent on lab host {name}
listen = "{ip}:{port}"
state_dir = {state:?}
allowed_clients = ["{coordinator}"]

[tls]
cert = {cert:?}
key = {key:?}
client_ca = {ca:?}

{sections}"#,
        name = host.name,
        ip = host.ip,
        port = layout::AGENT_PORT,
        state = host.inner_str("var/lib/quorate-agent"),
        coordinator = crate::pki::COORDINATOR_NAME,
        cert = q("agent.crt"),
        key = q("agent.key"),
        ca = q("ca.crt"),
        sections = agent_runtime_sections(host, &tool, runtime),
    );
    let path = host.path("etc/quorate/agent.toml");
    durable::write_atomic(&path, text.as_bytes(), 0o644)?;
    Ok(host.inner("etc/quorate/agent.toml"))
}

/// Mounts a fresh `disk` at `rel` on `host` (from outside: it appears on the host too), owned by
/// root with mode 0700, as etcd wants its dirs.
fn mount_disk(dir: &Path, host: &Host, rel: &str, disk: Disk) -> anyhow::Result<()> {
    let target = host.path(rel);
    fs::create_dir_all(&target)?;
    match disk {
        Disk::Tmpfs => procs::run(
            Command::new("mount")
                .args(["-t", "tmpfs", "-o", "size=1g,mode=700", "tmpfs"])
                .arg(&target),
        )?,
        Disk::Ext4 => {
            let disks = dir.join("disks");
            fs::create_dir_all(&disks)?;
            let image = disks.join(format!("{}-{}.img", host.name, rel.replace('/', "_")));
            fs::File::create(&image)?.set_len(1 << 30)?;
            procs::run(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&image))?;
            procs::run(
                Command::new("mount")
                    .args(["-o", "loop"])
                    .arg(&image)
                    .arg(&target),
            )?;
            use std::os::unix::fs::PermissionsExt as _;
            fs::set_permissions(&target, fs::Permissions::from_mode(0o700))?;
        }
    }
    Ok(())
}

/// The agent's config on a control-plane host of an external etcd cluster: its apiserver, no
/// etcd. Returns the path as the host sees it.
fn write_apiserver_agent_config(host: &Host) -> anyhow::Result<PathBuf> {
    let q = |f: &str| host.inner_str(&format!("etc/quorate/pki/{f}"));
    let text = format!(
        r#"# quorate-agent on lab control-plane host {name} (external etcd: no etcd here)
listen = "{ip}:{port}"
state_dir = {state:?}
allowed_clients = ["{coordinator}"]
host_name = "{name}"

[tls]
cert = {cert:?}
key = {key:?}
client_ca = {ca:?}

[apiserver]
runtime = "static-pod"
manifest = {manifest:?}
ca = {api_ca:?}
"#,
        name = host.name,
        ip = host.ip,
        port = layout::AGENT_PORT,
        state = host.inner_str("var/lib/quorate-agent"),
        coordinator = crate::pki::COORDINATOR_NAME,
        cert = q("agent.crt"),
        key = q("agent.key"),
        ca = q("ca.crt"),
        manifest = host.inner_str("etc/kubernetes/manifests/kube-apiserver.yaml"),
        api_ca = host.inner_str("etc/kubernetes/pki/ca.crt"),
    );
    durable::write_atomic(&host.path("etc/quorate/agent.toml"), text.as_bytes(), 0o644)?;
    Ok(host.inner("etc/quorate/agent.toml"))
}

/// Refuses a net whose bridge or host namespaces exist (another lab on it), and net 1 (Debian
/// names the machine itself 127.0.1.1).
fn check_net_free(net: u8) -> anyhow::Result<()> {
    if net == 1 {
        bail!(
            "--net 1 would route 127.0.1.x (Debian's 127.0.1.1 is this machine's own name) to the lab's bridge: pick 2 to 255"
        );
    }
    if hostns::net_in_use(net) {
        let bridge = hostns::bridge_name(net);
        bail!(
            "net {net} is in use (bridge {bridge} or netns {bridge}-* exists: another lab? `lab down --dir` it, or pick another --net)"
        );
    }
    Ok(())
}

/// Refuses flat hosts whose addresses are already in use.
fn check_ports_free(hosts: &[Host], net: u8) -> anyhow::Result<()> {
    for host in hosts {
        for port in host.ports() {
            if std::net::TcpListener::bind((host.ip, port)).is_err() {
                bail!(
                    "{}:{port} is already in use (another lab on net {net}? `lab down --dir` it, or pick another --net)",
                    host.ip
                );
            }
        }
    }
    Ok(())
}

/// Refuses a dir with a running lab; clears the files of a stopped one.
fn prepare_dir(dir: &Path) -> anyhow::Result<()> {
    if dir.join(STATE_FILE).exists() {
        let old = Lab::open(dir)?;
        let running = old
            .state
            .hosts
            .iter()
            .zip(&old.state.kubelets)
            .any(|(h, pid)| is_ours(h, *pid, "kubelet"))
            || old.state.hosts.iter().any(unit_running)
            || old
                .state
                .hosts
                .iter()
                .any(|h| h.ns.as_ref().is_some_and(|ns| ns.netns_inode().is_some()));
        if running {
            bail!(
                "a lab is already running in {}: run `lab down --dir {}` first",
                dir.display(),
                dir.display()
            );
        }
        if !hostns::mounts_under(dir).is_empty() {
            bail!(
                "{} still has mounts of a lab under it: run `lab down --dir {}` first",
                dir.display(),
                dir.display()
            );
        }
        for entry in [
            "hosts",
            "pki",
            "coordinator",
            "images",
            "bin",
            "opt",
            "ns",
            "disks",
        ] {
            let path = dir.join(entry);
            if path.exists() {
                fs::remove_dir_all(&path)
                    .with_context(|| format!("clearing {}", path.display()))?;
            }
        }
        for file in [STATE_FILE, "inventory.toml", "lab.env"] {
            let _ = fs::remove_file(dir.join(file));
        }
    } else if dir.join("hosts").exists() {
        bail!(
            "{} holds hosts/ but no lab.json: not touching it; pick an empty --dir",
            dir.display()
        );
    }
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))
}
