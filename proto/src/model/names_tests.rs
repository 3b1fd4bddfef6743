use super::*;
use crate::model::{ClusterFacts, StepRequest};
use crate::pb;

const ID: &str = "0b7e2c1a-5f0e-4d7e-9a1b-2c3d4e5f6a7b";

/// Values that would carry syntax into a shell, an env file, a YAML file, a URL or a log line.
const HOSTILE: &[&str] = &[
    "",
    " ",
    "cp 1",
    "cp-1;rm -rf /",
    "cp-1$(touch /tmp/x)",
    "cp-1`id`",
    "cp-1\nETCD_X=1",
    "cp-1\r",
    "cp-1'",
    "cp-1\"",
    "cp-1#x",
    "cp-1|x",
    "cp-1&x",
    "cp-1>x",
    "cp-1\\",
    "cp-1\0",
    "cp-1\u{feff}",
    "cp-ł",
    "-cp1",
    "cp1-",
    ".cp1",
    "cp1/..",
    "cp1,cp2=https://10.0.0.2:2380",
    "cp1=x",
];

#[test]
fn names_accept_node_names_and_refuse_everything_else_saying_why() {
    for good in [
        "cp-1",
        "etcd1",
        "node_1",
        "a",
        "k8s-cp-1.example.com",
        "Node1",
    ] {
        check_name("member name", good).unwrap_or_else(|e| panic!("{good}: {e}"));
    }
    check_name("member name", &"a".repeat(253)).expect("253 characters");
    let long = "a".repeat(254);
    let err = check_name("member name", &long).expect_err("254 characters");
    assert!(err.0.contains("... (254 characters)"), "{err}");
    for bad in HOSTILE {
        let err = check_name("member name", bad).expect_err(bad);
        assert!(err.0.starts_with("member name \""), "{err}");
        assert!(err.0.contains(NAME_RULE), "{err}");
        // The bad value is escaped: one line, no raw control characters.
        assert!(!err.0.chars().any(char::is_control), "{err:?}");
    }
}

#[test]
fn urls_are_scheme_host_port_and_nothing_else() {
    let good = [
        ("https://10.0.0.1:2380", "10.0.0.1", 2380),
        ("http://127.0.0.1:2381/", "127.0.0.1", 2381),
        ("https://[fd00::1]:2380", "[fd00::1]", 2380),
        (
            "https://etcd-1.example.com:2380",
            "etcd-1.example.com",
            2380,
        ),
        ("https://localhost:65535", "localhost", 65535),
    ];
    for (url, host, port) in good {
        let parts = check_url("peer URL", "cp-1", url).unwrap_or_else(|e| panic!("{url}: {e}"));
        assert_eq!((parts.host, parts.port), (host, port), "{url}");
    }
    let bad = [
        "ftp://10.0.0.1:2380",
        "HTTPS://10.0.0.1:2380",
        "https://10.0.0.1",
        "https://10.0.0.1:0",
        "https://10.0.0.1:65536",
        "https://10.0.0.1:+80",
        "https://10.0.0.1:02380x",
        "https://user@10.0.0.1:2380",
        "https://user:pw@10.0.0.1:2380",
        "https://10.0.0.1:2380/path",
        "https://10.0.0.1:2380?q=1",
        "https://10.0.0.1:2380#f",
        "https://10.0.0.1:2380//",
        "https://10.0.0.1:2380 ",
        " https://10.0.0.1:2380",
        "https://10.0.0.1:2380\n",
        "https://10.0.0.1:2380,x=https://10.0.0.2:2380",
        "https://$(id):2380",
        "https://`id`:2380",
        "https://a;b:2380",
        "https://a'b:2380",
        "https://a\"b:2380",
        "https://fd00::1:2380",
        "https://[fd00::1%eth0]:2380",
        "https://[10.0.0.1]:2380",
        "https://999.0.0.1:2380",
        "https://010.0.0.1:2380",
        "https://1.2.3:2380",
        "https://-a.example:2380",
        "https://a..example:2380",
        "https://a_b.example:2380",
        "https://:2380",
        "https://",
        "",
    ];
    for url in bad {
        let err = check_url("peer URL", "cp-1", url).expect_err(url);
        assert!(err.0.starts_with("peer URL of cp-1 \""), "{err}");
        assert!(err.0.contains(URL_RULE), "{err}");
        assert!(!err.0.chars().any(char::is_control), "{err:?}");
    }
    let err = check_url("peer URL", "cp 1;x", "x").expect_err("bad member too");
    assert!(err.0.starts_with("peer URL of \"cp 1;x\" \"x\""), "{err}");
}

#[test]
fn hosts_for_server_names() {
    for good in ["agent-1.example.com", "10.0.0.1", "fd00::1", "[fd00::1]"] {
        check_host("agent_server_name", "cp-1", good).unwrap_or_else(|e| panic!("{good}: {e}"));
    }
    for bad in ["a b", "a;b", "", "a/b", "1.2.3", "x\n"] {
        let err = check_host("agent_server_name", "cp-1", bad).expect_err(bad);
        assert!(err.0.contains(HOST_RULE), "{err}");
    }
}

