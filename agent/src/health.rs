//! Health seen from this member's own host: etcd's `/health` and the kube-apiserver's `/readyz`.
//!
//! kubeadm binds etcd's metrics listener (`--listen-metrics-urls=http://127.0.0.1:2381`) and part
//! of its client listener to loopback, so only the member's host can probe them; the coordinator
//! asks the agent (`Health`) instead of probing itself.
//!
//! - etcd: every `--listen-metrics-urls` entry (answers 503 `RAFT NO LEADER` until a leader is
//!   elected); without one, the first `--listen-client-urls` entry with the agent's etcd client
//!   certificate (which answers only once there is a leader).
//! - `/readyz`: anonymously, or with a client certificate when the apiserver runs with
//!   `--anonymous-auth=false` (configured, or kubeadm's `/etc/kubernetes/admin.conf`).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use quorate_proto::model::{
    ApiserverReadiness, EndpointHealth, EtcdHealthState, HealthEndpointKind, MemberHealth,
};
use quorate_proto::probe;
use quorate_proto::tls::PemIdentity;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::engine::Engine;
use crate::error::{AgentError, Result};
use crate::kubeconfig;
use crate::manifest::{Apiserver, EtcdMember};

/// Where kubeadm writes the admin kubeconfig on every control-plane node.
pub const KUBEADM_ADMIN_CONF: &str = "/etc/kubernetes/admin.conf";
/// kubeadm's etcd health-check client certificate, beside the etcd CA.
const HEALTHCHECK_CERT: &str = "healthcheck-client.crt";
const HEALTHCHECK_KEY: &str = "healthcheck-client.key";
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// How the agent reaches etcd's https listeners (`[etcd]` `ca`, `client_cert`, `client_key`).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct EtcdCredentials {
    /// CA of etcd's serving certificate; default `--trusted-ca-file`.
    pub ca: Option<PathBuf>,
    /// Default: kubeadm's `healthcheck-client.{crt,key}` beside `--trusted-ca-file`, if there.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

impl fmt::Debug for EtcdCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdCredentials")
            .field("ca", &self.ca)
            .field("client_cert", &self.client_cert)
            .field(
                "client_key",
                &self.client_key.as_ref().map(|_| "<path hidden>"),
            )
            .finish()
    }
}

/// The client credentials configured for `/readyz`.
#[derive(Clone, PartialEq, Eq)]
pub enum ReadyzCredentials {
    /// None configured: anonymous, or kubeadm's admin.conf when anonymous requests are refused.
    Unset,
    Kubeconfig(PathBuf),
    ClientCert {
        cert: PathBuf,
        key: PathBuf,
    },
}

impl fmt::Debug for ReadyzCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadyzCredentials::Unset => f.write_str("Unset"),
            ReadyzCredentials::Kubeconfig(p) => f.debug_tuple("Kubeconfig").field(p).finish(),
            ReadyzCredentials::ClientCert { cert, .. } => f
                .debug_struct("ClientCert")
                .field("cert", cert)
                .field("key", &"<path hidden>")
                .finish(),
        }
    }
}

/// How `/readyz` is probed (the `[apiserver]` section).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadyzConfig {
    /// CA of the apiserver's serving certificate.
    pub ca: PathBuf,
    pub credentials: ReadyzCredentials,
    /// Used when nothing is configured and anonymous requests are refused.
    pub default_kubeconfig: PathBuf,
}

impl ReadyzConfig {
    pub fn new(ca: PathBuf, credentials: ReadyzCredentials) -> Self {
        Self {
            ca,
            credentials,
            default_kubeconfig: PathBuf::from(KUBEADM_ADMIN_CONF),
        }
    }
}

/// Everything the agent needs to probe health.
#[derive(Debug, Clone, Default)]
pub struct HealthConfig {
    pub etcd: EtcdCredentials,
    /// `None`: no `[apiserver]` section.
    pub readyz: Option<ReadyzConfig>,
}

