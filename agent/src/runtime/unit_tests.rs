use std::path::Path;

use super::*;

/// The unit kubespray installs for etcd on its etcd hosts.
const KUBESPRAY_UNIT: &str = "[Unit]
Description=etcd
After=network.target

[Service]
Type=notify
User=root
EnvironmentFile=/etc/etcd.env
ExecStart=/usr/local/bin/etcd
NotifyAccess=all
Restart=always
RestartSec=10s
LimitNOFILE=40000

[Install]
WantedBy=multi-user.target
";

/// The environment file kubespray writes (abridged).
pub const KUBESPRAY_ENV: &str = "# Environment file for etcd v3.5.1
ETCD_DATA_DIR=/var/lib/etcd
ETCD_ADVERTISE_CLIENT_URLS=https://10.0.0.1:2379
ETCD_INITIAL_ADVERTISE_PEER_URLS=https://10.0.0.1:2380
ETCD_INITIAL_CLUSTER_STATE=existing
ETCD_METRICS=basic
ETCD_LISTEN_CLIENT_URLS=https://10.0.0.1:2379,https://127.0.0.1:2379
ETCD_ELECTION_TIMEOUT=5000
ETCD_HEARTBEAT_INTERVAL=250
ETCD_INITIAL_CLUSTER_TOKEN=k8s_etcd
ETCD_LISTEN_PEER_URLS=https://10.0.0.1:2380
ETCD_NAME=etcd1
ETCD_PROXY=off
ETCD_INITIAL_CLUSTER=etcd1=https://10.0.0.1:2380,etcd2=https://10.0.0.2:2380,etcd3=https://10.0.0.3:2380
ETCD_AUTO_COMPACTION_RETENTION=8
ETCD_LISTEN_METRICS_URLS=http://10.0.0.1:2381

# TLS settings
ETCD_TRUSTED_CA_FILE=/etc/ssl/etcd/ssl/ca.pem
ETCD_CERT_FILE=/etc/ssl/etcd/ssl/member-node1.pem
ETCD_KEY_FILE=/etc/ssl/etcd/ssl/member-node1-key.pem
ETCD_CLIENT_CERT_AUTH=true
";

/// Fixed facts, so that host specifiers are deterministic.
pub fn facts() -> HostFacts {
    HostFacts {
        hostname: Some("node1.example.com".into()),
        machine_id: Some("0123456789abcdef0123456789abcdef".into()),
        boot_id: Some("fedcba9876543210fedcba9876543210".into()),
        kernel_release: Some("6.1.0-test".into()),
    }
}

/// A host root with `etc/etcd.env` and `unit` as `etc/systemd/system/etcd.service` (the env
/// file's path in the unit points into the root).
fn host_with(unit: &str, env: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let units = dir.path().join("etc/systemd/system");
    std::fs::create_dir_all(&units).expect("mkdir");
    let env_path = dir.path().join("etc/etcd.env");
    std::fs::write(&env_path, env).expect("env");
    let unit = unit.replace("/etc/etcd.env", &env_path.display().to_string());
    std::fs::write(units.join("etcd.service"), unit).expect("unit");
    let root = dir.path().to_owned();
    (dir, root)
}

fn load(root: &Path, name: &str) -> Result<Unit> {
    Unit::load(&UnitSource::Root(root.to_owned()), name, &facts())
}

fn member(root: &Path) -> crate::manifest::EtcdMember {
    let unit = load(root, "etcd.service").expect("unit");
    let env = unit.environment().expect("env");
    let argv = unit.argv(&env);
    crate::manifest::EtcdMember::from_command(etcd_command(&unit, &argv, &env).expect("command"))
        .expect("member")
}

/// A unit of `[Service]` lines alone at `root`'s /etc/systemd/system/`name`.
fn write_unit(root: &Path, name: &str, service: &str) {
    let dir = root.join("etc/systemd/system");
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(dir.join(name), format!("[Service]\n{service}\n")).expect("unit");
}

