//! The library's repository files on a Ferry store (folder, S3 or WebDAV), in restic's
//! layout: `config`, `keys/ID`, `snapshots/ID`, `index/ID`, `data/XX/ID`.
//!
//! rustic_core calls its backend from its own worker threads and expects blocking
//! calls; the stores are async. Each call runs on the library's runtime through its
//! handle, so it must never be made from a thread of that runtime.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use ferry_mailbox::store::{Created, Store, StoreError};
use rustic_core::{BytesList, ErrorKind, FileType, Id, ReadBackend, RusticError, WriteBackend};
use tokio::runtime::Handle;

/// A restic repository under `prefix` of a store.
#[derive(Debug)]
pub struct StoreBackend {
    store: Arc<dyn Store>,
    /// Empty, or a folder path ending in `/`.
    prefix: String,
    rt: Handle,
    /// Whole packs rustic marks cacheable (tree packs), so that walking a snapshot's
    /// trees costs one read per pack, not one per directory.
    packs: Mutex<PackCache>,
    /// Set while the repository is being created ([`StoreBackend::creating`]).
    creation: Option<Mutex<Creation>>,
}

/// How a repository is created so that concurrent creators cannot mix: rustic_core
/// writes the new key, then the config encrypted with that key's master key. Here the
/// key is held back, the config is written only if none is there, and the key follows
/// only when ours won. A creator that lost leaves nothing behind, so every key in the
/// library opens its config.
#[derive(Debug, Default)]
struct Creation {
    keys: Vec<(String, Bytes)>,
    lost: bool,
}

/// Most bytes of cacheable packs kept in memory.
const PACK_CACHE_BYTES: usize = 256 << 20;

#[derive(Debug, Default)]
struct PackCache {
    packs: HashMap<Id, Bytes>,
    order: VecDeque<Id>,
    bytes: usize,
}

impl PackCache {
    fn insert(&mut self, id: Id, pack: Bytes) {
        if pack.len() > PACK_CACHE_BYTES || self.packs.contains_key(&id) {
            return;
        }
        while self.bytes + pack.len() > PACK_CACHE_BYTES {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            if let Some(b) = self.packs.remove(&old) {
                self.bytes -= b.len();
            }
        }
        self.bytes += pack.len();
        self.order.push_back(id);
        self.packs.insert(id, pack);
    }
}

type Result<T> = rustic_core::RusticResult<T>;

fn failed(what: String, e: StoreError) -> Box<RusticError> {
    RusticError::with_source(ErrorKind::Backend, what, e)
}

impl StoreBackend {
    /// The repository at `prefix` (empty or ending in `/`) of `store`; calls run on `rt`.
    pub fn new(store: Arc<dyn Store>, prefix: &str, rt: Handle) -> StoreBackend {
        let prefix = match prefix.trim_matches('/') {
            "" => String::new(),
            p => format!("{p}/"),
        };
        StoreBackend {
            store,
            prefix,
            rt,
            packs: Mutex::default(),
            creation: None,
        }
    }

    /// Like [`StoreBackend::new`], for creating the repository: see [`Creation`].
    pub fn creating(store: Arc<dyn Store>, prefix: &str, rt: Handle) -> StoreBackend {
        StoreBackend {
            creation: Some(Mutex::default()),
            ..StoreBackend::new(store, prefix, rt)
        }
    }

    /// Whether creating found a config written by another creator first.
    pub fn lost_creation(&self) -> bool {
        self.creation
            .as_ref()
            .is_some_and(|c| c.lock().unwrap_or_else(|p| p.into_inner()).lost)
    }

    /// A write while creating: keys wait for the config, which is written only if
    /// absent. `None` when this is not a creation.
    fn write_creating(&self, tpe: FileType, key: &str, body: Bytes) -> Option<Result<()>> {
        let creation = self.creation.as_ref()?;
        let mut c = creation.lock().unwrap_or_else(|p| p.into_inner());
        match tpe {
            FileType::Key => {
                c.keys.push((key.to_string(), body));
                Some(Ok(()))
            }
            FileType::Config => Some(self.create_config(&mut c, key, body)),
            _ => None,
        }
    }

    fn create_config(&self, c: &mut Creation, key: &str, body: Bytes) -> Result<()> {
        let created = self
            .rt
            .block_on(self.store.create(key, body))
            .map_err(|e| failed(format!("writing {key}"), e))?;
        if created == Created::Exists {
            c.lost = true;
            c.keys.clear();
            return Err(RusticError::new(
                ErrorKind::Repository,
                "another creator wrote the library's config first",
            ));
        }
        for (k, b) in c.keys.drain(..) {
            self.rt
                .block_on(self.store.put(&k, b))
                .map_err(|e| failed(format!("writing {k}"), e))?;
        }
        Ok(())
    }

    /// The store key of a repository file.
    pub fn key(&self, tpe: FileType, id: &Id) -> String {
        let hex = id.to_hex();
        match tpe {
            FileType::Config => format!("{}config", self.prefix),
            FileType::Pack => format!("{}data/{}/{}", self.prefix, &hex[..2], &*hex),
            _ => format!("{}{}/{}", self.prefix, tpe.dirname(), &*hex),
        }
    }

