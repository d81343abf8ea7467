//! [`resolve()`]: a spec to a [`View`], as a list of steps. Each step is
//! in its own module; this one only sequences them and assembles the view.

use std::sync::OnceLock;

use crate::error::{Context, Result};
use arrow_array::{Array, Int64Array};
use iceberg::Catalog;

use super::arrange::{Arranged, Extra};
use super::compact::{BlobUris, PathArena};
use super::finish::{Resolver, epoch_plan, epochs_record, measure, untrusted};
use super::place::{LayoutInput, sort_by_path};
use super::render::{Columns, QueryRecord, Receipt, Requested, SidecarsRecord, SimilarRecord};
use super::scan::Rows;
use super::{Entries, LanceAt, Sample, SearchInfo, View};
use crate::similar;
use crate::spec::{Query, SnapshotSel, Spec};
use crate::warehouse::parse_table_ident;

/// Resolves `spec`: from its materialized index when it is pinned with
/// one, else from the table. Every error names the spec file and key.
pub async fn resolve(spec: &Spec, r: &Resolver<'_>) -> Result<View> {
    if let Some(m) = spec.pinned.as_ref().and_then(|p| p.materialized.as_ref()) {
        return super::materialize::load(spec, m, r).await;
    }
    resolve_from_table(spec, r).await
}

/// Resolves `spec` from its table, ignoring any materialized index.
pub async fn resolve_from_table(spec: &Spec, r: &Resolver<'_>) -> Result<View> {
    let mut phase = Phases::new(&spec.name);
    let table = load_table(spec, r.catalog).await?;
    let (snapshot, schema) = super::scan::snapshot(spec, &table)?;
    super::scan::check_layout(spec, &schema, r.rank.is_some())?;
    let rows = super::scan::rows(spec, &table, snapshot.snapshot_id(), &schema).await?;
    phase.done("scan");
    let lance = open_lance(spec, &table, snapshot.snapshot_id(), r).await?;
    let lance_rows = match &lance {
        Some(l) => crate::vectors::row_ids_by_content(&l.dataset).await?,
        None => foldhash::HashMap::default(),
    };
    let chosen = select(spec, r, &rows, lance.as_ref(), &lance_rows).await?;
    phase.done("select");

    let npy = |k: usize| {
        spec.sidecars.embedding && lance_rows.contains_key(&rows.ids[chosen.rows[k] as usize])
    };
    let input = LayoutInput {
        rows: &rows,
        selected: &chosen.rows,
        ranks: &chosen.ranks,
        extra: &chosen.extra,
        npy: &npy,
    };
    let placed = super::place::place(spec, &input)?;
    let by_path = sort_by_path(&placed);
    // The listing follows the arranged order in views that have one.
    let order = chosen.ordered.then(|| {
        let mut order = vec![0u32; by_path.len()];
        for (n, &k) in by_path.iter().enumerate() {
            order[k as usize] = n as u32;
        }
        order
    });
    phase.done("place");

    // Path order from here on: samples, columns and ranks all follow it.
    let mut entries = entries_in_path_order(&rows, &chosen, &by_path, &placed, spec)?;
    drop(placed);
    for s in &mut entries.samples {
        s.lance_row = lance_rows.get(&s.content_id).copied();
    }
    drop(lance_rows);
    repacked(&table, snapshot.snapshot_id(), &mut entries, r).await?;
    entries.untrusted = untrusted(&entries, r.trust);
    entries.npy_len = lance.as_ref().map_or(0, |l| {
        crate::npy::write_vector(&vec![0.0; l.dim]).len() as u64
    });
    let listing = measure(spec, &mut entries, order)?;
    phase.done("measure");
    let epochs = epoch_plan(spec, r, &entries)?;
    let receipt = receipt(
        spec,
        &snapshot,
        lance.as_ref(),
        chosen.search.as_ref(),
        entries.samples.len(),
        r,
        epochs.as_ref(),
    )?
    .to_json();
    Ok(View {
        name: spec.name.clone(),
        snapshot_id: snapshot.snapshot_id(),
        snapshot_ms: snapshot.timestamp_ms(),
        lance,
        search: chosen.search,
        epochs,
        receipt_len: super::render::receipt_size(&receipt),
        receipt,
        receipt_bytes: OnceLock::new(),
        pack_members: OnceLock::new(),
        entries,
        listing,
    })
}

