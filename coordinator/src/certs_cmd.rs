//! `quorate certs init|check|rotate`: a CA for quorate alone, a server certificate per agent and
//! the coordinator's client certificate, in one directory:
//!
//! ```text
//! DIR/ca.crt, DIR/ca.key                    the CA (0600 key), "quorate CA (<cluster>)"
//! DIR/coordinator.crt, DIR/coordinator.key  the coordinator's client certificate
//! DIR/agents/<name>.crt, <name>.key         each agent's server certificate
//! ```
//!
//! DIR and DIR/agents are 0700, keys 0600. Nothing is overwritten without `--force`; `rotate`
//! issues new leaves under the same CA and keeps the previous ones as `*.old`.

use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Subcommand;
use quorate_proto::durable;
use serde::Serialize;

use crate::certs::{Ca, CertError, Leaf, Pem, Usage, Validity};
use crate::certs_check::{self, Anchor, CertReport, Role, Severity, Subject};
use crate::inventory::{Inventory, InventoryError};
use crate::output::{self, Format};

/// The name on the coordinator's client certificate: what agents allow by default
/// (`allowed_clients = ["quorate-coordinator"]`).
pub const COORDINATOR_NAME: &str = "quorate-coordinator";

#[derive(Subcommand, Debug)]
pub enum CertsCmd {
    /// Mint a CA for quorate alone, a server certificate for every agent of the inventory (valid
    /// for the host of its agent URL and its agent_server_name) and the coordinator's client
    /// certificate, into DIR. Refuses to overwrite anything unless --force.
    Init {
        /// Where to write them (created 0700).
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        inventory: PathBuf,
        /// Replace existing files, the CA included: every agent then needs the new CA and its
        /// new certificate. The replaced files are kept as *.old; a CA `certs init` did not
        /// make is never replaced.
        #[arg(long)]
        force: bool,
        /// How many days the agents' and the coordinator's certificates are valid.
        #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(u32).range(1..))]
        days: u32,
        /// How many days the CA is valid.
        #[arg(long, default_value_t = 3650, value_parser = clap::value_parser!(u32).range(1..))]
        ca_days: u32,
    },
    /// Check each certificate: expiry (a warning within 30 days, an error once expired or not
    /// yet valid), chain to the CA, names against the inventory's agent URLs, extended key
    /// usage, and key. Exits non-zero on any error.
    Check {
        /// The directory `certs init` wrote: checks its CA, coordinator and agent certificates.
        /// Without it: the CA and coordinator certificate the inventory's [agent_tls] names.
        #[arg(long)]
        dir: Option<PathBuf>,
        #[arg(long)]
        inventory: PathBuf,
        /// A name the agents allow on the coordinator's certificate (their allowed_clients);
        /// repeat for several.
        #[arg(long, default_value = COORDINATOR_NAME)]
        allowed_client: Vec<String>,
    },
    /// Issue new agent and coordinator certificates under the same CA; the previous ones are
    /// kept as *.old until the next rotate.
    Rotate {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        inventory: PathBuf,
        /// How many days the new certificates are valid.
        #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(u32).range(1..))]
        days: u32,
    },
}

