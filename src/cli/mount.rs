//! `lakemount mount`: its options, and resolving the specs it mounts.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Args;

use super::{WarehouseArgs, parse_size};
use crate::encode::builtin::BuiltinEncoder;
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
    /// directory in listing order (sorted names, as ImageFolder and `ls`
    /// read); random-order reads trigger nothing. 0 turns it off.
    #[arg(long, default_value_t = crate::mount::DEFAULT_PREFETCH, value_name = "N", help_heading = "Serving")]
    prefetch: usize,
    #[command(flatten)]
    rank: RankArgs,
    #[command(flatten)]
    pub(super) warehouse: WarehouseArgs,
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
}

impl RankArgs {
    /// The rank to show, checked.
    pub fn get(&self) -> Result<Option<MountRank>> {
        match (self.rank, self.world_size) {
            (Some(rank), Some(world_size)) => {
                if world_size == 0 || world_size > crate::spec::arrange::MAX_WORLD_SIZE {
                    bail!(
                        "--world-size must be between 1 and {}",
                        crate::spec::arrange::MAX_WORLD_SIZE
                    );
                }
                if rank >= world_size {
                    bail!(
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
) -> Result<Vec<std::sync::Arc<crate::view::View>>> {
    let specs = crate::spec::load_all(paths, table)?;
    let resolver = Resolver {
        catalog: wh.catalog.as_ref(),
        encoder: &BuiltinEncoder,
        trust: &wh.trust,
        storage: &wh.storage,
        rank,
    };
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
    let start = std::time::Instant::now();
    let wh = Warehouse::open(&args.warehouse.config(), false).await?;
    let rank = args.rank.get()?;
    let views = resolve_specs(&args.specs, &wh, &args.warehouse.table, rank).await?;
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
    };
    let source = LakeSource::new(&wh.trust.local_roots(), wh.storage.clone())
        .context("cannot open the warehouse directory for reading")?;
    let mounted = crate::mount::mount(views, &mountpoint, &opts, std::sync::Arc::new(source))?;
    release_freed_memory();
    eprintln!(
        "mounted {} at {} ({samples} samples, ready in {:.2} s); Ctrl-C or `lakemount umount {}` to unmount",
        names.join(", "),
        mountpoint.display(),
        start.elapsed().as_secs_f64(),
        mountpoint.display()
    );
    crate::mount::serve(mounted).await?;
    eprintln!("unmounted {}", mountpoint.display());
    Ok(ExitCode::SUCCESS)
}