/// The rows a view shows, in placement order.
struct Chosen {
    /// Scan rows: content-id order, rank order in a similarity view,
    /// cluster order in a diverse one, then as `order` and `shard` say.
    rows: Vec<u32>,
    /// (rank, distance) per row in a similarity view, else empty.
    ranks: Vec<(u32, f32)>,
    /// Positions, shards and clusters per row.
    extra: Extra,
    search: Option<SearchInfo>,
    /// Whether the listing follows `rows` (else it is in path order).
    ordered: bool,
}

/// One row per content id; the similarity search or the diverse sample if
/// the spec has one; the limit; then the order and the shards.
async fn select(
    spec: &Spec,
    r: &Resolver<'_>,
    rows: &Rows,
    lance: Option<&LanceAt>,
    lance_rows: &foldhash::HashMap<crate::content_id::ContentId, u64>,
) -> Result<Chosen> {
    let by_id = rows.by_content_id();
    let needs_lance = |key: &str| {
        lance.ok_or_else(|| {
            spec.error(
                key,
                format!("table {} has no Lance dataset with embeddings", spec.table),
            )
        })
    };
    let (mut a, search) = if let Some(sim) = &spec.similar {
        let l = needs_lance("similar")?;
        let ranked = super::nearest::nearest(spec, sim, l, lance_rows, rows, &by_id, r).await?;
        let a = Arranged {
            rows: ranked.rows,
            ranks: ranked.ranks,
            extra: Extra::default(),
        };
        (a, Some(ranked.search))
    } else if let Some(d) = spec.diverse {
        let l = needs_lance("select")?;
        let a = super::arrange::diverse(spec, d, l, lance_rows, rows, &by_id).await?;
        (a, None)
    } else {
        let mut extra = Extra::default();
        if !rows.sources.is_empty() {
            extra.sources = by_id
                .iter()
                .map(|&r| u32::from(rows.sources[r as usize]))
                .collect();
        }
        let a = Arranged {
            rows: by_id,
            ranks: Vec::new(),
            extra,
        };
        (a, None)
    };
    if let Some(limit) = spec.limit {
        a.rows.truncate(limit);
        a.ranks.truncate(limit);
        a.extra.clusters.truncate(limit);
    }
    // Epoch views are ordered and dealt per epoch, when listed; their
    // base order is the selection's, or the `order.by` sort.
    let ordered = if spec.epochs.is_some() {
        if let Some(crate::spec::Order::By(keys)) = &spec.order {
            a = super::arrange::sort_by_keys(spec, rows, a, keys)?;
            true
        } else {
            false
        }
    } else {
        spec.is_ordered(r.rank.is_some())
    };
    if ordered && spec.epochs.is_none() {
        let keep = r.rank.filter(|_| !r.every_rank).map(|m| m.rank);
        a = super::arrange::arrange(spec, rows, a, r.rank, keep)?;
    }
    Ok(Chosen {
        rows: a.rows,
        ranks: a.ranks,
        extra: a.extra,
        search,
        ordered,
    })
}

async fn load_table(spec: &Spec, catalog: &dyn Catalog) -> Result<iceberg::table::Table> {
    let ident = parse_table_ident(&spec.table)?;
    let exists = catalog
        .table_exists(&ident)
        .await
        .with_context(|| format!("{}: cannot reach the catalog", spec.at("table")))?;
    if !exists {
        return Err(spec.error("table", format!("table {} does not exist in the catalog (ingest into it first, or fix --warehouse/--catalog)", spec.table)));
    }
    Ok(catalog.load_table(&ident).await?)
}

