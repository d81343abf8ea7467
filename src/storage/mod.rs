//! How to reach a warehouse's storage: one set of settings, one place that
//! knows the object-store families, and every client (blobs and packs,
//! Lance, Iceberg's FileIO) built from them.
//!
//! A location's URL scheme picks its [`Family`]: `s3://` (and `s3a://`)
//! Amazon S3 or a compatible server, `az://` / `abfss://` Azure Blob
//! Storage (or Azurite), `file://` a local directory. Each family has its
//! object_store configuration keys (`aws_*`, `azure_*`) and the
//! environment variables it reads. Settings come from those variables and,
//! winning over them, from `--storage-option KEY=VALUE` (object_store's
//! keys, with or without the family prefix; a key without one is tried as
//! S3's, then Azure's). The same map reaches object_store (here), Lance
//! (which reads the same keys) and Iceberg, whose FileIO runs over our
//! object_store clients ([`fileio`]). Adding a family: a variant, its
//! schemes, its keys and environment variables, and its builder below.
//!
//! A custom S3 endpoint uses path-style addressing unless
//! `virtual_hosted_style_request=true`. Secrets never leave this type: its
//! `Debug` shows keys only.

pub mod fileio;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;

use object_store::ObjectStore;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
use serde::{Deserialize, Serialize};
use url::Url;

use crate::error::{Context, Result, bail};

/// A kind of object store, chosen by a location's URL scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// A local directory (`file://`).
    Local,
    /// Amazon S3 or a compatible server (`s3://`, `s3a://`).
    S3,
    /// Azure Blob Storage or Azurite (`az://`, `azure://`, `abfs://`, `abfss://`).
    Azure,
}

impl Family {
    /// The family serving `url`, or an error naming the schemes there are.
    pub fn of(url: &Url) -> Result<Self> {
        Ok(match url.scheme() {
            "file" => Family::Local,
            "s3" | "s3a" => Family::S3,
            "az" | "azure" | "abfs" | "abfss" => Family::Azure,
            other => bail!(
                kind: Usage,
                "{}: the {other}:// scheme is not supported; use a local path, \
                 s3://BUCKET/PREFIX or az://CONTAINER/PREFIX",
                crate::trust::redact(url.as_str())
            ),
        })
    }

    /// Whether the family is an object store (not a local directory).
    pub fn is_remote(self) -> bool {
        self != Family::Local
    }
}

/// Environment variables read, and the option each sets.
const ENV: &[(&str, &str)] = &[
    ("AWS_ACCESS_KEY_ID", "aws_access_key_id"),
    ("AWS_SECRET_ACCESS_KEY", "aws_secret_access_key"),
    ("AWS_SESSION_TOKEN", "aws_session_token"),
    ("AWS_DEFAULT_REGION", "aws_region"),
    ("AWS_REGION", "aws_region"),
    ("AWS_ENDPOINT", "aws_endpoint"),
    ("AWS_ENDPOINT_URL", "aws_endpoint"),
    ("AWS_ALLOW_HTTP", "aws_allow_http"),
    ("AZURE_STORAGE_ACCOUNT_NAME", "azure_storage_account_name"),
    ("AZURE_STORAGE_ACCOUNT_KEY", "azure_storage_account_key"),
    ("AZURE_STORAGE_SAS_TOKEN", "azure_storage_sas_key"),
    ("AZURE_STORAGE_ENDPOINT", "azure_storage_endpoint"),
    ("AZURE_STORAGE_USE_EMULATOR", "azure_storage_use_emulator"),
];

/// Environment variables whose values are secrets (registered for
/// redaction by the warehouse).
pub const SECRET_ENV: &[&str] = &[
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AZURE_STORAGE_ACCOUNT_KEY",
    "AZURE_STORAGE_SAS_TOKEN",
];

/// Whether the option `key` holds a secret.
pub fn is_secret(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    ["secret", "token", "key", "password", "sas"]
        .iter()
        .any(|s| k.contains(s))
        && !k.ends_with("_key_id")
        && k != "access_key_id"
}

/// Storage settings, in object_store's keys (`aws_*`, `azure_*`).
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Storage {
    options: BTreeMap<String, String>,
}

impl fmt::Debug for Storage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown: BTreeMap<&str, &str> = self
            .options
            .iter()
            .map(|(k, v)| (k.as_str(), if is_secret(k) { "***" } else { v.as_str() }))
            .collect();
        f.debug_struct("Storage").field("options", &shown).finish()
    }
}

/// The canonical option key for `key`: an S3 key, else an Azure key.
fn canonical_key(key: &str) -> Option<String> {
    let k = key.trim().to_ascii_lowercase();
    let s3 = |k: &str| {
        k.parse::<AmazonS3ConfigKey>()
            .ok()
            .map(|c| c.as_ref().to_string())
    };
    let azure = |k: &str| {
        k.parse::<AzureConfigKey>()
            .ok()
            .map(|c| c.as_ref().to_string())
    };
    if k.starts_with("aws_") {
        return s3(&k);
    }
    if k.starts_with("azure_") {
        return azure(&k);
    }
    s3(&format!("aws_{k}")).or_else(|| azure(&k))
}

