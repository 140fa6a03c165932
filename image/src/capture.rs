//! Capture: filesystem trees into an image, one snapshot each, then the manifest.
//!
//! This module reads trees that are ready to be read — a mount point, or the mount of
//! an LVM or btrfs snapshot standing in for it. Taking and releasing those snapshots
//! is the agent's part; it says how consistent each tree is.

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, anyhow};
use ferry_model::image::{
    Consistency, FsImage, MANIFEST_PATH, MANIFEST_VERSION, Manifest, PendingFs, RootMeta,
    check_image_name,
};
use ferry_model::survey::Survey;
use rustic_core::repofile::{FileType, Metadata, Node, NodeType, SnapshotFile, SnapshotId};
use rustic_core::{
    BackupOptions, Excludes, IndexedIds, IndexedIdsStatus, LocalSource, OpenStatus, ReadSource,
    ReadSourceEntry, RepairIndexOptions, Repository, RusticResult, SnapshotOptions, TimeOption,
};

use crate::archive::Archived;
use crate::library::{Library, TAG_CAPTURE, TAG_IMAGE, TAG_MANIFEST, TAG_PARTIAL, rustic};
use crate::progress::{Bars, Meter};

/// One tree to capture.
#[derive(Debug, Clone)]
pub struct FsSource {
    /// Its mount point on the source (`/`, `/var`): the path it is recorded and
    /// restored under.
    pub path: String,
    /// Where to read it now: the mount point itself, or a snapshot's mount.
    pub read_from: PathBuf,
    /// How consistent reading `read_from` is.
    pub consistency: Consistency,
    /// Filesystem type, e.g. `ext4`.
    pub fstype: Option<String>,
    /// Held around the reading of this tree, e.g. a filesystem freeze.
    pub hold: Option<Arc<dyn Hold>>,
    /// Block data rather than a tree: `read_from` is a block device (or an image
    /// file) whose bytes are kept as one file at `path`.
    pub raw: bool,
}

impl Default for FsSource {
    fn default() -> FsSource {
        FsSource {
            path: String::new(),
            read_from: PathBuf::new(),
            consistency: Consistency::Live,
            fstype: None,
            hold: None,
            raw: false,
        }
    }
}

/// Something kept up exactly while one tree is read, such as a filesystem freeze.
pub trait Hold: Send + Sync + std::fmt::Debug {
    /// Starts it, right before the tree is read. On an error the tree is read
    /// without it, live, and the manifest says why.
    fn begin(&self) -> Result<()>;
    /// Ends it, right after the tree was read (also when reading failed). `Some`
    /// says why it did not last the whole read: the tree counts as read live.
    fn end(&self) -> Option<String>;
}

/// What to capture and under which name.
#[derive(Debug, Clone, Default)]
pub struct CaptureRequest {
    /// Image name.
    pub image: String,
    /// The trees, in order.
    pub filesystems: Vec<FsSource>,
    /// Globs to leave out (`/var/cache/*`, `*.tmp`), relative to each tree's root
    /// when they start with `/`.
    pub excludes: Vec<String>,
    /// The source's host name.
    pub hostname: String,
    /// The source's survey, kept in the manifest.
    pub survey: Option<Survey>,
    /// Warnings the caller already has (e.g. a snapshot that could not be taken).
    pub warnings: Vec<String>,
    /// The capture's id, when the caller fixes it in advance (so that a deploy can
    /// wait for this capture's filesystems); a new time-ordered id when `None`.
    pub capture: Option<String>,
    /// Write a partial manifest before the first filesystem and after each (the
    /// survey is then taken first), so a restore can follow the capture.
    pub progressive: bool,
}

/// Captures `req` into the library; returns the manifest written last.
pub fn capture(lib: &Library, req: &CaptureRequest, meter: &Arc<Meter>) -> Result<Manifest> {
    capture_surveyed(lib, req, meter, || req.survey.clone())
}

/// [`capture`] while `survey` runs on a thread of its own; what it returns is the
/// manifest's survey (in place of `req.survey`).
pub fn capture_surveyed(
    lib: &Library,
    req: &CaptureRequest,
    meter: &Arc<Meter>,
    survey: impl FnOnce() -> Option<Survey> + Send,
) -> Result<Manifest> {
    if req.progressive {
        // A partial manifest carries the survey, so it comes first.
        let survey = survey();
        let (repo, manifest) = read_filesystems(lib, req, meter, Some(survey.as_ref()))?;
        write_manifest(lib, &repo, req, &manifest, survey.as_ref(), TAG_MANIFEST)?;
        return Ok(manifest);
    }
    std::thread::scope(|s| {
        let survey = s.spawn(survey);
        let read = read_filesystems(lib, req, meter, None);
        let survey = survey.join();
        let (repo, manifest) = read?;
        let survey = survey.map_err(|_| anyhow!("image {}: the survey failed", req.image))?;
        write_manifest(lib, &repo, req, &manifest, survey.as_ref(), TAG_MANIFEST)?;
        Ok(manifest)
    })
}

