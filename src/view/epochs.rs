//! The order of an epoch, computed one position at a time.
//!
//! Epoch `e` of a view shuffled with seed `s` shows the view's samples in
//! the order of a pseudorandom permutation of `0..n` keyed by `(s, e)`:
//! position `p` holds sample `order.at(p)`. The permutation is a
//! four-round Feistel network on the smallest even number of bits that
//! covers `n`, walked until it lands inside `0..n` (cycle walking: on
//! average fewer than four steps), its round function SplitMix64 of the
//! key, the round and the half. So any position is found in constant time
//! and memory: an epoch directory costs nothing until it is read, and a
//! hundred of them cost a hundred keys. Written out here (and in Python in
//! the tests, `tests/python/test_epochs.py`), never taken from a crate, so
//! the order never changes with a dependency.

/// SplitMix64's output function of `x` (one step of the generator).
pub fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The permutation of `0..n` of one epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpochOrder {
    n: u64,
    key: u64,
    half: u32,
}

/// Rounds of the Feistel network.
const ROUNDS: u64 = 4;

impl EpochOrder {
    /// The order of epoch `epoch` of `n` samples shuffled with `seed`.
    pub fn new(n: u64, seed: u64, epoch: u64) -> Self {
        let bits = (64 - n.saturating_sub(1).leading_zeros()).max(2);
        let bits = bits + (bits & 1);
        Self {
            n,
            key: mix(seed ^ mix(epoch)),
            half: bits / 2,
        }
    }

    fn round(&self, r: u64, x: u64) -> u64 {
        mix(self.key ^ (r << 56) ^ x) & ((1u64 << self.half) - 1)
    }

    fn encrypt(&self, x: u64) -> u64 {
        let mask = (1u64 << self.half) - 1;
        let (mut left, mut right) = (x >> self.half, x & mask);
        for r in 0..ROUNDS {
            let next = left ^ self.round(r, right);
            left = right;
            right = next;
        }
        (left << self.half) | right
    }

    /// The sample at position `p` (`p < n`).
    pub fn at(&self, p: u64) -> u64 {
        debug_assert!(p < self.n);
        let mut x = self.encrypt(p);
        while x >= self.n {
            x = self.encrypt(x);
        }
        x
    }

    /// Number of samples.
    pub fn len(&self) -> u64 {
        self.n
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }
}

/// A mixture: the sources of a view and what each epoch draws from them.
///
/// Each epoch holds `counts[s]` draws from source `s` (a proportion of
/// the epoch, every sample `repeat` times, or `choose` of them), as slots
/// `0..len()` grouped by source; the epoch's order permutes the slots.
/// Draw `j` of source `s` in epoch `e` is the source's sample at place
/// `j mod |s|` of the source's own permutation for that epoch (keyed by
/// the seed, the source and the epoch): so `choose` takes a different
/// subset each epoch, and `repeat: 2` shows every sample exactly twice.
#[derive(Debug, Clone, PartialEq)]
pub struct Mix {
    /// Source names.
    pub names: Vec<String>,
    /// The view's samples of each source.
    pub members: Vec<Vec<u32>>,
    /// Draws per epoch from each source.
    pub counts: Vec<u64>,
    /// First slot of each source.
    starts: Vec<u64>,
    seed: u64,
}

