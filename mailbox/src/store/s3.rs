//! S3 store through `object_store`, path-style, with an optional pinned CA.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::TryFutureExt;
use object_store::{
    ClientOptions, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, RetryConfig,
    aws::{AmazonS3, AmazonS3Builder},
    path::Path,
};

use super::{Created, Listing, Store, StoreConfig, StoreError, StoreResult, check_key};

/// An S3 bucket reached at a custom endpoint.
#[derive(Debug)]
pub struct S3Store {
    inner: AmazonS3,
    url: String,
}

impl S3Store {
    /// Builds a client for `s3+http(s)://host:port/bucket`.
    pub fn new(config: &StoreConfig) -> anyhow::Result<Self> {
        let url = config.url.clone();
        let rest = url
            .strip_prefix("s3+")
            .ok_or_else(|| anyhow::anyhow!("{url} is not an s3+http(s):// URL"))?;
        let parsed = url::Url::parse(rest)
            .map_err(|e| anyhow::anyhow!("store URL {url} does not parse: {e}"))?;
        let bucket = parsed.path().trim_matches('/');
        anyhow::ensure!(
            !bucket.is_empty() && !bucket.contains('/'),
            "store URL {url} must name exactly one bucket, as s3+https://HOST:PORT/BUCKET"
        );
        let endpoint = format!(
            "{}://{}",
            parsed.scheme(),
            &parsed[url::Position::BeforeHost..url::Position::AfterPort]
        );
        let mut client = ClientOptions::new()
            .with_allow_http(parsed.scheme() == "http")
            .with_connect_timeout(Duration::from_secs(5))
            .with_timeout(Duration::from_secs(60));
        if let Some(pem) = &config.ca_pem {
            let cert = object_store::Certificate::from_pem(pem.as_bytes())
                .map_err(|e| anyhow::anyhow!("the CA of store {url} is not valid PEM: {e}"))?;
            client = client.with_root_certificate(cert);
        }
        let retry = RetryConfig {
            max_retries: 2,
            retry_timeout: Duration::from_secs(10),
            ..Default::default()
        };
        let inner = AmazonS3Builder::new()
            .with_endpoint(endpoint)
            .with_bucket_name(bucket)
            .with_region(config.region.as_deref().unwrap_or("us-east-1"))
            .with_access_key_id(config.access_key.as_deref().unwrap_or_default())
            .with_secret_access_key(config.secret_key.as_deref().unwrap_or_default())
            .with_virtual_hosted_style_request(false)
            .with_allow_http(parsed.scheme() == "http")
            .with_client_options(client)
            .with_retry(retry)
            .build()
            .map_err(|e| anyhow::anyhow!("cannot set up S3 client for {url}: {e}"))?;
        Ok(S3Store { inner, url })
    }

    fn err(&self, op: &'static str, key: &str, e: object_store::Error) -> StoreError {
        match e {
            object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. } => StoreError::Denied {
                store: self.url.clone(),
                op,
                key: key.to_string(),
            },
            // object_store reports some refusals (e.g. of a LIST) only inside a generic error.
            object_store::Error::Generic { .. }
                if ["403 Forbidden", "401 Unauthorized"]
                    .iter()
                    .any(|s| e.to_string().contains(s)) =>
            {
                StoreError::Denied {
                    store: self.url.clone(),
                    op,
                    key: key.to_string(),
                }
            }
            object_store::Error::Generic { .. } => StoreError::Unavailable {
                store: self.url.clone(),
                op,
                key: key.to_string(),
                detail: e.to_string(),
            },
            other => StoreError::Failed {
                store: self.url.clone(),
                op,
                key: key.to_string(),
                detail: other.to_string(),
            },
        }
    }
}

fn path(key: &str) -> StoreResult<Path> {
    check_key(key)?;
    Path::parse(key).map_err(|_| StoreError::BadKey {
        key: key.to_string(),
        detail: "it is not a valid object path",
    })
}

#[async_trait]
impl Store for S3Store {
    fn url(&self) -> &str {
        &self.url
    }

    async fn put(&self, key: &str, body: Bytes) -> StoreResult<()> {
        self.inner
            .put(&path(key)?, PutPayload::from(body))
            .map_err(|e| self.err("put", key, e))
            .await
            .map(|_| ())
    }

    async fn create(&self, key: &str, body: Bytes) -> StoreResult<Created> {
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        match self
            .inner
            .put_opts(&path(key)?, PutPayload::from(body), opts)
            .await
        {
            Ok(_) => Ok(Created::Created),
            Err(object_store::Error::AlreadyExists { .. })
            | Err(object_store::Error::Precondition { .. }) => Ok(Created::Exists),
            Err(e) => Err(self.err("create", key, e)),
        }
    }

    async fn get(&self, key: &str) -> StoreResult<Option<Bytes>> {
        match self.inner.get(&path(key)?).await {
            Ok(r) => r
                .bytes()
                .await
                .map(Some)
                .map_err(|e| self.err("get", key, e)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.err("get", key, e)),
        }
    }

    async fn get_range(&self, key: &str, offset: u64, len: u64) -> StoreResult<Option<Bytes>> {
        if len == 0 {
            return Ok(Some(Bytes::new()));
        }
        let range = offset..offset.saturating_add(len);
        match self.inner.get_range(&path(key)?, range).await {
            Ok(b) => Ok(Some(b)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.err("get", key, e)),
        }
    }

    async fn delete(&self, key: &str) -> StoreResult<()> {
        match self.inner.delete(&path(key)?).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.err("delete", key, e)),
        }
    }

    async fn list(&self, prefix: &str) -> StoreResult<Listing> {
        let p = path(prefix)?;
        let base = if prefix.is_empty() { None } else { Some(&p) };
        let result = self
            .inner
            .list_with_delimiter(base)
            .await
            .map_err(|e| self.err("list", prefix, e))?;
        let strip = |loc: &Path| -> Option<String> {
            let full = loc.as_ref();
            full.strip_prefix(prefix)
                .map(|s| s.trim_end_matches('/').to_string())
                .filter(|s| !s.is_empty() && !s.contains('/'))
        };
        Ok(Listing::new(
            result
                .objects
                .iter()
                .filter_map(|o| Some((strip(&o.location)?, o.size)))
                .collect(),
            result.common_prefixes.iter().filter_map(strip).collect(),
        ))
    }
}
