//! Tests of the kubelet stand-in: real processes, no etcd.
use super::*;
use nix::sys::signal::kill;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const PATIENCE: Duration = Duration::from_secs(15);

/// A kubeadm-like static pod manifest running `sh -c <script>`.
fn manifest(name: &str, script: &str, grace: u64) -> String {
    format!(
        "apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: kube-system
  labels: {{component: {name}, tier: control-plane}}
spec:
  hostNetwork: true
  priorityClassName: system-node-critical
  terminationGracePeriodSeconds: {grace}
  containers:
  - name: {name}
    image: registry.k8s.io/{name}:v0
    command:
    - sh
    - -c
    args:
    - '{script}'
    env:
    - name: GREETING
      value: hi
    volumeMounts:
    - {{mountPath: /var/lib/data, name: data}}
  volumes:
  - {{name: data, hostPath: {{path: /var/lib/data, type: DirectoryOrCreate}}}}
"
    )
}

/// A kubelet on a temporary root, running in a task until `stop`.
struct Lab {
    dir: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Lab {
    fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().to_owned();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            run_until(&root, None, async {
                let _ = stopped.await;
            })
            .await
        });
        Self {
            dir,
            stop: Some(stop),
            task: Some(task),
        }
    }

    fn layout(&self) -> Layout {
        Layout::new(self.dir.path(), None)
    }

    /// Writes a manifest the way tools should: a hidden temporary file, then a rename. Its
    /// image is "pulled" first: a root file system whose `sh` is the host's.
    fn put(&self, file: &str, text: &str) {
        for image in text
            .lines()
            .filter_map(|l| l.trim().strip_prefix("image: "))
        {
            self.pull(image, &[("bin/sh", Path::new("/bin/sh"))]);
        }
        let dir = self.layout().manifests;
        std::fs::create_dir_all(&dir).expect("manifest dir");
        let tmp = dir.join(format!(".{file}.tmp"));
        std::fs::write(&tmp, text).expect("write manifest");
        std::fs::rename(&tmp, dir.join(file)).expect("rename manifest");
    }

    /// Makes `image` present on this node with `files` (path in the image, host file it links to).
    fn pull(&self, image: &str, files: &[(&str, &Path)]) {
        let rootfs = image_rootfs(&self.layout().images, image).expect("image reference");
        for (inside, target) in files {
            let path = rootfs.join(inside);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("image dir");
            let _ = std::fs::remove_file(&path);
            std::os::unix::fs::symlink(target, &path).expect("image file");
        }
    }

    fn remove(&self, file: &str) {
        std::fs::remove_file(self.layout().manifests.join(file)).expect("remove manifest");
    }

    fn pid(&self, name: &str) -> Option<i32> {
        let text = std::fs::read_to_string(self.layout().pid_path(name)).ok()?;
        text.trim().parse().ok()
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.layout().log_path(name)).unwrap_or_default()
    }

    async fn stop(mut self) {
        self.stop
            .take()
            .expect("running")
            .send(())
            .expect("kubelet listening");
        let task = self.task.take().expect("running");
        task.await.expect("kubelet task").expect("kubelet result");
    }
}

impl Drop for Lab {
    /// Leaves no process behind when a test fails half-way.
    fn drop(&mut self) {
        let Ok(entries) = std::fs::read_dir(self.layout().pids) else {
            return;
        };
        for entry in entries.flatten() {
            let pid = std::fs::read_to_string(entry.path()).unwrap_or_default();
            if let Ok(pid) = pid.trim().parse::<u32>() {
                signal_group(pid, Signal::SIGKILL);
            }
        }
    }
}

async fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// State and process group of a process, from `/proc/<pid>/stat`.
fn proc_stat(pid: &str) -> Option<(char, i32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let pgrp = fields.nth(1)?.parse().ok()?;
    Some((state, pgrp))
}

/// Whether `pid` runs; a zombie (not yet reaped by whoever inherited it) does not count.
fn alive(pid: i32) -> bool {
    proc_stat(&pid.to_string()).is_some_and(|(state, _)| state != 'Z')
}

