//! `lakemount ingest`: inputs -> blobs -> embeddings -> Lance -> Iceberg.
//!
//! Each batch goes through named stages ([`prepare`], [`store_blobs`],
//! [`append_vectors`], [`publish::publish`]), in a fixed order: blobs first
//! (idempotent, keyed by content), then one Lance append, then one Iceberg
//! append whose snapshot summary records a Lance version. The Iceberg
//! commit is the publish point: until it happens nothing of the batch is
//! visible to any view.
//!
//! Concurrency model (several ingests, other engines, one table):
//! - Blob writes are idempotent and Lance appends are concurrent-safe
//!   (Lance serialises its own commits); neither publishes anything.
//! - The Iceberg commit is the serialisation point. A batch is checked
//!   against the snapshot it commits on: rows whose content id that
//!   snapshot already lists are dropped (counted as duplicates), and the
//!   snapshot records the newest Lance version at that moment, which holds
//!   every row of every earlier commit. If another writer commits first,
//!   the catalog refuses ours ([`crate::catalog::commit`]) and the batch is
//!   checked again on the new snapshot, up to [`publish::MAX_ATTEMPTS`]
//!   times with jittered backoff; then the ingest stops with an error and
//!   nothing of that batch is visible.
//! - Creating the table or the Lance dataset races benignly: whoever loses
//!   uses what the winner created.
//!
//! So every snapshot satisfies the invariant `lakemount check` tests: no
//! content id twice, and each row's Lance row present at the recorded
//! version.
//!
//! If a run dies between the Lance and the Iceberg commit, the Lance rows
//! it wrote are orphans. A re-run sees their content ids in Lance but not in
//! Iceberg and adopts them: it does not append them to Lance again, it only
//! publishes them in Iceberg.

pub mod gc;
pub mod input;
pub mod prepare;
pub mod progress;
pub mod publish;
pub mod stage;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

use crate::error::{Context, Result, bail};
use futures::{StreamExt, TryStreamExt};

use crate::catalog::{self, PROP_LANCE_URI};
use crate::content_id::ContentId;
use crate::encode::Encoder;
use crate::npy;
use crate::vectors::{self, VectorRow};
use crate::warehouse::Warehouse;
use input::Inputs;
pub use prepare::{Embeddings, Prepared, prepare};
use progress::{Progress, ProgressMode};
use publish::{Batch, Published};

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
    /// Directories outside a manifest's folder that its paths may name.
    pub allow_path_prefixes: Vec<PathBuf>,
    /// Largest sample read; a larger file is a rejection.
    pub max_sample_bytes: u64,
    /// Whether samples of up to 1 MiB go into pack objects.
    pub pack: PackMode,
    /// Size of a pack.
    pub pack_size: u64,
}

/// Whether an ingest packs small samples (see [`crate::packs`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PackMode {
    /// For object-store warehouses, not for local directories (where a
    /// file per sample costs no request and allows `--passthrough`).
    #[default]
    Auto,
    /// Always.
    On,
    /// Never: one blob object per sample.
    Off,
}

impl std::str::FromStr for PackMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(PackMode::Auto),
            "on" => Ok(PackMode::On),
            "off" => Ok(PackMode::Off),
            other => Err(format!("expected auto, on or off, got {other:?}")),
        }
    }
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
            allow_path_prefixes: Vec::new(),
            max_sample_bytes: crate::files::limits::SAMPLE,
            pack: PackMode::Auto,
            pack_size: crate::packs::DEFAULT_PACK_SIZE,
        }
    }
}

/// A file that was not ingested, and why.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
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

