//! Similarity views and vector indexes.
//!
//! Semantics: the `k` rows nearest to the query among the rows that pass the
//! spec's filter at its pinned snapshot (filter first, then nearest), ordered
//! by (distance, content id) so ties break the same way everywhere. Without
//! a vector index the search is exact. With one, Lance's IVF-PQ search runs
//! restricted to the allowed row ids (a prefilter), so no row outside the
//! snapshot or the filter can appear; its candidates are then re-scored with
//! exact distances before ranking.
//!
//! Lance rows are append-only and have stable row ids, so an index built at
//! a later Lance version covers the rows of every earlier version: a view may
//! search with the newest index while reading rows at its own version.
//! `lakemount pin` records which index version (or none, meaning exact) a
//! spec used, so a pinned similarity spec always gives the same answer.

use std::collections::HashMap;
use std::sync::Arc;

use crate::error::{Context, Result, bail, err};
use arrow_array::{Array, Float32Array, UInt64Array};
use futures::TryStreamExt;
use lance::Dataset;
use lance::dataset::scanner::{RowAddrMask, RowAddrTreeMap};
use lance::index::DatasetIndexExt;
use lance::index::vector::VectorIndexParams;
use lance_index::IndexType;
use lance_linalg::distance::MetricType;
use sha2::{Digest, Sha256};

use crate::encode::Encoder;
use crate::spec::Metric;
use crate::vectors::EMBEDDING_COLUMN;

/// Name of the vector index `lakemount index` builds.
pub const VECTOR_INDEX: &str = "embedding_ivf_pq";
/// Name of the scalar index on `content_id`.
pub const CONTENT_ID_INDEX: &str = "content_id_btree";
/// Partitions probed by default: enough for recall@k >= 0.95 with the
/// default partition count (see scripts/bench_similar.py).
pub const DEFAULT_NPROBES: usize = 32;
/// Index candidates re-ranked exactly, as a multiple of k.
pub const DEFAULT_REFINE: u32 = 8;
/// PQ training needs at least 256 rows (one per centroid of an 8-bit codebook).
pub const MIN_INDEX_ROWS: usize = 256;

/// Distance between `q` and `v`; smaller is closer for every metric.
pub fn distance(metric: Metric, q: &[f32], v: &[f32]) -> f32 {
    match metric {
        Metric::L2 => q.iter().zip(v).map(|(a, b)| (a - b) * (a - b)).sum(),
        Metric::Dot => -q.iter().zip(v).map(|(a, b)| a * b).sum::<f32>(),
        Metric::Cosine => {
            let (mut dot, mut nq, mut nv) = (0f32, 0f32, 0f32);
            for (a, b) in q.iter().zip(v) {
                dot += a * b;
                nq += a * a;
                nv += b * b;
            }
            if nq == 0.0 || nv == 0.0 {
                1.0
            } else {
                1.0 - dot / (nq.sqrt() * nv.sqrt())
            }
        }
    }
}

/// SHA-256 of a vector's little-endian f32 bytes: what a pin records.
pub fn query_digest(v: &[f32]) -> String {
    let mut h = Sha256::new();
    for x in v {
        h.update(x.to_le_bytes());
    }
    hex::encode(h.finalize())
}

fn lance_metric(m: Metric) -> MetricType {
    match m {
        Metric::Cosine => MetricType::Cosine,
        Metric::L2 => MetricType::L2,
        Metric::Dot => MetricType::Dot,
    }
}

/// Embeddings of `rows` (stable row ids), in order, fetched in chunks.
pub async fn embeddings(ds: &Dataset, rows: &[u64]) -> Result<Vec<Vec<f32>>> {
    let mut out = Vec::with_capacity(rows.len());
    for chunk in rows.chunks(8192) {
        out.extend(crate::vectors::take_embeddings(ds, chunk).await?);
    }
    Ok(out)
}

/// Exact distances from `query` to each of `rows`.
pub async fn exact(ds: &Dataset, rows: &[u64], query: &[f32], metric: Metric) -> Result<Vec<f32>> {
    Ok(embeddings(ds, rows)
        .await?
        .iter()
        .map(|v| distance(metric, query, v))
        .collect())
}

/// The Lance version and metric of the newest vector index on the
/// embedding column of `ds`, if any.
pub async fn vector_index(ds: &Dataset) -> Result<Option<(u64, Metric)>> {
    let field_id = ds
        .schema()
        .field(EMBEDDING_COLUMN)
        .map(|f| f.id)
        .context("Lance dataset has no embedding column")?;
    let indices = ds.load_indices().await?;
    let Some(idx) = indices
        .iter()
        .filter(|i| i.fields == [field_id] && i.name == VECTOR_INDEX)
        .max_by_key(|i| i.dataset_version)
    else {
        return Ok(None);
    };
    let metric = ds
        .index_statistics(&idx.name)
        .await
        .ok()
        .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
        .and_then(|v| {
            let m = v["indices"][0]["metric_type"]
                .as_str()
                .or(v["metric_type"].as_str())?
                .to_ascii_lowercase();
            Some(match m.as_str() {
                "l2" | "euclidean" => Metric::L2,
                "dot" => Metric::Dot,
                _ => Metric::Cosine,
            })
        })
        .unwrap_or(Metric::Cosine);
    Ok(Some((ds.version().version, metric)))
}

