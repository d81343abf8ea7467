//! The read path's cache and the sources behind it.
//!
//! Sample bytes are cached in 1 MiB chunks in a moka cache weighed in bytes,
//! so a cache of N bytes holds about N bytes whatever the sample sizes, and
//! a 4 GB video does not have to fit in memory to be read. A miss fetches
//! exactly one chunk; concurrent readers of the same chunk wait for that one
//! fetch (`try_get_with`). Embedding sidecars are cached the same way, one
//! entry each.
//!
//! Where bytes come from is the [`Source`] trait: the real one reads the
//! blob store (or any object-store URI) with range requests and inline blobs
//! through Lance's blob API at the view's pinned version; tests swap in a
//! failing one. `file://` blobs are read with `pread` on the calling thread:
//! together with the FUSE adapter's poll-once read, a first touch of a local
//! sample never leaves the FUSE thread.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::future::BoxFuture;
use moka::future::Cache;
use object_store::ObjectStore;
use object_store::path::Path as StorePath;
use object_store::{ObjectStoreExt, ObjectStoreScheme};
use sha2::{Digest, Sha256};
use url::Url;

use crate::view::View;

/// Size of one cached piece of a sample.
pub const CHUNK: u64 = 1 << 20;

/// Why bytes could not be fetched. Every variant names the sample.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The object behind the URI is gone.
    #[error("sample {content_id}: {uri} not found")]
    NotFound {
        /// The sample.
        content_id: String,
        /// Where it should have been.
        uri: String,
    },
    /// The bytes do not match what the table recorded.
    #[error("sample {content_id}: corrupt: {detail}")]
    Corrupt {
        /// The sample.
        content_id: String,
        /// What did not match.
        detail: String,
    },
    /// The storage backend failed.
    #[error("sample {content_id}: {detail}")]
    Backend {
        /// The sample.
        content_id: String,
        /// The backend's error.
        detail: String,
    },
}

/// Where the bytes and embeddings of a view's samples come from.
pub trait Source: Send + Sync {
    /// Bytes `range` of sample `i` of `view`.
    fn read_range(
        &self,
        view: Arc<View>,
        i: usize,
        range: Range<u64>,
    ) -> BoxFuture<'static, Result<Bytes, FetchError>>;
    /// The embedding of sample `i` of `view`.
    fn embedding(
        &self,
        view: Arc<View>,
        i: usize,
    ) -> BoxFuture<'static, Result<Vec<f32>, FetchError>>;
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
struct ChunkKey {
    view: u32,
    sample: u32,
    /// `u32::MAX` marks the embedding sidecar.
    chunk: u32,
}

/// The byte-weighed cache in front of a [`Source`].
pub struct ChunkCache {
    cache: Cache<ChunkKey, Bytes>,
    source: Arc<dyn Source>,
}

impl ChunkCache {
    /// A cache holding at most `capacity` bytes.
    pub fn new(capacity: u64, source: Arc<dyn Source>) -> Self {
        let cache = Cache::builder()
            .max_capacity(capacity)
            .weigher(|_k: &ChunkKey, v: &Bytes| u32::try_from(v.len()).unwrap_or(u32::MAX))
            .build();
        Self { cache, source }
    }

