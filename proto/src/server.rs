//! Serving tonic over rustls with our own `ServerConfig` (mTLS with an allow-list, see
//! [`crate::tls::server_config`]).
//!
//! tonic's built-in TLS cannot take a custom client-certificate verifier, so the agent accepts TCP
//! itself, completes each TLS handshake in its own task (a slow or hostile client never holds up
//! the others), and hands finished TLS streams to
//! `tonic::transport::Server::serve_with_incoming_shutdown`. tonic implements `Connected` for
//! tokio-rustls server streams, so handlers can read the peer certificates from
//! `request.extensions()` (`TlsConnectInfo`).

use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;

/// A TLS connection whose handshake (including the client-certificate check) has succeeded.
pub type TlsConn = tokio_rustls::server::TlsStream<TcpStream>;

/// How long a client may take to complete the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections whose handshake has finished but that tonic has not taken yet.
const BACKLOG: usize = 64;

/// Accepts TCP connections on `listener` and yields those whose TLS handshake succeeds.
///
/// Failed or timed-out handshakes (wrong CA, a name not on the allow-list, no client certificate,
/// plain HTTP) are logged at debug level and dropped. Accepting stops when the stream is dropped.
pub fn tls_incoming(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
) -> impl Stream<Item = Result<TlsConn, std::io::Error>> + Send + 'static {
    let (tx, rx) = mpsc::channel(BACKLOG);
    let acceptor = TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                () = tx.closed() => break,
                accepted = listener.accept() => accepted,
            };
            match accepted {
                Ok((tcp, peer)) => {
                    let acceptor = acceptor.clone();
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                            Ok(Ok(tls)) => {
                                let _server_gone = tx.send(Ok(tls)).await;
                            }
                            Ok(Err(e)) => tracing::debug!(%peer, "TLS handshake refused: {e}"),
                            Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                        }
                    });
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning; the listener stays open.
                    tracing::warn!("accepting a connection failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
    ReceiverStream::new(rx)
}
