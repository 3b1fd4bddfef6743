//! What an agent says about its member (`Describe`), with the facts the coordinator decides on
//! typed and checked: the restore it is part of, its last step and that step's state, its role.

use std::fmt;

use super::{ModelError, RestoreId, Step};
use crate::pb;

/// Where a step stands on a member. `Running`/`Reverting` are journaled before acting: seen after
/// a restart, they mean "may have partly happened; look before acting again".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StepState {
    Running,
    Done,
    Reverting,
    Reverted,
    Failed,
}

impl StepState {
    pub fn name(self) -> &'static str {
        match self {
            StepState::Running => "running",
            StepState::Done => "done",
            StepState::Reverting => "reverting",
            StepState::Reverted => "reverted",
            StepState::Failed => "failed",
        }
    }
}

impl fmt::Display for StepState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl From<StepState> for pb::StepState {
    fn from(s: StepState) -> Self {
        match s {
            StepState::Running => pb::StepState::Running,
            StepState::Done => pb::StepState::Done,
            StepState::Reverting => pb::StepState::Reverting,
            StepState::Reverted => pb::StepState::Reverted,
            StepState::Failed => pb::StepState::Failed,
        }
    }
}

/// `None` for `STEP_STATE_UNSPECIFIED`; an error for a value this side does not know.
fn step_state(v: i32) -> Result<Option<StepState>, ModelError> {
    Ok(Some(match pb::StepState::try_from(v) {
        Ok(pb::StepState::Unspecified) => return Ok(None),
        Ok(pb::StepState::Running) => StepState::Running,
        Ok(pb::StepState::Done) => StepState::Done,
        Ok(pb::StepState::Reverting) => StepState::Reverting,
        Ok(pb::StepState::Reverted) => StepState::Reverted,
        Ok(pb::StepState::Failed) => StepState::Failed,
        Err(_) => return Err(ModelError(format!("unknown step state {v}"))),
    }))
}

/// What an agent runs for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AgentRole {
    /// An etcd member (maybe with a kube-apiserver beside it).
    EtcdMember,
    /// A kube-apiserver (and its controllers) without etcd: a host of an external etcd cluster.
    ApiserverHost,
}

/// The restore a member is part of and has not finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ActiveRestore {
    pub restore_id: RestoreId,
    /// The last step the member changed for it, and where that step stands; `None` before any.
    pub last: Option<(Step, StepState)>,
}

impl fmt::Display for ActiveRestore {
    /// "restore <id> (last step fence done)".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.last {
            Some((step, state)) => {
                write!(f, "restore {} (last step {step} {state})", self.restore_id)
            }
            None => write!(f, "restore {} (no step yet)", self.restore_id),
        }
    }
}

/// A checked `DescribeResponse`: the facts decisions depend on are typed; the others (sizes,
/// versions, layouts, problems reported as text) are read through [`std::ops::Deref`] as sent.
#[derive(Debug, Clone, PartialEq)]
pub struct Describe {
    /// The unfinished restore holding this member's lock.
    pub active: Option<ActiveRestore>,
    pub role: AgentRole,
    facts: pb::DescribeResponse,
}

impl Describe {
    /// Everything the agent sent.
    pub fn facts(&self) -> &pb::DescribeResponse {
        &self.facts
    }
}

impl std::ops::Deref for Describe {
    type Target = pb::DescribeResponse;
    fn deref(&self) -> &pb::DescribeResponse {
        &self.facts
    }
}

impl TryFrom<pb::DescribeResponse> for Describe {
    type Error = ModelError;
    fn try_from(p: pb::DescribeResponse) -> Result<Self, ModelError> {
        let step = match p.active_step {
            0 => None,
            v => Some(Step::try_from(v)?),
        };
        let state = step_state(p.active_step_state)?;
        let last = match (step, state) {
            (Some(step), Some(state)) => Some((step, state)),
            (None, None) => None,
            (Some(step), None) => {
                return Err(ModelError(format!("last step {step} without its state")));
            }
            (None, Some(state)) => {
                return Err(ModelError(format!("a step state ({state}) without a step")));
            }
        };
        let active = if p.active_restore_id.is_empty() {
            if let Some((step, state)) = last {
                return Err(ModelError(format!(
                    "last step {step} {state} without the restore it belongs to"
                )));
            }
            None
        } else {
            Some(ActiveRestore {
                restore_id: p.active_restore_id.parse()?,
                last,
            })
        };
        let role = match pb::AgentRole::try_from(p.role) {
            // An agent older than roles runs an etcd member.
            Ok(pb::AgentRole::Unspecified | pb::AgentRole::EtcdMember) => AgentRole::EtcdMember,
            Ok(pb::AgentRole::ApiserverHost) => AgentRole::ApiserverHost,
            Err(_) => return Err(ModelError(format!("unknown agent role {}", p.role))),
        };
        Ok(Self {
            active,
            role,
            facts: p,
        })
    }
}

impl From<Describe> for pb::DescribeResponse {
    fn from(d: Describe) -> Self {
        d.facts
    }
}

/// The `active_step` and `active_step_state` fields for `last`.
pub fn active_step_fields(last: Option<(Step, StepState)>) -> (i32, i32) {
    last.map_or((0, 0), |(step, state)| {
        (
            pb::Step::from(step) as i32,
            pb::StepState::from(state) as i32,
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn active(step: i32, state: i32) -> pb::DescribeResponse {
        pb::DescribeResponse {
            member_name: "cp-1".into(),
            active_restore_id: "7f1c3a52-9d7e-4c1b-8f7a-0b6a6f0e2a11".into(),
            active_step: step,
            active_step_state: state,
            ..Default::default()
        }
    }

    #[test]
    fn the_active_step_is_typed() {
        let (step, state) = active_step_fields(Some((Step::Fence, StepState::Reverting)));
        let d = Describe::try_from(active(step, state)).expect("valid");
        let a = d.active.expect("active");
        assert_eq!(a.last, Some((Step::Fence, StepState::Reverting)));
        assert_eq!(
            a.to_string(),
            "restore 7f1c3a52-9d7e-4c1b-8f7a-0b6a6f0e2a11 (last step fence reverting)"
        );
        assert_eq!(d.role, AgentRole::EtcdMember, "an older agent runs etcd");
        assert_eq!(d.member_name, "cp-1");
        let idle = Describe::try_from(pb::DescribeResponse::default()).expect("idle");
        assert_eq!(idle.active, None);
        let claimed = Describe::try_from(active(0, 0)).expect("claimed, no step yet");
        assert_eq!(claimed.active.map(|a| a.last), Some(None));
    }

    #[test]
    fn inconsistent_descriptions_are_refused() {
        let (step, state) = active_step_fields(Some((Step::Halt, StepState::Done)));
        let cases = [
            ("without its state", active(step, 0)),
            ("without a step", active(0, state)),
            ("unknown step state", active(step, 42)),
            ("unknown step", active(42, state)),
            (
                "without the restore",
                pb::DescribeResponse {
                    active_restore_id: String::new(),
                    ..active(step, state)
                },
            ),
            (
                "not a UUID",
                pb::DescribeResponse {
                    active_restore_id: "yesterday".into(),
                    ..active(step, state)
                },
            ),
            (
                "unknown agent role",
                pb::DescribeResponse {
                    role: 7,
                    ..Default::default()
                },
            ),
        ];
        for (what, d) in cases {
            let err = Describe::try_from(d).expect_err(what);
            assert!(err.0.contains(what), "{what}: {err}");
        }
    }
}
