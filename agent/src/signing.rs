//! Snapshots this member trusts. With `trusted_snapshot_keys` in its config, the agent refuses
//! a claim whose snapshot signature is missing, made by another key, altered, or for another
//! snapshot; keeps the verified signature in the restore's journal; and checks it again, against
//! the keys trusted then, before it accepts a pushed snapshot and before PREPARE and RESTORE use
//! the staged copy (whose sha256 they check against the request's, which must be the signed
//! one). A stolen coordinator certificate alone then cannot set the cluster's state.

use std::path::PathBuf;

use quorate_proto::signature::{PublicKey, SnapshotSignature, key_list};

use crate::error::{AgentError, Result};
use crate::journal::Journal;

/// Reads the public keys of `trusted_snapshot_keys`; a message naming the file when one cannot
/// be used.
pub fn load_keys(paths: &[PathBuf]) -> std::result::Result<Vec<PublicKey>, String> {
    let mut keys: Vec<PublicKey> = Vec::new();
    for path in paths {
        let key = PublicKey::load(path).map_err(|e| {
            format!(
                "trusted_snapshot_keys: {e} (write it with `quorate snapshot keygen`, and copy \
                 the .pub file here)"
            )
        })?;
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    Ok(keys)
}

/// The keys this member trusts to sign snapshots; none: signatures are not required.
#[derive(Debug, Clone, Default)]
pub struct Trust {
    pub keys: Vec<PublicKey>,
}

impl Trust {
    pub fn new(keys: Vec<PublicKey>) -> Self {
        Self { keys }
    }

    pub fn required(&self) -> bool {
        !self.keys.is_empty()
    }

    /// The trusted keys' ids, for Describe.
    pub fn ids(&self) -> Vec<String> {
        self.keys.iter().map(|k| k.id().to_owned()).collect()
    }

    fn refusal(&self, member: &str, why: &str) -> AgentError {
        AgentError::Untrusted(format!(
            "member {member} requires snapshots signed by a trusted key (trusted_snapshot_keys: \
             {}), and {why}; nothing was changed on it",
            key_list(&self.keys)
        ))
    }

    /// CLAIM: the request's signature, verified and for the request's snapshot; `None` when
    /// signatures are not required (a signature sent anyway is not checked).
    pub fn check_claim(
        &self,
        member: &str,
        sha256: &str,
        signature: Option<&SnapshotSignature>,
    ) -> Result<Option<SnapshotSignature>> {
        if !self.required() {
            return Ok(None);
        }
        let sig = signature.ok_or_else(|| {
            self.refusal(
                member,
                "the claim carries no snapshot signature: sign the snapshot with one of those \
                 keys (`quorate snapshot sign SNAPSHOT --key KEY` writes SNAPSHOT.sig, which \
                 restore reads beside it, or pass --signature FILE)",
            )
        })?;
        sig.verify(&self.keys)
            .map_err(|e| self.refusal(member, &e.to_string()))?;
        if sig.facts.sha256 != sha256 {
            return Err(self.refusal(
                member,
                &format!(
                    "the signature is for the snapshot with sha256 {}, not {sha256}, the one this \
                     restore stages: sign this snapshot (`quorate snapshot sign SNAPSHOT --key \
                     KEY`)",
                    sig.facts.sha256
                ),
            ));
        }
        Ok(Some(sig.clone()))
    }

    /// Before the push, PREPARE and RESTORE: the signature the claim recorded still verifies
    /// with the keys trusted now, and is for `sha256` (and `size`, when known).
    pub fn check_staging(
        &self,
        member: &str,
        journal: &Journal,
        sha256: &str,
        size: Option<u64>,
    ) -> Result<()> {
        if !self.required() {
            return Ok(());
        }
        let id = journal.restore_id;
        let sig = journal.signature.as_ref().ok_or_else(|| {
            self.refusal(
                member,
                &format!(
                    "restore {id} was claimed here without a verified signature (the keys were \
                     added since?); roll it back with `quorate rollback {id}`"
                ),
            )
        })?;
        sig.verify(&self.keys)
            .map_err(|e| self.refusal(member, &e.to_string()))?;
        let size = size.unwrap_or(sig.facts.size);
        sig.check_file(sha256, size)
            .map_err(|e| self.refusal(member, &e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use quorate_proto::model::{ErrorCode, RestoreId};
    use quorate_proto::signature::{SignedFacts, SigningKey};

    use super::*;

    fn signed(key: &SigningKey, sha: &str) -> SnapshotSignature {
        let facts = SignedFacts {
            sha256: sha.to_owned(),
            size: 4128,
            revision: Some(7),
            total_keys: None,
            signed_at: "2026-11-30T21:00:00Z".into(),
        };
        SnapshotSignature::sign(facts, key).expect("sign")
    }

    #[test]
    fn a_member_requiring_signatures_accepts_only_a_trusted_signature_of_this_snapshot() {
        let (key, _) = SigningKey::generate().expect("key");
        let (other, _) = SigningKey::generate().expect("key");
        let trust = Trust::new(vec![key.public().clone()]);
        let sha = "ab".repeat(32);
        let good = signed(&key, &sha);
        assert_eq!(
            trust.check_claim("cp-1", &sha, Some(&good)).expect("good"),
            Some(good.clone())
        );
        let refusals = [
            trust.check_claim("cp-1", &sha, None),
            trust.check_claim("cp-1", &sha, Some(&signed(&other, &sha))),
            trust.check_claim("cp-1", &"cd".repeat(32), Some(&good)),
        ];
        for r in refusals {
            let e = r.expect_err("refused");
            assert_eq!(e.error_code(), ErrorCode::UntrustedSnapshot);
            assert_eq!(e.code(), tonic::Code::PermissionDenied);
            let text = e.to_string();
            assert!(
                text.contains("member cp-1 requires snapshots signed")
                    && text.contains(key.public().id())
                    && text.contains("quorate snapshot sign"),
                "{text}"
            );
        }
        // No keys: nothing required, nothing checked.
        let none = Trust::default();
        assert_eq!(none.check_claim("cp-1", &sha, None).expect("free"), None);

        // Staging checks what the claim recorded, against the keys trusted now.
        let mut journal = Journal::new(RestoreId::new());
        assert!(trust.check_staging("cp-1", &journal, &sha, None).is_err());
        journal.signature = Some(good);
        trust
            .check_staging("cp-1", &journal, &sha, Some(4128))
            .expect("the signed snapshot");
        assert!(
            trust
                .check_staging("cp-1", &journal, &"cd".repeat(32), None)
                .is_err()
        );
        assert!(
            trust
                .check_staging("cp-1", &journal, &sha, Some(1))
                .is_err()
        );
        let rotated = Trust::new(vec![other.public().clone()]);
        assert!(rotated.check_staging("cp-1", &journal, &sha, None).is_err());
        none.check_staging("cp-1", &Journal::new(RestoreId::new()), &sha, None)
            .expect("not required");
    }

    #[test]
    fn the_config_reads_the_trusted_keys_and_names_a_bad_one() {
        let dir = tempfile::tempdir().expect("tmp");
        let (key, _) = SigningKey::generate().expect("key");
        let public = dir.path().join("signing.pub");
        std::fs::write(&public, key.public().to_pem()).expect("write");
        let example = include_str!("../../deploy/agent.example.toml");
        let with = |path: &str| {
            example.replace(
                "# trusted_snapshot_keys = [\"/etc/quorate/snapshot-signing.pub\"]",
                &format!("trusted_snapshot_keys = [{path:?}]"),
            )
        };
        let at = std::path::Path::new("/etc/quorate/agent.toml");
        let config =
            crate::AgentConfig::parse(&with(&public.display().to_string()), at).expect("config");
        assert_eq!(config.trusted_keys, [key.public().clone()]);
        let none = crate::AgentConfig::parse(example, at).expect("example");
        assert!(none.trusted_keys.is_empty());

        let missing = dir.path().join("missing.pub");
        let err = crate::AgentConfig::parse(&with(&missing.display().to_string()), at)
            .expect_err("missing key");
        assert!(
            err.to_string().contains("trusted_snapshot_keys")
                && err.to_string().contains("missing.pub"),
            "{err}"
        );
        let err = crate::AgentConfig::parse(&with("signing.pub"), at).expect_err("relative");
        assert!(err.to_string().contains("absolute"), "{err}");
        std::fs::write(&public, "not a key").expect("write");
        let err = crate::AgentConfig::parse(&with(&public.display().to_string()), at)
            .expect_err("garbage");
        assert!(err.to_string().contains("PEM"), "{err}");
    }
}
