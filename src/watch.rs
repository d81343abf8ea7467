//! Hot-added specs: the mount watches the spec directories (and the spec
//! files) it was given, through inotify, and applies changes without a
//! remount:
//!
//! - a new spec file is resolved and appears as a new directory;
//! - an edited one is resolved again and swapped in atomically: new
//!   lookups see the new view, files already open (and working
//!   directories) keep reading the old one until closed;
//! - a removed one disappears from the root; its files stay readable
//!   through handles already open, and its memory is freed once the kernel
//!   holds none of its inodes;
//! - a spec that fails to load or resolve (or takes a name another spec
//!   has) changes nothing: the old view stays, and the log says why.
//!
//! Changes are applied 200 ms after the last event of a burst (editors
//! write files in several steps), so a new file shows within a second.
//!
//! A spec directory that is deleted takes its views with it; each watched
//! directory's parent is watched too, so when the directory is made again
//! it is watched again and its specs come back (the log says both). Spec
//! files are read as [`crate::spec::read`] reads them: a FIFO or device
//! dropped into the directory is an error in the log, never a hang.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::error::{Context, Result};
use inotify::{Inotify, WatchMask};

use crate::fs::ViewFs;
use crate::view::arrange::MountRank;
use crate::warehouse::Warehouse;

/// What the mount needs to resolve a spec again.
pub struct Resolving {
    /// The warehouse.
    pub warehouse: Arc<Warehouse>,
    /// Table for specs without `table:`.
    pub table: String,
    /// `--rank`/`--world-size`.
    pub rank: Option<MountRank>,
    /// `--resume-at`.
    pub resume: Option<crate::spec::Resume>,
    /// The mount's `--encoder`, for queries.
    pub encoder: Arc<dyn crate::encode::Encoder>,
}

/// A spec file as last applied.
#[derive(Debug, Clone)]
struct Applied {
    name: String,
    text: String,
}

/// Keeps the changes applied; dropping it stops applying them.
pub struct Watching {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Watching {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The spec files `args` stand for now: files as given (if they exist),
/// directories' `*.yaml`/`*.yml` files (with `true`: found in a directory).
fn spec_files(args: &[PathBuf]) -> Vec<(PathBuf, bool)> {
    let mut out = Vec::new();
    for arg in args {
        if arg.is_dir() {
            out.extend(
                crate::spec::yaml_files(arg)
                    .unwrap_or_default()
                    .into_iter()
                    .map(|f| (f, true)),
            );
        } else if arg.exists() {
            out.push((arg.clone(), false));
        }
    }
    out
}

/// The directories watched for `args`: each directory argument, and the
/// folder of each file argument.
fn watched_dirs(args: &[PathBuf]) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    for arg in args {
        let dir = if arg.is_dir() {
            arg.clone()
        } else {
            arg.parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."))
                .to_path_buf()
        };
        if !dirs.contains(&dir) {
            dirs.push(dir);
        }
    }
    dirs
}

/// What is watched, kept up to date as directories go and come back.
struct Watched {
    watches: inotify::Watches,
    dirs: Vec<PathBuf>,
    /// Directories seen missing (logged once until they return).
    missing: std::collections::BTreeSet<PathBuf>,
}

/// Events on a spec directory's contents.
fn dir_mask() -> WatchMask {
    WatchMask::CREATE
        | WatchMask::CLOSE_WRITE
        | WatchMask::MODIFY
        | WatchMask::DELETE
        | WatchMask::MOVED_FROM
        | WatchMask::MOVED_TO
        | WatchMask::ATTRIB
        | WatchMask::DELETE_SELF
        | WatchMask::MOVE_SELF
}

/// Events on a spec directory's parent: the directory made again.
fn parent_mask() -> WatchMask {
    WatchMask::CREATE | WatchMask::MOVED_TO | WatchMask::DELETE | WatchMask::MOVED_FROM
}

impl Watched {
    /// Watches every directory that exists (again); logs the ones gone.
    fn refresh(&mut self) {
        for dir in &self.dirs {
            if dir.is_dir() {
                if self.watches.add(dir, dir_mask()).is_ok() && self.missing.remove(dir) {
                    eprintln!(
                        "spec directory {} is back: watching it again",
                        dir.display()
                    );
                }
            } else if self.missing.insert(dir.clone()) {
                tracing::warn!("spec directory {} was removed", dir.display());
                eprintln!(
                    "warning: spec directory {} was removed: its views are unmounted; \
                     they come back if it is made again",
                    dir.display()
                );
            }
        }
    }
}

/// Starts watching `args` (the mount's spec arguments); `fs` already shows
/// the views they resolved to.
pub fn start(fs: Arc<ViewFs>, args: Vec<PathBuf>, how: Resolving) -> Result<Watching> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let mut inotify = Inotify::init().context("cannot watch the spec directories (inotify)")?;
    let dirs = watched_dirs(&args);
    let mut watches = inotify.watches();
    for dir in &dirs {
        watches
            .add(dir, dir_mask())
            .with_context(|| format!("cannot watch {}", dir.display()))?;
        let abs = std::path::absolute(dir).unwrap_or_else(|_| dir.clone());
        if let Some(parent) = abs.parent() {
            // Best effort: a directory one cannot watch the parent of is
            // still watched itself.
            let _ = watches.add(parent, parent_mask());
        }
    }
    let mut watched = Watched {
        watches,
        dirs,
        missing: Default::default(),
    };
    // Blocking reads on a thread of their own; it ends at the first event
    // after the mount stops listening.
    std::thread::Builder::new()
        .name("spec-watch".into())
        .spawn(move || {
            let mut buf = [0u8; 4096];
            while inotify.read_events_blocking(&mut buf).is_ok() {
                if tx.send(()).is_err() {
                    break;
                }
            }
        })
        .context("cannot start the spec watcher")?;
    let mut applied: HashMap<PathBuf, Applied> = HashMap::new();
    for (file, in_dir) in spec_files(&args) {
        if let Ok(text) = crate::spec::read(&file, in_dir)
            && let Ok(spec) = crate::spec::parse(&text, &file, &how.table)
        {
            applied.insert(
                file,
                Applied {
                    name: spec.name,
                    text,
                },
            );
        }
    }
    let mut unreadable: HashMap<PathBuf, String> = HashMap::new();
    let task = tokio::spawn(async move {
        while rx.recv().await.is_some() {
            // Let the burst finish, then apply once.
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                if rx.try_recv().is_err() {
                    break;
                }
                while rx.try_recv().is_ok() {}
            }
            watched.refresh();
            apply(&fs, &args, &how, &mut applied, &mut unreadable).await;
        }
    });
    Ok(Watching { task })
}

