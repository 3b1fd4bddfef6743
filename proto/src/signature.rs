//! Ed25519 signatures of snapshots: what `quorate snapshot sign` writes beside a snapshot
//! (`<snapshot>.sig`), what the coordinator sends with a claim, and what an agent with
//! `trusted_snapshot_keys` checks before it stages or restores anything.
//!
//! # The signature file (`<snapshot>.sig`, JSON)
//!
//! ```json
//! {"format": "quorate-snapshot-signature", "version": 1,
//!  "sha256": "<64 lowercase hex: the whole file>", "size": 20480032,
//!  "revision": 1234, "total_keys": 5678,
//!  "signed_at": "2026-11-30T21:00:00Z", "key_id": "<16 lowercase hex>",
//!  "signature": "<base64 of the 64-byte Ed25519 signature>"}
//! ```
//!
//! `revision` and `total_keys` (`snapshot status`'s revision and totalKey) are `null` when they
//! were not known at signing. The key id is the first 8 bytes, in hex, of the sha256 of the raw
//! 32-byte public key.
//!
//! # What is signed
//!
//! The bytes of [`SnapshotSignature::message`]: the domain line `quorate-snapshot-signature-v1`,
//! then one `name=value` line per field, in this order, each ending with `\n`:
//!
//! ```text
//! quorate-snapshot-signature-v1
//! sha256=<hex>
//! size=<decimal>
//! revision=<decimal, or "unknown">
//! total_keys=<decimal, or "unknown">
//! signed_at=<RFC 3339, UTC, seconds>
//! key_id=<hex>
//! ```
//!
//! Every value is checked to hold no newline before it is signed or verified, so the lines are
//! unambiguous.
//!
//! # Keys
//!
//! The private key is a PKCS#8 PEM file (`-----BEGIN PRIVATE KEY-----`), as `quorate snapshot
//! keygen` or `openssl genpkey -algorithm ed25519` write it; the public key a PEM
//! SubjectPublicKeyInfo (`-----BEGIN PUBLIC KEY-----`), as `openssl pkey -pubout` writes it.

use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair as _, UnparsedPublicKey};
use serde::{Deserialize, Serialize};

use crate::model::check_sha256;
use crate::pb;

/// The `format` of a signature file.
pub const FORMAT: &str = "quorate-snapshot-signature";
/// The signature file version this code writes and reads.
pub const VERSION: u32 = 1;
/// The first line of the signed bytes: a signature made for anything else never verifies here.
const DOMAIN: &str = "quorate-snapshot-signature-v1\n";
/// DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410), before the 32 key bytes.
const SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// Why a signature or a key was not accepted; each says what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the snapshot signature is malformed: {0}")]
    Malformed(String),
    #[error(
        "the snapshot signature has format version {found}; this quorate reads version {VERSION}: sign the snapshot again with this quorate (`quorate snapshot sign SNAPSHOT --key KEY`)"
    )]
    Version { found: u64 },
    #[error(
        "the snapshot is signed by key {key_id}, which is not trusted here (trusted: {trusted}): sign it with a trusted key (`quorate snapshot sign SNAPSHOT --key KEY`) or add that key's public key to trusted_snapshot_keys"
    )]
    Untrusted { key_id: String, trusted: String },
    #[error(
        "the snapshot signature by key {key_id} does not verify: the signature file was altered (its sha256, size, revision, key count or date changed) or forged; sign the snapshot again with `quorate snapshot sign`"
    )]
    Invalid { key_id: String },
    #[error(
        "the signature is for a snapshot with {what} {signed}, but this snapshot's {what} is {actual}: it belongs to another snapshot, or the snapshot changed after it was signed"
    )]
    Mismatch {
        what: &'static str,
        signed: String,
        actual: String,
    },
    #[error("{what} {path}: {detail}")]
    File {
        what: &'static str,
        path: PathBuf,
        detail: String,
    },
}

/// An Ed25519 public key trusted to sign snapshots.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    raw: [u8; 32],
    id: String,
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.id)
    }
}

impl PublicKey {
    pub fn from_raw(raw: [u8; 32]) -> Self {
        Self {
            id: key_id(&raw),
            raw,
        }
    }

