//! Apiserver-only hosts (external etcd): their preflight checks and their place in the plan. A
//! kube-apiserver that is not fenced keeps writing to etcd until it stops, and reconnects to the
//! restored data with caches from before it.

use quorate_proto::model::{AgentRole, Describe};
use quorate_proto::pb;
use serde::{Deserialize, Serialize};

use crate::inventory::{ApiserverHost, Inventory, Member};

/// One apiserver-only host as planned: fenced and unfenced with the members, no etcd steps.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HostPlan {
    pub name: String,
    pub agent: String,
    pub hostname: String,
    pub apiserver_runtime: String,
}

/// Checks the apiserver hosts' agents (`described[j]` is host j) and plans them.
pub fn check(
    hosts: &[ApiserverHost],
    described: &[Result<Describe, String>],
    problems: &mut Vec<String>,
) -> Vec<HostPlan> {
    let mut planned = Vec::new();
    for (j, h) in hosts.iter().enumerate() {
        let d = match described.get(j) {
            Some(Ok(d)) => d,
            Some(Err(e)) => {
                problems.push(format!(
                    "apiserver host {}: agent at {} did not answer Describe: {e}; check that quorate-agent runs there and trusts this coordinator's certificate",
                    h.name, h.agent
                ));
                continue;
            }
            None => {
                problems.push(format!(
                    "apiserver host {}: its agent at {} was not asked",
                    h.name, h.agent
                ));
                continue;
            }
        };
        if d.role != AgentRole::ApiserverHost {
            let what = if d.member_name.is_empty() {
                "does not say it is an apiserver-only host (an agent older than this coordinator? upgrade it)".to_owned()
            } else {
                format!(
                    "runs etcd member {} (its config has an [etcd] section): list it as a [[member]], or remove [etcd] from its config if no etcd runs there",
                    d.member_name
                )
            };
            problems.push(format!(
                "apiserver host {}: the agent at {} {what}",
                h.name, h.agent
            ));
            continue;
        }
        if d.host_name != h.name {
            problems.push(format!(
                "apiserver host {}: its agent answers to {:?}: set host_name = \"{}\" in its agent config, or fix the name in the inventory",
                h.name, d.host_name, h.name
            ));
        }
        if let Some(active) = d.active {
            let id = active.restore_id;
            problems.push(format!(
                "apiserver host {}: holds unfinished {active}; finish it with `quorate resume {id}` or undo it with `quorate rollback {id}`",
                h.name
            ));
        }
        planned.push(HostPlan {
            name: h.name.clone(),
            agent: h.agent.clone(),
            hostname: d.hostname.clone(),
            apiserver_runtime: d.apiserver_runtime.clone(),
        });
    }
    planned
}

/// A `[[member]]` whose agent is an apiserver-only host's.
pub fn not_a_member(m: &Member, d: &Describe) -> Option<String> {
    (d.role == AgentRole::ApiserverHost).then(|| {
        format!(
            "member {}: the agent at {} runs on apiserver-only host {:?} (no [etcd] in its config): list that host as an [[apiserver]] host, and give member {} the agent on its etcd host",
            m.name, m.agent, d.host_name, m.name
        )
    })
}

/// The warning for an external etcd cluster (no member runs a kube-apiserver) whose inventory
/// names no apiserver host: the apiservers elsewhere would not be fenced. `described` are the
/// members' (`None`: did not answer, which preflight refuses anyway).
pub fn unfenced_warning(
    inventory: &Inventory,
    described: &[Option<&pb::DescribeResponse>],
) -> Option<String> {
    let all_described = described.iter().all(Option::is_some);
    let stacked = described.iter().flatten().any(|d| d.apiserver_present);
    (all_described && !stacked && inventory.apiservers.is_empty()).then(|| {
        "no member runs a kube-apiserver (external etcd) and the inventory lists no apiserver host: kube-apiservers elsewhere keep writing to etcd until it stops and reconnect to restored data with stale caches: list them as [[apiserver]] hosts with an agent".to_owned()
    })
}
