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

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use arrow_array::{
    Array, BooleanArray, Float32Array, Float64Array, Int32Array, Int64Array, RecordBatch,
    StringArray, TimestampMicrosecondArray,
};
use arrow_cast::display::ArrayFormatter;
use bytes::Bytes;
use futures::TryStreamExt;
use iceberg::Catalog;
use iceberg::table::Table;
use lance::Dataset;
use serde_json::{Map, Value as Json};
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

/// One sample of a view.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Path of the sample file, relative to the spec directory.
    pub path: String,
    /// Path of the `.npy` sidecar, when the spec wants it and Lance has a row.
    pub embedding_path: Option<String>,
    /// Path of the `.json` sidecar, when the spec wants it.
    pub metadata_path: Option<String>,
    /// SHA-256 of the bytes.
    pub content_id: String,
    /// Where the bytes are.
    pub uri: String,
    /// MIME type.
    pub media_type: String,
    /// Size of the bytes, from metadata.
    pub size: u64,
    /// Stable Lance row id, if the Lance dataset has the sample.
    pub lance_row: Option<u64>,
    /// The metadata sidecar's bytes.
    pub metadata: Bytes,
    /// Rank (0 = nearest) in a similarity view.
    pub rank: Option<usize>,
}

/// What a file in a view holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Content {
    /// The bytes of sample `i`.
    Sample(usize),
    /// The `.npy` embedding of sample `i`.
    Embedding(usize),
    /// The `.json` metadata of sample `i`.
    Metadata(usize),
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
    /// `_index.jsonl` bytes.
    pub index: Bytes,
    /// `_receipt.json` bytes.
    pub receipt: Bytes,
    /// Digest of a similarity view's query vector.
    pub query_sha256: Option<String>,
    /// Lance version of the vector index a similarity view searched, `None` for exact.
    pub index_version: Option<u64>,
    npy_len: u64,
}

impl View {
    /// Every file of the view, sorted by path.
    pub fn files(&self) -> Vec<FileEntry> {
        let mut out = Vec::with_capacity(self.samples.len() * 3 + 2);
        out.push(FileEntry {
            path: INDEX_FILE.into(),
            size: self.index.len() as u64,
            content: Content::Index,
        });
        out.push(FileEntry {
            path: RECEIPT_FILE.into(),
            size: self.receipt.len() as u64,
            content: Content::Receipt,
        });
        for (i, s) in self.samples.iter().enumerate() {
            out.push(FileEntry {
                path: s.path.clone(),
                size: s.size,
                content: Content::Sample(i),
            });
            if let Some(p) = &s.embedding_path {
                out.push(FileEntry {
                    path: p.clone(),
                    size: self.npy_len,
                    content: Content::Embedding(i),
                });
            }
            if let Some(p) = &s.metadata_path {
                out.push(FileEntry {
                    path: p.clone(),
                    size: s.metadata.len() as u64,
                    content: Content::Metadata(i),
                });
            }
        }
        out.sort_by(|a, b| a.path.cmp(&b.path));
        out
    }
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
    let mut scan = table.scan().snapshot_id(snapshot_id).select_all();
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

    let mut rows = Vec::new();
    for batch in &batches {
        rows.extend(rows_of(batch)?);
    }
    rows.sort_by(|a, b| a.content_id.cmp(&b.content_id));
    rows.dedup_by(|a, b| a.content_id == b.content_id);

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
    if let Some(sim) = &spec.similar {
        let l = lance.as_ref().ok_or_else(|| {
            anyhow!(
                "{}: table {} has no Lance dataset with embeddings",
                at("similar"),
                spec.table
            )
        })?;
        search = similarity(spec, sim, l, &row_ids, &mut rows, encoder).await?;
    }
    if let Some(limit) = spec.limit {
        rows.truncate(limit);
    }
    let npy_len = lance.as_ref().map_or(0, |l| {
        crate::npy::write_vector(&vec![0.0; l.dim]).len() as u64
    });

