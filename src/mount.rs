//! The mount session: check the mountpoint, mount, wait for a signal or an
//! external unmount, unmount cleanly; and `lakemount umount`, which also
//! clears a stale mount left by a daemon that was killed.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::error::{Context, Result, bail};
use fuser::{Config, MountOption, SessionACL};

use crate::cache::ChunkCache;
use crate::fs::ViewFs;
use crate::fuse::FuseAdapter;
use crate::source::Source;
use crate::view::View;

/// How the mount is served.
#[derive(Debug, Clone)]
pub struct MountOptions {
    /// Bytes the sample cache may hold.
    pub cache_bytes: u64,
    /// FUSE worker threads.
    pub threads: usize,
    /// Let other users (e.g. a training job under another uid) read the mount.
    pub allow_other: bool,
    /// Let the kernel read samples stored as local files directly (FUSE passthrough).
    pub passthrough: bool,
    /// Samples fetched ahead of a reader walking a directory's listing.
    pub prefetch: usize,
    /// The disk tier, if any (`--cache-dir`).
    pub cache_dir: Option<crate::cache::disk::DiskConfig>,
}

/// Samples fetched ahead by default. Over an object store each request
/// takes tens of milliseconds, so serving 1,000 samples/s takes tens of
/// requests in flight. Measured with 20 ms added per request, 8 readers in
/// listing order: 499 files/s with 16 ahead, about 1,000 with 64, 1,540
/// with 128, 1,950 with 256 (the no-delay figure was ~3,000). 128 is where
/// the delayed figure reaches half the undelayed one.
pub const DEFAULT_PREFETCH: usize = 128;

/// FUSE worker threads by default: one per CPU, at least 2, at most 16.
/// Measured on 2 cores with 2 readers: 2 threads serve 44% more first
/// touches and 30% more cached reads per second than 4, which contend for
/// the same cores (a single reader loses 5-10%).
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 16))
}

impl Default for MountOptions {
    fn default() -> Self {
        Self {
            cache_bytes: 1 << 30,
            threads: default_threads(),
            allow_other: false,
            passthrough: false,
            prefetch: DEFAULT_PREFETCH,
            cache_dir: None,
        }
    }
}

/// A live mount; dropping it unmounts.
pub struct Mounted {
    session: fuser::BackgroundSession,
    fs: Arc<ViewFs>,
}

impl Mounted {
    /// The filesystem being served.
    pub fn fs(&self) -> &Arc<ViewFs> {
        &self.fs
    }

    /// Whether the kernel side went away (someone ran `umount`).
    pub fn is_finished(&self) -> bool {
        self.session.guard.is_finished()
    }

    /// Unmounts and waits for the session thread.
    pub fn unmount(self) -> Result<()> {
        if self.session.guard.is_finished() {
            return self
                .session
                .join()
                .context("the FUSE session ended with an error");
        }
        self.session.umount_and_join().context("unmount failed")
    }
}

/// Refuses a mountpoint that is missing, not a directory, already mounted,
/// stale, not empty, or inside `warehouse` (a local warehouse directory):
/// mounting there would hide its files from the mount itself.
pub fn check_mountpoint(path: &Path, warehouse: Option<&Path>) -> Result<()> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => bail!(
            kind: Conflict,
            "{} is a stale mount (its daemon died); run `lakemount umount {}` first",
            path.display(),
            path.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "mountpoint {} does not exist; create it with `mkdir -p {}`",
            path.display(),
            path.display()
        ),
        Err(e) => {
            return Err(e).with_context(|| format!("cannot stat mountpoint {}", path.display()));
        }
    };
    if !meta.is_dir() {
        bail!("mountpoint {} is not a directory", path.display());
    }
    let parent = path.join("..");
    if let Ok(p) = std::fs::metadata(&parent)
        && p.dev() != meta.dev()
    {
        // The kernel may answer stat from cache for a dead daemon; listing tells.
        if let Err(e) = std::fs::read_dir(path)
            && e.raw_os_error() == Some(libc::ENOTCONN)
        {
            bail!(
                kind: Conflict,
                "{} is a stale mount (its daemon died); run `lakemount umount {}` first",
                path.display(),
                path.display()
            );
        }
        bail!(
            kind: Conflict,
            "{} is already a mount point; unmount it first (`lakemount umount {}`)",
            path.display(),
            path.display()
        );
    }
    if std::fs::read_dir(path)
        .with_context(|| format!("cannot list mountpoint {}", path.display()))?
        .next()
        .is_some()
    {
        bail!(
            "mountpoint {} is not empty; mount on an empty directory (its files would be hidden while mounted)",
            path.display()
        );
    }
    if let Some(wh) = warehouse
        && let (Ok(mp), Ok(wh)) = (path.canonicalize(), wh.canonicalize())
        && mp.starts_with(&wh)
    {
        bail!(
            "mountpoint {} is inside the warehouse {}; mount outside it (the warehouse's own files would be hidden)",
            path.display(),
            wh.display()
        );
    }
    Ok(())
}

