//! The embedded store behind `ferry serve`: S3 over TLS, backed by a folder with atomic
//! writes, with three credential classes. *Manager* may do everything; *agent* may touch
//! only objects under `mailboxes/<id>/` and list only inside one whole mailbox;
//! *library* (handed to agents, sealed, inside capture and restore commands) may touch
//! only the image library under `library/`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use bytes::Bytes;
use ferry_mailbox::store::folder::FolderStore;
use ferry_mailbox::{Created, Store, StoreError};
use futures::StreamExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use s3s::access::{S3Access, S3AccessContext};
use s3s::auth::SimpleAuth;
use s3s::dto::{self, ETag, ETagCondition, StreamingBlob, Timestamp};
use s3s::path::S3Path;
use s3s::service::S3ServiceBuilder;
use s3s::{S3, S3Request, S3Response, S3Result, s3_error};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tracing::{debug, info, warn};

/// Largest object the embedded store accepts.
const MAX_OBJECT: usize = 64 << 20;

/// Settings of the embedded store, part of the manager config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddedConfig {
    /// Address to listen on, e.g. `127.0.0.1:7443`.
    pub listen: SocketAddr,
    /// Folder holding the buckets.
    pub root: PathBuf,
    /// The one bucket served.
    pub bucket: String,
    /// Server certificate (PEM file).
    pub tls_cert: PathBuf,
    /// Server private key (PEM file).
    pub tls_key: PathBuf,
    /// CA certificate that signed it (PEM file), handed to agents for pinning.
    pub tls_ca: PathBuf,
    /// Credential with full access.
    pub manager: Credential,
    /// Credential limited to mailboxes.
    pub agent: Credential,
    /// Credential limited to the image library (`library/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub library: Option<Credential>,
}

/// The image library's folder in the embedded store's bucket.
pub const LIBRARY_PREFIX: &str = "library/";
/// Where the manager publishes ramdisk bases, which agents may read.
pub const BOOT_PREFIX: &str = "boot/";

/// An access key and its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credential {
    /// Access key id.
    pub access_key: String,
    /// Secret key.
    pub secret_key: String,
}

impl Credential {
    /// A fresh random credential whose access key starts with `prefix`.
    pub fn generate(prefix: &str) -> Self {
        let id: [u8; 10] = ferry_mailbox::seal::random_bytes();
        let secret: [u8; 30] = ferry_mailbox::seal::random_bytes();
        Credential {
            access_key: format!("{prefix}{}", hex::encode_upper(id)),
            secret_key: ferry_mailbox::seal::b64(&secret).replace(['/', '+'], "x"),
        }
    }
}

/// Is `key` (or list prefix) inside exactly one mailbox: `mailboxes/<id>/…`?
fn inside_one_mailbox(key: &str) -> bool {
    key.strip_prefix(ferry_mailbox::keys::MAILBOXES)
        .and_then(|rest| rest.split_once('/'))
        .is_some_and(|(id, _)| ferry_model::protocol::check_agent_id(id).is_ok())
}

/// Who is asking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Manager,
    Agent,
    Library,
}

impl Class {
    /// May this class touch the object `key`, or list under the prefix `key`?
    fn may(self, key: &str) -> bool {
        match self {
            Class::Manager => true,
            Class::Agent => inside_one_mailbox(key),
            Class::Library => key.starts_with(LIBRARY_PREFIX),
        }
    }

    /// May this class read the object `key` (agents also read the published ramdisk
    /// bases under `boot/`)?
    fn may_read(self, key: &str) -> bool {
        self.may(key) || (self == Class::Agent && key.starts_with(BOOT_PREFIX))
    }

    fn scope(self) -> &'static str {
        match self {
            Class::Manager => "everything",
            Class::Agent => "objects inside one mailbox (and read boot/)",
            Class::Library => "objects inside the image library (library/)",
        }
    }
}

/// Decides what each credential class may do.
#[derive(Debug, Clone)]
struct Access {
    manager_key: String,
    agent_key: String,
    library_key: Option<String>,
    bucket: String,
}

