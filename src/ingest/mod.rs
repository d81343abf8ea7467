//! `lakemount ingest`: inputs -> blobs -> embeddings -> Lance -> Iceberg.
//!
//! Each batch commits in a fixed order: blobs first (idempotent, keyed by
//! content), then one Lance append, then one Iceberg append whose snapshot
//! summary records the Lance version. The Iceberg commit is the publish
//! point: until it happens nothing of the batch is visible to any view.
//!
//! If a run dies between the Lance and the Iceberg commit, the Lance rows it
//! wrote are orphans. A re-run sees their content ids in Lance but not in
//! Iceberg and adopts them: it does not append them to Lance again, it only
//! publishes them in Iceberg. Deduplication is against what Iceberg lists,
//! so the same bytes are never published twice.

pub mod input;
pub mod progress;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};

use crate::blobs::content_id;
use crate::catalog::write::SampleRow;
use crate::catalog::{self, PROP_LANCE_URI, PROP_LANCE_VERSION};
use crate::encode::{Encoder, detect_media_type};
use crate::npy;
use crate::vectors::{self, VectorRow};
use crate::warehouse::Warehouse;
use input::{InputItem, Inputs};
use progress::{Progress, ProgressMode};

/// Where the samples come from.
#[derive(Debug, Clone)]
pub enum InputSource {
    /// `DIR/<label>/<file>`.
    Dir(PathBuf),
    /// A CSV or JSONL manifest.
    Manifest(PathBuf),
}

/// Fractions of samples assigned to train, val and test by content hash.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SplitRatios {
    /// Share of `train`.
    pub train: f64,
    /// Share of `val`.
    pub val: f64,
    /// Share of `test`.
    pub test: f64,
}

impl Default for SplitRatios {
    fn default() -> Self {
        Self {
            train: 0.8,
            val: 0.1,
            test: 0.1,
        }
    }
}

impl std::str::FromStr for SplitRatios {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let parts: Vec<f64> = s
            .split(',')
            .map(|p| p.trim().parse::<f64>())
            .collect::<Result<_, _>>()
            .map_err(|_| format!("expected three numbers like 0.8,0.1,0.1, got {s:?}"))?;
        let [train, val, test] = parts[..] else {
            return Err(format!(
                "expected three numbers (train,val,test), got {}",
                parts.len()
            ));
        };
        if parts.iter().any(|p| !(0.0..=1.0).contains(p)) || (train + val + test - 1.0).abs() > 1e-6
        {
            return Err(format!(
                "fractions must be in [0,1] and add up to 1, got {s:?}"
            ));
        }
        Ok(Self { train, val, test })
    }
}

impl SplitRatios {
    /// The split of a content id: the first 8 bytes of the hash, as a
    /// fraction of 2^64, against the cumulative ratios. Stable forever.
    pub fn assign(&self, content_id: &str) -> &'static str {
        let prefix = content_id.get(..16).unwrap_or("0");
        let h = u64::from_str_radix(prefix, 16).unwrap_or(0);
        let x = h as f64 / 2f64.powi(64);
        if x < self.train {
            "train"
        } else if x < self.train + self.val {
            "val"
        } else {
            "test"
        }
    }
}

/// A failure to inject, for testing crash consistency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultPoint {
    /// Fail after the Lance append of the first batch, before its Iceberg commit.
    AfterLanceCommit,
}

/// Everything `ingest` needs besides the warehouse and the encoder.
#[derive(Debug, Clone)]
pub struct IngestConfig {
    /// What to read.
    pub input: InputSource,
    /// Files per commit.
    pub batch_size: usize,
    /// Store bytes in the Lance blob column instead of the blob store.
    pub inline_blobs: bool,
    /// Split ratios for rows without a manifest `split`.
    pub split: SplitRatios,
    /// Precomputed embeddings, one row per manifest row.
    pub embeddings: Option<PathBuf>,
    /// `embedding_model` for precomputed embeddings.
    pub embedding_model: Option<String>,
    /// `source` for rows without a manifest `source`; default the file's path.
    pub source: Option<String>,
    /// How to show progress.
    pub progress: ProgressMode,
    /// Injected failure (tests only).
    pub fault: Option<FaultPoint>,
}

