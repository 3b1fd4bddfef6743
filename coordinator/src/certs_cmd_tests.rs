use std::os::unix::fs::PermissionsExt;

use super::*;
use crate::certs_check::Severity;

const INVENTORY: &str = r#"
[cluster]
name = "prod-eu"
[agent_tls]
ca = "/x/ca.crt"
cert = "/x/coordinator.crt"
key = "/x/coordinator.key"
[[member]]
name = "cp-1"
agent = "https://127.0.0.11:7443"
peer_urls = ["https://127.0.0.11:2380"]
client_urls = ["https://127.0.0.11:2379"]
[[member]]
name = "cp-2"
agent = "https://cp-2.example.internal:7443"
agent_server_name = "agent.cp-2.example.internal"
peer_urls = ["https://127.0.0.12:2380"]
client_urls = ["https://127.0.0.12:2379"]
[[apiserver]]
name = "api-1"
agent = "https://[fd00::21]:7443"
"#;

fn inventory(text: &str) -> Inventory {
    let f = tempfile::NamedTempFile::new().expect("tempfile");
    std::fs::write(f.path(), text).expect("write");
    Inventory::load(f.path()).expect("inventory")
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).expect("meta").permissions().mode() & 0o777
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn parse(path: &Path) -> Vec<u8> {
    let pem = std::fs::read(path).expect("read");
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).expect("pem");
    pem.contents
}

/// The findings of the report about `what`, as (severity, text).
fn findings<'a>(reports: &'a [CertReport], what: &str) -> &'a CertReport {
    reports
        .iter()
        .find(|r| r.what == what)
        .unwrap_or_else(|| panic!("no report for {what}: {reports:?}"))
}

fn errors(r: &CertReport) -> Vec<&str> {
    r.findings
        .iter()
        .filter(|f| f.severity == Severity::Error)
        .map(|f| f.text.as_str())
        .collect()
}

#[test]
fn init_writes_a_private_ca_and_leaves_with_the_inventory_names() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("pki");
    let inv = inventory(INVENTORY);
    let written = init(&dir, &inv, false, 90, 3650).expect("init");
    assert_eq!(written.files.len(), 2 * 5, "CA, coordinator, 3 agents");
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join("agents")), 0o700);
    for key in [
        "ca.key",
        "coordinator.key",
        "agents/cp-1.key",
        "agents/api-1.key",
    ] {
        assert_eq!(mode(&dir.join(key)), 0o600, "{key}");
    }
    // The CA: its name says what it is, it signs leaves only, and its key signs certificates only.
    let ca_der = parse(&dir.join("ca.crt"));
    let (_, ca) = x509_parser::parse_x509_certificate(&ca_der).expect("ca");
    assert!(ca.subject().to_string().contains("quorate CA (prod-eu)"));
    let bc = ca.basic_constraints().expect("bc").expect("bc").value;
    assert!(bc.ca);
    assert_eq!(bc.path_len_constraint, Some(0));
    let ku = ca.key_usage().expect("ku").expect("ku").value;
    assert!(ku.key_cert_sign());
    assert!(!ku.digital_signature() && !ku.crl_sign() && !ku.key_encipherment());
    // Each agent is valid for the host of its URL and its agent_server_name.
    let sans = |name: &str| certs_check::sans(&parse(&dir.join(format!("agents/{name}.crt"))));
    assert_eq!(sans("cp-1"), ["127.0.0.11"]);
    assert_eq!(
        sans("cp-2"),
        ["cp-2.example.internal", "agent.cp-2.example.internal"]
    );
    assert_eq!(sans("api-1"), ["fd00::21"]);
    // The coordinator's certificate carries the name agents allow, for client auth only.
    let c_der = parse(&dir.join("coordinator.crt"));
    let (_, c) = x509_parser::parse_x509_certificate(&c_der).expect("coordinator");
    let eku = c.extended_key_usage().expect("eku").expect("eku").value;
    assert!(eku.client_auth && !eku.server_auth);
    assert_eq!(
        certs_check::sans(&parse(&dir.join("coordinator.crt"))),
        [COORDINATOR_NAME]
    );
    // Leaves valid for --days.
    let days = (c.validity().not_after.timestamp() - now()) / 86_400;
    assert!((89..=90).contains(&days), "{days}");
    // And everything checks out.
    let reports = check(Some(&dir), &inv, &[COORDINATOR_NAME.into()], now());
    assert_eq!(reports.len(), 5);
    for r in &reports {
        assert_eq!(r.severity(), Severity::Ok, "{}", r.render());
    }
}

