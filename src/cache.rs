//! The read path's cache: sample bytes in 1 MiB chunks in a moka cache
//! weighed in bytes, so a cache of N bytes holds about N bytes whatever the
//! sample sizes, and a 4 GB video does not have to fit in memory to be
//! read. A miss fetches exactly one chunk; concurrent readers of the same
//! chunk wait for that one fetch (`try_get_with`). Embedding sidecars are
//! cached the same way, one entry each.
//!
//! Every byte that enters the cache is verified before any of it is served,
//! against the content id, the only identity of a sample's bytes:
//! - a sample that fits in one chunk against its content id;
//! - a larger sample is fetched whole on its first read and checked
//!   against its content id; the digests of its chunks are then kept in
//!   memory (32 bytes per MiB, by content id, so every view shares them)
//!   and later reads of any chunk are verified alone against them. The
//!   table's `chunk_sha256` is untrusted like the rest of the row (a row
//!   may carry digests of other bytes than its content id names): it is
//!   compared with the learned digests, and a mismatch is logged, never
//!   believed.
//!
//! Where bytes come from is [`crate::source::Source`].

use std::sync::Arc;

use bytes::Bytes;
use moka::future::Cache;
use sha2::{Digest, Sha256};

use crate::content_id::{CHUNK, ContentId};
use crate::metrics::Metrics;
use crate::source::{FetchError, SampleLoc, Source};
use crate::view::View;

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
struct ChunkKey {
    view: u32,
    sample: u32,
    /// `u32::MAX` marks the embedding sidecar.
    chunk: u32,
}

/// Digests learned by reading whole samples, bounded in bytes.
const LEARNED_DIGESTS_BYTES: u64 = 64 << 20;
/// Samples up to this size keep the chunks read while learning their
/// digests (and put them in the cache once verified); larger ones are read
/// again chunk by chunk.
const KEEP_WHILE_LEARNING: u64 = 64 << 20;

/// The byte-weighed cache in front of a [`Source`].
pub struct ChunkCache {
    cache: Cache<ChunkKey, Bytes>,
    learned: Cache<ContentId, Arc<[[u8; 32]]>>,
    source: Arc<dyn Source>,
    metrics: Arc<Metrics>,
}

impl ChunkCache {
    /// A cache holding at most `capacity` bytes, with counters of its own.
    pub fn new(capacity: u64, source: Arc<dyn Source>) -> Self {
        Self::with_metrics(capacity, source, Arc::new(Metrics::new()))
    }

    /// A cache holding at most `capacity` bytes, counting into `metrics`.
    pub fn with_metrics(capacity: u64, source: Arc<dyn Source>, metrics: Arc<Metrics>) -> Self {
        let evictions = metrics.cache_evictions.clone();
        let cache = Cache::builder()
            .max_capacity(capacity)
            .weigher(|_k: &ChunkKey, v: &Bytes| u32::try_from(v.len()).unwrap_or(u32::MAX))
            .eviction_listener(move |_k, _v, cause| {
                if cause == moka::notification::RemovalCause::Size {
                    evictions.inc();
                }
            })
            .build();
        let watched = cache.clone();
        metrics.watch_cache_bytes(move || watched.weighted_size());
        let learned = Cache::builder()
            .max_capacity(LEARNED_DIGESTS_BYTES)
            .weigher(|_k: &ContentId, v: &Arc<[[u8; 32]]>| (v.len() * 32 + 64) as u32)
            .build();
        Self {
            cache,
            learned,
            source,
            metrics,
        }
    }

    /// The counters this cache (and the mount around it) updates.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Bytes the cache may hold.
    pub fn capacity(&self) -> u64 {
        self.cache.policy().max_capacity().unwrap_or(u64::MAX)
    }

    /// Whether chunk `chunk` of sample `i` of view `view_no` is cached.
    pub fn has_chunk(&self, view_no: u32, i: usize, chunk: u32) -> bool {
        self.cache.contains_key(&ChunkKey {
            view: view_no,
            sample: i as u32,
            chunk,
        })
    }

    /// Bytes held, after applying pending evictions.
    pub async fn resident_bytes(&self) -> u64 {
        self.cache.run_pending_tasks().await;
        self.cache.weighted_size()
    }

    /// The source behind the cache.
    pub fn source(&self) -> &Arc<dyn Source> {
        &self.source
    }