impl Access {
    fn class(&self, access_key: Option<&str>) -> S3Result<Class> {
        match access_key {
            Some(k) if k == self.manager_key => Ok(Class::Manager),
            Some(k) if k == self.agent_key => Ok(Class::Agent),
            Some(k) if Some(k) == self.library_key.as_deref() => Ok(Class::Library),
            _ => Err(s3_error!(AccessDenied, "unknown credential")),
        }
    }

    fn denied(class: Class, what: &str) -> s3s::S3Error {
        s3_error!(
            AccessDenied,
            "this credential may only {what} {}",
            class.scope()
        )
    }
}

#[async_trait::async_trait]
impl S3Access for Access {
    async fn check(&self, cx: &mut S3AccessContext<'_>) -> S3Result<()> {
        let class = self.class(cx.credentials().map(|c| c.access_key.as_str()))?;
        if class == Class::Manager {
            return Ok(());
        }
        let op = cx.s3_op().name();
        match (cx.s3_path(), op) {
            (
                S3Path::Object { bucket, key },
                "PutObject" | "GetObject" | "HeadObject" | "DeleteObject",
            ) if **bucket == *self.bucket && class.may(key) => Ok(()),
            (S3Path::Object { bucket, key }, "GetObject" | "HeadObject")
                if **bucket == *self.bucket && class.may_read(key) =>
            {
                Ok(())
            }
            // The prefix and keys are checked below, once the request is parsed.
            (S3Path::Bucket { bucket }, "ListObjectsV2" | "DeleteObjects")
                if **bucket == *self.bucket =>
            {
                Ok(())
            }
            _ => Err(Self::denied(class, "use")),
        }
    }

    async fn list_objects_v2(&self, req: &mut S3Request<dto::ListObjectsV2Input>) -> S3Result<()> {
        let class = self.class(req.credentials.as_ref().map(|c| c.access_key.as_str()))?;
        if !req.input.prefix.as_deref().is_some_and(|p| class.may(p)) {
            return Err(Self::denied(class, "list"));
        }
        Ok(())
    }

    async fn delete_objects(&self, req: &mut S3Request<dto::DeleteObjectsInput>) -> S3Result<()> {
        let class = self.class(req.credentials.as_ref().map(|c| c.access_key.as_str()))?;
        if !req.input.delete.objects.iter().all(|o| class.may(&o.key)) {
            return Err(Self::denied(class, "delete"));
        }
        Ok(())
    }
}

/// The S3 operations Ferry uses, over a [`FolderStore`] per bucket.
#[derive(Debug)]
struct Backend {
    bucket: String,
    store: FolderStore,
    /// Serialises `If-Match` writes, the only read-modify-write the store offers.
    if_match: tokio::sync::Mutex<()>,
    /// ETags of objects read by range, by the identity of their file: a ranged read
    /// (the image library reads pack files blob by blob) then reads its range only,
    /// not the whole object to hash it.
    etags: std::sync::Mutex<std::collections::HashMap<String, (FileStamp, ETag)>>,
}

/// What changes whenever a file's content may have: objects are replaced by renaming a
/// new file over them, so a new inode and change time.
type FileStamp = (u64, u64, u64, i64, i64);

fn stamp(path: &Path) -> Option<FileStamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.dev(), m.ino(), m.len(), m.ctime(), m.ctime_nsec()))
}

/// At most this many ETags are remembered; then the memory starts afresh.
const ETAGS_KEPT: usize = 100_000;

fn etag_of(bytes: &[u8]) -> ETag {
    ETag::Strong(blake3::hash(bytes).to_hex()[..32].to_string())
}

fn internal(e: StoreError) -> s3s::S3Error {
    match e {
        StoreError::BadKey { .. } => s3_error!(InvalidArgument, "{e}"),
        e => s3_error!(InternalError, "{e}"),
    }
}

