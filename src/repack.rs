//! `lakemount repack`: an existing table's small samples, each its own
//! object, gathered into packs ([`crate::packs`]) as a new snapshot.
//!
//! Iceberg rows are never rewritten (iceberg-rust appends only, and a
//! pinned snapshot must keep reading what it always read). Instead repack
//! writes the packs, then a pack index (Parquet: content id, pack, offset,
//! length) under `<warehouse>/packs/index/`, then commits a snapshot with
//! no new rows whose summary lists every pack index so far
//! ([`crate::packs::PROP_PACK_INDEX`]) and the Lance version its parent
//! records. Views of that snapshot and of later ones read repacked
//! samples from their packs (verified against the content id as always)
//! and show the rows as the table has them; views of earlier snapshots
//! read the objects they always read. Nothing is deleted.

use std::collections::HashSet;
use std::sync::Arc;

use crate::error::{Context, Result, bail};
use futures::{StreamExt, TryStreamExt};

use crate::catalog::{PROP_LANCE_URI, PROP_LANCE_VERSION};
use crate::content_id::ContentId;
use crate::packs::{self, IndexEntry};
use crate::source::{LakeSource, Source};
use crate::view::SampleLoc;
use crate::warehouse::Warehouse;

/// What a repack did.
#[derive(Debug, Default, Clone)]
pub struct RepackReport {
    /// Samples gathered into packs.
    pub packed: usize,
    /// Their bytes.
    pub bytes: u64,
    /// Packs written.
    pub packs: usize,
    /// Samples left as they were, and why (unreadable, bytes not their id).
    pub skipped: Vec<(ContentId, String)>,
    /// The snapshot committed, if any.
    pub snapshot_id: Option<i64>,
}

/// Samples read at once.
const PARALLEL: usize = 16;

