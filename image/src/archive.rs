//! Ferry's own archiver for a first capture: the same snapshot rustic_core's archiver
//! makes (same chunks, same trees, same ids), without its per-entry hand-offs between
//! threads. The entries are walked first (metadata only); then worker threads, one per
//! core, each take the next file, chunk it, and seal and pack the blobs the library
//! lacks; the trees are built last, from the walk's order.

use std::collections::HashSet;
use std::io::Read;
use std::ops::ControlFlow;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Result, anyhow};
use rustic_cdc::{Polynom64, Rabin64, RollingHash64};
use rustic_core::repofile::{BlobType, IndexFile, Metadata, Node, NodeType, SnapshotFile, Tree};
use rustic_core::{
    DataId, FileType, ReadSource, ReadSourceEntry, ReadSourceOpen, Repository, RusticResult,
    TreeId, WriteBackend,
};

use crate::fingerprint::Fingerprinter;
use crate::library::rustic;
use crate::pack::{Cipher, Id, IndexedPack, Pack, index_file, seal_blob_as};
use crate::progress::Meter;

/// Data packs are written at this size; tree packs at a quarter of it.
const PACK_SIZE: usize = 16 << 20;
/// An index file is written after this many packs or blobs (and at the end), so a
/// capture that is killed loses little that is not indexed and no index file grows
/// large.
const PACKS_PER_INDEX: usize = 64;
const BLOBS_PER_INDEX: usize = 50_000;

/// restic's content-defined chunking parameters of a library.
#[derive(Clone, Copy)]
pub(crate) struct Chunking {
    poly: Polynom64,
    min: usize,
    max: usize,
    mask: u64,
}

impl Chunking {
    /// The smallest chunk: a file shorter than this is one blob.
    pub(crate) fn min(&self) -> usize {
        self.min
    }

    /// The library's chunking, when it is the content-defined kind with parameters
    /// rustic_core accepts (an average size that is a power of two between the
    /// minimum and the maximum, a minimum of at least the 64-byte window); else
    /// `None`, and rustic_core's archiver reads the tree.
    pub(crate) fn of(config: &rustic_core::repofile::ConfigFile) -> Option<Chunking> {
        use rustic_core::repofile::Chunker;
        if !matches!(config.chunker, None | Some(Chunker::Rabin)) {
            return None;
        }
        let size = config.chunk_size.unwrap_or(1 << 20);
        let min = config.chunk_min_size.unwrap_or(512 << 10);
        let max = config.chunk_max_size.unwrap_or(8 << 20);
        (size.is_power_of_two() && (64..=size).contains(&min) && size <= max).then_some(())?;
        Some(Chunking {
            poly: config.poly().ok()?,
            min,
            max,
            mask: size as u64 - 1,
        })
    }
}

/// Where blobs go: sealed, deduplicated, packed, written, indexed.
struct Sink {
    be: Arc<dyn WriteBackend>,
    cipher: Cipher,
    level: Option<i32>,
    /// Blobs the library or this capture has, by type: a data chunk and a tree with
    /// the same bytes are two blobs.
    known: Mutex<HashSet<(BlobType, Id)>>,
    data: Mutex<Pack>,
    trees: Mutex<Pack>,
    indexed: Mutex<Vec<IndexedPack>>,
    stats: Mutex<Stats>,
}

#[derive(Default)]
struct Stats {
    data_blobs: u64,
    tree_blobs: u64,
    data_added: u64,
    data_added_packed: u64,
    trees_added: u64,
    trees_added_packed: u64,
}

impl Sink {
    /// Stores blob `plain` unless the library or this capture has it; its id.
    fn store(&self, tpe: BlobType, plain: &[u8]) -> Result<Id> {
        let id = crate::pack::hash(plain);
        if !lock(&self.known)?.insert((tpe, id)) {
            return Ok(id);
        }
        let blob = seal_blob_as(&self.cipher, self.level, id, plain)?;
        {
            let mut guard = lock(&self.stats)?;
            let s = &mut *guard;
            let (n, added, packed) = match tpe {
                BlobType::Data => (
                    &mut s.data_blobs,
                    &mut s.data_added,
                    &mut s.data_added_packed,
                ),
                BlobType::Tree => (
                    &mut s.tree_blobs,
                    &mut s.trees_added,
                    &mut s.trees_added_packed,
                ),
            };
            *n += 1;
            *added += plain.len() as u64;
            *packed += blob.data.len() as u64;
        }
        let (pack, limit) = match tpe {
            BlobType::Data => (&self.data, PACK_SIZE),
            BlobType::Tree => (&self.trees, PACK_SIZE / 4),
        };
        let full = {
            let mut p = lock(pack)?;
            p.add(blob)?;
            (p.size() >= limit || p.count() >= 10_000)
                .then(|| std::mem::replace(&mut *p, Pack::new(tpe)))
        };
        if let Some(full) = full {
            self.write(tpe, full)?;
        }
        Ok(id)
    }

