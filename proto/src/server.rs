//! Serving tonic over rustls with our own `ServerConfig` (mTLS with an allow-list, see
//! [`crate::tls::server_config`]).
//!
//! tonic's built-in TLS cannot take a custom client-certificate verifier, so the agent accepts TCP
//! itself, completes each TLS handshake in its own task (a slow or hostile client never holds up
//! the others), and hands finished TLS streams to
//! `tonic::transport::Server::serve_with_incoming_shutdown`. tonic implements `Connected` for
//! tokio-rustls server streams, so handlers can read the peer certificates from
//! `request.extensions()` (`TlsConnectInfo`).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// A TLS connection whose handshake (including the client-certificate check) has succeeded.
pub type TlsConn = tokio_rustls::server::TlsStream<BufferedTcp>;

/// How much of the socket one read takes in. rustls asks for at most 4 KiB at a time; reading
/// the socket in larger pieces makes a snapshot transfer a few thousand reads, not ~90,000.
const READ_BUFFER: usize = 256 * 1024;

/// A TCP stream read through a buffer; writes go straight through.
#[derive(Debug)]
pub struct BufferedTcp(tokio::io::BufReader<TcpStream>);

impl BufferedTcp {
    pub fn new(tcp: TcpStream) -> Self {
        Self(tokio::io::BufReader::with_capacity(READ_BUFFER, tcp))
    }
}

impl tokio::io::AsyncRead for BufferedTcp {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for BufferedTcp {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl Connected for BufferedTcp {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.0.get_ref().connect_info()
    }
}

/// How long a client may take to complete the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshakes in progress at once. Past this, new connections wait in the kernel's accept queue
/// until a handshake ends (done, refused or timed out), so a flood of connections that never
/// finish their handshake holds at most this many descriptors and each for at most
/// [`HANDSHAKE_TIMEOUT`].
pub const MAX_HANDSHAKES: usize = 32;

/// Connections whose handshake has finished but that tonic has not taken yet.
const BACKLOG: usize = 64;

/// Accepts TCP connections on `listener` and yields those whose TLS handshake succeeds.
///
/// Failed or timed-out handshakes (wrong CA, a name not on the allow-list, no client certificate,
/// TLS older than the config allows, plain HTTP) are logged and dropped. At most
/// [`MAX_HANDSHAKES`] run at once. Accepting stops when the stream is dropped.
pub fn tls_incoming(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
) -> impl Stream<Item = Result<TlsConn, std::io::Error>> + Send + 'static {
    tls_incoming_with(listener, config, MAX_HANDSHAKES, HANDSHAKE_TIMEOUT)
}

/// [`tls_incoming`] with its limits given: at most `max_handshakes` at once, each cut off after
/// `deadline`.
pub fn tls_incoming_with(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    max_handshakes: usize,
    deadline: Duration,
) -> impl Stream<Item = Result<TlsConn, std::io::Error>> + Send + 'static {
    let (tx, rx) = mpsc::channel(BACKLOG);
    let acceptor = TlsAcceptor::from(config);
    let slots = Arc::new(tokio::sync::Semaphore::new(max_handshakes.max(1)));
    tokio::spawn(async move {
        loop {
            // Wait for a handshake slot before accepting: what cannot be served yet stays in the
            // kernel's queue instead of holding a descriptor here.
            let slot = tokio::select! {
                () = tx.closed() => break,
                slot = Arc::clone(&slots).acquire_owned() => slot,
            };
            let Ok(slot) = slot else { break };
            let accepted = tokio::select! {
                () = tx.closed() => break,
                accepted = listener.accept() => accepted,
            };
            match accepted {
                Ok((tcp, peer)) => {
                    let acceptor = acceptor.clone();
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        let handshake =
                            tokio::time::timeout(deadline, acceptor.accept(BufferedTcp::new(tcp)))
                                .await;
                        drop(slot);
                        match handshake {
                            Ok(Ok(tls)) => {
                                let _server_gone = tx.send(Ok(tls)).await;
                            }
                            Ok(Err(e)) => tracing::info!(%peer, "TLS handshake refused: {e}"),
                            Err(_) => tracing::info!(
                                %peer,
                                "TLS handshake not finished within {deadline:?}: connection closed"
                            ),
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
