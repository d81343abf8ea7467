//! Opens what one warehouse location holds: the object store, the Iceberg
//! catalog, the blob store and the address of the Lance dataset.
//!
//! The embedded default is one local directory:
//!
//! ```text
//! <warehouse>/catalog.db            Iceberg SQL catalog (SQLite), catalog name "lakemount"
//! <warehouse>/iceberg/<ns>/<table>  Iceberg metadata and Parquet data files
//! <warehouse>/lance/<ns>.<table>.lance   Lance dataset (embeddings, inline blobs)
//! <warehouse>/blobs/<xx>/<sha256>   content-addressed blobs
//! ```
//!
//! Everything below the root is addressed through `object_store`, Lance's
//! URI handling or the catalog, never through `std::fs`, so pointing
//! `--warehouse` at an object store is a configuration change. Only the
//! creation of the local root directory (and the SQLite file in it) touches
//! the local filesystem directly, because SQLite needs one.

use std::collections::HashMap;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use iceberg::io::LocalFsStorageFactory;
use iceberg::{Catalog, CatalogBuilder, NamespaceIdent, TableIdent};
use iceberg_catalog_sql::{SqlBindStyle, SqlCatalogBuilder};
use object_store::ObjectStore;
use object_store::local::LocalFileSystem;
use url::Url;

use crate::blobs::BlobStore;
use crate::trust::{UriTrust, redact};

/// Name under which the catalog's rows are stored; other readers (PyIceberg's
/// `SqlCatalog`, Spark's JDBC catalog) must load the catalog under this name.
pub const CATALOG_NAME: &str = "lakemount";
/// Table used when none is given.
pub const DEFAULT_TABLE: &str = "datasets.samples";

/// Where a warehouse lives and how to reach its catalog.
#[derive(Debug, Clone)]
pub struct WarehouseConfig {
    /// A local path or a URI (`file:///...`).
    pub location: String,
    /// Catalog URI; default `sqlite:<warehouse>/catalog.db`.
    pub catalog: Option<String>,
    /// `namespace.table` of the Iceberg table.
    pub table: String,
    /// Locations outside the warehouse that samples may be read from.
    pub allow_uri_prefixes: Vec<String>,
}

impl WarehouseConfig {
    /// A config for `location` with the default catalog and table.
    pub fn new(location: impl Into<String>) -> Self {
        Self {
            location: location.into(),
            catalog: None,
            table: DEFAULT_TABLE.to_string(),
            allow_uri_prefixes: Vec::new(),
        }
    }
}

/// An opened warehouse.
#[derive(Debug, Clone)]
pub struct Warehouse {
    /// Root URL, always ending in `/`.
    pub root_url: Url,
    /// The catalog holding the table.
    pub catalog: Arc<dyn Catalog>,
    /// The Iceberg table this warehouse serves.
    pub table: TableIdent,
    /// Blobs by content id.
    pub blobs: BlobStore,
    /// Location of the Lance dataset for `table` (a path for local warehouses).
    pub lance_uri: String,
    /// Where samples may be read from: the warehouse and the allowed prefixes.
    pub trust: UriTrust,
}

