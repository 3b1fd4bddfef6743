//! Preflight of the inventory against the cluster's membership, and of apiserver-only hosts.

use super::tests::{build, healthy, inventory, options, snapshot};
use super::*;
use crate::inventory::ApiserverHost;
use crate::membership::Known;
use quorate_proto::model::active_step_fields;

fn known(inv: &Inventory) -> Vec<Known> {
    inv.members
        .iter()
        .zip(1..)
        .map(|(m, id)| Known {
            id,
            name: m.name.clone(),
            peer_urls: m.peer_urls.clone(),
        })
        .collect()
}

fn described(inv: &Inventory) -> Vec<Result<pb::DescribeResponse, String>> {
    inv.members.iter().map(|m| Ok(healthy(m))).collect()
}

/// An external cluster: members without apiservers, and `hosts` apiserver-only hosts.
fn external(hosts: usize) -> (Inventory, Vec<Result<pb::DescribeResponse, String>>) {
    let mut inv = inventory(3);
    inv.apiservers = (1..=hosts)
        .map(|j| ApiserverHost {
            name: format!("api-{j}"),
            agent: format!("https://10.0.0.{}:7443", 20 + j),
            agent_server_name: None,
        })
        .collect();
    let mut described = described(&inv);
    for d in described.iter_mut().flatten() {
        d.apiserver_present = false;
        d.apiserver_runtime = "none".into();
    }
    described.extend(inv.apiservers.iter().map(|h| {
        Ok(pb::DescribeResponse {
            role: pb::AgentRole::ApiserverHost as i32,
            host_name: h.name.clone(),
            hostname: format!("{}.example.internal", h.name),
            apiserver_present: true,
            apiserver_runtime: "static-pod".into(),
            ..Default::default()
        })
    }));
    (inv, described)
}

#[test]
fn a_member_the_inventory_leaves_out_refuses_the_restore_unless_allowed() {
    let inv = inventory(3);
    let cluster = inventory(4);
    let mut opts = options(&inv);
    opts.live_membership = Some(Membership {
        source: Source::Live { via: "cp-2".into() },
        members: known(&cluster),
    });
    let err = build(&inv, &described(&inv), snapshot(), &opts).expect_err("cp-4 left out");
    let text = err.to_string();
    assert!(
        text.contains("nothing was changed")
            && text.contains("the membership from the live cluster (cp-2's member list) has cp-4 (ID 4, peer https://127.0.0.14:2380), which the inventory leaves out"),
        "{text}"
    );
    opts.allow_membership_change = true;
    let plan = build(&inv, &described(&inv), snapshot(), &opts).expect("allowed");
    assert_eq!(plan.membership_differences, 1);
    assert!(
        plan.warnings
            .iter()
            .any(|w| w.starts_with("--allow-membership-change: the membership from the live cluster (cp-2's member list) has cp-4")),
        "{:?}",
        plan.warnings
    );
    let rendered = plan.render();
    assert!(
        rendered.contains("differ from the membership from the live cluster (cp-2's member list) (1 difference, let through by --allow-membership-change"),
        "{rendered}"
    );
}

#[test]
fn a_cluster_that_does_not_answer_is_compared_with_its_data_dirs_and_the_plan_says_so() {
    let inv = inventory(3);
    let record = |d: &mut pb::DescribeResponse, members: &[Known], index: u64| {
        d.recorded_members = members
            .iter()
            .map(|k| pb::RecordedMember {
                id: k.id,
                name: k.name.clone(),
                peer_urls: k.peer_urls.clone(),
                ..Default::default()
            })
            .collect();
        d.recorded_applied_index = index;
    };
    let mut described = described(&inv);
    for d in described.iter_mut().flatten() {
        record(d, &known(&inv), 7);
    }
    let opts = Options {
        live_membership: None,
        ..options(&inv)
    };
    let plan = build(&inv, &described, snapshot(), &opts).expect("plan");
    assert!(
        !plan.warnings.iter().any(|w| w.contains("membership")),
        "{:?}",
        plan.warnings
    );
    assert!(
        plan.render().contains(
            "members: the inventory's match the membership from the data dirs of cp-1, cp-2, cp-3"
        ),
        "{}",
        plan.render()
    );
    // cp-3's data dir applied a later change that added cp-4: it is the newest record.
    let grown = inventory(4);
    if let Some(Ok(d)) = described.get_mut(2) {
        record(d, &known(&grown), 9);
    }
    let err = build(&inv, &described, snapshot(), &opts).expect_err("cp-4 left out");
    assert!(
        err.to_string()
            .contains("the membership from the data dirs of cp-3 has cp-4 (ID 4, peer https://127.0.0.14:2380)"),
        "{err}"
    );
}