#[test]
fn kubespray_unit_and_env_file_give_the_member() {
    let (_dir, root) = host_with(KUBESPRAY_UNIT, KUBESPRAY_ENV);
    let unit = load(&root, "etcd.service").expect("unit");
    assert_eq!(unit.exec_start().argv, ["/usr/local/bin/etcd"]);
    assert_eq!(unit.environment_files.len(), 1);
    let m = member(&root);
    assert_eq!(m.name, "etcd1");
    assert_eq!(m.data_dir, PathBuf::from("/var/lib/etcd"));
    assert_eq!(m.peer_urls, ["https://10.0.0.1:2380"]);
    assert_eq!(m.client_urls, ["https://10.0.0.1:2379"]);
    assert_eq!(m.metrics_url.as_deref(), Some("http://10.0.0.1:2381"));
    assert_eq!(m.command.argv[0], "/usr/local/bin/etcd");
    assert_eq!(
        m.command.flag("initial-cluster-token"),
        Some("k8s_etcd"),
        "{:?}",
        m.command.argv
    );
    assert_eq!(m.ports().len(), 4);
    assert!(m.command.source.contains("etcd.service"));
}

#[test]
fn flags_on_exec_start_win_over_variables_and_variables_expand() {
    let unit = "[Service]\nEnvironment=\"NAME=from-env\" DATA=/d\nEnvironmentFile=-/nonexistent/optional.env\nEnvironmentFile=/etc/etcd.env\nExecStart=-/usr/bin/etcd --name=${NAME} \\\n  --data-dir $DATA\n";
    let (_dir, root) = host_with(
        unit,
        "ETCD_NAME=ignored\nETCD_INITIAL_ADVERTISE_PEER_URLS=\"https://a:2380\"\n",
    );
    let u = load(&root, "etcd.service").expect("unit");
    let env = u.environment().expect("env");
    assert_eq!(
        u.argv(&env),
        ["/usr/bin/etcd", "--name=from-env", "--data-dir", "/d"]
    );
    assert!(u.exec_start().ignore_failure);
    let m = member(&root);
    assert_eq!(m.name, "from-env");
    assert_eq!(m.data_dir, PathBuf::from("/d"));
    assert_eq!(m.peer_urls, ["https://a:2380"]);
}

#[test]
fn config_file_replaces_flags_and_variables() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("etcd.conf.yml");
    std::fs::write(
        &config,
        "name: 'infra1'\ndata-dir: /var/lib/etcd/infra1\ninitial-advertise-peer-urls: https://10.0.0.9:2380\nlisten-client-urls: https://10.0.0.9:2379\ninitial-cluster-token: etcd-cluster-1\nclient-transport-security:\n  client-cert-auth: true\nsnapshot-count: 10000\n",
    )
    .expect("config");
    let unit = format!(
        "[Service]\nExecStart=/usr/bin/etcd --config-file {}\n",
        config.display()
    );
    let (_d, root) = host_with(&unit, "ETCD_NAME=ignored\n");
    let m = member(&root);
    assert_eq!(m.name, "infra1");
    assert_eq!(m.data_dir, PathBuf::from("/var/lib/etcd/infra1"));
    assert_eq!(m.peer_urls, ["https://10.0.0.9:2380"]);
    assert_eq!(m.command.flag("snapshot-count"), Some("10000"));
    assert!(m.command.source.contains("etcd.conf.yml"));
}

#[test]
fn a_unit_without_one_exec_start_is_refused_naming_its_files() {
    let (_d, root) = host_with("[Service]\nType=notify\n", "");
    let err = load(&root, "etcd.service")
        .expect_err("no ExecStart")
        .to_string();
    assert!(
        err.contains("ExecStart") && err.contains("etcd.service"),
        "{err}"
    );
    // Reset by an empty assignment in a drop-in.
    let (_d, root) = host_with(KUBESPRAY_UNIT, KUBESPRAY_ENV);
    let d = root.join("etc/systemd/system/etcd.service.d");
    std::fs::create_dir_all(&d).expect("mkdir");
    std::fs::write(d.join("10-reset.conf"), "[Service]\nExecStart=\n").expect("drop-in");
    let err = load(&root, "etcd.service").expect_err("reset").to_string();
    assert!(err.contains("10-reset.conf"), "{err}");
    // Two commands (systemd allows that only for Type=oneshot).
    std::fs::write(
        d.join("10-reset.conf"),
        "[Service]\nExecStart=/bin/true ; /usr/bin/etcd\n",
    )
    .expect("drop-in");
    let err = load(&root, "etcd.service").expect_err("two").to_string();
    assert!(err.contains("3 ExecStart= commands"), "{err}");
}