#[test]
fn init_never_overwrites_without_force() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let inv = inventory(INVENTORY);
    init(dir, &inv, false, 30, 60).expect("init");
    let before = std::fs::read(dir.join("ca.key")).expect("ca key");
    let err = init(dir, &inv, false, 30, 60).expect_err("refused");
    let text = err.to_string();
    for f in ["ca.crt", "ca.key", "coordinator.key", "agents/cp-2.crt"] {
        assert!(text.contains(f), "names {f}: {text}");
    }
    assert!(
        text.contains("--force") && text.contains("rotate"),
        "{text}"
    );
    assert_eq!(std::fs::read(dir.join("ca.key")).expect("key"), before);
    // One file is enough to refuse.
    let other = tmp.path().join("other");
    std::fs::create_dir(&other).expect("dir");
    std::fs::write(other.join("coordinator.crt"), "mine").expect("write");
    let err = init(&other, &inv, false, 30, 60).expect_err("refused");
    assert!(err.to_string().contains("coordinator.crt"), "{err}");
    assert!(!other.join("ca.key").exists(), "nothing written");
    // --force replaces everything, the CA too, and keeps what it replaced.
    init(dir, &inv, true, 30, 60).expect("forced");
    assert_ne!(std::fs::read(dir.join("ca.key")).expect("key"), before);
    assert_eq!(
        std::fs::read(dir.join("ca.key.old")).expect("old key"),
        before
    );
}

/// A CA `certs init` did not make (the cluster's own, in the wrong dir) is never signed with nor
/// replaced; nor is a CA whose key file holds another key used.
#[test]
fn a_ca_that_is_not_quorates_is_never_used_or_replaced() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let inv = inventory(INVENTORY);
    let foreign = tmp.path().join("kubernetes-pki");
    std::fs::create_dir(&foreign).expect("dir");
    let k8s = Ca::new("kubernetes").expect("a foreign CA");
    std::fs::write(foreign.join("ca.crt"), k8s.cert_pem()).expect("write");
    std::fs::write(foreign.join("ca.key"), k8s.pem().key).expect("write");
    let before = std::fs::read(foreign.join("ca.key")).expect("key");
    let e = rotate(&foreign, &inv, 30)
        .expect_err("rotate refuses")
        .to_string();
    assert!(
        e.contains("\"kubernetes\"") && e.contains("certs init"),
        "{e}"
    );
    let e = init(&foreign, &inv, true, 30, 60)
        .expect_err("init --force refuses")
        .to_string();
    assert!(e.contains("\"kubernetes\""), "{e}");
    assert_eq!(std::fs::read(foreign.join("ca.key")).expect("key"), before);
    assert!(!foreign.join("agents").exists(), "nothing written");

    let ours = tmp.path().join("quorate-pki");
    init(&ours, &inv, false, 30, 60).expect("init");
    std::fs::write(ours.join("ca.key"), k8s.pem().key).expect("another key");
    let e = rotate(&ours, &inv, 30)
        .expect_err("another key")
        .to_string();
    assert!(e.contains("another key"), "{e}");
}

