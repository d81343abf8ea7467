//! Iceberg's FileIO over our object stores: the catalog's metadata, manifest
//! and data files go through the same [`object_store`] client, settings and
//! URL schemes as blobs, packs and Lance, so a new store family is added in
//! one place ([`super::Family`]) and Iceberg needs no storage crate of its
//! own.
//!
//! Iceberg 0.10 takes a [`StorageFactory`] per catalog; ours builds an
//! [`ObjectStoreIo`] holding the warehouse's [`Settings`](super::Storage),
//! which opens one client per bucket or container on first use. Paths are
//! full URLs (`s3://bucket/key`, `az://container/key`); a local warehouse
//! keeps Iceberg's own local-filesystem storage.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use iceberg::io::{
    FileMetadata, FileRead, FileWrite, InputFile, OutputFile, Storage as IcebergStorage,
    StorageConfig, StorageFactory,
};
use iceberg::{Error, ErrorKind, Result};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use serde::{Deserialize, Serialize};
use url::Url;

use super::Storage;

fn io_error(what: &str, path: &str, e: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::new(
        ErrorKind::Unexpected,
        format!("{what} {}", crate::trust::redact(path)),
    )
    .with_source(e)
}

/// Builds [`ObjectStoreIo`] for a catalog (Iceberg's FileIO properties are
/// ignored: the settings are ours).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ObjectStoreFactory {
    settings: Storage,
}

impl ObjectStoreFactory {
    /// A factory for stores with `settings`.
    pub fn new(settings: Storage) -> Self {
        Self { settings }
    }
}

#[typetag::serde]
impl StorageFactory for ObjectStoreFactory {
    fn build(&self, _config: &StorageConfig) -> Result<Arc<dyn IcebergStorage>> {
        Ok(Arc::new(ObjectStoreIo {
            settings: self.settings.clone(),
            stores: Arc::default(),
        }))
    }
}

/// Iceberg storage over object_store; clients are opened per bucket or
/// container and kept.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ObjectStoreIo {
    settings: Storage,
    #[serde(skip)]
    stores: Arc<Mutex<HashMap<String, Arc<dyn ObjectStore>>>>,
}

impl ObjectStoreIo {
    /// The client and object path for a URL.
    fn locate(&self, path: &str) -> Result<(Arc<dyn ObjectStore>, Path)> {
        let url = Url::parse(path).map_err(|e| io_error("not a URL:", path, e))?;
        let (_, object) = object_store::ObjectStoreScheme::parse(&url).map_err(|e| {
            io_error(
                "not an object store URL:",
                path,
                object_store::Error::from(e),
            )
        })?;
        let key = format!("{}://{}", url.scheme(), url.authority());
        let mut stores = self.stores.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = stores.get(&key) {
            return Ok((s.clone(), object));
        }
        let store = self.settings.object_store(&url).map_err(|e| {
            Error::new(
                ErrorKind::DataInvalid,
                format!(
                    "cannot open the store of {}: {e:#}",
                    crate::trust::redact(path)
                ),
            )
        })?;
        stores.insert(key, store.clone());
        Ok((store, object))
    }
}

