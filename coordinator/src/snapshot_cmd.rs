//! `quorate snapshot save|verify|sign|keygen`: the command line of the snapshot tools.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

use crate::events::{self, CommandResult, ErrorInfo, Outcome};
use crate::inventory::Inventory;
use crate::output::{Format, exit};
use crate::snapshot_sign::{self, SignatureReport};
use crate::snapshot_verify::VerifyOptions;

#[derive(Subcommand, Debug)]
pub enum SnapshotCmd {
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
        /// included) and remove the older ones by mtime, each with its .json and .sig. A series
        /// is the file name up to its first digit, plus its extension: etcd-2026-11-25T03.db is
        /// in series `etcd-` `.db` with etcd-2026-11-24T03.db, but not with etcd-notes.db or
        /// etcd-2026-11-24T03.log. FILE's name must hold a digit after a prefix.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        keep: Option<u32>,
        /// Sign the saved snapshot with this Ed25519 private key (PEM, from `quorate snapshot
        /// keygen`): writes FILE.sig, which members with trusted_snapshot_keys require.
        #[arg(long, value_name = "KEY")]
        sign_key: Option<PathBuf>,
    },
    /// Check a snapshot file: its appended sha256, `snapshot status`, and with --test-restore a
    /// restore into a throwaway etcd that must hold the default and kube-system namespaces. Its
    /// signature (FILE.sig) is checked when it exists, and verified with --trusted-key.
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
        /// Require a signature by one of these public keys (PEM, from `quorate snapshot
        /// keygen`); repeat for several.
        #[arg(long, value_name = "PUB")]
        trusted_key: Vec<PathBuf>,
        /// The signature file; default: FILE.sig.
        #[arg(long, value_name = "SIG")]
        signature: Option<PathBuf>,
    },
    /// Sign a snapshot (saved by quorate, etcdctl or any other tool) with an Ed25519 private key:
    /// checks its appended sha256 and reads its revision and entry count (`snapshot status`, with
    /// a local etcdutl), then writes SNAPSHOT.sig.
    Sign {
        snapshot: PathBuf,
        /// The private key (PEM PKCS#8, from `quorate snapshot keygen` or `openssl genpkey
        /// -algorithm ed25519`).
        #[arg(long, value_name = "KEY")]
        key: PathBuf,
        /// A dir holding etcdutl (or etcdctl); default: $QUORATE_ETCD_DIR, else PATH.
        #[arg(long, value_name = "DIR")]
        etcd_dir: Option<PathBuf>,
    },
    /// Make an Ed25519 key pair to sign snapshots with: the private key (0600; keep it off the
    /// etcd members) and the public key beside it (.pub), to list in each agent's
    /// trusted_snapshot_keys.
    Keygen {
        /// A directory (gets snapshot-signing.key and snapshot-signing.pub) or the private key's
        /// file name (x.key gets x.pub beside it).
        #[arg(long, value_name = "DIR|FILE")]
        out: PathBuf,
        /// Replace existing key files.
        #[arg(long)]
        force: bool,
    },
}

impl SnapshotCmd {
    /// The command's name in the event stream.
    pub fn name(&self) -> &'static str {
        match self {
            SnapshotCmd::Save { .. } => "snapshot save",
            SnapshotCmd::Verify { .. } => "snapshot verify",
            SnapshotCmd::Sign { .. } => "snapshot sign",
            SnapshotCmd::Keygen { .. } => "snapshot keygen",
        }
    }
}