/// Tells whoever follows capture `at` of `image` (a deploy restoring it while it
/// runs) that it stopped, and why ([`Manifest::abandoned`]): for a capture whose agent
/// failed or was given up. A complete capture, or one already marked, is left alone.
pub fn abandon(lib: &Library, image: &str, at: &str, why: &str) -> Result<()> {
    check_image_name(image).map_err(|e| anyhow!(e))?;
    check_capture_id(at)?;
    let repo = lib.open()?;
    let mut last = match Library::written_so_far(&repo, image, at)? {
        Some((snap, _)) if snap.tags.contains(TAG_MANIFEST) => return Ok(()),
        Some((_, m)) if m.abandoned.is_some() => return Ok(()),
        Some((_, m)) => m,
        None => Manifest {
            version: MANIFEST_VERSION,
            image: image.to_string(),
            capture: at.to_string(),
            hostname: String::new(),
            started: now(),
            finished: String::new(),
            excludes: Vec::new(),
            filesystems: Vec::new(),
            warnings: Vec::new(),
            survey: None,
            pending: Vec::new(),
            abandoned: None,
        },
    };
    last.abandoned = Some(why.to_string());
    let req = CaptureRequest {
        image: image.to_string(),
        hostname: last.hostname.clone(),
        ..Default::default()
    };
    write_manifest(lib, &Opened::Open(repo), &req, &last, None, TAG_PARTIAL)
        .with_context(|| format!("image {image}: marking capture {at} as stopped"))
}

/// A capture id given by the caller: what the library's tags and a job's records can
/// carry.
fn check_capture_id(id: &str) -> Result<()> {
    let fine = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-';
    if id.is_empty() || id.len() > 64 || !id.chars().all(fine) {
        return Err(anyhow!(
            "capture id {id:?}: use 1 to 64 lowercase letters, digits and dashes"
        ));
    }
    Ok(())
}

/// The library opened for a capture: with its index read, unless nothing is to be
/// archived (every tree unchanged).
enum Opened {
    Open(Repository<OpenStatus>),
    Indexed(Repository<IndexedIdsStatus>),
}

/// `$body` with `$r` bound to the library of an [`Opened`], however far it is open.
macro_rules! with_repo {
    ($opened:expr, |$r:ident| $body:expr) => {
        match $opened {
            Opened::Open($r) => $body,
            Opened::Indexed($r) => $body,
        }
    };
}

impl Opened {
    /// Reads the index, first taking packs a killed capture uploaded but never
    /// indexed into it, so this capture uploads only what is missing.
    fn index(repo: Repository<OpenStatus>) -> Result<Opened> {
        repo.repair_index(&RepairIndexOptions::default(), false)
            .map_err(rustic("taking unindexed packs into the index"))?;
        let repo = repo
            .to_indexed_ids()
            .map_err(rustic("reading the library's index"))?;
        Ok(Opened::Indexed(repo))
    }

    fn indexed(&self) -> Result<&Repository<IndexedIdsStatus>> {
        match self {
            Opened::Indexed(repo) => Ok(repo),
            Opened::Open(_) => Err(anyhow!("the library's index was not read")),
        }
    }
}

/// Everything of a capture but its manifest: the open library and the manifest.
/// With `partials` (the survey they carry), the library is told of the capture's
/// progress before each filesystem and after the last (see [`Manifest::pending`]).
fn read_filesystems(
    lib: &Library,
    req: &CaptureRequest,
    meter: &Arc<Meter>,
    partials: Option<Option<&Survey>>,
) -> Result<(Opened, Manifest)> {
    check_image_name(&req.image).map_err(|e| anyhow!(e))?;
    if let Some(id) = &req.capture {
        check_capture_id(id)?;
    }
    if req.filesystems.is_empty() {
        return Err(anyhow!("image {}: nothing to capture", req.image));
    }
    for fs in &req.filesystems {
        if !fs.path.starts_with('/') {
            return Err(anyhow!("{}: a filesystem path must be absolute", fs.path));
        }
        let meta = std::fs::metadata(&fs.read_from)
            .with_context(|| format!("{}: cannot read it", fs.read_from.display()))?;
        if fs.raw && !meta.file_type().is_block_device() && !meta.is_file() {
            return Err(anyhow!(
                "{}: neither a block device nor an image file",
                fs.read_from.display()
            ));
        }
        if !fs.raw && !meta.is_dir() {
            return Err(anyhow!("{}: not a directory", fs.read_from.display()));
        }
    }
    // The trees read live are walked (metadata only) while the library's key is
    // derived; a tree that is held (frozen) is walked inside its hold instead.
    let wanted = AtomicBool::new(true);
    let (repo, walked) = std::thread::scope(|s| {
        let walks = s.spawn(|| {
            req.filesystems
                .iter()
                .map(|fs| {
                    (fs.hold.is_none() && !fs.raw)
                        .then(|| fingerprint(fs, &req.excludes, &wanted))
                        .flatten()
                })
                .collect::<Vec<_>>()
        });
        let repo = lib.open_with(Bars(meter.clone())).and_then(|repo| {
            let parents = previous_filesystems(&repo, &req.image)?;
            Ok((repo, parents))
        });
        if !matches!(&repo, Ok((_, parents)) if !parents.is_empty()) {
            // A first capture (or a failed one) has no use for the walk.
            wanted.store(false, Ordering::Relaxed);
        }
        let walked = walks
            .join()
            .unwrap_or_else(|_| vec![None; req.filesystems.len()]);
        (repo, walked)
    });
    let (repo, parents) = repo?;
    let parent_of = |fs: &FsSource| parents.iter().find(|p| p.fs.path == fs.path);
    let kept = |fs: &FsSource, walked: &Option<String>| {
        parent_of(fs).filter(|p| walked.is_some() && p.fs.fingerprint == *walked)
    };
    let opened = if req
        .filesystems
        .iter()
        .zip(&walked)
        .all(|(fs, w)| kept(fs, w).is_some())
    {
        Opened::Open(repo)
    } else {
        Opened::index(repo)?
    };
    let capture = match &req.capture {
        Some(id) => id.clone(),
        None => uuid::Uuid::now_v7().simple().to_string(),
    };
    let started = now();
    let mut manifest = Manifest {
        version: MANIFEST_VERSION,
        image: req.image.clone(),
        capture: capture.clone(),
        hostname: req.hostname.clone(),
        started,
        finished: String::new(),
        excludes: req.excludes.clone(),
        filesystems: Vec::new(),
        warnings: req.warnings.clone(),
        survey: None,
        pending: Vec::new(),
        abandoned: None,
    };
    let partial = |manifest: &Manifest| {
        let mut partial = manifest.clone();
        partial.pending = req.filesystems[manifest.filesystems.len().min(req.filesystems.len())..]
            .iter()
            .map(|fs| PendingFs {
                path: fs.path.clone(),
                fstype: fs.fstype.clone(),
                raw: fs.raw,
            })
            .collect();
        partial
    };
    let tell = |manifest: &Manifest| -> Result<()> {
        let Some(survey) = partials else {
            return Ok(());
        };
        write_manifest(lib, &opened, req, &partial(manifest), survey, TAG_PARTIAL)
            .context("telling the library of the capture's progress")
    };
    let read = (|| {
        tell(&manifest)?;
        for (fs, walked) in req.filesystems.iter().zip(walked) {
            let parent = parent_of(fs);
            let kept = kept(fs, &walked);
            let tree = Tree { fs, parent, kept };
            read_filesystem(lib, req, meter, &opened, &mut manifest, tree)?;
            tell(&manifest)?;
        }
        Ok(())
    })();
    if let Err(e) = read {
        if let Some(survey) = partials {
            // Whoever follows the capture learns it will not finish (if the library
            // can still be written).
            let mut last = partial(&manifest);
            last.abandoned = Some(format!("{e:#}"));
            let _ = write_manifest(lib, &opened, req, &last, survey, TAG_PARTIAL);
        }
        return Err(e);
    }
    manifest.finished = now();
    Ok((opened, manifest))
}

