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
use quorate::ops::{self, Ending};
use quorate::plan::{self, Plan};
use quorate::restore::{Deadlines, EtcdProbe, Observer, Phase, Progress, Restore};
use quorate::rollback::RollbackReport;
use quorate::snapshot;
use quorate::snapshot_verify;
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
#[command(name = "quorate", version, verbatim_doc_comment)]
struct Cli {
    /// Output format: human text, or JSON lines for runbook automation.
    #[arg(long, global = true, value_enum, default_value_t = Output::Human)]
    output: Output,
    #[command(flatten)]
    timeouts: Timeouts,
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
        /// Roll back a restore that passed VERIFY.
        #[arg(long)]
        force: bool,
    },
    /// Save a snapshot from a healthy member, or verify a snapshot file.
    #[command(subcommand)]
    Snapshot(SnapshotCmd),
}

#[derive(Subcommand, Debug)]
enum SnapshotCmd {
    /// Stream a snapshot from a healthy member (a caught-up follower if there is one, else the
    /// leader) into FILE, check its appended sha256, and describe it in FILE.json.
    Save {
        /// The cluster: members' client_urls and etcd_tls (TOML; see deploy/inventory.example.toml).
        #[arg(long)]
        inventory: PathBuf,
        /// Where to write the snapshot; refused if it exists, unless --force.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// Replace an existing FILE.
        #[arg(long)]
        force: bool,
        /// After saving, keep N snapshots of FILE's series in its directory (the new one
        /// included) and remove the older ones by mtime, each with its .json. A series is the
        /// file name up to its first digit, plus its extension: etcd-2026-11-25T03.db is in
        /// series `etcd-` `.db` with etcd-2026-11-24T03.db, but not with etcd-notes.db or
        /// etcd-2026-11-24T03.log. FILE's name must hold a digit after a prefix.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        keep: Option<u32>,
    },
    /// Check a snapshot file: its appended sha256, `snapshot status`, and with --test-restore a
    /// restore into a throwaway etcd that must hold the default and kube-system namespaces.
    Verify {
        file: PathBuf,
        /// Restore it into a temp dir and start a throwaway single-member etcd on free loopback
        /// ports to count its keys; both are removed afterwards.
        #[arg(long)]
        test_restore: bool,
        /// A dir holding etcd and etcdutl (or etcdctl for etcd 3.4); default: $QUORATE_ETCD_DIR,
        /// else etcdutl and etcd on PATH.
        #[arg(long, value_name = "DIR")]
        etcd_dir: Option<PathBuf>,
    },
}

/// Phase deadlines. A member that does not answer within them is reported as unknown, and the
/// restore stops (and rolls back) rather than guessing.
#[derive(clap::Args, Debug, Clone)]
struct Timeouts {
    /// Deadline for a quick step on every member (claim, preserve, finish) and for verify.
    #[arg(long, global = true, default_value = "30s", value_parser = humantime::parse_duration)]
    step_timeout: Duration,
    /// Deadline for stopping etcd or an apiserver everywhere (etcd may take ~15 s).
    #[arg(long, global = true, default_value = "90s", value_parser = humantime::parse_duration)]
    stop_timeout: Duration,
    /// Deadline for starting etcd or an apiserver everywhere.
    #[arg(long, global = true, default_value = "120s", value_parser = humantime::parse_duration)]
    start_timeout: Duration,
    /// Deadline for a quorum, then every member, to be healthy after start.
    #[arg(long, global = true, default_value = "120s", value_parser = humantime::parse_duration)]
    quorum_timeout: Duration,
}

impl Timeouts {
    fn deadlines(&self) -> Deadlines {
        Deadlines {
            call: self.step_timeout,
            stop: self.stop_timeout,
            start: self.start_timeout,
            quorum: self.quorum_timeout,
            ..Deadlines::default()
        }
    }
}

/// The exit code of a restore that failed after VERIFY (resume completes it), and of a
/// rollback refused for that reason.
const EXIT_PAST_NO_RETURN: u8 = 3;

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

