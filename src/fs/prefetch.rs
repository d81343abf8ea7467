//! Reading ahead of a reader, and `--warm`.
//!
//! Two walks are recognised, each when consecutive first reads are at most
//! [`SEQUENTIAL_GAP`] places apart (a sequential reader, or a few
//! DataLoader workers sharing one epoch):
//!
//! - a directory walked in name order (ImageFolder, `ls`, `find`);
//! - a view walked in its listing order (`_index.jsonl`): the shuffled,
//!   curriculum, similarity or cluster order, one walk per data-parallel
//!   rank so that the readers of different ranks do not hide each other.
//!
//! Either way the next `depth` samples are fetched into the cache in the
//! background, at most `depth` at a time. Random-order reads trigger
//! nothing. `--warm` fetches every view in listing order instead, as far
//! as the cache holds.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use super::{Body, ViewFs};
use crate::view::{Content, View};

/// How far apart two consecutive reads may be and still count as a walk.
const SEQUENTIAL_GAP: u32 = 8;

/// Read-ahead state of a mount.
pub(super) struct Prefetch {
    depth: usize,
    permits: Arc<tokio::sync::Semaphore>,
    /// Per view: the listing line read last in each rank's walk
    /// (`u32::MAX`: none yet); empty for views in path order.
    walks: Vec<Vec<AtomicU32>>,
    /// Per view: one bit per sample, set while a prefetched sample has not
    /// been read yet (for the prefetch-hit counter).
    fetched: Vec<Arc<[AtomicU64]>>,
}

impl Prefetch {
    pub(super) fn new(depth: usize) -> Self {
        Self {
            depth,
            permits: Arc::new(tokio::sync::Semaphore::new(depth.max(1))),
            walks: Vec::new(),
            fetched: Vec::new(),
        }
    }

    /// Sets up the per-view state once the views are known.
    pub(super) fn track(&mut self, views: &[Arc<View>]) {
        if self.depth == 0 {
            return;
        }
        self.walks = views
            .iter()
            .map(|v| {
                let streams = if v.is_ordered() {
                    (0..v.len())
                        .map(|i| v.shard_of(i))
                        .max()
                        .map_or(0, |m| m + 1)
                } else {
                    0
                };
                (0..streams).map(|_| AtomicU32::new(u32::MAX)).collect()
            })
            .collect();
        self.fetched = views
            .iter()
            .map(|v| {
                (0..v.len().div_ceil(64))
                    .map(|_| AtomicU64::new(0))
                    .collect()
            })
            .collect();
    }