/// Whether any running process is left in the group led by `pid`.
fn group_alive(pid: i32) -> bool {
    let procs = std::fs::read_dir("/proc").expect("/proc");
    procs.flatten().any(|entry| {
        let name = entry.file_name().to_string_lossy().into_owned();
        proc_stat(&name).is_some_and(|(state, pgrp)| pgrp == pid && state != 'Z')
    })
}

#[test]
fn parses_a_kubeadm_like_manifest() {
    let pod =
        Pod::parse("etcd.yaml", manifest("etcd", "exec sleep 9", 7).as_bytes()).expect("parse");
    assert_eq!(pod.name, "etcd");
    assert_eq!(pod.program, "sh");
    assert_eq!(pod.args, ["-c", "exec sleep 9"]);
    assert_eq!(pod.env, [("GREETING".to_owned(), "hi".to_owned())]);
    assert_eq!(pod.grace, Duration::from_secs(7));

    let json =
        r#"{"kind":"Pod","metadata":{"name":"a"},"spec":{"containers":[{"command":["x"]}]}}"#;
    let pod = Pod::parse("a.json", json.as_bytes()).expect("parse json");
    assert_eq!((pod.program.as_str(), pod.grace), ("x", DEFAULT_GRACE));
}

#[test]
fn rejects_unusable_manifests() {
    let cases = [
        (
            "kind: Deployment\nmetadata: {name: a}\nspec: {containers: [{command: [x]}]}",
            "kind",
        ),
        (
            "metadata: {name: ../a}\nspec: {containers: [{command: [x]}]}",
            "pod name",
        ),
        (
            "metadata: {name: a}\nspec: {containers: [{image: x}]}",
            "command",
        ),
        ("metadata: {name: a}\nspec: {containers: []}", "containers"),
        ("metadata: [", ""),
    ];
    for (text, expected) in cases {
        let err = Pod::parse("a.yaml", text.as_bytes()).expect_err(text);
        assert!(format!("{err:#}").contains(expected), "{text}: {err:#}");
    }
    assert!(is_manifest("etcd.yaml") && is_manifest("a.yml") && is_manifest("b.json"));
    assert!(!is_manifest(".etcd.yaml") && !is_manifest("etcd.yaml.bak"));
}

#[tokio::test]
async fn pod_runs_while_its_manifest_is_present() {
    let lab = Lab::start();
    lab.put(
        "web.yaml",
        &manifest("web", "echo $GREETING; sleep 1000", 5),
    );
    let pid = eventually("the pid file", || lab.pid("web")).await;
    assert!(alive(pid));
    eventually("the pod output", || {
        lab.log("web").contains("hi\n").then_some(())
    })
    .await;
    assert!(lab.log("web").contains("--- kubelet ["));
    assert!(lab.log("web").contains(&format!("started pid {pid}")));

    lab.remove("web.yaml");
    eventually("the pid file to go", || {
        lab.pid("web").is_none().then_some(())
    })
    .await;
    assert!(!alive(pid), "pod process {pid} still alive");
    assert!(
        !group_alive(pid),
        "a process of pod group {pid} is still alive"
    );
    assert!(lab.log("web").contains(&format!("stopped pid {pid}")));
    lab.stop().await;
}

#[tokio::test]
async fn changed_manifest_replaces_the_pod() {
    let lab = Lab::start();
    lab.put("web.yaml", &manifest("web", "sleep 1000", 5));
    let old = eventually("the pid file", || lab.pid("web")).await;
    lab.put("web.yaml", &manifest("web", "echo v2; sleep 1000", 5));
    let new = eventually("a new pid", || lab.pid("web").filter(|p| *p != old)).await;
    assert!(!group_alive(old), "old pod {old} still alive");
    assert!(alive(new));
    eventually("v2 output", || {
        lab.log("web").contains("v2\n").then_some(())
    })
    .await;
    lab.stop().await;
}