impl CertsCmd {
    /// The command's name in the event stream.
    pub fn name(&self) -> &'static str {
        match self {
            CertsCmd::Init { .. } => "certs init",
            CertsCmd::Check { .. } => "certs check",
            CertsCmd::Rotate { .. } => "certs rotate",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    #[error(
        "{dir} already holds {}: nothing was written; pass --force to replace them (a new CA: \
         every agent then needs it), or run `quorate certs rotate` for new certificates under the \
         same CA",
        files.join(", ")
    )]
    Exists { dir: PathBuf, files: Vec<String> },
    #[error("no CA in {dir} ({missing} is missing): run `quorate certs init --dir {dir}` first")]
    NoCa { dir: PathBuf, missing: String },
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Inventory(#[from] InventoryError),
    #[error(transparent)]
    Cert(#[from] CertError),
    #[error(transparent)]
    Durable(#[from] durable::DurableError),
}

/// Where each file is under DIR.
#[derive(Debug, Clone)]
pub struct Layout {
    pub dir: PathBuf,
}

impl Layout {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }
    pub fn ca(&self) -> (PathBuf, PathBuf) {
        (self.dir.join("ca.crt"), self.dir.join("ca.key"))
    }
    pub fn coordinator(&self) -> (PathBuf, PathBuf) {
        (
            self.dir.join("coordinator.crt"),
            self.dir.join("coordinator.key"),
        )
    }
    pub fn agents_dir(&self) -> PathBuf {
        self.dir.join("agents")
    }
    pub fn agent(&self, name: &str) -> (PathBuf, PathBuf) {
        let dir = self.agents_dir();
        (
            dir.join(format!("{name}.crt")),
            dir.join(format!("{name}.key")),
        )
    }
}

/// One agent's names, from the inventory.
#[derive(Debug, Clone, Serialize)]
pub struct AgentNames {
    pub name: String,
    /// The host of the agent URL: an IP address or a DNS name.
    pub host: String,
    /// The name the coordinator checks on the agent's certificate.
    pub server_name: String,
    /// Every name the certificate carries.
    pub sans: Vec<String>,
}

/// Every agent of the inventory, members then apiserver hosts.
pub fn agent_names(inventory: &Inventory) -> Vec<AgentNames> {
    inventory
        .agents()
        .iter()
        .map(|a| {
            let host = host_of(a.agent).to_owned();
            let server_name = a.agent_server_name.unwrap_or(&host).to_owned();
            let mut sans = vec![host.clone()];
            if server_name != host {
                sans.push(server_name.clone());
            }
            AgentNames {
                name: a.name.to_owned(),
                host,
                server_name,
                sans,
            }
        })
        .collect()
}

/// The host of `https://host:port`, without IPv6 brackets.
fn host_of(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or(rest);
    let host = match authority.rsplit_once(':') {
        Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h,
        _ => authority,
    };
    host.trim_matches(['[', ']'])
}

fn agent_leaf(ca: &Ca, agent: &AgentNames, validity: Validity) -> Result<Pem, CertError> {
    let ips: Vec<IpAddr> = agent.sans.iter().filter_map(|s| s.parse().ok()).collect();
    let dns: Vec<&str> = agent
        .sans
        .iter()
        .filter(|s| s.parse::<IpAddr>().is_err())
        .map(String::as_str)
        .collect();
    ca.issue_leaf(&Leaf {
        common_name: &agent.name,
        dns: &dns,
        ips: &ips,
        usage: Usage::Server,
        validity: Some(validity),
    })
}

fn coordinator_leaf(ca: &Ca, validity: Validity) -> Result<Pem, CertError> {
    ca.issue_leaf(&Leaf {
        common_name: COORDINATOR_NAME,
        dns: &[COORDINATOR_NAME],
        ips: &[],
        usage: Usage::Client,
        validity: Some(validity),
    })
}

/// A cert and its key under `dir` (0700), the key 0600.
fn write_pair(pem: &Pem, (cert, key): &(PathBuf, PathBuf)) -> Result<(), CertsError> {
    durable::write_atomic(key, pem.key.as_bytes(), 0o600)?;
    durable::write_atomic(cert, pem.cert.as_bytes(), 0o644)?;
    Ok(())
}

/// Creates `dir` (and its parents) 0700, and narrows an existing one to 0700: it holds keys.
fn private_dir(dir: &Path) -> Result<(), CertsError> {
    durable::create_dir_durable(dir, 0o700)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(|source| {
        CertsError::Dir {
            path: dir.to_owned(),
            source,
        }
    })
}

/// What `init` or `rotate` wrote.
#[derive(Debug, Clone, Serialize)]
pub struct Written {
    pub dir: PathBuf,
    pub files: Vec<PathBuf>,
    /// Kept as `*.old` by a rotate.
    pub kept: Vec<PathBuf>,
    pub agents: Vec<AgentNames>,
    /// When the new leaves expire (seconds since the Unix epoch).
    pub leaves_expire: i64,
    pub notes: Vec<String>,
}

/// `certs init`.
pub fn init(
    dir: &Path,
    inventory: &Inventory,
    force: bool,
    days: u32,
    ca_days: u32,
) -> Result<Written, CertsError> {
    let layout = Layout::new(dir);
    let agents = agent_names(inventory);
    let mut pairs = vec![layout.ca(), layout.coordinator()];
    pairs.extend(agents.iter().map(|a| layout.agent(&a.name)));
    if !force {
        let existing: Vec<String> = pairs
            .iter()
            .flat_map(|(c, k)| [c, k])
            .filter(|p| p.symlink_metadata().is_ok())
            .map(|p| p.strip_prefix(dir).unwrap_or(p).display().to_string())
            .collect();
        if !existing.is_empty() {
            return Err(CertsError::Exists {
                dir: dir.to_owned(),
                files: existing,
            });
        }
    }
    if force {
        // Only quorate's own CA is ever replaced, and what is replaced is kept as *.old.
        let (ca_crt, _) = layout.ca();
        if let Ok(pem) = std::fs::read_to_string(&ca_crt) {
            quorate_ca(&pem, None, &ca_crt)?;
        }
        for path in pairs.iter().flat_map(|(c, k)| [c, k]) {
            if path.symlink_metadata().is_ok() {
                durable::rename_durable(path, &with_suffix(path, ".old"))?;
            }
        }
    }
    private_dir(dir)?;
    private_dir(&layout.agents_dir())?;
    let ca = Ca::new_quorate(
        &format!("quorate CA ({})", inventory.cluster.name),
        Validity::days_from_now(ca_days),
    )?;
    write_pair(&ca.pem(), &layout.ca())?;
    let validity = Validity::days_from_now(days);
    write_pair(&coordinator_leaf(&ca, validity)?, &layout.coordinator())?;
    for agent in &agents {
        write_pair(
            &agent_leaf(&ca, agent, validity)?,
            &layout.agent(&agent.name),
        )?;
    }
    let mut notes = Vec::new();
    if days > ca_days {
        notes.push(format!(
            "the certificates ({days} days) outlive the CA ({ca_days} days): they stop working \
             with it"
        ));
    }
    Ok(Written {
        dir: dir.to_owned(),
        files: pairs.into_iter().flat_map(|(c, k)| [c, k]).collect(),
        kept: Vec::new(),
        agents,
        leaves_expire: validity.not_after.unix_timestamp(),
        notes,
    })
}

/// Refuses a CA that `certs init` did not make (a cluster's own CA in the wrong dir: quorate
/// never signs with it nor replaces it), or whose key is another one.
fn quorate_ca(cert_pem: &str, key_pem: Option<&str>, path: &Path) -> Result<(), CertsError> {
    let bad = |reason: String| {
        CertsError::Cert(crate::certs::CertError::BadCa {
            path: path.to_owned(),
            reason,
        })
    };
    let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes())
        .map_err(|e| bad(format!("not a PEM certificate ({e})")))?;
    let cert = pem
        .parse_x509()
        .map_err(|e| bad(format!("not an X.509 certificate ({e})")))?;
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|c| c.as_str().ok())
        .unwrap_or_default()
        .to_owned();
    let pathlen_0 = cert
        .basic_constraints()
        .ok()
        .flatten()
        .is_some_and(|b| b.value.ca && b.value.path_len_constraint == Some(0));
    if !cn.starts_with("quorate CA") || !pathlen_0 {
        return Err(bad(format!(
            "it is \"{cn}\", not a CA made by `quorate certs init` (a CA for quorate alone, path \
             length 0): quorate neither signs with another CA nor replaces it; give --dir the \
             directory `certs init` wrote"
        )));
    }
    if let Some(key_pem) = key_pem {
        let key = rcgen::KeyPair::from_pem(key_pem)
            .map_err(|e| bad(format!("its key cannot be read ({e})")))?;
        if rcgen::PublicKeyData::subject_public_key_info(&key) != cert.public_key().raw {
            return Err(bad(
                "its key file holds another key: restore the CA's own key, or start over with \
                 `certs init --force`"
                    .into(),
            ));
        }
    }
    Ok(())
}

