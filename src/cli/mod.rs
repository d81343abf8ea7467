//! Command-line definitions and their dispatch. The library below never sees
//! clap: options are turned into typed configs here.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::error::{Context, Result};
use clap::{Args, Parser, Subcommand};

use crate::ingest::progress::ProgressMode;
use crate::ingest::{self, IngestConfig, InputSource, SplitRatios};
use crate::view::Resolver;
use crate::warehouse::{DEFAULT_TABLE, Warehouse, WarehouseConfig};

mod mount;
use mount::resolve_specs;

/// Exit status when the command worked but some inputs were rejected.
pub const EXIT_REJECTED: u8 = 3;

/// Mount Iceberg + Lance training data as plain read-only files.
#[derive(Debug, Parser)]
#[command(name = "lakemount", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

impl Cli {
    /// Whether the command embeds batches of samples (`ingest`, `embed`),
    /// which run one forward pass per core (see
    /// [`crate::encode::threads_for_batches`]).
    pub fn embeds_batches(&self) -> bool {
        matches!(
            self.command,
            Command::Ingest(_) | Command::Stage(_) | Command::Embed(_)
        )
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Store files as samples: blobs, embeddings in Lance, metadata in Iceberg.
    ///
    /// Reads an ImageFolder directory (DIR/<label>/<file>) or a CSV/JSONL
    /// manifest. Each batch is published atomically; re-running the same
    /// ingest adds nothing twice. Exit status: 0 when every file was
    /// ingested or already present, 3 when some files were rejected (listed
    /// in the summary), 1 on an error (nothing of the failing batch is
    /// visible).
    Ingest(IngestArgs),
    /// Stage one partition of a distributed ingest, publishing nothing.
    ///
    /// Does everything `ingest` does per file (read, hash, store blobs or
    /// packs, embed, write Lance fragments and Iceberg data files) and
    /// writes a staging manifest; `commit` later publishes any number of
    /// them in one snapshot. Run it anywhere that reaches the warehouse:
    /// Ray tasks (python -m lakemount.ray), Spark, Slurm, a shell loop.
    /// Prints one JSON line: the manifest's path and counts.
    Stage(StageArgs),
    /// Publish staged partitions in one linearizing commit.
    ///
    /// One Lance append of their fragments, then one Iceberg snapshot of
    /// their rows recording that Lance version; duplicates across
    /// partitions and against the table are dropped. Safe to re-run after
    /// a crash (what was committed is not committed twice); deletes the
    /// manifests it published.
    Commit(CommitArgs),
    /// Remove what failed or retried stages left behind.
    ///
    /// Deletes Lance data files no version lists, Iceberg data files no
    /// snapshot lists, and staging files, when older than --grace. Nothing
    /// any snapshot or Lance version uses is touched.
    Gc(GcArgs),
    /// List the table's snapshots, newest first, to pin one in a spec.
    Snapshots(SnapshotsArgs),
    /// Mount YAML dataset specs as read-only directories of plain files.
    ///
    /// Each spec becomes <MOUNTPOINT>/<name>/ holding the samples laid out by
    /// the spec's `layout`, a .npy embedding and a .json metadata sidecar per
    /// sample, `_index.jsonl` (every sample) and `_receipt.json` (what was
    /// resolved: snapshot, Lance version, row count, listing digest). Runs in
    /// the foreground (--daemon: in the background, returning once ready);
    /// Ctrl-C, SIGTERM or `lakemount umount` unmounts. If any spec is invalid
    /// nothing is mounted. Spec directories are watched: specs added, edited
    /// or removed there are applied without a remount (a spec that fails
    /// keeps the old view; the log says why).
    Mount(mount::MountArgs),
    /// Unmount a lakemount mountpoint, including a stale one whose daemon died.
    Umount(UmountArgs),
    /// Show a running mount's views and counters (the --metrics figures).
    Status(StatusArgs),
    /// Embed files or texts with --encoder and write the vectors as .npy
    /// (one row per input, in order): the code path ingest uses, for
    /// debugging and for building `similar: {to: {vector: ...}}` queries.
    Embed(EmbedArgs),
    /// Build a vector index (IVF-PQ) on the embeddings and a B-tree on content_id.
    ///
    /// Parameters are derived from the row count and dimension unless given.
    /// Similarity views use the newest index trained for their metric;
    /// without one they search exactly.
    Index(IndexArgs),
    /// Pin a spec: resolve `latest`, record the Lance version and, for a
    /// similarity spec, the query digest and the index used.
    ///
    /// Writes the pinned spec (comments kept) to OUT or standard output.
    /// Mounting it later, after any number of ingests or index builds, shows
    /// the identical listing, bytes and receipt.
    ///
    /// With --materialize the resolved view is also written whole to
    /// <warehouse>/views/<sha256>.parquet and the pinned spec names it: a
    /// mount then reads only its own rank's rows from that file (two ranged
    /// reads) instead of scanning the table.
    Pin(PinArgs),
    /// Print the files a spec's directory would show, without mounting.
    ///
    /// One line per file: size, a tab, then <spec name>/<path>.
    Ls(LsArgs),
    /// Gather the table's small samples (one object each) into packs, as a
    /// new snapshot.
    ///
    /// Reads every sample of at most 1 MiB that is its own object in the
    /// warehouse, checks it against its content id, writes packs of about
    /// --pack-size and a pack index, and commits a snapshot with no new rows
    /// that records them: views of it (and of later snapshots) read those
    /// samples from the packs, with one ranged request for many; views of
    /// earlier snapshots read what they always read. Nothing is deleted.
    Repack(RepackArgs),
    /// Inspect, re-check or empty a disk cache (a mount's --cache-dir).
    ///
    /// `stats` shows what the index counts; `verify` reads every entry,
    /// deletes those whose bytes do not hash to their names and files that
    /// are not entries, and makes the index match the files; `clear`
    /// deletes every entry. Safe while mounts use the directory (they
    /// fetch again what they miss).
    Cache(CacheArgs),
    /// Check the table's invariants on every snapshot (or those given).
    ///
    /// No content id listed twice; every row's Lance row present at the
    /// Lance version the snapshot goes with; every row's uri inside the
    /// warehouse or an allowed prefix. Prints the offending content ids and
    /// exits with status 1 when any snapshot fails.
    Check(CheckArgs),
}

/// Where the warehouse and its catalog are.
#[derive(Debug, Args)]
struct WarehouseArgs {
    /// Warehouse: a directory (or file:// URI), s3://BUCKET/PREFIX or
    /// az://CONTAINER/PREFIX (Azure Blob Storage), holding
    /// blobs, the Lance dataset, the Iceberg tables and, for a directory, the
    /// default SQLite catalog.
    #[arg(
        long,
        env = "LAKEMOUNT_WAREHOUSE",
        default_value = "./warehouse",
        help_heading = "Warehouse"
    )]
    warehouse: String,
    /// Iceberg catalog: sqlite:PATH or postgres://USER:PASS@HOST/DB (SQL
    /// catalog), or http(s)://HOST:PORT[/PATH] (REST catalog; also written
    /// rest+http(s)://...) [default for a directory warehouse:
    /// sqlite:<WAREHOUSE>/catalog.db; an object-store warehouse needs one].
    #[arg(
        long,
        env = "LAKEMOUNT_CATALOG",
        hide_env_values = true,
        help_heading = "Warehouse"
    )]
    catalog: Option<String>,
    /// Iceberg table, as <namespace>.<table>.
    #[arg(long, env = "LAKEMOUNT_TABLE", default_value = DEFAULT_TABLE, help_heading = "Warehouse")]
    table: String,
    /// Also read samples whose uri is below this directory or URI prefix
    /// (repeatable). By default only URIs inside the warehouse are read: the
    /// table is untrusted input and a row must not point a mount at any file.
    #[arg(long, value_name = "PATH_OR_URI", help_heading = "Warehouse")]
    allow_uri_prefix: Vec<String>,
    /// REST catalog property (repeatable): warehouse=NAME, credential=ID:SECRET
    /// (OAuth2 client credentials), token=TOKEN, scope=..., prefix=...,
    /// header.NAME=VALUE.
    #[arg(long, value_name = "KEY=VALUE", value_parser = parse_kv, help_heading = "Warehouse")]
    catalog_option: Vec<(String, String)>,
    /// Object-store setting (repeatable), over the AWS_* and AZURE_STORAGE_*
    /// environment variables. S3: endpoint=URL, region=R, access_key_id=...,
    /// secret_access_key=..., session_token=..., allow_http=true,
    /// virtual_hosted_style_request=true. Azure: azure_storage_account_name=...,
    /// azure_storage_account_key=..., azure_storage_endpoint=URL.
    #[arg(long, value_name = "KEY=VALUE", help_heading = "Warehouse")]
    storage_option: Vec<String>,
    /// Embedding model: builtin (weight-free, the default); clip:DIR (a
    /// CLIP checkpoint folder: images and text); text:DIR (a BERT-family
    /// sentence encoder such as all-MiniLM-L6-v2: text); whisper:DIR (a
    /// Whisper checkpoint: audio, WAV/FLAC/MP3/Ogg). Folders hold
    /// config.json, model.safetensors and (clip, text) tokenizer.json.
    /// Ingest embeds with it; views encode `to.file` and `to.text` queries
    /// with it. A table keeps one model.
    #[arg(
        long,
        env = "LAKEMOUNT_ENCODER",
        default_value = "builtin",
        help_heading = "Encoder"
    )]
    encoder: String,
}