#[tokio::test]
async fn pod_killed_from_outside_is_restarted() {
    let lab = Lab::start();
    lab.put("web.yaml", &manifest("web", "sleep 1000", 5));
    let old = eventually("the pid file", || lab.pid("web")).await;
    kill(Pid::from_raw(old), Signal::SIGKILL).expect("kill the pod");
    let new = eventually("a restarted pod", || lab.pid("web").filter(|p| *p != old)).await;
    assert!(alive(new));
    assert!(!group_alive(old), "leftovers of the crashed pod {old}");
    let log = lab.log("web");
    assert!(
        log.contains(&format!("pid {old} exited by itself")),
        "{log}"
    );
    assert!(log.contains(&format!("restarted pid {new}")), "{log}");
    lab.stop().await;
}

#[tokio::test]
async fn pod_ignoring_sigterm_is_killed_after_its_grace_period() {
    let lab = Lab::start();
    lab.put(
        "stubborn.yaml",
        &manifest("stubborn", "trap \"\" TERM; echo ready; sleep 1000", 1),
    );
    let pid = eventually("the pid file", || lab.pid("stubborn")).await;
    eventually("the trap", || {
        lab.log("stubborn").contains("ready").then_some(())
    })
    .await;
    let removed = Instant::now();
    lab.remove("stubborn.yaml");
    eventually("the pid file to go", || {
        lab.pid("stubborn").is_none().then_some(())
    })
    .await;
    assert!(
        removed.elapsed() >= Duration::from_secs(1),
        "killed before its grace period"
    );
    assert!(!group_alive(pid));
    assert!(lab.log("stubborn").contains("SIGKILL"));
    lab.stop().await;
}

#[tokio::test]
async fn unusable_manifest_is_ignored_and_missing_dir_means_no_pods() {
    let lab = Lab::start();
    lab.put("broken.yaml", "metadata: [");
    lab.put("web.yaml", &manifest("web", "sleep 1000", 5));
    let pid = eventually("the pid file", || lab.pid("web")).await;

    let manifests = lab.layout().manifests;
    let aside = manifests.with_file_name("manifests.aside");
    std::fs::rename(&manifests, &aside).expect("move manifests aside");
    eventually("the pod to stop", || lab.pid("web").is_none().then_some(())).await;
    assert!(!group_alive(pid));
    std::fs::rename(&aside, &manifests).expect("move manifests back");
    eventually("the pod to start again", || lab.pid("web")).await;
    assert!(!lab.layout().pid_path("broken").exists());
    lab.stop().await;
}

#[tokio::test]
async fn shutdown_stops_every_pod() {
    let lab = Lab::start();
    lab.put("a.yaml", &manifest("a", "sleep 1000", 5));
    lab.put("b.yml", &manifest("b", "sleep 1000", 5));
    let a = eventually("pod a", || lab.pid("a")).await;
    let b = eventually("pod b", || lab.pid("b")).await;
    let layout = lab.layout();
    lab.stop().await;
    assert!(!group_alive(a) && !group_alive(b));
    assert!(!layout.pid_path("a").exists() && !layout.pid_path("b").exists());
}

/// A pod runs its command from its image (looked up in the image's PATH),
/// and a pod whose image is not on the node does not run at all, saying so in its log.
#[tokio::test]
async fn command_comes_from_the_image_and_a_missing_image_runs_nothing() {
    let lab = Lab::start();
    let script = lab.dir.path().join("hello.sh");
    std::fs::write(&script, "#!/bin/sh\necho from the image; exec sleep 1000\n").expect("script");
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    lab.pull("example.org/hello:1.0", &[("usr/local/bin/hello", &script)]);
    let pod = |name: &str, image: &str| {
        format!(
            "metadata: {{name: {name}}}\nspec: {{containers: [{{image: \"{image}\", command: [hello]}}]}}\n"
        )
    };
    let dir = lab.layout().manifests;
    std::fs::create_dir_all(&dir).expect("manifest dir");
    std::fs::write(dir.join("a.yaml"), pod("a", "example.org/hello:1.0")).expect("a");
    std::fs::write(dir.join("b.yaml"), pod("b", "example.org/absent:1.0")).expect("b");
    eventually("pod a's output", || {
        lab.log("a").contains("from the image").then_some(())
    })
    .await;
    eventually("pod b's error", || {
        lab.log("b").contains("ErrImageNeverPull").then_some(())
    })
    .await;
    assert_eq!(lab.pid("b"), None, "a pod without its image does not run");
    lab.stop().await;
}
