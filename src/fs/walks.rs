//! Where readers are: the state the prefetcher reads and updates to
//! tell walks from random reads, kept by each tree (one [`Cursors`] per
//! directory, per rank's walk of the listing, per epoch and rank) and the
//! prefetched-but-unread bits behind the prefetch-hit counter.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::view::View;

/// How far after a reader's last read its next one may be and still count
/// as a walk.
const SEQUENTIAL_GAP: u32 = 8;

/// Readers tracked per walk: DataLoader workers (each a cursor, a batch
/// apart), up to this many.
pub(super) const CURSORS: usize = 8;

/// The last read of up to [`CURSORS`] readers of one walk, each with how
/// many steps in a row it has walked (position in the high half of the
/// word, steps in the low half; `u64::MAX`: free). A read counts as a walk
/// from a reader's second step on, so a random read that happens to land
/// just after some cursor starts nothing. Updated without locks: two
/// readers racing may miss a walk once, which costs a prefetch, never a
/// wrong byte.
pub(super) struct Cursors {
    at: [AtomicU64; CURSORS],
    next: AtomicU32,
    /// The end of the last window handed out ([`Self::window`]): readers
    /// of one walk move a step at a time, so each step plans only what
    /// the window gained, not `depth` samples again.
    ahead: AtomicU32,
}

impl Default for Cursors {
    fn default() -> Self {
        Self {
            at: std::array::from_fn(|_| AtomicU64::new(u64::MAX)),
            next: AtomicU32::new(0),
            ahead: AtomicU32::new(0),
        }
    }
}

impl Cursors {
    /// Records a read at `pos`; whether it continues a reader's walk.
    pub(super) fn advance(&self, pos: u32) -> bool {
        for c in &self.at {
            let word = c.load(Ordering::Relaxed);
            let (prev, steps) = ((word >> 32) as u32, word as u32);
            if word != u64::MAX && pos > prev && pos - prev <= SEQUENTIAL_GAP {
                let steps = steps.saturating_add(1);
                c.store((u64::from(pos) << 32) | u64::from(steps), Ordering::Relaxed);
                return steps >= 2;
            }
        }
        // A new reader, or a random read: it takes the oldest cursor.
        let k = self.next.fetch_add(1, Ordering::Relaxed) as usize % CURSORS;
        self.at[k].store(u64::from(pos) << 32, Ordering::Relaxed);
        false
    }

    /// Records a read at `pos`; if it continues a walk (else `None`), the
    /// positions to fetch ahead of it, up to `end` (exclusive), less those
    /// an earlier step of this walk handed out. A window that ends behind
    /// `pos`, or far beyond this one (another epoch's), is not this walk's,
    /// and this one starts afresh; one that ends a little beyond this one
    /// (another DataLoader worker of the same epoch, a batch ahead) covers
    /// it.
    pub(super) fn window(&self, pos: u32, end: u32) -> Option<std::ops::Range<u32>> {
        if !self.advance(pos) {
            return None;
        }
        let end = end.max(pos + 1);
        let depth = end - pos - 1;
        let mark = self.ahead.load(Ordering::Relaxed);
        let (start, mark) = if mark > pos && mark <= end {
            (mark, end)
        } else if mark > end && mark - end < depth {
            (end, mark)
        } else {
            (pos + 1, end)
        };
        self.ahead.store(mark, Ordering::Relaxed);
        Some(start..end)
    }

    /// [`Self::window`] for positions that are all samples: up to `depth`
    /// after `pos`.
    pub(super) fn window_ahead(&self, pos: u32, depth: usize) -> Option<std::ops::Range<u32>> {
        let depth = u32::try_from(depth).unwrap_or(u32::MAX);
        self.window(pos, pos.saturating_add(1).saturating_add(depth))
    }
}

/// Read-ahead state of one view's tree.
pub(super) struct TreeWalks {
    /// The readers of each rank's walk of the listing; empty for views in
    /// path order.
    pub(super) walks: Vec<Cursors>,
    /// One bit per sample, set while a prefetched sample has not been read
    /// yet (for the prefetch-hit counter).
    pub(super) fetched: Arc<[AtomicU64]>,
    /// Reads of packed samples that had to fetch (see the auto warm-up, `Prefetch::on_packed_miss`).
    pub(super) misses: AtomicU32,
    /// Whether the whole view is being (or was) fetched for a reader.
    pub(super) warming: std::sync::atomic::AtomicBool,
    /// Opens that waited for the first check of a disk-tier entry (see
    /// `Prefetch::on_unchecked_open`).
    pub(super) unchecked: AtomicU32,
    /// Whether the view's disk-tier entries are being (or were) checked
    /// ahead of its readers.
    pub(super) checking: std::sync::atomic::AtomicBool,
}

impl TreeWalks {
    pub(super) fn new(view: &View, enabled: bool) -> Self {
        if !enabled {
            return Self {
                walks: Vec::new(),
                fetched: Arc::new([]),
                misses: AtomicU32::new(0),
                warming: Default::default(),
                unchecked: AtomicU32::new(0),
                checking: Default::default(),
            };
        }
        let streams = if view.is_ordered() {
            (0..view.len())
                .map(|i| view.shard_of(i))
                .max()
                .map_or(0, |m| m + 1)
        } else {
            0
        };
        Self {
            walks: (0..streams).map(|_| Cursors::default()).collect(),
            fetched: (0..view.len().div_ceil(64))
                .map(|_| AtomicU64::new(0))
                .collect(),
            misses: AtomicU32::new(0),
            warming: Default::default(),
            unchecked: AtomicU32::new(0),
            checking: Default::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_walk_hands_out_each_position_once() {
        let c = Cursors::default();
        assert_eq!(c.window(10, 10 + 5), None, "a first read is not a walk");
        assert_eq!(c.window(11, 11 + 5), None, "nor a second");
        assert_eq!(c.window(12, 12 + 5), Some(13..17));
        assert_eq!(c.window(13, 13 + 5), Some(17..18));
        assert_eq!(c.window(14, 14 + 5), Some(18..19));
        // A new epoch from the start: planned afresh.
        let c = Cursors::default();
        for p in [1000, 1001, 1002, 0, 1] {
            c.window(p, p + 5);
        }
        assert_eq!(c.window(2, 2 + 5), Some(3..7));
        // Two workers 3 apart, taking turns: nothing handed out twice.
        let c = Cursors::default();
        let mut seen = std::collections::HashSet::new();
        for step in 0..20u32 {
            for base in [0u32, 3] {
                if let Some(r) = c.window(base + step, base + step + 5) {
                    for p in r {
                        assert!(seen.insert(p), "{p} handed out twice");
                    }
                }
            }
        }
        assert!(seen.contains(&25), "{seen:?}");
    }
}