impl Mix {
    /// The mixture of `members` (per source) drawn as `draws` says, in
    /// epochs of `epoch_size` samples (default: all sources' sizes added).
    /// Proportions are of the whole epoch, rounded by largest remainder so
    /// they add up.
    pub fn new(
        names: Vec<String>,
        members: Vec<Vec<u32>>,
        draws: &[crate::spec::Draw],
        epoch_size: Option<u64>,
        seed: u64,
    ) -> Self {
        use crate::spec::Draw;
        let sizes: Vec<u64> = members.iter().map(|m| m.len() as u64).collect();
        let total = epoch_size.unwrap_or(sizes.iter().sum());
        let mut counts: Vec<u64> = draws
            .iter()
            .zip(&sizes)
            .map(|(d, &size)| match *d {
                Draw::Choose(c) => c,
                Draw::Repeat(r) => (r * size as f64).round() as u64,
                Draw::Proportion(_) => 0,
            })
            .collect();
        let shares: Vec<(usize, f64)> = draws
            .iter()
            .enumerate()
            .filter_map(|(s, d)| match *d {
                Draw::Proportion(p) => Some((s, p * total as f64)),
                _ => None,
            })
            .collect();
        let target = shares.iter().map(|(_, x)| x).sum::<f64>().round() as u64;
        let mut given = 0;
        for &(s, x) in &shares {
            counts[s] = x.floor() as u64;
            given += counts[s];
        }
        let mut by_remainder: Vec<(usize, f64)> =
            shares.iter().map(|&(s, x)| (s, x - x.floor())).collect();
        by_remainder.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        for (s, _) in by_remainder
            .into_iter()
            .take(target.saturating_sub(given) as usize)
        {
            counts[s] += 1;
        }
        // An empty source has nothing to draw.
        for (c, &size) in counts.iter_mut().zip(&sizes) {
            if size == 0 {
                *c = 0;
            }
        }
        let mut starts = Vec::with_capacity(counts.len());
        let mut acc = 0;
        for &c in &counts {
            starts.push(acc);
            acc += c;
        }
        Self {
            names,
            members,
            counts,
            starts,
            seed,
        }
    }

    /// Samples per epoch.
    pub fn len(&self) -> u64 {
        self.starts.last().copied().unwrap_or(0) + self.counts.last().copied().unwrap_or(0)
    }

    /// Whether epochs are empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The source of slot `t`.
    pub fn source_of(&self, t: u64) -> usize {
        self.starts.partition_point(|&s| s <= t) - 1
    }

    /// The view's sample in slot `t` of epoch `e`.
    pub fn sample(&self, e: u32, t: u64) -> u32 {
        let s = self.source_of(t);
        let j = t - self.starts[s];
        let members = &self.members[s];
        let m = members.len() as u64;
        let order = EpochOrder::new(m, mix(self.seed ^ mix(s as u64 + 1)), u64::from(e));
        members[order.at(j % m) as usize]
    }
}

/// How a view with `epochs:` lists: which epochs, how positions are dealt
/// to ranks, where a resumed job starts.
///
/// Positions of epoch `e` run over `0..n`; the epoch's first shown
/// position is the resume position for the resume epoch, 0 for later ones
/// (earlier ones are not shown). Of the `m` positions from there, the
/// `t`-th goes to rank `t mod W` (positions are dealt like cards, so the
/// ranks read the global sequence in lockstep: after each has read `k`
/// samples, the job has read `k * W`, whatever `W` is). Ranks hold equal
/// counts: `floor(m / W)`, the rest dropped, or with `pad` `ceil(m / W)`, a
/// rank short of one given the earliest position it lacks again, named
/// with the virtual position `n + r` so it sorts last.
#[derive(Debug, Clone, PartialEq)]
pub struct EpochPlan {
    /// Number of epochs.
    pub count: u32,
    /// The shuffle seed; `None`: every epoch in the view's own order.
    pub seed: Option<u64>,
    /// Where the job (re)starts.
    pub resume: crate::spec::Resume,
    /// Ranks the positions are dealt to (1: no rank directories).
    pub world_size: u32,
    /// Whether epochs hold `rank-<r>/` directories.
    pub ranked: bool,
    /// The one rank a mount shows, if it shows one.
    pub rank: Option<u32>,
    /// Whether short ranks are padded (else the remainder is dropped).
    pub pad: bool,
    /// The mixture each epoch draws, for a spec with `sources`.
    pub mix: Option<std::sync::Arc<Mix>>,
}

/// Where an entry of an epoch directory lies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dealt {
    /// Its name's position: the real position, or `n + rank` for a pad.
    pub virtual_pos: u64,
    /// The position whose sample it shows.
    pub pos: u64,
}

impl EpochPlan {
    /// The epochs shown: from the resume epoch on.
    pub fn shown(&self) -> std::ops::Range<u32> {
        self.resume.epoch..self.count
    }

