//! A spec resolved at a snapshot: the immutable list of files one spec
//! directory shows.
//!
//! Resolution ([`resolve()`]) reads only metadata: the Iceberg scan with the
//! spec's filter pushed down and the Lance `content_id` column at the Lance
//! version the snapshot records. No blob is read. Because the snapshot is
//! pinned the result never changes: the fs layer numbers inodes
//! deterministically and lets the kernel cache everything.
//!
//! The steps, one file each, each importing only the ones above it:
//!
//! - [`compact`]: how a million samples fit in memory;
//! - [`epochs`]: the arithmetic of epoch views (permutations, dealing to
//!   ranks, mixtures), no rows needed;
//! - [`scan`]: which snapshot, which columns, the filter, the rows decoded
//!   into content ids, URIs and Arrow columns (the Lance table at the
//!   snapshot's version is [`crate::snapshot`]'s rule);
//! - [`arrange`]: diverse selection, `order`, `shard`: the order a view
//!   lists in and each sample's position, shard and cluster;
//! - [`nearest`]: a similarity view's k nearest rows;
//! - [`render`]: the bytes of `.json` sidecars, `_index.jsonl` lines and
//!   `_receipt.json`, rendered on read;
//! - [`place`]: the layout rendered per row, name clashes resolved, paths
//!   sorted;
//! - [`finish`]: the [`Resolver`] and the steps every view ends with
//!   (trust verdicts, sizes, the epoch plan);
//! - [`materialize`]: a resolved view written to and read from a Parquet
//!   index (`lakemount pin --materialize`);
//! - [`resolve`]: the whole resolution from the table, or the
//!   materialized index when the pinned spec names one.
//!
//! Order and names are deterministic: samples are taken in content-id order
//! (that is what `limit` keeps the first N of), or rank order in a
//! similarity view, rendered through the layout, and clashes resolved as
//! [`crate::layout`] documents.

pub mod arrange;
pub mod compact;
pub mod epochs;
pub mod finish;
pub mod materialize;
pub mod nearest;
pub mod place;
pub mod render;
pub mod resolve;
pub mod scan;

use std::borrow::Cow;
use std::ops::Range;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use lance::Dataset;

use crate::content_id::ContentId;
pub use crate::snapshot::LanceAt;
pub use compact::FileName;
use compact::{BlobUris, PathArena, PathSpan, UriRef};
pub use finish::Resolver;
use render::Columns;
pub use resolve::{resolve, resolve_from_table};

/// Name of the listing file at the root of each spec directory.
pub const INDEX_FILE: &str = "_index.jsonl";
/// Name of the receipt file at the root of each spec directory.
pub const RECEIPT_FILE: &str = "_receipt.json";
/// `_index.jsonl` keeps the byte offset of every this many lines.
pub const INDEX_STRIDE: usize = 64;

/// One sample of a view: a fixed-size record; its strings live in the view.
#[derive(Debug, Clone)]
pub struct Sample {
    /// SHA-256 of the bytes.
    pub content_id: ContentId,
    /// Size of the bytes, from metadata.
    pub size: u64,
    /// Stable Lance row id, if the Lance dataset has the sample.
    pub lance_row: Option<u64>,
    path: PathSpan,
    uri: UriRef,
    /// Length of the `.json` sidecar; 0 when there is none.
    json_len: u32,
    /// Whether the `.npy` sidecar exists.
    npy: bool,
}

/// What a file in a view holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Content {
    /// The bytes of sample `i`.
    Sample(u32),
    /// The `.npy` embedding of sample `i`.
    Embedding(u32),
    /// The `.json` metadata of sample `i`.
    Metadata(u32),
    /// The listing.
    Index,
    /// The receipt.
    Receipt,
}

/// One file of a view: where it is, how big, what it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEntry {
    /// Path relative to the spec directory.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// Contents.
    pub content: Content,
}

