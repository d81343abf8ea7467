//! Reading ahead of a reader, and `--warm`.
//!
//! Two walks are recognised, each when a first read comes at most
//! `SEQUENTIAL_GAP` places after one of the last `CURSORS` reads that
//! formed or started a walk: a sequential reader, or DataLoader workers
//! that share an epoch, each taking a batch (so reading `batch_size`
//! places apart):
//!
//! - a directory walked in name order (ImageFolder, `ls`, `find`);
//! - a view walked in its listing order (`_index.jsonl`): the shuffled,
//!   curriculum, similarity or cluster order, one walk per data-parallel
//!   rank so that the readers of different ranks do not hide each other.
//!
//! Either way the next `depth` samples are fetched into the cache in the
//! background, at most `depth` at a time. Random-order reads trigger
//! nothing but, once they keep missing, the auto warm-up (see
//! [`AUTO_WARM_MISSES`]). Samples served by passthrough are not seen here
//! (their reads do not reach the daemon); after a restart, their opens
//! that wait for a disk-tier entry's first check start a check of the
//! whole view ([`Prefetch::on_unchecked_open`]). `--warm` fetches every view in listing order instead, as far
//! as the cache holds.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::tree::{Body, Tree};
use super::{Listed, ViewFs};
use crate::view::Content;

/// Reads of a view's packed samples that must fetch before the whole view
/// is fetched for its readers (the auto warm-up; `--no-auto-warm` turns it
/// off): a reader walking the view
/// misses a few times before its walk is seen and then rarely; a shuffled
/// one keeps missing.
pub const AUTO_WARM_MISSES: u32 = 16;

/// Disk-tier entries checked at once ahead of readers (reads of the local
/// disk: more would only queue there ahead of the readers' own).
const CHECKS_AHEAD: usize = 16;

/// Read-ahead settings of a mount.
pub(super) struct Prefetch {
    depth: usize,
    permits: Arc<tokio::sync::Semaphore>,
    /// Requests in flight of a warm-up started for readers (the auto
    /// warm-up); 0: off.
    auto_warm: std::sync::atomic::AtomicUsize,
    /// Views fetched whole (by `--warm` or for their readers) and their
    /// bytes: what a further auto warm-up must fit beside, so that two
    /// views fetched whole do not evict each other. A view's share goes
    /// with the view (a spec removed or replaced).
    warmed: std::sync::Mutex<Vec<(std::sync::Weak<Tree>, u64)>>,
}

impl Prefetch {
    pub(super) fn new(depth: usize) -> Self {
        Self {
            depth,
            permits: Arc::new(tokio::sync::Semaphore::new(depth.max(1))),
            auto_warm: Default::default(),
            warmed: Default::default(),
        }
    }

