//! A newc ("070701") cpio archive, the format the kernel unpacks into its rootfs.
//!
//! Entries are kept sorted by path, so every parent folder comes before what it holds
//! and the same inputs always give the same bytes (all times are zero, owner root).

use std::collections::BTreeMap;
use std::io::{self, Write};

/// One thing in the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A folder.
    Dir {
        /// Permission bits.
        mode: u32,
    },
    /// A regular file.
    File {
        /// Permission bits.
        mode: u32,
        /// The content.
        data: Vec<u8>,
    },
    /// A symbolic link.
    Symlink {
        /// Where it points.
        target: String,
    },
    /// A character device node.
    Char {
        /// Permission bits.
        mode: u32,
        /// Device major number.
        major: u32,
        /// Device minor number.
        minor: u32,
    },
}

impl Entry {
    fn mode(&self) -> u32 {
        match self {
            Entry::Dir { mode } => 0o040000 | mode,
            Entry::File { mode, .. } => 0o100000 | mode,
            Entry::Symlink { .. } => 0o120777,
            Entry::Char { mode, .. } => 0o020000 | mode,
        }
    }

    fn data(&self) -> &[u8] {
        match self {
            Entry::File { data, .. } => data,
            Entry::Symlink { target } => target.as_bytes(),
            _ => &[],
        }
    }
}

/// Archive paths are relative, `/`-separated, without `.` or `..` parts.
pub fn normalise(path: &str) -> io::Result<String> {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    if parts.is_empty() || parts.iter().any(|p| *p == "." || *p == "..") {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("cpio path {path:?} must name something below the root"),
        ));
    }
    Ok(parts.join("/"))
}

/// An archive being assembled.
#[derive(Debug, Default, Clone)]
pub struct Archive {
    entries: BTreeMap<String, Entry>,
}

impl Archive {
    /// An empty archive.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) an entry, creating its parent folders (mode 755) as needed.
    /// A path that runs through an existing non-folder is refused.
    pub fn insert(&mut self, path: &str, entry: Entry) -> io::Result<()> {
        let path = normalise(path)?;
        let mut parent = String::new();
        let parts: Vec<&str> = path.split('/').collect();
        for part in &parts[..parts.len() - 1] {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(part);
            match self.entries.get(&parent) {
                None => {
                    self.entries
                        .insert(parent.clone(), Entry::Dir { mode: 0o755 });
                }
                Some(Entry::Dir { .. }) => {}
                Some(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::AlreadyExists,
                        format!("cannot add {path}: {parent} is not a folder"),
                    ));
                }
            }
        }
        self.entries.insert(path, entry);
        Ok(())
    }

    /// Adds a folder.
    pub fn dir(&mut self, path: &str, mode: u32) -> io::Result<()> {
        self.insert(path, Entry::Dir { mode })
    }

    /// Adds a regular file.
    pub fn file(&mut self, path: &str, mode: u32, data: Vec<u8>) -> io::Result<()> {
        self.insert(path, Entry::File { mode, data })
    }

    /// Adds a symbolic link.
    pub fn symlink(&mut self, path: &str, target: &str) -> io::Result<()> {
        self.insert(
            path,
            Entry::Symlink {
                target: target.to_string(),
            },
        )
    }

    /// Adds a character device node.
    pub fn char_device(&mut self, path: &str, mode: u32, major: u32, minor: u32) -> io::Result<()> {
        self.insert(path, Entry::Char { mode, major, minor })
    }

    /// Adds every entry of `other` (replacing entries of the same path but folders).
    pub fn extend(&mut self, other: &Archive) -> io::Result<()> {
        for (path, entry) in &other.entries {
            if matches!(entry, Entry::Dir { .. })
                && matches!(self.entries.get(path), Some(Entry::Dir { .. }))
            {
                continue;
            }
            self.insert(path, entry.clone())?;
        }
        Ok(())
    }

    /// Whether the archive holds this path.
    pub fn contains(&self, path: &str) -> bool {
        normalise(path).is_ok_and(|p| self.entries.contains_key(&p))
    }

    /// The entry at a path.
    pub fn get(&self, path: &str) -> Option<&Entry> {
        normalise(path).ok().and_then(|p| self.entries.get(&p))
    }

    /// All entries in archive order.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &Entry)> {
        self.entries.iter().map(|(p, e)| (p.as_str(), e))
    }

    /// The sum of all file contents, in bytes.
    pub fn content_bytes(&self) -> u64 {
        self.entries.values().map(|e| e.data().len() as u64).sum()
    }

    /// Writes the archive in newc format; returns the bytes written.
    pub fn write_to(&self, out: &mut impl Write) -> io::Result<u64> {
        let mut w = Counter { out, n: 0 };
        for (ino, (path, entry)) in self.entries.iter().enumerate() {
            let (major, minor) = match entry {
                Entry::Char { major, minor, .. } => (*major, *minor),
                _ => (0, 0),
            };
            let nlink = if matches!(entry, Entry::Dir { .. }) {
                2
            } else {
                1
            };
            header(
                &mut w,
                Header {
                    ino: ino as u32 + 1,
                    mode: entry.mode(),
                    nlink,
                    size: entry.data().len(),
                    rdev: (major, minor),
                    name: path,
                },
            )?;
            w.write_all(entry.data())?;
            w.pad()?;
        }
        header(
            &mut w,
            Header {
                ino: 0,
                mode: 0,
                nlink: 1,
                size: 0,
                rdev: (0, 0),
                name: "TRAILER!!!",
            },
        )?;
        Ok(w.n)
    }

    /// The archive as bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.content_bytes() as usize + 128 * self.entries.len());
        // Writing into a Vec cannot fail.
        let _ = self.write_to(&mut v);
        v
    }
}

