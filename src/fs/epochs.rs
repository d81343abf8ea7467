//! The epoch directories of a view with `epochs:`, answered by arithmetic.
//!
//! ```text
//! <view>/epoch-<e>/[rank-<r>/]<pos>-<file name>      (and its sidecars)
//! ```
//!
//! An epoch directory holds nothing: every answer about it is computed
//! from the view's [`EpochPlan`] and the epoch's order ([`EpochOrder`]):
//! entry `k` of rank `r` is position `start + r + k * W`, whose sample is
//! `order.at(position)`; a name's leading position says which entry it
//! is. So a hundred epochs cost a few words each until they are read, and
//! reading one costs what reading its files costs.
//!
//! Inode numbers: each shown epoch has a tree id of its own (allocated
//! next to the view's, see [`super::ViewFs::upsert`]). Within it, 1 is the
//! epoch directory, `2 + r` rank `r`'s directory, and the files of the
//! entry named by virtual position `v` are `2 + W + 3 v + kind` (kind 0:
//! the sample, 1: `.npy`, 2: `.json`).

use std::sync::Arc;

use super::{Attr, DirEntry, FsError, Kind};
use crate::view::epochs::{EpochOrder, EpochPlan};
use crate::view::{Content, FileName, View};

/// What a view with epochs adds to its tree.
pub(super) struct EpochDirs {
    /// Tree id of the first shown epoch; epoch `e` has `first_id + e - first shown`.
    pub(super) first_id: u32,
    pub(super) plan: EpochPlan,
    /// Samples per epoch.
    pub(super) n: u64,
    pos_width: usize,
    rank_width: usize,
    epoch_width: usize,
    /// Readers walking each (epoch, rank), for prefetch.
    pub(super) cursors: std::sync::Mutex<foldhash::HashMap<(u32, u32), Arc<super::walks::Cursors>>>,
}

/// A node inside an epoch directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EpochNode {
    /// The epoch directory.
    Epoch,
    /// A rank directory.
    Rank(u32),
    /// A file: the entry at virtual position `v`, and which of its files
    /// (0: the sample, 1: `.npy`, 2: `.json`).
    File {
        /// The entry's virtual position.
        v: u64,
        /// Which file.
        kind: u8,
    },
}

fn digits(n: u64) -> usize {
    n.checked_ilog10().map_or(1, |d| d as usize + 1)
}

impl EpochDirs {
    /// The epoch directories of `plan` for a view of `view_len` samples,
    /// with tree ids from `first_id` on.
    pub(super) fn new(first_id: u32, plan: EpochPlan, view_len: u64) -> Self {
        let w = u64::from(plan.world_size.max(1));
        let n = plan.epoch_len(view_len);
        let epoch_width = digits(u64::from(plan.count.saturating_sub(1)));
        Self {
            first_id,
            plan,
            n,
            pos_width: digits(n + w - 1),
            rank_width: digits(w - 1),
            epoch_width,
            cursors: Default::default(),
        }
    }

    /// Tree ids the epochs use.
    pub(super) fn ids(&self) -> u32 {
        self.plan.shown().len() as u32
    }

    /// The epoch with tree id `id`, if it is one of these.
    pub(super) fn epoch_of(&self, id: u32) -> Option<u32> {
        let k = id.checked_sub(self.first_id)?;
        (k < self.ids()).then(|| self.plan.shown().start + k)
    }

    fn id_of(&self, e: u32) -> u32 {
        self.first_id + (e - self.plan.shown().start)
    }

    /// Local number of a node.
    fn local(&self, node: EpochNode) -> u32 {
        let w = self.plan.world_size.max(1);
        match node {
            EpochNode::Epoch => 1,
            EpochNode::Rank(r) => 2 + r,
            EpochNode::File { v, kind } => (2 + u64::from(w) + 3 * v + u64::from(kind)) as u32,
        }
    }

    /// The node with local number `local`.
    pub(super) fn node(&self, local: u32) -> Option<EpochNode> {
        let w = self.plan.world_size.max(1);
        match local {
            0 => None,
            1 => Some(EpochNode::Epoch),
            l if l < 2 + w => self.plan.ranked.then_some(EpochNode::Rank(l - 2)),
            l => {
                let x = u64::from(l - 2 - w);
                Some(EpochNode::File {
                    v: x / 3,
                    kind: (x % 3) as u8,
                })
            }
        }
    }