impl IngestConfig {
    /// Defaults for ingesting `input`.
    pub fn new(input: InputSource) -> Self {
        Self {
            input,
            batch_size: 1024,
            inline_blobs: false,
            split: SplitRatios::default(),
            embeddings: None,
            embedding_model: None,
            source: None,
            progress: ProgressMode::Auto,
            fault: None,
        }
    }
}

/// A file that was not ingested, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    /// The file (and manifest line).
    pub what: String,
    /// Why.
    pub reason: String,
}

/// What an ingest did.
#[derive(Debug, Clone, Default)]
pub struct IngestReport {
    /// Samples newly published.
    pub added: usize,
    /// Bytes of newly published samples.
    pub added_bytes: u64,
    /// Files whose bytes were already published (or repeated in this input).
    pub duplicates: usize,
    /// Files refused.
    pub rejected: Vec<Rejection>,
    /// Orphan Lance rows from an interrupted run that this run published.
    pub adopted: usize,
    /// The last Iceberg snapshot this run committed.
    pub snapshot_id: Option<i64>,
    /// The Lance version that snapshot records.
    pub lance_version: Option<u64>,
    /// Wall time.
    pub seconds: f64,
}

struct Prepared {
    index: usize,
    bytes: Bytes,
    content_id: String,
    media_type: String,
    embedding: Option<Vec<f32>>,
}

/// Where embeddings come from.
enum Embeddings<'a> {
    Encoder(&'a dyn Encoder),
    Precomputed(npy::Matrix),
}