impl IngestOptions {
    fn config(&self, input: InputSource) -> IngestConfig {
        IngestConfig {
            input,
            batch_size: self.batch_size,
            inline_blobs: self.inline_blobs,
            split: self.split,
            embeddings: self.embeddings.clone(),
            embedding_model: self.embedding_model.clone(),
            source: self.source.clone(),
            progress: if self.quiet {
                ProgressMode::Quiet
            } else {
                ProgressMode::Auto
            },
            allow_path_prefixes: self.allow_path_prefix.clone(),
            max_sample_bytes: self.max_sample_size,
            pack: self.pack,
            pack_size: self.pack_size,
        }
    }
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.trim().to_string(), v.to_string()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("expected KEY=VALUE, got {s:?}"))
}

impl WarehouseArgs {
    fn config(&self) -> WarehouseConfig {
        WarehouseConfig {
            location: self.warehouse.clone(),
            catalog: self.catalog.clone(),
            table: self.table.clone(),
            allow_uri_prefixes: self.allow_uri_prefix.clone(),
            catalog_options: self.catalog_option.clone(),
            storage_options: self.storage_option.clone(),
        }
    }
}

#[derive(Debug, Args)]
struct RepackArgs {
    /// Size of a pack (suffixes K, M, G, KiB, MiB, GiB).
    #[arg(long, default_value = "64MiB", value_parser = parse_size)]
    pack_size: u64,
    #[command(flatten)]
    warehouse: WarehouseArgs,
}

