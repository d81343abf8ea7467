//! A spec resolved at a snapshot: the immutable list of files one spec
//! directory shows.
//!
//! Resolution reads only metadata: the Iceberg scan (with the spec's filter
//! pushed down) and the Lance `content_id` column at the Lance version the
//! snapshot records. No blob is read. Because the snapshot is pinned, the
//! result never changes: the fs layer can number inodes deterministically
//! and tell the kernel to cache everything for as long as it likes.
//!
//! Order and names are deterministic: samples are taken in content-id order
//! (that is what `limit` keeps the first N of), rendered through the layout,
//! and collisions resolved as [`crate::layout`] documents.
//!
//! A mount may hold millions of samples, so a view is kept compact: a
//! [`Sample`] is a fixed-size record (binary content id, size, Lance row,
//! where its path starts in one shared string), blob-store URIs are a shared
//! prefix plus the content id, the columns the listing and the metadata
//! sidecars need stay Arrow arrays (low-cardinality strings dictionary
//! encoded), and `_index.jsonl` and the `.json` sidecars are rendered when
//! read. Resolution renders each of them once, for sizes and the listing
//! digest, and keeps only a byte offset for every [`INDEX_STRIDE`] lines.

use std::borrow::Cow;
use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, OnceLock};

use anyhow::{Context, Result, anyhow, bail};
use arrow_array::types::Int32Type;
use arrow_array::{
    Array, ArrayRef, BooleanArray, DictionaryArray, Float32Array, Float64Array, Int32Array,
    Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray, UInt32Array,
};
use arrow_cast::display::ArrayFormatter;
use arrow_schema::DataType;
use bytes::Bytes;
use futures::TryStreamExt;
use iceberg::Catalog;
use iceberg::table::Table;
use lance::Dataset;
use serde_json::Value as Json;
use sha2::{Digest, Sha256};

use crate::catalog::{PROP_LANCE_URI, PROP_LANCE_VERSION, filter};
use crate::encode::{Encoder, extension_for};
use crate::similar;
use crate::spec::{Query, SnapshotSel, Spec};
use crate::warehouse::parse_table_ident;

/// Name of the listing file at the root of each spec directory.
pub const INDEX_FILE: &str = "_index.jsonl";
/// Name of the receipt file at the root of each spec directory.
pub const RECEIPT_FILE: &str = "_receipt.json";
/// `_index.jsonl` keeps the byte offset of every this many lines.
pub const INDEX_STRIDE: usize = 64;
/// Columns every `_index.jsonl` line shows.
const INDEX_COLUMNS: [&str; 4] = ["label", "media_type", "size_bytes", "split"];

/// The Lance dataset a view reads, checked out at the snapshot's version.
#[derive(Debug, Clone)]
pub struct LanceAt {
    /// Dataset location.
    pub uri: String,
    /// Version recorded by the snapshot (or its nearest ancestor).
    pub version: u64,
    /// The dataset at that version.
    pub dataset: Arc<Dataset>,
    /// Embedding dimension.
    pub dim: usize,
}

/// One sample of a view: a fixed-size record, its strings live in the view.
#[derive(Debug, Clone)]
pub struct Sample {
    /// SHA-256 of the bytes.
    pub content_id: [u8; 32],
    /// Size of the bytes, from metadata.
    pub size: u64,
    /// Stable Lance row id, if the Lance dataset has the sample.
    pub lance_row: Option<u64>,
    path_start: u32,
    path_len: u32,
    /// Where the bytes are: see [`View::uri`].
    uri: u32,
    /// Length of the `.json` sidecar; 0 when there is none.
    json_len: u32,
    /// Whether the `.npy` sidecar exists.
    npy: bool,
}

/// Where a `.json` sidecar key's value comes from.
#[derive(Debug, Clone, Copy)]
enum MetaField {
    Column(usize),
    ContentId,
    Uri,
    Rank,
    Distance,
}

/// Marks a [`Sample::uri`] that indexes [`View::uris`] (else [`View::uri_prefixes`]).
const URI_FULL: u32 = 1 << 31;

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
    /// Samples in path order.
    pub samples: Vec<Sample>,
    /// `_receipt.json` without the listing digest, which is filled in on
    /// first use: its length is fixed, so the file's size is known now.
    receipt: Json,
    receipt_len: u64,
    receipt_bytes: OnceLock<Bytes>,
    listing_sha256: OnceLock<String>,
    /// Digest of a similarity view's query vector.
    pub query_sha256: Option<String>,
    /// Lance version of the vector index a similarity view searched, `None` for exact.
    pub index_version: Option<u64>,
    npy_len: u64,
    /// Every sample's path, back to back.
    paths: String,
    uri_prefixes: Vec<String>,
    uris: Vec<Box<str>>,
    /// Column values, row `i` = sample `i`; without `content_id` and `uri`.
    columns: Vec<(String, ArrayRef)>,
    /// Where the [`INDEX_COLUMNS`] are in `columns`.
    index_cols: [Option<usize>; 4],
    /// The keys of a `.json` sidecar, sorted, and where their values are.
    meta_fields: Vec<(String, MetaField)>,
    /// (rank, distance) of sample `i` in a similarity view; empty otherwise.
    ranks: Vec<(u32, f32)>,
    /// Samples in listing order when it is not path order (similarity views).
    index_order: Option<Vec<u32>>,
    index_len: u64,
    /// Byte offset of lines 0, INDEX_STRIDE, 2 * INDEX_STRIDE, ...
    index_marks: Vec<u64>,
}

impl View {
    /// Sample `i`'s stored path: its directory part (with the trailing
    /// `/`) and its file name, where [`ID_MARK`] stands for the content id.
    fn stored_path(&self, i: usize) -> (&str, &str) {
        let s = &self.samples[i];
        let p = &self.paths[s.path_start as usize..(s.path_start + s.path_len) as usize];
        let cut = p.rfind('/').map_or(0, |k| k + 1);
        p.split_at(cut)
    }

    /// The directory sample `i` is in, relative to the spec directory
    /// (empty for the top).
    pub fn dir_of(&self, i: usize) -> &str {
        let (dir, _) = self.stored_path(i);
        dir.strip_suffix('/').unwrap_or(dir)
    }

    /// The files sample `i` brings: itself and its sidecars.
    pub fn contents_of(&self, i: usize) -> impl Iterator<Item = Content> {
        let s = &self.samples[i];
        let n = i as u32;
        std::iter::once(Content::Sample(n))
            .chain(s.npy.then_some(Content::Embedding(n)))
            .chain((s.json_len > 0).then_some(Content::Metadata(n)))
    }

    /// Path of `content`'s file, relative to the spec directory.
    pub fn file_path(&self, content: Content) -> String {
        let dir = match content {
            Content::Index | Content::Receipt => "",
            Content::Sample(i) | Content::Embedding(i) | Content::Metadata(i) => {
                self.stored_path(i as usize).0
            }
        };
        format!("{dir}{}", self.file_name(content))
    }

    /// Path of sample `i`, relative to the spec directory.
    pub fn path(&self, i: usize) -> String {
        self.file_path(Content::Sample(i as u32))
    }

    /// Hex content id of sample `i`.
    pub fn content_id(&self, i: usize) -> String {
        hex_id(&self.samples[i].content_id)
    }

