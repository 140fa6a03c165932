//! Restore: one captured filesystem of an image into a directory, with everything a
//! root filesystem needs — owner, group, mode incl. setuid/setgid/sticky, nanosecond
//! times, every xattr (ACLs, SELinux labels, capabilities) also on symlinks and
//! directories, hardlinks, holes, symlinks, devices, FIFOs, sockets.
//!
//! Built on the repository API rather than rustic's own restore, so that every
//! failure is counted and named instead of logged or panicking, hardlinks are rebuilt
//! from inode and device, and holes come back at 4 KiB granularity.
//!
//! Three passes: create every entry in tree order (directories owner-only until the
//! end); write file contents on worker threads; then set metadata deepest first, so
//! a directory's times and read-only mode are set after its children.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::ops::ControlFlow;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result, anyhow, bail};
use ferry_model::image::{RestoreReport, RootMeta};
use nix::fcntl::AT_FDCWD;
use nix::sys::stat::{Mode, SFlag, UtimensatFlags, mknod, utimensat};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, fchownat, mkfifo};
use rustic_core::repofile::{BlobType, Node, NodeType};
use rustic_core::{BlobId, IndexedFullStatus, LsOptions, Repository};

use crate::library::{Library, rustic};
use crate::progress::Meter;

/// What to restore and where.
#[derive(Debug, Clone)]
pub struct RestoreRequest {
    /// Image name.
    pub image: String,
    /// A capture id; the latest when `None`.
    pub at: Option<String>,
    /// The filesystem's path in the image, e.g. `/` or `/var`.
    pub fs: String,
    /// An existing directory, normally a freshly made filesystem's mount point; for
    /// block data, a block device or an image file.
    pub target: PathBuf,
    /// Restore over existing entries (files are replaced; directories kept).
    pub overwrite: bool,
    /// Follow capture `at` while it runs: wait up to this long for it to write the
    /// filesystem (see [`Manifest::pending`](ferry_model::image::Manifest::pending)).
    pub follow: Option<std::time::Duration>,
}

const MAX_NAMED_ERRORS: usize = 100;

fn fail(report: &mut RestoreReport, path: &Path, what: impl std::fmt::Display) {
    report.error_count += 1;
    if report.errors.len() < MAX_NAMED_ERRORS {
        report.errors.push(format!("{}: {what}", path.display()));
    }
}

/// Restores `req.fs` of an image into `req.target`. Fails outright when the library,
/// image, filesystem or target is wrong, or the target fills up; otherwise returns
/// a report whose `error_count` says how many entries failed.
pub fn restore(lib: &Library, req: &RestoreRequest, meter: &Arc<Meter>) -> Result<RestoreReport> {
    let repo = lib.open()?;
    let manifest = match (&req.at, req.follow) {
        (Some(at), Some(wait)) => {
            meter.phase(
                &format!("restore {}: waiting for its capture", req.fs),
                None,
            );
            lib.follow(&repo, &req.image, at, Some(&req.fs), wait)?.1
        }
        _ => Library::summary_of(&lib.manifest_snapshot(&repo, &req.image, req.at.as_deref())?)?,
    };
    // Indexed only now: a capture followed wrote more packs meanwhile.
    let repo = repo
        .to_indexed()
        .map_err(rustic("reading the library's index"))?;
    let fs = manifest.filesystem(&req.fs).ok_or_else(|| {
        let have: Vec<&str> = manifest
            .filesystems
            .iter()
            .map(|f| f.path.as_str())
            .collect();
        anyhow!(
            "image {}: has no filesystem {}; it has {}",
            req.image,
            req.fs,
            have.join(", ")
        )
    })?;
    let snap = repo
        .get_snapshot_from_str(&fs.snapshot, |_| true)
        .map_err(rustic(format!(
            "image {}: snapshot {}",
            req.image, fs.snapshot
        )))?;
    let root = repo
        .node_from_snapshot_and_path(&snap, &fs.path)
        .map_err(rustic(format!(
            "image {}: {} in its snapshot",
            req.image, fs.path
        )))?;
    meter.phase(&format!("restore {}", fs.path), Some(fs.bytes));
    if fs.raw {
        let report = restore_raw(&repo, &root, &fs.path, req, meter)?;
        meter.finish();
        return Ok(report);
    }
    check_target(&req.target, req.overwrite)?;
    let mut report = RestoreReport::default();
    let (entries, jobs) = create_entries(&repo, &root, &req.target, req.overwrite, &mut report)?;
    write_contents(&repo, &jobs, meter, &mut report)?;
    for (path, node) in entries.iter().rev() {
        set_metadata(path, node, &mut report);
    }
    if let Err(e) = set_root(&req.target, &fs.root) {
        fail(&mut report, &req.target, e);
    }
    meter.finish();
    Ok(report)
}