#[derive(Debug, Args)]
struct CacheArgs {
    #[command(subcommand)]
    action: CacheAction,
}

#[derive(Debug, Subcommand)]
enum CacheAction {
    /// Entries, bytes and the span of their last use.
    Stats {
        /// The cache directory.
        dir: PathBuf,
    },
    /// Re-check every entry against its digest; delete what fails.
    Verify {
        /// The cache directory.
        dir: PathBuf,
    },
    /// Delete every entry.
    Clear {
        /// The cache directory.
        dir: PathBuf,
    },
}

#[derive(Debug, Args)]
struct CheckArgs {
    /// Snapshot ids to check [default: every snapshot].
    #[arg(long = "snapshot", value_name = "ID")]
    snapshots: Vec<i64>,
    #[command(flatten)]
    warehouse: WarehouseArgs,
}

#[derive(Debug, Args)]
struct IngestArgs {
    /// ImageFolder directory: DIR/<label>/<file>.
    #[arg(required_unless_present = "manifest", conflicts_with = "manifest")]
    dir: Option<PathBuf>,
    /// CSV or JSONL manifest with a `path` column (relative to the manifest's
    /// folder), optional `label`, `split`, `source`, and any extra columns,
    /// which become typed Iceberg columns.
    #[arg(long, help_heading = "Input")]
    manifest: Option<PathBuf>,
    #[command(flatten)]
    opts: IngestOptions,
}

/// What `ingest` and `stage` share besides the input.
#[derive(Debug, Args)]
struct IngestOptions {
    /// Precomputed embeddings (.npy, float32, shape (rows, dim)), one row per
    /// manifest row, instead of the built-in encoder.
    #[arg(long, requires = "manifest", help_heading = "Embeddings")]
    embeddings: Option<PathBuf>,
    /// Value of `embedding_model` for --embeddings [default: precomputed:<file stem>].
    #[arg(long, requires = "embeddings", help_heading = "Embeddings")]
    embedding_model: Option<String>,
    /// Store the bytes inside the Lance table (blob column) instead of the
    /// blob store, so one random access returns embedding and bytes.
    #[arg(long, help_heading = "Storage")]
    inline_blobs: bool,
    /// Train,val,test fractions for rows without a manifest `split`; the
    /// split is a pure function of the content hash.
    #[arg(long, default_value = "0.8,0.1,0.1", help_heading = "Samples")]
    split: SplitRatios,
    /// `source` for rows without a manifest `source` [default: the file's path].
    #[arg(long, help_heading = "Samples")]
    source: Option<String>,
    /// Directory outside the manifest's folder whose files the manifest may
    /// name (repeatable). Without it, a manifest names only files below its
    /// own folder (no absolute paths, no `..`, no symbolic links leading out).
    #[arg(long, value_name = "DIR", help_heading = "Input")]
    allow_path_prefix: Vec<PathBuf>,
    /// Largest file ingested as one sample; larger ones are rejected
    /// (suffixes K, M, G, KiB, MiB, GiB).
    #[arg(long, default_value = "4GiB", value_parser = parse_size, help_heading = "Input")]
    max_sample_size: u64,
    /// Pack samples of up to 1 MiB into objects of about --pack-size, so a
    /// mount reads many with one ranged request: auto (for object-store
    /// warehouses), on or off (one object per sample).
    #[arg(
        long,
        default_value = "auto",
        value_name = "auto|on|off",
        help_heading = "Storage"
    )]
    pack: crate::ingest::PackMode,
    /// Size of a pack (suffixes K, M, G, KiB, MiB, GiB).
    #[arg(long, default_value = "64MiB", value_parser = parse_size, help_heading = "Storage")]
    pack_size: u64,
    /// Files per atomic commit (one Lance append + one Iceberg snapshot).
    #[arg(long, default_value_t = 1024, help_heading = "Storage")]
    batch_size: usize,
    /// No progress output.
    #[arg(long, short)]
    quiet: bool,
    #[command(flatten)]
    warehouse: WarehouseArgs,
}

