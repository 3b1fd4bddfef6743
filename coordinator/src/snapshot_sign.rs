//! `quorate snapshot keygen|sign`, and the signature check of `quorate snapshot verify`: an
//! Ed25519 key pair for signing snapshots, and `<snapshot>.sig` (see
//! [`quorate_proto::signature`] for its format and what is signed).

use std::path::{Path, PathBuf};

use quorate_proto::durable;
use quorate_proto::signature::{
    PublicKey, SignatureError, SignedFacts, SigningKey, SnapshotSignature,
};
use serde::Serialize;

use crate::signing::default_path;
use crate::snapshot_verify::{self, VerifyError, VerifyOptions, VerifyReport};

#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error(
        "{path} exists: a signing key is never overwritten (snapshots signed by it could no longer be re-signed, and agents trusting it would refuse the new one); pass --force to replace it, or pick another path"
    )]
    Exists { path: PathBuf },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Signature(#[from] SignatureError),
    #[error("snapshot sign refused the snapshot: {0}")]
    Verify(#[from] VerifyError),
}

impl From<durable::DurableError> for SignError {
    fn from(e: durable::DurableError) -> Self {
        SignError::Io {
            what: "writing",
            path: e.path,
            source: e.source,
        }
    }
}

/// Where `keygen --out` puts the two files.
#[derive(Debug, Clone, Serialize)]
pub struct KeyFiles {
    pub private_key: PathBuf,
    pub public_key: PathBuf,
    pub key_id: String,
}

/// The two files for `--out`: a directory gets `snapshot-signing.key` and `.pub` in it; a file
/// name is the private key, and its public key sits beside it (`x.key` → `x.pub`, else `x.pub`
/// appended).
pub fn key_paths(out: &Path) -> (PathBuf, PathBuf) {
    if out.is_dir() {
        return (
            out.join("snapshot-signing.key"),
            out.join("snapshot-signing.pub"),
        );
    }
    let public = if out.extension().is_some_and(|e| e == "key") {
        out.with_extension("pub")
    } else {
        let mut name = out.as_os_str().to_owned();
        name.push(".pub");
        PathBuf::from(name)
    };
    (out.to_owned(), public)
}

/// Writes a new key pair: the private key 0600 (never over an existing file without `force`),
/// the public key 0644 beside it.
pub fn keygen(out: &Path, force: bool) -> Result<KeyFiles, SignError> {
    let (private, public) = key_paths(out);
    if !force {
        for p in [&private, &public] {
            if p.exists() {
                return Err(SignError::Exists { path: p.clone() });
            }
        }
    }
    let (key, pem) = SigningKey::generate()?;
    durable::write_atomic(&private, pem.as_bytes(), 0o600)?;
    durable::write_atomic(&public, key.public().to_pem().as_bytes(), 0o644)?;
    Ok(KeyFiles {
        private_key: private,
        public_key: public,
        key_id: key.public().id().to_owned(),
    })
}

/// What `snapshot sign` did.
#[derive(Debug, Clone, Serialize)]
pub struct Signed {
    pub snapshot: PathBuf,
    pub signature_file: PathBuf,
    pub key_id: String,
    pub facts: SignedFacts,
    /// Why the revision or key count is unknown, when it is.
    pub note: Option<String>,
}

impl Signed {
    pub fn render(&self) -> String {
        let f = &self.facts;
        let opt = |v: Option<String>| v.unwrap_or_else(|| "unknown".into());
        let mut out = format!(
            "signed {} with key {}: {}\n  sha256 {} ({} bytes), revision {}, {} bbolt entries, at {}\n",
            self.snapshot.display(),
            self.key_id,
            self.signature_file.display(),
            f.sha256,
            f.size,
            opt(f.revision.map(|r| r.to_string())),
            opt(f.total_keys.map(|k| k.to_string())),
            f.signed_at
        );
        if let Some(note) = &self.note {
            out.push_str(&format!("  note: {note}\n"));
        }
        out
    }
}

/// Signs `snapshot` with the key at `key`, writing `<snapshot>.sig` (0600): its sha256 and size
/// (checked as `snapshot verify` checks them: the appended sha256 must match), and its revision
/// and bbolt entry count from `snapshot status` when a local etcdutl exists (else the revision
/// read from the file, and no count). `options.checked` skips hashing a file just hashed.
pub async fn sign(
    snapshot: &Path,
    key: &Path,
    options: &VerifyOptions,
) -> Result<Signed, SignError> {
    let key = SigningKey::load(key)?;
    let mut report = VerifyReport::default();
    let mut note = None;
    match snapshot_verify::find_tools(options.etcd_dir.as_deref(), false) {
        Ok(_) => snapshot_verify::verify_into(snapshot, options, &mut report).await?,
        Err(e) => {
            let checked = match &options.checked {
                Some(c) if c.path == snapshot => c.clone(),
                _ => {
                    let (path, skip) = (snapshot.to_owned(), options.skip_hash_check);
                    tokio::task::spawn_blocking(move || crate::snapshot::check_with(&path, skip))
                        .await
                        .expect("the sha256 check does not panic")
                        .map_err(VerifyError::from)?
                }
            };
            report.sha256 = Some(checked.sha256);
            report.size = Some(checked.size);
            report.revision = snapshot_verify::file_revision(snapshot).ok();
            note = Some(format!("no bbolt entry count: {e}"));
        }
    }
    let facts = SignedFacts {
        sha256: report.sha256.unwrap_or_default(),
        size: report.size.unwrap_or_default(),
        revision: report.revision,
        total_keys: report.total_keys.and_then(|k| u64::try_from(k).ok()),
        signed_at: quorate_proto::signature::now(),
    };
    let sig = SnapshotSignature::sign(facts, &key)?;
    let path = default_path(snapshot);
    durable::write_atomic(&path, sig.to_json().as_bytes(), 0o600)?;
    Ok(Signed {
        snapshot: snapshot.to_owned(),
        signature_file: path,
        key_id: sig.key_id,
        facts: sig.facts,
        note,
    })
}

/// The signature part of `snapshot verify`'s report.
#[derive(Debug, Clone, Serialize)]
pub struct SignatureReport {
    pub file: PathBuf,
    pub key_id: Option<String>,
    pub signed_at: Option<String>,
    /// True when a trusted key made it and it matches the file (and its status).
    pub verified: bool,
    /// The ids of the keys it was checked against.
    pub trusted_keys: Vec<String>,
}

/// Checks `<snapshot>.sig` (or `signature`) against `trusted` public key files and what
/// `report` found in the snapshot: what was learnt of the signature (`None`: no signature and
/// none asked for), and whether it passed.
pub fn check_signature(
    report: &VerifyReport,
    signature: Option<&Path>,
    trusted: &[PathBuf],
) -> (Option<SignatureReport>, Result<(), SignatureError>) {
    let file = signature.map_or_else(|| default_path(&report.file), Path::to_owned);
    if signature.is_none() && trusted.is_empty() && !file.exists() {
        return (None, Ok(()));
    }
    let mut out = SignatureReport {
        file,
        key_id: None,
        signed_at: None,
        verified: false,
        trusted_keys: Vec::new(),
    };
    let result = fill(report, trusted, &mut out);
    (Some(out), result)
}

fn fill(
    report: &VerifyReport,
    trusted: &[PathBuf],
    out: &mut SignatureReport,
) -> Result<(), SignatureError> {
    let keys = trusted
        .iter()
        .map(|p| PublicKey::load(p))
        .collect::<Result<Vec<_>, _>>()?;
    out.trusted_keys = keys.iter().map(|k| k.id().to_owned()).collect();
    let sig = SnapshotSignature::load(&out.file)?;
    out.key_id = Some(sig.key_id.clone());
    out.signed_at = Some(sig.facts.signed_at.clone());
    if let (Some(sha), Some(size)) = (&report.sha256, report.size) {
        sig.check_file(sha, size)?;
    }
    if let (Some(rev), Some(keys)) = (report.revision, report.total_keys) {
        sig.check_status(rev, u64::try_from(keys).unwrap_or_default())?;
    }
    if !keys.is_empty() {
        sig.verify(&keys)?;
        out.verified = true;
    }
    Ok(())
}

impl SignatureReport {
    pub fn render(&self) -> String {
        let key = self.key_id.as_deref().unwrap_or("?");
        let at = self.signed_at.as_deref().unwrap_or("?");
        if self.verified {
            format!(
                "  signature {}: by trusted key {key} at {at}, verified; it matches the file\n",
                self.file.display()
            )
        } else {
            format!(
                "  signature {}: by key {key} at {at}; it matches the file, but it was not verified: pass --trusted-key PUB\n",
                self.file.display()
            )
        }
    }
}

#[cfg(test)]
#[path = "snapshot_sign_tests.rs"]
mod tests;
