//! Commits that succeed only on the snapshot they were checked against.
//!
//! iceberg-rust's `Transaction::commit` reloads the table before every
//! attempt and re-applies its actions to whatever it finds, retrying on
//! conflict. For an append that is wrong here: the batch was deduplicated
//! against one snapshot and records a Lance version chosen for it, and
//! both are stale once another writer committed. [`commit_on`] commits
//! against exactly the table it is given: if the table moved on, the
//! catalog refuses (the snapshot requirement fails) and the caller gets
//! [`Conflict`] back to redo its checks, instead of a silent re-base.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use iceberg::table::Table;
use iceberg::transaction::Transaction;
use iceberg::{
    Catalog, Namespace, NamespaceIdent, Result as IcebergResult, TableCommit, TableCreation,
    TableIdent,
};

/// The table changed between the check and the commit; nothing was committed.
#[derive(Debug, thiserror::Error)]
#[error("table {0} changed while committing (another writer committed first)")]
pub struct Conflict(pub TableIdent);

/// Commits `tx` (built on `base`) only if the table is still at `base`.
pub async fn commit_on(
    catalog: &Arc<dyn Catalog>,
    base: &Table,
    tx: Transaction,
) -> crate::error::Result<Table> {
    let pinned = PinnedBase {
        inner: catalog.clone(),
        base: base.clone(),
    };
    match tx.commit(&pinned).await {
        Ok(t) => Ok(t),
        Err(e) => {
            let now = catalog.load_table(base.identifier()).await?;
            if now.metadata_location() != base.metadata_location() {
                Err(Conflict(base.identifier().clone()).into())
            } else {
                Err(crate::error::Error::from(e)
                    .context(format!("Iceberg commit to {} failed", base.identifier())))
            }
        }
    }
}

/// A catalog that answers `load_table` for one table with a fixed version
/// and never asks for a retry, so a transaction commits against that
/// version or fails.
struct PinnedBase {
    inner: Arc<dyn Catalog>,
    base: Table,
}

impl fmt::Debug for PinnedBase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PinnedBase")
            .field("table", self.base.identifier())
            .finish()
    }
}

#[async_trait]
impl Catalog for PinnedBase {
    async fn list_namespaces(
        &self,
        parent: Option<&NamespaceIdent>,
    ) -> IcebergResult<Vec<NamespaceIdent>> {
        self.inner.list_namespaces(parent).await
    }

    async fn create_namespace(
        &self,
        namespace: &NamespaceIdent,
        properties: HashMap<String, String>,
    ) -> IcebergResult<Namespace> {
        self.inner.create_namespace(namespace, properties).await
    }

    async fn get_namespace(&self, namespace: &NamespaceIdent) -> IcebergResult<Namespace> {
        self.inner.get_namespace(namespace).await
    }

    async fn namespace_exists(&self, namespace: &NamespaceIdent) -> IcebergResult<bool> {
        self.inner.namespace_exists(namespace).await
    }

    async fn update_namespace(
        &self,
        namespace: &NamespaceIdent,
        properties: HashMap<String, String>,
    ) -> IcebergResult<()> {
        self.inner.update_namespace(namespace, properties).await
    }

    async fn drop_namespace(&self, namespace: &NamespaceIdent) -> IcebergResult<()> {
        self.inner.drop_namespace(namespace).await
    }

    async fn list_tables(&self, namespace: &NamespaceIdent) -> IcebergResult<Vec<TableIdent>> {
        self.inner.list_tables(namespace).await
    }

    async fn create_table(
        &self,
        namespace: &NamespaceIdent,
        creation: TableCreation,
    ) -> IcebergResult<Table> {
        self.inner.create_table(namespace, creation).await
    }

    async fn load_table(&self, table: &TableIdent) -> IcebergResult<Table> {
        if table == self.base.identifier() {
            return Ok(self.base.clone());
        }
        self.inner.load_table(table).await
    }

    async fn drop_table(&self, table: &TableIdent) -> IcebergResult<()> {
        self.inner.drop_table(table).await
    }

    async fn purge_table(&self, table: &TableIdent) -> IcebergResult<()> {
        self.inner.purge_table(table).await
    }

    async fn table_exists(&self, table: &TableIdent) -> IcebergResult<bool> {
        self.inner.table_exists(table).await
    }

    async fn rename_table(&self, src: &TableIdent, dest: &TableIdent) -> IcebergResult<()> {
        self.inner.rename_table(src, dest).await
    }

    async fn register_table(
        &self,
        table: &TableIdent,
        metadata_location: String,
    ) -> IcebergResult<Table> {
        self.inner.register_table(table, metadata_location).await
    }

    async fn update_table(&self, commit: TableCommit) -> IcebergResult<Table> {
        self.inner
            .update_table(commit)
            .await
            .map_err(|e| e.with_retryable(false))
    }
}
