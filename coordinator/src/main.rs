//! `quorate`: restore a multi-member etcd cluster from one snapshot, on every member at once.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use quorate::agent_client::GrpcAgent;
use quorate::engine::RollbackRefused;
use quorate::events::{self, CommandResult, Event, JsonObserver, Outcome};
use quorate::inventory::Inventory;
use quorate::journal::{Holder, Journal};
use quorate::ops::{self, Ending};
use quorate::output::{self, Format, exit};
use quorate::phases::Deadlines;
use quorate::plan::Plan;
use quorate::preflight::{Request, grpc_agents, preflight};
use quorate::progress::Progress;
use quorate::restore::{EtcdProbe, Observer, Restore};
use quorate_proto::model::RestoreId;

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
#[command(name = "quorate", version = quorate::VERSION, verbatim_doc_comment, after_help = exit::HELP)]
struct Cli {
    /// Output format: human text, or JSON lines for runbook automation.
    #[arg(long, global = true, value_enum, default_value_t = Format::Human)]
    output: Format,
    /// Print only the result (the report, or the error): no plan, no progress.
    #[arg(long, short, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Check the inventory, the agents and the snapshot, and print the per-member plan. Read-only.
    Plan(Target),
    /// Run the restore on every member. Shows the plan and asks for the cluster's name first,
    /// unless --yes; with no terminal and no --yes it refuses (exit code 8).
    Restore {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        timeouts: Timeouts,
        /// Proceed without asking: the cluster is down from the fence phase until unfence.
        #[arg(long)]
        yes: bool,
        /// Where the journal and report of each restore are kept.
        #[arg(long, env = "QUORATE_STATE_DIR", default_value_os_t = default_state_dir())]
        state_dir: PathBuf,
        /// On failure, stop where it failed instead of rolling every member back.
        #[arg(long)]
        no_rollback: bool,
    },
    /// Where a restore stands: its journal, and every member as its agent reports it now.
    Status(Journaled),
    /// Carry a stopped restore forward from where its journal says it stopped.
    Resume {
        #[command(flatten)]
        journaled: Journaled,
        #[command(flatten)]
        timeouts: Timeouts,
        /// On failure, stop where it failed instead of rolling every member back.
        #[arg(long)]
        no_rollback: bool,
    },
    /// Put every member of a stopped restore back on its original data. A restore that passed
    /// VERIFY (every member on the verified snapshot data) is refused unless --force: what was
    /// written to the restored cluster since then is lost.
    Rollback {
        #[command(flatten)]
        journaled: Journaled,
        #[command(flatten)]
        timeouts: Timeouts,
        /// Roll back a restore that passed VERIFY.
        #[arg(long)]
        force: bool,
    },
    /// A past restore's report (plan, phase times per member, snapshot, cluster and member IDs,
    /// revisions, what was restarted, where the original data is, what failed), from its state dir.
    Report {
        #[command(flatten)]
        journaled: Journaled,
        /// Markdown, or plain text.
        #[arg(long, value_enum, default_value_t)]
        format: quorate::report_cmd::DocFormat,
    },
    /// Past restores under --state-dir, newest first, each with its outcome.
    List {
        /// Where the journal and report of each restore are kept.
        #[arg(long, env = "QUORATE_STATE_DIR", default_value_os_t = default_state_dir())]
        state_dir: PathBuf,
    },
    /// Save, verify or sign a snapshot file; make a key to sign snapshots with.
    #[command(subcommand)]
    Snapshot(quorate::snapshot_cmd::SnapshotCmd),
    /// Mint, check or rotate the agents' and the coordinator's certificates (a CA for quorate alone).
    #[command(subcommand)]
    Certs(quorate::certs_cmd::CertsCmd),
    /// List, and with --yes remove through the agents, what ended restores left on every host:
    /// original data dirs, failed copies, the agents' own files. Never of an unfinished restore.
    Gc {
        #[command(flatten)]
        args: quorate::gc::GcArgs,
        /// Where the journal of each restore is kept: a restore whose journal has not ended is kept.
        #[arg(long, env = "QUORATE_STATE_DIR", default_value_os_t = default_state_dir())]
        state_dir: PathBuf,
        /// Deadline for each agent's answer (listing, then removing).
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        step_timeout: Duration,
    },
    /// Install, check or remove the quorate agents on every host (over SSH; see docs/agents.md).
    #[command(subcommand)]
    Agents(quorate::agents::AgentsCmd),
}

