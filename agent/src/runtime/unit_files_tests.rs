//! Which files make a unit, each rule on real files in a temp root; and the same trees checked
//! against systemd's own reading of them where systemd's binary is installed.

use std::path::{Path, PathBuf};

use super::*;
use crate::runtime::unit::{HostFacts, Unit};

const ETC: &str = "etc/systemd/system";
const RUN: &str = "run/systemd/system";
const USR: &str = "usr/lib/systemd/system";

fn facts() -> HostFacts {
    HostFacts {
        hostname: Some("node1".into()),
        ..HostFacts::default()
    }
}

fn put(root: &Path, rel: &str, text: &str) -> PathBuf {
    let path = root.join(rel);
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(&path, text).expect("write");
    path
}

fn link(root: &Path, rel: &str, target: &Path) {
    let path = root.join(rel);
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::os::unix::fs::symlink(target, path).expect("symlink");
}

fn service(exec: &str) -> String {
    format!("[Service]\nExecStart={exec}\n")
}

fn env(name: &str, value: &str) -> String {
    format!("[Service]\nEnvironment={name}={value}\n")
}

fn resolve(root: &Path, name: &str) -> Result<UnitFiles> {
    UnitSource::Root(root.to_owned()).resolve(&UnitName::parse(name).expect("unit name"))
}

fn load(root: &Path, name: &str) -> Unit {
    Unit::load(&UnitSource::Root(root.to_owned()), name, &facts()).expect("unit")
}

fn rel(root: &Path, paths: &[PathBuf]) -> Vec<String> {
    let root = std::fs::canonicalize(root).expect("root");
    paths
        .iter()
        .map(|p| p.strip_prefix(&root).unwrap_or(p).display().to_string())
        .collect()
}

#[test]
fn unit_file_precedence_etc_over_run_over_usr_lib() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    put(
        root,
        "lib/systemd/system/etcd.service",
        &service("/lib/etcd"),
    );
    assert_eq!(load(root, "etcd.service").exec_start().program, "/lib/etcd");
    put(
        root,
        &format!("{USR}/etcd.service"),
        &service("/usr/lib/etcd"),
    );
    assert_eq!(
        load(root, "etcd.service").exec_start().program,
        "/usr/lib/etcd"
    );
    put(root, &format!("{RUN}/etcd.service"), &service("/run/etcd"));
    assert_eq!(load(root, "etcd.service").exec_start().program, "/run/etcd");
    put(root, &format!("{ETC}/etcd.service"), &service("/etc/etcd"));
    let u = load(root, "etcd.service");
    assert_eq!(u.exec_start().program, "/etc/etcd");
    assert_eq!(rel(root, &[u.path]), [format!("{ETC}/etcd.service")]);
    // systemctl set-property / edit --runtime: the control dirs come first.
    put(
        root,
        "etc/systemd/system.control/etcd.service",
        &service("/control/etcd"),
    );
    assert_eq!(
        load(root, "etcd.service").exec_start().program,
        "/control/etcd"
    );
}

#[test]
fn lib_linked_to_usr_lib_is_read_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    put(
        root,
        &format!("{USR}/etcd.service"),
        &service("/usr/bin/etcd"),
    );
    put(
        root,
        &format!("{USR}/etcd.service.d/10-a.conf"),
        &env("A", "1"),
    );
    link(root, "lib", Path::new("usr/lib"));
    let source = UnitSource::Root(root.to_owned());
    let dirs = rel(root, &source.dirs());
    assert_eq!(dirs, [USR], "{dirs:?}");
    let files = resolve(root, "etcd.service").expect("files");
    assert_eq!(
        rel(root, &files.drop_ins),
        [format!("{USR}/etcd.service.d/10-a.conf")]
    );
}