#[derive(Debug, Args)]
struct StageArgs {
    /// ImageFolder directory: DIR/<label>/<file>.
    #[arg(conflicts_with_all = ["manifest", "serve"])]
    dir: Option<PathBuf>,
    /// CSV or JSONL manifest, as for `ingest`.
    #[arg(long, conflicts_with = "serve", help_heading = "Input")]
    manifest: Option<PathBuf>,
    /// The job this partition belongs to: its manifests are kept under
    /// <warehouse>/staging/<table>/<JOB>/ until `commit --job JOB`.
    #[arg(long)]
    job: String,
    /// The partition's name within the job [required without --serve
    /// or --list].
    #[arg(long, required_unless_present_any = ["serve", "list"])]
    partition: Option<String>,
    /// Print the job's state as JSON: partitions staged and not yet
    /// published (with their manifests) and partitions published.
    #[arg(long, conflicts_with_all = ["serve", "dir", "manifest"])]
    list: bool,
    /// Stage many partitions with one loaded encoder: read one JSON request
    /// per line on standard input ({"partition": NAME, "manifest": PATH} or
    /// {"partition": NAME, "dir": PATH}) and answer one JSON line each.
    #[arg(long)]
    serve: bool,
    #[command(flatten)]
    opts: IngestOptions,
}

#[derive(Debug, Args)]
struct CommitArgs {
    /// Staging manifests to publish (paths below the warehouse root, as
    /// `stage` prints them), in priority order.
    #[arg(required_unless_present = "job", conflicts_with = "job")]
    staged: Vec<String>,
    /// Publish every manifest staged for this job (oldest first).
    #[arg(long)]
    job: Option<String>,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    warehouse: WarehouseArgs,
}

#[derive(Debug, Args)]
struct GcArgs {
    /// Leave files younger than this alone (s, m, h, d suffixes); must
    /// exceed the time between a partition's stage and its commit.
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    grace: std::time::Duration,
    /// Count what would be removed; remove nothing.
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    warehouse: WarehouseArgs,
}

#[derive(Debug, Args)]
struct IndexArgs {
    /// IVF partitions [default: sqrt(rows)].
    #[arg(long)]
    partitions: Option<usize>,
    /// PQ sub-vectors; must divide the dimension [default: dim/8].
    #[arg(long)]
    sub_vectors: Option<usize>,
    /// Metric the index serves: cosine, l2 or dot.
    #[arg(long, default_value = "cosine")]
    metric: crate::spec::Metric,
    /// Skip the B-tree index on content_id.
    #[arg(long)]
    no_scalar: bool,
    #[command(flatten)]
    warehouse: WarehouseArgs,
}

#[derive(Debug, Args)]
struct PinArgs {
    /// The spec to pin.
    spec: PathBuf,
    /// Where to write the pinned spec [default: standard output].
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Also write the resolved view to the warehouse and name it in the
    /// pinned spec, so mounts read it instead of resolving.
    #[arg(long)]
    materialize: bool,
    /// The world size the mounts will use (--world-size), for a spec
    /// without `shard`: the view is written cut into this many ranks, one
    /// row group each [default: the spec's shard.world_size, else none].
    #[arg(long, requires = "materialize", value_name = "W")]
    world_size: Option<u32>,
    #[command(flatten)]
    warehouse: WarehouseArgs,
}

#[derive(Debug, Args)]
struct EmbedArgs {
    /// Files to embed (media type from their bytes and extension).
    files: Vec<PathBuf>,
    /// A text to embed (repeatable), after the files.
    #[arg(long)]
    text: Vec<String>,
    /// The .npy file to write: shape (inputs, dim), float32.
    #[arg(short, long)]
    output: PathBuf,
    /// Embedding model: builtin, clip:DIR, text:DIR or whisper:DIR (see
    /// `lakemount ingest --help`).
    #[arg(long, env = "LAKEMOUNT_ENCODER", default_value = "builtin")]
    encoder: String,
    /// Inputs per forward pass (texts are padded to the longest in it).
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
}

#[derive(Debug, Args)]
struct StatusArgs {
    /// The mountpoint.
    mountpoint: PathBuf,
    /// Print the raw JSON document.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct UmountArgs {
    /// The mountpoint.
    mountpoint: PathBuf,
    /// Detach now even if files are open; the kernel finishes when they close.
    #[arg(long)]
    lazy: bool,
}

#[derive(Debug, Args)]
struct LsArgs {
    /// Spec files or directories of *.yaml specs.
    #[arg(required = true)]
    specs: Vec<PathBuf>,
    #[command(flatten)]
    rank: mount::RankArgs,
    #[command(flatten)]
    warehouse: WarehouseArgs,
}

#[derive(Debug, Args)]
struct SnapshotsArgs {
    #[command(flatten)]
    warehouse: WarehouseArgs,
}

