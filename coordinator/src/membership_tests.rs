//! Inventory against membership: each kind of difference, named with its fix; and which record
//! of the data dirs is used when they disagree.

use quorate_proto::pb;

use super::*;

fn member(i: u64) -> Member {
    Member {
        name: format!("cp-{i}"),
        agent: format!("https://10.0.0.{}:7443", 10 + i),
        agent_server_name: None,
        peer_urls: vec![peer(i)],
        client_urls: vec![format!("https://10.0.0.{}:2379", 10 + i)],
    }
}

fn peer(i: u64) -> String {
    format!("https://10.0.0.{}:2380", 10 + i)
}

fn known(i: u64) -> Known {
    Known {
        id: 0xa0 + i,
        name: format!("cp-{i}"),
        peer_urls: vec![peer(i)],
    }
}

fn live(members: Vec<Known>) -> Membership {
    Membership {
        source: Source::Live { via: "cp-1".into() },
        members,
    }
}

fn inventory(n: u64) -> Vec<Member> {
    (1..=n).map(member).collect()
}

#[test]
fn the_same_members_are_no_difference() {
    let mut reversed: Vec<Known> = (1..=3).map(known).collect();
    reversed.reverse();
    assert_eq!(
        compare(&inventory(3), &live(reversed)),
        Vec::<String>::new()
    );
}

#[test]
fn a_member_the_inventory_leaves_out_is_named_with_its_id_and_the_fix() {
    let found = compare(&inventory(3), &live((1..=4).map(known).collect()));
    assert_eq!(found.len(), 1, "{found:?}");
    let d = &found[0];
    assert!(
        d.contains("the membership from the live cluster (cp-1's member list) has cp-4 (ID a4, peer https://10.0.0.14:2380), which the inventory leaves out")
            && d.contains("leave it on the old data")
            && d.contains("Add it as a [[member]]")
            && d.contains("etcdctl member remove a4"),
        "{d}"
    );
}

#[test]
fn an_extra_member_in_the_inventory_is_named() {
    let found = compare(&inventory(3), &live((1..=2).map(known).collect()));
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].contains(
            "member cp-3 (peer https://10.0.0.13:2380) is in the inventory but not in the membership from the live cluster"
        ) && found[0].contains("--allow-membership-change"),
        "{}",
        found[0]
    );
}

#[test]
fn a_renamed_member_is_matched_by_its_peer_url() {
    let mut inv = inventory(3);
    inv[2].name = "etcd-c".into();
    let found = compare(&inv, &live((1..=3).map(known).collect()));
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].contains(
            "member etcd-c (peer https://10.0.0.13:2380) is cp-3 (ID a3, peer https://10.0.0.13:2380) in the membership from the live cluster"
        ) && found[0].contains("must be the member's --name"),
        "{}",
        found[0]
    );
}

#[test]
fn a_different_peer_url_is_named_with_both() {
    let mut inv = inventory(3);
    inv[1].peer_urls = vec!["https://10.9.9.9:2380".into()];
    let found = compare(&inv, &live((1..=3).map(known).collect()));
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].contains(
            "member cp-2: peer URLs https://10.9.9.9:2380 in the inventory, https://10.0.0.12:2380 in the membership from"
        ),
        "{}",
        found[0]
    );
}

#[test]
fn an_unstarted_member_is_matched_by_peer_url_and_said_to_be_unstarted() {
    let mut members: Vec<Known> = (1..=3).map(known).collect();
    members[2].name.clear();
    let found = compare(&inventory(3), &live(members.clone()));
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].contains("is an unstarted member (ID a3"),
        "{}",
        found[0]
    );
    let found = compare(&inventory(2), &live(members));
    assert!(
        found[0].contains("member list) has an unstarted member (ID a3"),
        "{found:?}"
    );
}

#[test]
fn a_data_dir_matches_joined_members_by_peer_url_and_says_their_name_is_not_recorded() {
    // As etcd 3.5 records a kubeadm cluster: the first member by name, the joined ones without.
    let mut members: Vec<Known> = (1..=3).map(known).collect();
    for k in &mut members[1..] {
        k.name.clear();
    }
    let dirs = |members: Vec<Known>| Membership {
        source: Source::DataDirs {
            members: vec!["cp-1".into(), "cp-2".into()],
        },
        members,
    };
    assert_eq!(
        compare(&inventory(3), &dirs(members.clone())),
        Vec::<String>::new()
    );
    let found = compare(&inventory(2), &dirs(members.clone()));
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].contains(
            "the membership from the data dirs of cp-1, cp-2 has a member whose name is not recorded (ID a3, peer https://10.0.0.13:2380), which the inventory leaves out"
        ),
        "{}",
        found[0]
    );
    let mut moved = inventory(3);
    moved[1].peer_urls.push("https://10.9.9.9:2380".into());
    let found = compare(&moved, &dirs(members));
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].starts_with("member cp-2: peer URLs https://10.0.0.12:2380,https://10.9.9.9:2380 in the inventory, https://10.0.0.12:2380 in the membership from the data dirs of cp-1, cp-2 (which does not record its name)"),
        "{}",
        found[0]
    );
}

