//! Ingest in two phases, for cluster engines (Ray, Spark, Slurm, a shell
//! loop): [`stage`] does all the per-sample work of one partition of the
//! input on any machine and publishes nothing; [`commit`] publishes any
//! number of staged partitions in one linearizing commit.
//!
//! The contract between the two is a staging manifest, a JSON file at
//! `<warehouse>/staging/<table>/<job>/<partition>.<attempt>.json`
//! ([`Staged`]): the partition's rows (the Iceberg rows exactly as they
//! will be published), the Iceberg data files already written with those
//! rows, the uncommitted Lance fragments holding their embeddings, and the
//! model, dimension and schema they assume. Blobs and packs are stored by
//! content before the manifest is written (idempotent, visible to nobody
//! until a row names them).
//!
//! A commit:
//! 1. reads the manifests (in the order given; a content id staged twice is
//!    published from the first manifest that holds it, and content ids the
//!    table already lists are dropped),
//! 2. commits, as one Lance append, the fragments of every manifest that
//!    still has a row to publish, skipping fragments the dataset already
//!    lists (a commit that died after this step is re-run safely),
//! 3. publishes the rows in one Iceberg snapshot that records that Lance
//!    version: a manifest without duplicates contributes its staged data
//!    files as they are, the rows of the others are written again; a lost
//!    race with another writer re-checks duplicates ([`super::publish`]),
//! 4. deletes the manifests it published.
//!
//! Lance rows of dropped duplicates stay in the dataset as rows no snapshot
//! lists (like the orphans of an interrupted `ingest`); a content id maps
//! to its first Lance row, which holds the same embedding. Files of a
//! partition that was staged and never committed (a killed worker, a
//! retried task, a manifest nobody commits) are collected by `lakemount
//! gc` once older than its grace period.

use std::collections::HashSet;

use bytes::Bytes;
use iceberg::spec::{DataFile, deserialize_data_file_from_json, serialize_data_file_to_json};
use serde::{Deserialize, Serialize};

use super::progress::Progress;
use super::publish::{Batch, Published, publish};
use super::{
    IngestConfig, Prepared, Rejection, pack_size, prepare, sample_uri, store_blobs, vector_rows,
};
use crate::catalog::PROP_EMBEDDING_MODEL;
use crate::catalog::write::{SampleRow, write_files};
use crate::content_id::ContentId;
use crate::encode::Encoder;
use crate::error::{Context, Result, bail};
use crate::vectors;
use crate::warehouse::Warehouse;

/// The `format` of a staging manifest.
pub const FORMAT: &str = "lakemount.staged/1";
/// Where staging manifests live, below the warehouse root.
pub const STAGING_DIR: &str = "staging";
/// Below a job's directory: one marker per published partition.
pub const DONE_DIR: &str = "done";
/// Largest staging manifest a commit reads.
const MANIFEST_LIMIT: u64 = 512 << 20;
/// Fault injection for the crash tests: `POINT` or `POINT@MARKER` (the
/// latter only while MARKER does not exist yet: it is created, so a retry
/// runs through) kills the process with SIGKILL at POINT:
/// `stage-before-manifest` (everything staged but the manifest) or
/// `commit-after-lance` (between the Lance and the Iceberg commit).
pub const CRASH_ENV: &str = "LAKEMOUNT_TEST_CRASH";

/// One staged partition: what [`stage`] wrote and [`commit`] publishes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Staged {
    /// [`FORMAT`].
    pub format: String,
    /// The job the partition belongs to.
    pub job: String,
    /// The partition's name within the job.
    pub partition: String,
    /// Unique per stage run: a retried partition writes a new manifest.
    pub attempt: String,
    /// `namespace.table`.
    pub table: String,
    /// The Lance dataset the fragments belong to.
    pub lance_uri: String,
    /// `embedding_model` of every row.
    pub embedding_model: String,
    /// Embedding dimension.
    pub dim: usize,
    /// When staging finished (RFC 3339).
    pub created_at: String,
    /// Partition spec the data files were written with.
    pub partition_spec_id: i32,
    /// The rows, in input order, without duplicates within the partition.
    pub rows: Vec<SampleRow>,
    /// Iceberg data files holding exactly `rows` (Iceberg's JSON form).
    pub data_files: Vec<String>,
    /// Uncommitted Lance fragments holding the rows' embeddings.
    pub fragments: Vec<lance::table::format::Fragment>,
    /// Bytes of the staged samples.
    pub bytes: u64,
    /// Files of the partition whose bytes another file of it already had.
    pub duplicates: usize,
    /// Files refused, and why.
    pub rejected: Vec<Rejection>,
    /// Seconds the stage took.
    pub seconds: f64,
}