struct Header<'a> {
    ino: u32,
    mode: u32,
    nlink: u32,
    size: usize,
    rdev: (u32, u32),
    name: &'a str,
}

fn header(w: &mut Counter<'_, impl Write>, h: Header<'_>) -> io::Result<()> {
    let size = u32::try_from(h.size).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is larger than newc's 4 GiB limit", h.name),
        )
    })?;
    let fields = [
        h.ino,
        h.mode,
        0, // uid
        0, // gid
        h.nlink,
        0, // mtime
        size,
        0, // devmajor
        0, // devminor
        h.rdev.0,
        h.rdev.1,
        h.name.len() as u32 + 1,
        0, // check
    ];
    let mut text = String::with_capacity(110);
    text.push_str("070701");
    for f in fields {
        text.push_str(&format!("{f:08X}"));
    }
    w.write_all(text.as_bytes())?;
    w.write_all(h.name.as_bytes())?;
    w.write_all(&[0])?;
    w.pad()
}

struct Counter<'a, W: Write> {
    out: &'a mut W,
    n: u64,
}

impl<W: Write> Counter<'_, W> {
    fn write_all(&mut self, b: &[u8]) -> io::Result<()> {
        self.out.write_all(b)?;
        self.n += b.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> io::Result<()> {
        let pad = (4 - (self.n % 4) as usize) % 4;
        self.write_all(&[0; 3][..pad])
    }
}

/// Reads a ramdisk as the kernel does: newc archives one after another, each either
/// plain or zstd-compressed (a compressed one runs to the end), with zero padding
/// between them; a later entry replaces an earlier one of the same path.
pub fn read(data: &[u8]) -> io::Result<Archive> {
    let bad = |at: usize, what: String| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("ramdisk offset {at}: {what}"),
        )
    };
    let mut a = Archive::new();
    let mut at = 0;
    while at < data.len() {
        if data[at] == 0 {
            at += 1;
            continue;
        }
        if data[at..].starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            let plain =
                zstd::stream::decode_all(&data[at..]).map_err(|e| bad(at, format!("zstd: {e}")))?;
            let inner = read(&plain)?;
            a.extend(&inner)?;
            break;
        }
        if !data[at..].starts_with(b"070701") {
            return Err(bad(at, "neither a newc archive nor zstd data".into()));
        }
        at = read_one(data, at, &mut a).map_err(|e| bad(at, e.to_string()))?;
    }
    Ok(a)
}

