//! The snapshot's signature in a restore: read from `<snapshot>.sig` (or `--signature FILE`),
//! checked to be for this snapshot, sent with the claim; and which agents require one (their
//! Describe lists the key ids they trust), checked before anything changes.

use std::path::{Path, PathBuf};

use quorate_proto::model::Describe;
use quorate_proto::signature::SnapshotSignature;
use serde::{Deserialize, Serialize};

use crate::snapshot::CheckedSnapshot;

/// An agent that requires signed snapshots, and the key ids it trusts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Requirement {
    pub name: String,
    pub trusted_keys: Vec<String>,
}

/// What the plan knows of signatures.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SigningPlan {
    /// The snapshot's signature; `None`: unsigned.
    pub signature: Option<SnapshotSignature>,
    /// Where it was read.
    pub signature_file: Option<PathBuf>,
    /// The agents that require a signed snapshot.
    pub required_by: Vec<Requirement>,
    /// How many agents were asked.
    pub agents: usize,
}

/// `<snapshot>.sig`.
pub fn default_path(snapshot: &Path) -> PathBuf {
    let mut name = snapshot.as_os_str().to_owned();
    name.push(".sig");
    PathBuf::from(name)
}

/// The signature for `snapshot`: `explicit` (which must exist), else `<snapshot>.sig` when it
/// exists; refused when it cannot be read or is for another file.
pub fn read(
    snapshot: &CheckedSnapshot,
    explicit: Option<&Path>,
) -> anyhow::Result<Option<(PathBuf, SnapshotSignature)>> {
    let path = match explicit {
        Some(p) => p.to_owned(),
        None => {
            let p = default_path(&snapshot.path);
            if !p.exists() {
                return Ok(None);
            }
            p
        }
    };
    let refused = |e: &dyn std::fmt::Display| {
        anyhow::anyhow!("preflight refused the snapshot's signature; nothing was changed: {e}")
    };
    let sig = SnapshotSignature::load(&path).map_err(|e| refused(&e))?;
    sig.check_file(&snapshot.sha256, snapshot.size)
        .map_err(|e| refused(&format!("{}: {e}", path.display())))?;
    Ok(Some((path, sig)))
}

/// Checks the agents' requirements against the signature; a problem per agent that would refuse
/// it. `described` follows the inventory's agents (name first).
pub fn check(
    signature: Option<(PathBuf, SnapshotSignature)>,
    described: &[(&str, Option<&Describe>)],
    problems: &mut Vec<String>,
) -> SigningPlan {
    let required_by: Vec<Requirement> = described
        .iter()
        .filter_map(|(name, d)| {
            let keys = &(*d)?.trusted_snapshot_keys;
            (!keys.is_empty()).then(|| Requirement {
                name: (*name).to_owned(),
                trusted_keys: keys.clone(),
            })
        })
        .collect();
    for r in &required_by {
        let keys = r.trusted_keys.join(", ");
        match &signature {
            None => problems.push(format!(
                "{}: its agent requires snapshots signed by a trusted key ({keys}), and this \
                 snapshot has no signature: sign it with `quorate snapshot sign SNAPSHOT --key \
                 KEY` (it writes SNAPSHOT.sig, read from beside the snapshot) or pass \
                 --signature FILE",
                r.name
            )),
            Some((path, sig)) if !r.trusted_keys.contains(&sig.key_id) => problems.push(format!(
                "{}: its agent trusts snapshot keys {keys}, and {} is signed by key {}: sign \
                 the snapshot with a key it trusts, or add that key's public key to its \
                 trusted_snapshot_keys",
                r.name,
                path.display(),
                sig.key_id
            )),
            Some(_) => {}
        }
    }
    let (signature_file, signature) = signature.unzip();
    SigningPlan {
        signature,
        signature_file,
        required_by,
        agents: described.len(),
    }
}

