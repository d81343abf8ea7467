//! Reading what a spec selects: which snapshot, which columns, the filter
//! bound to the snapshot's schema, the rows decoded into content ids, URIs
//! and Arrow columns, and the Lance table at the version the snapshot
//! records.
//!
//! The table is untrusted input (other engines write it): a row whose
//! content id is not a SHA-256 or whose URI is empty stops the resolution
//! with an error naming it, never a silently dropped row.

use std::sync::Arc;

use crate::error::{Context, Result, bail};
use arrow_array::types::Int32Type;
use arrow_array::{
    Array, ArrayRef, BinaryArray, BooleanArray, DictionaryArray, Float32Array, Float64Array,
    Int32Array, Int64Array, LargeBinaryArray, RecordBatch, StringArray, TimestampMicrosecondArray,
    UInt32Array,
};
use arrow_cast::display::ArrayFormatter;
use arrow_schema::DataType;
use futures::TryStreamExt;
use iceberg::spec::{SchemaRef, SnapshotRef};
use iceberg::table::Table;
use serde_json::Value as Json;

use super::compact::{BlobUris, UriRef};
use crate::catalog::CHUNK_DIGESTS_COLUMN;
use crate::content_id::ContentId;
use crate::spec::{SnapshotSel, Spec};

/// The snapshot a spec reads, and the schema its rows were written with.
pub fn snapshot(spec: &Spec, table: &Table) -> Result<(SnapshotRef, SchemaRef)> {
    let meta = table.metadata();
    let snapshot = match spec.snapshot {
        SnapshotSel::Latest => meta.current_snapshot().ok_or_else(|| {
            spec.error("snapshot", format!("table {} has no snapshots yet; ingest first", spec.table))
        })?,
        SnapshotSel::Id(id) => meta.snapshot_by_id(id).ok_or_else(|| {
            spec.error("snapshot", format!("snapshot {id} does not exist in table {} (run `lakemount snapshots` to list them)", spec.table))
        })?,
    };
    let schema = snapshot
        .schema_id()
        .and_then(|id| meta.schema_by_id(id))
        .unwrap_or_else(|| meta.current_schema())
        .clone();
    Ok((snapshot.clone(), schema))
}

