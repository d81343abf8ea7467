//! Materialized views: a spec resolved once (`lakemount pin --materialize`)
//! and written whole as one immutable Parquet file, so that a mount reads
//! only the part its rank shows and resolves nothing.
//!
//! The file, `<warehouse>/views/<sha256>.parquet`:
//!
//! - one row per sample, in the view's path order; a view cut into ranks
//!   (`shard`, or `--world-size` when materializing) has one row group per
//!   rank (paths start `rank-<r>/`, so each rank's rows are contiguous),
//!   any other view row groups of [`GROUP_ROWS`];
//! - columns: `content_id` (32 bytes), `dir` and `name` (the path: its
//!   directory with the trailing `/`, and its file name with the content
//!   id's hex written as one U+0000), `npy`, `size`, where the bytes are
//!   (`uri_shape`, `uri`, `pack_offset`, `pack_length`: see
//!   [`super::compact::UriShape`];
//!   `read_uri` where `lakemount repack` moved them), `lance_row`,
//!   `chunk_digests`, `line` (the line in the whole view's listing, when
//!   the listing has an order of its own), `sim_rank` and `distance`
//!   (similarity views), `pos`, `shard`, `cluster`, `source` (where the
//!   spec has them), and the metadata columns the view keeps, each as
//!   `m:<column>` with the table's type;
//! - a footer key `lakemount.view` holding the header ([`Header`], JSON):
//!   format, the spec's fingerprint, the snapshot, the Lance dataset and
//!   version, the receipt, and each row group's rank, byte range and
//!   SHA-256.
//!
//! The file is named by the SHA-256 of its footer (the metadata, its
//! length and the magic): that covers the row-group digests, so a reader
//! that checks the footer against the name and each row group it reads
//! against its digest never uses a byte it has not verified, while reading
//! only its own row groups (two ranged GETs: the footer, then its rows).
//! A pinned spec names the file by that digest.

use std::ops::Range;
use std::sync::{Arc, OnceLock};

use crate::error::{Context, Result, bail, err};
use arrow_array::builder::{FixedSizeBinaryBuilder, ListBuilder};
use arrow_array::{
    Array, ArrayRef, BooleanArray, FixedSizeBinaryArray, Float32Array, ListArray, RecordBatch,
    StringArray, UInt8Array, UInt32Array, UInt64Array,
};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use bytes::{Buf, Bytes};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::{ArrowReaderOptions, ParquetRecordBatchReaderBuilder};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use serde::{Deserialize, Serialize};
use serde_json::{Value as Json, json};
use sha2::{Digest, Sha256};

use super::arrange::Extra;
use super::compact::{BlobUris, PathArena};
use super::finish::Resolver;
use super::render::Columns;
use super::{Entries, LanceAt, Sample, SearchInfo, View};
use crate::content_id::ContentId;
use crate::spec::{MaterializedPin, Spec};

/// Version of the file format; a reader refuses newer ones.
pub const FORMAT: u32 = 1;
/// Footer key of the header.
pub const HEADER_KEY: &str = "lakemount.view";
/// Directory under the warehouse root.
pub const DIR: &str = "views";
/// Rows per row group when the view is not cut into ranks.
pub const GROUP_ROWS: usize = 1 << 20;
/// The first read of an index: its last this many bytes, which usually
/// hold the whole footer.
const TAIL: u64 = 256 << 10;

/// What the file records besides its rows.
#[derive(Debug, Serialize, Deserialize)]
struct Header {
    format: u32,
    /// [`fingerprint`] of the spec it was resolved from.
    spec: Json,
    /// Ranks the view is cut into, if it was materialized for a world size.
    world_size: Option<u32>,
    snapshot_id: i64,
    snapshot_ms: i64,
    lance: Option<LanceRef>,
    search: Option<SearchRef>,
    /// Whether the listing has an order of its own (`line` column).
    ordered: bool,
    /// Whether rows have a similarity rank and distance.
    ranked: bool,
    pos_width: usize,
    shard_width: usize,
    cluster_width: usize,
    source_names: Vec<String>,
    /// The whole view's receipt (without its listing digest).
    receipt: Json,
    rows: u64,
    groups: Vec<Group>,
}

#[derive(Debug, Serialize, Deserialize)]
struct LanceRef {
    uri: String,
    version: u64,
    dim: usize,
}

#[derive(Debug, Serialize, Deserialize)]
struct SearchRef {
    query_sha256: Option<String>,
    index_version: Option<u64>,
}

/// One row group: whose it is, where it lies, its digest.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Group {
    rank: Option<u32>,
    rows: u64,
    offset: u64,
    length: u64,
    sha256: String,
}

