//! Iceberg: the table contract, table creation and evolution, appends, and
//! reading back what was published.
//!
//! The Iceberg table is the publish point of lakemount: a sample exists for
//! every view exactly when an Iceberg snapshot lists it. Each snapshot's
//! summary carries [`PROP_LANCE_VERSION`], the Lance dataset version whose
//! rows it goes with, so a pinned snapshot pins the embeddings and inline
//! bytes too.
//!
//! The schema below is a documented contract (README, "Table contract"):
//! field ids 1..=9 are fixed, manifest extras are appended as optional
//! columns by schema evolution, and other engines may write rows as long as
//! they keep those columns and types.

pub mod commit;
pub mod filter;
pub mod watched;
pub mod write;

use std::collections::{HashMap, HashSet};

use crate::error::{Context, Result, bail};
use arrow_array::{Array, StringArray};
use futures::TryStreamExt;
use iceberg::spec::{NestedField, PrimitiveType, Schema, Transform, Type, UnboundPartitionSpec};
use iceberg::table::Table;
use iceberg::transaction::{AddColumn, ApplyTransactionAction, Transaction};
use iceberg::{Catalog, TableCreation, TableIdent};

/// The pause before trying again after losing a race with another writer
/// at the catalog (a commit, the catalog's first open): jittered,
/// exponential, 50 ms doubling to at most 2 s.
pub fn backoff(attempt: usize) -> std::time::Duration {
    let base = 50u64 << attempt.min(6);
    let jitter = u64::from(uuid::Uuid::new_v4().as_bytes()[0]) * base / 255;
    std::time::Duration::from_millis((base + jitter).min(2_000))
}

/// Snapshot summary key: Lance dataset version that goes with the snapshot.
pub const PROP_LANCE_VERSION: &str = "lakemount.lance-version";
/// Snapshot summary key and table property: where the Lance dataset lives.
pub const PROP_LANCE_URI: &str = "lakemount.lance-uri";
/// Table property: embedding dimension of the Lance table.
pub const PROP_EMBEDDING_DIM: &str = "lakemount.embedding-dim";
/// Table property: the `embedding_model` of the table's first ingest; a
/// later ingest with another model is refused (tables made before this
/// property existed are checked by dimension only).
pub const PROP_EMBEDDING_MODEL: &str = "lakemount.embedding-model";

/// Column: SHA-256 of each 1 MiB chunk of a sample larger than one chunk,
/// concatenated (binary, null for smaller samples and rows other engines
/// wrote): what lets a mount verify every byte of a large sample it serves.
pub const CHUNK_DIGESTS_COLUMN: &str = "chunk_sha256";

/// Fixed columns of the samples table: (field id, name, type, required).
pub const BASE_COLUMNS: &[(i32, &str, PrimitiveType, bool)] = &[
    (1, "content_id", PrimitiveType::String, true),
    (2, "uri", PrimitiveType::String, true),
    (3, "label", PrimitiveType::String, false),
    (4, "split", PrimitiveType::String, true),
    (5, "media_type", PrimitiveType::String, true),
    (6, "size_bytes", PrimitiveType::Long, true),
    (7, "source", PrimitiveType::String, false),
    (8, "ingested_at", PrimitiveType::Timestamptz, true),
    (9, "embedding_model", PrimitiveType::String, true),
    (10, CHUNK_DIGESTS_COLUMN, PrimitiveType::Binary, false),
];

/// Whether `name` is one of the fixed columns.
pub fn is_base_column(name: &str) -> bool {
    BASE_COLUMNS.iter().any(|(_, n, _, _)| *n == name)
}

/// Type of an extra (manifest-provided) column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExtraType {
    /// Iceberg `boolean`.
    Boolean,
    /// Iceberg `long`.
    Long,
    /// Iceberg `double`.
    Double,
    /// Iceberg `string`.
    String,
}

impl ExtraType {
    /// The Iceberg type.
    pub fn iceberg(self) -> PrimitiveType {
        match self {
            ExtraType::Boolean => PrimitiveType::Boolean,
            ExtraType::Long => PrimitiveType::Long,
            ExtraType::Double => PrimitiveType::Double,
            ExtraType::String => PrimitiveType::String,
        }
    }

    /// The extra type an existing Iceberg column has, if it is one we write.
    pub fn from_iceberg(t: &Type) -> Option<Self> {
        match t {
            Type::Primitive(PrimitiveType::Boolean) => Some(ExtraType::Boolean),
            Type::Primitive(PrimitiveType::Long | PrimitiveType::Int) => Some(ExtraType::Long),
            Type::Primitive(PrimitiveType::Double | PrimitiveType::Float) => {
                Some(ExtraType::Double)
            }
            Type::Primitive(PrimitiveType::String) => Some(ExtraType::String),
            _ => None,
        }
    }