#[test]
fn drop_ins_from_every_path_apply_in_file_name_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    put(
        root,
        &format!("{USR}/etcd.service"),
        &service("/usr/bin/etcd --a=1"),
    );
    put(
        root,
        &format!("{ETC}/etcd.service.d/30-etc.conf"),
        &env("X", "etc"),
    );
    put(
        root,
        &format!("{RUN}/etcd.service.d/20-run.conf"),
        &env("X", "run"),
    );
    put(
        root,
        &format!("{USR}/etcd.service.d/10-usr.conf"),
        "[Service]\nEnvironment=X=usr\nExecStart=\nExecStart=/usr/bin/etcd --from=usr\n",
    );
    // Same name in several paths: /etc masks /run masks /usr/lib.
    put(
        root,
        &format!("{USR}/etcd.service.d/50-same.conf"),
        &env("S", "usr"),
    );
    put(
        root,
        &format!("{RUN}/etcd.service.d/50-same.conf"),
        &env("S", "run"),
    );
    put(
        root,
        &format!("{ETC}/etcd.service.d/40-same.conf"),
        &env("T", "etc"),
    );
    put(
        root,
        &format!("{USR}/etcd.service.d/40-same.conf"),
        &env("T", "usr"),
    );
    // Not drop-ins: another suffix, a hidden file.
    put(
        root,
        &format!("{ETC}/etcd.service.d/99-notes.txt"),
        &env("X", "txt"),
    );
    put(
        root,
        &format!("{ETC}/etcd.service.d/.99-hidden.conf"),
        &env("X", "hidden"),
    );
    let u = load(root, "etcd.service");
    assert_eq!(
        rel(root, &u.drop_ins),
        [
            format!("{USR}/etcd.service.d/10-usr.conf"),
            format!("{RUN}/etcd.service.d/20-run.conf"),
            format!("{ETC}/etcd.service.d/30-etc.conf"),
            format!("{ETC}/etcd.service.d/40-same.conf"),
            format!("{RUN}/etcd.service.d/50-same.conf"),
        ]
    );
    assert_eq!(
        u.environment,
        [
            ("X".to_owned(), "etc".to_owned()),
            ("T".into(), "etc".into()),
            ("S".into(), "run".into())
        ]
    );
    assert_eq!(u.exec_start().argv, ["/usr/bin/etcd", "--from=usr"]);
}

#[test]
fn a_drop_in_linked_to_dev_null_or_empty_masks_the_same_name_below() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    put(
        root,
        &format!("{USR}/etcd.service"),
        &service("/usr/bin/etcd"),
    );
    put(
        root,
        &format!("{USR}/etcd.service.d/10-vendor.conf"),
        &env("V", "1"),
    );
    put(
        root,
        &format!("{USR}/etcd.service.d/20-vendor.conf"),
        &env("W", "1"),
    );
    link(
        root,
        &format!("{ETC}/etcd.service.d/10-vendor.conf"),
        Path::new("/dev/null"),
    );
    put(root, &format!("{RUN}/etcd.service.d/20-vendor.conf"), "");
    let u = load(root, "etcd.service");
    assert_eq!(
        rel(root, &u.drop_ins),
        [
            format!("{ETC}/etcd.service.d/10-vendor.conf"),
            format!("{RUN}/etcd.service.d/20-vendor.conf")
        ]
    );
    assert!(u.environment.is_empty(), "{:?}", u.environment);
}

#[test]
fn templates_and_instances() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    put(
        root,
        &format!("{USR}/etcd@.service"),
        &service("/usr/bin/etcd --name=%i"),
    );
    put(
        root,
        &format!("{RUN}/etcd@.service.d/10-template.conf"),
        &env("T", "%i"),
    );
    put(
        root,
        &format!("{ETC}/etcd@member1.service.d/20-instance.conf"),
        &env("I", "%n"),
    );
    let u = load(root, "etcd@member1.service");
    assert_eq!(u.name, "etcd@member1.service");
    assert_eq!(
        rel(root, std::slice::from_ref(&u.path)),
        [format!("{USR}/etcd@.service")]
    );
    assert_eq!(u.exec_start().argv, ["/usr/bin/etcd", "--name=member1"]);
    assert_eq!(
        u.environment,
        [
            ("T".to_owned(), "member1".to_owned()),
            ("I".into(), "etcd@member1.service".into())
        ]
    );
    // Another instance gets the template's drop-ins, not member1's.
    let u2 = load(root, "etcd@member2.service");
    assert_eq!(u2.environment, [("T".to_owned(), "member2".to_owned())]);
    // An instance's own unit file, wherever it is, comes before the template.
    put(
        root,
        &format!("{USR}/etcd@member1.service"),
        &service("/opt/etcd --own"),
    );
    assert_eq!(
        load(root, "etcd@member1.service").exec_start().program,
        "/opt/etcd"
    );
    // The template itself does not run.
    let err = resolve(root, "etcd@.service")
        .expect_err("template")
        .to_string();
    assert!(
        err.contains("template") && err.contains("etcd@member1.service"),
        "{err}"
    );
}

