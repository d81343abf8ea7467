//! `lakemount mount`: its options, and resolving the specs it mounts.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::error::{Context, Result, bail};
use clap::Args;

use super::{WarehouseArgs, parse_size};
use crate::mount::release_freed_memory;
use crate::source::LakeSource;
use crate::view::Resolver;
use crate::view::arrange::MountRank;
use crate::warehouse::Warehouse;

#[derive(Debug, Args)]
pub struct MountArgs {
    /// Spec files, or directories whose *.yaml files are specs.
    #[arg(required = true, value_name = "SPEC_OR_DIR")]
    specs: Vec<PathBuf>,
    /// An existing empty directory to mount on.
    mountpoint: PathBuf,
    /// Bytes of sample data kept in memory (suffixes K, M, G, KiB, MiB, GiB).
    #[arg(long, default_value = "1GiB", value_parser = parse_size, help_heading = "Serving")]
    cache_size: u64,
    /// A directory on a local disk for a second cache tier: verified chunks
    /// kept across restarts and shared by every mount given the same
    /// directory (created 0700). Samples of up to 1 MiB found there are
    /// read by the kernel directly when running as root (passthrough).
    #[arg(
        long,
        env = "LAKEMOUNT_CACHE_DIR",
        value_name = "DIR",
        help_heading = "Serving"
    )]
    cache_dir: Option<PathBuf>,
    /// How large --cache-dir may grow: bytes (200GiB) or a share of its
    /// filesystem (50%).
    #[arg(
        long,
        default_value = "50%",
        value_name = "SIZE|N%",
        help_heading = "Serving"
    )]
    cache_dir_size: crate::cache::disk::SizeLimit,
    /// Share of --cache-dir's filesystem kept free: entries are evicted
    /// (and none written) below it.
    #[arg(long, default_value = "5%", value_parser = parse_share, value_name = "N%", help_heading = "Serving")]
    cache_dir_min_free: f64,
    /// FUSE worker threads; default one per CPU, 2 to 16 (cache hits and
    /// local blob files are read on them; remote fetches run on the async
    /// runtime).
    #[arg(long, default_value_t = crate::mount::default_threads(), help_heading = "Serving")]
    threads: usize,
    /// Let other users read the mount (needs root or user_allow_other in /etc/fuse.conf).
    #[arg(long, help_heading = "Serving")]
    allow_other: bool,
    /// Let the kernel read samples kept as local files (a local warehouse's
    /// blob store) directly, bypassing lakemount: much faster first reads,
    /// but no content-id check (a corrupt blob is served as it is; a missing
    /// or resized one still gives EIO). Needs root and Linux 6.9+; falls back
    /// to normal reads where unavailable.
    #[arg(long, help_heading = "Serving")]
    passthrough: bool,
    /// Samples fetched ahead, in the background, of a reader that walks a
    /// directory in name order (as ImageFolder and `ls` read) or a view in
    /// its listing order (`_index.jsonl`: shuffled, curriculum, ...);
    /// random-order reads trigger nothing. 0 turns it off.
    #[arg(long, default_value_t = crate::mount::DEFAULT_PREFETCH, value_name = "N", help_heading = "Serving")]
    prefetch: usize,
    /// Fetch every view into the cache in the background at mount, in
    /// listing order, while serving reads; stops where the cache is full.
    #[arg(long, help_heading = "Serving")]
    warm: bool,
    /// Do not fetch or check a view whole for readers that keep missing.
    /// Without this, a view of packed samples whose reads have had to fetch
    /// 16 times (a shuffled reader; a walking one is served by --prefetch)
    /// and that fits in the cache is fetched whole in the background, pack
    /// by pack, as --warm does at mount for every view; and a view whose
    /// opens have waited 16 times for the first check of a --cache-dir
    /// entry (after a restart) has its entries there checked in the
    /// background.
    #[arg(long, help_heading = "Serving")]
    no_auto_warm: bool,
    /// Serve Prometheus metrics over HTTP at HOST:PORT (e.g. 127.0.0.1:9464).
    #[arg(long, value_name = "HOST:PORT", help_heading = "Serving")]
    metrics: Option<String>,
    /// Mount in the background: return once the mount is ready (exit
    /// status 0) or has failed (1, with the error); the daemon logs to
    /// --log-file.
    #[arg(long, help_heading = "Daemon")]
    pub(super) daemon: bool,
    /// Where a --daemon mount logs [default: next to its status socket, see
    /// `lakemount status`].
    #[arg(
        long,
        value_name = "FILE",
        requires = "daemon",
        help_heading = "Daemon"
    )]
    log_file: Option<PathBuf>,
    #[command(flatten)]
    rank: RankArgs,
    #[command(flatten)]
    pub(super) warehouse: WarehouseArgs,
}

