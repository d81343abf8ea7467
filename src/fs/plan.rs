//! Fetch planning for packed samples ([`crate::packs`]): which neighbours
//! of a sample to fetch with it, so that a reader's miss, the prefetcher
//! and `--warm` each bring many samples in one ranged read.
//!
//! - A miss of a packed sample fetches a window of its pack around it
//!   ([`MISS_WINDOW`], a quarter before and three quarters after: packs
//!   hold samples in ingest order, which is usually the directory order
//!   readers walk), taking the view's samples in that window that are not
//!   held or being fetched.
//! - `--warm` fetches every pack of the view in requests of up to
//!   [`WARM_REQUEST`] bytes, pack after pack.
//! - A gap of more than [`MAX_GAP`] bytes between two wanted samples
//!   (samples the view does not show, or held already) ends a request.
//!
//! The reads themselves, each member's verification against its content
//! id, and the bookkeeping that lets a reader wait on a read already in
//! flight are [`crate::cache::ChunkCache::start_packed`]'s.

use super::ViewFs;
use crate::view::{PackMember, View};

/// Bytes a miss of a packed sample fetches around it.
pub const MISS_WINDOW: u64 = 4 << 20;
/// Largest request `--warm` makes.
pub const WARM_REQUEST: u64 = 8 << 20;
/// Largest gap of unwanted bytes read through rather than split on.
pub const MAX_GAP: u64 = 256 << 10;

/// Runs of `members` (sorted by offset) that are wanted, each at most
/// `max_bytes` long and without gaps over [`MAX_GAP`].
fn runs(
    members: &[PackMember],
    wanted: impl Fn(&PackMember) -> bool,
    max_bytes: u64,
) -> Vec<Vec<PackMember>> {
    let mut out: Vec<Vec<PackMember>> = Vec::new();
    let mut current: Vec<PackMember> = Vec::new();
    for m in members.iter().filter(|m| wanted(m)) {
        if let (Some(first), Some(last)) = (current.first(), current.last()) {
            let gap = m
                .offset
                .saturating_sub(last.offset + u64::from(last.length));
            let len = m.offset + u64::from(m.length) - first.offset;
            if gap > MAX_GAP || len > max_bytes {
                out.push(std::mem::take(&mut current));
            }
        }
        current.push(*m);
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

impl ViewFs {
    /// Starts the fetch of packed sample `i` of `view` and its window of
    /// neighbours, unless it is held or being fetched already. Returns
    /// whether it started one.
    pub(super) fn plan_miss(&self, view: &View, i: usize) -> bool {
        let Some(at) = view.packed_at(i) else {
            return false;
        };
        if self.cache.has_or_fetching(&view.location(i)) {
            return false;
        }
        let members = view.pack_members(at.object);
        let from = at.offset.saturating_sub(MISS_WINDOW / 4);
        let to = at.offset + MISS_WINDOW * 3 / 4;
        let lo = members.partition_point(|m| m.offset < from);
        let hi = members.partition_point(|m| m.offset < to);
        let window = &members[lo..hi];
        let mine = |m: &PackMember| m.sample as usize == i;
        let cache = &self.cache;
        let wanted =
            |m: &PackMember| mine(m) || !cache.has_or_fetching(&view.location(m.sample as usize));
        // The run holding the sample asked for.
        let Some(run) = runs(window, wanted, MISS_WINDOW)
            .into_iter()
            .find(|r| r.iter().any(mine))
        else {
            return false;
        };
        let object = view.pack_uri(at.object);
        let members = run
            .iter()
            .map(|m| (view.location(m.sample as usize), m.offset))
            .collect();
        cache.start_packed(object, members) > 0
    }
}

/// The packed samples of `view` in warm-up requests: (pack, members).
pub(super) fn plan_view(view: &View) -> Vec<(u32, Vec<PackMember>)> {
    let mut out = Vec::new();
    let mut packs: Vec<u32> = (0..view.len())
        .filter_map(|i| view.packed_at(i).map(|a| a.object))
        .collect();
    packs.sort_unstable();
    packs.dedup();
    for p in packs {
        for run in runs(view.pack_members(p), |_| true, WARM_REQUEST) {
            out.push((p, run));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(offset: u64, length: u32, sample: u32) -> PackMember {
        PackMember {
            offset,
            length,
            sample,
        }
    }

    #[test]
    fn runs_split_on_size_and_gaps() {
        let ms = [
            m(0, 100, 0),
            m(100, 100, 1),
            m(200, 100, 2),
            m(1 << 20, 10, 3),
        ];
        let r = runs(&ms, |_| true, 250);
        let samples: Vec<Vec<u32>> = r
            .iter()
            .map(|r| r.iter().map(|m| m.sample).collect())
            .collect();
        assert_eq!(samples, vec![vec![0, 1], vec![2], vec![3]]);
        let r = runs(&ms, |m| m.sample != 1, 1 << 30);
        let samples: Vec<Vec<u32>> = r
            .iter()
            .map(|r| r.iter().map(|m| m.sample).collect())
            .collect();
        assert_eq!(samples, vec![vec![0, 2], vec![3]]);
    }
}