/// The Lance table at the snapshot's version, checked against the pin and
/// the trust rule (its location comes from the table, which is untrusted).
async fn open_lance(
    spec: &Spec,
    table: &iceberg::table::Table,
    snapshot_id: i64,
    r: &Resolver<'_>,
) -> Result<Option<LanceAt>> {
    let lance = crate::snapshot::open_lance(table, snapshot_id, r.trust, r.storage).await?;
    if let (Some(pinned), Some(l)) = (spec.pinned.as_ref().and_then(|p| p.lance_version), &lance)
        && pinned != l.version
    {
        return Err(spec.error("pinned", format!("lance_version {pinned} does not match the Lance version {} that snapshot {snapshot_id} records", l.version)));
    }
    Ok(lance)
}

/// The selected rows as samples in path order, with their columns.
fn entries_in_path_order(
    rows: &Rows,
    chosen: &Chosen,
    by_path: &[u32],
    placed: &super::place::Placed,
    spec: &Spec,
) -> Result<Entries> {
    let (selected, ranks) = (&chosen.rows, &chosen.ranks);
    let sizes = rows
        .column("size_bytes")
        .and_then(|c| c.as_any().downcast_ref::<Int64Array>());
    let mut paths = PathArena::default();
    let mut uris = BlobUris::default();
    let mut samples = Vec::with_capacity(by_path.len());
    let mut digests = Vec::new();
    for (n, &k) in by_path.iter().enumerate() {
        let r = selected[k as usize] as usize;
        let id = rows.ids[r];
        let size = sizes.map_or(0, |a| {
            if a.is_null(r) {
                0
            } else {
                a.value(r).max(0) as u64
            }
        });
        if let Ok(d) = rows
            .digests
            .binary_search_by_key(&(r as u32), |(row, _)| *row)
        {
            digests.push((n as u32, rows.digests[d].1.clone()));
        }
        samples.push(Sample {
            content_id: id,
            size,
            lance_row: None,
            path: paths.push(placed.path(k as usize), &id)?,
            uri: uris.copy(&rows.uris, rows.uri_refs[r]),
            json_len: 0,
            npy: placed.npy(k as usize),
        });
    }
    paths.shrink_to_fit();
    uris.shrink_to_fit();
    let final_rows: Vec<u32> = by_path.iter().map(|&k| selected[k as usize]).collect();
    let ranks: Vec<(u32, f32)> = if ranks.is_empty() {
        Vec::new()
    } else {
        by_path.iter().map(|&k| ranks[k as usize]).collect()
    };
    let extra = chosen.extra.take(by_path);
    let columns = Columns::new(
        rows.compact(&final_rows, spec.sidecars.metadata)?,
        !ranks.is_empty(),
        &extra,
    );
    Ok(Entries {
        samples,
        paths,
        uris,
        columns,
        ranks,
        extra,
        npy_len: 0,
        digests,
        untrusted: Vec::new(),
        source_names: spec.sources.iter().map(|s| s.name.clone()).collect(),
        read_from: Vec::new(),
    })
}

/// Where `lakemount repack` put the view's samples, if the snapshot (or
/// an ancestor) records pack indexes: read from there, shown as the table
/// says.
async fn repacked(
    table: &iceberg::table::Table,
    snapshot_id: i64,
    entries: &mut Entries,
    r: &Resolver<'_>,
) -> Result<()> {
    if crate::packs::index_uris(table, snapshot_id).is_empty() {
        return Ok(());
    }
    let ids: std::collections::HashSet<_> = entries.samples.iter().map(|s| s.content_id).collect();
    let found = crate::packs::repacked(table, snapshot_id, &ids, r.trust, r.storage).await?;
    let mut from = Vec::new();
    for (n, s) in entries.samples.iter().enumerate() {
        if let Some(e) = found.get(&s.content_id)
            && e.length == s.size
        {
            let uri = crate::packs::range_uri(&e.object, e.offset, e.length);
            from.push((n as u32, entries.uris.intern(&uri, &s.content_id)));
        }
    }
    from.shrink_to_fit();
    entries.read_from = from;
    entries.uris.shrink_to_fit();
    Ok(())
}