/// Runs an ingest. Per-file problems become [`Rejection`]s; anything that
/// would make the result inconsistent is an error, and nothing of the batch
/// that hit it becomes visible.
pub async fn run(
    config: &IngestConfig,
    warehouse: &Warehouse,
    encoder: &dyn Encoder,
) -> Result<IngestReport> {
    let Start {
        items,
        embeddings,
        dim,
        model_id,
        table,
        extras,
    } = start(config, warehouse, encoder).await?;
    let lance = vectors::open(&warehouse.lance_uri, &warehouse.storage).await?;
    let in_lance = match &lance {
        Some(ds) => {
            check_dim(ds, dim, &warehouse.lance_uri)?;
            vectors::content_ids(ds).await?
        }
        None => HashSet::new(),
    };
    let mut state = State {
        config,
        warehouse,
        dim,
        model_id,
        published: Published::new(table, extras),
        lance,
        in_lance,
        report: IngestReport::default(),
    };
    let mut progress = Progress::new(items.len() as u64, config.progress);
    let indices: Vec<usize> = (0..items.len()).collect();
    for chunk in indices.chunks(config.batch_size) {
        let bytes = state.batch(&items, chunk, &embeddings).await?;
        progress.advance(chunk.len() as u64, bytes);
    }
    progress.finish();
    state.report.seconds = progress.elapsed();
    Ok(state.report)
}

/// What `ingest` and `stage` start from: the inputs read and checked, the
/// embeddings, and the table (created if missing) with the inputs' extra
/// columns typed against it.
struct Start<'a> {
    items: Vec<input::InputItem>,
    embeddings: Embeddings<'a>,
    dim: usize,
    model_id: String,
    table: iceberg::table::Table,
    extras: Vec<(String, catalog::ExtraType)>,
}

async fn start<'a>(
    config: &IngestConfig,
    warehouse: &Warehouse,
    encoder: &'a dyn Encoder,
) -> Result<Start<'a>> {
    let mut inputs = match &config.input {
        InputSource::Dir(d) => input::from_dir(d)?,
        InputSource::Manifest(m) => input::from_manifest(m, &config.allow_path_prefixes)?,
    };
    if config.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let (embeddings, dim, model_id) = embeddings_for(config, &inputs, encoder)?;
    let table = catalog::ensure_table(
        warehouse.catalog.as_ref(),
        &warehouse.table,
        warehouse.table_location.as_deref(),
        &warehouse.lance_uri,
        dim,
        &model_id,
    )
    .await?;
    let table_name = warehouse.table.to_string();
    let extras = input::type_extras(&mut inputs, &catalog::extra_columns(&table), &table_name)?;
    Ok(Start {
        items: inputs.items,
        embeddings,
        dim,
        model_id,
        table,
        extras,
    })
}

/// Fails if the Lance dataset holds embeddings of another dimension.
fn check_dim(ds: &lance::Dataset, dim: usize, uri: &str) -> Result<()> {
    let lance_dim = vectors::dim_of(ds)?;
    if lance_dim != dim {
        bail!(
            "Lance dataset {uri} holds {lance_dim}-dimensional embeddings, this ingest produces {dim}"
        );
    }
    Ok(())
}

/// What an ingest carries from batch to batch.
struct State<'a> {
    config: &'a IngestConfig,
    warehouse: &'a Warehouse,
    dim: usize,
    model_id: String,
    published: Published,
    lance: Option<lance::Dataset>,
    in_lance: HashSet<ContentId>,
    report: IngestReport,
}

/// The pack size if an ingest with `config` into `warehouse` packs small
/// samples.
fn pack_size(config: &IngestConfig, warehouse: &Warehouse) -> Option<u64> {
    let local = warehouse.root_url.scheme() == "file";
    match config.pack {
        PackMode::On => Some(config.pack_size),
        PackMode::Auto if !local => Some(config.pack_size),
        _ => None,
    }
}

