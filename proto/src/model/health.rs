//! Health as an agent reports it: etcd's `/health` per endpoint and the apiserver's `/readyz`,
//! seen from the member's own host.

use std::fmt;

use super::{ModelError, names};
use crate::pb;

/// What a member's `/health` endpoint said, as its agent saw it from the member's own host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EtcdHealthState {
    /// 200 `{"health":"true"}`.
    Healthy,
    /// Answers 503 `RAFT NO LEADER`: etcd runs and waits for its peers.
    NoLeader,
    /// Answers, unhealthy for another reason (an alarm, a failed read; etcd 3.4 gives none).
    Unhealthy,
    /// No HTTP answer: refused, reset or timed out.
    NotAnswering,
}

impl EtcdHealthState {
    /// How close to healthy: the best endpoint decides a member's state.
    fn rank(self) -> u8 {
        match self {
            EtcdHealthState::Healthy => 3,
            EtcdHealthState::NoLeader => 2,
            EtcdHealthState::Unhealthy => 1,
            EtcdHealthState::NotAnswering => 0,
        }
    }

    /// etcd gave an HTTP answer: its process runs past its start-up checks.
    pub fn answers(self) -> bool {
        self != EtcdHealthState::NotAnswering
    }
}

impl TryFrom<i32> for EtcdHealthState {
    type Error = ModelError;
    fn try_from(v: i32) -> Result<Self, ModelError> {
        match pb::EtcdHealthState::try_from(v) {
            Ok(pb::EtcdHealthState::Healthy) => Ok(Self::Healthy),
            Ok(pb::EtcdHealthState::NoLeader) => Ok(Self::NoLeader),
            Ok(pb::EtcdHealthState::Unhealthy) => Ok(Self::Unhealthy),
            Ok(pb::EtcdHealthState::NotAnswering) => Ok(Self::NotAnswering),
            Ok(pb::EtcdHealthState::Unspecified) | Err(_) => {
                Err(ModelError(format!("unknown etcd health state {v}")))
            }
        }
    }
}

impl From<EtcdHealthState> for pb::EtcdHealthState {
    fn from(s: EtcdHealthState) -> Self {
        match s {
            EtcdHealthState::Healthy => Self::Healthy,
            EtcdHealthState::NoLeader => Self::NoLeader,
            EtcdHealthState::Unhealthy => Self::Unhealthy,
            EtcdHealthState::NotAnswering => Self::NotAnswering,
        }
    }
}

/// Which of etcd's listeners a health probe used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HealthEndpointKind {
    /// A `--listen-metrics-urls` entry: answers `/health` even without a leader.
    Metrics,
    /// A `--listen-client-urls` entry, with a client certificate: answers only once the member
    /// has a leader, so "not answering" there may also mean "no leader yet".
    Client,
}

impl HealthEndpointKind {
    pub fn name(self) -> &'static str {
        match self {
            HealthEndpointKind::Metrics => "metrics",
            HealthEndpointKind::Client => "client",
        }
    }
}

impl TryFrom<i32> for HealthEndpointKind {
    type Error = ModelError;
    fn try_from(v: i32) -> Result<Self, ModelError> {
        match pb::HealthEndpointKind::try_from(v) {
            Ok(pb::HealthEndpointKind::Metrics) => Ok(Self::Metrics),
            Ok(pb::HealthEndpointKind::Client) => Ok(Self::Client),
            Ok(pb::HealthEndpointKind::Unspecified) | Err(_) => {
                Err(ModelError(format!("unknown health endpoint kind {v}")))
            }
        }
    }
}

impl From<HealthEndpointKind> for pb::HealthEndpointKind {
    fn from(k: HealthEndpointKind) -> Self {
        match k {
            HealthEndpointKind::Metrics => Self::Metrics,
            HealthEndpointKind::Client => Self::Client,
        }
    }
}

/// One `/health` probe of one etcd listener.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EndpointHealth {
    pub url: String,
    pub kind: HealthEndpointKind,
    pub state: EtcdHealthState,
    /// `None` when there was no HTTP answer.
    pub status: Option<u16>,
    /// etcd's reason, the body, or why there was no answer.
    pub detail: String,
}

impl fmt::Display for EndpointHealth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let url = &self.url;
        let detail = if self.detail.is_empty() {
            String::new()
        } else {
            format!(": {}", self.detail)
        };
        let status = self.status.unwrap_or(0);
        match self.state {
            EtcdHealthState::Healthy => write!(f, "healthy ({url} answered {status})"),
            EtcdHealthState::NoLeader => {
                write!(
                    f,
                    "answers but has no leader ({url} answered {status}{detail})"
                )
            }
            EtcdHealthState::Unhealthy => {
                write!(f, "answers, unhealthy ({url} answered {status}{detail})")
            }
            EtcdHealthState::NotAnswering => write!(f, "not answering ({url}{detail})"),
        }
    }
}