impl Staged {
    /// The manifest's path below the warehouse root.
    pub fn rel_path(&self) -> String {
        format!(
            "{}/{}.{}.json",
            job_dir(&self.table, &self.job),
            self.partition,
            self.attempt
        )
    }
}

/// The directory (below the warehouse root) of a job's manifests.
pub fn job_dir(table: &str, job: &str) -> String {
    format!("{STAGING_DIR}/{table}/{job}")
}

/// Checks a job or partition name: it becomes part of an object path.
pub fn check_name(what: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if !ok {
        bail!(
            kind: Usage,
            "{what} {name:?}: expected 1-128 letters, digits, '-', '_' or '.', not starting with '.'"
        );
    }
    Ok(())
}

/// Stages one partition: reads, hashes, stores blobs (or packs), embeds,
/// writes Lance fragments and Iceberg data files, and writes the staging
/// manifest last. Commits nothing: no view sees any of it until [`commit`].
/// Creates the table and the Lance dataset if they do not exist yet.
pub async fn stage(
    config: &IngestConfig,
    warehouse: &Warehouse,
    encoder: &dyn Encoder,
    job: &str,
    partition: &str,
) -> Result<Staged> {
    check_name("job", job)?;
    check_name("partition", partition)?;
    let started = std::time::Instant::now();
    let super::Start {
        items,
        embeddings,
        dim,
        model_id,
        table,
        extras,
    } = super::start(config, warehouse, encoder).await?;
    let table_name = warehouse.table.to_string();
    let mut published = Published::new(table, extras);
    published.ensure_columns(&warehouse.catalog).await?;
    let table = published.table().clone();
    let ds = vectors::ensure(&warehouse.lance_uri, &warehouse.storage, dim).await?;
    super::check_dim(&ds, dim, &warehouse.lance_uri)?;

    let none = HashSet::new();
    let mut progress = Progress::new(items.len() as u64, config.progress);
    let mut seen: HashSet<ContentId> = HashSet::new();
    let (mut rows, mut fragments) = (Vec::new(), Vec::new());
    let (mut rejected, mut duplicates, mut bytes) = (Vec::new(), 0usize, 0u64);
    let now_us = chrono::Utc::now().timestamp_micros();
    let indices: Vec<usize> = (0..items.len()).collect();
    for chunk in indices.chunks(config.batch_size) {
        let (prepared, refused) = prepare(
            &items,
            chunk,
            config.max_sample_bytes,
            &embeddings,
            &none,
            &none,
        );
        rejected.extend(refused);
        let read: u64 = prepared.iter().map(|p| p.bytes.len() as u64).sum();
        let (fresh, dups): (Vec<Prepared>, Vec<Prepared>) = prepared
            .into_iter()
            .partition(|p| seen.insert(p.content_id));
        duplicates += dups.len();
        let fresh: Vec<&Prepared> = fresh.iter().collect();
        if !fresh.is_empty() {
            let uris = match config.inline_blobs {
                true => Default::default(),
                false => store_blobs(warehouse, &fresh, pack_size(config, warehouse)).await?,
            };
            let uri_of = |p: &Prepared| {
                uris.get(&p.content_id)
                    .cloned()
                    .unwrap_or_else(|| sample_uri(config, warehouse, &p.content_id))
            };
            let vrows = vector_rows(&fresh, &uri_of, config);
            fragments.extend(vectors::write_fragments(&ds, &vrows, dim).await?);
            for p in &fresh {
                let mut row =
                    super::prepare::sample_row(config, &items[p.index], p, uri_of(p), &model_id);
                row.ingested_at_us = now_us;
                rows.push(row);
                bytes += p.bytes.len() as u64;
            }
        }
        progress.advance(chunk.len() as u64, read);
    }
    progress.finish();

    let meta = table.metadata();
    let spec = meta.default_partition_spec();
    let partition_type = spec.partition_type(meta.current_schema())?;
    let mut data_files = Vec::new();
    if !rows.is_empty() {
        for f in write_files(&table, &rows).await? {
            data_files.push(serialize_data_file_to_json(
                f,
                &partition_type,
                meta.format_version(),
            )?);
        }
    }
    let staged = Staged {
        format: FORMAT.to_string(),
        job: job.to_string(),
        partition: partition.to_string(),
        attempt: uuid::Uuid::new_v4().simple().to_string(),
        table: table_name,
        lance_uri: warehouse.lance_uri.clone(),
        embedding_model: model_id,
        dim,
        created_at: chrono::Utc::now().to_rfc3339(),
        partition_spec_id: spec.spec_id(),
        rows,
        data_files,
        fragments,
        bytes,
        duplicates,
        rejected,
        seconds: started.elapsed().as_secs_f64(),
    };
    crash_point("stage-before-manifest");
    let json = serde_json::to_vec(&staged).context("cannot encode the staging manifest")?;
    warehouse
        .blobs
        .put_file(&staged.rel_path(), Bytes::from(json))
        .await
        .with_context(|| format!("cannot write staging manifest {}", staged.rel_path()))?;
    Ok(staged)
}