    /// Chunk `chunk` of sample `i` of view number `view_no`.
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
        let size = view.samples[i].size;
        let start = u64::from(chunk) * CHUNK;
        let range = start..(start + CHUNK).min(size);
        let source = self.source.clone();
        let view = view.clone();
        self.cache
            .try_get_with(key, async move {
                let expected = range.end - range.start;
                let bytes = source.read_range(view.clone(), i, range).await?;
                let s = &view.samples[i];
                if bytes.len() as u64 != expected {
                    return Err(FetchError::Corrupt {
                        content_id: view.content_id(i),
                        detail: format!(
                            "expected {expected} bytes at chunk {chunk}, got {}",
                            bytes.len()
                        ),
                    });
                }
                // A sample that fits in one chunk is checked against its content id.
                if chunk == 0
                    && s.size <= CHUNK
                    && Sha256::digest(&bytes).as_slice() != s.content_id
                {
                    return Err(FetchError::Corrupt {
                        content_id: view.content_id(i),
                        detail: "bytes do not hash to the content id".into(),
                    });
                }
                Ok(bytes)
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
        let source = self.source.clone();
        let view = view.clone();
        self.cache
            .try_get_with(key, async move {
                let v = source.embedding(view, i).await?;
                Ok(Bytes::from(crate::npy::write_vector(&v)))
            })
            .await
    }
}

/// The real source: object-store range reads and Lance blobs/embeddings.
#[derive(Default)]
pub struct LakeSource {
    stores: Mutex<HashMap<String, Arc<dyn ObjectStore>>>,
}

impl LakeSource {
    /// The store serving `url` (one per scheme and authority, built once)
    /// and the object's path in it.
    fn store_for(&self, url: &Url) -> Result<(Arc<dyn ObjectStore>, StorePath), String> {
        let (_, path) = ObjectStoreScheme::parse(url).map_err(|e| e.to_string())?;
        let key = format!("{}://{}", url.scheme(), url.authority());
        let mut stores = self
            .stores
            .lock()
            .map_err(|_| "store map poisoned".to_string())?;
        if let Some(store) = stores.get(&key) {
            return Ok((store.clone(), path));
        }
        let (store, _) = object_store::parse_url(url).map_err(|e| e.to_string())?;
        let store: Arc<dyn ObjectStore> = Arc::from(store);
        stores.insert(key, store.clone());
        Ok((store, path))
    }
}

/// The local path behind a `file://` URI.
fn local_path(uri: &str) -> Option<std::path::PathBuf> {
    if !uri.starts_with("file:") {
        return None;
    }
    Url::parse(uri).ok()?.to_file_path().ok()
}

/// Bytes `range` of a local file; shorter only if the file is.
fn read_local(path: &std::path::Path, range: Range<u64>) -> std::io::Result<Bytes> {
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::open(path)?;
    let mut buf = vec![0u8; (range.end - range.start) as usize];
    let mut filled = 0;
    while filled < buf.len() {
        match file.read_at(&mut buf[filled..], range.start + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(filled);
    Ok(Bytes::from(buf))
}

impl Source for LakeSource {
    fn read_range(
        &self,
        view: Arc<View>,
        i: usize,
        range: Range<u64>,
    ) -> BoxFuture<'static, Result<Bytes, FetchError>> {
        let uri = view.uri(i).into_owned();
        if let Some(path) = local_path(&uri) {
            // A blob on a local disk: read it on the calling thread. A page
            // cache hit costs a copy, which is less than handing the request
            // to object_store's blocking pool and back.
            let result = read_local(&path, range).map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => FetchError::NotFound {
                    content_id: view.content_id(i),
                    uri,
                },
                _ => FetchError::Backend {
                    content_id: view.content_id(i),
                    detail: format!("{}: {e}", path.display()),
                },
            });
            return Box::pin(std::future::ready(result));
        }
        let store = if uri.starts_with("lance:") {
            None
        } else {
            Some(
                Url::parse(&uri)
                    .map_err(|e| format!("bad uri {uri}: {e}"))
                    .and_then(|u| self.store_for(&u)),
            )
        };
        Box::pin(async move {
            let s = &view.samples[i];
            let backend = |detail: String| FetchError::Backend {
                content_id: view.content_id(i),
                detail,
            };
            let Some(store) = store else {
                let (Some(lance), Some(row)) = (&view.lance, s.lance_row) else {
                    return Err(backend(
                        "inline blob but the view has no Lance row for it".into(),
                    ));
                };
                let blobs = lance
                    .dataset
                    .take_blobs(&[row], crate::vectors::BLOB_COLUMN)
                    .await
                    .map_err(|e| backend(e.to_string()))?;
                let blob = blobs
                    .into_iter()
                    .next()
                    .flatten()
                    .ok_or_else(|| backend("Lance blob is null".into()))?;
                return blob
                    .read_range(range)
                    .await
                    .map_err(|e| backend(e.to_string()));
            };
            let (store, path) = store.map_err(backend)?;
            store.get_range(&path, range).await.map_err(|e| match e {
                object_store::Error::NotFound { .. } => FetchError::NotFound {
                    content_id: view.content_id(i),
                    uri: uri.clone(),
                },
                other => backend(other.to_string()),
            })
        })
    }

    fn embedding(
        &self,
        view: Arc<View>,
        i: usize,
    ) -> BoxFuture<'static, Result<Vec<f32>, FetchError>> {
        Box::pin(async move {
            let s = &view.samples[i];
            let backend = |detail: String| FetchError::Backend {
                content_id: view.content_id(i),
                detail,
            };
            let (Some(lance), Some(row)) = (&view.lance, s.lance_row) else {
                return Err(backend("no Lance row for this sample".into()));
            };
            let mut v = crate::vectors::take_embeddings(&lance.dataset, &[row])
                .await
                .map_err(|e| backend(format!("{e:#}")))?;
            v.pop()
                .ok_or_else(|| backend("Lance returned no row".into()))
        })
    }
}
