//! Where sample bytes and embeddings come from: the storage side of the
//! read path. [`crate::cache`] sits in front of it.
//!
//! [`Source`] takes a plain [`SampleLoc`] (content id, size, URI, Lance row),
//! never a view, so the cache and the filesystem core can be tested against
//! [`testing::MemorySource`] and [`testing::FaultySource`], the way
//! mountpoint-s3 tests against its mock and failure clients.
//!
//! [`LakeSource`], the real one:
//! - refuses a location that failed the trust rule ([`crate::trust`]);
//! - reads `file://` blobs with `pread` on the calling thread (a page-cache
//!   hit costs a copy, less than a hand-off to a blocking pool), opened
//!   with `openat2(RESOLVE_BENEATH)` below the trusted root, so a symlink
//!   inside the warehouse cannot lead out of it;
//! - reads other URIs with object-store range requests, one store per
//!   scheme and authority, built once;
//! - reads inline blobs and embeddings through Lance at the view's version.

use std::collections::HashMap;
use std::ops::Range;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::future::BoxFuture;
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, ObjectStoreExt, ObjectStoreScheme};
use url::Url;

pub use crate::view::SampleLoc;

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
    /// The row's URI points outside the warehouse and the allowed prefixes.
    #[error(
        "sample {content_id}: {uri} is outside the warehouse and the allowed prefixes (--allow-uri-prefix); not read"
    )]
    Untrusted {
        /// The sample.
        content_id: String,
        /// The URI the table gave.
        uri: String,
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

impl FetchError {
    fn backend(loc: &SampleLoc, detail: impl Into<String>) -> Self {
        Self::Backend {
            content_id: loc.content_id.hex(),
            detail: detail.into(),
        }
    }

    fn not_found(loc: &SampleLoc) -> Self {
        Self::NotFound {
            content_id: loc.content_id.hex(),
            uri: loc.uri.clone(),
        }
    }
}

/// Where the bytes and embeddings of samples come from.
pub trait Source: Send + Sync {
    /// Bytes `range` of the sample at `loc`; shorter only if the object is.
    fn read_range(
        &self,
        loc: &SampleLoc,
        range: Range<u64>,
    ) -> BoxFuture<'static, Result<Bytes, FetchError>>;
    /// Bytes `range` of the object `object` (a pack), read for the packed
    /// sample at `loc` and its neighbours in one request; errors name
    /// `loc`'s sample. Shorter only if the object is.
    fn read_object(
        &self,
        loc: &SampleLoc,
        object: &str,
        range: Range<u64>,
    ) -> BoxFuture<'static, Result<Bytes, FetchError>>;
    /// One ranged read of `object` (bytes `range`, as [`Self::read_object`])
    /// split into `pieces` (sorted, disjoint, inside `range`): each
    /// piece's bytes, shorter where the object ended early. The default
    /// slices one buffer; an object store's split copies each piece into
    /// a buffer of its own as the response arrives, so no buffer of the
    /// whole range is made and each cached piece holds only its bytes.
    fn read_pieces(
        &self,
        loc: &SampleLoc,
        object: &str,
        range: Range<u64>,
        pieces: Arc<[Range<u64>]>,
    ) -> BoxFuture<'static, Result<Vec<Bytes>, FetchError>> {
        read_split(
            self.read_object(loc, object, range.clone()),
            range.start,
            pieces,
        )
    }
    /// The embedding of the sample at `loc`.
    fn embedding(&self, loc: &SampleLoc) -> BoxFuture<'static, Result<Vec<f32>, FetchError>>;
    /// The local file holding the sample's bytes, opened, when there is one
    /// (for FUSE passthrough); `None` when the bytes are elsewhere.
    fn open_local(&self, _loc: &SampleLoc) -> Option<Result<std::fs::File, FetchError>> {
        None
    }
}

/// `pieces` (offsets in an object) of `whole`, the object's bytes from
/// `base`: slices of it, shorter where it ends early.
fn split(whole: &Bytes, base: u64, pieces: &[Range<u64>]) -> Vec<Bytes> {
    let len = whole.len() as u64;
    pieces
        .iter()
        .map(|p| {
            let from = p.start.saturating_sub(base).min(len) as usize;
            let to = p.end.saturating_sub(base).min(len) as usize;
            whole.slice(from..to.max(from))
        })
        .collect()
}

/// `read` (the object's bytes from `base`) split into `pieces`.
fn read_split(
    read: BoxFuture<'static, Result<Bytes, FetchError>>,
    base: u64,
    pieces: Arc<[Range<u64>]>,
) -> BoxFuture<'static, Result<Vec<Bytes>, FetchError>> {
    Box::pin(async move { Ok(split(&read.await?, base, &pieces)) })
}