/// A view written as an index: its bytes, name and shape.
pub struct Written {
    /// The file.
    pub bytes: Bytes,
    /// Hex SHA-256 of its footer: its name.
    pub sha256: String,
    /// Samples.
    pub rows: u64,
    /// Row groups.
    pub groups: usize,
}

/// What in `spec` decides a view's samples and files (everything but its
/// name, `resume` and `pinned`), as JSON: written into an index and
/// compared at mount, so an index is never shown for a spec edited since.
pub fn fingerprint(spec: &Spec) -> Json {
    use crate::spec::{Draw, Order, Query, SnapshotSel};
    let similar = spec.similar.as_ref().map(|s| {
        let to = match &s.to {
            Query::ContentId(id) => json!({"content_id": id}),
            Query::Vector(p) => json!({"vector": p.display().to_string()}),
            Query::File(p) => json!({"file": p.display().to_string()}),
            Query::Text(t) => json!({"text": t}),
        };
        json!({"to": to, "k": s.k, "metric": s.metric.name(), "nprobes": s.nprobes, "refine": s.refine})
    });
    let order = spec.order.as_ref().map(|o| match o {
        Order::Shuffle(seed) => json!({"shuffle": seed}),
        Order::By(keys) => json!({"by": keys
            .iter()
            .map(|k| format!("{} {}", k.column, if k.descending { "DESC" } else { "ASC" }))
            .collect::<Vec<_>>()}),
    });
    let sources: Vec<Json> = spec
        .sources
        .iter()
        .map(|s| {
            let draw = match s.draw {
                Draw::Proportion(x) => json!({"proportion": x}),
                Draw::Repeat(x) => json!({"repeat": x}),
                Draw::Choose(x) => json!({"choose": x}),
            };
            json!({"name": s.name, "filter": s.filter.as_ref().map(|f| f.text()), "draw": draw})
        })
        .collect();
    let pinned = spec.pinned.as_ref();
    json!({
        "table": spec.table,
        "snapshot": match spec.snapshot {
            SnapshotSel::Latest => json!("latest"),
            SnapshotSel::Id(id) => json!(id),
        },
        "filter": spec.filter.as_ref().map(|f| f.text()),
        "limit": spec.limit,
        "layout": spec.layout.text(),
        "sidecars": {"embedding": spec.sidecars.embedding, "metadata": spec.sidecars.metadata},
        "similar": similar,
        "select": spec.diverse.map(|d| json!({"clusters": d.clusters, "per_cluster": d.per_cluster, "seed": d.seed})),
        "order": order,
        "shard": spec.shard.map(|s| json!({"world_size": s.world_size, "pad": s.pad})),
        "epochs": spec.epochs.map(|e| e.count),
        "sources": sources,
        "epoch_size": spec.epoch_size,
        "lance_version": pinned.and_then(|p| p.lance_version),
        "query_sha256": pinned.and_then(|p| p.query_sha256.clone()),
        "index_version": pinned.and_then(|p| p.index_version),
    })
}

/// The index of `view`, resolved from `spec` (cut into `world_size` ranks
/// when given; `view` shows every rank).
pub fn write(view: &View, spec: &Spec, world_size: Option<u32>) -> Result<Written> {
    let e = &view.entries;
    let shape = Shape::of(view);
    let schema = shape.schema(e);
    let props = WriterProperties::builder()
        .set_compression(parquet::basic::Compression::ZSTD(Default::default()))
        .set_statistics_enabled(EnabledStatistics::None)
        .set_max_row_group_row_count(Some(usize::MAX))
        .build();
    let mut writer = ArrowWriter::try_new(Vec::new(), schema.clone(), Some(props))?;
    let mut groups = Vec::new();
    for (rank, range) in group_ranges(view, world_size) {
        let rows = range.len() as u64;
        let mut start = range.start;
        while start < range.end {
            // Batches of at most 64k rows keep the writer's buffers small.
            let end = (start + 65_536).min(range.end);
            writer.write(&shape.batch(view, start..end, &schema)?)?;
            start = end;
        }
        let offset = writer.bytes_written() as u64;
        writer.flush()?;
        writer.sync()?;
        let end = writer.bytes_written() as u64;
        let bytes = &writer.inner()[offset as usize..end as usize];
        groups.push(Group {
            rank,
            rows,
            offset,
            length: end - offset,
            sha256: hex::encode(Sha256::digest(bytes)),
        });
    }
    let header = Header {
        format: FORMAT,
        spec: fingerprint(spec),
        world_size,
        snapshot_id: view.snapshot_id,
        snapshot_ms: view.snapshot_ms,
        lance: view.lance.as_ref().map(|l| LanceRef {
            uri: l.uri.clone(),
            version: l.version,
            dim: l.dim,
        }),
        search: view.search.as_ref().map(|s| SearchRef {
            query_sha256: s.query_sha256.clone(),
            index_version: s.index_version,
        }),
        ordered: view.listing.order.is_some(),
        ranked: shape.ranked,
        pos_width: e.extra.pos_width,
        shard_width: e.extra.shard_width,
        cluster_width: e.extra.cluster_width,
        source_names: e.source_names.clone(),
        receipt: view.receipt.clone(),
        rows: e.samples.len() as u64,
        groups,
    };
    let groups = header.groups.len();
    writer.append_key_value_metadata(parquet::file::metadata::KeyValue::new(
        HEADER_KEY.to_string(),
        serde_json::to_string(&header)?,
    ));
    let bytes = Bytes::from(writer.into_inner()?);
    let footer = footer_range(&bytes, bytes.len() as u64)?;
    let sha256 = hex::encode(Sha256::digest(&bytes[footer.start as usize..]));
    Ok(Written {
        bytes,
        sha256,
        rows: header.rows,
        groups,
    })
}