    /// The first position shown of epoch `e` of `n`.
    pub fn start(&self, n: u64, e: u32) -> u64 {
        if e == self.resume.epoch {
            self.resume.pos.min(n)
        } else {
            0
        }
    }

    /// Entries each rank shows in epoch `e` of `n` samples.
    pub fn per_rank(&self, n: u64, e: u32) -> u64 {
        let m = n - self.start(n, e);
        let w = u64::from(self.world_size.max(1));
        if self.pad { m.div_ceil(w) } else { m / w }
    }

    /// The `k`-th entry of rank `r` in epoch `e` of `n` samples.
    pub fn entry(&self, n: u64, e: u32, r: u32, k: u64) -> Option<Dealt> {
        if k >= self.per_rank(n, e) || r >= self.world_size.max(1) {
            return None;
        }
        let start = self.start(n, e);
        let m = n - start;
        let t = u64::from(r) + k * u64::from(self.world_size.max(1));
        if t < m {
            return Some(Dealt {
                virtual_pos: start + t,
                pos: start + t,
            });
        }
        // Padding: t < ceil(m / W) * W < m + W, so t - m < W <= m is an
        // earlier position of another rank.
        Some(Dealt {
            virtual_pos: n + u64::from(r),
            pos: start + (t - m),
        })
    }

    /// The (rank, index) of the entry named by virtual position `v` in
    /// epoch `e` of `n`, if the epoch shows one.
    pub fn locate(&self, n: u64, e: u32, v: u64) -> Option<(u32, u64)> {
        let w = u64::from(self.world_size.max(1));
        let (r, k) = if v < n {
            let start = self.start(n, e);
            let t = v.checked_sub(start)?;
            ((t % w) as u32, t / w)
        } else {
            let r = v - n;
            if r >= w {
                return None;
            }
            (r as u32, self.per_rank(n, e).checked_sub(1)?)
        };
        (self.entry(n, e, r, k)?.virtual_pos == v).then_some((r, k))
    }

    /// The order of epoch `e` of `n`: the slot at each position.
    pub fn order(&self, n: u64, e: u32) -> Option<EpochOrder> {
        self.seed.map(|s| EpochOrder::new(n, s, u64::from(e)))
    }

    /// Samples per epoch, for a view of `view_len` samples.
    pub fn epoch_len(&self, view_len: u64) -> u64 {
        self.mix.as_ref().map_or(view_len, |m| m.len())
    }