/// Reads one newc archive starting at `at` into `a`; returns where it ends.
fn read_one(data: &[u8], mut at: usize, a: &mut Archive) -> io::Result<usize> {
    let short = || io::Error::new(io::ErrorKind::UnexpectedEof, "the archive is cut short");
    let align = |n: usize| n.div_ceil(4) * 4;
    loop {
        let head = data.get(at..at + 110).ok_or_else(short)?;
        if &head[..6] != b"070701" {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "an entry does not start with the newc magic 070701",
            ));
        }
        let field = |i: usize| -> io::Result<u32> {
            std::str::from_utf8(&head[6 + 8 * i..14 + 8 * i])
                .ok()
                .and_then(|h| u32::from_str_radix(h, 16).ok())
                .ok_or_else(|| {
                    io::Error::new(io::ErrorKind::InvalidData, "a header field is not hex")
                })
        };
        let (mode, size, namesize) = (field(1)?, field(6)? as usize, field(11)? as usize);
        let (rmajor, rminor) = (field(9)?, field(10)?);
        let name_at = at + 110;
        let name = data
            .get(name_at..name_at + namesize.saturating_sub(1))
            .ok_or_else(short)?;
        let name = String::from_utf8_lossy(name).to_string();
        let data_at = align(name_at + namesize);
        let body = data.get(data_at..data_at + size).ok_or_else(short)?;
        at = align(data_at + size);
        if name == "TRAILER!!!" {
            return Ok(at);
        }
        if name == "." {
            continue;
        }
        let perm = mode & 0o7777;
        let entry = match mode & 0o170000 {
            0o040000 => Entry::Dir { mode: perm },
            0o100000 => Entry::File {
                mode: perm,
                data: body.to_vec(),
            },
            0o120000 => Entry::Symlink {
                target: String::from_utf8_lossy(body).to_string(),
            },
            0o020000 => Entry::Char {
                mode: perm,
                major: rmajor,
                minor: rminor,
            },
            other => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{name}: file type {other:o} is not supported"),
                ));
            }
        };
        if matches!(entry, Entry::Dir { .. }) && matches!(a.get(&name), Some(Entry::Dir { .. })) {
            continue;
        }
        a.insert(&name, entry)?;
    }
}

impl Archive {
    /// Writes the archive's folders, files and links under `dest` (device nodes are
    /// left out: a ramdisk's init mounts devtmpfs). Existing files are replaced.
    pub fn unpack_to(&self, dest: &std::path::Path) -> io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        for (path, entry) in &self.entries {
            let to = dest.join(path);
            let with = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", to.display()));
            match entry {
                Entry::Dir { mode } => {
                    std::fs::create_dir_all(&to).map_err(with)?;
                    std::fs::set_permissions(&to, std::fs::Permissions::from_mode(*mode))
                        .map_err(with)?;
                }
                Entry::File { mode, data } => {
                    let _ = std::fs::remove_file(&to);
                    std::fs::write(&to, data).map_err(with)?;
                    std::fs::set_permissions(&to, std::fs::Permissions::from_mode(*mode))
                        .map_err(with)?;
                }
                Entry::Symlink { target } => {
                    let _ = std::fs::remove_file(&to);
                    std::os::unix::fs::symlink(target, &to).map_err(with)?;
                }
                Entry::Char { .. } => {}
            }
        }
        Ok(())
    }
}

