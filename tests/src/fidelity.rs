//! The image fidelity suite's parts: loop-mounted filesystems, a generated tree that
//! holds every kind of entry and metadata a root filesystem has, and a comparator.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use nix::sys::stat::SFlag;

/// Runs a command; its stdout, or an error with its stderr.
pub fn sh(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).to_string())
}

/// A filesystem in a sparse image file on a loop device, mounted `noatime` (so that
/// reading it does not change the access times being compared).
pub struct LoopFs {
    image: PathBuf,
    device: String,
    /// Where it is mounted.
    pub mnt: PathBuf,
}

impl LoopFs {
    /// Makes a `fstype` (ext4 or xfs) filesystem of `size` bytes under `dir`.
    pub fn new(dir: &Path, name: &str, fstype: &str, size: u64) -> Result<LoopFs> {
        let image = dir.join(format!("{name}.img"));
        fs::File::create(&image)?.set_len(size)?;
        let mkfs = match fstype {
            "xfs" => sh(Command::new("mkfs.xfs").args(["-q", "-f"]).arg(&image)),
            _ => sh(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&image)),
        };
        mkfs?;
        let device = sh(Command::new("losetup").args(["-f", "--show"]).arg(&image))?
            .trim()
            .to_string();
        let mnt = dir.join(name);
        fs::create_dir_all(&mnt)?;
        let fs = LoopFs { image, device, mnt };
        sh(Command::new("mount")
            .args(["-o", "noatime", &fs.device])
            .arg(&fs.mnt))?;
        Ok(fs)
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mnt).status();
        let _ = Command::new("losetup").args(["-d", &self.device]).status();
        let _ = fs::remove_file(&self.image);
    }
}

/// Whether this machine can run the suite: root, loop devices, the tools.
pub fn can_run() -> Option<String> {
    if !nix_is_root() {
        return Some("root".into());
    }
    for tool in [
        "losetup",
        "mkfs.ext4",
        "mkfs.xfs",
        "setfacl",
        "setcap",
        "getfattr",
        "getcap",
    ] {
        if Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .map(|o| !o.status.success())
            .unwrap_or(true)
        {
            return Some(tool.into());
        }
    }
    None
}

fn nix_is_root() -> bool {
    fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

/// Sets atime and mtime (ns since the epoch) without following a symlink.
pub fn set_times(path: &Path, atime: i64, mtime: i64) -> Result<()> {
    use nix::sys::stat::{UtimensatFlags, utimensat};
    let ts = |ns: i64| {
        nix::sys::time::TimeSpec::new(ns.div_euclid(1_000_000_000), ns.rem_euclid(1_000_000_000))
    };
    utimensat(
        nix::fcntl::AT_FDCWD,
        path,
        &ts(atime),
        &ts(mtime),
        UtimensatFlags::NoFollowSymlink,
    )
    .with_context(|| format!("utimensat {}", path.display()))
}

fn chown(path: &Path, uid: u32, gid: u32) -> Result<()> {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))
        .with_context(|| format!("chown {}", path.display()))
}

fn chmod(path: &Path, mode: u32) -> Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", path.display()))
}

fn xattr(path: &Path, name: &str, value: &[u8]) -> Result<()> {
    xattr::set(path, name, value).with_context(|| format!("setxattr {name} {}", path.display()))
}

fn mknod(path: &Path, kind: nix::sys::stat::SFlag, major: u64, minor: u64) -> Result<()> {
    use nix::sys::stat::{Mode, makedev};
    nix::sys::stat::mknod(
        path,
        kind,
        Mode::from_bits_truncate(0o640),
        makedev(major, minor),
    )
    .with_context(|| format!("mknod {}", path.display()))
}

/// A deterministic byte stream (xorshift) that does not compress; it differs
/// between seeds.
pub fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Nanoseconds since the epoch of 2019-05-06 07:08:09.987654321 UTC.
pub const MTIME: i64 = 1_557_126_489_987_654_321;
/// Nanoseconds since the epoch of 2018-01-02 03:04:05.123456789 UTC.
pub const ATIME: i64 = 1_514_862_245_123_456_789;

/// Counts of what [`generate`] made.
#[derive(Debug, Default)]
pub struct Generated {
    /// Hardlinked names.
    pub hardlinked_names: usize,
    /// Sparse file's path (relative).
    pub sparse: PathBuf,
}