impl Backend {
    fn check_bucket(&self, bucket: &str) -> S3Result<()> {
        if bucket == self.bucket {
            Ok(())
        } else {
            Err(s3_error!(NoSuchBucket))
        }
    }

    /// The ETag and size of object `key` (`None` if there is none), hashing its content
    /// only when its file changed since it was last hashed.
    async fn known_etag(&self, key: &str) -> S3Result<Option<(ETag, u64, FileStamp)>> {
        ferry_mailbox::store::check_key(key).map_err(internal)?;
        let path = self.store.root().join(key);
        let before = stamp(&path);
        let known = before.and_then(|st| {
            let etags = self.etags.lock().ok()?;
            etags
                .get(key)
                .filter(|(at, _)| *at == st)
                .map(|(_, e)| (e.clone(), st.2, st))
        });
        if known.is_some() {
            return Ok(known);
        }
        let Some(bytes) = self.store.get(key).await.map_err(internal)? else {
            return Ok(None);
        };
        let etag = etag_of(&bytes);
        // Trusted (and remembered) only if the file did not change while it was read.
        let Some(st) = before.filter(|st| stamp(&path) == Some(*st) && st.2 == bytes.len() as u64)
        else {
            return Err(s3_error!(
                SlowDown,
                "the object changed while it was read; try again"
            ));
        };
        if let Ok(mut etags) = self.etags.lock() {
            if etags.len() >= ETAGS_KEPT {
                etags.clear();
            }
            etags.insert(key.to_string(), (st, etag.clone()));
        }
        Ok(Some((etag, bytes.len() as u64, st)))
    }

    /// Keys under `prefix`: one level when `delimited`, else the whole subtree.
    async fn walk(&self, prefix: &str, delimited: bool) -> S3Result<(Vec<String>, Vec<String>)> {
        let (dir, _) = prefix.rsplit_once('/').unwrap_or(("", prefix));
        let dir = if dir.is_empty() {
            String::new()
        } else {
            format!("{dir}/")
        };
        let mut objects = Vec::new();
        let mut folders = Vec::new();
        let mut pending = vec![dir];
        while let Some(dir) = pending.pop() {
            let listing = self.store.list(&dir).await.map_err(internal)?;
            for name in listing.objects {
                let key = format!("{dir}{name}");
                if key.starts_with(prefix) {
                    objects.push(key);
                }
            }
            for name in listing.folders {
                let key = format!("{dir}{name}/");
                if delimited {
                    if key.starts_with(prefix) {
                        folders.push(key);
                    }
                } else if key.starts_with(prefix) || prefix.starts_with(&key) {
                    pending.push(key);
                }
            }
        }
        Ok((objects, folders))
    }
}

#[async_trait::async_trait]
impl S3 for Backend {
    async fn put_object(
        &self,
        req: S3Request<dto::PutObjectInput>,
    ) -> S3Result<S3Response<dto::PutObjectOutput>> {
        let input = req.input;
        self.check_bucket(&input.bucket)?;
        let mut body = Vec::new();
        if let Some(mut blob) = input.body {
            while let Some(chunk) = blob.next().await {
                let chunk = chunk.map_err(|e| s3_error!(IncompleteBody, "{e}"))?;
                if body.len() + chunk.len() > MAX_OBJECT {
                    return Err(s3_error!(EntityTooLarge));
                }
                body.extend_from_slice(&chunk);
            }
        }
        let etag = etag_of(&body);
        let bytes = Bytes::from(body);
        match (input.if_none_match, input.if_match) {
            (Some(ETagCondition::Any), _) => {
                if self
                    .store
                    .create(&input.key, bytes)
                    .await
                    .map_err(internal)?
                    == Created::Exists
                {
                    return Err(s3_error!(
                        PreconditionFailed,
                        "an object already exists at this key"
                    ));
                }
            }
            (_, Some(cond)) => {
                let _guard = self.if_match.lock().await;
                let current = self.store.get(&input.key).await.map_err(internal)?;
                let matches = match (&cond, &current) {
                    (_, None) => false,
                    (ETagCondition::Any, Some(_)) => true,
                    (ETagCondition::ETag(want), Some(cur)) => want.value() == etag_of(cur).value(),
                };
                if !matches {
                    return Err(s3_error!(PreconditionFailed, "the object's ETag differs"));
                }
                self.store.put(&input.key, bytes).await.map_err(internal)?;
            }
            _ => self.store.put(&input.key, bytes).await.map_err(internal)?,
        }
        Ok(S3Response::new(dto::PutObjectOutput {
            e_tag: Some(etag),
            ..Default::default()
        }))
    }

