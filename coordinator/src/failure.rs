//! Why a phase failed, per member: what the JSON output, the journal and the error text carry.

use quorate_proto::model::ErrorCode;
use serde::{Deserialize, Serialize};

use crate::agent_client::CallError;

/// What kind of failure, so that automation can branch without parsing text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailureKind {
    /// The agent answered and the step failed there, or it refused the step.
    Failed,
    /// No answer within the deadline: the member's state is unknown.
    Timeout,
    /// The agent could not be reached.
    Unreachable,
    /// etcd (or the restored cluster) did not become healthy or did not verify.
    Unhealthy,
    /// The coordinator itself: its journal, its lock, an injected fault.
    Coordinator,
    /// A signal (SIGINT, SIGTERM) stopped the restore at a phase boundary.
    Interrupted,
}

/// One member's (or the cluster's, or the coordinator's) failure in a phase.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberFailure {
    /// A member's or apiserver host's name, `cluster` or `coordinator`.
    pub member: String,
    pub kind: FailureKind,
    /// The agent's own code, when the agent answered with one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<ErrorCode>,
    pub message: String,
}

impl MemberFailure {
    pub fn new(member: impl Into<String>, kind: FailureKind, message: impl Into<String>) -> Self {
        Self {
            member: member.into(),
            kind,
            code: None,
            message: message.into(),
        }
    }

    pub fn coordinator(message: impl Into<String>) -> Self {
        Self::new("coordinator", FailureKind::Coordinator, message)
    }

    pub fn cluster(message: impl Into<String>) -> Self {
        Self::new("cluster", FailureKind::Unhealthy, message)
    }

    /// A failed call to `member`'s agent while doing `what` (e.g. "step halt").
    pub fn call(member: impl Into<String>, what: &str, e: &CallError) -> Self {
        let (kind, message) = match e {
            CallError::Timeout(d) => (
                FailureKind::Timeout,
                format!(
                    "{what}: no answer within {d:?}; its state is unknown: check the agent, then `quorate status`"
                ),
            ),
            CallError::Unreachable(_) => (FailureKind::Unreachable, format!("{what}: {e}")),
            CallError::Failed(_) => (FailureKind::Failed, format!("{what}: {e}")),
            CallError::Agent { code, .. } => {
                let mut failure = Self::new(member, FailureKind::Failed, format!("{what}: {e}"));
                failure.code = Some(*code);
                return failure;
            }
        };
        Self::new(member, kind, message)
    }
}

impl std::fmt::Display for MemberFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.member.as_str() {
            "cluster" | "coordinator" => write!(f, "{}: {}", self.member, self.message),
            m => write!(f, "member {m}: {}", self.message),
        }
    }
}

/// Failures of one phase: never empty when returned as an error.
pub type Failures = Vec<MemberFailure>;

/// The failures as one line, for the journal and logs.
pub fn one_line(failures: &[MemberFailure]) -> String {
    failures
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}
