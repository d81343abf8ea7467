//! What a mount counts, in the Prometheus text format: `--metrics ADDR`
//! serves it over HTTP, `lakemount status MOUNTPOINT` prints it.
//!
//! Counters are plain atomics updated on the read path (a handful of
//! relaxed increments per request); the registry only reads them when
//! scraped.

use std::sync::Arc;
use std::sync::OnceLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// The FUSE operations counted one by one (`op` label of
/// `lakemount_fuse_requests`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FuseOp {
    Lookup,
    Getattr,
    Open,
    Opendir,
    Read,
    Readdir,
    Readdirplus,
    Release,
    Getxattr,
    /// Everything else (`listxattr`, ...).
    Other,
}

impl FuseOp {
    /// Every operation, in label order.
    pub const ALL: [FuseOp; 10] = [
        FuseOp::Lookup,
        FuseOp::Getattr,
        FuseOp::Open,
        FuseOp::Opendir,
        FuseOp::Read,
        FuseOp::Readdir,
        FuseOp::Readdirplus,
        FuseOp::Release,
        FuseOp::Getxattr,
        FuseOp::Other,
    ];

    /// The `op` label.
    pub fn name(self) -> &'static str {
        match self {
            FuseOp::Lookup => "lookup",
            FuseOp::Getattr => "getattr",
            FuseOp::Open => "open",
            FuseOp::Opendir => "opendir",
            FuseOp::Read => "read",
            FuseOp::Readdir => "readdir",
            FuseOp::Readdirplus => "readdirplus",
            FuseOp::Release => "release",
            FuseOp::Getxattr => "getxattr",
            FuseOp::Other => "other",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabel {
    op: &'static str,
}

/// Every counter of a mount.
pub struct Metrics {
    registry: Registry,
    ops: Vec<Counter>,
    /// Bytes returned to readers, all files.
    pub bytes_served: Counter,
    /// Sample files read from their first byte.
    pub samples_served: Counter,
    /// Chunk lookups answered from the cache.
    pub cache_hits: Counter,
    /// Chunk lookups that had to fetch.
    pub cache_misses: Counter,
    /// Entries the cache evicted for space.
    pub cache_evictions: Counter,
    cache_bytes: Gauge,
    /// Seconds per storage request.
    pub fetch_seconds: Histogram,
    /// Storage requests that failed (or returned bytes that failed verification).
    pub fetch_errors: Counter,
    /// Samples fetched ahead of a reader.
    pub prefetch_issued: Counter,
    /// Samples first read after a prefetch had brought them in.
    pub prefetch_hits: Counter,
    /// Samples `--warm` brought into the cache.
    pub warm_samples: Counter,
    /// Chunk lookups the disk tier answered.
    pub disk_hits: Counter,
    /// Chunk lookups the disk tier could not answer.
    pub disk_misses: Counter,
    /// Disk-tier entries evicted for space.
    pub disk_evictions: Counter,
    /// Disk-tier entries that failed verification and were deleted.
    pub disk_dropped: Counter,
    /// Disk-tier entries this process read and checked before first
    /// using them (at the use, or ahead of it).
    pub disk_checked: Counter,
    disk_bytes: Gauge,
    disk_entries: Gauge,
    /// Reads the disk tier's (bytes, entries) at scrape time.
    disk_size: OnceLock<Box<dyn Fn() -> (u64, u64) + Send + Sync>>,
    views: Gauge,
    samples: Gauge,
    /// Reads the cache's current size in bytes, at scrape time.
    cache_size: OnceLock<Box<dyn Fn() -> u64 + Send + Sync>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh set of counters, registered.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("lakemount");
        let ops_family = Family::<OpLabel, Counter>::default();
        let ops = FuseOp::ALL
            .iter()
            .map(|op| ops_family.get_or_create(&OpLabel { op: op.name() }).clone())
            .collect();
        registry.register(
            "fuse_requests",
            "FUSE requests answered, by operation",
            ops_family,
        );
        let m = Self {
            registry: Registry::default(),
            ops,
            bytes_served: Counter::default(),
            samples_served: Counter::default(),
            cache_hits: Counter::default(),
            cache_misses: Counter::default(),
            cache_evictions: Counter::default(),
            cache_bytes: Gauge::default(),
            fetch_seconds: Histogram::new(exponential_buckets(0.000_1, 2.0, 18)),
            fetch_errors: Counter::default(),
            prefetch_issued: Counter::default(),
            prefetch_hits: Counter::default(),
            warm_samples: Counter::default(),
            disk_hits: Counter::default(),
            disk_misses: Counter::default(),
            disk_evictions: Counter::default(),
            disk_dropped: Counter::default(),
            disk_checked: Counter::default(),
            disk_bytes: Gauge::default(),
            disk_entries: Gauge::default(),
            disk_size: OnceLock::new(),
            views: Gauge::default(),
            samples: Gauge::default(),
            cache_size: OnceLock::new(),
        };
        let counters = [
            ("served_bytes", "Bytes returned to readers", &m.bytes_served),
            (
                "samples_served",
                "Sample files read from their first byte",
                &m.samples_served,
            ),
            (
                "cache_hits",
                "Chunk lookups answered from the cache",
                &m.cache_hits,
            ),
            (
                "cache_misses",
                "Chunk lookups that fetched from storage",
                &m.cache_misses,
            ),
            (
                "cache_evictions",
                "Cache entries evicted for space",
                &m.cache_evictions,
            ),
            (
                "fetch_errors",
                "Storage requests that failed or returned bytes that failed verification",
                &m.fetch_errors,
            ),
            (
                "prefetch_issued",
                "Samples fetched ahead of a reader",
                &m.prefetch_issued,
            ),
            (
                "prefetch_hits",
                "Samples first read after a prefetch had brought them in",
                &m.prefetch_hits,
            ),
            (
                "warm_samples",
                "Samples --warm brought into the cache",
                &m.warm_samples,
            ),
            (
                "disk_hits",
                "Chunk lookups the disk tier (--cache-dir) answered",
                &m.disk_hits,
            ),
            (
                "disk_misses",
                "Chunk lookups the disk tier could not answer",
                &m.disk_misses,
            ),
            (
                "disk_evictions",
                "Disk-tier entries evicted for space",
                &m.disk_evictions,
            ),
            (
                "disk_dropped",
                "Disk-tier entries that failed verification and were deleted",
                &m.disk_dropped,
            ),
            (
                "disk_checked",
                "Disk-tier entries this process read and checked before its first use of them",
                &m.disk_checked,
            ),
        ];
        for (name, help, c) in counters {
            registry.register(name, help, c.clone());
        }
        registry.register(
            "cache_bytes",
            "Bytes held in the cache",
            m.cache_bytes.clone(),
        );
        registry.register(
            "disk_bytes",
            "Bytes held in the disk tier (every process sharing it)",
            m.disk_bytes.clone(),
        );
        registry.register(
            "disk_entries",
            "Entries held in the disk tier (every process sharing it)",
            m.disk_entries.clone(),
        );
        registry.register("views", "Views mounted", m.views.clone());
        registry.register(
            "view_samples",
            "Samples in the mounted views",
            m.samples.clone(),
        );
        registry.register(
            "fetch_seconds",
            "Seconds per storage request",
            m.fetch_seconds.clone(),
        );
        Self { registry, ..m }
    }

    /// Counts one FUSE request of operation `op`.
    pub fn op(&self, op: FuseOp) {
        self.ops[op as usize].inc();
    }

    /// Records the mounted views: how many, and their samples.
    pub fn set_views(&self, views: usize, samples: usize) {
        self.views.set(views as i64);
        self.samples.set(samples as i64);
    }

    /// How to read the cache's size when scraped (set once, by the cache).
    pub fn watch_cache_bytes(&self, f: impl Fn() -> u64 + Send + Sync + 'static) {
        let _ = self.cache_size.set(Box::new(f));
    }

    /// How to read the disk tier's (bytes, entries) when scraped.
    pub fn watch_disk(&self, f: impl Fn() -> (u64, u64) + Send + Sync + 'static) {
        let _ = self.disk_size.set(Box::new(f));
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        if let Some(f) = self.cache_size.get() {
            self.cache_bytes.set(f() as i64);
        }
        if let Some(f) = self.disk_size.get() {
            let (bytes, entries) = f();
            self.disk_bytes.set(bytes as i64);
            self.disk_entries.set(entries as i64);
        }
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Serves `metrics` as `GET /metrics` (any path works) on `addr` until the
/// runtime stops. Returns once the socket is bound, so a bad address is an
/// error at mount.
pub async fn serve(
    addr: &str,
    metrics: Arc<Metrics>,
) -> crate::error::Result<std::net::SocketAddr> {
    use crate::error::Context;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
        format!("--metrics {addr}: cannot listen there (expected HOST:PORT, e.g. 127.0.0.1:9464)")
    })?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            let metrics = metrics.clone();
            tokio::spawn(async move {
                // Read the request head (bounded); the path is not checked.
                let mut buf = vec![0u8; 4096];
                let mut n = 0;
                while n < buf.len() {
                    match tokio::time::timeout(
                        std::time::Duration::from_secs(5),
                        stream.read(&mut buf[n..]),
                    )
                    .await
                    {
                        Ok(Ok(0)) | Err(_) | Ok(Err(_)) => break,
                        Ok(Ok(k)) => n += k,
                    }
                    if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
                let body = metrics.render();
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(head.as_bytes()).await;
                let _ = stream.write_all(body.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    Ok(local)
}