/// A client TLS configuration trusting `ca`, presenting `identity` when given.
fn client_tls(ca: &Path, identity: Option<&PemIdentity>) -> Result<Arc<rustls::ClientConfig>> {
    let bad = |what: String| AgentError::Precondition(what);
    let pem = std::fs::read(ca).map_err(|e| AgentError::io("reading the CA", ca, e))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| bad(format!("CA {}: {e}", ca.display())))?;
        roots
            .add(cert)
            .map_err(|e| bad(format!("CA {}: {e}", ca.display())))?;
    }
    if roots.is_empty() {
        return Err(bad(format!("{} holds no PEM certificate", ca.display())));
    }
    let builder = rustls::ClientConfig::builder_with_provider(quorate_proto::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(format!("TLS: {e}")))?
        .with_root_certificates(roots);
    let config = match identity {
        None => builder.with_no_client_auth(),
        Some(id) => {
            let chain = CertificateDer::pem_slice_iter(&id.cert)
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| bad(format!("client certificate: {e}")))?;
            if chain.is_empty() {
                return Err(bad("the client certificate holds no PEM certificate".into()));
            }
            // The key's own error could quote it: say only that it is unusable.
            let key = PrivateKeyDer::from_pem_slice(&id.key)
                .map_err(|_| bad("the client key is not a PEM private key".into()))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| bad(format!("client certificate and key: {e}")))?
        }
    };
    Ok(Arc::new(config))
}

fn read_identity(cert: &Path, key: &Path) -> Result<PemIdentity> {
    Ok(PemIdentity {
        cert: std::fs::read(cert)
            .map_err(|e| AgentError::io("reading the client certificate", cert, e))?,
        key: std::fs::read(key).map_err(|e| AgentError::io("reading the client key", key, e))?,
    })
}

/// A listener bound to a wildcard address is probed on loopback.
fn probe_base(url: &str) -> String {
    let url = url.trim_end_matches('/');
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let Some((host, port)) = authority.rsplit_once(':') else {
        return url.to_owned();
    };
    let host = match host {
        "" | "0.0.0.0" => "127.0.0.1",
        "[::]" => "[::1]",
        other => other,
    };
    format!("{scheme}://{host}:{port}{path}")
}

/// One etcd listener to probe.
#[derive(Clone)]
pub struct EtcdEndpoint {
    /// `scheme://host:port`, wildcard hosts replaced by loopback.
    pub base: String,
    pub kind: HealthEndpointKind,
    tls: Option<Arc<rustls::ClientConfig>>,
    /// The client certificate presented, for messages.
    pub cert: Option<PathBuf>,
}

impl EtcdEndpoint {
    /// GETs `path` (e.g. `/metrics`) on this listener.
    pub async fn get(&self, path: &str, timeout: Duration) -> anyhow::Result<probe::Response> {
        probe::get(&format!("{}{path}", self.base), self.tls.clone(), timeout).await
    }

    pub fn health_url(&self) -> String {
        format!("{}/health", self.base)
    }

    /// "metrics http://127.0.0.1:2381/health", "client https://...:2379/health with client
    /// certificate /etc/kubernetes/pki/etcd/healthcheck-client.crt".
    pub fn describe(&self) -> String {
        let cert = self
            .cert
            .as_ref()
            .map(|c| format!(" with client certificate {}", c.display()))
            .unwrap_or_default();
        format!("{} {}{cert}", self.kind.name(), self.health_url())
    }
}

/// The CA and client certificate for etcd's https listeners.
fn etcd_tls(
    member: &EtcdMember,
    creds: &EtcdCredentials,
) -> Result<(Arc<rustls::ClientConfig>, Option<PathBuf>)> {
    let ca = creds
        .ca
        .clone()
        .or_else(|| member.trusted_ca_file.clone())
        .ok_or_else(|| {
            AgentError::Precondition(format!(
                "etcd listens on https but its {} has no --trusted-ca-file: set etcd.ca in the \
                 agent config to the CA of etcd's serving certificate",
                member.command.source
            ))
        })?;
    let beside = |name: &str| {
        member
            .trusted_ca_file
            .as_ref()?
            .parent()
            .map(|d| d.join(name))
    };
    let pair = match (&creds.client_cert, &creds.client_key) {
        (Some(c), Some(k)) => Some((c.clone(), k.clone())),
        _ => match (beside(HEALTHCHECK_CERT), beside(HEALTHCHECK_KEY)) {
            (Some(c), Some(k)) if c.exists() && k.exists() => Some((c, k)),
            _ => None,
        },
    };
    let identity = match &pair {
        Some((c, k)) => Some(read_identity(c, k)?),
        None => None,
    };
    Ok((client_tls(&ca, identity.as_ref())?, pair.map(|(c, _)| c)))
}

