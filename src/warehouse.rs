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

use crate::error::{Context, Result, bail};
use iceberg::io::LocalFsStorageFactory;
use iceberg::{Catalog, CatalogBuilder, NamespaceIdent, TableIdent};
use iceberg_catalog_rest::RestCatalogBuilder;
use iceberg_catalog_sql::{SqlBindStyle, SqlCatalog, SqlCatalogBuilder};
use object_store::ObjectStore;
use object_store::local::LocalFileSystem;
use object_store::path::Path as StorePath;
use url::Url;

use crate::blobs::BlobStore;
use crate::storage::{Family, Storage};
use crate::trust::{UriTrust, redact};

/// Name under which the catalog's rows are stored; other readers (PyIceberg's
/// `SqlCatalog`, Spark's JDBC catalog) must load the catalog under this name.
pub const CATALOG_NAME: &str = "lakemount";
/// Table used when none is given.
pub const DEFAULT_TABLE: &str = "datasets.samples";

/// Where a warehouse lives and how to reach its catalog.
#[derive(Debug, Clone)]
pub struct WarehouseConfig {
    /// A local path, a `file://` URI, `s3://bucket/prefix` or `az://container/prefix`.
    pub location: String,
    /// Catalog URI: `sqlite:...`, `postgres://...` (Iceberg SQL catalog) or
    /// `http(s)://...` / `rest+http(s)://...` (Iceberg REST catalog); default
    /// `sqlite:<warehouse>/catalog.db` for a local warehouse.
    pub catalog: Option<String>,
    /// REST catalog properties (`warehouse`, `credential`, `token`,
    /// `scope`, `prefix`, `header.NAME`).
    pub catalog_options: Vec<(String, String)>,
    /// `namespace.table` of the Iceberg table.
    pub table: String,
    /// Locations outside the warehouse that samples may be read from.
    pub allow_uri_prefixes: Vec<String>,
    /// `KEY=VALUE` storage settings, over the environment's.
    pub storage_options: Vec<String>,
}