    /// Where sample `i`'s bytes are.
    pub fn uri(&self, i: usize) -> Cow<'_, str> {
        let s = &self.samples[i];
        if s.uri & URI_FULL != 0 {
            Cow::Borrowed(&self.uris[(s.uri & !URI_FULL) as usize])
        } else {
            let id = hex_id(&s.content_id);
            Cow::Owned(format!(
                "{}{}/{id}",
                self.uri_prefixes[s.uri as usize],
                &id[..2]
            ))
        }
    }

    /// Path of sample `i`'s `.npy` sidecar, if it has one.
    pub fn npy_path(&self, i: usize) -> Option<String> {
        self.samples[i]
            .npy
            .then(|| self.file_path(Content::Embedding(i as u32)))
    }

    /// The last component of `content`'s path, without allocating.
    pub fn file_name(&self, content: Content) -> FileName<'_> {
        let (i, suffix) = match content {
            Content::Index => return FileName::plain(INDEX_FILE),
            Content::Receipt => return FileName::plain(RECEIPT_FILE),
            Content::Sample(i) => (i as usize, ""),
            Content::Embedding(i) => (i as usize, ".npy"),
            Content::Metadata(i) => (i as usize, ".json"),
        };
        let (_, mut name) = self.stored_path(i);
        if !suffix.is_empty() {
            name = sidecar_base(name);
        }
        match name.split_once(ID_MARK) {
            Some((head, tail)) => FileName {
                head,
                id: Some(hex_bytes(&self.samples[i].content_id)),
                tail,
                suffix,
            },
            None => FileName {
                head: name,
                id: None,
                tail: "",
                suffix,
            },
        }
    }

    /// Size of `content`'s file.
    pub fn file_size(&self, content: Content) -> u64 {
        match content {
            Content::Index => self.index_len,
            Content::Receipt => self.receipt_len,
            Content::Sample(i) => self.samples[i as usize].size,
            Content::Embedding(_) => self.npy_len,
            Content::Metadata(i) => u64::from(self.samples[i as usize].json_len),
        }
    }

    /// Every file of the view, sorted by path.
    pub fn files(&self) -> Vec<FileEntry> {
        let mut out: Vec<FileEntry> = [Content::Index, Content::Receipt]
            .into_iter()
            .chain((0..self.samples.len()).flat_map(|i| self.contents_of(i)))
            .map(|content| FileEntry {
                path: self.file_path(content),
                size: self.file_size(content),
                content,
            })
            .collect();
        out.sort_by(|a, b| a.path.cmp(&b.path));
        out
    }

    fn rank_json(&self, i: usize) -> Option<(Json, Json)> {
        let &(rank, dist) = self.ranks.get(i)?;
        Some((
            Json::from(rank),
            serde_json::Number::from_f64(f64::from(dist)).map_or(Json::Null, Json::Number),
        ))
    }

    /// The `.json` sidecar of sample `i`: every column, pretty-printed with
    /// keys in sorted order (as `serde_json` prints a map), written straight
    /// from the columns: resolution renders a million of these for sizes.
    pub fn metadata_json(&self, i: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(512);
        out.push(b'{');
        for (k, (key, field)) in self.meta_fields.iter().enumerate() {
            out.extend_from_slice(if k == 0 { b"\n  " } else { b",\n  " });
            serde_json::to_writer(&mut out, key).ok();
            out.extend_from_slice(b": ");
            match field {
                MetaField::Column(c) => self.write_value(Some(*c), i, &mut out),
                MetaField::ContentId => {
                    out.push(b'"');
                    out.extend_from_slice(&hex_bytes(&self.samples[i].content_id));
                    out.push(b'"');
                }
                MetaField::Uri => {
                    serde_json::to_writer(&mut out, self.uri(i).as_ref()).ok();
                }
                MetaField::Rank | MetaField::Distance => {
                    let (rank, dist) = self.rank_json(i).unwrap_or((Json::Null, Json::Null));
                    let v = if matches!(field, MetaField::Rank) {
                        rank
                    } else {
                        dist
                    };
                    serde_json::to_writer(&mut out, &v).ok();
                }
            }
        }
        if !self.meta_fields.is_empty() {
            out.push(b'\n');
        }
        out.push(b'}');
        out
    }

    /// Appends sample `i`'s `_index.jsonl` line to `out`. Keys in sorted
    /// order, as a JSON object map would write them.
    fn index_line(&self, i: usize, out: &mut Vec<u8>) {
        fn key(out: &mut Vec<u8>, key: &str) {
            out.extend_from_slice(b",\"");
            out.extend_from_slice(key.as_bytes());
            out.extend_from_slice(b"\":");
        }
        let ranked = self.rank_json(i);
        out.extend_from_slice(b"{\"content_id\":\"");
        out.extend_from_slice(&hex_bytes(&self.samples[i].content_id));
        out.push(b'"');
        if let Some((_, dist)) = &ranked {
            key(out, "distance");
            serde_json::to_writer(&mut *out, dist).ok();
        }
        key(out, "embedding");
        match self.npy_path(i) {
            Some(p) => serde_json::to_writer(&mut *out, &p).ok(),
            None => serde_json::to_writer(&mut *out, &Json::Null).ok(),
        };
        key(out, "label");
        self.write_value(self.index_cols[0], i, out);
        key(out, "media_type");
        self.write_value(self.index_cols[1], i, out);
        key(out, "path");
        let (dir, _) = self.stored_path(i);
        let name = self.file_name(Content::Sample(i as u32));
        let id: &[u8] = name.id.as_ref().map_or(&[], |id| &id[..]);
        push_json_str(
            out,
            &[
                dir.as_bytes(),
                name.head.as_bytes(),
                id,
                name.tail.as_bytes(),
                name.suffix.as_bytes(),
            ],
        );
        if let Some((rank, _)) = &ranked {
            key(out, "rank");
            serde_json::to_writer(&mut *out, rank).ok();
        }
        key(out, "size_bytes");
        self.write_value(self.index_cols[2], i, out);
        key(out, "split");
        self.write_value(self.index_cols[3], i, out);
        key(out, "uri");
        let s = &self.samples[i];
        if s.uri & URI_FULL != 0 {
            serde_json::to_writer(&mut *out, &*self.uris[(s.uri & !URI_FULL) as usize]).ok();
        } else {
            let hex = hex_bytes(&s.content_id);
            let prefix = self.uri_prefixes[s.uri as usize].as_bytes();
            push_json_str(out, &[prefix, &hex[..2], b"/", &hex]);
        }
        out.extend_from_slice(b"}\n");
    }

    /// Writes column `col` (an index into `columns`) of sample `i` as JSON.
    fn write_value(&self, col: Option<usize>, i: usize, out: &mut Vec<u8>) {
        let Some(col) = col.map(|c| self.columns[c].1.as_ref()) else {
            out.extend_from_slice(b"null");
            return;
        };
        let text = if col.is_null(i) {
            None
        } else if let Some(a) = col.as_any().downcast_ref::<StringArray>() {
            Some(a.value(i))
        } else if let Some(d) = col.as_any().downcast_ref::<DictionaryArray<Int32Type>>() {
            d.values()
                .as_any()
                .downcast_ref::<StringArray>()
                .map(|v| v.value(d.keys().value(i) as usize))
        } else {
            None
        };
        match text {
            Some(t) => serde_json::to_writer(&mut *out, t).ok(),
            None => serde_json::to_writer(&mut *out, &json_value(col, i)).ok(),
        };
    }

    /// SHA-256 of `_index.jsonl` (rendered and hashed on first use).
    pub fn listing_sha256(&self) -> &str {
        self.listing_sha256.get_or_init(|| {
            let mut digest = Sha256::new();
            let mut buf = Vec::with_capacity(1 << 20);
            for line in 0..self.samples.len() {
                self.index_line(self.index_sample(line), &mut buf);
                if buf.len() >= 1 << 20 {
                    digest.update(&buf);
                    buf.clear();
                }
            }
            digest.update(&buf);
            hex::encode(digest.finalize())
        })
    }

    /// The `_receipt.json` bytes.
    pub fn receipt(&self) -> Bytes {
        self.receipt_bytes
            .get_or_init(|| {
                let digest = self.listing_sha256().to_string();
                Bytes::from(render_receipt(&self.receipt, &digest))
            })
            .clone()
    }

    /// Sample shown on line `line` of `_index.jsonl`.
    fn index_sample(&self, line: usize) -> usize {
        self.index_order.as_ref().map_or(line, |o| o[line] as usize)
    }

    /// Bytes `range` of `_index.jsonl`, rendered from the nearest mark.
    pub fn index_bytes(&self, range: Range<u64>) -> Bytes {
        let end = range.end.min(self.index_len);
        if range.start >= end {
            return Bytes::new();
        }
        let mark = self.index_marks.partition_point(|&m| m <= range.start) - 1;
        let base = self.index_marks[mark];
        let mut buf = Vec::with_capacity((end - base) as usize + 512);
        let mut line = mark * INDEX_STRIDE;
        while base + (buf.len() as u64) < end && line < self.samples.len() {
            self.index_line(self.index_sample(line), &mut buf);
            line += 1;
        }
        let from = (range.start - base) as usize;
        let to = ((end - base) as usize).min(buf.len());
        Bytes::from(buf).slice(from..to)
    }
}