#[test]
fn initial_cluster_entries_are_checked_one_by_one() {
    let ok = check_initial_cluster(
        "a=https://10.0.0.1:2380,a=https://10.0.0.9:2380,b=http://[::1]:2380",
    )
    .expect("valid");
    assert_eq!(ok.len(), 3);
    for bad in [
        "",
        "a",
        "a=https://10.0.0.1:2380,",
        "a=https://10.0.0.1:2380,b=https://10.0.0.1:2380",
        "a;b=https://10.0.0.1:2380",
        "a=https://10.0.0.1:2380\nb=https://10.0.0.2:2380",
        "a=https://10.0.0.1:2380 b=https://10.0.0.2:2380",
        "a=https://10.0.0.1:2380,b=https://$(id):2380",
    ] {
        assert!(check_initial_cluster(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn the_token_is_exactly_the_restore_ids() {
    let id: RestoreId = ID.parse().expect("id");
    check_token(id, &format!("quorate-{ID}")).expect("own token");
    let other = RestoreId::new();
    for bad in [
        other.cluster_token(),
        format!("quorate-{ID} "),
        format!("quorate-{}", ID.to_uppercase()),
        format!("quorate-{ID};id"),
        "quorate-x".into(),
        "etcd-cluster-1".into(),
        String::new(),
    ] {
        let err = check_token(id, &bad).expect_err(&bad);
        assert!(err.0.contains(&format!("exactly quorate-{ID}")), "{err}");
        assert!(check_token_shape(&bad).is_err() || bad == other.cluster_token());
    }
}

#[test]
fn restore_ids_only_in_the_form_quorate_writes() {
    assert_eq!(ID.parse::<RestoreId>().expect("id").to_string(), ID);
    for bad in [
        ID.to_uppercase(),
        ID.replace('-', ""),
        format!("{{{ID}}}"),
        format!("urn:uuid:{ID}"),
        format!("{ID}\n"),
        format!("../{ID}"),
        "not-a-uuid".into(),
        String::new(),
    ] {
        let err = bad.parse::<RestoreId>().expect_err(&bad);
        assert!(err.0.contains("lowercase hyphenated"), "{err}");
    }
}

fn request(edit: impl Fn(&mut pb::StepRequest)) -> pb::StepRequest {
    let mut r = pb::StepRequest {
        restore_id: ID.into(),
        step: pb::Step::Restore as i32,
        facts: Some(crate::model::tests::facts()),
        snapshot_signature: None,
    };
    edit(&mut r);
    r
}

fn facts_of(r: &mut pb::StepRequest) -> &mut pb::ClusterFacts {
    r.facts.as_mut().expect("facts")
}

/// Each field of a step request, with hostile values: refused as invalid argument, naming the
/// field.
#[test]
fn hostile_step_requests_are_invalid_arguments_naming_the_field() {
    StepRequest::try_from(request(|_| {})).expect("the good request");
    let mut cases: Vec<(String, pb::StepRequest, &str)> = Vec::new();
    for bad in HOSTILE {
        cases.push((
            format!("name {bad:?}"),
            request(|r| facts_of(r).member_name = (*bad).into()),
            "member name",
        ));
        let url = format!("https://{bad}:2380");
        cases.push((
            format!("peer URL {url:?}"),
            request(|r| facts_of(r).peer_urls = vec![url.clone()]),
            "peer URL",
        ));
        let cluster = format!("cp-1=https://127.0.0.11:2380,cp-2=https://127.0.0.12:2380{bad}");
        let token = format!("quorate-{ID}{bad}");
        let id = format!("{ID}{bad}");
        if !bad.is_empty() {
            cases.push((
                format!("initial cluster {cluster:?}"),
                request(|r| facts_of(r).initial_cluster = cluster.clone()),
                "initial cluster",
            ));
            cases.push((
                format!("token {token:?}"),
                request(|r| facts_of(r).cluster_token = token.clone()),
                "cluster token",
            ));
            cases.push((
                format!("restore id {id:?}"),
                request(|r| r.restore_id = id.clone()),
                "restore id",
            ));
        }
    }
    // Another restore's token, well formed.
    cases.push((
        "another restore's token".into(),
        request(|r| facts_of(r).cluster_token = RestoreId::new().cluster_token()),
        "cluster token",
    ));
    for (case, req, field) in cases {
        let err = StepRequest::try_from(req).expect_err(&case);
        assert!(err.0.contains(field), "{case}: {err}");
        assert!(!err.0.chars().any(char::is_control), "{case}: {err:?}");
        assert_eq!(
            tonic::Status::from(err).code(),
            tonic::Code::InvalidArgument,
            "{case}"
        );
    }
    let facts = ClusterFacts::try_from(crate::model::tests::facts()).expect("valid");
    assert_eq!(facts.cluster_token, format!("quorate-{ID}"));
}
