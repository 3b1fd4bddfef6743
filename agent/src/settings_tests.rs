use std::os::unix::fs::PermissionsExt as _;

use super::*;

const TOKEN: &str = "quorate-0b7e";
const CLUSTER: &str = "etcd1=https://10.0.0.1:2380,etcd2=https://10.0.0.2:2380";

fn values() -> [(&'static str, &'static str); 2] {
    [(CLUSTER_TOKEN, TOKEN), (INITIAL_CLUSTER, CLUSTER)]
}

#[test]
fn env_file_keeps_every_other_byte() {
    let text = "# kubespray\nETCD_NAME=etcd1\nETCD_INITIAL_CLUSTER_TOKEN=k8s_etcd\r\nexport ETCD_INITIAL_CLUSTER=\"old\"\n\nETCD_INITIAL_CLUSTER_STATE=existing\n# ETCD_INITIAL_CLUSTER_TOKEN=commented\nETCD_INITIAL_CLUSTER_TOKEN='again'";
    let (new, keys) =
        rewrite(text, SettingsFormat::Env, &values(), Path::new("/e")).expect("rewrite");
    assert_eq!(keys, ["ETCD_INITIAL_CLUSTER_TOKEN", "ETCD_INITIAL_CLUSTER"]);
    assert_eq!(
        new,
        format!(
            "# kubespray\nETCD_NAME=etcd1\nETCD_INITIAL_CLUSTER_TOKEN={TOKEN}\r\nexport ETCD_INITIAL_CLUSTER=\"{CLUSTER}\"\n\nETCD_INITIAL_CLUSTER_STATE=existing\n# ETCD_INITIAL_CLUSTER_TOKEN=commented\nETCD_INITIAL_CLUSTER_TOKEN='{TOKEN}'"
        )
    );
    let env = crate::runtime::unit::parse_env_file(&new);
    assert!(env.contains(&("ETCD_INITIAL_CLUSTER".into(), CLUSTER.into())));
    let (same, _) = rewrite(&new, SettingsFormat::Env, &values(), Path::new("/e")).expect("again");
    assert_eq!(same, new, "rewriting is idempotent");
    let (untouched, keys) = rewrite(
        "ETCD_NAME=x\n",
        SettingsFormat::Env,
        &values(),
        Path::new("/e"),
    )
    .expect("none");
    assert!(keys.is_empty());
    assert_eq!(untouched, "ETCD_NAME=x\n");
    let err = rewrite(
        "ETCD_INITIAL_CLUSTER=a,\\\nb\n",
        SettingsFormat::Env,
        &values(),
        Path::new("/etc/etcd.env"),
    )
    .expect_err("continued line")
    .to_string();
    assert!(err.contains("/etc/etcd.env"), "{err}");
}

#[test]
fn config_file_is_rewritten_and_checked() {
    let text = "name: infra1\n# the token\ninitial-cluster-token: etcd-cluster-1\ninitial-cluster: infra1=https://10.0.0.9:2380\nclient-transport-security:\n  cert-file: /c\n";
    let (new, keys) = rewrite(
        text,
        SettingsFormat::EtcdYaml,
        &values(),
        Path::new("/c.yml"),
    )
    .expect("rewrite");
    assert_eq!(keys, [CLUSTER_TOKEN, INITIAL_CLUSTER]);
    assert!(
        new.contains(&format!("initial-cluster-token: '{TOKEN}'\n")),
        "{new}"
    );
    assert!(new.starts_with("name: infra1\n# the token\n"));
    assert!(new.ends_with("client-transport-security:\n  cert-file: /c\n"));
    let block = "initial-cluster: >\n  a=b\nname: x\n";
    assert!(
        rewrite(
            block,
            SettingsFormat::EtcdYaml,
            &values(),
            Path::new("/c.yml")
        )
        .is_err()
    );
}

