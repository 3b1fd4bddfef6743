//! The agent over real mTLS on 127.0.0.1: only clients from the configured CA with an allowed
//! name get an answer.

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use common::Member;
use quorate::certs::{Ca, Usage};
use quorate_agent::AgentService;
use quorate_agent::config::AgentConfig;
use quorate_proto::pb::{DescribeRequest, agent_client::AgentClient};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path();
        let ca = Ca::new("quorate-ca").expect("ca");
        std::fs::write(p.join("ca.crt"), ca.pem().cert).expect("ca");
        let localhost = [IpAddr::V4(Ipv4Addr::LOCALHOST)];
        ca.issue("agent", &["localhost"], &localhost, Usage::Server)
            .expect("agent")
            .write(p, "agent")
            .expect("write");
        ca.issue(
            "quorate-coordinator",
            &["quorate-coordinator"],
            &[],
            Usage::Client,
        )
        .expect("client")
        .write(p, "coordinator")
        .expect("write");
        ca.issue("intruder", &["intruder"], &[], Usage::Client)
            .expect("client")
            .write(p, "intruder")
            .expect("write");
        let other = Ca::new("other-ca").expect("ca");
        other
            .issue(
                "quorate-coordinator",
                &["quorate-coordinator"],
                &[],
                Usage::Client,
            )
            .expect("client")
            .write(p, "forged")
            .expect("write");
        Self { dir }
    }

    fn path(&self, f: &str) -> std::path::PathBuf {
        self.dir.path().join(f)
    }
}

fn config(pki: &Pki, member: &Member) -> AgentConfig {
    let text = format!(
        r#"
listen = "127.0.0.1:0"
state_dir = "{state}"
allowed_clients = ["quorate-coordinator"]
[tls]
cert = "{cert}"
key = "{key}"
client_ca = "{ca}"
[etcd]
runtime = "static-pod"
manifest = "{manifest}"
"#,
        state = member.root().join("state").display(),
        cert = pki.path("agent.crt").display(),
        key = pki.path("agent.key").display(),
        ca = pki.path("ca.crt").display(),
        manifest = member
            .root()
            .join("etc/kubernetes/manifests/etcd.yaml")
            .display(),
    );
    AgentConfig::parse(&text, Path::new("agent.toml")).expect("config")
}

async fn describe(port: u16, pki: &Pki, identity: Option<&str>) -> Result<String, String> {
    let read = |f: &str| std::fs::read(pki.path(f)).expect("pem");
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read("ca.crt")))
        .domain_name("localhost");
    if let Some(stem) = identity {
        tls = tls.identity(Identity::from_pem(
            read(&format!("{stem}.crt")),
            read(&format!("{stem}.key")),
        ));
    }
    let channel = Channel::from_shared(format!("https://127.0.0.1:{port}"))
        .expect("uri")
        .tls_config(tls)
        .map_err(|e| e.to_string())?
        .connect_timeout(std::time::Duration::from_secs(5))
        .timeout(std::time::Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let answer = AgentClient::new(channel)
        .describe(DescribeRequest {})
        .await
        .map_err(|s| format!("describe: {s}"))?;
    Ok(answer.into_inner().member_name)
}

/// The agent of `member` served on 127.0.0.1: its port, the sender that stops it, its task.
async fn serve(
    pki: &Pki,
    member: &Member,
) -> (
    u16,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    let config = config(pki, member);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let service = AgentService::new(member.engine());
    let server = tokio::spawn(async move {
        quorate_agent::server::serve_on(listener, &config, service, async {
            let _ = stopped.await;
        })
        .await
    });
    (port, stop, server)
}

#[tokio::test]
async fn only_allowed_clients_of_the_ca_are_served() {
    quorate_proto::tls::install_default_provider();
    let pki = Pki::new();
    let member = Member::new();
    let (port, stop, server) = serve(&pki, &member).await;

    assert_eq!(
        describe(port, &pki, Some("coordinator")).await.as_deref(),
        Ok("cp-1")
    );
    // Each refusal is the TLS alert of its own cause, which the client can tell apart.
    for (who, identity, alert) in [
        ("a name not allowed", Some("intruder"), "AccessDenied"),
        ("another CA", Some("forged"), "UnknownCA"),
        ("no client certificate", None, "CertificateRequired"),
    ] {
        let result = describe(port, &pki, identity).await;
        let error = result.expect_err(&format!("{who} must be refused"));
        assert!(
            error.contains(&format!("received fatal alert: {alert}")),
            "{who}: refused with the alert {alert}: {error}"
        );
    }
    // Still serving the allowed client after the refusals.
    assert_eq!(
        describe(port, &pki, Some("coordinator")).await.as_deref(),
        Ok("cp-1")
    );

    stop.send(()).expect("server alive");
    server.await.expect("join").expect("clean shutdown");
}