/// `certs rotate`: new leaves under the CA in `dir`; each previous file becomes `<file>.old`.
pub fn rotate(dir: &Path, inventory: &Inventory, days: u32) -> Result<Written, CertsError> {
    let layout = Layout::new(dir);
    let (ca_crt, ca_key) = layout.ca();
    let read = |path: &Path| {
        std::fs::read_to_string(path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                CertsError::NoCa {
                    dir: dir.to_owned(),
                    missing: path.display().to_string(),
                }
            } else {
                CertsError::Read {
                    path: path.to_owned(),
                    source,
                }
            }
        })
    };
    let ca_pem = read(&ca_crt)?;
    let ca_key_pem = read(&ca_key)?;
    quorate_ca(&ca_pem, Some(&ca_key_pem), &ca_crt)?;
    let ca = Ca::from_pem(&ca_pem, &ca_key_pem)?;
    private_dir(&layout.agents_dir())?;
    let agents = agent_names(inventory);
    let validity = Validity::days_from_now(days);
    let mut leaves = vec![(coordinator_leaf(&ca, validity)?, layout.coordinator())];
    for agent in &agents {
        leaves.push((agent_leaf(&ca, agent, validity)?, layout.agent(&agent.name)));
    }
    let (mut files, mut kept) = (Vec::new(), Vec::new());
    for (pem, (cert, key)) in &leaves {
        // The new pair first beside the old one, then the old one aside, then the new one in:
        // a crash leaves either pair whole.
        let staged = (with_suffix(cert, ".new"), with_suffix(key, ".new"));
        write_pair(pem, &staged)?;
        for (path, new) in [(cert, &staged.0), (key, &staged.1)] {
            if path.symlink_metadata().is_ok() {
                let old = with_suffix(path, ".old");
                durable::rename_durable(path, &old)?;
                kept.push(old);
            }
            durable::rename_durable(new, path)?;
            files.push(path.clone());
        }
    }
    let mut notes = Vec::new();
    let ca_expires = x509_parser::pem::parse_x509_pem(ca_pem.as_bytes())
        .ok()
        .and_then(|(_, p)| {
            p.parse_x509()
                .ok()
                .map(|c| c.validity().not_after.timestamp())
        });
    if let Some(end) = ca_expires
        && end < validity.not_after.unix_timestamp()
    {
        notes.push(format!(
            "the CA expires on {}, before these certificates: they stop working then; plan a new \
             CA (`quorate certs init --force` into a new dir) before it",
            certs_check::date(end)
        ));
    }
    Ok(Written {
        dir: dir.to_owned(),
        files,
        kept,
        agents,
        leaves_expire: validity.not_after.unix_timestamp(),
        notes,
    })
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// `certs check`: the CA, the coordinator's certificate and, with `dir`, every agent's.
pub fn check(
    dir: Option<&Path>,
    inventory: &Inventory,
    allowed: &[String],
    now: i64,
) -> Vec<CertReport> {
    let (ca, coordinator) = match dir {
        Some(dir) => {
            let layout = Layout::new(dir);
            (layout.ca(), layout.coordinator())
        }
        None => {
            let tls = &inventory.agent_tls;
            (
                (tls.ca.clone(), PathBuf::new()),
                (tls.cert.clone(), tls.key.clone()),
            )
        }
    };
    let mut subjects = vec![Subject {
        what: "CA".into(),
        cert: ca.0.clone(),
        key: dir.map(|_| ca.1.clone()),
        role: Role::Ca,
    }];
    subjects.push(Subject {
        what: "coordinator".into(),
        cert: coordinator.0,
        key: Some(coordinator.1),
        role: Role::Client {
            allowed: allowed.to_vec(),
        },
    });
    if let Some(dir) = dir {
        let layout = Layout::new(dir);
        for agent in agent_names(inventory) {
            let (cert, key) = layout.agent(&agent.name);
            let why = if agent.server_name == agent.host {
                format!(
                    "the host of its agent URL in the inventory ({})",
                    agent.name
                )
            } else {
                format!("its agent_server_name in the inventory ({})", agent.name)
            };
            subjects.push(Subject {
                what: format!("agent {}", agent.name),
                cert,
                key: Some(key),
                role: Role::Server {
                    name: agent.server_name,
                    why,
                },
            });
        }
    }
    let anchor = Anchor::read(&ca.0);
    subjects
        .iter()
        .map(|s| certs_check::check(s, &anchor, now))
        .collect()
}

