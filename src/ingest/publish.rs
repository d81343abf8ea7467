//! The last stage of a batch: the Iceberg commit that publishes it, with
//! the concurrency rules of [`super`]'s model. The batch is checked against
//! the exact snapshot it commits on (duplicates dropped, the newest Lance
//! version recorded); a commit that loses a race is refused by the catalog
//! and the batch is checked again, at most [`MAX_ATTEMPTS`] times.

use std::collections::HashSet;
use std::sync::Arc;

use crate::error::{Context, Result, bail};
use iceberg::spec::{DataFile, PrimitiveType};
use iceberg::table::Table;
use iceberg::{Catalog, TableIdent};

use crate::catalog::commit::commit_on;
use crate::catalog::write::{SampleRow, fast_append, write_files};
use crate::catalog::{self, CHUNK_DIGESTS_COLUMN, ExtraType};
use crate::content_id::ContentId;

/// Commit attempts per batch before giving up.
pub const MAX_ATTEMPTS: usize = 12;

/// What the table lists, as of one snapshot, and the columns this ingest
/// still has to add.
pub struct Published {
    table: Table,
    /// Content ids the snapshot `read_at` lists.
    ids: HashSet<ContentId>,
    read_at: Option<Option<i64>>,
    /// Columns the batch rows need that the table may lack.
    columns: Vec<(String, PrimitiveType)>,
}

impl Published {
    /// Starts from `table`; `extras` are manifest columns the rows carry.
    pub fn new(table: Table, extras: Vec<(String, ExtraType)>) -> Self {
        let mut columns: Vec<(String, PrimitiveType)> =
            extras.into_iter().map(|(n, t)| (n, t.iceberg())).collect();
        columns.push((CHUNK_DIGESTS_COLUMN.to_string(), PrimitiveType::Binary));
        Self {
            table,
            ids: HashSet::new(),
            read_at: None,
            columns,
        }
    }

    /// Reloads the table and, if its current snapshot changed, what it lists.
    pub async fn refresh(&mut self, catalog: &dyn Catalog) -> Result<()> {
        self.table = catalog
            .load_table(self.table.identifier())
            .await
            .with_context(|| format!("cannot load table {}", self.table.identifier()))?;
        let now = self.table.metadata().current_snapshot_id();
        if self.read_at != Some(now) {
            self.ids = catalog::published_content_ids(&self.table)
                .await?
                .iter()
                .filter_map(|id| ContentId::parse(id).ok())
                .collect();
            self.read_at = Some(now);
        }
        Ok(())
    }

    /// The table as last loaded.
    pub fn table(&self) -> &Table {
        &self.table
    }

    /// Content ids already published.
    pub fn ids(&self) -> &HashSet<ContentId> {
        &self.ids
    }

    /// Whether `id` is already published.
    pub fn contains(&self, id: &ContentId) -> bool {
        self.ids.contains(id)
    }

    /// Adds the columns the rows need and the table lacks (one schema
    /// change). A column another writer added first is fine if its type
    /// matches.
    pub async fn ensure_columns(&mut self, catalog: &Arc<dyn Catalog>) -> Result<()> {
        let schema = self.table.metadata().current_schema();
        let missing: Vec<(String, PrimitiveType)> = self
            .columns
            .iter()
            .filter(|(name, _)| schema.field_by_name(name).is_none())
            .cloned()
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        match catalog::add_columns(catalog.as_ref(), &self.table, &missing).await {
            Ok(t) => self.table = t,
            // Another writer may have added them; the next check will tell.
            Err(e) => {
                self.refresh(catalog.as_ref()).await?;
                let schema = self.table.metadata().current_schema();
                if missing
                    .iter()
                    .any(|(n, _)| schema.field_by_name(n).is_none())
                {
                    return Err(e);
                }
            }
        }
        Ok(())
    }
}

/// One batch's rows and where its Lance rows are.
pub struct Batch {
    /// The rows, not yet deduplicated against concurrent writers.
    pub rows: Vec<SampleRow>,
    /// The Lance dataset holding their embeddings.
    pub lance_uri: String,
    /// How to reach it.
    pub storage: crate::storage::Storage,
    /// Data files already holding exactly `rows` (staged ones); used
    /// unless some rows turn out to be duplicates, then rewritten.
    pub files: Option<Vec<DataFile>>,
}

/// What publishing a batch did.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Content ids this commit published.
    pub added: HashSet<ContentId>,
    /// Rows dropped because another writer published them first.
    pub duplicates: usize,
    /// The new snapshot and the Lance version it records, if one was committed.
    pub committed: Option<(i64, u64)>,
}

/// Publishes `batch` in one Iceberg snapshot.
pub async fn publish(
    catalog: &Arc<dyn Catalog>,
    ident: &TableIdent,
    published: &mut Published,
    batch: Batch,
) -> Result<Outcome> {
    let Batch {
        mut rows,
        lance_uri,
        storage,
        mut files,
    } = batch;
    let mut outcome = Outcome::default();
    for attempt in 0..MAX_ATTEMPTS {
        if attempt > 0 {
            tokio::time::sleep(crate::catalog::backoff(attempt)).await;
            published.refresh(catalog.as_ref()).await?;
        }
        let before = rows.len();
        rows.retain(|r| ContentId::parse(&r.content_id).is_ok_and(|id| !published.contains(&id)));
        if rows.len() != before {
            outcome.duplicates += before - rows.len();
            files = None;
        }
        if rows.is_empty() {
            return Ok(outcome);
        }
        published.ensure_columns(catalog).await?;
        let data = match files.take() {
            Some(f) => f,
            None => {
                let now_us = chrono::Utc::now().timestamp_micros();
                for r in &mut rows {
                    r.ingested_at_us = now_us;
                }
                write_files(&published.table, &rows).await?
            }
        };
        // The newest Lance version holds every row appended so far, this
        // batch's and every earlier commit's.
        let lance_version = crate::vectors::latest_version(&lance_uri, &storage).await?;
        let props = super::snapshot_props(&lance_uri, lance_version);
        let tx = fast_append(&published.table, data.clone(), props)?;
        match commit_on(catalog, &published.table, tx).await {
            Ok(table) => {
                let snapshot = table.metadata().current_snapshot_id().unwrap_or_default();
                for r in &rows {
                    if let Ok(id) = ContentId::parse(&r.content_id) {
                        published.ids.insert(id);
                        outcome.added.insert(id);
                    }
                }
                published.read_at = Some(Some(snapshot));
                published.table = table;
                outcome.committed = Some((snapshot, lance_version));
                return Ok(outcome);
            }
            Err(e) if e.kind() == crate::error::ErrorKind::Conflict => {
                tracing::debug!(
                    attempt,
                    "commit conflict on {ident}; checking the batch again"
                );
                files = Some(data);
            }
            Err(e) => return Err(e),
        }
    }
    bail!(
        kind: Conflict,
        "gave up publishing a batch of {} samples to {ident} after {MAX_ATTEMPTS} attempts: \
         other writers kept committing first; nothing of this batch is visible, re-run the ingest to complete it",
        rows.len()
    )
}
