//! Images: what one capture of a server holds, as recorded in its manifest.
//!
//! An image lives in a restic-format repository (the *library*). One capture writes one
//! snapshot per filesystem and, last, a manifest snapshot holding
//! `/.ferry/manifest.json`; all carry the tags `ferry-image=NAME` and
//! `ferry-capture=ID`. A capture without its manifest is incomplete and is not listed.
//!
//! A *progressive* capture (a direct migration's) also writes a partial manifest,
//! tagged `ferry-partial`, before its first filesystem and after each: the
//! filesystems written so far, those still [`pending`](Manifest::pending), and the
//! survey, so that a deploy can lay out the target and restore each filesystem while
//! the next is still being read. A capture that stops writes a last partial saying
//! why ([`abandoned`](Manifest::abandoned)).

use serde::{Deserialize, Serialize};

use crate::survey::Survey;

/// The manifest format this build writes; readers accept it and older ones.
pub const MANIFEST_VERSION: u32 = 1;

/// Where the manifest sits inside its snapshot.
pub const MANIFEST_PATH: &str = "/.ferry/manifest.json";

/// One capture of a server: its filesystems and how they were taken.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`MANIFEST_VERSION`] when written.
    pub version: u32,
    /// The image name, e.g. `web1`.
    pub image: String,
    /// This capture's id (time-ordered); an image's captures are its recovery points.
    pub capture: String,
    /// The captured host's name.
    pub hostname: String,
    /// Start and end, RFC 3339.
    pub started: String,
    /// End of the capture, RFC 3339.
    pub finished: String,
    /// Paths the user excluded (globs), on top of the never-captured kernel filesystems.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub excludes: Vec<String>,
    /// The captured filesystems, in capture order.
    pub filesystems: Vec<FsImage>,
    /// Anything a restore should know, e.g. that a filesystem was captured live.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// The source's survey at capture time, when the capturing agent took one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub survey: Option<Box<Survey>>,
    /// In a partial manifest: the filesystems still to be written, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending: Vec<PendingFs>,
    /// In a partial manifest: why the capture stopped; nothing more of it comes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abandoned: Option<String>,
}

/// A filesystem a capture in progress has still to write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingFs {
    /// Its mount point on the source (or device, for block data).
    pub path: String,
    /// Filesystem type on the source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fstype: Option<String>,
    /// Block data.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub raw: bool,
}

/// How consistent a filesystem's capture is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Consistency {
    /// Read from an LVM snapshot: one point in time.
    LvmSnapshot,
    /// Read from a btrfs snapshot: one point in time.
    BtrfsSnapshot,
    /// Read while frozen with `fsfreeze`: one point in time, writers paused.
    Frozen,
    /// Read live: files changing during the capture may be inconsistent.
    Live,
}

/// One captured filesystem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsImage {
    /// Its mount point on the source, e.g. `/` or `/var/lib/mysql`; also the path
    /// of the snapshot in the library.
    pub path: String,
    /// The restic snapshot id.
    pub snapshot: String,
    /// Filesystem type on the source, e.g. `ext4`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fstype: Option<String>,
    /// How it was taken.
    pub consistency: Consistency,
    /// Files and directories captured.
    pub files: u64,
    /// Bytes of file content captured.
    pub bytes: u64,
    /// Bytes new to the library (after deduplication, before compression).
    pub added_bytes: u64,
    /// The filesystem root's own metadata, which the snapshot format does not keep.
    pub root: RootMeta,
    /// Block data: `path` is a device (`/dev/vg0/db`) kept as one file of its bytes.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub raw: bool,
    /// The hash of every entry's metadata as the capture walked the tree (hex); a
    /// later capture that walks the same keeps this snapshot's tree.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
}

/// Owner, mode, times and extended attributes of a filesystem's root directory.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootMeta {
    /// Permission bits including setuid/setgid/sticky (`st_mode & 0o7777`).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time, nanoseconds since the epoch (years 1677 to 2262; a 64-bit
    /// integer, because JSON readers of tagged enums cannot take 128-bit ones).
    pub mtime_ns: i64,
    /// Access time, nanoseconds since the epoch.
    pub atime_ns: i64,
    /// Extended attributes: name and hex-encoded value.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub xattrs: Vec<(String, String)>,
}

impl Manifest {
    /// Bytes of file content over all filesystems.
    pub fn bytes(&self) -> u64 {
        self.filesystems.iter().map(|f| f.bytes).sum()
    }

    /// The filesystem captured at `path`.
    pub fn filesystem(&self, path: &str) -> Option<&FsImage> {
        self.filesystems.iter().find(|f| f.path == path)
    }
}

/// What a restore did. Every entry that failed is counted and the first ones named;
/// nothing counted as restored failed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreReport {
    /// Directories restored.
    pub dirs: u64,
    /// Regular files restored (each inode once).
    pub files: u64,
    /// Extra names of hardlinked files.
    pub hardlinks: u64,
    /// Symbolic links.
    pub symlinks: u64,
    /// Devices, FIFOs and sockets.
    pub specials: u64,
    /// Bytes of file content.
    pub bytes: u64,
    /// Entries with a failure.
    pub error_count: u64,
    /// The first failures, each naming its path.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

/// Checks an image name: 1–64 of `A–Z a–z 0–9 . _ -`, not starting with `.` or `-`.
pub fn check_image_name(name: &str) -> Result<(), String> {
    let ok = (1..=64).contains(&name.len())
        && !name.starts_with(['.', '-'])
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not an image name: use 1-64 letters, digits, '.', '_' or '-', not starting with '.' or '-'"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_names() {
        for good in ["web1", "db.prod-2", "A_b"] {
            assert!(check_image_name(good).is_ok(), "{good}");
        }
        for bad in ["", ".x", "-x", "a/b", "a b", "ü", &"x".repeat(65)] {
            assert!(check_image_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn manifest_round_trips() {
        let m = Manifest {
            version: MANIFEST_VERSION,
            image: "web1".into(),
            capture: "0193".into(),
            hostname: "web1".into(),
            started: "2026-11-26T16:00:00Z".into(),
            finished: "2026-11-26T16:01:00Z".into(),
            excludes: vec![],
            filesystems: vec![FsImage {
                path: "/".into(),
                snapshot: "ab".into(),
                fstype: Some("ext4".into()),
                consistency: Consistency::LvmSnapshot,
                files: 3,
                bytes: 10,
                added_bytes: 10,
                raw: false,
                fingerprint: Some("0f".repeat(32)),
                root: RootMeta {
                    mode: 0o755,
                    xattrs: vec![("security.selinux".into(), "00".into())],
                    ..Default::default()
                },
            }],
            warnings: vec![],
            survey: None,
            pending: vec![],
            abandoned: None,
        };
        let text = serde_json::to_string(&m).unwrap();
        assert!(!text.contains("pending") && !text.contains("abandoned"));
        assert!(text.contains("\"lvm-snapshot\""));
        assert_eq!(serde_json::from_str::<Manifest>(&text).unwrap(), m);
        assert_eq!(m.bytes(), 10);
        assert!(m.filesystem("/").is_some() && m.filesystem("/var").is_none());
    }
}
