//! Preflight checks of what each agent says about seeing its member: can it probe etcd's health
//! and its apiserver's `/readyz` from the member's host, which etcd version runs there, and does
//! the restore tool match it. Each problem names the member and the fix.

use quorate_proto::pb;

/// `3.5.16` → `3.5`, `v3.4.23` → `3.4`.
pub fn major_minor(version: &str) -> String {
    version
        .trim()
        .trim_start_matches('v')
        .split('.')
        .take(2)
        .collect::<Vec<_>>()
        .join(".")
}

/// The restore tool's kind and version, when the agent found one.
fn tool_of(d: &pb::DescribeResponse) -> Option<(&'static str, &str)> {
    let tool = d.restore_tool.as_ref()?;
    let kind = match pb::RestoreToolKind::try_from(tool.kind) {
        Ok(pb::RestoreToolKind::Etcdutl) => "etcdutl",
        Ok(pb::RestoreToolKind::Etcdctl) => "etcdctl",
        _ => return None,
    };
    Some((kind, tool.version.as_str()))
}

/// Checks one member's report: `problems` refuse the restore, `warnings` are shown in the plan.
pub fn check(
    member: &str,
    d: &pb::DescribeResponse,
    problems: &mut Vec<String>,
    warnings: &mut Vec<String>,
) {
    if !d.health_problem.is_empty() {
        problems.push(format!(
            "member {member}: its agent cannot probe etcd's health, so the restore could never see it come back: {}",
            d.health_problem
        ));
    }
    if !d.readiness_problem.is_empty() {
        problems.push(format!(
            "member {member}: {}; without it the restore cannot tell when the kube-apiserver is back",
            d.readiness_problem
        ));
    }
    let version = d.etcd_version.trim();
    match tool_of(d) {
        // A missing tool is its own problem (see plan::check_member).
        None => {}
        Some(_) if version.is_empty() => warnings.push(format!(
            "member {member}: its etcd version is {}; the restore tool's version cannot be checked against it",
            if d.etcd_version_source.is_empty() {
                "unknown"
            } else {
                d.etcd_version_source.as_str()
            }
        )),
        Some((kind, tool)) if major_minor(tool) != major_minor(version) => problems.push(format!(
            "member {member}: the restore tool is {kind} {tool} but etcd {version} runs there ({}): a snapshot must be restored with the tool of the etcd that will run it; set etcd.{kind} in the agent's config to {kind} {}.x (from the etcd v{version} release)",
            if d.etcd_version_source.is_empty() {
                "source unknown"
            } else {
                d.etcd_version_source.as_str()
            },
            major_minor(version)
        )),
        Some(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn described() -> pb::DescribeResponse {
        pb::DescribeResponse {
            member_name: "cp-1".into(),
            etcd_version: "3.5.16".into(),
            etcd_version_source: "image registry.k8s.io/etcd:3.5.16-0".into(),
            restore_tool: Some(pb::RestoreTool {
                kind: pb::RestoreToolKind::Etcdutl as i32,
                version: "3.5.17".into(),
                supports_bump_revision: true,
            }),
            health_probe: "metrics http://127.0.0.1:2381/health".into(),
            ..Default::default()
        }
    }

    fn checked(d: &pb::DescribeResponse) -> (Vec<String>, Vec<String>) {
        let (mut problems, mut warnings) = (Vec::new(), Vec::new());
        check("cp-1", d, &mut problems, &mut warnings);
        (problems, warnings)
    }

    #[test]
    fn a_matching_tool_and_probes_pass() {
        assert_eq!(checked(&described()), (vec![], vec![]));
        let etcd34 = pb::DescribeResponse {
            etcd_version: "3.4.23".into(),
            restore_tool: Some(pb::RestoreTool {
                kind: pb::RestoreToolKind::Etcdctl as i32,
                version: "3.4.23".into(),
                supports_bump_revision: false,
            }),
            ..described()
        };
        assert_eq!(checked(&etcd34), (vec![], vec![]));
    }

    #[test]
    fn a_tool_of_another_minor_is_refused_naming_the_member_and_the_setting() {
        let mut d = described();
        if let Some(t) = d.restore_tool.as_mut() {
            t.version = "3.4.23".into();
            t.kind = pb::RestoreToolKind::Etcdctl as i32;
        }
        let (problems, _) = checked(&d);
        assert_eq!(problems.len(), 1, "{problems:?}");
        let p = &problems[0];
        assert!(
            p.starts_with("member cp-1: the restore tool is etcdctl 3.4.23 but etcd 3.5.16 runs there (image registry.k8s.io/etcd:3.5.16-0)")
                && p.contains("set etcd.etcdctl in the agent's config to etcdctl 3.5.x"),
            "{p}"
        );
        // 3.10 is not 3.1.
        assert_eq!(major_minor("3.10.2"), "3.10");
        assert_ne!(major_minor("3.1.9"), major_minor("3.10.0"));
    }

    #[test]
    fn an_unknown_version_warns_with_its_reason() {
        let d = pb::DescribeResponse {
            etcd_version: String::new(),
            etcd_version_source: "unknown: image registry.k8s.io/etcd@sha256:abc is pinned by digest only, and the running etcd did not say".into(),
            ..described()
        };
        let (problems, warnings) = checked(&d);
        assert!(problems.is_empty(), "{problems:?}");
        assert!(
            warnings.len() == 1
                && warnings[0].contains("pinned by digest")
                && warnings[0].starts_with("member cp-1"),
            "{warnings:?}"
        );
    }

    #[test]
    fn health_and_readiness_problems_refuse_with_the_agents_fix() {
        let d = pb::DescribeResponse {
            health_problem: "etcd has no --listen-metrics-urls and its client URL requires a client certificate, but the agent has none: set etcd.client_cert".into(),
            readiness_problem: "cannot check the kube-apiserver's /readyz: its static-pod manifest /etc/kubernetes/manifests/kube-apiserver.yaml has --anonymous-auth=false and the agent has no client credentials: set apiserver.kubeconfig".into(),
            ..described()
        };
        let (problems, _) = checked(&d);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(
            problems[0].starts_with("member cp-1: its agent cannot probe etcd's health")
                && problems[0].contains("etcd.client_cert")
        );
        assert!(
            problems[1].starts_with("member cp-1: cannot check the kube-apiserver's /readyz")
                && problems[1].contains("apiserver.kubeconfig")
        );
    }
}
