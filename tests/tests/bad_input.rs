//! Bad input is refused before anything is touched: each case names what is wrong, and afterwards
//! no member changed (same cluster, same data, no restore dirs, no lock).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use quorate::agent_client::{AgentClient as _, CallError, GrpcAgent};
use quorate::certs::{Ca, Usage};
use quorate_lab::etcd::member_client;
use quorate_lab::faults::{self, ClusterState};
use quorate_lab::lab::Lab;
use quorate_lab::lab::LabRuntime;
use quorate_lab::testlab;
use quorate_lab::tools::EtcdVersion;
use quorate_lab::{load, scenario};
use quorate_proto::model::{ClusterFacts, ErrorCode, RestoreId, Step, StepRequest, names};

/// Runs `quorate restore --yes` with this inventory and snapshot; returns (success, all output).
fn restore(lab: &Lab, inventory: &Path, snapshot: &Path) -> (bool, String) {
    let out = Command::new(scenario::quorate_bin(lab))
        .args(["restore", "--yes", "--step-timeout", "5s", "--inventory"])
        .arg(inventory)
        .arg("--snapshot")
        .arg(snapshot)
        .arg("--state-dir")
        .arg(faults::state_dir(lab))
        .output()
        .expect("quorate");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn variant(lab: &Lab, name: &str, edit: impl Fn(String) -> String) -> PathBuf {
    let text = std::fs::read_to_string(lab.dir().join("inventory.toml")).expect("inventory");
    let path = lab.dir().join(name);
    std::fs::write(&path, edit(text)).expect("write variant");
    path
}

async fn assert_untouched(lab: &Lab, before: &ClusterState, case: &str) {
    let now = faults::cluster_state(lab)
        .await
        .unwrap_or_else(|e| panic!("{case}: {e:#}"));
    assert_eq!(&now, before, "{case}: the cluster changed");
    for host in lab.hosts() {
        let extra = faults::restore_dirs(host);
        assert!(extra.is_empty(), "{case}: {} has {extra:?}", host.name);
        assert!(
            !faults::holds_restore_lock(host),
            "{case}: {} holds a restore lock",
            host.name
        );
    }
}

fn refused(case: &str, result: (bool, String), expected: &str) {
    let (ok, text) = result;
    assert!(!ok, "{case}: accepted:\n{text}");
    assert!(
        text.contains(expected),
        "{case}: expected {expected:?} in:\n{text}"
    );
    eprintln!(
        "{case}: refused: {}",
        text.lines().find(|l| l.contains(expected)).unwrap_or("")
    );
}

#[tokio::test]
async fn bad_inventories_snapshots_and_agents_are_refused_before_anything_changes() {
    let mut lab = testlab::up(3, EtcdVersion::V35).await;
    let cp1 = lab.hosts()[0].clone();
    let client = member_client(&cp1.client_url(), &lab.etcd_tls())
        .await
        .expect("client");
    load::load(&client, 1000, 3).await.expect("load");
    let snapshot = lab.dir().join("snapshot.db");
    scenario::save_snapshot(&lab, &cp1, &snapshot).expect("snapshot");
    let good = lab.dir().join("inventory.toml");
    let before = faults::cluster_state(&lab).await.expect("state");

    // Inventory.
    let dup_name = variant(&lab, "dup-name.toml", |t| {
        t.replace("name = \"cp-2\"", "name = \"cp-1\"")
    });
    refused(
        "duplicate member name",
        restore(&lab, &dup_name, &snapshot),
        "member name cp-1 appears twice",
    );
    let dup_peer = variant(&lab, "dup-peer.toml", |t| {
        t.replacen(&lab.hosts()[1].peer_url(), &lab.hosts()[0].peer_url(), 1)
    });
    refused(
        "duplicate peer URL",
        restore(&lab, &dup_peer, &snapshot),
        "appears twice",
    );
    let typo = variant(&lab, "typo.toml", |t| {
        t.replacen("client_urls", "client_url", 1)
    });
    refused("unknown key", restore(&lab, &typo, &snapshot), "client_url");
    let renamed = variant(&lab, "renamed.toml", |t| {
        t.replace("name = \"cp-3\"", "name = \"cp-9\"")
    });
    refused(
        "name not the agent's",
        restore(&lab, &renamed, &snapshot),
        "member cp-9: its agent reports etcd member name \"cp-3\"",
    );
    let wrong_port = variant(&lab, "unreachable.toml", |t| t.replace(":7443", ":7444"));
    refused(
        "agent unreachable",
        restore(&lab, &wrong_port, &snapshot),
        "did not answer Describe",
    );

    // TLS: a CA that did not sign the agents; a client name the agents do not allow.
    let etcd_ca = lab.dir().join("coordinator/etcd-ca.crt");
    let wrong_ca = variant(&lab, "wrong-ca.toml", |t| {
        t.replacen(
            &lab.agent_tls().ca.display().to_string(),
            &etcd_ca.display().to_string(),
            1,
        )
    });
    refused(
        "agent certificate from another CA",
        restore(&lab, &wrong_ca, &snapshot),
        "did not answer Describe",
    );
    let quorate_ca_key =
        std::fs::read_to_string(lab.dir().join("pki/quorate-ca.key")).expect("ca key");
    let quorate_ca_crt =
        std::fs::read_to_string(lab.dir().join("pki/quorate-ca.crt")).expect("ca crt");
    let other = Ca::from_pem(&quorate_ca_crt, &quorate_ca_key).expect("the lab's quorate CA");
    let intruder = lab.dir().join("intruder");
    other
        .issue("someone-else", &["someone-else"], &[], Usage::Client)
        .expect("cert")
        .write(&intruder, "client")
        .expect("write");
    let not_allowed = variant(&lab, "not-allowed.toml", |t| {
        t.replacen(
            &lab.agent_tls().cert.display().to_string(),
            &intruder.join("client.crt").display().to_string(),
            1,
        )
        .replacen(
            &lab.agent_tls().key.display().to_string(),
            &intruder.join("client.key").display().to_string(),
            1,
        )
    });
    refused(
        "client name not allowed",
        restore(&lab, &not_allowed, &snapshot),
        "did not answer Describe",
    );

    // Snapshots.
    let bytes = std::fs::read(&snapshot).expect("snapshot");
    let missing = lab.dir().join("no-such.db");
    refused(
        "missing snapshot",
        restore(&lab, &good, &missing),
        "no such file; the newest .db files in",
    );
    refused(
        "a directory for a snapshot",
        restore(&lab, &good, lab.dir()),
        "is a directory, not a snapshot file",
    );
    let empty = lab.dir().join("empty.db");
    std::fs::write(&empty, b"").expect("write");
    refused("empty snapshot", restore(&lab, &good, &empty), "is empty");
    let truncated = lab.dir().join("truncated.db");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).expect("write");
    refused(
        "truncated snapshot",
        restore(&lab, &good, &truncated),
        "no sha256 trailer",
    );
    let mut flipped = bytes.clone();
    flipped[bytes.len() / 3] ^= 0x10;
    let flipped_path = lab.dir().join("flipped.db");
    std::fs::write(&flipped_path, &flipped).expect("write");
    refused(
        "bit-flipped snapshot",
        restore(&lab, &good, &flipped_path),
        "is corrupt",
    );

    // An agent without a restore tool.
    let config = lab.hosts()[1].path("etc/quorate/agent.toml");
    let original_config = std::fs::read_to_string(&config).expect("agent config");
    let without_tool: String = original_config
        .lines()
        .map(|l| {
            if l.starts_with("etcdutl = ") {
                "etcdutl = \"/nonexistent/etcdutl\"".to_owned()
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert_ne!(
        without_tool, original_config,
        "the agent config names its etcdutl"
    );
    std::fs::write(&config, without_tool + "\n").expect("write config");
    lab.kill_agent(1).expect("kill");
    lab.start_agent(1, None).await.expect("start");
    refused(
        "restore tool missing",
        restore(&lab, &good, &snapshot),
        "member cp-2: no restore tool found",
    );
    std::fs::write(&config, &original_config).expect("put the config back");
    lab.kill_agent(1).expect("kill");
    lab.start_agent(1, None).await.expect("start");

    assert_untouched(&lab, &before, "after every refused input").await;
}

#[tokio::test]
async fn a_member_holding_another_restore_is_refused_naming_it_and_the_commands() {
    let lab = testlab::up(3, EtcdVersion::V35).await;
    let cp1 = lab.hosts()[0].clone();
    let snapshot = lab.dir().join("snapshot.db");
    scenario::save_snapshot(&lab, &cp1, &snapshot).expect("snapshot");
    let before = faults::cluster_state(&lab).await.expect("state");
    // A restore stopped right after staging: every member holds its lock.
    let mut child =
        faults::spawn_restore(&lab, &snapshot, "coordinator::before-fence=sleep(600000)")
            .expect("quorate");
    let id = faults::wait_journal(&lab, 0, "stage", "done")
        .await
        .expect("staged");
    child.kill().expect("kill the coordinator");
    let _ = child.wait();
    let good = lab.dir().join("inventory.toml");
    let (ok, text) = restore(&lab, &good, &snapshot);
    assert!(!ok, "a second restore was accepted:\n{text}");
    for needle in [
        format!("holds unfinished restore {id}"),
        format!("quorate resume {id}"),
        format!("quorate rollback {id}"),
    ] {
        assert!(text.contains(&needle), "expected {needle:?} in:\n{text}");
    }
    let (ok, text) = faults::quorate_on(&lab, "rollback", &id).expect("rollback");
    assert!(ok, "rollback of the stopped restore: {text}");
    let now = faults::cluster_state(&lab).await.expect("state");
    assert_eq!(
        now, before,
        "the stopped restore changed nothing once rolled back"
    );
}

/// Every file under each host's `etc/` (env files, manifests, unit files, agent configs), byte
/// for byte, and what the agents' state dirs hold.
fn host_files(lab: &Lab) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let path = e.path();
            match e.file_type() {
                Ok(t) if t.is_dir() => walk(&path, out),
                Ok(t) if t.is_file() => {
                    out.insert(path.clone(), std::fs::read(&path).expect("read"));
                }
                _ => {
                    out.insert(path, Vec::new());
                }
            }
        }
    }
    let mut out = BTreeMap::new();
    for host in lab.hosts() {
        walk(&host.path("etc"), &mut out);
        walk(&host.path("var/lib/quorate-agent"), &mut out);
    }
    out
}