#[test]
fn apiserver_hosts_are_planned_and_shown_fenced_and_unfenced_with_the_members() {
    let (inv, described) = external(2);
    let plan = build(&inv, &described, snapshot(), &options(&inv)).expect("plan");
    let names: Vec<&str> = plan
        .apiserver_hosts
        .iter()
        .map(|h| h.name.as_str())
        .collect();
    assert_eq!(names, ["api-1", "api-2"]);
    assert!(
        !plan.warnings.iter().any(|w| w.contains("keep writing")),
        "{:?}",
        plan.warnings
    );
    let text = plan.render();
    for line in [
        "apiserver hosts (no etcd; fenced before etcd halts, unfenced after verify):",
        "api-1    agent https://10.0.0.21:7443  host api-1.example.internal  apiserver: static-pod",
        "fence      stop every kube-apiserver (on the members and on api-1, api-2), kube-controller-manager and kube-scheduler, all at once",
        "unfence    start every kube-apiserver (on the members and on api-1, api-2) and wait",
    ] {
        assert!(text.contains(line), "{line}\n{text}");
    }
}

#[test]
fn an_external_cluster_without_apiserver_hosts_is_warned_not_refused() {
    let (inv, members) = external(0);
    let plan = build(&inv, &members, snapshot(), &options(&inv)).expect("a warning only");
    assert!(
        plan.warnings.iter().any(|w| w.contains(
            "kube-apiservers elsewhere keep writing to etcd until it stops and reconnect to restored data with stale caches: list them as [[apiserver]] hosts with an agent"
        )),
        "{:?}",
        plan.warnings
    );
    // A stacked cluster needs no apiserver host.
    let inv = inventory(3);
    let plan = build(&inv, &described(&inv), snapshot(), &options(&inv)).expect("plan");
    assert!(!plan.warnings.iter().any(|w| w.contains("keep writing")));
}

#[test]
fn each_bad_apiserver_host_is_refused_naming_it_and_the_fix() {
    type Edit = Box<dyn Fn(&mut Vec<Result<pb::DescribeResponse, String>>)>;
    let cases: [(Edit, &str); 5] = [
        (
            Box::new(|d| d[3] = Err("connection refused".into())),
            "apiserver host api-1: agent at https://10.0.0.21:7443 did not answer Describe",
        ),
        (
            Box::new(|d| {
                d[4] = Ok(pb::DescribeResponse {
                    role: pb::AgentRole::EtcdMember as i32,
                    member_name: "etcd-x".into(),
                    ..Default::default()
                })
            }),
            "apiserver host api-2: the agent at https://10.0.0.22:7443 runs etcd member etcd-x",
        ),
        (
            Box::new(|d| {
                if let Ok(h) = &mut d[4] {
                    h.host_name = "localhost".into();
                }
            }),
            "apiserver host api-2: its agent answers to \"localhost\": set host_name = \"api-2\"",
        ),
        (
            Box::new(|d| {
                if let Ok(h) = &mut d[3] {
                    h.active_restore_id = "7f1c3a52-9d7e-4c1b-8f7a-0b6a6f0e2a11".into();
                    (h.active_step, h.active_step_state) = active_step_fields(Some((
                        quorate_proto::model::Step::Unfence,
                        quorate_proto::model::StepState::Failed,
                    )));
                }
            }),
            "apiserver host api-1: holds unfinished restore 7f1c3a52-9d7e-4c1b-8f7a-0b6a6f0e2a11 \
             (last step unfence failed)",
        ),
        (
            Box::new(|d| {
                d[0] = Ok(pb::DescribeResponse {
                    role: pb::AgentRole::ApiserverHost as i32,
                    host_name: "api-9".into(),
                    ..Default::default()
                })
            }),
            "member cp-1: the agent at https://127.0.0.11:7443 runs on apiserver-only host \"api-9\"",
        ),
    ];
    for (edit, says) in cases {
        let (inv, mut described) = external(2);
        edit(&mut described);
        let err = build(&inv, &described, snapshot(), &options(&inv)).expect_err(says);
        assert!(
            err.problems.iter().any(|p| p.contains(says)),
            "{says}: {:?}",
            err.problems
        );
    }
}