    /// Writes `pack`; every [`PACKS_PER_INDEX`] packs, an index of them.
    fn write(&self, tpe: BlobType, pack: Pack) -> Result<()> {
        if pack.count() == 0 {
            return Ok(());
        }
        let (file, entry) = pack.finish(&self.cipher)?;
        self.be
            .write_bytes(
                FileType::Pack,
                &rustic_core::Id::new(entry.id),
                tpe == BlobType::Tree,
                file.into(),
            )
            .map_err(rustic("writing a pack file"))?;
        let batch = {
            let mut indexed = lock(&self.indexed)?;
            indexed.push(entry);
            let blobs: usize = indexed.iter().map(|p| p.blob_ids().count()).sum();
            (indexed.len() >= PACKS_PER_INDEX || blobs >= BLOBS_PER_INDEX)
                .then(|| std::mem::take(&mut *indexed))
        };
        match batch {
            Some(packs) => self.write_index(&packs),
            None => Ok(()),
        }
    }

    fn write_index(&self, packs: &[IndexedPack]) -> Result<()> {
        if packs.is_empty() {
            return Ok(());
        }
        let (id, file) = index_file(&self.cipher, self.level, packs)?;
        self.be
            .write_bytes(
                FileType::Index,
                &rustic_core::Id::new(id),
                false,
                file.into(),
            )
            .map_err(rustic("writing an index file"))
    }

    /// Writes what is left in the packs, then the index of every pack not yet indexed.
    fn flush(&self) -> Result<()> {
        for (tpe, pack) in [(BlobType::Data, &self.data), (BlobType::Tree, &self.trees)] {
            let last = std::mem::replace(&mut *lock(pack)?, Pack::new(tpe));
            self.write(tpe, last)?;
        }
        let rest = std::mem::take(&mut *lock(&self.indexed)?);
        self.write_index(&rest)
    }
}

/// `m` locked; a poisoned lock means a capture thread failed.
fn lock<T>(m: &Mutex<T>) -> Result<std::sync::MutexGuard<'_, T>> {
    m.lock().map_err(|_| anyhow!("a capture thread failed"))
}

/// The blob ids a library holds, from its index files.
fn known_blobs<S: rustic_core::Open>(repo: &Repository<S>) -> Result<HashSet<(BlobType, Id)>> {
    let mut known = HashSet::new();
    for file in repo
        .stream_files::<IndexFile>()
        .map_err(rustic("reading the library's index"))?
    {
        let (_, index): (_, IndexFile) = file.map_err(rustic("reading an index file"))?;
        for pack in index.packs {
            for blob in pack.blobs {
                if let Some(id) = raw_id(&blob.id) {
                    known.insert((blob.tpe, id));
                }
            }
        }
    }
    Ok(known)
}

/// The bytes of rustic_core's `id` (which keeps them private but for its hex form).
fn raw_id(id: &rustic_core::Id) -> Option<Id> {
    let mut raw = [0u8; 32];
    hex::decode_to_slice(id.to_hex().as_str(), &mut raw).ok()?;
    Some(raw)
}