    /// A sample's first byte is being read: count a prefetch hit, and
    /// start fetching ahead if the reads form a walk.
    pub(super) fn on_first_read(&self, fs: &ViewFs, ino: u64, view_no: u32, i: usize) {
        if self.depth == 0 {
            return;
        }
        let bits = &self.fetched[view_no as usize];
        let bit = 1u64 << (i % 64);
        if bits[i / 64].fetch_and(!bit, Ordering::Relaxed) & bit != 0 {
            fs.metrics().prefetch_hits.inc();
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let mut next = self.directory_walk(fs, ino);
        if next.is_empty() {
            next = self.listing_walk(fs, view_no, i);
        }
        for (view_no, i) in next {
            if fs.cache.has_chunk(view_no, i as usize, 0) {
                continue;
            }
            let Ok(permit) = self.permits.clone().try_acquire_owned() else {
                break;
            };
            fs.metrics().prefetch_issued.inc();
            let cache = fs.cache.clone();
            let view = fs.views[view_no as usize].clone();
            let bits = self.fetched[view_no as usize].clone();
            runtime.spawn(async move {
                // A failure is reported when the sample is really read.
                if cache
                    .sample_chunk(view_no, &view, i as usize, 0)
                    .await
                    .is_ok()
                {
                    bits[i as usize / 64].fetch_or(1 << (i % 64), Ordering::Relaxed);
                }
                drop(permit);
            });
        }
    }

    /// The samples after `ino` in its directory, if reads there walk it.
    fn directory_walk(&self, fs: &ViewFs, ino: u64) -> Vec<(u32, u32)> {
        let Some(node) = fs.nodes.get((ino - 1) as usize) else {
            return Vec::new();
        };
        let Body::Dir(d) = fs.nodes[(u64::from(node.parent) - 1) as usize].body else {
            return Vec::new();
        };
        let dir = &fs.dirs[d as usize];
        let name = fs.name(ino);
        let Ok(pos) = dir
            .children
            .binary_search_by(|&c| fs.name(u64::from(c)).cmp_name(&name))
        else {
            return Vec::new();
        };
        let pos = pos as u32;
        let prev = dir.last_read.swap(pos, Ordering::Relaxed);
        if !is_walk(prev, pos) {
            return Vec::new();
        }
        dir.children[pos as usize + 1..]
            .iter()
            .filter_map(|&c| match fs.nodes[(c - 1) as usize].body {
                Body::File {
                    view,
                    content: Content::Sample(i),
                } => Some((view, i)),
                _ => None,
            })
            .take(self.depth)
            .collect()
    }

    /// The samples after sample `i` in its view's listing (within its
    /// rank), if reads walk the listing.
    fn listing_walk(&self, fs: &ViewFs, view_no: u32, i: usize) -> Vec<(u32, u32)> {
        let view = &fs.views[view_no as usize];
        let Some(walk) = self.walks[view_no as usize].get(view.shard_of(i) as usize) else {
            return Vec::new();
        };
        let line = view.listing_line(i) as u32;
        let prev = walk.swap(line, Ordering::Relaxed);
        if !is_walk(prev, line) {
            return Vec::new();
        }
        let shard = view.shard_of(i);
        (line as usize + 1..view.len())
            .map(|l| view.listing_sample(l))
            .take_while(|&s| view.shard_of(s) == shard)
            .take(self.depth)
            .map(|s| (view_no, s as u32))
            .collect()
    }
}

fn is_walk(prev: u32, pos: u32) -> bool {
    prev != u32::MAX && pos > prev && pos - prev <= SEQUENTIAL_GAP
}

impl ViewFs {
    /// `--warm`: fetches every view's samples (every chunk) and embedding
    /// sidecars into the cache in listing order, `parallel` at a time,
    /// while reads are served, stopping before the cache would evict what
    /// it brought in. Returns (samples, bytes) fetched.
    pub async fn warm(self: Arc<Self>, parallel: usize) -> (u64, u64) {
        use futures::StreamExt;
        let budget = self.cache.capacity() / 10 * 9;
        let mut jobs = Vec::new();
        let mut planned = 0u64;
        let mut order: Vec<usize> = (0..self.views.len()).collect();
        order.sort_by(|&a, &b| self.views[a].name.cmp(&self.views[b].name));
        'plan: for vi in order {
            let view = &self.views[vi];
            for line in 0..view.len() {
                let i = view.listing_sample(line);
                let size = view.sample(i).size;
                let npy = view
                    .contents_of(i)
                    .any(|c| matches!(c, Content::Embedding(_)));
                let cost = size
                    + if npy {
                        view.file_size(Content::Embedding(0))
                    } else {
                        0
                    };
                if planned + cost > budget {
                    break 'plan;
                }
                planned += cost;
                jobs.push((vi as u32, i, npy));
            }
        }
        let fs = &self;
        futures::stream::iter(jobs)
            .map(|(view_no, i, npy)| async move {
                let view = &fs.views[view_no as usize];
                let size = view.sample(i).size;
                let chunks = size.div_ceil(crate::content_id::CHUNK).max(1) as u32;
                for c in 0..chunks {
                    fs.cache.sample_chunk(view_no, view, i, c).await.ok()?;
                }
                if npy {
                    fs.cache.embedding_npy(view_no, view, i).await.ok()?;
                }
                fs.metrics().warm_samples.inc();
                Some(size)
            })
            .buffer_unordered(parallel.max(1))
            .filter_map(|r| async move { r })
            .fold(
                (0u64, 0u64),
                |(n, b), size| async move { (n + 1, b + size) },
            )
            .await
    }
}