/// The staging manifests of `job`, oldest first (paths below the
/// warehouse root).
pub async fn job_manifests(warehouse: &Warehouse, job: &str) -> Result<Vec<String>> {
    check_name("job", job)?;
    let dir = job_dir(&warehouse.table.to_string(), job);
    let mut files = warehouse
        .blobs
        .list_files(&dir)
        .await
        .with_context(|| format!("cannot list staging manifests in {dir}"))?;
    files.retain(|(p, _)| p.ends_with(".json") && !p.contains(&format!("/{DONE_DIR}/")));
    files.sort_by(|a, b| a.1.cmp(&b.1).then(a.0.cmp(&b.0)));
    Ok(files.into_iter().map(|(p, _)| p).collect())
}

/// Where a job stands: its staged, unpublished manifests by partition
/// (oldest first) and the partitions a commit published.
#[derive(Debug, Default, Serialize)]
pub struct JobStatus {
    /// Partition -> its manifests not yet published.
    pub staged: std::collections::BTreeMap<String, Vec<String>>,
    /// Partitions published.
    pub committed: Vec<String>,
}

/// The job's [`JobStatus`].
pub async fn job_status(warehouse: &Warehouse, job: &str) -> Result<JobStatus> {
    let mut status = JobStatus::default();
    for rel in job_manifests(warehouse, job).await? {
        let name = rel.rsplit('/').next().unwrap_or_default();
        // <partition>.<attempt>.json
        let partition = name
            .strip_suffix(".json")
            .and_then(|n| n.rsplit_once('.'))
            .map(|(p, _)| p.to_string())
            .unwrap_or_default();
        status.staged.entry(partition).or_default().push(rel);
    }
    let dir = format!("{}/{DONE_DIR}", job_dir(&warehouse.table.to_string(), job));
    for (rel, _) in warehouse.blobs.list_files(&dir).await? {
        if let Some(p) = rel.rsplit('/').next() {
            status.committed.push(p.to_string());
        }
    }
    status.committed.sort();
    Ok(status)
}

/// What a commit did.
#[derive(Debug, Default, Serialize)]
pub struct CommitReport {
    /// Staging manifests read.
    pub manifests: usize,
    /// Rows published.
    pub added: usize,
    /// Rows dropped: already in the table, or staged by an earlier manifest.
    pub duplicates: usize,
    /// Lance fragments committed by this run.
    pub fragments: usize,
    /// Fragments an earlier, interrupted commit had already committed.
    pub fragments_already: usize,
    /// Manifests whose rows had to be written again (they held duplicates).
    pub rewritten: usize,
    /// Files the stages refused.
    pub rejected: Vec<Rejection>,
    /// The snapshot committed, if any.
    pub snapshot_id: Option<i64>,
    /// The Lance version it records.
    pub lance_version: Option<u64>,
}

