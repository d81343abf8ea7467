//! Which Lance version goes with an Iceberg snapshot: the rule every
//! reader of the pair follows (views at mount, `lakemount check`).
//!
//! Ingest records the Lance URI and version it committed in the Iceberg
//! snapshot's summary; a snapshot another engine committed records none,
//! and takes the newest Lance version no later than it (never older than
//! its nearest recording ancestor's).

use std::sync::Arc;

use crate::error::{Context, Result, bail};
use iceberg::table::Table;
use lance::Dataset;

use crate::catalog::{PROP_LANCE_URI, PROP_LANCE_VERSION};

/// The Lance dataset a view reads, checked out at the snapshot's version.
#[derive(Debug, Clone)]
pub struct LanceAt {
    /// Dataset location.
    pub uri: String,
    /// Version recorded by the snapshot (or its nearest ancestor).
    pub version: u64,
    /// The dataset at that version.
    pub dataset: Arc<Dataset>,
    /// Embedding dimension.
    pub dim: usize,
}

/// The Lance dataset a snapshot goes with, if the table has one: at the
/// version the snapshot records; for a snapshot another engine committed
/// (none recorded), at the newest Lance version committed no later than
/// the snapshot (and no older than the nearest ancestor's record), which
/// holds the Lance rows a writer appended before its Iceberg commit.
pub async fn open_lance(
    table: &Table,
    snapshot_id: i64,
    trust: &crate::trust::UriTrust,
    storage: &crate::storage::Storage,
) -> Result<Option<LanceAt>> {
    let meta = table.metadata();
    let Some(snapshot) = meta.snapshot_by_id(snapshot_id) else {
        bail!("table {} has no snapshot {snapshot_id}", table.identifier());
    };
    let mut cursor = Some(snapshot);
    let mut recorded: Option<(u64, Option<String>, bool)> = None;
    while let Some(s) = cursor {
        let props = &s.summary().additional_properties;
        if let Some(v) = props.get(PROP_LANCE_VERSION).and_then(|v| v.parse().ok()) {
            let own = s.snapshot_id() == snapshot_id;
            recorded = Some((v, props.get(PROP_LANCE_URI).cloned(), own));
            break;
        }
        cursor = s.parent_snapshot_id().and_then(|p| meta.snapshot_by_id(p));
    }
    let uri = recorded
        .as_ref()
        .and_then(|(_, u, _)| u.clone())
        .or_else(|| meta.properties().get(PROP_LANCE_URI).cloned());
    let Some(uri) = uri else {
        return Ok(None);
    };
    if !trust.allows_dataset(&uri) {
        bail!(
            "table {} belongs to another warehouse: its Lance dataset is {}, outside this warehouse ({}) \
             and the allowed prefixes; mount with the table's own --warehouse (or its own --table name \
             in a shared catalog), or pass --allow-uri-prefix if that location is meant to be read",
            table.identifier(),
            crate::trust::redact(&uri),
            trust
                .warehouse()
                .map_or("-".to_string(), |u| crate::trust::redact(u.as_str()))
        );
    }
    let ds = match crate::vectors::open(&uri, storage).await? {
        Some(ds) => ds,
        // Another engine's table may name a Lance dataset never written.
        None if recorded.is_none() => return Ok(None),
        None => bail!(
            "Lance dataset {uri}, which table {} records, does not exist",
            table.identifier()
        ),
    };
    let version = match recorded {
        Some((v, _, true)) => v,
        other => {
            let ancestor = other.map(|(v, _, _)| v);
            let floor = ancestor.unwrap_or(0);
            let by_time = ds
                .versions()
                .await?
                .into_iter()
                .filter(|v| v.timestamp.timestamp_millis() <= snapshot.timestamp_ms())
                .map(|v| v.version)
                .max();
            match by_time.map(|t| t.max(floor)).or(ancestor) {
                Some(v) => v,
                None => return Ok(None),
            }
        }
    };
    let ds = ds
        .checkout_version(version)
        .await
        .with_context(|| format!("Lance dataset {uri} has no version {version}"))?;
    let dim = crate::vectors::dim_of(&ds)?;
    Ok(Some(LanceAt {
        uri,
        version,
        dataset: Arc::new(ds),
        dim,
    }))
}
