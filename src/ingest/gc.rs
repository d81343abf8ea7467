//! `lakemount gc`: removes what staged partitions left behind and nothing
//! else. A file is garbage when no version of the table names it and it is
//! older than the grace period:
//! - Lance data files (`<dataset>/data/*.lance`) that no version of the dataset
//!   lists (fragments of a partition that was staged and never committed);
//! - Iceberg data files (`<table location>/data/**`) that no snapshot's
//!   manifests list (data files of such a partition, or of a manifest the
//!   commit had to rewrite);
//! - staging manifests nobody committed.
//!
//! The grace period must exceed the time between a partition's stage and
//! its commit: a commit refuses a manifest whose files are gone, so the
//! worst a short grace does is force a partition to be staged again. Blobs
//! and packs are content-addressed and shared by every ingest: they stay.

use std::collections::HashSet;
use std::time::Duration;

use std::sync::Arc;

use futures::TryStreamExt;
use iceberg::spec::ManifestList;
use object_store::path::Path as StorePath;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt};
use serde::Serialize;
use url::Url;

use super::stage::STAGING_DIR;
use crate::error::{Context, Result};
use crate::vectors;
use crate::warehouse::Warehouse;

/// What a collection removed (or, dry, would remove).
#[derive(Debug, Default, Serialize)]
pub struct GcReport {
    /// Unreferenced Lance data files.
    pub lance_files: usize,
    /// Unreferenced Iceberg data files.
    pub iceberg_files: usize,
    /// Uncommitted staging manifests.
    pub manifests: usize,
    /// Unreferenced files kept because they are younger than the grace.
    pub young: usize,
}

/// Collects garbage older than `grace`; with `dry_run`, only counts it.
pub async fn gc(warehouse: &Warehouse, grace: Duration, dry_run: bool) -> Result<GcReport> {
    let mut report = GcReport::default();
    let cutoff = chrono::Utc::now()
        - chrono::Duration::from_std(grace)
            .map_err(|_| crate::error::err!(kind: Usage, "--grace {grace:?} is too long"))?;
    let table_name = warehouse.table.to_string();

    // Lance: every file any version lists.
    if let Some(ds) = vectors::open(&warehouse.lance_uri, &warehouse.storage).await? {
        let mut used: HashSet<String> = HashSet::new();
        for v in ds.versions().await? {
            let at = ds.checkout_version(v.version).await.with_context(|| {
                format!(
                    "cannot read version {} of {}",
                    v.version, warehouse.lance_uri
                )
            })?;
            used.extend(vectors::data_files(&at));
        }
        let dir = Dir::open(warehouse, &warehouse.lance_uri)?;
        let mut files = dir.list("data").await?;
        // Only data files: whatever else Lance keeps there (blob sidecars)
        // is not ours to judge.
        files.retain(|(rel, _)| {
            let name = rel.rsplit('/').next().unwrap_or_default();
            name.ends_with(".lance") && !used.contains(name)
        });
        report.lance_files = sweep(&dir, files, cutoff, dry_run, &mut report.young).await?;
    }

    // Iceberg: every data file any snapshot lists.
    if let Ok(table) = warehouse.catalog.load_table(&warehouse.table).await {
        let meta = table.metadata();
        let io = table.file_io();
        let location = normalize(meta.location().trim_end_matches('/'));
        let mut used: HashSet<String> = HashSet::new();
        for snapshot in meta.snapshots() {
            let bytes = io.new_input(snapshot.manifest_list())?.read().await?;
            let list = ManifestList::parse_with_version(&bytes, meta.format_version())?;
            for m in list.entries() {
                let manifest = m.load_manifest(io).await?;
                for e in manifest.entries() {
                    let path = normalize(e.file_path());
                    if let Some(rel) = path.strip_prefix(&format!("{location}/")) {
                        used.insert(rel.to_string());
                    }
                }
            }
        }
        let dir = Dir::open(warehouse, &location)?;
        let mut files = dir.list("data").await?;
        files.retain(|(rel, _)| !used.contains(rel));
        report.iceberg_files = sweep(&dir, files, cutoff, dry_run, &mut report.young).await?;
    }

    // Staging manifests nobody committed.
    let dir = Dir::open(
        warehouse,
        &format!("{}{STAGING_DIR}/{table_name}", warehouse.root_url),
    )?;
    let files = dir.list("").await?;
    report.manifests = sweep(&dir, files, cutoff, dry_run, &mut report.young).await?;
    Ok(report)
}

/// A directory in an object store (or a local one), by location.
struct Dir {
    store: Arc<dyn ObjectStore>,
    prefix: StorePath,
}

impl Dir {
    fn open(warehouse: &Warehouse, location: &str) -> Result<Self> {
        let url =
            Url::parse(&normalize(location)).with_context(|| format!("bad location {location}"))?;
        let store = warehouse.storage.object_store(&url)?;
        let (_, prefix) = object_store::ObjectStoreScheme::parse(&url)
            .map_err(object_store::Error::from)
            .with_context(|| format!("bad location {location}"))?;
        Ok(Self { store, prefix })
    }

    /// Files below `sub`: paths relative to the directory, modification times.
    async fn list(&self, sub: &str) -> Result<Vec<(String, chrono::DateTime<chrono::Utc>)>> {
        let under = match sub {
            "" => self.prefix.clone(),
            sub => self.prefix.clone().join(sub),
        };
        let metas: Vec<ObjectMeta> = self.store.list(Some(&under)).try_collect().await?;
        let base = format!("{}/", self.prefix.as_ref());
        Ok(metas
            .into_iter()
            .filter_map(|m| {
                let rel = m.location.as_ref().strip_prefix(&base)?.to_string();
                Some((rel, m.last_modified))
            })
            .collect())
    }

    async fn delete(&self, rel: &str) -> Result<()> {
        let mut path = self.prefix.clone();
        for part in rel.split('/') {
            path = path.join(part);
        }
        match self.store.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

/// Deletes (unless `dry_run`) the `files` of `dir` last modified before
/// `cutoff`; returns how many, counting the younger ones in `young`.
async fn sweep(
    dir: &Dir,
    files: Vec<(String, chrono::DateTime<chrono::Utc>)>,
    cutoff: chrono::DateTime<chrono::Utc>,
    dry_run: bool,
    young: &mut usize,
) -> Result<usize> {
    let mut old = 0;
    for (rel, modified) in files {
        if modified > cutoff {
            *young += 1;
            continue;
        }
        old += 1;
        if !dry_run {
            dir.delete(&rel).await?;
        }
    }
    Ok(old)
}

/// A location as a comparable string: local paths as `file://` URLs.
fn normalize(location: &str) -> String {
    if location.starts_with('/') {
        return format!("file://{location}");
    }
    match location.strip_prefix("file:/") {
        Some(rest) if !rest.starts_with('/') => format!("file:///{rest}"),
        _ => location.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::normalize;

    #[test]
    fn local_forms_compare_equal() {
        assert_eq!(normalize("/w/x"), "file:///w/x");
        assert_eq!(normalize("file:/w/x"), "file:///w/x");
        assert_eq!(normalize("file:///w/x"), "file:///w/x");
        assert_eq!(normalize("s3://b/w/x"), "s3://b/w/x");
    }
}