/// Names and URLs that would carry shell, env-file or URL syntax: a hostile inventory is refused
/// at load, naming the field, the member and the value, and an agent sent a hostile request
/// directly (a stolen coordinator certificate) refuses it before it takes its lock; nothing ran,
/// and every member's data, membership, env file and agent state is as before. On the kubespray
/// layout (systemd, `/etc/etcd.env`), where the token and initial cluster are written into a
/// file that scripts source.
#[tokio::test]
async fn hostile_names_and_urls_are_refused_by_coordinator_and_agent_before_anything_changes() {
    let lab = testlab::up_with(3, EtcdVersion::V35, LabRuntime::Systemd).await;
    let cp1 = lab.hosts()[0].clone();
    let cp2 = lab.hosts()[1].clone();
    let client = member_client(&cp1.client_url(), &lab.etcd_tls())
        .await
        .expect("client");
    load::load(&client, 200, 3).await.expect("load");
    let snapshot = lab.dir().join("snapshot.db");
    scenario::save_snapshot(&lab, &cp1, &snapshot).expect("snapshot");
    let before = faults::cluster_state(&lab).await.expect("state");
    let files = host_files(&lab);
    assert!(
        files.keys().any(|p| p.ends_with("etc/etcd.env")),
        "the systemd lab has /etc/etcd.env files"
    );
    let marker = lab.dir().join("pwned");
    let touch = format!("touch {}", marker.display());

    // Through the inventory: refused at load, before any agent is asked.
    let hostile_name = format!("{};{touch}", cp2.name);
    let cases: Vec<(&str, String, String)> = vec![
        (
            "member name",
            format!("\"{}\"", cp2.name),
            format!("\"{}\"", hostile_name),
        ),
        (
            "peer URL",
            format!("\"{}\"", cp2.peer_url()),
            format!("\"{}/$({touch})\"", cp2.peer_url()),
        ),
        (
            "client URL",
            format!("\"{}\"", cp2.client_url()),
            format!("\"{}`{touch}`\"", cp2.client_url()),
        ),
        (
            "agent URL",
            format!("\"{}\"", cp2.agent_url()),
            format!("\"{}\"", cp2.agent_url().replace("https://", "https://x@")),
        ),
    ];
    for (field, from, to) in &cases {
        let path = variant(&lab, "hostile.toml", |t| t.replacen(from.as_str(), to, 1));
        let (ok, text) = restore(&lab, &path, &snapshot);
        let says = match *field {
            "member name" => format!("member name \"{hostile_name}\" is refused: a"),
            _ => format!("{field} of {} \"", cp2.name),
        };
        refused(field, (ok, text.clone()), &says);
        assert!(text.contains("is refused: a"), "{field}: the rule: {text}");
        assert!(
            !text.contains("Describe"),
            "{field}: refused before asking agents: {text}"
        );
    }

    // Straight to cp-1's agent, with the coordinator's own certificate.
    let inventory = lab.inventory();
    let member = &inventory.members[0];
    let host = names::check_url("agent URL", &member.name, &member.agent)
        .expect("the lab's agent URL")
        .host
        .to_owned();
    let agent =
        GrpcAgent::new(&member.name, &member.agent, &host, &lab.agent_tls()).expect("agent client");
    let id = RestoreId::new();
    let good = StepRequest {
        restore_id: id,
        step: Step::Claim,
        facts: ClusterFacts {
            member_name: member.name.clone(),
            peer_urls: member.peer_urls.clone(),
            initial_cluster: inventory
                .members
                .iter()
                .map(|m| format!("{}={}", m.name, m.peer_urls[0]))
                .collect::<Vec<_>>()
                .join(","),
            cluster_token: id.cluster_token(),
            snapshot_sha256: "a".repeat(64),
            bump_revision: 0,
            mark_compacted: false,
            skip_hash_check: false,
        },
        signature: None,
    };
    type Edit<'a> = Box<dyn Fn(&mut StepRequest) + 'a>;
    let requests: Vec<(&str, Edit)> = vec![
        (
            "member name",
            Box::new(|r| r.facts.member_name = format!("{};{touch}", r.facts.member_name)),
        ),
        (
            "peer URL",
            Box::new(|r| r.facts.peer_urls = vec![format!("https://$({touch}):2380")]),
        ),
        (
            "initial cluster",
            Box::new(|r| {
                r.facts.initial_cluster = format!("{}\nETCD_X=`{touch}`", r.facts.initial_cluster)
            }),
        ),
        (
            "cluster token",
            Box::new(|r| r.facts.cluster_token = RestoreId::new().cluster_token()),
        ),
        (
            "cluster token",
            Box::new(|r| r.facts.cluster_token = format!("{}'; {touch}; '", r.facts.cluster_token)),
        ),
    ];
    for step in [Step::Claim, Step::Restore] {
        for (field, edit) in &requests {
            let mut req = StepRequest {
                step,
                ..good.clone()
            };
            edit(&mut req);
            let err = agent
                .run(req, Duration::from_secs(10))
                .await
                .expect_err(field);
            let text = err.to_string();
            assert!(
                matches!(
                    &err,
                    CallError::Agent {
                        code: ErrorCode::InvalidRequest,
                        ..
                    }
                ) || text.contains("is refused"),
                "{step} {field}: {err:?}"
            );
            assert!(text.contains(field), "{step} {field}: {text}");
            assert!(!err.is_retryable(), "{step} {field}: {err:?}");
        }
    }

    assert!(!marker.exists(), "a hostile value ran a command");
    assert_eq!(
        host_files(&lab),
        files,
        "env files, units, manifests and agent state are unchanged"
    );
    assert_untouched(&lab, &before, "after hostile inventories and requests").await;
}
