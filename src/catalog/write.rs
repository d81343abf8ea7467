//! Appending rows to the samples table: rows to an Arrow batch shaped by the
//! table's current schema, partitioned Parquet files, one fast-append commit.

use std::collections::HashMap;
use std::sync::Arc;

use crate::error::{Context, Result, bail};
use arrow_array::{
    ArrayRef, BinaryArray, BooleanArray, Float32Array, Float64Array, Int32Array, Int64Array,
    LargeBinaryArray, RecordBatch, StringArray, TimestampMicrosecondArray, new_null_array,
};
use arrow_schema::{DataType, TimeUnit};
use iceberg::arrow::{RecordBatchPartitionSplitter, schema_to_arrow_schema};
use iceberg::spec::{DataFile, DataFileFormat};
use iceberg::table::Table;
use iceberg::transaction::{ApplyTransactionAction, Transaction};
use iceberg::writer::base_writer::data_file_writer::DataFileWriterBuilder;
use iceberg::writer::file_writer::ParquetWriterBuilder;
use iceberg::writer::file_writer::location_generator::{
    DefaultFileNameGenerator, DefaultLocationGenerator,
};
use iceberg::writer::file_writer::rolling_writer::RollingFileWriterBuilder;
use iceberg::writer::partitioning::PartitioningWriter;
use iceberg::writer::partitioning::fanout_writer::FanoutWriter;
use parquet::file::properties::WriterProperties;

/// A typed value of an extra column.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Value {
    /// A boolean.
    Bool(bool),
    /// An integer.
    Long(i64),
    /// A floating-point number.
    Double(f64),
    /// A string.
    Str(String),
}

/// One sample's row in the Iceberg table.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SampleRow {
    /// SHA-256 of the bytes, hex.
    pub content_id: String,
    /// Where the bytes are (blob store URI, or `lance://...` for inline blobs).
    pub uri: String,
    /// Class label.
    pub label: Option<String>,
    /// `train`, `val`, `test` or a manifest-given split.
    pub split: String,
    /// MIME type.
    pub media_type: String,
    /// Size of the bytes.
    pub size_bytes: i64,
    /// Where the sample came from.
    pub source: Option<String>,
    /// Commit time of the ingest batch, microseconds since the epoch, UTC.
    pub ingested_at_us: i64,
    /// Encoder that produced the embedding.
    pub embedding_model: String,
    /// Chunk digests of a sample larger than one chunk (see
    /// [`super::CHUNK_DIGESTS_COLUMN`]).
    pub chunk_sha256: Option<Vec<u8>>,
    /// Manifest extras; absent means null.
    pub extras: HashMap<String, Value>,
}

impl SampleRow {
    fn base_string(&self, name: &str) -> Option<Option<&str>> {
        Some(match name {
            "content_id" => Some(self.content_id.as_str()),
            "uri" => Some(self.uri.as_str()),
            "label" => self.label.as_deref(),
            "split" => Some(self.split.as_str()),
            "media_type" => Some(self.media_type.as_str()),
            "source" => self.source.as_deref(),
            "embedding_model" => Some(self.embedding_model.as_str()),
            _ => return None,
        })
    }
}

/// Builds an Arrow batch of `rows` in the table's current schema.
pub fn rows_to_batch(table: &Table, rows: &[SampleRow]) -> Result<RecordBatch> {
    let schema = Arc::new(schema_to_arrow_schema(table.metadata().current_schema())?);
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
    for field in schema.fields() {
        let name = field.name().as_str();
        let array: ArrayRef = match (name, field.data_type()) {
            ("size_bytes", DataType::Int64) => Arc::new(Int64Array::from_iter_values(
                rows.iter().map(|r| r.size_bytes),
            )),
            ("ingested_at", DataType::Timestamp(TimeUnit::Microsecond, tz)) => Arc::new(
                TimestampMicrosecondArray::from_iter_values(rows.iter().map(|r| r.ingested_at_us))
                    .with_timezone_opt(tz.clone()),
            ),
            (super::CHUNK_DIGESTS_COLUMN, DataType::LargeBinary) => Arc::new(
                LargeBinaryArray::from_iter(rows.iter().map(|r| r.chunk_sha256.as_deref())),
            ),
            (super::CHUNK_DIGESTS_COLUMN, DataType::Binary) => Arc::new(BinaryArray::from_iter(
                rows.iter().map(|r| r.chunk_sha256.as_deref()),
            )),
            (_, DataType::Utf8) if rows.first().and_then(|r| r.base_string(name)).is_some() => {
                Arc::new(StringArray::from_iter(
                    rows.iter().map(|r| r.base_string(name).flatten()),
                ))
            }
            (_, dt) => extra_array(name, dt, rows)?,
        };
        if !field.is_nullable() && array.null_count() > 0 {
            bail!("column {name} is required by the table but some rows have no value");
        }
        columns.push(array);
    }
    Ok(RecordBatch::try_new(schema, columns)?)
}