    /// The views fetched whole that are still mounted, and their bytes.
    fn warmed(&self) -> std::sync::MutexGuard<'_, Vec<(std::sync::Weak<Tree>, u64)>> {
        let mut warmed = self.warmed.lock().unwrap_or_else(|p| p.into_inner());
        warmed.retain(|(t, _)| t.strong_count() > 0);
        warmed
    }

    /// Records `bytes` of `tree` as fetched whole, if they fit in `budget`
    /// beside the views already fetched whole that are still mounted;
    /// otherwise the bytes those take.
    fn reserve(&self, tree: &Arc<Tree>, bytes: u64, budget: u64) -> Result<(), u64> {
        let mut warmed = self.warmed();
        let others: u64 = warmed.iter().map(|(_, b)| b).sum();
        if others.saturating_add(bytes) > budget {
            return Err(others);
        }
        warmed.push((Arc::downgrade(tree), bytes));
        Ok(())
    }

    /// Fetch a whole view, `parallel` requests at a time, once its readers
    /// have missed [`AUTO_WARM_MISSES`] packed samples (0: never).
    pub(super) fn set_auto_warm(&self, parallel: usize) {
        self.auto_warm.store(parallel, Ordering::Relaxed);
    }

    /// Counts one more of the events in `count` that start a job over a
    /// whole view (the auto warm-up, the background check): the job's
    /// parallelism and the runtime to run it on when this is the
    /// [`AUTO_WARM_MISSES`]-th, the auto warm-up is on, and `started` was
    /// not set yet (it is now).
    fn auto_start(
        &self,
        count: &std::sync::atomic::AtomicU32,
        started: &std::sync::atomic::AtomicBool,
    ) -> Option<(usize, tokio::runtime::Handle)> {
        let parallel = self.auto_warm.load(Ordering::Relaxed);
        if parallel == 0
            || count.fetch_add(1, Ordering::Relaxed) + 1 != AUTO_WARM_MISSES
            || started.swap(true, Ordering::Relaxed)
        {
            return None;
        }
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        Some((parallel, runtime))
    }

    /// A read of packed sample of `tree` had to fetch: after enough of
    /// them, fetches the whole view in the background if it fits in the
    /// cache (what `--warm` does at mount, for this view only).
    pub(super) fn on_packed_miss(&self, fs: &ViewFs, tree: &Arc<Tree>) {
        let Some((parallel, runtime)) = self.auto_start(&tree.walks.misses, &tree.walks.warming)
        else {
            return;
        };
        let view = &tree.view;
        let bytes = view_bytes(view);
        let budget = warm_budget(&fs.cache);
        if bytes > budget {
            tracing::info!(
                view = %view.name,
                "read in random order, but larger than the cache ({bytes} bytes): not fetched whole"
            );
            return;
        }
        if let Err(others) = self.reserve(tree, bytes, budget) {
            tracing::info!(
                view = %view.name,
                "read in random order, but it ({bytes} bytes) and the views already fetched whole \
                 ({others} bytes) do not fit in the cache together: not fetched whole"
            );
            return;
        }
        tracing::info!(view = %view.name, "read in random order: fetching it whole ({bytes} bytes)");
        let (cache, tree) = (fs.cache.clone(), tree.clone());
        runtime.spawn(async move {
            let start = std::time::Instant::now();
            let (n, b) = warm_trees(cache, vec![tree.clone()], parallel).await;
            tracing::info!(
                view = %tree.view.name,
                "fetched whole: {n} samples ({b} bytes) in {:.1} s",
                start.elapsed().as_secs_f64()
            );
        });
    }

    /// A reader opened a disk-tier entry of `tree` that this process had
    /// not checked, and waited for the check: after [`AUTO_WARM_MISSES`]
    /// of them (a daemon restarted over a filled disk tier), the view's
    /// entries on disk are checked in the background, in listing order,
    /// [`CHECKS_AHEAD`] at a time, so that the rest of its opens, in any
    /// order, find them checked (and their pages read).
    ///
    /// Not done per walk, as the prefetch does fetches: passthrough reads
    /// never reach the daemon, and seeing walks at opens instead cost a
    /// task and a `stat` per open (measured: epochs after a remount in
    /// listing order at 0.5x the local disk with it, 1.0x with this).
    pub(super) fn on_unchecked_open(&self, fs: &ViewFs, tree: &Arc<Tree>) {
        let Some((parallel, runtime)) =
            self.auto_start(&tree.walks.unchecked, &tree.walks.checking)
        else {
            return;
        };
        let (cache, tree) = (fs.cache.clone(), tree.clone());
        runtime.spawn(async move {
            use futures::StreamExt;
            let start = std::time::Instant::now();
            let view = &tree.view;
            // Pages of a view that the page cache cannot hold until it is
            // read would only push out others: dropped after the check.
            let keep_pages = view_bytes(view) < physical_memory() / 4;
            let checked = futures::stream::iter(0..view.len())
                .map(|line| {
                    let loc = view.location(view.listing_sample(line));
                    let cache = cache.clone();
                    async move {
                        if !cache.unchecked(&loc) {
                            return false;
                        }
                        tokio::task::spawn_blocking(move || cache.check_ahead(&loc, keep_pages))
                            .await
                            .unwrap_or(false)
                    }
                })
                .buffer_unordered(parallel.min(CHECKS_AHEAD))
                .filter(|&c| async move { c })
                .count()
                .await;
            tracing::info!(
                view = %view.name,
                "opened after a restart: {checked} disk-tier entries checked ahead of its readers in {:.1} s",
                start.elapsed().as_secs_f64()
            );
        });
    }

    pub(super) fn enabled(&self) -> bool {
        self.depth > 0
    }

    /// Sample `i` (node `local`) of `tree` is being read from its first
    /// byte: count a prefetch hit, and start fetching ahead if the reads
    /// form a walk.
    pub(super) fn on_first_read(&self, fs: &ViewFs, tree: &Arc<Tree>, listed: Listed, i: usize) {
        if self.depth == 0 {
            return;
        }
        let bits = &tree.walks.fetched;
        let bit = 1u64 << (i % 64);
        if bits
            .get(i / 64)
            .is_some_and(|b| b.fetch_and(!bit, Ordering::Relaxed) & bit != 0)
        {
            fs.metrics().prefetch_hits.inc();
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let next = match (listed, &tree.epochs) {
            // An epoch directory read in position order.
            (Listed::Epoch(e, v), Some(ep)) => ep.walk_after(e, v, self.depth),
            (Listed::Static(local), _) => self
                .directory_walk(tree, local)
                .unwrap_or_else(|| self.listing_walk(tree, i)),
            (Listed::Epoch(..), None) => Vec::new(),
        };
        for i in next {
            if tree.view.packed_at(i as usize).is_some() {
                // Fetched with its neighbours in one read of its pack.
                if fs.plan_miss(&tree.view, i as usize) {
                    fs.metrics().prefetch_issued.inc();
                }
                continue;
            }
            let loc = tree.view.location(i as usize);
            if fs.cache.has_first_chunk(&loc) {
                continue;
            }
            fs.metrics().prefetch_issued.inc();
            let cache = fs.cache.clone();
            let tree = tree.clone();
            let permits = self.permits.clone();
            // Each sample is handed out once per walk (see
            // `Cursors::window`), so one that must wait for a permit
            // waits in line (at most `depth` fetches run at once).
            runtime.spawn(async move {
                let Ok(permit) = permits.acquire_owned().await else {
                    return;
                };
                // A failure is reported when the sample is really read.
                if cache.sample_chunk(&loc, 0).await.is_ok()
                    && let Some(b) = tree.walks.fetched.get(i as usize / 64)
                {
                    b.fetch_or(1 << (i % 64), Ordering::Relaxed);
                }
                drop(permit);
            });
        }
    }

    /// The samples after node `local` in its directory not handed out
    /// yet, if reads there walk it (`None`: they do not).
    fn directory_walk(&self, tree: &Tree, local: u32) -> Option<Vec<u32>> {
        let node = tree.node(local).ok()?;
        let parent = tree.node(node.parent).ok()?;
        let Body::Dir(d) = parent.body else {
            return None;
        };
        let dir = &tree.dirs[d as usize];
        let name = tree.name(local);
        let pos = dir
            .children
            .binary_search_by(|&c| tree.name(c).cmp_name(&name))
            .ok()?;
        let sample = |c: u32| match tree.nodes[(c - 1) as usize].body {
            Body::File(Content::Sample(i)) => Some(i),
            _ => None,
        };
        // Positions are the directory's children (sidecars too), then,
        // past its end, the samples of the directories after it beside it
        // (ImageFolder walks its class directories in name order, so a
        // reader entering the next one finds its first samples fetched).
        // The window ends just after the `depth`-th sample after `pos`.
        let len = dir.children.len();
        let mut count = 0;
        let mut end = None;
        for (k, &c) in dir.children.iter().enumerate().skip(pos + 1) {
            if sample(c).is_some() {
                count += 1;
                if count == self.depth {
                    end = Some(k + 1);
                    break;
                }
            }
        }
        let end = end.unwrap_or(len + (self.depth - count));
        let ahead = dir.cursors.window(pos as u32, end as u32)?;
        let (start, end) = (ahead.start as usize, ahead.end as usize);
        let mut next: Vec<u32> = dir.children[start.min(len)..end.min(len)]
            .iter()
            .filter_map(|&c| sample(c))
            .collect();
        if end > len
            && let Ok(grand) = tree.children(parent.parent)
            && let Ok(at) =
                grand.binary_search_by(|&c| tree.name(c).cmp_name(&tree.name(node.parent)))
        {
            let following = grand[at + 1..]
                .iter()
                .filter_map(|&d| tree.children(d).ok())
                .flat_map(|files| files.iter().filter_map(|&c| sample(c)));
            next.extend(
                following
                    .skip(start.saturating_sub(len))
                    .take(end - start.max(len)),
            );
        }
        Some(next)
    }

    /// The samples after sample `i` in its view's listing (within its
    /// rank), if reads walk the listing.
    fn listing_walk(&self, tree: &Tree, i: usize) -> Vec<u32> {
        let view = &tree.view;
        let shard = view.shard_of(i);
        let Some(walk) = tree.walks.walks.get(shard as usize) else {
            return Vec::new();
        };
        let line = view.listing_line(i) as u32;
        let Some(ahead) = walk.window_ahead(line, self.depth) else {
            return Vec::new();
        };
        let end = (ahead.end as usize).min(view.len());
        ((ahead.start as usize).min(end)..end)
            .map(|l| view.listing_sample(l))
            .take_while(|&s| view.shard_of(s) == shard)
            .map(|s| s as u32)
            .collect()
    }
}

