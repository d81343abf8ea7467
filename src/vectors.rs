//! Lance: the vector table. It holds, per sample, the embedding, the
//! pointer to the bytes and, with `--inline-blobs`, the bytes themselves
//! (blob v2 column), so one random access returns everything a reader needs.
//!
//! Lance rows become visible to views only through an Iceberg snapshot that
//! records a Lance version containing them; rows appended by a batch whose
//! Iceberg commit never happened are orphans that the next ingest of the same
//! bytes adopts instead of appending again.

use std::collections::HashSet;
use std::sync::Arc;

use crate::error::{Context, Result, bail};

use crate::content_id::ContentId;
use crate::storage::Storage;
use arrow_array::{
    Array, ArrayRef, FixedSizeListArray, Float32Array, Int64Array, RecordBatch,
    RecordBatchIterator, StringArray,
};
use arrow_schema::{DataType, Field, Schema};
use futures::TryStreamExt;
use lance::Dataset;
use lance::blob::{BlobArrayBuilder, blob_field};
use lance::dataset::builder::DatasetBuilder;
use lance::dataset::{WriteMode, WriteParams};

/// Name of the blob column.
pub const BLOB_COLUMN: &str = "blob";
/// Name of the embedding column.
pub const EMBEDDING_COLUMN: &str = "embedding";

/// One row of the Lance table.
#[derive(Debug, Clone)]
pub struct VectorRow {
    /// SHA-256 of the bytes, hex.
    pub content_id: String,
    /// The embedding (table dimension).
    pub embedding: Vec<f32>,
    /// Where the bytes are.
    pub uri: String,
    /// MIME type.
    pub media_type: String,
    /// Size of the bytes.
    pub size_bytes: i64,
    /// The bytes, when stored inline.
    pub inline: Option<bytes::Bytes>,
}

/// The Arrow schema of the Lance table for embeddings of dimension `dim`.
pub fn schema(dim: usize) -> Result<Arc<Schema>> {
    let dim = i32::try_from(dim).context("embedding dimension too large")?;
    Ok(Arc::new(Schema::new(vec![
        Field::new("content_id", DataType::Utf8, false),
        Field::new(
            EMBEDDING_COLUMN,
            DataType::FixedSizeList(Arc::new(Field::new("item", DataType::Float32, true)), dim),
            false,
        ),
        Field::new("uri", DataType::Utf8, false),
        Field::new("media_type", DataType::Utf8, false),
        Field::new("size_bytes", DataType::Int64, false),
        blob_field(BLOB_COLUMN, true),
    ])))
}

/// Opens the dataset at `uri` with the warehouse's storage settings.
pub async fn open_dataset(uri: &str, storage: &Storage) -> lance::Result<Dataset> {
    DatasetBuilder::from_uri(uri)
        .with_storage_options(storage.lance_options())
        .load()
        .await
}

/// Opens the dataset at `uri`, or `None` when nothing was written there yet.
pub async fn open(uri: &str, storage: &Storage) -> Result<Option<Dataset>> {
    match open_dataset(uri, storage).await {
        Ok(ds) => Ok(Some(ds)),
        Err(lance::Error::DatasetNotFound { .. }) => Ok(None),
        Err(e) => {
            Err(crate::error::Error::from(e).context(format!("cannot open Lance dataset {uri}")))
        }
    }
}

/// Embedding dimension of an existing dataset.
pub fn dim_of(ds: &Dataset) -> Result<usize> {
    let field = ds
        .schema()
        .field(EMBEDDING_COLUMN)
        .context("Lance dataset has no embedding column")?;
    match field.data_type() {
        DataType::FixedSizeList(_, n) => Ok(n as usize),
        other => bail!("Lance embedding column is {other:?}, expected a fixed-size list of f32"),
    }
}

/// Every content id in the dataset's current version. Rows whose id is
/// not a SHA-256 (another writer broke the contract) join nothing; they are
/// counted in a warning.
pub async fn content_ids(ds: &Dataset) -> Result<HashSet<ContentId>> {
    Ok(row_ids_by_content(ds).await?.into_keys().collect())
}

/// The newest version of the dataset at `uri`.
pub async fn latest_version(uri: &str, storage: &Storage) -> Result<u64> {
    let ds = open_dataset(uri, storage)
        .await
        .with_context(|| format!("cannot open Lance dataset {uri}"))?;
    Ok(ds.version().version)
}

