//! A similarity view's rows: the `k` nearest to the spec's query among the
//! rows that passed the filter (filter first, then nearest), in rank order.
//! The search itself is [`crate::similar`]; this step turns the spec's
//! query into a vector, picks the index a pinned spec recorded (or the
//! newest one trained for the metric), and returns the ranked rows.

use std::sync::Arc;

use crate::error::{Context, Result, bail, err};
use lance::Dataset;

use super::scan::Rows;
use super::{LanceAt, SearchInfo};
use crate::content_id::ContentId;
use crate::encode::Encoder;
use crate::similar;
use crate::spec::{Query, Similar, Spec};

/// The ranked rows of a similarity view.
pub struct Ranked {
    /// Row numbers (into the scan) in rank order.
    pub rows: Vec<u32>,
    /// (rank, distance) of each, in the same order.
    pub ranks: Vec<(u32, f32)>,
    /// What the search used.
    pub search: SearchInfo,
}

/// Ranks `candidates` (scan rows in content-id order) against the query.
pub async fn nearest(
    spec: &Spec,
    sim: &Similar,
    lance: &LanceAt,
    lance_rows: &foldhash::HashMap<ContentId, u64>,
    rows: &Rows,
    candidates: &[u32],
    r: &super::Resolver<'_>,
) -> Result<Ranked> {
    let query = query_vector(spec, sim, lance, lance_rows, rows, candidates, r.encoder).await?;
    if query.len() != lance.dim {
        return Err(spec.error(
            "similar.to",
            format!(
                "the query has {} dimensions, the table's embeddings have {}",
                query.len(),
                lance.dim
            ),
        ));
    }
    let digest = similar::query_digest(&query);
    if let Some(pinned) = spec.pinned.as_ref().and_then(|p| p.query_sha256.as_ref())
        && pinned != &digest
    {
        return Err(spec.error(
            "similar.to",
            format!(
                "the query vector changed since the spec was pinned (pinned {pinned}, now {digest})"
            ),
        ));
    }
    let index = choose_index(spec, sim, lance, r.storage).await?;
    let mut ids: Vec<(String, u64)> = Vec::new();
    let mut id_rows: Vec<u32> = Vec::new();
    for &r in candidates {
        let id = rows.ids[r as usize];
        if let Some(&lance_row) = lance_rows.get(&id) {
            ids.push((id.hex(), lance_row));
            id_rows.push(r);
        }
    }
    let ranked = similar::rank(
        &lance.dataset,
        index.as_ref().map(|(ds, _)| ds.as_ref()),
        &ids,
        &query,
        similar::SearchParams {
            k: sim.k,
            metric: sim.metric,
            nprobes: sim.nprobes.unwrap_or(similar::DEFAULT_NPROBES),
            refine: sim.refine.unwrap_or(similar::DEFAULT_REFINE),
        },
    )
    .await?;
    let (rows, ranks) = ranked
        .into_iter()
        .enumerate()
        .map(|(rank, (i, dist))| (id_rows[i], (rank as u32, dist)))
        .unzip();
    Ok(Ranked {
        rows,
        ranks,
        search: SearchInfo {
            query_sha256: Some(digest),
            index_version: index.map(|(_, v)| v),
        },
    })
}

/// The query as a vector: a sample's embedding, an `.npy` file, or a media
/// file embedded by the encoder the rows record.
async fn query_vector(
    spec: &Spec,
    sim: &Similar,
    lance: &LanceAt,
    lance_rows: &foldhash::HashMap<ContentId, u64>,
    rows: &Rows,
    candidates: &[u32],
    encoder: &dyn Encoder,
) -> Result<Vec<f32>> {
    // The models the candidate rows were embedded by, for file and text queries.
    let models = || {
        let mut models: Vec<String> = candidates
            .iter()
            .filter_map(|&r| rows.text("embedding_model", r as usize))
            .collect();
        models.sort();
        models.dedup();
        models
    };
    Ok(match &sim.to {
        Query::ContentId(id) => {
            let row = ContentId::parse(id)
                .ok()
                .and_then(|id| lance_rows.get(&id))
                .ok_or_else(|| {
                    spec.error(
                        "similar.to.content_id",
                        format!(
                            "no sample with content id {id} in the Lance dataset at version {}",
                            lance.version
                        ),
                    )
                })?;
            crate::vectors::take_embeddings(&lance.dataset, &[*row])
                .await?
                .pop()
                .context("Lance returned no row")?
        }
        Query::Vector(path) => {
            let key = spec.at("similar.to.vector");
            let bytes = crate::files::read_regular(path, crate::files::limits::QUERY_VECTOR)
                .with_context(|| format!("{key}: cannot read {}", path.display()))?;
            let m = crate::npy::read_matrix(&bytes)
                .with_context(|| format!("{key}: {}", path.display()))?;
            if m.rows != 1 {
                bail!(
                    "{key}: {} holds {} vectors, expected one",
                    path.display(),
                    m.rows
                );
            }
            m.data
        }
        Query::File(path) => {
            let key = spec.at("similar.to.file");
            let bytes = crate::files::read_regular(path, crate::files::limits::QUERY_FILE)
                .with_context(|| format!("{key}: cannot read {}", path.display()))?;
            let ext = path.extension().and_then(|e| e.to_str());
            similar::embed_file(encoder, &models(), &bytes, ext)
                .map_err(|e| err!("{key}: {}: {e:#}", path.display()))?
        }
        Query::Text(text) => similar::embed_text(encoder, &models(), text)
            .map_err(|e| spec.error("similar.to.text", format!("{e:#}")))?,
    })
}

/// Which index to search: the pinned one, none when pinned without one,
/// else the newest one if it was trained for this metric.
async fn choose_index(
    spec: &Spec,
    sim: &Similar,
    lance: &LanceAt,
    storage: &crate::storage::Storage,
) -> Result<Option<(Arc<Dataset>, u64)>> {
    Ok(match &spec.pinned {
        Some(p) => match p.index_version {
            Some(v) => {
                let key = spec.at("pinned.index_version");
                let ds = lance
                    .dataset
                    .checkout_version(v)
                    .await
                    .with_context(|| format!("{key}: Lance has no version {v}"))?;
                if similar::vector_index(&ds).await?.is_none() {
                    bail!("{key}: Lance version {v} has no vector index");
                }
                Some((Arc::new(ds), v))
            }
            None => None,
        },
        None => match similar::latest_index(&lance.uri, storage).await? {
            Some((ds, metric)) if metric == sim.metric => {
                let v = ds.version().version;
                Some((ds, v))
            }
            _ => None,
        },
    })
}