/// Rank and sample range of each row group: one per rank when cut into
/// ranks (ranks without samples get an empty group), else runs of
/// [`GROUP_ROWS`].
fn group_ranges(view: &View, world_size: Option<u32>) -> Vec<(Option<u32>, Range<usize>)> {
    let n = view.len();
    let shards = &view.entries.extra.shards;
    match world_size {
        Some(w) if !shards.is_empty() => {
            let mut out = Vec::with_capacity(w as usize);
            let mut start = 0;
            for r in 0..w {
                let end = start + shards[start..].partition_point(|&s| s <= r);
                out.push((Some(r), start..end));
                start = end;
            }
            out
        }
        _ => (0..n.div_ceil(GROUP_ROWS).max(1))
            .map(|g| (None, g * GROUP_ROWS..((g + 1) * GROUP_ROWS).min(n)))
            .collect(),
    }
}

/// Which optional columns a view's index has.
struct Shape {
    line: bool,
    ranked: bool,
    pos: bool,
    shards: bool,
    clusters: bool,
    sources: bool,
}

fn id_type() -> DataType {
    DataType::FixedSizeBinary(32)
}

fn digests_type() -> DataType {
    DataType::List(Arc::new(Field::new("item", id_type(), true)))
}

impl Shape {
    fn of(view: &View) -> Self {
        let x = &view.entries.extra;
        Self {
            line: view.listing.order.is_some(),
            ranked: !view.entries.ranks.is_empty(),
            pos: !x.pos.is_empty(),
            shards: !x.shards.is_empty(),
            clusters: !x.clusters.is_empty(),
            sources: !x.sources.is_empty(),
        }
    }

    fn schema(&self, e: &Entries) -> SchemaRef {
        let mut f = vec![
            Field::new("content_id", id_type(), false),
            Field::new("dir", DataType::Utf8, false),
            Field::new("name", DataType::Utf8, false),
            Field::new("npy", DataType::Boolean, false),
            Field::new("size", DataType::UInt64, false),
            Field::new("uri_shape", DataType::UInt8, false),
            Field::new("uri", DataType::Utf8, false),
            Field::new("pack_offset", DataType::UInt64, true),
            Field::new("pack_length", DataType::UInt32, true),
            Field::new("read_uri", DataType::Utf8, true),
            Field::new("lance_row", DataType::UInt64, true),
            Field::new("chunk_digests", digests_type(), true),
        ];
        for (present, name, t) in [
            (self.line, "line", DataType::UInt32),
            (self.ranked, "sim_rank", DataType::UInt32),
            (self.ranked, "distance", DataType::Float32),
            (self.pos, "pos", DataType::UInt32),
            (self.shards, "shard", DataType::UInt32),
            (self.clusters, "cluster", DataType::UInt32),
            (self.sources, "source", DataType::UInt32),
        ] {
            if present {
                f.push(Field::new(name, t, false));
            }
        }
        for (name, col) in e.columns.arrays() {
            f.push(Field::new(
                format!("m:{name}"),
                col.data_type().clone(),
                true,
            ));
        }
        Arc::new(Schema::new(f))
    }

