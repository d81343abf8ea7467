//! The filesystem core and the chunk cache without FUSE: a real view of a
//! real warehouse, served from sources that hold bytes in memory, fail or
//! count requests (the `source::testing` doubles).

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use lakemount::cache::disk::{DiskConfig, DiskStore};
use lakemount::cache::{ChunkCache, Tiers};
use lakemount::content_id::{CHUNK, ContentId};
use lakemount::fs::{FsError, OpenMode, Opened, ROOT, ViewFs};
use lakemount::source::testing::{FaultySource, MemorySource};
use lakemount::source::{FetchError, Source};
use lakemount::view::View;

struct Fixture {
    _tmp: tempfile::TempDir,
    view: Arc<View>,
    /// content id -> bytes
    bytes: HashMap<ContentId, Vec<u8>>,
}

/// A warehouse with nine images and a 2.5 MB sample, resolved with the default spec.
async fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let wh = open(&tmp.path().join("wh")).await;
    let in_dir = tmp.path().join("in");
    let bytes = ingest_images_and_big(&in_dir, &wh, &[("cat", 6), ("dog", 3)], 2_500_000).await;
    let spec = lakemount::spec::parse(
        "name: v\n",
        std::path::Path::new("v.yaml"),
        &table_name(&tmp.path().join("wh")),
    )
    .unwrap();
    let view = Arc::new(resolve(&wh, &spec).await.unwrap());
    Fixture {
        _tmp: tmp,
        view,
        bytes,
    }
}

fn memory(bytes: &HashMap<ContentId, Vec<u8>>) -> MemorySource {
    let mut m = MemorySource::default();
    for (id, b) in bytes {
        m.bytes.insert(*id, Bytes::from(b.clone()));
        m.embeddings.insert(*id, vec![0.5; 256]);
    }
    m
}

fn fs_with(view: &Arc<View>, source: Arc<dyn Source>, capacity: u64) -> ViewFs {
    ViewFs::new(vec![view.clone()], ChunkCache::new(capacity, source), 0)
}

/// Which stores a cache is made of, for the tests that run against each.
#[derive(Debug, Clone, Copy)]
enum Stores {
    Memory,
    Disk,
    Tiered,
}

const STORES: [Stores; 3] = [Stores::Memory, Stores::Disk, Stores::Tiered];

/// A cache of `which` stores (a disk tier in `dir`) over `source`.
fn cache_on(which: Stores, dir: &std::path::Path, source: Arc<dyn Source>) -> ChunkCache {
    let metrics = Arc::new(lakemount::metrics::Metrics::new());
    let disk = || {
        Some(
            DiskStore::open(
                &DiskConfig {
                    // The host's free space is not what these tests are
                    // about: at the default 5% a nearly full machine turns
                    // the disk tier's writes off and every check here fails.
                    min_free: 0.0,
                    ..DiskConfig::new(dir.join("cache"))
                },
                &metrics,
            )
            .unwrap_or_else(|e| panic!("{e:#}")),
        )
    };
    let tiers = match which {
        Stores::Memory => Tiers {
            ram: Some(ChunkCache::ram_store(64 << 20, &metrics)),
            disk: None,
        },
        Stores::Disk => Tiers {
            ram: None,
            disk: disk(),
        },
        Stores::Tiered => Tiers {
            ram: Some(ChunkCache::ram_store(2 << 20, &metrics)),
            disk: disk(),
        },
    };
    ChunkCache::from_tiers(tiers, 64 << 20, source, metrics.clone())
}

/// Inode of `path` (relative to the mount root) by lookups.
fn ino(fs: &ViewFs, path: &str) -> u64 {
    path.split('/')
        .fold(ROOT, |parent, name| fs.lookup(parent, name).unwrap().ino)
}

/// (path, content id) of the big sample.
fn big_path(f: &Fixture) -> (String, ContentId) {
    let i = (0..f.view.len())
        .find(|&i| f.view.sample(i).size > CHUNK)
        .unwrap();
    (format!("v/{}", f.view.path(i)), f.view.sample(i).content_id)
}