/// Stands for the content id in a stored file name (never part of a name).
const ID_MARK: char = '\0';

/// A file name in pieces: `head`, the content id in hex, `tail`, `suffix`.
/// Default layouts put the content id in every file name; keeping it out
/// of the stored path saves 64 bytes per sample.
#[derive(Debug, Clone, Copy)]
pub struct FileName<'a> {
    head: &'a str,
    id: Option<[u8; 64]>,
    tail: &'a str,
    suffix: &'static str,
}

impl<'a> FileName<'a> {
    /// A name with no content id in it.
    pub fn plain(name: &'a str) -> Self {
        Self {
            head: name,
            id: None,
            tail: "",
            suffix: "",
        }
    }

    fn bytes(&self) -> impl Iterator<Item = u8> + '_ {
        let id: &[u8] = self.id.as_ref().map_or(&[], |id| &id[..]);
        self.head
            .bytes()
            .chain(id.iter().copied())
            .chain(self.tail.bytes())
            .chain(self.suffix.bytes())
    }

    /// Compares with `other` as strings compare.
    pub fn cmp_str(&self, other: &str) -> std::cmp::Ordering {
        self.bytes().cmp(other.bytes())
    }

    /// The first 16 bytes, big-endian, zero-padded: orders as the names do
    /// wherever they differ in those bytes (names hold no NUL).
    pub fn prefix16(&self) -> u128 {
        let mut head = [0u8; 16];
        for (slot, b) in head.iter_mut().zip(self.bytes()) {
            *slot = b;
        }
        u128::from_be_bytes(head)
    }

    /// Compares two names as strings compare.
    pub fn cmp_name(&self, other: &FileName<'_>) -> std::cmp::Ordering {
        self.bytes().cmp(other.bytes())
    }
}

impl std::fmt::Display for FileName<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.head)?;
        if let Some(id) = &self.id {
            f.write_str(std::str::from_utf8(id).map_err(|_| std::fmt::Error)?)?;
        }
        f.write_str(self.tail)?;
        f.write_str(self.suffix)
    }
}

/// Lower-case hex of a content id.
fn hex_bytes(id: &[u8; 32]) -> [u8; 64] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 64];
    for (k, b) in id.iter().enumerate() {
        out[2 * k] = HEX[(b >> 4) as usize];
        out[2 * k + 1] = HEX[(b & 15) as usize];
    }
    out
}

/// Lower-case hex of a content id, as a string.
pub fn hex_id(id: &[u8; 32]) -> String {
    String::from_utf8(hex_bytes(id).to_vec()).unwrap_or_default()
}