/// Block data (`node`, captured from device `path`) onto a block device at least as
/// large, every byte written; or into an image file, zero blocks left as holes.
fn restore_raw(
    repo: &Repository<IndexedFullStatus>,
    node: &Node,
    path: &str,
    req: &RestoreRequest,
    meter: &Arc<Meter>,
) -> Result<RestoreReport> {
    use std::io::{Seek, SeekFrom};
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let target = &req.target;
    let shown = target.display();
    let size = node.meta.size;
    let open = |opts: &mut std::fs::OpenOptions| {
        opts.write(true)
            .open(target)
            .with_context(|| format!("target {shown}: cannot open it for writing"))
    };
    let (file, device) = match std::fs::metadata(target) {
        Ok(m) if m.file_type().is_block_device() => {
            if let Some(point) = mounted_at(m.rdev()) {
                bail!("target {shown}: mounted at {point}; unmount it first");
            }
            let mut file = open(File::options().read(true))?;
            let room = file
                .seek(SeekFrom::End(0))
                .with_context(|| format!("target {shown}: cannot learn its size"))?;
            if room < size {
                bail!(
                    "target {shown}: too small: {room} bytes, the block data of {path} is {size}"
                );
            }
            if !req.overwrite && holds_data(&file) {
                bail!(
                    "target {shown}: holds data (its first MiB is not blank); pass --overwrite to replace it"
                );
            }
            (file, true)
        }
        Ok(m) if m.is_dir() => bail!(
            "target {shown}: a directory, but {path} was captured as block data; restore it onto a device or into an image file"
        ),
        Ok(m) if m.is_file() => {
            if m.len() > 0 && !req.overwrite {
                bail!("target {shown}: exists and is not empty; pass --overwrite to replace it");
            }
            (open(File::options().truncate(true))?, false)
        }
        Ok(_) => bail!("target {shown}: neither a block device nor a regular file"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            (open(File::options().create_new(true).mode(0o600))?, false)
        }
        Err(e) => bail!("target {shown}: cannot use it ({e})"),
    };
    let written = write_blobs(repo, &file, node, device, meter);
    meter.check()?;
    let written = written.map_err(|e| {
        if e.full {
            anyhow!("target {shown}: full, too small for the {size} bytes of {path}")
        } else {
            anyhow!("target {shown}: {}", e.message)
        }
    })?;
    if !device {
        file.set_len(written)
            .with_context(|| format!("target {shown}: setting its size"))?;
    }
    file.sync_all()
        .with_context(|| format!("target {shown}: flushing it"))?;
    meter.add_file();
    Ok(RestoreReport {
        files: 1,
        bytes: written,
        ..Default::default()
    })
}

/// Where the block device numbered `rdev` is mounted, if it is.
fn mounted_at(rdev: u64) -> Option<String> {
    let dev = format!(
        "{}:{}",
        nix::sys::stat::major(rdev),
        nix::sys::stat::minor(rdev)
    );
    let table = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    table.lines().find_map(|l| {
        let mut f = l.split(' ');
        (f.nth(2)? == dev).then(|| f.nth(1).map(str::to_string))?
    })
}

/// Whether the first MiB of `file` holds anything but zeros.
fn holds_data(file: &File) -> bool {
    let mut head = vec![0u8; 1 << 20];
    let n = file.read_at(&mut head, 0).unwrap_or(0);
    head[..n].iter().any(|b| *b != 0)
}

/// The target must be a directory, and empty (but for `lost+found`) unless
/// overwriting.
fn check_target(target: &Path, overwrite: bool) -> Result<()> {
    let meta = std::fs::metadata(target)
        .with_context(|| format!("target {}: cannot use it", target.display()))?;
    if !meta.is_dir() {
        bail!("target {}: not a directory", target.display());
    }
    if !overwrite {
        let mut entries = std::fs::read_dir(target)
            .with_context(|| format!("target {}: cannot list it", target.display()))?;
        if let Some(e) =
            entries.find(|e| e.as_ref().map_or(true, |e| e.file_name() != "lost+found"))
        {
            let name = e
                .map(|e| e.file_name().to_string_lossy().to_string())
                .unwrap_or_default();
            bail!(
                "target {}: not empty (it holds {name:?}); restore into an empty filesystem, or pass --overwrite",
                target.display()
            );
        }
    }
    Ok(())
}

