//! The disk tier: verified chunks as files under `--cache-dir`, shared by
//! every mount of the node that is given the same directory, kept across
//! restarts, bounded in size.
//!
//! Layout (`v2` is the format; a later one would live beside it):
//!
//! ```text
//! DIR/v2/ab/<content id>                       a sample of one chunk: exactly its bytes
//! DIR/v2/ab/<content id>.<chunk>.<sha256>     one chunk of a larger sample
//! DIR/tmp/<pid>-<n>                            entries being written
//! DIR/index.db                                 sizes and last use (SQLite, WAL)
//! ```
//!
//! One level of 256 fan-out directories: `v1` had two (65,536), and an
//! epoch read after the kernel dropped its caches paid a disk read of a
//! directory per open (0.67x of the local disk's rate after a remount,
//! against 0.8x with one level). A directory of `v1` left by an earlier
//! version is deleted by the first process of this one that opens `DIR`.
//!
//! An entry holds the chunk's bytes and nothing else, and its name says
//! what they must hash to, so it checks itself: before its first use by a
//! process, an entry is read and hashed, and one that does not match (a
//! flipped bit, a truncated file, a file someone else put there) is
//! deleted, counted, logged, and the chunk fetched again. Verified entries
//! are remembered for the life of the process (the directory is private,
//! `0700`); a one-chunk sample's entry is then handed to the kernel for
//! passthrough reads.
//!
//! The protocol between processes sharing a directory (one user's mounts):
//! - An entry is written to a temporary file of the writer's own
//!   (`tmp/<pid>-<n>`, created exclusively) and renamed into place, so a
//!   name holds a whole entry or nothing; two writers of one key rename
//!   identical bytes over each other. Temporary files of a process that is
//!   gone are removed at start (a kill -9 mid-write leaves only those).
//! - `index.db` has one row per entry (name, size, last use); triggers
//!   keep the totals, so an entry written by two processes is counted
//!   once. SQLite's locks (busy timeout 10 s) serialise the writers; no
//!   other lock is taken, so there is nothing to deadlock on.
//! - Eviction, least recently used first, runs when the entries pass
//!   `max_bytes` or the filesystem's free space falls below `min_free`,
//!   down to 90% of the bound, inside one write transaction: rows deleted,
//!   files unlinked. A reader holding an evicted entry open keeps its
//!   bytes; the next lookup misses and fetches again.
//! - Uses are recorded in batches (once a second); an entry found on disk
//!   but missing from the index (a crash between rename and insert) is
//!   indexed on its next use, and by the scan each process makes when it
//!   opens the directory, which also deletes files whose names are not
//!   entries (256 at a time, one batch a second while entries are being
//!   used: readers come first).
//!
//! The disk is never in the way: writes go through a bounded queue to a
//! thread of their own (a full queue drops the write); a failing write
//! (disk full, read-only, gone) turns writes off for a minute, with one
//! warning, and the mount keeps serving from memory and the source.

use std::collections::HashSet;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::error::{Context, Result, bail};
use bytes::Bytes;
use sha2::{Digest, Sha256};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};

use super::store::{ChunkKey, ChunkStore, StoreStats};
use crate::content_id::{CHUNK, ContentId};
use crate::metrics::Metrics;

/// How large the disk tier may grow.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SizeLimit {
    /// At most this many bytes.
    Bytes(u64),
    /// At most this share (0..=1) of the filesystem's size.
    Share(f64),
}

impl std::str::FromStr for SizeLimit {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(p) = s.trim().strip_suffix('%') {
            let v: f64 = p.trim().parse().map_err(|_| {
                format!("expected a size like 200GiB or a share like 50%, got {s:?}")
            })?;
            if !(0.0..=100.0).contains(&v) || v == 0.0 {
                return Err(format!(
                    "a share of the disk must be above 0% and at most 100%, got {s:?}"
                ));
            }
            return Ok(SizeLimit::Share(v / 100.0));
        }
        crate::cli::parse_size(s).map(SizeLimit::Bytes)
    }
}

/// Where and how large the disk tier is.
#[derive(Debug, Clone)]
pub struct DiskConfig {
    /// The cache directory.
    pub dir: PathBuf,
    /// How large the entries may grow.
    pub max: SizeLimit,
    /// Share (0..1) of the filesystem kept free: entries are evicted, and
    /// none written, below it.
    pub min_free: f64,
}

impl DiskConfig {
    /// `dir` with the defaults: half the filesystem, 5% kept free.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            max: SizeLimit::Share(0.5),
            min_free: 0.05,
        }
    }
}

/// Most jobs queued for the writer thread, and most bytes of entries
/// waiting to be written; more writes are dropped (a slow disk must not
/// grow the daemon's memory).
const QUEUE: usize = 1024;
const PENDING_BYTES: u64 = 64 << 20;
/// How long writes stay off after a write failed.
const BACKOFF: Duration = Duration::from_secs(60);
/// Eviction frees down to this share of the bound.
const LOW_WATER: f64 = 0.9;

enum Job {
    /// Write an entry.
    Put(ChunkKey, Bytes),
    /// An entry was deleted (it failed verification).
    Forget(String),
    /// Reply once everything before is done.
    Flush(std::sync::mpsc::Sender<()>),
}

