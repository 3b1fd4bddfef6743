//! The apiserver stand-in: its flags, its answers, and `/readyz` with and without anonymous auth.

use super::*;
use clap::Parser;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, SanType};

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: ApiserverArgs,
}

#[test]
fn flags_read_like_kube_apiserver() {
    let cli = Cli::try_parse_from([
        "kube-apiserver",
        "--advertise-address=127.0.1.1",
        "--etcd-servers=https://127.0.1.1:2379,https://127.0.1.2:2379",
        "--etcd-cafile=/pki/etcd/ca.crt",
        "--etcd-certfile=/pki/apiserver-etcd-client.crt",
        "--etcd-keyfile=/pki/apiserver-etcd-client.key",
        "--tls-cert-file=/pki/apiserver.crt",
        "--tls-private-key-file=/pki/apiserver.key",
        "--node-name=cp-1",
    ])
    .expect("flags parse");
    assert_eq!(cli.args.secure_port, 6443);
    assert_eq!(cli.args.etcd_servers.len(), 2);
    assert_eq!(cli.args.node_name, "cp-1");
    assert!(cli.args.anonymous_auth, "kube-apiserver's default");
    assert_eq!(cli.args.client_ca_file, None);
    let base = [
        "kube-apiserver",
        "--advertise-address=127.0.1.1",
        "--etcd-servers=https://127.0.1.1:2379",
        "--etcd-cafile=/c",
        "--etcd-certfile=/c",
        "--etcd-keyfile=/c",
        "--tls-cert-file=/c",
        "--tls-private-key-file=/c",
        "--node-name=cp-1",
    ];
    let hardened = Cli::try_parse_from(
        base.iter()
            .copied()
            .chain(["--anonymous-auth=false", "--client-ca-file=/pki/ca.crt"]),
    )
    .expect("hardened flags parse");
    assert!(!hardened.args.anonymous_auth);
    assert_eq!(
        hardened.args.client_ca_file.as_deref(),
        Some(std::path::Path::new("/pki/ca.crt"))
    );
    let bare = Cli::try_parse_from(base.iter().copied().chain(["--anonymous-auth"]))
        .expect("a bare bool flag parses");
    assert!(bare.args.anonymous_auth);
}

#[test]
fn routes_requests_and_formats_responses() {
    assert_eq!(
        request_path("GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n"),
        Some("/readyz")
    );
    assert_eq!(
        request_path("GET /readyz?verbose HTTP/1.1\r\n\r\n"),
        Some("/readyz")
    );
    assert_eq!(request_path("garbage\r\n\r\n"), None);
    assert_eq!(route("/readyz"), Route::Readyz);
    assert_eq!(route("/livez"), Route::Livez);
    assert_eq!(route("/api/v1/pods"), Route::NotFound);
    assert_eq!(
        response(200, "ok"),
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Length: 2\r\nConnection: close\r\n\r\nok"
    );
}

#[test]
fn lease_carries_the_node_the_sequence_and_a_utc_renew_time() {
    assert_eq!(rfc3339_micros(UNIX_EPOCH), "1970-01-01T00:00:00.000000Z");
    let leap_day = UNIX_EPOCH + Duration::from_micros(951_782_400_000_001);
    assert_eq!(rfc3339_micros(leap_day), "2000-02-29T00:00:00.000001Z");
    let later = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    assert_eq!(rfc3339_micros(later), "2023-11-14T22:13:20.000000Z");

    let value = lease("cp-1", 7, later);
    assert_eq!(value["metadata"]["name"], "apiserver-cp-1");
    assert_eq!(value["spec"]["holderIdentity"], "kube-apiserver-cp-1");
    assert_eq!(value["spec"]["seq"], 7);
    assert_eq!(value["spec"]["renewTime"], "2023-11-14T22:13:20.000000Z");
}