    let mut names = Names::default();
    names.reserve(INDEX_FILE);
    names.reserve(RECEIPT_FILE);
    let mut samples = Vec::with_capacity(rows.len());
    for row in rows {
        let ext = extension_for(&row.media_type);
        let parts = spec.layout.render(|f| {
            if f == "ext" {
                Some(ext.to_string())
            } else {
                row.fields.get(f).cloned().flatten()
            }
        });
        let lance_row = row_ids.get(&row.content_id).copied();
        let want_npy = spec.sidecars.embedding && lance_row.is_some();
        let (path, npy, json) =
            names.place(&parts, &row.content_id, want_npy, spec.sidecars.metadata);
        let mut line = Map::new();
        line.insert("path".into(), Json::from(path.clone()));
        line.insert("content_id".into(), Json::from(row.content_id.clone()));
        let ranked: &[&str] = if row.rank.is_some() {
            &["rank", "distance"]
        } else {
            &[]
        };
        for key in ["label", "split", "media_type", "size_bytes", "uri"]
            .iter()
            .chain(ranked)
        {
            line.insert(
                (*key).into(),
                row.json.get(*key).cloned().unwrap_or(Json::Null),
            );
        }
        line.insert(
            "embedding".into(),
            npy.clone().map_or(Json::Null, Json::from),
        );
        let mut index_line = serde_json::to_vec(&Json::Object(line))?;
        index_line.push(b'\n');
        let metadata = match json {
            Some(_) => Bytes::from(serde_json::to_vec_pretty(&row.json)?),
            None => Bytes::new(),
        };
        samples.push((
            Sample {
                rank: row.rank,
                path,
                embedding_path: npy,
                metadata_path: json,
                content_id: row.content_id,
                uri: row.uri,
                media_type: row.media_type,
                size: row.size,
                lance_row,
                metadata,
            },
            index_line,
        ));
    }
    samples.sort_by(|a, b| a.0.path.cmp(&b.0.path));
    // The index lists a similarity view in rank order, any other in path order.
    let mut order: Vec<usize> = (0..samples.len()).collect();
    order.sort_by_key(|&i| (samples[i].0.rank, i));
    let index: Vec<u8> = order
        .iter()
        .flat_map(|&i| samples[i].1.iter().copied())
        .collect();
    let samples: Vec<Sample> = samples.into_iter().map(|(s, _)| s).collect();
    let receipt = serde_json::json!({
        "spec": spec.name,
        "table": spec.table,
        "snapshot_requested": match spec.snapshot {
            SnapshotSel::Latest => Json::from("latest"),
            SnapshotSel::Id(id) => Json::from(id),
        },
        "snapshot_id": snapshot_id,
        "snapshot_committed_ms": snapshot.timestamp_ms(),
        "lance_uri": lance.as_ref().map(|l| l.uri.clone()),
        "lance_version": lance.as_ref().map(|l| l.version),
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
            "query_sha256": search.query_sha256,
            "k": sim.k,
            "metric": sim.metric.name(),
            "search": match search.index_version {
                Some(v) => format!("ivf_pq index at Lance version {v}"),
                None => "exact".to_string(),
            },
            "index_version": search.index_version,
            "nprobes": search.index_version.map(|_| sim.nprobes.unwrap_or(similar::DEFAULT_NPROBES)),
            "refine": search.index_version.map(|_| sim.refine.unwrap_or(similar::DEFAULT_REFINE)),
        })),
        "row_count": samples.len(),
        "listing_sha256": hex::encode(Sha256::digest(&index)),
    });
    let mut receipt = serde_json::to_vec_pretty(&receipt)?;
    receipt.push(b'\n');
    Ok(View {
        name: spec.name.clone(),
        query_sha256: search.query_sha256,
        index_version: search.index_version,
        snapshot_id,
        snapshot_ms: snapshot.timestamp_ms(),
        lance,
        samples,
        index: Bytes::from(index),
        receipt: Bytes::from(receipt),
        npy_len,
    })
}

/// What a similarity search used.
#[derive(Default)]
struct Search {
    query_sha256: Option<String>,
    index_version: Option<u64>,
}

