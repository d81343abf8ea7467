//! The chunk cache's coalesced fetch under a deterministic scheduler:
//! shuttle runs the readers as tasks and explores thousands of orders of
//! their steps (the source yields between its start and its answer, so a
//! reader can arrive before, during or after a fetch, and its result can be
//! taken before or after another reader's), as mountpoint-s3 tests its
//! prefetcher. What must hold in every order:
//! - one fetch of a chunk at a time: readers of a chunk being fetched wait
//!   for that fetch, and one that arrives after it ends hits the cache;
//! - every reader gets the right bytes or the fetch's error, never other
//!   bytes, and never waits forever (shuttle reports a deadlock);
//! - a failed fetch is forgotten: nothing is left registered, and the next
//!   reader fetches again.
//!
//! A failing order prints a schedule that `shuttle::replay` reproduces.

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;
use lakemount::cache::ChunkCache;
use lakemount::content_id::ContentId;
use lakemount::source::{FetchError, SampleLoc, Source};
use shuttle::sync::atomic::{AtomicUsize, Ordering};

/// How many scheduling orders each test explores.
const ITERATIONS: usize = 3000;

/// A source that counts its reads, tracks how many are in flight at once,
/// yields to the scheduler in the middle of each, and fails the first
/// `fail_first` reads.
struct Scripted {
    bytes: Bytes,
    fail_first: usize,
    calls: AtomicUsize,
    in_flight: AtomicUsize,
    most_in_flight: AtomicUsize,
}

impl Scripted {
    fn new(bytes: &[u8], fail_first: usize) -> Arc<Self> {
        Arc::new(Self {
            bytes: Bytes::copy_from_slice(bytes),
            fail_first,
            calls: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            most_in_flight: AtomicUsize::new(0),
        })
    }
}

/// The `Source` the cache holds: a handle on the shared script.
struct Handle(Arc<Scripted>);

impl Source for Handle {
    fn read_range(
        &self,
        loc: &SampleLoc,
        range: Range<u64>,
    ) -> BoxFuture<'static, Result<Bytes, FetchError>> {
        let s = self.0.clone();
        let id = loc.content_id.hex();
        Box::pin(async move {
            let call = s.calls.fetch_add(1, Ordering::SeqCst);
            let now = s.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            s.most_in_flight.fetch_max(now, Ordering::SeqCst);
            for _ in 0..3 {
                shuttle::future::yield_now().await;
            }
            s.in_flight.fetch_sub(1, Ordering::SeqCst);
            if call < s.fail_first {
                return Err(FetchError::Backend {
                    content_id: id,
                    detail: "injected failure".into(),
                });
            }
            Ok(s.bytes.slice(range.start as usize..range.end as usize))
        })
    }

    fn read_object(
        &self,
        loc: &SampleLoc,
        _object: &str,
        _range: Range<u64>,
    ) -> BoxFuture<'static, Result<Bytes, FetchError>> {
        let id = loc.content_id.hex();
        Box::pin(async move {
            Err(FetchError::Backend {
                content_id: id,
                detail: "no packs here".into(),
            })
        })
    }

    fn embedding(&self, loc: &SampleLoc) -> BoxFuture<'static, Result<Vec<f32>, FetchError>> {
        let id = loc.content_id.hex();
        Box::pin(async move {
            Err(FetchError::Backend {
                content_id: id,
                detail: "no embeddings here".into(),
            })
        })
    }
}

fn sample(bytes: &[u8]) -> SampleLoc {
    SampleLoc {
        content_id: ContentId::of(bytes),
        size: bytes.len() as u64,
        uri: "mem://sample".into(),
        lance: None,
        chunk_digests: None,
        trusted: true,
    }
}

/// `readers` tasks read chunk 0 of one sample at once; each returns what it got.
fn read_together(
    cache: &Arc<ChunkCache>,
    loc: &SampleLoc,
    readers: usize,
) -> Vec<Result<Bytes, String>> {
    let tasks: Vec<_> = (0..readers)
        .map(|_| {
            let (cache, loc) = (cache.clone(), loc.clone());
            shuttle::future::spawn(async move {
                cache.sample_chunk(&loc, 0).await.map_err(|e| e.to_string())
            })
        })
        .collect();
    shuttle::future::block_on(async move {
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.expect("a reader task panicked"));
        }
        out
    })
}

/// A cache over a fresh script serving `bytes`, and the sample's location.
fn cache_over(bytes: &[u8], fail_first: usize) -> (Arc<Scripted>, Arc<ChunkCache>, SampleLoc) {
    let script = Scripted::new(bytes, fail_first);
    let cache = Arc::new(ChunkCache::new(1 << 20, Arc::new(Handle(script.clone()))));
    (script, cache, sample(bytes))
}

#[test]
fn readers_of_one_chunk_share_one_fetch() {
    shuttle::check_random(
        || {
            let bytes = b"the bytes of one small sample".as_slice();
            let (script, cache, loc) = cache_over(bytes, 0);
            for got in read_together(&cache, &loc, 4) {
                assert_eq!(got.as_deref(), Ok(bytes));
            }
            assert_eq!(
                script.calls.load(Ordering::SeqCst),
                1,
                "fetched more than once"
            );
            assert!(cache.has_or_fetching(&loc));
        },
        ITERATIONS,
    );
}

#[test]
fn a_failed_fetch_is_shared_then_forgotten_and_never_doubled() {
    shuttle::check_random(
        || {
            let bytes = b"another sample, whose first read fails".as_slice();
            let (script, cache, loc) = cache_over(bytes, 1);
            let results = read_together(&cache, &loc, 4);
            let failed = results.iter().filter(|r| r.is_err()).count();
            for got in &results {
                match got {
                    Ok(b) => assert_eq!(&b[..], bytes),
                    Err(e) => assert!(e.contains("injected failure"), "{e}"),
                }
            }
            assert!(
                failed >= 1,
                "the first fetch fails, and someone waited for it"
            );
            assert_eq!(
                script.most_in_flight.load(Ordering::SeqCst),
                1,
                "two fetches of one chunk at once"
            );
            let calls = script.calls.load(Ordering::SeqCst);
            assert!(calls <= 2, "{calls} fetches for 4 readers and one failure");
            // Nothing failed is kept: the next reader fetches (again, if
            // nobody did after the failure) and gets the bytes.
            if calls == 1 {
                assert!(
                    !cache.has_or_fetching(&loc),
                    "a failed fetch stayed registered"
                );
            }
            let again = read_together(&cache, &loc, 1);
            assert_eq!(again[0].as_deref(), Ok(bytes));
            assert_eq!(script.calls.load(Ordering::SeqCst), 2);
        },
        ITERATIONS,
    );
}
