//! Where verified chunks are kept: the [`ChunkStore`] trait and its RAM
//! and tiered stores ([`super::disk::DiskStore`] is the third).
//!
//! A chunk is named by what it is, never by where it is shown:
//! [`ChunkKey`] is (content id, chunk index, the chunk's expected SHA-256),
//! so every view, table, hot-swapped spec and process that shows the same
//! bytes finds the same entry. A store holds only bytes that were checked
//! against their key's digest before they were put; a store that can lose
//! that guarantee on its own (a disk, between processes) checks again
//! before it answers.
//!
//! The layering follows mountpoint-s3's `DataCache`s: [`Tiered`] puts a
//! fast store in front of a slow one, filling the fast one from the slow
//! one on a hit and writing both on a put.

use std::sync::Arc;

use bytes::Bytes;

use crate::content_id::ContentId;

/// A chunk, by content: chunk `chunk` of sample `id`, whose bytes hash to
/// `digest` (for a sample of one chunk, the digest is the content id).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, PartialOrd, Ord)]
pub struct ChunkKey {
    /// The sample's content id.
    pub id: ContentId,
    /// Which chunk (of [`crate::content_id::CHUNK`] bytes).
    pub chunk: u32,
    /// SHA-256 of the chunk's bytes.
    pub digest: [u8; 32],
}

impl ChunkKey {
    /// The one chunk of a sample no larger than a chunk.
    pub fn whole(id: ContentId) -> Self {
        Self {
            id,
            chunk: 0,
            digest: id.0,
        }
    }

    /// Whether this chunk is a whole sample (its digest is the content id).
    pub fn is_whole(&self) -> bool {
        self.chunk == 0 && self.digest == self.id.0
    }
}

/// Counters a store keeps about itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Bytes held.
    pub bytes: u64,
    /// Entries held.
    pub entries: u64,
    /// Bytes the store may hold.
    pub capacity: u64,
}

/// Keeps verified chunks. `get` and `put` never wait on a network: they
/// touch memory or a local disk, so the read path may call them on a FUSE
/// thread.
pub trait ChunkStore: Send + Sync {
    /// The bytes of `key`, verified, if held.
    fn get(&self, key: &ChunkKey) -> Option<Bytes>;
    /// Keeps `bytes`, which the caller checked against `key.digest`. May
    /// decline (no space, a failing disk) without an error.
    fn put(&self, key: &ChunkKey, bytes: &Bytes);
    /// Whether `key` is held, without reading it.
    fn contains(&self, key: &ChunkKey) -> bool;
    /// The chunks of a large sample of `chunks` chunks, when the store
    /// holds all of them and they hash, together, to `id` (so a restarted
    /// daemon learns a large sample's chunk digests from its own disk).
    fn whole_sample(&self, _id: &ContentId, _chunks: u32) -> Option<Vec<Bytes>> {
        None
    }
    /// A local file holding exactly the bytes of the one-chunk sample
    /// `key` (`size` bytes), verified, for the kernel to read directly
    /// (passthrough).
    fn open_file(&self, _key: &ChunkKey, _size: u64) -> Option<std::fs::File> {
        None
    }
    /// What the store holds now.
    fn stats(&self) -> StoreStats;
}

/// The RAM store: a moka cache weighed in bytes (least recently and
/// frequently used go first).
pub struct MemoryStore {
    cache: moka::sync::Cache<ChunkKey, Bytes>,
}

impl MemoryStore {
    /// A store of at most `capacity` bytes; `on_evict` is called for every
    /// entry evicted for space.
    pub fn new(capacity: u64, on_evict: impl Fn() + Send + Sync + 'static) -> Self {
        let cache = moka::sync::Cache::builder()
            .max_capacity(capacity)
            .weigher(|_k: &ChunkKey, v: &Bytes| u32::try_from(v.len()).unwrap_or(u32::MAX))
            .eviction_listener(move |_k, _v, cause| {
                if cause == moka::notification::RemovalCause::Size {
                    on_evict();
                }
            })
            .build();
        Self { cache }
    }

    /// Applies pending evictions (moka applies them in batches).
    pub fn settle(&self) {
        self.cache.run_pending_tasks();
    }
}

impl ChunkStore for MemoryStore {
    fn get(&self, key: &ChunkKey) -> Option<Bytes> {
        self.cache.get(key)
    }

    fn put(&self, key: &ChunkKey, bytes: &Bytes) {
        self.cache.insert(*key, bytes.clone());
    }

    fn contains(&self, key: &ChunkKey) -> bool {
        self.cache.contains_key(key)
    }

    fn stats(&self) -> StoreStats {
        StoreStats {
            bytes: self.cache.weighted_size(),
            entries: self.cache.entry_count(),
            capacity: self.cache.policy().max_capacity().unwrap_or(u64::MAX),
        }
    }
}

/// A fast store in front of a slow one: a hit in the slow one fills the
/// fast one; a put goes to both.
pub struct Tiered {
    /// The fast tier (RAM).
    pub front: Arc<dyn ChunkStore>,
    /// The slow tier (disk).
    pub back: Arc<dyn ChunkStore>,
}

impl ChunkStore for Tiered {
    fn get(&self, key: &ChunkKey) -> Option<Bytes> {
        if let Some(b) = self.front.get(key) {
            return Some(b);
        }
        let b = self.back.get(key)?;
        self.front.put(key, &b);
        Some(b)
    }

    fn put(&self, key: &ChunkKey, bytes: &Bytes) {
        self.front.put(key, bytes);
        self.back.put(key, bytes);
    }

    fn contains(&self, key: &ChunkKey) -> bool {
        self.front.contains(key) || self.back.contains(key)
    }

    fn whole_sample(&self, id: &ContentId, chunks: u32) -> Option<Vec<Bytes>> {
        self.back.whole_sample(id, chunks)
    }

    fn open_file(&self, key: &ChunkKey, size: u64) -> Option<std::fs::File> {
        self.back.open_file(key, size)
    }

    fn stats(&self) -> StoreStats {
        self.back.stats()
    }
}