    async fn get_object(
        &self,
        req: S3Request<dto::GetObjectInput>,
    ) -> S3Result<S3Response<dto::GetObjectOutput>> {
        self.check_bucket(&req.input.bucket)?;
        let key = &req.input.key;
        let Some(range) = &req.input.range else {
            let Some(bytes) = self.store.get(key).await.map_err(internal)? else {
                return Err(s3_error!(NoSuchKey));
            };
            return Ok(S3Response::new(dto::GetObjectOutput {
                content_length: Some(bytes.len() as i64),
                e_tag: Some(etag_of(&bytes)),
                last_modified: modified(self.store.root(), key),
                body: Some(StreamingBlob::from(s3s::Body::from(bytes))),
                ..Default::default()
            }));
        };
        // The ETag, size and bytes must be of one version of the object: read again
        // if it was replaced meanwhile.
        for _ in 0..3 {
            let Some((e_tag, full, at)) = self.known_etag(key).await? else {
                return Err(s3_error!(NoSuchKey));
            };
            let r = range
                .check(full)
                .map_err(|_| s3_error!(InvalidRange, "the range is not in the object"))?;
            let Some(bytes) = self
                .store
                .get_range(key, r.start, r.end - r.start)
                .await
                .map_err(internal)?
            else {
                return Err(s3_error!(NoSuchKey));
            };
            if bytes.len() as u64 != r.end - r.start
                || stamp(&self.store.root().join(key)) != Some(at)
            {
                continue;
            }
            return Ok(S3Response::new(dto::GetObjectOutput {
                content_length: Some(bytes.len() as i64),
                content_range: Some(format!("bytes {}-{}/{full}", r.start, r.end - 1)),
                e_tag: Some(e_tag),
                last_modified: modified(self.store.root(), key),
                body: Some(StreamingBlob::from(s3s::Body::from(bytes))),
                ..Default::default()
            }));
        }
        Err(s3_error!(
            SlowDown,
            "the object kept changing while it was read; try again"
        ))
    }

    async fn head_object(
        &self,
        req: S3Request<dto::HeadObjectInput>,
    ) -> S3Result<S3Response<dto::HeadObjectOutput>> {
        self.check_bucket(&req.input.bucket)?;
        let Some(bytes) = self.store.get(&req.input.key).await.map_err(internal)? else {
            return Err(s3_error!(NoSuchKey));
        };
        Ok(S3Response::new(dto::HeadObjectOutput {
            content_length: Some(bytes.len() as i64),
            e_tag: Some(etag_of(&bytes)),
            last_modified: modified(self.store.root(), &req.input.key),
            ..Default::default()
        }))
    }

    async fn delete_object(
        &self,
        req: S3Request<dto::DeleteObjectInput>,
    ) -> S3Result<S3Response<dto::DeleteObjectOutput>> {
        self.check_bucket(&req.input.bucket)?;
        self.store.delete(&req.input.key).await.map_err(internal)?;
        Ok(S3Response::new(dto::DeleteObjectOutput::default()))
    }

    async fn delete_objects(
        &self,
        req: S3Request<dto::DeleteObjectsInput>,
    ) -> S3Result<S3Response<dto::DeleteObjectsOutput>> {
        self.check_bucket(&req.input.bucket)?;
        let mut deleted = Vec::new();
        for o in req.input.delete.objects {
            self.store.delete(&o.key).await.map_err(internal)?;
            deleted.push(dto::DeletedObject {
                key: Some(o.key),
                ..Default::default()
            });
        }
        Ok(S3Response::new(dto::DeleteObjectsOutput {
            deleted: Some(deleted),
            ..Default::default()
        }))
    }