/// Checks that every layout field is a column (or a computed field).
/// `mount_sharded`: the mount cuts every view into ranks, so every view
/// is ordered and `{pos}` is valid.
pub fn check_layout(
    spec: &Spec,
    schema: &iceberg::spec::Schema,
    mount_sharded: bool,
) -> Result<()> {
    let ordered = spec.is_ordered(mount_sharded);
    for field in spec.layout.fields() {
        let computed = match field {
            "ext" => true,
            "rank" | "distance" => spec.similar.is_some(),
            "cluster" => spec.diverse.is_some(),
            "pos" => ordered,
            _ => false,
        };
        if !computed && schema.field_by_name(field).is_none() {
            return Err(spec.error("layout", format!("unknown column `{{{field}}}` in {:?} (columns: {}, ext, pos in views with `order` or `shard`, rank and distance in similarity views, cluster in diverse ones)", spec.layout.text(),
                column_names(schema))));
        }
    }
    if let Some(crate::spec::Order::By(keys)) = &spec.order {
        for k in keys {
            if k.column != "content_id" && schema.field_by_name(&k.column).is_none() {
                return Err(spec.error(
                    "order.by",
                    format!(
                        "unknown column {:?} (columns: {})",
                        k.column,
                        column_names(schema)
                    ),
                ));
            }
        }
    }
    Ok(())
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

/// Scans the snapshot: only the columns the view shows (all of them for
/// metadata sidecars, else the contract's core plus what the layout and a
/// query need), with the spec's filter pushed down.
pub async fn rows(
    spec: &Spec,
    table: &Table,
    snapshot_id: i64,
    schema: &iceberg::spec::Schema,
) -> Result<Rows> {
    let mut columns: Option<Vec<String>> = None;
    if !spec.sidecars.metadata {
        let mut wanted: Vec<&str> = vec!["content_id", "uri", "size_bytes", CHUNK_DIGESTS_COLUMN];
        wanted.extend(INDEX_COLUMNS);
        wanted.extend(spec.layout.fields());
        if let Some(crate::spec::Order::By(keys)) = &spec.order {
            wanted.extend(keys.iter().map(|k| k.column.as_str()));
        }
        if spec.similar.is_some() {
            wanted.push("embedding_model");
        }
        let picked: Vec<String> = schema
            .as_struct()
            .fields()
            .iter()
            .map(|f| f.name.clone())
            .filter(|name| wanted.contains(&name.as_str()))
            .collect();
        columns = Some(picked);
    }
    let spec_filter = match &spec.filter {
        Some(filter) => Some(
            filter
                .bind(schema)
                .map_err(|e| spec.error("filter", format!("{e}")))?,
        ),
        None => None,
    };
    // A mixture scans once per source (a row may belong to several).
    let mut predicates = Vec::new();
    if spec.sources.is_empty() {
        predicates.push(spec_filter);
    } else {
        for s in &spec.sources {
            let own = match &s.filter {
                Some(f) => Some(f.bind(schema).map_err(|e| {
                    spec.error("sources.filter", format!("source {:?}: {e}", s.name))
                })?),
                None => None,
            };
            predicates.push(match (spec_filter.clone(), own) {
                (Some(a), Some(b)) => Some(a.and(b)),
                (a, b) => a.or(b),
            });
        }
    }
    // The scans of a mixture's sources run at once.
    let parts = futures::future::try_join_all(predicates.into_iter().map(|pred| {
        let columns = &columns;
        async move {
            let mut scan = table.scan().snapshot_id(snapshot_id);
            scan = match columns {
                Some(c) => scan.select(c.clone()),
                None => scan.select_all(),
            };
            if let Some(p) = pred {
                scan = scan.with_filter(p);
            }
            let part: Vec<RecordBatch> = scan
                .build()?
                .to_arrow()
                .await?
                .try_collect()
                .await
                .with_context(|| {
                    format!(
                        "spec {}: scanning table {} failed",
                        spec.file.display(),
                        spec.table
                    )
                })?;
            Ok::<_, crate::error::Error>(part)
        }
    }))
    .await?;
    let mut batches: Vec<RecordBatch> = Vec::new();
    let mut row_sources: Vec<u16> = Vec::new();
    for (k, part) in parts.into_iter().enumerate() {
        if !spec.sources.is_empty() {
            let n: usize = part.iter().map(RecordBatch::num_rows).sum();
            row_sources.extend(std::iter::repeat_n(k as u16, n));
        }
        batches.extend(part);
    }
    let mut rows = Rows::new(&batches)?;
    rows.sources = row_sources;
    Ok(rows)
}

/// The scanned rows, column by column.
pub struct Rows {
    /// Content id of each row.
    pub ids: Vec<ContentId>,
    /// URI of each row, in `uris`.
    pub uri_refs: Vec<UriRef>,
    /// The URIs.
    pub uris: BlobUris,
    /// Chunk digests of the rows that have them, by row (sorted).
    pub digests: Vec<(u32, Arc<[[u8; 32]]>)>,
    /// The mixture source of each row; empty when the spec has none.
    pub sources: Vec<u16>,
    /// Every other column, in schema order.
    columns: Vec<(String, ArrayRef)>,
}

/// Content ids, URIs and chunk digests of some batches.
#[derive(Default)]
struct Decoded {
    ids: Vec<ContentId>,
    uri_refs: Vec<UriRef>,
    uris: BlobUris,
    digests: Vec<(u32, Arc<[[u8; 32]]>)>,
}

impl Decoded {
    fn batch(&mut self, batch: &RecordBatch) -> Result<()> {
        let contract = "the table does not follow the lakemount contract";
        let ids = crate::catalog::string_column(batch, "content_id").context(contract)?;
        let uris = crate::catalog::string_column(batch, "uri").context(contract)?;
        let digests = batch.column_by_name(CHUNK_DIGESTS_COLUMN);
        for i in 0..batch.num_rows() {
            let text = (!ids.is_null(i)).then(|| ids.value(i));
            let Some(id) = text.and_then(|t| ContentId::parse(t).ok()) else {
                bail!("a row's content_id is {text:?}, not a SHA-256 in hex; {contract}");
            };
            let uri = if uris.is_null(i) { "" } else { uris.value(i) };
            if uri.is_empty() {
                bail!("the row with content_id {id} has no uri; {contract}");
            }
            if let Some(d) = digests.and_then(|c| binary_value(c.as_ref(), i)) {
                if d.is_empty() || d.len() % 32 != 0 {
                    bail!(
                        "the row with content_id {id} has a {CHUNK_DIGESTS_COLUMN} of {} bytes, not a list of SHA-256 digests; {contract}",
                        d.len()
                    );
                }
                let list: Vec<[u8; 32]> = d
                    .chunks_exact(32)
                    .map(|c| c.try_into().unwrap_or([0; 32]))
                    .collect();
                self.digests.push((self.ids.len() as u32, list.into()));
            }
            self.uri_refs.push(self.uris.intern(uri, &id));
            self.ids.push(id);
        }
        Ok(())
    }

    fn append(&mut self, other: Decoded) {
        let base = self.ids.len() as u32;
        for r in other.uri_refs {
            let copied = self.uris.copy(&other.uris, r);
            self.uri_refs.push(copied);
        }
        self.ids.extend(other.ids);
        self.digests
            .extend(other.digests.into_iter().map(|(r, d)| (r + base, d)));
    }
}

fn binary_value(col: &dyn Array, i: usize) -> Option<&[u8]> {
    if col.is_null(i) {
        return None;
    }
    if let Some(a) = col.as_any().downcast_ref::<LargeBinaryArray>() {
        return Some(a.value(i));
    }
    col.as_any()
        .downcast_ref::<BinaryArray>()
        .map(|a| a.value(i))
}

impl Rows {
    fn new(batches: &[RecordBatch]) -> Result<Self> {
        let Some(first) = batches.first() else {
            return Ok(Self {
                ids: Vec::new(),
                uri_refs: Vec::new(),
                uris: BlobUris::default(),
                digests: Vec::new(),
                sources: Vec::new(),
                columns: Vec::new(),
            });
        };
        let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
        let parts = crate::par::ranges_if(rows >= 10_000, batches.len(), |range| {
            let mut d = Decoded::default();
            for b in &batches[range] {
                d.batch(b)?;
            }
            Ok::<_, crate::error::Error>(d)
        });
        let mut decoded = Decoded::default();
        for part in parts {
            decoded.append(part?);
        }
        // The other columns, concatenated.
        let schema = first.schema();
        let keep: Vec<usize> = (0..schema.fields().len())
            .filter(|&c| {
                !matches!(
                    schema.field(c).name().as_str(),
                    "content_id" | "uri" | CHUNK_DIGESTS_COLUMN
                )
            })
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
            uris: decoded.uris,
            digests: decoded.digests,
            sources: Vec::new(),
            columns,
        })
    }

    /// Column `name`, if scanned.
    pub fn column(&self, name: &str) -> Option<&ArrayRef> {
        self.columns.iter().find(|(n, _)| n == name).map(|(_, c)| c)
    }

    /// Row `r`'s value of column `name` as layout text.
    pub fn text(&self, name: &str, r: usize) -> Option<String> {
        self.column(name).and_then(|c| text_value(c.as_ref(), r))
    }

    /// Row numbers in content-id order, one row per content id: the first
    /// in scan order wins.
    pub fn by_content_id(&self) -> Vec<u32> {
        let keys = self
            .ids
            .iter()
            .enumerate()
            .map(|(r, id)| (id.prefix16(), r as u32))
            .collect();
        let mut rows = super::compact::sort_by_prefix16(keys, |a, b| {
            self.ids[a as usize].cmp(&self.ids[b as usize])
        });
        if self.sources.is_empty() {
            rows.dedup_by_key(|r| self.ids[*r as usize]);
        } else {
            // A mixture keeps a sample once per source that has it, sources
            // in order: the rows are in id order already (ties in scan
            // order), so a stable split by source orders them by (source,
            // id), and the first in scan order of each pair wins.
            let n = self.sources.iter().max().map_or(0, |&m| usize::from(m) + 1);
            let mut split: Vec<Vec<u32>> = vec![Vec::new(); n];
            for r in rows {
                split[usize::from(self.sources[r as usize])].push(r);
            }
            rows = split.concat();
            rows.dedup_by_key(|r| (self.sources[*r as usize], self.ids[*r as usize]));
        }
        rows
    }

    /// The columns a view keeps, rows `rows` in that order: those the
    /// listing shows, or all of them when metadata sidecars are wanted.
    /// Strings with few distinct values become dictionaries.
    pub fn compact(&self, rows: &[u32], all: bool) -> Result<Vec<(String, ArrayRef)>> {
        let take = UInt32Array::from(rows.to_vec());
        let mut out = Vec::new();
        for (name, col) in &self.columns {
            if !all && !INDEX_COLUMNS.contains(&name.as_str()) {
                continue;
            }
            let col = arrow_select::take::take(col.as_ref(), &take, None)?;
            out.push((name.clone(), compact_column(col)?));
        }
        Ok(out)
    }
}

/// `col` as a view keeps it: a string column with few distinct values
/// (at most one per four rows) as a dictionary.
pub fn compact_column(col: ArrayRef) -> Result<ArrayRef> {
    if col.data_type() != &DataType::Utf8 {
        return Ok(col);
    }
    let dict_type = DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8));
    let dict = arrow_cast::cast(col.as_ref(), &dict_type)?;
    let distinct = dict
        .as_any()
        .downcast_ref::<DictionaryArray<Int32Type>>()
        .map_or(usize::MAX, |d| d.values().len());
    Ok(if distinct * 4 <= col.len() { dict } else { col })
}

/// Columns every `_index.jsonl` line shows.
pub const INDEX_COLUMNS: [&str; 4] = ["label", "media_type", "size_bytes", "split"];

/// Row `i` of `col` as a JSON value.
pub fn json_value(col: &dyn Array, i: usize) -> Json {
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

/// A value as layout text: strings as they are, null as `None`, anything
/// else as its JSON or Arrow rendering.
pub fn text_value(col: &dyn Array, i: usize) -> Option<String> {
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