impl ViewFs {
    /// `--warm`: fetches every view's samples (every chunk) and embedding
    /// sidecars into the cache while reads are served, stopping before the
    /// largest tier would evict what it brought in: packed samples pack by
    /// pack in ranged reads of up to 8 MiB (at most 16 at a time), the
    /// others in listing order, `parallel` at a time. A reader's miss does
    /// not wait behind them: it fetches its own window, or waits for the
    /// read already bringing its sample. Returns (samples, bytes) fetched.
    pub async fn warm(self: Arc<Self>, parallel: usize) -> (u64, u64) {
        let trees: Vec<Arc<Tree>> = {
            let st = self.read_state();
            st.current
                .iter()
                .filter_map(|(_, id)| st.trees.get(id).cloned())
                .collect()
        };
        for t in &trees {
            // Nothing left for the auto warm-up to start.
            t.walks.warming.store(true, Ordering::Relaxed);
        }
        let (n, bytes) = warm_trees(self.cache.clone(), trees.clone(), parallel).await;
        // What each view took of it (they are planned in this order), for
        // the auto warm-up of views mounted later.
        let mut left = bytes;
        for t in &trees {
            let share = view_bytes(&t.view).min(left);
            left -= share;
            if share > 0 {
                self.prefetch.warmed().push((Arc::downgrade(t), share));
            }
        }
        (n, bytes)
    }

