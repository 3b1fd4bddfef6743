//! Talking to one agent: a small trait (so a scripted fake can drive the coordinator in unit
//! tests) and its gRPC implementation over mTLS.

use std::future::Future;
use std::time::Duration;

use quorate_proto::model::{
    Describe, ErrorCode, MemberHealth, RestoreId, StepOutcome, StepRequest,
};
use quorate_proto::pb;
use quorate_proto::tls::TlsFiles;
use tokio_stream::StreamExt as _;
use tonic::transport::Channel;

use crate::snapshot::CheckedSnapshot;

/// A piece of the snapshot, shared by every agent's stream without copying.
pub type Chunk = prost::bytes::Bytes;

/// The outcome of one step on one member, checked at the boundary (a failed one is a
/// [`CallError::Failed`]).
pub type Outcome = StepOutcome;

/// Why a call to an agent failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    /// No answer: the member's state is unknown and must be asked again before any decision.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// The agent answered and refused, or the step failed there.
    #[error("{0}")]
    Failed(String),
    /// The agent refused the call, or ran the step and it failed, with the contract's code.
    #[error("{message}")]
    Agent { code: ErrorCode, message: String },
}

impl CallError {
    /// Retryable errors may be retried within the phase deadline; the rest are fatal.
    pub fn is_retryable(&self) -> bool {
        matches!(self, CallError::Timeout(_) | CallError::Unreachable(_))
    }
}

impl From<tonic::Status> for CallError {
    fn from(s: tonic::Status) -> Self {
        match s.code() {
            // The connection dropped (an agent restarting, a network blip): the agent never
            // answered, so the call may be retried; agents report their own errors with
            // specific codes, never these.
            tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled => {
                CallError::Unreachable(describe_status(&s))
            }
            _ if agent_code(&s).is_some() => CallError::Agent {
                code: agent_code(&s).unwrap_or(ErrorCode::Io),
                message: describe_status(&s),
            },
            tonic::Code::DeadlineExceeded => {
                CallError::Failed(format!("deadline exceeded: {}", s.message()))
            }
            _ => CallError::Failed(describe_status(&s)),
        }
    }
}

/// The contract's code an agent put beside its gRPC status, if any.
fn agent_code(s: &tonic::Status) -> Option<ErrorCode> {
    s.metadata()
        .get(ErrorCode::METADATA_KEY)
        .and_then(|v| v.to_str().ok())
        .and_then(ErrorCode::from_name)
}

fn describe_status(s: &tonic::Status) -> String {
    let mut text = s.message().to_owned();
    // Transport errors hide the useful part (e.g. a TLS refusal) in the source chain.
    let mut source = std::error::Error::source(s);
    while let Some(e) = source {
        let cause = e.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
        source = e.source();
    }
    if let Some(hint) = tls_hint(&text) {
        text.push_str(": ");
        text.push_str(hint);
    }
    text
}

/// What a TLS alert from the agent means for the operator.
fn tls_hint(text: &str) -> Option<&'static str> {
    let hints = [
        (
            "received fatal alert: AccessDenied",
            "the agent refused this coordinator's certificate: it is from the agent's CA but not valid for a name in the agent's allowed_clients",
        ),
        (
            "received fatal alert: UnknownCA",
            "the agent does not trust the CA that issued this coordinator's certificate (agent_tls in the inventory): use a certificate of the agent's CA",
        ),
        (
            "received fatal alert: ProtocolVersion",
            "the server at the agent's address does not speak TLS 1.3: check that agent_url points at a quorate agent",
        ),
        (
            "received fatal alert: NoApplicationProtocol",
            "the server at the agent's address does not offer gRPC over HTTP/2 (ALPN h2): check that agent_url points at a quorate agent",
        ),
        (
            "received fatal alert: CertificateRequired",
            "the agent requires a client certificate: set agent_tls cert and key in the inventory",
        ),
    ];
    hints
        .into_iter()
        .find(|(alert, _)| text.contains(alert))
        .map(|(_, hint)| hint)
}

/// One agent, as the coordinator sees it. Every call carries its own deadline.
pub trait AgentClient: Send + Sync {
    fn describe(
        &self,
        deadline: Duration,
    ) -> impl Future<Output = Result<Describe, CallError>> + Send;
    /// The member's etcd health and its host's `/readyz`, probed by the agent from that host.
    fn health(
        &self,
        deadline: Duration,
    ) -> impl Future<Output = Result<MemberHealth, CallError>> + Send;
    /// Streams the snapshot to the agent: its header, then `chunks` as they come (one reader
    /// feeds every agent). An agent that already holds it answers at once.
    fn push_snapshot(
        &self,
        restore_id: RestoreId,
        snapshot: &CheckedSnapshot,
        chunks: tokio::sync::mpsc::Receiver<Chunk>,
        deadline: Duration,
    ) -> impl Future<Output = Result<pb::SnapshotReceipt, CallError>> + Send;
    fn run(
        &self,
        request: StepRequest,
        deadline: Duration,
    ) -> impl Future<Output = Result<Outcome, CallError>> + Send;
    fn revert(
        &self,
        request: StepRequest,
        deadline: Duration,
    ) -> impl Future<Output = Result<Outcome, CallError>> + Send;
}

/// The real agent over mTLS gRPC.
#[derive(Debug, Clone)]
pub struct GrpcAgent {
    member: String,
    client: pb::agent_client::AgentClient<Channel>,
}

