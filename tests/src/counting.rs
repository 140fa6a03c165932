//! A store wrapper that counts requests by operation, for benchmarks.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use ferry_mailbox::store::{Created, Listing, Store, StoreResult};

/// Operations counted, in [`CountingStore::counts`] order.
pub const OPS: [&str; 5] = ["put", "create", "get", "delete", "list"];

/// Counts every request made through it.
#[derive(Debug)]
pub struct CountingStore {
    inner: Arc<dyn Store>,
    counts: [AtomicU64; 5],
}

impl CountingStore {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn Store>) -> Self {
        CountingStore {
            inner,
            counts: Default::default(),
        }
    }

    /// Requests so far, per operation in [`OPS`] order.
    pub fn counts(&self) -> [u64; 5] {
        std::array::from_fn(|i| self.counts[i].load(Ordering::Relaxed))
    }

    /// Sets every count back to zero.
    pub fn reset(&self) {
        for c in &self.counts {
            c.store(0, Ordering::Relaxed);
        }
    }

    fn hit(&self, op: usize) {
        self.counts[op].fetch_add(1, Ordering::Relaxed);
    }
}

#[async_trait]
impl Store for CountingStore {
    fn url(&self) -> &str {
        self.inner.url()
    }
    async fn put(&self, key: &str, body: Bytes) -> StoreResult<()> {
        self.hit(0);
        self.inner.put(key, body).await
    }
    async fn create(&self, key: &str, body: Bytes) -> StoreResult<Created> {
        self.hit(1);
        self.inner.create(key, body).await
    }
    async fn get(&self, key: &str) -> StoreResult<Option<Bytes>> {
        self.hit(2);
        self.inner.get(key).await
    }
    async fn get_range(&self, key: &str, offset: u64, len: u64) -> StoreResult<Option<Bytes>> {
        self.hit(2);
        self.inner.get_range(key, offset, len).await
    }
    async fn delete(&self, key: &str) -> StoreResult<()> {
        self.hit(3);
        self.inner.delete(key).await
    }
    async fn list(&self, prefix: &str) -> StoreResult<Listing> {
        self.hit(4);
        self.inner.list(prefix).await
    }
}