/// Runs a nearest-neighbour scan and returns the row ids it found.
async fn row_ids_of(scan: &lance::dataset::scanner::Scanner) -> Result<Vec<u64>> {
    let batches: Vec<_> = scan.try_into_stream().await?.try_collect().await?;
    let mut out = Vec::new();
    for b in batches {
        let ids = b
            .column_by_name("_rowid")
            .and_then(|c| c.as_any().downcast_ref::<UInt64Array>())
            .context("vector search returned no _rowid")?;
        out.extend(ids.iter().flatten());
    }
    Ok(out)
}

/// How many neighbours, by which distance, and how hard an index searches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SearchParams {
    /// Neighbours wanted.
    pub k: usize,
    /// Distance.
    pub metric: Metric,
    /// IVF partitions probed.
    pub nprobes: usize,
    /// Index candidates re-ranked exactly, as a multiple of k.
    pub refine: u32,
}

/// Candidate sets at most this large are scored by fetching every
/// embedding; larger ones use Lance's brute-force kernel first.
pub const TAKE_ALL_LIMIT: usize = 4096;
/// Extra exact candidates fetched past k so ties at the boundary still
/// break by content id.
const TIE_MARGIN: usize = 16;

/// The `k` nearest among `allowed` row ids by Lance's search on `ds`:
/// through its vector index with `index = Some((nprobes, refine))`
/// (approximate), or by its flat kernel with `None` (exact). Returns row ids.
async fn nearest(
    ds: &Dataset,
    allowed: &[u64],
    query: &[f32],
    k: usize,
    metric: Metric,
    index: Option<(usize, u32)>,
) -> Result<Vec<u64>> {
    let mut scan = ds.scan();
    let q = Float32Array::from(query.to_vec());
    scan.nearest(EMBEDDING_COLUMN, &q, k)?
        .distance_metric(lance_metric(metric))
        .prefilter(true)
        .with_row_id_prefilter(RowAddrMask::from_allowed(RowAddrTreeMap::from_iter(
            allowed.iter().copied(),
        )))
        .project(&["content_id"])?
        .with_row_id();
    match index {
        Some((nprobes, refine)) => scan.nprobes(nprobes).refine(refine),
        None => scan.use_index(false),
    };
    row_ids_of(&scan).await
}

/// Ranks candidates: `(candidate index, distance)` for the `k` nearest, ordered
/// by distance then content id. `candidates` are (content id, row id).
pub async fn rank(
    rows_ds: &Dataset,
    index_ds: Option<&Dataset>,
    candidates: &[(String, u64)],
    query: &[f32],
    p: SearchParams,
) -> Result<Vec<(usize, f32)>> {
    let pos: HashMap<u64, usize> = candidates
        .iter()
        .enumerate()
        .map(|(i, (_, r))| (*r, i))
        .collect();
    let allowed = || candidates.iter().map(|(_, r)| *r).collect::<Vec<u64>>();
    let searched = match index_ds {
        Some(ids) if candidates.len() > p.k => {
            let index = Some((p.nprobes, p.refine));
            Some(nearest(ids, &allowed(), query, p.k, p.metric, index).await?)
        }
        None if candidates.len() > TAKE_ALL_LIMIT.max(p.k + TIE_MARGIN) => {
            Some(nearest(rows_ds, &allowed(), query, p.k + TIE_MARGIN, p.metric, None).await?)
        }
        _ => None,
    };
    let chosen: Vec<usize> = match searched {
        Some(rows) => rows
            .into_iter()
            .filter_map(|r| pos.get(&r).copied())
            .collect(),
        None => (0..candidates.len()).collect(),
    };
    let rows: Vec<u64> = chosen.iter().map(|&i| candidates[i].1).collect();
    let dists = exact(rows_ds, &rows, query, p.metric).await?;
    let mut scored: Vec<(usize, f32)> = chosen.into_iter().zip(dists).collect();
    scored.sort_by(|a, b| {
        a.1.total_cmp(&b.1)
            .then_with(|| candidates[a.0].0.cmp(&candidates[b.0].0))
    });
    scored.dedup_by_key(|s| s.0);
    scored.truncate(p.k);
    Ok(scored)
}

/// Index parameters derived from the row count and dimension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexParams {
    /// IVF partitions.
    pub partitions: usize,
    /// PQ sub-vectors (must divide the dimension).
    pub sub_vectors: usize,
    /// Metric the index is trained for.
    pub metric: Metric,
}