#[test]
fn exec_start_prefixes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    /// ExecStart=, argv as started, program, ignore failure, no expansion, privileges.
    type Case<'a> = (&'a str, &'a [&'a str], &'a str, bool, bool, Option<&'a str>);
    let cases: [Case<'_>; 6] = [
        (
            "-/usr/bin/etcd --name=$N",
            &["/usr/bin/etcd", "--name=$N"],
            "/usr/bin/etcd",
            true,
            false,
            None,
        ),
        (
            "@/usr/bin/etcd etcd-main --x",
            &["etcd-main", "--x"],
            "/usr/bin/etcd",
            false,
            false,
            None,
        ),
        (
            ":/usr/bin/etcd $N ${N}",
            &["/usr/bin/etcd", "$N", "${N}"],
            "/usr/bin/etcd",
            false,
            true,
            None,
        ),
        (
            "+/usr/bin/etcd",
            &["/usr/bin/etcd"],
            "/usr/bin/etcd",
            false,
            false,
            Some("+"),
        ),
        (
            "!!-@/usr/bin/etcd e",
            &["e"],
            "/usr/bin/etcd",
            true,
            false,
            Some("!!"),
        ),
        (
            "-:@+/opt/etcd a1 b",
            &["a1", "b"],
            "/opt/etcd",
            true,
            true,
            Some("+"),
        ),
    ];
    for (exec, argv, program, ignore, no_expand, privileges) in cases {
        write_unit(root, "etcd.service", &format!("ExecStart={exec}"));
        let u = load(root, "etcd.service").expect(exec);
        let e = u.exec_start();
        assert_eq!(e.argv, argv, "{exec}");
        assert_eq!(e.program, program, "{exec}");
        assert_eq!(e.ignore_failure, ignore, "{exec}");
        assert_eq!(e.no_env_expand, no_expand, "{exec}");
        assert_eq!(e.privileges.as_deref(), privileges, "{exec}");
    }
    // `:` keeps $VAR as written; without it, $VAR splits and ${VAR} does not.
    let env = vec![("N".to_owned(), "a b".to_owned())];
    write_unit(root, "etcd.service", "ExecStart=:/usr/bin/etcd $N ${N} $$");
    let u = load(root, "etcd.service").expect("no expansion");
    assert_eq!(u.argv(&env), ["/usr/bin/etcd", "$N", "${N}", "$$"]);
    write_unit(
        root,
        "etcd.service",
        "ExecStart=/usr/bin/etcd $N x${N}y $$N $UNSET \"$N\" a$N",
    );
    let u = load(root, "etcd.service").expect("expansion");
    assert_eq!(
        u.argv(&env),
        ["/usr/bin/etcd", "a", "b", "xa by", "$N", "a", "b", "a$N"]
    );
    // With @, the process shows the given argv[0]; the flags and the program are still etcd's.
    write_unit(
        root,
        "etcd.service",
        "ExecStart=@/usr/bin/etcd etcd-main --name=m1 --data-dir=/d --initial-advertise-peer-urls=https://a:2380",
    );
    let u = load(root, "etcd.service").expect("@");
    let argv = u.argv(&[]);
    assert_eq!(argv[0], "etcd-main");
    let cmd = etcd_command(&u, &argv, &[]).expect("command");
    assert_eq!(cmd.argv[0], "/usr/bin/etcd");
    assert_eq!(cmd.flag("name"), Some("m1"));
    // A bare program name is looked up in systemd's fixed PATH.
    write_unit(root, "etcd.service", "ExecStart=sh -c true");
    let u = load(root, "etcd.service").expect("bare");
    assert_eq!(u.exec_start().argv[0], "sh");
    assert!(
        u.program().ends_with("/sh") && u.program().starts_with('/'),
        "{}",
        u.program()
    );
    for bad in [
        "ExecStart=-",
        "ExecStart=@/usr/bin/etcd",
        "ExecStart=/usr/bin/etcd \"open",
    ] {
        write_unit(root, "etcd.service", bad);
        let err = load(root, "etcd.service").expect_err(bad).to_string();
        assert!(
            err.contains("etcd.service") && err.contains("fix the line"),
            "{bad}: {err}"
        );
    }
}