/// Entries put but not yet written, and their bytes.
#[derive(Default)]
struct Pending {
    entries: Mutex<std::collections::HashMap<ChunkKey, Bytes>>,
    bytes: AtomicU64,
}

impl Pending {
    fn get(&self, key: &ChunkKey) -> Option<Bytes> {
        self.entries.lock().ok()?.get(key).cloned()
    }

    /// Holds `bytes` for `key` unless that would pass the bound.
    fn add(&self, key: &ChunkKey, bytes: &Bytes) -> bool {
        let n = bytes.len() as u64;
        if self.bytes.load(Ordering::Relaxed) + n > PENDING_BYTES {
            return false;
        }
        let Ok(mut map) = self.entries.lock() else {
            return false;
        };
        if map.insert(*key, bytes.clone()).is_none() {
            self.bytes.fetch_add(n, Ordering::Relaxed);
        }
        true
    }

    fn done(&self, key: &ChunkKey) {
        if let Ok(mut map) = self.entries.lock()
            && let Some(b) = map.remove(key)
        {
            self.bytes.fetch_sub(b.len() as u64, Ordering::Relaxed);
        }
    }
}

/// Uses of entries not yet recorded in the index: the name and, when the
/// entry was read whole, its size (so an entry missing from the index is
/// indexed). Readers append here without waking the writer thread, which
/// records them with its next batch, at least once a second: an epoch
/// served from the disk tier costs the index one transaction a second,
/// not one per open.
#[derive(Default)]
struct Uses(Mutex<Vec<(String, Option<u64>, i64)>>);

impl Uses {
    /// Most uses held between two records; more are not recorded (a use
    /// only orders eviction).
    const MAX: usize = 1 << 16;

    fn add(&self, key: &ChunkKey, size: Option<u64>) {
        if let Ok(mut v) = self.0.lock()
            && v.len() < Self::MAX
        {
            v.push((entry_name(key), size, now_us()));
        }
    }

    fn take(&self) -> Vec<(String, Option<u64>, i64)> {
        self.0
            .lock()
            .map(|mut v| std::mem::take(&mut *v))
            .unwrap_or_default()
    }
}

/// The counters of a disk tier (also in [`Metrics`]).
struct Counters {
    hits: prometheus_client::metrics::counter::Counter,
    misses: prometheus_client::metrics::counter::Counter,
    dropped: prometheus_client::metrics::counter::Counter,
    checked: prometheus_client::metrics::counter::Counter,
}

/// The disk tier. See the module essay.
pub struct DiskStore {
    dir: PathBuf,
    verified: Arc<Mutex<HashSet<ChunkKey>>>,
    /// Entries queued for writing, answered from memory until written.
    pending: Arc<Pending>,
    uses: Arc<Uses>,
    jobs: SyncSender<Job>,
    bytes: Arc<AtomicU64>,
    entries: Arc<AtomicU64>,
    capacity: u64,
    writes_off: Arc<Mutex<Option<Instant>>>,
    warned: Arc<AtomicBool>,
    counters: Counters,
}

impl std::fmt::Debug for DiskStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskStore").field("dir", &self.dir).finish()
    }
}

/// Hex of `bytes`, lower case.
fn hex32(bytes: &[u8; 32]) -> String {
    hex::encode(bytes)
}

/// The directory of entries under `DIR`, named after their format.
const FORMAT: &str = "v2";
/// Directories of earlier formats, deleted when found.
const OLD_FORMATS: &[&str] = &["v1"];

/// Deletes the directories of earlier formats under `dir`; returns how
/// many files they held.
fn remove_old_formats(dir: &Path) -> u64 {
    let mut files = 0;
    for old in OLD_FORMATS {
        let path = dir.join(old);
        if std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) {
            files += count_files(&path);
            if let Err(e) = std::fs::remove_dir_all(&path) {
                tracing::warn!(
                    "cannot delete {} (an earlier cache format): {e}",
                    path.display()
                );
            }
        }
    }
    files
}

/// Regular files under `dir` (never following links).
fn count_files(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => count_files(&e.path()),
            Ok(t) if t.is_file() => 1,
            _ => 0,
        })
        .sum()
}

/// Deletes what an earlier format left: its files and its index rows
/// (names of another shape than this format's).
fn retire_old_formats(rt: &tokio::runtime::Runtime, pool: &SqlitePool, dir: &Path) {
    if !OLD_FORMATS.iter().any(|f| dir.join(f).exists()) {
        return;
    }
    let n = remove_old_formats(dir);
    let _ = rt.block_on(sqlx::query("DELETE FROM entries WHERE name LIKE '%/%/%'").execute(pool));
    tracing::info!(
        "deleted {n} entries of an earlier cache format in {}",
        dir.display()
    );
}

/// The file name of `key` (relative to `DIR/v2`).
pub fn entry_name(key: &ChunkKey) -> String {
    let id = key.id.hex();
    let fan = &id[..2];
    if key.is_whole() {
        format!("{fan}/{id}")
    } else {
        format!("{fan}/{id}.{}.{}", key.chunk, hex32(&key.digest))
    }
}