pub fn run(cmd: CertsCmd, format: Format) -> anyhow::Result<ExitCode> {
    match cmd {
        CertsCmd::Init {
            dir,
            inventory,
            force,
            days,
            ca_days,
        } => {
            let inv = Inventory::load(&inventory)?;
            let written = init(&dir, &inv, force, days, ca_days)?;
            print_written(format, "init", &written);
            Ok(output::finish_command(format, &written, None))
        }
        CertsCmd::Rotate {
            dir,
            inventory,
            days,
        } => {
            let inv = Inventory::load(&inventory)?;
            let written = rotate(&dir, &inv, days)?;
            print_written(format, "rotate", &written);
            Ok(output::finish_command(format, &written, None))
        }
        CertsCmd::Check {
            dir,
            inventory,
            allowed_client,
        } => {
            let inv = Inventory::load(&inventory)?;
            let now = time::OffsetDateTime::now_utc().unix_timestamp();
            let reports = check(dir.as_deref(), &inv, &allowed_client, now);
            let worst = reports
                .iter()
                .map(CertReport::severity)
                .max()
                .unwrap_or(Severity::Ok);
            match format {
                Format::Human => {
                    for r in &reports {
                        print!("{}", r.render());
                    }
                    if dir.is_none() {
                        println!(
                            "(agents' certificates: pass --dir DIR, the directory `quorate certs \
                             init` wrote)"
                        );
                    }
                }
                Format::Json => {}
            }
            let error = (worst == Severity::Error).then(|| {
                "a certificate is expired, not yet valid, not signed by the CA, without the \
                 names or usage it needs, or does not match its key (see each one above): \
                 `quorate certs rotate` issues new ones"
                    .to_owned()
            });
            Ok(output::finish_command(
                format,
                &serde_json::json!({ "worst": worst, "certificates": reports }),
                error,
            ))
        }
    }
}