#[test]
fn apply_and_revert_restore_the_original_bytes_owner_and_mode() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("etc/etcd.env");
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    let original = "ETCD_NAME=etcd1\nETCD_INITIAL_CLUSTER_TOKEN=k8s_etcd\nETCD_INITIAL_CLUSTER=etcd1=https://10.0.0.1:2380\n";
    std::fs::write(&path, original).expect("write");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).expect("chmod");
    let file = SettingsFile {
        path: path.clone(),
        format: SettingsFormat::Env,
    };
    let copy = original_copy(&dir.path().join("state/restores/x"), 0, &path);
    keep_original(&file, &copy).expect("keep");
    let keys = apply(&file, &values()).expect("apply");
    assert_eq!(keys.len(), 2);
    let now = std::fs::read_to_string(&path).expect("read");
    assert!(now.contains(&format!("ETCD_INITIAL_CLUSTER_TOKEN={TOKEN}\n")));
    let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
    assert_eq!(mode, 0o640, "the mode is kept");
    // A repeated step keeps the first copy: the original, not the edit.
    keep_original(&file, &copy).expect("keep again");
    assert_eq!(std::fs::read_to_string(&copy).expect("copy"), original);
    let leftovers: Vec<_> = std::fs::read_dir(path.parent().expect("parent"))
        .expect("ls")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "no temp file left: {leftovers:?}");

    let edit = FileEdit {
        path: path.clone(),
        format: SettingsFormat::Env,
        original: copy,
        keys,
        owner: Some(owner_of(&path).expect("owner")),
    };
    assert!(revert(&edit).expect("revert"));
    assert_eq!(std::fs::read_to_string(&path).expect("read"), original);
    let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
    assert_eq!(mode, 0o640);
    assert!(!revert(&edit).expect("revert again"), "nothing to do twice");
}

/// A 0600 root-owned file and a 0644 file of another user and group keep their owner and mode
/// through the rewrite, the revert, and a revert that finds the file gone; the kept original is
/// private to the agent.
#[test]
fn owner_and_mode_survive_apply_and_revert() {
    use std::os::unix::fs::MetadataExt as _;
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("SKIPPED: changing a file's owner needs root");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let text = "ETCD_NAME=etcd1\nETCD_INITIAL_CLUSTER_TOKEN=k8s_etcd\n";
    let stat = |p: &Path| {
        let m = std::fs::metadata(p).expect("stat");
        (m.uid(), m.gid(), m.mode() & 0o7777)
    };
    for (name, (uid, gid, mode)) in [
        ("root.env", (0, 0, 0o600)),
        ("other.env", (1234, 5678, 0o644)),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("write");
        std::os::unix::fs::chown(&path, Some(uid), Some(gid)).expect("chown");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
        let file = SettingsFile {
            path: path.clone(),
            format: SettingsFormat::Env,
        };
        let copy = original_copy(&dir.path().join("state/restores/x"), 0, &path);
        keep_original(&file, &copy).expect("keep");
        let owner = owner_of(&path).expect("owner");
        let keys = apply(&file, &values()).expect("apply");
        assert_eq!(keys, ["ETCD_INITIAL_CLUSTER_TOKEN"]);
        assert_eq!(stat(&path), (uid, gid, mode), "{name} after the rewrite");
        assert_eq!(stat(&copy).2, 0o600, "the kept original is private");
        assert_eq!(stat(copy.parent().expect("dir")).2, 0o700);
        let edit = FileEdit {
            path: path.clone(),
            format: SettingsFormat::Env,
            original: copy,
            keys,
            owner: Some(owner),
        };
        assert!(revert(&edit).expect("revert"));
        assert_eq!(std::fs::read_to_string(&path).expect("read"), text);
        assert_eq!(stat(&path), (uid, gid, mode), "{name} after the revert");
        std::fs::remove_file(&path).expect("remove");
        assert!(revert(&edit).expect("revert a removed file"));
        assert_eq!(std::fs::read_to_string(&path).expect("read"), text);
        assert_eq!(
            stat(&path),
            (uid, gid, mode),
            "{name} put back after removal"
        );
    }
}