/// One tree of a capture: its source, the previous capture's tree, and that tree
/// when a walk before the capture found it unchanged.
struct Tree<'a> {
    fs: &'a FsSource,
    parent: Option<&'a Previous>,
    kept: Option<&'a Previous>,
}

/// Reads one tree of a capture into its snapshot; adds it to `manifest`.
fn read_filesystem(
    lib: &Library,
    req: &CaptureRequest,
    meter: &Arc<Meter>,
    opened: &Opened,
    manifest: &mut Manifest,
    tree: Tree<'_>,
) -> Result<()> {
    let Tree { fs, parent, kept } = tree;
    let capture = manifest.capture.clone();
    {
        meter.phase(&format!("capture {}", fs.path), None);
        let mut consistency = fs.consistency;
        let mut why_live = None;
        let held = fs.hold.as_ref().and_then(|h| match h.begin() {
            Ok(()) => Some(h),
            Err(e) => {
                why_live = Some(format!("{e:#}"));
                None
            }
        });
        let read = (|| {
            let kept = match (&held, parent) {
                // A frozen tree is walked inside its freeze.
                (Some(_), Some(p)) => {
                    let walked = fingerprint(fs, &req.excludes, &AtomicBool::new(true));
                    (walked.is_some() && p.fs.fingerprint == walked).then_some(p)
                }
                _ => kept,
            };
            match kept {
                Some(p) => with_repo!(opened, |r| keep_tree(lib, r, req, &capture, fs, p)),
                None => capture_tree(opened.indexed()?, lib, req, &capture, fs, parent, meter),
            }
        })();
        if let Some(why) = held.and_then(|h| h.end()) {
            why_live = Some(why);
        }
        let Archived {
            snap,
            entries: files,
            warnings,
            fingerprint,
        } = read?;
        manifest
            .warnings
            .extend(warnings.into_iter().map(|w| format!("{}: {w}", fs.path)));
        meter.finish();
        if let Some(why) = why_live {
            consistency = Consistency::Live;
            manifest.warnings.push(format!(
                "{}: {why}; files written during the capture may be inconsistent",
                fs.path
            ));
        } else if consistency == Consistency::Live {
            manifest.warnings.push(format!(
                "{} was captured live, without a snapshot or freeze: files written during the capture may be inconsistent",
                fs.path
            ));
        }
        let summary = snap.summary.clone().unwrap_or_default();
        manifest.filesystems.push(FsImage {
            path: fs.path.clone(),
            snapshot: snap.id.to_hex().as_str().to_string(),
            fstype: fs.fstype.clone(),
            consistency,
            files: files.max(summary.total_files_processed + summary.total_dirs_processed),
            bytes: summary.total_bytes_processed,
            added_bytes: summary.data_added,
            root: if fs.raw {
                RootMeta::default()
            } else {
                root_meta(&fs.read_from)?
            },
            raw: fs.raw,
            fingerprint,
        });
    }
    Ok(())
}

fn now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// A filesystem of the image's latest capture, to follow as a parent.
struct Previous {
    fs: FsImage,
    snap: SnapshotFile,
}

/// The filesystems of the image's latest capture whose snapshots are there.
fn previous_filesystems<S: rustic_core::Open>(
    repo: &Repository<S>,
    image: &str,
) -> Result<Vec<Previous>> {
    let all = repo
        .get_all_snapshots()
        .map_err(rustic("reading the library's snapshots"))?;
    let Some(last) = Library::manifests_in(&all, Some(image)).pop() else {
        return Ok(Vec::new());
    };
    Ok(Library::summary_of(last)?
        .filesystems
        .into_iter()
        .filter_map(|fs| {
            let snap = all.iter().find(|s| s.id.to_hex().as_str() == fs.snapshot)?;
            Some(Previous {
                snap: snap.clone(),
                fs,
            })
        })
        .collect())
}