/// `5%` as 0.05.
fn parse_share(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim()
        .trim_end_matches('%')
        .trim()
        .parse()
        .map_err(|_| format!("expected a share like 5%, got {s:?}"))?;
    if !(0.0..90.0).contains(&v) {
        return Err(format!("expected a share from 0% to 90%, got {s:?}"));
    }
    Ok(v / 100.0)
}

/// `--rank R --world-size W`.
#[derive(Debug, Args)]
pub struct RankArgs {
    /// Show only this rank's shard of every view (`rank-<R>/`); needs --world-size.
    #[arg(
        long,
        value_name = "R",
        requires = "world_size",
        help_heading = "Training"
    )]
    rank: Option<u32>,
    /// Number of data-parallel ranks: views without a `shard:` key are cut
    /// into this many equal shards; one with a different `world_size` is an error.
    #[arg(long, value_name = "W", requires = "rank", help_heading = "Training")]
    world_size: Option<u32>,
    /// Resume views with `epochs:` at a global position a checkpoint
    /// reached: EPOCH:POS (samples of that epoch the whole job had read).
    /// Each rank directory of that epoch lists the samples from POS on,
    /// dealt over the mount's --world-size, then later epochs in full.
    #[arg(long, value_name = "EPOCH:POS", help_heading = "Training")]
    pub(super) resume_at: Option<crate::spec::Resume>,
}

impl RankArgs {
    /// The rank to show, checked.
    pub fn get(&self) -> Result<Option<MountRank>> {
        match (self.rank, self.world_size) {
            (Some(rank), Some(world_size)) => {
                if world_size == 0 || world_size > crate::spec::arrange::MAX_WORLD_SIZE {
                    bail!(
                        kind: Usage,
                        "--world-size must be between 1 and {}",
                        crate::spec::arrange::MAX_WORLD_SIZE
                    );
                }
                if rank >= world_size {
                    bail!(
                        kind: Usage,
                        "--rank {rank} is not below --world-size {world_size} (ranks count from 0)"
                    );
                }
                Ok(Some(MountRank { rank, world_size }))
            }
            _ => Ok(None),
        }
    }
}

/// Loads and resolves every spec; fails on the first invalid one.
pub(super) async fn resolve_specs(
    paths: &[PathBuf],
    wh: &Warehouse,
    table: &str,
    rank: Option<MountRank>,
    resume: Option<crate::spec::Resume>,
    encoder: &dyn crate::encode::Encoder,
) -> Result<Vec<std::sync::Arc<crate::view::View>>> {
    let specs = crate::spec::load_all(paths, table)?;
    let mut resolver = Resolver::new(wh, encoder, rank);
    resolver.resume = resume;
    let mut views = Vec::with_capacity(specs.len());
    for spec in &specs {
        views.push(std::sync::Arc::new(
            crate::view::resolve(spec, &resolver).await?,
        ));
    }
    Ok(views)
}

/// The local directory of a warehouse location, if it is one.
fn warehouse_dir(location: &str) -> Option<PathBuf> {
    let url = crate::warehouse::root_url(location).ok()?;
    (url.scheme() == "file")
        .then(|| url.to_file_path().ok())
        .flatten()
}