/// Mounts `views` at `mountpoint`, reading samples from `source`, and
/// serves reads on the current tokio runtime. The mountpoint is checked
/// with [`check_mountpoint`] first.
pub fn mount(
    views: Vec<Arc<View>>,
    mountpoint: &Path,
    opts: &MountOptions,
    source: Arc<dyn Source>,
) -> Result<Mounted> {
    check_mountpoint(mountpoint, None)?;
    let metrics = Arc::new(crate::metrics::Metrics::new());
    let disk = match &opts.cache_dir {
        Some(config) => open_disk_tier(config, &metrics)?,
        None => None,
    };
    let tiers = crate::cache::Tiers {
        ram: Some(ChunkCache::ram_store(opts.cache_bytes, &metrics)),
        disk,
    };
    let has_disk = tiers.disk.is_some();
    let cache = ChunkCache::from_tiers(tiers, opts.cache_bytes, source, metrics);
    let fs = Arc::new(ViewFs::new(views, cache, opts.prefetch));
    // SAFETY: getuid/getgid have no preconditions and cannot fail.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    // The kernel takes backing files from root only.
    let adapter = FuseAdapter::new(
        fs.clone(),
        tokio::runtime::Handle::current(),
        uid,
        gid,
        opts.passthrough,
        has_disk && uid == 0,
    );
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::RO,
        MountOption::FSName("lakemount".into()),
        MountOption::Subtype("lakemount".into()),
        MountOption::DefaultPermissions,
        MountOption::NoDev,
        MountOption::NoSuid,
    ];
    if opts.allow_other {
        config.acl = SessionACL::All;
    }
    config.n_threads = Some(opts.threads.max(1));
    config.clone_fd = true;
    let session = fuser::spawn_mount(adapter, mountpoint, &config)
        .with_context(|| format!("cannot mount at {} (is /dev/fuse available, and are you root or is fusermount3 installed?)", mountpoint.display()))?;
    let notifier = session.notifier();
    fs.set_invalidator(move |name| {
        // The kernel may not have the entry cached: ENOENT is fine.
        let _ = notifier.inval_entry(fuser::INodeNo(crate::fs::ROOT), std::ffi::OsStr::new(name));
    });
    Ok(Mounted { session, fs })
}

/// Opens the disk tier. A directory that is not private is an error (a
/// setting to fix); one that cannot be used (read-only, its index
/// unreadable) is a warning, and the mount serves from memory and the
/// source.
fn open_disk_tier(
    config: &crate::cache::disk::DiskConfig,
    metrics: &Arc<crate::metrics::Metrics>,
) -> Result<Option<Arc<crate::cache::disk::DiskStore>>> {
    crate::cache::disk::prepare_dir(&config.dir)?;
    match crate::cache::disk::DiskStore::open(config, metrics) {
        Ok(d) => Ok(Some(d)),
        Err(e) => {
            let text = format!("{e:#}");
            tracing::warn!("--cache-dir {}: {text}", config.dir.display());
            eprintln!(
                "warning: --cache-dir {}: {text}; serving from memory and the source only",
                config.dir.display()
            );
            Ok(None)
        }
    }
}

/// SIGTERM and SIGINT, caught from just before the mount appears: a
/// signal sent as soon as the mountpoint shows up (a supervisor, a test)
/// unmounts cleanly instead of killing the daemon (with a default
/// disposition until `serve` started listening, the process died and the
/// mount was left behind).
pub struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    /// Catches them from now on (needs a tokio runtime).
    pub fn catch() -> Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }
}

/// Serves until SIGINT/SIGTERM or an external unmount, then unmounts.
pub async fn serve(mounted: Mounted, signals: Signals) -> Result<()> {
    let Signals { mut term, mut int } = signals;
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = tick.tick() => if mounted.is_finished() { break },
        }
    }
    tokio::task::spawn_blocking(move || mounted.unmount()).await?
}