/// The key an entry's file name stands for; `None` for anything else.
pub fn parse_entry_name(file: &str) -> Option<ChunkKey> {
    let mut parts = file.split('.');
    let id = ContentId::parse(parts.next()?).ok()?;
    let (chunk, digest) = match (parts.next(), parts.next(), parts.next()) {
        (None, _, _) => return Some(ChunkKey::whole(id)),
        (Some(c), Some(d), None) => {
            let chunk: u32 = c.parse().ok()?;
            if c != chunk.to_string() {
                return None;
            }
            let d = ContentId::parse(d).ok()?;
            (chunk, d.0)
        }
        _ => return None,
    };
    let key = ChunkKey { id, chunk, digest };
    // A whole sample is only ever named by its id alone.
    (!key.is_whole()).then_some(key)
}

/// `(total, available)` bytes of the filesystem holding `dir`.
fn disk_space(dir: &Path) -> Option<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs is plain data; zeroed is a valid value to fill.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid path and a buffer of the right type.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    let unit = st.f_frsize as u64;
    Some((st.f_blocks as u64 * unit, st.f_bavail as u64 * unit))
}

/// Creates the cache directory `0700` if needed and checks it is a
/// private directory of this user's (an error to fix, where a disk that
/// cannot be written is only a warning).
pub fn prepare_dir(dir: &Path) -> Result<()> {
    private_dir(dir)
}

/// Creates `dir` `0700` if needed and checks it is a private directory
/// of this user's.
fn private_dir(dir: &Path) -> Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create the cache directory {}", dir.display()))?;
    crate::runtime::check_private_dir(dir, "cache directory")
}

impl DiskStore {
    /// Opens (creating) the cache directory: checks it is private, opens
    /// its index, removes temporary files of processes that are gone,
    /// starts the writer thread (which then scans the entries in the
    /// background). An error means no disk tier: the caller warns and
    /// serves without one.
    pub fn open(config: &DiskConfig, metrics: &Arc<Metrics>) -> Result<Arc<Self>> {
        let dir = std::path::absolute(&config.dir)
            .with_context(|| format!("bad cache directory {}", config.dir.display()))?;
        private_dir(&dir)?;
        for sub in [FORMAT, "tmp"] {
            private_dir(&dir.join(sub))?;
        }
        let (total, _) = disk_space(&dir).with_context(|| {
            format!(
                "cannot read the size of the filesystem of {}",
                dir.display()
            )
        })?;
        let capacity = match config.max {
            SizeLimit::Bytes(b) => b,
            SizeLimit::Share(s) => (total as f64 * s) as u64,
        };
        let min_free = (total as f64 * config.min_free.clamp(0.0, 0.9)) as u64;
        clean_tmp(&dir.join("tmp"));
        let (jobs, rx) = std::sync::mpsc::sync_channel(QUEUE);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let store = Arc::new(Self {
            dir: dir.clone(),
            verified: Arc::default(),
            pending: Arc::default(),
            uses: Arc::default(),
            jobs,
            bytes: Arc::default(),
            entries: Arc::default(),
            capacity,
            writes_off: Arc::default(),
            warned: Arc::default(),
            counters: Counters {
                hits: metrics.disk_hits.clone(),
                misses: metrics.disk_misses.clone(),
                dropped: metrics.disk_dropped.clone(),
                checked: metrics.disk_checked.clone(),
            },
        });
        let worker = Worker {
            dir: dir.clone(),
            capacity,
            min_free,
            verified: store.verified.clone(),
            pending: store.pending.clone(),
            uses: store.uses.clone(),
            bytes: store.bytes.clone(),
            entries: store.entries.clone(),
            writes_off: store.writes_off.clone(),
            warned: store.warned.clone(),
            evictions: metrics.disk_evictions.clone(),
            seq: 0,
        };
        std::thread::Builder::new()
            .name("cache-disk".into())
            .spawn(move || worker.run(rx, ready_tx))
            .context("cannot start the disk cache's writer")?;
        ready_rx
            .recv()
            .context("the disk cache's writer stopped")??;
        let watched = store.clone();
        metrics.watch_disk(move || {
            (
                watched.bytes.load(Ordering::Relaxed),
                watched.entries.load(Ordering::Relaxed),
            )
        });
        Ok(store)
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, key: &ChunkKey) -> PathBuf {
        self.dir.join(FORMAT).join(entry_name(key))
    }

    /// Whether this process has checked (or written) `key`'s entry; no
    /// I/O.
    pub fn is_checked(&self, key: &ChunkKey) -> bool {
        self.verified.lock().is_ok_and(|v| v.contains(key))
    }

    /// Remembers that this process checked `key`'s entry.
    fn mark_verified(&self, key: &ChunkKey) {
        if let Ok(mut v) = self.verified.lock()
            && v.insert(*key)
        {
            self.counters.checked.inc();
        }
    }