/// A CA, a serving certificate for 127.0.0.1 and a client certificate, written to `dir`;
/// and a client certificate from another CA (`stranger`).
fn write_certs(dir: &std::path::Path) {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let other = CertifiedIssuer::self_signed(ca_params.clone(), KeyPair::generate().expect("key"))
        .expect("other ca");
    let ca_key = KeyPair::generate().expect("ca key");
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key).expect("ca");
    std::fs::write(dir.join("ca.crt"), ca.pem()).expect("write ca");
    let key = KeyPair::generate().expect("key");
    let stranger = CertificateParams::new(vec!["stranger.test".to_owned()])
        .expect("params")
        .signed_by(&key, &other)
        .expect("sign");
    std::fs::write(dir.join("stranger.crt"), stranger.pem()).expect("write cert");
    std::fs::write(dir.join("stranger.key"), key.serialize_pem()).expect("write key");
    for (stem, ip) in [("server", true), ("client", false)] {
        let mut params = CertificateParams::new(vec![format!("{stem}.test")]).expect("params");
        if ip {
            let localhost = IpAddr::from([127, 0, 0, 1]);
            params.subject_alt_names.push(SanType::IpAddress(localhost));
        }
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &ca).expect("sign");
        std::fs::write(dir.join(format!("{stem}.crt")), cert.pem()).expect("write cert");
        std::fs::write(dir.join(format!("{stem}.key")), key.serialize_pem()).expect("write key");
    }
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("local addr").port()
}