/// Resolves `spec` against `catalog`. Every error names the spec file and key.
pub async fn resolve(spec: &Spec, catalog: &dyn Catalog, encoder: &dyn Encoder) -> Result<View> {
    let file = spec.file.display().to_string();
    let at = |key: &str| format!("spec {file}: `{key}`");
    let ident = parse_table_ident(&spec.table)?;
    let exists = catalog
        .table_exists(&ident)
        .await
        .with_context(|| format!("{}: cannot reach the catalog", at("table")))?;
    if !exists {
        bail!(
            "{}: table {} does not exist in the catalog (ingest into it first, or fix --warehouse/--catalog)",
            at("table"),
            spec.table
        );
    }
    let table = catalog.load_table(&ident).await?;
    let meta = table.metadata();
    let snapshot = match spec.snapshot {
        SnapshotSel::Latest => meta.current_snapshot().ok_or_else(|| {
            anyhow!("{}: table {} has no snapshots yet; ingest first", at("snapshot"), spec.table)
        })?,
        SnapshotSel::Id(id) => meta.snapshot_by_id(id).ok_or_else(|| {
            anyhow!(
                "{}: snapshot {id} does not exist in table {} (run `lakemount snapshots` to list them)",
                at("snapshot"),
                spec.table
            )
        })?,
    };
    let snapshot_id = snapshot.snapshot_id();
    let schema = snapshot
        .schema_id()
        .and_then(|id| meta.schema_by_id(id))
        .unwrap_or_else(|| meta.current_schema())
        .clone();
    for field in spec.layout.fields() {
        let similarity_field = spec.similar.is_some() && (field == "rank" || field == "distance");
        if field != "ext" && !similarity_field && schema.field_by_name(field).is_none() {
            bail!(
                "{}: unknown column `{{{field}}}` in {:?} (columns: {}, ext, and rank and distance in similarity views)",
                at("layout"),
                spec.layout.text(),
                column_names(&schema)
            );
        }
    }
    let mut phase = Phases::new(&spec.name);
    // Only the columns the view shows: all of them for metadata sidecars,
    // else the contract's core plus what the layout and a query need.
    let mut scan = table.scan().snapshot_id(snapshot_id);
    if spec.sidecars.metadata {
        scan = scan.select_all();
    } else {
        let mut wanted: Vec<&str> = vec!["content_id", "uri", "size_bytes"];
        wanted.extend(INDEX_COLUMNS);
        wanted.extend(spec.layout.fields());
        if spec.similar.is_some() {
            wanted.push("embedding_model");
        }
        let columns: Vec<String> = schema
            .as_struct()
            .fields()
            .iter()
            .map(|f| f.name.clone())
            .filter(|name| wanted.contains(&name.as_str()))
            .collect();
        scan = scan.select(columns);
    }
    if let Some(sql) = &spec.filter {
        let pred = filter::parse(sql, &schema).map_err(|e| anyhow!("{}: {e:#}", at("filter")))?;
        scan = scan.with_filter(pred);
    }
    let batches: Vec<RecordBatch> = scan
        .build()?
        .to_arrow()
        .await?
        .try_collect()
        .await
        .with_context(|| format!("spec {file}: scanning table {} failed", spec.table))?;
    phase.done("scan");
    let table_rows = Rows::new(&batches)?;
    drop(batches);
    phase.done("rows");

    // Rows in content-id order, one per content id.
    let mut keyed: Vec<(u128, u32)> = table_rows
        .ids
        .iter()
        .enumerate()
        .map(|(r, id)| {
            let mut head = [0u8; 16];
            head.copy_from_slice(&id[..16]);
            (u128::from_be_bytes(head), r as u32)
        })
        .collect();
    // Scan order breaks ties, so the first row of a content id wins.
    keyed.sort_unstable_by(|a, b| {
        a.0.cmp(&b.0)
            .then_with(|| table_rows.ids[a.1 as usize].cmp(&table_rows.ids[b.1 as usize]))
            .then(a.1.cmp(&b.1))
    });
    let mut rows: Vec<u32> = keyed.into_iter().map(|(_, r)| r).collect();
    rows.dedup_by_key(|r| table_rows.ids[*r as usize]);
    phase.done("sort");

    let lance = open_lance(&table, snapshot_id).await?;
    if let (Some(pinned), Some(l)) = (spec.pinned.as_ref().and_then(|p| p.lance_version), &lance)
        && pinned != l.version
    {
        bail!(
            "{}: lance_version {pinned} does not match the Lance version {} that snapshot {snapshot_id} records",
            at("pinned"),
            l.version
        );
    }
    let row_ids = match &lance {
        Some(l) => crate::vectors::row_ids(&l.dataset).await?,
        None => HashMap::new(),
    };
    let mut search = Search::default();
    // (rank, distance) per entry of `rows` in a similarity view.
    let mut ranks: Vec<(u32, f32)> = Vec::new();
    if let Some(sim) = &spec.similar {
        let l = lance.as_ref().ok_or_else(|| {
            anyhow!(
                "{}: table {} has no Lance dataset with embeddings",
                at("similar"),
                spec.table
            )
        })?;
        search = similarity(
            spec,
            sim,
            l,
            &row_ids,
            &table_rows,
            &mut rows,
            &mut ranks,
            encoder,
        )
        .await?;
    }
    if let Some(limit) = spec.limit {
        rows.truncate(limit);
        ranks.truncate(limit);
    }
    let mut lance_rows: foldhash::HashMap<[u8; 32], u64> = foldhash::HashMap::default();
    for (id, row) in row_ids {
        let mut key = [0u8; 32];
        if hex::decode_to_slice(&id, &mut key).is_ok() {
            lance_rows.insert(key, row);
        }
    }
    let npy_len = lance.as_ref().map_or(0, |l| {
        phase.done("lance+similar");
        crate::npy::write_vector(&vec![0.0; l.dim]).len() as u64
    });

    // Paths: the layout rendered per row, collisions resolved in content-id order.
    let width = spec
        .similar
        .as_ref()
        .map_or(1, |s| s.k.saturating_sub(1).to_string().len());
    let layout_cols: HashMap<&str, &ArrayRef> = spec
        .layout
        .fields()
        .filter_map(|f| table_rows.column(f).map(|c| (f, c)))
        .collect();
    let media = table_rows.column("media_type");
    let media_str = media.and_then(|m| m.as_any().downcast_ref::<StringArray>());
    let want_npy = |k: usize| {
        spec.sidecars.embedding && lance_rows.contains_key(&table_rows.ids[rows[k] as usize])
    };
    let mut placed = Placed::concat(par_ranges(rows.len(), |range| {
        let mut part = Placed::default();
        let mut scratch = String::new();
        for k in range {
            let r = rows[k] as usize;
            let id = &table_rows.ids[r];
            let ext = match (media_str, media) {
                (Some(m), _) => extension_for(m.value(r)),
                (None, Some(m)) => extension_for(&text_value(m.as_ref(), r).unwrap_or_default()),
                (None, None) => "",
            };
            let start = part.arena.len();
            spec.layout
                .render_into(&mut part.arena, &mut scratch, |f, out| match f {
                    "ext" => {
                        out.push_str(ext);
                        true
                    }
                    "content_id" => {
                        out.push_str(std::str::from_utf8(&hex_bytes(id)).unwrap_or_default());
                        true
                    }
                    "uri" => {
                        out.push_str(&table_rows.uri(r));
                        true
                    }
                    "rank" if !ranks.is_empty() => {
                        out.push_str(&format!("{:0width$}", ranks[k].0));
                        true
                    }
                    "distance" if !ranks.is_empty() => {
                        out.push_str(&format!("{:.6}", ranks[k].1));
                        true
                    }
                    _ => match layout_cols.get(f).map(|c| c.as_ref()) {
                        Some(c) => match c.as_any().downcast_ref::<StringArray>() {
                            Some(a) if a.is_valid(r) => {
                                out.push_str(a.value(r));
                                true
                            }
                            Some(_) => false,
                            None => text_value(c, r).map(|t| out.push_str(&t)).is_some(),
                        },
                        None => false,
                    },
                });
            part.end(start, want_npy(k));
        }
        part
    }))?;
    phase.done("render");
    // Usually every sample gets its first-choice name; only when some names
    // clash are they placed one by one, in content-id order.
    if !first_choices_are_clean(&placed, spec.sidecars.metadata) {
        let mut names = Names::default();
        names.reserve(INDEX_FILE);
        names.reserve(RECEIPT_FILE);
        let mut again = Placed::default();
        for (k, &r) in rows.iter().enumerate() {
            // The first-choice path is the layout's components joined by `/`
            // (a component never holds one).
            let parts: Vec<String> = placed.path(k).split('/').map(str::to_string).collect();
            let id_hex = hex_id(&table_rows.ids[r as usize]);
            let npy = placed.npy(k);
            let (path, _, _) = names.place(&parts, &id_hex, npy, spec.sidecars.metadata);
            let start = again.arena.len();
            again.arena.push_str(&path);
            again.end(start, npy);
        }
        placed = again;
    }
    phase.done("names");

    // Path order from here on: samples, columns and ranks all follow it.
    let by_path = sort_by_path(&placed);
    phase.done("path order");
    let sizes = table_rows
        .column("size_bytes")
        .and_then(|c| c.as_any().downcast_ref::<Int64Array>());
    // Built in parallel pieces, in the order of `rows`, then merged.
    let pieces = par_ranges(rows.len(), |range| {
        let mut piece = Piece::default();
        for k in range {
            let r = rows[k] as usize;
            let (path, npy) = (placed.path(k), placed.npy(k));
            let id = table_rows.ids[r];
            let size = sizes.map_or(0, |a| {
                if a.is_null(r) {
                    0
                } else {
                    a.value(r).max(0) as u64
                }
            });
            piece.push(
                id,
                path,
                (table_rows.uri_refs[r], &table_rows),
                size,
                lance_rows.get(&id).copied(),
                npy,
            );
        }
        piece
    });
    drop(placed);
    let mut merged = Piece::default();
    for piece in pieces {
        merged.append(piece)?;
    }
    let Piece {
        samples: by_row,
        mut paths,
        uris,
    } = merged;
    let uri_prefixes = table_rows.prefixes.clone();
    paths.shrink_to_fit();
    let samples: Vec<Sample> = by_path
        .iter()
        .map(|&k| by_row[k as usize].clone())
        .collect();
    drop(by_row);
    drop(lance_rows);
    let final_rows: Vec<u32> = by_path.iter().map(|&k| rows[k as usize]).collect();
    phase.done("samples");
    let ranks: Vec<(u32, f32)> = if ranks.is_empty() {
        Vec::new()
    } else {
        by_path.iter().map(|&k| ranks[k as usize]).collect()
    };
    let columns = table_rows.compact(&final_rows, spec.sidecars.metadata)?;
    drop(table_rows);
    phase.done("columns");

    // The index lists a similarity view in rank order, any other in path order.
    let index_order = (!ranks.is_empty()).then(|| {
        let mut order: Vec<u32> = (0..samples.len() as u32).collect();
        order.sort_by_key(|&i| ranks[i as usize].0);
        order
    });
    let mut view = View {
        name: spec.name.clone(),
        query_sha256: search.query_sha256,
        index_version: search.index_version,
        snapshot_id,
        snapshot_ms: snapshot.timestamp_ms(),
        lance,
        samples,
        receipt: Json::Null,
        receipt_len: 0,
        receipt_bytes: OnceLock::new(),
        listing_sha256: OnceLock::new(),
        npy_len,
        paths,
        uri_prefixes,
        uris,
        index_cols: INDEX_COLUMNS.map(|c| columns.iter().position(|(n, _)| n == c)),
        meta_fields: meta_fields(&columns, !ranks.is_empty()),
        columns,
        ranks,
        index_order,
        index_len: 0,
        index_marks: Vec::new(),
    };
    // Render the listing once, in parallel, for its size and the marks.
    let lens: Vec<u32> = par_chunks(view.samples.len(), |range| {
        let mut line = Vec::with_capacity(512);
        range
            .map(|n| {
                line.clear();
                view.index_line(view.index_sample(n), &mut line);
                line.len() as u32
            })
            .collect()
    });
    let mut len = 0u64;
    for (n, l) in lens.iter().enumerate() {
        if n % INDEX_STRIDE == 0 {
            view.index_marks.push(len);
        }
        len += u64::from(*l);
    }
    drop(lens);
    if view.index_marks.is_empty() {
        view.index_marks.push(0);
    }
    view.index_len = len;
    phase.done("listing");
    if spec.sidecars.metadata {
        let lens: Vec<usize> = par_chunks(view.samples.len(), |range| {
            range.map(|i| view.metadata_json(i).len()).collect()
        });
        for (s, n) in view.samples.iter_mut().zip(lens) {
            s.json_len = u32::try_from(n).context("a metadata sidecar exceeds 4 GiB")?;
        }
    }

    view.receipt = serde_json::json!({
        "spec": spec.name,
        "table": spec.table,
        "snapshot_requested": match spec.snapshot {
            SnapshotSel::Latest => Json::from("latest"),
            SnapshotSel::Id(id) => Json::from(id),
        },
        "snapshot_id": snapshot_id,
        "snapshot_committed_ms": snapshot.timestamp_ms(),
        "lance_uri": view.lance.as_ref().map(|l| l.uri.clone()),
        "lance_version": view.lance.as_ref().map(|l| l.version),
        "filter": spec.filter,
        "limit": spec.limit,
        "layout": spec.layout.text(),
        "sidecars": {"embedding": spec.sidecars.embedding, "metadata": spec.sidecars.metadata},
        "similar": spec.similar.as_ref().map(|sim| serde_json::json!({
            "query": match &sim.to {
                Query::ContentId(id) => serde_json::json!({"content_id": id}),
                Query::Vector(p) => serde_json::json!({"vector": p.display().to_string()}),
                Query::File(p) => serde_json::json!({"file": p.display().to_string()}),
            },
            "query_sha256": view.query_sha256,
            "k": sim.k,
            "metric": sim.metric.name(),
            "search": match view.index_version {
                Some(v) => format!("ivf_pq index at Lance version {v}"),
                None => "exact".to_string(),
            },
            "index_version": view.index_version,
            "nprobes": view.index_version.map(|_| sim.nprobes.unwrap_or(similar::DEFAULT_NPROBES)),
            "refine": view.index_version.map(|_| sim.refine.unwrap_or(similar::DEFAULT_REFINE)),
        })),
        "row_count": view.samples.len(),
    });
    // The digest is 64 hex digits whatever it is: the size is known now.
    view.receipt_len = render_receipt(&view.receipt, &"0".repeat(64)).len() as u64;
    phase.done("metadata+receipt");
    Ok(view)
}

