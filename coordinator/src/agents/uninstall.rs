//! `quorate agents uninstall`: the unit stopped and disabled, and exactly what install wrote
//! (its manifest on the host) removed; refused on a host whose agent holds an unfinished
//! restore. The agent's state dir (journals of past restores) is kept.

use std::process::ExitCode;
use std::time::Duration;

use super::install::Manifest;
use super::ssh::{Session, quote};
use super::{MANIFEST, SshArgs, Target, UNIT};
use crate::agent_client::{AgentClient as _, GrpcAgent};
use crate::inventory::Inventory;
use crate::output::Format;

#[derive(clap::Args, Debug)]
pub struct UninstallArgs {
    #[command(flatten)]
    pub ssh: SshArgs,
    /// Uninstall from a host whose agent does not answer (so whether it holds a restore is
    /// unknown).
    #[arg(long)]
    pub force: bool,
}

/// Refuses while the agent holds a restore; an agent that does not answer is refused too
/// unless `force`.
/// For install: an agent that answers must hold no unfinished restore (one that does not
/// answer is not installed yet, or not running: nothing of a restore can be under way there).
pub async fn holds_no_restore(inventory: &Inventory, t: &Target) -> Result<(), String> {
    may_remove(inventory, t, true)
        .await
        .map_err(|e| e.replacen("refused", "not installed", 1))
}

async fn may_remove(inventory: &Inventory, t: &Target, force: bool) -> Result<(), String> {
    let agent = GrpcAgent::new(&t.name, &t.url, &t.server_name, &inventory.agent_tls)
        .map_err(|e| format!("{e:#}"))?;
    match agent.describe(Duration::from_secs(5)).await {
        Ok(d) => match &d.active {
            Some(a) => Err(format!(
                "refused: the agent holds unfinished restore {a}; finish it with `quorate resume {id}` or `quorate rollback {id}` first",
                id = a.restore_id
            )),
            None => Ok(()),
        },
        Err(_) if force => Ok(()),
        Err(e) => Err(format!(
            "refused: the agent does not answer ({e}), so whether it holds a restore is unknown; start it, or re-run with --force"
        )),
    }
}

async fn uninstall_host(
    args: &UninstallArgs,
    inventory: &Inventory,
    t: &Target,
) -> Result<String, String> {
    let s = Session::connect(&t.host, &args.ssh.options())
        .await
        .map_err(|e| e.to_string())?;
    let result = uninstall_on(args, inventory, t, &s).await;
    s.close().await;
    result
}

async fn uninstall_on(
    args: &UninstallArgs,
    inventory: &Inventory,
    t: &Target,
    s: &Session,
) -> Result<String, String> {
    let out = s
        .run(&format!("cat {MANIFEST}"), b"", Duration::from_secs(30))
        .await
        .map_err(|e| e.to_string())?;
    if out.status != 0 {
        return Ok(format!(
            "nothing to do: no {MANIFEST} (not installed by quorate agents install)"
        ));
    }
    let manifest: Manifest = serde_json::from_slice(&out.stdout).map_err(|e| {
        format!("{MANIFEST} is unreadable ({e}): nothing was removed; remove the files by hand")
    })?;
    may_remove(inventory, t, args.force).await?;
    let unit = if manifest.unit.is_empty() {
        UNIT.to_owned()
    } else {
        manifest.unit.clone()
    };
    s.check(
        "systemctl disable --now",
        &format!("systemctl disable --now {}", quote(&unit)),
        b"",
    )
    .await
    .map_err(|e| e.to_string())?;
    // The manifest last: a removal cut short can be run again.
    let mut files: Vec<String> = manifest
        .files
        .iter()
        .filter(|f| f.as_str() != MANIFEST)
        .cloned()
        .collect();
    files.push(MANIFEST.to_owned());
    let rm = files.iter().map(|f| quote(f)).collect::<Vec<_>>().join(" ");
    // Deepest dirs first; a dir that holds anything else stays.
    let mut dirs: Vec<&String> = manifest.dirs.iter().collect();
    dirs.sort_by_key(|d| std::cmp::Reverse(d.len()));
    let rmdir = dirs
        .iter()
        .map(|d| format!("rmdir {} 2>/dev/null || true", quote(d)))
        .collect::<Vec<_>>()
        .join("; ");
    s.check(
        "removing the installed files",
        &format!("rm -f {rm}; {rmdir}; systemctl daemon-reload"),
        b"",
    )
    .await
    .map_err(|e| e.to_string())?;
    Ok(format!(
        "stopped and disabled {unit}; removed {} files{}; kept the state dir /var/lib/quorate-agent (journals)",
        files.len(),
        if dirs.is_empty() {
            String::new()
        } else {
            format!(
                " and the dirs install made, where empty ({})",
                dirs.iter()
                    .map(|d| d.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
    ))
}

pub async fn run(args: &UninstallArgs, format: Format) -> anyhow::Result<ExitCode> {
    let inventory = Inventory::load(&args.ssh.inventory)?;
    let targets = super::targets(&inventory)?;
    let results =
        futures::future::join_all(targets.iter().map(|t| uninstall_host(args, &inventory, t)))
            .await;
    let mut failed = 0;
    for (t, r) in targets.iter().zip(&results) {
        super::report(format, &t.name, r, false);
        failed += usize::from(r.is_err());
    }
    let error = (failed > 0).then(|| {
        format!(
            "{failed} of {} hosts were not uninstalled (see above)",
            targets.len()
        )
    });
    let value = super::host_results(targets.iter().map(|t| t.name.clone()), &results, false);
    Ok(crate::output::finish_command(format, &value, error))
}
