//! The bytes of a view's generated files: `.json` sidecars, `_index.jsonl`
//! lines and `_receipt.json`. None of them is kept: each is rendered from
//! the view's columns when read. Resolution needs only their sizes, which
//! [`Columns::metadata_len`] computes without rendering (checked against
//! the rendering by a property test), and the listing's line offsets.
//!
//! The JSON is written byte for byte as `serde_json` writes a map (keys in
//! sorted order, its escaping, `ryu` floats), straight from Arrow arrays.

use arrow_array::types::Int32Type;
use arrow_array::{
    Array, ArrayRef, BooleanArray, DictionaryArray, Int32Array, Int64Array, StringArray,
    TimestampMicrosecondArray,
};
use serde::Serialize;
use serde_json::Value as Json;
use sha2::{Digest, Sha256};

use super::Entries;
use super::scan::{INDEX_COLUMNS, json_value};

/// Where a `.json` sidecar key's value comes from.
#[derive(Debug, Clone, Copy)]
enum MetaField {
    Column(usize),
    ContentId,
    Uri,
    Rank,
    Distance,
    Pos,
    Shard,
    Cluster,
}

/// The columns a view keeps, row `i` = sample `i`, and how its JSON files
/// use them.
#[derive(Debug, Default)]
pub struct Columns {
    /// Column values, without `content_id` and `uri`.
    cols: Vec<(String, ArrayRef)>,
    /// Where the [`INDEX_COLUMNS`] are in `cols`.
    index_cols: [Option<usize>; 4],
    /// The keys of a `.json` sidecar, sorted, and where their values are.
    meta_fields: Vec<(String, MetaField)>,
}

impl Columns {
    /// `cols` as a view keeps them; `ranked` adds rank and distance keys,
    /// `extra` pos, shard and cluster keys where it has them.
    pub fn new(cols: Vec<(String, ArrayRef)>, ranked: bool, extra: &super::arrange::Extra) -> Self {
        let index_cols = INDEX_COLUMNS.map(|c| cols.iter().position(|(n, _)| n == c));
        let mut fields: std::collections::BTreeMap<String, MetaField> = cols
            .iter()
            .enumerate()
            .map(|(c, (name, _))| (name.clone(), MetaField::Column(c)))
            .collect();
        fields.insert("content_id".into(), MetaField::ContentId);
        fields.insert("uri".into(), MetaField::Uri);
        if ranked {
            // Rank and distance win over columns of the same name.
            fields.insert("rank".into(), MetaField::Rank);
            fields.insert("distance".into(), MetaField::Distance);
        }
        for (key, field, present) in [
            ("pos", MetaField::Pos, !extra.pos.is_empty()),
            ("shard", MetaField::Shard, !extra.shards.is_empty()),
            ("cluster", MetaField::Cluster, !extra.clusters.is_empty()),
        ] {
            if present {
                fields.insert(key.into(), field);
            }
        }
        Self {
            cols,
            index_cols,
            meta_fields: fields.into_iter().collect(),
        }
    }

    /// The columns, by name.
    pub fn arrays(&self) -> &[(String, ArrayRef)] {
        &self.cols
    }

    /// Writes column `col` of row `i` as JSON.
    fn write_value(&self, col: Option<usize>, i: usize, out: &mut Vec<u8>) {
        let Some(col) = col.map(|c| self.cols[c].1.as_ref()) else {
            out.extend_from_slice(b"null");
            return;
        };
        match str_value(col, i) {
            Some(t) => serde_json::to_writer(&mut *out, t).ok(),
            None => serde_json::to_writer(&mut *out, &json_value(col, i)).ok(),
        };
    }

    /// Length of what [`Columns::write_value`] writes, computed without
    /// writing for the common types.
    fn value_len(&self, col: usize, i: usize) -> usize {
        let col = self.cols[col].1.as_ref();
        if col.is_null(i) {
            return 4;
        }
        if let Some(t) = str_value(col, i) {
            return json_str_len(t.as_bytes());
        }
        let any = col.as_any();
        if let Some(a) = any.downcast_ref::<Int64Array>() {
            itoa::Buffer::new().format(a.value(i)).len()
        } else if let Some(a) = any.downcast_ref::<Int32Array>() {
            itoa::Buffer::new().format(a.value(i)).len()
        } else if let Some(a) = any.downcast_ref::<BooleanArray>() {
            if a.value(i) { 4 } else { 5 }
        } else if let Some(a) = any.downcast_ref::<TimestampMicrosecondArray>() {
            // `YYYY-MM-DDTHH:MM:SS.ffffffZ` in quotes, for four-digit years.
            match chrono::DateTime::from_timestamp_micros(a.value(i)) {
                Some(t) if (0..=9999).contains(&chrono::Datelike::year(&t)) => 29,
                _ => json_value(col, i).to_string().len(),
            }
        } else {
            json_value(col, i).to_string().len()
        }
    }