    async fn head_bucket(
        &self,
        req: S3Request<dto::HeadBucketInput>,
    ) -> S3Result<S3Response<dto::HeadBucketOutput>> {
        self.check_bucket(&req.input.bucket)?;
        Ok(S3Response::new(dto::HeadBucketOutput::default()))
    }

    async fn list_objects_v2(
        &self,
        req: S3Request<dto::ListObjectsV2Input>,
    ) -> S3Result<S3Response<dto::ListObjectsV2Output>> {
        let input = req.input;
        self.check_bucket(&input.bucket)?;
        let prefix = input.prefix.clone().unwrap_or_default();
        let delimited = match input.delimiter.as_deref() {
            None => false,
            Some("/") => true,
            Some(_) => {
                return Err(s3_error!(
                    NotImplemented,
                    "only '/' is supported as delimiter"
                ));
            }
        };
        let (objects, folders) = self.walk(&prefix, delimited).await?;
        // One sorted run of keys and folders, paged by the last key returned.
        let mut entries: Vec<(String, bool)> = objects
            .into_iter()
            .map(|k| (k, false))
            .chain(folders.into_iter().map(|k| (k, true)))
            .collect();
        entries.sort();
        let after = input
            .continuation_token
            .clone()
            .or(input.start_after.clone())
            .unwrap_or_default();
        let max = input.max_keys.unwrap_or(1000).clamp(1, 1000) as usize;
        let rest: Vec<_> = entries.into_iter().filter(|(k, _)| *k > after).collect();
        let truncated = rest.len() > max;
        let page = &rest[..rest.len().min(max)];
        let mut contents = Vec::new();
        let mut prefixes = Vec::new();
        for (key, is_folder) in page {
            if *is_folder {
                prefixes.push(dto::CommonPrefix {
                    prefix: Some(key.clone()),
                });
            } else {
                // An object deleted since the walk is left out: a listing
                // must never carry an entry without size and time.
                let Ok(meta) = std::fs::metadata(self.store.root().join(key)) else {
                    continue;
                };
                contents.push(dto::Object {
                    key: Some(key.clone()),
                    size: Some(meta.len() as i64),
                    last_modified: meta.modified().ok().map(Timestamp::from),
                    ..Default::default()
                });
            }
        }
        Ok(S3Response::new(dto::ListObjectsV2Output {
            name: Some(self.bucket.clone()),
            prefix: input.prefix,
            delimiter: input.delimiter,
            max_keys: Some(max as i32),
            key_count: Some((contents.len() + prefixes.len()) as i32),
            is_truncated: Some(truncated),
            next_continuation_token: truncated
                .then(|| page.last().map(|(k, _)| k.clone()))
                .flatten(),
            continuation_token: input.continuation_token,
            contents: Some(contents),
            common_prefixes: Some(prefixes),
            ..Default::default()
        }))
    }
}

/// The object's time; an object deleted since it was read gets the present
/// time, since clients refuse an answer without one.
fn modified(root: &Path, key: &str) -> Option<Timestamp> {
    let time = std::fs::metadata(root.join(key))
        .and_then(|m| m.modified())
        .unwrap_or_else(|_| std::time::SystemTime::now());
    Some(Timestamp::from(time))
}

fn tls_acceptor(config: &EmbeddedConfig) -> Result<TlsAcceptor> {
    let certs = CertificateDer::pem_file_iter(&config.tls_cert)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("reading TLS certificate {}", config.tls_cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(&config.tls_key)
        .with_context(|| format!("reading TLS key {}", config.tls_key.display()))?;
    let mut tls = ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("TLS certificate and key do not match")?;
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(tls)))
}

