//! systemd's view through a `systemctl` that answers `show` as systemd 252 does.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use super::*;

fn facts() -> HostFacts {
    HostFacts {
        hostname: Some("node1".into()),
        ..HostFacts::default()
    }
}

fn runner() -> Runner {
    Runner::new(crate::child::Limits::default(), "member m1")
}

/// A `systemctl` that prints `show` for any unit, or fails with `exit`.
fn systemctl(dir: &Path, show: &str, exit: i32) -> PathBuf {
    let path = dir.join("systemctl");
    std::fs::write(
        &path,
        format!("#!/bin/sh\ncat <<'SHOW'\n{show}SHOW\necho 'systemctl failed' >&2\nexit {exit}\n"),
    )
    .expect("systemctl");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

fn put(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(path, text).expect("write");
}

/// `systemctl show` for a unit with this fragment, drop-ins and command.
fn show(fragment: &Path, drop_ins: &[&Path], path: &str, argv: &str, extra: &str) -> String {
    let drop_ins: Vec<String> = drop_ins.iter().map(|p| p.display().to_string()).collect();
    format!(
        "ExecStart={{ path={path} ; argv[]={argv} ; ignore_errors=no ; start_time=[n/a] ; stop_time=[n/a] ; pid=0 ; code=(null) ; status=0/0 }}\n\
         Id=etcd@m1.service\nLoadState=loaded\nFragmentPath={}\nDropInPaths={}\n{extra}",
        fragment.display(),
        drop_ins.join(" ")
    )
}

#[test]
fn parses_systemctl_show() {
    let shown = parse_show(
        "Id=etcd.service\nLoadState=loaded\nFragmentPath=/lib/systemd/system/etcd.service\n\
         DropInPaths=/etc/systemd/system/etcd.service.d/a.conf /run/systemd/system/etcd.service.d/b.conf\n\
         NeedDaemonReload=no\n\
         ExecStart={ path=/usr/bin/etcd ; argv[]=/usr/bin/etcd --name a ; ignore_errors=no ; start_time=[n/a] ; stop_time=[n/a] ; pid=0 ; code=(null) ; status=0/0 }\n",
    );
    assert_eq!(shown.id, "etcd.service");
    assert_eq!(shown.load_state, "loaded");
    assert_eq!(
        shown.fragment.as_deref(),
        Some(Path::new("/lib/systemd/system/etcd.service"))
    );
    assert_eq!(shown.drop_ins.len(), 2);
    assert!(!shown.need_reload);
    assert_eq!(
        shown.exec,
        [(
            "/usr/bin/etcd".to_owned(),
            "/usr/bin/etcd --name a".to_owned()
        )]
    );
    // The ExecStartEx form, and an empty FragmentPath.
    let shown = parse_show(
        "FragmentPath=\nExecStart={ path=/bin/x ; argv[]=x -y ; flags=ignore-failure ; start_time=[n/a] }\n",
    );
    assert_eq!(shown.fragment, None);
    assert_eq!(shown.exec, [("/bin/x".to_owned(), "x -y".to_owned())]);
}

#[test]
fn systemds_files_are_the_truth_where_systemd_answers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let fragment = root.join("usr/lib/systemd/system/etcd@.service");
    put(&fragment, "[Service]\nExecStart=/usr/bin/etcd --name=%i\n");
    let listed = root.join("etc/systemd/system/etcd@m1.service.d/10-listed.conf");
    put(&listed, "[Service]\nEnvironment=LISTED=1\n");
    // On disk, but not in systemd's list: systemd does not apply it, so neither does the agent.
    put(
        &root.join("run/systemd/system/etcd@.service.d/20-unlisted.conf"),
        "[Service]\nEnvironment=UNLISTED=1\n",
    );
    let source = UnitSource::Root(root.to_owned());
    let ctl = systemctl(
        root,
        &show(
            &fragment,
            &[&listed],
            "/usr/bin/etcd",
            "/usr/bin/etcd --name=m1",
            "NeedDaemonReload=no\n",
        ),
        0,
    );
    let unit = load_unit(
        &source,
        "etcd@m1.service",
        Some((ctl.as_path(), &runner())),
        &facts(),
    )
    .expect("unit");
    assert_eq!(unit.resolved_by, "systemd (systemctl show)");
    assert_eq!(unit.drop_ins, std::slice::from_ref(&listed));
    assert_eq!(unit.environment, [("LISTED".to_owned(), "1".to_owned())]);
    assert_eq!(unit.exec_start().argv, ["/usr/bin/etcd", "--name=m1"]);
    // The search path alone would apply both drop-ins.
    let parsed = load_unit(&source, "etcd@m1.service", None, &facts()).expect("parsed");
    assert_eq!(parsed.drop_ins.len(), 2);
    // A systemctl that cannot answer: the search path is read instead.
    let failing = systemctl(root, "", 1);
    let fallback = load_unit(
        &source,
        "etcd@m1.service",
        Some((failing.as_path(), &runner())),
        &facts(),
    )
    .expect("fallback");
    assert_eq!(
        fallback.resolved_by,
        format!("systemd's search path under {}", root.display())
    );
    // A systemctl that hangs is killed at its deadline, and the unit is not read at all: systemd
    // is in trouble, and its files may not be what it runs.
    let hung = root.join("hung-systemctl");
    std::fs::write(&hung, "#!/bin/sh\nsleep 30\n").expect("hung");
    std::fs::set_permissions(&hung, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let quick = Runner::new(
        crate::child::Limits {
            systemctl: std::time::Duration::from_millis(300),
            ..crate::child::Limits::default()
        },
        "member m1",
    );
    let started = std::time::Instant::now();
    let err = load_unit(&source, "etcd@m1.service", Some((&hung, &quick)), &facts())
        .expect_err("hung systemctl");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    assert_eq!(err.code(), tonic::Code::DeadlineExceeded);
    let text = err.to_string();
    assert!(
        text.contains("show --property") && text.contains("member m1") && text.contains("300ms"),
        "{text}"
    );
}

#[test]
fn systemds_refusals_name_the_unit_and_the_fix() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let fragment = root.join("etc/systemd/system/etcd@.service");
    put(&fragment, "[Service]\nExecStart=/usr/bin/etcd --name=%i\n");
    let source = UnitSource::Root(root.to_owned());
    let ok = |extra: &str| {
        show(
            &fragment,
            &[],
            "/usr/bin/etcd",
            "/usr/bin/etcd --name=m1",
            extra,
        )
    };
    let cases = [
        (ok("NeedDaemonReload=yes\n"), "daemon-reload"),
        (
            ok("").replace("LoadState=loaded", "LoadState=masked"),
            "systemctl unmask",
        ),
        (
            ok("").replace("LoadState=loaded", "LoadState=not-found"),
            "LoadState=not-found",
        ),
        (
            ok("").replace("LoadState=loaded", "LoadState=bad-setting"),
            "LoadState=bad-setting",
        ),
        (
            show(
                &fragment,
                &[],
                "/usr/bin/etcd",
                "/usr/bin/etcd --name=old",
                "",
            ),
            "--name=old",
        ),
        (
            show(
                &fragment,
                &[],
                "/usr/bin/etcd",
                "/usr/bin/etcd --name=m1",
                "",
            )
            .replace(
                &format!("FragmentPath={}", fragment.display()),
                "FragmentPath=",
            ),
            "without a unit file",
        ),
    ];
    for (text, says) in cases {
        let ctl = systemctl(root, &text, 0);
        let err = load_unit(
            &source,
            "etcd@m1.service",
            Some((ctl.as_path(), &runner())),
            &facts(),
        )
        .expect_err(says)
        .to_string();
        assert!(
            err.contains(says) && err.contains("etcd@m1.service"),
            "{says}: {err}"
        );
    }
}