/// The chunks of `r` by restic's rule: at least `min` bytes, then up to the first
/// position where the rolling hash of the last 64 bytes has its low bits (`mask`)
/// clear, at most `max`; `each` gets every chunk.
fn chunks(c: Chunking, mut r: impl Read, mut each: impl FnMut(&[u8]) -> Result<()>) -> Result<u64> {
    let mut rabin = Rabin64::new_with_polynom(6, &c.poly);
    let mut buf = vec![0u8; 64 << 10];
    let (mut pos, mut end) = (0usize, 0usize);
    let mut total = 0u64;
    let mut eof = false;
    let mut chunk = Vec::with_capacity(c.min);
    loop {
        chunk.clear();
        // The first `min` bytes, without looking at the hash.
        while chunk.len() < c.min {
            if pos == end {
                if eof {
                    break;
                }
                end = read_some(&mut r, &mut buf)?;
                pos = 0;
                eof = end == 0;
                continue;
            }
            let take = (c.min - chunk.len()).min(end - pos);
            chunk.extend_from_slice(&buf[pos..pos + take]);
            pos += take;
        }
        if chunk.len() < c.min {
            if !chunk.is_empty() {
                total += chunk.len() as u64;
                each(&chunk)?;
            }
            return Ok(total);
        }
        rabin.reset_and_prefill_window(&mut chunk[chunk.len() - 64..].iter().copied());
        'cut: while chunk.len() < c.max && rabin.hash & c.mask != 0 {
            if pos == end {
                end = read_some(&mut r, &mut buf)?;
                pos = 0;
                if end == 0 {
                    eof = true;
                    break 'cut;
                }
            }
            let byte = buf[pos];
            chunk.push(byte);
            pos += 1;
            rabin.slide(byte);
        }
        total += chunk.len() as u64;
        each(&chunk)?;
        if eof && pos == end {
            return Ok(total);
        }
    }
}

/// A file that could not be opened or read: it is left out with a warning, where a
/// failing library ends the capture.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Unreadable(String);

fn read_some(r: &mut impl Read, buf: &mut [u8]) -> Result<usize> {
    loop {
        match r.read(buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Unreadable(e.to_string()).into()),
        }
    }
}

/// One step of the walk, in rustic's tree order.
enum Step<O> {
    /// A directory begins (its node; ancestors of the captured path are made up).
    Enter(Node),
    /// The current directory ends.
    Leave,
    /// A non-directory entry at its path in the snapshot; files come with what opens
    /// them.
    Entry(Node, Option<O>, PathBuf),
}

/// The walk of `src` as steps, the captured directory `root` placed at `as_path`;
/// every entry also goes into `print`.
fn steps<O>(
    entries: impl Iterator<Item = RusticResult<ReadSourceEntry<O>>>,
    root: &Path,
    as_path: &Path,
    warnings: &mut Vec<String>,
    print: &mut Fingerprinter,
) -> Vec<Step<O>> {
    let mut out = Vec::new();
    let names = |p: &Path| -> Vec<std::ffi::OsString> {
        p.components()
            .filter_map(|c| match c {
                Component::Normal(n) => Some(n.to_os_string()),
                _ => None,
            })
            .collect()
    };
    let mut depth: Vec<std::ffi::OsString> = Vec::new();
    for entry in entries {
        print.take(root, &entry);
        let ReadSourceEntry { path, node, open } = match entry {
            Ok(e) => e,
            Err(e) => {
                warnings.push(format!("left out: {}", crate::library::brief(&e)));
                continue;
            }
        };
        let at = as_path.join(path.strip_prefix(root).unwrap_or(&path));
        let is_dir = node.is_dir();
        let dir = if is_dir {
            at.clone()
        } else {
            at.parent().map(Path::to_path_buf).unwrap_or_default()
        };
        let want = names(&dir);
        // Leave the directories the entry is not in.
        let common = depth.iter().zip(&want).take_while(|(a, b)| a == b).count();
        while depth.len() > common {
            depth.pop();
            out.push(Step::Leave);
        }
        // Enter the ones it is in: made-up ancestors, or the entry itself.
        for (i, name) in want.iter().enumerate().skip(common) {
            depth.push(name.clone());
            if is_dir && i + 1 == want.len() {
                out.push(Step::Enter(node.clone()));
            } else {
                let meta = Metadata {
                    mode: Some(0o755),
                    ..Default::default()
                };
                out.push(Step::Enter(Node::new_node(name, NodeType::Dir, meta)));
            }
        }
        if !is_dir {
            out.push(Step::Entry(node, open, at));
        }
    }
    for _ in 0..depth.len() {
        out.push(Step::Leave);
    }
    out
}

/// A file to read: what opens it (with its name, for warnings), then its content's
/// blob ids or why it could not be read.
struct Slot<O> {
    open: Mutex<Option<(String, O)>>,
    content: Mutex<Option<Content>>,
}

/// A file's blob ids and bytes read, or why it could not be read.
type Content = Result<(Vec<DataId>, u64), String>;

impl<O> Slot<O> {
    fn empty() -> Slot<O> {
        Slot {
            open: Mutex::new(None),
            content: Mutex::new(None),
        }
    }
}