/// An object store's error reading the sample at `loc`, its text redacted.
fn store_error(loc: &SampleLoc, e: object_store::Error) -> FetchError {
    match e {
        object_store::Error::NotFound { .. } => FetchError::not_found(loc),
        other => FetchError::backend(loc, crate::trust::redact(&other.to_string())),
    }
}

/// A trusted local directory, held open so files are opened beneath it.
#[derive(Debug)]
struct LocalRoot {
    path: PathBuf,
    dir: OwnedFd,
}

/// The real source: local files, object stores and Lance.
#[derive(Default)]
pub struct LakeSource {
    stores: Mutex<HashMap<String, Arc<dyn ObjectStore>>>,
    roots: Vec<LocalRoot>,
    storage: crate::storage::Storage,
}

impl LakeSource {
    /// A source that opens local files only beneath `roots` (the trusted
    /// local directories: the warehouse and allowed prefixes).
    /// Object stores are configured by `storage`.
    pub fn new(roots: &[PathBuf], storage: crate::storage::Storage) -> std::io::Result<Self> {
        let roots = roots
            .iter()
            .filter(|p| p.is_dir())
            .map(|p| {
                let dir = std::fs::File::open(p)?;
                Ok(LocalRoot {
                    path: p.clone(),
                    dir: OwnedFd::from(dir),
                })
            })
            .collect::<std::io::Result<_>>()?;
        Ok(Self {
            stores: Mutex::default(),
            roots,
            storage,
        })
    }

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
        let store = self
            .storage
            .object_store(url)
            .map_err(|e| crate::trust::redact(&format!("{e:#}")))?;
        stores.insert(key, store.clone());
        Ok((store, path))
    }

    /// Opens a local file for reading, beneath the trusted root it is in.
    fn open_beneath(&self, path: &Path) -> std::io::Result<std::fs::File> {
        let Some((root, rel)) = self
            .roots
            .iter()
            .find_map(|r| path.strip_prefix(&r.path).ok().map(|rel| (r, rel)))
        else {
            // No trusted local root (a source built without roots, in tests).
            return std::fs::File::open(path);
        };
        crate::files::open_beneath(&root.dir, rel)
    }

    fn read_local(&self, path: &Path, range: Range<u64>) -> std::io::Result<Bytes> {
        use std::os::unix::fs::FileExt;
        let file = self.open_beneath(path)?;
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
}

/// The local path behind a `file://` URI.
fn local_path(uri: &str) -> Option<PathBuf> {
    if !uri.starts_with("file:") {
        return None;
    }
    Url::parse(uri).ok()?.to_file_path().ok()
}

fn io_error(loc: &SampleLoc, path: &Path, e: std::io::Error) -> FetchError {
    match e.kind() {
        std::io::ErrorKind::NotFound => FetchError::not_found(loc),
        _ if e.raw_os_error() == Some(libc::EXDEV) || e.raw_os_error() == Some(libc::ELOOP) => {
            FetchError::Untrusted {
                content_id: loc.content_id.hex(),
                uri: format!("{} (leads outside its root through a link)", loc.uri),
            }
        }
        _ => FetchError::backend(loc, format!("{}: {e}", path.display())),
    }
}

fn untrusted(loc: &SampleLoc) -> FetchError {
    FetchError::Untrusted {
        content_id: loc.content_id.hex(),
        uri: loc.uri.clone(),
    }
}