    /// Lower-case name used in messages and docs.
    pub fn name(self) -> &'static str {
        match self {
            ExtraType::Boolean => "boolean",
            ExtraType::Long => "long",
            ExtraType::Double => "double",
            ExtraType::String => "string",
        }
    }
}

/// The schema of a new samples table.
pub fn base_schema() -> Result<Schema> {
    let fields = BASE_COLUMNS
        .iter()
        .map(|(id, name, ty, required)| {
            let t = Type::Primitive(ty.clone());
            if *required {
                NestedField::required(*id, *name, t).into()
            } else {
                NestedField::optional(*id, *name, t).into()
            }
        })
        .collect::<Vec<_>>();
    Ok(Schema::builder().with_fields(fields).build()?)
}

/// Partitioning: `split` (identity) and `day(ingested_at)`, the two filters
/// nearly every spec uses, so a scan prunes whole files for them.
pub fn partition_spec() -> Result<UnboundPartitionSpec> {
    Ok(UnboundPartitionSpec::builder()
        .add_partition_field(4, "split", Transform::Identity)?
        .add_partition_field(8, "ingested_day", Transform::Day)?
        .build())
}

/// Loads the table, creating its namespace and the table itself when
/// absent. Two ingests creating it at once is fine: the one that loses the
/// race loads what the other created.
pub async fn ensure_table(
    catalog: &dyn Catalog,
    ident: &TableIdent,
    location: Option<&str>,
    lance_uri: &str,
    dim: usize,
    model: &str,
) -> Result<Table> {
    if !catalog.table_exists(ident).await? {
        let ns = ident.namespace();
        if !catalog.namespace_exists(ns).await?
            && let Err(e) = catalog.create_namespace(ns, HashMap::new()).await
            && !catalog.namespace_exists(ns).await?
        {
            return Err(e).with_context(|| format!("cannot create namespace {ns:?}"));
        }
        let creation = |location: Option<&str>| -> Result<TableCreation> {
            Ok(TableCreation::builder()
                .name(ident.name().to_string())
                .location_opt(location.map(str::to_string))
                .schema(base_schema()?)
                .partition_spec(partition_spec()?)
                .properties([
                    (PROP_LANCE_URI.to_string(), lance_uri.to_string()),
                    (PROP_EMBEDDING_DIM.to_string(), dim.to_string()),
                    (PROP_EMBEDDING_MODEL.to_string(), model.to_string()),
                    ("write.format.default".to_string(), "parquet".to_string()),
                ])
                .build())
        };
        let mut result = catalog.create_table(ns, creation(location)?).await;
        if result.is_err() && location.is_some() && !catalog.table_exists(ident).await? {
            // A REST catalog may insist on placing tables in its own storage.
            tracing::info!("the catalog refused the location {location:?}; letting it choose");
            result = catalog.create_table(ns, creation(None)?).await;
        }
        match result {
            Ok(t) => return Ok(t),
            Err(e) if !catalog.table_exists(ident).await.unwrap_or(false) => {
                return Err(e).with_context(|| format!("cannot create Iceberg table {ident}"));
            }
            Err(_) => {}
        }
    }
    let table = catalog.load_table(ident).await?;
    check_home(&table, lance_uri)?;
    if let Some(existing) = table.metadata().properties().get(PROP_EMBEDDING_MODEL)
        && existing != model
    {
        bail!(
            "table {ident} holds embeddings from `{existing}`, but this ingest embeds with `{model}`; \
             a table never mixes models: ingest with the --encoder it was made with, or into another --table"
        );
    }
    if let Some(existing) = table.metadata().properties().get(PROP_EMBEDDING_DIM)
        && existing != &dim.to_string()
    {
        bail!(
            "table {ident} holds {existing}-dimensional embeddings, but this ingest produces {dim}; \
             use a different --table or an encoder of the same dimension"
        );
    }
    Ok(table)
}

/// Refuses a table that belongs to another warehouse: two warehouses
/// pointed at one shared catalog and one table name would otherwise each
/// write their own Lance dataset under the same table, and every snapshot
/// of the other would lose its embeddings. The table's home is the Lance
/// dataset it records (the table property, else its newest snapshot's).
pub fn check_home(table: &Table, lance_uri: &str) -> Result<()> {
    let meta = table.metadata();
    let recorded = meta.properties().get(PROP_LANCE_URI).cloned().or_else(|| {
        meta.current_snapshot().and_then(|s| {
            s.summary()
                .additional_properties
                .get(PROP_LANCE_URI)
                .cloned()
        })
    });
    let Some(recorded) = recorded else {
        return Ok(());
    };
    if same_location(&recorded, lance_uri) {
        return Ok(());
    }
    bail!(
        "table {} belongs to another warehouse: its Lance dataset is {}, but this warehouse's is {}; \
         a catalog shared by several warehouses needs a table name per warehouse (--table), \
         or use the warehouse the table was made in (--warehouse)",
        table.identifier(),
        crate::trust::redact(&recorded),
        crate::trust::redact(lance_uri)
    )
}