impl State<'_> {
    /// One batch through the stages; returns the bytes it read.
    async fn batch(
        &mut self,
        items: &[input::InputItem],
        chunk: &[usize],
        embeddings: &Embeddings<'_>,
    ) -> Result<u64> {
        let (config, warehouse) = (self.config, self.warehouse);
        self.published.refresh(warehouse.catalog.as_ref()).await?;
        let (prepared, rejected) = prepare(
            items,
            chunk,
            config.max_sample_bytes,
            embeddings,
            self.published.ids(),
            &self.in_lance,
        );
        self.report.rejected.extend(rejected);
        let bytes: u64 = prepared.iter().map(|p| p.bytes.len() as u64).sum();
        let mut seen: HashSet<ContentId> = HashSet::new();
        let (fresh, dups): (Vec<Prepared>, Vec<Prepared>) = prepared
            .into_iter()
            .partition(|p| !self.published.contains(&p.content_id) && seen.insert(p.content_id));
        self.report.duplicates += dups.len();
        if fresh.is_empty() {
            return Ok(bytes);
        }
        let to_lance: Vec<&Prepared> = fresh
            .iter()
            .filter(|p| !self.in_lance.contains(&p.content_id))
            .collect();
        let mut uris = HashMap::new();
        if !config.inline_blobs {
            uris = store_blobs(warehouse, &to_lance, pack_size(config, warehouse)).await?;
            // Samples an interrupted run put in Lance keep the uri it gave them.
            let adopted: Vec<ContentId> = fresh
                .iter()
                .filter(|p| self.in_lance.contains(&p.content_id))
                .map(|p| p.content_id)
                .collect();
            if let (false, Some(ds)) = (adopted.is_empty(), &self.lance) {
                uris.extend(vectors::uris_of(ds, &adopted).await?);
            }
        }
        let uri_of = |p: &Prepared| {
            uris.get(&p.content_id)
                .cloned()
                .unwrap_or_else(|| sample_uri(config, warehouse, &p.content_id))
        };
        if !to_lance.is_empty() {
            let existing = self.lance.take();
            let ds =
                append_vectors(warehouse, existing, &to_lance, &uri_of, config, self.dim).await?;
            self.lance = Some(ds);
            self.in_lance.extend(to_lance.iter().map(|p| p.content_id));
        }
        self.report.adopted += fresh.len() - to_lance.len();
        let rows = fresh
            .iter()
            .map(|p| prepare::sample_row(config, &items[p.index], p, uri_of(p), &self.model_id))
            .collect();
        let batch = Batch {
            rows,
            lance_uri: warehouse.lance_uri.clone(),
            storage: warehouse.storage.clone(),
            files: None,
        };
        let outcome = publish::publish(
            &warehouse.catalog,
            &warehouse.table,
            &mut self.published,
            batch,
        )
        .await?;
        let r = &mut self.report;
        r.duplicates += outcome.duplicates;
        r.added += outcome.added.len();
        r.added_bytes += fresh
            .iter()
            .filter(|p| outcome.added.contains(&p.content_id))
            .map(|p| p.bytes.len() as u64)
            .sum::<u64>();
        if let Some((snapshot, version)) = outcome.committed {
            r.snapshot_id = Some(snapshot);
            r.lance_version = Some(version);
        }
        Ok(bytes)
    }
}

/// Where embeddings come from: the encoder, or a precomputed `.npy` whose
/// rows pair with the manifest's. Returns them with the dimension and the
/// `embedding_model` value.
fn embeddings_for<'a>(
    config: &IngestConfig,
    inputs: &Inputs,
    encoder: &'a dyn Encoder,
) -> Result<(Embeddings<'a>, usize, String)> {
    let Some(path) = &config.embeddings else {
        return Ok((
            Embeddings::Encoder(encoder),
            encoder.dim(),
            encoder.model_id().to_string(),
        ));
    };
    let InputSource::Manifest(_) = config.input else {
        bail!("--embeddings needs --manifest: its rows pair with the manifest's rows");
    };
    let bytes = crate::files::read_regular(path, crate::files::limits::EMBEDDINGS)
        .with_context(|| format!("cannot read embeddings {}", path.display()))?;
    let m = npy::read_matrix(&bytes).with_context(|| format!("embeddings {}", path.display()))?;
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
    Ok((Embeddings::Precomputed(m), dim, model))
}