    /// Its short id: the first 8 bytes, in hex, of the sha256 of the raw key.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// A PEM SubjectPublicKeyInfo (`-----BEGIN PUBLIC KEY-----`).
    pub fn from_pem(text: &str) -> Result<Self, String> {
        let der = pem_decode(text, "PUBLIC KEY")?;
        let raw = der
            .strip_prefix(&SPKI_PREFIX[..])
            .and_then(|k| <[u8; 32]>::try_from(k).ok())
            .ok_or("not an Ed25519 public key (SubjectPublicKeyInfo of OID 1.3.101.112)")?;
        Ok(Self::from_raw(raw))
    }

    pub fn to_pem(&self) -> String {
        let mut der = SPKI_PREFIX.to_vec();
        der.extend_from_slice(&self.raw);
        pem_encode("PUBLIC KEY", &der)
    }

    /// Reads a public key file.
    pub fn load(path: &Path) -> Result<Self, SignatureError> {
        let text = std::fs::read_to_string(path).map_err(|e| SignatureError::File {
            what: "cannot read the public key",
            path: path.to_owned(),
            detail: e.to_string(),
        })?;
        Self::from_pem(&text).map_err(|detail| SignatureError::File {
            what: "public key",
            path: path.to_owned(),
            detail: format!(
                "{detail}; expected a PEM Ed25519 public key as `quorate snapshot keygen` writes"
            ),
        })
    }
}

/// An Ed25519 private key that signs snapshots. Its `Debug` shows the key id only.
pub struct SigningKey {
    pair: Ed25519KeyPair,
    public: PublicKey,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey({}, <private key hidden>)", self.public.id)
    }
}

impl SigningKey {
    /// A new key and its PKCS#8 PEM text.
    pub fn generate() -> Result<(Self, String), SignatureError> {
        let rng = ring::rand::SystemRandom::new();
        let fail = |what: &str| SignatureError::Malformed(format!("generating a key: {what}"));
        let doc = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| fail("no randomness"))?;
        let pem = pem_encode("PRIVATE KEY", doc.as_ref());
        let key = Self::from_pem(&pem).map_err(|e| fail(&e))?;
        Ok((key, pem))
    }

    /// A PKCS#8 PEM private key (`-----BEGIN PRIVATE KEY-----`).
    pub fn from_pem(text: &str) -> Result<Self, String> {
        let der = pem_decode(text, "PRIVATE KEY")?;
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der)
            .map_err(|e| format!("not an Ed25519 PKCS#8 private key ({e})"))?;
        let raw = <[u8; 32]>::try_from(pair.public_key().as_ref())
            .map_err(|_| "an Ed25519 public key is 32 bytes".to_owned())?;
        Ok(Self {
            pair,
            public: PublicKey::from_raw(raw),
        })
    }

    /// Reads a private key file.
    pub fn load(path: &Path) -> Result<Self, SignatureError> {
        let text = std::fs::read_to_string(path).map_err(|e| SignatureError::File {
            what: "cannot read the signing key",
            path: path.to_owned(),
            detail: e.to_string(),
        })?;
        Self::from_pem(&text).map_err(|detail| SignatureError::File {
            what: "signing key",
            path: path.to_owned(),
            detail: format!(
                "{detail}; expected a PEM PKCS#8 Ed25519 key as `quorate snapshot keygen` writes"
            ),
        })
    }

    pub fn public(&self) -> &PublicKey {
        &self.public
    }
}

/// What a signature vouches for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedFacts {
    /// Lowercase hex sha256 of the whole snapshot file.
    pub sha256: String,
    pub size: u64,
    /// `snapshot status`'s revision, when known.
    pub revision: Option<i64>,
    /// `snapshot status`'s totalKey, when known.
    pub total_keys: Option<u64>,
    /// RFC 3339, UTC, seconds.
    pub signed_at: String,
}

/// One signature of one snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotSignature {
    pub facts: SignedFacts,
    pub key_id: String,
    /// 64 bytes.
    pub signature: Vec<u8>,
}

/// The file's JSON form.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileForm {
    format: String,
    version: u64,
    sha256: String,
    size: u64,
    revision: Option<i64>,
    total_keys: Option<u64>,
    signed_at: String,
    key_id: String,
    signature: String,
}

/// Its format and version, read first so a newer file is named as such.
#[derive(Deserialize)]
struct Header {
    format: Option<String>,
    version: Option<u64>,
}

