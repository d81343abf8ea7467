//! The filesystem core: inodes, lookups, listings and reads over a set of
//! resolved views. Async where it reads data, plain structs in and out; no
//! fuser types, so it is tested without a kernel in the loop.
//!
//! The root lists one directory per view; each view is a [`tree::Tree`]
//! with an inode range of its own, built once and never changed, so the
//! kernel may cache its entries and attributes indefinitely. Views can be
//! added, replaced and removed while mounted ([`ViewFs::upsert`],
//! [`ViewFs::remove`]): the root changes (its entries are cached for a
//! second only), a replaced or removed tree is kept while the kernel holds
//! lookups on any of its inodes (open files, working directories), and
//! freed by the last `forget`. Lookups and listings touch only memory; only
//! `read` may wait on storage.

use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::SystemTime;

use bytes::{Bytes, BytesMut};

pub mod epochs;
mod plan;
mod prefetch;
mod tree;
mod walks;

use prefetch::Prefetch;
use tree::{Body, Tree};

use crate::cache::ChunkCache;
use crate::content_id::CHUNK;
use crate::source::FetchError;
use crate::view::{Content, FileName, View};

/// Bits of an inode number that number nodes within a tree.
const TREE_SHIFT: u32 = 32;

/// The modification time every node of `view` shows: its snapshot's commit.
fn mtime(view: &View) -> std::time::SystemTime {
    std::time::UNIX_EPOCH + std::time::Duration::from_millis(view.snapshot_ms.max(0) as u64)
}

/// Inode number of the mount's root directory.
pub const ROOT: u64 = 1;

/// File or directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A directory.
    Dir,
    /// A regular file.
    File,
}

/// Attributes of one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr {
    /// Inode number.
    pub ino: u64,
    /// File or directory.
    pub kind: Kind,
    /// Size in bytes (0 for directories).
    pub size: u64,
    /// Modification time: the commit time of the view's snapshot.
    pub mtime: SystemTime,
}

/// One entry of a directory listing. The name is borrowed from the view
/// (a million-entry listing allocates nothing per entry).
#[derive(Debug, Clone)]
pub struct DirEntry<'a> {
    /// The entry's name.
    pub name: FileName<'a>,
    /// Its attributes.
    pub attr: Attr,
    /// Offset to pass to continue the listing after this entry.
    pub next_offset: u64,
}

/// Errors the core returns; the FUSE adapter maps each to one errno.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// No such inode or name.
    #[error("not found")]
    NotFound,
    /// A directory operation on a file.
    #[error("not a directory")]
    NotDir,
    /// A file operation on a directory.
    #[error("is a directory")]
    IsDir,
    /// Any change: views are read-only.
    #[error("read-only file system")]
    ReadOnly,
    /// An operation the filesystem does not implement (the kernel stops
    /// asking for it: how opens and flushes are skipped).
    #[error("not supported")]
    Unsupported,
    /// No such extended attribute.
    #[error("no such attribute")]
    NoData,
    /// The bytes could not be fetched or verified.
    #[error("{0}")]
    Fetch(Arc<FetchError>),
}

/// How opens are answered, as negotiated with the kernel at mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OpenMode {
    /// The kernel supports skipping OPEN/RELEASE entirely.
    pub no_open: bool,
    /// The kernel takes files to read directly (passthrough).
    pub passthrough: bool,
    /// Samples kept as local blob files are handed to the kernel as they
    /// are, unverified (`--passthrough`); else only verified disk-tier
    /// entries are.
    pub local_blobs: bool,
}

/// What an open resolves to.
#[derive(Debug)]
pub enum Opened {
    /// Tell the kernel not to send opens at all (it keeps page caches).
    Skip,
    /// Opened; page caches may be kept across opens.
    Cached,
    /// The kernel reads this file directly; it holds the sample's bytes.
    Passthrough(std::fs::File),
}