#[test]
fn words_quotes_and_escapes_as_systemd_reads_them() {
    assert_eq!(
        split_words(r#"a "b c" 'd e' f"g h"i \x41\s\t \"q\" "\\""#).expect("words"),
        ["a", "b c", "d e", "fg hi", "A \t", "\"q\"", "\\"]
    );
    assert!(split_words("\"open").is_err());
    assert!(split_words("bad\\q").is_err());
    assert!(split_words("end\\").is_err());
    // A ; alone separates commands; \; is a literal ;.
    let dir = tempfile::tempdir().expect("tempdir");
    write_unit(
        dir.path(),
        "x.service",
        "Type=oneshot\nExecStart=/bin/a \\; b ; /bin/c",
    );
    let err = load(dir.path(), "x.service").expect_err("two").to_string();
    assert!(err.contains("2 ExecStart="), "{err}");
}

#[test]
fn specifiers_on_exec_start_environment_and_environment_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    write_unit(
        root,
        "etcd@a\\x2db-c.service",
        "Environment=\"ALL=%n|%N|%p|%P|%i|%I|%j|%J|%f|%H|%l|%m|%b|%v|%t|%S|%C|%L|%E|%T|%V|%u|%U|%g|%G|%%\"\n\
         EnvironmentFile=-%E/etcd/%i.env\n\
         ExecStart=/usr/bin/etcd --name=%i --data-dir=%S/etcd/%I --host=%H --unit=%n --y=%y",
    );
    let u = load(root, "etcd@a\\x2db-c.service").expect("instance");
    let fragment = root.join("etc/systemd/system/etcd@a\\x2db-c.service");
    assert_eq!(
        u.environment,
        [(
            "ALL".to_owned(),
            "etcd@a\\x2db-c.service|etcd@a\\x2db-c|etcd|etcd|a\\x2db-c|a-b/c|etcd|etcd|/a-b/c|\
             node1.example.com|node1|0123456789abcdef0123456789abcdef|\
             fedcba9876543210fedcba9876543210|6.1.0-test|/run|/var/lib|/var/cache|/var/log|/etc|\
             /tmp|/var/tmp|root|0|root|0|%"
                .to_owned()
        )]
    );
    assert_eq!(
        u.environment_files,
        [(PathBuf::from("/etc/etcd/a\\x2db-c.env"), true)]
    );
    assert_eq!(
        u.exec_start().argv,
        [
            "/usr/bin/etcd".to_owned(),
            "--name=a\\x2db-c".into(),
            "--data-dir=/var/lib/etcd/a-b/c".into(),
            "--host=node1.example.com".into(),
            "--unit=etcd@a\\x2db-c.service".into(),
            format!(
                "--y={}",
                std::fs::canonicalize(&fragment)
                    .expect("fragment")
                    .display()
            ),
        ]
    );
    // %j is the last dash-separated part of the prefix.
    write_unit(
        root,
        "kube-etcd-main.service",
        "ExecStart=/usr/bin/etcd %j %J %p %f",
    );
    let u = load(root, "kube-etcd-main.service").expect("dashes");
    assert_eq!(
        u.exec_start().argv,
        [
            "/usr/bin/etcd",
            "main",
            "main",
            "kube-etcd-main",
            "/kube/etcd/main"
        ]
    );
    // Unknown or unresolvable specifiers are refused, naming the specifier and the line.
    for (line, says) in [
        ("ExecStart=/usr/bin/etcd --x=%q", "%q"),
        ("Environment=A=%o", "%o"),
        ("Environment=A=%h", "%h"),
        ("ExecStart=/usr/bin/etcd 100%", "lone %"),
    ] {
        write_unit(root, "etcd.service", line);
        let err = load(root, "etcd.service").expect_err(line).to_string();
        assert!(
            err.contains(says) && err.contains("etcd.service"),
            "{line}: {err}"
        );
    }
    write_unit(root, "etcd.service", "ExecStart=/usr/bin/etcd --name=%H");
    let no_host = HostFacts::default();
    let err = Unit::load(&UnitSource::Root(root.to_owned()), "etcd.service", &no_host)
        .expect_err("no hostname")
        .to_string();
    assert!(err.contains("%H") && err.contains("hostname"), "{err}");
}