/// Brings the mounted views in line with the spec files.
async fn apply(
    fs: &ViewFs,
    args: &[PathBuf],
    how: &Resolving,
    applied: &mut HashMap<PathBuf, Applied>,
    unreadable: &mut HashMap<PathBuf, String>,
) {
    let files = spec_files(args);
    // Removed files.
    let gone: Vec<PathBuf> = applied
        .keys()
        .filter(|f| !files.iter().any(|(g, _)| g == *f))
        .cloned()
        .collect();
    for file in gone {
        if let Some(a) = applied.remove(&file) {
            fs.remove(&a.name);
            eprintln!("spec {} removed: view {} unmounted", file.display(), a.name);
        }
    }
    // New and edited files.
    for (file, in_dir) in files {
        let text = match crate::spec::read(&file, in_dir) {
            Ok(text) => text,
            Err(e) => {
                // Said once, not at every event in the directory.
                let message = format!("{e:#}");
                if unreadable.get(&file) != Some(&message) {
                    eprintln!("error: spec {} not applied: {message}", file.display());
                    unreadable.insert(file, message);
                }
                continue;
            }
        };
        unreadable.remove(&file);
        if applied.get(&file).is_some_and(|a| a.text == text) {
            continue;
        }
        let verb = if applied.contains_key(&file) {
            "changed"
        } else {
            "added"
        };
        match resolve(fs, &file, &text, how, applied).await {
            Ok(name) => {
                if let Some(old) = applied.get(&file)
                    && old.name != name
                {
                    fs.remove(&old.name);
                }
                eprintln!("spec {} {verb}: view {name} mounted", file.display());
                applied.insert(file, Applied { name, text });
            }
            Err(e) => {
                let kept = applied
                    .get(&file)
                    .map_or("nothing mounted for it".to_string(), |a| {
                        format!("view {} unchanged", a.name)
                    });
                tracing::error!(
                    "spec {} {verb} but not applied ({kept}): {e:#}",
                    file.display()
                );
                eprintln!(
                    "error: spec {} {verb} but not applied ({kept}): {}",
                    file.display(),
                    crate::trust::redact(&format!("{e:#}"))
                );
            }
        }
    }
}

/// Loads and resolves one spec file and mounts its view; its name.
async fn resolve(
    fs: &ViewFs,
    file: &Path,
    text: &str,
    how: &Resolving,
    applied: &HashMap<PathBuf, Applied>,
) -> Result<String> {
    let spec = crate::spec::parse(text, file, &how.table)?;
    if let Some((other, _)) = applied
        .iter()
        .find(|(f, a)| a.name == spec.name && f.as_path() != file)
    {
        crate::error::bail!(
            "spec {} uses the name {:?} of the mounted spec {}; set another `name:`",
            file.display(),
            spec.name,
            other.display()
        );
    }
    let mut resolver = crate::view::Resolver::new(&how.warehouse, how.encoder.as_ref(), how.rank);
    resolver.resume = how.resume;
    let view = crate::view::resolve(&spec, &resolver).await?;
    let name = view.name.clone();
    fs.upsert(Arc::new(view));
    Ok(name)
}