    /// Checks the entry of `key` ahead of its first use, so that the use
    /// (a passthrough open) finds it checked and does not wait for the
    /// read: whether it is on disk and good (a bad one is dropped, as at
    /// any first use). With `keep_pages` false its pages are dropped from
    /// the page cache afterwards (a view too large to stay there until it
    /// is read). Blocks on the disk.
    pub fn check_ahead(&self, key: &ChunkKey, keep_pages: bool) -> bool {
        if self.is_checked(key) {
            return true;
        }
        let Some((file, len)) = self.open_entry(key) else {
            return false;
        };
        let good = self.read_checked(key, &file, len).is_some();
        if !keep_pages {
            use std::os::fd::AsRawFd;
            // SAFETY: a descriptor this File owns; advice only.
            unsafe {
                libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED);
            }
        }
        good
    }

    /// [`ChunkStore::open_file`], and whether the open had to read and
    /// check the entry first (its first use by this process).
    pub fn open_checked(&self, key: &ChunkKey, size: u64) -> Option<(std::fs::File, bool)> {
        if !key.is_whole() {
            return None;
        }
        let (file, len) = self.open_entry(key)?;
        let checked_now = !self.is_checked(key);
        if checked_now {
            // Reads and checks it (and marks it verified) first.
            self.read_checked(key, &file, len)?;
        }
        if len != size {
            // Verified once, changed since (the kernel would serve it short).
            self.drop_bad(key, "its size changed after it was checked");
            return None;
        }
        self.counters.hits.inc();
        // Cleared: the kernel reads this file for us.
        use std::os::fd::AsRawFd;
        // SAFETY: fcntl on a descriptor this File owns.
        unsafe {
            let fl = libc::fcntl(file.as_raw_fd(), libc::F_GETFL);
            libc::fcntl(file.as_raw_fd(), libc::F_SETFL, fl & !libc::O_NONBLOCK);
        }
        self.uses.add(key, Some(len));
        Some((file, checked_now))
    }

    /// Deletes an entry that failed verification.
    fn drop_bad(&self, key: &ChunkKey, why: &str) {
        let path = self.path(key);
        let _ = std::fs::remove_file(&path);
        self.counters.dropped.inc();
        tracing::warn!(
            "cache entry {} dropped ({why}); fetching the chunk again",
            path.display()
        );
        eprintln!(
            "warning: cache entry {} dropped ({why}); fetching the chunk again",
            path.display()
        );
        let _ = self.jobs.try_send(Job::Forget(entry_name(key)));
    }

    /// Opens an entry's file (never through a symbolic link) with its size.
    fn open_entry(&self, key: &ChunkKey) -> Option<(std::fs::File, u64)> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(self.path(key))
            .ok()?;
        let meta = file.metadata().ok()?;
        if !meta.is_file() {
            self.drop_bad(key, "not a regular file");
            return None;
        }
        Some((file, meta.len()))
    }

    /// Reads an entry opened by [`Self::open_entry`], checking it (see
    /// [`check`]) if this process has not yet; a bad entry is dropped.
    fn read_checked(&self, key: &ChunkKey, file: &std::fs::File, len: u64) -> Option<Vec<u8>> {
        if len > CHUNK {
            self.drop_bad(key, "larger than a chunk");
            return None;
        }
        let buf = read_at_most(file, len, CHUNK).ok()?;
        if !self.is_checked(key) {
            if let Err(why) = check(key, file, &buf) {
                self.drop_bad(key, why);
                return None;
            }
            self.mark_verified(key);
        }
        Some(buf)
    }

    /// Reads an entry, checking it if this process has not yet.
    fn read_entry(&self, key: &ChunkKey) -> Option<Bytes> {
        let (file, len) = self.open_entry(key)?;
        let buf = self.read_checked(key, &file, len)?;
        self.uses.add(key, Some(buf.len() as u64));
        Some(Bytes::from(buf))
    }

    /// Waits until every write queued so far is on disk and indexed (for
    /// tests and `--warm`'s report).
    pub fn flush(&self) {
        let (tx, rx) = std::sync::mpsc::channel();
        if self.jobs.send(Job::Flush(tx)).is_ok() {
            let _ = rx.recv_timeout(Duration::from_secs(60));
        }
    }

    /// Whether writes are off (after a failure).
    fn writes_off(&self) -> bool {
        let Ok(mut off) = self.writes_off.lock() else {
            return true;
        };
        match *off {
            Some(until) if Instant::now() < until => true,
            Some(_) => {
                *off = None;
                false
            }
            None => false,
        }
    }
}

impl ChunkStore for DiskStore {
    fn get(&self, key: &ChunkKey) -> Option<Bytes> {
        let got = self.pending.get(key).or_else(|| self.read_entry(key));
        if got.is_some() {
            self.counters.hits.inc();
        } else {
            self.counters.misses.inc();
        }
        got
    }