/// Runs an ingest. Per-file problems become [`Rejection`]s; anything that
/// would make the result inconsistent is an error, and nothing of the batch
/// that hit it becomes visible.
pub async fn run(
    config: &IngestConfig,
    warehouse: &Warehouse,
    encoder: &dyn Encoder,
) -> Result<IngestReport> {
    let mut inputs = match &config.input {
        InputSource::Dir(d) => input::from_dir(d)?,
        InputSource::Manifest(m) => input::from_manifest(m)?,
    };
    if config.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }

    let (embeddings, dim, model_id) = match &config.embeddings {
        Some(path) => {
            let InputSource::Manifest(_) = config.input else {
                bail!("--embeddings needs --manifest: its rows pair with the manifest's rows");
            };
            let bytes = std::fs::read(path)
                .with_context(|| format!("cannot read embeddings {}", path.display()))?;
            let m = npy::read_matrix(&bytes)
                .with_context(|| format!("embeddings {}", path.display()))?;
            if m.rows != inputs.items.len() {
                bail!(
                    "embeddings {} has {} rows but the manifest has {} rows; they must pair one to one",
                    path.display(),
                    m.rows,
                    inputs.items.len()
                );
            }
            let model = config.embedding_model.clone().unwrap_or_else(|| {
                format!(
                    "precomputed:{}",
                    path.file_stem()
                        .map(|s| s.to_string_lossy())
                        .unwrap_or_default()
                )
            });
            let dim = m.cols;
            (Embeddings::Precomputed(m), dim, model)
        }
        None => (
            Embeddings::Encoder(encoder),
            encoder.dim(),
            encoder.model_id().to_string(),
        ),
    };

    let catalog = warehouse.catalog.as_ref();
    let mut table =
        catalog::ensure_table(catalog, &warehouse.table, &warehouse.lance_uri, dim).await?;
    let table_name = warehouse.table.to_string();
    let mut pending_columns =
        input::type_extras(&mut inputs, &catalog::extra_columns(&table), &table_name)?;

    let mut lance = vectors::open(&warehouse.lance_uri).await?;
    let mut in_lance: HashSet<String> = match &lance {
        Some(ds) => {
            let lance_dim = vectors::dim_of(ds)?;
            if lance_dim != dim {
                bail!(
                    "Lance dataset {} holds {lance_dim}-dimensional embeddings, this ingest produces {dim}",
                    warehouse.lance_uri
                );
            }
            vectors::content_ids(ds).await?
        }
        None => HashSet::new(),
    };
    let mut published = catalog::published_content_ids(&table).await?;

    let Inputs { items, .. } = inputs;
    let mut report = IngestReport::default();
    let mut progress = Progress::new(items.len() as u64, config.progress);

    let indices: Vec<usize> = (0..items.len()).collect();
    for chunk in indices.chunks(config.batch_size) {
        let (prepared, rejected) = prepare(&items, chunk, &embeddings, &published, &in_lance);
        report.rejected.extend(rejected);
        let chunk_bytes: u64 = prepared.iter().map(|p| p.bytes.len() as u64).sum();

        let mut fresh: Vec<Prepared> = Vec::new();
        let mut seen: HashSet<String> = HashSet::new();
        for p in prepared {
            if published.contains(&p.content_id) || !seen.insert(p.content_id.clone()) {
                report.duplicates += 1;
            } else {
                fresh.push(p);
            }
        }
        if fresh.is_empty() {
            progress.advance(chunk.len() as u64, chunk_bytes);
            continue;
        }

        let uri_of = |p: &Prepared| {
            if config.inline_blobs {
                format!("lance:{}#{}", warehouse.lance_uri, p.content_id)
            } else {
                warehouse.blobs.uri(&p.content_id)
            }
        };

        let to_lance: Vec<&Prepared> = fresh
            .iter()
            .filter(|p| !in_lance.contains(&p.content_id))
            .collect();
        if !config.inline_blobs {
            futures::stream::iter(to_lance.iter().map(|p| {
                let blobs = warehouse.blobs.clone();
                let (id, bytes) = (p.content_id.clone(), p.bytes.clone());
                async move {
                    blobs
                        .put(&id, bytes)
                        .await
                        .with_context(|| format!("cannot store blob {id} in the warehouse"))
                }
            }))
            .buffer_unordered(8)
            .try_collect::<Vec<()>>()
            .await?;
        }

        let lance_version = if to_lance.is_empty() {
            lance
                .as_ref()
                .map(|ds| ds.version().version)
                .context("orphan rows recorded but no Lance dataset")?
        } else {
            let rows: Vec<VectorRow> = to_lance
                .iter()
                .map(|p| VectorRow {
                    content_id: p.content_id.clone(),
                    embedding: p.embedding.clone().unwrap_or_default(),
                    uri: uri_of(p),
                    media_type: p.media_type.clone(),
                    size_bytes: p.bytes.len() as i64,
                    inline: config.inline_blobs.then(|| p.bytes.clone()),
                })
                .collect();
            let ds = vectors::append(&warehouse.lance_uri, lance.take(), &rows, dim).await?;
            let v = ds.version().version;
            lance = Some(ds);
            in_lance.extend(rows.into_iter().map(|r| r.content_id));
            v
        };
        report.adopted += fresh.len() - to_lance.len();

        if config.fault == Some(FaultPoint::AfterLanceCommit) {
            bail!("injected fault after the Lance commit (version {lance_version})");
        }

        if !pending_columns.is_empty() {
            table = catalog::add_columns(catalog, &table, &pending_columns).await?;
            pending_columns.clear();
        }
        let now_us = chrono::Utc::now().timestamp_micros();
        let rows: Vec<SampleRow> = fresh
            .iter()
            .map(|p| {
                let item = &items[p.index];
                SampleRow {
                    content_id: p.content_id.clone(),
                    uri: uri_of(p),
                    label: item.label.clone(),
                    split: item
                        .split
                        .clone()
                        .unwrap_or_else(|| config.split.assign(&p.content_id).to_string()),
                    media_type: p.media_type.clone(),
                    size_bytes: p.bytes.len() as i64,
                    source: item
                        .source
                        .clone()
                        .or_else(|| config.source.clone())
                        .or_else(|| Some(item.path.display().to_string())),
                    ingested_at_us: now_us,
                    embedding_model: model_id.clone(),
                    extras: item.extras.clone(),
                }
            })
            .collect();
        let props = HashMap::from([
            (PROP_LANCE_VERSION.to_string(), lance_version.to_string()),
            (PROP_LANCE_URI.to_string(), warehouse.lance_uri.clone()),
        ]);
        table = catalog::write::append(catalog, &table, &rows, props).await?;
        report.snapshot_id = table.metadata().current_snapshot_id();
        report.lance_version = Some(lance_version);
        report.added += rows.len();
        report.added_bytes += fresh.iter().map(|p| p.bytes.len() as u64).sum::<u64>();
        published.extend(rows.into_iter().map(|r| r.content_id));
        progress.advance(chunk.len() as u64, chunk_bytes);
    }
    progress.finish();
    report.seconds = progress.elapsed();
    Ok(report)
}

