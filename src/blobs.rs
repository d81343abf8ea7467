//! Content-addressed blob store over `object_store`.
//!
//! A blob lives at `blobs/<first two hex digits>/<sha256>` under the
//! warehouse root. The two-character fan-out keeps directory sizes sane on
//! local disks and spreads prefixes on S3. Because the key is the content's
//! own hash, writes are idempotent: a re-run that stores the same bytes
//! again finds them already there.

use std::sync::Arc;

use bytes::Bytes;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use sha2::{Digest, Sha256};
use url::Url;

/// Hex SHA-256 of `bytes`: the sample's `content_id`.
pub fn content_id(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The blob store inside one warehouse.
#[derive(Debug, Clone)]
pub struct BlobStore {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    root_url: Url,
}

impl BlobStore {
    /// `root_url` is the warehouse URL (ending in `/`) that `prefix` addresses
    /// inside `store`; it is used to build the URIs written into the tables.
    pub fn new(store: Arc<dyn ObjectStore>, prefix: Path, root_url: Url) -> Self {
        Self {
            store,
            prefix,
            root_url,
        }
    }

    fn key(&self, content_id: &str) -> Path {
        let fan = content_id.get(..2).unwrap_or("00");
        self.prefix.clone().join("blobs").join(fan).join(content_id)
    }

    /// The store and object path holding blob `content_id`.
    pub fn locate(&self, content_id: &str) -> (Arc<dyn ObjectStore>, Path) {
        (self.store.clone(), self.key(content_id))
    }

    /// The URI other engines can use to fetch this blob.
    pub fn uri(&self, content_id: &str) -> String {
        let fan = content_id.get(..2).unwrap_or("00");
        format!("{}blobs/{fan}/{content_id}", self.root_url)
    }

    /// The store and the path under which packs are kept.
    pub fn packs_location(&self) -> (Arc<dyn ObjectStore>, Path) {
        (self.store.clone(), self.prefix.clone().join("packs"))
    }

    /// The URI of the pack named `name` (the hex SHA-256 of its bytes).
    pub fn pack_uri(&self, name: &str) -> String {
        let fan = name.get(..2).unwrap_or("00");
        format!("{}packs/{fan}/{name}.pack", self.root_url)
    }

    /// Stores a pack under its name unless it is already there; its URI.
    pub async fn put_pack(&self, pack: &crate::packs::Pack) -> object_store::Result<String> {
        let fan = pack.name.get(..2).unwrap_or("00");
        let key = self
            .prefix
            .clone()
            .join("packs")
            .join(fan)
            .join(format!("{}.pack", pack.name));
        match self.store.head(&key).await {
            Ok(meta) if meta.size == pack.bytes.len() as u64 => {}
            _ => {
                self.store
                    .put(&key, PutPayload::from(pack.bytes.clone()))
                    .await?;
            }
        }
        Ok(self.pack_uri(&pack.name))
    }

    /// Stores `bytes` at `rel` (a `/`-separated path below the warehouse
    /// root, such as `packs/index/<uuid>.parquet`); its URI.
    pub async fn put_file(&self, rel: &str, bytes: Bytes) -> object_store::Result<String> {
        let key = self.rel_key(rel);
        self.store.put(&key, PutPayload::from(bytes)).await?;
        Ok(format!("{}{rel}", self.root_url))
    }

    fn rel_key(&self, rel: &str) -> Path {
        let mut key = self.prefix.clone();
        for part in rel.split('/').filter(|p| !p.is_empty()) {
            key = key.join(part);
        }
        key
    }

    /// Reads the file at `rel` (as [`Self::put_file`] names it), refusing
    /// one larger than `limit` bytes.
    pub async fn get_file(&self, rel: &str, limit: u64) -> crate::error::Result<Bytes> {
        use crate::error::Context;
        let key = self.rel_key(rel);
        let got = self
            .store
            .get(&key)
            .await
            .with_context(|| format!("cannot read {}{rel}", self.root_url))?;
        if got.meta.size > limit {
            crate::error::bail!(
                "{}{rel} is {} bytes, more than the {limit} expected",
                self.root_url,
                got.meta.size
            );
        }
        Ok(got.bytes().await?)
    }

    /// The files below `rel`: each one's path relative to the warehouse
    /// root and its last modification time.
    pub async fn list_files(
        &self,
        rel: &str,
    ) -> object_store::Result<Vec<(String, chrono::DateTime<chrono::Utc>)>> {
        use futures::TryStreamExt;
        let key = self.rel_key(rel);
        let strip = self.prefix.as_ref().len();
        let metas: Vec<object_store::ObjectMeta> =
            self.store.list(Some(&key)).try_collect().await?;
        Ok(metas
            .into_iter()
            .map(|m| {
                let full = m.location.as_ref();
                let rel = full[strip.min(full.len())..]
                    .trim_start_matches('/')
                    .to_string();
                (rel, m.last_modified)
            })
            .collect())
    }

    /// Deletes the file at `rel`; a missing file is not an error.
    pub async fn delete_file(&self, rel: &str) -> object_store::Result<()> {
        match self.store.delete(&self.rel_key(rel)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Stores `bytes` under `content_id` unless it is already there.
    pub async fn put(&self, content_id: &str, bytes: Bytes) -> object_store::Result<()> {
        let key = self.key(content_id);
        match self.store.head(&key).await {
            Ok(meta) if meta.size == bytes.len() as u64 => Ok(()),
            _ => self
                .store
                .put(&key, PutPayload::from(bytes))
                .await
                .map(|_| ()),
        }
    }
}
