//! Domain types, checked at the boundary: a message that fails these checks becomes
//! `Status::invalid_argument`, never a panic.

use std::fmt;

use uuid::Uuid;

use crate::pb;

/// The id of one restore attempt.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct RestoreId(pub Uuid);

impl RestoreId {
    pub fn new() -> Self {
        Self(Uuid::new_v4())
    }

    /// The cluster token a restore attempt uses: fresh per attempt, so member and cluster IDs are new.
    pub fn cluster_token(&self) -> String {
        format!("quorate-{}", self.0)
    }
}

impl Default for RestoreId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for RestoreId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::str::FromStr for RestoreId {
    type Err = ModelError;
    /// Only the form quorate writes (lowercase, hyphenated): the id names directories and the
    /// cluster token, so no other spelling of the same UUID is accepted.
    fn from_str(s: &str) -> Result<Self, ModelError> {
        Uuid::parse_str(s)
            .ok()
            .filter(|u| u.hyphenated().to_string() == s)
            .map(Self)
            .ok_or_else(|| {
                ModelError(format!(
                    "restore id {} is not a UUID in lowercase hyphenated form (like \
                     0b7e2c1a-5f0e-4d7e-9a1b-2c3d4e5f6a7b)",
                    names::shown(s)
                ))
            })
    }
}

/// A message that does not satisfy the contract.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ModelError(pub String);

impl From<ModelError> for tonic::Status {
    fn from(e: ModelError) -> Self {
        tonic::Status::invalid_argument(e.0)
    }
}

mod describe;
mod gc;
mod health;
pub mod names;
mod outcome;
pub use describe::{ActiveRestore, AgentRole, Describe, StepState, active_step_fields};
pub use gc::{Leftover, LeftoverKind, RemoveLeftovers, RestoreEnd, RestoreLeftovers};
pub use health::{
    ApiserverReadiness, EndpointHealth, EtcdHealthState, HealthEndpointKind, MemberHealth,
};
pub use outcome::{ComponentFailure, DirRole, ErrorCode, EtcdDir, OutcomeDetails, StepOutcome};

/// One step on one member.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Step {
    Claim,
    Prepare,
    Fence,
    Halt,
    Preserve,
    Restore,
    Start,
    Unfence,
    Finish,
}

impl Step {
    pub const ALL: [Step; 9] = [
        Step::Claim,
        Step::Prepare,
        Step::Fence,
        Step::Halt,
        Step::Preserve,
        Step::Restore,
        Step::Start,
        Step::Unfence,
        Step::Finish,
    ];

    /// Steps that act on etcd itself or its data; an apiserver-only host runs only the others
    /// (claim, fence, unfence, finish).
    pub fn touches_etcd(self) -> bool {
        matches!(
            self,
            Step::Prepare | Step::Halt | Step::Preserve | Step::Restore | Step::Start
        )
    }