/// What to probe for this member's health: its metrics listeners, else its client listener.
/// An error says why none can be probed and what to change.
pub fn etcd_endpoints(member: &EtcdMember, creds: &EtcdCredentials) -> Result<Vec<EtcdEndpoint>> {
    let tls_for = |url: &str| -> Result<(Option<Arc<rustls::ClientConfig>>, Option<PathBuf>)> {
        if url.starts_with("https://") {
            let (tls, cert) = etcd_tls(member, creds)?;
            Ok((Some(tls), cert))
        } else {
            Ok((None, None))
        }
    };
    if !member.metrics_urls.is_empty() {
        let mut endpoints = Vec::new();
        let mut problems = Vec::new();
        for url in &member.metrics_urls {
            match tls_for(url) {
                Ok((tls, cert)) => endpoints.push(EtcdEndpoint {
                    base: probe_base(url),
                    kind: HealthEndpointKind::Metrics,
                    tls,
                    cert,
                }),
                Err(e) => problems.push(format!("{url}: {e}")),
            }
        }
        if endpoints.is_empty() {
            return Err(AgentError::Precondition(format!(
                "cannot probe etcd's metrics listener: {}",
                problems.join("; ")
            )));
        }
        return Ok(endpoints);
    }
    let url = member.client_listen_urls.first().ok_or_else(|| {
        AgentError::Precondition(format!(
            "etcd's {} has neither --listen-metrics-urls nor --listen-client-urls: add \
             --listen-metrics-urls=http://127.0.0.1:2381 so that its agent can probe its health",
            member.command.source
        ))
    })?;
    let (tls, cert) = tls_for(url)?;
    if url.starts_with("https://") && member.client_cert_auth && cert.is_none() {
        return Err(AgentError::Precondition(format!(
            "etcd has no --listen-metrics-urls and its client URL {url} requires a client \
             certificate, but the agent has none: set etcd.client_cert and etcd.client_key in the \
             agent config (kubeadm: /etc/kubernetes/pki/etcd/healthcheck-client.crt and .key), \
             or add --listen-metrics-urls=http://127.0.0.1:2381 to etcd"
        )));
    }
    Ok(vec![EtcdEndpoint {
        base: probe_base(url),
        kind: HealthEndpointKind::Client,
        tls,
        cert,
    }])
}

/// What one `/health` answer (or its absence) means.
pub fn classify(
    url: &str,
    kind: HealthEndpointKind,
    answer: anyhow::Result<probe::Response>,
) -> EndpointHealth {
    let (state, status, detail) = match answer {
        Err(e) => {
            let text = e.to_string();
            let prefix = format!("GET {url}: ");
            let detail = text.strip_prefix(&prefix).unwrap_or(&text).to_owned();
            (EtcdHealthState::NotAnswering, None, detail)
        }
        Ok(r) => {
            let json: Option<serde_json::Value> = serde_json::from_str(r.body.trim()).ok();
            let field = |k: &str| {
                json.as_ref()
                    .and_then(|j| j.get(k))
                    .and_then(|v| v.as_str())
                    .map(str::to_owned)
            };
            let healthy = field("health").as_deref() == Some("true");
            let reason = field("reason").unwrap_or_default();
            let state = if r.status == 200 && healthy {
                EtcdHealthState::Healthy
            } else if reason.contains("RAFT NO LEADER") || r.body.contains("RAFT NO LEADER") {
                EtcdHealthState::NoLeader
            } else {
                EtcdHealthState::Unhealthy
            };
            let detail = match state {
                EtcdHealthState::Healthy => String::new(),
                EtcdHealthState::NoLeader => "RAFT NO LEADER".to_owned(),
                _ if !reason.is_empty() => reason,
                _ if json.is_some() => "no reason given (etcd 3.4 gives none)".to_owned(),
                _ => r.body.trim().chars().take(200).collect(),
            };
            (state, Some(r.status), detail)
        }
    };
    EndpointHealth {
        url: url.to_owned(),
        kind,
        state,
        status,
        detail,
    }
}

