//! The read path's cache: sample bytes in 1 MiB chunks, looked up by what
//! they are (content id, chunk, digest: a [`store::ChunkKey`]), kept in a
//! [`store::ChunkStore`]: RAM ([`store::MemoryStore`], moka weighed in
//! bytes), a local disk shared by every mount of the node and kept across
//! restarts ([`disk::DiskStore`], `--cache-dir`), or both
//! ([`store::Tiered`], RAM in front). Because keys are content, every view,
//! table, hot-swapped spec and process that shows the same samples shares
//! the same entries. A miss fetches exactly one chunk; concurrent readers
//! of a chunk wait for that one fetch. Embedding sidecars stay per table
//! and row, in memory.
//!
//! Every byte that enters a store is verified before any of it is served,
//! against the content id, the only identity of a sample's bytes:
//! - a sample that fits in one chunk against its content id;
//! - a larger sample is read whole on its first read (from the disk tier
//!   if it holds every chunk, else from the source) and checked against
//!   its content id; the digests of its chunks are then kept in memory (32
//!   bytes per MiB, by content id) and name its chunks' keys, so later
//!   reads of any chunk are verified alone. The table's `chunk_sha256` is
//!   untrusted like the rest of the row (a row may carry digests of other
//!   bytes than its content id names): it is compared with the learned
//!   digests, and a mismatch is logged, never believed.
//!
//! Where bytes come from is [`crate::source::Source`].

pub mod disk;
pub mod store;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use moka::future::Cache;
use sha2::{Digest, Sha256};

use crate::content_id::{CHUNK, ContentId};
use crate::metrics::Metrics;
use crate::source::{FetchError, SampleLoc, Source};
use disk::DiskStore;
use store::{ChunkKey, ChunkStore, MemoryStore, Tiered};

/// Digests learned by reading whole samples, bounded in bytes.
const LEARNED_DIGESTS_BYTES: u64 = 64 << 20;
/// Samples up to this size keep the chunks read while learning their
/// digests (and put them in the stores once verified); larger ones are
/// read again chunk by chunk.
const KEEP_WHILE_LEARNING: u64 = 64 << 20;
/// Share of the RAM budget given to embedding sidecars.
const EMBEDDING_SHARE: u64 = 8;

/// An embedding sidecar: (hash of the Lance dataset's URI, its version,
/// the row).
type EmbeddingKey = (u64, u64, u64);

type Fetching = Shared<BoxFuture<'static, Result<Bytes, Arc<FetchError>>>>;

/// The tiers a cache is made of.
#[derive(Default)]
pub struct Tiers {
    /// RAM, `--cache-size` bytes.
    pub ram: Option<Arc<MemoryStore>>,
    /// Disk, `--cache-dir`.
    pub disk: Option<Arc<DiskStore>>,
}

/// The verified cache in front of a [`Source`].
pub struct ChunkCache {
    store: Arc<dyn ChunkStore>,
    ram: Option<Arc<MemoryStore>>,
    disk: Option<Arc<DiskStore>>,
    fetching: Arc<Mutex<HashMap<ChunkKey, Fetching>>>,
    learned: Cache<ContentId, Arc<[[u8; 32]]>>,
    embeddings: Cache<EmbeddingKey, Bytes>,
    source: Arc<dyn Source>,
    metrics: Arc<Metrics>,
}

impl ChunkCache {
    /// A RAM-only cache of at most `capacity` bytes, with counters of its own.
    pub fn new(capacity: u64, source: Arc<dyn Source>) -> Self {
        Self::with_metrics(capacity, source, Arc::new(Metrics::new()))
    }

    /// A RAM-only cache of at most `capacity` bytes, counting into `metrics`.
    pub fn with_metrics(capacity: u64, source: Arc<dyn Source>, metrics: Arc<Metrics>) -> Self {
        let ram = Self::ram_store(capacity, &metrics);
        Self::from_tiers(
            Tiers {
                ram: Some(ram),
                disk: None,
            },
            capacity,
            source,
            metrics,
        )
    }

    /// The RAM tier for a budget of `capacity` bytes (less the share kept
    /// for embedding sidecars).
    pub fn ram_store(capacity: u64, metrics: &Arc<Metrics>) -> Arc<MemoryStore> {
        let evictions = metrics.cache_evictions.clone();
        Arc::new(MemoryStore::new(
            capacity - capacity / EMBEDDING_SHARE,
            move || {
                evictions.inc();
            },
        ))
    }