/// A file whose content is to be written.
struct Job {
    path: PathBuf,
    node: Node,
}

type Entries = Vec<(PathBuf, Node)>;

/// Pass 1: every entry, in tree order. Returns the entries whose metadata is to be
/// set and the files whose content is to be written.
fn create_entries(
    repo: &Repository<IndexedFullStatus>,
    root: &Node,
    target: &Path,
    overwrite: bool,
    report: &mut RestoreReport,
) -> Result<(Entries, Vec<Job>)> {
    let mut entries = Vec::new();
    let mut jobs = Vec::new();
    let mut inodes: HashMap<(u64, u64), PathBuf> = HashMap::new();
    let walk = repo
        .ls(root, &LsOptions::default())
        .map_err(rustic("reading the image's tree"))?;
    for item in walk {
        let (rel, mut node) = item.map_err(rustic("reading the image's tree"))?;
        let path = target.join(&rel);
        let hardlink_key = (node.node_type == NodeType::File && node.meta.links > 1)
            .then_some((node.meta.device_id, node.meta.inode));
        if let Some(first) = hardlink_key.and_then(|k| inodes.get(&k)) {
            if overwrite {
                remove_existing(&path);
            }
            match std::fs::hard_link(first, &path) {
                Ok(()) => report.hardlinks += 1,
                Err(e) => fail(
                    report,
                    &path,
                    format!("hardlink to {}: {e}", first.display()),
                ),
            }
            continue;
        }
        let made = create_one(&path, &node, overwrite);
        if let Err(e) = made {
            if e.raw_os_error() == Some(libc::ENOSPC) {
                bail!(
                    "target {}: full while creating {}",
                    target.display(),
                    path.display()
                );
            }
            fail(report, &path, e);
            continue;
        }
        match &node.node_type {
            NodeType::Dir => report.dirs += 1,
            NodeType::File => {
                if let Some(k) = hardlink_key {
                    inodes.insert(k, path.clone());
                }
                if node.meta.size > 0 {
                    jobs.push(Job {
                        path: path.clone(),
                        node: node.clone(),
                    });
                } else {
                    report.files += 1;
                }
            }
            NodeType::Symlink { .. } => report.symlinks += 1,
            _ => report.specials += 1,
        }
        node.content = None;
        entries.push((path, node));
    }
    Ok((entries, jobs))
}

fn remove_existing(path: &Path) {
    if let Ok(m) = std::fs::symlink_metadata(path)
        && !m.is_dir()
    {
        let _ = std::fs::remove_file(path);
    }
}

fn create_one(path: &Path, node: &Node, overwrite: bool) -> std::io::Result<()> {
    let exists = |e: &std::io::Error| e.kind() == std::io::ErrorKind::AlreadyExists;
    if overwrite && node.node_type != NodeType::Dir {
        remove_existing(path);
    }
    let private = Mode::from_bits_truncate(0o600);
    match &node.node_type {
        NodeType::Dir => match std::fs::DirBuilder::new().mode(0o700).create(path) {
            Err(e) if exists(&e) && path.is_dir() => Ok(()),
            other => other,
        },
        NodeType::File => std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map(drop),
        NodeType::Symlink { .. } => std::os::unix::fs::symlink(node.node_type.to_link(), path),
        NodeType::Dev { device } => mknod(path, SFlag::S_IFBLK, private, *device).map_err(io),
        NodeType::Chardev { device } => mknod(path, SFlag::S_IFCHR, private, *device).map_err(io),
        NodeType::Fifo => mkfifo(path, private).map_err(io),
        NodeType::Socket => mknod(path, SFlag::S_IFSOCK, private, 0).map_err(io),
    }
}

fn io(e: nix::Error) -> std::io::Error {
    std::io::Error::from_raw_os_error(e as i32)
}