fn extra_array(name: &str, dt: &DataType, rows: &[SampleRow]) -> Result<ArrayRef> {
    let vals = || rows.iter().map(|r| r.extras.get(name));
    let mismatch = |v: &Value| {
        crate::error::err!("column {name} has type {dt:?} in the table, cannot store {v:?}")
    };
    Ok(match dt {
        DataType::Utf8 => {
            let mut out = Vec::with_capacity(rows.len());
            for v in vals() {
                out.push(match v {
                    None => None,
                    Some(Value::Str(s)) => Some(s.clone()),
                    Some(v) => return Err(mismatch(v)),
                });
            }
            Arc::new(StringArray::from(out))
        }
        DataType::Boolean => {
            let mut out = Vec::with_capacity(rows.len());
            for v in vals() {
                out.push(match v {
                    None => None,
                    Some(Value::Bool(b)) => Some(*b),
                    Some(v) => return Err(mismatch(v)),
                });
            }
            Arc::new(BooleanArray::from(out))
        }
        DataType::Int64 | DataType::Int32 => {
            let mut out = Vec::with_capacity(rows.len());
            for v in vals() {
                out.push(match v {
                    None => None,
                    Some(Value::Long(i)) => Some(*i),
                    Some(v) => return Err(mismatch(v)),
                });
            }
            if dt == &DataType::Int32 {
                let narrowed = out
                    .into_iter()
                    .map(|v| v.map(i32::try_from).transpose())
                    .collect::<Result<Vec<_>, _>>()
                    .with_context(|| {
                        format!("column {name} is int in the table; value out of range")
                    })?;
                Arc::new(Int32Array::from(narrowed))
            } else {
                Arc::new(Int64Array::from(out))
            }
        }
        DataType::Float64 | DataType::Float32 => {
            let mut out = Vec::with_capacity(rows.len());
            for v in vals() {
                out.push(match v {
                    None => None,
                    Some(Value::Double(d)) => Some(*d),
                    Some(Value::Long(i)) => Some(*i as f64),
                    Some(v) => return Err(mismatch(v)),
                });
            }
            if dt == &DataType::Float32 {
                Arc::new(Float32Array::from_iter(
                    out.into_iter().map(|v| v.map(|d| d as f32)),
                ))
            } else {
                Arc::new(Float64Array::from(out))
            }
        }
        other => {
            if let Some(v) = vals().flatten().next() {
                bail!(
                    "column {name} has type {other:?} in the table, which ingest cannot fill (got {v:?})"
                );
            }
            new_null_array(other, rows.len())
        }
    })
}

/// Writes `rows` as partitioned Parquet files in the table's location,
/// shaped by its current schema. Nothing is committed.
pub async fn write_files(table: &Table, rows: &[SampleRow]) -> Result<Vec<DataFile>> {
    let batch = rows_to_batch(table, rows)?;
    let metadata = table.metadata();
    let schema = metadata.current_schema().clone();
    let spec = metadata.default_partition_spec().clone();

    // Every write gets a unique file prefix: DefaultFileNameGenerator numbers
    // from 0 on each run and would overwrite files an older snapshot uses.
    let prefix = format!("lm-{}", uuid::Uuid::new_v4());
    let parquet = ParquetWriterBuilder::new(WriterProperties::builder().build(), schema.clone());
    let rolling = RollingFileWriterBuilder::new_with_default_file_size(
        parquet,
        table.file_io().clone(),
        DefaultLocationGenerator::new(metadata)?,
        DefaultFileNameGenerator::new(prefix, None, DataFileFormat::Parquet),
    );
    let mut writer = FanoutWriter::new(DataFileWriterBuilder::new(rolling));
    let splitter = RecordBatchPartitionSplitter::try_new_with_computed_values(schema, spec)?;
    for (key, part) in splitter.split(&batch)? {
        writer.write(key, part).await?;
    }
    Ok(writer.close().await?)
}

/// A transaction appending `files` to `table` with `snapshot_props` in the
/// new snapshot's summary.
pub fn fast_append(
    table: &Table,
    files: Vec<DataFile>,
    snapshot_props: HashMap<String, String>,
) -> Result<Transaction> {
    let tx = Transaction::new(table);
    Ok(tx
        .fast_append()
        .add_data_files(files)
        .set_snapshot_properties(snapshot_props)
        .apply(tx)?)
}
