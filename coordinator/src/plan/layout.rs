//! The storage layout each member reports: the room its filesystems need for the restored copy,
//! the layouts its agent refuses, and the lines `plan` shows.

use quorate_proto::model::RestoreId;
use quorate_proto::pb;
use serde::{Deserialize, Serialize};

use super::MemberPlan;

/// etcd preallocates each 64 MB WAL segment, and one more ahead of it once it runs.
pub const WAL_PREALLOCATION: u64 = 64 << 20;

/// One of a member's etcd dirs and its filesystem, as its agent reported it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirPlan {
    pub path: String,
    pub mount_point: bool,
    pub fs_type: String,
    /// `major:minor` of its filesystem.
    pub device: String,
    pub free_bytes: u64,
}

impl From<&pb::DirLayout> for DirPlan {
    fn from(d: &pb::DirLayout) -> Self {
        Self {
            path: d.path.clone(),
            mount_point: d.mount_point,
            fs_type: d.fs_type.clone(),
            device: d.device.clone(),
            free_bytes: d.free_bytes,
        }
    }
}

impl DirPlan {
    /// `/var/lib/etcd (mount point, ext4)`.
    pub fn describe(&self) -> String {
        let mut facts = Vec::new();
        if self.mount_point {
            facts.push("mount point");
        }
        if !self.fs_type.is_empty() {
            facts.push(&self.fs_type);
        }
        if facts.is_empty() {
            self.path.clone()
        } else {
            format!("{} ({})", self.path, facts.join(", "))
        }
    }

    /// Where PRESERVE keeps the original: a sibling, or a hidden dir inside a mount point.
    pub fn preserved(&self, id: RestoreId) -> String {
        if self.mount_point {
            format!("{}/.quorate-{id}", self.path.trim_end_matches('/'))
        } else {
            format!("{}.quorate-{id}", self.path.trim_end_matches('/'))
        }
    }
}

/// WAL segments a filesystem that holds etcd's WAL needs free while the restore runs: the
/// prepared copy's segment, the next one the original (still serving beside the copy) may
/// preallocate before the halt, and the next one the restored member preallocates once it runs.
pub const WAL_SEGMENTS_NEEDED: u64 = 3;

/// The bytes the data dir's filesystem needs free for a snapshot of `snapshot_size`: the copy
/// PREPARE makes while the original still exists (the snapshot's size) and as much again for
/// the databases to grow, plus [`WAL_SEGMENTS_NEEDED`] WAL segments when the WAL is on it.
pub fn data_needed(snapshot_size: u64, wal_here: bool) -> u64 {
    2 * snapshot_size + if wal_here { wal_needed() } else { 0 }
}

/// The bytes a `--wal-dir` on a filesystem of its own needs free.
pub fn wal_needed() -> u64 {
    WAL_SEGMENTS_NEEDED * WAL_PREALLOCATION
}

/// What the room check requires, for `quorate plan`.
pub fn room_text(snapshot_size: u64) -> String {
    format!(
        "room: the snapshot is restored beside each data dir (PREPARE) while the original still \
         exists and serves, so each data dir's filesystem needs {:.1} MB free (twice the snapshot: \
         the prepared copy and as much again for growth) plus {} MB when the WAL is on it ({} \
         WAL segments of 64 MB: the copy's, the next one the serving original may preallocate, \
         the next one the restored member preallocates); a wal dir on its own filesystem needs \
         the {} MB",
        data_needed(snapshot_size, false) as f64 / f64::from(1u32 << 20),
        wal_needed() >> 20,
        WAL_SEGMENTS_NEEDED,
        wal_needed() >> 20
    )
}