#[test]
fn environment_assignments_replace_in_place_and_reset() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let env_file = root.join("e.env");
    std::fs::write(&env_file, "B=from-file\nC=3\n").expect("env");
    write_unit(
        root,
        "etcd.service",
        &format!(
            "Environment=A=1 B=2\nEnvironment=\"A=one two\" not-an-assignment\nEnvironmentFile={}\nExecStart=/usr/bin/etcd",
            env_file.display()
        ),
    );
    let u = load(root, "etcd.service").expect("unit");
    assert_eq!(
        u.environment,
        [
            ("A".to_owned(), "one two".to_owned()),
            ("B".into(), "2".into())
        ]
    );
    assert_eq!(
        u.environment().expect("env"),
        [
            ("A".to_owned(), "one two".to_owned()),
            ("B".into(), "from-file".into()),
            ("C".into(), "3".into())
        ]
    );
    write_unit(
        root,
        "etcd.service",
        "Environment=A=1\nEnvironment=\nEnvironmentFile=/nonexistent\nEnvironmentFile=\nExecStart=/usr/bin/etcd",
    );
    let u = load(root, "etcd.service").expect("reset");
    assert!(
        u.environment.is_empty() && u.environment_files.is_empty(),
        "{u:?}"
    );
    write_unit(
        root,
        "etcd.service",
        "EnvironmentFile=relative.env\nExecStart=/usr/bin/etcd",
    );
    let err = load(root, "etcd.service")
        .expect_err("relative")
        .to_string();
    assert!(err.contains("absolute"), "{err}");
    // A required environment file that is missing fails when the environment is read.
    write_unit(
        root,
        "etcd.service",
        "EnvironmentFile=/nonexistent/etcd.env\nExecStart=/usr/bin/etcd",
    );
    let err = load(root, "etcd.service")
        .expect("loads")
        .environment()
        .expect_err("missing")
        .to_string();
    assert!(err.contains("/nonexistent/etcd.env"), "{err}");
}

#[test]
fn env_file_syntax() {
    let env = parse_env_file(
        "# c\n; c\n  A=1\nexport B=two words\nC=\"quoted \\\"x\\\"\"\nD='single \\n'\nE=\"a\\\\b\"\nnot a line\n",
    );
    let get = |k: &str| {
        env.iter()
            .rev()
            .find(|(kk, _)| kk == k)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(get("A"), Some("1"));
    assert_eq!(get("B"), Some("two words"));
    assert_eq!(get("C"), Some("quoted \"x\""));
    assert_eq!(get("D"), Some("single \\n"));
    assert_eq!(get("E"), Some("a\\b"));
    assert_eq!(
        etcd_flag_of_env("ETCD_INITIAL_CLUSTER_TOKEN").as_deref(),
        Some("initial-cluster-token")
    );
    assert_eq!(etcd_flag_of_env("ETCDCTL_API"), None);
    assert_eq!(
        etcd_env_of_flag("listen-metrics-urls"),
        "ETCD_LISTEN_METRICS_URLS"
    );
}

#[test]
fn continuation_lines_and_comments() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_unit(
        dir.path(),
        "etcd.service",
        "ExecStart=/usr/bin/etcd \\\n# a comment inside\n  --a=1 \\\n  --b=2\n[Install]\nExecStart=/not/this",
    );
    let u = load(dir.path(), "etcd.service").expect("unit");
    assert_eq!(u.exec_start().argv, ["/usr/bin/etcd", "--a=1", "--b=2"]);
}