    /// Number of columns kept.
    pub fn len(&self) -> usize {
        self.cols.len()
    }

    /// Whether no column is kept.
    pub fn is_empty(&self) -> bool {
        self.cols.is_empty()
    }
}

impl Entries {
    /// The `.json` sidecar of sample `i`: every column, pretty-printed with
    /// keys in sorted order, as `serde_json` prints a map.
    pub(super) fn metadata_json(&self, i: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(512);
        out.push(b'{');
        for (k, (key, field)) in self.columns.meta_fields.iter().enumerate() {
            out.extend_from_slice(if k == 0 { b"\n  " } else { b",\n  " });
            serde_json::to_writer(&mut out, key).ok();
            out.extend_from_slice(b": ");
            match field {
                MetaField::Column(c) => self.columns.write_value(Some(*c), i, &mut out),
                MetaField::ContentId => {
                    out.push(b'"');
                    out.extend_from_slice(&self.samples[i].content_id.hex_bytes());
                    out.push(b'"');
                }
                MetaField::Uri => self.write_uri(i, &mut out),
                MetaField::Rank => {
                    serde_json::to_writer(&mut out, &self.rank_json(i).0).ok();
                }
                MetaField::Distance => {
                    serde_json::to_writer(&mut out, &self.rank_json(i).1).ok();
                }
                MetaField::Pos | MetaField::Shard | MetaField::Cluster => {
                    out.extend_from_slice(
                        itoa::Buffer::new()
                            .format(self.extra_value(*field, i))
                            .as_bytes(),
                    );
                }
            }
        }
        if !self.columns.meta_fields.is_empty() {
            out.push(b'\n');
        }
        out.push(b'}');
        out
    }

    /// `metadata_json(i).len()`, computed from value lengths.
    pub(super) fn metadata_len(&self, i: usize) -> usize {
        let fields = &self.columns.meta_fields;
        // `{`, `}`, and the newline before `}` when there are keys.
        let mut len = 2 + usize::from(!fields.is_empty());
        for (k, (key, field)) in fields.iter().enumerate() {
            len += if k == 0 { 3 } else { 4 } + json_str_len(key.as_bytes()) + 2;
            len += match field {
                MetaField::Column(c) => self.columns.value_len(*c, i),
                MetaField::ContentId => 66,
                MetaField::Uri => {
                    let s = &self.samples[i];
                    let hex = s.content_id.hex_bytes();
                    let mut scratch = [0u8; 64];
                    let pieces = self.uris.pieces(s.uri, &hex, &mut scratch);
                    2 + pieces.iter().map(|p| json_str_len(p) - 2).sum::<usize>()
                }
                MetaField::Rank => self.rank_json(i).0.to_string().len(),
                MetaField::Distance => self.rank_json(i).1.to_string().len(),
                MetaField::Pos | MetaField::Shard | MetaField::Cluster => itoa::Buffer::new()
                    .format(self.extra_value(*field, i))
                    .len(),
            };
        }
        len
    }

    fn extra_value(&self, field: MetaField, i: usize) -> u32 {
        let list = match field {
            MetaField::Pos => &self.extra.pos,
            MetaField::Shard => &self.extra.shards,
            _ => &self.extra.clusters,
        };
        list.get(i).copied().unwrap_or(0)
    }

    fn rank_json(&self, i: usize) -> (Json, Json) {
        match self.ranks.get(i) {
            Some(&(rank, dist)) => (
                Json::from(rank),
                serde_json::Number::from_f64(f64::from(dist)).map_or(Json::Null, Json::Number),
            ),
            None => (Json::Null, Json::Null),
        }
    }

    fn write_uri(&self, i: usize, out: &mut Vec<u8>) {
        let s = &self.samples[i];
        let hex = s.content_id.hex_bytes();
        let mut scratch = [0u8; 64];
        push_json_str(out, &self.uris.pieces(s.uri, &hex, &mut scratch));
    }