/// The problems of one member's layout: its agent's refusals and too little room on the
/// filesystem(s) that will hold the prepared copy beside the original (the data dir's, and the
/// WAL dir's when it is another one). See [`room_text`].
pub fn problems(name: &str, d: &pb::DescribeResponse, snapshot_size: u64) -> Vec<String> {
    let mut out: Vec<String> = d
        .layout_problems
        .iter()
        .map(|p| format!("member {name}: {p}"))
        .collect();
    let data = d.data_layout.as_ref();
    let data_free = data.map_or(d.free_bytes, |l| l.free_bytes);
    let data_where = data.map_or_else(|| d.data_dir.clone(), |l| DirPlan::from(l).describe());
    let separate_wal = d
        .wal_layout
        .as_ref()
        .filter(|w| data.is_none_or(|l| l.device.is_empty() || w.device != l.device));
    let data_needed = data_needed(snapshot_size, separate_wal.is_none());
    let why = match separate_wal {
        Some(_) => "twice the snapshot",
        None => "twice the snapshot plus three 64 MB WAL segments",
    };
    if data_free < data_needed {
        out.push(format!(
            "member {name}: {} MB free on the filesystem of data dir {data_where}, {} MB needed \
             ({why}): the restored copy is prepared there while the original still exists; free \
             some space",
            data_free >> 20,
            data_needed >> 20
        ));
    }
    if let Some(w) = separate_wal {
        let needed = wal_needed();
        if w.free_bytes < needed {
            out.push(format!(
                "member {name}: {} MB free on the filesystem of wal dir {}, {} MB needed (the \
                 prepared copy's 64 MB WAL segment, the next one the serving original may \
                 preallocate, and the next one the restored member preallocates): free some space",
                w.free_bytes >> 20,
                DirPlan::from(w).describe(),
                needed >> 20
            ));
        }
    }
    out
}

impl MemberPlan {
    /// `data dir /var/lib/etcd (mount point, ext4), wal dir /var/lib/etcd-wal (mount point)`.
    pub fn layout_line(&self) -> String {
        let data = self
            .data_layout
            .as_ref()
            .map_or_else(|| self.data_dir.clone(), DirPlan::describe);
        let wal = match (&self.wal_layout, self.wal_dir.as_str()) {
            (Some(w), _) => w.describe(),
            (None, "") => "in the data dir".to_owned(),
            (None, w) => format!("{w} (inside the data dir; moves with it)"),
        };
        format!("data dir {data}, wal dir {wal}")
    }