#[tokio::test]
async fn serves_over_tls_and_is_not_ready_while_etcd_is_down() {
    quorate_proto::tls::install_default_provider();
    let dir = tempfile::tempdir().expect("tempdir");
    write_certs(dir.path());
    let path = |f: &str| dir.path().join(f);
    let port = free_port();
    let args = ApiserverArgs {
        advertise_address: IpAddr::from([127, 0, 0, 1]),
        secure_port: port,
        etcd_servers: vec![format!("https://127.0.0.1:{}", free_port())],
        etcd_cafile: path("ca.crt"),
        etcd_certfile: path("client.crt"),
        etcd_keyfile: path("client.key"),
        tls_cert_file: path("server.crt"),
        tls_private_key_file: path("server.key"),
        node_name: "cp-1".to_owned(),
        anonymous_auth: true,
        client_ca_file: None,
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(run_until(args, async {
        let _ = stopped.await;
    }));

    let tls = Arc::new(quorate_proto::tls::client_config(&path("ca.crt"), None).expect("tls"));
    let get = |p: &str| {
        let url = format!("https://127.0.0.1:{port}{p}");
        let tls = Some(tls.clone());
        async move { quorate_proto::probe::get(&url, tls, Duration::from_secs(3)).await }
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let livez = loop {
        match get("/livez").await {
            Ok(r) => break r,
            Err(e) => assert!(std::time::Instant::now() < deadline, "no /livez: {e:#}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!((livez.status, livez.body.as_str()), (200, "ok"));
    let readyz = get("/readyz").await.expect("/readyz answers");
    assert_eq!(readyz.status, 503, "{}", readyz.body);
    assert!(readyz.body.contains("etcd"), "{}", readyz.body);
    assert_eq!(get("/version").await.expect("/version answers").status, 404);

    stop.send(()).expect("server listening");
    server.await.expect("server task").expect("server result");
}

/// Standard base64, for a kubeconfig's `client-certificate-data` as kubeadm writes it.
fn base64(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ABC[(n >> (18 - 6 * i) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[tokio::test]
async fn without_anonymous_auth_readyz_needs_a_client_certificate_from_its_ca() {
    use quorate_agent::health::{self, ReadyzConfig, ReadyzCredentials};
    quorate_proto::tls::install_default_provider();
    let dir = tempfile::tempdir().expect("tempdir");
    write_certs(dir.path());
    let path = |f: &str| dir.path().join(f);
    let port = free_port();
    let args = ApiserverArgs {
        advertise_address: IpAddr::from([127, 0, 0, 1]),
        secure_port: port,
        etcd_servers: vec![format!("https://127.0.0.1:{}", free_port())],
        etcd_cafile: path("ca.crt"),
        etcd_certfile: path("client.crt"),
        etcd_keyfile: path("client.key"),
        tls_cert_file: path("server.crt"),
        tls_private_key_file: path("server.key"),
        node_name: "cp-1".to_owned(),
        anonymous_auth: false,
        client_ca_file: Some(path("ca.crt")),
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(run_until(args, async {
        let _ = stopped.await;
    }));
    let config = |identity: Option<(&str, &str)>| {
        let identity = identity.map(|(c, k)| (path(c), path(k)));
        let pair = identity.as_ref().map(|(c, k)| (c.as_path(), k.as_path()));
        Some(Arc::new(
            quorate_proto::tls::client_config(&path("ca.crt"), pair).expect("tls"),
        ))
    };
    let get = |p: &str, tls| {
        let url = format!("https://127.0.0.1:{port}{p}");
        async move { quorate_proto::probe::get(&url, tls, Duration::from_secs(3)).await }
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let anonymous = loop {
        match get("/readyz", config(None)).await {
            Ok(r) => break r,
            Err(e) => assert!(std::time::Instant::now() < deadline, "no answer: {e:#}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(anonymous.status, 401, "{}", anonymous.body);
    let status: serde_json::Value = serde_json::from_str(&anonymous.body).expect("JSON");
    assert_eq!(
        (
            status["kind"].as_str(),
            status["reason"].as_str(),
            status["code"].as_u64()
        ),
        (Some("Status"), Some("Unauthorized"), Some(401))
    );
    let livez = get("/livez", config(None)).await.expect("/livez");
    assert_eq!(livez.status, 401, "every path needs authentication");
    // Authenticated: past the 401, not ready because etcd is down.
    let client = get("/readyz", config(Some(("client.crt", "client.key"))))
        .await
        .expect("/readyz with a client certificate");
    assert_eq!(client.status, 503, "{}", client.body);
    assert!(
        get("/readyz", config(Some(("stranger.crt", "stranger.key"))))
            .await
            .is_err(),
        "a certificate from another CA fails the handshake"
    );

    // The agent's own probe: kubeadm's admin.conf by default, refused without one.
    let manifest = format!(
        "spec:\n  containers:\n  - command: [kube-apiserver, --advertise-address=127.0.0.1, \
         --secure-port={port}, --anonymous-auth=false]\n"
    );
    let api = quorate_agent::manifest::Apiserver::from_command(
        quorate_agent::manifest::PodCommand::parse(&manifest, &path("kube-apiserver.yaml"))
            .expect("manifest"),
    )
    .expect("apiserver");
    let mut readyz = ReadyzConfig::new(path("ca.crt"), ReadyzCredentials::Unset);
    readyz.default_kubeconfig = path("admin.conf");
    let refused = health::readyz_probe(&readyz, &api)
        .err()
        .expect("no credentials")
        .to_string();
    assert!(
        refused.contains("--anonymous-auth=false") && refused.contains("apiserver.kubeconfig"),
        "{refused}"
    );
    let read = |f: &str| std::fs::read(path(f)).expect("read");
    let admin_conf = format!(
        "apiVersion: v1\nkind: Config\ncurrent-context: kubernetes-admin@kubernetes\n\
         contexts:\n- context: {{cluster: kubernetes, user: kubernetes-admin}}\n  name: kubernetes-admin@kubernetes\n\
         users:\n- name: kubernetes-admin\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\n",
        base64(&read("client.crt")),
        base64(&read("client.key"))
    );
    std::fs::write(path("admin.conf"), admin_conf).expect("write admin.conf");
    let probe = health::readyz_probe(&readyz, &api).expect("admin.conf credentials");
    let answer = health::probe_readyz(&probe).await;
    assert_eq!(answer.status, Some(503), "{answer:?}");
    assert!(answer.auth.contains("admin.conf"), "{}", answer.auth);
    readyz.credentials = ReadyzCredentials::ClientCert {
        cert: path("client.crt"),
        key: path("client.key"),
    };
    let answer = health::probe_readyz(&health::readyz_probe(&readyz, &api).expect("cert")).await;
    assert_eq!(answer.status, Some(503), "{answer:?}");

    stop.send(()).expect("server listening");
    server.await.expect("server task").expect("server result");
}