/// Reads, hashes, detects and embeds one batch on all cores. Embeddings are
/// skipped for bytes already published or already in Lance.
fn prepare(
    items: &[InputItem],
    chunk: &[usize],
    embeddings: &Embeddings<'_>,
    published: &HashSet<String>,
    in_lance: &HashSet<String>,
) -> (Vec<Prepared>, Vec<Rejection>) {
    let workers = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .min(chunk.len().max(1));
    let per = chunk.len().div_ceil(workers);
    let results: Vec<Result<Prepared, Rejection>> = std::thread::scope(|s| {
        let handles: Vec<_> = chunk
            .chunks(per.max(1))
            .map(|part| {
                s.spawn(move || {
                    part.iter()
                        .map(|&i| prepare_one(i, &items[i], embeddings, published, in_lance))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| match h.join() {
                Ok(v) => v,
                Err(_) => vec![Err(Rejection {
                    what: "batch".into(),
                    reason: "encoder panicked".into(),
                })],
            })
            .collect()
    });
    let mut ok = Vec::new();
    let mut bad = Vec::new();
    for r in results {
        match r {
            Ok(p) => ok.push(p),
            Err(e) => bad.push(e),
        }
    }
    (ok, bad)
}

fn prepare_one(
    index: usize,
    item: &InputItem,
    embeddings: &Embeddings<'_>,
    published: &HashSet<String>,
    in_lance: &HashSet<String>,
) -> Result<Prepared, Rejection> {
    let reject = |reason: String| Rejection {
        what: item.origin.clone(),
        reason,
    };
    let bytes = std::fs::read(&item.path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => reject("file not found".into()),
        _ => reject(format!("cannot read: {e}")),
    })?;
    if bytes.is_empty() {
        return Err(reject("file is empty".into()));
    }
    let id = content_id(&bytes);
    let ext = item.path.extension().and_then(|e| e.to_str());
    let media_type = detect_media_type(&bytes, ext).to_string();
    let embedding = if published.contains(&id) || in_lance.contains(&id) {
        None
    } else {
        Some(match embeddings {
            Embeddings::Encoder(enc) => enc
                .encode(&bytes, &media_type)
                .map_err(|e| reject(format!("{e:#}")))?,
            Embeddings::Precomputed(m) => {
                let v = m.row(index).to_vec();
                if v.iter().any(|x| !x.is_finite()) {
                    return Err(reject(format!(
                        "embedding row {index} has NaN or infinite values"
                    )));
                }
                v
            }
        })
    };
    Ok(Prepared {
        index,
        bytes: Bytes::from(bytes),
        content_id: id,
        media_type,
        embedding,
    })
}