    /// Chunk `chunk` of sample `i` of view number `view_no`, verified.
    pub async fn sample_chunk(
        &self,
        view_no: u32,
        view: &Arc<View>,
        i: usize,
        chunk: u32,
    ) -> Result<Bytes, Arc<FetchError>> {
        let key = ChunkKey {
            view: view_no,
            sample: i as u32,
            chunk,
        };
        if let Some(hit) = self.cache.get(&key).await {
            self.metrics.cache_hits.inc();
            return Ok(hit);
        }
        self.metrics.cache_misses.inc();
        let loc = view.location(i);
        let digests = if loc.size > CHUNK {
            Some(self.learn(view_no, i, &loc).await?)
        } else {
            None
        };
        let source = self.source.clone();
        let metrics = self.metrics.clone();
        self.cache
            .try_get_with(key, async move {
                let fetched = async {
                    let bytes = fetch_chunk(source.as_ref(), &loc, chunk, &metrics).await?;
                    verify(&loc, chunk, &bytes, digests.as_deref())?;
                    Ok(bytes)
                };
                counted(&metrics, fetched.await)
            })
            .await
    }

    /// The digests of every chunk of a large sample: fetched whole once,
    /// checked against its content id (then compared with what the table
    /// says, which is only logged when it differs).
    async fn learn(
        &self,
        view_no: u32,
        i: usize,
        loc: &SampleLoc,
    ) -> Result<Arc<[[u8; 32]]>, Arc<FetchError>> {
        let source = self.source.clone();
        let cache = self.cache.clone();
        let metrics = self.metrics.clone();
        let loc = loc.clone();
        self.learned
            .try_get_with(loc.content_id, async move {
                let learned = async {
                    let chunks = loc.size.div_ceil(CHUNK) as u32;
                    let mut whole = Sha256::new();
                    let mut digests = Vec::with_capacity(chunks as usize);
                    // Kept to fill the cache once the whole sample checks out
                    // (never before: nothing unverified is served), if small.
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
                    if let Some(recorded) = &loc.chunk_digests
                        && recorded.as_ref() != digests.as_slice()
                    {
                        tracing::warn!(
                            "sample {}: the table's chunk_sha256 does not describe the bytes of its content id; \
                             serving the verified bytes",
                            loc.content_id
                        );
                    }
                    for (c, bytes) in kept.into_iter().enumerate() {
                        let key = ChunkKey {
                            view: view_no,
                            sample: i as u32,
                            chunk: c as u32,
                        };
                        cache.insert(key, bytes).await;
                    }
                    Ok(Arc::from(digests))
                };
                counted(&metrics, learned.await)
            })
            .await
    }

    /// The `.npy` bytes of sample `i`'s embedding.
    pub async fn embedding_npy(
        &self,
        view_no: u32,
        view: &Arc<View>,
        i: usize,
    ) -> Result<Bytes, Arc<FetchError>> {
        let key = ChunkKey {
            view: view_no,
            sample: i as u32,
            chunk: u32::MAX,
        };
        if let Some(hit) = self.cache.get(&key).await {
            self.metrics.cache_hits.inc();
            return Ok(hit);
        }
        self.metrics.cache_misses.inc();
        let fetch = self.source.embedding(&view.location(i));
        let metrics = self.metrics.clone();
        self.cache
            .try_get_with(key, async move {
                let start = std::time::Instant::now();
                let v = counted(&metrics, fetch.await);
                metrics.fetch_seconds.observe(start.elapsed().as_secs_f64());
                Ok(Bytes::from(crate::npy::write_vector(&v?)))
            })
            .await
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

/// Checks a fetched chunk: against the content id when the sample fits in
/// one chunk, else against its digest.
fn verify(
    loc: &SampleLoc,
    chunk: u32,
    bytes: &[u8],
    digests: Option<&[[u8; 32]]>,
) -> Result<(), FetchError> {
    let corrupt = |detail: String| FetchError::Corrupt {
        content_id: loc.content_id.hex(),
        detail,
    };
    if loc.size <= CHUNK {
        if !loc.content_id.matches(bytes) {
            return Err(corrupt("the bytes do not hash to the content id".into()));
        }
        return Ok(());
    }
    let expected = loc.size.div_ceil(CHUNK) as usize;
    let Some(digests) = digests.filter(|d| d.len() == expected) else {
        return Err(corrupt(format!(
            "the table records chunk digests for {} chunks, the sample has {expected}",
            digests.map_or(0, <[_]>::len)
        )));
    };
    if Sha256::digest(bytes).as_slice() != digests[chunk as usize] {
        return Err(corrupt(format!(
            "chunk {chunk} (bytes {}..) does not hash to its recorded digest",
            u64::from(chunk) * CHUNK
        )));
    }
    Ok(())
}