/// Pass 2: file contents on worker threads, holes left where the data is zero.
fn write_contents(
    repo: &Repository<IndexedFullStatus>,
    jobs: &[Job],
    meter: &Arc<Meter>,
    report: &mut RestoreReport,
) -> Result<()> {
    let full = AtomicBool::new(false);
    let shared = Mutex::new(std::mem::take(report));
    crate::workers::for_each_index(jobs.len(), |i| {
        if full.load(Ordering::Relaxed) || meter.check().is_err() {
            return ControlFlow::Break(());
        }
        let job = &jobs[i];
        let result = write_file(repo, job, meter);
        let Ok(mut r) = shared.lock() else {
            return ControlFlow::Break(());
        };
        match result {
            Ok(bytes) => {
                r.files += 1;
                r.bytes += bytes;
                meter.add_file();
            }
            Err(e) if e.full => {
                full.store(true, Ordering::Relaxed);
                fail(&mut r, &job.path, e.message);
            }
            Err(e) => fail(&mut r, &job.path, e.message),
        }
        ControlFlow::Continue(())
    });
    *report = shared
        .into_inner()
        .map_err(|_| anyhow!("a restore worker failed"))?;
    meter.check()?;
    if full.load(Ordering::Relaxed) {
        bail!(
            "the target filled up: {} of {} files written; it is too small for this filesystem",
            report.files,
            jobs.len()
        );
    }
    Ok(())
}

struct WriteError {
    message: String,
    full: bool,
}

impl From<std::io::Error> for WriteError {
    fn from(e: std::io::Error) -> WriteError {
        WriteError {
            full: e.raw_os_error() == Some(libc::ENOSPC),
            message: e.to_string(),
        }
    }
}

const BLOCK: usize = 4096;

fn write_file(
    repo: &Repository<IndexedFullStatus>,
    job: &Job,
    meter: &Arc<Meter>,
) -> Result<u64, WriteError> {
    let file = File::options().write(true).open(&job.path)?;
    let offset = write_blobs(repo, &file, &job.node, false, meter)?;
    file.set_len(offset)?;
    Ok(offset)
}

/// Writes the content of `node` into `file` from its start: every byte when
/// `dense`, else zero blocks left as holes. Returns the bytes written.
fn write_blobs(
    repo: &Repository<IndexedFullStatus>,
    file: &File,
    node: &Node,
    dense: bool,
    meter: &Arc<Meter>,
) -> Result<u64, WriteError> {
    let mut offset = 0u64;
    for id in node.content.iter().flatten() {
        if let Err(c) = meter.check() {
            return Err(WriteError {
                message: c.to_string(),
                full: true,
            });
        }
        let blob = BlobId::from(*id);
        let data = repo.get_blob_cached(&blob, BlobType::Data).map_err(|e| {
            let pack = repo
                .get_index_entry(id)
                .map(|entry| format!(" in pack {}", entry.pack.to_hex().as_str()))
                .unwrap_or_default();
            WriteError {
                message: format!(
                    "content blob {}{pack}: {}",
                    blob.to_hex().as_str(),
                    crate::library::brief(&e)
                ),
                full: false,
            }
        })?;
        if dense {
            file.write_all_at(&data, offset)?;
        } else {
            write_sparse(file, &data, offset)?;
        }
        offset += data.len() as u64;
        meter.add_bytes(data.len() as u64);
    }
    if offset != node.meta.size {
        return Err(WriteError {
            message: format!(
                "content is {offset} bytes, the image says {}",
                node.meta.size
            ),
            full: false,
        });
    }
    Ok(offset)
}

/// Writes `data` at `offset`, skipping 4 KiB blocks (aligned to the file) that are
/// all zero so they stay holes.
fn write_sparse(file: &File, data: &[u8], offset: u64) -> std::io::Result<()> {
    let mut at = 0usize;
    while at < data.len() {
        // Up to the next block boundary of the file.
        let to_boundary = BLOCK - ((offset as usize + at) % BLOCK);
        let end = (at + to_boundary).min(data.len());
        if data[at..end].iter().all(|b| *b == 0) {
            at = end;
            continue;
        }
        // Extend the run over following non-zero blocks.
        let mut run_end = end;
        while run_end < data.len() {
            let next = (run_end + BLOCK).min(data.len());
            if data[run_end..next].iter().all(|b| *b == 0) {
                break;
            }
            run_end = next;
        }
        file.write_all_at(&data[at..run_end], offset + at as u64)?;
        at = run_end;
    }
    Ok(())
}

/// Permission bits from a Go `os.FileMode` as restic stores it.
pub fn unix_mode(go: u32) -> u32 {
    const SETUID: u32 = 1 << 23;
    const SETGID: u32 = 1 << 22;
    const STICKY: u32 = 1 << 20;
    let mut mode = go & 0o777;
    if go & SETUID != 0 {
        mode |= 0o4000;
    }
    if go & SETGID != 0 {
        mode |= 0o2000;
    }
    if go & STICKY != 0 {
        mode |= 0o1000;
    }
    mode
}

