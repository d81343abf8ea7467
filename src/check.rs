//! `lakemount check`: tests the invariants the concurrency model promises
//! ([`crate::ingest`]) on any snapshot, whoever wrote it:
//!
//! - no content id is listed twice;
//! - every row has its Lance row at the Lance version the snapshot goes
//!   with (recorded, or for other engines' snapshots the one a view would
//!   use, see [`crate::snapshot::open_lance`]);
//! - every row's `uri` passes the trust rule ([`crate::trust`]).

use std::collections::{HashMap, HashSet};

use crate::error::{Context, Result};
use arrow_array::Array;
use futures::TryStreamExt;
use iceberg::table::Table;

use crate::content_id::ContentId;
use crate::storage::Storage;
use crate::trust::UriTrust;

/// What `check` found in one snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SnapshotCheck {
    /// The snapshot.
    pub snapshot_id: i64,
    /// Rows it lists.
    pub rows: usize,
    /// The Lance version checked against, if the table has Lance rows.
    pub lance_version: Option<u64>,
    /// Content ids listed more than once.
    pub duplicates: Vec<String>,
    /// Content ids without a Lance row at `lance_version`.
    pub missing_in_lance: Vec<String>,
    /// (content id, uri) of rows whose URI fails the trust rule.
    pub untrusted: Vec<(String, String)>,
    /// Rows whose content id is not a SHA-256 (their text).
    pub bad_ids: Vec<String>,
}

impl SnapshotCheck {
    /// Whether the snapshot holds every invariant.
    pub fn ok(&self) -> bool {
        self.duplicates.is_empty()
            && self.missing_in_lance.is_empty()
            && self.untrusted.is_empty()
            && self.bad_ids.is_empty()
    }
}

/// Checks `snapshots` of `table` (every snapshot when empty), oldest first.
pub async fn check(
    table: &Table,
    snapshots: &[i64],
    trust: &UriTrust,
    storage: &Storage,
) -> Result<Vec<SnapshotCheck>> {
    let mut ids: Vec<(i64, i64)> = table
        .metadata()
        .snapshots()
        .map(|s| (s.timestamp_ms(), s.snapshot_id()))
        .filter(|(_, id)| snapshots.is_empty() || snapshots.contains(id))
        .collect();
    for s in snapshots {
        if !ids.iter().any(|(_, id)| id == s) {
            crate::error::bail!(
                "table {} has no snapshot {s} (run `lakemount snapshots` to list them)",
                table.identifier()
            );
        }
    }
    ids.sort();
    let mut lance_ids: HashMap<u64, HashSet<ContentId>> = HashMap::new();
    let mut out = Vec::with_capacity(ids.len());
    for (_, id) in ids {
        out.push(check_one(table, id, trust, storage, &mut lance_ids).await?);
    }
    Ok(out)
}

async fn check_one(
    table: &Table,
    snapshot_id: i64,
    trust: &UriTrust,
    storage: &Storage,
    lance_ids: &mut HashMap<u64, HashSet<ContentId>>,
) -> Result<SnapshotCheck> {
    let mut report = SnapshotCheck {
        snapshot_id,
        ..Default::default()
    };
    let lance = crate::snapshot::open_lance(table, snapshot_id, &UriTrust::any(), storage).await?;
    let known = match &lance {
        Some(l) => {
            report.lance_version = Some(l.version);
            if let std::collections::hash_map::Entry::Vacant(slot) = lance_ids.entry(l.version) {
                slot.insert(crate::vectors::content_ids(&l.dataset).await?);
            }
            lance_ids.get(&l.version)
        }
        None => None,
    };
    let mut seen: HashSet<ContentId> = HashSet::new();
    let mut dups: HashSet<ContentId> = HashSet::new();
    let mut stream = table
        .scan()
        .snapshot_id(snapshot_id)
        .select(["content_id", "uri"])
        .build()?
        .to_arrow()
        .await?;
    while let Some(batch) = stream
        .try_next()
        .await
        .with_context(|| format!("scanning snapshot {snapshot_id}"))?
    {
        let cids = crate::catalog::string_column(&batch, "content_id")?;
        let uris = crate::catalog::string_column(&batch, "uri")?;
        for i in 0..batch.num_rows() {
            report.rows += 1;
            let text = if cids.is_null(i) { "" } else { cids.value(i) };
            let Ok(id) = ContentId::parse(text) else {
                report.bad_ids.push(text.to_string());
                continue;
            };
            if !seen.insert(id) && dups.insert(id) {
                report.duplicates.push(id.hex());
            }
            if known.is_some_and(|k| !k.contains(&id)) {
                report.missing_in_lance.push(id.hex());
            }
            let uri = if uris.is_null(i) { "" } else { uris.value(i) };
            if !trust.allows(uri) {
                report.untrusted.push((id.hex(), uri.to_string()));
            }
        }
    }
    Ok(report)
}
