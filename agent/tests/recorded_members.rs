//! The membership an etcd data dir records, read without starting etcd, against dbs that real
//! etcd wrote: a 3-member cluster after `member remove` and `member add`, and a dir that
//! `snapshot restore` made for a new cluster. etcd 3.5 records it truthfully (the IDs and
//! peer URLs; names only of the members that bootstrapped the cluster); etcd 3.4's
//! `snapshot restore` leaves the snapshot's members in the db, so a 3.4 db is not trusted.
//! Describe reports it.
//!
//! etcd 3.5 comes from `QUORATE_ETCD_DIR` (default tools/etcd-3.5.1; `bash tests/setup.sh`
//! fetches it), 3.4 from `QUORATE_ETCD34_DIR` (default /usr/bin, Debian's etcd-server). A
//! missing 3.5 fails the test; a missing 3.4 fails it as root (setup.sh installs it there).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use quorate_proto::bbolt::Bolt;
use quorate_proto::etcd_db::{self, DbMember, Membership, MembershipError};
use quorate_proto::pb;

struct Etcd {
    dir: PathBuf,
    etcdctl: PathBuf,
    /// etcdutl for 3.5; `None` for 3.4, which restores with etcdctl.
    etcdutl: Option<PathBuf>,
}

fn etcd35() -> Etcd {
    let dir = std::env::var_os("QUORATE_ETCD_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../tools/etcd-3.5.1"),
        PathBuf::from,
    );
    assert!(
        dir.join("etcd").is_file() && dir.join("etcdutl").is_file(),
        "no etcd 3.5 in {}: run `bash tests/setup.sh` or set QUORATE_ETCD_DIR",
        dir.display()
    );
    Etcd {
        etcdctl: dir.join("etcdctl"),
        etcdutl: Some(dir.join("etcdutl")),
        dir,
    }
}

fn etcd34() -> Option<Etcd> {
    let dir =
        std::env::var_os("QUORATE_ETCD34_DIR").map_or_else(|| "/usr/bin".into(), PathBuf::from);
    let version = Command::new(dir.join("etcd")).arg("--version").output();
    let is_34 = version.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("Version: 3.4"));
    if !is_34 {
        let root = nix::unistd::Uid::effective().is_root();
        assert!(
            !root,
            "no etcd 3.4 in {}: run `bash tests/setup.sh` (installs Debian's etcd-server) or set QUORATE_ETCD34_DIR",
            dir.display()
        );
        eprintln!("skipping etcd 3.4: not installed and not root to install it");
        return None;
    }
    Some(Etcd {
        etcdctl: dir.join("etcdctl"),
        etcdutl: None,
        dir,
    })
}

/// The member processes this test started; SIGKILLed on drop (also on a panic), by PID.
struct Members(Vec<Child>);

impl Drop for Members {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _gone = c.kill();
            let _reaped = c.wait();
        }
    }
}

impl Members {
    /// SIGTERM to each, then waits for every one to exit (etcd flushes its db on the way).
    fn stop(&mut self) {
        for c in &self.0 {
            let pid = nix::unistd::Pid::from_raw(i32::try_from(c.id()).expect("pid fits"));
            let _gone = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        }
        for c in &mut self.0 {
            c.wait().expect("etcd exits");
        }
        self.0.clear();
    }
}

fn peer(ip: &str) -> String {
    format!("http://{ip}:12380")
}

fn client(ip: &str) -> String {
    format!("http://{ip}:12379")
}

/// Starts a new cluster of `names` on `ips` under `root`.
fn start(etcd: &Etcd, root: &Path, names: &[&str], ips: &[&str]) -> Members {
    let cluster: Vec<String> = names
        .iter()
        .zip(ips)
        .map(|(n, ip)| format!("{n}={}", peer(ip)))
        .collect();
    let mut members = Members(Vec::new());
    for (name, ip) in names.iter().zip(ips) {
        let log = std::fs::File::create(root.join(format!("{name}.log"))).expect("log");
        let child = Command::new(etcd.dir.join("etcd"))
            .args(["--name", name, "--data-dir"])
            .arg(root.join(name))
            .args(["--listen-peer-urls", &peer(ip)])
            .args(["--initial-advertise-peer-urls", &peer(ip)])
            .args(["--listen-client-urls", &client(ip)])
            .args(["--advertise-client-urls", &client(ip)])
            .args(["--initial-cluster", &cluster.join(",")])
            .args(["--initial-cluster-token", "recorded-members"])
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start etcd");
        members.0.push(child);
    }
    members
}