/// Appends `rows` (creating the dataset on first use) and returns the
/// dataset at its new version.
pub async fn append(
    uri: &str,
    storage: &Storage,
    existing: Option<Dataset>,
    rows: &[VectorRow],
    dim: usize,
) -> Result<Dataset> {
    let schema = schema(dim)?;
    let batch = rows_to_batch(&schema, rows, dim)?;
    let reader = || RecordBatchIterator::new(vec![Ok(batch.clone())], schema.clone());
    let mut ds = match existing {
        Some(ds) => ds,
        None => match create_or_open(uri, storage, &batch).await? {
            (ds, true) => return Ok(ds),
            (ds, false) => ds,
        },
    };
    ds.append(reader(), None)
        .await
        .with_context(|| format!("Lance append to {uri} failed"))?;
    Ok(ds)
}

/// Makes sure the dataset exists (empty if new), for writers that stage
/// fragments against it and commit later ([`write_fragments`]). Losing a
/// race to create it is fine: the winner's dataset is used.
pub async fn ensure(uri: &str, storage: &Storage, dim: usize) -> Result<Dataset> {
    if let Some(ds) = open(uri, storage).await? {
        return Ok(ds);
    }
    let empty = RecordBatch::new_empty(schema(dim)?);
    Ok(create_or_open(uri, storage, &empty).await?.0)
}

/// Creates the dataset holding `batch` (then `true`), or opens the one
/// another writer created first (then `false`: `batch` is not in it).
async fn create_or_open(
    uri: &str,
    storage: &Storage,
    batch: &RecordBatch,
) -> Result<(Dataset, bool)> {
    match create(uri, storage, batch).await {
        Ok(ds) => Ok((ds, true)),
        Err(e) => match open(uri, storage).await {
            Ok(Some(ds)) => Ok((ds, false)),
            _ => Err(e),
        },
    }
}

/// Writes `rows` as data files of `ds` without committing them: the
/// fragments to pass to [`commit_fragments`]. Until then no version of the
/// dataset lists them.
pub async fn write_fragments(
    ds: &Dataset,
    rows: &[VectorRow],
    dim: usize,
) -> Result<Vec<lance::table::format::Fragment>> {
    let schema = schema(dim)?;
    let batch = rows_to_batch(&schema, rows, dim)?;
    let params = WriteParams {
        mode: WriteMode::Append,
        ..Default::default()
    };
    let txn = lance::dataset::InsertBuilder::new(Arc::new(ds.clone()))
        .with_params(&params)
        .execute_uncommitted(vec![batch])
        .await
        .with_context(|| format!("cannot write Lance data files to {}", ds.uri()))?;
    match txn.operation {
        lance::dataset::transaction::Operation::Append { fragments } => Ok(fragments),
        other => bail!(
            kind: Internal,
            "staging rows in {} gave a {} operation, expected an append",
            ds.uri(),
            other.name()
        ),
    }
}

/// The data files (names below `data/`) the dataset's current version uses.
pub fn data_files(ds: &Dataset) -> HashSet<String> {
    ds.get_fragments()
        .iter()
        .flat_map(|f| f.metadata().files.iter().map(|d| d.path.clone()))
        .collect()
}

/// Commits staged `fragments` as one append; returns the new version.
pub async fn commit_fragments(
    ds: &Dataset,
    storage: &Storage,
    fragments: Vec<lance::table::format::Fragment>,
) -> Result<Dataset> {
    use lance::dataset::transaction::{Operation, TransactionBuilder};
    let txn =
        TransactionBuilder::new(ds.version().version, Operation::Append { fragments }).build();
    lance::dataset::CommitBuilder::new(Arc::new(ds.clone()))
        .with_store_params(storage.lance_params())
        .execute(txn)
        .await
        .with_context(|| format!("Lance commit of staged fragments to {} failed", ds.uri()))
}

/// Creates the dataset holding `batch`, or fails if someone else created
/// it meanwhile. Lance would otherwise rebase a losing create onto the
/// winner as an overwrite and drop the winner's rows; a commit with no
/// retries is a strict create instead.
async fn create(uri: &str, storage: &Storage, batch: &RecordBatch) -> Result<Dataset> {
    let params = WriteParams {
        mode: WriteMode::Create,
        // Stable row ids survive compaction, so a pinned view's row
        // addresses never shift under it.
        enable_stable_row_ids: true,
        store_params: Some(storage.lance_params()),
        ..Default::default()
    };
    let txn = lance::dataset::InsertBuilder::new(uri)
        .with_params(&params)
        .execute_uncommitted(vec![batch.clone()])
        .await
        .with_context(|| format!("cannot create Lance dataset {uri}"))?;
    lance::dataset::CommitBuilder::new(uri)
        .use_stable_row_ids(true)
        .with_store_params(storage.lance_params())
        .with_max_retries(0)
        .execute(txn)
        .await
        .with_context(|| format!("cannot create Lance dataset {uri}"))
}