impl SnapshotSignature {
    /// Signs `facts` with `key`.
    pub fn sign(facts: SignedFacts, key: &SigningKey) -> Result<Self, SignatureError> {
        check_facts(&facts)?;
        let mut sig = Self {
            facts,
            key_id: key.public.id.clone(),
            signature: Vec::new(),
        };
        sig.signature = key.pair.sign(&sig.message()).as_ref().to_vec();
        Ok(sig)
    }

    /// The bytes signed (see the module's documentation).
    pub fn message(&self) -> Vec<u8> {
        let f = &self.facts;
        let opt = |v: Option<String>| v.unwrap_or_else(|| "unknown".to_owned());
        format!(
            "{DOMAIN}sha256={}\nsize={}\nrevision={}\ntotal_keys={}\nsigned_at={}\nkey_id={}\n",
            f.sha256,
            f.size,
            opt(f.revision.map(|r| r.to_string())),
            opt(f.total_keys.map(|k| k.to_string())),
            f.signed_at,
            self.key_id
        )
        .into_bytes()
    }

    /// The trusted key that made this signature, or why none did.
    pub fn verify<'a>(&self, trusted: &'a [PublicKey]) -> Result<&'a PublicKey, SignatureError> {
        let key = trusted
            .iter()
            .find(|k| k.id == self.key_id)
            .ok_or_else(|| SignatureError::Untrusted {
                key_id: self.key_id.clone(),
                trusted: key_list(trusted),
            })?;
        UnparsedPublicKey::new(&ED25519, &key.raw)
            .verify(&self.message(), &self.signature)
            .map_err(|_| SignatureError::Invalid {
                key_id: self.key_id.clone(),
            })?;
        Ok(key)
    }

    /// Refuses a signature made for another file.
    pub fn check_file(&self, sha256: &str, size: u64) -> Result<(), SignatureError> {
        if self.facts.sha256 != sha256 {
            return Err(SignatureError::Mismatch {
                what: "sha256",
                signed: self.facts.sha256.clone(),
                actual: sha256.to_owned(),
            });
        }
        if self.facts.size != size {
            return Err(SignatureError::Mismatch {
                what: "size",
                signed: self.facts.size.to_string(),
                actual: size.to_string(),
            });
        }
        Ok(())
    }

    /// Refuses a signature whose revision or key count, when both sides know them, differ from
    /// what `snapshot status` reads in the file.
    pub fn check_status(&self, revision: i64, total_keys: u64) -> Result<(), SignatureError> {
        if let Some(signed) = self.facts.revision.filter(|r| *r != revision) {
            return Err(SignatureError::Mismatch {
                what: "revision",
                signed: signed.to_string(),
                actual: revision.to_string(),
            });
        }
        if let Some(signed) = self.facts.total_keys.filter(|k| *k != total_keys) {
            return Err(SignatureError::Mismatch {
                what: "key count",
                signed: signed.to_string(),
                actual: total_keys.to_string(),
            });
        }
        Ok(())
    }

    /// The signature file's text.
    pub fn to_json(&self) -> String {
        let f = &self.facts;
        let form = FileForm {
            format: FORMAT.to_owned(),
            version: u64::from(VERSION),
            sha256: f.sha256.clone(),
            size: f.size,
            revision: f.revision,
            total_keys: f.total_keys,
            signed_at: f.signed_at.clone(),
            key_id: self.key_id.clone(),
            signature: B64.encode(&self.signature),
        };
        let mut text = serde_json::to_string_pretty(&form).expect("a signature always serialises");
        text.push('\n');
        text
    }

    /// Reads a signature file's text.
    pub fn from_json(text: &str) -> Result<Self, SignatureError> {
        let bad = |e: serde_json::Error| SignatureError::Malformed(e.to_string());
        let header: Header = serde_json::from_str(text).map_err(bad)?;
        if header.format.as_deref() != Some(FORMAT) {
            return Err(SignatureError::Malformed(format!(
                "its format is {:?}, not {FORMAT:?}",
                header.format.unwrap_or_default()
            )));
        }
        match header.version {
            Some(v) if v == u64::from(VERSION) => {}
            Some(found) => return Err(SignatureError::Version { found }),
            None => return Err(SignatureError::Malformed("it has no version".into())),
        }
        let form: FileForm = serde_json::from_str(text).map_err(bad)?;
        let signature = B64
            .decode(form.signature.trim())
            .map_err(|e| SignatureError::Malformed(format!("its signature is not base64: {e}")))?;
        Self::checked(
            SignedFacts {
                sha256: form.sha256,
                size: form.size,
                revision: form.revision,
                total_keys: form.total_keys,
                signed_at: form.signed_at,
            },
            form.key_id,
            signature,
        )
    }

    /// Reads a signature file.
    pub fn load(path: &Path) -> Result<Self, SignatureError> {
        let text = std::fs::read_to_string(path).map_err(|e| SignatureError::File {
            what: "cannot read the snapshot signature",
            path: path.to_owned(),
            detail: e.to_string(),
        })?;
        Self::from_json(&text).map_err(|e| SignatureError::File {
            what: "snapshot signature",
            path: path.to_owned(),
            detail: e.to_string(),
        })
    }

    fn checked(
        facts: SignedFacts,
        key_id: String,
        signature: Vec<u8>,
    ) -> Result<Self, SignatureError> {
        check_facts(&facts)?;
        if key_id.len() != 16 || !key_id.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f')) {
            return Err(SignatureError::Malformed(format!(
                "key id {key_id:?} is not 16 lowercase hex digits"
            )));
        }
        if signature.len() != 64 {
            return Err(SignatureError::Malformed(format!(
                "an Ed25519 signature is 64 bytes, this one {} (truncated?)",
                signature.len()
            )));
        }
        Ok(Self {
            facts,
            key_id,
            signature,
        })
    }
}