#[test]
fn dash_prefix_and_type_wide_drop_ins() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    put(
        root,
        &format!("{ETC}/kube-etcd-main.service"),
        &service("/usr/bin/etcd"),
    );
    put(
        root,
        &format!("{USR}/service.d/10-all.conf"),
        &env("ALL", "1"),
    );
    put(
        root,
        &format!("{ETC}/kube-.service.d/20-kube.conf"),
        &env("K", "1"),
    );
    put(
        root,
        &format!("{RUN}/kube-etcd-.service.d/30-kube-etcd.conf"),
        &env("KE", "1"),
    );
    put(
        root,
        &format!("{ETC}/kube-etcd-main.service.d/40-own.conf"),
        &env("OWN", "1"),
    );
    // Same name at several levels: the more specific unit name wins within a path.
    put(
        root,
        &format!("{ETC}/kube-etcd-main.service.d/50-x.conf"),
        &env("X", "own"),
    );
    put(
        root,
        &format!("{ETC}/kube-.service.d/50-x.conf"),
        &env("X", "kube"),
    );
    let u = load(root, "kube-etcd-main.service");
    assert_eq!(
        rel(root, &u.drop_ins),
        [
            format!("{USR}/service.d/10-all.conf"),
            format!("{ETC}/kube-.service.d/20-kube.conf"),
            format!("{RUN}/kube-etcd-.service.d/30-kube-etcd.conf"),
            format!("{ETC}/kube-etcd-main.service.d/40-own.conf"),
            format!("{ETC}/kube-etcd-main.service.d/50-x.conf"),
        ]
    );
    assert_eq!(
        u.environment.last(),
        Some(&("X".to_owned(), "own".to_owned()))
    );
}

#[test]
fn masked_missing_and_aliased_units() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let err = resolve(root, "etcd.service")
        .expect_err("missing")
        .to_string();
    assert!(
        err.contains("etcd.service not found") && err.contains("/etc/systemd/system"),
        "{err}"
    );
    put(
        root,
        &format!("{USR}/etcd.service"),
        &service("/usr/bin/etcd"),
    );
    link(root, &format!("{ETC}/etcd.service"), Path::new("/dev/null"));
    let err = resolve(root, "etcd.service")
        .expect_err("masked")
        .to_string();
    assert!(
        err.contains("masked") && err.contains("systemctl unmask"),
        "{err}"
    );
    std::fs::remove_file(root.join(ETC).join("etcd.service")).expect("unmask");
    put(root, &format!("{ETC}/etcd.service"), "");
    assert!(
        resolve(root, "etcd.service")
            .expect_err("empty")
            .to_string()
            .contains("masked")
    );
    std::fs::remove_file(root.join(ETC).join("etcd.service")).expect("rm");
    // etcd.service is an alias of etcd3.service: the unit is etcd3.service, both drop-ins apply.
    put(
        root,
        &format!("{USR}/etcd3.service"),
        &service("/usr/bin/etcd --name=%n"),
    );
    std::fs::remove_file(root.join(USR).join("etcd.service")).expect("rm");
    link(
        root,
        &format!("{ETC}/etcd.service"),
        &root.join(USR).join("etcd3.service"),
    );
    put(
        root,
        &format!("{ETC}/etcd.service.d/10-alias.conf"),
        &env("A", "alias"),
    );
    put(
        root,
        &format!("{ETC}/etcd3.service.d/20-unit.conf"),
        &env("U", "unit"),
    );
    let u = load(root, "etcd.service");
    assert_eq!(u.name, "etcd3.service");
    assert_eq!(
        u.exec_start().argv,
        ["/usr/bin/etcd", "--name=etcd3.service"]
    );
    assert_eq!(u.drop_ins.len(), 2, "{:?}", u.drop_ins);
}

#[test]
fn unit_dir_reads_one_directory_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    put(root, &format!("{ETC}/etcd.service"), &service("/etc/etcd"));
    put(
        root,
        &format!("{ETC}/etcd.service.d/10-a.conf"),
        &env("A", "1"),
    );
    put(
        root,
        &format!("{RUN}/etcd.service.d/20-b.conf"),
        &env("B", "1"),
    );
    let u = Unit::load(&UnitSource::Dir(root.join(ETC)), "etcd.service", &facts()).expect("unit");
    assert_eq!(u.environment, [("A".to_owned(), "1".to_owned())]);
    let err = Unit::load(&UnitSource::Dir(root.join(RUN)), "etcd.service", &facts())
        .expect_err("not in that dir")
        .to_string();
    assert!(err.contains("unit_dir"), "{err}");
}

#[path = "unit_oracle.rs"]
mod oracle;