/// The long options of `lakemount mount`, each with whether it takes a
/// value (for the fstab helper, which accepts exactly these).
pub fn mount_options() -> Vec<(String, bool)> {
    use clap::CommandFactory;
    let cmd = Cli::command();
    cmd.find_subcommand("mount")
        .map(|m| {
            m.get_arguments()
                .filter_map(|a| {
                    let long = a.get_long()?;
                    Some((long.to_string(), a.get_action().takes_values()))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Runs a parsed command line (`argv`: the arguments it was parsed from)
/// and returns the process exit status.
pub fn run(cli: Cli, argv: Vec<std::ffi::OsString>) -> ExitCode {
    if let Command::Mount(args) = &cli.command
        && args.daemon
    {
        return mount::run_daemon(args, &argv);
    }
    if matches!(cli.command, Command::Mount(_)) {
        // Before any thread starts: threads keep the arena they first use.
        crate::mount::tune_allocator();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Ingest(args) => run_ingest(args).await,
            Command::Stage(args) => run_stage(args).await,
            Command::Commit(args) => run_commit(args).await,
            Command::Gc(args) => run_gc(args).await,
            Command::Snapshots(args) => run_snapshots(args).await,
            Command::Mount(args) => mount::run(args).await,
            Command::Umount(args) => {
                crate::mount::unmount(&args.mountpoint, args.lazy)?;
                println!("unmounted {}", args.mountpoint.display());
                Ok(ExitCode::SUCCESS)
            }
            Command::Ls(args) => run_ls(args).await,
            Command::Index(args) => run_index(args).await,
            Command::Pin(args) => run_pin(args).await,
            Command::Check(args) => run_check(args).await,
            Command::Cache(args) => run_cache(args).await,
            Command::Repack(args) => run_repack(args).await,
            Command::Embed(args) => run_embed(args),
            Command::Status(args) => {
                let doc = crate::status::query(&args.mountpoint)?;
                if args.json {
                    println!("{doc:#}");
                } else {
                    crate::status::print(&doc);
                }
                Ok(ExitCode::SUCCESS)
            }
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            let message = crate::trust::redact(&format!("{e:#}"));
            crate::daemon::report(Err((e.kind(), message.clone())));
            eprintln!("error: {message}");
            tracing::debug!(kind = %e.kind(), "exiting");
            ExitCode::from(e.kind().exit_code())
        }
    }
}

async fn run_ingest(args: IngestArgs) -> Result<ExitCode> {
    let input = match (&args.dir, &args.manifest) {
        (Some(d), _) => InputSource::Dir(d.clone()),
        (None, Some(m)) => InputSource::Manifest(m.clone()),
        (None, None) => crate::error::bail!(kind: Usage, "give a directory or --manifest FILE"),
    };
    let args = args.opts;
    let config = args.config(input);
    let warehouse = Warehouse::open(&args.warehouse.config(), true).await?;
    let encoder = crate::encode::load(&args.warehouse.encoder)?;
    let report = ingest::run(&config, &warehouse, encoder.as_ref()).await?;

    let mb = report.added_bytes as f64 / 1e6;
    println!(
        "added {} samples ({mb:.1} MB), skipped {} duplicates, rejected {}",
        report.added,
        report.duplicates,
        report.rejected.len()
    );
    if report.adopted > 0 {
        println!(
            "completed {} samples left unpublished by an interrupted ingest",
            report.adopted
        );
    }
    for r in &report.rejected {
        println!("  rejected {}: {}", r.what, r.reason);
    }
    if report.seconds > 0.0 && report.added > 0 {
        println!(
            "{:.1} samples/s, {:.1} MB/s",
            report.added as f64 / report.seconds,
            mb / report.seconds
        );
    }
    match (report.snapshot_id, report.lance_version) {
        (Some(s), Some(v)) => println!("table {} snapshot {s}, Lance version {v}", warehouse.table),
        _ => println!(
            "table {}: nothing new, no snapshot committed",
            warehouse.table
        ),
    }
    Ok(if report.rejected.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_REJECTED)
    })
}

async fn run_stage(args: StageArgs) -> Result<ExitCode> {
    let warehouse = Warehouse::open(&args.opts.warehouse.config(), true).await?;
    if args.list {
        let status = ingest::stage::job_status(&warehouse, &args.job).await?;
        println!("{}", serde_json::to_string(&status)?);
        return Ok(ExitCode::SUCCESS);
    }
    let encoder = crate::encode::load(&args.opts.warehouse.encoder)?;
    if !args.serve {
        let input = match (&args.dir, &args.manifest) {
            (Some(d), _) => InputSource::Dir(d.clone()),
            (None, Some(m)) => InputSource::Manifest(m.clone()),
            (None, None) => crate::error::bail!(kind: Usage, "give a directory or --manifest FILE"),
        };
        let partition = args.partition.as_deref().unwrap_or_default();
        let config = args.opts.config(input);
        let staged =
            ingest::stage::stage(&config, &warehouse, encoder.as_ref(), &args.job, partition)
                .await?;
        println!("{}", stage_summary(&staged));
        return Ok(ExitCode::SUCCESS);
    }
    // One request per line; an answer per line, errors included, so the
    // caller's worker survives a bad partition.
    let mut opts = args.opts;
    opts.quiet = true;
    let mut lines = std::io::stdin().lines();
    while let Some(line) = lines.next().transpose()? {
        if line.trim().is_empty() {
            continue;
        }
        let answer =
            match serve_request(&line, &opts, &warehouse, encoder.as_ref(), &args.job).await {
                Ok(staged) => stage_summary(&staged),
                Err(e) => serde_json::json!({
                    "ok": false,
                    "kind": e.kind().to_string(),
                    "error": crate::trust::redact(&format!("{e:#}")),
                }),
            };
        println!("{answer}");
    }
    Ok(ExitCode::SUCCESS)
}

/// One `stage --serve` request.
async fn serve_request(
    line: &str,
    opts: &IngestOptions,
    warehouse: &Warehouse,
    encoder: &dyn crate::encode::Encoder,
    job: &str,
) -> Result<ingest::stage::Staged> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Request {
        partition: String,
        manifest: Option<PathBuf>,
        dir: Option<PathBuf>,
    }
    let req: Request = serde_json::from_str(line).with_context(|| {
        "stage --serve: expected {\"partition\": NAME, \"manifest\": PATH} or {\"partition\": NAME, \"dir\": PATH}"
    })?;
    let input = match (req.manifest, req.dir) {
        (Some(m), None) => InputSource::Manifest(m),
        (None, Some(d)) => InputSource::Dir(d),
        _ => crate::error::bail!(
            kind: Usage,
            "stage --serve: request for partition {:?} needs exactly one of \"manifest\" and \"dir\"",
            req.partition
        ),
    };
    let config = opts.config(input);
    ingest::stage::stage(&config, warehouse, encoder, job, &req.partition).await
}

fn stage_summary(s: &ingest::stage::Staged) -> serde_json::Value {
    serde_json::json!({
        "ok": true,
        "staged": s.rel_path(),
        "partition": s.partition,
        "samples": s.rows.len(),
        "bytes": s.bytes,
        "duplicates": s.duplicates,
        "rejected": s.rejected,
        "seconds": s.seconds,
    })
}

async fn run_commit(args: CommitArgs) -> Result<ExitCode> {
    let warehouse = Warehouse::open(&args.warehouse.config(), false).await?;
    let manifests = match &args.job {
        Some(job) => ingest::stage::job_manifests(&warehouse, job).await?,
        None => args.staged.clone(),
    };
    let report = ingest::stage::commit(&warehouse, &manifests).await?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "published {} samples from {} staged partitions, dropped {} duplicates, {} files rejected while staging",
            report.added,
            report.manifests,
            report.duplicates,
            report.rejected.len()
        );
        match (report.snapshot_id, report.lance_version) {
            (Some(s), Some(v)) => {
                println!("table {} snapshot {s}, Lance version {v}", warehouse.table)
            }
            _ => println!(
                "table {}: nothing new, no snapshot committed",
                warehouse.table
            ),
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn run_gc(args: GcArgs) -> Result<ExitCode> {
    let warehouse = Warehouse::open(&args.warehouse.config(), false).await?;
    let r = ingest::gc::gc(&warehouse, args.grace, args.dry_run).await?;
    let verb = if args.dry_run {
        "would remove"
    } else {
        "removed"
    };
    println!(
        "{verb} {} Lance data files, {} Iceberg data files and {} staging manifests; kept {} unreferenced files younger than {:?}",
        r.lance_files, r.iceberg_files, r.manifests, r.young, args.grace
    );
    Ok(ExitCode::SUCCESS)
}

/// `30s`, `15m`, `24h`, `7d` (a bare number is seconds).
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("expected a duration such as 30s, 15m, 24h or 7d, got {s:?}"))?;
    let secs = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => {
            return Err(format!(
                "unknown duration unit {unit:?} in {s:?}: use s, m, h or d"
            ));
        }
    };
    Ok(std::time::Duration::from_secs(n * secs))
}