/// Keeps the `k` rows nearest to the spec's query, in rank order, and adds
/// `rank` and `distance` to their fields and metadata.
async fn similarity(
    spec: &Spec,
    sim: &crate::spec::Similar,
    lance: &LanceAt,
    row_ids: &HashMap<String, u64>,
    rows: &mut Vec<Row>,
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
            let mut models: Vec<String> = rows
                .iter()
                .filter_map(|r| r.fields.get("embedding_model").cloned().flatten())
                .collect();
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
    let candidates: Vec<(String, u64)> = rows
        .iter()
        .filter_map(|r| {
            row_ids
                .get(&r.content_id)
                .map(|id| (r.content_id.clone(), *id))
        })
        .collect();
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
    let width = sim.k.saturating_sub(1).to_string().len();
    let mut by_id: HashMap<String, Row> =
        rows.drain(..).map(|r| (r.content_id.clone(), r)).collect();
    for (rank, (i, dist)) in ranked.into_iter().enumerate() {
        let mut row = by_id
            .remove(&candidates[i].0)
            .context("ranked row vanished")?;
        row.rank = Some(rank);
        row.fields
            .insert("rank".into(), Some(format!("{rank:0width$}")));
        row.fields
            .insert("distance".into(), Some(format!("{dist:.6}")));
        row.json.insert("rank".into(), Json::from(rank));
        row.json.insert(
            "distance".into(),
            serde_json::Number::from_f64(f64::from(dist)).map_or(Json::Null, Json::Number),
        );
        rows.push(row);
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

struct Row {
    content_id: String,
    uri: String,
    media_type: String,
    size: u64,
    /// Column values as text, for the layout.
    fields: HashMap<String, Option<String>>,
    /// Column values as JSON, for the metadata sidecar.
    json: Map<String, Json>,
    /// Rank in a similarity view.
    rank: Option<usize>,
}

fn rows_of(batch: &RecordBatch) -> Result<Vec<Row>> {
    let schema = batch.schema();
    let mut rows: Vec<Row> = (0..batch.num_rows())
        .map(|_| Row {
            content_id: String::new(),
            uri: String::new(),
            media_type: String::new(),
            size: 0,
            fields: HashMap::new(),
            json: Map::new(),
            rank: None,
        })
        .collect();
    for (field, col) in schema.fields().iter().zip(batch.columns()) {
        let name = field.name();
        let fmt = ArrayFormatter::try_new(col.as_ref(), &Default::default())?;
        for (i, row) in rows.iter_mut().enumerate() {
            let json = json_value(col.as_ref(), i);
            let text = match &json {
                Json::Null => None,
                Json::String(s) => Some(s.clone()),
                _ => Some(fmt.value(i).to_string()),
            };
            match name.as_str() {
                "content_id" => row.content_id = text.clone().unwrap_or_default(),
                "uri" => row.uri = text.clone().unwrap_or_default(),
                "media_type" => row.media_type = text.clone().unwrap_or_default(),
                "size_bytes" => {
                    row.size = text.as_deref().and_then(|t| t.parse().ok()).unwrap_or(0)
                }
                _ => {}
            }
            row.fields.insert(name.clone(), text);
            row.json.insert(name.clone(), json);
        }
    }
    if let Some(bad) = rows
        .iter()
        .find(|r| r.content_id.is_empty() || r.uri.is_empty())
    {
        bail!(
            "a row has no content_id or uri ({:?}); the table does not follow the lakemount contract",
            bad.json
        );
    }
    Ok(rows)
}

fn json_value(col: &dyn Array, i: usize) -> Json {
    if col.is_null(i) {
        return Json::Null;
    }
    let any = col.as_any();
    if let Some(a) = any.downcast_ref::<StringArray>() {
        Json::from(a.value(i))
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
    files: HashSet<String>,
    dirs: HashSet<String>,
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

    fn claim(&mut self, path: &str) {
        let mut prefix = path;
        while let Some((head, _)) = prefix.rsplit_once('/') {
            self.dirs.insert(head.to_string());
            prefix = head;
        }
        self.files.insert(path.to_string());
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
        let tags = [
            "".to_string(),
            format!("~{}", &content_id[..12.min(content_id.len())]),
            format!("~{content_id}"),
        ];
        for tag in &tags {
            let name = format!("{prefix}{stem}{tag}{ext}");
            let side_base = if ext == ".npy" || ext == ".json" {
                name.clone()
            } else {
                format!("{prefix}{stem}{tag}")
            };
            let npy_path = npy.then(|| format!("{side_base}.npy"));
            let json_path = json.then(|| format!("{side_base}.json"));
            let all_free = self.free(&name)
                && npy_path.as_deref().is_none_or(|p| self.free(p))
                && json_path.as_deref().is_none_or(|p| self.free(p));
            if all_free {
                self.claim(&name);
                for p in npy_path.iter().chain(json_path.iter()) {
                    self.claim(p);
                }
                return (name, npy_path, json_path);
            }
        }
        unreachable!("a name with the full content id is unique among distinct content ids")
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
