//! The certificates `quorate certs init` writes, over real mTLS: the agent serves the
//! coordinator with them; an expired leaf, a leaf of another CA and an agent leaf without the
//! inventory's name are each refused, for its own reason, and `quorate certs check` names each.

mod common;

use std::path::{Path, PathBuf};

use common::Member;
use quorate::certs::{Ca, Leaf, Usage, Validity};
use quorate::certs_check::Severity;
use quorate::certs_cmd::{self, COORDINATOR_NAME};
use quorate::inventory::Inventory;
use quorate_agent::AgentService;
use quorate_agent::config::AgentConfig;
use quorate_proto::pb::{DescribeRequest, agent_client::AgentClient};
use quorate_proto::tls::TlsFiles;

/// The inventory of one member whose agent listens on 127.0.0.1:`port`, with DIR's files.
fn inventory(dir: &Path, port: u16) -> Inventory {
    let text = format!(
        r#"
[cluster]
name = "tls"
[agent_tls]
ca = "{dir}/ca.crt"
cert = "{dir}/coordinator.crt"
key = "{dir}/coordinator.key"
[[member]]
name = "cp-1"
agent = "https://127.0.0.1:{port}"
peer_urls = ["https://127.0.0.11:2380"]
client_urls = ["https://127.0.0.11:2379"]
"#,
        dir = dir.display()
    );
    let path = dir.join("inventory.toml");
    std::fs::write(&path, text).expect("inventory");
    Inventory::load(&path).expect("inventory")
}

/// An agent serving `cert`/`key`, trusting clients of `ca` named quorate-coordinator.
async fn serve(
    member: &Member,
    (cert, key, ca): (&Path, &Path, &Path),
    listener: tokio::net::TcpListener,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    let text = format!(
        r#"
listen = "127.0.0.1:0"
state_dir = "{state}"
allowed_clients = ["{COORDINATOR_NAME}"]
[tls]
cert = "{cert}"
key = "{key}"
client_ca = "{ca}"
[etcd]
runtime = "static-pod"
manifest = "{manifest}"
"#,
        state = member.root().join("state").display(),
        cert = cert.display(),
        key = key.display(),
        ca = ca.display(),
        manifest = member
            .root()
            .join("etc/kubernetes/manifests/etcd.yaml")
            .display(),
    );
    let config = AgentConfig::parse(&text, Path::new("agent.toml")).expect("config");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let service = AgentService::new(member.engine());
    let server = tokio::spawn(async move {
        quorate_agent::server::serve_on(listener, &config, service, async {
            let _ = stopped.await;
        })
        .await
    });
    (stop, server)
}

async fn listener() -> (tokio::net::TcpListener, u16) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = l.local_addr().expect("addr").port();
    (l, port)
}

/// Describe through the coordinator's own channel (TLS 1.3, the agent's name checked as the
/// inventory says): the member's name, or the whole error chain.
async fn describe(inventory: &Inventory, tls: &TlsFiles) -> Result<String, String> {
    let member = &inventory.members[0];
    let channel = quorate_proto::channel::agent_channel(
        &member.agent,
        "127.0.0.1",
        tls,
        std::time::Duration::from_secs(5),
    )
    .map_err(|e| e.to_string())?;
    let answer = AgentClient::new(channel)
        .describe(DescribeRequest {})
        .await
        .map_err(|s| {
            let mut text = s.to_string();
            let mut source = std::error::Error::source(&s);
            while let Some(e) = source {
                text.push_str(&format!(": {e}"));
                source = e.source();
            }
            text
        })?;
    Ok(answer.into_inner().member_name)
}

fn files(ca: &Path, cert: &Path, key: &Path) -> TlsFiles {
    TlsFiles {
        ca: ca.to_owned(),
        cert: cert.to_owned(),
        key: key.to_owned(),
    }
}

/// Writes a leaf of `ca` as `dir/stem.{crt,key}`; returns the two paths.
fn leaf(
    ca: &Ca,
    dir: &Path,
    stem: &str,
    names: &[&str],
    usage: Usage,
    v: Validity,
) -> [PathBuf; 2] {
    let ips: Vec<std::net::IpAddr> = names.iter().filter_map(|n| n.parse().ok()).collect();
    let dns: Vec<&str> = names
        .iter()
        .copied()
        .filter(|n| n.parse::<std::net::IpAddr>().is_err())
        .collect();
    ca.issue_leaf(&Leaf {
        common_name: stem,
        dns: &dns,
        ips: &ips,
        usage,
        validity: Some(v),
    })
    .expect("leaf")
    .write(dir, stem)
    .expect("write");
    [
        dir.join(format!("{stem}.crt")),
        dir.join(format!("{stem}.key")),
    ]
}

fn assert_refused(what: &str, result: Result<String, String>, reason: &str) {
    let error = result.expect_err(&format!("{what} must be refused"));
    assert!(
        error.contains(reason),
        "{what}: refused for {reason:?}: {error}"
    );
}