/// Whether two dataset locations name the same place: equal, or local
/// paths whose folders are the same directory.
fn same_location(a: &str, b: &str) -> bool {
    if a.trim_end_matches('/') == b.trim_end_matches('/') {
        return true;
    }
    let local = |s: &str| -> Option<std::path::PathBuf> {
        let p = if s.starts_with("file://") {
            url::Url::parse(s).ok()?.to_file_path().ok()?
        } else if s.contains("://") {
            return None;
        } else {
            std::path::PathBuf::from(s)
        };
        let parent = p.parent()?.canonicalize().ok()?;
        Some(parent.join(p.file_name()?))
    };
    matches!((local(a), local(b)), (Some(x), Some(y)) if x == y)
}

/// Adds optional columns to the table's schema (one schema change).
pub async fn add_columns(
    catalog: &dyn Catalog,
    table: &Table,
    columns: &[(String, PrimitiveType)],
) -> Result<Table> {
    if columns.is_empty() {
        return Ok(table.clone());
    }
    let tx = Transaction::new(table);
    let mut action = tx.update_schema();
    for (name, ty) in columns {
        action = action.add_column(AddColumn::optional(name, Type::Primitive(ty.clone())));
    }
    let tx = action.apply(tx)?;
    tx.commit(catalog)
        .await
        .with_context(|| format!("cannot add columns to {}", table.identifier()))
}

/// Content ids listed by the table's current snapshot.
pub async fn published_content_ids(table: &Table) -> Result<HashSet<String>> {
    let mut ids = HashSet::new();
    if table.metadata().current_snapshot().is_none() {
        return Ok(ids);
    }
    let mut stream = table
        .scan()
        .select(["content_id"])
        .build()?
        .to_arrow()
        .await?;
    while let Some(batch) = stream.try_next().await? {
        ids.extend(
            string_column(&batch, "content_id")?
                .iter()
                .flatten()
                .map(str::to_string),
        );
    }
    Ok(ids)
}

/// One row of `lakemount snapshots`.
#[derive(Debug, Clone, PartialEq)]
pub struct SnapshotInfo {
    /// Iceberg snapshot id: what a spec pins.
    pub snapshot_id: i64,
    /// Commit time, milliseconds since the epoch.
    pub timestamp_ms: i64,
    /// Rows the snapshot added (from its summary), if recorded.
    pub added_rows: Option<u64>,
    /// Total rows at this snapshot, if recorded.
    pub total_rows: Option<u64>,
    /// Lance version recorded by lakemount; `None` for snapshots other engines wrote.
    pub lance_version: Option<u64>,
}

/// The table's snapshots, newest first.
pub fn snapshots(table: &Table) -> Vec<SnapshotInfo> {
    let mut out: Vec<SnapshotInfo> = table
        .metadata()
        .snapshots()
        .map(|s| {
            let props = &s.summary().additional_properties;
            let num = |k: &str| props.get(k).and_then(|v| v.parse().ok());
            SnapshotInfo {
                snapshot_id: s.snapshot_id(),
                timestamp_ms: s.timestamp_ms(),
                added_rows: num("added-records"),
                total_rows: num("total-records"),
                lance_version: num(PROP_LANCE_VERSION),
            }
        })
        .collect();
    out.sort_by(|a, b| {
        b.timestamp_ms
            .cmp(&a.timestamp_ms)
            .then(b.snapshot_id.cmp(&a.snapshot_id))
    });
    out
}

/// The table's columns as (name, extra type) for every column an ingest may
/// fill from a manifest; base columns are excluded.
pub fn extra_columns(table: &Table) -> HashMap<String, Option<ExtraType>> {
    table
        .metadata()
        .current_schema()
        .as_struct()
        .fields()
        .iter()
        .filter(|f| !is_base_column(&f.name))
        .map(|f| (f.name.clone(), ExtraType::from_iceberg(&f.field_type)))
        .collect()
}

/// Checks that a string array column is what the contract says (used by readers).
pub fn string_column<'a>(
    batch: &'a arrow_array::RecordBatch,
    name: &str,
) -> Result<&'a StringArray> {
    let col = batch
        .column_by_name(name)
        .with_context(|| format!("column {name} missing"))?;
    col.as_any()
        .downcast_ref::<StringArray>()
        .with_context(|| format!("column {name} is {:?}, expected string", col.data_type()))
}
