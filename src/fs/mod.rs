//! The filesystem core: inodes, lookups, listings and reads over a set of
//! resolved views. Async where it reads data, plain structs in and out; no
//! fuser types, so it is tested without a kernel in the loop.
//!
//! The tree is built once at mount and never changes: views are pinned.
//! Inode numbers are assigned in a fixed order (root = 1, then each spec
//! directory by name: its listing and receipt, then its samples in path
//! order, each preceded by any directory it is the first in and followed
//! by its sidecars), so the same specs always give the same numbers,
//! `forget` has nothing to free, and the kernel may cache entries and
//! attributes indefinitely. A file node holds no name: names come from the
//! view, which stores each sample's path once. Lookups and listings touch
//! only this in-memory tree; only `read` may wait on storage.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicU32;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};

mod prefetch;

use prefetch::Prefetch;

use crate::cache::ChunkCache;
use crate::content_id::CHUNK;
use crate::source::FetchError;
use crate::view::{Content, FileName, View};

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
    /// Samples kept as local files are handed to the kernel (passthrough).
    pub passthrough: bool,
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

/// A node of the tree. Files hold no name or size of their own: both come
/// from the view, which keeps each sample's path once.
struct Node {
    parent: u32,
    body: Body,
}

enum Body {
    /// Index into `ViewFs::dirs`.
    Dir(u32),
    File {
        view: u32,
        content: Content,
    },
}

struct Dir {
    name: Box<str>,
    view: Option<u32>,
    /// Children's inode numbers, sorted by name.
    children: Vec<u32>,
    /// Position in `children` of the sample read last (`u32::MAX`: none):
    /// what tells a reader walking the listing from a random one.
    last_read: AtomicU32,
}

/// The mounted tree.
pub struct ViewFs {
    nodes: Vec<Node>,
    dirs: Vec<Dir>,
    views: Vec<Arc<View>>,
    cache: Arc<ChunkCache>,
    prefetch: Prefetch,
    mount_time: SystemTime,
}

impl ViewFs {
    /// Builds the tree: one directory per view under the root. `prefetch`
    /// is how many samples ahead a reader walking a listing is served from
    /// (0: no prefetch).
    pub fn new(views: Vec<Arc<View>>, cache: ChunkCache, prefetch: usize) -> Self {
        let mut fs = Self {
            nodes: Vec::new(),
            dirs: Vec::new(),
            views,
            cache: Arc::new(cache),
            prefetch: Prefetch::new(prefetch),
            mount_time: SystemTime::now(),
        };
        fs.add_dir(ROOT, "", None);
        let mut order: Vec<usize> = (0..fs.views.len()).collect();
        order.sort_by(|&a, &b| fs.views[a].name.cmp(&fs.views[b].name));
        for vi in order {
            let view = fs.views[vi].clone();
            let view_no = vi as u32;
            let view_root = fs.add_dir(ROOT, &view.name, Some(view_no));
            for content in [Content::Index, Content::Receipt] {
                fs.add(
                    view_root,
                    Body::File {
                        view: view_no,
                        content,
                    },
                );
            }
            // Samples come in path order, each followed by its sidecars.
            let mut dirs: HashMap<String, u64> = HashMap::new();
            for i in 0..view.len() {
                let parent = match view.dir_of(i) {
                    "" => view_root,
                    d => fs.ensure_dir(&mut dirs, view_root, view_no, d),
                };
                for content in view.contents_of(i) {
                    fs.add(
                        parent,
                        Body::File {
                            view: view_no,
                            content,
                        },
                    );
                }
            }
        }
        // Children sorted by name: lookups binary-search, listings are ordered.
        let sorted: Vec<Vec<u32>> = fs
            .dirs
            .iter()
            .map(|d| {
                // Sort on the first 16 bytes kept next to each child; only
                // ties compare whole names.
                let mut named: Vec<(u128, u32)> = d
                    .children
                    .iter()
                    .map(|&c| (fs.name(u64::from(c)).prefix16(), c))
                    .collect();
                named.sort_unstable_by(|a, b| {
                    a.0.cmp(&b.0)
                        .then_with(|| fs.name(u64::from(a.1)).cmp_name(&fs.name(u64::from(b.1))))
                });
                named.into_iter().map(|(_, c)| c).collect()
            })
            .collect();
        for (d, children) in fs.dirs.iter_mut().zip(sorted) {
            d.children = children;
            d.children.shrink_to_fit();
        }
        fs.nodes.shrink_to_fit();
        fs.prefetch.track(&fs.views);
        let samples = fs.views.iter().map(|v| v.len()).sum();
        fs.cache.metrics().set_views(fs.views.len(), samples);
        fs
    }

    /// The counters of this mount.
    pub fn metrics(&self) -> &Arc<crate::metrics::Metrics> {
        self.cache.metrics()
    }

    /// The mounted views.
    pub fn views(&self) -> &[Arc<View>] {
        &self.views
    }

    /// The chunk cache.
    pub fn cache(&self) -> &ChunkCache {
        &self.cache
    }

    fn add(&mut self, parent: u64, body: Body) -> u64 {
        self.nodes.push(Node {
            parent: parent as u32,
            body,
        });
        let ino = self.nodes.len() as u64;
        if ino != ROOT
            && let Body::Dir(d) = self.nodes[(parent - 1) as usize].body
        {
            self.dirs[d as usize].children.push(ino as u32);
        }
        ino
    }