    fn list_folder(&self, folder: &str) -> Result<Vec<(Id, u32)>> {
        let listing = self
            .rt
            .block_on(self.store.list(folder))
            .map_err(|e| failed(format!("listing {folder} of the library"), e))?;
        Ok(listing
            .objects
            .iter()
            .zip(&listing.sizes)
            .filter_map(|(name, size)| Some((name.parse::<Id>().ok()?, u32::try_from(*size).ok()?)))
            .collect())
    }
}

impl ReadBackend for StoreBackend {
    fn location(&self) -> String {
        format!("{}/{}", self.store.url().trim_end_matches('/'), self.prefix)
    }

    fn list_with_size(&self, tpe: FileType) -> Result<Vec<(Id, u32)>> {
        match tpe {
            FileType::Config => {
                let listing = self
                    .rt
                    .block_on(self.store.list(&self.prefix))
                    .map_err(|e| failed("listing the library".into(), e))?;
                Ok(listing
                    .objects
                    .iter()
                    .zip(&listing.sizes)
                    .filter(|(name, _)| *name == "config")
                    .map(|(_, size)| (Id::default(), *size as u32))
                    .collect())
            }
            FileType::Pack => {
                let data = format!("{}data/", self.prefix);
                let folders = self
                    .rt
                    .block_on(self.store.list(&data))
                    .map_err(|e| failed("listing the library's data".into(), e))?
                    .folders;
                let mut out = Vec::new();
                for f in folders.iter().filter(|f| f.len() == 2) {
                    out.extend(self.list_folder(&format!("{data}{f}/"))?);
                }
                Ok(out)
            }
            _ => self.list_folder(&format!("{}{}/", self.prefix, tpe.dirname())),
        }
    }

    fn read_full(&self, tpe: FileType, id: &Id) -> Result<Bytes> {
        let key = self.key(tpe, id);
        match self.rt.block_on(self.store.get(&key)) {
            Ok(Some(b)) => Ok(b),
            Ok(None) => Err(RusticError::new(
                ErrorKind::Backend,
                format!("{key} is missing from the library"),
            )),
            Err(e) => Err(failed(format!("reading {key}"), e)),
        }
    }

    fn read_partial(
        &self,
        tpe: FileType,
        id: &Id,
        cacheable: bool,
        offset: u32,
        length: u32,
    ) -> Result<Bytes> {
        let key = self.key(tpe, id);
        if cacheable && tpe == FileType::Pack {
            let cached = self
                .packs
                .lock()
                .ok()
                .and_then(|c| c.packs.get(id).cloned());
            let pack = match cached {
                Some(p) => p,
                None => {
                    let p = self.read_full(tpe, id)?;
                    if let Ok(mut c) = self.packs.lock() {
                        c.insert(*id, p.clone());
                    }
                    p
                }
            };
            let (start, end) = (offset as usize, offset as usize + length as usize);
            if end > pack.len() {
                return Err(RusticError::new(
                    ErrorKind::Backend,
                    format!(
                        "{key} is truncated: {} bytes, {length} wanted at {offset}",
                        pack.len()
                    ),
                ));
            }
            return Ok(pack.slice(start..end));
        }
        let got = self
            .rt
            .block_on(self.store.get_range(&key, offset.into(), length.into()));
        match got {
            Ok(Some(b)) if b.len() == length as usize => Ok(b),
            Ok(Some(b)) => Err(RusticError::new(
                ErrorKind::Backend,
                format!(
                    "{key} is truncated: {} of {length} bytes at {offset}",
                    b.len()
                ),
            )),
            Ok(None) => Err(RusticError::new(
                ErrorKind::Backend,
                format!("{key} is missing from the library"),
            )),
            Err(e) => Err(failed(format!("reading {key}"), e)),
        }
    }

    fn warmup_path(&self, tpe: FileType, id: &Id) -> String {
        self.key(tpe, id)
    }
}

impl WriteBackend for StoreBackend {
    fn write_bytes(
        &self,
        tpe: FileType,
        id: &Id,
        _cacheable: bool,
        content: BytesList,
    ) -> Result<()> {
        let key = self.key(tpe, id);
        let parts = content.into_vec();
        let body = match parts.len() {
            1 => parts.into_iter().next().unwrap_or_default(),
            _ => Bytes::from(parts.concat()),
        };
        if let Some(done) = self.write_creating(tpe, &key, body.clone()) {
            return done;
        }
        self.rt
            .block_on(self.store.put(&key, body))
            .map_err(|e| failed(format!("writing {key}"), e))
    }

    fn remove(&self, tpe: FileType, id: &Id, _cacheable: bool) -> Result<()> {
        let key = self.key(tpe, id);
        self.rt
            .block_on(self.store.delete(&key))
            .map_err(|e| failed(format!("removing {key}"), e))
    }
}