/// Phase deadlines. A member that does not answer within them is reported as unknown, and the
/// restore stops (and rolls back) rather than guessing.
#[derive(clap::Args, Debug, Clone)]
struct Timeouts {
    /// Deadline for a quick step on every member (claim, preserve, finish) and for verify.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    step_timeout: Duration,
    /// Deadline for stopping etcd or an apiserver everywhere (etcd may take ~15 s).
    #[arg(long, default_value = "90s", value_parser = humantime::parse_duration)]
    stop_timeout: Duration,
    /// Deadline for starting etcd or an apiserver everywhere.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    start_timeout: Duration,
    /// Deadline for every member to be healthy after the last one started.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    quorum_timeout: Duration,
    /// etcd starts member by member: how long to wait for one member's etcd to answer on its
    /// health endpoint before starting the next one anyway.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    member_start_wait: Duration,
    /// The slowest rate, in MiB/s, assumed for moving the snapshot: staging and restoring it get
    /// their deadline plus size / rate (staging: size × members, one copy each).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..))]
    min_throughput_mib: u64,
}

impl Timeouts {
    fn deadlines(&self) -> Deadlines {
        Deadlines {
            call: self.step_timeout,
            stop: self.stop_timeout,
            start: self.start_timeout,
            quorum: self.quorum_timeout,
            member_answer: self.member_start_wait,
            min_throughput: self.min_throughput_mib << 20,
        }
    }
}

#[derive(clap::Args, Debug)]
struct Journaled {
    /// The restore id (printed by `quorate restore`; also the name of its dir under --state-dir).
    restore_id: RestoreId,
    /// Where the journal and report of each restore are kept.
    #[arg(long, env = "QUORATE_STATE_DIR", default_value_os_t = default_state_dir())]
    state_dir: PathBuf,
}

#[derive(clap::Args, Debug)]
struct Target {
    /// The cluster: members, agent endpoints, TLS files (TOML; see deploy/inventory.example.toml).
    #[arg(long)]
    inventory: PathBuf,
    /// The snapshot to restore, as saved by `etcdctl snapshot save` (its appended sha256 is checked).
    #[arg(long)]
    snapshot: PathBuf,
    /// Restore without raising the revision above the live cluster's (by default quorate bumps it
    /// when every member's etcdutl can, so Kubernetes watch caches never see it go backwards).
    #[arg(long)]
    no_bump_revision: bool,
    /// Accept a snapshot without the sha256 trailer `snapshot save` appends: a raw copy of a
    /// member's member/snap/db, when there is no saved snapshot. Its integrity cannot be checked,
    /// and it may hold uncommitted or inconsistent data. A snapshot that has a trailer is checked
    /// and restored with etcd's hash check whatever this says.
    #[arg(long)]
    skip_hash_check: bool,
    /// Restore even though the inventory's members differ from the cluster's membership (a member
    /// moved, renamed, replaced or gone for good): the restored cluster has exactly the
    /// inventory's members, and a member left out keeps its old data and must never start again
    /// with it. Without this flag such a difference refuses the restore.
    #[arg(long)]
    allow_membership_change: bool,
    /// The snapshot's signature (`quorate snapshot sign`), sent to the members with the claim;
    /// default: SNAPSHOT.sig when it exists. Members with trusted_snapshot_keys refuse a snapshot
    /// without a valid signature by one of those keys.
    #[arg(long, value_name = "FILE")]
    signature: Option<PathBuf>,
}