/// Where the archiver writes: a library's backend, chunked its way.
pub(crate) struct Destination {
    pub chunking: Chunking,
    pub be: Arc<dyn WriteBackend>,
    /// Whether to look up which blobs the library has (from its index) and store
    /// only the others; without, every blob is stored, which suits content that is
    /// new by construction.
    pub dedup: bool,
}

/// The snapshot a re-capture follows: its tree, and how to read a tree of it.
pub(crate) struct Parent<'a> {
    pub tree: TreeId,
    pub get: &'a dyn Fn(TreeId) -> Result<Tree>,
}

/// For each step that enters a directory or is an entry, the node of the same name
/// in the parent snapshot's directory at that place, where there is one.
fn parent_nodes<O>(steps: &[Step<O>], parent: Option<&Parent<'_>>) -> Vec<Option<Node>> {
    let Some(parent) = parent else {
        return vec![None; steps.len()];
    };
    let find = |tree: &Tree, node: &Node| {
        let name = node.name();
        let at = tree.nodes.binary_search_by(|n| n.name().cmp(&name)).ok()?;
        Some(tree.nodes[at].clone())
    };
    // The parent's trees of the directories the walk is in (`None`: it has none).
    let mut trees: Vec<Option<Tree>> = vec![(parent.get)(parent.tree).ok()];
    let mut out = Vec::with_capacity(steps.len());
    for step in steps {
        let (Step::Enter(node) | Step::Entry(node, _, _)) = step else {
            trees.pop();
            out.push(None);
            continue;
        };
        let found = trees
            .last()
            .and_then(Option::as_ref)
            .and_then(|t| find(t, node));
        if matches!(step, Step::Enter(_)) {
            let subtree = found.as_ref().and_then(|n| n.subtree);
            trees.push(subtree.and_then(|id| (parent.get)(id).ok()));
        }
        out.push(found);
    }
    out
}

/// The content of file `node` as its parent `prior` holds it, when restic's rule says
/// the file is the same (type, size, mtime, ctime and inode) and the library has
/// every blob of it.
fn kept_content(node: &Node, prior: &Node, known: &HashSet<(BlobType, Id)>) -> Option<Vec<DataId>> {
    let (m, p) = (&node.meta, &prior.meta);
    let same = node.node_type == NodeType::File
        && prior.node_type == NodeType::File
        && m.size == p.size
        && m.mtime == p.mtime
        && m.ctime.zip(p.ctime).is_none_or(|(a, b)| a == b)
        && (m.inode == 0 || p.inode == 0 || m.inode == p.inode);
    let content = prior.content.as_ref().filter(|_| same)?;
    let all_known = content
        .iter()
        .all(|id| raw_id(id).is_some_and(|raw| known.contains(&(BlobType::Data, raw))));
    all_known.then(|| content.clone())
}

/// Whether `node` is what `prior` recorded, but for the access time and the device
/// (a snapshot's mount has a device number of its own).
fn unmodified(node: &Node, prior: &Node) -> bool {
    let mut p = prior.clone();
    p.meta.atime = node.meta.atime;
    p.meta.device_id = node.meta.device_id;
    p == *node
}

/// What the archiver made: the snapshot (saved) and entries taken.
pub(crate) struct Archived {
    pub snap: SnapshotFile,
    pub entries: u64,
    pub warnings: Vec<String>,
    /// The fingerprint of the walk, when the snapshot holds every entry of it.
    pub fingerprint: Option<String>,
}

/// What to archive: the entries of `src`, walked from `root` with `excludes`, placed
/// at `as_path` in the snapshot.
pub(crate) struct Walk<'a, R> {
    pub src: &'a R,
    pub root: &'a Path,
    pub as_path: &'a Path,
    pub excludes: &'a [String],
}