/// Fills `root` with every item the fidelity suite checks: setuid/setgid/sticky,
/// owners, ns times, user/trusted/security xattrs on files, directories and
/// symlinks, POSIX ACLs, a file capability, `inodes` × `names_per_inode` hardlinked
/// names, a 4 GiB sparse file, symlinks, devices, a FIFO, a socket, empty
/// directories, long and non-UTF-8 names, files of mixed sizes; and the root's own
/// mode, owner, xattr and times.
pub fn generate(root: &Path, inodes: usize, names_per_inode: usize) -> Result<Generated> {
    let p = |rel: &str| root.join(rel);
    for d in [
        "dirs",
        "times",
        "xattr",
        "acl",
        "caps",
        "links",
        "sparse",
        "sym",
        "dev",
        "names",
        "data",
        "empty/deep/a/b/c",
    ] {
        fs::create_dir_all(p(d))?;
    }
    // Modes and owners.
    fs::write(p("suid"), b"suid")?;
    chown(&p("suid"), 1234, 5678)?;
    chmod(&p("suid"), 0o4755)?;
    fs::write(p("sgid-file"), b"sgid")?;
    chmod(&p("sgid-file"), 0o2711)?;
    for (d, mode, uid, gid) in [
        ("dirs/setgid", 0o2775, 0, 5678),
        ("dirs/sticky", 0o1777, 0, 0),
        ("dirs/private", 0o700, 2222, 3333),
        ("dirs/readonly", 0o555, 0, 0),
    ] {
        fs::create_dir_all(p(d))?;
        fs::write(p(d).join("inside"), d.as_bytes())?;
        chown(&p(d), uid, gid)?;
        chmod(&p(d), mode)?;
    }
    // Extended attributes, also on a directory and a symlink.
    fs::write(p("xattr/file"), b"x")?;
    xattr(&p("xattr/file"), "user.text", b"hello")?;
    xattr(&p("xattr/file"), "user.bin", &[0, 255, 16])?;
    xattr(&p("xattr/file"), "trusted.t", b"trusted value")?;
    xattr(
        &p("xattr/file"),
        "security.selinux",
        b"system_u:object_r:etc_t:s0\0",
    )?;
    xattr(&p("xattr"), "user.dir", b"on a directory")?;
    std::os::unix::fs::symlink("file", p("xattr/link"))?;
    xattr(&p("xattr/link"), "trusted.link", b"on a symlink")?;
    chown(&p("xattr/link"), 1234, 5678)?;
    // POSIX ACLs.
    fs::write(p("acl/file"), b"acl")?;
    sh(Command::new("setfacl")
        .args(["-m", "u:4321:rw"])
        .arg(p("acl/file")))?;
    sh(Command::new("setfacl")
        .args(["-m", "u:4321:rwx", "-d", "-m", "g:99:rx"])
        .arg(p("acl")))?;
    // A capability.
    fs::write(p("caps/ping"), bytes(7, 5000))?;
    chmod(&p("caps/ping"), 0o755)?;
    sh(Command::new("setcap")
        .arg("cap_net_raw+ep")
        .arg(p("caps/ping")))?;
    // Hardlinks in several directories.
    let mut hardlinked_names = 0;
    for n in 0..names_per_inode {
        fs::create_dir_all(p(&format!("links/{n}")))?;
    }
    for i in 0..inodes {
        let first = p(&format!("links/0/f{i}"));
        fs::write(&first, format!("inode {i}\n"))?;
        hardlinked_names += 1;
        for n in 1..names_per_inode {
            fs::hard_link(&first, p(&format!("links/{n}/f{i}")))?;
            hardlinked_names += 1;
        }
    }
    // A 4 GiB sparse file with data at the start, middle and end.
    let sparse = fs::File::create(p("sparse/big"))?;
    use std::os::unix::fs::FileExt;
    sparse.write_all_at(b"BEGIN", 0)?;
    sparse.write_all_at(b"MIDDLE", 2 << 30)?;
    sparse.write_all_at(b"END", (4 << 30) - 3)?;
    drop(sparse);
    // Symlinks and special files.
    std::os::unix::fs::symlink("../suid", p("sym/rel"))?;
    std::os::unix::fs::symlink("/etc/hostname", p("sym/abs"))?;
    std::os::unix::fs::symlink("nowhere/at/all", p("sym/dangling"))?;
    mknod(&p("dev/null"), SFlag::S_IFCHR, 1, 3)?;
    mknod(&p("dev/loop9"), SFlag::S_IFBLK, 7, 9)?;
    mknod(&p("dev/fifo"), SFlag::S_IFIFO, 0, 0)?;
    drop(std::os::unix::net::UnixListener::bind(p("dev/socket"))?);
    chown(&p("dev/null"), 0, 5)?;
    // Names.
    fs::write(p(&format!("names/{}", "n".repeat(255))), b"long")?;
    fs::write(
        p("names").join(OsStr::from_bytes(b"bad_\xff\xfe_name")),
        b"not utf-8",
    )?;
    fs::write(p("names").join("new\nline and back\\slash"), b"odd")?;
    fs::write(p("names/ünïcødé ✓"), b"unicode")?;
    // Mixed sizes.
    for (i, len) in [0usize, 1, 4095, 4096, 4097, 65_536, 1 << 20, (3 << 20) + 17]
        .iter()
        .enumerate()
    {
        fs::write(p(&format!("data/f{i}")), bytes(i as u64 + 100, *len))?;
    }
    // Times: ns precision on a file, a directory and a symlink.
    fs::write(p("times/file"), b"t")?;
    set_times(&p("times/file"), ATIME, MTIME)?;
    std::os::unix::fs::symlink("file", p("times/link"))?;
    set_times(&p("times/link"), ATIME + 1, MTIME + 1)?;
    set_times(&p("times"), ATIME + 2, MTIME + 2)?;
    // The root itself.
    xattr(root, "user.rootdir", b"the root's own")?;
    chown(root, 7, 7)?;
    chmod(root, 0o750)?;
    set_times(root, ATIME + 3, MTIME + 3)?;
    Ok(Generated {
        hardlinked_names,
        sparse: PathBuf::from("sparse/big"),
    })
}