/// Reads the staging manifest at `rel` (below the warehouse root) and
/// checks it belongs to this warehouse's table.
async fn read_manifest(warehouse: &Warehouse, rel: &str) -> Result<Staged> {
    let bytes = warehouse.blobs.get_file(rel, MANIFEST_LIMIT).await?;
    let staged: Staged = serde_json::from_slice(&bytes)
        .with_context(|| format!("staging manifest {rel}: not a {FORMAT} manifest"))?;
    if staged.format != FORMAT {
        bail!(
            "staging manifest {rel}: format {:?}, this lakemount reads {FORMAT:?}",
            staged.format
        );
    }
    if staged.table != warehouse.table.to_string() || staged.lance_uri != warehouse.lance_uri {
        bail!(
            "staging manifest {rel} was staged for table {} (Lance {}), not {} (Lance {}); commit it with that --table and --warehouse",
            staged.table,
            staged.lance_uri,
            warehouse.table,
            warehouse.lance_uri
        );
    }
    Ok(staged)
}

/// Publishes the staged partitions `manifests` (paths below the warehouse
/// root, as [`Staged::rel_path`] or [`job_manifests`] give them) in one
/// Lance append and one Iceberg snapshot, then deletes the manifests.
pub async fn commit(warehouse: &Warehouse, manifests: &[String]) -> Result<CommitReport> {
    let mut report = CommitReport {
        manifests: manifests.len(),
        ..Default::default()
    };
    let mut staged = Vec::with_capacity(manifests.len());
    for rel in manifests {
        staged.push(read_manifest(warehouse, rel).await?);
    }
    let Some(first) = staged.first() else {
        return Ok(report);
    };
    for s in &staged {
        report.rejected.extend(s.rejected.iter().cloned());
        if s.embedding_model != first.embedding_model || s.dim != first.dim {
            bail!(
                "staging manifests {} and {} disagree on the model ({} vs {}): a table never mixes models",
                first.rel_path(),
                s.rel_path(),
                first.embedding_model,
                s.embedding_model
            );
        }
    }
    let table = warehouse
        .catalog
        .load_table(&warehouse.table)
        .await
        .with_context(|| format!("cannot load table {}", warehouse.table))?;
    if let Some(model) = table.metadata().properties().get(PROP_EMBEDDING_MODEL)
        && *model != first.embedding_model
    {
        bail!(
            "table {} holds embeddings from `{model}`, the staged partitions from `{}`",
            warehouse.table,
            first.embedding_model
        );
    }
    let ds = vectors::open(&warehouse.lance_uri, &warehouse.storage)
        .await?
        .with_context(|| {
            format!(
                "no Lance dataset at {}: the staged fragments have nothing to join",
                warehouse.lance_uri
            )
        })?;
    let mut published = Published::new(table, Vec::new());
    published.refresh(warehouse.catalog.as_ref()).await?;

    // Which rows each manifest still publishes.
    let mut seen: HashSet<ContentId> = published.ids().clone();
    let mut keep: Vec<Vec<SampleRow>> = Vec::with_capacity(staged.len());
    for s in &staged {
        let mut rows = Vec::with_capacity(s.rows.len());
        for r in &s.rows {
            let id = ContentId::parse(&r.content_id)
                .with_context(|| format!("staging manifest {}", s.rel_path()))?;
            if seen.insert(id) {
                rows.push(r.clone());
            } else {
                report.duplicates += 1;
            }
        }
        keep.push(rows);
    }

    // Lance first: the snapshot must record a version holding every row.
    let committed = vectors::data_files(&ds);
    let mut fragments = Vec::new();
    for (s, rows) in staged.iter().zip(&keep) {
        if rows.is_empty() {
            continue;
        }
        for f in &s.fragments {
            if f.files.iter().any(|d| committed.contains(&d.path)) {
                report.fragments_already += 1;
            } else {
                fragments.push(f.clone());
            }
        }
    }
    check_staged_fragments(&ds, &fragments).await?;
    if !fragments.is_empty() {
        report.fragments = fragments.len();
        vectors::commit_fragments(&ds, &warehouse.storage, fragments).await?;
        crash_point("commit-after-lance");
    }

    // Then Iceberg: staged files where a manifest lost no rows.
    let meta = published.table().metadata();
    let spec = meta.default_partition_spec().clone();
    let schema = meta.current_schema().clone();
    let partition_type = spec.partition_type(&schema)?;
    let (mut files, mut rewrite): (Vec<DataFile>, Vec<SampleRow>) = (Vec::new(), Vec::new());
    for (s, rows) in staged.iter().zip(&keep) {
        if rows.is_empty() {
            continue;
        }
        if rows.len() == s.rows.len() && s.partition_spec_id == spec.spec_id() {
            for json in &s.data_files {
                let f = deserialize_data_file_from_json(
                    json,
                    s.partition_spec_id,
                    &partition_type,
                    &schema,
                )
                .with_context(|| format!("staging manifest {}: bad data file", s.rel_path()))?;
                files.push(f);
            }
        } else {
            report.rewritten += 1;
            rewrite.extend(rows.iter().cloned());
        }
    }
    check_staged_data_files(published.table(), &files).await?;
    if !rewrite.is_empty() {
        files.extend(write_files(published.table(), &rewrite).await?);
    }
    let rows: Vec<SampleRow> = keep.into_iter().flatten().collect();
    let outcome = publish(
        &warehouse.catalog,
        &warehouse.table,
        &mut published,
        Batch {
            rows,
            lance_uri: warehouse.lance_uri.clone(),
            storage: warehouse.storage.clone(),
            files: Some(files),
        },
    )
    .await?;
    report.added = outcome.added.len();
    report.duplicates += outcome.duplicates;
    if let Some((snapshot, version)) = outcome.committed {
        report.snapshot_id = Some(snapshot);
        report.lance_version = Some(version);
    }
    // A marker per published partition, for a driver that resumes a job
    // ([`job_status`]); then the manifests go.
    for st in &staged {
        let marker = format!(
            "{}/{DONE_DIR}/{}",
            job_dir(&st.table, &st.job),
            st.partition
        );
        let body = serde_json::json!({"snapshot_id": report.snapshot_id, "attempt": st.attempt});
        warehouse
            .blobs
            .put_file(&marker, Bytes::from(body.to_string()))
            .await
            .with_context(|| format!("published, but cannot write {marker}"))?;
    }
    for rel in manifests {
        warehouse
            .blobs
            .delete_file(rel)
            .await
            .with_context(|| format!("published, but cannot delete staging manifest {rel}"))?;
    }
    Ok(report)
}