/// Archives `walk` into `repo` as snapshot `snap`. A file its `parent` holds
/// unchanged (by restic's rule) is not read again: its content is the parent's.
pub(crate) fn archive<S, R>(
    repo: &Repository<S>,
    Destination {
        chunking,
        be,
        dedup,
    }: Destination,
    walk: Walk<'_, R>,
    parent: Option<&Parent<'_>>,
    mut snap: SnapshotFile,
    meter: &Arc<Meter>,
) -> Result<Archived>
where
    S: rustic_core::Open,
    R: ReadSource,
    R::Open: Send,
{
    let Walk {
        src,
        root,
        as_path,
        excludes,
    } = walk;
    let what = format!("capture of {}", as_path.display());
    let config = repo.config();
    let sink = Sink {
        be,
        cipher: Cipher::new(&repo.key())?,
        level: config.zstd().map_err(rustic(&what))?,
        known: Mutex::new(if dedup {
            known_blobs(repo)?
        } else {
            HashSet::new()
        }),
        data: Mutex::new(Pack::new(BlobType::Data)),
        trees: Mutex::new(Pack::new(BlobType::Tree)),
        indexed: Mutex::new(Vec::new()),
        stats: Mutex::new(Stats::default()),
    };
    let started = std::time::Instant::now();
    let mut warnings = Vec::new();
    let mut print = Fingerprinter::new(excludes);
    let mut steps = steps(src.entries(), root, as_path, &mut warnings, &mut print);
    let entries = steps.iter().filter(|s| !matches!(s, Step::Leave)).count() as u64;
    // The total for the progress, from the walk already made (not a second one).
    meter.set_total(
        steps
            .iter()
            .filter_map(|s| match s {
                Step::Entry(n, _, _) if n.node_type == NodeType::File => Some(n.meta.size),
                _ => None,
            })
            .sum(),
    );

    let prior = parent_nodes(&steps, parent);

    // File contents, in parallel: slots taken in order by an atomic counter. A file
    // the parent holds unchanged comes with its content.
    let files: Vec<usize> = (0..steps.len())
        .filter(
            |&i| matches!(&steps[i], Step::Entry(n, Some(_), _) if n.node_type == NodeType::File),
        )
        .collect();
    let slots: Vec<Slot<R::Open>> = {
        let known = lock(&sink.known)?;
        files
            .iter()
            .map(|&i| {
                let Step::Entry(node, open, at) = &mut steps[i] else {
                    return Slot::empty();
                };
                let kept = prior[i]
                    .as_ref()
                    .and_then(|p| kept_content(node, p, &known));
                match kept {
                    Some(ids) => {
                        meter.add_bytes(node.meta.size);
                        meter.add_file();
                        Slot {
                            open: Mutex::new(None),
                            content: Mutex::new(Some(Ok((ids, node.meta.size)))),
                        }
                    }
                    None => Slot {
                        open: Mutex::new(
                            open.take().map(|o| (at.to_string_lossy().to_string(), o)),
                        ),
                        content: Mutex::new(None),
                    },
                }
            })
            .collect()
    };
    let failed: Mutex<Option<anyhow::Error>> = Mutex::new(None);
    crate::workers::for_each_index(slots.len(), |k| {
        let Some((name, open)) = slots[k].open.lock().ok().and_then(|mut o| o.take()) else {
            return ControlFlow::Continue(());
        };
        let mut ids = Vec::new();
        let read = open
            .open()
            .map_err(|e| anyhow::Error::from(Unreadable(crate::library::brief(&e))));
        let result = read.and_then(|r| {
            chunks(chunking, r, |chunk| {
                meter.check()?;
                ids.push(DataId::from(rustic_core::Id::new(
                    sink.store(BlobType::Data, chunk)?,
                )));
                meter.add_bytes(chunk.len() as u64);
                Ok(())
            })
        });
        meter.add_file();
        let slot = match result {
            Ok(read) => Ok((ids, read)),
            // A store that fails ends the capture; a file that cannot be read is
            // left out with a warning.
            Err(e) if e.is::<Unreadable>() => Err(format!("{name}: {e}")),
            Err(e) => {
                if let Ok(mut f) = failed.lock() {
                    f.get_or_insert(e);
                }
                return ControlFlow::Break(());
            }
        };
        if let Ok(mut c) = slots[k].content.lock() {
            *c = Some(slot);
        }
        ControlFlow::Continue(())
    });
    if let Some(e) = failed.into_inner().ok().flatten() {
        return Err(e.context(what));
    }

    // Trees, bottom up, in the walk's order.
    let mut slot_of = vec![usize::MAX; steps.len()];
    for (k, &i) in files.iter().enumerate() {
        slot_of[i] = k;
    }
    // Each directory the walk is in: its node, its entries so far, the parent's node.
    let mut stack: Vec<(Option<Node>, Vec<Node>, Option<Node>)> = vec![(None, Vec::new(), None)];
    let mut dirsize = 0u64;
    let mut bytes = 0u64;
    // New, changed and unmodified files, then directories, against the parent.
    let (mut files_by, mut dirs_by) = ([0u64; 3], [0u64; 3]);
    let by = |now: &Node, prior: Option<&Node>| match prior {
        None => 0,
        Some(p) if unmodified(now, p) => 2,
        Some(_) => 1,
    };
    let finish_tree = |nodes: Vec<Node>, dirsize: &mut u64| -> Result<TreeId> {
        let mut json = serde_json::to_vec(&Tree { nodes })?;
        json.push(b'\n');
        *dirsize += json.len() as u64;
        Ok(TreeId::from(rustic_core::Id::new(
            sink.store(BlobType::Tree, &json)?,
        )))
    };
    for ((i, step), prior) in steps.into_iter().enumerate().zip(prior) {
        match step {
            Step::Enter(node) => stack.push((Some(node), Vec::new(), prior)),
            Step::Leave => {
                let (node, nodes, prior) = stack
                    .pop()
                    .ok_or_else(|| anyhow!("{what}: the walk's directories do not nest"))?;
                let mut node = node.ok_or_else(|| anyhow!("{what}: the walk left its root"))?;
                node.subtree = Some(finish_tree(nodes, &mut dirsize)?);
                dirs_by[by(&node, prior.as_ref())] += 1;
                stack
                    .last_mut()
                    .ok_or_else(|| anyhow!("{what}: the walk left its root"))?
                    .1
                    .push(node);
            }
            Step::Entry(mut node, _, at) => {
                if node.node_type == NodeType::File {
                    let content = slots
                        .get(slot_of[i])
                        .and_then(|c| c.content.lock().ok()?.take());
                    match content {
                        Some(Ok((ids, read))) => {
                            node.content = Some(ids);
                            bytes += read;
                        }
                        Some(Err(why)) => {
                            warnings.push(format!("left out: {why}"));
                            continue;
                        }
                        None => {
                            warnings.push(format!("left out: {}: not read", at.display()));
                            continue;
                        }
                    }
                }
                // Every entry that is no directory counts as a file, as with rustic.
                files_by[by(&node, prior.as_ref())] += 1;
                stack
                    .last_mut()
                    .ok_or_else(|| anyhow!("{what}: the walk left its root"))?
                    .1
                    .push(node);
            }
        }
    }
    let (_, nodes, _) = stack
        .pop()
        .ok_or_else(|| anyhow!("{what}: the walk's directories do not nest"))?;
    let tree = finish_tree(nodes, &mut dirsize)?;
    // The snapshot's own root directory, changed unless it is the parent's.
    dirs_by[match parent {
        None => 0,
        Some(p) if p.tree == tree => 2,
        Some(_) => 1,
    }] += 1;
    sink.flush()?;

    let stats = lock(&sink.stats)?;
    let mut summary = snap.summary.take().unwrap_or_default();
    [
        summary.files_new,
        summary.files_changed,
        summary.files_unmodified,
    ] = files_by;
    [
        summary.dirs_new,
        summary.dirs_changed,
        summary.dirs_unmodified,
    ] = dirs_by;
    summary.total_files_processed = files_by.iter().sum();
    summary.total_bytes_processed = bytes;
    summary.total_dirs_processed = dirs_by.iter().sum();
    summary.total_dirsize_processed = dirsize;
    summary.data_blobs = stats.data_blobs;
    summary.tree_blobs = stats.tree_blobs;
    summary.data_added_files = stats.data_added;
    summary.data_added_files_packed = stats.data_added_packed;
    summary.data_added_trees = stats.trees_added;
    summary.data_added_trees_packed = stats.trees_added_packed;
    summary.data_added = stats.data_added + stats.trees_added;
    summary.data_added_packed = stats.data_added_packed + stats.trees_added_packed;
    summary.command = "ferry capture".into();
    let took = started.elapsed();
    summary.backup_end = rustic_core::jiff::Zoned::now();
    summary.backup_start = summary.backup_end.saturating_sub(took);
    summary.backup_duration = took.as_secs_f64();
    summary.total_duration = took.as_secs_f64();
    snap.summary = Some(summary);
    snap.tree = tree;
    snap.paths.add(as_path.to_string_lossy().to_string());
    if !warnings.is_empty() {
        // Left out: a later capture must read the tree again.
        print.spoil();
    }
    Ok(Archived {
        snap,
        entries,
        warnings,
        fingerprint: print.finish(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustic_core::{BackupOptions, Excludes, LocalSource};
    use std::os::unix::fs::symlink;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Bytes without repeats a chunker would notice (a multiplicative hash of the
    /// position).
    fn noise(len: usize, seed: u64) -> Vec<u8> {
        (0..len as u64)
            .map(|i| ((i ^ seed).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8)
            .collect()
    }

    /// Files across chunk boundaries, an empty one, a hardlink, a symlink, a FIFO, an
    /// xattr, nested and empty directories, names out of order.
    fn tree(dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir.join("b/c/d"))?;
        std::fs::create_dir_all(dir.join("empty"))?;
        std::fs::write(dir.join("big"), noise(5 << 20, 1))?;
        std::fs::write(dir.join("b/c/mid"), noise(700 << 10, 2))?;
        std::fs::write(dir.join("b/small"), b"small\n")?;
        std::fs::write(dir.join("a-empty"), b"")?;
        // The same bytes as the tree of the empty directory: a data blob and a tree
        // blob with one id.
        std::fs::write(dir.join("as-tree"), b"{\"nodes\":[]}\n")?;
        std::fs::hard_link(dir.join("b/small"), dir.join("b/c/d/linked"))?;
        symlink("../big", dir.join("b/up"))?;
        nix::unistd::mkfifo(
            &dir.join("fifo"),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )?;
        xattr::set(dir.join("b/small"), "user.ferry", b"1")?;
        Ok(())
    }

    /// The same tree read by rustic_core's archiver and by this one is the same
    /// snapshot tree (same chunks, nodes and layout), for a root and a deeper path.
    #[test]
    fn the_snapshot_tree_is_rustics_own() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let src_dir = dir.path().join("src");
        tree(&src_dir)?;
        for (i, as_path) in ["/", "/srv/data"].into_iter().enumerate() {
            // Ours first, into a fresh library, which must then check clean.
            let lib = crate::Library::connect(
                &crate::Location::parse(&dir.path().join(format!("lib{i}")).to_string_lossy())?,
                "pw",
            )?;
            lib.init()?;
            let repo = lib.open()?.to_indexed_ids().map_err(|e| anyhow!("{e}"))?;
            let mut opts = BackupOptions::default();
            opts.as_path = Some(as_path.into());
            let src = LocalSource::new(
                opts.ignore_save_opts,
                &Excludes::default(),
                &opts.ignore_filter_opts,
                &[&src_dir],
            )
            .map_err(|e| anyhow!("{e}"))?;
            let chunking = Chunking::of(repo.config()).expect("restic's chunking");
            let ours = archive(
                &repo,
                Destination {
                    chunking,
                    be: lib.write_backend(),
                    dedup: true,
                },
                Walk {
                    src: &src,
                    root: &src_dir,
                    as_path: Path::new(as_path),
                    excludes: &[],
                },
                None,
                SnapshotFile::default(),
                &Meter::silent(),
            )?;
            assert!(ours.warnings.is_empty(), "{:?}", ours.warnings);
            repo.save_snapshots(vec![ours.snap.clone()])
                .map_err(|e| anyhow!("{e}"))?;
            let report = lib.check(None, true)?;
            assert!(report.errors.is_empty(), "{as_path}: {report:?}");

            // Then rustic's archiver, reading every file (not taking ours as its
            // parent): the same tree, and no blob it lacks.
            opts.parent_opts.force = true;
            let repo = lib.open()?.to_indexed_ids().map_err(|e| anyhow!("{e}"))?;
            let theirs = repo
                .archive(
                    &opts,
                    &src,
                    SnapshotFile::default(),
                    std::slice::from_ref(&src_dir),
                )
                .map_err(|e| anyhow!("{e}"))?;
            assert_eq!(ours.snap.tree, theirs.tree, "{as_path}");
            let (o, t) = (
                ours.snap.summary.clone().unwrap_or_default(),
                theirs.summary.clone().unwrap_or_default(),
            );
            assert_eq!(
                (
                    o.total_files_processed,
                    o.total_dirs_processed,
                    o.total_bytes_processed
                ),
                (
                    t.total_files_processed,
                    t.total_dirs_processed,
                    t.total_bytes_processed
                ),
                "{as_path}"
            );
            // Every blob, data and tree, was stored as what it is.
            assert_eq!((t.data_blobs, t.tree_blobs), (0, 0), "{as_path}");
        }
        Ok(())
    }

    /// A source whose files count how often they are opened.
    struct Opens<R> {
        inner: R,
        opened: Arc<AtomicUsize>,
    }

    struct Opener<O>(O, Arc<AtomicUsize>);

    impl<O: ReadSourceOpen> ReadSourceOpen for Opener<O> {
        type Reader = O::Reader;
        fn open(self) -> RusticResult<O::Reader> {
            self.1.fetch_add(1, Ordering::Relaxed);
            self.0.open()
        }
    }

    impl<R: ReadSource> ReadSource for Opens<R>
    where
        R::Iter: 'static,
    {
        type Open = Opener<R::Open>;
        type Iter = Box<dyn Iterator<Item = RusticResult<ReadSourceEntry<Opener<R::Open>>>>>;
        fn size(&self) -> RusticResult<Option<u64>> {
            self.inner.size()
        }
        fn entries(&self) -> Self::Iter {
            let opened = self.opened.clone();
            Box::new(self.inner.entries().map(move |e| {
                e.map(|e| ReadSourceEntry {
                    path: e.path,
                    node: e.node,
                    open: e.open.map(|o| Opener(o, opened.clone())),
                })
            }))
        }
    }

    /// A re-capture with a parent opens only the files that changed by restic's rule,
    /// and its tree is the one rustic_core makes reading every file.
    #[test]
    fn a_recapture_reads_only_what_changed() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let src_dir = dir.path().join("src");
        tree(&src_dir)?;
        let lib = crate::Library::connect(
            &crate::Location::parse(&dir.path().join("lib").to_string_lossy())?,
            "pw",
        )?;
        lib.init()?;
        let opts = BackupOptions::default();
        let local = || {
            LocalSource::new(
                opts.ignore_save_opts,
                &Excludes::default(),
                &opts.ignore_filter_opts,
                &[&src_dir],
            )
            .map_err(|e| anyhow!("{e}"))
        };
        let run = |parent: Option<TreeId>| -> Result<(Archived, usize)> {
            let repo = lib.open()?.to_indexed_ids().map_err(|e| anyhow!("{e}"))?;
            let get = |id| repo.get_tree(&id).map_err(|e| anyhow!("{e}"));
            let parent = parent.map(|tree| Parent { tree, get: &get });
            let src = Opens {
                inner: local()?,
                opened: Arc::new(AtomicUsize::new(0)),
            };
            let done = archive(
                &repo,
                Destination {
                    chunking: Chunking::of(repo.config()).expect("restic's chunking"),
                    be: lib.write_backend(),
                    dedup: true,
                },
                Walk {
                    src: &src,
                    root: &src_dir,
                    as_path: Path::new("/"),
                    excludes: &[],
                },
                parent.as_ref(),
                SnapshotFile::default(),
                &Meter::silent(),
            )?;
            Ok((done, src.opened.load(Ordering::Relaxed)))
        };
        let (first, opened) = run(None)?;
        assert_eq!(opened, 6, "every file is read the first time");

        // Nothing changed: nothing is read, the tree is the parent's.
        let (again, opened) = run(Some(first.snap.tree))?;
        assert_eq!((opened, again.snap.tree), (0, first.snap.tree));
        let s = again.snap.summary.clone().unwrap_or_default();
        assert_eq!((s.files_new, s.files_changed, s.dirs_changed), (0, 0, 0));
        assert_eq!(
            s.total_bytes_processed,
            (5 << 20) + (700 << 10) + 6 + 13 + 6
        );

        // New content in one file, one file added, one removed.
        std::fs::write(src_dir.join("b/c/mid"), noise(700 << 10, 3))?;
        std::fs::write(src_dir.join("b/new"), b"new\n")?;
        std::fs::remove_file(src_dir.join("a-empty"))?;
        let (third, opened) = run(Some(again.snap.tree))?;
        assert_eq!(opened, 2, "only the changed and the new file are read");
        let s = third.snap.summary.clone().unwrap_or_default();
        assert_eq!((s.files_new, s.files_changed), (1, 1), "{s:?}");
        assert!(third.warnings.is_empty(), "{:?}", third.warnings);

        let repo = lib.open()?.to_indexed_ids().map_err(|e| anyhow!("{e}"))?;
        let mut force = BackupOptions::default();
        force.parent_opts.force = true;
        force.as_path = Some("/".into());
        let theirs = repo
            .archive(
                &force,
                &local()?,
                SnapshotFile::default(),
                std::slice::from_ref(&src_dir),
            )
            .map_err(|e| anyhow!("{e}"))?;
        assert_eq!(third.snap.tree, theirs.tree);
        Ok(())
    }
}