#[tokio::test]
async fn reads_across_chunk_edges_are_exact() {
    let f = fixture().await;
    for which in STORES {
        let dir = tempfile::tempdir().unwrap();
        let fs = ViewFs::new(
            vec![f.view.clone()],
            cache_on(which, dir.path(), Arc::new(memory(&f.bytes))),
            0,
        );
        // Twice: filled from the source, then answered by the store.
        for _ in 0..2 {
            reads_across_chunk_edges(&f, &fs).await;
            if let Some(d) = fs.cache().disk() {
                d.flush();
            }
        }
    }
}

async fn reads_across_chunk_edges(f: &Fixture, fs: &ViewFs) {
    let (path, id) = big_path(f);
    let original = &f.bytes[&id];
    let ino = ino(fs, &path);
    let c = CHUNK as usize;
    for (offset, size) in [
        (0, 10),
        (c - 1, 2),
        (c - 100, 200),
        (c, 1),
        (2 * c - 1, 1),
        (2 * c - 10, 300_000),
        (0, 2_500_000),
        (2_499_990, 100),
        (2_500_000, 10),
    ] {
        let got = fs.read(ino, offset as u64, size as u32).await.unwrap();
        let end = (offset + size).min(original.len());
        let want: &[u8] = if offset >= original.len() {
            &[]
        } else {
            &original[offset..end]
        };
        assert_eq!(&got[..], want, "offset {offset} size {size}");
    }
}

#[tokio::test]
async fn concurrent_readers_of_a_chunk_share_one_fetch() {
    let f = fixture().await;
    for which in STORES {
        let dir = tempfile::tempdir().unwrap();
        let mut faulty = FaultySource::new(Arc::new(memory(&f.bytes)));
        faulty.delay = Duration::from_millis(100);
        let faulty = Arc::new(faulty);
        let fs = Arc::new(ViewFs::new(
            vec![f.view.clone()],
            cache_on(which, dir.path(), faulty.clone()),
            0,
        ));
        concurrent_readers(&f, fs, &faulty).await;
    }
}

async fn concurrent_readers(f: &Fixture, fs: Arc<ViewFs>, faulty: &FaultySource) {
    // 16 readers of a one-chunk sample: one fetch.
    let small = (0..f.view.len())
        .find(|&i| f.view.sample(i).size < CHUNK)
        .unwrap();
    let small = ino(&fs, &format!("v/{}", f.view.path(small)));
    let readers: Vec<_> = (0..16)
        .map(|_| {
            let fs = fs.clone();
            tokio::spawn(async move { fs.read(small, 0, 4096).await.unwrap() })
        })
        .collect();
    for r in readers {
        r.await.unwrap();
    }
    assert_eq!(
        faulty.requests(),
        1,
        "16 readers of a small sample, one fetch"
    );
    let (path, _) = big_path(f);
    let ino = ino(&fs, &path);
    let readers: Vec<_> = (0..16)
        .map(|k| {
            let fs = fs.clone();
            tokio::spawn(async move { fs.read(ino, 1000 + k * 10, 4096).await.unwrap() })
        })
        .collect();
    for r in readers {
        r.await.unwrap();
    }
    // A large sample is fetched whole once (three chunk requests) and
    // checked against its content id before any byte is served: 16
    // readers share that one fetch.
    assert_eq!(faulty.requests(), 4, "16 readers of one chunk, one fetch");
    // Its chunks were kept: a read over all three fetches nothing.
    fs.read(ino, 0, 2_500_000).await.unwrap();
    assert_eq!(faulty.requests(), 4);
    // Everything is cached now.
    fs.read(ino, 0, 2_500_000).await.unwrap();
    assert_eq!(faulty.requests(), 4);
}