#[test]
fn rotate_issues_new_leaves_under_the_same_ca_and_keeps_the_old_ones() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let inv = inventory(INVENTORY);
    init(dir, &inv, false, 30, 3650).expect("init");
    let ca = std::fs::read(dir.join("ca.crt")).expect("ca");
    let first = std::fs::read(dir.join("agents/cp-1.crt")).expect("leaf");
    let written = rotate(dir, &inv, 200).expect("rotate");
    assert_eq!(std::fs::read(dir.join("ca.crt")).expect("ca"), ca);
    assert_eq!(written.kept.len(), 8, "4 leaves x (crt, key)");
    assert_eq!(
        std::fs::read(dir.join("agents/cp-1.crt.old")).expect("old"),
        first
    );
    assert_ne!(
        std::fs::read(dir.join("agents/cp-1.crt")).expect("new"),
        first
    );
    assert_eq!(mode(&dir.join("agents/cp-1.key.old")), 0o600);
    assert_eq!(mode(&dir.join("agents/cp-1.key")), 0o600);
    let reports = check(Some(dir), &inv, &[COORDINATOR_NAME.into()], now());
    for r in &reports {
        assert_eq!(r.severity(), Severity::Ok, "{}", r.render());
    }
    let second = std::fs::read(dir.join("agents/cp-1.crt")).expect("leaf");
    rotate(dir, &inv, 200).expect("rotate again");
    assert_eq!(
        std::fs::read(dir.join("agents/cp-1.crt.old")).expect("old"),
        second,
        "the previous rotate's leaf is the one kept"
    );
    // Without a CA there is nothing to rotate under.
    let empty = tempfile::tempdir().expect("tempdir");
    let err = rotate(empty.path(), &inv, 10).expect_err("no CA");
    assert!(err.to_string().contains("certs init"), "{err}");
}

/// A leaf of the CA in `root` with the validity given (seconds from now), written over
/// `root/sub/stem`.
fn reissue(root: &Path, sub: &str, stem: &str, names: &[&str], usage: Usage, from: i64, to: i64) {
    let ca = Ca::from_pem(
        &std::fs::read_to_string(root.join("ca.crt")).expect("ca"),
        &std::fs::read_to_string(root.join("ca.key")).expect("ca key"),
    )
    .expect("ca");
    let t = |s: i64| time::OffsetDateTime::now_utc() + time::Duration::seconds(s);
    let ips: Vec<IpAddr> = names.iter().filter_map(|n| n.parse().ok()).collect();
    let dns: Vec<&str> = names
        .iter()
        .copied()
        .filter(|n| n.parse::<IpAddr>().is_err())
        .collect();
    ca.issue_leaf(&Leaf {
        common_name: stem,
        dns: &dns,
        ips: &ips,
        usage,
        validity: Some(Validity {
            not_before: t(from),
            not_after: t(to),
        }),
    })
    .expect("leaf")
    .write(&root.join(sub), stem)
    .expect("write");
}

