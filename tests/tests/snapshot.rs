//! `quorate snapshot save` and `quorate snapshot verify` on real etcd: the saved file holds the
//! live data at its revision, damaged copies are refused with distinct reasons, and a snapshot
//! from plain `etcdctl snapshot save` verifies like one from quorate.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use quorate::snapshot_save::{MemberStatus, choose, prune_plan, series_of};
use quorate_lab::etcd::{Dump, dump, member_client};
use quorate_lab::lab::Lab;
use quorate_lab::testlab::{self, eventually};
use quorate_lab::tools::EtcdVersion;
use quorate_lab::{load, scenario};
use serde_json::Value;

fn quorate(lab: &Lab, args: &[&str]) -> Output {
    let started = Instant::now();
    std::fs::create_dir_all(verify_tmp(lab)).expect("temp dir for quorate");
    let out = Command::new(scenario::quorate_bin(lab))
        .env("TMPDIR", verify_tmp(lab))
        .args(args)
        .output()
        .expect("running quorate");
    eprintln!(
        "quorate {args:?}: {} in {:.2?}\n{}",
        out.status,
        started.elapsed(),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Where quorate's test restores make their temp dirs: empty again after every run.
fn verify_tmp(lab: &Lab) -> PathBuf {
    lab.dir().join("quorate-tmp")
}

fn assert_no_temp_dirs_left(lab: &Lab) {
    let left: Vec<_> = std::fs::read_dir(verify_tmp(lab)).expect("ls").collect();
    assert!(left.is_empty(), "a test restore left {left:?} behind");
}

fn save(lab: &Lab, out: &Path, extra: &[&str]) -> Output {
    let inventory = lab.dir().join("inventory.toml");
    let mut args = vec![
        "snapshot",
        "save",
        "--inventory",
        inventory.to_str().expect("utf-8"),
    ];
    args.extend(["--out", out.to_str().expect("utf-8"), "--output", "json"]);
    args.extend(extra);
    quorate(lab, &args)
}

/// `snapshot verify --output json`: (succeeded, the report).
fn verify(lab: &Lab, file: &Path, test_restore: bool) -> (bool, Value) {
    let tools_dir = lab.state.tools.etcd.parent().expect("tools dir");
    let mut args = vec!["snapshot", "verify", file.to_str().expect("utf-8")];
    args.extend([
        "--etcd-dir",
        tools_dir.to_str().expect("utf-8"),
        "--output",
        "json",
    ]);
    if test_restore {
        args.push("--test-restore");
    }
    let out = quorate(lab, &args);
    let result = quorate_lab::realfaults::result_event(&out.stdout).expect("a result event");
    let report = result["result"].clone();
    assert_eq!(
        report["ok"].as_bool(),
        Some(out.status.success()),
        "{report}"
    );
    assert_eq!(result["ok"], report["ok"], "{result}");
    (out.status.success(), report)
}

/// `path` is 0600: readable by its owner only.
fn assert_private_file(path: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(path).expect("stat").permissions().mode() & 0o7777;
    assert_eq!(mode, 0o600, "mode of {}", path.display());
}

fn meta(file: &Path) -> Value {
    let path = PathBuf::from(format!("{}.json", file.display()));
    serde_json::from_slice(&std::fs::read(&path).expect("FILE.json")).expect("FILE.json is JSON")
}

/// A throwaway etcd restored from `file`, killed when dropped.
struct Restored(
    Child,
    #[allow(dead_code, reason = "removed on drop")] tempfile::TempDir,
);

impl Drop for Restored {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Restores `file` by hand (etcdutl, one member on free loopback ports) and dumps every key.
async fn restored_dump(lab: &Lab, file: &Path) -> Dump {
    let tools = &lab.state.tools;
    let dir = tempfile::tempdir().expect("tempdir");
    let port = || {
        let l = std::net::TcpListener::bind(("127.0.0.1", 0)).expect("free port");
        l.local_addr().expect("addr").port()
    };
    let (client, peer, metrics) = (port(), port(), port());
    let peer_url = format!("http://127.0.0.1:{peer}");
    let member = [
        "--name".to_owned(),
        "dump".to_owned(),
        format!("--initial-cluster=dump={peer_url}"),
        format!("--initial-advertise-peer-urls={peer_url}"),
        format!("--data-dir={}", dir.path().join("data").display()),
    ];
    let status = Command::new(tools.etcdutl.as_ref().expect("etcdutl for 3.5"))
        .args(["snapshot", "restore"])
        .arg(file)
        .args(&member)
        .output()
        .expect("etcdutl");
    assert!(status.status.success(), "restore: {status:?}");
    let client_url = format!("http://127.0.0.1:{client}");
    let child = Command::new(&tools.etcd)
        .args(&member)
        .arg(format!("--listen-peer-urls={peer_url}"))
        .arg(format!("--listen-client-urls={client_url}"))
        .arg(format!("--advertise-client-urls={client_url}"))
        .arg(format!("--listen-metrics-urls=http://127.0.0.1:{metrics}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("etcd");
    let _guard = Restored(child, dir);
    let metrics_url = format!("http://127.0.0.1:{metrics}");
    eventually("the restored etcd to be healthy", || async {
        quorate::verify::metrics_healthy(&metrics_url)
            .await
            .then_some(())
    })
    .await;
    let options = etcd_client::ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(Duration::from_secs(10));
    let mut c = etcd_client::Client::connect([client_url], Some(options))
        .await
        .expect("client");
    dump(&mut c).await.expect("dump of the restored etcd")
}

async fn loaded_lab(keys: usize, version: EtcdVersion) -> testlab::TestLab {
    let lab = testlab::up(3, version).await;
    let client = member_client(&lab.hosts()[0].client_url(), &lab.etcd_tls())
        .await
        .expect("client");
    let started = Instant::now();
    load::load(&client, keys, 11).await.expect("load");
    eprintln!("loaded {keys} keys in {:.2?}", started.elapsed());
    lab
}

#[tokio::test]
async fn saved_snapshot_holds_the_live_data_at_its_revision_and_force_and_keep_work() {
    let lab = loaded_lab(3000, EtcdVersion::V35).await;
    let dir = lab.dir().join("snaps");
    std::fs::create_dir_all(&dir).expect("snaps dir");
    let first = dir.join("etcd-0001.db");

    let out = save(&lab, &first, &[]);
    assert!(out.status.success(), "save: {out:?}");
    let report: Value = quorate_lab::realfaults::result_event(&out.stdout).expect("a result event")
        ["result"]
        .clone();
    assert!(report["report"]["reason"].as_str().is_some(), "{report}");
    let m = meta(&first);
    let rev = m["revision"].as_i64().expect("revision");
    assert_eq!(m["sha256"], report["report"]["meta"]["sha256"]);
    assert_eq!(
        m["cluster_id"].as_str().map(str::len).map(|l| l > 0),
        Some(true)
    );
    assert_eq!(m["etcd_version"], lab.state.tools.full_version.as_str());
    assert_eq!(
        rev,
        scenario::snapshot_revision(&lab, &first).expect("etcdutl status"),
        "FILE.json's revision is the snapshot's"
    );
    let live = scenario::dumps_at(&lab, Some(rev))
        .await
        .expect("live dump")[0]
        .1
        .clone();
    assert!(live.kvs.len() >= 3000);
    assert_eq!(
        m["keys"].as_u64(),
        Some(live.kvs.len() as u64),
        "FILE.json's key count"
    );
    assert_eq!(
        std::fs::metadata(&first).expect("file").len(),
        m["size"].as_u64().expect("size")
    );

    // The snapshot holds every Secret: it and its .json are 0600 whatever the umask.
    assert_private_file(&first);
    assert_private_file(&PathBuf::from(format!("{}.json", first.display())));

    let (ok, v) = verify(&lab, &first, true);
    assert!(ok, "verify --test-restore: {v}");
    assert_eq!(v["revision"].as_i64(), Some(rev));
    assert_eq!(v["sha256"], m["sha256"]);
    assert_eq!(
        v["test_restore"]["keys"].as_u64(),
        Some(live.kvs.len() as u64)
    );
    let found = &v["test_restore"]["namespaces_found"];
    assert_eq!(found.as_array().map(Vec::len), Some(2), "{v}");

    let restored = restored_dump(&lab, &first).await;
    assert_eq!(restored.revision, rev);
    assert!(
        restored.kvs == live.kvs,
        "the restored data differs from the live data at {rev}"
    );

    assert_no_temp_dirs_left(&lab);

    // No overwrite without --force: the file is left exactly as it was.
    let before = std::fs::read(&first).expect("read");
    let out = save(&lab, &first, &[]);
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("already exists") && text.contains("--force"),
        "{text}"
    );
    assert!(
        std::fs::read(&first).expect("read") == before,
        "refused save changed the file"
    );
    let out = save(&lab, &first, &["--force"]);
    assert!(out.status.success(), "save --force: {out:?}");
    assert_private_file(&first);
    assert_ne!(meta(&first)["revision"].as_i64(), None);

    // --keep 2: two more of the series, the oldest goes with its .json; other files stay.
    std::fs::write(dir.join("etcd-notes.txt"), "not a snapshot").expect("write");
    for name in ["etcd-0002.db", "etcd-0003.db"] {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let out = save(&lab, &dir.join(name), &["--keep", "2"]);
        assert!(out.status.success(), "save {name} --keep 2: {out:?}");
    }
    let mut left: Vec<String> = std::fs::read_dir(&dir)
        .expect("ls")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(
        left,
        [
            "etcd-0002.db",
            "etcd-0002.db.json",
            "etcd-0003.db",
            "etcd-0003.db.json",
            "etcd-notes.txt"
        ]
    );
}

#[tokio::test]
async fn damaged_copies_fail_distinctly_and_etcdctl_snapshots_verify_alike() {
    let lab = loaded_lab(2000, EtcdVersion::V35).await;
    // Stop the apiserver stand-ins: their heartbeats are the only writes, so both snapshots
    // below hold the same data.
    for host in lab.hosts() {
        lab.remove_manifest(host, "kube-apiserver")
            .expect("stop apiserver");
    }
    eventually("the apiservers to stop", || async {
        lab.hosts()
            .iter()
            .all(|h| !quorate_lab::procs::port_open(h.ip, quorate_lab::layout::APISERVER_PORT))
            .then_some(())
    })
    .await;
    let by_etcdctl = lab.dir().join("etcdctl.db");
    let rev = scenario::save_snapshot(&lab, &lab.hosts()[0], &by_etcdctl).expect("etcdctl save");
    let by_quorate = lab.dir().join("quorate.db");
    assert!(save(&lab, &by_quorate, &[]).status.success());
    let (ok_a, a) = verify(&lab, &by_etcdctl, true);
    let (ok_b, b) = verify(&lab, &by_quorate, true);
    assert!(ok_a && ok_b, "{a}\n{b}");
    assert_eq!(a["revision"].as_i64(), Some(rev));
    assert_eq!(b["revision"].as_i64(), Some(rev));
    assert_eq!(a["test_restore"]["keys"], b["test_restore"]["keys"]);
    assert_eq!(a["total_keys"], b["total_keys"]);
    assert_eq!(meta(&by_quorate)["keys"], b["test_restore"]["keys"]);

    let bytes = std::fs::read(&by_quorate).expect("read");
    let flipped = lab.dir().join("flipped.db");
    let mut copy = bytes.clone();
    copy[bytes.len() / 2] ^= 0x10;
    std::fs::write(&flipped, &copy).expect("write");
    let truncated = lab.dir().join("truncated.db");
    std::fs::write(&truncated, &bytes[..bytes.len() - 1000]).expect("write");
    let (ok_f, f) = verify(&lab, &flipped, false);
    let (ok_t, t) = verify(&lab, &truncated, false);
    assert!(!ok_f && !ok_t, "{f}\n{t}");
    assert_eq!(f["error_kind"], "corrupt", "{f}");
    assert!(
        f["error"].as_str().expect("error").contains("is corrupt"),
        "{f}"
    );
    assert_eq!(t["error_kind"], "truncated", "{t}");
    assert!(
        t["error"].as_str().expect("error").contains("truncated"),
        "{t}"
    );

    // A cluster without the kube-system namespace fails the test restore, by name.
    let mut c = member_client(&lab.hosts()[0].client_url(), &lab.etcd_tls())
        .await
        .expect("client");
    c.delete("/registry/namespaces/kube-system", None)
        .await
        .expect("delete");
    let no_ns = lab.dir().join("no-kube-system.db");
    assert!(save(&lab, &no_ns, &[]).status.success());
    let (ok, v) = verify(&lab, &no_ns, true);
    assert!(!ok);
    assert_eq!(v["error_kind"], "missing-namespace", "{v}");
    assert!(
        v["error"].as_str().expect("error").contains("kube-system"),
        "{v}"
    );
    assert_no_temp_dirs_left(&lab);
}

#[tokio::test]
async fn save_and_verify_on_etcd_34_through_etcdctl() {
    if testlab::tools_or_skip(EtcdVersion::V34).is_none() {
        return;
    }
    let lab = loaded_lab(1000, EtcdVersion::V34).await;
    let file = lab.dir().join("etcd34-1.db");
    assert!(save(&lab, &file, &[]).status.success());
    let m = meta(&file);
    assert!(
        m["etcd_version"]
            .as_str()
            .expect("version")
            .starts_with("3.4."),
        "{m}"
    );
    let rev = scenario::snapshot_revision(&lab, &file).expect("etcdctl snapshot status");
    assert_eq!(m["revision"].as_i64(), Some(rev));
    let (ok, v) = verify(&lab, &file, true);
    assert!(ok, "{v}");
    let tool = v["tools"]["snapshot_tool"].as_str().expect("tool");
    assert!(tool.ends_with("/etcdctl"), "3.4 has no etcdutl: {v}");
    assert_eq!(v["test_restore"]["keys"], m["keys"]);
    assert!(
        v["test_restore"]["etcd_version"]
            .as_str()
            .expect("version")
            .starts_with("3.4.")
    );
    assert_no_temp_dirs_left(&lab);
}

fn status(
    name: &str,
    id: u64,
    leader: u64,
    raft_index: u64,
) -> (String, Result<MemberStatus, String>) {
    let s = MemberStatus {
        name: name.into(),
        url: format!("https://{name}:2379"),
        member_id: id,
        cluster_id: 7,
        leader,
        raft_index,
        version: "3.5.1".into(),
        errors: Vec::new(),
    };
    (name.into(), Ok(s))
}

#[test]
fn a_caught_up_follower_serves_else_the_leader() {
    let probes = [
        status("cp-1", 1, 1, 100),
        status("cp-2", 2, 1, 99),
        status("cp-3", 3, 1, 100),
    ];
    let c = choose(&probes).expect("choice");
    assert_eq!(c.status.name, "cp-3");
    assert!(
        c.reason.contains("follower at the leader's raft index"),
        "{}",
        c.reason
    );

    let probes = [
        status("cp-1", 1, 1, 100),
        status("cp-2", 2, 1, 99),
        ("cp-3".into(), Err("timeout".into())),
    ];
    let c = choose(&probes).expect("choice");
    assert_eq!(c.status.name, "cp-1");
    assert!(
        c.reason.contains("cp-2 at 99") && c.reason.contains("cp-3: timeout"),
        "{}",
        c.reason
    );

    let mut alarmed = status("cp-2", 2, 1, 100);
    if let Ok(s) = &mut alarmed.1 {
        s.errors.push("NOSPACE".into());
    }
    let c = choose(&[status("cp-1", 1, 1, 100), alarmed]).expect("choice");
    assert_eq!(c.status.name, "cp-1", "a member with an alarm never serves");

    let leader_gone = [
        ("cp-1".into(), Err("refused".into())),
        status("cp-2", 2, 1, 50),
        status("cp-3", 3, 1, 60),
    ];
    assert_eq!(
        choose(&leader_gone).expect("choice").status.name,
        "cp-3",
        "the most advanced follower"
    );

    let err = choose(&[
        status("cp-1", 1, 0, 5),
        ("cp-2".into(), Err("refused".into())),
    ])
    .expect_err("none");
    assert!(
        err.contains("cp-1: no leader") && err.contains("cp-2: refused"),
        "{err}"
    );
}

#[test]
fn the_series_is_the_name_up_to_the_first_digit_and_the_extension() {
    assert_eq!(
        series_of("etcd-2026-11-25T03.db"),
        Some(("etcd-", Some("db")))
    );
    assert_eq!(
        series_of("etcd-2026-11-25T03.db.json"),
        Some(("etcd-", Some("json")))
    );
    assert_eq!(series_of("etcd.db"), None);
    assert_eq!(series_of("2026.db"), None);
}

#[test]
fn pruning_keeps_the_newest_and_never_the_new_one_or_other_files() {
    let entries: Vec<(String, SystemTime)> = [
        ("etcd-01.db", 1),
        ("etcd-02.db", 2),
        ("etcd-03.db", 3),
        ("etcd-04.db", 0),
        ("etcd-01.db.json", 1),
        ("etcd-notes.db", 0),
        ("other-01.db", 0),
        ("etcd-05.log", 0),
        (".etcd-06.db.partial-9", 0),
    ]
    .into_iter()
    .map(|(n, s)| (n.to_owned(), UNIX_EPOCH + Duration::from_secs(s)))
    .collect();
    // etcd-04.db is the new one, though its mtime is the oldest.
    assert_eq!(
        prune_plan("etcd-04.db", &entries, 2),
        ["etcd-01.db", "etcd-02.db"]
    );
    assert_eq!(
        prune_plan("etcd-04.db", &entries, 1),
        ["etcd-01.db", "etcd-02.db", "etcd-03.db"]
    );
    assert!(prune_plan("etcd-04.db", &entries, 4).is_empty());
    assert!(prune_plan("etcd.db", &entries, 1).is_empty());
}
