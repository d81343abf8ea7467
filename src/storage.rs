//! How to reach a warehouse's storage: one set of settings given to all
//! three clients that touch it, in the keys each expects.
//!
//! Settings come from the conventional environment variables
//! (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`,
//! `AWS_REGION`, `AWS_ENDPOINT_URL`, `AWS_ALLOW_HTTP`) and, winning over
//! them, from `--storage-option KEY=VALUE` (object_store's keys, with or
//! without the `aws_` prefix). They reach object_store (blobs, sample
//! reads), Lance (the vector table) and Iceberg's FileIO (metadata and data
//! files) as each one spells them. A custom endpoint uses path-style
//! addressing unless `virtual_hosted_style_request=true`.
//!
//! Secrets never leave this type: its `Debug` shows keys only.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;

use crate::error::{Context, Result, bail};
use object_store::ObjectStore;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use url::Url;

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
];

/// Keys whose values are secrets.
const SECRET: &[&str] = &["aws_secret_access_key", "aws_session_token"];

/// Storage settings, in object_store's `aws_*` keys.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Storage {
    options: BTreeMap<String, String>,
}

impl fmt::Debug for Storage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown: BTreeMap<&str, &str> = self
            .options
            .iter()
            .map(|(k, v)| {
                let v = if SECRET.contains(&k.as_str()) || k.contains("key") {
                    "***"
                } else {
                    v.as_str()
                };
                (k.as_str(), v)
            })
            .collect();
        f.debug_struct("Storage").field("options", &shown).finish()
    }
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
                    "--storage-option {kv:?}: expected KEY=VALUE, for example endpoint=http://127.0.0.1:8333"
                );
            };
            let k = k.trim().to_ascii_lowercase();
            let key = if k.starts_with("aws_") {
                k
            } else {
                format!("aws_{k}")
            };
            key.parse::<AmazonS3ConfigKey>().map_err(|_| {
                crate::error::err!(
                    "--storage-option {key}: not an S3 setting (examples: endpoint, region, access_key_id, \
                     secret_access_key, session_token, allow_http, virtual_hosted_style_request)"
                )
            })?;
            options.insert(key, v.to_string());
        }
        if let Some(endpoint) = options.get("aws_endpoint")
            && endpoint.starts_with("http://")
        {
            options
                .entry("aws_allow_http".into())
                .or_insert_with(|| "true".into());
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

    /// The settings as Iceberg FileIO properties (`s3.*`).
    pub fn iceberg_props(&self) -> HashMap<String, String> {
        let mut props = HashMap::new();
        for (from, to) in [
            ("aws_endpoint", "s3.endpoint"),
            ("aws_access_key_id", "s3.access-key-id"),
            ("aws_secret_access_key", "s3.secret-access-key"),
            ("aws_session_token", "s3.session-token"),
            ("aws_region", "s3.region"),
        ] {
            if let Some(v) = self.options.get(from) {
                props.insert(to.to_string(), v.clone());
            }
        }
        let virtual_hosted = self
            .options
            .get("aws_virtual_hosted_style_request")
            .is_some_and(|v| v == "true");
        props.insert("s3.path-style-access".into(), (!virtual_hosted).to_string());
        props
    }

    /// An object store for the bucket (or local root) of `url`.
    pub fn object_store(&self, url: &Url) -> Result<Arc<dyn ObjectStore>> {
        match url.scheme() {
            "s3" | "s3a" => {
                let bucket = url
                    .host_str()
                    .with_context(|| format!("{url}: no bucket"))?;
                let mut b = AmazonS3Builder::new().with_bucket_name(bucket);
                for (k, v) in &self.options {
                    if let Ok(key) = k.parse::<AmazonS3ConfigKey>() {
                        b = b.with_config(key, v);
                    }
                }
                Ok(Arc::new(b.build().with_context(|| {
                    format!("cannot configure S3 access to {url}")
                })?))
            }
            "file" => Ok(Arc::new(object_store::local::LocalFileSystem::new())),
            other => {
                bail!("{url}: the {other}:// scheme is not supported (use a local path or s3://)")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_map_to_each_client() {
        let s = Storage::from_env(&[
            "endpoint=http://127.0.0.1:9000".into(),
            "access_key_id=K".into(),
            "aws_secret_access_key=S".into(),
        ])
        .unwrap();
        let p = s.iceberg_props();
        assert_eq!(p["s3.endpoint"], "http://127.0.0.1:9000");
        assert_eq!(p["s3.access-key-id"], "K");
        assert_eq!(p["s3.secret-access-key"], "S");
        assert_eq!(p["s3.path-style-access"], "true");
        assert_eq!(s.lance_options()["aws_allow_http"], "true");
        assert!(!format!("{s:?}").contains("\"S\""), "{s:?}");
        assert!(Storage::from_env(&["nonsense=1".into()]).is_err());
        assert!(Storage::from_env(&["novalue".into()]).is_err());
    }
}