    /// Whether rank `r` is shown.
    fn shows_rank(&self, r: u32) -> bool {
        r < self.plan.world_size.max(1) && self.plan.rank.is_none_or(|m| m == r)
    }

    /// The inode of `node` of epoch `e`.
    pub(super) fn ino(&self, e: u32, node: EpochNode) -> u64 {
        (u64::from(self.id_of(e)) << super::TREE_SHIFT) | u64::from(self.local(node))
    }

    /// `epoch-<e>`.
    pub(super) fn epoch_name(&self, e: u32) -> String {
        format!("epoch-{e:0w$}", w = self.epoch_width)
    }

    /// The epoch a root entry names, if it is a shown one.
    pub(super) fn parse_epoch(&self, name: &str) -> Option<u32> {
        let digits = name.strip_prefix("epoch-")?;
        if digits.len() != self.epoch_width || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let e: u32 = digits.parse().ok()?;
        self.plan.shown().contains(&e).then_some(e)
    }

    /// The sample (view index) at position `pos` of epoch `e`.
    fn sample(&self, order: Option<&EpochOrder>, e: u32, pos: u64) -> usize {
        self.plan.sample_at(order, e, pos) as usize
    }

    /// The view's file for entry `v`, `kind`, of epoch `e`, if it exists.
    pub(super) fn content(&self, view: &View, e: u32, v: u64, kind: u8) -> Option<Content> {
        let (r, k) = self.plan.locate(self.n, e, v)?;
        if !self.shows_rank(r) || (!self.plan.ranked && r != 0) {
            return None;
        }
        let dealt = self.plan.entry(self.n, e, r, k)?;
        let i = self.sample(self.plan.order(self.n, e).as_ref(), e, dealt.pos) as u32;
        let content = match kind {
            0 => Content::Sample(i),
            1 => Content::Embedding(i),
            2 => Content::Metadata(i),
            _ => return None,
        };
        view.contents_of(i as usize)
            .any(|c| c == content)
            .then_some(content)
    }

    /// The rank directory (or, unranked, the epoch directory) entry `v`
    /// lies in.
    pub(super) fn parent_of(&self, e: u32, v: u64) -> EpochNode {
        match self.plan.locate(self.n, e, v) {
            Some((r, _)) if self.plan.ranked => EpochNode::Rank(r),
            _ => EpochNode::Epoch,
        }
    }

