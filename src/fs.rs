//! The filesystem core: inodes, lookups, listings and reads over a set of
//! resolved views. Async where it reads data, plain structs in and out; no
//! fuser types, so it is tested without a kernel in the loop.
//!
//! The tree is built once at mount and never changes: views are pinned.
//! Inode numbers are assigned in sorted path order (root = 1, then each
//! spec directory and its contents), so the same specs always give the same
//! numbers, `forget` has nothing to free, and the kernel may cache entries
//! and attributes indefinitely. Lookups and listings touch only this
//! in-memory tree; only `read` may wait on storage.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};

use crate::cache::{CHUNK, ChunkCache, FetchError};
use crate::view::{Content, View};

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

/// One entry of a directory listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    /// The entry's name.
    pub name: String,
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
    /// The bytes could not be fetched.
    #[error("{0}")]
    Fetch(Arc<FetchError>),
}

enum Body {
    Dir {
        children: Vec<u64>,
    },
    File {
        view: u32,
        content: Content,
        size: u64,
    },
}

struct Node {
    parent: u64,
    name: Box<str>,
    view: Option<u32>,
    body: Body,
}

/// The mounted tree.
pub struct ViewFs {
    nodes: Vec<Node>,
    views: Vec<Arc<View>>,
    cache: ChunkCache,
    mount_time: SystemTime,
}

impl ViewFs {
    /// Builds the tree: one directory per view under the root.
    pub fn new(views: Vec<Arc<View>>, cache: ChunkCache) -> Self {
        let mut nodes = vec![Node {
            parent: ROOT,
            name: "".into(),
            view: None,
            body: Body::Dir {
                children: Vec::new(),
            },
        }];
        let mut order: Vec<usize> = (0..views.len()).collect();
        order.sort_by(|&a, &b| views[a].name.cmp(&views[b].name));
        for vi in order {
            let view = &views[vi];
            let view_no = vi as u32;
            let view_root = add(
                &mut nodes,
                ROOT,
                &view.name,
                Some(view_no),
                Body::Dir {
                    children: Vec::new(),
                },
            );
            let mut dirs: HashMap<String, u64> = HashMap::new();
            for f in view.files() {
                let (dir_path, file_name) = match f.path.rsplit_once('/') {
                    Some((d, n)) => (Some(d), n),
                    None => (None, f.path.as_str()),
                };
                let parent = match dir_path {
                    None => view_root,
                    Some(d) => ensure_dir(&mut nodes, &mut dirs, view_root, view_no, d),
                };
                add(
                    &mut nodes,
                    parent,
                    file_name,
                    Some(view_no),
                    Body::File {
                        view: view_no,
                        content: f.content,
                        size: f.size,
                    },
                );
            }
        }
        // Children sorted by name: lookups binary-search, listings are ordered.
        let names: Vec<Box<str>> = nodes.iter().map(|n| n.name.clone()).collect();
        for n in &mut nodes {
            if let Body::Dir { children } = &mut n.body {
                children.sort_by(|a, b| names[(*a - 1) as usize].cmp(&names[(*b - 1) as usize]));
            }
        }
        Self {
            nodes,
            views,
            cache,
            mount_time: SystemTime::now(),
        }
    }

    fn node(&self, ino: u64) -> Result<&Node, FsError> {
        ino.checked_sub(1)
            .and_then(|i| self.nodes.get(i as usize))
            .ok_or(FsError::NotFound)
    }

    /// Attributes of `ino`.
    pub fn getattr(&self, ino: u64) -> Result<Attr, FsError> {
        let n = self.node(ino)?;
        let mtime = match n.view {
            Some(v) => {
                UNIX_EPOCH + Duration::from_millis(self.views[v as usize].snapshot_ms.max(0) as u64)
            }
            None => self.mount_time,
        };
        Ok(match n.body {
            Body::Dir { .. } => Attr {
                ino,
                kind: Kind::Dir,
                size: 0,
                mtime,
            },
            Body::File { size, .. } => Attr {
                ino,
                kind: Kind::File,
                size,
                mtime,
            },
        })
    }