/// Binds the embedded store's address; fails with a clear message if it is taken.
pub async fn bind(config: &EmbeddedConfig) -> Result<TcpListener> {
    TcpListener::bind(config.listen).await.with_context(|| {
        format!(
            "cannot listen on {} for the embedded store: is another `ferry serve` running?",
            config.listen
        )
    })
}

/// Serves the embedded store on `listener` until `shutdown` resolves.
pub async fn serve(
    config: &EmbeddedConfig,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()> {
    ferry_mailbox::store::install_crypto();
    let acceptor = tls_acceptor(config)?;
    let bucket_dir = config.root.join(&config.bucket);
    let backend = Backend {
        bucket: config.bucket.clone(),
        store: FolderStore::new(&bucket_dir)?,
        if_match: tokio::sync::Mutex::new(()),
        etags: Default::default(),
    };
    let mut auth = SimpleAuth::new();
    auth.register(
        config.manager.access_key.clone(),
        config.manager.secret_key.clone().into(),
    );
    auth.register(
        config.agent.access_key.clone(),
        config.agent.secret_key.clone().into(),
    );
    if let Some(lib) = &config.library {
        auth.register(lib.access_key.clone(), lib.secret_key.clone().into());
    }
    let mut builder = S3ServiceBuilder::new(backend);
    builder.set_auth(auth);
    builder.set_access(Access {
        manager_key: config.manager.access_key.clone(),
        agent_key: config.agent.access_key.clone(),
        library_key: config.library.as_ref().map(|c| c.access_key.clone()),
        bucket: config.bucket.clone(),
    });
    let service = builder.build();
    let http = ConnBuilder::new(TokioExecutor::new());
    info!(listen = %config.listen, root = %bucket_dir.display(), "embedded store serving");
    tokio::pin!(shutdown);
    // Connections live in a set so that stopping the store really drops them all.
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => { warn!("accepting a store connection: {e}"); continue; }
            },
            _ = &mut shutdown => break,
        };
        while connections.try_join_next().is_some() {}
        let acceptor = acceptor.clone();
        let service = service.clone();
        let http = http.clone();
        connections.spawn(async move {
            let tls = match acceptor.accept(tcp).await {
                Ok(s) => s,
                Err(e) => {
                    debug!(%peer, "TLS handshake failed: {e}");
                    return;
                }
            };
            if let Err(e) = http.serve_connection(TokioIo::new(tls), service).await {
                debug!(%peer, "store connection ended: {e}");
            }
        });
    }
    connections.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mailbox_scope() {
        let id = "a".repeat(52);
        assert!(inside_one_mailbox(&format!("mailboxes/{id}/commands/")));
        assert!(inside_one_mailbox(&format!("mailboxes/{id}/status.json")));
        assert!(!inside_one_mailbox("mailboxes/"));
        assert!(!inside_one_mailbox(&format!("mailboxes/{id}")));
        assert!(!inside_one_mailbox("mailboxes/short/x"));
        assert!(!inside_one_mailbox(&format!("agents/{id}/log/x")));
        assert!(!inside_one_mailbox("jobs/x"));
    }

    #[test]
    fn each_class_reaches_only_its_part() {
        let mailbox = format!("mailboxes/{}/status.json", "a".repeat(52));
        assert!(Class::Manager.may(&mailbox) && Class::Manager.may("library/config"));
        assert!(Class::Agent.may(&mailbox) && !Class::Agent.may("library/config"));
        assert!(Class::Library.may("library/data/ab/abcd") && Class::Library.may("library/"));
        assert!(!Class::Library.may(&mailbox) && !Class::Library.may("librarian/x"));
        assert!(!Class::Library.may("agents/x") && !Class::Library.may(""));
        // Agents read the published ramdisk bases, and nothing else outside their
        // mailbox; they write none of it.
        let base = format!("boot/{}/initrd-base.zst", "ab".repeat(32));
        assert!(Class::Agent.may_read(&base) && !Class::Agent.may(&base));
        assert!(!Class::Agent.may_read("library/config") && !Class::Agent.may_read("jobs/x"));
        assert!(!Class::Library.may_read(&base));
    }
}