    fn batch(&self, view: &View, range: Range<usize>, schema: &SchemaRef) -> Result<RecordBatch> {
        let e = &view.entries;
        let samples = &e.samples[range.clone()];
        let ids = FixedSizeBinaryArray::try_from_iter(samples.iter().map(|s| s.content_id.0))?;
        let (mut dirs, mut names) = (Vec::new(), Vec::new());
        for s in samples {
            let (d, n) = e.paths.split(s.path);
            dirs.push(d);
            names.push(n);
        }
        let mut shapes = Vec::with_capacity(samples.len());
        let mut uris: Vec<&str> = Vec::with_capacity(samples.len());
        let mut offsets = Vec::with_capacity(samples.len());
        let mut lengths = Vec::with_capacity(samples.len());
        for s in samples {
            let (shape, text, packed) = e.uris.parts(s.uri);
            shapes.push(shape as u8);
            uris.push(text);
            offsets.push(packed.map(|p| p.offset));
            lengths.push(packed.map(|p| p.length));
        }
        let read_uri: StringArray = range
            .clone()
            .map(|i| {
                e.read_from
                    .binary_search_by_key(&(i as u32), |(k, _)| *k)
                    .ok()
                    .map(|k| {
                        e.uris
                            .get(e.read_from[k].1, &e.samples[i].content_id)
                            .into_owned()
                    })
            })
            .collect();
        let mut digests = ListBuilder::new(FixedSizeBinaryBuilder::new(32))
            .with_field(Arc::new(Field::new("item", id_type(), true)));
        for i in range.clone() {
            match e.digests.binary_search_by_key(&(i as u32), |(k, _)| *k) {
                Ok(k) => {
                    for d in e.digests[k].1.iter() {
                        digests.values().append_value(d)?;
                    }
                    digests.append(true);
                }
                Err(_) => digests.append(false),
            }
        }
        let mut cols: Vec<ArrayRef> = vec![
            Arc::new(ids),
            Arc::new(StringArray::from(dirs)),
            Arc::new(StringArray::from(names)),
            Arc::new(BooleanArray::from(
                samples.iter().map(|s| s.npy).collect::<Vec<_>>(),
            )),
            Arc::new(UInt64Array::from_iter_values(
                samples.iter().map(|s| s.size),
            )),
            Arc::new(UInt8Array::from(shapes)),
            Arc::new(StringArray::from(uris)),
            Arc::new(UInt64Array::from(offsets)),
            Arc::new(UInt32Array::from(lengths)),
            Arc::new(read_uri),
            Arc::new(UInt64Array::from(
                samples.iter().map(|s| s.lance_row).collect::<Vec<_>>(),
            )),
            Arc::new(digests.finish()),
        ];
        let u32s = |v: Vec<u32>| -> ArrayRef { Arc::new(UInt32Array::from(v)) };
        if self.line {
            cols.push(u32s(
                range.clone().map(|i| view.listing_line(i) as u32).collect(),
            ));
        }
        if self.ranked {
            cols.push(u32s(e.ranks[range.clone()].iter().map(|r| r.0).collect()));
            cols.push(Arc::new(Float32Array::from(
                e.ranks[range.clone()]
                    .iter()
                    .map(|r| r.1)
                    .collect::<Vec<_>>(),
            )));
        }
        let x = &e.extra;
        for (present, v) in [
            (self.pos, &x.pos),
            (self.shards, &x.shards),
            (self.clusters, &x.clusters),
            (self.sources, &x.sources),
        ] {
            if present {
                cols.push(u32s(v[range.clone()].to_vec()));
            }
        }
        for (_, col) in e.columns.arrays() {
            cols.push(col.slice(range.start, range.len()));
        }
        Ok(RecordBatch::try_new(schema.clone(), cols)?)
    }
}

/// Byte range of the footer (metadata, its length, the magic) of the
/// Parquet file whose last bytes are `tail` and whose size is `size`.
fn footer_range(tail: &[u8], size: u64) -> Result<Range<u64>> {
    if tail.len() < 8 || &tail[tail.len() - 4..] != b"PAR1" {
        bail!("not a Parquet file");
    }
    let n = tail.len();
    let len = u32::from_le_bytes(tail[n - 8..n - 4].try_into().unwrap_or_default()) as u64;
    let start = size
        .checked_sub(len + 8)
        .filter(|&s| s >= 4)
        .ok_or_else(|| err!("its footer length {len} exceeds the file"))?;
    Ok(start..size)
}

/// Where the index named `sha256` lies under the warehouse `root`.
pub fn location(root: &url::Url, sha256: &str) -> String {
    format!("{root}{DIR}/{sha256}.parquet")
}

/// Stores `w` under the warehouse (a PUT of the whole file: it appears
/// whole or not at all); returns its URI.
pub async fn store(wh: &crate::warehouse::Warehouse, w: &Written) -> Result<String> {
    let rel = format!("{DIR}/{}.parquet", w.sha256);
    wh.blobs
        .put_file(&rel, w.bytes.clone())
        .await
        .with_context(|| format!("cannot write the materialized index {rel}"))
}

/// A Parquet file of which only some ranges are at hand.
struct Sparse {
    size: u64,
    parts: Vec<(u64, Bytes)>,
}

impl Sparse {
    fn part(&self, start: u64, len: u64) -> parquet::errors::Result<Bytes> {
        for (at, b) in &self.parts {
            if start >= *at && start + len <= at + b.len() as u64 {
                let from = (start - at) as usize;
                return Ok(b.slice(from..from + len as usize));
            }
        }
        Err(parquet::errors::ParquetError::General(format!(
            "bytes {start}..{} were not read",
            start + len
        )))
    }
}