    /// Finds `name` in directory `parent`.
    pub fn lookup(&self, parent: u64, name: &str) -> Result<Attr, FsError> {
        let Body::Dir { children } = &self.node(parent)?.body else {
            return Err(FsError::NotDir);
        };
        let i = children
            .binary_search_by(|c| self.nodes[(*c - 1) as usize].name.as_ref().cmp(name))
            .map_err(|_| FsError::NotFound)?;
        self.getattr(children[i])
    }

    /// Lists `ino` from `offset` (0 = start): `.`, `..`, then children by name.
    pub fn readdir(&self, ino: u64, offset: u64) -> Result<Vec<DirEntry>, FsError> {
        let n = self.node(ino)?;
        let Body::Dir { children } = &n.body else {
            return Err(FsError::NotDir);
        };
        let mut out = Vec::new();
        let total = children.len() as u64 + 2;
        for pos in offset..total {
            let (name, child) = match pos {
                0 => (".".to_string(), ino),
                1 => ("..".to_string(), n.parent),
                _ => {
                    let c = children[(pos - 2) as usize];
                    (self.nodes[(c - 1) as usize].name.to_string(), c)
                }
            };
            out.push(DirEntry {
                name,
                attr: self.getattr(child)?,
                next_offset: pos + 1,
            });
        }
        Ok(out)
    }

    /// The local file that holds a sample's bytes, with the size the table
    /// records, when the sample's URI is a `file://` URL. Used to let the
    /// kernel read such files directly (FUSE passthrough); every other
    /// storage goes through [`ViewFs::read`].
    pub fn local_file(&self, ino: u64) -> Option<(std::path::PathBuf, u64)> {
        let Body::File {
            view,
            content: Content::Sample(i),
            size,
        } = self.node(ino).ok()?.body
        else {
            return None;
        };
        let uri = &self.views[view as usize].samples[i].uri;
        let path = url::Url::parse(uri)
            .ok()
            .filter(|u| u.scheme() == "file")?
            .to_file_path()
            .ok()?;
        Some((path, size))
    }

    /// Reads up to `size` bytes at `offset`; short only at end of file.
    pub async fn read(&self, ino: u64, offset: u64, size: u32) -> Result<Bytes, FsError> {
        let n = self.node(ino)?;
        let Body::File {
            view: view_no,
            content,
            size: len,
        } = n.body
        else {
            return Err(FsError::IsDir);
        };
        if offset >= len || size == 0 {
            return Ok(Bytes::new());
        }
        let end = len.min(offset + u64::from(size));
        let view = &self.views[view_no as usize];
        let slice = |b: &Bytes| b.slice(offset as usize..end as usize);
        match content {
            Content::Index => Ok(slice(&view.index)),
            Content::Receipt => Ok(slice(&view.receipt)),
            Content::Metadata(i) => Ok(slice(&view.samples[i].metadata)),
            Content::Embedding(i) => {
                let npy = self
                    .cache
                    .embedding_npy(view_no, view, i)
                    .await
                    .map_err(|e| fetch_failed(view, i, e))?;
                Ok(slice(&npy))
            }
            Content::Sample(i) => {
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
        path = %view.samples[i].path,
        content_id = %view.samples[i].content_id,
        "read failed: {e}"
    );
    FsError::Fetch(e)
}

fn add(nodes: &mut Vec<Node>, parent: u64, name: &str, view: Option<u32>, body: Body) -> u64 {
    nodes.push(Node {
        parent,
        name: name.into(),
        view,
        body,
    });
    let ino = nodes.len() as u64;
    if let Body::Dir { children } = &mut nodes[(parent - 1) as usize].body {
        children.push(ino);
    }
    ino
}

fn ensure_dir(
    nodes: &mut Vec<Node>,
    dirs: &mut HashMap<String, u64>,
    root: u64,
    view: u32,
    path: &str,
) -> u64 {
    if let Some(&ino) = dirs.get(path) {
        return ino;
    }
    let (parent, name) = match path.rsplit_once('/') {
        Some((p, n)) => (ensure_dir(nodes, dirs, root, view, p), n),
        None => (root, path),
    };
    let ino = add(
        nodes,
        parent,
        name,
        Some(view),
        Body::Dir {
            children: Vec::new(),
        },
    );
    dirs.insert(path.to_string(), ino);
    ino
}