/// One client per agent: the members', then the apiserver hosts' ([`Inventory::agents`]).
fn agents(inventory: &Inventory) -> anyhow::Result<Vec<GrpcAgent>> {
    inventory
        .agents()
        .into_iter()
        .map(|a| {
            let server_name = a.agent_server_name.unwrap_or_else(|| host_of(a.agent));
            GrpcAgent::new(a.name, a.agent, server_name, &inventory.agent_tls)
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
    let path = target.snapshot.clone();
    let skip = target.skip_hash_check;
    let checked = tokio::task::spawn_blocking(move || snapshot::check_with(&path, skip))
        .await
        .expect("the sha256 check does not panic")?;
    // etcd restores the data format of its own major.minor only.
    let (snapshot_etcd_version, snapshot_version_unread) =
        match snapshot_verify::file_cluster_version(&target.snapshot) {
            Ok(v) => (v, None),
            Err(e) => (None, Some(e)),
        };
    let agents = agents(&inventory)?;
    let described = join_all(agents.iter().map(|a| async {
        a.describe(Duration::from_secs(10))
            .await
            .map_err(|e| e.to_string())
    }))
    .await;
    // The live cluster's revision, when it answers: the bump must pass it. Its membership too:
    // the inventory must list every member.
    let revisions = join_all(inventory.members.iter().map(|m| async {
        let view = quorate::verify::view(&m.name, &m.client_urls[0], inventory.etcd_tls.as_ref());
        tokio::time::timeout(Duration::from_secs(3), view)
            .await
            .ok()
            .and_then(Result::ok)
            .map(|v| v.revision)
    }));
    let (live, live_membership) = tokio::join!(revisions, quorate::membership::live(&inventory));
    let options = plan::Options {
        live_revision: live.into_iter().flatten().max(),
        no_bump_revision: target.no_bump_revision,
        skip_hash_check: target.skip_hash_check,
        snapshot_etcd_version,
        snapshot_version_unread,
        live_membership,
        allow_membership_change: target.allow_membership_change,
    };
    let mut plan = plan::build(&inventory, &described, checked, &options)?;
    // The same chain as `quorate snapshot verify` (its sha256 was checked above): `snapshot
    // status` with a local etcdutl, when there is one; the agents run it again when staging.
    let verify_options = snapshot_verify::VerifyOptions {
        skip_hash_check: target.skip_hash_check,
        ..snapshot_verify::VerifyOptions::default()
    };
    match snapshot_verify::find_tools(None, false) {
        Ok(_) => {
            snapshot_verify::verify(&target.snapshot, &verify_options)
                .await
                .map_err(|e| anyhow::anyhow!("preflight refused the snapshot; nothing was changed: {e}"))?;
        }
        Err(e) => plan.warnings.push(format!(
            "no local etcdutl/etcdctl to run `snapshot status` here ({e}); the agents run it when the snapshot is staged"
        )),
    }
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
            no_rollback,
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
            let mut journal = Journal::create(&state_dir, &plan, &inventory).map_err(|e| {
                anyhow::anyhow!("creating the journal under {}: {e}", state_dir.display())
            })?;
            let mut progress = Progress::default();
            drive(
                Settings {
                    output: cli.output,
                    deadlines: cli.timeouts.deadlines(),
                },
                &inventory,
                &agents,
                &plan,
                &mut journal,
                &mut progress,
                Mode::Forward {
                    auto_rollback: !no_rollback,
                },
            )
            .await
        }
        Cmd::Resume {
            ref journaled,
            no_rollback,
        } => {
            let (mut journal, plan, inventory, progress) = open(journaled)?;
            let mut progress = progress;
            if progress.finished() {
                anyhow::bail!(
                    "restore {} already finished: nothing to resume",
                    journaled.restore_id
                );
            }
            if progress.rollback_begun {
                anyhow::bail!(
                    "a rollback of restore {id} began: it cannot be resumed; finish the rollback with `quorate rollback {id}`",
                    id = journaled.restore_id
                );
            }
            let agents = agents(&inventory)?;
            drive(
                Settings {
                    output: cli.output,
                    deadlines: cli.timeouts.deadlines(),
                },
                &inventory,
                &agents,
                &plan,
                &mut journal,
                &mut progress,
                Mode::Forward {
                    auto_rollback: !no_rollback,
                },
            )
            .await
        }
        Cmd::Rollback {
            ref journaled,
            force,
        } => {
            let (mut journal, plan, inventory, mut progress) = open(journaled)?;
            if progress.verified.is_some()
                && !progress.finished()
                && !progress.rollback_begun
                && !force
            {
                eprintln!(
                    "error: restore {id} passed VERIFY: every member holds the snapshot's data, verified, and the cluster may be serving from it. A rollback would lose every write since then. `quorate resume {id}` completes the restore; `quorate rollback {id} --force` rolls it back anyway.",
                    id = journaled.restore_id
                );
                return Ok(ExitCode::from(EXIT_PAST_NO_RETURN));
            }
            if progress.finished() {
                anyhow::bail!(
                    "restore {} finished: the cluster runs on the snapshot's data and the original data dirs are kept at <data-dir>.quorate-{}; quorate does not undo a finished restore",
                    journaled.restore_id,
                    journaled.restore_id
                );
            }
            let agents = agents(&inventory)?;
            drive(
                Settings {
                    output: cli.output,
                    deadlines: cli.timeouts.deadlines(),
                },
                &inventory,
                &agents,
                &plan,
                &mut journal,
                &mut progress,
                Mode::Rollback,
            )
            .await
        }
        Cmd::Status(ref journaled) => {
            let (_, _, inventory, progress) = open(journaled)?;
            let agents = agents(&inventory)?;
            let names: Vec<(String, String)> = inventory
                .agents()
                .iter()
                .map(|a| (a.name.to_owned(), a.agent.to_owned()))
                .collect();
            let status =
                ops::status(&journaled.restore_id.to_string(), progress, &names, &agents).await;
            match cli.output {
                Output::Human => print!("{}", status.render()),
                Output::Json => emit(&serde_json::to_value(&status)?),
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Snapshot(cmd) => run_snapshot(cmd, cli.output).await,
    }
}

fn open(j: &Journaled) -> anyhow::Result<(Journal, Plan, Inventory, Progress)> {
    let (journal, plan, inventory, lines) = Journal::open(&j.state_dir, j.restore_id)?;
    Ok((journal, plan, inventory, Progress::from_lines(&lines)))
}

enum Mode {
    Forward { auto_rollback: bool },
    Rollback,
}

/// How a run talks and how long it waits.
struct Settings {
    output: Output,
    deadlines: Deadlines,
}

async fn drive(
    settings: Settings,
    inventory: &Inventory,
    agents: &[GrpcAgent],
    plan: &Plan,
    journal: &mut Journal,
    progress: &mut Progress,
    mode: Mode,
) -> anyhow::Result<ExitCode> {
    let Settings { output, deadlines } = settings;
    let printer = Printer(output);
    let probe = EtcdProbe { inventory };
    let restore = Restore {
        inventory,
        plan,
        agents,
        probe: &probe,
        deadlines,
        observer: &printer,
    };
    let ending = match mode {
        Mode::Forward { auto_rollback } => {
            ops::forward(&restore, journal, progress, auto_rollback).await
        }
        Mode::Rollback => match restore.rollback(journal, progress).await {
            Ok(rollback) => {
                report_rollback(output, journal, &rollback, None)?;
                return Ok(ExitCode::SUCCESS);
            }
            Err(e) => Ending::Stopped {
                error: e,
                rollback_error: None,
            },
        },
    };
    match ending {
        Ending::Restored(report) => {
            let path = journal.write_report(&report)?;
            match output {
                Output::Human => print_report(&report, &path),
                Output::Json => emit(
                    &serde_json::json!({"event": "done", "report": report, "report_path": path}),
                ),
            }
            Ok(ExitCode::SUCCESS)
        }
        Ending::RolledBack { error, rollback } => {
            report_rollback(output, journal, &rollback, Some(&error))?;
            Ok(ExitCode::FAILURE)
        }
        Ending::PastNoReturn { error } => {
            let id = plan.restore_id;
            let advice = format!(
                "The restore passed VERIFY: every member holds the snapshot's data, verified, and it is not rolled back. Fix what failed, then `quorate resume {id}` completes it (`quorate status {id}` shows where every member stands)."
            );
            match output {
                Output::Human => {
                    eprintln!("error: {error}");
                    eprintln!("{advice}");
                }
                Output::Json => emit(&serde_json::json!({
                    "event": "stopped",
                    "past_point_of_no_return": true,
                    "error": error.to_string(),
                    "advice": advice,
                })),
            }
            Ok(ExitCode::from(EXIT_PAST_NO_RETURN))
        }
        Ending::Stopped {
            error,
            rollback_error,
        } => {
            let id = plan.restore_id;
            let advice = format!(
                "The members were left as they stand; nothing is deleted (original data dirs are kept at <data-dir>.quorate-{id}). See where every member stands: `quorate status {id}`; then `quorate resume {id}` or `quorate rollback {id}`."
            );
            match output {
                Output::Human => {
                    eprintln!("error: {error}");
                    if let Some(r) = &rollback_error {
                        eprintln!("error: the rollback did not complete: {r}");
                    }
                    eprintln!("{advice}");
                }
                Output::Json => emit(&serde_json::json!({
                    "event": "stopped",
                    "error": error.to_string(),
                    "rollback_error": rollback_error.as_ref().map(ToString::to_string),
                    "advice": advice,
                })),
            }
            Ok(ExitCode::FAILURE)
        }
    }
}

fn report_rollback(
    output: Output,
    journal: &Journal,
    rollback: &RollbackReport,
    error: Option<&quorate::restore::RestoreError>,
) -> anyhow::Result<()> {
    let path = journal.dir().join("rollback.json");
    quorate::journal::write_atomic(&path, &serde_json::to_vec_pretty(rollback)?)?;
    match output {
        Output::Human => {
            if let Some(e) = error {
                eprintln!("error: {e}");
            }
            println!(
                "rolled back restore {} in {:.1}s: every member is on its original data (cluster ID {:x}, revision {}, HashKV {:x} on every member)",
                rollback.restore_id,
                rollback.total_seconds,
                rollback.cluster_id,
                rollback.original.revision,
                rollback.original.hash
            );
            println!("  report: {}", path.display());
        }
        Output::Json => emit(&serde_json::json!({
            "event": "rolled-back",
            "error": error.map(ToString::to_string),
            "rollback": rollback,
            "report_path": path,
        })),
    }
    Ok(())
}

async fn run_snapshot(cmd: SnapshotCmd, output: Output) -> anyhow::Result<ExitCode> {
    use quorate::snapshot_save::{SaveOptions, save};
    use quorate::snapshot_verify::{VerifyOptions, VerifyReport, verify_into};
    match cmd {
        SnapshotCmd::Save {
            inventory,
            out,
            force,
            keep,
        } => {
            let inventory = Inventory::load(&inventory)?;
            let keep = keep.map(|k| usize::try_from(k).expect("u32 fits in usize"));
            let options = SaveOptions { out, force, keep };
            let progress = |line: &str| {
                if output == Output::Human {
                    eprintln!("{line}");
                }
            };
            let report = save(&inventory, &options, &progress).await?;
            match output {
                Output::Human => print!("{}", report.render()),
                Output::Json => emit(&serde_json::json!({"ok": true, "report": report})),
            }
            Ok(ExitCode::SUCCESS)
        }
        SnapshotCmd::Verify {
            file,
            test_restore,
            etcd_dir,
        } => {
            let options = VerifyOptions {
                test_restore,
                etcd_dir,
                ..VerifyOptions::default()
            };
            let mut report = VerifyReport::default();
            let result = verify_into(&file, &options, &mut report).await;
            match (output, result) {
                (Output::Json, _) => emit(&serde_json::to_value(&report)?),
                (Output::Human, Ok(())) => print!("{}", report.render()),
                (Output::Human, Err(e)) => eprintln!("snapshot verify failed: {e}"),
            }
            Ok(if report.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
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
    let before = report
        .revision_before
        .map_or("unknown".to_owned(), |r| r.to_string());
    println!(
        "  revision {before} -> {} (snapshot's {} + bump {})  keys {}  HashKV {:x} on every member  token {}",
        report.after.revision,
        report
            .snapshot_revision
            .map_or("?".to_owned(), |r| r.to_string()),
        report.revision_bump,
        report.after.keys,
        report.after.hash,
        report.cluster_token
    );
    if report.skip_hash_check {
        println!(
            "  restored from a snapshot without a sha256 trailer (--skip-hash-check): its integrity was not checked"
        );
    }
    for (m, components) in &report.restarted {
        println!("  {m}: restarted {components}");
    }
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

/// The error and its causes, each once: messages that already quote their cause are not
/// followed by it again.
fn render_error(e: &anyhow::Error) -> String {
    let mut text = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
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
    #[cfg(feature = "failpoints")]
    let _failpoints = fail::FailScenario::setup();
    let cli = Cli::parse();
    let output = cli.output;
    match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            match output {
                Output::Human => eprintln!("error: {}", render_error(&e)),
                Output::Json => {
                    emit(&serde_json::json!({"event": "error", "error": render_error(&e)}))
                }
            }
            ExitCode::FAILURE
        }
    }
}