impl GrpcAgent {
    /// A lazily connecting channel to `url` (mTLS 1.3, ALPN `h2`), checking the agent's
    /// certificate for `server_name`.
    pub fn new(member: &str, url: &str, server_name: &str, tls: &TlsFiles) -> anyhow::Result<Self> {
        let channel =
            quorate_proto::channel::agent_channel(url, server_name, tls, Duration::from_secs(5))
                .map_err(|e| anyhow::anyhow!("member {member}: {e}"))?;
        Ok(Self {
            member: member.to_owned(),
            client: pb::agent_client::AgentClient::new(channel).max_decoding_message_size(16 << 20),
        })
    }

    /// The member (or apiserver host) this agent serves.
    pub fn member(&self) -> &str {
        &self.member
    }

    /// The agent's gRPC client, for calls outside a restore's steps (`quorate gc`).
    pub fn client(&self) -> pb::agent_client::AgentClient<Channel> {
        self.client.clone()
    }

    async fn step_stream(
        &self,
        request: StepRequest,
        deadline: Duration,
        revert: bool,
    ) -> Result<Outcome, CallError> {
        let step = request.step;
        let work = async {
            let mut client = self.client.clone();
            let mut req = tonic::Request::new(pb::StepRequest::from(request));
            req.set_timeout(deadline);
            let mut stream = if revert {
                client.revert(req).await?.into_inner()
            } else {
                client.run(req).await?.into_inner()
            };
            while let Some(event) = stream.message().await? {
                match event.event {
                    Some(pb::step_event::Event::Progress(p)) => {
                        tracing::info!(member = %self.member, %step, revert, "{}", p.message);
                    }
                    Some(pb::step_event::Event::Outcome(o)) => {
                        let o = StepOutcome::try_from(o).map_err(|e| {
                            CallError::Failed(format!(
                                "the agent of {} sent a {step} outcome that breaks the \
                                 contract: {e}; check that agent and coordinator are the same \
                                 version",
                                self.member
                            ))
                        })?;
                        return match (o.ok, o.details.code) {
                            (true, _) => Ok(o),
                            (false, Some(code)) => Err(CallError::Agent {
                                code,
                                message: o.message,
                            }),
                            (false, None) => Err(CallError::Failed(o.message)),
                        };
                    }
                    None => {}
                }
            }
            Err(CallError::Unreachable(
                "the agent closed the step stream without an outcome".into(),
            ))
        };
        tokio::time::timeout(deadline, work)
            .await
            .unwrap_or(Err(CallError::Timeout(deadline)))
    }
}

impl AgentClient for GrpcAgent {
    async fn describe(&self, deadline: Duration) -> Result<Describe, CallError> {
        let mut client = self.client.clone();
        let mut req = tonic::Request::new(pb::DescribeRequest {});
        req.set_timeout(deadline);
        let response = match tokio::time::timeout(deadline, client.describe(req)).await {
            Ok(r) => r?.into_inner(),
            Err(_) => return Err(CallError::Timeout(deadline)),
        };
        Describe::try_from(response).map_err(|e| {
            CallError::Failed(format!(
                "the agent of {} sent a description that breaks the contract: {e}",
                self.member
            ))
        })
    }

    async fn health(&self, deadline: Duration) -> Result<MemberHealth, CallError> {
        let mut client = self.client.clone();
        let mut req = tonic::Request::new(pb::HealthRequest {});
        req.set_timeout(deadline);
        let response = match tokio::time::timeout(deadline, client.health(req)).await {
            Ok(r) => r?.into_inner(),
            Err(_) => return Err(CallError::Timeout(deadline)),
        };
        MemberHealth::try_from(response).map_err(|e| {
            CallError::Failed(format!(
                "the agent of {} sent a health report that breaks the contract: {e}",
                self.member
            ))
        })
    }

    async fn push_snapshot(
        &self,
        restore_id: RestoreId,
        snapshot: &CheckedSnapshot,
        chunks: tokio::sync::mpsc::Receiver<Chunk>,
        deadline: Duration,
    ) -> Result<pb::SnapshotReceipt, CallError> {
        let header = pb::SnapshotHeader {
            restore_id: restore_id.to_string(),
            sha256: snapshot.sha256.clone(),
            size: snapshot.size,
        };
        // The header first, then the chunks as the coordinator's one reader hands them out.
        let first = pb::SnapshotChunk {
            header: Some(header),
            data: Chunk::new(),
        };
        let rest = tokio_stream::wrappers::ReceiverStream::new(chunks)
            .map(|data| pb::SnapshotChunk { header: None, data });
        let stream = tokio_stream::once(first).chain(rest);
        let mut client = self.client.clone();
        let mut req = tonic::Request::new(stream);
        req.set_timeout(deadline);
        match tokio::time::timeout(deadline, client.push_snapshot(req)).await {
            Ok(r) => r.map(tonic::Response::into_inner).map_err(CallError::from),
            Err(_) => Err(CallError::Timeout(deadline)),
        }
    }

    async fn run(&self, request: StepRequest, deadline: Duration) -> Result<Outcome, CallError> {
        self.step_stream(request, deadline, false).await
    }

    async fn revert(&self, request: StepRequest, deadline: Duration) -> Result<Outcome, CallError> {
        self.step_stream(request, deadline, true).await
    }
}
