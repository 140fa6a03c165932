//! Unchanged re-capture: when every entry of a tree still has the metadata its
//! parent snapshot recorded — name, type, mode, owner, size, mtime, ctime, inode,
//! link count — the new snapshot takes the parent's tree as it is, as restic does
//! when nothing changed, without handing each entry through the archiver's
//! threads. Any difference, and any error, sends the capture the usual way.
//!
//! ctime covers what mtime does not: a chmod, chown, xattr or link change moves
//! it. Access times are kept from the parent (reading a file does not change it).

use std::ffi::OsString;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};

use rustic_core::jiff::Timestamp;
use rustic_core::repofile::{Node, NodeType, SnapshotFile};
use rustic_core::{IndexedTree, Repository};

use crate::restore::unix_mode;

/// Whether the tree at `dir` matches `node` (its directory node in the parent
/// snapshot) entry by entry. `None`: it does not, or could not be compared.
pub(crate) fn unchanged<S: IndexedTree + Sync>(
    repo: &Repository<S>,
    parent: &SnapshotFile,
    path: &str,
    dir: &Path,
) -> Option<()> {
    // The snapshot's node for the root itself is made up by the archiver (the
    // root's own metadata is in the manifest): only what it holds is compared.
    let root = repo.node_from_snapshot_and_path(parent, path).ok()?;
    let meta = std::fs::symlink_metadata(dir).ok()?;
    let dev = meta.dev();
    // Directories are compared by one worker per core, each taking the next one
    // waiting and queueing the directories it finds.
    let work = Work {
        state: Mutex::new((vec![(dir.to_path_buf(), root)], 1)),
        changed: AtomicBool::new(false),
        wake: Condvar::new(),
    };
    std::thread::scope(|s| {
        for _ in 0..crate::workers::count() {
            s.spawn(|| {
                while let Some((dir, node)) = work.next() {
                    // A worker that failed must still count its directory as done
                    // (as differing), or the others would wait for it forever.
                    let found = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        same_dir(repo, &node, &dir, dev)
                    }))
                    .unwrap_or(None);
                    work.done(found);
                }
            });
        }
    });
    (!work.changed.load(Ordering::Relaxed)).then_some(())
}

/// Directories waiting to be compared and how many are not finished; whether a
/// difference was found.
struct Work {
    state: Mutex<(Vec<(PathBuf, Node)>, usize)>,
    changed: AtomicBool,
    wake: Condvar,
}

impl Work {
    /// The next directory to compare; `None` when all are done or one differed.
    fn next(&self) -> Option<(PathBuf, Node)> {
        let mut state = self.state.lock().ok()?;
        loop {
            if self.changed.load(Ordering::Relaxed) || state.1 == 0 {
                return None;
            }
            if let Some(job) = state.0.pop() {
                return Some(job);
            }
            state = self.wake.wait(state).ok()?;
        }
    }

    /// A directory compared: its subdirectories to compare, or `None` if it differs.
    fn done(&self, found: Option<Vec<(PathBuf, Node)>>) {
        let Ok(mut state) = self.state.lock() else {
            self.changed.store(true, Ordering::Relaxed);
            self.wake.notify_all();
            return;
        };
        match found {
            Some(dirs) => {
                state.1 += dirs.len();
                state.0.extend(dirs);
            }
            None => self.changed.store(true, Ordering::Relaxed),
        }
        state.1 -= 1;
        self.wake.notify_all();
    }
}

/// Compares the entries of `dir` with the tree of `node`; the subdirectories to
/// compare next, or `None` if anything differs.
fn same_dir<S: IndexedTree>(
    repo: &Repository<S>,
    node: &Node,
    dir: &Path,
    dev: u64,
) -> Option<Vec<(PathBuf, Node)>> {
    let tree = repo.get_tree(&node.subtree?).ok()?;
    let mut names: Vec<OsString> = std::fs::read_dir(dir)
        .ok()?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()
        .ok()?;
    if names.len() != tree.nodes.len() {
        return None;
    }
    names.sort();
    let mut dirs = Vec::new();
    for (name, child) in names.iter().zip(tree.nodes) {
        if *child.name() != *name.as_os_str() {
            return None;
        }
        let path = dir.join(name);
        let meta = std::fs::symlink_metadata(&path).ok()?;
        same(&child, &meta)?;
        if meta.is_dir() {
            // Another filesystem mounted inside: the archiver decides.
            if meta.dev() != dev {
                return None;
            }
            dirs.push((path, child));
        }
    }
    Some(dirs)
}

/// Whether `node` still describes the entry whose metadata is `m`.
fn same(node: &Node, m: &std::fs::Metadata) -> Option<()> {
    let t = m.file_type();
    use std::os::unix::fs::FileTypeExt;
    let kind = match node.node_type {
        NodeType::Dir => t.is_dir(),
        NodeType::File => t.is_file(),
        NodeType::Symlink { .. } => t.is_symlink(),
        NodeType::Dev { .. } => t.is_block_device(),
        NodeType::Chardev { .. } => t.is_char_device(),
        NodeType::Fifo => t.is_fifo(),
        NodeType::Socket => t.is_socket(),
    };
    let size = if t.is_dir() { 0 } else { m.len() };
    let time = |s: i64, ns: i64| Timestamp::new(s, ns as i32).ok();
    let n = &node.meta;
    let equal = kind
        && n.mode.map(unix_mode) == Some(m.mode() & 0o7777)
        && n.uid == Some(m.uid())
        && n.gid == Some(m.gid())
        && n.size == size
        && n.inode == m.ino()
        && n.links == if t.is_dir() { 0 } else { m.nlink() }
        && n.mtime == time(m.mtime(), m.mtime_nsec())
        && n.ctime == time(m.ctime(), m.ctime_nsec());
    equal.then_some(())
}