impl Source for LakeSource {
    fn read_range(
        &self,
        loc: &SampleLoc,
        range: Range<u64>,
    ) -> BoxFuture<'static, Result<Bytes, FetchError>> {
        if !loc.trusted {
            return Box::pin(std::future::ready(Err(untrusted(loc))));
        }
        if let (object, Some((offset, length))) = crate::packs::split(&loc.uri) {
            let end = range.end.min(length);
            let start = range.start.min(end);
            return self.read_object(loc, object, offset + start..offset + end);
        }
        self.read_object(loc, &loc.uri.clone(), range)
    }

    fn read_object(
        &self,
        loc: &SampleLoc,
        object: &str,
        range: Range<u64>,
    ) -> BoxFuture<'static, Result<Bytes, FetchError>> {
        if !loc.trusted {
            return Box::pin(std::future::ready(Err(untrusted(loc))));
        }
        if let Some(path) = local_path(object) {
            let result = self
                .read_local(&path, range)
                .map_err(|e| io_error(loc, &path, e));
            return Box::pin(std::future::ready(result));
        }
        let loc = loc.clone();
        if loc.uri.starts_with("lance:") {
            return Box::pin(async move {
                let Some((ds, row)) = &loc.lance else {
                    return Err(FetchError::backend(
                        &loc,
                        "inline blob but the view has no Lance row for it",
                    ));
                };
                let blobs = ds
                    .take_blobs(&[*row], crate::vectors::BLOB_COLUMN)
                    .await
                    .map_err(|e| FetchError::backend(&loc, e.to_string()))?;
                let blob = blobs
                    .into_iter()
                    .next()
                    .flatten()
                    .ok_or_else(|| FetchError::backend(&loc, "Lance blob is null"))?;
                blob.read_range(range)
                    .await
                    .map_err(|e| FetchError::backend(&loc, e.to_string()))
            });
        }
        let store = Url::parse(object)
            .map_err(|e| format!("bad uri {object}: {e}"))
            .and_then(|u| self.store_for(&u));
        Box::pin(async move {
            let (store, path) = store.map_err(|e| FetchError::backend(&loc, e))?;
            store
                .get_range(&path, range)
                .await
                .map_err(|e| store_error(&loc, e))
        })
    }

    fn read_pieces(
        &self,
        loc: &SampleLoc,
        object: &str,
        range: Range<u64>,
        pieces: Arc<[Range<u64>]>,
    ) -> BoxFuture<'static, Result<Vec<Bytes>, FetchError>> {
        let url = if local_path(object).is_none() && !loc.uri.starts_with("lance:") {
            Url::parse(object).ok()
        } else {
            None
        };
        let Some(url) = url.filter(|_| loc.trusted) else {
            // Local files and Lance blobs: one buffer, sliced.
            return read_split(
                self.read_object(loc, object, range.clone()),
                range.start,
                pieces,
            );
        };
        let store = self.store_for(&url);
        let loc = loc.clone();
        Box::pin(async move {
            use futures::StreamExt;
            let fail = |e| store_error(&loc, e);
            let (store, path) = store.map_err(|e| FetchError::backend(&loc, e))?;
            let options = object_store::GetOptions {
                range: Some(object_store::GetRange::Bounded(range.clone())),
                ..Default::default()
            };
            let mut stream = store
                .get_opts(&path, options)
                .await
                .map_err(fail)?
                .into_stream();
            let mut out: Vec<Vec<u8>> = pieces
                .iter()
                .map(|p| Vec::with_capacity((p.end - p.start) as usize))
                .collect();
            // `pos`: the offset of the next byte to arrive; `k`: the first
            // piece not yet whole.
            let (mut pos, mut k) = (range.start, 0);
            while pos < range.end
                && k < pieces.len()
                && let Some(chunk) = stream.next().await
            {
                let chunk = chunk.map_err(fail)?;
                let end = pos + chunk.len() as u64;
                while let Some(p) = pieces.get(k).filter(|p| p.start < end) {
                    let (from, to) = (p.start.max(pos), p.end.min(end));
                    if from < to {
                        out[k]
                            .extend_from_slice(&chunk[(from - pos) as usize..(to - pos) as usize]);
                    }
                    if p.end > end {
                        break;
                    }
                    k += 1;
                }
                pos = end;
            }
            Ok(out.into_iter().map(Bytes::from).collect())
        })
    }

    fn embedding(&self, loc: &SampleLoc) -> BoxFuture<'static, Result<Vec<f32>, FetchError>> {
        let loc = loc.clone();
        Box::pin(async move {
            let Some((ds, row)) = &loc.lance else {
                return Err(FetchError::backend(&loc, "no Lance row for this sample"));
            };
            let mut v = crate::vectors::take_embeddings(ds, &[*row])
                .await
                .map_err(|e| FetchError::backend(&loc, format!("{e:#}")))?;
            v.pop()
                .ok_or_else(|| FetchError::backend(&loc, "Lance returned no row"))
        })
    }

    fn open_local(&self, loc: &SampleLoc) -> Option<Result<std::fs::File, FetchError>> {
        // A packed sample is a region of a file: not one the kernel can take.
        if crate::packs::split(&loc.uri).1.is_some() {
            return None;
        }
        let path = local_path(&loc.uri)?;
        if !loc.trusted {
            return Some(Err(untrusted(loc)));
        }
        Some(
            self.open_beneath(&path)
                .map_err(|e| io_error(loc, &path, e)),
        )
    }
}

pub mod testing {
    //! Sources for tests: bytes held in memory, and a wrapper that fails or
    //! delays some requests and counts them.

    use std::collections::HashMap;
    use std::ops::Range;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    use bytes::Bytes;
    use futures::future::BoxFuture;

    use super::{FetchError, SampleLoc, Source};
    use crate::content_id::ContentId;