fn check_facts(f: &SignedFacts) -> Result<(), SignatureError> {
    check_sha256(&f.sha256).map_err(|e| SignatureError::Malformed(e.0))?;
    if f.signed_at.contains('\n') || humantime::parse_rfc3339(&f.signed_at).is_err() {
        return Err(SignatureError::Malformed(format!(
            "signed_at {:?} is not an RFC 3339 UTC time",
            f.signed_at
        )));
    }
    Ok(())
}

/// `a1b2..., c3d4...`, or `none`.
pub fn key_list(keys: &[PublicKey]) -> String {
    if keys.is_empty() {
        "none".to_owned()
    } else {
        keys.iter()
            .map(|k| k.id.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Now, as a signature's `signed_at`.
pub fn now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

fn key_id(raw: &[u8; 32]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, raw);
    digest.as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    let body = B64.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in body.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn pem_decode(text: &str, label: &str) -> Result<Vec<u8>, String> {
    let (begin, end) = (
        format!("-----BEGIN {label}-----"),
        format!("-----END {label}-----"),
    );
    let start = text
        .find(&begin)
        .ok_or_else(|| format!("no {begin} line"))?;
    let rest = &text[start + begin.len()..];
    let stop = rest.find(&end).ok_or_else(|| format!("no {end} line"))?;
    let body: String = rest[..stop].split_whitespace().collect();
    B64.decode(body)
        .map_err(|e| format!("its PEM body is not base64: {e}"))
}

impl TryFrom<pb::SnapshotSignature> for SnapshotSignature {
    type Error = crate::model::ModelError;
    fn try_from(p: pb::SnapshotSignature) -> Result<Self, Self::Error> {
        if p.version != VERSION {
            return Err(crate::model::ModelError(
                SignatureError::Version {
                    found: u64::from(p.version),
                }
                .to_string(),
            ));
        }
        Self::checked(
            SignedFacts {
                sha256: p.sha256,
                size: p.size,
                revision: p.revision,
                total_keys: p.total_keys,
                signed_at: p.signed_at,
            },
            p.key_id,
            p.signature,
        )
        .map_err(|e| crate::model::ModelError(e.to_string()))
    }
}

impl From<SnapshotSignature> for pb::SnapshotSignature {
    fn from(s: SnapshotSignature) -> Self {
        Self {
            version: VERSION,
            sha256: s.facts.sha256,
            size: s.facts.size,
            revision: s.facts.revision,
            total_keys: s.facts.total_keys,
            signed_at: s.facts.signed_at,
            key_id: s.key_id,
            signature: s.signature,
        }
    }
}

/// Serialised as the signature file's JSON object (journals, plans).
impl Serialize for SnapshotSignature {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let value: serde_json::Value =
            serde_json::from_str(&self.to_json()).map_err(serde::ser::Error::custom)?;
        value.serialize(s)
    }
}

impl<'de> Deserialize<'de> for SnapshotSignature {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = serde_json::Value::deserialize(d)?;
        Self::from_json(&value.to_string()).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
#[path = "signature_tests.rs"]
mod tests;