    fn add_dir(&mut self, parent: u64, name: &str, view: Option<u32>) -> u64 {
        self.dirs.push(Dir {
            name: name.into(),
            view,
            children: Vec::new(),
            last_read: AtomicU32::new(u32::MAX),
        });
        self.add(parent, Body::Dir((self.dirs.len() - 1) as u32))
    }

    fn ensure_dir(
        &mut self,
        dirs: &mut HashMap<String, u64>,
        root: u64,
        view: u32,
        path: &str,
    ) -> u64 {
        if let Some(&ino) = dirs.get(path) {
            return ino;
        }
        let (parent, name) = match path.rsplit_once('/') {
            Some((p, n)) => (self.ensure_dir(dirs, root, view, p), n),
            None => (root, path),
        };
        let ino = self.add_dir(parent, name, Some(view));
        dirs.insert(path.to_string(), ino);
        ino
    }

    fn node(&self, ino: u64) -> Result<&Node, FsError> {
        ino.checked_sub(1)
            .and_then(|i| self.nodes.get(i as usize))
            .ok_or(FsError::NotFound)
    }

    /// Name of an existing node.
    fn name(&self, ino: u64) -> FileName<'_> {
        match self.nodes[(ino - 1) as usize].body {
            Body::Dir(d) => FileName::plain(&self.dirs[d as usize].name),
            Body::File { view, content } => self.views[view as usize].file_name(content),
        }
    }

    /// Attributes of `ino`.
    pub fn getattr(&self, ino: u64) -> Result<Attr, FsError> {
        let n = self.node(ino)?;
        let (view, kind, size) = match n.body {
            Body::Dir(d) => (self.dirs[d as usize].view, Kind::Dir, 0),
            Body::File { view, content } => (
                Some(view),
                Kind::File,
                self.views[view as usize].file_size(content),
            ),
        };
        let mtime = match view {
            Some(v) => {
                UNIX_EPOCH + Duration::from_millis(self.views[v as usize].snapshot_ms.max(0) as u64)
            }
            None => self.mount_time,
        };
        Ok(Attr {
            ino,
            kind,
            size,
            mtime,
        })
    }

    fn children(&self, ino: u64) -> Result<&[u32], FsError> {
        match self.node(ino)?.body {
            Body::Dir(d) => Ok(&self.dirs[d as usize].children),
            Body::File { .. } => Err(FsError::NotDir),
        }
    }

    /// Finds `name` in directory `parent`.
    pub fn lookup(&self, parent: u64, name: &str) -> Result<Attr, FsError> {
        let children = self.children(parent)?;
        let i = children
            .binary_search_by(|&c| self.name(u64::from(c)).cmp_str(name))
            .map_err(|_| FsError::NotFound)?;
        self.getattr(u64::from(children[i]))
    }

    /// Lists `ino` from `offset` (0 = start): `.`, `..`, then children by
    /// name. Lazy: the caller takes as many entries as fit in its reply.
    pub fn readdir(
        &self,
        ino: u64,
        offset: u64,
    ) -> Result<impl Iterator<Item = DirEntry<'_>> + '_, FsError> {
        let children = self.children(ino)?;
        let parent = u64::from(self.node(ino)?.parent);
        let total = children.len() as u64 + 2;
        Ok((offset..total).filter_map(move |pos| {
            let (name, child) = match pos {
                0 => (FileName::plain("."), ino),
                1 => (FileName::plain(".."), parent),
                _ => {
                    let c = u64::from(children[(pos - 2) as usize]);
                    (self.name(c), c)
                }
            };
            Some(DirEntry {
                name,
                attr: self.getattr(child).ok()?,
                next_offset: pos + 1,
            })
        }))
    }

    /// Opens `ino` for reading (`write` asks for more: refused). Samples
    /// kept as local files are passed through to the kernel when `mode`
    /// allows, after checking the file has the size the table records
    /// (their bytes are then not verified: `--passthrough` trades that for
    /// speed); everything else is served by [`ViewFs::read`].
    pub fn open(&self, ino: u64, write: bool, mode: OpenMode) -> Result<Opened, FsError> {
        if write {
            return Err(FsError::ReadOnly);
        }
        let node = self.node(ino)?;
        let Body::File { view, content } = node.body else {
            return Err(FsError::IsDir);
        };
        if mode.passthrough
            && let Content::Sample(i) = content
        {
            let view = &self.views[view as usize];
            let loc = view.location(i as usize);
            match self.cache.source().open_local(&loc) {
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
        let n = self.node(ino)?;
        let Body::File {
            view: view_no,
            content,
        } = n.body
        else {
            return Err(FsError::IsDir);
        };
        let view = &self.views[view_no as usize];
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
                    .embedding_npy(view_no, view, i)
                    .await
                    .map_err(|e| fetch_failed(view, i, e))?;
                Ok(slice(&npy))
            }
            Content::Sample(i) => {
                if offset == 0 {
                    self.cache.metrics().samples_served.inc();
                    self.prefetch.on_first_read(self, ino, view_no, i as usize);
                }
                let i = i as usize;
                let first = offset / CHUNK;
                let last = (end - 1) / CHUNK;
                let chunks = futures::future::try_join_all(
                    (first..=last).map(|c| self.cache.sample_chunk(view_no, view, i, c as u32)),
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

fn fetch_failed(view: &View, i: usize, e: Arc<FetchError>) -> FsError {
    tracing::error!(
        view = %view.name,
        path = %view.path(i),
        content_id = %view.content_id(i),
        "read failed: {e}"
    );
    FsError::Fetch(e)
}