/// The views mounted now, and the trees the kernel may still use.
#[derive(Default)]
struct State {
    /// Current views: (name, tree id), sorted by name.
    current: Vec<(Box<str>, u32)>,
    /// Every live tree by id: current ones and retired ones still looked up.
    trees: foldhash::HashMap<u32, Arc<Tree>>,
    /// Ids of replaced or removed trees kept for the kernel's sake.
    retired: foldhash::HashSet<u32>,
    /// First epoch tree id -> the view's tree id, for views with epochs.
    epoch_ids: std::collections::BTreeMap<u32, u32>,
    next_id: u32,
}

/// Where a file is listed: what a reader walking the listing walks.
#[derive(Debug, Clone, Copy)]
pub(super) enum Listed {
    /// In a view's tree (local number).
    Static(u32),
    /// In an epoch directory: the epoch and the entry's virtual position.
    Epoch(u32, u64),
}

/// What an inode number names.
enum At {
    /// A node of a view's tree (local number).
    Static(Arc<Tree>, u32),
    /// A node inside an epoch directory of a view with epochs.
    Epoch(Arc<Tree>, u32, epochs::EpochNode),
}

impl At {
    fn tree(&self) -> &Arc<Tree> {
        match self {
            At::Static(t, _) | At::Epoch(t, _, _) => t,
        }
    }
}

/// What to tell the kernel when a root entry changes: drop its cached
/// dentry for that name.
type Invalidator = Box<dyn Fn(&str) + Send + Sync>;

/// The mounted filesystem.
pub struct ViewFs {
    state: RwLock<State>,
    cache: Arc<ChunkCache>,
    prefetch: Prefetch,
    mount_time: SystemTime,
    invalidate: OnceLock<Invalidator>,
}

/// A directory listing in progress: the tree (or the root's entries) it
/// reads from stays alive while it is iterated.
pub enum DirList {
    /// The root: a copy of its entries.
    Root {
        /// `.`/`..` and the views' directories.
        entries: Vec<(Box<str>, Attr)>,
        /// Where to start.
        offset: u64,
    },
    /// A directory of a view.
    Tree {
        /// The view's tree.
        tree: Arc<Tree>,
        /// The directory (local number).
        local: u32,
        /// Where to start.
        offset: u64,
    },
    /// An epoch directory, or a rank directory in one.
    Epoch {
        /// The view's tree.
        tree: Arc<Tree>,
        /// The epoch.
        e: u32,
        /// Which directory.
        dir: epochs::EpochNode,
        /// Where to start.
        offset: u64,
    },
}

impl DirList {
    /// The entries from the offset on: `.`, `..`, then children by name.
    pub fn iter(&self) -> Box<dyn Iterator<Item = DirEntry<'_>> + '_> {
        match self {
            DirList::Root { entries, offset } => {
                Box::new(entries.iter().enumerate().skip(*offset as usize).map(
                    |(pos, (name, attr))| DirEntry {
                        name: FileName::plain(name),
                        attr: *attr,
                        next_offset: pos as u64 + 1,
                    },
                ))
            }
            DirList::Tree {
                tree,
                local,
                offset,
            } => {
                let children = tree.children(*local).unwrap_or(&[]);
                let parent = tree.nodes[(*local - 1) as usize].parent;
                let total = children.len() as u64 + 2;
                // A view with epochs lists its epoch directories after its files.
                let epoch_dirs = tree.epochs.as_ref().filter(|_| *local == 1).map(|ep| {
                    let start = *offset;
                    ep.plan.shown().enumerate().filter_map(move |(k, e)| {
                        let pos = total + k as u64;
                        (pos >= start).then(|| {
                            Some(DirEntry {
                                name: FileName::inline(&ep.epoch_name(e)),
                                attr: ep.attr(&tree.view, e, epochs::EpochNode::Epoch).ok()?,
                                next_offset: pos + 1,
                            })
                        })?
                    })
                });
                let statics = (*offset..total).filter_map(move |pos| {
                    let (name, attr) = match pos {
                        0 => (FileName::plain("."), tree.attr(*local).ok()?),
                        1 if parent == 0 => (FileName::plain(".."), root_attr(SystemTime::now())),
                        1 => (FileName::plain(".."), tree.attr(parent).ok()?),
                        _ => {
                            let c = children[(pos - 2) as usize];
                            (tree.name(c), tree.attr(c).ok()?)
                        }
                    };
                    Some(DirEntry {
                        name,
                        attr,
                        next_offset: pos + 1,
                    })
                });
                Box::new(statics.chain(epoch_dirs.into_iter().flatten()))
            }
            DirList::Epoch {
                tree,
                e,
                dir,
                offset,
            } => match &tree.epochs {
                Some(ep) => ep.entries(&tree.view, tree.attr(1).ok(), *e, *dir, *offset),
                None => Box::new(std::iter::empty()),
            },
        }
    }
}

