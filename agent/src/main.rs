//! `quorate-agent`: the per-member half of quorate.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use quorate_agent::config::AgentConfig;
use quorate_agent::service::engine_from_config;

/// Runs on every etcd member and carries out the steps of a quorate restore there: stop and start
/// etcd and the kube-apiserver, preserve the data dir, restore the staged snapshot. The
/// coordinator (`quorate`) never sends paths or commands, only a restore id, a step and cluster
/// facts; everything local comes from this agent's config.
///
/// The agent speaks gRPC over mutual TLS only: clients need a certificate from `tls.client_ca`
/// whose DNS name is listed in `allowed_clients`.
///
/// Example: quorate-agent --config /etc/quorate/agent.toml
#[derive(Debug, Parser)]
#[command(version = quorate_agent::VERSION, about, long_about, verbatim_doc_comment)]
struct Cli {
    /// The agent config (TOML), e.g. /etc/quorate/agent.toml.
    #[arg(long, global = true, env = "QUORATE_AGENT_CONFIG", value_name = "PATH")]
    config: Option<PathBuf>,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Loads the config, reads etcd's manifest or unit, finds the restore tool and prints what it found;
    /// exits non-zero on any problem. Changes nothing.
    CheckConfig,
    /// Reads what this host runs (etcd as a static pod or a systemd unit, a kube-apiserver, the
    /// restore tool) and prints it with the agent.toml that fits, as one JSON object. Changes
    /// nothing; needs no config. `quorate agents install` runs it on every host.
    Discover(DiscoverArgs),
}