    /// Appends sample `i`'s `_index.jsonl` line to `out`. Keys in sorted
    /// order, as a JSON object map would write them.
    pub(super) fn index_line(&self, i: usize, out: &mut Vec<u8>) {
        fn key(out: &mut Vec<u8>, key: &str) {
            out.extend_from_slice(b",\"");
            out.extend_from_slice(key.as_bytes());
            out.extend_from_slice(b"\":");
        }
        fn number(out: &mut Vec<u8>, name: &str, list: &[u32], i: usize) {
            if let Some(v) = list.get(i) {
                key(out, name);
                out.extend_from_slice(itoa::Buffer::new().format(*v).as_bytes());
            }
        }
        let s = &self.samples[i];
        let ranked = (!self.ranks.is_empty()).then(|| self.rank_json(i));
        let cols = &self.columns;
        let x = &self.extra;
        out.push(b'{');
        if let Some(c) = x.clusters.get(i) {
            out.extend_from_slice(b"\"cluster\":");
            out.extend_from_slice(itoa::Buffer::new().format(*c).as_bytes());
            out.push(b',');
        }
        out.extend_from_slice(b"\"content_id\":\"");
        out.extend_from_slice(&s.content_id.hex_bytes());
        out.push(b'"');
        if let Some((_, dist)) = &ranked {
            key(out, "distance");
            serde_json::to_writer(&mut *out, dist).ok();
        }
        key(out, "embedding");
        if s.npy {
            let p = self.file_path(super::Content::Embedding(i as u32));
            serde_json::to_writer(&mut *out, &p).ok();
        } else {
            out.extend_from_slice(b"null");
        }
        key(out, "label");
        cols.write_value(cols.index_cols[0], i, out);
        key(out, "media_type");
        cols.write_value(cols.index_cols[1], i, out);
        key(out, "path");
        let (dir, _) = self.paths.split(s.path);
        let name = self.file_name(super::Content::Sample(i as u32));
        let [l, a, b, c, d] = name.parts();
        push_json_str(out, &[dir.as_bytes(), l, a, b, c, d]);
        number(out, "pos", &x.pos, i);
        if let Some((rank, _)) = &ranked {
            key(out, "rank");
            serde_json::to_writer(&mut *out, rank).ok();
        }
        number(out, "shard", &x.shards, i);
        key(out, "size_bytes");
        cols.write_value(cols.index_cols[2], i, out);
        if let Some(&s) = x.sources.get(i) {
            key(out, "source");
            let name = self.source_names.get(s as usize).map_or("", String::as_str);
            push_json_str(out, &[name.as_bytes()]);
        }
        key(out, "split");
        cols.write_value(cols.index_cols[3], i, out);
        key(out, "uri");
        self.write_uri(i, out);
        out.extend_from_slice(b"}\n");
    }

    /// Length of every `_index.jsonl` line, in listing order.
    pub(super) fn index_line_lens(&self, order: Option<&[u32]>) -> Vec<u32> {
        crate::par::chunks(self.samples.len(), |range| {
            let mut line = Vec::with_capacity(512);
            range
                .map(|n| {
                    line.clear();
                    self.index_line(order.map_or(n, |o| o[n] as usize), &mut line);
                    line.len() as u32
                })
                .collect()
        })
    }

    /// SHA-256 of the whole `_index.jsonl`.
    pub(super) fn listing_digest(&self, order: Option<&[u32]>) -> String {
        let mut digest = Sha256::new();
        let mut buf = Vec::with_capacity(1 << 20);
        for line in 0..self.samples.len() {
            self.index_line(order.map_or(line, |o| o[line] as usize), &mut buf);
            if buf.len() >= 1 << 20 {
                digest.update(&buf);
                buf.clear();
            }
        }
        digest.update(&buf);
        hex::encode(digest.finalize())
    }
}

/// A string column's value (plain or dictionary-encoded), if it is one.
fn str_value(col: &dyn Array, i: usize) -> Option<&str> {
    if col.is_null(i) {
        return None;
    }
    if let Some(a) = col.as_any().downcast_ref::<StringArray>() {
        return Some(a.value(i));
    }
    let d = col.as_any().downcast_ref::<DictionaryArray<Int32Type>>()?;
    d.values()
        .as_any()
        .downcast_ref::<StringArray>()
        .map(|v| v.value(d.keys().value(i) as usize))
}

/// Length of `bytes` as a JSON string, quotes included, escaped as `serde_json` escapes.
fn json_str_len(bytes: &[u8]) -> usize {
    2 + bytes
        .iter()
        .map(|&b| match b {
            b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 2,
            0..=0x1f => 6,
            _ => 1,
        })
        .sum::<usize>()
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

/// Which snapshot a spec asked for, as the receipt records it.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Requested {
    /// `latest`.
    Latest(&'static str),
    /// A pinned id.
    Id(i64),
}

/// A similarity view's query, as the receipt records it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum QueryRecord {
    /// By content id.
    ContentId(String),
    /// An `.npy` file.
    Vector(String),
    /// A media file.
    File(String),
    /// A text.
    Text(String),
}

/// The receipt's `similar` block.
#[derive(Debug, Clone, Serialize)]
pub struct SimilarRecord {
    /// The query.
    pub query: QueryRecord,
    /// Digest of the query vector.
    pub query_sha256: Option<String>,
    /// The model that embedded a file or text query (name and weights digest).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub query_model: Option<String>,
    /// Neighbours asked for.
    pub k: usize,
    /// Distance.
    pub metric: &'static str,
    /// `exact` or which index.
    pub search: String,
    /// Lance version of the index searched.
    pub index_version: Option<u64>,
    /// Partitions probed (index searches).
    pub nprobes: Option<usize>,
    /// Refine factor (index searches).
    pub refine: Option<u32>,
}