/// The kube-apiserver's `/readyz` on the member's host.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ApiserverReadiness {
    pub url: String,
    /// `None` when there was no HTTP answer or it could not be probed.
    pub status: Option<u16>,
    pub detail: String,
    /// "anonymous", or the client certificate's source.
    pub auth: String,
}

impl ApiserverReadiness {
    pub fn ready(&self) -> bool {
        self.status == Some(200)
    }
}

/// What a member's agent saw of its etcd and apiserver, from the member's own host.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MemberHealth {
    pub member_name: String,
    /// Every endpoint probed; empty only on an apiserver-only host (no etcd there), whose
    /// `member_name` is its host name and whose `apiserver` is then set.
    pub etcd: Vec<EndpointHealth>,
    pub apiserver: Option<ApiserverReadiness>,
}

impl MemberHealth {
    /// The endpoint closest to healthy: it decides the member's state.
    pub fn best(&self) -> Option<&EndpointHealth> {
        self.etcd.iter().max_by_key(|e| e.state.rank())
    }

    pub fn state(&self) -> EtcdHealthState {
        self.best()
            .map_or(EtcdHealthState::NotAnswering, |e| e.state)
    }

    pub fn healthy(&self) -> bool {
        self.state() == EtcdHealthState::Healthy
    }

    /// "answers but has no leader (http://127.0.0.1:2381/health answered 503: RAFT NO LEADER)".
    pub fn summary(&self) -> String {
        self.best().map_or_else(
            || "its agent runs no etcd (an apiserver-only host)".to_owned(),
            ToString::to_string,
        )
    }
}

fn status_of(code: u32, what: &str) -> Result<Option<u16>, ModelError> {
    match code {
        0 => Ok(None),
        100..=599 => Ok(Some(u16::try_from(code).map_err(|_| {
            ModelError(format!("{what}: HTTP status {code} is out of range"))
        })?)),
        _ => Err(ModelError(format!(
            "{what}: HTTP status {code} is out of range"
        ))),
    }
}

impl TryFrom<pb::EndpointHealth> for EndpointHealth {
    type Error = ModelError;
    fn try_from(p: pb::EndpointHealth) -> Result<Self, ModelError> {
        if !(p.url.starts_with("http://") || p.url.starts_with("https://")) {
            return Err(ModelError(format!(
                "health endpoint {:?} is not an http(s) URL",
                p.url
            )));
        }
        let state = EtcdHealthState::try_from(p.state)?;
        let status = status_of(p.status, &p.url)?;
        if state.answers() != status.is_some() {
            return Err(ModelError(format!(
                "health of {}: state {state:?} with HTTP status {}",
                p.url, p.status
            )));
        }
        Ok(Self {
            kind: HealthEndpointKind::try_from(p.kind)?,
            url: p.url,
            state,
            status,
            detail: p.detail,
        })
    }
}

impl From<EndpointHealth> for pb::EndpointHealth {
    fn from(e: EndpointHealth) -> Self {
        Self {
            url: e.url,
            kind: pb::HealthEndpointKind::from(e.kind) as i32,
            state: pb::EtcdHealthState::from(e.state) as i32,
            status: e.status.map_or(0, u32::from),
            detail: e.detail,
        }
    }
}

impl TryFrom<pb::HealthResponse> for MemberHealth {
    type Error = ModelError;
    fn try_from(p: pb::HealthResponse) -> Result<Self, ModelError> {
        names::check_name("member name", &p.member_name)?;
        if p.etcd.is_empty() && p.apiserver.is_none() {
            return Err(ModelError(format!(
                "health of {} names neither an etcd endpoint nor a kube-apiserver",
                p.member_name
            )));
        }
        let etcd = p
            .etcd
            .into_iter()
            .map(EndpointHealth::try_from)
            .collect::<Result<Vec<_>, _>>()?;
        let apiserver = p
            .apiserver
            .map(|a| {
                Ok::<_, ModelError>(ApiserverReadiness {
                    status: status_of(a.status, &a.url)?,
                    url: a.url,
                    detail: a.detail,
                    auth: a.auth,
                })
            })
            .transpose()?;
        Ok(Self {
            member_name: p.member_name,
            etcd,
            apiserver,
        })
    }
}

