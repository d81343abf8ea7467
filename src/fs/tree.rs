//! One view's directory tree: built once, never changed. A view that is
//! edited or removed while mounted gets a new tree; the old one lives on
//! while the kernel still holds any of its inodes.
//!
//! Inode numbers: tree `id` owns `(id << 32) | n` for n = 1, 2, ... in a
//! fixed order (the spec directory, its listing and receipt, then its
//! samples in path order, each preceded by any directory it is the first
//! in and followed by its sidecars), so the same specs mounted the same
//! way always give the same numbers. A file node holds no name: names come
//! from the view, which stores each sample's path once.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use super::walks::{Cursors, TreeWalks};
use super::{Attr, FsError, Kind, TREE_SHIFT};
use crate::view::{Content, FileName, View};

pub(super) struct Node {
    /// Local number of the parent; 0 for the spec directory (its parent is the root).
    pub(super) parent: u32,
    pub(super) body: Body,
}

pub(super) enum Body {
    /// Index into `Tree::dirs`.
    Dir(u32),
    File(Content),
}

pub(super) struct Dir {
    pub(super) name: Box<str>,
    /// Children's local numbers, sorted by name.
    pub(super) children: Vec<u32>,
    /// Where the readers walking this directory are: what tells them from
    /// random reads.
    pub(super) cursors: Cursors,
}

/// A view's nodes.
pub struct Tree {
    pub(super) id: u32,
    pub(super) view: Arc<View>,
    pub(super) nodes: Vec<Node>,
    pub(super) dirs: Vec<Dir>,
    pub(super) walks: TreeWalks,
    /// Lookups the kernel holds on this tree's inodes (`forget` returns them).
    pub(super) lookups: AtomicU64,
    /// The epoch directories of a view with `epochs:`.
    pub(super) epochs: Option<super::epochs::EpochDirs>,
}

impl Tree {
    /// Tree ids a tree of `view` needs: its own, and one per shown epoch.
    pub(super) fn ids_for(view: &View) -> u32 {
        1 + view.epochs.as_ref().map_or(0, |p| p.shown().len() as u32)
    }

    /// Builds the tree of `view` with id `id` (and, for a view with epochs,
    /// the [`Tree::ids_for`] ids after it).
    pub(super) fn build(id: u32, view: Arc<View>, prefetch: bool) -> Tree {
        let epochs = view
            .epochs
            .clone()
            .map(|plan| super::epochs::EpochDirs::new(id + 1, plan, view.len() as u64));
        let mut t = Tree {
            id,
            walks: TreeWalks::new(&view, prefetch),
            view,
            nodes: Vec::new(),
            dirs: Vec::new(),
            lookups: AtomicU64::new(0),
            epochs,
        };
        let name = t.view.name.clone();
        let root = t.add_dir(0, &name);
        for content in [Content::Index, Content::Receipt] {
            t.add(root, Body::File(content));
        }
        if t.epochs.is_some() {
            // The samples are shown only in the epoch directories.
            t.nodes.shrink_to_fit();
            return t;
        }
        // Samples come in path order, each followed by its sidecars.
        let mut dirs: HashMap<String, u32> = HashMap::new();
        let view = t.view.clone();
        for i in 0..view.len() {
            let parent = match view.dir_of(i) {
                "" => root,
                d => t.ensure_dir(&mut dirs, root, d),
            };
            for content in view.contents_of(i) {
                t.add(parent, Body::File(content));
            }
        }
        // Children sorted by name: lookups binary-search, listings are ordered.
        let sorted: Vec<Vec<u32>> = t
            .dirs
            .iter()
            .map(|d| {
                // Sort on the first 16 bytes kept next to each child; only
                // ties compare whole names.
                let mut named: Vec<(u128, u32)> = d
                    .children
                    .iter()
                    .map(|&c| (t.name(c).prefix16(), c))
                    .collect();
                named.sort_unstable_by(|a, b| {
                    a.0.cmp(&b.0)
                        .then_with(|| t.name(a.1).cmp_name(&t.name(b.1)))
                });
                named.into_iter().map(|(_, c)| c).collect()
            })
            .collect();
        for (d, children) in t.dirs.iter_mut().zip(sorted) {
            d.children = children;
            d.children.shrink_to_fit();
        }
        t.nodes.shrink_to_fit();
        t
    }

    fn add(&mut self, parent: u32, body: Body) -> u32 {
        self.nodes.push(Node { parent, body });
        let local = self.nodes.len() as u32;
        if parent != 0
            && let Body::Dir(d) = self.nodes[(parent - 1) as usize].body
        {
            self.dirs[d as usize].children.push(local);
        }
        local
    }

    fn add_dir(&mut self, parent: u32, name: &str) -> u32 {
        self.dirs.push(Dir {
            name: name.into(),
            children: Vec::new(),
            cursors: Cursors::default(),
        });
        self.add(parent, Body::Dir((self.dirs.len() - 1) as u32))
    }

    fn ensure_dir(&mut self, dirs: &mut HashMap<String, u32>, root: u32, path: &str) -> u32 {
        if let Some(&local) = dirs.get(path) {
            return local;
        }
        let (parent, name) = match path.rsplit_once('/') {
            Some((p, n)) => (self.ensure_dir(dirs, root, p), n),
            None => (root, path),
        };
        let local = self.add_dir(parent, name);
        dirs.insert(path.to_string(), local);
        local
    }

    /// The global inode number of local node `local`.
    pub(super) fn ino(&self, local: u32) -> u64 {
        (u64::from(self.id) << TREE_SHIFT) | u64::from(local)
    }

    pub(super) fn node(&self, local: u32) -> Result<&Node, FsError> {
        local
            .checked_sub(1)
            .and_then(|i| self.nodes.get(i as usize))
            .ok_or(FsError::NotFound)
    }

    /// Name of an existing node.
    pub(super) fn name(&self, local: u32) -> FileName<'_> {
        match self.nodes[(local - 1) as usize].body {
            Body::Dir(d) => FileName::plain(&self.dirs[d as usize].name),
            Body::File(content) => self.view.file_name(content),
        }
    }

    /// Every file's mtime: the commit time of the view's snapshot.
    pub(super) fn mtime(&self) -> std::time::SystemTime {
        super::mtime(&self.view)
    }

    /// Attributes of local node `local`.
    pub(super) fn attr(&self, local: u32) -> Result<Attr, FsError> {
        let (kind, size) = match self.node(local)?.body {
            Body::Dir(_) => (Kind::Dir, 0),
            Body::File(content) => (Kind::File, self.view.file_size(content)),
        };
        Ok(Attr {
            ino: self.ino(local),
            kind,
            size,
            mtime: self.mtime(),
        })
    }

    pub(super) fn children(&self, local: u32) -> Result<&[u32], FsError> {
        match self.node(local)?.body {
            Body::Dir(d) => Ok(&self.dirs[d as usize].children),
            Body::File(_) => Err(FsError::NotDir),
        }
    }

    /// Finds `name` in directory `parent` (local).
    pub(super) fn lookup(&self, parent: u32, name: &str) -> Result<Attr, FsError> {
        if parent == 1
            && let Some(ep) = &self.epochs
            && let Some(e) = ep.parse_epoch(name)
        {
            return ep.attr(&self.view, e, super::epochs::EpochNode::Epoch);
        }
        let children = self.children(parent)?;
        let i = children
            .binary_search_by(|&c| self.name(c).cmp_str(name))
            .map_err(|_| FsError::NotFound)?;
        self.attr(children[i])
    }
}