async fn run_index(args: IndexArgs) -> Result<ExitCode> {
    let wh = Warehouse::open(&args.warehouse.config(), false).await?;
    let ds = crate::vectors::open(&wh.lance_uri, &wh.storage)
        .await?
        .with_context(|| format!("no Lance dataset at {}; ingest first", wh.lance_uri))?;
    let rows = ds.count_rows(None).await?;
    let dim = crate::vectors::dim_of(&ds)?;
    let mut params = crate::similar::IndexParams::derive(rows, dim, args.metric);
    if let Some(p) = args.partitions {
        params.partitions = p;
    }
    if let Some(s) = args.sub_vectors {
        params.sub_vectors = s;
    }
    eprintln!(
        "building IVF-PQ ({} partitions, {} sub-vectors, {}) over {rows} vectors of {dim} dims ...",
        params.partitions,
        params.sub_vectors,
        params.metric.name()
    );
    let start = std::time::Instant::now();
    let version =
        crate::similar::build_index(&wh.lance_uri, &wh.storage, params, !args.no_scalar).await?;
    println!(
        "indexed {rows} vectors in {:.1} s; Lance version {version}",
        start.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}

async fn run_pin(args: PinArgs) -> Result<ExitCode> {
    let wh = Warehouse::open(&args.warehouse.config(), false).await?;
    let encoder = crate::encode::load(&args.warehouse.encoder)?;
    let rank = match args.world_size {
        None => None,
        Some(w) if w == 0 || w > crate::spec::arrange::MAX_WORLD_SIZE => crate::error::bail!(
            kind: Usage,
            "--world-size {w} is out of range (1 to {})",
            crate::spec::arrange::MAX_WORLD_SIZE
        ),
        Some(w) => Some(crate::view::arrange::MountRank {
            rank: 0,
            world_size: w,
        }),
    };
    let mut resolver = Resolver::new(&wh, encoder.as_ref(), rank);
    resolver.every_rank = true;
    let (pinned, view, written) = crate::spec::pin::pin(
        &args.spec,
        &args.warehouse.table,
        &resolver,
        args.materialize.then_some(&wh),
    )
    .await?;
    if let Some(m) = &written {
        eprintln!(
            "materialized {} ({} samples, {} row groups, {:.1} MB) at {}",
            view.name,
            view.len(),
            m.groups,
            m.bytes as f64 / 1e6,
            crate::trust::redact(&m.uri)
        );
    }
    match &args.output {
        Some(out) => {
            std::fs::write(out, &pinned)
                .with_context(|| format!("cannot write {}", out.display()))?;
            eprintln!(
                "pinned {} to snapshot {} ({} samples) in {}",
                view.name,
                view.snapshot_id,
                view.len(),
                out.display()
            );
        }
        None => print!("{pinned}"),
    }
    Ok(ExitCode::SUCCESS)
}

async fn run_check(args: CheckArgs) -> Result<ExitCode> {
    let wh = Warehouse::open(&args.warehouse.config(), false).await?;
    let table = iceberg::Catalog::load_table(wh.catalog.as_ref(), &wh.table)
        .await
        .with_context(|| format!("cannot load table {}", wh.table))?;
    let reports = crate::check::check(&table, &args.snapshots, &wh.trust, &wh.storage).await?;
    let mut failed = 0;
    for r in &reports {
        let lance = r.lance_version.map_or("-".to_string(), |v| v.to_string());
        let verdict = if r.ok() { "ok" } else { "FAILED" };
        println!(
            "snapshot {}: {} rows, Lance version {lance}: {verdict}",
            r.snapshot_id, r.rows
        );
        let show = |what: &str, ids: Vec<String>| {
            if !ids.is_empty() {
                println!("  {} {what}:", ids.len());
                for id in ids.iter().take(20) {
                    println!("    {id}");
                }
                if ids.len() > 20 {
                    println!("    ... and {} more", ids.len() - 20);
                }
            }
        };
        show("content ids listed more than once", r.duplicates.clone());
        show(
            "rows without a Lance row at that version",
            r.missing_in_lance.clone(),
        );
        show(
            "rows whose uri is outside the warehouse and the allowed prefixes",
            r.untrusted
                .iter()
                .map(|(id, uri)| format!("{id} {}", crate::trust::redact(uri)))
                .collect(),
        );
        show("rows whose content_id is not a SHA-256", r.bad_ids.clone());
        failed += usize::from(!r.ok());
    }
    if failed > 0 {
        eprintln!(
            "error: {failed} of {} snapshots break the table's invariants",
            reports.len()
        );
        return Ok(ExitCode::FAILURE);
    }
    println!("all {} snapshots hold the invariants", reports.len());
    Ok(ExitCode::SUCCESS)
}

async fn run_repack(args: RepackArgs) -> Result<ExitCode> {
    let wh = Warehouse::open(&args.warehouse.config(), false).await?;
    let r = crate::repack::run(&wh, args.pack_size).await?;
    for (id, why) in &r.skipped {
        println!("  left as it is: {id}: {why}");
    }
    match r.snapshot_id {
        Some(s) => println!(
            "packed {} samples ({:.1} MB) into {} packs; table {} snapshot {s}",
            r.packed,
            r.bytes as f64 / 1e6,
            r.packs,
            wh.table
        ),
        None => println!(
            "nothing to repack in table {}: no sample of up to 1 MiB is its own object",
            wh.table
        ),
    }
    Ok(ExitCode::SUCCESS)
}

async fn run_cache(args: CacheArgs) -> Result<ExitCode> {
    use crate::cache::disk;
    match args.action {
        CacheAction::Stats { dir } => {
            let s = disk::dir_stats(&dir).await?;
            let when = |us: Option<i64>| {
                us.and_then(chrono::DateTime::from_timestamp_micros)
                    .map_or("-".to_string(), |t| {
                        t.format("%Y-%m-%d %H:%M:%S").to_string()
                    })
            };
            println!("cache {}", dir.display());
            println!("entries     {}", s.entries);
            println!("bytes       {} ({:.1} MB)", s.bytes, s.bytes as f64 / 1e6);
            println!("oldest use  {} UTC", when(s.oldest_use_us));
            println!("newest use  {} UTC", when(s.newest_use_us));
        }
        CacheAction::Verify { dir } => {
            let r = disk::verify_dir(&dir).await?;
            println!(
                "cache {}: {} entries good, {} corrupt deleted, {} foreign files deleted, {} index rows repaired",
                dir.display(),
                r.good,
                r.corrupt,
                r.foreign,
                r.reindexed
            );
        }
        CacheAction::Clear { dir } => {
            let n = disk::clear_dir(&dir).await?;
            println!("cache {}: {n} entries deleted", dir.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn run_embed(args: EmbedArgs) -> Result<ExitCode> {
    if args.files.is_empty() && args.text.is_empty() {
        crate::error::bail!(kind: Usage, "give files to embed or --text TEXT");
    }
    let encoder = crate::encode::load(&args.encoder)?;
    let mut rows = Vec::with_capacity(args.files.len() + args.text.len());
    let batch = args.batch_size.max(1);
    let start = std::time::Instant::now();
    for files in args.files.chunks(batch) {
        let read: Vec<(Vec<u8>, &'static str)> = files
            .iter()
            .map(|f| {
                let bytes = crate::files::read_regular(f, crate::files::limits::QUERY_FILE)
                    .with_context(|| format!("cannot read {}", f.display()))?;
                let ext = f.extension().and_then(|e| e.to_str());
                let media = crate::encode::detect_media_type(&bytes, ext);
                Ok((bytes, media))
            })
            .collect::<Result<_>>()?;
        let items: Vec<(&[u8], &str)> = read.iter().map(|(b, m)| (b.as_slice(), *m)).collect();
        for (f, v) in files.iter().zip(encoder.encode_batch(&items)) {
            rows.push(v.with_context(|| format!("{}: cannot embed", f.display()))?);
        }
    }
    let texts: Vec<&str> = args.text.iter().map(String::as_str).collect();
    for chunk in texts.chunks(batch) {
        rows.extend(encoder.encode_text_batch(chunk)?);
    }
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "embedded {} inputs in {secs:.3} s ({:.1} inputs/s)",
        rows.len(),
        rows.len() as f64 / secs.max(1e-9)
    );
    std::fs::write(&args.output, crate::npy::write_matrix(&rows))
        .with_context(|| format!("cannot write {}", args.output.display()))?;
    eprintln!(
        "wrote {} vectors of {} dimensions ({}) to {}",
        rows.len(),
        encoder.dim(),
        encoder.model_id(),
        args.output.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Parses `512MiB`, `2G`, `1048576`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("expected a size like 512MiB or 2G, got {s:?}"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        "t" | "tb" => 1_000_000_000_000,
        "tib" => 1 << 40,
        other => return Err(format!("unknown size unit {other:?} in {s:?}")),
    };
    Ok((n * mult as f64) as u64)
}

async fn run_ls(args: LsArgs) -> Result<ExitCode> {
    use std::io::Write;
    let wh = Warehouse::open(&args.warehouse.config(), false).await?;
    let encoder = crate::encode::load(&args.warehouse.encoder)?;
    let views = resolve_specs(
        &args.specs,
        &wh,
        &args.warehouse.table,
        args.rank.get()?,
        args.rank.resume_at,
        encoder.as_ref(),
    )
    .await?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for v in &views {
        for f in v.files() {
            writeln!(out, "{}\t{}/{}", f.size, v.name, f.path)?;
        }
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

async fn run_snapshots(args: SnapshotsArgs) -> Result<ExitCode> {
    let warehouse = Warehouse::open(&args.warehouse.config(), false).await?;
    let table = iceberg::Catalog::load_table(warehouse.catalog.as_ref(), &warehouse.table)
        .await
        .with_context(|| {
            format!(
                "cannot load table {} (has anything been ingested into it?)",
                warehouse.table
            )
        })?;
    let snaps = crate::catalog::snapshots(&table);
    if snaps.is_empty() {
        println!("table {} has no snapshots yet", warehouse.table);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<20}  {:<25}  {:>10}  {:>10}  {:>13}",
        "SNAPSHOT", "COMMITTED (UTC)", "ADDED", "TOTAL", "LANCE VERSION"
    );
    let opt = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
    for s in snaps {
        let when = chrono::DateTime::from_timestamp_millis(s.timestamp_ms)
            .map(|t| t.format("%Y-%m-%d %H:%M:%S%.3f").to_string())
            .unwrap_or_else(|| s.timestamp_ms.to_string());
        println!(
            "{:<20}  {:<25}  {:>10}  {:>10}  {:>13}",
            s.snapshot_id,
            when,
            opt(s.added_rows),
            opt(s.total_rows),
            opt(s.lance_version)
        );
    }
    Ok(ExitCode::SUCCESS)
}