fn tags(req: &CaptureRequest, capture: &str) -> String {
    format!("ferry,{TAG_IMAGE}{},{TAG_CAPTURE}{capture}", req.image)
}

/// The snapshot a capture of `fs` starts from.
fn new_snapshot(req: &CaptureRequest, capture: &str, fs: &FsSource) -> Result<SnapshotFile> {
    let what = format!("capture of {}", fs.path);
    SnapshotOptions::default()
        .host(req.hostname.clone())
        .add_tags(&tags(req, capture))
        .map_err(rustic(&what))?
        .to_snapshot()
        .map_err(rustic(&what))
}

/// The options every capture of a tree reads it with.
fn backup_options(fs: &FsSource, excludes: &[String]) -> (BackupOptions, Excludes) {
    let mut opts = BackupOptions::default();
    opts.as_path = Some(PathBuf::from(&fs.path));
    let mut ex = Excludes::default();
    ex.globs = excludes.iter().map(|g| format!("!{g}")).collect();
    opts.ignore_save_opts.set_atime = Some(TimeOption::Yes);
    opts.ignore_filter_opts.one_file_system = true;
    opts.excludes = ex.clone();
    (opts, ex)
}

/// The walk of the tree `fs`, as every capture makes it.
fn local_source(fs: &FsSource, excludes: &[String]) -> Result<LocalSource> {
    let (opts, ex) = backup_options(fs, excludes);
    LocalSource::new(
        opts.ignore_save_opts,
        &ex,
        &opts.ignore_filter_opts,
        &[&fs.read_from],
    )
    .map_err(rustic(format!("capture of {}", fs.path)))
}

/// The fingerprint of the tree `fs` as it is now (see [`crate::fingerprint`]).
fn fingerprint(fs: &FsSource, excludes: &[String], wanted: &AtomicBool) -> Option<String> {
    let src = local_source(fs, excludes).ok()?;
    crate::fingerprint::of_walk(&src, &fs.read_from, excludes, wanted)
}

fn capture_tree(
    repo: &Repository<IndexedIdsStatus>,
    lib: &Library,
    req: &CaptureRequest,
    capture: &str,
    fs: &FsSource,
    parent: Option<&Previous>,
    meter: &Arc<Meter>,
) -> Result<Archived> {
    let mut snap = new_snapshot(req, capture, fs)?;
    let prev = parent.map(|p| &p.snap);
    let (mut opts, _) = backup_options(fs, &req.excludes);
    if fs.raw {
        // A device's metadata says nothing of its content: read it all every time
        // (unchanged chunks are still not uploaded again).
        opts.parent_opts.force = true;
        let done = archive(repo, &opts, DeviceSource::open(fs)?, snap, fs, meter)?;
        return Ok(Archived { entries: 1, ..done });
    }
    let src = local_source(fs, &req.excludes)?;
    if let Some(chunking) = crate::archive::Chunking::of(repo.config()) {
        // Ferry's own archiver: the snapshot rustic_core's would make, with fewer
        // hand-offs between threads.
        let to = crate::archive::Destination {
            chunking,
            be: lib.write_backend(),
            dedup: true,
        };
        let get = |id| {
            repo.get_tree(&id)
                .map_err(rustic(format!("reading tree {id} of the parent snapshot")))
        };
        let parent = prev.map(|p| crate::archive::Parent {
            tree: p.tree,
            get: &get,
        });
        snap.parent = prev.map(|p| p.id);
        let walk = crate::archive::Walk {
            src: &src,
            root: &fs.read_from,
            as_path: Path::new(&fs.path),
            excludes: &req.excludes,
        };
        let done = crate::archive::archive(repo, to, walk, parent.as_ref(), snap, meter)?;
        return Ok(Archived {
            snap: save(lib, repo, done.snap, &fs.path)?,
            ..done
        });
    }
    opts.parent_opts.parents = prev.iter().map(|p| p.id.to_hex().to_string()).collect();
    archive(repo, &opts, src, snap, fs, meter)
}

/// Archives what `src` yields for `fs` as `snap` with rustic_core's archiver; the
/// snapshot and how many entries were taken.
fn archive<S, R>(
    repo: &Repository<S>,
    opts: &BackupOptions,
    src: R,
    snap: SnapshotFile,
    fs: &FsSource,
    meter: &Arc<Meter>,
) -> Result<Archived>
where
    S: IndexedIds,
    R: ReadSource + 'static,
    R::Open: Send,
    R::Iter: Iterator<Item = RusticResult<ReadSourceEntry<R::Open>>> + Send,
{
    let counted = Counted {
        inner: src,
        files: Arc::new(AtomicU64::new(0)),
        meter: meter.clone(),
    };
    let files = counted.files.clone();
    let snap = repo
        .archive(opts, &counted, snap, std::slice::from_ref(&fs.read_from))
        .map_err(rustic(format!("capture of {}", fs.path)))?;
    Ok(Archived {
        snap,
        entries: files.load(Ordering::Relaxed),
        warnings: Vec::new(),
        fingerprint: None,
    })
}

