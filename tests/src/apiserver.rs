//! A kube-apiserver stand-in: what a restore needs to see of an apiserver, and no more.
//!
//! - `/readyz` over HTTPS answers 200 only when a linearizable read from etcd succeeds within
//!   1 s, so it tells whether the etcd cluster has a quorum and a leader; otherwise 503 with the
//!   reason. `/livez` answers 200 whenever the process serves.
//! - `--anonymous-auth=false`: a request without a client certificate signed by
//!   `--client-ca-file` gets 401 with the `Status` JSON a real apiserver sends, on every path.
//!   Client certificates are requested but optional at the TLS layer, as kube-apiserver does.
//! - Every second it renews a Lease under `/registry/leases/kube-system/`, writing to etcd the
//!   way a live apiserver does.
//!
//! Etcd being down never keeps it from starting: the client connects in the background and
//! `/readyz` says 503 meanwhile.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

/// The key `/readyz` reads; it need not exist.
const HEALTH_KEY: &str = "/registry/health";
const LEASE_PREFIX: &str = "/registry/leases/kube-system/";
const READY_TIMEOUT: Duration = Duration::from_secs(1);
const HEARTBEAT: Duration = Duration::from_secs(1);
const ETCD_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const ETCD_REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
const ETCD_RETRY: Duration = Duration::from_secs(1);
/// The longest a client may take for its whole exchange (handshake, request, response).
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_REQUEST_HEAD: usize = 8 * 1024;

/// The apiserver stand-in's flags, named like the real kube-apiserver's.
#[derive(clap::Args, Debug, Clone)]
pub struct ApiserverArgs {
    /// The address to serve on.
    #[arg(long)]
    pub advertise_address: IpAddr,
    #[arg(long, default_value_t = 6443)]
    pub secure_port: u16,
    /// Comma-separated etcd client URLs (https://...).
    #[arg(long, value_delimiter = ',', required = true)]
    pub etcd_servers: Vec<String>,
    #[arg(long)]
    pub etcd_cafile: PathBuf,
    #[arg(long)]
    pub etcd_certfile: PathBuf,
    #[arg(long)]
    pub etcd_keyfile: PathBuf,
    #[arg(long)]
    pub tls_cert_file: PathBuf,
    #[arg(long)]
    pub tls_private_key_file: PathBuf,
    /// The node this apiserver runs on (names its Lease; not a real kube-apiserver flag).
    #[arg(long)]
    pub node_name: String,
    /// Serve requests without a client certificate (as `system:anonymous`); `false` answers them
    /// 401.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1,
          default_missing_value = "true")]
    pub anonymous_auth: bool,
    /// The CA whose client certificates authenticate a request.
    #[arg(long)]
    pub client_ca_file: Option<PathBuf>,
}

/// Serves until SIGTERM or SIGINT.
pub async fn run(args: ApiserverArgs) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    run_until(args, async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        }
    })
    .await
}