pub async fn run(cmd: SnapshotCmd, format: Format) -> anyhow::Result<ExitCode> {
    use crate::snapshot_save::{SaveOptions, save};
    use crate::snapshot_verify::{VerifyReport, verify_into};
    match cmd {
        SnapshotCmd::Save {
            inventory,
            out,
            force,
            keep,
            sign_key,
        } => {
            let inventory = Inventory::load(&inventory)?;
            // A key that cannot sign is refused before the snapshot is taken.
            if let Some(key) = &sign_key {
                quorate_proto::signature::SigningKey::load(key)?;
            }
            let keep = keep.map(|k| usize::try_from(k).expect("u32 fits in usize"));
            let options = SaveOptions { out, force, keep };
            let progress = |line: &str| match format {
                Format::Human => eprintln!("{line}"),
                Format::Json => events::emit(&events::Event::Note {
                    text: line.to_owned(),
                }),
            };
            let report = save(&inventory, &options, &progress).await?;
            let signed = match &sign_key {
                Some(key) => {
                    let checked = crate::snapshot::CheckedSnapshot {
                        path: report.path.clone(),
                        size: report.meta.size,
                        sha256: report.meta.sha256.clone(),
                        trailer: true,
                    };
                    let options = VerifyOptions {
                        checked: Some(checked),
                        ..VerifyOptions::default()
                    };
                    Some(snapshot_sign::sign(&report.path, key, &options).await?)
                }
                None => None,
            };
            match format {
                Format::Human => {
                    print!("{}", report.render());
                    if let Some(s) = &signed {
                        print!("{}", s.render());
                    }
                }
                Format::Json => {
                    return Ok(events::finish(CommandResult::ok(
                        &serde_json::json!({"report": report, "signed": signed}),
                    )));
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        SnapshotCmd::Verify {
            file,
            test_restore,
            etcd_dir,
            trusted_key,
            signature,
        } => {
            let options = VerifyOptions {
                test_restore,
                etcd_dir,
                ..VerifyOptions::default()
            };
            let mut report = VerifyReport::default();
            let result = verify_into(&file, &options, &mut report).await;
            let mut sig_report: Option<SignatureReport> = None;
            let result = result.map_err(|e| e.to_string()).and_then(|()| {
                let (r, checked) =
                    snapshot_sign::check_signature(&report, signature.as_deref(), &trusted_key);
                sig_report = r;
                checked.map_err(|e| format!("signature: {e}"))
            });
            if let Err(e) = &result {
                report.ok = false;
                report.error.get_or_insert_with(|| e.clone());
                report.error_kind.get_or_insert("signature");
            }
            match (format, &result) {
                (Format::Json, _) => {
                    let mut value = serde_json::to_value(&report)?;
                    value["signature"] = serde_json::to_value(&sig_report)?;
                    let result = match &result {
                        Ok(()) => CommandResult::ok(&value),
                        Err(e) => {
                            let code = report.error_kind.unwrap_or("snapshot");
                            CommandResult::failed(
                                Outcome::Failed,
                                exit::ERROR,
                                ErrorInfo::new(code, e.clone()).with_advice("use another snapshot"),
                            )
                            .with_result(&value)
                        }
                    };
                    return Ok(events::finish(result));
                }
                (Format::Human, Ok(())) => {
                    print!("{}", report.render());
                    if let Some(s) = &sig_report {
                        print!("{}", s.render());
                    }
                }
                (Format::Human, Err(e)) => eprintln!("snapshot verify failed: {e}"),
            }
            Ok(if report.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        SnapshotCmd::Sign {
            snapshot,
            key,
            etcd_dir,
        } => {
            let options = VerifyOptions {
                etcd_dir,
                ..VerifyOptions::default()
            };
            let signed = snapshot_sign::sign(&snapshot, &key, &options).await?;
            match format {
                Format::Human => print!("{}", signed.render()),
                Format::Json => {
                    return Ok(events::finish(CommandResult::ok(
                        &serde_json::json!({"signed": signed}),
                    )));
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        SnapshotCmd::Keygen { out, force } => {
            let files = snapshot_sign::keygen(&out, force)?;
            match format {
                Format::Human => print!(
                    "key {}:\n  private key {} (0600: keep it off the etcd members)\n  public key  {} (list it in each agent's trusted_snapshot_keys)\n",
                    files.key_id,
                    files.private_key.display(),
                    files.public_key.display()
                ),
                Format::Json => {
                    return Ok(events::finish(CommandResult::ok(
                        &serde_json::json!({"keys": files}),
                    )));
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
