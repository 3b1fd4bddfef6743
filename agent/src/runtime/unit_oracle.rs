//! The agent's reading of unit trees against systemd's own: `systemd --test --system` (run as an
//! unprivileged user, as systemd requires) loads the units from `$SYSTEMD_UNIT_PATH` and dumps
//! each unit's fragment, drop-ins, environment and commands. Skipped, with the reason printed,
//! where systemd is not installed.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{put, service};
use crate::runtime::unit::{HostFacts, Unit};
use crate::runtime::unit_files::{SEARCH_PATH, UnitSource};
use crate::runtime::unit_syntax::split_words;

const SYSTEMD: &str = "/lib/systemd/systemd";

/// What systemd's dump says about one unit.
#[derive(Debug, Default, PartialEq, Eq)]
struct Dumped {
    fragment: PathBuf,
    drop_ins: Vec<PathBuf>,
    environment: Vec<String>,
    environment_files: Vec<String>,
    commands: Vec<Vec<String>>,
}

/// systemd's reading of `unit` under `root`, or `None` where systemd cannot be run here.
fn systemd_reads(root: &Path, unit: &str) -> Option<Dumped> {
    if !Path::new(SYSTEMD).is_file() || !Path::new("/usr/bin/setpriv").is_file() {
        assert!(
            !nix::unistd::Uid::effective().is_root(),
            "{SYSTEMD} (or setpriv) is not installed: as root, tests/setup.sh installs Debian's systemd"
        );
        println!("SKIPPED: {SYSTEMD} (or setpriv) is not installed");
        return None;
    }
    // systemd wants a sysinit.target to build its start-up transaction.
    put(
        root,
        "oracle-base/sysinit.target",
        "[Unit]\nDescription=test\n",
    );
    let mut path: Vec<String> = SEARCH_PATH
        .iter()
        .map(|d| root.join(d).display().to_string())
        .collect();
    path.push(root.join("oracle-base").display().to_string());
    let mut cmd = if nix::unistd::Uid::effective().is_root() {
        // Test mode refuses root: run it as nobody, who must be able to read the tree.
        let status = Command::new("chmod")
            .args(["-R", "a+rX"])
            .arg(root)
            .status()
            .expect("chmod");
        assert!(status.success());
        let mut c = Command::new("/usr/bin/setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", SYSTEMD]);
        c
    } else {
        Command::new(SYSTEMD)
    };
    let out = cmd
        .args(["--test", "--system", "--no-pager"])
        .arg(format!("--unit={unit}"))
        .env_clear()
        .env("HOME", "/tmp")
        .env("SYSTEMD_UNIT_PATH", path.join(":"))
        .output()
        .expect("systemd --test");
    let text = String::from_utf8_lossy(&out.stdout);
    let header = format!("-> Unit {unit}:");
    let Some(start) = text.find(&header) else {
        println!(
            "SKIPPED: systemd --test did not dump {unit} ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        return None;
    };
    let mut d = Dumped::default();
    for line in text[start + header.len()..].lines() {
        if line.starts_with("\t-> Unit ") {
            break;
        }
        let line = line.trim_start_matches('\t');
        if let Some(v) = line.strip_prefix("Fragment Path: ") {
            d.fragment = v.into();
        } else if let Some(v) = line.strip_prefix("DropIn Path: ") {
            d.drop_ins.push(v.into());
        } else if let Some(v) = line.strip_prefix("Environment: ") {
            d.environment.push(v.to_owned());
        } else if let Some(v) = line.strip_prefix("EnvironmentFile: ") {
            d.environment_files.push(v.to_owned());
        } else if let Some(v) = line.strip_prefix("Command Line: ") {
            // systemd quotes the words and escapes `$` for a shell.
            d.commands
                .push(split_words(&v.replace("\\$", "$")).expect("dumped command line"));
        }
    }
    Some(d)
}

