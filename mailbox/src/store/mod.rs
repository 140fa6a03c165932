//! Stores: one trait over a local folder, S3 and WebDAV, opened from a URL.

pub mod dav;
pub mod folder;
pub mod s3;

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// The result of a create-if-absent write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    /// The object did not exist and now holds our bytes.
    Created,
    /// An object was already there; nothing was written.
    Exists,
}

/// One level of a listing, like S3's delimiter listing or WebDAV's `Depth: 1`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listing {
    /// Names (relative to the listed prefix) of objects directly under it, sorted.
    pub objects: Vec<String>,
    /// The size in bytes of each object, in the order of `objects`.
    pub sizes: Vec<u64>,
    /// Names (relative, without trailing `/`) of sub-folders directly under it, sorted.
    pub folders: Vec<String>,
}

impl Listing {
    /// A listing of `objects` (name, size) and `folders`, in any order.
    pub fn new(mut objects: Vec<(String, u64)>, mut folders: Vec<String>) -> Listing {
        objects.sort();
        folders.sort();
        let (objects, sizes) = objects.into_iter().unzip();
        Listing {
            objects,
            sizes,
            folders,
        }
    }
}

/// A store failure, classified so callers can retry what is worth retrying.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store could not be reached or answered with a server error.
    #[error(
        "store {store} is unreachable or failing ({op} {key}): {detail}; check that it runs and that its URL is right"
    )]
    Unavailable {
        /// The store's URL.
        store: String,
        /// The operation.
        op: &'static str,
        /// The key.
        key: String,
        /// What the client said.
        detail: String,
    },
    /// The store refused the credential for this key.
    #[error("store {store} denied {op} {key}: the credential is wrong or not allowed there")]
    Denied {
        /// The store's URL.
        store: String,
        /// The operation.
        op: &'static str,
        /// The key.
        key: String,
    },
    /// The key is not one Ferry can store (empty segment, `..`, absolute).
    #[error("{key:?} is not a valid store key: {detail}")]
    BadKey {
        /// The key.
        key: String,
        /// What is wrong with it.
        detail: &'static str,
    },
    /// Any other failure.
    #[error("store {store}: {op} {key} failed: {detail}")]
    Failed {
        /// The store's URL.
        store: String,
        /// The operation.
        op: &'static str,
        /// The key.
        key: String,
        /// What the client said.
        detail: String,
    },
}

/// Result of a store operation.
pub type StoreResult<T> = Result<T, StoreError>;

/// An object store as Ferry uses it: whole-object writes, reads, deletes and one-level lists.
///
/// Implementations must make a written object visible whole or not at all, and treat
/// deleting a missing object as success. `create` may be racy on some servers; the
/// mailbox protocol never depends on it (DESIGN invariant 1).
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug {
    /// The store's URL, for messages.
    fn url(&self) -> &str;

    /// Writes `body` at `key`, replacing any object there.
    async fn put(&self, key: &str, body: Bytes) -> StoreResult<()>;

    /// Writes `body` at `key` only if nothing is there (`If-None-Match: *` or equivalent).
    async fn create(&self, key: &str, body: Bytes) -> StoreResult<Created>;

    /// Reads the object at `key`; `None` when there is none.
    async fn get(&self, key: &str) -> StoreResult<Option<Bytes>>;

    /// Reads `len` bytes at `offset` of the object at `key`; `None` when there is no
    /// object. Fewer bytes come back only where the object ends.
    async fn get_range(&self, key: &str, offset: u64, len: u64) -> StoreResult<Option<Bytes>>;

    /// Deletes the object at `key`; succeeds when there is none.
    async fn delete(&self, key: &str) -> StoreResult<()>;

    /// Lists one level under `prefix`, which ends with `/` (or is empty for the root).
    async fn list(&self, prefix: &str) -> StoreResult<Listing>;
}

/// Checks that a key is relative, has no empty, `.` or `..` segments and no control bytes.
pub fn check_key(key: &str) -> StoreResult<()> {
    let bad = |detail| {
        Err(StoreError::BadKey {
            key: key.to_string(),
            detail,
        })
    };
    if key.starts_with('/') {
        return bad("it must not start with '/'");
    }
    let trimmed = key.strip_suffix('/').unwrap_or(key);
    if trimmed.is_empty() {
        return if key.is_empty() {
            Ok(())
        } else {
            bad("it is empty")
        };
    }
    for seg in trimmed.split('/') {
        if seg.is_empty() || seg == "." || seg == ".." {
            return bad("it has an empty, '.' or '..' segment");
        }
    }
    if key.bytes().any(|b| b < 0x20 || b == 0x7f || b == b'\\') {
        return bad("it has control characters or a backslash");
    }
    Ok(())
}

/// How to reach a store: its URL and credential. Written into manager and agent configs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// `file:///abs/dir`, `s3+https://host:port/bucket`, `s3+http://…`,
    /// `dav+https://host:port/path/` or `dav+http://…`.
    pub url: String,
    /// S3 access key id, or WebDAV user name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_key: Option<String>,
    /// S3 secret key, or WebDAV password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_key: Option<String>,
    /// PEM of the only CA to trust for this store (pinning); system roots when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_pem: Option<String>,
    /// S3 region; `us-east-1` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
}

/// Installs the ring crypto provider for rustls once per process.
pub fn install_crypto() {
    // Fails only when a provider is already installed, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Opens the store a config names.
pub fn open(config: &StoreConfig) -> anyhow::Result<Arc<dyn Store>> {
    install_crypto();
    let url = config.url.as_str();
    if let Some(path) = url.strip_prefix("file://") {
        return Ok(Arc::new(folder::FolderStore::new(path)?));
    }
    if url.starts_with("s3+http://") || url.starts_with("s3+https://") {
        return Ok(Arc::new(s3::S3Store::new(config)?));
    }
    if url.starts_with("dav+http://") || url.starts_with("dav+https://") {
        return Ok(Arc::new(dav::DavStore::new(config)?));
    }
    if url.starts_with('/') {
        return Ok(Arc::new(folder::FolderStore::new(url)?));
    }
    anyhow::bail!(
        "store URL {url:?} has an unknown scheme: use file:///DIR, s3+https://HOST:PORT/BUCKET or dav+https://HOST:PORT/PATH/"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_checked() {
        assert!(check_key("mailboxes/a/status.json").is_ok());
        assert!(check_key("mailboxes/a/").is_ok());
        assert!(check_key("").is_ok());
        for bad in ["/etc/passwd", "a/../b", "a//b", "./a", "a\nb", "a\\b"] {
            assert!(check_key(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn unknown_scheme_is_explained() {
        let err = open(&StoreConfig {
            url: "ftp://x".into(),
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("unknown scheme"), "{err}");
    }
}