/// Serves until `shutdown` completes. Fails only on configuration errors (unreadable
/// certificates, an address it cannot bind), never because etcd is unavailable.
pub async fn run_until(
    args: ApiserverArgs,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    quorate_proto::tls::install_default_provider();
    let options = etcd_options(&args)?;
    let config = serving_config(&args).context("building the serving TLS configuration")?;
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let anonymous = args.anonymous_auth;
    let addr = SocketAddr::new(args.advertise_address, args.secure_port);
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    tracing::info!(%addr, node = %args.node_name, etcd = ?args.etcd_servers, "kube-apiserver stand-in serving");

    let etcd = Etcd::default();
    // Dropping the sets aborts the background tasks and open connections.
    let mut background = JoinSet::new();
    background.spawn(etcd.clone().connect(args.etcd_servers.clone(), options));
    background.spawn(heartbeat(etcd.clone(), args.node_name.clone()));
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    connections.spawn(serve_connection(acceptor.clone(), tcp, peer, etcd.clone(), anonymous));
                }
                Err(e) => {
                    tracing::warn!("accept on {addr}: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    tracing::info!("kube-apiserver stand-in stopped");
    Ok(())
}

/// The serving certificate; with `--client-ca-file`, client certificates from that CA are
/// requested and verified when given (kube-apiserver's `VerifyClientCertIfGiven`).
fn serving_config(args: &ApiserverArgs) -> anyhow::Result<rustls::ServerConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let Some(ca) = &args.client_ca_file else {
        let mut config = quorate_proto::tls::server_config(
            &args.tls_cert_file,
            &args.tls_private_key_file,
            None,
            &[],
        )?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        return Ok(config);
    };
    let chain = CertificateDer::pem_file_iter(&args.tls_cert_file)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .with_context(|| format!("reading {}", args.tls_cert_file.display()))?;
    let key = PrivateKeyDer::from_pem_file(&args.tls_private_key_file)
        .with_context(|| format!("reading {}", args.tls_private_key_file.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in
        CertificateDer::pem_file_iter(ca).with_context(|| format!("reading {}", ca.display()))?
    {
        roots.add(cert.with_context(|| format!("reading {}", ca.display()))?)?;
    }
    let provider = quorate_proto::tls::provider();
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .allow_unauthenticated()
    .build()
    .with_context(|| format!("--client-ca-file={}", ca.display()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

fn etcd_options(args: &ApiserverArgs) -> anyhow::Result<ConnectOptions> {
    let read = |path: &PathBuf, what: &str| {
        std::fs::read(path).with_context(|| format!("reading the etcd {what} {}", path.display()))
    };
    let ca = read(&args.etcd_cafile, "CA certificate")?;
    let cert = read(&args.etcd_certfile, "client certificate")?;
    let key = read(&args.etcd_keyfile, "client key")?;
    let tls = TlsOptions::new()
        .ca_certificate(Certificate::from_pem(ca))
        .identity(Identity::from_pem(cert, key));
    Ok(ConnectOptions::new()
        .with_tls(tls)
        .with_connect_timeout(ETCD_CONNECT_TIMEOUT)
        .with_timeout(ETCD_REQUEST_TIMEOUT))
}

/// The etcd client, once connected; until then, why it is not.
#[derive(Clone)]
struct Etcd {
    state: Arc<Mutex<Result<Client, String>>>,
}

impl Default for Etcd {
    fn default() -> Self {
        Self {
            state: Arc::new(Mutex::new(Err("not connected yet".to_owned()))),
        }
    }
}

impl Etcd {
    fn client(&self) -> Result<Client, String> {
        self.state.lock().expect("etcd state lock poisoned").clone()
    }

    fn set(&self, state: Result<Client, String>) {
        *self.state.lock().expect("etcd state lock poisoned") = state;
    }

    /// Connects, retrying every second until it works; the client then reconnects by itself.
    async fn connect(self, endpoints: Vec<String>, options: ConnectOptions) {
        for attempt in 1u64.. {
            let connecting = Client::connect(&endpoints, Some(options.clone()));
            let why = match tokio::time::timeout(ETCD_CONNECT_TIMEOUT * 3, connecting).await {
                Ok(Ok(client)) => {
                    tracing::info!(?endpoints, "etcd client ready");
                    self.set(Ok(client));
                    return;
                }
                Ok(Err(e)) => e.to_string(),
                Err(_) => "connection timed out".to_owned(),
            };
            if attempt == 1 || attempt % 30 == 0 {
                tracing::warn!(?endpoints, attempt, "cannot connect to etcd yet: {why}");
            }
            self.set(Err(format!("cannot connect to etcd: {why}")));
            tokio::time::sleep(ETCD_RETRY).await;
        }
    }

    /// `Ok` when a linearizable read succeeds within [`READY_TIMEOUT`].
    async fn check_read(&self) -> Result<(), String> {
        let mut client = self.client()?;
        match tokio::time::timeout(READY_TIMEOUT, client.get(HEALTH_KEY, None)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("linearizable read of {HEALTH_KEY} failed: {e}")),
            Err(_) => Err(format!(
                "linearizable read of {HEALTH_KEY}: no answer within {READY_TIMEOUT:?}"
            )),
        }
    }
}

async fn serve_connection(
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    peer: SocketAddr,
    etcd: Etcd,
    anonymous_auth: bool,
) {
    let exchange = async {
        let mut tls = acceptor.accept(tcp).await.context("TLS handshake")?;
        // A certificate is here only if the verifier accepted it (signed by --client-ca-file).
        let authenticated = tls
            .get_ref()
            .1
            .peer_certificates()
            .is_some_and(|c| !c.is_empty());
        let head = read_head(&mut tls).await?;
        let text = match request_path(&head) {
            _ if !anonymous_auth && !authenticated => unauthorized(),
            Some(path) => {
                let (status, body) = respond(route(path), &etcd).await;
                response(status, &body)
            }
            None => response(400, "bad request\n"),
        };
        tracing::debug!(%peer, authenticated, status = text.split(' ').nth(1).unwrap_or(""), request = head.lines().next().unwrap_or(""), "served");
        tls.write_all(text.as_bytes()).await?;
        tls.shutdown().await?;
        anyhow::Ok(())
    };
    match tokio::time::timeout(CONNECTION_TIMEOUT, exchange).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!(%peer, "connection: {e:#}"),
        Err(_) => tracing::debug!(%peer, "connection: timed out"),
    }
}

/// Reads up to the blank line that ends a request head.
async fn read_head<S: AsyncRead + Unpin>(stream: &mut S) -> anyhow::Result<String> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        anyhow::ensure!(head.len() <= MAX_REQUEST_HEAD, "request head too large");
        let n = stream.read(&mut buf).await.context("reading the request")?;
        anyhow::ensure!(
            n > 0,
            "connection closed before the end of the request head"
        );
        head.extend_from_slice(&buf[..n]);
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}

/// The path of a request line (`GET /readyz?verbose HTTP/1.1` gives `/readyz`).
fn request_path(head: &str) -> Option<&str> {
    let mut parts = head.lines().next()?.split_whitespace();
    let (_method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    if !version.starts_with("HTTP/1.") {
        return None;
    }
    target.split('?').next()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Readyz,
    Livez,
    NotFound,
}

fn route(path: &str) -> Route {
    match path {
        "/readyz" => Route::Readyz,
        "/livez" => Route::Livez,
        _ => Route::NotFound,
    }
}

async fn respond(route: Route, etcd: &Etcd) -> (u16, String) {
    match route {
        Route::Livez => (200, "ok".to_owned()),
        Route::Readyz => match etcd.check_read().await {
            Ok(()) => (200, "ok".to_owned()),
            Err(why) => (503, format!("etcd: {why}\nreadyz check failed\n")),
        },
        Route::NotFound => (404, "not found\n".to_owned()),
    }
}

fn response(status: u16, body: &str) -> String {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        503 => "Service Unavailable",
        _ => "",
    };
    format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// What kube-apiserver answers a request it cannot authenticate.
fn unauthorized() -> String {
    let body = serde_json::json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": "Unauthorized",
        "reason": "Unauthorized",
        "code": 401,
    })
    .to_string();
    format!(
        "HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// Renews this apiserver's Lease every second, forever; failures are logged once per outage.
async fn heartbeat(etcd: Etcd, node: String) {
    let key = format!("{LEASE_PREFIX}apiserver-{node}");
    let mut tick = tokio::time::interval(HEARTBEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seq: u64 = 0;
    let mut failing = false;
    loop {
        tick.tick().await;
        let Ok(mut client) = etcd.client() else {
            continue;
        };
        seq += 1;
        let value = lease(&node, seq, SystemTime::now()).to_string();
        let put = tokio::time::timeout(ETCD_REQUEST_TIMEOUT, client.put(key.as_str(), value, None));
        let failure = match put.await {
            Ok(Ok(_)) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some(format!("no answer within {ETCD_REQUEST_TIMEOUT:?}")),
        };
        match failure {
            None if failing => {
                tracing::info!(%key, seq, "lease renewed again");
                failing = false;
            }
            None => tracing::trace!(%key, seq, "lease renewed"),
            Some(why) if !failing => {
                tracing::warn!(%key, seq, "cannot renew the lease, will keep trying: {why}");
                failing = true;
            }
            Some(why) => tracing::debug!(%key, seq, "cannot renew the lease: {why}"),
        }
    }
}

/// A coordination.k8s.io/v1 Lease as the apiserver stores it (JSON rather than protobuf).
fn lease(node: &str, seq: u64, now: SystemTime) -> serde_json::Value {
    serde_json::json!({
        "kind": "Lease",
        "apiVersion": "coordination.k8s.io/v1",
        "metadata": {
            "name": format!("apiserver-{node}"),
            "namespace": "kube-system",
            "labels": { "apiserver.kubernetes.io/identity": "kube-apiserver" },
        },
        "spec": {
            "holderIdentity": format!("kube-apiserver-{node}"),
            "leaseDurationSeconds": 3600,
            "renewTime": rfc3339_micros(now),
            "seq": seq,
        },
    })
}

/// `2006-01-02T15:04:05.000000Z`, the form of a Kubernetes MicroTime.
fn rfc3339_micros(time: SystemTime) -> String {
    let since_epoch = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since_epoch.as_secs();
    let (year, month, day) = civil_from_days(secs / 86_400);
    let rem = secs % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since_epoch.subsec_micros()
    )
}

/// Year, month, day of a count of days since 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
#[path = "apiserver_tests.rs"]
mod tests;
