//! Typed errors of the event stream: a stable `code` a runbook can branch on, the message, and
//! where known the member, the phase and what to do.

use serde::Serialize;

use crate::failure::{FailureKind, MemberFailure};
use crate::inventory::InventoryError;
use crate::journal::JournalError;
use crate::plan::PreflightError;
use crate::snapshot::SnapshotError;

/// One error, as the stream carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ErrorInfo {
    /// What went wrong, as a stable token: the agent's error code (`locked`, `corrupt`,
    /// `untrusted-snapshot`, ...), else the failure kind (`timeout`, `unreachable`, `failed`,
    /// `unhealthy`, `coordinator`, `interrupted`), else a command error code (`usage`,
    /// `inventory`, `snapshot`, `preflight-refused`, `not-confirmed`, `journal`,
    /// `journal-held`, `rollback-refused`, `error`). docs/events.md lists them all.
    pub code: String,
    /// The engine's failure kind, for errors of a phase.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<FailureKind>,
    pub message: String,
    /// A member's or apiserver host's name, `cluster` or `coordinator`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub member: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advice: Option<String>,
}

impl ErrorInfo {
    /// An error that is no member's.
    pub fn new(code: &str, message: impl Into<String>) -> Self {
        Self {
            code: code.to_owned(),
            kind: None,
            message: message.into(),
            member: None,
            phase: None,
            advice: None,
        }
    }

    pub fn with_phase(mut self, phase: &str) -> Self {
        self.phase = Some(phase.to_owned());
        self
    }

    pub fn with_advice(mut self, advice: impl Into<String>) -> Self {
        self.advice = Some(advice.into());
        self
    }

    /// An error of the command as a whole (before or outside the phases).
    pub fn from_anyhow(e: &anyhow::Error) -> Self {
        Self::new(code_of(e), crate::output::render_error(e))
    }

    /// One member's failure in `phase` (`halt`, `rollback:halt`).
    pub fn from_failure(f: &MemberFailure, phase: Option<&str>) -> Self {
        let code = match (f.code, f.kind) {
            (Some(code), _) => code.name().to_owned(),
            (None, kind) => kind_name(kind).to_owned(),
        };
        let advice = advice_for(f);
        Self {
            code,
            kind: Some(f.kind),
            message: f.message.clone(),
            member: Some(f.member.clone()),
            phase: phase.map(str::to_owned),
            advice,
        }
    }
}

fn kind_name(kind: FailureKind) -> &'static str {
    match kind {
        FailureKind::Failed => "failed",
        FailureKind::Timeout => "timeout",
        FailureKind::Unreachable => "unreachable",
        FailureKind::Unhealthy => "unhealthy",
        FailureKind::Coordinator => "coordinator",
        FailureKind::Interrupted => "interrupted",
    }
}

fn advice_for(f: &MemberFailure) -> Option<String> {
    use quorate_proto::model::ErrorCode;
    let m = &f.member;
    let text = match (f.code, f.kind) {
        (Some(ErrorCode::Locked), _) => format!(
            "{m} is claimed by another restore: `quorate status <that id>`; finish or roll it back first"
        ),
        (Some(ErrorCode::UntrustedSnapshot), _) => format!(
            "{m} requires a snapshot signed by a key it trusts: sign it (`quorate snapshot sign`) with one listed in its trusted_snapshot_keys"
        ),
        (Some(ErrorCode::ToolMissing), _) => {
            format!("install etcdutl (or etcdctl for etcd 3.4) where {m}'s agent looks for it")
        }
        (Some(ErrorCode::Corrupt), _) => "use another snapshot".to_owned(),
        (_, FailureKind::Timeout | FailureKind::Unreachable) => format!(
            "check that {m}'s agent runs and is reachable; its state is unknown until it answers (`quorate status <id>`)"
        ),
        (_, FailureKind::Interrupted) => {
            "`quorate status <id>` shows where every member stands".to_owned()
        }
        _ => return None,
    };
    Some(text)
}

/// The command error code of `e`, from the error types the coordinator knows.
pub fn code_of(e: &anyhow::Error) -> &'static str {
    for cause in e.chain() {
        if cause.is::<InventoryError>() {
            return "inventory";
        }
        if cause.is::<SnapshotError>() {
            return "snapshot";
        }
        if cause.is::<PreflightError>() {
            return "preflight-refused";
        }
        if let Some(j) = cause.downcast_ref::<JournalError>() {
            return match j {
                JournalError::Held { .. } => "journal-held",
                JournalError::Missing { .. } => "no-such-restore",
                _ => "journal",
            };
        }
        if cause.is::<crate::engine::RollbackRefused>() {
            return "rollback-refused";
        }
        if cause.is::<crate::progress::Inconsistent>() {
            return "journal";
        }
    }
    "error"
}
