//! A step's outcome on one member, typed: why it failed, and the facts a step reports (the
//! restored revision, where etcd's dirs went, which controllers started).

use std::fmt;
use std::path::PathBuf;

use super::ModelError;
use crate::pb;

/// Why a step failed on a member (one per kind of agent error).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorCode {
    /// The request does not fit the contract or this member.
    InvalidRequest,
    /// The member's restore lock belongs to another restore.
    Locked,
    /// The member is not in the state the step needs.
    Precondition,
    /// Data arrived or was found corrupted.
    Corrupt,
    /// No restore tool on the member.
    ToolMissing,
    /// A command the agent ran failed.
    CommandFailed,
    /// A process did not stop or start in time.
    Timeout,
    /// Another request was in progress, or the client went away.
    Aborted,
    /// A failpoint fired (test builds only).
    Injected,
    /// A file operation failed.
    Io,
    /// The member requires snapshots signed by a key it trusts, and this one is not.
    UntrustedSnapshot,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 11] = [
        ErrorCode::InvalidRequest,
        ErrorCode::Locked,
        ErrorCode::Precondition,
        ErrorCode::Corrupt,
        ErrorCode::ToolMissing,
        ErrorCode::CommandFailed,
        ErrorCode::Timeout,
        ErrorCode::Aborted,
        ErrorCode::Injected,
        ErrorCode::Io,
        ErrorCode::UntrustedSnapshot,
    ];

    /// The code named `name` (as [`Self::name`] writes it).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.name() == name)
    }

    /// The gRPC metadata key under which an agent's refusal carries its code.
    pub const METADATA_KEY: &'static str = "quorate-error-code";

    pub fn name(self) -> &'static str {
        match self {
            ErrorCode::InvalidRequest => "invalid-request",
            ErrorCode::Locked => "locked",
            ErrorCode::Precondition => "precondition",
            ErrorCode::Corrupt => "corrupt",
            ErrorCode::ToolMissing => "tool-missing",
            ErrorCode::CommandFailed => "command-failed",
            ErrorCode::Timeout => "timeout",
            ErrorCode::Aborted => "aborted",
            ErrorCode::Injected => "injected",
            ErrorCode::Io => "io",
            ErrorCode::UntrustedSnapshot => "untrusted-snapshot",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl From<ErrorCode> for pb::ErrorCode {
    fn from(c: ErrorCode) -> Self {
        match c {
            ErrorCode::InvalidRequest => pb::ErrorCode::InvalidRequest,
            ErrorCode::Locked => pb::ErrorCode::Locked,
            ErrorCode::Precondition => pb::ErrorCode::Precondition,
            ErrorCode::Corrupt => pb::ErrorCode::Corrupt,
            ErrorCode::ToolMissing => pb::ErrorCode::ToolMissing,
            ErrorCode::CommandFailed => pb::ErrorCode::CommandFailed,
            ErrorCode::Timeout => pb::ErrorCode::Timeout,
            ErrorCode::Aborted => pb::ErrorCode::Aborted,
            ErrorCode::Injected => pb::ErrorCode::Injected,
            ErrorCode::Io => pb::ErrorCode::Io,
            ErrorCode::UntrustedSnapshot => pb::ErrorCode::UntrustedSnapshot,
        }
    }
}

/// `None` for `ERROR_CODE_UNSPECIFIED`; an error for a value this side does not know.
fn error_code(v: i32) -> Result<Option<ErrorCode>, ModelError> {
    Ok(Some(match pb::ErrorCode::try_from(v) {
        Ok(pb::ErrorCode::Unspecified) => return Ok(None),
        Ok(pb::ErrorCode::InvalidRequest) => ErrorCode::InvalidRequest,
        Ok(pb::ErrorCode::Locked) => ErrorCode::Locked,
        Ok(pb::ErrorCode::Precondition) => ErrorCode::Precondition,
        Ok(pb::ErrorCode::Corrupt) => ErrorCode::Corrupt,
        Ok(pb::ErrorCode::ToolMissing) => ErrorCode::ToolMissing,
        Ok(pb::ErrorCode::CommandFailed) => ErrorCode::CommandFailed,
        Ok(pb::ErrorCode::Timeout) => ErrorCode::Timeout,
        Ok(pb::ErrorCode::Aborted) => ErrorCode::Aborted,
        Ok(pb::ErrorCode::Injected) => ErrorCode::Injected,
        Ok(pb::ErrorCode::Io) => ErrorCode::Io,
        Ok(pb::ErrorCode::UntrustedSnapshot) => ErrorCode::UntrustedSnapshot,
        Err(_) => return Err(ModelError(format!("unknown error code {v}"))),
    }))
}

/// Which of etcd's directories.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DirRole {
    /// The data dir (`--data-dir`).
    Data,
    /// The WAL dir (`--wal-dir`) when it lies outside the data dir.
    Wal,
}