fn rows_to_batch(schema: &Arc<Schema>, rows: &[VectorRow], dim: usize) -> Result<RecordBatch> {
    let mut flat = Vec::with_capacity(rows.len() * dim);
    for r in rows {
        if r.embedding.len() != dim {
            bail!(
                "sample {} has a {}-dimensional embedding, the table expects {dim}",
                r.content_id,
                r.embedding.len()
            );
        }
        flat.extend_from_slice(&r.embedding);
    }
    let item = Arc::new(Field::new("item", DataType::Float32, true));
    let embedding =
        FixedSizeListArray::try_new(item, dim as i32, Arc::new(Float32Array::from(flat)), None)?;
    let mut blobs = BlobArrayBuilder::new(rows.len());
    for r in rows {
        match &r.inline {
            Some(b) if b.is_empty() => blobs.push_empty()?,
            Some(b) => blobs.push_bytes(b)?,
            None => blobs.push_null()?,
        }
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.content_id.as_str()),
        )),
        Arc::new(embedding),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.uri.as_str()),
        )),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.media_type.as_str()),
        )),
        Arc::new(Int64Array::from_iter_values(
            rows.iter().map(|r| r.size_bytes),
        )),
        blobs.finish()?,
    ];
    debug_assert_eq!(columns[0].len(), rows.len());
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}

/// Stable row id of every content id in the dataset's current version.
/// A content id held by several rows (two ingests raced to append the same
/// bytes) maps to the first in row order, so rows appended later never
/// change what an existing id resolves to.
pub async fn row_ids_by_content(ds: &Dataset) -> Result<foldhash::HashMap<ContentId, u64>> {
    let mut scan = ds.scan();
    scan.project(&["content_id"])?.with_row_id();
    let mut stream = scan.try_into_stream().await?;
    let mut out = foldhash::HashMap::default();
    let mut bad = 0usize;
    while let Some(batch) = stream.try_next().await? {
        let ids = crate::catalog::string_column(&batch, "content_id")?;
        let rows = batch
            .column_by_name("_rowid")
            .and_then(|c| c.as_any().downcast_ref::<arrow_array::UInt64Array>())
            .context("Lance scan returned no _rowid column")?;
        for (id, row) in ids.iter().zip(rows.iter()) {
            match (id.map(ContentId::parse), row) {
                (Some(Ok(id)), Some(row)) => {
                    out.entry(id).or_insert(row);
                }
                _ => bad += 1,
            }
        }
    }
    if bad > 0 {
        tracing::warn!(
            rows = bad,
            "Lance rows without a valid content id (not a SHA-256 in hex) are ignored"
        );
    }
    Ok(out)
}

/// The `uri` each of `ids` has in the dataset (the first row's, as
/// [`row_ids_by_content`] picks).
pub async fn uris_of(
    ds: &Dataset,
    ids: &[ContentId],
) -> Result<std::collections::HashMap<ContentId, String>> {
    let mut out = std::collections::HashMap::new();
    for part in ids.chunks(256) {
        let list: Vec<String> = part.iter().map(|id| format!("'{id}'")).collect();
        let mut scan = ds.scan();
        scan.project(&["content_id", "uri"])?
            .filter(&format!("content_id IN ({})", list.join(",")))?;
        let mut stream = scan.try_into_stream().await?;
        while let Some(batch) = stream.try_next().await? {
            let cids = crate::catalog::string_column(&batch, "content_id")?;
            let uris = crate::catalog::string_column(&batch, "uri")?;
            for (id, uri) in cids.iter().zip(uris.iter()) {
                if let (Some(Ok(id)), Some(uri)) = (id.map(ContentId::parse), uri) {
                    out.entry(id).or_insert_with(|| uri.to_string());
                }
            }
        }
    }
    Ok(out)
}

/// Embeddings of the rows with the given stable row ids, in that order.
pub async fn take_embeddings(ds: &Dataset, row_ids: &[u64]) -> Result<Vec<Vec<f32>>> {
    let batch = ds
        .take_rows(row_ids, ds.schema().project(&[EMBEDDING_COLUMN])?)
        .await?;
    let list = batch
        .column(0)
        .as_any()
        .downcast_ref::<FixedSizeListArray>()
        .context("embedding column is not a fixed-size list")?;
    let values = list
        .values()
        .as_any()
        .downcast_ref::<Float32Array>()
        .context("embedding values are not float32")?;
    let d = list.value_length() as usize;
    Ok((0..list.len())
        .map(|i| values.values()[i * d..(i + 1) * d].to_vec())
        .collect())
}

/// The inline bytes of one row, or `None` when the row keeps them in the blob store.
pub async fn read_inline_blob(ds: &Arc<Dataset>, row_id: u64) -> Result<Option<bytes::Bytes>> {
    let mut blobs = ds.take_blobs(&[row_id], BLOB_COLUMN).await?;
    match blobs.pop().flatten() {
        Some(blob) => Ok(Some(blob.read().await?)),
        None => Ok(None),
    }
}