/// Probes every endpoint at once.
pub async fn probe_etcd(endpoints: &[EtcdEndpoint]) -> Vec<EndpointHealth> {
    let mut set = tokio::task::JoinSet::new();
    for (i, e) in endpoints.iter().cloned().enumerate() {
        set.spawn(async move {
            let url = e.health_url();
            let answer = probe::get(&url, e.tls.clone(), PROBE_TIMEOUT).await;
            (i, classify(&url, e.kind, answer))
        });
    }
    let mut results: Vec<(usize, EndpointHealth)> = Vec::new();
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok(r) => results.push(r),
            Err(e) => tracing::warn!("a health probe task failed: {e}"),
        }
    }
    results.sort_by_key(|(i, _)| *i);
    results.into_iter().map(|(_, h)| h).collect()
}

/// The version a running etcd reports (`etcd_server_version` on its metrics listener, or
/// `/version` on its client listener), with where it came from.
pub async fn running_version(endpoints: &[EtcdEndpoint]) -> Option<(String, String)> {
    for e in endpoints {
        let (url, version) = match e.kind {
            HealthEndpointKind::Metrics => {
                let url = format!("{}/metrics", e.base);
                let body = probe::get(&url, e.tls.clone(), PROBE_TIMEOUT)
                    .await
                    .ok()?
                    .body;
                let v = body.lines().find_map(|l| {
                    let rest = l.strip_prefix("etcd_server_version{server_version=\"")?;
                    rest.split('"').next().map(str::to_owned)
                });
                (url, v)
            }
            HealthEndpointKind::Client => {
                let url = format!("{}/version", e.base);
                let body = probe::get(&url, e.tls.clone(), PROBE_TIMEOUT)
                    .await
                    .ok()?
                    .body;
                let v = serde_json::from_str::<serde_json::Value>(body.trim())
                    .ok()
                    .and_then(|j| j.get("etcdserver")?.as_str().map(str::to_owned));
                (url, v)
            }
        };
        if let Some(v) = version.filter(|v| !v.is_empty()) {
            return Some((v, url));
        }
    }
    None
}

/// How `/readyz` is probed on this host.
#[derive(Clone)]
pub struct ReadyzProbe {
    pub url: String,
    tls: Arc<rustls::ClientConfig>,
    /// "anonymous", or the client certificate's source.
    pub auth: String,
}

/// Decides how to probe `/readyz` of `apiserver`: with the configured credentials; anonymously
/// when none are configured and the apiserver accepts anonymous requests; with kubeadm's
/// admin.conf when it does not; otherwise an error that says what to configure.
pub fn readyz_probe(config: &ReadyzConfig, apiserver: &Apiserver) -> Result<ReadyzProbe> {
    let refused = |why: String| {
        AgentError::Precondition(format!("cannot check the kube-apiserver's /readyz: {why}"))
    };
    let from_kubeconfig = |path: &Path| {
        kubeconfig::load_identity(path).map_err(|e| {
            refused(format!(
                "{e}; fix it, or set apiserver.kubeconfig or apiserver.client_cert/client_key \
                 in the agent config"
            ))
        })
    };
    let (identity, auth) = match &config.credentials {
        ReadyzCredentials::Kubeconfig(path) => (
            Some(from_kubeconfig(path)?),
            format!("client certificate from {}", path.display()),
        ),
        ReadyzCredentials::ClientCert { cert, key } => (
            Some(read_identity(cert, key).map_err(|e| {
                refused(format!(
                    "{e}; fix apiserver.client_cert/client_key in the agent config"
                ))
            })?),
            format!("client certificate {}", cert.display()),
        ),
        ReadyzCredentials::Unset if apiserver.anonymous_auth => (None, "anonymous".to_owned()),
        ReadyzCredentials::Unset => {
            let default = &config.default_kubeconfig;
            if !default.exists() {
                return Err(refused(format!(
                    "its {} has --anonymous-auth=false and the agent has no client credentials \
                     ({} does not exist): set apiserver.kubeconfig (a kubeconfig with a client \
                     certificate, e.g. kubeadm's admin.conf) or apiserver.client_cert and \
                     apiserver.client_key in the agent config",
                    apiserver.command.source,
                    default.display()
                )));
            }
            (
                Some(from_kubeconfig(default)?),
                format!(
                    "client certificate from {} (--anonymous-auth=false)",
                    default.display()
                ),
            )
        }
    };
    let tls = client_tls(&config.ca, identity.as_ref()).map_err(|e| {
        refused(format!(
            "{e}; check apiserver.ca and the client credentials"
        ))
    })?;
    Ok(ReadyzProbe {
        url: apiserver.readyz_url(),
        tls,
        auth,
    })
}