    fn put(&self, key: &ChunkKey, bytes: &Bytes) {
        if self.writes_off() || !self.pending.add(key, bytes) {
            return;
        }
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) =
            self.jobs.try_send(Job::Put(*key, bytes.clone()))
        {
            self.pending.done(key);
        }
    }

    fn contains(&self, key: &ChunkKey) -> bool {
        self.pending.get(key).is_some()
            || std::fs::symlink_metadata(self.path(key)).is_ok_and(|m| m.is_file())
    }

    fn whole_sample(&self, id: &ContentId, chunks: u32) -> Option<Vec<Bytes>> {
        let hex = id.hex();
        let dir = self.dir.join(FORMAT).join(&hex[..2]);
        let prefix = format!("{hex}.");
        let mut keys: Vec<Option<ChunkKey>> = vec![None; chunks as usize];
        for e in std::fs::read_dir(&dir).ok()?.flatten() {
            let name = e.file_name();
            let Some(name) = name.to_str() else { continue };
            if !name.starts_with(&prefix) {
                continue;
            }
            if let Some(k) = parse_entry_name(name)
                && let Some(slot) = keys.get_mut(k.chunk as usize)
            {
                *slot = Some(k);
            }
        }
        let keys: Vec<ChunkKey> = keys.into_iter().collect::<Option<_>>()?;
        let mut whole = Sha256::new();
        let mut out = Vec::with_capacity(keys.len());
        for k in &keys {
            let (file, len) = self.open_entry(k)?;
            let buf = read_at_most(&file, len, CHUNK).ok()?;
            if <[u8; 32]>::from(Sha256::digest(&buf)) != k.digest {
                self.drop_bad(k, "its bytes do not hash to its name");
                return None;
            }
            whole.update(&buf);
            out.push(Bytes::from(buf));
        }
        if whole.finalize().as_slice() != id.0 {
            for k in &keys {
                self.drop_bad(k, "the sample's chunks do not hash to its content id");
            }
            return None;
        }
        for (k, b) in keys.iter().zip(&out) {
            self.mark_verified(k);
            self.uses.add(k, Some(b.len() as u64));
        }
        self.counters.hits.inc();
        Some(out)
    }

    fn open_file(&self, key: &ChunkKey, size: u64) -> Option<std::fs::File> {
        self.open_checked(key, size).map(|(file, _)| file)
    }

    fn stats(&self) -> StoreStats {
        StoreStats {
            bytes: self.bytes.load(Ordering::Relaxed),
            entries: self.entries.load(Ordering::Relaxed),
            capacity: self.capacity,
        }
    }
}

/// The extended attribute holding an entry's checksum, set by the process
/// that wrote it: the CRC32C of its bytes and their length
/// ([`checksum_value`]).
const CHECKSUM_XATTR: &std::ffi::CStr = c"user.lakemount.crc32c";

/// An entry's checksum attribute: CRC32C (4 bytes) and length (8 bytes),
/// little-endian.
fn checksum_value(bytes: &[u8]) -> [u8; 12] {
    let crc = crc_fast::checksum(crc_fast::CrcAlgorithm::Crc32Iscsi, bytes) as u32;
    let mut v = [0u8; 12];
    v[..4].copy_from_slice(&crc.to_le_bytes());
    v[4..].copy_from_slice(&(bytes.len() as u64).to_le_bytes());
    v
}

/// Records the checksum of `bytes` on `file`. Best effort: on a filesystem
/// without user extended attributes entries are checked by SHA-256.
fn set_checksum(file: &std::fs::File, bytes: &[u8]) {
    use std::os::fd::AsRawFd;
    let v = checksum_value(bytes);
    // SAFETY: a descriptor this File owns, a NUL-terminated name and a
    // buffer of the length given.
    unsafe {
        libc::fsetxattr(
            file.as_raw_fd(),
            CHECKSUM_XATTR.as_ptr(),
            v.as_ptr().cast(),
            v.len(),
            0,
        );
    }
}

/// The checksum attribute of `file`, if it has one of the right size.
fn get_checksum(file: &std::fs::File) -> Option<[u8; 12]> {
    use std::os::fd::AsRawFd;
    let mut v = [0u8; 12];
    // SAFETY: as in set_checksum; the kernel writes at most v.len() bytes.
    let n = unsafe {
        libc::fgetxattr(
            file.as_raw_fd(),
            CHECKSUM_XATTR.as_ptr(),
            v.as_mut_ptr().cast(),
            v.len(),
        )
    };
    (n == v.len() as isize).then_some(v)
}

/// Checks an entry's bytes before a process first uses them. An entry
/// written by a daemon carries the CRC32C and length of bytes that daemon
/// had verified against their SHA-256 (the content id or the chunk digest
/// its name holds); matching them catches a flipped bit, a truncation or a
/// stray write at a fraction of a SHA-256's cost. An entry without one (a
/// filesystem without user extended attributes, a file someone put there)
/// is hashed against its name, and given the attribute when it matches.
fn check(
    key: &ChunkKey,
    file: &std::fs::File,
    bytes: &[u8],
) -> std::result::Result<(), &'static str> {
    match get_checksum(file) {
        Some(v) if v == checksum_value(bytes) => Ok(()),
        Some(_) => Err("its bytes do not match the checksum it was written with"),
        None if <[u8; 32]>::from(Sha256::digest(bytes)) != key.digest => {
            Err("its bytes do not hash to its name")
        }
        None => {
            set_checksum(file, bytes);
            Ok(())
        }
    }
}