fn timespec(ts: Option<rustic_core::jiff::Timestamp>) -> TimeSpec {
    match ts {
        Some(t) => TimeSpec::new(t.as_second(), i64::from(t.subsec_nanosecond())),
        None => TimeSpec::UTIME_OMIT,
    }
}

/// Pass 3, one entry: owner, then mode (a chown clears setuid), then xattrs (a chown
/// clears capabilities), then times.
fn set_metadata(path: &Path, node: &Node, report: &mut RestoreReport) {
    let m = &node.meta;
    let mut failed = Vec::new();
    if let Err(e) = fchownat(
        AT_FDCWD,
        path,
        m.uid.map(Uid::from_raw),
        m.gid.map(Gid::from_raw),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    ) {
        failed.push(format!("owner {:?}:{:?}: {e}", m.uid, m.gid));
    }
    let symlink = matches!(node.node_type, NodeType::Symlink { .. });
    if let (Some(mode), false) = (m.mode, symlink) {
        use std::os::unix::fs::PermissionsExt;
        let mode = unix_mode(mode);
        if let Err(e) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)) {
            failed.push(format!("mode {mode:o}: {e}"));
        }
    }
    for x in &m.extended_attributes {
        // XFS shows its ACLs a second time under these names; the system.posix_acl_*
        // attributes carry them to any filesystem.
        if x.name.starts_with("trusted.SGI_ACL_") {
            continue;
        }
        let value = x.value.as_deref().unwrap_or_default();
        if let Err(e) = xattr::set(path, OsStr::new(&x.name), value) {
            failed.push(format!("xattr {}: {e}", x.name));
        }
    }
    let times = [timespec(m.atime), timespec(m.mtime)];
    if let Err(e) = utimensat(
        AT_FDCWD,
        path,
        &times[0],
        &times[1],
        UtimensatFlags::NoFollowSymlink,
    ) {
        failed.push(format!("times: {e}"));
    }
    if !failed.is_empty() {
        fail(report, path, failed.join("; "));
    }
}

/// The filesystem root's metadata, kept in the manifest.
fn set_root(target: &Path, root: &RootMeta) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::os::unix::fs::chown(target, Some(root.uid), Some(root.gid))
        .with_context(|| format!("owner {}:{}", root.uid, root.gid))?;
    std::fs::set_permissions(target, std::fs::Permissions::from_mode(root.mode))
        .with_context(|| format!("mode {:o}", root.mode))?;
    for (name, value) in &root.xattrs {
        let value = hex::decode(value).with_context(|| format!("xattr {name}: not hex"))?;
        xattr::set(target, name, &value).with_context(|| format!("xattr {name}"))?;
    }
    let ts = |ns: i64| TimeSpec::new(ns.div_euclid(1_000_000_000), ns.rem_euclid(1_000_000_000));
    utimensat(
        AT_FDCWD,
        target,
        &ts(root.atime_ns),
        &ts(root.mtime_ns),
        UtimensatFlags::NoFollowSymlink,
    )
    .context("times")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn go_modes() {
        assert_eq!(unix_mode(0o755), 0o755);
        assert_eq!(unix_mode((1 << 23) | 0o755), 0o4755);
        assert_eq!(unix_mode((1 << 31) | (1 << 20) | 0o777), 0o1777);
        assert_eq!(unix_mode((1 << 31) | (1 << 22) | 0o775), 0o2775);
    }

    #[test]
    fn zero_blocks_stay_holes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let file = File::create(&path).unwrap();
        // 1 MiB of zeros with "END" at the end, written at an unaligned offset.
        let mut data = vec![0u8; 1 << 20];
        data[(1 << 20) - 3..].copy_from_slice(b"END");
        write_sparse(&file, &data, 100).unwrap();
        file.set_len(100 + (1 << 20)).unwrap();
        let m = std::fs::metadata(&path).unwrap();
        assert!(m.blocks() * 512 <= 8192, "{} blocks allocated", m.blocks());
        let back = std::fs::read(&path).unwrap();
        assert_eq!(&back[100..], &data[..]);
        // Dense data is written whole.
        let dense: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8 + 1).collect();
        write_sparse(&file, &dense, 0).unwrap();
        assert_eq!(&std::fs::read(&path).unwrap()[..10_000], &dense[..]);
    }
}