/// Where a sample's bytes are, as the storage layer needs them.
#[derive(Debug, Clone)]
pub struct SampleLoc {
    /// The sample.
    pub content_id: ContentId,
    /// Its size per the table.
    pub size: u64,
    /// Its URI per the table.
    pub uri: String,
    /// Its Lance row, for inline blobs and embeddings.
    pub lance: Option<(Arc<Dataset>, u64)>,
    /// SHA-256 of each 1 MiB chunk, when the table recorded them.
    pub chunk_digests: Option<Arc<[[u8; 32]]>>,
    /// Whether the URI passed the warehouse's trust rule at resolve time.
    pub trusted: bool,
}

/// What a similarity search used.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SearchInfo {
    /// Digest of the query vector.
    pub query_sha256: Option<String>,
    /// Lance version of the vector index searched; `None` for exact.
    pub index_version: Option<u64>,
}

/// The samples and what their files are rendered from.
#[derive(Debug)]
struct Entries {
    /// Samples in path order.
    samples: Vec<Sample>,
    paths: PathArena,
    uris: BlobUris,
    columns: Columns,
    /// (rank, distance) of sample `i` in a similarity view; empty otherwise.
    ranks: Vec<(u32, f32)>,
    /// Position, shard and cluster of sample `i`, where the spec has them.
    extra: arrange::Extra,
    /// Size of every `.npy` sidecar (they all have the table's dimension).
    npy_len: u64,
    /// Chunk digests by sample, for samples that have them (sorted).
    digests: Vec<(u32, Arc<[[u8; 32]]>)>,
    /// Samples whose URI failed the trust rule (sorted); usually empty.
    untrusted: Vec<u32>,
    /// A mixture's source names (its samples' sources are in `extra`).
    source_names: Vec<String>,
    /// Samples read from elsewhere than their table `uri` says (a pack
    /// `lakemount repack` wrote), by sample (sorted); usually empty.
    read_from: Vec<(u32, UriRef)>,
}

/// `_index.jsonl`: its order, size and where every [`INDEX_STRIDE`]th line starts.
#[derive(Debug)]
struct Listing {
    /// Samples in listing order when it is not path order (views with a
    /// similarity query, diverse sampling, `order` or `shard`).
    order: Option<Vec<u32>>,
    /// The inverse: line of each sample, when `order` is set.
    lines: Option<Vec<u32>>,
    len: u64,
    /// Byte offset of lines 0, INDEX_STRIDE, 2 * INDEX_STRIDE, ...
    marks: Vec<u64>,
    sha256: OnceLock<String>,
}

/// A resolved, immutable view.
#[derive(Debug)]
pub struct View {
    /// Directory name under the mountpoint.
    pub name: String,
    /// Snapshot read.
    pub snapshot_id: i64,
    /// Commit time of that snapshot (ms since the epoch): every file's mtime.
    pub snapshot_ms: i64,
    /// Lance dataset, if the table has one.
    pub lance: Option<LanceAt>,
    /// What a similarity view searched with.
    pub search: Option<SearchInfo>,
    /// How a view with `epochs:` lists its epoch directories.
    pub epochs: Option<epochs::EpochPlan>,
    entries: Entries,
    listing: Listing,
    /// `_receipt.json` without the listing digest, which is rendered on
    /// first use: its length is fixed, so the file's size is known now.
    receipt: serde_json::Value,
    receipt_len: u64,
    receipt_bytes: OnceLock<Bytes>,
    /// Packed samples by pack, sorted by offset, built on first use.
    pack_members: OnceLock<Vec<Vec<PackMember>>>,
}

/// A packed sample of a view, as its pack holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackMember {
    /// Offset in the pack.
    pub offset: u64,
    /// Length (the sample's size).
    pub length: u32,
    /// The sample.
    pub sample: u32,
}

impl View {
    /// Number of samples.
    pub fn len(&self) -> usize {
        self.entries.samples.len()
    }

    /// Whether the view has no samples.
    pub fn is_empty(&self) -> bool {
        self.entries.samples.is_empty()
    }

    /// Sample `i`.
    pub fn sample(&self, i: usize) -> &Sample {
        &self.entries.samples[i]
    }

    /// The directory sample `i` is in, relative to the spec directory
    /// (empty for the top).
    pub fn dir_of(&self, i: usize) -> &str {
        self.entries.dir_of(i)
    }