/// A new snapshot of `fs` with the tree of its `parent`, which the filesystem still
/// matches (the same fingerprint); nothing is read.
fn keep_tree<S: rustic_core::Open>(
    lib: &Library,
    repo: &Repository<S>,
    req: &CaptureRequest,
    capture: &str,
    fs: &FsSource,
    parent: &Previous,
) -> Result<Archived> {
    let prev = &parent.snap;
    tracing::info!(
        "{}: unchanged since snapshot {}; its tree is kept",
        fs.path,
        parent.fs.snapshot
    );
    let mut snap = new_snapshot(req, capture, fs)?;
    snap.tree = prev.tree;
    snap.paths = prev.paths.clone();
    snap.parent = Some(prev.id);
    let mut summary = prev.summary.clone().unwrap_or_default();
    summary.files_unmodified = summary.total_files_processed;
    summary.dirs_unmodified = summary.total_dirs_processed;
    (summary.files_new, summary.files_changed) = (0, 0);
    (summary.dirs_new, summary.dirs_changed) = (0, 0);
    (summary.data_blobs, summary.tree_blobs) = (0, 0);
    (summary.data_added, summary.data_added_packed) = (0, 0);
    (summary.data_added_files, summary.data_added_files_packed) = (0, 0);
    (summary.data_added_trees, summary.data_added_trees_packed) = (0, 0);
    summary.command = "ferry capture (unchanged: the parent's tree)".into();
    snap.summary = Some(summary);
    Ok(Archived {
        snap: save(lib, repo, snap, &fs.path)?,
        entries: 0,
        warnings: Vec::new(),
        fingerprint: parent.fs.fingerprint.clone(),
    })
}

/// Saves `snap` of `path` as rustic_core's `save_snapshots` does, but knowing the id
/// it gets (the hash of the file as stored) rather than searching every snapshot for
/// it; the saved snapshot, with its id.
fn save<S: rustic_core::Open>(
    lib: &Library,
    repo: &Repository<S>,
    mut snap: SnapshotFile,
    path: &str,
) -> Result<SnapshotFile> {
    let what = format!("capture of {path}");
    let cipher = crate::pack::Cipher::new(&repo.key())?;
    let level = repo.config().zstd().map_err(rustic(&what))?;
    snap.id = SnapshotId::default();
    let (id, file) = crate::pack::seal_file(&cipher, level, &serde_json::to_vec(&snap)?)?;
    let id = rustic_core::Id::new(id);
    lib.write_backend()
        .write_bytes(FileType::Snapshot, &id, false, file.into())
        .map_err(rustic(&what))?;
    snap.id = SnapshotId::from(id);
    Ok(snap)
}

/// A source that counts the entries the archiver takes from it.
struct Counted<R> {
    inner: R,
    files: Arc<AtomicU64>,
    meter: Arc<Meter>,
}

struct CountedIter<I> {
    inner: I,
    files: Arc<AtomicU64>,
    meter: Arc<Meter>,
}

impl<I: Iterator> Iterator for CountedIter<I> {
    type Item = I::Item;
    fn next(&mut self) -> Option<I::Item> {
        let item = self.inner.next()?;
        self.files.fetch_add(1, Ordering::Relaxed);
        self.meter.add_file();
        Some(item)
    }
}

impl<R: ReadSource> ReadSource for Counted<R>
where
    R::Iter: Iterator<Item = RusticResult<ReadSourceEntry<R::Open>>>,
{
    type Open = R::Open;
    type Iter = CountedIter<R::Iter>;

    fn size(&self) -> RusticResult<Option<u64>> {
        self.inner.size()
    }

    fn entries(&self) -> Self::Iter {
        CountedIter {
            inner: self.inner.entries(),
            files: self.files.clone(),
            meter: self.meter.clone(),
        }
    }
}

/// The bytes of a block device (or image file) as one file entry named like the
/// source's device (`path`'s last component).
struct DeviceSource {
    entry: Mutex<Option<ReadSourceEntry<File>>>,
    size: u64,
}

impl DeviceSource {
    fn open(fs: &FsSource) -> Result<DeviceSource> {
        let shown = fs.read_from.display();
        let mut file = File::open(&fs.read_from)
            .with_context(|| format!("{shown}: cannot open it for reading"))?;
        let size = file
            .seek(SeekFrom::End(0))
            .and_then(|n| file.seek(SeekFrom::Start(0)).map(|_| n))
            .with_context(|| format!("{shown}: cannot learn its size"))?;
        let name = Path::new(&fs.path)
            .file_name()
            .ok_or_else(|| anyhow!("{}: not a device path", fs.path))?;
        let meta = Metadata {
            mode: Some(0o600),
            mtime: Some(rustic_core::jiff::Timestamp::now()),
            uid: Some(0),
            gid: Some(0),
            size,
            ..Default::default()
        };
        Ok(DeviceSource {
            entry: Mutex::new(Some(ReadSourceEntry {
                path: fs.read_from.clone(),
                node: Node::new_node(name, NodeType::File, meta),
                open: Some(file),
            })),
            size,
        })
    }
}

impl ReadSource for DeviceSource {
    type Open = File;
    type Iter = std::option::IntoIter<RusticResult<ReadSourceEntry<File>>>;

    fn size(&self) -> RusticResult<Option<u64>> {
        Ok(Some(self.size))
    }

    fn entries(&self) -> Self::Iter {
        let entry = self.entry.lock().map(|mut e| e.take()).unwrap_or(None);
        entry.map(Ok).into_iter()
    }
}

/// The root directory's own owner, mode, times and xattrs.
pub fn root_meta(dir: &Path) -> Result<RootMeta> {
    let m = std::fs::symlink_metadata(dir)
        .with_context(|| format!("{}: cannot read its metadata", dir.display()))?;
    let mut xattrs = Vec::new();
    for name in xattr::list(dir).with_context(|| format!("{}: listing xattrs", dir.display()))? {
        let value = xattr::get(dir, &name)
            .with_context(|| format!("{}: reading xattr {name:?}", dir.display()))?;
        xattrs.push((
            name.to_string_lossy().to_string(),
            hex::encode(value.unwrap_or_default()),
        ));
    }
    Ok(RootMeta {
        mode: m.mode() & 0o7777,
        uid: m.uid(),
        gid: m.gid(),
        mtime_ns: m
            .mtime()
            .saturating_mul(1_000_000_000)
            .saturating_add(m.mtime_nsec()),
        atime_ns: m
            .atime()
            .saturating_mul(1_000_000_000)
            .saturating_add(m.atime_nsec()),
        xattrs,
    })
}