impl parquet::file::reader::Length for Sparse {
    fn len(&self) -> u64 {
        self.size
    }
}

impl parquet::file::reader::ChunkReader for Sparse {
    type T = bytes::buf::Reader<Bytes>;

    fn get_read(&self, start: u64) -> parquet::errors::Result<Self::T> {
        let (at, b) = self
            .parts
            .iter()
            .find(|(at, b)| start >= *at && start < at + b.len() as u64)
            .ok_or_else(|| {
                parquet::errors::ParquetError::General(format!("byte {start} was not read"))
            })?;
        Ok(b.slice((start - at) as usize..).reader())
    }

    fn get_bytes(&self, start: u64, length: usize) -> parquet::errors::Result<Bytes> {
        self.part(start, length as u64)
    }
}

/// The view `spec` names by its materialized index `m`: the row groups
/// the mount shows (its rank's, or all), each verified, nothing resolved.
pub async fn load(spec: &Spec, m: &MaterializedPin, r: &Resolver<'_>) -> Result<View> {
    let started = std::time::Instant::now();
    let uri = location(r.root, &m.index);
    let shown = crate::trust::redact(&uri);
    let bad = |why: String| {
        spec.error("pinned.materialized.index", format!("materialized index {shown}: {why}; materialize it again (`lakemount pin --materialize`) or remove `pinned.materialized` to resolve from the table"))
    };
    let url = url::Url::parse(&uri).with_context(|| format!("bad URI {shown}"))?;
    let (_, path) = object_store::ObjectStoreScheme::parse(&url)
        .map_err(object_store::Error::from)
        .with_context(|| format!("bad URI {shown}"))?;
    let store = r.storage.object_store(&url)?;
    let get = |range: object_store::GetRange| {
        let (store, path) = (store.clone(), path.clone());
        async move {
            let opts = object_store::GetOptions {
                range: Some(range),
                ..Default::default()
            };
            let got = store.get_opts(&path, opts).await?;
            let (size, at) = (got.meta.size, got.range.start);
            Ok::<_, object_store::Error>((size, at, got.bytes().await?))
        }
    };
    let tail = match get(object_store::GetRange::Suffix(TAIL)).await {
        // Azure Blob Storage has no suffix ranges: ask for the size first.
        Err(object_store::Error::NotSupported { .. }) => {
            match object_store::ObjectStoreExt::head(store.as_ref(), &path).await {
                Ok(meta) => {
                    get(object_store::GetRange::Bounded(
                        meta.size.saturating_sub(TAIL)..meta.size,
                    ))
                    .await
                }
                Err(e) => Err(e),
            }
        }
        r => r,
    };
    let (size, tail_at, tail) = tail.map_err(|e| match e {
        object_store::Error::NotFound { .. } => bad("it does not exist".into()),
        other => bad(format!(
            "cannot read it: {}",
            crate::trust::redact(&other.to_string())
        ))
        .with_kind(crate::error::ErrorKind::Storage),
    })?;
    let footer = footer_range(&tail, size).map_err(|e| bad(e.to_string()))?;
    let footer_bytes = if footer.start >= tail_at {
        tail.slice((footer.start - tail_at) as usize..)
    } else {
        let (_, _, b) = get(object_store::GetRange::Bounded(footer.clone()))
            .await
            .map_err(|e| bad(format!("cannot read its footer: {e}")))?;
        b
    };
    if hex::encode(Sha256::digest(&footer_bytes)) != m.index {
        return Err(bad(
            "its footer does not match its name (SHA-256): it is corrupt".into(),
        ));
    }
    let meta = parquet::file::metadata::ParquetMetaDataReader::decode_metadata(
        &footer_bytes[..footer_bytes.len() - 8],
    )
    .map_err(|e| bad(format!("its footer does not parse: {e}")))?;
    let header: Header = meta
        .file_metadata()
        .key_value_metadata()
        .and_then(|kv| kv.iter().find(|k| k.key == HEADER_KEY))
        .and_then(|k| k.value.as_deref())
        .ok_or_else(|| bad(format!("it has no `{HEADER_KEY}` header")))
        .and_then(|h| serde_json::from_str(h).map_err(|e| bad(format!("bad header: {e}"))))?;
    if header.format > FORMAT {
        return Err(bad(format!(
            "it is format {}, newer than this lakemount reads ({FORMAT}): upgrade lakemount",
            header.format
        )));
    }
    if header.spec != fingerprint(spec) {
        let now = fingerprint(spec);
        let keys: Vec<String> = now
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(k, v)| header.spec.get(k.as_str()) != Some(v))
            .map(|(k, _)| k.clone())
            .collect();
        return Err(bad(format!(
            "it was materialized from a different spec (differs in: {})",
            keys.join(", ")
        )));
    }
    if header.rows != m.rows || header.world_size != m.world_size {
        return Err(bad(format!(
            "it holds {} rows for world size {:?}, the spec says {} rows for {:?}",
            header.rows, header.world_size, m.rows, m.world_size
        )));
    }
    // Which row groups this mount shows.
    let epochs = spec.epochs.is_some();
    let mount_w = r.rank.filter(|_| !epochs).map(|m| m.world_size);
    let spec_w = spec.shard.filter(|_| !epochs).map(|s| s.world_size);
    if !epochs && mount_w.or(spec_w) != header.world_size {
        return Err(spec.error("pinned.materialized.world_size", format!("the materialized index is cut into {} but this mount shows {}: mount with{}, or materialize again with `lakemount pin --materialize{}`", header
                .world_size
                .map_or("no ranks".to_string(), |w| format!("{w} ranks")),
            mount_w
                .or(spec_w)
                .map_or("no ranks".to_string(), |w| format!("{w} ranks")),
            header
                .world_size
                .map_or(" no --rank/--world-size".to_string(), |w| format!(
                    " --world-size {w}"
                )),
            mount_w.map_or(String::new(), |w| format!(" --world-size {w}")))));
    }
    let keep = r.rank.filter(|_| !epochs && !r.every_rank).map(|m| m.rank);
    let wanted: Vec<usize> = (0..header.groups.len())
        .filter(|&g| keep.is_none() || header.groups[g].rank == keep)
        .collect();
    if meta.num_row_groups() != header.groups.len() {
        return Err(bad("its header and row groups disagree".into()));
    }
    let ranges: Vec<Range<u64>> = wanted
        .iter()
        .map(|&g| {
            let grp = &header.groups[g];
            grp.offset..grp.offset + grp.length
        })
        .collect();
    if ranges.iter().any(|g| g.end > footer.start) {
        return Err(bad("a row group overlaps its footer".into()));
    }
    // Row groups the first read brought are not asked for again.
    let mut read = tail.len() as u64;
    if footer.start < tail_at {
        read += footer.end - footer.start;
    }
    let missing: Vec<Range<u64>> = ranges
        .iter()
        .filter(|g| g.start < tail_at)
        .cloned()
        .collect();
    let mut got = if missing.is_empty() {
        Vec::new()
    } else {
        store.get_ranges(&path, &missing).await.map_err(|e| {
            bad(format!(
                "cannot read it: {}",
                crate::trust::redact(&e.to_string())
            ))
        })?
    }
    .into_iter();
    let mut parts = vec![(footer.start, footer_bytes.clone())];
    for (&g, range) in wanted.iter().zip(&ranges) {
        let bytes = if range.start >= tail_at {
            tail.slice((range.start - tail_at) as usize..(range.end - tail_at) as usize)
        } else {
            let b = got
                .next()
                .ok_or_else(|| bad("a ranged read came back short".into()))?;
            read += b.len() as u64;
            b
        };
        if hex::encode(Sha256::digest(&bytes)) != header.groups[g].sha256 {
            return Err(bad(format!(
                "row group {g} does not match its digest: it is corrupt"
            )));
        }
        parts.push((range.start, bytes));
    }
    let sparse = Sparse { size, parts };
    let options = ArrowReaderOptions::new()
        .with_page_index_policy(parquet::file::metadata::PageIndexPolicy::Skip);
    let reader = ParquetRecordBatchReaderBuilder::try_new_with_options(sparse, options)
        .map_err(|e| bad(format!("cannot read it: {e}")))?
        .with_row_groups(wanted.clone())
        .with_batch_size(65_536)
        .build()
        .map_err(|e| bad(format!("cannot read it: {e}")))?;
    let rows: u64 = wanted.iter().map(|&g| header.groups[g].rows).sum();
    let (entries, lines) =
        entries(&header, rows as usize, reader).map_err(|e| bad(format!("{e:#}")))?;
    let groups = header.groups.len();
    let view = finish(spec, r, header, entries, lines).await?;
    tracing::debug!(
        spec = spec.name,
        samples = view.len(),
        row_groups = wanted.len(),
        of = groups,
        bytes_read = read,
        ms = started.elapsed().as_millis() as u64,
        "materialized view loaded"
    );
    Ok(view)
}

