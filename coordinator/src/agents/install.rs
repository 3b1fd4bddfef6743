//! `quorate agents install`: on every host at once, over SSH, the agent binary, its
//! certificates (keys 0600), an agent.toml generated from what the host runs, the systemd unit;
//! then the unit enabled and started, and the agent asked `Describe` over mTLS.
//!
//! Idempotent: every file is compared (sha256 and mode) before it is written, the unit is
//! restarted only when something it reads changed, and a re-run says "unchanged".

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use quorate_proto::tls::TlsFiles;
use serde::{Deserialize, Serialize};
use sha2::Digest as _;

use super::ssh::{Session, quote};
use super::{BINARY, CONFIG, MANIFEST, PKI, SshArgs, Target, UNIT, UNIT_FILE, UNIT_TEXT};
use crate::agent_client::{AgentClient as _, GrpcAgent};
use crate::inventory::Inventory;
use crate::output::Format;

#[derive(clap::Args, Debug)]
pub struct InstallArgs {
    #[command(flatten)]
    pub ssh: SshArgs,
    /// The agent binary to install. Default: quorate-agent beside this quorate.
    #[arg(long, value_name = "PATH")]
    pub agent_binary: Option<PathBuf>,
    /// The certificates as `quorate certs init --dir DIR` writes them: DIR/ca.crt and
    /// DIR/agents/<name>.crt and .key per member. Default: the dir of the inventory's
    /// agent_tls CA.
    #[arg(long, value_name = "DIR")]
    pub certs: Option<PathBuf>,
    /// A name on the coordinator's client certificate that the agents accept.
    #[arg(long = "allowed-client", default_value = "quorate-coordinator")]
    pub allowed_clients: Vec<String>,
    /// Show what would be done on every host (after discovering it) and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Take over agent files already on a host that an earlier install did not write (an agent
    /// set up by hand): they are replaced, and removed by uninstall.
    #[arg(long)]
    pub force: bool,
    /// How long to wait for each started agent to answer over mTLS.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub wait: Duration,
    /// `--output json`: the discovered facts go to stderr, stdout has only JSON lines.
    #[arg(skip)]
    pub json: bool,
}

/// What install wrote on a host: read by uninstall, kept at [`MANIFEST`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub files: BTreeSet<String>,
    /// Dirs that did not exist before the first install (removed by uninstall when empty).
    pub dirs: BTreeSet<String>,
    pub unit: String,
}

/// One file to put on a host.
#[derive(Debug, Clone)]
pub struct Wanted {
    pub path: String,
    pub mode: u32,
    pub bytes: Vec<u8>,
    pub what: &'static str,
}

impl Wanted {
    fn sha(&self) -> String {
        hex::encode(sha2::Sha256::digest(&self.bytes))
    }
}

/// The dirs install may create, parents first.
const DIRS: [&str; 4] = ["/etc/quorate", PKI, "/usr/local/bin", "/etc/systemd/system"];

/// Reads `sha256 mode path` of each of `paths` that exists.
async fn remote_state(
    s: &Session,
    paths: &[&str],
) -> Result<Vec<(String, String, String)>, String> {
    let list: Vec<String> = paths.iter().map(|p| quote(p)).collect();
    let script = format!(
        "for f in {}; do if [ -f \"$f\" ]; then echo \"$(sha256sum < \"$f\" | cut -d' ' -f1) $(stat -c %a \"$f\") $f\"; fi; done",
        list.join(" ")
    );
    let out = s
        .check("reading the installed files", &script, b"")
        .await
        .map_err(|e| e.to_string())?;
    Ok(out
        .stdout()
        .lines()
        .filter_map(|l| {
            let mut p = l.splitn(3, ' ');
            Some((
                p.next()?.to_owned(),
                p.next()?.to_owned(),
                p.next()?.to_owned(),
            ))
        })
        .collect())
}

pub(super) fn differs(state: &[(String, String, String)], w: &Wanted) -> bool {
    !state.iter().any(|(sha, mode, path)| {
        *path == w.path && *sha == w.sha() && *mode == format!("{:o}", w.mode)
    })
}

/// The agent.toml on the host now, if any.
async fn existing_config(s: &Session) -> Option<String> {
    match s
        .run(&format!("cat {CONFIG}"), b"", Duration::from_secs(30))
        .await
    {
        Ok(o) if o.status == 0 => Some(o.stdout().to_owned()),
        _ => None,
    }
}

