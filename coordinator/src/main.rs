//! `quorate`: restore a multi-member etcd cluster from one snapshot, on every member at once.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use futures::future::join_all;
use quorate::agent_client::{AgentClient, GrpcAgent};
use quorate::inventory::Inventory;
use quorate::journal::Journal;
use quorate::plan::{self, Plan};
use quorate::restore::{Deadlines, EtcdProbe, Observer, Phase, Restore};
use quorate::snapshot;

/// Restore a multi-member etcd cluster from one snapshot, on every member at once, safely.
///
/// quorate talks over mutual TLS to a quorate-agent on every etcd member and runs the restore in
/// lockstep: stage the snapshot everywhere, fence the kube-apiservers, halt etcd, preserve each data
/// dir, restore each member with its own name and peer URL under a fresh cluster token, start etcd
/// in quorum order, verify, unfence. Nothing is deleted: original data dirs stay at
/// <data-dir>.quorate-<restore id>.
///
/// Start with `quorate plan`: it touches nothing and shows what `quorate restore` would do.
///
///   quorate plan    --inventory inventory.toml --snapshot /backup/etcd.db
///   quorate restore --inventory inventory.toml --snapshot /backup/etcd.db --yes
#[derive(Parser, Debug)]
#[command(name = "quorate", version, verbatim_doc_comment)]
struct Cli {
    /// Output format: human text, or JSON lines for runbook automation.
    #[arg(long, global = true, value_enum, default_value_t = Output::Human)]
    output: Output,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Human,
    Json,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Check the inventory, the agents and the snapshot, and print the per-member plan. Read-only.
    Plan(Target),
    /// Run the restore on every member (requires --yes).
    Restore {
        #[command(flatten)]
        target: Target,
        /// Proceed without asking: the cluster is down from the fence phase until unfence.
        #[arg(long)]
        yes: bool,
        /// Where the journal and report of each restore are kept.
        #[arg(long, env = "QUORATE_STATE_DIR", default_value_os_t = default_state_dir())]
        state_dir: PathBuf,
    },
}

#[derive(clap::Args, Debug)]
struct Target {
    /// The cluster: members, agent endpoints, TLS files (TOML; see deploy/inventory.example.toml).
    #[arg(long)]
    inventory: PathBuf,
    /// The snapshot to restore, as saved by `etcdctl snapshot save` (its appended sha256 is checked).
    #[arg(long)]
    snapshot: PathBuf,
}

fn default_state_dir() -> PathBuf {
    if nix_is_root() {
        PathBuf::from("/var/lib/quorate")
    } else {
        std::env::var_os("HOME")
            .map_or_else(|| PathBuf::from("."), PathBuf::from)
            .join(".local/state/quorate")
    }
}

fn nix_is_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
}

struct Printer(Output);

impl Observer for Printer {
    fn phase_started(&self, phase: Phase, index: usize) {
        match self.0 {
            Output::Human => eprintln!("[{index}/9] {} ...", phase.name()),
            Output::Json => {
                emit(&serde_json::json!({"event": "phase-started", "phase": phase, "index": index}))
            }
        }
    }
    fn phase_done(&self, phase: Phase, elapsed: Duration) {
        match self.0 {
            Output::Human => eprintln!(
                "      {} done in {:.2}s",
                phase.name(),
                elapsed.as_secs_f64()
            ),
            Output::Json => emit(
                &serde_json::json!({"event": "phase-done", "phase": phase, "seconds": elapsed.as_secs_f64()}),
            ),
        }
    }
    fn note(&self, text: &str) {
        match self.0 {
            Output::Human => eprintln!("      {text}"),
            Output::Json => emit(&serde_json::json!({"event": "note", "text": text})),
        }
    }
}

fn emit(value: &serde_json::Value) {
    println!("{value}");
}

fn agents(inventory: &Inventory) -> anyhow::Result<Vec<GrpcAgent>> {
    inventory
        .members
        .iter()
        .map(|m| {
            let server_name = m
                .agent_server_name
                .clone()
                .unwrap_or_else(|| host_of(&m.agent).to_owned());
            GrpcAgent::new(&m.name, &m.agent, &server_name, &inventory.agent_tls)
        })
        .collect()
}

fn host_of(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or(rest);
    authority
        .rsplit_once(':')
        .map_or(authority, |(h, _)| h)
        .trim_matches(['[', ']'])
}

async fn preflight(target: &Target) -> anyhow::Result<(Inventory, Vec<GrpcAgent>, Plan)> {
    let inventory = Inventory::load(&target.inventory)?;
    let checked = snapshot::check(&target.snapshot)?;
    let agents = agents(&inventory)?;
    let described = join_all(agents.iter().map(|a| async {
        a.describe(Duration::from_secs(10))
            .await
            .map_err(|e| e.to_string())
    }))
    .await;
    let plan = plan::build(&inventory, &described, checked)?;
    Ok((inventory, agents, plan))
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Cmd::Plan(target) => {
            let (_, _, plan) = preflight(&target).await?;
            match cli.output {
                Output::Human => print!("{}", plan.render()),
                Output::Json => println!("{}", serde_json::to_string(&plan)?),
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Restore {
            target,
            yes,
            state_dir,
        } => {
            let (inventory, agents, plan) = preflight(&target).await?;
            if !yes {
                print!("{}", plan.render());
                eprintln!(
                    "Nothing was changed. Re-run with --yes to restore: the cluster is down from fence to unfence."
                );
                return Ok(ExitCode::from(2));
            }
            if cli.output == Output::Human {
                eprint!("{}", plan.render());
            }
            let mut journal = Journal::create(&state_dir, &plan).map_err(|e| {
                anyhow::anyhow!("creating the journal under {}: {e}", state_dir.display())
            })?;
            let printer = Printer(cli.output);
            let probe = EtcdProbe {
                inventory: &inventory,
                plan: &plan,
            };
            let restore = Restore {
                inventory: &inventory,
                plan: &plan,
                agents: &agents,
                probe: &probe,
                deadlines: Deadlines::default(),
                observer: &printer,
            };
            let report = restore.run(&mut journal).await?;
            let path = journal.write_report(&report)?;
            match cli.output {
                Output::Human => print_report(&report, &path),
                Output::Json => emit(
                    &serde_json::json!({"event": "done", "report": report, "report_path": path}),
                ),
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn print_report(report: &quorate::restore::Report, path: &Path) {
    println!(
        "restore {} done in {:.1}s",
        report.restore_id, report.total_seconds
    );
    if let Some(before) = report.before.first() {
        println!(
            "  cluster ID {:x} -> {:x}",
            before.cluster_id, report.after.cluster_id
        );
    } else {
        println!("  cluster ID {:x}", report.after.cluster_id);
    }
    println!(
        "  revision {}  keys {}  HashKV {:x} on every member  token {}",
        report.after.revision, report.after.keys, report.after.hash, report.cluster_token
    );
    for (m, dir) in &report.preserved_dirs {
        println!("  {m}: original data kept at {dir}");
    }
    let phases: Vec<String> = report
        .phases
        .iter()
        .map(|p| format!("{} {:.2}s", p.phase.name(), p.seconds))
        .collect();
    println!("  phases: {}", phases.join(", "));
    println!("  report: {}", path.display());
}

#[tokio::main]
async fn main() -> ExitCode {
    quorate_proto::tls::install_default_provider();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let output = cli.output;
    match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            match output {
                Output::Human => eprintln!("error: {e:#}"),
                Output::Json => {
                    emit(&serde_json::json!({"event": "error", "error": format!("{e:#}")}))
                }
            }
            ExitCode::FAILURE
        }
    }
}