    pub fn name(self) -> &'static str {
        match self {
            Step::Claim => "claim",
            Step::Prepare => "prepare",
            Step::Fence => "fence",
            Step::Halt => "halt",
            Step::Preserve => "preserve",
            Step::Restore => "restore",
            Step::Start => "start",
            Step::Unfence => "unfence",
            Step::Finish => "finish",
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl TryFrom<i32> for Step {
    type Error = ModelError;
    fn try_from(v: i32) -> Result<Self, ModelError> {
        match pb::Step::try_from(v) {
            Ok(pb::Step::Claim) => Ok(Step::Claim),
            Ok(pb::Step::Prepare) => Ok(Step::Prepare),
            Ok(pb::Step::Fence) => Ok(Step::Fence),
            Ok(pb::Step::Halt) => Ok(Step::Halt),
            Ok(pb::Step::Preserve) => Ok(Step::Preserve),
            Ok(pb::Step::Restore) => Ok(Step::Restore),
            Ok(pb::Step::Start) => Ok(Step::Start),
            Ok(pb::Step::Unfence) => Ok(Step::Unfence),
            Ok(pb::Step::Finish) => Ok(Step::Finish),
            Ok(pb::Step::Unspecified) | Err(_) => Err(ModelError(format!("unknown step {v}"))),
        }
    }
}

impl From<Step> for pb::Step {
    fn from(s: Step) -> Self {
        match s {
            Step::Claim => pb::Step::Claim,
            Step::Prepare => pb::Step::Prepare,
            Step::Fence => pb::Step::Fence,
            Step::Halt => pb::Step::Halt,
            Step::Preserve => pb::Step::Preserve,
            Step::Restore => pb::Step::Restore,
            Step::Start => pb::Step::Start,
            Step::Unfence => pb::Step::Unfence,
            Step::Finish => pb::Step::Finish,
        }
    }
}

/// What a member needs to know to restore itself. For an apiserver-only host (external etcd),
/// `member_name` is the host's name and `peer_urls` is empty.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ClusterFacts {
    pub member_name: String,
    pub peer_urls: Vec<String>,
    pub initial_cluster: String,
    pub cluster_token: String,
    /// Lowercase hex sha256 of the snapshot file.
    pub snapshot_sha256: String,
    pub bump_revision: u64,
    pub mark_compacted: bool,
    /// Restore with `--skip-hash-check`: the snapshot is a raw `member/snap/db` copy without a
    /// sha256 trailer.
    pub skip_hash_check: bool,
}

pub fn check_sha256(hex: &str) -> Result<(), ModelError> {
    if hex.len() == 64
        && hex
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
    {
        Ok(())
    } else {
        Err(ModelError(format!("{hex:?} is not a lowercase hex sha256")))
    }
}

impl TryFrom<pb::ClusterFacts> for ClusterFacts {
    type Error = ModelError;
    fn try_from(p: pb::ClusterFacts) -> Result<Self, ModelError> {
        names::check_name("member name", &p.member_name)?;
        for url in &p.peer_urls {
            names::check_url("peer URL", &p.member_name, url)?;
        }
        let entries = names::check_initial_cluster(&p.initial_cluster)?;
        let own_listed = entries
            .iter()
            .any(|(name, url)| *name == p.member_name && p.peer_urls.iter().any(|u| u == url));
        // No peer URLs: an apiserver-only host, which is not in the initial cluster.
        if !own_listed && !p.peer_urls.is_empty() {
            return Err(ModelError(format!(
                "initial cluster does not list {} with its peer URL",
                p.member_name
            )));
        }
        names::check_token_shape(&p.cluster_token)?;
        check_sha256(&p.snapshot_sha256)?;
        Ok(Self {
            member_name: p.member_name,
            peer_urls: p.peer_urls,
            initial_cluster: p.initial_cluster,
            cluster_token: p.cluster_token,
            snapshot_sha256: p.snapshot_sha256,
            bump_revision: p.bump_revision,
            mark_compacted: p.mark_compacted,
            skip_hash_check: p.skip_hash_check,
        })
    }
}

impl From<ClusterFacts> for pb::ClusterFacts {
    fn from(f: ClusterFacts) -> Self {
        Self {
            member_name: f.member_name,
            peer_urls: f.peer_urls,
            initial_cluster: f.initial_cluster,
            cluster_token: f.cluster_token,
            snapshot_sha256: f.snapshot_sha256,
            bump_revision: f.bump_revision,
            mark_compacted: f.mark_compacted,
            skip_hash_check: f.skip_hash_check,
        }
    }
}

/// A checked step request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepRequest {
    pub restore_id: RestoreId,
    pub step: Step,
    pub facts: ClusterFacts,
    /// CLAIM: the snapshot's signature, for agents that require one.
    pub signature: Option<crate::signature::SnapshotSignature>,
}

impl TryFrom<pb::StepRequest> for StepRequest {
    type Error = ModelError;
    fn try_from(p: pb::StepRequest) -> Result<Self, ModelError> {
        let step = Step::try_from(p.step)?;
        let facts: ClusterFacts = p
            .facts
            .ok_or_else(|| ModelError("step request without cluster facts".into()))?
            .try_into()?;
        if step.touches_etcd() && facts.peer_urls.is_empty() {
            return Err(ModelError(format!(
                "step {step} for {} without peer URLs: etcd steps are for etcd members",
                facts.member_name
            )));
        }
        let signature = p.snapshot_signature.map(TryInto::try_into).transpose()?;
        let restore_id: RestoreId = p.restore_id.parse()?;
        names::check_token(restore_id, &facts.cluster_token)?;
        Ok(Self {
            restore_id,
            step,
            facts,
            signature,
        })
    }
}

