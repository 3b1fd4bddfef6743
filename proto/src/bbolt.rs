//! A read-only view of a bbolt file, just enough to look up etcd's buckets (see [`crate::etcd_db`]).
//!
//! It reads the pages it visits with positioned reads and nothing else, so a multi-GB db costs a
//! few pages of memory; it never locks the file and never writes to it. bbolt stores its integers
//! in host byte order; etcd's hosts (amd64, arm64) are little-endian.
//!
//! Layout (bbolt's `page.go`): a page starts with a 16-byte header (id, flags, count, overflow);
//! branch elements (16 bytes: pos, ksize, child page) and leaf elements (16 bytes: flags, pos,
//! ksize, vsize) follow, their key offset counted from the element, a leaf's value right after its
//! key. A bucket value is a header (root page, sequence); an inline bucket's node follows it.

use std::path::{Path, PathBuf};

/// Why a bbolt file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BoltError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} is not a bbolt file as etcd writes it: {what}", path.display())]
    Format { path: PathBuf, what: String },
}

/// The root node of a bucket.
#[derive(Debug, Clone)]
pub struct Bucket(Node);

/// A node (a page with its overflow pages, or an inline bucket's node).
type Node = Vec<u8>;

const BRANCH: u64 = 0x01;
const BUCKET_LEAF: u64 = 0x01;
const MAGIC: u64 = 0xED0C_DAED;
/// Deeper than any real tree (bbolt splits at 4 KiB and more): a loop in a damaged file.
const MAX_DEPTH: usize = 128;

pub struct Bolt {
    path: PathBuf,
    file: std::fs::File,
    len: u64,
    page_size: u64,
    /// The root bucket's root page, from the newest valid meta page.
    root: u64,
}