    /// Lets the auto warm-up fetch a view whose readers keep missing (see
    /// [`AUTO_WARM_MISSES`]), `parallel` requests at a time; 0 turns it off.
    pub fn set_auto_warm(&self, parallel: usize) {
        self.prefetch.set_auto_warm(parallel);
    }
}

/// Bytes of `view`'s samples.
fn view_bytes(view: &crate::view::View) -> u64 {
    (0..view.len()).map(|i| view.sample(i).size).sum()
}

/// Bytes of memory of this machine (0 if unknown).
fn physical_memory() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let (pages, size) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    (pages.max(0) as u64).saturating_mul(size.max(0) as u64)
}

/// Bytes a warm-up may bring into `cache`: 90% of its largest tier, so
/// that it never evicts what it brought in.
fn warm_budget(cache: &crate::cache::ChunkCache) -> u64 {
    cache.capacity() / 10 * 9
}

/// What [`ViewFs::warm`] does, for `trees`.
async fn warm_trees(
    cache: Arc<crate::cache::ChunkCache>,
    trees: Vec<Arc<Tree>>,
    parallel: usize,
) -> (u64, u64) {
    use futures::StreamExt;
    let budget = warm_budget(&cache);
    let mut planned = 0u64;
    let mut within = |view: &crate::view::View, i: usize| -> Option<bool> {
        let npy = view
            .contents_of(i)
            .any(|c| matches!(c, Content::Embedding(_)));
        let cost = view.sample(i).size
            + if npy {
                view.file_size(Content::Embedding(0))
            } else {
                0
            };
        if planned + cost > budget {
            return None;
        }
        planned += cost;
        Some(npy)
    };
    let mut groups = Vec::new();
    let mut singles = Vec::new();
    'plan: for tree in &trees {
        let view = &tree.view;
        for (pack, run) in super::plan::plan_view(view) {
            let mut members = Vec::with_capacity(run.len());
            for m in run {
                let Some(npy) = within(view, m.sample as usize) else {
                    break 'plan;
                };
                members.push((m, npy));
            }
            groups.push((tree.clone(), pack, members));
        }
        for line in 0..view.len() {
            let i = view.listing_sample(line);
            if view.packed_at(i).is_some() {
                continue;
            }
            let Some(npy) = within(view, i) else {
                break 'plan;
            };
            singles.push((tree.clone(), i, npy));
        }
    }
    let cache = &cache;
    let finish = |loc: crate::view::SampleLoc, npy: bool| async move {
        let chunks = loc.size.div_ceil(crate::content_id::CHUNK).max(1) as u32;
        for c in 0..chunks {
            cache.sample_chunk(&loc, c).await.ok()?;
        }
        if npy {
            cache.embedding_npy(&loc).await.ok()?;
        }
        cache.metrics().warm_samples.inc();
        Some((1u64, loc.size))
    };
    let packed = futures::stream::iter(groups)
        .map(|(tree, pack, members)| async move {
            let view = &tree.view;
            let locs: Vec<_> = members
                .iter()
                .map(|(m, _)| (view.location(m.sample as usize), m.offset))
                .collect();
            cache.start_packed(view.pack_uri(pack), locs.clone());
            let mut done = (0u64, 0u64);
            for ((loc, _), (_, npy)) in locs.into_iter().zip(&members) {
                if let Some((n, b)) = finish(loc, *npy).await {
                    done = (done.0 + n, done.1 + b);
                }
            }
            done
        })
        .buffer_unordered(parallel.clamp(1, 16))
        .fold(
            (0u64, 0u64),
            |(n, b), (dn, db)| async move { (n + dn, b + db) },
        );
    let single = futures::stream::iter(singles)
        .map(|(tree, i, npy)| async move { finish(tree.view.location(i), npy).await })
        .buffer_unordered(parallel.max(1))
        .filter_map(|r| async move { r })
        .fold(
            (0u64, 0u64),
            |(n, b), (dn, db)| async move { (n + dn, b + db) },
        );
    let ((n1, b1), (n2, b2)) = futures::join!(packed, single);
    (n1 + n2, b1 + b2)
}