    /// The files sample `i` brings: itself and its sidecars.
    pub fn contents_of(&self, i: usize) -> impl Iterator<Item = Content> {
        let s = &self.entries.samples[i];
        let n = i as u32;
        std::iter::once(Content::Sample(n))
            .chain(s.npy.then_some(Content::Embedding(n)))
            .chain((s.json_len > 0).then_some(Content::Metadata(n)))
    }

    /// Path of `content`'s file, relative to the spec directory.
    pub fn file_path(&self, content: Content) -> String {
        self.entries.file_path(content)
    }

    /// Path of sample `i`, relative to the spec directory.
    pub fn path(&self, i: usize) -> String {
        self.file_path(Content::Sample(i as u32))
    }

    /// Hex content id of sample `i`.
    pub fn content_id(&self, i: usize) -> String {
        self.entries.samples[i].content_id.hex()
    }

    /// Where sample `i` lies when it is packed: its pack (by number) and
    /// range.
    pub fn packed_at(&self, i: usize) -> Option<compact::PackedAt> {
        self.entries.uris.packed_at(self.entries.read_ref(i))
    }

    /// The URI of pack number `n`.
    pub fn pack_uri(&self, n: u32) -> &str {
        self.entries.uris.object_uri(n)
    }

    /// The view's samples in pack `n`, by offset (built once, on first
    /// use: 16 bytes per packed sample).
    pub fn pack_members(&self, n: u32) -> &[PackMember] {
        let all = self.pack_members.get_or_init(|| {
            let mut by_pack: Vec<Vec<PackMember>> = vec![Vec::new(); self.entries.uris.objects()];
            for i in 0..self.entries.samples.len() {
                if let Some(at) = self.entries.uris.packed_at(self.entries.read_ref(i)) {
                    by_pack[at.object as usize].push(PackMember {
                        offset: at.offset,
                        length: at.length,
                        sample: i as u32,
                    });
                }
            }
            for members in &mut by_pack {
                members.sort_unstable_by_key(|m| m.offset);
                members.shrink_to_fit();
            }
            by_pack
        });
        all.get(n as usize).map_or(&[], Vec::as_slice)
    }