#[test]
fn every_difference_is_reported_at_once() {
    let mut inv = inventory(3);
    inv[0].name = "renamed".into();
    inv[1].peer_urls = vec!["https://10.9.9.9:2380".into()];
    let mut cluster: Vec<Known> = (1..=2).map(known).collect();
    cluster.push(known(4));
    let found = compare(&inv, &live(cluster));
    assert_eq!(
        found.len(),
        4,
        "renamed, peer URL, extra cp-3, missing cp-4: {found:?}"
    );
}

fn recorded(index: u64, members: &[Known]) -> pb::DescribeResponse {
    pb::DescribeResponse {
        role: pb::AgentRole::EtcdMember as i32,
        recorded_members: members
            .iter()
            .map(|k| pb::RecordedMember {
                id: k.id,
                name: k.name.clone(),
                peer_urls: k.peer_urls.clone(),
                ..Default::default()
            })
            .collect(),
        recorded_applied_index: index,
        ..Default::default()
    }
}

#[test]
fn data_dirs_that_agree_are_the_source_and_name_themselves() {
    let all: Vec<Known> = (1..=3).map(known).collect();
    let d: Vec<_> = (0..3).map(|_| recorded(42, &all)).collect();
    let described: Vec<Option<&pb::DescribeResponse>> = d.iter().map(Some).collect();
    let dirs = from_data_dirs(&inventory(3), &described);
    assert!(dirs.disagreements.is_empty() && dirs.unread.is_empty());
    let m = dirs.newest.expect("a record");
    assert_eq!(m.members, all);
    assert_eq!(
        m.source.describe(),
        "membership from the data dirs of cp-1, cp-2, cp-3"
    );
}

#[test]
fn of_data_dirs_that_disagree_the_newest_is_used_and_the_others_named() {
    let all: Vec<Known> = (1..=4).map(known).collect();
    let old: Vec<Known> = (1..=3).map(known).collect();
    let unreadable = pb::DescribeResponse {
        recorded_members_error: "no such file".into(),
        ..Default::default()
    };
    let d = [recorded(90, &all), recorded(90, &all), recorded(40, &old)];
    let described = [
        Some(&d[0]),
        Some(&d[1]),
        Some(&d[2]),
        Some(&unreadable),
        None,
    ];
    let dirs = from_data_dirs(&inventory(5), &described);
    let [w] = dirs.disagreements.as_slice() else {
        panic!("one other record: {:?}", dirs.disagreements)
    };
    assert!(
        w.contains("the data dir of cp-3 records another membership")
            && w.contains("raft index 40")
            && w.contains("of cp-1, cp-2 (raft index 90)"),
        "{w}"
    );
    assert_eq!(
        dirs.unread,
        [("cp-4".to_owned(), "no such file".to_owned())]
    );
    let m = dirs.newest.expect("a record");
    assert_eq!(m.members, all, "the newest record wins");
    assert_eq!(
        m.source,
        Source::DataDirs {
            members: vec!["cp-1".into(), "cp-2".into()]
        }
    );
    // The newest record, compared with an inventory of cp-1..cp-3, finds cp-4 left out.
    let found = compare(&inventory(3), &m);
    assert!(
        found[0].contains("the membership from the data dirs of cp-1, cp-2 has cp-4"),
        "{found:?}"
    );
}

#[test]
fn no_readable_data_dir_is_no_record_and_a_warning_saying_why() {
    let unreadable = pb::DescribeResponse {
        recorded_members_error: "etcd 3.4".into(),
        ..Default::default()
    };
    let dirs = from_data_dirs(&inventory(1), &[Some(&unreadable)]);
    assert!(dirs.newest.is_none());
    assert_eq!(dirs.unread.len(), 1);
    let (mut problems, mut warnings) = (Vec::new(), Vec::new());
    let checked = check(
        &inventory(1),
        &[Some(&unreadable)],
        None,
        false,
        &mut problems,
        &mut warnings,
    );
    assert_eq!(checked, (None, 0));
    assert!(problems.is_empty());
    let [w] = warnings.as_slice() else {
        panic!("{warnings:?}")
    };
    assert!(
        w.contains("not checked against the cluster's membership") && w.contains("cp-1: etcd 3.4"),
        "{w}"
    );
}

#[test]
fn differences_are_problems_unless_a_membership_change_is_allowed() {
    let cluster = live((1..=4).map(known).collect());
    let (mut problems, mut warnings) = (Vec::new(), Vec::new());
    let checked = check(
        &inventory(3),
        &[],
        Some(&cluster),
        false,
        &mut problems,
        &mut warnings,
    );
    assert_eq!(checked, (Some(cluster.source.clone()), 0));
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(warnings.is_empty());
    let (mut problems, mut warnings) = (Vec::new(), Vec::new());
    let checked = check(
        &inventory(3),
        &[],
        Some(&cluster),
        true,
        &mut problems,
        &mut warnings,
    );
    assert_eq!(checked, (Some(cluster.source.clone()), 1));
    assert!(problems.is_empty());
    assert!(
        warnings[0].starts_with("--allow-membership-change: the membership from the live cluster (cp-1's member list) has cp-4"),
        "{warnings:?}"
    );
}