fn print_written(format: Format, command: &str, w: &Written) {
    if format == Format::Json {
        let _ = command;
        return;
    }
    let dir = std::fs::canonicalize(&w.dir).unwrap_or_else(|_| w.dir.clone());
    let layout = Layout::new(&dir);
    println!("Wrote (keys 0600, directories 0700):");
    for f in &w.files {
        println!("  {}", f.display());
    }
    for k in &w.kept {
        println!("  kept: {}", k.display());
    }
    for a in &w.agents {
        println!("  agent {}: valid for {}", a.name, a.sans.join(", "));
    }
    println!(
        "The new certificates expire on {}.",
        certs_check::date(w.leaves_expire)
    );
    for n in &w.notes {
        println!("Note: {n}");
    }
    let (ca, _) = layout.ca();
    let (cert, key) = layout.coordinator();
    if command == "init" {
        println!(
            "\nIn inventory.toml:\n\n[agent_tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
            ca.display(),
            cert.display(),
            key.display()
        );
        println!(
            "`quorate agents install --certs {} ...` puts them on every host for you. By hand: \
             on each agent host, copy {} and that agent's {}/<name>.crt and .key (keep the key \
             0600, owned by the agent's user), and in its agent.toml:\n\n\
             allowed_clients = [\"{COORDINATOR_NAME}\"]\n[tls]\n\
             cert = \"/etc/quorate/pki/agent.crt\"    # {}/<name>.crt\n\
             key = \"/etc/quorate/pki/agent.key\"     # {}/<name>.key\n\
             client_ca = \"/etc/quorate/pki/ca.crt\"  # {}\n\n\
             then (re)start quorate-agent, and check with `quorate certs check --dir {} \
             --inventory ...`.",
            dir.display(),
            ca.display(),
            layout.agents_dir().display(),
            layout.agents_dir().display(),
            layout.agents_dir().display(),
            ca.display(),
            dir.display()
        );
    } else {
        println!(
            "\nRoll them out: the CA is the same, so old and new certificates are accepted side \
             by side and the order does not matter.\n\
             - on each agent host, replace its [tls] cert and key with {}/<name>.crt and .key \
             (key 0600) and restart quorate-agent: it reads its certificate at start;\n\
             - the coordinator uses {} from its next run.\n\
             The previous files stay as *.old until the next rotate; remove them once every \
             agent runs its new certificate.",
            layout.agents_dir().display(),
            cert.display()
        );
    }
}

#[cfg(test)]
#[path = "certs_cmd_tests.rs"]
mod tests;
