//! Inventory against membership: the members the cluster has must be the members the inventory
//! lists, or the restore builds a cluster without some of them and leaves them on the old data.
//!
//! The membership comes from the live cluster when it answers (MemberList through any member's
//! client URL), else from what the members' data dirs record (each agent reads its db in
//! Describe; of data dirs that disagree, the one that applied the most raft entries is newest).

use std::collections::BTreeMap;
use std::time::Duration;

use futures::future::join_all;
use quorate_proto::pb;
use serde::{Deserialize, Serialize};

use crate::inventory::{Inventory, Member};
use crate::verify;

/// One member as the cluster knows it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Known {
    pub id: u64,
    /// Empty in a live member list for a member added but never started. Empty in a data dir's
    /// record for every member that joined after the cluster bootstrapped (`member add`, kubeadm
    /// join): etcd 3.5 writes a joined member's name only to its v2 store (WAL and `.snap`
    /// files), never to the db's `members` bucket.
    pub name: String,
    pub peer_urls: Vec<String>,
}

impl Known {
    fn label(&self, source: &Source) -> String {
        let name = match (self.name.is_empty(), source) {
            (false, _) => self.name.clone(),
            (true, Source::Live { .. }) => "an unstarted member".to_owned(),
            (true, Source::DataDirs { .. }) => "a member whose name is not recorded".to_owned(),
        };
        format!(
            "{name} (ID {:x}, peer {})",
            self.id,
            self.peer_urls.join(",")
        )
    }
}

/// Where a membership was read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    /// MemberList answered by this member.
    Live { via: String },
    /// The data dirs of these members (the newest record, when they disagree).
    DataDirs { members: Vec<String> },
}