/// A controller unit counts as present when systemd knows it (or, without systemd, when its file
/// is on the search path); not when systemd says not-found or masked.
#[test]
fn unit_exists_asks_systemd_then_the_search_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("root");
    put(
        &root.join("usr/lib/systemd/system/kube-scheduler.service"),
        "[Service]\nExecStart=/usr/bin/kube-scheduler\n",
    );
    let source = UnitSource::Root(root);
    assert!(unit_exists(&source, "kube-scheduler.service", None));
    assert!(!unit_exists(
        &source,
        "kube-controller-manager.service",
        None
    ));
    for (state, exists) in [("loaded", true), ("not-found", false), ("masked", false)] {
        let sub = dir.path().join(state);
        std::fs::create_dir_all(&sub).expect("mkdir");
        let show = format!("Id=kube-controller-manager.service\nLoadState={state}\n");
        let systemctl = systemctl(&sub, &show, 0);
        assert_eq!(
            unit_exists(
                &source,
                "kube-controller-manager.service",
                Some((&systemctl, &runner()))
            ),
            exists,
            "{state}"
        );
    }
    // A systemctl that cannot answer: the search path decides.
    let broken = systemctl(dir.path(), "", 1);
    assert!(unit_exists(
        &source,
        "kube-scheduler.service",
        Some((&broken, &runner()))
    ));
}