    /// The view's sample at position `pos` of epoch `e` (`order`: the
    /// epoch's, [`EpochPlan::order`]).
    pub fn sample_at(&self, order: Option<&EpochOrder>, e: u32, pos: u64) -> u32 {
        let slot = order.map_or(pos, |o| o.at(pos));
        match &self.mix {
            Some(m) => m.sample(e, slot),
            None => slot as u32,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_epoch_is_a_permutation() {
        for n in [1u64, 2, 3, 4, 5, 7, 16, 17, 100, 1000, 4097] {
            for e in 0..3 {
                let o = EpochOrder::new(n, 42, e);
                let mut seen = vec![false; n as usize];
                for p in 0..n {
                    let s = o.at(p) as usize;
                    assert!(!seen[s], "n={n} e={e}: {s} twice");
                    seen[s] = true;
                }
            }
        }
    }

    #[test]
    fn epochs_and_seeds_differ_and_repeat() {
        let order = |seed, e| {
            (0..1000)
                .map(|p| EpochOrder::new(1000, seed, e).at(p))
                .collect::<Vec<_>>()
        };
        assert_eq!(order(1, 0), order(1, 0));
        assert_ne!(order(1, 0), order(1, 1));
        assert_ne!(order(1, 0), order(2, 0));
        // Reference values, shared with the Python implementation.
        assert_eq!(mix(0), 0xe220_a839_7b1d_cdaf);
        let o = EpochOrder::new(10, 7, 3);
        let first: Vec<u64> = (0..10).map(|p| o.at(p)).collect();
        // `EpochOrder(10, 7, 3)` as the Python reference computes it.
        assert_eq!(first, [4, 5, 8, 7, 1, 3, 9, 2, 6, 0]);
    }

    fn plan(world_size: u32, pad: bool, resume: (u32, u64)) -> EpochPlan {
        EpochPlan {
            count: 3,
            seed: Some(1),
            resume: crate::spec::Resume {
                epoch: resume.0,
                pos: resume.1,
            },
            world_size,
            ranked: true,
            rank: None,
            pad,
            mix: None,
        }
    }

    #[test]
    fn mixtures_draw_their_counts_and_repeat_exactly() {
        use crate::spec::Draw;
        let members = vec![
            (0..100).collect(),
            (100..160).collect(),
            (160..170).collect(),
        ];
        let m = Mix::new(
            vec!["a".into(), "b".into(), "c".into()],
            members,
            &[
                Draw::Proportion(0.5),
                Draw::Proportion(0.3),
                Draw::Repeat(2.0),
            ],
            Some(100),
            9,
        );
        assert_eq!(m.counts, vec![50, 30, 20]);
        assert_eq!(m.len(), 100);
        for e in 0..3 {
            let drawn: Vec<u32> = (0..m.len()).map(|t| m.sample(e, t)).collect();
            let mut from_c: Vec<u32> = drawn.iter().copied().filter(|&i| i >= 160).collect();
            from_c.sort_unstable();
            let twice: Vec<u32> = (160..170).flat_map(|i| [i, i]).collect();
            assert_eq!(from_c, twice, "repeat: 2 shows each sample twice");
            let mut a: Vec<u32> = drawn[..50].to_vec();
            a.sort_unstable();
            a.dedup();
            assert_eq!(a.len(), 50, "a proportion draws distinct samples");
            assert!(a.iter().all(|&i| i < 100));
        }
        assert_ne!(m.sample(0, 0), m.sample(1, 0));
        // Largest remainder: 0.5/0.3/0.2 of 7 is 4 + 2 + 1.
        let m = Mix::new(
            vec!["a".into(), "b".into(), "c".into()],
            vec![(0..10).collect(), (10..20).collect(), (20..30).collect()],
            &[
                Draw::Proportion(0.5),
                Draw::Proportion(0.3),
                Draw::Proportion(0.2),
            ],
            Some(7),
            1,
        );
        assert_eq!(m.counts, vec![4, 2, 1]);
    }

    #[test]
    fn positions_are_dealt_in_lockstep_equal_and_located_back() {
        for (n, w, pad, resume) in [
            (10u64, 3u32, false, (0u32, 0u64)),
            (10, 3, true, (0, 0)),
            (10, 4, true, (0, 4)),
            (240, 6, false, (0, 120)),
            (7, 7, false, (1, 3)),
        ] {
            let p = plan(w, pad, resume);
            for e in p.shown() {
                let per = p.per_rank(n, e);
                let mut real = Vec::new();
                for r in 0..w {
                    for k in 0..per {
                        let d = p.entry(n, e, r, k).unwrap();
                        assert_eq!(p.locate(n, e, d.virtual_pos), Some((r, k)));
                        if d.virtual_pos < n {
                            real.push(d.pos);
                        } else {
                            assert!(pad && d.pos < p.start(n, e) + u64::from(w));
                        }
                    }
                    assert!(p.entry(n, e, r, per).is_none());
                }
                // Each position shown at most once, in lockstep order.
                real.sort_unstable();
                real.dedup();
                let m = n - p.start(n, e);
                let expected = if pad {
                    m
                } else {
                    m / u64::from(w) * u64::from(w)
                };
                assert_eq!(real.len() as u64, expected, "n={n} w={w} pad={pad} e={e}");
                assert_eq!(real.first().copied(), (expected > 0).then(|| p.start(n, e)));
            }
        }
        // Positions before the resume point are not shown.
        let p = plan(2, false, (0, 4));
        assert_eq!(p.locate(10, 0, 3), None);
        assert_eq!(p.locate(10, 1, 3), Some((1, 1)));
    }
}