impl Target {
    fn request(&self) -> Request {
        Request {
            inventory: self.inventory.clone(),
            snapshot: self.snapshot.clone(),
            no_bump_revision: self.no_bump_revision,
            skip_hash_check: self.skip_hash_check,
            allow_membership_change: self.allow_membership_change,
            etcd_dir: None,
            signature: self.signature.clone(),
        }
    }
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

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let format = cli.output;
    let quiet = cli.quiet;
    match cli.command {
        Cmd::Plan(target) => {
            let (_, _, plan) = match checked(format, &target).await {
                Ok(checked) => checked,
                Err(refused) => return Ok(refused),
            };
            match format {
                Format::Human => print!("{}", plan.render()),
                Format::Json => return Ok(events::finish(CommandResult::ok(&plan))),
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Restore {
            target,
            timeouts,
            yes,
            state_dir,
            no_rollback,
        } => {
            let (inventory, agents, plan) = match checked(format, &target).await {
                Ok(checked) => checked,
                Err(refused) => return Ok(refused),
            };
            events::set_restore_id(plan.restore_id);
            match format {
                Format::Human if !yes => print!("{}", plan.render()),
                Format::Human if !quiet => eprint!("{}", plan.render()),
                Format::Human => {}
                Format::Json => events::emit(&Event::Plan {
                    plan: serde_json::to_value(&plan)?,
                }),
            }
            if !yes && let Err(refused) = quorate::confirm::ask(&inventory.cluster.name) {
                return Ok(output::fail(
                    format,
                    &refused.into(),
                    Outcome::NotConfirmed,
                    exit::NOT_CONFIRMED,
                ));
            }
            interrupt(format);
            let mut journal =
                Journal::create(&state_dir, &plan, &inventory, &Holder::me("restore"))?;
            let mut progress = Progress::default();
            let run = Run::new(
                format,
                quiet,
                timeouts.deadlines(),
                &inventory,
                &agents,
                &plan,
            );
            run.forward(&mut journal, &mut progress, !no_rollback).await
        }
        Cmd::Resume {
            journaled,
            timeouts,
            no_rollback,
        } => {
            let (mut journal, plan, inventory, mut progress) = open(&journaled, "resume", format)?;
            let id = journaled.restore_id;
            interrupt(format);
            if progress.finished() {
                anyhow::bail!("restore {id} already finished: nothing to resume");
            }
            if progress.rollback_begun {
                anyhow::bail!(
                    "a rollback of restore {id} began: it cannot be resumed; finish the rollback with `quorate rollback {id}`"
                );
            }
            let agents = grpc_agents(&inventory)?;
            let run = Run::new(
                format,
                quiet,
                timeouts.deadlines(),
                &inventory,
                &agents,
                &plan,
            );
            run.forward(&mut journal, &mut progress, !no_rollback).await
        }
        Cmd::Rollback {
            journaled,
            timeouts,
            force,
        } => {
            let (mut journal, plan, inventory, mut progress) =
                open(&journaled, "rollback", format)?;
            interrupt(format);
            let agents = grpc_agents(&inventory)?;
            let run = Run::new(
                format,
                quiet,
                timeouts.deadlines(),
                &inventory,
                &agents,
                &plan,
            );
            let restore = run.restore();
            match restore.may_roll_back(&progress, force) {
                Ok(()) => {}
                Err(
                    refused @ (RollbackRefused::PastNoReturn { .. }
                    | RollbackRefused::ForwardOnly { .. }),
                ) => {
                    return Ok(output::fail(
                        format,
                        &refused.into(),
                        Outcome::Refused,
                        exit::PAST_NO_RETURN,
                    ));
                }
                Err(refused) => return Err(refused.into()),
            }
            let rolled = restore.rollback(&mut journal, &mut progress, force).await;
            run.observer.finish();
            match rolled {
                Ok(rollback) => output::rolled_back(format, &journal, &rollback, None, exit::OK),
                Err(error) => output::ending(
                    format,
                    &journal,
                    Ending::Stopped {
                        error,
                        rollback_error: None,
                    },
                ),
            }
        }
        Cmd::Status(journaled) => {
            events::set_restore_id(journaled.restore_id);
            let read = Journal::read(&journaled.state_dir, journaled.restore_id)?;
            let progress = Progress::from_entries(&read.entries)?;
            let agents = grpc_agents(&read.inventory)?;
            let names: Vec<(String, String)> = read
                .inventory
                .agents()
                .iter()
                .map(|a| (a.name.to_owned(), a.agent.to_owned()))
                .collect();
            let status = ops::status(
                &journaled.restore_id.to_string(),
                progress,
                read.holder,
                &names,
                &agents,
            )
            .await;
            match format {
                Format::Human => print!("{}", status.render()),
                Format::Json => return Ok(events::finish(CommandResult::ok(&status))),
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Report {
            journaled,
            format: doc,
        } => {
            quorate::report_cmd::run_report(&journaled.state_dir, journaled.restore_id, doc, format)
        }
        Cmd::List { state_dir } => quorate::report_cmd::run_list(&state_dir, format),
        Cmd::Snapshot(cmd) => quorate::snapshot_cmd::run(cmd, format).await,
        Cmd::Certs(cmd) => quorate::certs_cmd::run(cmd, format),
        Cmd::Gc {
            args,
            state_dir,
            step_timeout,
        } => quorate::gc::run(args, &state_dir, format, step_timeout).await,
        Cmd::Agents(cmd) => quorate::agents::run(cmd, format).await,
    }
}

/// Opens a restore's journal to carry it on, holding its lock.
fn open(
    j: &Journaled,
    command: &str,
    format: Format,
) -> anyhow::Result<(Journal, Plan, Inventory, Progress)> {
    events::set_restore_id(j.restore_id);
    let opened = Journal::open(&j.state_dir, j.restore_id, &Holder::me(command))?;
    if let Some(line) = opened.truncated {
        output::note(
            format,
            &format!(
                "the journal's last line ({line}) was cut short by a crash and was dropped; its step is run again (every step is idempotent)"
            ),
        );
    }
    let progress = Progress::from_entries(&opened.entries).map_err(|e| {
        anyhow::anyhow!(
            "restore {}: {}: {e}; nothing was changed",
            j.restore_id,
            opened.journal.path().display()
        )
    })?;
    Ok((opened.journal, opened.plan, opened.inventory, progress))
}

/// Preflight, as events; on a refusal, the refusal reported and its exit code.
async fn checked(
    format: Format,
    target: &Target,
) -> Result<(Inventory, Vec<GrpcAgent>, Plan), ExitCode> {
    let started = std::time::Instant::now();
    if format == Format::Json {
        events::emit(&Event::PhaseStarted {
            phase: "preflight".into(),
            index: 0,
            total: quorate::phases::Phase::ALL.len(),
        });
    }
    match preflight(&target.request()).await {
        Ok(checked) => {
            if format == Format::Json {
                events::emit(&Event::PhaseDone {
                    phase: "preflight".into(),
                    elapsed_seconds: started.elapsed().as_secs_f64(),
                });
            }
            Ok(checked)
        }
        Err(e) => {
            if format == Format::Json {
                events::emit(&Event::PhaseFailed {
                    phase: "preflight".into(),
                    direction: events::DirectionName::Forward,
                    elapsed_seconds: started.elapsed().as_secs_f64(),
                    errors: vec![events::ErrorInfo::from_anyhow(&e).with_phase("preflight")],
                });
            }
            Err(output::fail(format, &e, Outcome::Refused, exit::REFUSED))
        }
    }
}

/// SIGINT and SIGTERM stop the run at the next phase boundary (see interrupt.rs).
fn interrupt(format: Format) {
    if let Err(e) = quorate::interrupt::install(format) {
        tracing::warn!("cannot listen for SIGINT/SIGTERM: {e}");
    }
}

/// What one run needs besides its journal.
struct Run<'a> {
    format: Format,
    /// What tells the operator how the run goes (see `quorate::view`).
    observer: Box<dyn Observer>,
    probe: EtcdProbe<'a>,
    deadlines: Deadlines,
    inventory: &'a Inventory,
    agents: &'a [GrpcAgent],
    plan: &'a Plan,
}

impl<'a> Run<'a> {
    fn new(
        format: Format,
        quiet: bool,
        deadlines: Deadlines,
        inventory: &'a Inventory,
        agents: &'a [GrpcAgent],
        plan: &'a Plan,
    ) -> Self {
        let observer: Box<dyn Observer> = match format {
            Format::Human => {
                let names = inventory
                    .agents()
                    .iter()
                    .map(|a| a.name.to_owned())
                    .collect();
                quorate::view::human(quiet, names)
            }
            Format::Json => Box::new(JsonObserver::default()),
        };
        Self {
            format,
            observer,
            probe: EtcdProbe { inventory },
            deadlines,
            inventory,
            agents,
            plan,
        }
    }

    /// Carries the restore forward (restore, resume), then reports how it ended.
    async fn forward(
        &self,
        journal: &mut Journal,
        progress: &mut Progress,
        auto_rollback: bool,
    ) -> anyhow::Result<ExitCode> {
        let ending = ops::forward(&self.restore(), journal, progress, auto_rollback).await;
        self.observer.finish();
        output::ending(self.format, journal, ending)
    }

    fn restore(&self) -> Restore<'_, GrpcAgent, EtcdProbe<'a>> {
        Restore {
            inventory: self.inventory,
            plan: self.plan,
            agents: self.agents,
            probe: &self.probe,
            deadlines: self.deadlines.clone(),
            observer: self.observer.as_ref(),
            member_times: Default::default(),
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    quorate_proto::tls::install_default_provider();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(quorate::log_writer::LogWriter)
        .init();
    if quorate::FAILPOINTS {
        eprintln!("{}", quorate::FAILPOINTS_WARNING);
    }
    #[cfg(all(feature = "failpoints", debug_assertions))]
    let _failpoints = fail::FailScenario::setup();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage(&e),
    };
    let format = cli.output;
    events::set_command(cli.command.name());
    match run(cli).await {
        Ok(code) => code,
        Err(e) => output::error(format, &e),
    }
}

/// A command line clap refused (or --help, --version): clap's message, and with
/// `--output json` a `result` event too.
fn usage(e: &clap::Error) -> ExitCode {
    let _ = e.print();
    if e.exit_code() == 0 {
        return ExitCode::SUCCESS;
    }
    let args: Vec<String> = std::env::args().collect();
    let json = args.iter().any(|a| a == "--output=json")
        || args
            .windows(2)
            .any(|w| w[0] == "--output" && w[1] == "json");
    if json {
        let message = e.render().to_string();
        let message = message.trim().trim_start_matches("error: ");
        events::emit(&Event::Result(CommandResult::failed(
            Outcome::Usage,
            exit::USAGE,
            events::ErrorInfo::new("usage", message).with_advice("see `quorate --help`"),
        )));
    }
    ExitCode::from(exit::USAGE)
}

impl Cmd {
    /// The command's name in the event stream.
    fn name(&self) -> &'static str {
        match self {
            Cmd::Plan(_) => "plan",
            Cmd::Restore { .. } => "restore",
            Cmd::Status(_) => "status",
            Cmd::Resume { .. } => "resume",
            Cmd::Rollback { .. } => "rollback",
            Cmd::Snapshot(cmd) => cmd.name(),
            Cmd::Agents(cmd) => cmd.name(),
            Cmd::Certs(cmd) => cmd.name(),
            Cmd::Gc { .. } => "gc",
            Cmd::Report { .. } => "report",
            Cmd::List { .. } => "list",
        }
    }
}
