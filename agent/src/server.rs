//! Serving the agent over mTLS: the only way it listens.

use std::future::Future;
use std::sync::Arc;

use anyhow::Context as _;
use tokio::net::TcpListener;

use crate::config::AgentConfig;
use crate::service::AgentService;

/// The rustls configuration for `config`: TLS 1.3 and `h2` only, the agent's certificate,
/// clients from `tls.client_ca` with a name from `allowed_clients`.
pub fn tls_config(config: &AgentConfig) -> anyhow::Result<rustls::ServerConfig> {
    quorate_proto::tls::agent_server_config(
        &config.tls.cert,
        &config.tls.key,
        &config.tls.client_ca,
        &config.allowed_clients,
    )
    .context("building the agent's TLS configuration (check the [tls] section of the agent config)")
}

/// Binds `config.listen` and serves until `shutdown` completes.
pub async fn serve(
    config: &AgentConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let listener = TcpListener::bind(config.listen).await.with_context(|| {
        format!(
            "listening on {} (listen in the agent config)",
            config.listen
        )
    })?;
    serve_on(
        listener,
        config,
        AgentService::from_config(config),
        shutdown,
    )
    .await
}

/// The largest HTTP/2 frame the agent accepts.
const FRAME: u32 = 1 << 20;

/// Serves `service` on an already bound `listener` (tests bind 127.0.0.1:0).
pub async fn serve_on(
    listener: TcpListener,
    config: &AgentConfig,
    service: AgentService,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let tls = Arc::new(tls_config(config)?);
    let addr = listener
        .local_addr()
        .context("reading the listen address")?;
    tracing::info!(%addr, allowed_clients = ?config.allowed_clients, "serving (mTLS)");
    let incoming = quorate_proto::server::tls_incoming(listener, tls);
    tonic::transport::Server::builder()
        // A snapshot arrives as 256 KiB messages: frames that hold one whole, and windows that
        // keep several in flight, instead of h2's 16 KiB frames and 1 MiB windows. Measured
        // (docs/performance.md): 1 MiB windows and a 1 MiB write queue keep the agent's peak
        // ~12 MiB lower at 1 GB, but make STAGE ~40 % slower.
        .max_frame_size(Some(FRAME))
        .initial_stream_window_size(Some(4 * FRAME))
        .initial_connection_window_size(Some(8 * FRAME))
        .add_service(service.into_server())
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .context("serving the agent")
}