/// Debug log of how long each step of a resolution took (`LAKEMOUNT_LOG=debug`).
struct Phases<'a> {
    spec: &'a str,
    last: std::time::Instant,
}

impl<'a> Phases<'a> {
    fn new(spec: &'a str) -> Self {
        Self {
            spec,
            last: std::time::Instant::now(),
        }
    }

    fn done(&mut self, step: &str) {
        let now = std::time::Instant::now();
        tracing::debug!(
            spec = self.spec,
            step,
            ms = (now - self.last).as_millis() as u64,
            "resolve"
        );
        self.last = now;
    }
}

/// The keys of a `.json` sidecar in sorted order: every column, the
/// content id and URI, and rank and distance in a similarity view (which
/// win over columns of the same name).
fn meta_fields(columns: &[(String, ArrayRef)], ranked: bool) -> Vec<(String, MetaField)> {
    let mut fields: std::collections::BTreeMap<String, MetaField> = columns
        .iter()
        .enumerate()
        .map(|(c, (name, _))| (name.clone(), MetaField::Column(c)))
        .collect();
    fields.insert("content_id".into(), MetaField::ContentId);
    fields.insert("uri".into(), MetaField::Uri);
    if ranked {
        fields.insert("rank".into(), MetaField::Rank);
        fields.insert("distance".into(), MetaField::Distance);
    }
    fields.into_iter().collect()
}

/// Appends the concatenation of `parts` as a JSON string.
fn push_json_str(out: &mut Vec<u8>, parts: &[&[u8]]) {
    let plain = parts
        .iter()
        .all(|p| p.iter().all(|&b| b >= 0x20 && b != b'"' && b != b'\\'));
    if plain {
        out.push(b'"');
        for p in parts {
            out.extend_from_slice(p);
        }
        out.push(b'"');
    } else {
        let text: Vec<u8> = parts.concat();
        serde_json::to_writer(&mut *out, &String::from_utf8_lossy(&text)).ok();
    }
}

/// The receipt with `listing_sha256` set to `digest`, pretty-printed.
fn render_receipt(receipt: &Json, digest: &str) -> Vec<u8> {
    let mut receipt = receipt.clone();
    if let Json::Object(map) = &mut receipt {
        map.insert("listing_sha256".into(), Json::from(digest));
    }
    let mut out = serde_json::to_vec_pretty(&receipt).unwrap_or_default();
    out.push(b'\n');
    out
}

/// `f` over `0..n` split in one contiguous range per core: one result per range, in order.
fn par_ranges<R: Send>(n: usize, f: impl Fn(Range<usize>) -> R + Sync) -> Vec<R> {
    par_ranges_if(n >= 10_000, n, f)
}