fn etcdctl(etcd: &Etcd, ip: &str, args: &[&str]) -> String {
    let out = Command::new(&etcd.etcdctl)
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", &client(ip), "--command-timeout", "5s"])
        .args(args)
        .output()
        .expect("run etcdctl");
    assert!(
        out.status.success(),
        "etcdctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// etcdctl `args`, retried while etcd answers "unhealthy cluster": a member is removed only once
/// the others have been connected for 5 s (etcd's strict reconfiguration check).
fn reconfigure(etcd: &Etcd, ip: &str, args: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = Command::new(&etcd.etcdctl)
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &client(ip), "--command-timeout", "5s"])
            .args(args)
            .output()
            .expect("run etcdctl");
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.success() {
            return;
        }
        assert!(
            stderr.contains("unhealthy cluster") && Instant::now() < deadline,
            "etcdctl {args:?}: {stderr}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn wait_healthy(etcd: &Etcd, ip: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ok = Command::new(&etcd.etcdctl)
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &client(ip), "--command-timeout", "2s"])
            .args(["endpoint", "health"])
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "etcd at {ip} not healthy in 30 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// (id, name, peer URLs) of a member.
type Listed = (u64, String, Vec<String>);

/// Each member as etcd's member list reports it, sorted by id.
fn member_list(etcd: &Etcd, ip: &str) -> Vec<Listed> {
    let json: serde_json::Value =
        serde_json::from_str(&etcdctl(etcd, ip, &["member", "list", "-w", "json"])).expect("json");
    let mut list: Vec<_> = json["members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|m| {
            let urls = m["peerURLs"].as_array().expect("peerURLs");
            (
                m["ID"].as_u64().expect("ID"),
                m["name"].as_str().unwrap_or_default().to_owned(),
                urls.iter()
                    .map(|u| u.as_str().expect("url").to_owned())
                    .collect(),
            )
        })
        .collect();
    list.sort();
    list
}

fn recorded(members: &[DbMember]) -> Vec<Listed> {
    let mut list: Vec<_> = members
        .iter()
        .map(|m| (m.id, m.name.clone(), m.peer_urls.clone()))
        .collect();
    list.sort();
    list
}

/// A 3-member cluster loses m3 and gains an unstarted m4, then stops: the data dirs of m1 and m2,
/// read without etcd.
fn removed_and_added(
    etcd: &Etcd,
    ips: [&str; 4],
) -> (Vec<Listed>, [Result<Membership, MembershipError>; 2]) {
    let root = tempfile::tempdir().expect("tempdir");
    let mut members = start(etcd, root.path(), &["m1", "m2", "m3"], &ips[..3]);
    for ip in &ips[..3] {
        wait_healthy(etcd, ip);
    }
    etcdctl(etcd, ips[0], &["put", "k", "v"]);
    let before = member_list(etcd, ips[0]);
    let m3 = before
        .iter()
        .find(|m| m.1 == "m3")
        .map(|m| format!("{:x}", m.0))
        .expect("m3");
    reconfigure(etcd, ips[0], &["member", "remove", &m3]);
    // m3 may have led: the others elect a new leader first.
    for ip in &ips[..2] {
        wait_healthy(etcd, ip);
    }
    reconfigure(
        etcd,
        ips[0],
        &["member", "add", "m4", "--peer-urls", &peer(ips[3])],
    );
    let live = member_list(etcd, ips[0]);
    assert_eq!(live.len(), 3, "m1, m2 and the unstarted m4: {live:?}");
    members.stop();
    let read = |name: &str| etcd_db::membership(&root.path().join(name).join("member/snap/db"));
    (live, [read("m1"), read("m2")])
}

#[test]
fn a_data_dir_records_the_membership_after_remove_and_add_on_etcd_35() {
    let (live, read) = removed_and_added(
        &etcd35(),
        ["127.0.0.201", "127.0.0.202", "127.0.0.203", "127.0.0.204"],
    );
    for m in read {
        let m = m.expect("membership");
        assert_eq!(recorded(&m.members), live);
        assert!(
            m.members.iter().any(|m| m.name.is_empty()),
            "unstarted m4 has no name"
        );
        assert!(
            m.applied_index.is_some_and(|i| i > 0),
            "{:?}",
            m.applied_index
        );
    }
}

#[test]
fn a_data_dir_of_etcd_34_is_not_trusted_for_its_membership() {
    if let Some(etcd) = etcd34() {
        let (_, read) = removed_and_added(
            &etcd,
            ["127.0.0.205", "127.0.0.206", "127.0.0.207", "127.0.0.208"],
        );
        for m in read {
            let err = m.expect_err("3.4");
            assert!(
                matches!(&err, MembershipError::NotRecorded { version, .. } if version.starts_with("3.4")),
                "{err}"
            );
            assert!(err.to_string().contains("WAL only"), "{err}");
        }
    }
}