/// Writes `w` atomically (temp file beside it, chmod, rename). Missing dirs are made 0755 (they
/// may be /usr/local/bin or /etc/systemd/system); the file is private until its mode is set.
pub(super) async fn put(s: &Session, w: &Wanted) -> Result<(), String> {
    let dir = Path::new(&w.path)
        .parent()
        .map_or("/".into(), |d| d.display().to_string());
    let tmp = format!("{}.quorate-tmp", w.path);
    let script = format!(
        "umask 022 && mkdir -p {d} && umask 077 && cat > {t} && chmod {m:o} {t} && mv -f {t} {p}",
        d = quote(&dir),
        t = quote(&tmp),
        m = w.mode,
        p = quote(&w.path)
    );
    s.check(&format!("writing {}", w.path), &script, &w.bytes)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Everything one host gets, read locally before any host is touched.
struct Files {
    binary: Wanted,
    certs: Vec<Wanted>,
}

fn read(path: &Path, what: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {what} {}", path.display()))
}

fn local_files(
    args: &InstallArgs,
    inventory: &Inventory,
    target: &Target,
) -> anyhow::Result<Files> {
    let binary_path = match &args.agent_binary {
        Some(p) => p.clone(),
        None => std::env::current_exe()
            .context("locating this quorate binary")?
            .with_file_name("quorate-agent"),
    };
    let certs = args
        .certs
        .clone()
        .unwrap_or_else(|| certs_default(&inventory.agent_tls));
    let agents = certs.join("agents");
    Ok(Files {
        binary: Wanted {
            path: BINARY.into(),
            mode: 0o755,
            bytes: read(&binary_path, "the agent binary (give --agent-binary)")?,
            what: "binary",
        },
        certs: vec![
            Wanted {
                path: format!("{PKI}/ca.crt"),
                mode: 0o644,
                bytes: read(&certs.join("ca.crt"), "the CA certificate")?,
                what: "ca.crt",
            },
            Wanted {
                path: format!("{PKI}/agent.crt"),
                mode: 0o644,
                bytes: read(
                    &agents.join(format!("{}.crt", target.name)),
                    "the agent certificate (quorate certs init --dir DIR)",
                )?,
                what: "agent.crt",
            },
            Wanted {
                path: format!("{PKI}/agent.key"),
                mode: 0o600,
                bytes: read(
                    &agents.join(format!("{}.key", target.name)),
                    "the agent key",
                )?,
                what: "agent.key",
            },
        ],
    })
}

fn certs_default(tls: &TlsFiles) -> PathBuf {
    tls.ca
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_owned)
}

/// `systemctl is-enabled` and `is-active` of the unit.
async fn unit_state(s: &Session) -> Result<(bool, bool), String> {
    let out = s
        .run(&format!("systemctl is-enabled {UNIT} >/dev/null 2>&1; echo $?; systemctl is-active {UNIT} >/dev/null 2>&1; echo $?"), b"", Duration::from_secs(60))
        .await
        .map_err(|e| e.to_string())?;
    let codes: Vec<String> = out.stdout().lines().map(str::to_owned).collect();
    Ok((
        codes.first().is_some_and(|c| c == "0"),
        codes.get(1).is_some_and(|c| c == "0"),
    ))
}

/// Installs on one host; returns what was done.
async fn install_host(
    args: &InstallArgs,
    inventory: &Inventory,
    target: &Target,
) -> Result<String, String> {
    let files = local_files(args, inventory, target).map_err(|e| format!("{e:#}"))?;
    let s = Session::connect(&target.host, &args.ssh.options())
        .await
        .map_err(|e| e.to_string())?;
    let result = install_on(args, inventory, target, &files, &s).await;
    s.close().await;
    result
}