/// [`par_ranges`] when `worth_it`, else one range on this thread.
fn par_ranges_if<R: Send>(
    worth_it: bool,
    n: usize,
    f: impl Fn(Range<usize>) -> R + Sync,
) -> Vec<R> {
    let threads = std::thread::available_parallelism().map_or(1, |t| t.get());
    if threads < 2 || !worth_it || n < threads {
        return vec![f(0..n)];
    }
    let step = n.div_ceil(threads);
    let f = &f;
    std::thread::scope(|scope| {
        let parts: Vec<_> = (0..n)
            .step_by(step)
            .map(|start| scope.spawn(move || f(start..(start + step).min(n))))
            .collect();
        parts
            .into_iter()
            .map(|p| p.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    })
}

/// `f` over `0..n` in parallel ranges, results concatenated in order.
fn par_chunks<T: Send>(n: usize, f: impl Fn(Range<usize>) -> Vec<T> + Sync) -> Vec<T> {
    par_ranges(n, f).into_iter().flatten().collect()
}

/// Samples with their own path arena and URI tables, built piecewise.
#[derive(Default)]
struct Piece {
    samples: Vec<Sample>,
    paths: String,
    uris: Vec<Box<str>>,
}

impl Piece {
    fn push(
        &mut self,
        id: [u8; 32],
        path: &str,
        uri: (u32, &Rows),
        size: u64,
        lance_row: Option<u64>,
        npy: bool,
    ) {
        let hex = hex_bytes(&id);
        let id_hex = std::str::from_utf8(&hex).unwrap_or_default();
        // Prefixes are the table's (few); full URIs are copied per sample.
        let uri = match uri {
            (r, rows) if r & URI_FULL != 0 => {
                self.uris.push(rows.full[(r & !URI_FULL) as usize].clone());
                (self.uris.len() - 1) as u32 | URI_FULL
            }
            (r, _) => r,
        };
        // The content id in the file name is stored as one mark byte.
        let start = self.paths.len();
        let cut = path.rfind('/').map_or(0, |k| k + 1);
        let found = if path[cut..].starts_with(id_hex) {
            Some(0)
        } else {
            path[cut..].find(id_hex)
        };
        match found {
            Some(pos) => {
                self.paths.push_str(&path[..cut + pos]);
                self.paths.push(ID_MARK);
                self.paths.push_str(&path[cut + pos + id_hex.len()..]);
            }
            None => self.paths.push_str(path),
        }
        self.samples.push(Sample {
            content_id: id,
            size,
            lance_row,
            path_start: start as u32,
            path_len: (self.paths.len() - start) as u32,
            uri,
            json_len: 0,
            npy,
        });
    }

    /// Moves `other`'s samples after this piece's, rebasing their references.
    fn append(&mut self, other: Piece) -> Result<()> {
        let base = u32::try_from(self.paths.len() + other.paths.len())
            .map(|_| self.paths.len() as u32)
            .context("view paths exceed 4 GiB")?;
        self.paths.push_str(&other.paths);
        let uri_base = self.uris.len() as u32;
        self.uris.extend(other.uris);
        self.samples.reserve(other.samples.len());
        for mut s in other.samples {
            s.path_start += base;
            if s.uri & URI_FULL != 0 {
                s.uri = ((s.uri & !URI_FULL) + uri_base) | URI_FULL;
            }
            self.samples.push(s);
        }
        Ok(())
    }
}

/// Whether the first-choice names of all samples, their sidecars and the
/// reserved names are free of clashes: no name twice, no file where another
/// name needs a directory. Compares hashes, so it may see a clash that is not
/// there (names are then placed one by one), never miss one.
fn first_choices_are_clean(placed: &Placed, json: bool) -> bool {
    use std::hash::BuildHasher;
    let state = foldhash::fast::FixedState::default();
    let mut files: foldhash::HashSet<u64> = foldhash::HashSet::default();
    files.reserve(placed.len() * (1 + usize::from(json)) + 2);
    let mut dirs: foldhash::HashSet<u64> = foldhash::HashSet::default();
    for name in [INDEX_FILE, RECEIPT_FILE] {
        files.insert(state.hash_one(name));
    }
    let mut side = String::new();
    for k in 0..placed.len() {
        let (path, npy) = (placed.path(k), placed.npy(k));
        if !files.insert(state.hash_one(path)) {
            return false;
        }
        let base = sidecar_base(path);
        for suffix in [npy.then_some(".npy"), json.then_some(".json")]
            .into_iter()
            .flatten()
        {
            side.clear();
            side.push_str(base);
            side.push_str(suffix);
            if !files.insert(state.hash_one(side.as_str())) {
                return false;
            }
        }
        let mut prefix = path;
        while let Some((head, _)) = prefix.rsplit_once('/') {
            if !dirs.insert(state.hash_one(head)) {
                break; // seen before, and so were its ancestors
            }
            prefix = head;
        }
    }
    !dirs.iter().any(|d| files.contains(d))
}

/// Indices of `placed` in path order. Sorts on the first 16 bytes kept
/// next to the index, so most comparisons touch no string.
fn sort_by_path(placed: &Placed) -> Vec<u32> {
    let mut keys: Vec<(u128, u32)> = (0..placed.len())
        .map(|k| {
            let path = placed.path(k).as_bytes();
            let mut head = [0u8; 16];
            let n = path.len().min(16);
            head[..n].copy_from_slice(&path[..n]);
            (u128::from_be_bytes(head), k as u32)
        })
        .collect();
    keys.sort_unstable_by(|a, b| {
        a.0.cmp(&b.0)
            .then_with(|| placed.path(a.1 as usize).cmp(placed.path(b.1 as usize)))
            .then(a.1.cmp(&b.1))
    });
    keys.into_iter().map(|(_, k)| k).collect()
}

/// Rendered paths, back to back, with whether each sample has a `.npy`.
#[derive(Default)]
struct Placed {
    arena: String,
    /// (end of the path in `arena`, has a `.npy` sidecar).
    ends: Vec<(usize, bool)>,
}

impl Placed {
    fn len(&self) -> usize {
        self.ends.len()
    }

    /// Closes the path that started at `start`.
    fn end(&mut self, start: usize, npy: bool) {
        debug_assert_eq!(start, self.ends.last().map_or(0, |e| e.0));
        self.ends.push((self.arena.len(), npy));
    }

    fn path(&self, k: usize) -> &str {
        let start = if k == 0 { 0 } else { self.ends[k - 1].0 };
        &self.arena[start..self.ends[k].0]
    }

    fn npy(&self, k: usize) -> bool {
        self.ends[k].1
    }

    fn concat(parts: Vec<Placed>) -> Result<Placed> {
        let mut out = Placed::default();
        for part in parts {
            let base = out.arena.len();
            out.arena.push_str(&part.arena);
            out.ends
                .extend(part.ends.into_iter().map(|(end, npy)| (base + end, npy)));
        }
        Ok(out)
    }
}

/// The part of a blob-store URI before `<first two hex digits>/<content id>`.
fn blob_uri_prefix<'a>(uri: &'a str, id_hex: &str) -> Option<&'a str> {
    let rest = uri.strip_suffix(id_hex)?.strip_suffix('/')?;
    let prefix = rest.strip_suffix(&id_hex[..2])?;
    prefix.ends_with('/').then_some(prefix)
}

/// The scanned rows, column by column.
struct Rows {
    ids: Vec<[u8; 32]>,
    /// Where each row's bytes are: an index into `prefixes` (blob-store
    /// URIs), or `URI_FULL` | an index into `full`.
    uri_refs: Vec<u32>,
    prefixes: Vec<String>,
    full: Vec<Box<str>>,
    /// Every other column, in schema order.
    columns: Vec<(String, ArrayRef)>,
}

/// Content ids and URI references of some batches.
#[derive(Default)]
struct Decoded {
    ids: Vec<[u8; 32]>,
    uri_refs: Vec<u32>,
    prefixes: Vec<String>,
    full: Vec<Box<str>>,
}

impl Decoded {
    fn batch(&mut self, batch: &RecordBatch) -> Result<()> {
        let ids = crate::catalog::string_column(batch, "content_id")
            .context("the table does not follow the lakemount contract")?;
        let uris = crate::catalog::string_column(batch, "uri")
            .context("the table does not follow the lakemount contract")?;
        for i in 0..batch.num_rows() {
            let text = (!ids.is_null(i)).then(|| ids.value(i));
            let mut id = [0u8; 32];
            if text.map(|t| hex::decode_to_slice(t, &mut id)) != Some(Ok(())) {
                bail!(
                    "a row's content_id is {text:?}, not a SHA-256 in hex; the table does not follow the lakemount contract"
                );
            }
            let uri = if uris.is_null(i) { "" } else { uris.value(i) };
            if uri.is_empty() {
                bail!(
                    "the row with content_id {} has no uri; the table does not follow the lakemount contract",
                    hex_id(&id)
                );
            }
            let hex = hex_bytes(&id);
            let r = match blob_uri_prefix(uri, std::str::from_utf8(&hex).unwrap_or_default()) {
                Some(prefix) => match self.prefixes.iter().position(|p| p == prefix) {
                    Some(p) => p as u32,
                    None => {
                        self.prefixes.push(prefix.to_string());
                        (self.prefixes.len() - 1) as u32
                    }
                },
                None => {
                    self.full.push(uri.into());
                    (self.full.len() - 1) as u32 | URI_FULL
                }
            };
            self.ids.push(id);
            self.uri_refs.push(r);
        }
        Ok(())
    }

    fn append(&mut self, other: Decoded) {
        let map: Vec<u32> = other
            .prefixes
            .into_iter()
            .map(|p| match self.prefixes.iter().position(|q| *q == p) {
                Some(i) => i as u32,
                None => {
                    self.prefixes.push(p);
                    (self.prefixes.len() - 1) as u32
                }
            })
            .collect();
        let base = self.full.len() as u32;
        self.full.extend(other.full);
        self.ids.extend(other.ids);
        self.uri_refs.extend(other.uri_refs.into_iter().map(|r| {
            if r & URI_FULL != 0 {
                ((r & !URI_FULL) + base) | URI_FULL
            } else {
                map[r as usize]
            }
        }));
    }
}

