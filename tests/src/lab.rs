//! `lab up` / `lab down`: N control-plane hosts with real etcd, a kubelet stand-in each, and the
//! files an operator (or quorate) needs to drive them.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::Signal;
use quorate::inventory::{ClusterSection, Inventory, Member};
use quorate_proto::tls::TlsFiles;
use serde::{Deserialize, Serialize};

use crate::layout::{self, Host};
use crate::pki::LabPki;
use crate::procs;
use crate::tools::{EtcdTools, EtcdVersion};

/// What `lab up` started, persisted as `DIR/lab.json` so that `lab down` (from any shell) can end it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabState {
    pub dir: PathBuf,
    pub net: u8,
    pub tools: EtcdTools,
    pub lab_bin: PathBuf,
    pub hosts: Vec<Host>,
    /// The kubelet stand-in's PID per host, in host order.
    pub kubelets: Vec<u32>,
    /// The quorate agent's PID per host, in host order (empty when the lab runs no agents).
    #[serde(default)]
    pub agents: Vec<u32>,
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
        let tools = EtcdTools::find(opts.version)?;
        prepare_dir(&opts.dir)?;
        let dir = fs::canonicalize(&opts.dir)?;
        let hosts: Vec<Host> = (1..=opts.members)
            .map(|i| Host::new(&dir, opts.net, i))
            .collect();
        for host in &hosts {
            for port in host.ports() {
                if std::net::TcpListener::bind((host.ip, port)).is_err() {
                    bail!(
                        "{}:{port} is already in use (another lab on net {}? `lab down --dir` it, or pick another --net)",
                        host.ip,
                        opts.net
                    );
                }
            }
        }
        let pki = LabPki::new()?;
        pki.write_lab(&dir)?;
        let initial_cluster = layout::initial_cluster(&hosts);
        for host in &hosts {
            pki.write_host(host)?;
            fs::create_dir_all(host.manifests_dir())?;
            fs::create_dir_all(host.data_dir().parent().expect("data dir has a parent"))?;
            fs::create_dir_all(host.path("var/log/pods"))?;
            fs::create_dir_all(host.path("run/pods"))?;
            let etcd = host.etcd_command(&tools, &initial_cluster);
            write_atomic(
                &host.manifests_dir().join("etcd.yaml"),
                &layout::static_pod("etcd", "etcd", &etcd, 30),
            )?;
            let apiserver = host.apiserver_command(&opts.lab_bin);
            write_atomic(
                &host.manifests_dir().join("kube-apiserver.yaml"),
                &layout::static_pod("kube-apiserver", "kube-apiserver", &apiserver, 5),
            )?;
        }
        let mut lab = Self {
            state: LabState {
                dir: dir.clone(),
                net: opts.net,
                tools,
                lab_bin: opts.lab_bin.clone(),
                hosts,
                kubelets: Vec::new(),
                agents: Vec::new(),
            },
            children: Vec::new(),
        };
        for host in lab.state.hosts.clone() {
            let child = spawn_kubelet(&opts.lab_bin, &host)?;
            lab.state.kubelets.push(child.id());
            lab.children.push(child);
            if let Some(agent_bin) = &opts.agent_bin {
                let config = write_agent_config(&host, &lab.state.tools)?;
                let child = spawn_agent(agent_bin, &host, &config, None)?;
                lab.state.agents.push(child.id());
                lab.children.push(child);
            }
        }
        lab.save()?;
        write_atomic(&dir.join("inventory.toml"), &lab.inventory().to_toml())?;
        write_atomic(&dir.join("lab.env"), &lab.env_file())?;
        if let Err(e) = lab.wait_ready(opts.patience).await {
            let _ = lab.down();
            return Err(e.context("the lab did not come up; everything it started was stopped"));
        }
        Ok(lab)
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
        write_atomic(&self.state.dir.join(STATE_FILE), &text)
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

    /// True when the member's metrics `/health` says healthy (answers even without a leader).
    pub async fn member_healthy(host: &Host) -> bool {
        let url = format!("{}/health", host.metrics_url());
        quorate_proto::probe::get(&url, None, Duration::from_secs(2))
            .await
            .is_ok_and(|r| r.status == 200 && r.body.contains("\"health\":\"true\""))
    }

    /// The apiserver stand-in's `/readyz` status, or `None` when it does not answer.
    pub async fn apiserver_readyz(&self, host: &Host) -> Option<u16> {
        let config =
            quorate_proto::tls::client_config(&host.pki_dir().join("ca.crt"), None).ok()?;
        let url = format!("{}/readyz", host.apiserver_url());
        quorate_proto::probe::get(&url, Some(Arc::new(config)), Duration::from_secs(3))
            .await
            .ok()
            .map(|r| r.status)
    }

    /// Waits until every member is healthy and every apiserver ready; on timeout, says which
    /// member is not, with the tail of its logs.
    pub async fn wait_ready(&self, patience: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + patience;
        loop {
            let mut waiting = Vec::new();
            for host in &self.state.hosts {
                if !Self::member_healthy(host).await {
                    waiting.push((host, "etcd", "etcd is not healthy"));
                } else if self.apiserver_readyz(host).await != Some(200) {
                    waiting.push((host, "kube-apiserver", "kube-apiserver is not ready"));
                } else if !self.state.agents.is_empty()
                    && !procs::port_open(host.ip, layout::AGENT_PORT)
                {
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

    /// Stops everything the lab started and checks that no port is left listening.
    pub fn down(&mut self) -> anyhow::Result<()> {
        let hosts = self.state.hosts.clone();
        let marker = |h: &Host| h.root.display().to_string();
        for (host, pid) in hosts.iter().zip(&self.state.agents) {
            if procs::is_ours(*pid, &marker(host)) {
                procs::signal(*pid, Signal::SIGTERM);
            }
        }
        for (host, pid) in hosts.iter().zip(&self.state.agents) {
            for left in procs::wait_gone(&[*pid], &marker(host), Duration::from_secs(10)) {
                procs::signal(left, Signal::SIGKILL);
            }
        }
        for (host, pid) in hosts.iter().zip(&self.state.kubelets) {
            if procs::is_ours(*pid, &marker(host)) {
                procs::signal(*pid, Signal::SIGTERM);
            }
        }
        for (host, pid) in hosts.iter().zip(&self.state.kubelets) {
            // The kubelet stops its pods (etcd may take ~15 s with a leader transfer) and exits.
            for left in procs::wait_gone(&[*pid], &marker(host), Duration::from_secs(45)) {
                procs::signal(left, Signal::SIGKILL);
            }
        }
        for child in &mut self.children {
            let _ = child.try_wait();
        }
        // Pods whose kubelet died without stopping them.
        for host in &hosts {
            let pids: Vec<u32> = fs::read_dir(host.path("run/pods"))
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|e| procs::read_pid(&e.path()))
                .filter(|p| procs::is_ours(*p, &marker(host)))
                .collect();
            for p in &pids {
                procs::signal(*p, Signal::SIGTERM);
            }
            for left in procs::wait_gone(&pids, &marker(host), Duration::from_secs(20)) {
                procs::signal(left, Signal::SIGKILL);
            }
        }
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

    /// Kills host `i`'s agent with SIGKILL (a crash), and waits until it is gone.
    pub fn kill_agent(&mut self, i: usize) -> anyhow::Result<()> {
        let host = &self.state.hosts[i];
        let pid = *self.state.agents.get(i).context("the lab runs no agents")?;
        let marker = host.root.display().to_string();
        procs::signal(pid, Signal::SIGKILL);
        if !procs::wait_gone(&[pid], &marker, Duration::from_secs(10)).is_empty() {
            bail!("{}'s agent (pid {pid}) survived SIGKILL", host.name);
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
        let config = host.path("etc/quorate/agent.toml");
        let child = spawn_agent(&agent_bin, &host, &config, failpoints)?;
        self.state.agents[i] = child.id();
        self.children.push(child);
        self.save()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while !procs::port_open(host.ip, layout::AGENT_PORT) {
            if Instant::now() > deadline {
                bail!(
                    "{}'s agent did not listen again: {}",
                    host.name,
                    procs::tail(&host.log_of("quorate-agent"), 8)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
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

fn spawn_logged(
    bin: &Path,
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
    Command::new(bin)
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))
}

fn spawn_kubelet(lab_bin: &Path, host: &Host) -> anyhow::Result<Child> {
    let args = ["kubelet".as_ref(), "--root".as_ref(), host.root.as_os_str()];
    spawn_logged(lab_bin, &args, &host.log_of("kubelet"), &[])
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
    spawn_logged(agent_bin, &args, &host.log_of("quorate-agent"), &env)
}

/// The agent's config on a lab host: static pods for etcd and the apiserver, the lab's tools.
fn write_agent_config(host: &Host, tools: &EtcdTools) -> anyhow::Result<PathBuf> {
    let q = host.quorate_pki_dir();
    let tool = match &tools.etcdutl {
        Some(etcdutl) => format!("etcdutl = {:?}", etcdutl.display().to_string()),
        None => format!("etcdctl = {:?}", tools.etcdctl.display().to_string()),
    };
    let text = format!(
        r#"# quorate-agent on lab host {name}
listen = "{ip}:{port}"
state_dir = {state:?}
allowed_clients = ["{coordinator}"]

[tls]
cert = {cert:?}
key = {key:?}
client_ca = {ca:?}

[etcd]
runtime = "static-pod"
manifest = {etcd_manifest:?}
{tool}

[apiserver]
runtime = "static-pod"
manifest = {apiserver_manifest:?}
ca = {apiserver_ca:?}
"#,
        name = host.name,
        ip = host.ip,
        port = layout::AGENT_PORT,
        state = host.path("var/lib/quorate-agent").display().to_string(),
        coordinator = crate::pki::COORDINATOR_NAME,
        cert = q.join("agent.crt").display().to_string(),
        key = q.join("agent.key").display().to_string(),
        ca = q.join("ca.crt").display().to_string(),
        etcd_manifest = host.manifests_dir().join("etcd.yaml").display().to_string(),
        apiserver_manifest = host
            .manifests_dir()
            .join("kube-apiserver.yaml")
            .display()
            .to_string(),
        apiserver_ca = host.pki_dir().join("ca.crt").display().to_string(),
    );
    let path = host.path("etc/quorate/agent.toml");
    write_atomic(&path, &text)?;
    Ok(path)
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
            .any(|(h, pid)| procs::is_ours(*pid, &h.root.display().to_string()));
        if running {
            bail!(
                "a lab is already running in {}: run `lab down --dir {}` first",
                dir.display(),
                dir.display()
            );
        }
        for entry in ["hosts", "pki", "coordinator"] {
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

/// Write temp, fsync, rename, fsync the dir.
pub fn write_atomic(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let dir = path.parent().context("path without parent")?;
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name()
            .context("path without file name")?
            .to_string_lossy()
    ));
    let mut f = fs::File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    fs::rename(&tmp, path).with_context(|| format!("renaming into {}", path.display()))?;
    fs::File::open(dir)?.sync_all()?;
    Ok(())
}