/// The view of `entries` (the rows of one index this mount shows, `lines`
/// their lines in the whole view's listing when it has an order): sizes,
/// listing, trust verdicts, the Lance dataset, the epoch plan, and the
/// receipt as a mount that resolved the spec would render it.
async fn finish(
    spec: &Spec,
    r: &Resolver<'_>,
    header: Header,
    mut entries: Entries,
    lines: Vec<u32>,
) -> Result<View> {
    let lance = match &header.lance {
        None => None,
        Some(l) => {
            if !r.trust.allows_dataset(&l.uri) {
                return Err(spec.error("pinned.materialized.index", format!("the materialized index names Lance dataset {}, outside this warehouse and the allowed prefixes", crate::trust::redact(&l.uri))));
            }
            let ds = crate::vectors::open(&l.uri, r.storage)
                .await?
                .ok_or_else(|| {
                    err!(
                        "Lance dataset {} does not exist",
                        crate::trust::redact(&l.uri)
                    )
                })?
                .checkout_version(l.version)
                .await
                .with_context(|| {
                    format!(
                        "Lance dataset {} has no version {}",
                        crate::trust::redact(&l.uri),
                        l.version
                    )
                })?;
            Some(LanceAt {
                uri: l.uri.clone(),
                version: l.version,
                dataset: Arc::new(ds),
                dim: l.dim,
            })
        }
    };
    entries.untrusted = super::finish::untrusted(&entries, r.trust);
    entries.npy_len = lance.as_ref().map_or(0, |l| {
        crate::npy::write_vector(&vec![0.0; l.dim]).len() as u64
    });
    let order = header.ordered.then(|| {
        let mut order: Vec<u32> = (0..entries.samples.len() as u32).collect();
        order.sort_unstable_by_key(|&i| lines[i as usize]);
        order
    });
    drop(lines);
    let listing = super::finish::measure(spec, &mut entries, order)?;
    let epochs = super::finish::epoch_plan(spec, r, &entries)?;
    // The whole view's receipt, as this mount shows it.
    let mut receipt = header.receipt;
    let rows = entries.samples.len();
    if let Json::Object(map) = &mut receipt {
        map.insert("spec".into(), json!(spec.name));
        map.insert("row_count".into(), json!(rows));
        let rank = r.rank.filter(|_| !r.every_rank && spec.epochs.is_none());
        if let (Some(Json::Object(shard)), Some(m)) = (map.get_mut("shard"), rank) {
            shard.insert("rank".into(), json!(m.rank));
            shard.insert("per_rank".into(), json!(rows));
        }
        if let Some(p) = &epochs {
            map.insert(
                "epochs".into(),
                super::finish::epochs_record(spec, p, header.snapshot_id, rows),
            );
        }
    }
    Ok(View {
        name: spec.name.clone(),
        snapshot_id: header.snapshot_id,
        snapshot_ms: header.snapshot_ms,
        lance,
        search: header.search.map(|s| SearchInfo {
            query_sha256: s.query_sha256,
            index_version: s.index_version,
        }),
        epochs,
        receipt_len: super::render::receipt_size(&receipt),
        receipt,
        receipt_bytes: OnceLock::new(),
        pack_members: OnceLock::new(),
        entries,
        listing,
    })
}

