//! A catalog on a database server that says so, within seconds, when the
//! server goes away.
//!
//! The SQL catalog's connection pool retries a refused connection until
//! its 30 s acquire timeout and then reports a generic "pool timed out";
//! a commit in flight when PostgreSQL dies waits that long (a minute, with
//! the reload that follows a failed commit) before failing with no word of
//! which server or why. [`Watched`] runs every catalog call next to a
//! watchdog: after a second, and every second after that, it opens a TCP
//! connection to the server; when that is refused or gets no answer in two
//! seconds, the call fails at once with an error naming the server
//! (password redacted) and what happened. A slow server that still accepts
//! connections is left to finish.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
use iceberg::table::Table;
use iceberg::{
    Catalog, ErrorKind, Namespace, NamespaceIdent, Result, TableCommit, TableCreation, TableIdent,
};

/// How long a call runs before the first probe, and between probes.
const PROBE_EVERY: Duration = Duration::from_secs(1);
/// How long a probe waits for the server to accept.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// A catalog whose calls fail fast when its database server stops answering.
#[derive(Debug)]
pub struct Watched {
    inner: Box<dyn Catalog>,
    /// The catalog URI, redacted, for messages.
    shown: String,
    host: String,
    port: u16,
}

impl Watched {
    /// Watches `inner`, whose server is `host:port`; `shown` names it in
    /// errors (already redacted).
    pub fn new(inner: Box<dyn Catalog>, shown: String, host: String, port: u16) -> Self {
        Self {
            inner,
            shown,
            host,
            port,
        }
    }

    /// Why the server does not answer, if it does not.
    async fn probe(&self) -> Option<String> {
        let connect = tokio::net::TcpStream::connect((self.host.as_str(), self.port));
        match tokio::time::timeout(PROBE_TIMEOUT, connect).await {
            Ok(Ok(_)) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some(format!("no answer in {} s", PROBE_TIMEOUT.as_secs_f64())),
        }
    }

    /// Runs `call`, failing early if the server goes away meanwhile.
    async fn watch<T>(&self, what: &str, call: impl Future<Output = Result<T>>) -> Result<T> {
        let started = std::time::Instant::now();
        tokio::pin!(call);
        let mut tick =
            tokio::time::interval_at(tokio::time::Instant::now() + PROBE_EVERY, PROBE_EVERY);
        loop {
            tokio::select! {
                r = &mut call => return r,
                _ = tick.tick() => {
                    if let Some(why) = self.probe().await {
                        return Err(iceberg::Error::new(
                            ErrorKind::Unexpected,
                            format!(
                                "the catalog database {} stopped answering ({why}) while {what}, after {:.1} s; \
                                 nothing was committed by this call; retry when the server is back",
                                self.shown,
                                started.elapsed().as_secs_f64()
                            ),
                        ));
                    }
                }
            }
        }
    }
}

#[async_trait]
impl Catalog for Watched {
    async fn list_namespaces(
        &self,
        parent: Option<&NamespaceIdent>,
    ) -> Result<Vec<NamespaceIdent>> {
        self.watch("listing namespaces", self.inner.list_namespaces(parent))
            .await
    }

    async fn create_namespace(
        &self,
        namespace: &NamespaceIdent,
        properties: HashMap<String, String>,
    ) -> Result<Namespace> {
        self.watch(
            "creating a namespace",
            self.inner.create_namespace(namespace, properties),
        )
        .await
    }

    async fn get_namespace(&self, namespace: &NamespaceIdent) -> Result<Namespace> {
        self.watch("reading a namespace", self.inner.get_namespace(namespace))
            .await
    }

    async fn namespace_exists(&self, namespace: &NamespaceIdent) -> Result<bool> {
        self.watch(
            "looking up a namespace",
            self.inner.namespace_exists(namespace),
        )
        .await
    }

    async fn update_namespace(
        &self,
        namespace: &NamespaceIdent,
        properties: HashMap<String, String>,
    ) -> Result<()> {
        self.watch(
            "updating a namespace",
            self.inner.update_namespace(namespace, properties),
        )
        .await
    }

    async fn drop_namespace(&self, namespace: &NamespaceIdent) -> Result<()> {
        self.watch("dropping a namespace", self.inner.drop_namespace(namespace))
            .await
    }

    async fn list_tables(&self, namespace: &NamespaceIdent) -> Result<Vec<TableIdent>> {
        self.watch("listing tables", self.inner.list_tables(namespace))
            .await
    }

    async fn create_table(
        &self,
        namespace: &NamespaceIdent,
        creation: TableCreation,
    ) -> Result<Table> {
        self.watch(
            "creating a table",
            self.inner.create_table(namespace, creation),
        )
        .await
    }

    async fn load_table(&self, table: &TableIdent) -> Result<Table> {
        self.watch(
            &format!("loading table {table}"),
            self.inner.load_table(table),
        )
        .await
    }

    async fn drop_table(&self, table: &TableIdent) -> Result<()> {
        self.watch(
            &format!("dropping table {table}"),
            self.inner.drop_table(table),
        )
        .await
    }

    async fn purge_table(&self, table: &TableIdent) -> Result<()> {
        self.watch(
            &format!("purging table {table}"),
            self.inner.purge_table(table),
        )
        .await
    }

    async fn table_exists(&self, table: &TableIdent) -> Result<bool> {
        self.watch(
            &format!("looking up table {table}"),
            self.inner.table_exists(table),
        )
        .await
    }

    async fn rename_table(&self, src: &TableIdent, dest: &TableIdent) -> Result<()> {
        self.watch(
            &format!("renaming table {src}"),
            self.inner.rename_table(src, dest),
        )
        .await
    }

    async fn register_table(&self, table: &TableIdent, metadata_location: String) -> Result<Table> {
        self.watch(
            &format!("registering table {table}"),
            self.inner.register_table(table, metadata_location),
        )
        .await
    }

    async fn update_table(&self, commit: TableCommit) -> Result<Table> {
        let what = format!("committing to table {}", commit.identifier());
        self.watch(&what, self.inner.update_table(commit)).await
    }
}