    /// A cache over `tiers` (RAM, disk or both; at least one), with a RAM
    /// budget of `capacity` bytes for embedding sidecars' share.
    pub fn from_tiers(
        tiers: Tiers,
        capacity: u64,
        source: Arc<dyn Source>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let store: Arc<dyn ChunkStore> = match (&tiers.ram, &tiers.disk) {
            (Some(r), Some(d)) => Arc::new(Tiered {
                front: r.clone(),
                back: d.clone(),
            }),
            (Some(r), None) => r.clone(),
            (None, Some(d)) => d.clone(),
            (None, None) => Self::ram_store(capacity, &metrics),
        };
        if let Some(ram) = &tiers.ram {
            let watched = ram.clone();
            metrics.watch_cache_bytes(move || watched.stats().bytes);
        }
        let learned = Cache::builder()
            .max_capacity(LEARNED_DIGESTS_BYTES)
            .weigher(|_k: &ContentId, v: &Arc<[[u8; 32]]>| (v.len() * 32 + 64) as u32)
            .build();
        let embeddings = Cache::builder()
            .max_capacity((capacity / EMBEDDING_SHARE).max(1 << 20))
            .weigher(|_k: &EmbeddingKey, v: &Bytes| u32::try_from(v.len()).unwrap_or(u32::MAX))
            .build();
        Self {
            store,
            ram: tiers.ram,
            disk: tiers.disk,
            fetching: Arc::default(),
            learned,
            embeddings,
            source,
            metrics,
        }
    }

    fn fetching_handle(&self) -> Arc<Mutex<HashMap<ChunkKey, Fetching>>> {
        self.fetching.clone()
    }

    /// Whether the one-chunk sample at `loc` is held or being fetched.
    pub fn has_or_fetching(&self, loc: &SampleLoc) -> bool {
        let key = ChunkKey::whole(loc.content_id);
        self.fetching
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(&key)
            || self.store.contains(&key)
    }

    /// The counters this cache (and the mount around it) updates.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Bytes the largest tier may hold (what `--warm` may fill).
    pub fn capacity(&self) -> u64 {
        self.store.stats().capacity
    }

    /// The disk tier, if there is one.
    pub fn disk(&self) -> Option<&Arc<DiskStore>> {
        self.disk.as_ref()
    }

    /// Bytes held in RAM, after applying pending evictions.
    pub async fn resident_bytes(&self) -> u64 {
        self.embeddings.run_pending_tasks().await;
        match &self.ram {
            Some(r) => {
                r.settle();
                r.stats().bytes + self.embeddings.weighted_size()
            }
            None => self.embeddings.weighted_size(),
        }
    }

    /// The source behind the cache.
    pub fn source(&self) -> &Arc<dyn Source> {
        &self.source
    }

    /// The key of chunk `chunk` of the sample at `loc`, when it is known
    /// without reading (a one-chunk sample, or a larger one whose chunk
    /// digests were learned).
    fn known_key(&self, loc: &SampleLoc, chunk: u32) -> Option<ChunkKey> {
        if loc.size <= CHUNK {
            return Some(ChunkKey::whole(loc.content_id));
        }
        let digests = self.learned.get(&loc.content_id).now_or_never()??;
        Some(ChunkKey {
            id: loc.content_id,
            chunk,
            digest: *digests.get(chunk as usize)?,
        })
    }

    /// Whether the first chunk of the sample at `loc` is held (no fetch).
    pub fn has_first_chunk(&self, loc: &SampleLoc) -> bool {
        self.known_key(loc, 0)
            .is_some_and(|k| self.store.contains(&k))
    }

    /// The disk tier and the key of its entry for the sample at `loc`, if
    /// there is a disk tier and the sample is of one chunk (the samples
    /// handed to the kernel whole).
    fn whole_on_disk(&self, loc: &SampleLoc) -> Option<(&DiskStore, ChunkKey)> {
        if loc.size > CHUNK {
            return None;
        }
        Some((self.disk.as_deref()?, ChunkKey::whole(loc.content_id)))
    }