/// The epoch directories of `tree`'s view (it has them: an epoch inode
/// was resolved to it).
fn epoch_dirs(tree: &Tree) -> Result<&epochs::EpochDirs, FsError> {
    tree.epochs.as_ref().ok_or(FsError::NotFound)
}

/// Removes tree `id` and the epoch ids it owns.
fn drop_tree(st: &mut State, id: u32) {
    if let Some(tree) = st.trees.remove(&id)
        && let Some(ep) = &tree.epochs
    {
        st.epoch_ids.remove(&ep.first_id);
    }
}

fn root_attr(mtime: SystemTime) -> Attr {
    Attr {
        ino: ROOT,
        kind: Kind::Dir,
        size: 0,
        mtime,
    }
}

impl ViewFs {
    /// One directory per view under the root. `prefetch` is how many
    /// samples ahead a reader walking a listing is served from (0: no
    /// prefetch). Trees are numbered 1, 2, ... by view name.
    pub fn new(mut views: Vec<Arc<View>>, cache: ChunkCache, prefetch: usize) -> Self {
        views.sort_by(|a, b| a.name.cmp(&b.name));
        let fs = Self {
            state: RwLock::new(State {
                next_id: 1,
                ..State::default()
            }),
            cache: Arc::new(cache),
            prefetch: Prefetch::new(prefetch),
            mount_time: SystemTime::now(),
            invalidate: OnceLock::new(),
        };
        for view in views {
            fs.upsert(view);
        }
        fs
    }

    /// The chunk cache.
    pub fn cache(&self) -> &ChunkCache {
        &self.cache
    }

    /// The counters of this mount.
    pub fn metrics(&self) -> &Arc<crate::metrics::Metrics> {
        self.cache.metrics()
    }

    /// The views mounted now, by name.
    pub fn views(&self) -> Vec<Arc<View>> {
        let st = self.read_state();
        st.current
            .iter()
            .filter_map(|(_, id)| st.trees.get(id).map(|t| t.view.clone()))
            .collect()
    }

    /// How to make the kernel forget a root entry (set once, at mount).
    pub fn set_invalidator(&self, f: impl Fn(&str) + Send + Sync + 'static) {
        let _ = self.invalidate.set(Box::new(f));
    }