impl Bolt {
    /// Opens `path` read-only and finds the newest valid meta page.
    pub fn open(path: &Path) -> Result<Self, BoltError> {
        let io = |source| BoltError::Io {
            path: path.to_owned(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        let mut db = Self {
            path: path.to_owned(),
            file,
            len,
            page_size: 0,
            root: 0,
        };
        // Meta pages 0 and 1, after the page header: magic, version, page size, flags, root
        // bucket (root page, sequence), freelist, pgid, txid, checksum (FNV-1a of what precedes
        // it).
        let meta0 = db.read(0, 80)?;
        db.page_size = int(&meta0, 24, 4)
            .ok()
            .filter(|s| (512..=1 << 20).contains(s))
            .ok_or_else(|| db.bad("page size"))?;
        let metas = [meta0, db.read(db.page_size, 80)?];
        let valid =
            |m: &&Vec<u8>| int(m, 16, 4) == Ok(MAGIC) && int(m, 72, 8) == Ok(fnv1a(&m[16..72]));
        let meta = metas
            .iter()
            .filter(valid)
            .max_by_key(|m| int(m, 64, 8).ok())
            .ok_or_else(|| db.bad("no valid meta page"))?;
        db.root = int(meta, 32, 8).map_err(|w| db.bad(w))?;
        Ok(db)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A format error about this file.
    pub fn bad(&self, what: &str) -> BoltError {
        BoltError::Format {
            path: self.path.clone(),
            what: what.to_owned(),
        }
    }

    /// The top-level bucket `name`, when there is one.
    pub fn bucket(&self, name: &[u8]) -> Result<Option<Bucket>, BoltError> {
        let Some((value, flags)) = self.lookup(self.page(self.root)?, name)? else {
            return Ok(None);
        };
        if flags & BUCKET_LEAF == 0 {
            return Err(self.bad("a top-level key that is not a bucket"));
        }
        let root = int(&value, 0, 8).map_err(|w| self.bad(w))?;
        Ok(Some(Bucket(if root == 0 {
            value
                .get(16..)
                .ok_or_else(|| self.bad("inline bucket"))?
                .to_vec()
        } else {
            self.page(root)?
        })))
    }

    /// `key`'s value in `bucket` (`None` when absent or a nested bucket).
    pub fn get(&self, bucket: &Bucket, key: &[u8]) -> Result<Option<Vec<u8>>, BoltError> {
        Ok(self
            .lookup(bucket.0.clone(), key)?
            .filter(|(_, flags)| flags & BUCKET_LEAF == 0)
            .map(|(v, _)| v))
    }

    /// The last key of `bucket`; `None` when it is empty.
    pub fn last_key(&self, bucket: &Bucket) -> Result<Option<Vec<u8>>, BoltError> {
        let leaf = self.leaf(bucket.0.clone(), None)?;
        match self.count(&leaf)?.checked_sub(1) {
            Some(last) => Ok(Some(self.key_of(&leaf, last)?.0)),
            None => Ok(None),
        }
    }

    /// Calls `visit(key, value)` for every key of `bucket` in order, nested buckets left out.
    /// Reads one path of pages at a time: meant for etcd's small buckets, but bounded in memory
    /// whatever the bucket's size.
    pub fn for_each(
        &self,
        bucket: &Bucket,
        visit: &mut dyn FnMut(&[u8], &[u8]),
    ) -> Result<(), BoltError> {
        self.walk(&bucket.0, visit, 0)
    }

    fn walk(
        &self,
        node: &[u8],
        visit: &mut dyn FnMut(&[u8], &[u8]),
        depth: usize,
    ) -> Result<(), BoltError> {
        if depth > MAX_DEPTH {
            return Err(self.bad("nodes nested deeper than 128 levels"));
        }
        for i in 0..self.count(node)? {
            let (key, extra) = self.key_of(node, i)?;
            if is_branch(node) {
                self.walk(&self.page(extra)?, visit, depth + 1)?;
            } else if extra & BUCKET_LEAF == 0 {
                visit(&key, &self.value_of(node, i)?);
            }
        }
        Ok(())
    }

    fn read(&self, offset: u64, n: u64) -> Result<Vec<u8>, BoltError> {
        use std::os::unix::fs::FileExt;
        if offset.checked_add(n).is_none_or(|end| end > self.len) {
            return Err(self.bad("a page lies beyond the end of the file"));
        }
        let mut buf = vec![0u8; usize::try_from(n).map_err(|_| self.bad("a page too large"))?];
        self.file
            .read_exact_at(&mut buf, offset)
            .map_err(|source| BoltError::Io {
                path: self.path.clone(),
                source,
            })?;
        Ok(buf)
    }

    fn page(&self, id: u64) -> Result<Node, BoltError> {
        let at = id
            .checked_mul(self.page_size)
            .ok_or_else(|| self.bad("page id"))?;
        let overflow = int(&self.read(at, 16)?, 12, 4).map_err(|w| self.bad(w))?;
        self.read(at, self.page_size * (overflow + 1))
    }

    fn count(&self, node: &[u8]) -> Result<usize, BoltError> {
        let n = int(node, 10, 2).map_err(|w| self.bad(w))?;
        Ok(usize::try_from(n).expect("u16 fits"))
    }

    /// Element `i`'s key, and its child page (branch) or its flags (leaf).
    fn key_of(&self, node: &[u8], i: usize) -> Result<(Vec<u8>, u64), BoltError> {
        let at = 16 + i * 16;
        let size = |at| {
            int(node, at, 4)
                .map(|v| v as usize)
                .map_err(|w| self.bad(w))
        };
        let branch = is_branch(node);
        let (pos, ksize) = if branch {
            (size(at)?, size(at + 4)?)
        } else {
            (size(at + 4)?, size(at + 8)?)
        };
        let key = node
            .get(at + pos..at + pos + ksize)
            .ok_or_else(|| self.bad("a key runs past its page"))?;
        let extra = if branch {
            int(node, at + 8, 8)
        } else {
            int(node, at, 4)
        }
        .map_err(|w| self.bad(w))?;
        Ok((key.to_vec(), extra))
    }

    /// The value of leaf element `i`.
    fn value_of(&self, node: &[u8], i: usize) -> Result<Vec<u8>, BoltError> {
        let at = 16 + i * 16;
        let size = |at| {
            int(node, at, 4)
                .map(|v| v as usize)
                .map_err(|w| self.bad(w))
        };
        let (pos, ksize, vsize) = (size(at + 4)?, size(at + 8)?, size(at + 12)?);
        node.get(at + pos + ksize..at + pos + ksize + vsize)
            .map(<[u8]>::to_vec)
            .ok_or_else(|| self.bad("a value runs past its page"))
    }

    /// The leaf under `node` that would hold `key` (`None`: the last leaf).
    fn leaf(&self, mut node: Node, key: Option<&[u8]>) -> Result<Node, BoltError> {
        for _depth in 0..MAX_DEPTH {
            if !is_branch(&node) {
                return Ok(node);
            }
            let count = self.count(&node)?;
            let last = count
                .checked_sub(1)
                .ok_or_else(|| self.bad("an empty branch"))?;
            // The last child whose first key sorts at or before `key`.
            let mut pick = last;
            if let Some(key) = key {
                pick = 0;
                for i in 1..count {
                    if self.key_of(&node, i)?.0.as_slice() <= key {
                        pick = i;
                    }
                }
            }
            node = self.page(self.key_of(&node, pick)?.1)?;
        }
        Err(self.bad("nodes nested deeper than 128 levels"))
    }

    /// `key`'s value and leaf flags under the node `root`.
    fn lookup(&self, root: Node, key: &[u8]) -> Result<Option<(Vec<u8>, u64)>, BoltError> {
        let leaf = self.leaf(root, Some(key))?;
        for i in 0..self.count(&leaf)? {
            let (k, flags) = self.key_of(&leaf, i)?;
            if k == key {
                return Ok(Some((self.value_of(&leaf, i)?, flags)));
            }
        }
        Ok(None)
    }
}

fn is_branch(node: &[u8]) -> bool {
    int(node, 8, 2) == Ok(BRANCH)
}

/// A little-endian integer of `n` bytes at `at`.
fn int(b: &[u8], at: usize, n: usize) -> Result<u64, &'static str> {
    let bytes = b.get(at..at + n).ok_or("a record runs past its page")?;
    Ok(bytes.iter().rev().fold(0, |v, x| v << 8 | u64::from(*x)))
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_that_is_not_bbolt_is_a_format_error_naming_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("db");
        std::fs::write(&path, vec![0u8; 8192]).expect("write");
        let err = Bolt::open(&path).err().expect("zeros are not bbolt");
        assert!(matches!(err, BoltError::Format { .. }), "{err}");
        assert!(err.to_string().contains(&path.display().to_string()));
        std::fs::write(&path, b"short").expect("write");
        assert!(Bolt::open(&path).is_err());
        let missing = Bolt::open(&dir.path().join("none")).err().expect("missing");
        assert!(matches!(missing, BoltError::Io { .. }), "{missing}");
    }
}