/// Reads `file` from its start: `len` bytes expected, at most `max`
/// (one more is read to tell a file that grew).
fn read_at_most(file: &std::fs::File, len: u64, max: u64) -> std::io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let cap = len.min(max) as usize + 1;
    let mut buf = vec![0u8; cap];
    let mut n = 0;
    while n < cap {
        match file.read_at(&mut buf[n..], n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(n);
    Ok(buf)
}

/// Removes temporary files whose writer is gone (or that are older than
/// an hour, whoever wrote them).
fn clean_tmp(tmp: &Path) {
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let pid: Option<u32> = name.split('-').next().and_then(|p| p.parse().ok());
        let alive = pid.is_some_and(|p| Path::new(&format!("/proc/{p}")).exists());
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().is_ok_and(|a| a > Duration::from_secs(3600)));
        if !alive || old {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// The writer thread: writes entries, keeps the index, evicts.
struct Worker {
    dir: PathBuf,
    capacity: u64,
    min_free: u64,
    verified: Arc<Mutex<HashSet<ChunkKey>>>,
    pending: Arc<Pending>,
    uses: Arc<Uses>,
    bytes: Arc<AtomicU64>,
    entries: Arc<AtomicU64>,
    writes_off: Arc<Mutex<Option<Instant>>>,
    warned: Arc<AtomicBool>,
    evictions: prometheus_client::metrics::counter::Counter,
    seq: u64,
}

/// Opens (creating) the index of the cache directory `dir`.
pub async fn open_index(dir: &Path) -> Result<SqlitePool> {
    let options = SqliteConnectOptions::new()
        .filename(dir.join("index.db"))
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_secs(10));
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await
        .with_context(|| {
            format!(
                "cannot open the cache index {}",
                dir.join("index.db").display()
            )
        })?;
    for stmt in [
        "CREATE TABLE IF NOT EXISTS entries (name TEXT PRIMARY KEY, size INTEGER NOT NULL, used INTEGER NOT NULL)",
        "CREATE INDEX IF NOT EXISTS entries_used ON entries(used)",
        "CREATE TABLE IF NOT EXISTS totals (id INTEGER PRIMARY KEY CHECK (id = 0), bytes INTEGER NOT NULL, entries INTEGER NOT NULL)",
        "INSERT OR IGNORE INTO totals VALUES (0, 0, 0)",
        "CREATE TRIGGER IF NOT EXISTS entries_in AFTER INSERT ON entries BEGIN \
           UPDATE totals SET bytes = bytes + NEW.size, entries = entries + 1; END",
        "CREATE TRIGGER IF NOT EXISTS entries_out AFTER DELETE ON entries BEGIN \
           UPDATE totals SET bytes = bytes - OLD.size, entries = entries - 1; END",
    ] {
        sqlx::query(stmt)
            .execute(&pool)
            .await
            .with_context(|| format!("cannot set up the cache index in {}", dir.display()))?;
    }
    Ok(pool)
}

/// `(bytes, entries)` the index counts.
pub async fn totals(pool: &SqlitePool) -> Result<(u64, u64)> {
    let row = sqlx::query("SELECT bytes, entries FROM totals WHERE id = 0")
        .fetch_one(pool)
        .await?;
    Ok((
        row.get::<i64, _>(0).max(0) as u64,
        row.get::<i64, _>(1).max(0) as u64,
    ))
}

fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

impl Worker {
    fn run(mut self, rx: Receiver<Job>, ready: std::sync::mpsc::Sender<Result<()>>) {
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                let _ = ready.send(Err(e.into()));
                return;
            }
        };
        let pool = match rt.block_on(open_index(&self.dir)) {
            Ok(p) => p,
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        };
        self.refresh(&rt, &pool);
        let _ = ready.send(Ok(()));
        retire_old_formats(&rt, &pool, &self.dir);
        let mut scan = Some(Scan::new(&self.dir.join(FORMAT)));
        let mut last_scan = Instant::now();
        loop {
            let first = match rx.recv_timeout(Duration::from_millis(if scan.is_some() {
                10
            } else {
                1000
            })) {
                Ok(job) => Some(job),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => None,
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            };
            let mut batch: Vec<Job> = first.into_iter().collect();
            while batch.len() < 512 {
                match rx.try_recv() {
                    Ok(j) => batch.push(j),
                    Err(_) => break,
                }
            }
            let mut flushes = Vec::new();
            let mut rows = Rows::default();
            for job in batch {
                match job {
                    Job::Put(key, bytes) => {
                        if let Some(name) = self.write(&key, &bytes) {
                            rows.used.push((name, Some(bytes.len() as u64), now_us()));
                        }
                        self.pending.done(&key);
                    }
                    Job::Forget(name) => rows.gone.push(name),
                    Job::Flush(done) => flushes.push(done),
                }
            }
            rows.used.extend(self.uses.take());
            // The scan reads directories and inodes readers may be
            // waiting for: while entries are being used, one batch a
            // second.
            if let Some(s) = &mut scan
                && (rows.used.is_empty() || last_scan.elapsed() >= Duration::from_secs(1))
            {
                last_scan = Instant::now();
                match s.next_batch(256) {
                    Some(found) => rows.found.extend(found),
                    None => scan = None,
                }
            }
            if !rows.is_empty()
                && let Err(e) = rt.block_on(rows.record(&pool))
            {
                self.failed(&format!("{e:#}"));
            }
            self.refresh(&rt, &pool);
            if let Err(e) = rt.block_on(self.evict(&pool)) {
                self.failed(&format!("{e:#}"));
            }
            for done in flushes {
                let _ = done.send(());
            }
        }
    }

    /// Writes one entry: a temporary file, then a rename into place.
    fn write(&mut self, key: &ChunkKey, bytes: &Bytes) -> Option<String> {
        if self.off() {
            return None;
        }
        if let Some((_, avail)) = disk_space(&self.dir)
            && avail < self.min_free + bytes.len() as u64
        {
            // Eviction keeps `min_free` free; short of it, something else
            // filled the disk (or --cache-dir-min-free is 0 and it is
            // full): writes off for a while, with the one warning.
            self.failed(&format!(
                "its filesystem is full: {avail} bytes free, {} to keep free",
                self.min_free
            ));
            return None;
        }
        let name = entry_name(key);
        let path = self.dir.join(FORMAT).join(&name);
        self.seq += 1;
        let tmp = self
            .dir
            .join("tmp")
            .join(format!("{}-{}", std::process::id(), self.seq));
        let result = (|| -> std::io::Result<()> {
            if let Some(parent) = path.parent() {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(parent)?;
            }
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(&tmp)?;
            f.write_all(bytes)?;
            set_checksum(&f, bytes);
            drop(f);
            std::fs::rename(&tmp, &path)
        })();
        match result {
            Ok(()) => {
                if let Ok(mut v) = self.verified.lock() {
                    v.insert(*key);
                }
                Some(name)
            }
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                self.failed(&e.to_string());
                None
            }
        }
    }

    fn off(&self) -> bool {
        self.writes_off
            .lock()
            .map_or(true, |o| o.is_some_and(|until| Instant::now() < until))
    }

    /// A write failed: writes off for a while, one warning per process.
    fn failed(&self, why: &str) {
        if let Ok(mut off) = self.writes_off.lock() {
            *off = Some(Instant::now() + BACKOFF);
        }
        if !self.warned.swap(true, Ordering::Relaxed) {
            tracing::warn!("cache directory {}: {why}", self.dir.display());
            eprintln!(
                "warning: cache directory {} cannot be written ({why}); serving from memory and the source, trying the disk again every {} s",
                self.dir.display(),
                BACKOFF.as_secs()
            );
        }
    }

    fn refresh(&self, rt: &tokio::runtime::Runtime, pool: &SqlitePool) {
        if let Ok((b, n)) = rt.block_on(totals(pool)) {
            self.bytes.store(b, Ordering::Relaxed);
            self.entries.store(n, Ordering::Relaxed);
        }
    }

    /// Evicts least recently used entries while over the bound or short
    /// of free space.
    async fn evict(&self, pool: &SqlitePool) -> Result<()> {
        let (bytes, _) = totals(pool).await?;
        let avail = disk_space(&self.dir).map_or(u64::MAX, |(_, a)| a);
        let over = bytes.saturating_sub((self.capacity as f64 * LOW_WATER) as u64);
        let short = self.min_free.saturating_sub(avail);
        if bytes <= self.capacity && avail >= self.min_free {
            return Ok(());
        }
        let need = over.max(short + (self.min_free / 10));
        evict_lru(pool, &self.dir, need, &self.evictions).await
    }
}