impl Warehouse {
    /// Opens the warehouse; with `create`, makes the local root directory if needed.
    pub async fn open(config: &WarehouseConfig, create: bool) -> Result<Self> {
        let table = parse_table_ident(&config.table)?;
        let root_url = root_url(&config.location)?;
        if root_url.scheme() != "file" {
            bail!(
                "warehouse {}: only local warehouses (a path or file:// URI) are supported by this build",
                config.location
            );
        }
        let root: PathBuf = root_url.to_file_path().map_err(|_| {
            anyhow::anyhow!("warehouse {}: not a usable local path", config.location)
        })?;
        if create {
            std::fs::create_dir_all(&root).with_context(|| {
                format!(
                    "warehouse {} is not writable (cannot create the directory); pass --warehouse a directory you can write",
                    root.display()
                )
            })?;
            probe_writable(&root)?;
        } else if !root.is_dir() {
            bail!(
                "no warehouse at {}: run `lakemount ingest --warehouse {}` first, or point --warehouse at an existing one",
                root.display(),
                root.display()
            );
        }
        let store: Arc<dyn ObjectStore> =
            Arc::new(LocalFileSystem::new_with_prefix(&root).with_context(|| {
                format!(
                    "warehouse {}: cannot open as an object store",
                    root.display()
                )
            })?);
        let blobs = BlobStore::new(store, object_store::path::Path::default(), root_url.clone());

        let catalog_uri = match &config.catalog {
            Some(uri) => uri.clone(),
            None => format!("sqlite:{}?mode=rwc", root.join("catalog.db").display()),
        };
        let bind_style = if catalog_uri.starts_with("sqlite:") {
            SqlBindStyle::QMark
        } else {
            SqlBindStyle::DollarNumeric
        };
        let catalog = SqlCatalogBuilder::default()
            .uri(catalog_uri.clone())
            .warehouse_location(format!("{root_url}iceberg"))
            .sql_bind_style(bind_style)
            .with_storage_factory(Arc::new(LocalFsStorageFactory))
            .load(CATALOG_NAME, HashMap::new())
            .await
            .map_err(|e| anyhow::anyhow!(redact(&format!("{e:#}"))))
            .with_context(|| {
                format!(
                    "cannot open the Iceberg catalog at {}",
                    redact(&catalog_uri)
                )
            })?;

        let lance_uri = lance_location(&root, &table);
        let trust = UriTrust::new(&root_url, &config.allow_uri_prefixes)?;
        Ok(Self {
            root_url,
            catalog: Arc::new(catalog),
            table,
            blobs,
            lance_uri,
            trust,
        })
    }
}

fn lance_location(root: &FsPath, table: &TableIdent) -> String {
    let name = format!("{}.{}.lance", table.namespace().join("."), table.name());
    root.join("lance").join(name).display().to_string()
}

fn probe_writable(root: &FsPath) -> Result<()> {
    let probe = root.join(format!(".lakemount-write-probe-{}", std::process::id()));
    std::fs::write(&probe, b"")
        .and_then(|_| std::fs::remove_file(&probe))
        .with_context(|| {
            format!(
                "warehouse {} is not writable; pass --warehouse a directory you can write",
                root.display()
            )
        })
}

/// Turns a path or URI into the warehouse root URL (ending in `/`).
pub fn root_url(location: &str) -> Result<Url> {
    let mut url = if location.contains("://") {
        Url::parse(location).with_context(|| format!("warehouse {location}: not a valid URI"))?
    } else {
        let path = std::path::absolute(location)
            .with_context(|| format!("warehouse {location}: not a valid path"))?;
        Url::from_directory_path(&path)
            .map_err(|_| anyhow::anyhow!("warehouse {location}: not a valid path"))?
    };
    if !url.path().ends_with('/') {
        let p = format!("{}/", url.path());
        url.set_path(&p);
    }
    Ok(url)
}

/// Parses `namespace.table` (the namespace may itself be dotted).
pub fn parse_table_ident(s: &str) -> Result<TableIdent> {
    let parts: Vec<&str> = s.split('.').collect();
    if parts.len() < 2 || parts.iter().any(|p| p.is_empty()) {
        bail!("table {s:?}: expected <namespace>.<table>, for example {DEFAULT_TABLE}");
    }
    let (name, ns) = parts.split_last().expect("two or more parts");
    let ns = NamespaceIdent::from_strs(ns.iter().copied())
        .with_context(|| format!("table {s:?}: bad namespace"))?;
    Ok(TableIdent::new(ns, (*name).to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_idents() {
        let t = parse_table_ident("datasets.samples").unwrap();
        assert_eq!(t.name(), "samples");
        assert!(parse_table_ident("samples").is_err());
        assert!(parse_table_ident("a..b").is_err());
    }

    #[test]
    fn root_urls_end_in_slash() {
        assert!(root_url("/tmp/wh").unwrap().as_str().ends_with("/tmp/wh/"));
        assert_eq!(root_url("file:///x/y").unwrap().as_str(), "file:///x/y/");
    }
}
