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

#[tokio::test]
async fn only_allowed_clients_of_the_ca_are_served() {
    quorate_proto::tls::install_default_provider();
    let pki = Pki::new();
    let member = Member::new();
    let config = config(&pki, &member);
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