impl IndexParams {
    /// `sqrt(rows)` partitions (at least 1, at most 4096) and sub-vectors of
    /// 8 dimensions where the dimension allows, else the largest divisor of
    /// the dimension that keeps at least 4 dimensions per sub-vector.
    pub fn derive(rows: usize, dim: usize, metric: Metric) -> Self {
        let partitions = ((rows as f64).sqrt().round() as usize).clamp(1, 4096);
        let target = (dim / 8).max(1);
        let sub_vectors = (1..=target)
            .rev()
            .find(|s| dim.is_multiple_of(*s) && dim / s >= 4)
            .unwrap_or(1);
        Self {
            partitions,
            sub_vectors,
            metric,
        }
    }
}

/// Builds (or replaces) the IVF-PQ index on the embedding column and a
/// B-tree on `content_id`. Returns the new Lance version.
pub async fn build_index(
    uri: &str,
    storage: &crate::storage::Storage,
    params: IndexParams,
    scalar: bool,
) -> Result<u64> {
    let mut ds = crate::vectors::open_dataset(uri, storage)
        .await
        .with_context(|| format!("cannot open Lance dataset {uri}"))?;
    let rows = ds.count_rows(None).await?;
    if rows < MIN_INDEX_ROWS {
        bail!(
            "the Lance dataset has {rows} rows; an IVF-PQ index needs at least {MIN_INDEX_ROWS} (exact search is fast at this size)"
        );
    }
    let dim = crate::vectors::dim_of(&ds)?;
    if !dim.is_multiple_of(params.sub_vectors) {
        bail!(
            "--sub-vectors {} does not divide the dimension {dim}",
            params.sub_vectors
        );
    }
    let vp = VectorIndexParams::ivf_pq(
        params.partitions,
        8,
        params.sub_vectors,
        lance_metric(params.metric),
        50,
    );
    ds.create_index(
        &[EMBEDDING_COLUMN],
        IndexType::Vector,
        Some(VECTOR_INDEX.into()),
        &vp,
        true,
    )
    .await
    .map_err(|e| err!("building the vector index failed: {e}"))?;
    if scalar {
        let sp = lance_index::scalar::ScalarIndexParams::default();
        ds.create_index(
            &["content_id"],
            IndexType::BTree,
            Some(CONTENT_ID_INDEX.into()),
            &sp,
            true,
        )
        .await
        .map_err(|e| err!("building the content_id index failed: {e}"))?;
    }
    Ok(ds.version().version)
}

/// Opens the newest version of the dataset at `uri` if it has a vector index.
pub async fn latest_index(
    uri: &str,
    storage: &crate::storage::Storage,
) -> Result<Option<(Arc<Dataset>, Metric)>> {
    let ds = crate::vectors::open_dataset(uri, storage).await?;
    Ok(vector_index(&ds).await?.map(|(_, m)| (Arc::new(ds), m)))
}

/// Refuses a query `encoder` when the rows (their `embedding_model`
/// values, `models`) were embedded by another model.
fn check_model(encoder: &dyn Encoder, models: &[String]) -> Result<()> {
    if let Some(other) = models.iter().find(|m| m.as_str() != encoder.model_id()) {
        bail!(
            "the rows were embedded by `{other}`, but this mount's encoder is `{}`; pass the --encoder the rows were embedded with, or give `to: {{vector: query.npy}}` computed with `{other}`",
            encoder.model_id()
        );
    }
    Ok(())
}

/// A media-file query embedded by `encoder`, with the model check.
pub fn embed_file(
    encoder: &dyn Encoder,
    models: &[String],
    bytes: &[u8],
    ext: Option<&str>,
) -> Result<Vec<f32>> {
    check_model(encoder, models)?;
    let media = crate::encode::detect_media_type(bytes, ext);
    encoder.encode(bytes, media)
}

/// A text query embedded by `encoder`, with the model check.
pub fn embed_text(encoder: &dyn Encoder, models: &[String], text: &str) -> Result<Vec<f32>> {
    check_model(encoder, models)?;
    encoder.encode_text(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distances() {
        let a = [1.0, 0.0];
        let b = [0.0, 2.0];
        assert_eq!(distance(Metric::L2, &a, &b), 5.0);
        assert_eq!(distance(Metric::Dot, &a, &b), 0.0);
        assert!((distance(Metric::Cosine, &a, &b) - 1.0).abs() < 1e-6);
        assert!(distance(Metric::Cosine, &a, &a).abs() < 1e-6);
    }

    #[test]
    fn derived_params() {
        let p = IndexParams::derive(200_000, 512, Metric::Cosine);
        assert_eq!((p.partitions, p.sub_vectors), (447, 64));
        assert_eq!(IndexParams::derive(300, 256, Metric::L2).sub_vectors, 32);
        assert_eq!(IndexParams::derive(300, 10, Metric::L2).sub_vectors, 1);
    }
}