#[test]
fn check_finds_expiry_names_usage_keys_and_a_foreign_ca() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let inv = inventory(INVENTORY);
    init(dir, &inv, false, 365, 3650).expect("init");
    let agents = dir.join("agents");
    const DAY: i64 = 86_400;
    // cp-1 expired yesterday.
    reissue(
        dir,
        "agents",
        "cp-1",
        &["127.0.0.11"],
        Usage::Server,
        -10 * DAY,
        -DAY,
    );
    // api-1 expires in 10 days: a warning, not an error.
    reissue(
        dir,
        "agents",
        "api-1",
        &["fd00::21"],
        Usage::Server,
        -DAY,
        10 * DAY,
    );
    // The coordinator's certificate is not valid yet.
    reissue(
        dir,
        "",
        "coordinator",
        &[COORDINATOR_NAME],
        Usage::Client,
        DAY,
        9 * DAY,
    );
    let reports = check(Some(dir), &inv, &[COORDINATOR_NAME.into()], now());
    let e = errors(findings(&reports, "agent cp-1"));
    assert!(e.len() == 1 && e[0].contains("expired on"), "{e:?}");
    let api = findings(&reports, "agent api-1");
    assert_eq!(api.severity(), Severity::Warn, "{}", api.render());
    assert!(api.render().contains("in 9 days") || api.render().contains("in 10 days"));
    let e = errors(findings(&reports, "coordinator"));
    assert!(e.len() == 1 && e[0].contains("not valid yet"), "{e:?}");

    // cp-1's agent moved to another address: its certificate no longer covers it.
    let moved = inventory(&INVENTORY.replace("https://127.0.0.11:7443", "https://10.1.2.3:7443"));
    init(dir, &inv, true, 365, 3650).expect("fresh");
    let reports = check(Some(dir), &moved, &[COORDINATOR_NAME.into()], now());
    let e = errors(findings(&reports, "agent cp-1"));
    assert!(
        e.len() == 1
            && e[0].contains("not valid for 10.1.2.3")
            && e[0].contains("host of its agent URL")
            && e[0].contains("127.0.0.11"),
        "{e:?}"
    );
    // cp-2's agent_server_name is what counts for it.
    let renamed = inventory(&INVENTORY.replace("agent.cp-2.example", "other.cp-2.example"));
    let reports = check(Some(dir), &renamed, &[COORDINATOR_NAME.into()], now());
    let e = errors(findings(&reports, "agent cp-2"));
    assert!(
        e.len() == 1 && e[0].contains("other.cp-2.example.internal, its agent_server_name"),
        "{e:?}"
    );
    // A coordinator name the agents do not allow.
    let reports = check(Some(dir), &inv, &["ops-bastion".into()], now());
    let e = errors(findings(&reports, "coordinator"));
    assert!(
        e.len() == 1 && e[0].contains("not valid for ops-bastion"),
        "{e:?}"
    );

    // A client certificate used as an agent's: no serverAuth.
    reissue(
        dir,
        "agents",
        "cp-1",
        &["127.0.0.11"],
        Usage::Client,
        -DAY,
        DAY * 50,
    );
    // A leaf of another CA.
    let other = Ca::new_quorate("quorate CA (other)", Validity::days_from_now(10)).expect("ca");
    other
        .issue_leaf(&Leaf {
            common_name: "api-1",
            dns: &[],
            ips: &["fd00::21".parse().expect("ip")],
            usage: Usage::Server,
            validity: Some(Validity::days_from_now(100)),
        })
        .expect("leaf")
        .write(&agents, "api-1")
        .expect("write");
    // cp-2's key replaced by another's.
    std::fs::copy(agents.join("cp-1.key"), agents.join("cp-2.key")).expect("copy");
    let reports = check(Some(dir), &inv, &[COORDINATOR_NAME.into()], now());
    let e = errors(findings(&reports, "agent cp-1"));
    assert!(e.len() == 1 && e[0].contains("lacks serverAuth"), "{e:?}");
    let e = errors(findings(&reports, "agent api-1"));
    assert!(
        e.len() == 1 && e[0].contains("not signed by the CA"),
        "{e:?}"
    );
    let e = errors(findings(&reports, "agent cp-2"));
    assert!(
        e.len() == 1 && e[0].contains("belongs to another certificate"),
        "{e:?}"
    );
    // A missing file is an error that says how to get one.
    std::fs::remove_file(agents.join("cp-2.crt")).expect("rm");
    let reports = check(Some(dir), &inv, &[COORDINATOR_NAME.into()], now());
    let e = errors(findings(&reports, "agent cp-2"));
    assert!(e[0].contains("certs init"), "{e:?}");
}

#[test]
fn check_without_dir_reads_the_inventory_files() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    init(dir, &inventory(INVENTORY), false, 365, 3650).expect("init");
    let inv = inventory(&INVENTORY.replace("/x/", &format!("{}/", dir.display())));
    let reports = check(None, &inv, &[COORDINATOR_NAME.into()], now());
    assert_eq!(
        reports.iter().map(|r| r.what.as_str()).collect::<Vec<_>>(),
        ["CA", "coordinator"]
    );
    for r in &reports {
        assert_eq!(r.severity(), Severity::Ok, "{}", r.render());
    }
    std::fs::set_permissions(
        dir.join("coordinator.key"),
        std::fs::Permissions::from_mode(0o644),
    )
    .expect("chmod");
    let reports = check(None, &inv, &[COORDINATOR_NAME.into()], now());
    let c = findings(&reports, "coordinator");
    assert_eq!(c.severity(), Severity::Warn);
    assert!(c.render().contains("chmod 600"), "{}", c.render());
}