/// The `uri` a sample is published with.
fn sample_uri(config: &IngestConfig, warehouse: &Warehouse, id: &ContentId) -> String {
    if config.inline_blobs {
        format!("lance:{}#{id}", warehouse.lance_uri)
    } else {
        warehouse.blobs.uri(&id.hex())
    }
}

/// Stage: every sample's bytes into the blob store (idempotent); with a
/// pack size, samples of up to [`crate::packs::THRESHOLD`] bytes into packs
/// instead. Returns the `uri` of each packed sample (the others are at
/// their blob's URI).
pub async fn store_blobs(
    warehouse: &Warehouse,
    samples: &[&Prepared],
    pack_size: Option<u64>,
) -> Result<HashMap<ContentId, String>> {
    let (small, large): (Vec<&Prepared>, Vec<&Prepared>) = match pack_size {
        Some(_) => samples
            .iter()
            .partition(|p| p.bytes.len() as u64 <= crate::packs::THRESHOLD),
        None => (Vec::new(), samples.to_vec()),
    };
    let mut uris = HashMap::new();
    if let Some(size) = pack_size {
        let members: Vec<(ContentId, &[u8])> = small
            .iter()
            .map(|p| (p.content_id, p.bytes.as_ref()))
            .collect();
        let packs = crate::packs::build(&members, size);
        let stored: Vec<(String, &crate::packs::Pack)> =
            futures::stream::iter(packs.iter().map(|pack| {
                let blobs = warehouse.blobs.clone();
                async move {
                    let uri = blobs.put_pack(pack).await.with_context(|| {
                        format!("cannot store pack {} in the warehouse", pack.name)
                    })?;
                    Ok::<_, crate::error::Error>((uri, pack))
                }
            }))
            .buffer_unordered(4)
            .try_collect()
            .await?;
        for (uri, pack) in stored {
            for (id, offset, length) in &pack.members {
                uris.insert(*id, crate::packs::range_uri(&uri, *offset, *length));
            }
        }
    }
    futures::stream::iter(large.iter().map(|p| {
        let blobs = warehouse.blobs.clone();
        let (id, bytes) = (p.content_id.hex(), p.bytes.clone());
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
    Ok(uris)
}

/// Stage: one Lance append of the samples' embeddings and pointers (and
/// bytes, for inline blobs). Returns the dataset at its new version.
pub async fn append_vectors(
    warehouse: &Warehouse,
    existing: Option<lance::Dataset>,
    samples: &[&Prepared],
    uri_of: &dyn Fn(&Prepared) -> String,
    config: &IngestConfig,
    dim: usize,
) -> Result<lance::Dataset> {
    let rows = vector_rows(samples, uri_of, config);
    vectors::append(
        &warehouse.lance_uri,
        &warehouse.storage,
        existing,
        &rows,
        dim,
    )
    .await
}

/// The Lance rows of `samples`.
fn vector_rows(
    samples: &[&Prepared],
    uri_of: &dyn Fn(&Prepared) -> String,
    config: &IngestConfig,
) -> Vec<VectorRow> {
    samples
        .iter()
        .map(|p| VectorRow {
            content_id: p.content_id.hex(),
            embedding: p.embedding.clone().unwrap_or_default(),
            uri: uri_of(p),
            media_type: p.media_type.clone(),
            size_bytes: p.bytes.len() as i64,
            inline: config.inline_blobs.then(|| p.bytes.clone()),
        })
        .collect()
}

/// Snapshot summary properties of a lakemount commit.
pub fn snapshot_props(
    lance_uri: &str,
    lance_version: u64,
) -> std::collections::HashMap<String, String> {
    std::collections::HashMap::from([
        (
            catalog::PROP_LANCE_VERSION.to_string(),
            lance_version.to_string(),
        ),
        (PROP_LANCE_URI.to_string(), lance_uri.to_string()),
    ])
}
