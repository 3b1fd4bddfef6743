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

fn host_with(unit: &str, env: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let units = dir.path().join("etc/systemd/system");
    std::fs::create_dir_all(&units).expect("mkdir");
    let env_path = dir.path().join("etc/etcd.env");
    std::fs::write(&env_path, env).expect("env");
    let unit = unit.replace("/etc/etcd.env", &env_path.display().to_string());
    std::fs::write(units.join("etcd.service"), unit).expect("unit");
    (dir, units)
}

fn member(units: &Path) -> crate::manifest::EtcdMember {
    let unit = Unit::load(units, "etcd.service").expect("unit");
    let env = unit.environment().expect("env");
    let argv = unit.argv(&env);
    crate::manifest::EtcdMember::from_command(etcd_command(&unit, &argv, &env).expect("command"))
        .expect("member")
}

#[test]
fn kubespray_unit_and_env_file_give_the_member() {
    let (_dir, units) = host_with(KUBESPRAY_UNIT, KUBESPRAY_ENV);
    let unit = Unit::load(&units, "etcd.service").expect("unit");
    assert_eq!(unit.exec_start, ["/usr/local/bin/etcd"]);
    assert_eq!(unit.environment_files.len(), 1);
    let m = member(&units);
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
    let (_dir, units) = host_with(
        unit,
        "ETCD_NAME=ignored\nETCD_INITIAL_ADVERTISE_PEER_URLS=\"https://a:2380\"\n",
    );
    let u = Unit::load(&units, "etcd.service").expect("unit");
    let env = u.environment().expect("env");
    assert_eq!(
        u.argv(&env),
        ["/usr/bin/etcd", "--name=from-env", "--data-dir", "/d"]
    );
    let m = member(&units);
    assert_eq!(m.name, "from-env");
    assert_eq!(m.data_dir, PathBuf::from("/d"));
    assert_eq!(m.peer_urls, ["https://a:2380"]);
}

#[test]
fn drop_ins_override_exec_start() {
    let (_dir, units) = host_with(KUBESPRAY_UNIT, KUBESPRAY_ENV);
    let d = units.join("etcd.service.d");
    std::fs::create_dir_all(&d).expect("mkdir");
    std::fs::write(
        d.join("10-override.conf"),
        "[Service]\nExecStart=\nExecStart=/opt/etcd/etcd --name=override\n",
    )
    .expect("drop-in");
    assert_eq!(member(&units).name, "override");
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
    let (_d, units) = host_with(&unit, "ETCD_NAME=ignored\n");
    let m = member(&units);
    assert_eq!(m.name, "infra1");
    assert_eq!(m.data_dir, PathBuf::from("/var/lib/etcd/infra1"));
    assert_eq!(m.peer_urls, ["https://10.0.0.9:2380"]);
    assert_eq!(m.command.flag("snapshot-count"), Some("10000"));
    assert!(m.command.source.contains("etcd.conf.yml"));
}

#[test]
fn a_missing_unit_names_the_unit_and_the_dir() {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = Unit::load(dir.path(), "etcd.service")
        .expect_err("missing")
        .to_string();
    assert!(err.contains("etcd.service"), "{err}");
    assert!(err.contains(&dir.path().display().to_string()), "{err}");
    let (_d, units) = host_with("[Service]\nType=notify\n", "");
    let err = Unit::load(&units, "etcd.service")
        .expect_err("no ExecStart")
        .to_string();
    assert!(err.contains("ExecStart"), "{err}");
}

#[test]
fn env_file_syntax() {
    let env = parse_env_file(
        "# c\n; c\n  A=1\nexport B=two words\nC=\"quoted \\\"x\\\"\"\nD='single'\nnot a line\n",
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
    assert_eq!(get("D"), Some("single"));
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