async fn install_on(
    args: &InstallArgs,
    inventory: &Inventory,
    target: &Target,
    files: &Files,
    s: &Session,
) -> Result<String, String> {
    let dry = args.dry_run;
    // An agent in the middle of a restore is left alone: a new config or a restart would cut a
    // step short, and discovery would see a host with its apiserver fenced and etcd stopped.
    super::uninstall::holds_no_restore(inventory, target).await?;
    let mut paths: Vec<&str> = vec![BINARY, CONFIG, UNIT_FILE, MANIFEST];
    paths.extend(files.certs.iter().map(|w| w.path.as_str()));
    let state = remote_state(s, &paths).await?;
    let mut done = Vec::new();
    let mut changed = Vec::new();
    let mut manifest = match s
        .run(
            &format!("cat {MANIFEST} 2>/dev/null"),
            b"",
            Duration::from_secs(30),
        )
        .await
    {
        Ok(o) if o.status == 0 => serde_json::from_slice::<Manifest>(&o.stdout).unwrap_or_default(),
        _ => Manifest::default(),
    };
    if manifest.files.is_empty() && !args.force {
        // Files of an agent set up by hand: install would replace them, uninstall remove them.
        let foreign: Vec<&str> = state
            .iter()
            .map(|(_, _, path)| path.as_str())
            .filter(|p| *p != MANIFEST)
            .collect();
        if !foreign.is_empty() {
            return Err(format!(
                "not installed: {} already on {}, not written by `quorate agents install` (there is no {MANIFEST}); install would replace them and uninstall would remove them: move them away, or re-run with --force to take them over (an existing agent.toml's trusted_snapshot_keys are kept)",
                foreign.join(", "),
                target.host
            ));
        }
    }
    // Discovery first, with a temporary copy of the binary when it differs: nothing is written
    // before what the host runs is known and fits the inventory.
    let found = super::discovery::discover(args, target, &files.binary, &state, s).await?;
    if args.json {
        eprintln!("{}: found {}", target.name, found.summary());
    } else {
        println!("{}: found {}", target.name, found.summary());
    }
    found.fits(target)?;
    let config = super::discovery::keep_trusted_keys(&found.config, &existing_config(s).await)?;
    // The manifest, then the files: whatever happens next, uninstall knows what may be there.
    if manifest.files.is_empty() {
        let script = DIRS
            .iter()
            .map(|d| format!("[ -d {} ] || echo {}", quote(d), quote(d)))
            .collect::<Vec<_>>()
            .join("; ");
        let out = s
            .check("looking at the dirs", &script, b"")
            .await
            .map_err(|e| e.to_string())?;
        manifest.dirs = out.stdout().lines().map(str::to_owned).collect();
    }
    manifest.unit = UNIT.into();
    manifest.files = paths.iter().map(|p| (*p).to_owned()).collect();
    let manifest_file = Wanted {
        path: MANIFEST.into(),
        mode: 0o644,
        bytes: serde_json::to_vec_pretty(&manifest).map_err(|e| e.to_string())?,
        what: "manifest",
    };
    if differs(&state, &manifest_file) && !dry {
        put(s, &manifest_file).await?;
    }
    if differs(&state, &files.binary) {
        changed.push("binary");
        if !dry {
            put(s, &files.binary).await?;
        }
    }
    let mut wanted: Vec<Wanted> = files.certs.clone();
    wanted.push(Wanted {
        path: CONFIG.into(),
        mode: 0o644,
        bytes: config.into_bytes(),
        what: "agent.toml",
    });
    wanted.push(Wanted {
        path: UNIT_FILE.into(),
        mode: 0o644,
        bytes: UNIT_TEXT.as_bytes().to_vec(),
        what: "unit",
    });
    for w in &wanted {
        if differs(&state, w) {
            changed.push(w.what);
            if !dry {
                put(s, w).await?;
            }
        }
    }
    let (enabled, active) = unit_state(s).await?;
    let verb = if dry { "would write" } else { "wrote" };
    if !changed.is_empty() {
        done.push(format!("{verb} {}", changed.join(", ")));
    }
    let systemctl = match (changed.is_empty(), enabled, active) {
        (true, true, true) => None,
        (false, true, true) => Some((
            "daemon-reload, restart",
            format!("systemctl daemon-reload && systemctl restart {UNIT}"),
        )),
        _ => Some((
            "daemon-reload, enable --now",
            format!("systemctl daemon-reload && systemctl enable --now {UNIT}"),
        )),
    };
    if let Some((what, script)) = &systemctl {
        done.push(format!(
            "{} systemctl {what}",
            if dry { "would run" } else { "ran" }
        ));
        if !dry {
            s.check(&format!("systemctl {what}"), script, b"")
                .await
                .map_err(|e| e.to_string())?;
        }
    }
    if dry {
        return Ok(if done.is_empty() {
            "dry run: nothing to do (already installed and running)".into()
        } else {
            format!("dry run: {}", done.join("; "))
        });
    }
    let answer = wait_describe(inventory, target, args.wait).await?;
    Ok(if done.is_empty() {
        format!("unchanged (binary, certificates, agent.toml, unit; running); {answer}")
    } else {
        format!("{}; {answer}", done.join("; "))
    })
}

/// Asks the agent `Describe` over mTLS until it answers or `wait` passes.
pub async fn wait_describe(
    inventory: &Inventory,
    target: &Target,
    wait: Duration,
) -> Result<String, String> {
    let agent = GrpcAgent::new(
        &target.name,
        &target.url,
        &target.server_name,
        &inventory.agent_tls,
    )
    .map_err(|e| format!("{e:#}"))?;
    let deadline = Instant::now() + wait;
    loop {
        match agent.describe(Duration::from_secs(5)).await {
            Ok(d) => {
                return Ok(format!(
                    "answers over mTLS: agent {}, {} etcd {}",
                    d.agent_version,
                    if d.etcd_runtime.is_empty() {
                        "no"
                    } else {
                        &d.etcd_runtime
                    },
                    d.etcd_version
                ));
            }
            Err(e) if Instant::now() > deadline => {
                return Err(format!(
                    "the agent does not answer at {} after {wait:?}: {e}; look at `journalctl -u {UNIT}` on the host",
                    target.url
                ));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

pub async fn run(args: &mut InstallArgs, format: Format) -> anyhow::Result<ExitCode> {
    args.json = format == Format::Json;
    let args = &*args;
    let inventory = Inventory::load(&args.ssh.inventory)?;
    let targets = super::targets(&inventory)?;
    let results =
        futures::future::join_all(targets.iter().map(|t| install_host(args, &inventory, t))).await;
    let mut failed = 0;
    for (t, r) in targets.iter().zip(&results) {
        super::report(format, &t.name, r, args.dry_run);
        failed += usize::from(r.is_err());
    }
    let error = (failed > 0).then(|| format!(
        "{failed} of {} hosts failed (see above); hosts that succeeded keep what was installed, and a re-run changes only what differs",
        targets.len()
    ));
    let value = super::host_results(
        targets.iter().map(|t| t.name.clone()),
        &results,
        args.dry_run,
    );
    Ok(crate::output::finish_command(format, &value, error))
}