/// Values a POSIX shell or systemd would read differently if written bare: each one, written
/// into a file that had it bare, single- or double-quoted, reads back exactly from `sh -c '.
/// file'` (dash and bash) and from the agent's reading of systemd's `EnvironmentFile=` rules,
/// and runs nothing.
#[test]
fn env_values_read_back_exactly_from_sh_and_systemd_rules_and_run_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let marker = dir.path().join("ran");
    let m = marker.display().to_string();
    let hostile = [
        "quorate-0b7e2c1a-5f0e-4d7e-9a1b-2c3d4e5f6a7b".to_owned(),
        CLUSTER.to_owned(),
        "a=https://[fd00::1]:2380".to_owned(),
        format!("a;touch {m}"),
        format!("$(touch {m})"),
        format!("`touch {m}`"),
        format!("a'b;touch {m}"),
        format!("a\"b$(touch {m})\\"),
        format!("x' ; touch {m} ; '"),
        "~/x".to_owned(),
        "a b  c".to_owned(),
        "#x".to_owned(),
        "*".to_owned(),
        "\\n\\".to_owned(),
        "${HOME}".to_owned(),
        String::new(),
        "ł".to_owned(),
    ];
    let shells: Vec<&str> = ["/bin/sh", "/usr/bin/dash", "/bin/bash"]
        .into_iter()
        .filter(|s| Path::new(s).exists())
        .collect();
    assert!(!shells.is_empty(), "no POSIX shell here");
    let originals = [
        "ETCD_INITIAL_CLUSTER=old\nexport ETCD_INITIAL_CLUSTER_TOKEN='old'\n",
        "ETCD_INITIAL_CLUSTER='old'\nETCD_INITIAL_CLUSTER_TOKEN=\"old\"\n",
        "ETCD_INITIAL_CLUSTER=\"old\"\nETCD_INITIAL_CLUSTER_TOKEN=old\n",
    ];
    let file = dir.path().join("etcd.env");
    for value in &hostile {
        for original in originals {
            let (new, keys) = rewrite(
                original,
                SettingsFormat::Env,
                &[(CLUSTER_TOKEN, value), (INITIAL_CLUSTER, value)],
                &file,
            )
            .unwrap_or_else(|e| panic!("{value:?}: {e}"));
            assert_eq!(keys.len(), 2, "{value:?}");
            std::fs::write(&file, &new).expect("write");
            let systemd = crate::runtime::unit::parse_env_file(&new);
            for key in ["ETCD_INITIAL_CLUSTER", "ETCD_INITIAL_CLUSTER_TOKEN"] {
                assert!(
                    systemd.contains(&(key.to_owned(), value.clone())),
                    "systemd's rules read {systemd:?} from {new:?}, not {value:?}"
                );
                for shell in &shells {
                    let out = std::process::Command::new(shell)
                        .arg("-c")
                        .arg(format!(". '{}'; printf %s \"${key}\"", file.display()))
                        .env("HOME", "/home-of-test")
                        .output()
                        .expect("shell");
                    assert!(out.status.success(), "{shell} on {new:?}: {out:?}");
                    assert_eq!(
                        String::from_utf8_lossy(&out.stdout),
                        *value,
                        "{shell} {key} from {new:?}"
                    );
                }
            }
            assert!(!marker.exists(), "sourcing {new:?} ran a command");
        }
    }
    // Bare stays bare where it needs no quotes (kubespray's shape).
    let (new, _) = rewrite(originals[0], SettingsFormat::Env, &values(), &file).expect("plain");
    assert_eq!(
        new,
        format!("ETCD_INITIAL_CLUSTER={CLUSTER}\nexport ETCD_INITIAL_CLUSTER_TOKEN='{TOKEN}'\n")
    );
    let err = rewrite(
        originals[0],
        SettingsFormat::Env,
        &[(INITIAL_CLUSTER, "a\nETCD_X=1")],
        &file,
    )
    .expect_err("a newline");
    assert!(err.to_string().contains("control character"), "{err}");
}