    /// A local file of the one-chunk sample at `loc`'s bytes, verified, if
    /// the disk tier holds it (for the kernel to read: passthrough), and
    /// whether the open had to check it first (see
    /// [`DiskStore::open_checked`]).
    pub fn open_file(&self, loc: &SampleLoc) -> Option<(std::fs::File, bool)> {
        let (disk, key) = self.whole_on_disk(loc)?;
        disk.open_checked(&key, loc.size)
    }

    /// Whether the sample at `loc` is of one chunk and this process has not
    /// checked a disk-tier entry of it (it may have none); no I/O.
    pub fn unchecked(&self, loc: &SampleLoc) -> bool {
        self.whole_on_disk(loc)
            .is_some_and(|(disk, key)| !disk.is_checked(&key))
    }

    /// Checks the disk-tier entry of the one-chunk sample at `loc` before
    /// its first use (see [`DiskStore::check_ahead`]); whether it is there
    /// and good. Blocks on the disk.
    pub fn check_ahead(&self, loc: &SampleLoc, keep_pages: bool) -> bool {
        self.whole_on_disk(loc)
            .is_some_and(|(disk, key)| disk.check_ahead(&key, keep_pages))
    }

    /// Chunk `chunk` of the sample at `loc`, verified.
    pub async fn sample_chunk(
        &self,
        loc: &SampleLoc,
        chunk: u32,
    ) -> Result<Bytes, Arc<FetchError>> {
        let key = match self.known_key(loc, chunk) {
            Some(k) => k,
            None => {
                let digests = self.learn(loc).await?;
                let digest = *digests.get(chunk as usize).ok_or_else(|| {
                    Arc::new(FetchError::Corrupt {
                        content_id: loc.content_id.hex(),
                        detail: format!("no chunk {chunk} in a sample of {} bytes", loc.size),
                    })
                })?;
                ChunkKey {
                    id: loc.content_id,
                    chunk,
                    digest,
                }
            }
        };
        if let Some(hit) = self.store.get(&key) {
            self.metrics.cache_hits.inc();
            return Ok(hit);
        }
        self.metrics.cache_misses.inc();
        let fetching = {
            let mut map = self.fetching.lock().unwrap_or_else(|e| e.into_inner());
            map.entry(key)
                .or_insert_with(|| {
                    let (source, store, metrics) = (
                        self.source.clone(),
                        self.store.clone(),
                        self.metrics.clone(),
                    );
                    let loc = loc.clone();
                    async move {
                        let fetched = async {
                            let bytes = fetch_chunk(source.as_ref(), &loc, chunk, &metrics).await?;
                            verify(&loc, &key, &bytes)?;
                            store.put(&key, &bytes);
                            Ok(bytes)
                        };
                        counted(&metrics, fetched.await).map_err(Arc::new)
                    }
                    .boxed()
                    .shared()
                })
                .clone()
        };
        let result = fetching.clone().await;
        let mut map = self.fetching.lock().unwrap_or_else(|e| e.into_inner());
        if map.get(&key).is_some_and(|f| f.ptr_eq(&fetching)) {
            map.remove(&key);
        }
        result
    }