/// The receipt's `sidecars` block.
#[derive(Debug, Clone, Serialize)]
pub struct SidecarsRecord {
    /// `.npy` sidecars shown.
    pub embedding: bool,
    /// `.json` sidecars shown.
    pub metadata: bool,
}

/// `_receipt.json`: what a spec resolved to. Written with keys in sorted
/// order (through a JSON map), the listing digest added when rendered.
#[derive(Debug, Clone, Serialize)]
pub struct Receipt {
    /// Spec name.
    pub spec: String,
    /// Table.
    pub table: String,
    /// What the spec asked for.
    pub snapshot_requested: Requested,
    /// Snapshot read.
    pub snapshot_id: i64,
    /// Its commit time.
    pub snapshot_committed_ms: i64,
    /// Lance dataset read.
    pub lance_uri: Option<String>,
    /// Its version.
    pub lance_version: Option<u64>,
    /// The spec's filter.
    pub filter: Option<String>,
    /// The spec's limit.
    pub limit: Option<usize>,
    /// The spec's layout.
    pub layout: String,
    /// Sidecars shown.
    pub sidecars: SidecarsRecord,
    /// Similarity search, if any.
    pub similar: Option<SimilarRecord>,
    /// Diverse sampling, if any: `{"diverse": {clusters, per_cluster, seed}}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub select: Option<Json>,
    /// Epoch order, if any: `{"shuffle": seed}` or `{"by": "..."}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub order: Option<Json>,
    /// Shards, if any: world size, pad, samples per rank, and the rank a
    /// mount shows when it shows one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shard: Option<Json>,
    /// Epochs, if any: count, seed, where the job resumes, world size,
    /// pad, and the rank a mount shows when it shows one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epochs: Option<Json>,
    /// Samples in the view.
    pub row_count: usize,
}

impl Receipt {
    /// The receipt as a JSON object (keys sorted), without the listing digest.
    pub fn to_json(&self) -> Json {
        serde_json::to_value(self).unwrap_or(Json::Null)
    }
}

/// `receipt` (a [`Receipt::to_json`] object) with `listing_sha256` set to
/// `digest`, pretty-printed.
pub fn render_receipt(receipt: &Json, digest: &str) -> Vec<u8> {
    let mut value = receipt.clone();
    if let Json::Object(map) = &mut value {
        map.insert("listing_sha256".into(), Json::from(digest));
    }
    let mut out = serde_json::to_vec_pretty(&value).unwrap_or_default();
    out.push(b'\n');
    out
}

/// Size of [`render_receipt`]'s output: the digest is 64 hex digits
/// whatever it is.
pub fn receipt_size(receipt: &Json) -> u64 {
    render_receipt(receipt, &"0".repeat(64)).len() as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::Float64Array;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn string_lengths_match_serde(s in "\\PC*|[\\x00-\\x20\"\\\\é\u{202e}]{0,20}") {
            prop_assert_eq!(json_str_len(s.as_bytes()), serde_json::to_string(&s).unwrap().len());
            let mut out = Vec::new();
            push_json_str(&mut out, &[s.as_bytes()]);
            prop_assert_eq!(out, serde_json::to_vec(&s).unwrap());
        }

        #[test]
        fn value_lengths_match_rendering(
            strs in proptest::collection::vec(proptest::option::of("[a-z\\x00-\\x1f\"é]{0,8}"), 1..8),
            ints in proptest::collection::vec(any::<i64>(), 8),
            floats in proptest::collection::vec(any::<f64>(), 8),
            micros in proptest::collection::vec(any::<i64>(), 8),
        ) {
            let n = strs.len();
            let cols: Vec<(String, ArrayRef)> = vec![
                ("s".into(), std::sync::Arc::new(StringArray::from(strs.clone()))),
                ("i".into(), std::sync::Arc::new(Int64Array::from(ints[..n].to_vec()))),
                ("f".into(), std::sync::Arc::new(Float64Array::from(floats[..n].to_vec()))),
                ("t".into(), std::sync::Arc::new(TimestampMicrosecondArray::from(micros[..n].to_vec()))),
                ("b".into(), std::sync::Arc::new(BooleanArray::from(ints[..n].iter().map(|v| v % 2 == 0).collect::<Vec<_>>()))),
            ];
            let c = Columns::new(cols, false, &Default::default());
            for col in 0..c.len() {
                for i in 0..n {
                    let mut out = Vec::new();
                    c.write_value(Some(col), i, &mut out);
                    prop_assert_eq!(c.value_len(col, i), out.len(), "column {} row {}", col, i);
                }
            }
        }
    }
}