    /// Where sample `i`'s bytes are.
    pub fn uri(&self, i: usize) -> Cow<'_, str> {
        self.entries.uri(i)
    }

    /// Everything the storage layer needs to fetch sample `i`.
    pub fn location(&self, i: usize) -> SampleLoc {
        let e = &self.entries;
        let s = &e.samples[i];
        let lance = match (&self.lance, s.lance_row) {
            (Some(l), Some(row)) => Some((l.dataset.clone(), row)),
            _ => None,
        };
        let n = i as u32;
        SampleLoc {
            content_id: s.content_id,
            size: s.size,
            uri: e.uris.get(e.read_ref(i), &s.content_id).into_owned(),
            lance,
            chunk_digests: e
                .digests
                .binary_search_by_key(&n, |(k, _)| *k)
                .ok()
                .map(|k| e.digests[k].1.clone()),
            trusted: e.untrusted.binary_search(&n).is_err(),
        }
    }

    /// The last component of `content`'s path, without allocating.
    pub fn file_name(&self, content: Content) -> FileName<'_> {
        self.entries.file_name(content)
    }

    /// Size of `content`'s file.
    pub fn file_size(&self, content: Content) -> u64 {
        match content {
            Content::Index => self.listing.len,
            Content::Receipt => self.receipt_len,
            Content::Sample(i) => self.entries.samples[i as usize].size,
            Content::Embedding(_) => self.entries.npy_len,
            Content::Metadata(i) => u64::from(self.entries.samples[i as usize].json_len),
        }
    }

    /// Every file of the view, sorted by path.
    pub fn files(&self) -> Vec<FileEntry> {
        let mut out: Vec<FileEntry> = [Content::Index, Content::Receipt]
            .into_iter()
            .chain((0..self.len()).flat_map(|i| self.contents_of(i)))
            .map(|content| FileEntry {
                path: self.file_path(content),
                size: self.file_size(content),
                content,
            })
            .collect();
        out.sort_by(|a, b| a.path.cmp(&b.path));
        out
    }

    /// The `.json` sidecar of sample `i`.
    pub fn metadata_json(&self, i: usize) -> Vec<u8> {
        self.entries.metadata_json(i)
    }

    /// SHA-256 of `_index.jsonl` (rendered and hashed on first use).
    pub fn listing_sha256(&self) -> &str {
        self.listing
            .sha256
            .get_or_init(|| self.entries.listing_digest(self.listing.order.as_deref()))
    }

    /// The `_receipt.json` bytes.
    pub fn receipt(&self) -> Bytes {
        self.receipt_bytes
            .get_or_init(|| {
                Bytes::from(render::render_receipt(&self.receipt, self.listing_sha256()))
            })
            .clone()
    }

    /// Sample on line `line` of the listing (its epoch order).
    pub fn listing_sample(&self, line: usize) -> usize {
        self.listing
            .order
            .as_ref()
            .map_or(line, |o| o[line] as usize)
    }

    /// Line of sample `i` in the listing.
    pub fn listing_line(&self, i: usize) -> usize {
        self.listing.lines.as_ref().map_or(i, |l| l[i] as usize)
    }

    /// Whether the listing is in an order of its own, not path order.
    pub fn is_ordered(&self) -> bool {
        self.listing.order.is_some()
    }

    /// The data-parallel rank sample `i` belongs to (0 when not sharded).
    pub fn shard_of(&self, i: usize) -> u32 {
        self.entries.extra.shards.get(i).copied().unwrap_or(0)
    }

    /// Bytes `range` of `_index.jsonl`, rendered from the nearest mark.
    pub fn index_bytes(&self, range: Range<u64>) -> Bytes {
        let end = range.end.min(self.listing.len);
        if range.start >= end {
            return Bytes::new();
        }
        let mark = self.listing.marks.partition_point(|&m| m <= range.start) - 1;
        let base = self.listing.marks[mark];
        let mut buf = Vec::with_capacity((end - base) as usize + 512);
        let mut line = mark * INDEX_STRIDE;
        let order = self.listing.order.as_deref();
        while base + (buf.len() as u64) < end && line < self.len() {
            let i = order.map_or(line, |o| o[line] as usize);
            self.entries.index_line(i, &mut buf);
            line += 1;
        }
        let from = (range.start - base) as usize;
        let to = ((end - base) as usize).min(buf.len());
        Bytes::from(buf).slice(from..to)
    }
}

impl Entries {
    fn dir_of(&self, i: usize) -> &str {
        let (dir, _) = self.paths.split(self.samples[i].path);
        dir.strip_suffix('/').unwrap_or(dir)
    }

    fn uri(&self, i: usize) -> Cow<'_, str> {
        let s = &self.samples[i];
        self.uris.get(s.uri, &s.content_id)
    }

    /// Where sample `i`'s bytes are read from: its table `uri`, or the
    /// pack it was repacked into.
    fn read_ref(&self, i: usize) -> UriRef {
        match self
            .read_from
            .binary_search_by_key(&(i as u32), |(k, _)| *k)
        {
            Ok(k) => self.read_from[k].1,
            Err(_) => self.samples[i].uri,
        }
    }

    fn file_name(&self, content: Content) -> FileName<'_> {
        let (i, suffix) = match content {
            Content::Index => return FileName::plain(INDEX_FILE),
            Content::Receipt => return FileName::plain(RECEIPT_FILE),
            Content::Sample(i) => (i as usize, ""),
            Content::Embedding(i) => (i as usize, ".npy"),
            Content::Metadata(i) => (i as usize, ".json"),
        };
        let (_, mut name) = self.paths.split(self.samples[i].path);
        if !suffix.is_empty() {
            name = place::sidecar_base(name);
        }
        FileName::stored(name, &self.samples[i].content_id, suffix)
    }

    fn file_path(&self, content: Content) -> String {
        let dir = match content {
            Content::Index | Content::Receipt => "",
            Content::Sample(i) | Content::Embedding(i) | Content::Metadata(i) => {
                self.paths.split(self.samples[i as usize].path).0
            }
        };
        format!("{dir}{}", self.file_name(content))
    }
}