    /// Name of entry `v`'s file `content`: its position, `-`, the file's
    /// name in the view.
    fn file_name<'a>(&self, view: &'a View, v: u64, content: Content) -> FileName<'a> {
        view.file_name(content)
            .with_lead(&format!("{v:0w$}-", w = self.pos_width))
    }

    /// Finds `name` in epoch `e`'s directory `dir`.
    pub(super) fn lookup(
        &self,
        view: &View,
        e: u32,
        dir: EpochNode,
        name: &str,
    ) -> Option<EpochNode> {
        match dir {
            EpochNode::Epoch if self.plan.ranked => {
                let digits = name.strip_prefix("rank-")?;
                if digits.len() != self.rank_width || !digits.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                let r: u32 = digits.parse().ok()?;
                self.shows_rank(r).then_some(EpochNode::Rank(r))
            }
            EpochNode::Epoch | EpochNode::Rank(_) => {
                let (pos, _) = name.split_once('-')?;
                if pos.len() != self.pos_width || !pos.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                let v: u64 = pos.parse().ok()?;
                if self.parent_of(e, v) != dir {
                    return None;
                }
                (0..3u8).find_map(|kind| {
                    let c = self.content(view, e, v, kind)?;
                    self.file_name(view, v, c)
                        .cmp_str(name)
                        .is_eq()
                        .then_some(EpochNode::File { v, kind })
                })
            }
            EpochNode::File { .. } => None,
        }
    }

    /// The attributes of `node` of epoch `e`.
    pub(super) fn attr(&self, view: &View, e: u32, node: EpochNode) -> Result<Attr, FsError> {
        let mtime = super::mtime(view);
        let (kind, size) = match node {
            EpochNode::Epoch => (Kind::Dir, 0),
            EpochNode::Rank(r) if self.shows_rank(r) => (Kind::Dir, 0),
            EpochNode::Rank(_) => return Err(FsError::NotFound),
            EpochNode::File { v, kind } => {
                let c = self.content(view, e, v, kind).ok_or(FsError::NotFound)?;
                (Kind::File, view.file_size(c))
            }
        };
        Ok(Attr {
            ino: self.ino(e, node),
            kind,
            size,
            mtime,
        })
    }

    /// The entries of epoch `e`'s directory `dir` from `offset`: `.`, `..`
    /// (the view root's attributes for the epoch directory), then the rank
    /// directories or the files in position order.
    pub(super) fn entries<'a>(
        &'a self,
        view: &'a View,
        root: Option<Attr>,
        e: u32,
        dir: EpochNode,
        offset: u64,
    ) -> Box<dyn Iterator<Item = DirEntry<'a>> + 'a> {
        let dot = self.attr(view, e, dir).ok();
        let dotdot = match dir {
            EpochNode::Rank(_) => self.attr(view, e, EpochNode::Epoch).ok(),
            _ => root,
        };
        let head = [(FileName::plain("."), dot), (FileName::plain(".."), dotdot)]
            .into_iter()
            .enumerate()
            .filter_map(|(k, (name, attr))| {
                Some(DirEntry {
                    name,
                    attr: attr?,
                    next_offset: k as u64 + 1,
                })
            })
            .skip(offset as usize);
        if dir == EpochNode::Epoch && self.plan.ranked {
            let w = self.plan.world_size.max(1);
            let ranks = (0..w)
                .filter(move |&r| self.shows_rank(r))
                .enumerate()
                .filter_map(move |(k, r)| {
                    let o = 2 + k as u64;
                    (o >= offset).then(|| {
                        Some(DirEntry {
                            name: FileName::inline(&format!("rank-{r:0w$}", w = self.rank_width)),
                            attr: self.attr(view, e, EpochNode::Rank(r)).ok()?,
                            next_offset: o + 1,
                        })
                    })?
                });
            return Box::new(head.chain(ranks));
        }
        let r = match dir {
            EpochNode::Rank(r) => r,
            _ => 0,
        };
        let per = self.plan.per_rank(self.n, e);
        let order = self.plan.order(self.n, e);
        let mtime = super::mtime(view);
        let first = offset.saturating_sub(2);
        let files = (first / 3..per).flat_map(move |k| {
            let dealt = self.plan.entry(self.n, e, r, k);
            let order = order;
            (0..3u8).filter_map(move |kind| {
                let o = 2 + k * 3 + u64::from(kind);
                if o < offset {
                    return None;
                }
                let d = dealt?;
                let i = self.sample(order.as_ref(), e, d.pos) as u32;
                let content = match kind {
                    0 => Content::Sample(i),
                    1 => Content::Embedding(i),
                    _ => Content::Metadata(i),
                };
                if !view.contents_of(i as usize).any(|c| c == content) {
                    return None;
                }
                Some(DirEntry {
                    name: self.file_name(view, d.virtual_pos, content),
                    attr: Attr {
                        ino: self.ino(
                            e,
                            EpochNode::File {
                                v: d.virtual_pos,
                                kind,
                            },
                        ),
                        kind: Kind::File,
                        size: view.file_size(content),
                        mtime,
                    },
                    next_offset: o + 1,
                })
            })
        });
        Box::new(head.chain(files))
    }

    /// The cursors of the readers of (epoch, rank).
    pub(super) fn cursors(&self, e: u32, r: u32) -> Arc<super::walks::Cursors> {
        let mut map = self.cursors.lock().unwrap_or_else(|p| p.into_inner());
        map.entry((e, r)).or_default().clone()
    }

    /// The samples of the `depth` entries after entry `v` in its rank, if
    /// reads there walk in position order.
    pub(super) fn walk_after(&self, e: u32, v: u64, depth: usize) -> Vec<u32> {
        let Some((r, k)) = self.plan.locate(self.n, e, v) else {
            return Vec::new();
        };
        let pos = k.min(u64::from(u32::MAX)) as u32;
        let Some(ahead) = self.cursors(e, r).window_ahead(pos, depth) else {
            return Vec::new();
        };
        let order = self.plan.order(self.n, e);
        (u64::from(ahead.start)..u64::from(ahead.end).min(self.plan.per_rank(self.n, e)))
            .filter_map(|k| self.plan.entry(self.n, e, r, k))
            .map(|d| self.sample(order.as_ref(), e, d.pos) as u32)
            .collect()
    }
}