#[async_trait::async_trait]
#[typetag::serde]
impl IcebergStorage for ObjectStoreIo {
    async fn exists(&self, path: &str) -> Result<bool> {
        let (store, object) = self.locate(path)?;
        match store.head(&object).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(io_error("cannot look up", path, e)),
        }
    }

    async fn metadata(&self, path: &str) -> Result<FileMetadata> {
        let (store, object) = self.locate(path)?;
        let meta = store
            .head(&object)
            .await
            .map_err(|e| io_error("cannot look up", path, e))?;
        Ok(FileMetadata { size: meta.size })
    }

    async fn read(&self, path: &str) -> Result<Bytes> {
        let (store, object) = self.locate(path)?;
        let got = store
            .get(&object)
            .await
            .map_err(|e| io_error("cannot read", path, e))?;
        got.bytes()
            .await
            .map_err(|e| io_error("cannot read", path, e))
    }

    async fn reader(&self, path: &str) -> Result<Box<dyn FileRead>> {
        let (store, object) = self.locate(path)?;
        Ok(Box::new(Reader {
            store,
            object,
            shown: crate::trust::redact(path),
        }))
    }

    async fn write(&self, path: &str, bs: Bytes) -> Result<()> {
        let (store, object) = self.locate(path)?;
        store
            .put(&object, bs.into())
            .await
            .map_err(|e| io_error("cannot write", path, e))?;
        Ok(())
    }

    async fn writer(&self, path: &str) -> Result<Box<dyn FileWrite>> {
        let (store, object) = self.locate(path)?;
        Ok(Box::new(Writer {
            inner: Some(object_store::buffered::BufWriter::new(store, object)),
            shown: crate::trust::redact(path),
        }))
    }

    async fn delete(&self, path: &str) -> Result<()> {
        let (store, object) = self.locate(path)?;
        match store.delete(&object).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(io_error("cannot delete", path, e)),
        }
    }

    async fn delete_prefix(&self, path: &str) -> Result<()> {
        let (store, object) = self.locate(path)?;
        let listed = store
            .list(Some(&object))
            .map(|m| m.map(|m| m.location))
            .boxed();
        let mut deleted = store.delete_stream(listed);
        while let Some(r) = deleted.next().await {
            match r {
                Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(io_error("cannot delete below", path, e)),
            }
        }
        Ok(())
    }

    async fn delete_stream(&self, mut paths: BoxStream<'static, String>) -> Result<()> {
        while let Some(p) = paths.next().await {
            self.delete(&p).await?;
        }
        Ok(())
    }

    fn new_input(&self, path: &str) -> Result<InputFile> {
        Ok(InputFile::new(Arc::new(self.clone()), path.to_string()))
    }

    fn new_output(&self, path: &str) -> Result<OutputFile> {
        Ok(OutputFile::new(Arc::new(self.clone()), path.to_string()))
    }
}

struct Reader {
    store: Arc<dyn ObjectStore>,
    object: Path,
    shown: String,
}

#[async_trait::async_trait]
impl FileRead for Reader {
    async fn read(&self, range: Range<u64>) -> Result<Bytes> {
        self.store
            .get_range(&self.object, range)
            .await
            .map_err(|e| io_error("cannot read", &self.shown, e))
    }
}

/// Buffers and uploads in parts once large (object_store's `BufWriter`);
/// nothing is visible under the name until `close`.
struct Writer {
    inner: Option<object_store::buffered::BufWriter>,
    shown: String,
}

#[async_trait::async_trait]
impl FileWrite for Writer {
    async fn write(&mut self, bs: Bytes) -> Result<()> {
        let Some(w) = self.inner.as_mut() else {
            return Err(Error::new(
                ErrorKind::Unexpected,
                format!("{} is closed", self.shown),
            ));
        };
        w.put(bs)
            .await
            .map_err(|e| io_error("cannot write", &self.shown, e))
    }

    async fn close(&mut self) -> Result<()> {
        use tokio::io::AsyncWriteExt;
        let Some(mut w) = self.inner.take() else {
            return Err(Error::new(
                ErrorKind::Unexpected,
                format!("{} is already closed", self.shown),
            ));
        };
        w.shutdown()
            .await
            .map_err(|e| io_error("cannot finish writing", &self.shown, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The adapter against object_store's local filesystem through `file://`
    /// URLs: what Iceberg writes reads back, ranges, prefixes delete.
    #[tokio::test]
    async fn writes_read_back_and_prefixes_delete() {
        let tmp = tempfile::tempdir().unwrap();
        let root = Url::from_directory_path(tmp.path()).unwrap();
        let io = ObjectStoreFactory::new(Storage::default())
            .build(&StorageConfig::new())
            .unwrap();
        let a = format!("{root}t/metadata/a.json");
        let b = format!("{root}t/data/b.parquet");
        assert!(!io.exists(&a).await.unwrap());
        io.write(&a, Bytes::from_static(b"{\"v\":1}"))
            .await
            .unwrap();
        let mut w = io.writer(&b).await.unwrap();
        w.write(Bytes::from_static(b"PAR1")).await.unwrap();
        w.write(Bytes::from(vec![7u8; 100])).await.unwrap();
        assert!(!io.exists(&b).await.unwrap(), "visible before close");
        w.close().await.unwrap();
        assert!(w.close().await.is_err());
        assert_eq!(io.metadata(&b).await.unwrap().size, 104);
        let r = io.reader(&b).await.unwrap();
        assert_eq!(&r.read(0..4).await.unwrap()[..], b"PAR1");
        assert_eq!(&io.read(&a).await.unwrap()[..], b"{\"v\":1}");
        io.delete_prefix(&format!("{root}t/data")).await.unwrap();
        assert!(!io.exists(&b).await.unwrap());
        assert!(io.exists(&a).await.unwrap());
        io.delete(&a).await.unwrap();
        io.delete(&a).await.unwrap();
        assert!(io.read(&a).await.is_err());
    }
}