/// A small uncompressed archive holding the agent config, to put *before* a ramdisk:
/// the kernel unpacks concatenated archives in order, so this adds the config to a
/// ramdisk built without one (how the boot server and `ferry boot-files` personalise
/// the same ramdisk for each manager).
pub fn config_overlay(config_yaml: &str) -> Vec<u8> {
    let mut a = Archive::new();
    // The path is a constant below the root; insert cannot fail.
    let _ = a.file(
        crate::info::CONFIG_PATH,
        0o600,
        config_yaml.as_bytes().to_vec(),
    );
    a.to_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parents_come_first_and_output_is_deterministic() {
        let mut a = Archive::new();
        a.file("usr/bin/x", 0o755, b"hello".to_vec()).unwrap();
        a.symlink("bin", "usr/bin").unwrap();
        a.char_device("dev/console", 0o600, 5, 1).unwrap();
        let names: Vec<&str> = a.entries().map(|(p, _)| p).collect();
        assert_eq!(
            names,
            ["bin", "dev", "dev/console", "usr", "usr/bin", "usr/bin/x"]
        );
        assert_eq!(a.to_bytes(), a.clone().to_bytes());
        let bytes = a.to_bytes();
        assert_eq!(bytes.len() % 4, 0);
        assert!(bytes.starts_with(b"070701"));
        assert!(bytes.windows(10).any(|w| w == b"TRAILER!!!"));
    }

    #[test]
    fn refuses_paths_outside_the_root_and_through_files() {
        let mut a = Archive::new();
        assert!(a.file("../etc/passwd", 0o644, vec![]).is_err());
        assert!(a.file("/", 0o644, vec![]).is_err());
        a.file("etc", 0o644, vec![]).unwrap();
        let err = a.file("etc/passwd", 0o644, vec![]).unwrap_err();
        assert!(err.to_string().contains("etc is not a folder"), "{err}");
    }

    #[test]
    fn header_fields_are_where_newc_puts_them() {
        let mut a = Archive::new();
        a.file("f", 0o644, b"abc".to_vec()).unwrap();
        let b = a.to_bytes();
        let field = |i: usize| {
            u32::from_str_radix(std::str::from_utf8(&b[6 + 8 * i..14 + 8 * i]).unwrap(), 16)
                .unwrap()
        };
        assert_eq!(field(1), 0o100644); // mode
        assert_eq!(field(6), 3); // size
        assert_eq!(field(11), 2); // name length with NUL
        assert_eq!(&b[110..112], b"f\0");
        assert_eq!(&b[112..115], b"abc"); // 110 + 2 = 112, already aligned
    }

    #[test]
    fn a_ramdisk_of_plain_and_compressed_archives_reads_back_as_the_kernel_would() {
        let mut first = Archive::new();
        first
            .file("etc/ferry/agent.yaml", 0o600, b"new".to_vec())
            .unwrap();
        first
            .file("usr/lib/modules/6.1/a.ko.zst", 0o644, b"mod".to_vec())
            .unwrap();
        let mut base = Archive::new();
        base.file("etc/ferry/agent.yaml", 0o600, b"old".to_vec())
            .unwrap();
        base.symlink("bin", "usr/bin").unwrap();
        base.file("usr/bin/tool", 0o755, vec![7; 5000]).unwrap();
        base.char_device("dev/console", 0o600, 5, 1).unwrap();
        let mut ramdisk = first.to_bytes();
        ramdisk.extend(zstd::bulk::compress(&base.to_bytes(), 3).unwrap());
        let back = read(&ramdisk).unwrap();
        // The base comes last, so its config wins, as in the kernel.
        assert_eq!(
            back.get("etc/ferry/agent.yaml"),
            Some(&Entry::File {
                mode: 0o600,
                data: b"old".to_vec()
            })
        );
        assert_eq!(back.get("usr/bin/tool"), base.get("usr/bin/tool"));
        assert_eq!(back.get("dev/console"), base.get("dev/console"));
        assert!(back.contains("usr/lib/modules/6.1/a.ko.zst"));
        let dir = tempfile::tempdir().unwrap();
        back.unpack_to(dir.path()).unwrap();
        assert_eq!(
            std::fs::read(dir.path().join("bin/tool")).unwrap(),
            vec![7; 5000]
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("etc/ferry/agent.yaml"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // Cut short or foreign, it is refused with where.
        let err = read(&first.to_bytes()[..200]).unwrap_err().to_string();
        assert!(err.contains("cut short"), "{err}");
        let err = read(b"\x1f\x8b gzip").unwrap_err().to_string();
        assert!(err.contains("offset 0") && err.contains("neither"), "{err}");
    }

    #[test]
    fn config_overlay_holds_only_the_config() {
        let bytes = config_overlay("store: {}\n");
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.contains("etc/ferry/agent.yaml"));
        assert!(text.contains("store: {}"));
        assert!(text.contains("TRAILER!!!"));
    }
}