fn receipt(
    spec: &Spec,
    snapshot: &iceberg::spec::Snapshot,
    lance: Option<&LanceAt>,
    search: Option<&SearchInfo>,
    row_count: usize,
    r: &Resolver<'_>,
    epochs: Option<&super::epochs::EpochPlan>,
) -> Result<Receipt> {
    use serde_json::json;
    let (rank, encoder) = (r.rank, r.encoder);
    let epochs_record = epochs.map(|p| epochs_record(spec, p, snapshot.snapshot_id(), row_count));
    let shard = if epochs.is_some() {
        None
    } else {
        super::arrange::effective_shard(spec, rank)?
    };
    let shown_rank = rank.filter(|_| !r.every_rank).map(|r| r.rank);
    let shard = shard.map(|s| {
        let shown = shown_rank.map_or(s.world_size as usize, |_| 1);
        json!({
            "world_size": s.world_size,
            "pad": s.pad,
            "per_rank": row_count / shown.max(1),
            "rank": shown_rank,
        })
    });
    Ok(Receipt {
        spec: spec.name.clone(),
        table: spec.table.clone(),
        snapshot_requested: match spec.snapshot {
            SnapshotSel::Latest => Requested::Latest("latest"),
            SnapshotSel::Id(id) => Requested::Id(id),
        },
        snapshot_id: snapshot.snapshot_id(),
        snapshot_committed_ms: snapshot.timestamp_ms(),
        lance_uri: lance.map(|l| crate::trust::redact(&l.uri)),
        lance_version: lance.map(|l| l.version),
        filter: spec.filter.as_ref().map(|f| f.text().to_string()),
        limit: spec.limit,
        layout: spec.layout.text().to_string(),
        sidecars: SidecarsRecord {
            embedding: spec.sidecars.embedding,
            metadata: spec.sidecars.metadata,
        },
        similar: spec.similar.as_ref().map(|sim| {
            let search = search.cloned().unwrap_or_default();
            let indexed = search.index_version.is_some();
            SimilarRecord {
                query: match &sim.to {
                    Query::ContentId(id) => QueryRecord::ContentId(id.clone()),
                    Query::Vector(p) => QueryRecord::Vector(p.display().to_string()),
                    Query::File(p) => QueryRecord::File(p.display().to_string()),
                    Query::Text(t) => QueryRecord::Text(t.clone()),
                },
                query_sha256: search.query_sha256,
                query_model: matches!(sim.to, Query::File(_) | Query::Text(_))
                    .then(|| encoder.model_id().to_string()),
                k: sim.k,
                metric: sim.metric.name(),
                search: match search.index_version {
                    Some(v) => format!("ivf_pq index at Lance version {v}"),
                    None => "exact".to_string(),
                },
                index_version: search.index_version,
                nprobes: indexed.then(|| sim.nprobes.unwrap_or(similar::DEFAULT_NPROBES)),
                refine: indexed.then(|| sim.refine.unwrap_or(similar::DEFAULT_REFINE)),
            }
        }),
        select: spec.diverse.map(|d| {
            json!({"diverse": {"clusters": d.clusters, "per_cluster": d.per_cluster, "seed": d.seed}})
        }),
        order: spec.order.as_ref().map(|o| match o {
            crate::spec::Order::Shuffle(seed) => json!({ "shuffle": seed }),
            crate::spec::Order::By(keys) => json!({
                "by": keys
                    .iter()
                    .map(|k| format!("{} {}", k.column, if k.descending { "DESC" } else { "ASC" }))
                    .collect::<Vec<_>>()
                    .join(", ")
            }),
        }),
        shard,
        epochs: epochs_record,
        row_count,
    })
}

/// Debug log of how long each step of a resolution took (`LAKEMOUNT_LOG=debug`).
struct Phases<'a> {
    spec: &'a str,
    last: std::time::Instant,
}

impl<'a> Phases<'a> {
    fn new(spec: &'a str) -> Self {
        Self {
            spec,
            last: std::time::Instant::now(),
        }
    }

    fn done(&mut self, step: &str) {
        let now = std::time::Instant::now();
        tracing::debug!(
            spec = self.spec,
            step,
            ms = (now - self.last).as_millis() as u64,
            "resolve"
        );
        self.last = now;
    }
}