/// The errors `certs check --dir DIR` finds for `what`.
fn check_errors(dir: &Path, inventory: &Inventory, what: &str) -> Vec<String> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let now = i64::try_from(now).expect("a date");
    let reports = certs_cmd::check(Some(dir), inventory, &[COORDINATOR_NAME.into()], now);
    let report = reports.iter().find(|r| r.what == what).expect("a report");
    report
        .findings
        .iter()
        .filter(|f| f.severity == Severity::Error)
        .map(|f| f.text.clone())
        .collect()
}

#[tokio::test]
async fn certs_init_is_accepted_and_bad_leaves_are_refused_each_for_its_reason() {
    quorate_proto::tls::install_default_provider();
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("pki");
    std::fs::create_dir(&dir).expect("dir");
    let member = Member::new();
    let (good_listener, port) = listener().await;
    let inv = inventory(&dir, port);
    certs_cmd::init(&dir, &inv, false, 30, 365).expect("certs init");
    let ca_crt = dir.join("ca.crt");
    let (agent_crt, agent_key) = (dir.join("agents/cp-1.crt"), dir.join("agents/cp-1.key"));
    let coordinator = files(
        &ca_crt,
        &dir.join("coordinator.crt"),
        &dir.join("coordinator.key"),
    );
    let (stop, server) = serve(&member, (&agent_crt, &agent_key, &ca_crt), good_listener).await;

    // What init wrote: the agent serves the coordinator, and check finds nothing wrong.
    assert_eq!(describe(&inv, &coordinator).await.as_deref(), Ok("cp-1"));
    for what in ["CA", "coordinator", "agent cp-1"] {
        assert_eq!(
            check_errors(&dir, &inv, what),
            Vec::<String>::new(),
            "{what}"
        );
    }

    let ca = Ca::from_pem(
        &std::fs::read_to_string(&ca_crt).expect("ca"),
        &std::fs::read_to_string(dir.join("ca.key")).expect("key"),
    )
    .expect("ca");
    let other = Ca::new_quorate("quorate CA (another)", Validity::days_from_now(30)).expect("ca");
    let bad = tmp.path().join("bad");
    std::fs::create_dir(&bad).expect("dir");
    let expired = Validity::relative_days(-30, -1);
    let fine = Validity::days_from_now(30);

    // Client leaves: the agent refuses each with the TLS alert of its cause.
    let [c, k] = leaf(
        &ca,
        &bad,
        "client-expired",
        &[COORDINATOR_NAME],
        Usage::Client,
        expired,
    );
    assert_refused(
        "an expired coordinator certificate",
        describe(&inv, &files(&ca_crt, &c, &k)).await,
        "received fatal alert: CertificateExpired",
    );
    let [c, k] = leaf(
        &other,
        &bad,
        "client-other",
        &[COORDINATOR_NAME],
        Usage::Client,
        fine,
    );
    assert_refused(
        "a coordinator certificate of another CA",
        describe(&inv, &files(&ca_crt, &c, &k)).await,
        "received fatal alert: UnknownCA",
    );

    // Server leaves: the coordinator refuses each, saying why.
    let agents = [
        (
            "an expired agent certificate",
            leaf(
                &ca,
                &bad,
                "server-expired",
                &["127.0.0.1"],
                Usage::Server,
                expired,
            ),
            "certificate expired",
        ),
        (
            "an agent certificate of another CA",
            leaf(
                &other,
                &bad,
                "server-other",
                &["127.0.0.1"],
                Usage::Server,
                fine,
            ),
            "UnknownIssuer",
        ),
        (
            "an agent certificate without the inventory's name",
            leaf(
                &ca,
                &bad,
                "server-wrong-san",
                &["127.0.0.2", "cp-1"],
                Usage::Server,
                fine,
            ),
            "certificate not valid for name \"127.0.0.1\"",
        ),
    ];
    for (what, [cert, key], reason) in &agents {
        let (l, port) = listener().await;
        let (stop, server) = serve(&member, (cert, key, &ca_crt), l).await;
        let inv_here = inventory(&bad, port);
        assert_refused(what, describe(&inv_here, &coordinator).await, reason);
        stop.send(()).expect("server alive");
        server.await.expect("join").expect("clean shutdown");
    }

    // `certs check` finds each of them, for the same reason.
    let (cert, key) = (agent_crt.clone(), agent_key.clone());
    for ((what, [bad_cert, bad_key], _), finding) in agents.iter().zip([
        "expired on",
        "not signed by the CA",
        "not valid for 127.0.0.1, the host of its agent URL",
    ]) {
        std::fs::copy(bad_cert, &cert).expect("copy");
        std::fs::copy(bad_key, &key).expect("copy");
        let errors = check_errors(&dir, &inv, "agent cp-1");
        assert!(
            errors.len() == 1 && errors[0].contains(finding),
            "{what}: check says {finding:?}: {errors:?}"
        );
    }

    // The refusals changed nothing for the good pair.
    assert_eq!(describe(&inv, &coordinator).await.as_deref(), Ok("cp-1"));
    stop.send(()).expect("server alive");
    server.await.expect("join").expect("clean shutdown");
}