impl Rows {
    fn new(batches: &[RecordBatch]) -> Result<Self> {
        let Some(first) = batches.first() else {
            return Ok(Self {
                ids: Vec::new(),
                uri_refs: Vec::new(),
                prefixes: Vec::new(),
                full: Vec::new(),
                columns: Vec::new(),
            });
        };
        let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
        let parts = par_ranges_if(rows >= 10_000, batches.len(), |range| {
            let mut d = Decoded::default();
            for b in &batches[range] {
                d.batch(b)?;
            }
            Ok::<_, anyhow::Error>(d)
        });
        let mut decoded = Decoded::default();
        for part in parts {
            decoded.append(part?);
        }
        // The other columns, concatenated.
        let schema = first.schema();
        let keep: Vec<usize> = (0..schema.fields().len())
            .filter(|&c| !matches!(schema.field(c).name().as_str(), "content_id" | "uri"))
            .collect();
        let projected = batches
            .iter()
            .map(|b| b.project(&keep))
            .collect::<Result<Vec<_>, _>>()?;
        let batch =
            arrow_select::concat::concat_batches(&Arc::new(schema.project(&keep)?), &projected)?;
        let columns = batch
            .schema()
            .fields()
            .iter()
            .zip(batch.columns())
            .map(|(f, c)| (f.name().clone(), c.clone()))
            .collect();
        Ok(Self {
            ids: decoded.ids,
            uri_refs: decoded.uri_refs,
            prefixes: decoded.prefixes,
            full: decoded.full,
            columns,
        })
    }

    /// Row `r`'s URI.
    fn uri(&self, r: usize) -> Cow<'_, str> {
        let u = self.uri_refs[r];
        if u & URI_FULL != 0 {
            Cow::Borrowed(&self.full[(u & !URI_FULL) as usize])
        } else {
            let hex = hex_bytes(&self.ids[r]);
            let hex = std::str::from_utf8(&hex).unwrap_or_default();
            Cow::Owned(format!("{}{}/{hex}", self.prefixes[u as usize], &hex[..2]))
        }
    }

    fn column(&self, name: &str) -> Option<&ArrayRef> {
        self.columns.iter().find(|(n, _)| n == name).map(|(_, c)| c)
    }

    /// The columns a view keeps, rows `rows` in that order: those the
    /// listing shows, or all of them when metadata sidecars are wanted.
    /// Strings with few distinct values become dictionaries.
    fn compact(&self, rows: &[u32], all: bool) -> Result<Vec<(String, ArrayRef)>> {
        let take = UInt32Array::from(rows.to_vec());
        let mut out = Vec::new();
        for (name, col) in &self.columns {
            if !all && !INDEX_COLUMNS.contains(&name.as_str()) {
                continue;
            }
            let mut col = arrow_select::take::take(col.as_ref(), &take, None)?;
            if col.data_type() == &DataType::Utf8 {
                let dict_type =
                    DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8));
                let dict = arrow_cast::cast(col.as_ref(), &dict_type)?;
                let distinct = dict
                    .as_any()
                    .downcast_ref::<DictionaryArray<Int32Type>>()
                    .map_or(usize::MAX, |d| d.values().len());
                if distinct * 4 <= col.len() {
                    col = dict;
                }
            }
            out.push((name.clone(), col));
        }
        Ok(out)
    }
}

/// A value as layout text: strings as they are, null as `None`, anything
/// else as its JSON or Arrow rendering.
fn text_value(col: &dyn Array, i: usize) -> Option<String> {
    if let Some(a) = col.as_any().downcast_ref::<StringArray>() {
        return (!a.is_null(i)).then(|| a.value(i).to_string());
    }
    match json_value(col, i) {
        Json::Null => None,
        Json::String(s) => Some(s),
        _ => ArrayFormatter::try_new(col, &Default::default())
            .ok()
            .map(|f| f.value(i).to_string()),
    }
}

/// What a similarity search used.
#[derive(Default)]
struct Search {
    query_sha256: Option<String>,
    index_version: Option<u64>,
}

/// Keeps the `k` rows nearest to the spec's query, in rank order, and
/// fills `ranks` with each kept row's (rank, distance).
#[allow(clippy::too_many_arguments)]
async fn similarity(
    spec: &Spec,
    sim: &crate::spec::Similar,
    lance: &LanceAt,
    row_ids: &HashMap<String, u64>,
    table_rows: &Rows,
    rows: &mut Vec<u32>,
    ranks: &mut Vec<(u32, f32)>,
    encoder: &dyn Encoder,
) -> Result<Search> {
    let file = spec.file.display().to_string();
    let at = |key: &str| format!("spec {file}: `{key}`");
    let query = match &sim.to {
        Query::ContentId(id) => {
            let row = row_ids.get(id).ok_or_else(|| {
                anyhow!(
                    "{}: no sample with content id {id} in the Lance dataset at version {}",
                    at("similar.to.content_id"),
                    lance.version
                )
            })?;
            crate::vectors::take_embeddings(&lance.dataset, &[*row])
                .await?
                .pop()
                .context("Lance returned no row")?
        }
        Query::Vector(path) => {
            let bytes = std::fs::read(path).with_context(|| {
                format!(
                    "{}: cannot read {}",
                    at("similar.to.vector"),
                    path.display()
                )
            })?;
            let m = crate::npy::read_matrix(&bytes)
                .with_context(|| format!("{}: {}", at("similar.to.vector"), path.display()))?;
            if m.rows != 1 {
                bail!(
                    "{}: {} holds {} vectors, expected one",
                    at("similar.to.vector"),
                    path.display(),
                    m.rows
                );
            }
            m.data
        }
        Query::File(path) => {
            let bytes = std::fs::read(path).with_context(|| {
                format!("{}: cannot read {}", at("similar.to.file"), path.display())
            })?;
            let mut models: Vec<String> = match table_rows.column("embedding_model") {
                Some(col) => rows
                    .iter()
                    .filter_map(|&r| text_value(col.as_ref(), r as usize))
                    .collect(),
                None => Vec::new(),
            };
            models.sort();
            models.dedup();
            let ext = path.extension().and_then(|e| e.to_str());
            similar::embed_file(encoder, &models, &bytes, ext)
                .map_err(|e| anyhow!("{}: {}: {e:#}", at("similar.to.file"), path.display()))?
        }
    };
    if query.len() != lance.dim {
        bail!(
            "{}: the query has {} dimensions, the table's embeddings have {}",
            at("similar.to"),
            query.len(),
            lance.dim
        );
    }
    let digest = similar::query_digest(&query);
    if let Some(pinned) = spec.pinned.as_ref().and_then(|p| p.query_sha256.as_ref())
        && pinned != &digest
    {
        bail!(
            "{}: the query vector changed since the spec was pinned (pinned {pinned}, now {digest})",
            at("similar.to")
        );
    }
    // Which index to search: the pinned one, none when pinned without one,
    // else the newest one if it was trained for this metric.
    let index: Option<(Arc<Dataset>, u64)> = match &spec.pinned {
        Some(p) => match p.index_version {
            Some(v) => {
                let ds = lance.dataset.checkout_version(v).await.with_context(|| {
                    format!("{}: Lance has no version {v}", at("pinned.index_version"))
                })?;
                if similar::vector_index(&ds).await?.is_none() {
                    bail!(
                        "{}: Lance version {v} has no vector index",
                        at("pinned.index_version")
                    );
                }
                Some((Arc::new(ds), v))
            }
            None => None,
        },
        None => match similar::latest_index(&lance.uri).await? {
            Some((ds, metric)) if metric == sim.metric => {
                let v = ds.version().version;
                Some((ds, v))
            }
            _ => None,
        },
    };
    let mut candidates: Vec<(String, u64)> = Vec::new();
    let mut candidate_rows: Vec<u32> = Vec::new();
    for &r in rows.iter() {
        let id = hex_id(&table_rows.ids[r as usize]);
        if let Some(&lance_row) = row_ids.get(&id) {
            candidates.push((id, lance_row));
            candidate_rows.push(r);
        }
    }
    let ranked = similar::rank(
        &lance.dataset,
        index.as_ref().map(|(ds, _)| ds.as_ref()),
        &candidates,
        &query,
        similar::SearchParams {
            k: sim.k,
            metric: sim.metric,
            nprobes: sim.nprobes.unwrap_or(similar::DEFAULT_NPROBES),
            refine: sim.refine.unwrap_or(similar::DEFAULT_REFINE),
        },
    )
    .await?;
    rows.clear();
    ranks.clear();
    for (rank, (i, dist)) in ranked.into_iter().enumerate() {
        rows.push(candidate_rows[i]);
        ranks.push((rank as u32, dist));
    }
    Ok(Search {
        query_sha256: Some(digest),
        index_version: index.map(|(_, v)| v),
    })
}