/// A snapshot of a cluster (m1) restored for a new cluster (a, b): the restored dir's db, and the
/// members its `members` bucket lists.
fn restored(etcd: &Etcd, ip: &str) -> (tempfile::TempDir, PathBuf, Vec<String>) {
    let root = tempfile::tempdir().expect("tempdir");
    let mut members = start(etcd, root.path(), &["m1"], &[ip]);
    wait_healthy(etcd, ip);
    etcdctl(etcd, ip, &["put", "k", "v"]);
    let snap = root.path().join("snap.db");
    etcdctl(etcd, ip, &["snapshot", "save", &snap.display().to_string()]);
    members.stop();
    let data = root.path().join("restored");
    let cluster = "a=https://10.0.0.1:2380,b=https://10.0.0.2:2380";
    let (tool, api) = match &etcd.etcdutl {
        Some(etcdutl) => (etcdutl.clone(), None),
        None => (etcd.etcdctl.clone(), Some("3")),
    };
    let mut cmd = Command::new(tool);
    if let Some(api) = api {
        cmd.env("ETCDCTL_API", api);
    }
    let out = cmd
        .args(["snapshot", "restore"])
        .arg(&snap)
        .args(["--name", "a", "--initial-cluster", cluster])
        .args(["--initial-advertise-peer-urls", "https://10.0.0.1:2380"])
        .args(["--initial-cluster-token", "quorate-test", "--data-dir"])
        .arg(&data)
        .output()
        .expect("snapshot restore");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let db = data.join("member/snap/db");
    let bolt = Bolt::open(&db).expect("bbolt");
    let bucket = bolt.bucket(b"members").expect("read").expect("members");
    let mut listed = Vec::new();
    bolt.for_each(&bucket, &mut |_, v| {
        let m: serde_json::Value = serde_json::from_slice(v).expect("json");
        listed.push(m["name"].as_str().expect("name").to_owned());
    })
    .expect("walk");
    listed.sort();
    (root, db, listed)
}

#[test]
fn a_restored_data_dir_records_the_new_membership_on_etcd_35() {
    let (_root, db, listed) = restored(&etcd35(), "127.0.0.209");
    assert_eq!(listed, ["a", "b"]);
    let m = etcd_db::membership(&db).expect("membership");
    let mut names: Vec<(String, Vec<String>)> = m
        .members
        .iter()
        .map(|m| (m.name.clone(), m.peer_urls.clone()))
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            ("a".to_owned(), vec!["https://10.0.0.1:2380".to_owned()]),
            ("b".to_owned(), vec!["https://10.0.0.2:2380".to_owned()]),
        ]
    );
}

#[test]
fn a_restored_data_dir_of_etcd_34_still_lists_the_snapshots_members() {
    if let Some(etcd) = etcd34() {
        let (_root, db, listed) = restored(&etcd, "127.0.0.210");
        assert_eq!(listed, ["m1"], "why a 3.4 db is not trusted");
        let err = etcd_db::membership(&db).expect_err("3.4");
        assert!(err.to_string().contains("etcd 3.4"), "{err}");
    }
}

/// Describe on a member whose data dir real etcd wrote reports its role and the membership.
#[test]
fn describe_reports_the_membership_recorded_in_the_data_dir() {
    let etcd = etcd35();
    let ip = "127.0.0.211";
    let root = tempfile::tempdir().expect("tempdir");
    let mut members = start(&etcd, root.path(), &["cp-1"], &[ip]);
    wait_healthy(&etcd, ip);
    let live = member_list(&etcd, ip);
    members.stop();
    let m = common::Member::new();
    std::fs::copy(
        root.path().join("cp-1/member/snap/db"),
        m.data_dir().join("member/snap/db"),
    )
    .expect("copy the db");
    let d = quorate_agent::describe::describe(&m.engine()).expect("describe");
    assert_eq!(d.role, pb::AgentRole::EtcdMember as i32);
    assert!(
        d.recorded_members_error.is_empty(),
        "{}",
        d.recorded_members_error
    );
    let got: Vec<_> = d
        .recorded_members
        .iter()
        .map(|m| (m.id, m.name.clone(), m.peer_urls.clone()))
        .collect();
    assert_eq!(got, live);
    assert!(d.recorded_applied_index > 0);

    // A data dir without a db: the reason, not a failed Describe.
    std::fs::remove_file(m.data_dir().join("member/snap/db")).expect("rm");
    let d = quorate_agent::describe::describe(&m.engine()).expect("describe");
    assert!(d.recorded_members.is_empty());
    assert!(
        d.recorded_members_error.contains("member/snap/db"),
        "{}",
        d.recorded_members_error
    );
}