#[tokio::test]
async fn a_disk_tier_outlives_its_process_and_serves_without_fetching() {
    let f = fixture().await;
    let dir = tempfile::tempdir().unwrap();
    let f = &f;
    let read_all = |fs: ViewFs| async move {
        for i in 0..f.view.len() {
            let n = ino(&fs, &format!("v/{}", f.view.path(i)));
            let got = fs.read(n, 0, 3 << 20).await.unwrap();
            assert_eq!(&got[..], &f.bytes[&f.view.sample(i).content_id][..]);
        }
        if let Some(d) = fs.cache().disk() {
            d.flush();
        }
    };
    let first = Arc::new(FaultySource::new(Arc::new(memory(&f.bytes))));
    read_all(ViewFs::new(
        vec![f.view.clone()],
        cache_on(Stores::Tiered, dir.path(), first.clone()),
        0,
    ))
    .await;
    assert_eq!(first.requests() as usize, f.view.len() + 2);
    // A new store on the same directory (a restarted daemon, or another
    // one) reads nothing from the source; a store on a bad directory is
    // refused.
    for which in [Stores::Disk, Stores::Tiered] {
        let again = Arc::new(FaultySource::new(Arc::new(memory(&f.bytes))));
        read_all(ViewFs::new(
            vec![f.view.clone()],
            cache_on(which, dir.path(), again.clone()),
            0,
        ))
        .await;
        assert_eq!(again.requests(), 0, "{which:?}");
    }
}

#[tokio::test]
async fn corrupt_missing_and_failing_bytes_are_errors_that_map_to_eio() {
    let f = fixture().await;
    let (path, id) = big_path(&f);
    let small = (0..f.view.len())
        .find(|&i| f.view.sample(i).size < CHUNK)
        .unwrap();
    let small_path = format!("v/{}", f.view.path(small));
    let small_id = f.view.sample(small).content_id;

    let mut corrupt = memory(&f.bytes);
    let mut b = f.bytes[&id].clone();
    b[CHUNK as usize + 5] ^= 1;
    corrupt.bytes.insert(id, Bytes::from(b));
    let mut s = f.bytes[&small_id].clone();
    s[0] ^= 1;
    corrupt.bytes.insert(small_id, Bytes::from(s));
    let fs = fs_with(&f.view, Arc::new(corrupt), 64 << 20);
    // No byte of the big sample is served, not even of its intact first
    // chunk: the whole does not hash to its content id.
    for offset in [0, CHUNK] {
        let err = fs.read(ino(&fs, &path), offset, 100).await.unwrap_err();
        assert!(
            matches!(&err, FsError::Fetch(e) if matches!(**e, FetchError::Corrupt { .. })),
            "{err}"
        );
        assert_eq!(lakemount::fuse::errno(&err), fuser::Errno::EIO);
    }
    let err = fs.read(ino(&fs, &small_path), 0, 10).await.unwrap_err();
    assert!(
        err.to_string().contains("do not hash to the content id"),
        "{err}"
    );

    let mut missing = memory(&f.bytes);
    missing.bytes.remove(&small_id);
    let fs = fs_with(&f.view, Arc::new(missing), 64 << 20);
    let err = fs.read(ino(&fs, &small_path), 0, 10).await.unwrap_err();
    assert!(
        matches!(&err, FsError::Fetch(e) if matches!(**e, FetchError::NotFound { .. })),
        "{err}"
    );
    assert_eq!(lakemount::fuse::errno(&err), fuser::Errno::EIO);

    // A failing backend fails that read only; the next one works.
    // (Request 4 fails: the third chunk of the big sample's first fetch.)
    let mut faulty = FaultySource::new(Arc::new(memory(&f.bytes)));
    faulty.fail_every = 4;
    let fs = fs_with(&f.view, Arc::new(faulty), 64 << 20);
    let ino_small = ino(&fs, &small_path);
    assert!(fs.read(ino_small, 0, 10).await.is_ok());
    assert!(fs.read(ino(&fs, &path), 0, 10).await.is_err());
    assert!(fs.read(ino(&fs, &path), 0, 10).await.is_ok());
}