fn column_names(schema: &iceberg::spec::Schema) -> String {
    schema
        .as_struct()
        .fields()
        .iter()
        .map(|f| f.name.clone())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The Lance dataset at the version the snapshot (or its nearest ancestor) records.
async fn open_lance(table: &Table, snapshot_id: i64) -> Result<Option<LanceAt>> {
    let meta = table.metadata();
    let mut cursor = meta.snapshot_by_id(snapshot_id);
    let mut found: Option<(u64, Option<String>)> = None;
    while let Some(s) = cursor {
        let props = &s.summary().additional_properties;
        if let Some(v) = props.get(PROP_LANCE_VERSION).and_then(|v| v.parse().ok()) {
            found = Some((v, props.get(PROP_LANCE_URI).cloned()));
            break;
        }
        cursor = s.parent_snapshot_id().and_then(|p| meta.snapshot_by_id(p));
    }
    let Some((version, uri)) = found else {
        return Ok(None);
    };
    let Some(uri) = uri.or_else(|| meta.properties().get(PROP_LANCE_URI).cloned()) else {
        return Ok(None);
    };
    let ds = Dataset::open(&uri)
        .await
        .with_context(|| format!("cannot open Lance dataset {uri}"))?;
    let ds = ds
        .checkout_version(version)
        .await
        .with_context(|| format!("Lance dataset {uri} has no version {version}"))?;
    let dim = crate::vectors::dim_of(&ds)?;
    Ok(Some(LanceAt {
        uri,
        version,
        dataset: Arc::new(ds),
        dim,
    }))
}

fn json_value(col: &dyn Array, i: usize) -> Json {
    if col.is_null(i) {
        return Json::Null;
    }
    let any = col.as_any();
    if let Some(a) = any.downcast_ref::<StringArray>() {
        Json::from(a.value(i))
    } else if let Some(d) = any.downcast_ref::<DictionaryArray<Int32Type>>() {
        json_value(d.values().as_ref(), d.keys().value(i) as usize)
    } else if let Some(a) = any.downcast_ref::<Int64Array>() {
        Json::from(a.value(i))
    } else if let Some(a) = any.downcast_ref::<Int32Array>() {
        Json::from(a.value(i))
    } else if let Some(a) = any.downcast_ref::<Float64Array>() {
        serde_json::Number::from_f64(a.value(i)).map_or(Json::Null, Json::Number)
    } else if let Some(a) = any.downcast_ref::<Float32Array>() {
        serde_json::Number::from_f64(f64::from(a.value(i))).map_or(Json::Null, Json::Number)
    } else if let Some(a) = any.downcast_ref::<BooleanArray>() {
        Json::from(a.value(i))
    } else if let Some(a) = any.downcast_ref::<TimestampMicrosecondArray>() {
        chrono::DateTime::from_timestamp_micros(a.value(i)).map_or(Json::Null, |t| {
            Json::from(t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string())
        })
    } else {
        ArrayFormatter::try_new(col, &Default::default())
            .map_or(Json::Null, |f| Json::from(f.value(i).to_string()))
    }
}

/// Path bookkeeping for collision-free placement.
#[derive(Default)]
struct Names {
    files: foldhash::HashSet<String>,
    dirs: foldhash::HashSet<String>,
}

impl Names {
    fn reserve(&mut self, path: &str) {
        self.files.insert(path.to_string());
    }

    fn free(&self, path: &str) -> bool {
        if self.files.contains(path) || self.dirs.contains(path) {
            return false;
        }
        let mut prefix = path;
        while let Some((head, _)) = prefix.rsplit_once('/') {
            if self.files.contains(head) {
                return false;
            }
            prefix = head;
        }
        true
    }

    fn claim(&mut self, path: String) {
        let mut prefix = path.as_str();
        while let Some((head, _)) = prefix.rsplit_once('/') {
            if !self.dirs.contains(head) {
                self.dirs.insert(head.to_string());
            }
            prefix = head;
        }
        self.files.insert(path);
    }

    /// Places a sample and its sidecars; returns (sample, npy, json) paths.
    fn place(
        &mut self,
        parts: &[String],
        content_id: &str,
        npy: bool,
        json: bool,
    ) -> (String, Option<String>, Option<String>) {
        let (dir, file) = parts.split_at(parts.len() - 1);
        let file = &file[0];
        let prefix = if dir.is_empty() {
            String::new()
        } else {
            format!("{}/", dir.join("/"))
        };
        let (stem, ext) = split_ext(file);
        for attempt in 0..3 {
            let tag = match attempt {
                0 => String::new(),
                1 => format!("~{}", &content_id[..12.min(content_id.len())]),
                _ => format!("~{content_id}"),
            };
            let name = format!("{prefix}{stem}{tag}{ext}");
            let side_base = sidecar_base(&name);
            let npy_path = npy.then(|| format!("{side_base}.npy"));
            let json_path = json.then(|| format!("{side_base}.json"));
            let all_free = self.free(&name)
                && npy_path.as_deref().is_none_or(|p| self.free(p))
                && json_path.as_deref().is_none_or(|p| self.free(p));
            if all_free {
                self.claim(name.clone());
                for p in npy_path.iter().chain(json_path.iter()) {
                    self.claim(p.clone());
                }
                return (name, npy_path, json_path);
            }
        }
        unreachable!("a name with the full content id is unique among distinct content ids")
    }
}

/// What a sidecar's suffix (`.npy`, `.json`) is appended to: the path
/// without its file name's extension, or whole when the sample is itself a
/// `.npy` or `.json` file.
fn sidecar_base(path: &str) -> &str {
    let name = path.rsplit('/').next().unwrap_or(path);
    match split_ext(name).1 {
        ".npy" | ".json" => path,
        ext => &path[..path.len() - ext.len()],
    }
}

fn split_ext(name: &str) -> (&str, &str) {
    match name.rfind('.') {
        Some(i) if i > 0 => (&name[..i], &name[i..]),
        _ => (name, ""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collisions_get_content_id_suffixes() {
        let mut n = Names::default();
        n.reserve(INDEX_FILE);
        let a = n.place(
            &["cat".into(), "x.png".into()],
            "aaaaaaaaaaaaaaaa",
            true,
            true,
        );
        assert_eq!(
            a,
            (
                "cat/x.png".into(),
                Some("cat/x.npy".into()),
                Some("cat/x.json".into())
            )
        );
        let b = n.place(
            &["cat".into(), "x.png".into()],
            "bbbbbbbbbbbbbbbb",
            true,
            true,
        );
        assert_eq!(b.0, "cat/x~bbbbbbbbbbbb.png");
        assert_eq!(b.1.as_deref(), Some("cat/x~bbbbbbbbbbbb.npy"));
        // A file where a directory must go is moved aside, and vice versa.
        let c = n.place(&["cat".into()], "cccccccccccccccc", false, false);
        assert_eq!(c.0, "cat~cccccccccccc");
        // A JSON sample keeps its sidecars distinct from itself.
        let d = n.place(&["d.json".into()], "dddddddddddddddd", true, true);
        assert_eq!(
            (d.0.as_str(), d.2.as_deref()),
            ("d.json", Some("d.json.json"))
        );
        // Reserved names are never taken.
        let e = n.place(&["_index.jsonl".into()], "eeeeeeeeeeeeeeee", false, false);
        assert_eq!(e.0, "_index~eeeeeeeeeeee.jsonl");
    }
}