/// The filesystem type and source of the mount at `path`, from
/// `/proc/self/mountinfo` (`None` when nothing is mounted there).
fn mount_type(path: &Path) -> Result<Option<(String, String)>> {
    let abs = std::path::absolute(path).with_context(|| format!("bad path {}", path.display()))?;
    // A stale mount cannot be canonicalised; its parent can.
    let abs = match (abs.parent(), abs.file_name()) {
        (Some(parent), Some(name)) => parent
            .canonicalize()
            .map(|p| p.join(name))
            .unwrap_or(abs.clone()),
        _ => abs.clone(),
    };
    let info = std::fs::read_to_string("/proc/self/mountinfo")
        .context("cannot read /proc/self/mountinfo")?;
    // The last entry for a mount point is the one on top.
    Ok(info
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let dash = fields.iter().position(|f| *f == "-")?;
            let point = unescape_mountinfo(fields.get(4)?);
            let fstype = fields.get(dash + 1)?.to_string();
            let source = unescape_mountinfo(fields.get(dash + 2)?);
            Some((point, (fstype, source)))
        })
        .filter(|(point, _)| Path::new(point) == abs)
        .map(|(_, what)| what)
        .next_back())
}

/// Mount points in mountinfo escape space, tab, newline and backslash as octal.
fn unescape_mountinfo(s: &str) -> String {
    let mut out = Vec::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8)
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Unmounts `mountpoint`, including a stale mount whose daemon died.
/// `lazy` detaches it even while files are open. Refuses anything that is
/// not a lakemount mount.
pub fn unmount(mountpoint: &Path, lazy: bool) -> Result<()> {
    match mount_type(mountpoint)? {
        Some((t, source))
            if t == "fuse.lakemount" || t.starts_with("fuse") && source == "lakemount" => {}
        Some((other, _)) => bail!(
            "{} is a {other} mount, not a lakemount one; refusing to unmount it (use umount(8) if you mean to)",
            mountpoint.display()
        ),
        None => bail!("{} is not mounted", mountpoint.display()),
    }
    let c = CString::new(mountpoint.as_os_str().as_bytes())
        .with_context(|| format!("bad path {}", mountpoint.display()))?;
    let flags = if lazy { libc::MNT_DETACH } else { 0 };
    // SAFETY: `c` is a valid NUL-terminated path that outlives the call.
    let rc = unsafe { libc::umount2(c.as_ptr(), flags) };
    if rc == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EINVAL) => bail!("{} is not mounted", mountpoint.display()),
        Some(libc::ENOENT) => bail!("{} does not exist", mountpoint.display()),
        Some(libc::EBUSY) => bail!(
            "{} is busy (a process has files open there); close them or use `lakemount umount --lazy`",
            mountpoint.display()
        ),
        Some(libc::EPERM) => {
            // Not root: fusermount3 may unmount FUSE mounts the user owns.
            let mut cmd = std::process::Command::new("fusermount3");
            cmd.arg("-u");
            if lazy {
                cmd.arg("-z");
            }
            let status = cmd
                .arg(mountpoint)
                .status()
                .context("unmount needs root or fusermount3 (Debian package fuse3)")?;
            if !status.success() {
                bail!("fusermount3 -u {} failed", mountpoint.display());
            }
            Ok(())
        }
        _ => Err(err).with_context(|| format!("cannot unmount {}", mountpoint.display())),
    }
}

/// A mount is a long-running process whose buffers (resolution scratch,
/// cache chunks) come and go, so its RSS should follow what it holds:
/// - every allocation of 128 KiB or more gets its own mapping, returned to
///   the system when freed (without a fixed threshold glibc raises it as
///   big blocks are freed, and later big blocks fragment the heap);
/// - one malloc arena: a sample read on one FUSE thread is evicted on
///   another, and per-thread arenas would each keep their own freed chunks
///   (measured: up to 60 MB above the cache size; with one arena, 8 MB).
///
/// Call before any thread starts: threads keep the arena they first use.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning; it has no preconditions.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Resolving a view allocates per-row scratch (maps, Arrow batches) that is
/// freed before mounting; give those pages back so a long-running mount's RSS
/// reflects what it keeps, not its peak while resolving.
pub fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free heap pages; it has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}