/// The samples of `batches` (`n` rows of one index, in path order) as a
/// view's entries, and their listing lines; each batch is dropped once
/// read (the metadata columns keep their parts of it).
fn entries(
    header: &Header,
    n: usize,
    batches: impl Iterator<Item = Result<RecordBatch, arrow_schema::ArrowError>>,
) -> Result<(Entries, Vec<u32>)> {
    let mut samples = Vec::with_capacity(n);
    let mut paths = PathArena::default();
    let mut uris = BlobUris::default();
    let mut digests = Vec::new();
    let mut read_from = Vec::new();
    let mut ranks = Vec::new();
    let mut lines: Vec<u32> = Vec::new();
    let mut extra = Extra {
        pos_width: header.pos_width,
        shard_width: header.shard_width,
        cluster_width: header.cluster_width,
        ..Extra::default()
    };
    let mut meta: Vec<(String, Vec<ArrayRef>)> = Vec::new();
    for b in batches {
        let b = b.context("cannot decode it")?;
        let b = &b;
        let col = |name: &str| {
            b.column_by_name(name)
                .ok_or_else(|| err!("it lacks column {name}"))
        };
        fn typed<'a, T: 'static>(c: &'a ArrayRef, name: &str) -> Result<&'a T> {
            c.as_any()
                .downcast_ref::<T>()
                .ok_or_else(|| err!("column {name} has type {}", c.data_type()))
        }
        let ids_col = col("content_id")?;
        let ids: &FixedSizeBinaryArray = typed(ids_col, "content_id")?;
        let dir_col = col("dir")?;
        let dirs: &StringArray = typed(dir_col, "dir")?;
        let name_col = col("name")?;
        let names: &StringArray = typed(name_col, "name")?;
        let npy_col = col("npy")?;
        let npy: &BooleanArray = typed(npy_col, "npy")?;
        let size_col = col("size")?;
        let sizes: &UInt64Array = typed(size_col, "size")?;
        let shape_col = col("uri_shape")?;
        let shapes: &UInt8Array = typed(shape_col, "uri_shape")?;
        let uri_col = col("uri")?;
        let uri_text: &StringArray = typed(uri_col, "uri")?;
        let off_col = col("pack_offset")?;
        let offs: &UInt64Array = typed(off_col, "pack_offset")?;
        let len_col = col("pack_length")?;
        let lens: &UInt32Array = typed(len_col, "pack_length")?;
        let read_col = col("read_uri")?;
        let read: &StringArray = typed(read_col, "read_uri")?;
        let lance_col = col("lance_row")?;
        let lance: &UInt64Array = typed(lance_col, "lance_row")?;
        let dig_col = col("chunk_digests")?;
        let digs: &ListArray = typed(dig_col, "chunk_digests")?;
        let u32col = |name: &str| -> Result<Option<UInt32Array>> {
            match b.column_by_name(name) {
                None => Ok(None),
                Some(c) => Ok(Some(typed::<UInt32Array>(c, name)?.clone())),
            }
        };
        let line = u32col("line")?;
        let sim_rank = u32col("sim_rank")?;
        let distance = match b.column_by_name("distance") {
            Some(c) => Some(typed::<Float32Array>(c, "distance")?.clone()),
            None => None,
        };
        let pos = u32col("pos")?;
        let shard = u32col("shard")?;
        let cluster = u32col("cluster")?;
        let source = u32col("source")?;
        for k in 0..b.num_rows() {
            let id = ContentId(
                ids.value(k)
                    .try_into()
                    .map_err(|_| err!("a content_id is not 32 bytes"))?,
            );
            let uri = match shapes.value(k) {
                0 => uris.intern(uri_text.value(k), &id),
                1 => uris.intern_prefix(uri_text.value(k), true),
                2 => uris.intern_prefix(uri_text.value(k), false),
                3 if !offs.is_null(k) && !lens.is_null(k) => uris.intern(
                    &crate::packs::range_uri(
                        uri_text.value(k),
                        offs.value(k),
                        u64::from(lens.value(k)),
                    ),
                    &id,
                ),
                other => bail!(
                    "uri_shape {other} of {} is not one this lakemount reads",
                    id.hex()
                ),
            };
            let i = samples.len() as u32;
            samples.push(Sample {
                content_id: id,
                size: sizes.value(k),
                lance_row: (!lance.is_null(k)).then(|| lance.value(k)),
                path: paths.push_marked(dirs.value(k), names.value(k))?,
                uri,
                json_len: 0,
                npy: npy.value(k),
            });
            if !read.is_null(k) {
                read_from.push((i, uris.intern(read.value(k), &id)));
            }
            if !digs.is_null(k) {
                let list = digs.value(k);
                let list: &FixedSizeBinaryArray = typed(&list, "chunk_digests")?;
                let d: Vec<[u8; 32]> = (0..list.len())
                    .map(|j| list.value(j).try_into().unwrap_or([0; 32]))
                    .collect();
                digests.push((i, Arc::from(d)));
            }
            if let Some(l) = &line {
                lines.push(l.value(k));
            }
            if let (Some(r), Some(d)) = (&sim_rank, &distance) {
                ranks.push((r.value(k), d.value(k)));
            }
            for (c, v) in [
                (&pos, &mut extra.pos),
                (&shard, &mut extra.shards),
                (&cluster, &mut extra.clusters),
                (&source, &mut extra.sources),
            ] {
                if let Some(c) = c {
                    v.push(c.value(k));
                }
            }
        }
        for (f, c) in b.schema().fields().iter().zip(b.columns()) {
            if let Some(name) = f.name().strip_prefix("m:") {
                match meta.iter_mut().find(|(m, _)| m == name) {
                    Some((_, parts)) => parts.push(c.clone()),
                    None => meta.push((name.to_string(), vec![c.clone()])),
                }
            }
        }
    }
    paths.shrink_to_fit();
    uris.shrink_to_fit();
    let mut cols = Vec::with_capacity(meta.len());
    for (name, parts) in meta {
        let refs: Vec<&dyn Array> = parts.iter().map(|a| a.as_ref()).collect();
        let col = arrow_select::concat::concat(&refs)?;
        cols.push((name, super::scan::compact_column(col)?));
    }
    if header.ordered && lines.len() != samples.len() {
        bail!("it is ordered but lacks the line column");
    }
    let columns = Columns::new(cols, !ranks.is_empty(), &extra);
    let entries = Entries {
        samples,
        paths,
        uris,
        columns,
        ranks,
        extra,
        npy_len: 0,
        digests,
        untrusted: Vec::new(),
        source_names: header.source_names.clone(),
        read_from,
    };
    Ok((entries, lines))
}
