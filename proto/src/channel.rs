//! The coordinator's connection to an agent: TCP, then TLS 1.3 with ALPN `h2` by
//! [`crate::tls::agent_client_config`], then gRPC over that stream.
//!
//! tonic's own TLS cannot be limited to TLS 1.3, so the channel is built over plain `http://`
//! with a connector that does the TLS handshake itself, checking the agent's certificate for
//! `server_name`.

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::tls::{TlsError, TlsFiles, agent_client_config};

/// Errors building an agent channel; each names the agent URL.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("agent URL {url}: {reason}")]
    Url { url: String, reason: String },
    #[error("the coordinator's TLS files for {url}: {source}")]
    Tls { url: String, source: TlsError },
}

/// A lazily connecting channel to the agent at `url` (`https://host:port`), whose certificate
/// must be valid for `server_name` and issued by `files.ca`.
pub fn agent_channel(
    url: &str,
    server_name: &str,
    files: &TlsFiles,
    connect_timeout: Duration,
) -> Result<Channel, ChannelError> {
    let bad = |reason: String| ChannelError::Url {
        url: url.to_owned(),
        reason,
    };
    let uri: Uri = url.parse().map_err(|e| bad(format!("{e}")))?;
    if uri.scheme_str() != Some("https") {
        return Err(bad("agents are reached over https://host:port only".into()));
    }
    let authority = uri
        .authority()
        .ok_or_else(|| bad("no host:port".into()))?
        .clone();
    if authority.port_u16().is_none() {
        return Err(bad("no port: write https://host:port".into()));
    }
    let name = ServerName::try_from(server_name.to_owned())
        .map_err(|e| bad(format!("server name {server_name:?}: {e}")))?;
    let config = agent_client_config(files).map_err(|source| ChannelError::Tls {
        url: url.to_owned(),
        source,
    })?;
    let connector = TlsConnector::from(Arc::new(config));
    // tonic speaks HTTP/2 over whatever the connector returns; the TLS is ours.
    let endpoint = Endpoint::from_shared(format!("http://{authority}"))
        .map_err(|e| bad(format!("{e}")))?
        .connect_timeout(connect_timeout);
    let address = authority.to_string();
    let tls = tower::service_fn(move |_: Uri| {
        let connector = connector.clone();
        let name = name.clone();
        let address = address.clone();
        async move {
            let tcp = TcpStream::connect(&address).await?;
            tcp.set_nodelay(true)?;
            let stream = connector.connect(name, tcp).await?;
            Ok::<_, std::io::Error>(TokioIo::new(stream))
        }
    });
    Ok(endpoint.connect_with_connector_lazy(tls))
}