/// Index changes of one batch, applied in one transaction.
#[derive(Default)]
struct Rows {
    /// Entries written or used: (name, size if known, time of use).
    used: Vec<(String, Option<u64>, i64)>,
    /// Entries found by the scan: (name, size, mtime); known ones keep
    /// their time of use.
    found: Vec<(String, u64, i64)>,
    /// Entries deleted.
    gone: Vec<String>,
}

impl Rows {
    fn is_empty(&self) -> bool {
        self.used.is_empty() && self.found.is_empty() && self.gone.is_empty()
    }

    async fn record(&self, pool: &SqlitePool) -> Result<()> {
        let mut tx = pool.begin().await?;
        for (name, size, used) in &self.used {
            match size {
                None => {
                    sqlx::query("UPDATE entries SET used = ? WHERE name = ?")
                        .bind(used)
                        .bind(name)
                        .execute(&mut *tx)
                        .await?;
                }
                Some(size) => {
                    sqlx::query(
                        "INSERT INTO entries (name, size, used) VALUES (?, ?, ?) \
                         ON CONFLICT(name) DO UPDATE SET used = excluded.used",
                    )
                    .bind(name)
                    .bind(*size as i64)
                    .bind(used)
                    .execute(&mut *tx)
                    .await?;
                }
            }
        }
        for (name, size, mtime) in &self.found {
            sqlx::query("INSERT OR IGNORE INTO entries (name, size, used) VALUES (?, ?, ?)")
                .bind(name)
                .bind(*size as i64)
                .bind(mtime)
                .execute(&mut *tx)
                .await?;
        }
        for name in &self.gone {
            sqlx::query("DELETE FROM entries WHERE name = ?")
                .bind(name)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

/// Deletes least recently used entries until `need` bytes are freed.
async fn evict_lru(
    pool: &SqlitePool,
    dir: &Path,
    need: u64,
    evictions: &prometheus_client::metrics::counter::Counter,
) -> Result<()> {
    let mut tx = pool.begin().await?;
    let rows = sqlx::query("SELECT name, size FROM entries ORDER BY used LIMIT 4096")
        .fetch_all(&mut *tx)
        .await?;
    let mut freed = 0u64;
    for row in rows {
        if freed >= need {
            break;
        }
        let name: String = row.get(0);
        let size: i64 = row.get(1);
        let _ = std::fs::remove_file(dir.join(FORMAT).join(&name));
        sqlx::query("DELETE FROM entries WHERE name = ?")
            .bind(&name)
            .execute(&mut *tx)
            .await?;
        freed += size.max(0) as u64;
        evictions.inc();
    }
    tx.commit().await?;
    Ok(())
}

/// The scan each process makes of the entries when it opens the
/// directory, a few directories at a time: entries are indexed (used =
/// their mtime), files that are not entries deleted.
struct Scan {
    /// (`ab`, its path) of every fan-out directory not scanned yet.
    dirs: Vec<(String, PathBuf)>,
}

impl Scan {
    fn new(format_dir: &Path) -> Self {
        let mut dirs: Vec<(String, PathBuf)> = std::fs::read_dir(format_dir)
            .map(|d| {
                d.flatten()
                    .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
                    .collect()
            })
            .unwrap_or_default();
        dirs.sort();
        Self { dirs }
    }

    /// The entries of the next few directories; `None` when done.
    fn next_batch(&mut self, max_files: usize) -> Option<Vec<(String, u64, i64)>> {
        let mut out = Vec::new();
        while out.len() < max_files {
            let (fan, dir) = self.dirs.pop()?;
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let Ok(meta) = e.metadata() else { continue };
                let rel = format!("{fan}/{name}");
                let expected = parse_entry_name(&name).map(|k| entry_name(&k));
                if !meta.is_file() || expected.as_deref() != Some(rel.as_str()) {
                    let _ = std::fs::remove_file(e.path());
                    continue;
                }
                let used = meta
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_micros() as i64);
                out.push((rel, meta.len(), used));
            }
        }
        Some(out)
    }
}

/// What `lakemount cache stats` shows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DirStats {
    /// Entries the index counts.
    pub entries: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Microseconds since the epoch of the least recent use, if any entry.
    pub oldest_use_us: Option<i64>,
    /// Of the most recent use.
    pub newest_use_us: Option<i64>,
}

