//! The agent's errors, and the one place that maps them onto gRPC codes.

use std::path::{Path, PathBuf};

use quorate_proto::model::{ErrorCode, ModelError, RestoreId};

/// Everything that can go wrong on this member. Each message says what failed and what to do.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The request does not fit the contract or this member (wrong name, bad id, ...).
    #[error("{0}")]
    InvalidRequest(String),
    /// This member's restore lock belongs to another restore.
    #[error(
        "member {member} is locked by restore {held}, not {wanted}: finish or undo that restore \
         first with `quorate resume {held}` or `quorate rollback {held}`"
    )]
    LockedByOther {
        member: String,
        held: RestoreId,
        wanted: RestoreId,
    },
    /// The member is not in the state the request needs (etcd still running, missing file, ...).
    #[error("{0}")]
    Precondition(String),
    /// Data arrived or was found corrupted.
    #[error("{0}")]
    Corrupt(String),
    /// No restore tool on this member.
    #[error("{0}")]
    ToolMissing(String),
    /// A command the agent ran failed.
    #[error("{0}")]
    CommandFailed(String),
    /// A process did not stop or start in time.
    #[error("{0}")]
    Timeout(String),
    /// Another request for this member is in progress, or the client went away mid-transfer.
    #[error("{0}")]
    Aborted(String),
    /// A failpoint fired (test builds only).
    #[error("{0}")]
    Injected(String),
    /// This member requires snapshots signed by a trusted key, and this one is not.
    #[error("{0}")]
    Untrusted(String),
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: String,
        path: PathBuf,
        source: std::io::Error,
    },
}

impl AgentError {
    /// An IO error naming the operation and the path.
    pub fn io(what: impl Into<String>, path: &Path, source: std::io::Error) -> Self {
        AgentError::Io {
            what: what.into(),
            path: path.to_owned(),
            source,
        }
    }

    /// The contract's code for this error, reported in a failed step's outcome.
    pub fn error_code(&self) -> ErrorCode {
        match self {
            AgentError::InvalidRequest(_) => ErrorCode::InvalidRequest,
            AgentError::LockedByOther { .. } => ErrorCode::Locked,
            AgentError::Precondition(_) => ErrorCode::Precondition,
            AgentError::Corrupt(_) => ErrorCode::Corrupt,
            AgentError::ToolMissing(_) => ErrorCode::ToolMissing,
            AgentError::CommandFailed(_) => ErrorCode::CommandFailed,
            AgentError::Timeout(_) => ErrorCode::Timeout,
            AgentError::Aborted(_) => ErrorCode::Aborted,
            AgentError::Injected(_) => ErrorCode::Injected,
            AgentError::Io { .. } => ErrorCode::Io,
            AgentError::Untrusted(_) => ErrorCode::UntrustedSnapshot,
        }
    }

    /// The gRPC code this error maps to.
    pub fn code(&self) -> tonic::Code {
        match self {
            AgentError::InvalidRequest(_) => tonic::Code::InvalidArgument,
            AgentError::LockedByOther { .. }
            | AgentError::Precondition(_)
            | AgentError::ToolMissing(_) => tonic::Code::FailedPrecondition,
            AgentError::Corrupt(_) => tonic::Code::DataLoss,
            AgentError::CommandFailed(_) | AgentError::Io { .. } => tonic::Code::Internal,
            AgentError::Timeout(_) => tonic::Code::DeadlineExceeded,
            AgentError::Aborted(_) => tonic::Code::Aborted,
            AgentError::Injected(_) => tonic::Code::Internal,
            AgentError::Untrusted(_) => tonic::Code::PermissionDenied,
        }
    }
}

impl From<ModelError> for AgentError {
    fn from(e: ModelError) -> Self {
        AgentError::InvalidRequest(e.0)
    }
}

impl From<quorate_proto::durable::DurableError> for AgentError {
    fn from(e: quorate_proto::durable::DurableError) -> Self {
        AgentError::Io {
            what: e.what,
            path: e.path,
            source: e.source,
        }
    }
}

impl From<AgentError> for tonic::Status {
    fn from(e: AgentError) -> Self {
        let mut status = tonic::Status::new(e.code(), e.to_string());
        // The contract's code travels beside the gRPC one, which several kinds share.
        if let Ok(v) = e.error_code().name().parse() {
            status.metadata_mut().insert(ErrorCode::METADATA_KEY, v);
        }
        status
    }
}

/// Shorthand for results in this crate.
pub type Result<T, E = AgentError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_carries_the_contracts_code_beside_the_grpc_one() {
        let status = tonic::Status::from(AgentError::Precondition("etcd still runs".into()));
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);
        let code = status
            .metadata()
            .get(ErrorCode::METADATA_KEY)
            .and_then(|v| v.to_str().ok())
            .and_then(ErrorCode::from_name);
        assert_eq!(code, Some(ErrorCode::Precondition));
        for c in ErrorCode::ALL {
            assert_eq!(ErrorCode::from_name(c.name()), Some(c), "{c}");
        }
    }
}