    /// Where the originals are kept after restore `id`.
    pub fn preserved_text(&self, id: RestoreId) -> String {
        let data = self.data_layout.as_ref().map_or_else(
            || format!("{}.quorate-{id}", self.data_dir),
            |d| d.preserved(id),
        );
        match &self.wal_layout {
            Some(w) => format!("{data} (wal: {})", w.preserved(id)),
            None => data,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::Plan;
    use super::super::tests::{build, healthy, inventory, options, snapshot};
    use super::*;

    fn dir(path: &str, mount_point: bool, fs_type: &str, device: &str, free: u64) -> pb::DirLayout {
        pb::DirLayout {
            path: path.into(),
            mount_point,
            fs_type: fs_type.into(),
            device: device.into(),
            free_bytes: free,
            bytes: 0,
            exists: true,
        }
    }

    /// Every member with the data dir and WAL dir given.
    fn plan_with(
        data: pb::DirLayout,
        wal: Option<pb::DirLayout>,
        problems: &[&str],
    ) -> Result<Plan, Vec<String>> {
        let inv = inventory(3);
        let described: Vec<_> = inv
            .members
            .iter()
            .map(|m| {
                let mut d = healthy(m);
                d.free_bytes = data.free_bytes;
                d.data_layout = Some(data.clone());
                d.wal_dir = wal.as_ref().map(|w| w.path.clone()).unwrap_or_default();
                d.wal_layout = wal.clone();
                d.layout_problems = problems.iter().map(|p| (*p).to_owned()).collect();
                Ok(d)
            })
            .collect();
        build(&inv, &described, snapshot(), &options(&inv)).map_err(|e| e.problems)
    }

    #[test]
    fn plan_shows_mount_points_and_where_the_originals_are_kept() {
        let plan = plan_with(
            dir("/var/lib/etcd", true, "ext4", "8:16", 10 << 30),
            Some(dir("/var/lib/etcd-wal", true, "xfs", "8:32", 1 << 30)),
            &[],
        )
        .expect("plan");
        let text = plan.render();
        assert!(
            text.contains(
                "data dir /var/lib/etcd (mount point, ext4), wal dir /var/lib/etcd-wal (mount point, xfs)"
            ),
            "{text}"
        );
        let id = plan.restore_id;
        assert_eq!(
            plan.members[0].preserved_text(id),
            format!("/var/lib/etcd/.quorate-{id} (wal: /var/lib/etcd-wal/.quorate-{id})")
        );
        let plain = plan_with(
            dir("/var/lib/etcd", false, "ext4", "8:1", 10 << 30),
            None,
            &[],
        )
        .expect("plan");
        assert!(
            plain
                .render()
                .contains("data dir /var/lib/etcd (ext4), wal dir in the data dir"),
            "{}",
            plain.render()
        );
        assert_eq!(
            plain.members[0].preserved_text(id),
            format!("/var/lib/etcd.quorate-{id}")
        );
    }

    #[test]
    fn room_is_checked_on_the_filesystem_that_holds_each_restored_part() {
        // 100 MB snapshot: the data dir's filesystem needs 200 MB when the WAL is elsewhere.
        let data = dir("/var/lib/etcd", true, "ext4", "8:16", 210 << 20);
        let small_wal = dir("/var/lib/etcd-wal", true, "tmpfs", "0:50", 150 << 20);
        let found = plan_with(data.clone(), Some(small_wal.clone()), &[]).expect_err("wal room");
        assert_eq!(found.len(), 3, "{found:?}");
        assert!(
            found[0].starts_with("member cp-1: 150 MB free on the filesystem of wal dir /var/lib/etcd-wal (mount point, tmpfs), 192 MB needed"),
            "{found:?}"
        );
        let roomy_wal = dir("/var/lib/etcd-wal", true, "tmpfs", "0:50", 1 << 30);
        plan_with(data.clone(), Some(roomy_wal), &[]).expect("room on both");
        // The WAL on the data dir's own filesystem counts against it.
        let same_fs = dir(
            "/var/lib/etcd/wal-elsewhere",
            false,
            "ext4",
            "8:16",
            210 << 20,
        );
        let found = plan_with(data, Some(same_fs), &[]).expect_err("shared room");
        assert!(
            found[0].contains("210 MB free on the filesystem of data dir /var/lib/etcd (mount point, ext4), 392 MB needed")
                && found[0].contains("prepared there while the original still exists"),
            "{found:?}"
        );
        // The plan says what the check requires, for this snapshot.
        let plan = plan_with(
            dir("/var/lib/etcd", false, "ext4", "8:1", 10 << 30),
            None,
            &[],
        )
        .expect("plan");
        let text = plan.render();
        assert!(
            text.contains("each data dir's filesystem needs 200.0 MB free (twice the snapshot")
                && text.contains("plus 192 MB when the WAL is on it"),
            "{text}"
        );
    }

    #[test]
    fn an_unsupported_layout_is_refused_naming_the_member_and_the_fix() {
        let found = plan_with(
            dir("/var/lib/etcd", false, "ext4", "8:1", 10 << 30),
            None,
            &["data dir /var/lib/etcd is a symlink to /srv/etcd: point --data-dir at /srv/etcd itself"],
        )
        .expect_err("refused");
        assert_eq!(found.len(), 3, "{found:?}");
        assert!(
            found[1].starts_with("member cp-2: data dir /var/lib/etcd is a symlink")
                && found[1].contains("point --data-dir at /srv/etcd"),
            "{found:?}"
        );
    }
}