impl WarehouseConfig {
    /// A config for `location` with the default catalog and table.
    pub fn new(location: impl Into<String>) -> Self {
        Self {
            location: location.into(),
            catalog: None,
            catalog_options: Vec::new(),
            table: DEFAULT_TABLE.to_string(),
            allow_uri_prefixes: Vec::new(),
            storage_options: Vec::new(),
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
    /// How to reach the storage.
    pub storage: Storage,
    /// Where a new table's Iceberg files go when the catalog does not
    /// place them under the warehouse itself (REST catalogs); `None` lets
    /// the catalog decide (SQL catalogs: `<warehouse>/iceberg/<ns>/<table>`).
    pub table_location: Option<String>,
}

impl Warehouse {
    /// Opens the warehouse; with `create`, makes a local root directory if needed.
    pub async fn open(config: &WarehouseConfig, create: bool) -> Result<Self> {
        register_secrets(config);
        let table = parse_table_ident(&config.table)?;
        let root_url = root_url(&config.location)?;
        let storage = Storage::from_env(&config.storage_options)?;
        let family = Family::of(&root_url)
            .with_context(|| format!("warehouse {}", redact(&config.location)))?;
        let (store, prefix) = if family.is_remote() {
            let (_, prefix) = object_store::ObjectStoreScheme::parse(&root_url)
                .map_err(object_store::Error::from)
                .with_context(|| format!("warehouse {}: bad prefix", config.location))?;
            (storage.object_store(&root_url)?, prefix)
        } else {
            (
                open_local_root(&root_url, &config.location, create)?,
                StorePath::default(),
            )
        };
        let blobs = BlobStore::new(store, prefix, root_url.clone());
        let (catalog, rest) = open_catalog(config, &root_url, &storage).await?;
        let lance_uri = lance_location(&root_url, &table)?;
        let table_location = rest.then(|| {
            format!(
                "{root_url}iceberg/{}/{}",
                table.namespace().join("/"),
                table.name()
            )
        });
        let trust = UriTrust::new(&root_url, &config.allow_uri_prefixes)?;
        Ok(Self {
            root_url,
            catalog,
            table,
            blobs,
            lance_uri,
            trust,
            storage,
            table_location,
        })
    }
}

/// Registers every secret in `config` for redaction ([`crate::trust`]),
/// before anything parses it.
fn register_secrets(config: &WarehouseConfig) {
    if let Some(p) = config
        .catalog
        .as_deref()
        .and_then(crate::trust::uri_password)
    {
        crate::trust::register_uri_password(p);
    }
    for (k, v) in &config.catalog_options {
        let k = k.to_ascii_lowercase();
        if k == "credential" {
            crate::trust::register_secret(v.split_once(':').map_or(v.as_str(), |(_, s)| s));
        } else if ["token", "secret", "password", "key"]
            .iter()
            .any(|s| k.contains(s))
        {
            crate::trust::register_secret(v);
        }
    }
    for kv in &config.storage_options {
        if let Some((k, v)) = kv.split_once('=')
            && crate::storage::is_secret(k)
        {
            crate::trust::register_secret(v);
        }
    }
    for var in crate::storage::SECRET_ENV {
        if let Ok(v) = std::env::var(var) {
            crate::trust::register_secret(&v);
        }
    }
}

/// The object store of a local warehouse directory, created if asked.
fn open_local_root(root_url: &Url, location: &str, create: bool) -> Result<Arc<dyn ObjectStore>> {
    let root: PathBuf = root_url
        .to_file_path()
        .map_err(|_| crate::error::err!("warehouse {location}: not a usable local path"))?;
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
    inherit_permissions(&root)?;
    Ok(Arc::new(
        LocalFileSystem::new_with_prefix(&root).with_context(|| {
            format!(
                "warehouse {}: cannot open as an object store",
                root.display()
            )
        })?,
    ))
}

/// Makes files this process creates get no permission the warehouse root
/// denies (a `0750` warehouse gives `0640` blobs, `0700` gives `0600`),
/// whatever the mode of the file a blob was copied from: the bits the
/// directory withholds from group and others are added to the umask. The
/// umask only ever narrows.
fn inherit_permissions(root: &FsPath) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let mode = std::fs::metadata(root)
        .with_context(|| format!("warehouse {}: cannot inspect it", root.display()))?
        .mode();
    let deny = (!mode & 0o077) as libc::mode_t;
    // SAFETY: umask has no preconditions; reading it means setting it, so
    // it is set twice (the process-wide mask is only ever narrowed).
    unsafe {
        let old = libc::umask(0o077);
        libc::umask(old | deny);
    }
    Ok(())
}

/// The catalog a config names (see [`WarehouseConfig::catalog`]), and
/// whether it is a REST catalog.
async fn open_catalog(
    config: &WarehouseConfig,
    root_url: &Url,
    storage: &Storage,
) -> Result<(Arc<dyn Catalog>, bool)> {
    let local = root_url.scheme() == "file";
    let uri = match &config.catalog {
        Some(uri) => uri.clone(),
        None if local => {
            let root = root_url.to_file_path().unwrap_or_default();
            format!("sqlite:{}?mode=rwc", root.join("catalog.db").display())
        }
        None => bail!(
            "warehouse {}: an object-store warehouse needs a shared catalog: pass --catalog \
             postgres://USER:PASSWORD@HOST/DB (Iceberg SQL catalog) or --catalog http(s)://HOST:PORT \
             (Iceberg REST catalog); a SQLite file would be local to this machine",
            config.location
        ),
    };
    let failed = |e: iceberg::Error| {
        crate::error::err!(kind: Storage, "{}", redact(&format!("{e:#}"))).context(format!(
            "cannot open the Iceberg catalog at {}",
            redact(&uri)
        ))
    };
    if let Some(rest) = uri.strip_prefix("rest+").or_else(|| {
        (uri.starts_with("http://") || uri.starts_with("https://")).then_some(uri.as_str())
    }) {
        let mut props: HashMap<String, String> = HashMap::new();
        props.insert("uri".into(), rest.to_string());
        props.extend(config.catalog_options.iter().cloned());
        let catalog = RestCatalogBuilder::default()
            .with_storage_factory(storage.iceberg_factory())
            .load(CATALOG_NAME, props)
            .await
            .map_err(failed)?;
        return Ok((Arc::new(catalog), true));
    }
    let uri = sqlite_create(uri.clone());
    let postgres = if uri.starts_with("sqlite:") {
        false
    } else if uri.starts_with("postgres://") || uri.starts_with("postgresql://") {
        true
    } else {
        bail!(kind: Usage,
            "--catalog {}: expected sqlite:PATH, postgres://USER:PASSWORD@HOST/DB or http(s)://HOST:PORT (REST)",
            redact(&uri)
        );
    };
    let server = if postgres {
        Some(reachable(&uri).await?)
    } else {
        None
    };
    let builder = || {
        let builder = SqlCatalogBuilder::default()
            .uri(uri.clone())
            .warehouse_location(format!("{root_url}iceberg"))
            .sql_bind_style(if postgres {
                SqlBindStyle::DollarNumeric
            } else {
                SqlBindStyle::QMark
            });
        if local {
            builder.with_storage_factory(Arc::new(LocalFsStorageFactory))
        } else {
            builder.with_storage_factory(storage.iceberg_factory())
        }
    };
    let catalog = load_sql_catalog(builder).await.map_err(failed)?;
    Ok(match server {
        Some((host, port)) => (
            Arc::new(crate::catalog::watched::Watched::new(
                Box::new(catalog),
                redact(&uri),
                host,
                port,
            )),
            false,
        ),
        None => (Arc::new(catalog), false),
    })
}

/// Loads a SQL catalog, whose first open creates its tables with
/// `CREATE TABLE IF NOT EXISTS`. On PostgreSQL that statement is not safe
/// against itself: two writers opening a fresh catalog at once can both
/// pass the check and one fails on a unique index of the system catalog
/// (`pg_type_typname_nsp_index`); SQLite can answer "database is locked".
/// Either way the tables exist (or will) once the other writer is done, so
/// the open is tried again a few times, after the catalog's backoff.
async fn load_sql_catalog(
    builder: impl Fn() -> SqlCatalogBuilder,
) -> std::result::Result<SqlCatalog, iceberg::Error> {
    const ATTEMPTS: usize = 6;
    let mut attempt = 1;
    loop {
        match builder().load(CATALOG_NAME, HashMap::new()).await {
            Err(e) if attempt < ATTEMPTS && lost_create_race(&e) => {
                tokio::time::sleep(crate::catalog::backoff(attempt)).await;
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// Whether a catalog open failed because another process was creating the
/// catalog's tables at the same moment (see [`load_sql_catalog`]).
fn lost_create_race(e: &iceberg::Error) -> bool {
    let text = format!("{e:#}");
    text.contains("duplicate key value violates unique constraint")
        || text.contains("already exists")
        || text.contains("database is locked")
}

/// A SQLite catalog URI that creates its file (and folder) when missing
/// (`mode=rwc`, as the default catalog is opened), unless it says otherwise.
fn sqlite_create(uri: String) -> String {
    let Some(rest) = uri.strip_prefix("sqlite:") else {
        return uri;
    };
    if uri.contains("mode=") {
        return uri;
    }
    let path = rest.strip_prefix("//").unwrap_or(rest);
    let path = FsPath::new(path.split('?').next().unwrap_or(path));
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty())
        && path != FsPath::new(":memory:")
        && !parent.exists()
    {
        // Best effort: if it cannot be made, SQLite says so when opening.
        let _ = std::fs::create_dir_all(parent);
    }
    let sep = if uri.contains('?') { '&' } else { '?' };
    format!("{uri}{sep}mode=rwc")
}

/// Fails fast, with a clear message, when a database server does not
/// answer (the SQL pool would wait 30 s and report a timeout); the
/// server's host and port.
async fn reachable(uri: &str) -> Result<(String, u16)> {
    let url = Url::parse(uri).with_context(|| format!("--catalog {}: not a URI", redact(uri)))?;
    let host = match url.host() {
        Some(url::Host::Ipv6(a)) => a.to_string(),
        Some(h) => h.to_string(),
        None => "localhost".to_string(),
    };
    let port = url.port().unwrap_or(5432);
    let connect = tokio::net::TcpStream::connect((host.as_str(), port));
    match tokio::time::timeout(std::time::Duration::from_secs(10), connect).await {
        Ok(Ok(_)) => Ok((host, port)),
        Ok(Err(e)) => bail!(kind: Storage,
            "cannot reach the catalog database {} ({e}); is PostgreSQL running there?",
            redact(uri)
        ),
        Err(_) => bail!(kind: Storage,
            "cannot reach the catalog database {} (no answer in 10 s)",
            redact(uri)
        ),
    }
}

/// `<root>/lance/<ns>.<table>.lance`: a path for a local warehouse, a URI otherwise.
fn lance_location(root_url: &Url, table: &TableIdent) -> Result<String> {
    let name = format!("{}.{}.lance", table.namespace().join("."), table.name());
    if root_url.scheme() == "file" {
        let root = root_url
            .to_file_path()
            .map_err(|_| crate::error::err!("{root_url}: not a usable local path"))?;
        return Ok(root.join("lance").join(name).display().to_string());
    }
    Ok(format!("{root_url}lance/{name}"))
}

fn probe_writable(root: &FsPath) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    use std::sync::atomic::{AtomicU64, Ordering};
    // Unique per open, also within one process (opens may run at once);
    // created fresh (`create_new` never follows a link left under the name).
    static PROBES: AtomicU64 = AtomicU64::new(0);
    let probe = root.join(format!(
        ".lakemount-write-probe-{}-{}",
        std::process::id(),
        PROBES.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&probe)
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
            .map_err(|_| crate::error::err!("warehouse {location}: not a valid path"))?
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