/// Fails if a staged Lance data file is gone (collected by `gc` after its
/// grace period): committing the fragment would publish rows without data.
async fn check_staged_fragments(
    ds: &lance::Dataset,
    fragments: &[lance::table::format::Fragment],
) -> Result<()> {
    for f in fragments {
        for d in &f.files {
            let store = ds.object_store(d.base_id).await?;
            let path = ds.data_dir().clone().join(d.path.as_str());
            if !store.exists(&path).await? {
                bail!(
                    "staged Lance data file {path} is gone (collected by `lakemount gc`?); stage its partition again"
                );
            }
        }
    }
    Ok(())
}

/// Fails if a staged Iceberg data file is gone.
async fn check_staged_data_files(table: &iceberg::table::Table, files: &[DataFile]) -> Result<()> {
    for f in files {
        if !table.file_io().exists(f.file_path()).await? {
            bail!(
                "staged Iceberg data file {} is gone (collected by `lakemount gc`?); stage its partition again",
                f.file_path()
            );
        }
    }
    Ok(())
}

/// Dies here if [`CRASH_ENV`] names this point.
fn crash_point(point: &str) {
    let Ok(v) = std::env::var(CRASH_ENV) else {
        return;
    };
    let (at, marker) = match v.split_once('@') {
        Some((p, m)) => (p, Some(m)),
        None => (v.as_str(), None),
    };
    if at != point {
        return;
    }
    if let Some(m) = marker
        && std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(m)
            .is_err()
    {
        return;
    }
    eprintln!("{CRASH_ENV}: killed at {point}");
    // SAFETY: sends a signal to this process; no memory is touched.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGKILL);
    }
}