    /// Sample bytes and embeddings by content id, and pack objects by URI.
    #[derive(Default)]
    pub struct MemorySource {
        /// Bytes by content id.
        pub bytes: HashMap<ContentId, Bytes>,
        /// Embeddings by content id.
        pub embeddings: HashMap<ContentId, Vec<f32>>,
        /// Objects (packs) by URI, for samples whose `uri` names a range.
        pub objects: HashMap<String, Bytes>,
    }

    fn slice(b: &Bytes, range: Range<u64>) -> Bytes {
        let end = (range.end as usize).min(b.len());
        let start = (range.start as usize).min(end);
        b.slice(start..end)
    }

    impl Source for MemorySource {
        fn read_range(
            &self,
            loc: &SampleLoc,
            range: Range<u64>,
        ) -> BoxFuture<'static, Result<Bytes, FetchError>> {
            if let (object, Some((offset, length))) = crate::packs::split(&loc.uri) {
                let end = range.end.min(length);
                let start = range.start.min(end);
                return self.read_object(loc, object, offset + start..offset + end);
            }
            let result = match self.bytes.get(&loc.content_id) {
                Some(b) => Ok(slice(b, range)),
                None => Err(FetchError::not_found(loc)),
            };
            Box::pin(std::future::ready(result))
        }

        fn read_object(
            &self,
            loc: &SampleLoc,
            object: &str,
            range: Range<u64>,
        ) -> BoxFuture<'static, Result<Bytes, FetchError>> {
            let result = match self.objects.get(object) {
                Some(b) => Ok(slice(b, range)),
                None => Err(FetchError::not_found(loc)),
            };
            Box::pin(std::future::ready(result))
        }

        fn embedding(&self, loc: &SampleLoc) -> BoxFuture<'static, Result<Vec<f32>, FetchError>> {
            let result = self
                .embeddings
                .get(&loc.content_id)
                .cloned()
                .ok_or_else(|| FetchError::backend(loc, "no embedding"));
            Box::pin(std::future::ready(result))
        }
    }

    /// Wraps a source: counts requests, delays each by `delay`, and fails
    /// every `fail_every`th one (0 = never) with a backend error.
    pub struct FaultySource {
        inner: Arc<dyn Source>,
        /// Delay before each request completes.
        pub delay: Duration,
        /// Fail one request in this many (0: none).
        pub fail_every: u64,
        requests: AtomicU64,
    }

    impl FaultySource {
        /// Wraps `inner` with no delay and no failures.
        pub fn new(inner: Arc<dyn Source>) -> Self {
            Self {
                inner,
                delay: Duration::ZERO,
                fail_every: 0,
                requests: AtomicU64::new(0),
            }
        }

        /// Requests seen so far (reads and embeddings).
        pub fn requests(&self) -> u64 {
            self.requests.load(Ordering::SeqCst)
        }

        fn next_fails(&self) -> bool {
            let n = self.requests.fetch_add(1, Ordering::SeqCst) + 1;
            self.fail_every > 0 && n.is_multiple_of(self.fail_every)
        }
    }

    impl FaultySource {
        /// `inner`, delayed and, if this request is one to fail, failed.
        fn wrap<T: Send + 'static>(
            &self,
            loc: &SampleLoc,
            inner: BoxFuture<'static, Result<T, FetchError>>,
        ) -> BoxFuture<'static, Result<T, FetchError>> {
            let fail = self.next_fails();
            let delay = self.delay;
            let loc = loc.clone();
            Box::pin(async move {
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                if fail {
                    return Err(FetchError::backend(&loc, "injected failure"));
                }
                inner.await
            })
        }
    }

    impl Source for FaultySource {
        fn read_range(
            &self,
            loc: &SampleLoc,
            range: Range<u64>,
        ) -> BoxFuture<'static, Result<Bytes, FetchError>> {
            // A packed sample's read is one object read: counted there.
            if let (object, Some((offset, length))) = crate::packs::split(&loc.uri) {
                let end = range.end.min(length);
                let start = range.start.min(end);
                return self.read_object(loc, object, offset + start..offset + end);
            }
            self.wrap(loc, self.inner.read_range(loc, range))
        }

        fn read_object(
            &self,
            loc: &SampleLoc,
            object: &str,
            range: Range<u64>,
        ) -> BoxFuture<'static, Result<Bytes, FetchError>> {
            self.wrap(loc, self.inner.read_object(loc, object, range))
        }

        fn embedding(&self, loc: &SampleLoc) -> BoxFuture<'static, Result<Vec<f32>, FetchError>> {
            self.wrap(loc, self.inner.embedding(loc))
        }
    }
}
