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
use quorate_proto::tls::TlsFiles;
use serde::{Deserialize, Serialize};

use crate::layout::{self, Host};
use crate::pki::LabPki;
use crate::procs;
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
    /// The kubelet stand-in's PID per host, in host order (empty for a systemd lab).
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
    pub runtime: LabRuntime,
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
            if opts.runtime == LabRuntime::Systemd {
                write_systemd_host(host, &tools, &initial_cluster, &opts.lab_bin)?;
                continue;
            }
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
            for controller in layout::CONTROLLERS {
                let command = host.controller_command(&opts.lab_bin, controller);
                write_atomic(
                    &host.manifests_dir().join(format!("{controller}.yaml")),
                    &layout::static_pod(controller, controller, &command, 5),
                )?;
            }
        }
        let mut lab = Self {
            state: LabState {
                dir: dir.clone(),
                net: opts.net,
                tools,
                lab_bin: opts.lab_bin.clone(),
                hosts,
                runtime: opts.runtime,
                kubelets: Vec::new(),
                agents: Vec::new(),
            },
            children: Vec::new(),
        };
        lab.save()?;
        for host in lab.state.hosts.clone() {
            if opts.runtime == LabRuntime::Systemd {
                if let Err(e) = systemctl(&host, "start") {
                    let _ = lab.down();
                    return Err(e);
                }
            } else {
                let child = spawn_kubelet(&opts.lab_bin, &host)?;
                lab.state.kubelets.push(child.id());
                lab.children.push(child);
            }
            if let Some(agent_bin) = &opts.agent_bin {
                let config = write_agent_config(&host, &lab.state.tools, opts.runtime)?;
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
            apiservers: Vec::new(),
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
            let systemd = self.state.runtime == LabRuntime::Systemd;
            let etcd_log = if systemd { ETCD_UNIT } else { "etcd" };
            for host in &self.state.hosts {
                if !Self::member_healthy(host).await {
                    waiting.push((host, etcd_log, "etcd is not healthy"));
                } else if !systemd && self.apiserver_readyz(host).await != Some(200) {
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
        if self.state.runtime == LabRuntime::Systemd {
            stop_units(&hosts)?;
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
        let config = host.path("etc/quorate/agent.toml");
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

/// A systemd lab host the kubespray way: `etcd.service` running the bare etcd binary with every
/// setting in `/etc/etcd.env`, and the `systemctl` stand-in wrapper.
fn write_systemd_host(
    host: &Host,
    tools: &EtcdTools,
    initial_cluster: &str,
    lab_bin: &Path,
) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    for dir in [
        host.unit_dir(),
        host.path("run/systemd"),
        host.path("var/log"),
        host.path("usr/bin"),
        host.data_dir()
            .parent()
            .expect("data dir has a parent")
            .to_owned(),
    ] {
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    write_atomic(
        &host.etcd_env_file(),
        &host.etcd_env(tools, initial_cluster),
    )?;
    write_atomic(&host.unit_dir().join(ETCD_UNIT), &host.etcd_unit(tools))?;
    let wrapper = host.systemctl();
    write_atomic(
        &wrapper,
        &crate::systemctl::wrapper_script(lab_bin, &host.root),
    )?;
    fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// `systemctl <verb> etcd.service` on `host`, through its stand-in wrapper.
fn systemctl(host: &Host, verb: &str) -> anyhow::Result<()> {
    let out = Command::new(host.systemctl())
        .args([verb, ETCD_UNIT])
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", host.systemctl().display()))?;
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
            .filter(|h| h.systemctl().is_file())
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

/// The agent's `[etcd]` section (and `[apiserver]`, for static pods) on a lab host.
fn agent_runtime_sections(host: &Host, tool: &str, runtime: LabRuntime) -> String {
    let s = |p: PathBuf| format!("{:?}", p.display().to_string());
    match runtime {
        LabRuntime::Systemd => format!(
            "[etcd]\nruntime = \"systemd\"\nunit = \"{ETCD_UNIT}\"\nunit_dir = {}\nsystemctl = {}\n{tool}\n",
            s(host.unit_dir()),
            s(host.systemctl()),
        ),
        LabRuntime::StaticPod => format!(
            "[etcd]\nruntime = \"static-pod\"\nmanifest = {}\n{tool}\n\n[apiserver]\nruntime = \"static-pod\"\nmanifest = {}\nca = {}\n",
            s(host.manifests_dir().join("etcd.yaml")),
            s(host.manifests_dir().join("kube-apiserver.yaml")),
            s(host.pki_dir().join("ca.crt")),
        ),
    }
}

/// The agent's config on a lab host: the runtime's sections, the lab's tools.
fn write_agent_config(
    host: &Host,
    tools: &EtcdTools,
    runtime: LabRuntime,
) -> anyhow::Result<PathBuf> {
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

{sections}"#,
        name = host.name,
        ip = host.ip,
        port = layout::AGENT_PORT,
        state = host.path("var/lib/quorate-agent").display().to_string(),
        coordinator = crate::pki::COORDINATOR_NAME,
        cert = q.join("agent.crt").display().to_string(),
        key = q.join("agent.key").display().to_string(),
        ca = q.join("ca.crt").display().to_string(),
        sections = agent_runtime_sections(host, &tool, runtime),
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
            .any(|(h, pid)| procs::is_ours(*pid, &h.root.display().to_string()))
            || old.state.hosts.iter().any(unit_running);
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