impl From<MemberHealth> for pb::HealthResponse {
    fn from(h: MemberHealth) -> Self {
        Self {
            member_name: h.member_name,
            etcd: h.etcd.into_iter().map(Into::into).collect(),
            apiserver: h.apiserver.map(|a| pb::ApiserverReadiness {
                url: a.url,
                status: a.status.map_or(0, u32::from),
                detail: a.detail,
                auth: a.auth,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(state: pb::EtcdHealthState, status: u32, detail: &str) -> pb::EndpointHealth {
        pb::EndpointHealth {
            url: "http://127.0.0.1:2381/health".into(),
            kind: pb::HealthEndpointKind::Metrics as i32,
            state: state as i32,
            status,
            detail: detail.into(),
        }
    }

    fn response(etcd: Vec<pb::EndpointHealth>) -> pb::HealthResponse {
        pb::HealthResponse {
            member_name: "cp-1".into(),
            etcd,
            apiserver: Some(pb::ApiserverReadiness {
                url: "https://10.0.0.1:6443/readyz".into(),
                status: 401,
                detail: "Unauthorized".into(),
                auth: "anonymous".into(),
            }),
        }
    }

    #[test]
    fn the_best_endpoint_decides_and_each_state_reads_distinctly() {
        let h = MemberHealth::try_from(response(vec![
            endpoint(pb::EtcdHealthState::NotAnswering, 0, "connection refused"),
            endpoint(pb::EtcdHealthState::NoLeader, 503, "RAFT NO LEADER"),
        ]))
        .expect("valid");
        assert_eq!(h.state(), EtcdHealthState::NoLeader);
        assert!(!h.healthy() && h.state().answers());
        assert_eq!(
            h.summary(),
            "answers but has no leader (http://127.0.0.1:2381/health answered 503: RAFT NO LEADER)"
        );
        assert!(!h.apiserver.as_ref().expect("apiserver").ready());
        let none = MemberHealth::try_from(response(vec![endpoint(
            pb::EtcdHealthState::NotAnswering,
            0,
            "connection refused",
        )]))
        .expect("valid");
        assert_eq!(
            none.summary(),
            "not answering (http://127.0.0.1:2381/health: connection refused)"
        );
        let ok = MemberHealth::try_from(response(vec![endpoint(
            pb::EtcdHealthState::Healthy,
            200,
            "",
        )]))
        .expect("valid");
        assert!(ok.healthy());
        assert_eq!(
            pb::HealthResponse::from(ok.clone()),
            response(vec![endpoint(pb::EtcdHealthState::Healthy, 200, "")])
        );
    }

    #[test]
    fn an_apiserver_only_host_reports_its_readyz_and_no_etcd() {
        let h = MemberHealth::try_from(pb::HealthResponse {
            member_name: "api-1".into(),
            ..response(vec![])
        })
        .expect("valid");
        assert!(h.etcd.is_empty() && !h.healthy());
        assert_eq!(
            h.summary(),
            "its agent runs no etcd (an apiserver-only host)"
        );
        assert_eq!(
            h.apiserver.as_ref().map(|a| a.url.as_str()),
            Some("https://10.0.0.1:6443/readyz")
        );
    }

    #[test]
    fn inconsistent_health_is_invalid_argument() {
        let cases = [
            (
                "neither etcd nor apiserver",
                pb::HealthResponse {
                    apiserver: None,
                    ..response(vec![])
                },
            ),
            (
                "unspecified state",
                response(vec![endpoint(pb::EtcdHealthState::Unspecified, 200, "")]),
            ),
            (
                "answer without status",
                response(vec![endpoint(pb::EtcdHealthState::NoLeader, 0, "")]),
            ),
            (
                "status without answer",
                response(vec![endpoint(pb::EtcdHealthState::NotAnswering, 503, "")]),
            ),
            (
                "status out of range",
                response(vec![endpoint(pb::EtcdHealthState::Healthy, 7000, "")]),
            ),
            (
                "bad name",
                pb::HealthResponse {
                    member_name: "cp 1".into(),
                    ..response(vec![endpoint(pb::EtcdHealthState::Healthy, 200, "")])
                },
            ),
            (
                "bad url",
                response(vec![pb::EndpointHealth {
                    url: "127.0.0.1:2381".into(),
                    ..endpoint(pb::EtcdHealthState::Healthy, 200, "")
                }]),
            ),
        ];
        for (what, p) in cases {
            let err = MemberHealth::try_from(p).expect_err(what);
            assert_eq!(
                tonic::Status::from(err).code(),
                tonic::Code::InvalidArgument,
                "{what}"
            );
        }
    }
}