/// Writes the manifest as the capture's last snapshot (`kind` [`TAG_MANIFEST`]), or a
/// partial one while it runs ([`TAG_PARTIAL`]): the full manifest as
/// `/.ferry/manifest.json`, and without the survey in the snapshot's description so
/// listing images reads no data.
fn write_manifest(
    lib: &Library,
    opened: &Opened,
    req: &CaptureRequest,
    manifest: &Manifest,
    survey: Option<&Survey>,
    kind: &str,
) -> Result<()> {
    let what = "writing the manifest";
    let dir = tempfile_dir()?;
    let file = dir.join("manifest.json");
    let mut full = manifest.clone();
    full.survey = survey.cloned().map(Box::new);
    let json = serde_json::to_vec_pretty(&full)?;
    std::fs::write(&file, &json).with_context(|| format!("{}: cannot write", file.display()))?;
    let result = (|| {
        let mut snap = SnapshotOptions::default()
            .host(req.hostname.clone())
            .add_tags(&format!("{},{kind}", tags(req, &manifest.capture)))
            .map_err(rustic(what))?
            .to_snapshot()
            .map_err(rustic(what))?;
        snap.description = Some(serde_json::to_string(manifest)?);
        let mut opts = BackupOptions::default();
        opts.as_path = Some(PathBuf::from(MANIFEST_PATH));
        opts.parent_opts.force = true;
        let src = LocalSource::new(
            opts.ignore_save_opts,
            &opts.excludes,
            &opts.ignore_filter_opts,
            &[&file],
        )
        .map_err(rustic(what))?;
        let chunking = with_repo!(opened, |r| crate::archive::Chunking::of(r.config()));
        if let Some(chunking) = chunking {
            // Written by Ferry's archiver without reading the index: a manifest is
            // one blob (it names its own capture) unless it is long enough to be cut
            // into chunks another manifest may share.
            let to = crate::archive::Destination {
                chunking,
                be: lib.write_backend(),
                dedup: json.len() >= chunking.min(),
            };
            let walk = crate::archive::Walk {
                src: &src,
                root: &file,
                as_path: Path::new(MANIFEST_PATH),
                excludes: &[],
            };
            let meter = Meter::silent();
            with_repo!(opened, |r| {
                let done = crate::archive::archive(r, to, walk, None, snap, &meter)?;
                if let Some(w) = done.warnings.first() {
                    return Err(anyhow!("{what}: {w}"));
                }
                save(lib, r, done.snap, MANIFEST_PATH)?;
            });
            return Ok(());
        }
        opened
            .indexed()?
            .archive(&opts, &src, snap, std::slice::from_ref(&file))
            .map_err(rustic(what))?;
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn tempfile_dir() -> Result<PathBuf> {
    let dir =
        std::env::temp_dir().join(format!("ferry-manifest-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// What a capture of `dir` with `excludes` made of it: the fingerprint, and
    /// whether the parent's tree was kept without reading.
    fn capture_of(lib: &Library, dir: &Path, excludes: &[&str]) -> Result<(String, bool)> {
        let req = CaptureRequest {
            image: "fp".into(),
            filesystems: vec![FsSource {
                path: "/srv".into(),
                read_from: dir.to_path_buf(),
                ..Default::default()
            }],
            excludes: excludes.iter().map(|e| e.to_string()).collect(),
            ..Default::default()
        };
        let m = capture(lib, &req, &Meter::silent())?;
        let fs = &m.filesystems[0];
        let snap = lib
            .open()?
            .get_snapshot_from_str(&fs.snapshot, |_| true)
            .map_err(|e| anyhow!("{e}"))?;
        let command = snap.summary.map(|s| s.command).unwrap_or_default();
        let print = fs
            .fingerprint
            .clone()
            .ok_or_else(|| anyhow!("no fingerprint"))?;
        Ok((print, command.contains("unchanged")))
    }

    /// A tree walked as before keeps its parent's tree without being read; a touch,
    /// or other excludes, read it again.
    #[test]
    fn a_tree_with_the_parents_fingerprint_keeps_its_tree() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let src = dir.path().join("src");
        std::fs::create_dir_all(src.join("skip"))?;
        std::fs::write(src.join("a"), b"a")?;
        std::fs::write(src.join("skip/b"), b"b")?;
        let lib = library_in(dir.path())?;

        let (first, kept) = capture_of(&lib, &src, &[])?;
        assert!(!kept, "a first capture reads the tree");
        let (again, kept) = capture_of(&lib, &src, &[])?;
        assert!(kept, "nothing changed: the tree is kept");
        assert_eq!(again, first);

        let (excluding, kept) = capture_of(&lib, &src, &["/skip"])?;
        assert!(!kept, "other excludes: the tree is read");
        assert_ne!(excluding, first);
        assert!(capture_of(&lib, &src, &["/skip"])?.1, "same excludes: kept");

        // A touch is seen (it moves the ctime too) ...
        let a = std::fs::File::options().write(true).open(src.join("a"))?;
        a.set_times(std::fs::FileTimes::new().set_accessed(std::time::SystemTime::UNIX_EPOCH))?;
        let (touched, kept) = capture_of(&lib, &src, &["/skip"])?;
        assert!(!kept, "a touched file: the tree is read");
        assert_ne!(touched, excluding);
        // ... reading a file is not, though it moves the access time: the capture
        // itself read the file, whose access time was older than its mtime.
        let atime = std::fs::metadata(src.join("a"))?.accessed()?;
        assert_ne!(atime, std::time::SystemTime::UNIX_EPOCH);
        assert!(capture_of(&lib, &src, &["/skip"])?.1, "a file read: kept");
        Ok(())
    }

    /// A new library in `dir`.
    fn library_in(dir: &Path) -> Result<Library> {
        let lib = Library::connect(
            &crate::Location::parse(&dir.join("lib").to_string_lossy())?,
            "pw",
        )?;
        lib.init()?;
        Ok(lib)
    }

    /// Holds its tree back until opened (or a minute passed); with `remove`, the
    /// tree is gone when it lets go.
    #[derive(Debug, Default)]
    struct Gate {
        open: (Mutex<bool>, std::sync::Condvar),
        opened_in_time: AtomicBool,
        remove: Option<PathBuf>,
    }

    impl Gate {
        fn open(&self) {
            if let Ok(mut open) = self.open.0.lock() {
                *open = true;
            }
            self.open.1.notify_all();
        }
    }

    impl Hold for Gate {
        fn begin(&self) -> Result<()> {
            let open = self.open.0.lock().map_err(|_| anyhow!("poisoned"))?;
            let (open, timeout) = self
                .open
                .1
                .wait_timeout_while(open, std::time::Duration::from_secs(60), |o| !*o)
                .map_err(|_| anyhow!("poisoned"))?;
            self.opened_in_time
                .store(*open && !timeout.timed_out(), Ordering::SeqCst);
            if let Some(dir) = &self.remove {
                std::fs::remove_dir_all(dir)?;
            }
            Ok(())
        }
        fn end(&self) -> Option<String> {
            None
        }
    }

    fn tree(root: &Path, files: &[(&str, &str)]) -> Result<PathBuf> {
        for (name, text) in files {
            let file = root.join(name);
            std::fs::create_dir_all(file.parent().unwrap_or(root))?;
            std::fs::write(file, text)?;
        }
        Ok(root.to_path_buf())
    }

    fn progressive(id: &str, root: PathBuf, var: PathBuf, gate: &Arc<Gate>) -> CaptureRequest {
        CaptureRequest {
            image: "web".into(),
            filesystems: vec![
                FsSource {
                    path: "/".into(),
                    read_from: root,
                    fstype: Some("ext4".into()),
                    ..Default::default()
                },
                FsSource {
                    path: "/var".into(),
                    read_from: var,
                    fstype: Some("xfs".into()),
                    hold: Some(gate.clone()),
                    ..Default::default()
                },
            ],
            hostname: "web".into(),
            survey: Some(Survey::default()),
            capture: Some(id.into()),
            progressive: true,
            ..Default::default()
        }
    }

    fn following(fs: &str, at: &str, target: &Path, secs: u64) -> crate::RestoreRequest {
        crate::RestoreRequest {
            image: "web".into(),
            at: Some(at.into()),
            fs: fs.into(),
            target: target.to_path_buf(),
            overwrite: false,
            follow: Some(std::time::Duration::from_secs(secs)),
        }
    }

    /// Restores started before a progressive capture follow it: the layout is there
    /// before any filesystem, and `/` is restored while `/var` is still held back
    /// (it is only read once that restore finished).
    #[test]
    fn restores_follow_a_progressive_capture() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let root = tree(
            &dir.path().join("root"),
            &[("etc/hostname", "web\n"), ("bin/sh", "#!")],
        )?;
        let var = tree(&dir.path().join("var"), &[("log/syslog", "booted\n")])?;
        let lib = library_in(dir.path())?;
        let (to_root, to_var) = (dir.path().join("to-root"), dir.path().join("to-var"));
        std::fs::create_dir_all(&to_root)?;
        std::fs::create_dir_all(&to_var)?;
        let gate = Arc::new(Gate::default());
        let id = "0195job-capture";
        std::thread::scope(|s| -> Result<()> {
            let layout = s.spawn(|| lib.manifest_following("web", id, Duration::from_secs(60)));
            let first = s.spawn(|| {
                let done =
                    crate::restore(&lib, &following("/", id, &to_root, 60), &Meter::silent());
                gate.open();
                done
            });
            let second = s.spawn(|| {
                crate::restore(&lib, &following("/var", id, &to_var, 60), &Meter::silent())
            });
            std::thread::sleep(Duration::from_millis(1500));
            let captured = capture(
                &lib,
                &progressive(id, root.clone(), var.clone(), &gate),
                &Meter::silent(),
            );
            fn join<T>(h: std::thread::ScopedJoinHandle<'_, T>) -> Result<T> {
                h.join().map_err(|_| anyhow!("panicked"))
            }
            let layout: Manifest = join(layout)??;
            let (first, second) = (join(first)??, join(second)??);
            let manifest = captured?;
            assert_eq!(manifest.capture, id);
            assert!(manifest.pending.is_empty() && manifest.abandoned.is_none());
            assert!(
                layout.survey.is_some(),
                "a partial manifest carries the survey"
            );
            let paths: Vec<&str> = layout
                .filesystems
                .iter()
                .map(|f| f.path.as_str())
                .chain(layout.pending.iter().map(|p| p.path.as_str()))
                .collect();
            assert_eq!(paths, ["/", "/var"]);
            assert!(
                gate.opened_in_time.load(Ordering::SeqCst),
                "/ was restored while /var waited"
            );
            assert_eq!((first.error_count, second.error_count), (0, 0));
            Ok(())
        })?;
        assert_eq!(
            std::fs::read_to_string(to_root.join("etc/hostname"))?,
            "web\n"
        );
        assert_eq!(
            std::fs::read_to_string(to_var.join("log/syslog"))?,
            "booted\n"
        );
        // Partial manifests are no images of their own.
        let images = lib.images()?;
        assert_eq!(images.len(), 1);
        assert_eq!(images[0].captures.len(), 1);
        Ok(())
    }

    /// A meter that was cancelled stops a capture at its first chunk and a restore at
    /// its first file, each with [`crate::Cancelled`] in its error; the same work with
    /// a fresh meter runs through.
    #[test]
    fn a_cancelled_meter_stops_capture_and_restore() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let root = tree(
            &dir.path().join("root"),
            &[("etc/hostname", "web\n"), ("srv/data", "some data")],
        )?;
        let lib = library_in(dir.path())?;
        let req = CaptureRequest {
            image: "web".into(),
            filesystems: vec![FsSource {
                path: "/".into(),
                read_from: root,
                fstype: Some("ext4".into()),
                ..Default::default()
            }],
            hostname: "web".into(),
            ..Default::default()
        };
        let stopped = Meter::silent();
        stopped.cancel();
        let err = capture(&lib, &req, &stopped).expect_err("cancelled");
        assert!(err.chain().any(|c| c.is::<crate::Cancelled>()), "{err:#}");
        assert!(lib.images()?.is_empty(), "a stopped capture is no image");
        let manifest = capture(&lib, &req, &Meter::silent())?;
        let to = dir.path().join("to");
        std::fs::create_dir_all(&to)?;
        let restore = crate::RestoreRequest {
            image: "web".into(),
            at: Some(manifest.capture.clone()),
            fs: "/".into(),
            target: to.clone(),
            overwrite: false,
            follow: None,
        };
        let err = crate::restore(&lib, &restore, &stopped).expect_err("cancelled");
        assert!(err.chain().any(|c| c.is::<crate::Cancelled>()), "{err:#}");
        assert!(!to.join("srv/data").exists() || std::fs::read(to.join("srv/data"))?.is_empty());
        Ok(())
    }

    /// A capture that stops tells its followers why; a restore for a filesystem the
    /// capture does not have, or of a capture that never starts, ends with an error
    /// that says so.
    #[test]
    fn followers_of_a_capture_that_fails_or_never_comes_are_told() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let root = tree(&dir.path().join("root"), &[("etc/hostname", "web\n")])?;
        let var = tree(&dir.path().join("var"), &[("log/syslog", "booted\n")])?;
        let lib = library_in(dir.path())?;
        let to = dir.path().join("to");
        std::fs::create_dir_all(&to)?;
        let gate = Arc::new(Gate {
            remove: Some(var.clone()),
            ..Default::default()
        });
        gate.open();
        let failed = capture(
            &lib,
            &progressive("doomed", root, var, &gate),
            &Meter::silent(),
        );
        let why = format!(
            "{:#}",
            failed
                .err()
                .ok_or_else(|| anyhow!("the capture of a vanished tree succeeded"))?
        );
        // The error of a restore that must fail.
        let refused = |fs: &str, at: &str, secs: u64| -> Result<String> {
            match crate::restore(&lib, &following(fs, at, &to, secs), &Meter::silent()) {
                Ok(_) => Err(anyhow!("restored {fs} of capture {at}")),
                Err(e) => Ok(format!("{e:#}")),
            }
        };
        let text = refused("/var", "doomed", 30)?;
        assert!(
            text.contains("capture doomed: filesystem /var: the capture stopped before writing it"),
            "{text}"
        );
        assert!(text.contains(&why), "{text} / {why}");
        // What it wrote before it stopped restores.
        crate::restore(&lib, &following("/", "doomed", &to, 30), &Meter::silent())?;
        assert_eq!(std::fs::read_to_string(to.join("etc/hostname"))?, "web\n");

        let text = refused("/srv", "doomed", 30)?;
        assert!(
            text.contains("the capture has no such filesystem; it has /, /var"),
            "{text}"
        );
        // A capture given up by the manager (its agent failed before writing).
        abandon(&lib, "web", "given-up", "the source went away")?;
        let text = refused("/", "given-up", 30)?;
        assert!(
            text.contains("the capture stopped before writing it: the source went away"),
            "{text}"
        );
        // Nor is its layout anything to deploy.
        let layout = lib
            .manifest_following("web", "given-up", Duration::from_secs(30))
            .expect_err("stopped");
        assert!(
            format!("{layout:#}").contains("capture given-up stopped: the source went away"),
            "{layout:#}"
        );
        let so_far = lib.manifest_so_far("web", "given-up").expect_err("stopped");
        assert!(format!("{so_far:#}").contains("stopped"), "{so_far:#}");
        abandon(&lib, "web", "doomed", "again")?;
        assert!(
            !refused("/var", "doomed", 30)?.contains("again"),
            "marked once"
        );
        let started = std::time::Instant::now();
        let text = refused("/", "never", 2)?;
        assert!(
            text.contains("capture never: filesystem /: not written after 2 s"),
            "{text}"
        );
        assert!(started.elapsed() < Duration::from_secs(10));
        let err = capture(
            &lib,
            &progressive("Bad Id", dir.path().into(), dir.path().into(), &gate),
            &Meter::silent(),
        )
        .err()
        .ok_or_else(|| anyhow!("took a bad capture id"))?;
        assert!(
            format!("{err:#}").contains("capture id \"Bad Id\""),
            "{err:#}"
        );
        Ok(())
    }
}