/// The agent's reading, in the dump's terms.
fn agent_reads(root: &Path, unit: &str, host: &HostFacts) -> Dumped {
    let u = Unit::load(&UnitSource::Root(root.to_owned()), unit, host).expect("agent reads it");
    Dumped {
        fragment: u.path.clone(),
        drop_ins: u.drop_ins.clone(),
        environment: u
            .environment
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect(),
        environment_files: u
            .environment_files
            .iter()
            .map(|(p, optional)| format!("{}{}", if *optional { "-" } else { "" }, p.display()))
            .collect(),
        commands: u.exec.iter().map(|e| e.argv.clone()).collect(),
    }
}

#[test]
fn the_agent_reads_units_as_systemd_does() {
    let dir = tempfile::Builder::new()
        .prefix("quorate-units-")
        .tempdir()
        .expect("tempdir");
    let root = std::fs::canonicalize(dir.path()).expect("root");
    let root = root.as_path();
    let etc = "etc/systemd/system";
    let run = "run/systemd/system";
    let usr = "usr/lib/systemd/system";
    put(
        root,
        &format!("{usr}/etcd@.service"),
        "[Unit]\nDescription=etcd %i\n[Service]\nType=notify\n\
         Environment=\"SPACED=a b\" NAME=%i UNIT=%n PREFIX=%p HOST=%H\n\
         Environment=ALL=%N:%P:%I:%j:%J:%f:%l:%t:%S:%C:%L:%E:%T:%V:%u:%U:%g:%G:%%\n\
         EnvironmentFile=-/etc/etcd/%i.env\n\
         ExecStart=/usr/bin/etcd --name %i \\\n  --data-dir=%S/etcd/%I \"--quoted=a b\" '%%lit' \\x41\\s\n",
    );
    put(
        root,
        &format!("{run}/etcd@.service.d/10-run.conf"),
        "[Service]\nEnvironment=NAME=run-%i\n",
    );
    put(
        root,
        &format!("{etc}/etcd@member1.service.d/20-etc.conf"),
        "[Service]\nExecStart=\nExecStart=-@/usr/bin/etcd etcd-%i --name=${NAME} $SPACED :x\nEnvironmentFile=/etc/etcd.env\n",
    );
    put(
        root,
        &format!("{usr}/etcd@.service.d/20-etc.conf"),
        "[Service]\nEnvironment=MASKED=yes\n",
    );
    put(
        root,
        &format!("{usr}/service.d/05-all.conf"),
        "[Service]\nEnvironment=ALLSERVICES=1\n",
    );
    put(
        root,
        &format!("{etc}/etcd-.service.d/30-dash.conf"),
        "[Service]\nEnvironment=DASH=1\n",
    );
    put(
        root,
        &format!("{etc}/etcd-main.service"),
        &service("/usr/bin/etcd %j %f"),
    );
    put(
        root,
        &format!("{etc}/etcd-main.service.d/40-own.conf"),
        "[Service]\nEnvironment=OWN=1\n",
    );
    put(
        root,
        &format!("{usr}/etcd-main.service"),
        &service("/not/this"),
    );
    // Masks the template's 10-run.conf for member1 only.
    std::fs::create_dir_all(root.join(etc).join("etcd@member1.service.d")).expect("mkdir");
    std::os::unix::fs::symlink(
        "/dev/null",
        root.join(etc).join("etcd@member1.service.d/10-run.conf"),
    )
    .expect("mask");
    let host = HostFacts::read();
    for unit in [
        "etcd@member1.service",
        "etcd@a\\x2db.service",
        "etcd-main.service",
    ] {
        let Some(theirs) = systemd_reads(root, unit) else {
            return;
        };
        let ours = agent_reads(root, unit, &host);
        assert_eq!(
            ours, theirs,
            "{unit}: the agent (left) and systemd (right) differ"
        );
        println!(
            "{unit}: as systemd reads it ({} drop-ins, {:?})",
            ours.drop_ins.len(),
            ours.commands
        );
    }
}