/// Every entry under `root` (relative paths), depth first, sorted.
fn walk(root: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = root.join(&rel);
        let mut names: Vec<OsString> = fs::read_dir(&dir)
            .with_context(|| format!("listing {}", dir.display()))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<std::io::Result<_>>()?;
        names.sort();
        for name in names {
            if rel.as_os_str().is_empty() && name == "lost+found" {
                continue;
            }
            let child = rel.join(&name);
            if fs::symlink_metadata(root.join(&child))?.is_dir() {
                stack.push(child.clone());
            }
            out.push(child);
        }
    }
    out.sort();
    Ok(out)
}

fn xattrs(path: &Path) -> Result<BTreeMap<String, Vec<u8>>> {
    let mut out = BTreeMap::new();
    for name in xattr::list(path).with_context(|| format!("listxattr {}", path.display()))? {
        // XFS's second view of a POSIX ACL (system.posix_acl_* is compared).
        if name.to_string_lossy().starts_with("trusted.SGI_ACL_") {
            continue;
        }
        let v = xattr::get(path, &name)?.unwrap_or_default();
        out.insert(name.to_string_lossy().to_string(), v);
    }
    Ok(out)
}

fn same_content(a: &Path, b: &Path) -> Result<bool> {
    let (mut fa, mut fb) = (fs::File::open(a)?, fs::File::open(b)?);
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let na = read_full(&mut fa, &mut ba)?;
        let nb = read_full(&mut fb, &mut bb)?;
        if na != nb || ba[..na] != bb[..nb] {
            return Ok(false);
        }
        if na == 0 {
            return Ok(true);
        }
    }
}