    /// Starts one ranged read of `object` covering `members` (packed
    /// one-chunk samples: their location and offset in `object`, sorted by
    /// offset), skipping members held or being fetched. Each member is
    /// registered as being fetched before this returns (a reader of one
    /// waits for this read instead of making its own), then verified
    /// against its content id and kept on its own: a member whose bytes
    /// are bad fails alone. A failed read is tried once more. Needs a tokio
    /// runtime; returns the number of members it fetches.
    pub fn start_packed(&self, object: &str, members: Vec<(SampleLoc, u64)>) -> usize {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return 0;
        };
        let mut map = self.fetching.lock().unwrap_or_else(|e| e.into_inner());
        let todo: Vec<(SampleLoc, u64, ChunkKey)> = members
            .into_iter()
            .map(|(loc, offset)| {
                let key = ChunkKey::whole(loc.content_id);
                (loc, offset, key)
            })
            .filter(|(_, _, key)| !map.contains_key(key) && !self.store.contains(key))
            .collect();
        let (Some(first), Some(last)) = (todo.first(), todo.last()) else {
            return 0;
        };
        let range = first.1..last.1 + last.0.size;
        let pieces: Arc<[std::ops::Range<u64>]> = todo
            .iter()
            .map(|(loc, offset, _)| *offset..offset + loc.size)
            .collect();
        let (source, metrics) = (self.source.clone(), self.metrics.clone());
        let (lead, object) = (first.0.clone(), object.to_string());
        type Pieces = Arc<[Bytes]>;
        let read: Shared<BoxFuture<'static, Result<Pieces, Arc<FetchError>>>> = async move {
            let mut result = Err(Arc::new(FetchError::Backend {
                content_id: lead.content_id.hex(),
                detail: "not read".into(),
            }));
            for _ in 0..2 {
                let began = std::time::Instant::now();
                let got = source
                    .read_pieces(&lead, &object, range.clone(), pieces.clone())
                    .await;
                metrics.fetch_seconds.observe(began.elapsed().as_secs_f64());
                match got {
                    Ok(b) => return Ok(b.into()),
                    Err(e) => result = Err(Arc::new(e)),
                }
            }
            metrics.fetch_errors.inc();
            result
        }
        .boxed()
        .shared();
        let mut parts = Vec::with_capacity(todo.len());
        for (n, (loc, offset, key)) in todo.into_iter().enumerate() {
            let (read, store, metrics) = (read.clone(), self.store.clone(), self.metrics.clone());
            let part: Fetching = async move {
                let pieces = read.await.map_err(|e| {
                    Arc::new(FetchError::Backend {
                        content_id: loc.content_id.hex(),
                        detail: format!("reading its pack failed: {e}"),
                    })
                })?;
                let result = match pieces.get(n).filter(|b| b.len() as u64 == loc.size) {
                    Some(mine) => verify(&loc, &key, mine).map(|()| {
                        store.put(&key, mine);
                        mine.clone()
                    }),
                    None => Err(FetchError::Corrupt {
                        content_id: loc.content_id.hex(),
                        detail: format!(
                            "its pack is shorter than the table says (bytes {}..{} of {})",
                            offset,
                            offset + loc.size,
                            crate::packs::split(&loc.uri).0
                        ),
                    }),
                };
                counted(&metrics, result).map_err(Arc::new)
            }
            .boxed()
            .shared();
            map.insert(key, part.clone());
            parts.push((key, part));
        }
        drop(map);
        let n = parts.len();
        let cache_map = self.fetching_handle();
        runtime.spawn(async move {
            for (key, part) in parts {
                let _ = part.clone().await;
                let mut map = cache_map.lock().unwrap_or_else(|e| e.into_inner());
                if map.get(&key).is_some_and(|f| f.ptr_eq(&part)) {
                    map.remove(&key);
                }
            }
        });
        n
    }

    /// The digests of every chunk of a large sample: read whole once (from
    /// the disk tier if it holds every chunk, else from the source),
    /// checked against its content id, compared with what the table says
    /// (only logged when it differs).
    async fn learn(&self, loc: &SampleLoc) -> Result<Arc<[[u8; 32]]>, Arc<FetchError>> {
        let source = self.source.clone();
        let store = self.store.clone();
        let metrics = self.metrics.clone();
        let loc = loc.clone();
        self.learned
            .try_get_with(loc.content_id, async move {
                let chunks = loc.size.div_ceil(CHUNK) as u32;
                if let Some(held) = store.whole_sample(&loc.content_id, chunks) {
                    let digests: Vec<[u8; 32]> =
                        held.iter().map(|b| Sha256::digest(b).into()).collect();
                    check_recorded(&loc, &digests);
                    return Ok(Arc::from(digests));
                }
                let learned = async {
                    let mut whole = Sha256::new();
                    let mut digests = Vec::with_capacity(chunks as usize);
                    // Kept to fill the stores once the whole sample checks
                    // out (never before: nothing unverified is kept), if small.
                    let keep = loc.size <= KEEP_WHILE_LEARNING;
                    let mut kept = Vec::new();
                    for c in 0..chunks {
                        let bytes = fetch_chunk(source.as_ref(), &loc, c, &metrics).await?;
                        whole.update(&bytes);
                        digests.push(<[u8; 32]>::from(Sha256::digest(&bytes)));
                        if keep {
                            kept.push(bytes);
                        }
                    }
                    if whole.finalize().as_slice() != loc.content_id.0 {
                        return Err(FetchError::Corrupt {
                            content_id: loc.content_id.hex(),
                            detail: "the bytes do not hash to the content id".into(),
                        });
                    }
                    check_recorded(&loc, &digests);
                    for (c, bytes) in kept.into_iter().enumerate() {
                        let key = ChunkKey {
                            id: loc.content_id,
                            chunk: c as u32,
                            digest: digests[c],
                        };
                        store.put(&key, &bytes);
                    }
                    Ok(Arc::from(digests))
                };
                counted(&metrics, learned.await)
            })
            .await
    }

    /// The `.npy` bytes of the embedding of the sample at `loc` (kept per
    /// Lance dataset, version and row, in memory).
    pub async fn embedding_npy(&self, loc: &SampleLoc) -> Result<Bytes, Arc<FetchError>> {
        let key = embedding_key(loc);
        if let Some(hit) = self.embeddings.get(&key).await {
            self.metrics.cache_hits.inc();
            return Ok(hit);
        }
        self.metrics.cache_misses.inc();
        let fetch = self.source.embedding(loc);
        let metrics = self.metrics.clone();
        self.embeddings
            .try_get_with(key, async move {
                let start = std::time::Instant::now();
                let v = counted(&metrics, fetch.await);
                metrics.fetch_seconds.observe(start.elapsed().as_secs_f64());
                Ok(Bytes::from(crate::npy::write_vector(&v?)))
            })
            .await
    }

    /// Whether the embedding of the sample at `loc` is cached.
    pub fn has_embedding(&self, loc: &SampleLoc) -> bool {
        self.embeddings.contains_key(&embedding_key(loc))
    }
}

