//! A store in a local folder: atomic writes by temp file + rename, create by hard link.

use std::io::Write;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;

use super::{Created, Listing, Store, StoreError, StoreResult, check_key};

/// Names of temp files start with this; listings skip them.
const TMP_PREFIX: &str = ".tmp-";

/// Writes `bytes` to `path` so readers see the old file or the whole new one, never a part.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let tmp = temp_beside(path)?;
    let result = (|| {
        write_new(&tmp, bytes, mode)?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn temp_beside(path: &Path) -> std::io::Result<PathBuf> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let id = uuid::Uuid::now_v7().simple().to_string();
    Ok(dir.join(format!("{TMP_PREFIX}{id}")))
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// A store rooted at a local folder.
#[derive(Debug)]
pub struct FolderStore {
    root: PathBuf,
    url: String,
}

impl FolderStore {
    /// Opens (and creates) the folder at `root`.
    pub fn new(root: impl AsRef<Path>) -> anyhow::Result<Self> {
        let root = root.as_ref().to_path_buf();
        std::fs::create_dir_all(&root)
            .map_err(|e| anyhow::anyhow!("cannot create store folder {}: {e}", root.display()))?;
        let url = format!("file://{}", root.display());
        Ok(FolderStore { root, url })
    }

    /// The folder holding the objects.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, key: &str) -> StoreResult<PathBuf> {
        check_key(key)?;
        Ok(self.root.join(key))
    }

    fn err(&self, op: &'static str, key: &str, e: std::io::Error) -> StoreError {
        StoreError::Failed {
            store: self.url.clone(),
            op,
            key: key.to_string(),
            detail: e.to_string(),
        }
    }
}

/// Runs blocking file work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)))
}

#[async_trait]
impl Store for FolderStore {
    fn url(&self) -> &str {
        &self.url
    }

    async fn put(&self, key: &str, body: Bytes) -> StoreResult<()> {
        let path = self.path(key)?;
        blocking(move || write_atomic(&path, &body, 0o644))
            .await
            .map_err(|e| self.err("put", key, e))
    }

    async fn create(&self, key: &str, body: Bytes) -> StoreResult<Created> {
        let path = self.path(key)?;
        // link(2) fails with EEXIST if the name is taken: an atomic create-if-absent.
        blocking(move || {
            let tmp = temp_beside(&path)?;
            write_new(&tmp, &body, 0o644)?;
            let linked = std::fs::hard_link(&tmp, &path);
            let _ = std::fs::remove_file(&tmp);
            match linked {
                Ok(()) => Ok(Created::Created),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(Created::Exists),
                Err(e) => Err(e),
            }
        })
        .await
        .map_err(|e| self.err("create", key, e))
    }

    async fn get(&self, key: &str) -> StoreResult<Option<Bytes>> {
        let path = self.path(key)?;
        match blocking(move || std::fs::read(&path)).await {
            Ok(b) => Ok(Some(Bytes::from(b))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            // A key that names a folder holds no object.
            Err(e) if e.kind() == std::io::ErrorKind::IsADirectory => Ok(None),
            Err(e) => Err(self.err("get", key, e)),
        }
    }

    async fn get_range(&self, key: &str, offset: u64, len: u64) -> StoreResult<Option<Bytes>> {
        use std::os::unix::fs::FileExt;
        let path = self.path(key)?;
        let read = blocking(move || {
            let file = std::fs::File::open(&path)?;
            let size = file.metadata()?.len();
            let len = len.min(size.saturating_sub(offset)) as usize;
            let mut buf = vec![0u8; len];
            file.read_exact_at(&mut buf, offset)?;
            Ok(buf)
        });
        match read.await {
            Ok(b) => Ok(Some(Bytes::from(b))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.err("get", key, e)),
        }
    }

    async fn delete(&self, key: &str) -> StoreResult<()> {
        let path = self.path(key)?;
        match blocking(move || std::fs::remove_file(&path)).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.err("delete", key, e)),
        }
    }

    async fn list(&self, prefix: &str) -> StoreResult<Listing> {
        let dir = self.path(prefix)?;
        let read = blocking(move || {
            let (mut objects, mut folders) = (Vec::new(), Vec::new());
            let entries = match std::fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Listing::default()),
                Err(e) => return Err(e),
            };
            // An entry deleted while the folder is read is left out, as if
            // the listing had been taken a moment later.
            let gone = |e: &std::io::Error| e.kind() == std::io::ErrorKind::NotFound;
            for entry in entries {
                let entry = entry?;
                let Ok(name) = entry.file_name().into_string() else {
                    continue;
                };
                if name.starts_with(TMP_PREFIX) {
                    continue;
                }
                let meta = match entry.metadata() {
                    Ok(m) => m,
                    Err(e) if gone(&e) => continue,
                    Err(e) => return Err(e),
                };
                if meta.is_dir() {
                    folders.push(name);
                } else {
                    objects.push((name, meta.len()));
                }
            }
            Ok(Listing::new(objects, folders))
        });
        read.await.map_err(|e| self.err("list", prefix, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// Objects come and go while another party lists the folder (a replica
    /// deleting answered messages): the listing must not fail on them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn listing_survives_objects_deleted_meanwhile() {
        let dir = tempfile::tempdir().unwrap();
        let store = FolderStore::new(dir.path()).unwrap();
        let folder = dir.path().join("box");
        std::fs::create_dir_all(&folder).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let churn = {
            let (stop, folder) = (stop.clone(), folder.clone());
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let path = folder.join(format!("m{}", n % 2000));
                    if (n / 2000).is_multiple_of(2) {
                        std::fs::write(&path, b"x").unwrap();
                    } else {
                        let _ = std::fs::remove_file(&path);
                    }
                    n += 1;
                }
            })
        };
        for _ in 0..200 {
            let listing = store.list("box/").await;
            assert!(listing.is_ok(), "listing failed: {listing:?}");
        }
        stop.store(true, Ordering::Relaxed);
        churn.join().unwrap();
    }
}