impl DirRole {
    pub fn name(self) -> &'static str {
        match self {
            DirRole::Data => "data dir",
            DirRole::Wal => "WAL dir",
        }
    }
}

/// One of etcd's directories and where a step put it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EtcdDir {
    pub role: DirRole,
    pub path: PathBuf,
}

impl TryFrom<pb::EtcdDir> for EtcdDir {
    type Error = ModelError;
    fn try_from(p: pb::EtcdDir) -> Result<Self, ModelError> {
        let role = match pb::DirRole::try_from(p.role) {
            Ok(pb::DirRole::Data) => DirRole::Data,
            Ok(pb::DirRole::Wal) => DirRole::Wal,
            Ok(pb::DirRole::Unspecified) | Err(_) => {
                return Err(ModelError(format!(
                    "directory {:?} has no known role ({})",
                    p.path, p.role
                )));
            }
        };
        let path = PathBuf::from(p.path);
        if !path.is_absolute() {
            return Err(ModelError(format!(
                "the {} {} is not an absolute path",
                role.name(),
                path.display()
            )));
        }
        Ok(Self { role, path })
    }
}

impl From<EtcdDir> for pb::EtcdDir {
    fn from(d: EtcdDir) -> Self {
        let role = match d.role {
            DirRole::Data => pb::DirRole::Data,
            DirRole::Wal => pb::DirRole::Wal,
        };
        Self {
            role: role as i32,
            path: d.path.display().to_string(),
        }
    }
}

/// A component a step should have started and did not.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ComponentFailure {
    pub component: String,
    pub message: String,
}

/// What a step reports besides its message: the typed facts of one outcome. The agent journals
/// this with each step, so a replayed outcome carries the same facts.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutcomeDetails {
    /// Why the step failed; set exactly when it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<ErrorCode>,
    /// RESTORE: the revision of the restored data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<i64>,
    /// PRESERVE: where each of etcd's dirs was moved aside.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub preserved: Vec<EtcdDir>,
    /// RESTORE's revert: where each restored copy was moved out of the way.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub set_aside: Vec<EtcdDir>,
    /// The controllers started once the kube-apiserver was ready.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub started: Vec<String>,
    /// The controllers that would not start (reported, not a failure of the step).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_started: Vec<ComponentFailure>,
}

impl OutcomeDetails {
    /// The details of a failure with `code`.
    pub fn failed(code: ErrorCode) -> Self {
        Self {
            code: Some(code),
            ..Self::default()
        }
    }
}

/// The outcome of one step on one member, checked.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StepOutcome {
    pub ok: bool,
    pub message: String,
    /// Recorded earlier and replayed, not acted again.
    pub replayed: bool,
    pub details: OutcomeDetails,
}

impl StepOutcome {
    /// A successful outcome with no facts beyond its message.
    pub fn ok(message: String) -> Self {
        Self {
            ok: true,
            message,
            replayed: false,
            details: OutcomeDetails::default(),
        }
    }

    /// A failed outcome.
    pub fn failed(code: ErrorCode, message: String) -> Self {
        Self {
            ok: false,
            message,
            replayed: false,
            details: OutcomeDetails::failed(code),
        }
    }
}

impl TryFrom<pb::Outcome> for StepOutcome {
    type Error = ModelError;
    fn try_from(p: pb::Outcome) -> Result<Self, ModelError> {
        let code = error_code(p.code)?;
        match (p.ok, code) {
            (false, None) => {
                return Err(ModelError(format!(
                    "a failed outcome without an error code: {}",
                    p.message
                )));
            }
            (true, Some(code)) => {
                return Err(ModelError(format!(
                    "a successful outcome with error code {code}: {}",
                    p.message
                )));
            }
            _ => {}
        }
        let dirs = |v: Vec<pb::EtcdDir>| -> Result<Vec<EtcdDir>, ModelError> {
            v.into_iter().map(EtcdDir::try_from).collect()
        };
        if p.started.iter().any(String::is_empty) {
            return Err(ModelError("an empty component name in `started`".into()));
        }
        let not_started = p
            .not_started
            .into_iter()
            .map(|f| {
                if f.component.is_empty() {
                    Err(ModelError(format!(
                        "a component that did not start has no name: {}",
                        f.message
                    )))
                } else {
                    Ok(ComponentFailure {
                        component: f.component,
                        message: f.message,
                    })
                }
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            ok: p.ok,
            message: p.message,
            replayed: p.replayed,
            details: OutcomeDetails {
                code,
                revision: p.revision,
                preserved: dirs(p.preserved)?,
                set_aside: dirs(p.set_aside)?,
                started: p.started,
                not_started,
            },
        })
    }
}