/// `lakemount mount`.
pub async fn run(args: MountArgs) -> Result<ExitCode> {
    let mountpoint = args.mountpoint.clone();
    let local_root = warehouse_dir(&args.warehouse.warehouse);
    crate::mount::check_mountpoint(&mountpoint, local_root.as_deref())?;
    // Refused before anything is mounted when another user prepared it.
    crate::runtime::ensure()?;
    let start = std::time::Instant::now();
    let wh = std::sync::Arc::new(Warehouse::open(&args.warehouse.config(), false).await?);
    let rank = args.rank.get()?;
    let encoder = crate::encode::load(&args.warehouse.encoder)?;
    let views = resolve_specs(
        &args.specs,
        &wh,
        &args.warehouse.table,
        rank,
        args.rank.resume_at,
        encoder.as_ref(),
    )
    .await?;
    release_freed_memory();
    let samples: usize = views.iter().map(|v| v.len()).sum();
    let names: Vec<String> = views
        .iter()
        .map(|v| format!("{} (snapshot {})", v.name, v.snapshot_id))
        .collect();
    let opts = crate::mount::MountOptions {
        cache_bytes: args.cache_size,
        threads: args.threads,
        allow_other: args.allow_other,
        passthrough: args.passthrough,
        prefetch: args.prefetch,
        cache_dir: args
            .cache_dir
            .as_ref()
            .map(|dir| crate::cache::disk::DiskConfig {
                dir: dir.clone(),
                max: args.cache_dir_size,
                min_free: args.cache_dir_min_free,
            }),
    };
    let source = LakeSource::new(&wh.trust.local_roots(), wh.storage.clone())
        .context("cannot open the warehouse directory for reading")?;
    // Until here a signal ends the process (nothing to unmount yet); from
    // here on it unmounts.
    let signals = crate::mount::Signals::catch()?;
    let mounted = crate::mount::mount(views, &mountpoint, &opts, std::sync::Arc::new(source))?;
    release_freed_memory();
    eprintln!(
        "mounted {} at {} ({samples} samples, ready in {:.2} s); Ctrl-C or `lakemount umount {}` to unmount",
        names.join(", "),
        mountpoint.display(),
        start.elapsed().as_secs_f64(),
        mountpoint.display()
    );
    let fs = mounted.fs().clone();
    let _status = crate::status::serve(fs.clone(), &mountpoint)?;
    let _watching = crate::watch::start(
        fs.clone(),
        args.specs.clone(),
        crate::watch::Resolving {
            warehouse: wh.clone(),
            table: args.warehouse.table.clone(),
            rank,
            resume: args.rank.resume_at,
            encoder,
        },
    )?;
    if let Some(addr) = &args.metrics {
        let bound = crate::metrics::serve(addr, fs.metrics().clone()).await?;
        eprintln!("metrics at http://{bound}/metrics");
    }
    let parallel = args.prefetch.clamp(8, 64);
    if !args.no_auto_warm {
        fs.set_auto_warm(parallel);
    }
    if args.warm {
        tokio::spawn(async move {
            let start = std::time::Instant::now();
            let (n, bytes) = fs.warm(parallel).await;
            eprintln!(
                "warm: {n} samples ({:.1} MB) in the cache after {:.1} s",
                bytes as f64 / 1e6,
                start.elapsed().as_secs_f64()
            );
        });
    }
    crate::daemon::report(Ok(()));
    crate::mount::serve(mounted, signals).await?;
    eprintln!("unmounted {}", mountpoint.display());
    Ok(ExitCode::SUCCESS)
}

/// `lakemount mount --daemon`: checks what can be checked here, then starts
/// the mount detached and waits until it is ready (see [`crate::daemon`]).
pub fn run_daemon(args: &MountArgs, argv: &[std::ffi::OsString]) -> ExitCode {
    let result = (|| -> Result<u32> {
        let local_root = warehouse_dir(&args.warehouse.warehouse);
        crate::mount::check_mountpoint(&args.mountpoint, local_root.as_deref())?;
        let log = match &args.log_file {
            Some(l) => l.clone(),
            None => crate::daemon::default_log(&args.mountpoint)?,
        };
        let child_args = foreground_args(&argv[1..]);
        let pid = crate::daemon::spawn(&child_args, &log)?;
        println!(
            "mounted at {} (daemon pid {pid}, log {}); `lakemount umount {}` to unmount",
            args.mountpoint.display(),
            log.display(),
            args.mountpoint.display()
        );
        Ok(pid)
    })();
    match result {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", crate::trust::redact(&format!("{e:#}")));
            ExitCode::from(e.kind().exit_code())
        }
    }
}

/// The same command line without `--daemon` and `--log-file [FILE]`: the
/// daemon's child runs in the foreground and logs to its stderr.
fn foreground_args(args: &[std::ffi::OsString]) -> Vec<std::ffi::OsString> {
    let mut out = Vec::with_capacity(args.len());
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--daemon" || a.to_string_lossy().starts_with("--log-file=") {
            continue;
        }
        if a == "--log-file" {
            it.next();
            continue;
        }
        out.push(a.clone());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_daemon_child_runs_in_the_foreground() {
        let args: Vec<std::ffi::OsString> = [
            "mount",
            "--daemon",
            "--log-file",
            "/var/log/x.log",
            "--warm",
            "--log-file=/y",
            "s.yaml",
            "/mnt",
        ]
        .iter()
        .map(Into::into)
        .collect();
        assert_eq!(
            foreground_args(&args),
            ["mount", "--warm", "s.yaml", "/mnt"]
                .iter()
                .map(std::ffi::OsString::from)
                .collect::<Vec<_>>()
        );
    }
}