impl Source {
    /// For the plan: "membership from the live cluster (cp-1's member list)".
    pub fn describe(&self) -> String {
        match self {
            Source::Live { via } => {
                format!("membership from the live cluster ({via}'s member list)")
            }
            Source::DataDirs { members } => {
                format!("membership from the data dirs of {}", members.join(", "))
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    pub source: Source,
    pub members: Vec<Known>,
}

/// The member list of the live cluster: one client per member at its client URL, short
/// timeouts, all asked at once; the first member in inventory order that answers (with a
/// leader) wins. `None` when no member answers: the cluster is down.
pub async fn live(inventory: &Inventory) -> Option<Membership> {
    let tls = inventory.etcd_tls.as_ref();
    let asked = inventory.members.iter().map(|m| async move {
        let list = async {
            let mut client = verify::member_client(m.client_urls.first()?, tls)
                .await
                .ok()?;
            client.member_list().await.ok()
        };
        let list = tokio::time::timeout(Duration::from_secs(3), list)
            .await
            .ok()??;
        let mut members: Vec<Known> = list
            .members()
            .iter()
            .map(|k| Known {
                id: k.id(),
                name: k.name().to_owned(),
                peer_urls: k.peer_urls().to_vec(),
            })
            .collect();
        members.sort();
        Some(Membership {
            source: Source::Live {
                via: m.name.clone(),
            },
            members,
        })
    });
    join_all(asked).await.into_iter().flatten().next()
}

/// What the members' data dirs record.
#[derive(Debug, Clone, Default)]
pub struct DataDirs {
    /// The newest record, when any data dir has one.
    pub newest: Option<Membership>,
    /// One warning per other record: the data dirs that hold it missed a change.
    pub disagreements: Vec<String>,
    /// Members whose record is unknown, and why.
    pub unread: Vec<(String, String)>,
}

/// What the data dirs record, from the members' Describe (`described[i]` is inventory member
/// i; `None` when its agent did not answer).
pub fn from_data_dirs(members: &[Member], described: &[Option<&pb::DescribeResponse>]) -> DataDirs {
    let mut found = DataDirs::default();
    // Each distinct record → the highest raft index it was seen at, and the data dirs holding it.
    let mut records: BTreeMap<Vec<Known>, (u64, Vec<String>)> = BTreeMap::new();
    for (m, d) in members.iter().zip(described) {
        let Some(d) = d else { continue };
        if !d.recorded_members_error.is_empty() || d.recorded_members.is_empty() {
            let why = if d.recorded_members_error.is_empty() {
                "its agent reports none (an agent older than this coordinator?)".to_owned()
            } else {
                d.recorded_members_error.clone()
            };
            found.unread.push((m.name.clone(), why));
            continue;
        }
        let mut known: Vec<Known> = d
            .recorded_members
            .iter()
            .map(|r| Known {
                id: r.id,
                name: r.name.clone(),
                peer_urls: r.peer_urls.clone(),
            })
            .collect();
        known.sort();
        let entry = records.entry(known).or_default();
        entry.0 = entry.0.max(d.recorded_applied_index);
        entry.1.push(m.name.clone());
    }
    // The newest record: the highest applied index, then the most data dirs.
    let Some((newest, (index, holders))) = records
        .iter()
        .max_by_key(|(_, (index, names))| (*index, names.len()))
        .map(|(k, v)| (k.clone(), v.clone()))
    else {
        return found;
    };
    for (known, (other_index, names)) in &records {
        if *known != newest {
            let source = Source::DataDirs {
                members: names.clone(),
            };
            let list: Vec<String> = known.iter().map(|k| k.label(&source)).collect();
            found.disagreements.push(format!(
                "the data dir of {} records another membership ({}; raft index {other_index}) than the newest, of {} (raft index {index}): it missed a membership change or was left behind; the newest is compared with the inventory",
                names.join(", "),
                list.join("; "),
                holders.join(", ")
            ));
        }
    }
    found.newest = Some(Membership {
        source: Source::DataDirs { members: holders },
        members: newest,
    });
    found
}

/// Compares the inventory's `members` with the live cluster's membership, else with what their
/// data dirs record (`described[i]` is member i's Describe). Each difference is a problem, or a
/// warning with `--allow-membership-change`. Returns where the membership came from (`None`:
/// unknown) and how many differences were let through.
pub fn check(
    members: &[Member],
    described: &[Option<&pb::DescribeResponse>],
    live: Option<&Membership>,
    allow_change: bool,
    problems: &mut Vec<String>,
    warnings: &mut Vec<String>,
) -> (Option<Source>, usize) {
    let known = match live {
        Some(live) => live.clone(),
        None => {
            let dirs = from_data_dirs(members, described);
            let unread: Vec<String> = dirs
                .unread
                .iter()
                .map(|(name, why)| format!("{name}: {why}"))
                .collect();
            let Some(newest) = dirs.newest else {
                warnings.push(format!(
                    "the inventory was not checked against the cluster's membership: the cluster does not answer and no data dir records it ({}); check by hand that the inventory lists every member (one left out would keep the old data), e.g. against each member's --initial-cluster",
                    unread.join("; ")
                ));
                return (None, 0);
            };
            warnings.extend(dirs.disagreements);
            if !unread.is_empty() {
                warnings.push(format!(
                    "the membership some data dirs record is unknown, and was not compared: {}",
                    unread.join("; ")
                ));
            }
            newest
        }
    };
    let differences = compare(members, &known);
    let count = differences.len();
    if allow_change {
        warnings.extend(
            differences
                .into_iter()
                .map(|d| format!("--allow-membership-change: {d}")),
        );
        (Some(known.source), count)
    } else {
        problems.extend(differences);
        (Some(known.source), 0)
    }
}

fn sorted(urls: &[String]) -> Vec<String> {
    let mut urls = urls.to_vec();
    urls.sort();
    urls
}

/// Every difference between the inventory's members and `membership`, each naming the member and
/// the fix; empty when they match.
pub fn compare(members: &[Member], membership: &Membership) -> Vec<String> {
    let from = membership.source.describe();
    let mut unmatched: Vec<&Known> = membership.members.iter().collect();
    let mut differences = Vec::new();
    for m in members {
        let by_name = unmatched
            .iter()
            .position(|k| !k.name.is_empty() && k.name == m.name);
        let by_peer = || {
            unmatched
                .iter()
                .position(|k| k.peer_urls.iter().any(|u| m.peer_urls.contains(u)))
        };
        match by_name.map(|i| (i, true)).or_else(|| by_peer().map(|i| (i, false))) {
            Some((i, true)) => {
                let k = unmatched.remove(i);
                if sorted(&k.peer_urls) != sorted(&m.peer_urls) {
                    differences.push(format!(
                        "member {}: peer URLs {} in the inventory, {} in the {from}: fix peer_urls in the inventory (they must match the member's manifest and the cluster), or pass --allow-membership-change to restore it at the inventory's URLs",
                        m.name,
                        m.peer_urls.join(","),
                        k.peer_urls.join(",")
                    ));
                }
            }
            Some((i, _)) => {
                let k = unmatched.remove(i);
                let unrecorded = matches!(membership.source, Source::DataDirs { .. });
                if unrecorded && k.name.is_empty() {
                    // A data dir does not record the names of joined members: the peer URLs are
                    // all there is to check.
                    if sorted(&k.peer_urls) != sorted(&m.peer_urls) {
                        differences.push(format!(
                            "member {}: peer URLs {} in the inventory, {} in the {from} (which does not record its name): fix peer_urls in the inventory (they must match the member's manifest and the cluster), or pass --allow-membership-change to restore it at the inventory's URLs",
                            m.name,
                            m.peer_urls.join(","),
                            k.peer_urls.join(",")
                        ));
                    }
                    continue;
                }
                differences.push(format!(
                    "member {} (peer {}) is {} in the {from}: fix the name in the inventory (it must be the member's --name), or pass --allow-membership-change to restore it under the inventory's name",
                    m.name,
                    m.peer_urls.join(","),
                    k.label(&membership.source)
                ));
            }
            None => differences.push(format!(
                "member {} (peer {}) is in the inventory but not in the {from}: remove it from the inventory, or pass --allow-membership-change to restore onto the inventory's members",
                m.name,
                m.peer_urls.join(",")
            )),
        }
    }
    for k in unmatched {
        differences.push(format!(
            "the {from} has {}, which the inventory leaves out: a restore would leave it on the old data, cut off from the restored cluster. Add it as a [[member]] with its agent; or, if it is gone for good, remove it (`etcdctl member remove {:x}` while the cluster runs) or pass --allow-membership-change and make sure it never starts again with its old data",
            k.label(&membership.source),
            k.id
        ));
    }
    differences
}

#[cfg(test)]
#[path = "membership_tests.rs"]
mod tests;
