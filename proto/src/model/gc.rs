//! Leftovers of ended restores (`quorate gc`): what an agent lists, and what it is asked to remove.

use std::path::PathBuf;

use serde::Serialize;

use super::{ModelError, RestoreId, names};
use crate::pb;

/// How a restore stands on one host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestoreEnd {
    Finished,
    RolledBack,
    Unfinished,
}

impl RestoreEnd {
    pub fn name(self) -> &'static str {
        match self {
            RestoreEnd::Finished => "finished",
            RestoreEnd::RolledBack => "rolled back",
            RestoreEnd::Unfinished => "unfinished",
        }
    }
}

impl TryFrom<i32> for RestoreEnd {
    type Error = ModelError;
    fn try_from(v: i32) -> Result<Self, ModelError> {
        match pb::RestoreEnd::try_from(v) {
            Ok(pb::RestoreEnd::Finished) => Ok(Self::Finished),
            Ok(pb::RestoreEnd::RolledBack) => Ok(Self::RolledBack),
            Ok(pb::RestoreEnd::Unfinished) => Ok(Self::Unfinished),
            _ => Err(ModelError(format!("unknown restore end {v}"))),
        }
    }
}

impl From<RestoreEnd> for pb::RestoreEnd {
    fn from(e: RestoreEnd) -> Self {
        match e {
            RestoreEnd::Finished => Self::Finished,
            RestoreEnd::RolledBack => Self::RolledBack,
            RestoreEnd::Unfinished => Self::Unfinished,
        }
    }
}

/// What a leftover is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LeftoverKind {
    PreservedData,
    PreservedWal,
    FailedCopy,
    RestoreState,
}

impl LeftoverKind {
    pub fn name(self) -> &'static str {
        match self {
            LeftoverKind::PreservedData => "original data dir",
            LeftoverKind::PreservedWal => "original wal dir",
            LeftoverKind::FailedCopy => "failed copy",
            LeftoverKind::RestoreState => "agent state",
        }
    }
}

impl TryFrom<i32> for LeftoverKind {
    type Error = ModelError;
    fn try_from(v: i32) -> Result<Self, ModelError> {
        match pb::LeftoverKind::try_from(v) {
            Ok(pb::LeftoverKind::PreservedData) => Ok(Self::PreservedData),
            Ok(pb::LeftoverKind::PreservedWal) => Ok(Self::PreservedWal),
            Ok(pb::LeftoverKind::FailedCopy) => Ok(Self::FailedCopy),
            Ok(pb::LeftoverKind::RestoreState) => Ok(Self::RestoreState),
            _ => Err(ModelError(format!("unknown leftover kind {v}"))),
        }
    }
}

impl From<LeftoverKind> for pb::LeftoverKind {
    fn from(k: LeftoverKind) -> Self {
        match k {
            LeftoverKind::PreservedData => Self::PreservedData,
            LeftoverKind::PreservedWal => Self::PreservedWal,
            LeftoverKind::FailedCopy => Self::FailedCopy,
            LeftoverKind::RestoreState => Self::RestoreState,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Leftover {
    pub path: PathBuf,
    pub kind: LeftoverKind,
    pub bytes: u64,
}

/// One restore as one host knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RestoreLeftovers {
    pub restore_id: RestoreId,
    pub end: RestoreEnd,
    /// Seconds since the Unix epoch; 0 while unfinished.
    pub ended_at: u64,
    pub why: String,
    pub leftovers: Vec<Leftover>,
}

fn absolute(field: &str, path: String) -> Result<PathBuf, ModelError> {
    let p = PathBuf::from(&path);
    if p.is_absolute() {
        Ok(p)
    } else {
        Err(ModelError(format!(
            "{field} {} is not an absolute path",
            names::shown(&path)
        )))
    }
}

impl TryFrom<pb::RestoreLeftovers> for RestoreLeftovers {
    type Error = ModelError;
    fn try_from(r: pb::RestoreLeftovers) -> Result<Self, ModelError> {
        let leftovers = r
            .leftovers
            .into_iter()
            .map(|l| {
                Ok(Leftover {
                    path: absolute("leftover", l.path)?,
                    kind: l.kind.try_into()?,
                    bytes: l.bytes,
                })
            })
            .collect::<Result<_, ModelError>>()?;
        Ok(Self {
            restore_id: r.restore_id.parse()?,
            end: r.end.try_into()?,
            ended_at: r.ended_at,
            why: r.why,
            leftovers,
        })
    }
}

impl From<RestoreLeftovers> for pb::RestoreLeftovers {
    fn from(r: RestoreLeftovers) -> Self {
        Self {
            restore_id: r.restore_id.to_string(),
            end: pb::RestoreEnd::from(r.end).into(),
            ended_at: r.ended_at,
            why: r.why,
            leftovers: r
                .leftovers
                .into_iter()
                .map(|l| pb::Leftover {
                    path: l.path.display().to_string(),
                    kind: pb::LeftoverKind::from(l.kind).into(),
                    bytes: l.bytes,
                })
                .collect(),
        }
    }
}

/// A request to remove leftovers of one restore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoveLeftovers {
    pub restore_id: RestoreId,
    pub paths: Vec<PathBuf>,
}

impl TryFrom<pb::RemoveLeftoversRequest> for RemoveLeftovers {
    type Error = ModelError;
    fn try_from(r: pb::RemoveLeftoversRequest) -> Result<Self, ModelError> {
        if r.paths.is_empty() {
            return Err(ModelError("no paths to remove".into()));
        }
        Ok(Self {
            restore_id: r.restore_id.parse()?,
            paths: r
                .paths
                .into_iter()
                .map(|p| absolute("path to remove", p))
                .collect::<Result<_, _>>()?,
        })
    }
}

impl From<RemoveLeftovers> for pb::RemoveLeftoversRequest {
    fn from(r: RemoveLeftovers) -> Self {
        Self {
            restore_id: r.restore_id.to_string(),
            paths: r.paths.iter().map(|p| p.display().to_string()).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leftovers_round_trip_and_refuse_relative_paths() {
        let r = RestoreLeftovers {
            restore_id: RestoreId::new(),
            end: RestoreEnd::RolledBack,
            ended_at: 7,
            why: String::new(),
            leftovers: vec![Leftover {
                path: "/var/lib/etcd.quorate-x.failed".into(),
                kind: LeftoverKind::FailedCopy,
                bytes: 3,
            }],
        };
        let back = RestoreLeftovers::try_from(pb::RestoreLeftovers::from(r.clone()));
        assert_eq!(back, Ok(r.clone()));
        let mut bad = pb::RestoreLeftovers::from(r);
        bad.leftovers[0].path = "etc/passwd".into();
        assert!(RestoreLeftovers::try_from(bad).is_err());
        let req = pb::RemoveLeftoversRequest {
            restore_id: RestoreId::new().to_string(),
            paths: vec!["../x".into()],
        };
        let err = RemoveLeftovers::try_from(req).expect_err("relative");
        assert!(err.0.contains("not an absolute path"), "{err}");
        let req = pb::RemoveLeftoversRequest {
            restore_id: "not-an-id".into(),
            paths: vec!["/x".into()],
        };
        assert!(RemoveLeftovers::try_from(req).is_err());
    }
}