/// The index's view of the cache directory `dir`.
pub async fn dir_stats(dir: &Path) -> Result<DirStats> {
    check_existing(dir)?;
    let pool = open_index(dir).await?;
    let (bytes, entries) = totals(&pool).await?;
    let row = sqlx::query("SELECT MIN(used), MAX(used) FROM entries")
        .fetch_one(&pool)
        .await?;
    Ok(DirStats {
        entries,
        bytes,
        oldest_use_us: row.get(0),
        newest_use_us: row.get(1),
    })
}

/// What `lakemount cache verify` did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Entries read and found to hash to their names.
    pub good: u64,
    /// Entries deleted because their bytes did not.
    pub corrupt: u64,
    /// Files deleted because their names are not entries.
    pub foreign: u64,
    /// Index rows added for entries it lacked, or removed for files gone.
    pub reindexed: u64,
}

/// Re-checks every entry of the cache directory `dir` against its name,
/// deletes what fails and what is not an entry, and makes the index match
/// the files.
pub async fn verify_dir(dir: &Path) -> Result<VerifyReport> {
    check_existing(dir)?;
    let pool = open_index(dir).await?;
    let mut report = VerifyReport::default();
    let mut seen = HashSet::new();
    report.foreign += remove_old_formats(dir);
    let mut scan = Scan::new(&dir.join(FORMAT));
    let mut rows = Rows::default();
    while let Some((fan, path)) = scan.dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&path) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let rel = format!("{fan}/{name}");
            let key = parse_entry_name(&name).filter(|k| entry_name(k) == rel);
            let regular = e.file_type().is_ok_and(|t| t.is_file());
            let Some(key) = key.filter(|_| regular) else {
                let _ = std::fs::remove_file(e.path());
                report.foreign += 1;
                continue;
            };
            let good = crate::files::read_regular(&e.path(), CHUNK)
                .is_ok_and(|b| <[u8; 32]>::from(Sha256::digest(&b)) == key.digest);
            if good {
                report.good += 1;
                let size = e.metadata().map_or(0, |m| m.len());
                rows.found.push((rel.clone(), size, now_us()));
                seen.insert(rel);
            } else {
                let _ = std::fs::remove_file(e.path());
                rows.gone.push(rel);
                report.corrupt += 1;
            }
        }
    }
    let known: HashSet<String> = sqlx::query("SELECT name FROM entries")
        .fetch_all(&pool)
        .await?
        .into_iter()
        .map(|r| r.get::<String, _>(0))
        .collect();
    report.reindexed += seen.difference(&known).count() as u64;
    for name in &known {
        if !seen.contains(name) && !rows.gone.contains(name) {
            rows.gone.push(name.clone());
            report.reindexed += 1;
        }
    }
    rows.record(&pool).await?;
    Ok(report)
}

/// Deletes every entry of the cache directory `dir` (and their rows);
/// returns how many.
pub async fn clear_dir(dir: &Path) -> Result<u64> {
    check_existing(dir)?;
    let pool = open_index(dir).await?;
    let mut removed = remove_old_formats(dir);
    let mut scan = Scan::new(&dir.join(FORMAT));
    while let Some((_, path)) = scan.dirs.pop() {
        if let Ok(entries) = std::fs::read_dir(&path) {
            for e in entries.flatten() {
                if std::fs::remove_file(e.path()).is_ok() {
                    removed += 1;
                }
            }
        }
    }
    sqlx::query("DELETE FROM entries").execute(&pool).await?;
    Ok(removed)
}

/// Refuses a cache directory that does not exist or is not private.
fn check_existing(dir: &Path) -> Result<()> {
    if !dir.exists() {
        bail!("no cache directory at {}", dir.display());
    }
    crate::runtime::check_private_dir(dir, "cache directory")
}
