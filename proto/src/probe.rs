//! A minimal HTTP/1.1 GET for health probes (etcd's metrics `/health`, an apiserver's `/readyz`).
//!
//! Probes must never block: every call has a deadline, and any failure is an `Err` that says what
//! was probed.

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// The status code and body of a probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: String,
}

/// GETs `url` (`http://` or `https://host:port/path`) within `timeout`.
pub async fn get(
    url: &str,
    tls: Option<Arc<rustls::ClientConfig>>,
    timeout: Duration,
) -> anyhow::Result<Response> {
    match tokio::time::timeout(timeout, get_inner(url, tls)).await {
        Ok(result) => result,
        Err(_) => anyhow::bail!("GET {url}: no answer within {timeout:?}"),
    }
}

async fn get_inner(url: &str, tls: Option<Arc<rustls::ClientConfig>>) -> anyhow::Result<Response> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| anyhow::anyhow!("{url}: not a URL"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let host = authority
        .rsplit_once(':')
        .map_or(authority, |(h, _)| h)
        .trim_matches(['[', ']']);
    let tcp = TcpStream::connect(authority)
        .await
        .map_err(|e| anyhow::anyhow!("GET {url}: connect: {e}"))?;
    match scheme {
        "http" => exchange(tcp, authority, path, url).await,
        "https" => {
            let config = tls.ok_or_else(|| anyhow::anyhow!("GET {url}: no TLS configuration"))?;
            let name = ServerName::try_from(host.to_owned())
                .map_err(|e| anyhow::anyhow!("GET {url}: server name {host}: {e}"))?;
            let stream = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .map_err(|e| anyhow::anyhow!("GET {url}: TLS: {e}"))?;
            exchange(stream, authority, path, url).await
        }
        other => anyhow::bail!("GET {url}: unsupported scheme {other}"),
    }
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    authority: &str,
    path: &str,
    url: &str,
) -> anyhow::Result<Response> {
    let request = format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut raw = Vec::new();
    // A TLS peer may close without close_notify; what was read so far still counts.
    if let Err(e) = stream.read_to_end(&mut raw).await
        && raw.is_empty()
    {
        anyhow::bail!("GET {url}: read: {e}");
    }
    let text = String::from_utf8_lossy(&raw);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| anyhow::anyhow!("GET {url}: not an HTTP response"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok(Response { status, body })
}
