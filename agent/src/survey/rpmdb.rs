//! Installed packages from an RPM database, read directly and never written or
//! locked: `rpmdb.sqlite` (RPM 4.16 and later: Fedora 33+, RHEL 9) and the Berkeley
//! DB hash file `Packages` (RHEL/CentOS 5–8, Amazon Linux 2). SUSE's NDB
//! (`Packages.db`) is named as not read.
//!
//! Every form stores one header blob per package; [`header`] reads the few tags a
//! survey needs from it.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use ferry_model::survey::Package;

use super::Host;

/// The packages of the RPM database in `dir` (`/var/lib/rpm` or
/// `/usr/lib/sysimage/rpm`), without the `gpg-pubkey` pseudo-packages, by name.
pub fn packages(host: &Host, dir: &str) -> Result<Vec<Package>, String> {
    let (file, blobs) = if host.exists(&format!("{dir}/rpmdb.sqlite")) {
        let file = format!("{dir}/rpmdb.sqlite");
        let blobs = sqlite_blobs(&host.path(&file));
        (file, blobs)
    } else if host.exists(&format!("{dir}/Packages")) {
        let file = format!("{dir}/Packages");
        let blobs = Bdb::open(&host.path(&file)).and_then(|db| db.values());
        (file, blobs)
    } else if host.exists(&format!("{dir}/Packages.db")) {
        return Err(format!(
            "{dir}/Packages.db: an NDB database (SUSE) is not read yet; `rpm -qa` lists the packages"
        ));
    } else {
        return Err(format!(
            "{dir}: holds neither rpmdb.sqlite nor Packages; the rpm database is missing"
        ));
    };
    let mut out = Vec::new();
    for blob in blobs.map_err(|e| format!("{file}: {e}"))? {
        match header(&blob) {
            Some(p) if p.name != "gpg-pubkey" => out.push(p),
            Some(_) => {}
            None => return Err(format!("{file}: a package header does not parse")),
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Header blobs of an RPM 4.16+ database, opened read-only and immutable so a live
/// server's database is never locked or written.
fn sqlite_blobs(path: &Path) -> Result<Vec<Vec<u8>>, String> {
    use rusqlite::{Connection, OpenFlags};
    let uri = format!("file:{}?immutable=1", path.display());
    let db = Connection::open_with_flags(
        &uri,
        OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_URI
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| e.to_string())?;
    let mut q = db
        .prepare("SELECT blob FROM Packages")
        .map_err(|e| format!("not an rpm database: {e}"))?;
    let blobs = q
        .query_map([], |row| row.get::<_, Vec<u8>>(0))
        .map_err(|e| e.to_string())?;
    blobs.collect::<Result<_, _>>().map_err(|e| e.to_string())
}

/// A Berkeley DB hash database, read page by page without the library.
///
/// Layout (db 4.x/5.x, either byte order): page 0 is the metadata page (magic
/// 0x061561 at byte 12, page size at 20, encryption at 24, last page number at 32).
/// Every page starts with a 26-byte header (next page at 16, entry count at 20,
/// free-space offset at 22, page type at 25) followed by the entries' offsets.
/// Hash pages (type 13, or 2 when unsorted) hold key/data items in pairs: a
/// key-data item is its type byte (1) and the bytes up to the previous item; an
/// off-page item (3) names the first overflow page (at 4) and the total length (at
/// 8). Overflow pages (type 7) carry `free-space offset` bytes each, chained by
/// their next page.
struct Bdb {
    file: File,
    page_size: usize,
    swap: bool,
    last_page: u32,
}

const HASH_MAGIC: u32 = 0x0006_1561;
const PAGE_HEADER: usize = 26;

impl Bdb {
    fn open(path: &Path) -> Result<Bdb, String> {
        let file = File::open(path).map_err(|e| e.to_string())?;
        let mut meta = [0u8; 36];
        file.read_exact_at(&mut meta, 0)
            .map_err(|e| format!("too short for a Berkeley DB file: {e}"))?;
        let magic = u32::from_le_bytes(meta[12..16].try_into().unwrap_or_default());
        let swap = match magic {
            HASH_MAGIC => false,
            m if m.swap_bytes() == HASH_MAGIC => true,
            m => return Err(format!("not a Berkeley DB hash database (magic {m:#x})")),
        };
        let mut db = Bdb {
            file,
            page_size: 0,
            swap,
            last_page: 0,
        };
        let page_size = db.u32(&meta, 20).unwrap_or(0) as usize;
        if !(512..=65536).contains(&page_size) || !page_size.is_power_of_two() {
            return Err(format!("page size {page_size} is not a Berkeley DB one"));
        }
        if meta[24] != 0 {
            return Err("the database is encrypted".into());
        }
        db.page_size = page_size;
        db.last_page = db.u32(&meta, 32).unwrap_or(0);
        Ok(db)
    }

    fn u16(&self, page: &[u8], at: usize) -> Option<usize> {
        let v = u16::from_le_bytes(page.get(at..at + 2)?.try_into().ok()?);
        Some(if self.swap { v.swap_bytes() } else { v } as usize)
    }

    fn u32(&self, page: &[u8], at: usize) -> Option<u32> {
        let v = u32::from_le_bytes(page.get(at..at + 4)?.try_into().ok()?);
        Some(if self.swap { v.swap_bytes() } else { v })
    }

    fn page(&self, n: u32) -> Result<Vec<u8>, String> {
        let mut page = vec![0u8; self.page_size];
        self.file
            .read_exact_at(&mut page, n as u64 * self.page_size as u64)
            .map_err(|e| format!("page {n} of {}: {e} (truncated?)", self.last_page))?;
        Ok(page)
    }

    /// Every data item except the one under key 0, where RPM keeps its next
    /// header number.
    fn values(&self) -> Result<Vec<Vec<u8>>, String> {
        let mut out = Vec::new();
        for n in 1..=self.last_page {
            let page = self.page(n)?;
            if !matches!(page[25], 2 | 13) {
                continue;
            }
            let bad = |what: &str| format!("page {n}: {what}");
            let entries = self.u16(&page, 20).ok_or_else(|| bad("no header"))?;
            let item = |i: usize| -> Result<&[u8], String> {
                let start = self.u16(&page, PAGE_HEADER + 2 * i);
                let end = match i {
                    0 => Some(self.page_size),
                    _ => self.u16(&page, PAGE_HEADER + 2 * (i - 1)),
                };
                match (start, end) {
                    (Some(s), Some(e)) if s < e && e <= self.page_size => Ok(&page[s..e]),
                    _ => Err(bad(&format!("entry {i} lies outside the page"))),
                }
            };
            for pair in 0..entries / 2 {
                let key = self.item(item(2 * pair)?, n)?;
                if key.iter().all(|b| *b == 0) {
                    continue;
                }
                out.push(self.item(item(2 * pair + 1)?, n)?);
            }
        }
        Ok(out)
    }

    /// The bytes of one hash item: inline, or gathered from its overflow pages.
    fn item(&self, item: &[u8], n: u32) -> Result<Vec<u8>, String> {
        match item[0] {
            1 => Ok(item[1..].to_vec()),
            3 => {
                let (first, len) = self
                    .u32(item, 4)
                    .zip(self.u32(item, 8))
                    .ok_or_else(|| format!("page {n}: a short off-page item"))?;
                self.overflow(first, len as usize)
            }
            t => Err(format!(
                "page {n}: item type {t} (duplicates) is not in an rpm Packages database"
            )),
        }
    }

    fn overflow(&self, first: u32, len: usize) -> Result<Vec<u8>, String> {
        let mut out = Vec::with_capacity(len.min(64 << 20));
        let mut seen = HashSet::new();
        let mut next = first;
        while next != 0 && out.len() < len {
            if next > self.last_page || !seen.insert(next) {
                return Err(format!("the overflow chain from page {first} is broken"));
            }
            let page = self.page(next)?;
            let here = self.u16(&page, 22).unwrap_or(0);
            match page.get(PAGE_HEADER..PAGE_HEADER + here) {
                Some(bytes) if page[25] == 7 => out.extend_from_slice(bytes),
                _ => return Err(format!("page {next} is not an overflow page")),
            }
            next = self.u32(&page, 16).unwrap_or(0);
        }
        if out.len() != len {
            return Err(format!(
                "the record from page {first} holds {} of its {len} bytes",
                out.len()
            ));
        }
        Ok(out)
    }
}

/// Name, `[epoch:]version-release` and architecture from an RPM header blob: entry
/// count and data size (big-endian u32), 16-byte entries (tag, type, offset, count),
/// then the data.
pub fn header(blob: &[u8]) -> Option<Package> {
    const NAME: u32 = 1000;
    const VERSION: u32 = 1001;
    const RELEASE: u32 = 1002;
    const EPOCH: u32 = 1003;
    const ARCH: u32 = 1022;
    let be = |at: usize| -> Option<u32> {
        Some(u32::from_be_bytes(blob.get(at..at + 4)?.try_into().ok()?))
    };
    let (il, dl) = (be(0)? as usize, be(4)? as usize);
    let data_at = 8 + il.checked_mul(16)?;
    let data = blob.get(data_at..data_at.checked_add(dl)?)?;
    let mut fields: HashMap<u32, String> = HashMap::new();
    for i in 0..il {
        let e = 8 + i * 16;
        let (tag, kind, offset) = (be(e)?, be(e + 4)?, be(e + 8)? as usize);
        let value = match kind {
            // STRING and I18NSTRING: NUL-terminated.
            6 | 9 => {
                let rest = data.get(offset..)?;
                let end = rest.iter().position(|b| *b == 0)?;
                String::from_utf8_lossy(&rest[..end]).to_string()
            }
            // INT32.
            4 => u32::from_be_bytes(data.get(offset..offset + 4)?.try_into().ok()?).to_string(),
            _ => continue,
        };
        fields.insert(tag, value);
    }
    let version = match fields.get(&EPOCH) {
        Some(e) => format!("{e}:{}-{}", fields.get(&VERSION)?, fields.get(&RELEASE)?),
        None => format!("{}-{}", fields.get(&VERSION)?, fields.get(&RELEASE)?),
    };
    Some(Package {
        name: fields.remove(&NAME)?,
        version,
        arch: fields.remove(&ARCH).unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::survey::testing::{fixture, host};

    fn fixtures() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/survey")
    }

    /// A host tree whose `/var/lib/rpm` holds `file` (a copy of a fixture, or bytes).
    fn rpm_host(name: &str, bytes: &[u8]) -> (tempfile::TempDir, Host) {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("var/lib/rpm");
        std::fs::create_dir_all(&db).unwrap();
        std::fs::write(db.join(name), bytes).unwrap();
        let h = host(dir.path(), &[]);
        (dir, h)
    }

    fn listed(p: &[Package]) -> Vec<(&str, &str, &str)> {
        p.iter()
            .map(|p| (p.name.as_str(), p.version.as_str(), p.arch.as_str()))
            .collect()
    }

    #[test]
    fn packages_from_an_rpm_sqlite_database() {
        assert!(fixture("rpmdb.sqlite.txt").contains("rpmdb.sqlite"));
        let bytes = std::fs::read(fixtures().join("rpmdb.sqlite")).unwrap();
        let (_dir, h) = rpm_host("rpmdb.sqlite", &bytes);
        assert_eq!(
            listed(&packages(&h, "/var/lib/rpm").unwrap()),
            [
                ("ferry-hello", "2:1.2.3-4.el9", "noarch"),
                ("ferry-web", "0.9-1", "x86_64")
            ]
        );
        let (_dir, h) = rpm_host("rpmdb.sqlite", b"garbage");
        let e = packages(&h, "/var/lib/rpm").unwrap_err();
        assert!(e.starts_with("/var/lib/rpm/rpmdb.sqlite: "), "{e}");
    }

    #[test]
    fn packages_from_a_berkeley_db_database() {
        assert!(fixture("rpm-bdb-Packages.txt").contains("rpm-bdb-Packages beside"));
        let bytes = std::fs::read(fixtures().join("rpm-bdb-Packages")).unwrap();
        let (_dir, h) = rpm_host("Packages", &bytes);
        let p = packages(&h, "/var/lib/rpm").unwrap();
        assert_eq!(p.len(), 32);
        let got = listed(&p);
        // ferry-docs' 62 kB header spans sixteen overflow pages.
        assert_eq!(got[0], ("ferry-docs", "3.1-7.el8", "noarch"));
        assert_eq!(got[1], ("ferry-hello", "2:1.2.3-4.el8", "noarch"));
        let names: Vec<String> = (1..=30).map(|i| format!("ferry-pkg{i:02}")).collect();
        assert_eq!(got[2..].iter().map(|p| p.0).collect::<Vec<_>>(), names);
        assert!(got[2..].iter().all(|p| p.1 == "1.2.3-4.el8"));
    }

    #[test]
    fn a_damaged_berkeley_db_database_is_an_error_not_a_panic_or_a_hang() {
        let good = std::fs::read(fixtures().join("rpm-bdb-Packages")).unwrap();
        let error = |bytes: &[u8]| {
            let (_dir, h) = rpm_host("Packages", bytes);
            packages(&h, "/var/lib/rpm").unwrap_err()
        };
        let e = error(&good[..good.len() / 2]);
        assert!(e.starts_with("/var/lib/rpm/Packages: page"), "{e}");
        assert!(e.contains("truncated"), "{e}");
        assert!(error(b"garbage").contains("too short"));
        assert!(error(&[0u8; 4096]).contains("not a Berkeley DB hash"));
        // An overflow page that chains to itself.
        let mut looped = good.clone();
        let first = (1..good.len() / 4096)
            .find(|n| good[n * 4096 + 25] == 7 && good[n * 4096 + 16..n * 4096 + 20] != [0; 4])
            .unwrap();
        looped[first * 4096 + 16..first * 4096 + 20].copy_from_slice(&(first as u32).to_le_bytes());
        assert!(
            error(&looped).contains("overflow chain"),
            "{}",
            error(&looped)
        );
        // An entry offset past the page.
        let mut wild = good.clone();
        wild[4096 + PAGE_HEADER..4096 + PAGE_HEADER + 2].copy_from_slice(&[0xff, 0xff]);
        assert!(
            error(&wild).contains("outside the page"),
            "{}",
            error(&wild)
        );
    }

    #[test]
    fn ndb_and_missing_databases_are_named() {
        let (_dir, h) = rpm_host("Packages.db", b"RpmP");
        assert!(packages(&h, "/var/lib/rpm").unwrap_err().contains("NDB"));
        let (_dir, h) = rpm_host("other", b"");
        assert!(
            packages(&h, "/var/lib/rpm")
                .unwrap_err()
                .contains("missing")
        );
    }

    #[test]
    fn short_or_lying_headers_do_not_parse() {
        assert_eq!(header(&[0, 0, 0, 9, 0, 0, 0, 1]), None);
        assert_eq!(header(&[0xff; 8]), None);
        assert_eq!(header(&[]), None);
    }
}