fn read_full(f: &mut fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

fn ns(secs: i64, nsec: i64) -> i64 {
    secs * 1_000_000_000 + nsec
}

/// Compares two trees entry by entry, the roots included: type, mode, owner,
/// size, ns mtime and atime, device numbers, symlink targets, content, every
/// xattr, hardlink groups, and that sparse files are not more than 1 MiB more
/// allocated. Returns the differences.
pub fn compare(src: &Path, dst: &Path) -> Result<Vec<String>> {
    let mut diffs = Vec::new();
    let (a, b) = (walk(src)?, walk(dst)?);
    if a != b {
        let only_a: Vec<_> = a.iter().filter(|p| !b.contains(p)).take(10).collect();
        let only_b: Vec<_> = b.iter().filter(|p| !a.contains(p)).take(10).collect();
        diffs.push(format!(
            "entries differ: only in source {only_a:?}, only in restore {only_b:?}"
        ));
    }
    let mut groups: HashMap<u64, PathBuf> = HashMap::new();
    let rels = std::iter::once(PathBuf::new()).chain(a.into_iter().filter(|p| b.contains(p)));
    for rel in rels {
        let (pa, pb) = (src.join(&rel), dst.join(&rel));
        let (ma, mb) = (fs::symlink_metadata(&pa)?, fs::symlink_metadata(&pb)?);
        let mut d = |what: &str, x: String, y: String| {
            if x != y {
                diffs.push(format!("{}: {what} {x} vs {y}", rel.display()));
            }
        };
        d(
            "type",
            format!("{:o}", ma.mode() & 0o170000),
            format!("{:o}", mb.mode() & 0o170000),
        );
        d(
            "mode",
            format!("{:o}", ma.mode() & 0o7777),
            format!("{:o}", mb.mode() & 0o7777),
        );
        d(
            "owner",
            format!("{}:{}", ma.uid(), ma.gid()),
            format!("{}:{}", mb.uid(), mb.gid()),
        );
        d(
            "mtime",
            ns(ma.mtime(), ma.mtime_nsec()).to_string(),
            ns(mb.mtime(), mb.mtime_nsec()).to_string(),
        );
        d(
            "atime",
            ns(ma.atime(), ma.atime_nsec()).to_string(),
            ns(mb.atime(), mb.atime_nsec()).to_string(),
        );
        d(
            "xattrs",
            format!("{:?}", xattrs(&pa)?),
            format!("{:?}", xattrs(&pb)?),
        );
        let ft = ma.file_type();
        if ft.is_symlink() {
            d(
                "target",
                format!("{:?}", fs::read_link(&pa)?),
                format!("{:?}", fs::read_link(&pb)?),
            );
        }
        if ft.is_char_device() || ft.is_block_device() {
            d("rdev", ma.rdev().to_string(), mb.rdev().to_string());
        }
        if ft.is_file() {
            d("size", ma.len().to_string(), mb.len().to_string());
            d("links", ma.nlink().to_string(), mb.nlink().to_string());
            if ma.len() == mb.len() && !same_content(&pa, &pb)? {
                diffs.push(format!("{}: content differs", rel.display()));
            }
            if ma.blocks() * 512 < ma.len() && mb.blocks() * 512 > ma.blocks() * 512 + (1 << 20) {
                diffs.push(format!(
                    "{}: sparse file allocated {} bytes, source {}",
                    rel.display(),
                    mb.blocks() * 512,
                    ma.blocks() * 512
                ));
            }
            if ma.nlink() > 1 {
                match groups.get(&ma.ino()) {
                    Some(first) => {
                        let fi = fs::symlink_metadata(dst.join(first))?.ino();
                        if fi != mb.ino() {
                            diffs.push(format!(
                                "{}: not hardlinked to {}",
                                rel.display(),
                                first.display()
                            ));
                        }
                    }
                    None => {
                        groups.insert(ma.ino(), rel.clone());
                    }
                }
            }
        }
    }
    Ok(diffs)
}

/// What `getfattr`, `getfacl` and `getcap` print for a tree, each record sorted,
/// so that directory order does not matter.
pub fn tool_views(root: &Path) -> Result<Vec<(String, String)>> {
    let records = |text: String, sep: &str| -> String {
        let mut recs: Vec<String> = text
            .split(sep)
            .map(|r| {
                let mut lines: Vec<&str> = r
                    .lines()
                    .filter(|l| !l.is_empty() && !l.starts_with("trusted.SGI_ACL_"))
                    .collect();
                lines.sort();
                lines.join("\n")
            })
            .filter(|r| !r.is_empty() && !r.contains("lost+found"))
            .collect();
        recs.sort();
        recs.join("\n\n")
    };
    let run = |prog: &str, args: &[&str]| sh(Command::new(prog).args(args).current_dir(root));
    Ok(vec![
        (
            "getfattr".into(),
            records(
                run(
                    "getfattr",
                    &["-R", "-P", "-h", "-d", "-m", "-", "-e", "hex", "."],
                )?,
                "\n\n",
            ),
        ),
        (
            "getfacl".into(),
            records(run("getfacl", &["-R", "-P", "-n", "."])?, "\n\n"),
        ),
        ("getcap".into(), records(run("getcap", &["-r", "."])?, "\n")),
    ])
}

/// `files` files of `size` bytes that do not compress or deduplicate.
pub fn random_tree(root: &Path, files: usize, size: usize) {
    std::fs::create_dir_all(root).expect("mkdir");
    for i in 0..files {
        let data = bytes((i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15), size);
        std::fs::write(root.join(format!("f{i:03}")), data).expect("write");
    }
}

/// The stock `restic` client on the repository at `repo`, with its password and
/// no cache.
pub fn restic(repo: &Path, password: &str) -> Command {
    let mut cmd = Command::new("restic");
    cmd.arg("-r")
        .arg(repo)
        .arg("--no-cache")
        .env("RESTIC_PASSWORD", password);
    cmd
}