impl SigningPlan {
    /// One line for the plan.
    pub fn render(&self) -> String {
        let signed = match (&self.signature, &self.signature_file) {
            (Some(s), file) => format!(
                "signed by key {} at {} ({}; not verified here: each agent that requires \
                 signatures verifies it)",
                s.key_id,
                s.facts.signed_at,
                file.as_deref()
                    .map_or("?".into(), |f| f.display().to_string())
            ),
            (None, _) => "unsigned".to_owned(),
        };
        let required = match self.required_by.len() {
            0 => "no member requires signatures".to_owned(),
            n if n == self.agents => "every member requires signatures".to_owned(),
            _ => format!(
                "signatures required by {} only",
                self.required_by
                    .iter()
                    .map(|r| r.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        format!("signature: {signed}; {required}")
    }
}

#[cfg(test)]
mod tests {
    use quorate_proto::pb;
    use quorate_proto::signature::{SignedFacts, SigningKey};

    use super::*;

    fn describe(keys: &[&str]) -> Describe {
        Describe::try_from(pb::DescribeResponse {
            role: pb::AgentRole::EtcdMember as i32,
            member_name: "x".into(),
            trusted_snapshot_keys: keys.iter().map(|k| (*k).to_owned()).collect(),
            ..Default::default()
        })
        .expect("describe")
    }

    fn signed(key: &SigningKey) -> (PathBuf, SnapshotSignature) {
        let facts = SignedFacts {
            sha256: "ab".repeat(32),
            size: 4128,
            revision: None,
            total_keys: None,
            signed_at: "2026-11-30T21:00:00Z".into(),
        };
        let sig = SnapshotSignature::sign(facts, key).expect("sign");
        (PathBuf::from("/b/s.db.sig"), sig)
    }

    #[test]
    fn members_requiring_signatures_refuse_an_unsigned_or_otherwise_signed_snapshot_in_preflight() {
        let (key, _) = SigningKey::generate().expect("key");
        let (other, _) = SigningKey::generate().expect("key");
        let id = key.public().id();
        let (strict, lax) = (describe(&[id]), describe(&[]));
        let agents = [
            ("cp-1", Some(&strict)),
            ("cp-2", Some(&lax)),
            ("cp-3", None),
        ];

        let mut problems = Vec::new();
        let plan = check(Some(signed(&key)), &agents, &mut problems);
        assert!(problems.is_empty(), "{problems:?}");
        let text = plan.render();
        assert!(
            text.contains(&format!("signed by key {id}")) && text.contains("required by cp-1 only"),
            "{text}"
        );

        let plan = check(None, &agents, &mut problems);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].starts_with("cp-1: its agent requires")
                && problems[0].contains(id)
                && problems[0].contains("quorate snapshot sign"),
            "{problems:?}"
        );
        assert!(plan.render().starts_with("signature: unsigned"));

        problems.clear();
        check(Some(signed(&other)), &agents, &mut problems);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains(other.public().id()), "{problems:?}");

        problems.clear();
        let all = [("cp-1", Some(&strict)), ("cp-2", Some(&strict))];
        let plan = check(Some(signed(&key)), &all, &mut problems);
        assert!(plan.render().contains("every member requires signatures"));
        let none = check(None, &[("cp-1", Some(&lax))], &mut problems);
        assert!(problems.is_empty());
        assert!(none.render().contains("no member requires signatures"));
    }

    #[test]
    fn a_signature_file_for_another_snapshot_is_refused() {
        let dir = tempfile::tempdir().expect("tmp");
        let snap = CheckedSnapshot {
            path: dir.path().join("s.db"),
            size: 4128,
            sha256: "ab".repeat(32),
            trailer: true,
        };
        assert!(read(&snap, None).expect("no file").is_none());
        assert!(read(&snap, Some(&dir.path().join("missing.sig"))).is_err());
        let (key, _) = SigningKey::generate().expect("key");
        let (_, sig) = signed(&key);
        std::fs::write(default_path(&snap.path), sig.to_json()).expect("write");
        let (path, read_back) = read(&snap, None).expect("read").expect("signed");
        assert_eq!((path, read_back), (default_path(&snap.path), sig));
        let other = CheckedSnapshot {
            sha256: "cd".repeat(32),
            ..snap.clone()
        };
        let err = read(&other, None).expect_err("another snapshot");
        assert!(err.to_string().contains("another snapshot"), "{err}");
    }
}