impl From<StepRequest> for pb::StepRequest {
    fn from(r: StepRequest) -> Self {
        Self {
            restore_id: r.restore_id.to_string(),
            step: pb::Step::from(r.step) as i32,
            facts: Some(r.facts.into()),
            snapshot_signature: r.signature.map(Into::into),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) const ID: &str = "0b7e2c1a-5f0e-4d7e-9a1b-2c3d4e5f6a7b";

    pub(super) fn facts() -> pb::ClusterFacts {
        pb::ClusterFacts {
            member_name: "cp-1".into(),
            peer_urls: vec!["https://127.0.0.11:2380".into()],
            initial_cluster: "cp-1=https://127.0.0.11:2380,cp-2=https://127.0.0.12:2380".into(),
            cluster_token: format!("quorate-{ID}"),
            snapshot_sha256: "a".repeat(64),
            bump_revision: 0,
            mark_compacted: false,
            skip_hash_check: false,
        }
    }

    #[test]
    fn valid_facts_pass_and_round_trip() {
        let f = ClusterFacts::try_from(facts()).expect("valid");
        assert!(!f.skip_hash_check);
        assert_eq!(pb::ClusterFacts::from(f), facts());
        let raw = pb::ClusterFacts {
            skip_hash_check: true,
            ..facts()
        };
        let f = ClusterFacts::try_from(raw.clone()).expect("valid");
        assert!(f.skip_hash_check);
        assert_eq!(pb::ClusterFacts::from(f), raw);
    }

    #[test]
    fn bad_facts_are_invalid_argument_not_panics() {
        type Mutation = Box<dyn Fn(&mut pb::ClusterFacts)>;
        let cases: Vec<(&str, Mutation)> = vec![
            ("name", Box::new(|f| f.member_name = "cp 1;rm".into())),
            (
                "peer url",
                Box::new(|f| f.peer_urls = vec!["ftp://x".into()]),
            ),
            (
                "cluster",
                Box::new(|f| f.initial_cluster = "cp-2=https://127.0.0.12:2380".into()),
            ),
            (
                "cluster syntax",
                Box::new(|f| f.initial_cluster = "garbage".into()),
            ),
            (
                "token",
                Box::new(|f| f.cluster_token = "etcd-cluster".into()),
            ),
            ("sha", Box::new(|f| f.snapshot_sha256 = "xyz".into())),
        ];
        for (what, mutate) in cases {
            let mut f = facts();
            mutate(&mut f);
            let err = ClusterFacts::try_from(f).expect_err(what);
            assert_eq!(
                tonic::Status::from(err).code(),
                tonic::Code::InvalidArgument,
                "{what}"
            );
        }
        let req = pb::StepRequest {
            restore_id: "not-a-uuid".into(),
            step: 99,
            facts: None,
            snapshot_signature: None,
        };
        assert!(StepRequest::try_from(req).is_err());
        // Without peer URLs (an apiserver-only host): fence yes, halt no.
        let host = pb::ClusterFacts {
            member_name: "api-1".into(),
            peer_urls: vec![],
            ..facts()
        };
        let req = |step: Step| pb::StepRequest {
            restore_id: ID.into(),
            step: pb::Step::from(step) as i32,
            facts: Some(host.clone()),
            snapshot_signature: None,
        };
        assert!(StepRequest::try_from(req(Step::Fence)).is_ok());
        let err = StepRequest::try_from(req(Step::Halt)).expect_err("halt without peers");
        assert!(err.0.contains("etcd steps are for etcd members"), "{err}");
        let err = StepRequest::try_from(req(Step::Prepare)).expect_err("prepare without peers");
        assert!(err.0.contains("etcd steps are for etcd members"), "{err}");
        assert!(Step::try_from(0).is_err());
        assert!(Step::try_from(99).is_err());
    }
}