    fn read_state(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write_state(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds `view`, or replaces the view of the same name: new lookups see
    /// the new one at once; inodes of the old one keep working until the
    /// kernel forgets them. Returns the new tree's id.
    pub fn upsert(&self, view: Arc<View>) -> u32 {
        let id = {
            let mut st = self.write_state();
            let id = st.next_id;
            st.next_id += Tree::ids_for(&view);
            id
        };
        let name: Box<str> = view.name.as_str().into();
        // Built outside the lock: a large view takes a while.
        let tree = Arc::new(Tree::build(id, view, self.prefetch.enabled()));
        let replaced = {
            let mut st = self.write_state();
            if let Some(ep) = &tree.epochs {
                st.epoch_ids.insert(ep.first_id, id);
            }
            st.trees.insert(id, tree);
            let old = match st.current.binary_search_by(|(n, _)| n.cmp(&name)) {
                Ok(k) => Some(std::mem::replace(&mut st.current[k].1, id)),
                Err(k) => {
                    st.current.insert(k, (name.clone(), id));
                    None
                }
            };
            if let Some(old) = old {
                retire(&mut st, old);
            }
            self.count_views(&st);
            old.is_some()
        };
        if replaced && let Some(f) = self.invalidate.get() {
            f(&name);
        }
        id
    }

    /// Removes the view named `name`; false if there is none.
    pub fn remove(&self, name: &str) -> bool {
        {
            let mut st = self.write_state();
            let Ok(k) = st.current.binary_search_by(|(n, _)| n.as_ref().cmp(name)) else {
                return false;
            };
            let (_, old) = st.current.remove(k);
            retire(&mut st, old);
            self.count_views(&st);
        }
        if let Some(f) = self.invalidate.get() {
            f(name);
        }
        true
    }

    fn count_views(&self, st: &State) {
        let samples = st
            .current
            .iter()
            .filter_map(|(_, id)| st.trees.get(id))
            .map(|t| t.view.len())
            .sum();
        self.metrics().set_views(st.current.len(), samples);
    }

    /// What `ino` names: a view tree's node or an epoch directory's.
    fn at(&self, ino: u64) -> Result<At, FsError> {
        let id = (ino >> TREE_SHIFT) as u32;
        let local = ino as u32;
        if id == 0 || local == 0 {
            return Err(FsError::NotFound);
        }
        let st = self.read_state();
        if let Some(tree) = st.trees.get(&id) {
            return Ok(At::Static(tree.clone(), local));
        }
        let (_, owner) = st
            .epoch_ids
            .range(..=id)
            .next_back()
            .ok_or(FsError::NotFound)?;
        let tree = st.trees.get(owner).ok_or(FsError::NotFound)?.clone();
        let ep = tree.epochs.as_ref().ok_or(FsError::NotFound)?;
        let e = ep.epoch_of(id).ok_or(FsError::NotFound)?;
        let node = ep.node(local).ok_or(FsError::NotFound)?;
        Ok(At::Epoch(tree, e, node))
    }

    /// Records that the kernel took a lookup on `ino` (an entry it was
    /// given in a listing with attributes).
    pub fn looked_up(&self, ino: u64) {
        if let Ok(at) = self.at(ino) {
            at.tree().lookups.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The kernel dropped `n` lookups on `ino`; frees a retired tree with none left.
    pub fn forget(&self, ino: u64, n: u64) {
        let Ok(at) = self.at(ino) else {
            return;
        };
        let tree = at.tree().clone();
        let before = tree
            .lookups
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |l| {
                Some(l.saturating_sub(n))
            })
            .unwrap_or(0);
        if before <= n {
            let mut st = self.write_state();
            if st.retired.contains(&tree.id) && tree.lookups.load(Ordering::Acquire) == 0 {
                st.retired.remove(&tree.id);
                drop_tree(&mut st, tree.id);
            }
        }
    }

    /// Attributes of `ino`.
    pub fn getattr(&self, ino: u64) -> Result<Attr, FsError> {
        if ino == ROOT {
            return Ok(root_attr(self.mount_time));
        }
        match self.at(ino)? {
            At::Static(tree, local) => tree.attr(local),
            At::Epoch(tree, e, node) => epoch_dirs(&tree)?.attr(&tree.view, e, node),
        }
    }

    /// Finds `name` in directory `parent`. The kernel holds a lookup on
    /// what is found.
    pub fn lookup(&self, parent: u64, name: &str) -> Result<Attr, FsError> {
        let attr = if parent == ROOT {
            let st = self.read_state();
            let k = st
                .current
                .binary_search_by(|(n, _)| n.as_ref().cmp(name))
                .map_err(|_| FsError::NotFound)?;
            let tree = &st.trees[&st.current[k].1];
            tree.lookups.fetch_add(1, Ordering::Relaxed);
            return tree.attr(1);
        } else {
            let (tree, attr) = match self.at(parent)? {
                At::Static(tree, local) => {
                    let attr = tree.lookup(local, name)?;
                    (tree, attr)
                }
                At::Epoch(tree, e, dir) => {
                    let ep = epoch_dirs(&tree)?;
                    let node = ep
                        .lookup(&tree.view, e, dir, name)
                        .ok_or(FsError::NotFound)?;
                    let attr = ep.attr(&tree.view, e, node)?;
                    (tree, attr)
                }
            };
            tree.lookups.fetch_add(1, Ordering::Relaxed);
            attr
        };
        Ok(attr)
    }

    /// Lists `ino` from `offset` (0 = start): `.`, `..`, then children by
    /// name. Lazy: the caller takes as many entries as fit in its reply.
    pub fn readdir(&self, ino: u64, offset: u64) -> Result<DirList, FsError> {
        if ino == ROOT {
            let st = self.read_state();
            let dot = root_attr(self.mount_time);
            let mut entries: Vec<(Box<str>, Attr)> = vec![(".".into(), dot), ("..".into(), dot)];
            for (name, id) in &st.current {
                if let Ok(a) = st.trees[id].attr(1) {
                    entries.push((name.clone(), a));
                }
            }
            return Ok(DirList::Root { entries, offset });
        }
        match self.at(ino)? {
            At::Static(tree, local) => {
                tree.children(local)?;
                Ok(DirList::Tree {
                    tree,
                    local,
                    offset,
                })
            }
            At::Epoch(_, _, epochs::EpochNode::File { .. }) => Err(FsError::NotDir),
            At::Epoch(tree, e, dir) => Ok(DirList::Epoch {
                tree,
                e,
                dir,
                offset,
            }),
        }
    }

    /// The file `ino` names: its tree, what it holds, and where it is
    /// listed.
    fn file(&self, ino: u64) -> Result<(Arc<Tree>, Content, Listed), FsError> {
        match self.at(ino)? {
            At::Static(tree, local) => {
                let Body::File(content) = tree.node(local)?.body else {
                    return Err(FsError::IsDir);
                };
                Ok((tree, content, Listed::Static(local)))
            }
            At::Epoch(tree, e, epochs::EpochNode::File { v, kind }) => {
                let content = epoch_dirs(&tree)?
                    .content(&tree.view, e, v, kind)
                    .ok_or(FsError::NotFound)?;
                Ok((tree, content, Listed::Epoch(e, v)))
            }
            At::Epoch(..) => Err(FsError::IsDir),
        }
    }

    /// Opens `ino` for reading (`write` asks for more: refused). When the
    /// kernel takes passthrough files: a one-chunk sample the disk tier
    /// holds is handed over as its verified entry file; with
    /// `mode.local_blobs`, a sample kept as a local blob file is handed
    /// over after checking it has the size the table records (its bytes
    /// are then not verified: `--passthrough` trades that for speed).
    /// Everything else is served by [`ViewFs::read`].
    pub fn open(&self, ino: u64, write: bool, mode: OpenMode) -> Result<Opened, FsError> {
        if write {
            return Err(FsError::ReadOnly);
        }
        if ino == ROOT {
            return Err(FsError::IsDir);
        }
        let (tree, content, _) = self.file(ino)?;
        if mode.passthrough
            && let Content::Sample(i) = content
        {
            let view = &tree.view;
            let loc = view.location(i as usize);
            if let Some((file, checked_now)) = self.cache.open_file(&loc) {
                if checked_now {
                    self.prefetch.on_unchecked_open(self, &tree);
                }
                return Ok(Opened::Passthrough(file));
            }
            let local = if mode.local_blobs {
                self.cache.source().open_local(&loc)
            } else {
                None
            };
            match local {
                Some(Ok(file)) if file.metadata().is_ok_and(|m| m.len() == loc.size) => {
                    return Ok(Opened::Passthrough(file));
                }
                Some(Ok(_)) => {
                    let e = FetchError::Corrupt {
                        content_id: loc.content_id.hex(),
                        detail: "the blob's size differs from the table's size_bytes".into(),
                    };
                    return Err(fetch_failed(view, i as usize, Arc::new(e)));
                }
                Some(Err(e)) => return Err(fetch_failed(view, i as usize, Arc::new(e))),
                None => {}
            }
        }
        Ok(if mode.no_open {
            Opened::Skip
        } else {
            Opened::Cached
        })
    }

    /// Reads up to `size` bytes at `offset`; short only at end of file.
    pub async fn read(&self, ino: u64, offset: u64, size: u32) -> Result<Bytes, FsError> {
        if ino == ROOT {
            return Err(FsError::IsDir);
        }
        let (tree, content, listed) = self.file(ino)?;
        let view = &tree.view;
        let len = view.file_size(content);
        if offset >= len || size == 0 {
            return Ok(Bytes::new());
        }
        let end = len.min(offset + u64::from(size));
        let slice = |b: &Bytes| b.slice(offset as usize..end as usize);
        match content {
            Content::Index => Ok(view.index_bytes(offset..end)),
            Content::Receipt => Ok(slice(&view.receipt())),
            Content::Metadata(i) => Ok(slice(&Bytes::from(view.metadata_json(i as usize)))),
            Content::Embedding(i) => {
                let i = i as usize;
                let npy = self
                    .cache
                    .embedding_npy(&view.location(i))
                    .await
                    .map_err(|e| fetch_failed(view, i, e))?;
                Ok(slice(&npy))
            }
            Content::Sample(i) => {
                if offset == 0 {
                    self.cache.metrics().samples_served.inc();
                    self.prefetch.on_first_read(self, &tree, listed, i as usize);
                }
                let i = i as usize;
                if self.plan_miss(view, i) {
                    self.prefetch.on_packed_miss(self, &tree);
                }
                let loc = view.location(i);
                let first = offset / CHUNK;
                let last = (end - 1) / CHUNK;
                let chunks = futures::future::try_join_all(
                    (first..=last).map(|c| self.cache.sample_chunk(&loc, c as u32)),
                )
                .await
                .map_err(|e| fetch_failed(view, i, e))?;
                if chunks.len() == 1 {
                    let base = first * CHUNK;
                    return Ok(chunks[0].slice((offset - base) as usize..(end - base) as usize));
                }
                let mut out = BytesMut::with_capacity((end - offset) as usize);
                for (k, chunk) in chunks.iter().enumerate() {
                    let base = (first + k as u64) * CHUNK;
                    let from = offset.saturating_sub(base) as usize;
                    let to = ((end - base) as usize).min(chunk.len());
                    out.extend_from_slice(&chunk[from..to]);
                }
                Ok(out.freeze())
            }
        }
    }
}

/// Moves tree `id` out of the current views: dropped now if the kernel
/// holds nothing in it, else when it forgets the last lookup.
fn retire(st: &mut State, id: u32) {
    let held = st
        .trees
        .get(&id)
        .is_some_and(|t| t.lookups.load(Ordering::Acquire) > 0);
    if held {
        st.retired.insert(id);
    } else {
        drop_tree(st, id);
    }
}

fn fetch_failed(view: &View, i: usize, e: Arc<FetchError>) -> FsError {
    tracing::error!(
        view = %view.name,
        path = %view.path(i),
        content_id = %view.content_id(i),
        "read failed: {e}"
    );
    FsError::Fetch(e)
}