#[tokio::test]
async fn every_error_kind_has_its_errno() {
    let f = fixture().await;
    let fs = fs_with(&f.view, Arc::new(memory(&f.bytes)), 64 << 20);
    use fuser::Errno;
    let errno = |e: FsError| lakemount::fuse::errno(&e);
    assert_eq!(errno(fs.lookup(ROOT, "nope").unwrap_err()), Errno::ENOENT);
    let file = ino(&fs, "v/_index.jsonl");
    assert_eq!(errno(fs.lookup(file, "x").unwrap_err()), Errno::ENOTDIR);
    assert!(fs.readdir(file, 0).is_err());
    assert_eq!(
        errno(fs.read(ino(&fs, "v"), 0, 1).await.unwrap_err()),
        Errno::EISDIR
    );
    assert_eq!(
        errno(fs.open(file, true, OpenMode::default()).unwrap_err()),
        Errno::EROFS
    );
    assert_eq!(
        errno(
            fs.open(ino(&fs, "v"), false, OpenMode::default())
                .unwrap_err()
        ),
        Errno::EISDIR
    );
    assert!(matches!(
        fs.open(
            file,
            false,
            OpenMode {
                no_open: true,
                passthrough: false,
                local_blobs: false,
            }
        ),
        Ok(Opened::Skip)
    ));
    assert!(matches!(
        fs.open(file, false, OpenMode::default()),
        Ok(Opened::Cached)
    ));
    assert_eq!(errno(FsError::Unsupported), Errno::ENOSYS);
    assert_eq!(errno(FsError::NoData), Errno::ENODATA);
    assert_eq!(errno(fs.getattr(9_999_999).unwrap_err()), Errno::ENOENT);
}

#[tokio::test]
async fn the_cache_holds_at_most_its_capacity() {
    let f = fixture().await;
    let capacity = 3 * CHUNK / 2;
    let fs = fs_with(&f.view, Arc::new(memory(&f.bytes)), capacity);
    let (path, id) = big_path(&f);
    let ino = ino(&fs, &path);
    for _ in 0..3 {
        let all = fs.read(ino, 0, 2_500_000).await.unwrap();
        assert_eq!(&all[..], &f.bytes[&id][..]);
        for i in 0..f.view.len() {
            let p = format!("v/{}", f.view.path(i));
            let n = self::ino(&fs, &p);
            fs.read(n, 0, 1 << 20).await.unwrap();
        }
        assert!(fs.cache().resident_bytes().await <= capacity);
    }
}

#[tokio::test]
async fn a_reader_walking_the_listing_is_served_ahead_and_a_random_one_is_not() {
    let f = fixture().await;
    let listing = |fs: &ViewFs| -> Vec<u64> {
        let dir = ino(fs, "v/cat");
        fs.readdir(dir, 2)
            .unwrap()
            .iter()
            .filter(|e| e.name.to_string().ends_with(".png"))
            .map(|e| e.attr.ino)
            .collect()
    };
    // Walking the listing: from the third read on, the rest is fetched
    // ahead, and (the window being 4 samples) the first sample of the
    // next directory beside it.
    let faulty = Arc::new(FaultySource::new(Arc::new(memory(&f.bytes))));
    let fs = ViewFs::new(
        vec![f.view.clone()],
        ChunkCache::new(64 << 20, faulty.clone()),
        4,
    );
    let files = listing(&fs);
    assert_eq!(files.len(), 6);
    for &file in &files[..3] {
        fs.read(file, 0, 100).await.unwrap();
    }
    for _ in 0..100 {
        if faulty.requests() >= 7 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        faulty.requests(),
        7,
        "the last three samples and the next directory's first are fetched ahead"
    );
    for &file in &files[3..] {
        fs.read(file, 0, 100).await.unwrap();
    }
    let dog = ino(&fs, "v/dog");
    let first_dog = fs
        .readdir(dog, 2)
        .unwrap()
        .iter()
        .find(|e| e.name.to_string().ends_with(".png"))
        .map(|e| e.attr.ino)
        .unwrap();
    fs.read(first_dog, 0, 100).await.unwrap();
    assert_eq!(faulty.requests(), 7, "and read from the cache");

    // Random order (backwards here): nothing ahead.
    let faulty = Arc::new(FaultySource::new(Arc::new(memory(&f.bytes))));
    let fs = ViewFs::new(
        vec![f.view.clone()],
        ChunkCache::new(64 << 20, faulty.clone()),
        4,
    );
    for &file in listing(&fs).iter().rev() {
        fs.read(file, 0, 100).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(faulty.requests(), 6);
}