pub async fn probe_readyz(p: &ReadyzProbe) -> ApiserverReadiness {
    let answer = probe::get(&p.url, Some(Arc::clone(&p.tls)), PROBE_TIMEOUT).await;
    let (status, detail) = match answer {
        Ok(r) => (
            Some(r.status),
            r.body.trim().chars().take(300).collect::<String>(),
        ),
        Err(e) => (None, e.to_string()),
    };
    ApiserverReadiness {
        url: p.url.clone(),
        status,
        detail,
        auth: p.auth.clone(),
    }
}

/// Why this host's `/readyz` cannot be probed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadyzUnavailable {
    /// The URL it would probe; empty when even that is unknown.
    pub url: String,
    /// Why, with the fix.
    pub problem: String,
}

fn unavailable(url: String, problem: String) -> ReadyzUnavailable {
    ReadyzUnavailable { url, problem }
}

/// The readyz probe of this host's apiserver: `None` without one; `Some(Err)` when it cannot
/// be probed. Blocking (reads the manifest and credentials).
pub fn apiserver_readyz(
    engine: &Engine,
    config: &HealthConfig,
) -> Option<std::result::Result<ReadyzProbe, ReadyzUnavailable>> {
    let runtime = engine.apiserver.as_ref()?;
    let resolve = || -> std::result::Result<ReadyzProbe, ReadyzUnavailable> {
        let active = engine
            .state
            .active()
            .map_err(|e| unavailable(String::new(), e.to_string()))?;
        let asides: Vec<PathBuf> = active
            .and_then(|id| engine.apiserver_aside(id))
            .into_iter()
            .collect();
        let api = runtime
            .command(&asides)
            .and_then(Apiserver::from_command)
            .map_err(|e| unavailable(String::new(), format!("kube-apiserver: {e}")))?;
        let readyz = config.readyz.as_ref().ok_or_else(|| {
            unavailable(
                api.readyz_url(),
                "the agent config has no [apiserver] section to probe /readyz with".to_owned(),
            )
        })?;
        readyz_probe(readyz, &api).map_err(|e| unavailable(api.readyz_url(), e.to_string()))
    };
    Some(resolve())
}

/// The Health answer: every etcd endpoint and this host's `/readyz`, probed now; on an
/// apiserver-only host, its name and `/readyz` only.
pub async fn member_health(engine: Arc<Engine>, config: Arc<HealthConfig>) -> Result<MemberHealth> {
    let blocking = tokio::task::spawn_blocking(move || -> Result<_> {
        let readyz = apiserver_readyz(&engine, &config);
        if engine.apiserver_only() {
            // No etcd here: the host's name and its kube-apiserver's /readyz only.
            return Ok((engine.host_name.clone(), Vec::new(), readyz));
        }
        let member = engine.member(engine.state.active()?)?;
        let endpoints = etcd_endpoints(&member, &config.etcd)?;
        Ok((member.name, endpoints, readyz))
    });
    let (member_name, endpoints, readyz) = blocking
        .await
        .map_err(|e| AgentError::CommandFailed(format!("agent task failed: {e}")))??;
    let etcd = probe_etcd(&endpoints).await;
    let apiserver = match readyz {
        None => None,
        Some(Ok(p)) => Some(probe_readyz(&p).await),
        Some(Err(ReadyzUnavailable { url, problem })) => Some(ApiserverReadiness {
            url,
            status: None,
            detail: problem,
            auth: String::new(),
        }),
    };
    Ok(MemberHealth {
        member_name,
        etcd,
        apiserver,
    })
}

/// Runs `future` from blocking code: on the agent's runtime when there is one (from a blocking
/// task, or a multi-threaded runtime's worker), else on a small runtime of its own. `None` on a
/// single-threaded runtime's own thread, where blocking would deadlock.
pub fn block_on<F: std::future::Future>(future: F) -> Option<F::Output> {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => match handle.runtime_flavor() {
            tokio::runtime::RuntimeFlavor::MultiThread => {
                Some(tokio::task::block_in_place(|| handle.block_on(future)))
            }
            _ => None,
        },
        Err(_) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .ok()
            .map(|rt| rt.block_on(future)),
    }
}

#[cfg(test)]
#[path = "health_tests.rs"]
mod tests;