fn embedding_key(loc: &SampleLoc) -> EmbeddingKey {
    match &loc.lance {
        Some((ds, row)) => (
            crate::encode::builtin::fnv1a(ds.uri().as_bytes()),
            ds.version().version,
            *row,
        ),
        // No Lance row: the fetch fails; keyed apart from every row.
        None => (0, 0, u64::MAX),
    }
}

/// Logs when the table's chunk digests differ from the verified bytes'.
fn check_recorded(loc: &SampleLoc, digests: &[[u8; 32]]) {
    if let Some(recorded) = &loc.chunk_digests
        && recorded.as_ref() != digests
    {
        tracing::warn!(
            "sample {}: the table's chunk_sha256 does not describe the bytes of its content id; \
             serving the verified bytes",
            loc.content_id
        );
    }
}

/// Counts a failed fetch once (not once per reader waiting on it).
fn counted<T>(metrics: &Metrics, r: Result<T, FetchError>) -> Result<T, FetchError> {
    if r.is_err() {
        metrics.fetch_errors.inc();
    }
    r
}

/// Fetches chunk `chunk` of the sample at `loc`, checking its length.
async fn fetch_chunk(
    source: &dyn Source,
    loc: &SampleLoc,
    chunk: u32,
    metrics: &Metrics,
) -> Result<Bytes, FetchError> {
    let start = u64::from(chunk) * CHUNK;
    let range = start..(start + CHUNK).min(loc.size);
    let expected = range.end - range.start;
    let began = std::time::Instant::now();
    let bytes = source.read_range(loc, range).await;
    metrics.fetch_seconds.observe(began.elapsed().as_secs_f64());
    let bytes = bytes?;
    if bytes.len() as u64 != expected {
        return Err(FetchError::Corrupt {
            content_id: loc.content_id.hex(),
            detail: format!(
                "expected {expected} bytes at chunk {chunk}, got {} (the object is shorter than the table's size_bytes)",
                bytes.len()
            ),
        });
    }
    Ok(bytes)
}

/// Checks a fetched chunk against its key's digest (the content id for a
/// one-chunk sample).
fn verify(loc: &SampleLoc, key: &ChunkKey, bytes: &[u8]) -> Result<(), FetchError> {
    if <[u8; 32]>::from(Sha256::digest(bytes)) != key.digest {
        let detail = if key.is_whole() {
            "the bytes do not hash to the content id".to_string()
        } else {
            format!(
                "chunk {} (bytes {}..) does not hash to its digest",
                key.chunk,
                u64::from(key.chunk) * CHUNK
            )
        };
        return Err(FetchError::Corrupt {
            content_id: loc.content_id.hex(),
            detail,
        });
    }
    Ok(())
}