#[derive(Debug, clap::Args)]
struct DiscoverArgs {
    /// The address the agent is to listen on, host:port.
    #[arg(long)]
    listen: String,
    /// A name accepted on the coordinator's client certificate (repeat for more).
    #[arg(long = "allowed-client", required = true)]
    allowed_clients: Vec<String>,
    #[arg(long, default_value = "/etc/quorate/pki/agent.crt")]
    cert: PathBuf,
    #[arg(long, default_value = "/etc/quorate/pki/agent.key")]
    key: PathBuf,
    #[arg(long, default_value = "/etc/quorate/pki/ca.crt")]
    client_ca: PathBuf,
    #[arg(long, default_value = "/var/lib/quorate-agent")]
    state_dir: PathBuf,
    /// An apiserver-only host's name in the inventory.
    #[arg(long)]
    host_name: Option<String>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> ExitCode {
    quorate_proto::tls::install_default_provider();
    if quorate_agent::FAILPOINTS {
        eprintln!("{}", quorate_agent::FAILPOINTS_WARNING);
    }
    #[cfg(all(feature = "failpoints", debug_assertions))]
    let _failpoints = fail::FailScenario::setup();
    let cli = Cli::parse();
    init_logs(cli.log_format);
    if let Some(Command::Discover(args)) = &cli.command {
        let found = quorate_agent::discover::discover(&quorate_agent::discover::Wanted {
            listen: args.listen.clone(),
            allowed_clients: args.allowed_clients.clone(),
            cert: args.cert.clone(),
            key: args.key.clone(),
            client_ca: args.client_ca.clone(),
            state_dir: args.state_dir.clone(),
            host_name: args.host_name.clone(),
        });
        return match serde_json::to_string(&found) {
            Ok(line) => {
                println!("{line}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("quorate-agent: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let result = match &cli.config {
        None => Err(anyhow::anyhow!(
            "no config given: pass --config /etc/quorate/agent.toml (see --help)"
        )),
        Some(path) => match cli.command {
            Some(Command::CheckConfig) => check_config(path),
            Some(Command::Discover(_)) | None => run(path),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("quorate-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(path: &Path) -> anyhow::Result<()> {
    let config = AgentConfig::load(path)?;
    // Staged snapshots hold every Secret of the cluster: the state dir is private.
    let tightened = quorate_agent::private::tighten_state_dir(&config.state_dir)?;
    for t in &tightened {
        tracing::warn!(
            path = %t.path.display(),
            "narrowed the mode of {} from {:o} to {:o}: the state dir and everything in it is \
             private to the agent",
            t.path.display(),
            t.was,
            t.now
        );
    }
    if !tightened.is_empty() {
        tracing::warn!(
            count = tightened.len(),
            state_dir = %config.state_dir.display(),
            "tightened the state dir: its dirs are now 0700 and its files 0600"
        );
    }
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async {
        let engine = engine_from_config(&config);
        let active = engine.state.active()?;
        match engine.member(active) {
            _ if engine.apiserver_only() => tracing::info!(host = %engine.host_name, state_dir = %config.state_dir.display(), "quorate-agent starting on an apiserver-only host"),
            Ok(m) => tracing::info!(member = %m.name, state_dir = %config.state_dir.display(), "quorate-agent starting"),
            // Still serve: Describe then tells the coordinator (and the operator) what is wrong.
            Err(e) => tracing::error!("{e}"),
        }
        if let Some(id) = active {
            tracing::warn!(restore_id = %id, "this member is locked by an unfinished restore");
        }
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("installing the SIGTERM handler")?;
        let shutdown = async move {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
                _ = tokio::signal::ctrl_c() => tracing::info!("interrupted: shutting down"),
            }
        };
        quorate_agent::server::serve(&config, shutdown).await
    })
}

/// Prints how this host's kube-apiserver's `/readyz` is checked, if it runs one; a reason it
/// cannot be goes to `problems`.
fn check_apiserver(
    engine: &quorate_agent::engine::Engine,
    health_config: &quorate_agent::health::HealthConfig,
    problems: &mut Vec<String>,
) {
    match quorate_agent::health::apiserver_readyz(engine, health_config) {
        Some(Ok(p)) => println!(
            "kube-apiserver  {} ({}, {})",
            engine.apiserver.as_ref().map_or("", |a| a.kind()),
            p.url,
            p.auth
        ),
        Some(Err(e)) => {
            println!("kube-apiserver  {}: {}", e.url, e.problem);
            problems.push(e.problem);
        }
        None => println!("kube-apiserver  none on this host"),
    }
}

fn check_config(path: &Path) -> anyhow::Result<()> {
    let config = AgentConfig::load(path)?;
    println!("config          {}", path.display());
    println!(
        "listen          {} (mTLS; clients: {})",
        config.listen,
        config.allowed_clients.join(", ")
    );
    quorate_agent::server::tls_config(&config)?;
    println!("tls             ok ({})", config.tls.cert.display());
    if config.trusted_keys.is_empty() {
        println!("snapshots       signatures not required (no trusted_snapshot_keys)");
    } else {
        println!(
            "snapshots       only those signed by a trusted key: {}",
            quorate_proto::signature::key_list(&config.trusted_keys)
        );
    }
    let engine = engine_from_config(&config);
    let active = engine.state.active()?;
    let health_config = config.health();
    let mut problems = Vec::new();
    if engine.apiserver_only() {
        println!(
            "role            apiserver-only host {} (no [etcd]: etcd steps are refused)",
            engine.host_name
        );
        check_apiserver(&engine, &health_config, &mut problems);
        println!("state dir       {}", config.state_dir.display());
        if let Some(id) = active {
            println!(
                "active restore  {id} (finish it with `quorate resume {id}` or `quorate rollback {id}`)"
            );
        }
        if !problems.is_empty() {
            anyhow::bail!("{}", problems.join("; "));
        }
        println!("ok");
        return Ok(());
    }
    let etcd = engine.etcd()?;
    let member = engine.member(active)?;
    let data_dir = engine.data_dir_of(&member);
    println!(
        "etcd runtime    {} ({})",
        etcd.kind(),
        etcd.definition().display()
    );
    println!("etcd settings   {}", member.command.source);
    println!(
        "member          {} peer {}",
        member.name,
        member.peer_urls.join(",")
    );
    println!("client urls     {}", member.client_urls.join(","));
    let endpoints = quorate_agent::health::etcd_endpoints(&member, &health_config.etcd);
    match &endpoints {
        Ok(e) => println!(
            "etcd health     {}",
            e.iter()
                .map(quorate_agent::health::EtcdEndpoint::describe)
                .collect::<Vec<_>>()
                .join("; ")
        ),
        Err(e) => {
            println!("etcd health     cannot be probed: {e}");
            problems.push(e.to_string());
        }
    }
    let running = etcd
        .is_running(
            active
                .map(|id| engine.etcd_aside(id))
                .transpose()?
                .as_deref(),
        )
        .unwrap_or_else(|e| {
            println!("etcd process    cannot tell whether it runs: {e}");
            problems.push(e.to_string());
            false
        });
    let (version, source) = quorate_agent::describe::etcd_version(
        &engine,
        &member,
        endpoints.as_deref().unwrap_or_default(),
        running,
    );
    println!(
        "etcd            {} ({source})",
        if version.is_empty() {
            "version unknown"
        } else {
            &version
        }
    );
    let layout =
        quorate_agent::steps::layout::Layout::detect(&data_dir, member.wal_dir.as_deref())?;
    for (label, line) in layout.report() {
        println!("{label:<16}{line}");
    }
    for p in layout.problems() {
        println!("layout          UNSUPPORTED: {p}");
        problems.push(format!(
            "layout not supported (preflight will refuse it until it is changed): {p}"
        ));
    }
    check_apiserver(&engine, &health_config, &mut problems);
    println!("state dir       {}", config.state_dir.display());
    if let Some(id) = active {
        println!(
            "active restore  {id} (finish it with `quorate resume {id}` or `quorate rollback {id}`)"
        );
    }
    let tool = engine.tool.info()?;
    println!(
        "restore tool    {} {} at {}{}",
        tool.kind.name(),
        tool.version,
        tool.program.display(),
        if tool.supports_bump_revision {
            " (supports --bump-revision)"
        } else {
            ""
        }
    );
    if !problems.is_empty() {
        anyhow::bail!("{}", problems.join("; "));
    }
    println!("ok");
    Ok(())
}