/// Repacks the samples of the table's current snapshot that are their own
/// objects of at most [`packs::THRESHOLD`] bytes inside the warehouse.
pub async fn run(wh: &Warehouse, pack_size: u64) -> Result<RepackReport> {
    let table = wh
        .catalog
        .load_table(&wh.table)
        .await
        .with_context(|| format!("cannot load table {}", wh.table))?;
    let Some(snapshot) = table.metadata().current_snapshot() else {
        bail!("table {} has no snapshot yet: ingest first", wh.table);
    };
    let sid = snapshot.snapshot_id();
    let rows = rows_at(&table, sid).await?;
    let ids: HashSet<ContentId> = rows.iter().map(|r| r.0).collect();
    let already = packs::repacked(&table, sid, &ids, &wh.trust, &wh.storage).await?;
    let candidates: Vec<(ContentId, String, u64)> = rows
        .into_iter()
        .filter(|(id, uri, size)| {
            *size > 0
                && *size <= packs::THRESHOLD
                && packs::split(uri).1.is_none()
                && !uri.starts_with("lance:")
                && wh.trust.allows(uri)
                && !already.contains_key(id)
        })
        .collect();
    let mut report = RepackReport::default();
    if candidates.is_empty() {
        return Ok(report);
    }
    let source = Arc::new(
        LakeSource::new(&wh.trust.local_roots(), wh.storage.clone())
            .context("cannot open the warehouse for reading")?,
    );
    let mut entries = Vec::with_capacity(candidates.len());
    // A pack's worth at a time: read, verify, pack, store.
    let mut start = 0;
    while start < candidates.len() {
        let mut end = start;
        let mut bytes = 0;
        while end < candidates.len() && (end == start || bytes + candidates[end].2 <= pack_size) {
            bytes += candidates[end].2;
            end += 1;
        }
        let read: Vec<(ContentId, Result<bytes::Bytes, String>)> =
            futures::stream::iter(candidates[start..end].iter().cloned())
                .map(|(id, uri, size)| {
                    let source = source.clone();
                    async move {
                        let loc = SampleLoc {
                            content_id: id,
                            size,
                            uri,
                            lance: None,
                            chunk_digests: None,
                            trusted: true,
                        };
                        let got = source.read_range(&loc, 0..size).await;
                        let checked = match got {
                            Ok(b) if b.len() as u64 == size && id.matches(&b) => Ok(b),
                            Ok(_) => Err("its bytes do not hash to its content id".to_string()),
                            Err(e) => Err(e.to_string()),
                        };
                        (id, checked)
                    }
                })
                .buffered(PARALLEL)
                .collect()
                .await;
        let mut members: Vec<(ContentId, bytes::Bytes)> = Vec::new();
        for (id, r) in read {
            match r {
                Ok(b) => members.push((id, b)),
                Err(why) => report.skipped.push((id, why)),
            }
        }
        let refs: Vec<(ContentId, &[u8])> = members.iter().map(|(i, b)| (*i, b.as_ref())).collect();
        for pack in packs::build(&refs, pack_size) {
            let uri = wh
                .blobs
                .put_pack(&pack)
                .await
                .with_context(|| format!("cannot store pack {}", pack.name))?;
            for (id, offset, length) in &pack.members {
                entries.push(IndexEntry {
                    id: *id,
                    object: uri.clone(),
                    offset: *offset,
                    length: *length,
                });
                report.bytes += length;
            }
            report.packs += 1;
        }
        tracing::info!("repack: {end} of {} samples read", candidates.len());
        start = end;
    }
    report.packed = entries.len();
    if entries.is_empty() {
        return Ok(report);
    }
    let index = wh
        .blobs
        .put_file(
            &format!("packs/index/{}.parquet", uuid::Uuid::new_v4()),
            packs::write_index(&entries)?,
        )
        .await
        .context("cannot store the pack index")?;
    let mut list = packs::index_uris(&table, sid);
    list.push(index);
    let mut props =
        std::collections::HashMap::from([(packs::PROP_PACK_INDEX.to_string(), list.join(","))]);
    // The new snapshot goes with the Lance version its parent does.
    let meta = table.metadata();
    let mut cursor = Some(snapshot);
    while let Some(s) = cursor {
        let p = &s.summary().additional_properties;
        if let Some(v) = p.get(PROP_LANCE_VERSION) {
            props.insert(PROP_LANCE_VERSION.to_string(), v.clone());
            if let Some(u) = p.get(PROP_LANCE_URI) {
                props.insert(PROP_LANCE_URI.to_string(), u.clone());
            }
            break;
        }
        cursor = s.parent_snapshot_id().and_then(|p| meta.snapshot_by_id(p));
    }
    let tx = crate::catalog::write::fast_append(&table, Vec::new(), props)?;
    let committed = crate::catalog::commit::commit_on(&wh.catalog, &table, tx)
        .await
        .context(
            "the repack snapshot was not committed (the packs are written; re-run to publish them)",
        )?;
    report.snapshot_id = committed
        .metadata()
        .current_snapshot()
        .map(|s| s.snapshot_id());
    Ok(report)
}

/// (content id, uri, size) of every row of snapshot `sid`.
async fn rows_at(table: &iceberg::table::Table, sid: i64) -> Result<Vec<(ContentId, String, u64)>> {
    use arrow_array::{Array, Int64Array};
    let mut stream = table
        .scan()
        .snapshot_id(sid)
        .select(["content_id", "uri", "size_bytes"])
        .build()?
        .to_arrow()
        .await?;
    let mut out = Vec::new();
    while let Some(batch) = stream.try_next().await? {
        let ids = crate::catalog::string_column(&batch, "content_id")?;
        let uris = crate::catalog::string_column(&batch, "uri")?;
        let sizes = batch
            .column_by_name("size_bytes")
            .and_then(|c| c.as_any().downcast_ref::<Int64Array>())
            .context("size_bytes is not a long")?;
        for k in 0..batch.num_rows() {
            if ids.is_null(k) || uris.is_null(k) || sizes.is_null(k) {
                continue;
            }
            if let Ok(id) = ContentId::parse(ids.value(k)) {
                out.push((id, uris.value(k).to_string(), sizes.value(k).max(0) as u64));
            }
        }
    }
    Ok(out)
}