/// A raw TLS handshake with `config` against the agent on `port`: the error text, or the
/// negotiated protocol version.
async fn handshake(port: u16, config: rustls::ClientConfig) -> Result<String, String> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let mut tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    // TLS 1.3 client certificates are checked after the client's Finished: a refusal arrives as
    // an alert on the first read.
    tokio::io::AsyncWriteExt::write_all(&mut tls, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        tokio::io::AsyncReadExt::read(&mut tls, &mut buf),
    )
    .await
    .map_err(|_| "no answer".to_owned())?;
    read.map_err(|e| e.to_string())?;
    let (_, session) = tls.get_ref();
    Ok(format!("{:?}", session.protocol_version()))
}

fn client(
    pki: &Pki,
    versions: &[&'static rustls::SupportedProtocolVersion],
    alpn: &[&[u8]],
) -> rustls::ClientConfig {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(pki.path("ca.crt")).expect("ca") {
        roots.add(cert.expect("ca")).expect("ca");
    }
    let chain = rustls::pki_types::CertificateDer::pem_file_iter(pki.path("coordinator.crt"))
        .expect("crt")
        .collect::<Result<Vec<_>, _>>()
        .expect("crt");
    let key =
        rustls::pki_types::PrivateKeyDer::from_pem_file(pki.path("coordinator.key")).expect("key");
    let mut config = rustls::ClientConfig::builder_with_provider(quorate_proto::tls::provider())
        .with_protocol_versions(versions)
        .expect("versions")
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .expect("identity");
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config
}

#[tokio::test]
async fn only_tls_13_with_h2_is_spoken() {
    quorate_proto::tls::install_default_provider();
    let pki = Pki::new();
    let member = Member::new();
    let (port, stop, server) = serve(&pki, &member).await;
    let tls13: &[&'static rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];
    let tls12: &[&'static rustls::SupportedProtocolVersion] = &[&rustls::version::TLS12];

    // The allowed coordinator's certificate, over TLS 1.3 and h2: served.
    assert_eq!(
        handshake(port, client(&pki, tls13, &[b"h2"])).await,
        Ok("Some(TLSv1_3)".to_owned())
    );
    // The same certificate over TLS 1.2: refused for the protocol version.
    let error = handshake(port, client(&pki, tls12, &[b"h2"]))
        .await
        .expect_err("TLS 1.2 must be refused");
    assert!(
        error.contains("ProtocolVersion") || error.contains("incompatible"),
        "TLS 1.2 refused for its version: {error}"
    );
    // TLS 1.3 asking for HTTP/1.1 only: refused for the application protocol.
    let error = handshake(port, client(&pki, tls13, &[b"http/1.1"]))
        .await
        .expect_err("http/1.1 must be refused");
    assert!(
        error.contains("NoApplicationProtocol"),
        "http/1.1 refused for ALPN: {error}"
    );
    // The coordinator's own channel (TLS 1.3, h2) is served.
    let files = quorate_proto::tls::TlsFiles {
        ca: pki.path("ca.crt"),
        cert: pki.path("coordinator.crt"),
        key: pki.path("coordinator.key"),
    };
    let channel = quorate_proto::channel::agent_channel(
        &format!("https://127.0.0.1:{port}"),
        "localhost",
        &files,
        std::time::Duration::from_secs(5),
    )
    .expect("channel");
    let answer = AgentClient::new(channel)
        .describe(DescribeRequest {})
        .await
        .expect("describe over the coordinator's channel");
    assert_eq!(answer.into_inner().member_name, "cp-1");

    stop.send(()).expect("server alive");
    server.await.expect("join").expect("clean shutdown");
}

#[tokio::test]
async fn stalled_handshakes_are_capped_and_cut_off() {
    use tokio::io::AsyncReadExt;
    quorate_proto::tls::install_default_provider();
    let pki = Pki::new();
    let member = Member::new();
    let config = std::sync::Arc::new(
        quorate_agent::server::tls_config(&config(&pki, &member)).expect("tls"),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let deadline = std::time::Duration::from_millis(800);
    let incoming = quorate_proto::server::tls_incoming_with(listener, config, 2, deadline);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let service = AgentService::new(member.engine());
    let server = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(service.into_server())
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stopped.await;
            })
            .await
    });

    // Two connections that never start their handshake take both slots.
    let started = std::time::Instant::now();
    let mut stalled = Vec::new();
    for _ in 0..2 {
        stalled.push(
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .expect("connect"),
        );
    }
    // A real client waits for a slot, then is served once the stalled ones are cut off.
    let served = handshake(port, client(&pki, &[&rustls::version::TLS13], &[b"h2"])).await;
    let waited = started.elapsed();
    assert_eq!(served, Ok("Some(TLSv1_3)".to_owned()));
    assert!(
        waited >= deadline,
        "the third handshake had to wait for a slot (waited {waited:?}, deadline {deadline:?})"
    );
    // The stalled connections were closed by the agent at the deadline.
    for mut conn in stalled {
        let mut buf = [0u8; 8];
        let read = tokio::time::timeout(std::time::Duration::from_secs(5), conn.read(&mut buf))
            .await
            .expect("the agent closes a stalled handshake");
        assert!(
            matches!(read, Ok(0) | Err(_)),
            "a stalled handshake is closed: {read:?}"
        );
    }

    stop.send(()).expect("server alive");
    server.await.expect("join").expect("clean shutdown");
}