impl Storage {
    /// Settings from the environment, overridden by `explicit` (`KEY=VALUE`).
    pub fn from_env(explicit: &[String]) -> Result<Self> {
        let mut options = BTreeMap::new();
        for (var, key) in ENV {
            if let Ok(v) = std::env::var(var)
                && !v.is_empty()
            {
                options.insert(key.to_string(), v);
            }
        }
        for kv in explicit {
            let Some((k, v)) = kv.split_once('=') else {
                bail!(
                    kind: Usage,
                    "--storage-option {}: expected KEY=VALUE, for example endpoint=http://127.0.0.1:8333",
                    if is_secret(kv) { "***" } else { kv.as_str() }
                );
            };
            let key = canonical_key(k)
                .with_context(|| {
                    format!(
                        "--storage-option {}: not an S3 or Azure setting (S3: endpoint, region, \
                     access_key_id, secret_access_key, session_token, allow_http, \
                     virtual_hosted_style_request; Azure: azure_storage_account_name, \
                     azure_storage_account_key, azure_storage_endpoint, azure_allow_http)",
                        k.trim()
                    )
                })
                .kind(crate::error::ErrorKind::Usage)?;
            options.insert(key, v.to_string());
        }
        for (endpoint, allow) in [
            ("aws_endpoint", "aws_allow_http"),
            ("azure_storage_endpoint", "azure_allow_http"),
        ] {
            if options
                .get(endpoint)
                .is_some_and(|e| e.starts_with("http://"))
            {
                options.entry(allow.into()).or_insert_with(|| "true".into());
            }
        }
        options
            .entry("aws_region".into())
            .or_insert_with(|| "us-east-1".into());
        Ok(Self { options })
    }

    /// The settings in object_store's and Lance's keys.
    pub fn lance_options(&self) -> HashMap<String, String> {
        self.options.clone().into_iter().collect()
    }

    /// Lance's object store parameters carrying these settings.
    pub fn lance_params(&self) -> lance::io::ObjectStoreParams {
        lance::io::ObjectStoreParams {
            storage_options_accessor: Some(Arc::new(
                lance::io::StorageOptionsAccessor::with_static_options(self.lance_options()),
            )),
            ..Default::default()
        }
    }

    /// Iceberg's storage for catalogs of an object-store warehouse: our
    /// clients, these settings.
    pub fn iceberg_factory(&self) -> Arc<dyn iceberg::io::StorageFactory> {
        Arc::new(fileio::ObjectStoreFactory::new(self.clone()))
    }

    /// An object store for the bucket or container (or local root) of `url`.
    pub fn object_store(&self, url: &Url) -> Result<Arc<dyn ObjectStore>> {
        let shown = crate::trust::redact(url.as_str());
        match Family::of(url)? {
            Family::Local => Ok(Arc::new(object_store::local::LocalFileSystem::new())),
            Family::S3 => {
                let bucket = url
                    .host_str()
                    .with_context(|| format!("{shown}: no bucket"))?;
                let mut b = AmazonS3Builder::new().with_bucket_name(bucket);
                for (k, v) in &self.options {
                    if let Ok(key) = k.parse::<AmazonS3ConfigKey>() {
                        b = b.with_config(key, v);
                    }
                }
                Ok(Arc::new(b.build().with_context(|| {
                    format!("cannot configure S3 access to {shown}")
                })?))
            }
            Family::Azure => {
                let mut b = MicrosoftAzureBuilder::new().with_url(url.as_str());
                for (k, v) in &self.options {
                    if let Ok(key) = k.parse::<AzureConfigKey>() {
                        b = b.with_config(key, v);
                    }
                }
                Ok(Arc::new(b.build().with_context(|| {
                    format!(
                        "cannot configure Azure access to {shown} (set AZURE_STORAGE_ACCOUNT_NAME \
                         and AZURE_STORAGE_ACCOUNT_KEY, or --storage-option azure_storage_account_name=...)"
                    )
                })?))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_canonical_and_secret() {
        let s = Storage::from_env(&[
            "endpoint=http://127.0.0.1:9000".into(),
            "access_key_id=K".into(),
            "aws_secret_access_key=S".into(),
            "account_name=devstoreaccount1".into(),
            "azure_storage_account_key=AKEY".into(),
            "azure_storage_endpoint=http://127.0.0.1:10000/devstoreaccount1".into(),
        ])
        .unwrap();
        let o = s.lance_options();
        assert_eq!(o["aws_endpoint"], "http://127.0.0.1:9000");
        assert_eq!(o["aws_access_key_id"], "K");
        assert_eq!(o["aws_allow_http"], "true");
        assert_eq!(o["azure_storage_account_name"], "devstoreaccount1");
        assert_eq!(o["azure_allow_http"], "true");
        let shown = format!("{s:?}");
        assert!(
            !shown.contains("\"S\"") && !shown.contains("AKEY"),
            "{shown}"
        );
        assert!(shown.contains("\"K\""), "{shown}");
        assert!(Storage::from_env(&["nonsense=1".into()]).is_err());
        let e = Storage::from_env(&["novalue".into()]).unwrap_err();
        assert_eq!(e.kind(), crate::error::ErrorKind::Usage);
    }

    #[test]
    fn schemes_pick_families() {
        let of = |u: &str| Family::of(&Url::parse(u).unwrap());
        assert_eq!(of("s3://b/p").unwrap(), Family::S3);
        assert_eq!(of("az://c/p").unwrap(), Family::Azure);
        assert_eq!(
            of("abfss://c@acct.dfs.core.windows.net/p").unwrap(),
            Family::Azure
        );
        assert_eq!(of("file:///tmp/x").unwrap(), Family::Local);
        let e = of("gs://b/p").unwrap_err();
        assert_eq!(e.kind(), crate::error::ErrorKind::Usage);
        assert!(e.to_string().contains("az://"), "{e}");
    }
}