impl From<StepOutcome> for pb::Outcome {
    fn from(o: StepOutcome) -> Self {
        let d = o.details;
        Self {
            ok: o.ok,
            message: o.message,
            replayed: o.replayed,
            code: d
                .code
                .map_or(pb::ErrorCode::Unspecified, pb::ErrorCode::from) as i32,
            revision: d.revision,
            preserved: d.preserved.into_iter().map(Into::into).collect(),
            set_aside: d.set_aside.into_iter().map(Into::into).collect(),
            started: d.started,
            not_started: d
                .not_started
                .into_iter()
                .map(|f| pb::ComponentFailure {
                    component: f.component,
                    message: f.message,
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full() -> StepOutcome {
        StepOutcome {
            ok: true,
            message: "kube-apiserver is up".into(),
            replayed: true,
            details: OutcomeDetails {
                code: None,
                revision: Some(42),
                preserved: vec![EtcdDir {
                    role: DirRole::Data,
                    path: "/var/lib/etcd.quorate-x".into(),
                }],
                set_aside: vec![EtcdDir {
                    role: DirRole::Wal,
                    path: "/var/lib/wal.quorate-x.failed".into(),
                }],
                started: vec!["kube-controller-manager".into()],
                not_started: vec![ComponentFailure {
                    component: "kube-scheduler".into(),
                    message: "not up after 60s".into(),
                }],
            },
        }
    }

    #[test]
    fn outcomes_round_trip_through_the_wire() {
        for o in [
            full(),
            StepOutcome::ok("done".into()),
            StepOutcome::failed(ErrorCode::Timeout, "etcd is not down".into()),
        ] {
            let wire = pb::Outcome::from(o.clone());
            assert_eq!(StepOutcome::try_from(wire).expect("valid"), o);
        }
        let wire = pb::Outcome::from(StepOutcome::failed(ErrorCode::Corrupt, "x".into()));
        assert_eq!(wire.code, pb::ErrorCode::Corrupt as i32);
        assert_eq!(pb::Outcome::from(full()).revision, Some(42));
    }

    #[test]
    fn outcomes_that_break_the_contract_are_refused() {
        type Mutation = Box<dyn Fn(&mut pb::Outcome)>;
        let cases: Vec<(&str, Mutation)> = vec![
            ("without an error code", Box::new(|o| o.ok = false)),
            (
                "with error code",
                Box::new(|o| o.code = pb::ErrorCode::Io as i32),
            ),
            ("unknown error code", Box::new(|o| o.code = 99)),
            ("no known role", Box::new(|o| o.preserved[0].role = 0)),
            (
                "not an absolute path",
                Box::new(|o| o.set_aside[0].path = "etcd.failed".into()),
            ),
            (
                "empty component",
                Box::new(|o| o.started.push(String::new())),
            ),
            (
                "has no name",
                Box::new(|o| o.not_started[0].component.clear()),
            ),
        ];
        for (what, mutate) in cases {
            let mut wire = pb::Outcome::from(full());
            mutate(&mut wire);
            let err = StepOutcome::try_from(wire).expect_err(what);
            assert!(err.0.contains(what), "{what}: {err}");
        }
    }

    /// The journal form of the details, pinned: agents read journals written by older builds.
    #[test]
    fn details_serde_is_pinned() {
        let json = serde_json::to_value(&full().details).expect("json");
        assert_eq!(
            json,
            serde_json::json!({
                "revision": 42,
                "preserved": [{"role": "data", "path": "/var/lib/etcd.quorate-x"}],
                "set_aside": [{"role": "wal", "path": "/var/lib/wal.quorate-x.failed"}],
                "started": ["kube-controller-manager"],
                "not_started": [{"component": "kube-scheduler", "message": "not up after 60s"}],
            })
        );
        let failed =
            serde_json::to_value(OutcomeDetails::failed(ErrorCode::ToolMissing)).expect("json");
        assert_eq!(failed, serde_json::json!({"code": "tool-missing"}));
        assert_eq!(
            serde_json::from_value::<OutcomeDetails>(serde_json::json!({})).expect("empty"),
            OutcomeDetails::default()
        );
    }
}
