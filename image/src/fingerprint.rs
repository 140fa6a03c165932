//! A tree's fingerprint: one hash over the metadata of every entry the capture's walk
//! yields — path below the root, type (with link target or device), mode, owner ids
//! and names, size, inode, link count, mtime, ctime and xattrs; all of a node but
//! its access time, its device number and its content — and over the excludes that
//! shaped the walk.
//!
//! A capture records the fingerprint of the walk it archived in the manifest. The
//! next capture walks the tree first, while the library's key is still being derived,
//! and when it finds the same fingerprint the new snapshot takes the parent's tree
//! without a file or a tree being read, as restic would keep every file: any write
//! moves a file's ctime, a chmod, chown, xattr or link change too. Reading a file
//! moves only its access time, which is left out.

use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use rustic_core::repofile::Node;
use rustic_core::{ReadSource, ReadSourceEntry, RusticResult};
use sha2::{Digest, Sha256};

/// Bumped when what is hashed changes, so old fingerprints never match new ones.
const VERSION: &[u8] = b"ferry-fingerprint-1\n";

/// A fingerprint being made from a walk's entries in order.
pub(crate) struct Fingerprinter {
    hash: Sha256,
    /// Whether every entry was seen; an error in the walk means no fingerprint.
    whole: bool,
}

impl Fingerprinter {
    /// A walk of a tree with these excludes.
    pub(crate) fn new(excludes: &[String]) -> Fingerprinter {
        let mut hash = Sha256::new();
        hash.update(VERSION);
        for e in excludes {
            field(&mut hash, e.as_bytes());
        }
        field(&mut hash, b"");
        Fingerprinter { hash, whole: true }
    }

    /// Adds one entry of the walk: its path below the root and its node.
    pub(crate) fn add(&mut self, below_root: &Path, node: &Node) {
        let mut kept = node.clone();
        kept.meta.atime = None;
        kept.meta.device_id = 0;
        kept.content = None;
        kept.subtree = None;
        field(&mut self.hash, below_root.as_os_str().as_bytes());
        match serde_json::to_vec(&kept) {
            Ok(json) => field(&mut self.hash, &json),
            Err(_) => self.whole = false,
        }
    }

    /// Takes a walk's entry, or its error (which spoils the fingerprint).
    pub(crate) fn take<O>(&mut self, root: &Path, entry: &RusticResult<ReadSourceEntry<O>>) {
        match entry {
            Ok(e) => self.add(e.path.strip_prefix(root).unwrap_or(&e.path), &e.node),
            Err(_) => self.whole = false,
        }
    }

    /// Marks the walk as not all of the tree (an entry was left out).
    pub(crate) fn spoil(&mut self) {
        self.whole = false;
    }

    /// The fingerprint (hex), if every entry was seen.
    pub(crate) fn finish(self) -> Option<String> {
        self.whole.then(|| hex::encode(self.hash.finalize()))
    }
}

/// A length-prefixed field, so no two sequences of fields hash alike.
fn field(hash: &mut Sha256, bytes: &[u8]) {
    hash.update((bytes.len() as u64).to_le_bytes());
    hash.update(bytes);
}

/// The fingerprint of walking `src` (rooted at `root`) with `excludes`, reading only
/// metadata; `None` on any error, or when `wanted` turns false meanwhile.
pub(crate) fn of_walk<R: ReadSource>(
    src: &R,
    root: &Path,
    excludes: &[String],
    wanted: &AtomicBool,
) -> Option<String> {
    let mut f = Fingerprinter::new(excludes);
    for entry in src.entries() {
        if !wanted.load(Ordering::Relaxed) {
            return None;
        }
        f.take(root, &entry);
    }
    f.finish()
}
