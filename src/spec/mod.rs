//! YAML dataset specs: parsed and validated once, at load. The rest of the
//! code sees only [`Spec`], never raw YAML.
//!
//! ```yaml
//! name: cats-dogs-train        # directory name under the mountpoint (default: file stem)
//! table: datasets.samples      # Iceberg table (default: --table)
//! snapshot: 4817265031983412   # pinned snapshot id, or "latest" (resolved once at mount)
//! filter: "label IN ('cat', 'dog') AND split = 'train'"
//! limit: 50000                 # optional: the first N by content_id
//! layout: "{label}/{content_id}{ext}"
//! sidecars: [embedding, metadata]
//! ```
//!
//! Column names in `filter` and `layout` can only be checked against a
//! table, so that happens when the view is resolved ([`crate::view`]); every
//! error names the spec file and the key.

use std::path::{Path, PathBuf};

pub mod arrange;
pub mod pin;

pub use arrange::{Diverse, Draw, Epochs, MixSource, Order, Resume, Shard, SortKey};

use crate::error::{Context, Error, Result, bail};
use serde::Deserialize;

use crate::catalog::filter::Filter;
use crate::layout::Layout;

pub use crate::layout::NAME_MAX;

/// Where each key of a spec file is: 1-based lines of top-level keys and
/// of keys nested one or two levels (as `similar.to`), block or flow style.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyLines(Vec<(String, usize)>);

impl KeyLines {
    /// Scans YAML text for `key:` at the start of a line (after indentation)
    /// or after `{` / `,` in a flow mapping, tracking the enclosing keys by
    /// indentation.
    pub fn scan(text: &str) -> Self {
        let mut out = Vec::new();
        let mut stack: Vec<(usize, String)> = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let body = line.trim_start();
            if body.is_empty() || body.starts_with('#') {
                continue;
            }
            let indent = line.len() - body.len();
            while stack.last().is_some_and(|(i, _)| *i >= indent) {
                stack.pop();
            }
            let Some((key, rest)) = body.split_once(':') else {
                continue;
            };
            let key = key.trim().trim_matches(['"', '\'']);
            if key.is_empty() || key.contains([' ', '{', '}', ',', '[']) {
                continue;
            }
            let path: Vec<&str> = stack.iter().map(|(_, k)| k.as_str()).chain([key]).collect();
            out.push((path.join("."), n + 1));
            // Keys of a flow mapping on the same line: `to: {vector: q.npy}`.
            let mut inner = path.join(".");
            for piece in rest.split(['{', ',']).skip(1) {
                if let Some((k, _)) = piece.split_once(':') {
                    let k = k.trim().trim_matches(['"', '\'']);
                    if !k.is_empty() && !k.contains([' ', '}']) {
                        out.push((format!("{inner}.{k}"), n + 1));
                    }
                }
                if piece.contains('{') {
                    inner = format!("{inner}.{}", piece.split(':').next().unwrap_or("").trim());
                }
            }
            stack.push((indent, key.to_string()));
        }
        Self(out)
    }

    /// The line of `key`, or of its nearest enclosing key.
    pub fn line(&self, key: &str) -> Option<usize> {
        let mut k = key;
        loop {
            if let Some((_, l)) = self.0.iter().find(|(name, _)| name == k) {
                return Some(*l);
            }
            k = k.rsplit_once('.')?.0;
        }
    }
}

/// Which snapshot a spec reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnapshotSel {
    /// The table's current snapshot at mount time.
    Latest,
    /// A pinned snapshot id.
    Id(i64),
}

/// Which sidecar files accompany each sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sidecars {
    /// `<stem>.npy`: the embedding, float32, shape (dim,).
    pub embedding: bool,
    /// `<stem>.json`: the sample's metadata row.
    pub metadata: bool,
}

/// Distance used by a similarity view. Smaller is closer for all three.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    /// `1 - cos(a, b)`.
    Cosine,
    /// Squared Euclidean distance.
    L2,
    /// `-(a . b)`: the larger the inner product, the closer.
    Dot,
}

impl std::str::FromStr for Metric {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cosine" => Ok(Metric::Cosine),
            "l2" => Ok(Metric::L2),
            "dot" => Ok(Metric::Dot),
            other => Err(format!(
                "expected cosine, l2 or dot, got {}",
                crate::files::quoted(other)
            )),
        }
    }
}

impl Metric {
    /// Name as written in specs.
    pub fn name(self) -> &'static str {
        match self {
            Metric::Cosine => "cosine",
            Metric::L2 => "l2",
            Metric::Dot => "dot",
        }
    }
}

/// What a similarity view searches for.
#[derive(Debug, Clone, PartialEq)]
pub enum Query {
    /// The embedding of a sample already in the table.
    ContentId(String),
    /// A vector in an `.npy` file (float32/float64, shape (dim,) or (1, dim)).
    Vector(PathBuf),
    /// A media file, embedded with the encoder the table's rows record.
    File(PathBuf),
    /// A text, embedded with the mount's text encoder (`--encoder text:DIR`).
    Text(String),
}

/// The `similar:` block.
#[derive(Debug, Clone, PartialEq)]
pub struct Similar {
    /// What to search for.
    pub to: Query,
    /// How many neighbours.
    pub k: usize,
    /// Distance.
    pub metric: Metric,
    /// IVF partitions to probe when an index is used.
    pub nprobes: Option<usize>,
    /// Re-rank `refine * k` index candidates with exact distances.
    pub refine: Option<u32>,
}

/// Facts `lakemount pin` recorded, checked again at mount.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Pinned {
    /// The Lance version the snapshot records.
    pub lance_version: Option<u64>,
    /// SHA-256 of the query vector's little-endian f32 bytes.
    pub query_sha256: Option<String>,
    /// Lance version holding the vector index used at pin time; `None`
    /// pins exact search.
    pub index_version: Option<u64>,
    /// The view's materialized index (`lakemount pin --materialize`).
    pub materialized: Option<MaterializedPin>,
}

/// `pinned.materialized`: where the view was written whole, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaterializedPin {
    /// SHA-256 (hex) of the index's footer, which holds the digest of
    /// every row group: names `<warehouse>/views/<index>.parquet`.
    pub index: String,
    /// Samples in the whole view (all ranks).
    pub rows: u64,
    /// Ranks it is cut into, if it was materialized for a world size.
    pub world_size: Option<u32>,
}

/// A validated spec.
#[derive(Debug, Clone)]
pub struct Spec {
    /// The file it came from.
    pub file: PathBuf,
    /// Directory name under the mountpoint.
    pub name: String,
    /// `namespace.table`.
    pub table: String,
    /// Snapshot to read.
    pub snapshot: SnapshotSel,
    /// SQL-style predicate, parsed at load, bound to the table's schema at resolve.
    pub filter: Option<Filter>,
    /// Keep only the first N samples by content id.
    pub limit: Option<usize>,
    /// Path template.
    pub layout: Layout,
    /// Sidecars to present.
    pub sidecars: Sidecars,
    /// Similarity view, if any.
    pub similar: Option<Similar>,
    /// Diverse sampling, if any (never together with `similar`).
    pub diverse: Option<Diverse>,
    /// Epoch order, if not the selection's.
    pub order: Option<Order>,
    /// Data-parallel ranks, if any.
    pub shard: Option<Shard>,
    /// Epoch directories, if any.
    pub epochs: Option<Epochs>,
    /// A mixture of sources drawn from each epoch; empty: the selection.
    pub sources: Vec<MixSource>,
    /// Samples per epoch of a mixture (`epoch_size`), if given.
    pub epoch_size: Option<u64>,
    /// What `lakemount pin` recorded.
    pub pinned: Option<Pinned>,
    /// Where each key is in the file, for messages.
    pub lines: KeyLines,
}

impl Spec {
    /// An error about `key` of this spec.
    pub fn error(&self, key: &str, message: impl Into<String>) -> Error {
        Error::spec(&self.file, Some(key), self.lines.line(key), message)
    }

    /// Where `key` of this spec is, for context: `spec FILE: `key` (line N)`.
    pub fn at(&self, key: &str) -> String {
        match self.lines.line(key) {
            Some(l) => format!("spec {}: `{key}` (line {l})", self.file.display()),
            None => format!("spec {}: `{key}`", self.file.display()),
        }
    }

    /// Whether the view has an arranged order (listing, `{pos}`): a
    /// similarity or diverse selection, `order`, `shard`, or a mount that
    /// shards every view. Other views list in path order.
    pub fn is_ordered(&self, mount_sharded: bool) -> bool {
        mount_sharded
            || self.similar.is_some()
            || self.diverse.is_some()
            || self.order.is_some()
            || self.shard.is_some()
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpec {
    name: Option<String>,
    table: Option<String>,
    snapshot: Option<RawSnapshot>,
    filter: Option<String>,
    limit: Option<u64>,
    layout: Option<String>,
    sidecars: Option<Vec<String>>,
    similar: Option<RawSimilar>,
    select: Option<arrange::RawSelect>,
    order: Option<arrange::RawOrder>,
    shard: Option<arrange::RawShard>,
    epochs: Option<u64>,
    resume: Option<arrange::RawResume>,
    sources: Option<Vec<arrange::RawSource>>,
    epoch_size: Option<u64>,
    pinned: Option<RawPinned>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSimilar {
    to: RawQuery,
    k: u64,
    metric: Option<String>,
    nprobes: Option<u64>,
    refine: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawQuery {
    content_id: Option<String>,
    vector: Option<PathBuf>,
    file: Option<PathBuf>,
    text: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPinned {
    lance_version: Option<u64>,
    query_sha256: Option<String>,
    index_version: Option<u64>,
    materialized: Option<RawMaterialized>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMaterialized {
    index: String,
    rows: u64,
    world_size: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawSnapshot {
    Id(i64),
    Text(String),
}

/// The layout used when a spec gives none: ImageFolder-compatible.
pub const DEFAULT_LAYOUT: &str = "{label}/{content_id}{ext}";

/// Reads and validates one spec file; `default_table` applies when the spec has no `table`.
pub fn load(file: &Path, default_table: &str) -> Result<Spec> {
    let text = read(file, false)?;
    parse(&text, file, default_table)
}

/// The text of a spec file: a regular file of at most
/// [`crate::files::limits::SPEC`] bytes. A file found in a spec directory
/// (`in_dir`) that is a symbolic link is followed only when the mounting
/// user made the link or the link's owner owns what it leads to: whoever
/// can write the directory cannot make a mount read someone else's file
/// (the `fs.protected_symlinks` rule of sticky directories).
pub fn read(file: &Path, in_dir: bool) -> Result<String> {
    use std::os::unix::fs::MetadataExt;
    if in_dir
        && let Ok(link) = std::fs::symlink_metadata(file)
        && link.file_type().is_symlink()
    {
        // SAFETY: getuid has no preconditions and cannot fail.
        let me = unsafe { libc::getuid() };
        let target = std::fs::metadata(file)
            .with_context(|| format!("cannot read spec {}", file.display()))?;
        if link.uid() != me && link.uid() != target.uid() {
            bail!(
                "spec {} is a symbolic link owned by uid {} to a file of uid {}; links in a spec directory \
                 are followed only to their owner's files or when you made them",
                file.display(),
                link.uid(),
                target.uid()
            );
        }
    }
    crate::files::read_regular_string(file, crate::files::limits::SPEC)
        .with_context(|| format!("cannot read spec {}", file.display()))
}

/// A YAML error as a message that quotes the file only in short, escaped
/// excerpts (serde quotes whole values: the first line of a file that is
/// not a spec at all, say); serde's own "at line L column C" is kept.
fn yaml_message(e: &serde_yaml::Error) -> String {
    let text = e.to_string();
    let mut out = String::with_capacity(text.len().min(400));
    let mut rest = text.as_str();
    while let Some(open) = rest.find(['`', '"']) {
        let quote = rest.as_bytes()[open] as char;
        out.push_str(&rest[..=open]);
        let after = &rest[open + 1..];
        let Some(close) = after.find(quote) else {
            out.push_str(&crate::files::excerpt(after, 24));
            rest = "";
            break;
        };
        out.push_str(&crate::files::excerpt(&after[..close], 24));
        out.push(quote);
        rest = &after[close + 1..];
    }
    out.push_str(&crate::files::excerpt(rest, 200));
    out
}

/// Parses spec text; `file` names it in errors, which are spec errors
/// ([`Error::spec_place`] gives the file, key and line).
pub fn parse(text: &str, file: &Path, default_table: &str) -> Result<Spec> {
    let lines = KeyLines::scan(text);
    let err = |key: &str, message: String| Error::spec(file, Some(key), lines.line(key), message);
    let raw: RawSpec = serde_yaml::from_str(text).map_err(|e| {
        let message = yaml_message(&e);
        Error::spec(
            file,
            None,
            None,
            format!(
                "{message} (keys: name, table, snapshot, filter, limit, layout, sidecars, similar, select, order, shard, epochs, resume, sources, epoch_size, pinned)"
            ),
        )
    })?;
    let stem = file
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = raw.name.unwrap_or(stem);
    check_name(&name).map_err(|m| err("name", m))?;
    let table = raw.table.unwrap_or_else(|| default_table.to_string());
    crate::warehouse::parse_table_ident(&table).map_err(|e| err("table", format!("{e:#}")))?;
    let snapshot = match raw.snapshot {
        None => SnapshotSel::Latest,
        Some(RawSnapshot::Id(id)) => SnapshotSel::Id(id),
        Some(RawSnapshot::Text(s)) if s == "latest" => SnapshotSel::Latest,
        Some(RawSnapshot::Text(s)) => {
            s.trim().parse::<i64>().map(SnapshotSel::Id).map_err(|_| {
                err(
                    "snapshot",
                    format!(
                        "expected a snapshot id (see `lakemount snapshots`) or \"latest\", got {}",
                        crate::files::quoted(&s)
                    ),
                )
            })?
        }
    };
    let filter = match raw.filter {
        Some(f) if f.trim().is_empty() => {
            return Err(err(
                "filter",
                "is empty; remove it to select every row".into(),
            ));
        }
        Some(f) => Some(Filter::parse(&f).map_err(|e| err("filter", e.to_string()))?),
        None => None,
    };
    let limit = match raw.limit {
        Some(0) => return Err(err("limit", "must be at least 1".into())),
        Some(l) => Some(usize::try_from(l).map_err(|_| err("limit", "too large".into()))?),
        None => None,
    };
    let layout_text = raw.layout.unwrap_or_else(|| DEFAULT_LAYOUT.to_string());
    let layout = Layout::parse(&layout_text).map_err(|e| err("layout", format!("{e:#}")))?;
    let sidecars = sidecars(raw.sidecars).map_err(|m| err("sidecars", m))?;
    let base = file.parent().unwrap_or(Path::new("."));
    let similar = raw
        .similar
        .map(|r| similar(r, base).map_err(|(key, m)| err(key, m)))
        .transpose()?;
    let diverse = raw
        .select
        .map(|r| arrange::select(r).map_err(|(key, m)| err(key, m)))
        .transpose()?;
    if diverse.is_some() && similar.is_some() {
        return Err(err(
            "select",
            "cannot be combined with `similar`; a view is either the nearest to a query or a diverse sample".into(),
        ));
    }
    let order = raw
        .order
        .map(|r| arrange::order(r).map_err(|(key, m)| err(key, m)))
        .transpose()?;
    let shard = raw
        .shard
        .map(|r| arrange::shard(r).map_err(|(key, m)| err(key, m)))
        .transpose()?;
    let sources = match raw.sources {
        None => Vec::new(),
        Some(list) => arrange::sources(list).map_err(|(key, m)| err(&key, m))?,
    };
    if raw.epoch_size == Some(0) {
        return Err(err("epoch_size", "must be at least 1".into()));
    }
    if raw.epoch_size.is_some() && sources.is_empty() {
        return Err(err(
            "epoch_size",
            "is the size of a mixture's epoch: it needs `sources`".into(),
        ));
    }
    // A mixture is drawn per epoch: one epoch unless the spec says more.
    let raw_epochs = match (raw.epochs, sources.is_empty()) {
        (None, false) => Some(1),
        (e, _) => e,
    };
    let epochs = arrange::epochs(raw_epochs, raw.resume).map_err(|(key, m)| err(key, m))?;
    if epochs.is_some() && (similar.is_some() || diverse.is_some()) {
        return Err(err(
            "epochs",
            "cannot be combined with `similar` or `select`: epochs reorder the whole selection"
                .into(),
        ));
    }
    let pinned = match raw.pinned {
        None => None,
        Some(p) => {
            let materialized = match p.materialized {
                None => None,
                Some(m) => {
                    if m.index.len() != 64
                        || !m
                            .index
                            .bytes()
                            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
                    {
                        return Err(err(
                            "pinned.materialized.index",
                            "expected the index's SHA-256: 64 lowercase hex digits".into(),
                        ));
                    }
                    if m.world_size == Some(0) {
                        return Err(err(
                            "pinned.materialized.world_size",
                            "must be at least 1".into(),
                        ));
                    }
                    Some(MaterializedPin {
                        index: m.index,
                        rows: m.rows,
                        world_size: m.world_size,
                    })
                }
            };
            Some(Pinned {
                lance_version: p.lance_version,
                query_sha256: p.query_sha256,
                index_version: p.index_version,
                materialized,
            })
        }
    };
    Ok(Spec {
        file: file.to_path_buf(),
        name,
        table,
        snapshot,
        filter,
        limit,
        layout,
        sidecars,
        similar,
        diverse,
        order,
        shard,
        epochs,
        sources,
        epoch_size: raw.epoch_size,
        pinned,
        lines,
    })
}

/// A spec name must be one safe path component of at most [`NAME_MAX`]
/// bytes, without control or bidirectional-override characters (it is a
/// directory name users see and type).
fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name == "."
        || name == ".."
        || name.contains(['/', '\0'])
        || name.starts_with('.')
    {
        return Err(format!(
            "{} is not a usable directory name",
            crate::files::quoted(name)
        ));
    }
    if name.len() > NAME_MAX {
        return Err(format!(
            "is {} bytes long; a directory name may have at most {NAME_MAX}",
            name.len()
        ));
    }
    if name.chars().any(crate::layout::is_unsafe_char) {
        return Err(format!(
            "{} holds control or bidirectional-override characters; use plain text",
            crate::files::quoted(name)
        ));
    }
    Ok(())
}

fn sidecars(list: Option<Vec<String>>) -> Result<Sidecars, String> {
    let Some(list) = list else {
        return Ok(Sidecars {
            embedding: true,
            metadata: true,
        });
    };
    let mut s = Sidecars {
        embedding: false,
        metadata: false,
    };
    for item in list {
        match item.as_str() {
            "embedding" => s.embedding = true,
            "metadata" => s.metadata = true,
            other => {
                return Err(format!(
                    "unknown sidecar {}; expected embedding and/or metadata",
                    crate::files::quoted(other)
                ));
            }
        }
    }
    Ok(s)
}

/// The `similar:` block; errors name the key at fault.
fn similar(r: RawSimilar, base: &Path) -> Result<Similar, (&'static str, String)> {
    let to = match (r.to.content_id, r.to.vector, r.to.file, r.to.text) {
        (None, None, None, Some(t)) if t.trim().is_empty() => {
            return Err(("similar.to.text", "is empty".into()));
        }
        (None, None, None, Some(t)) => Query::Text(t),
        (Some(id), None, None, None) => {
            if crate::content_id::ContentId::parse(&id).is_err() {
                return Err((
                    "similar.to.content_id",
                    format!(
                        "expected a 64-digit hex SHA-256, got {}",
                        crate::files::quoted(&id)
                    ),
                ));
            }
            Query::ContentId(id.to_ascii_lowercase())
        }
        (None, Some(v), None, None) => Query::Vector(base.join(v)),
        (None, None, Some(f), None) => Query::File(base.join(f)),
        _ => {
            return Err((
                "similar.to",
                "give exactly one of content_id, vector (an .npy file), file (a media file) or text"
                    .into(),
            ));
        }
    };
    if r.k == 0 {
        return Err(("similar.k", "must be at least 1".into()));
    }
    let metric = match r.metric.as_deref() {
        None => Metric::Cosine,
        Some(m) => m.parse().map_err(|e| ("similar.metric", e))?,
    };
    if r.nprobes == Some(0) || r.refine == Some(0) {
        return Err(("similar", "nprobes and refine must be at least 1".into()));
    }
    Ok(Similar {
        to,
        k: usize::try_from(r.k).map_err(|_| ("similar.k", "too large".to_string()))?,
        metric,
        nprobes: r.nprobes.map(|n| n as usize),
        refine: r.refine,
    })
}

/// The `*.yaml`/`*.yml` entries of a spec directory that are not
/// directories, sorted. Anything else so named (a FIFO, a device) is
/// listed too, so that reading it fails with a message saying what it is.
pub fn yaml_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            !p.is_dir() && matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))
        })
        .collect();
    found.sort();
    Ok(found)
}

/// Expands the command line's spec arguments: files as given, directories
/// to their `*.yaml`/`*.yml` files (sorted). Duplicate names are an error.
pub fn load_all(args: &[PathBuf], default_table: &str) -> Result<Vec<Spec>> {
    let mut files = Vec::new();
    for arg in args {
        if arg.is_dir() {
            let found = yaml_files(arg)
                .with_context(|| format!("cannot list spec directory {}", arg.display()))?;
            if found.is_empty() {
                bail!("spec directory {} holds no .yaml files", arg.display());
            }
            files.extend(found.into_iter().map(|f| (f, true)));
        } else {
            files.push((arg.clone(), false));
        }
    }
    let specs = files
        .iter()
        .map(|(f, in_dir)| parse(&read(f, *in_dir)?, f, default_table))
        .collect::<Result<Vec<_>>>()?;
    for (i, a) in specs.iter().enumerate() {
        if let Some(b) = specs[..i].iter().find(|b| b.name == a.name) {
            bail!(
                "specs {} and {} both use the name {:?}; set `name:` in one of them",
                b.file.display(),
                a.file.display(),
                a.name
            );
        }
    }
    Ok(specs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Result<Spec> {
        parse(text, Path::new("specs/cats.yaml"), "datasets.samples")
    }

    fn e(text: &str) -> String {
        format!("{:#}", p(text).unwrap_err())
    }

    #[test]
    fn defaults() {
        let s = p("{}").unwrap();
        assert_eq!(s.name, "cats");
        assert_eq!(s.table, "datasets.samples");
        assert_eq!(s.snapshot, SnapshotSel::Latest);
        assert!(s.sidecars.embedding && s.sidecars.metadata);
        assert_eq!(s.layout.text(), DEFAULT_LAYOUT);
    }

    #[test]
    fn full_spec() {
        let s = p("name: x\nsnapshot: 42\nfilter: \"label = 'a'\"\nlimit: 3\nlayout: '{split}/{label}/{content_id}{ext}'\nsidecars: [metadata]\n").unwrap();
        assert_eq!(s.snapshot, SnapshotSel::Id(42));
        assert_eq!(s.limit, Some(3));
        assert!(!s.sidecars.embedding && s.sidecars.metadata);
        assert_eq!(p("snapshot: latest").unwrap().snapshot, SnapshotSel::Latest);
        assert_eq!(p("snapshot: '7'").unwrap().snapshot, SnapshotSel::Id(7));
    }

    #[test]
    fn key_lines_find_nested_keys() {
        let text = "# c\nname: x\nsimilar:\n  to: {vector: q.npy}\n  k: 5\nfilter: \"a = 1\"\n";
        let l = KeyLines::scan(text);
        assert_eq!(l.line("name"), Some(2));
        assert_eq!(l.line("similar.to.vector"), Some(4));
        assert_eq!(l.line("similar.k"), Some(5));
        assert_eq!(l.line("similar.metric"), Some(3));
        assert_eq!(l.line("filter"), Some(6));
        assert_eq!(l.line("layout"), None);
        let e = p("name: x\nsimilar:\n  to: {file: a.png}\n  k: 0\n").unwrap_err();
        let place = e.spec_place().unwrap();
        assert_eq!(
            (place.key.as_deref(), place.line),
            (Some("similar.k"), Some(4))
        );
        assert!(e.to_string().ends_with("(line 4)"), "{e}");
    }

    #[test]
    fn names_are_short_plain_components() {
        assert!(p(&format!("name: {}", "a".repeat(255))).is_ok());
        assert!(e(&format!("name: {}", "a".repeat(256))).contains("at most 255"));
        assert!(e("name: \"a\\u202Eb\"").contains("bidirectional"));
        assert!(e("name: \"a\\tb\"").contains("control"));
    }

    proptest::proptest! {
        /// Generated spec text, however malformed, is a spec or an error
        /// naming the file; nothing panics.
        #[test]
        fn generated_specs_never_panic(
            lines in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::strategy::Just("name: x".to_string()),
                    "name: [a-z\\u{202e}\\t/.]{0,300}",
                    "snapshot: [a-z0-9-]{0,8}",
                    "filter: \"[a-z =<>'()]{0,30}\"",
                    "layout: \"[a-z{}/._]{0,20}\"",
                    "limit: -?[0-9]{0,22}",
                    "sidecars: \\[[a-z, ]{0,20}\\]",
                    "similar: \\{to: \\{[a-z_]{0,10}: [a-z0-9.]{0,70}\\}, k: [0-9]{0,3}\\}",
                    "[a-z]{1,6}: [^\\n]{0,10}",
                    "  [a-z]{1,6}: [0-9]{0,3}",
                ],
                0..8,
            )
        ) {
            let text = lines.join("\n");
            if let Err(e) = p(&text) {
                // The line named is in the file and holds the key named
                // (its last component: nested keys are indented).
                let place = e.spec_place();
                proptest::prop_assert!(place.is_some(), "not a spec error: {e}");
                let place = place.unwrap();
                if let Some(line) = place.line {
                    let held = text.lines().nth(line - 1);
                    proptest::prop_assert!(held.is_some(), "line {line} of {text:?}: {e}");
                    let key = place.key.as_deref().unwrap_or_default();
                    let last = key.rsplit('.').next().unwrap_or(key);
                    proptest::prop_assert!(held.unwrap_or_default().contains(last), "{key} at {line} of {text:?}");
                }
                proptest::prop_assert!(!place.reason.trim().is_empty());
            }
        }
    }

    #[test]
    fn similarity_block() {
        let s = p("similar:\n  to: {vector: q.npy}\n  k: 5\n  metric: l2\n  nprobes: 8\n").unwrap();
        let sim = s.similar.unwrap();
        assert_eq!(sim.to, Query::Vector(PathBuf::from("specs/q.npy")));
        assert_eq!(
            (sim.k, sim.metric, sim.nprobes, sim.refine),
            (5, Metric::L2, Some(8), None)
        );
        assert_eq!(
            p("similar: {to: {file: x.png}, k: 1}")
                .unwrap()
                .similar
                .unwrap()
                .metric,
            Metric::Cosine
        );
    }

    #[test]
    fn errors_name_file_and_key() {
        assert!(
            e("filtr: x").contains("spec specs/cats.yaml: unknown field `filtr`"),
            "{}",
            e("filtr: x")
        );
        assert!(
            e("limit: many").contains("spec specs/cats.yaml: limit: invalid type"),
            "{}",
            e("limit: many")
        );
        assert!(e("snapshot: yesterday").contains("`snapshot`: expected a snapshot id"));
        assert!(e("sidecars: [thumbnail]").contains("`sidecars`: unknown sidecar \"thumbnail\""));
        assert!(e("name: a/b").contains("`name`"));
        assert!(e("table: samples").contains("`table`"));
        assert!(e("layout: '{label'").contains("`layout`"));
        assert!(e("limit: 0").contains("`limit`: must be at least 1"));
        assert!(e("similar: {k: 5}").contains("missing field `to`"));
        assert!(e("similar: {to: {content_id: abc}, k: 5}").contains("`similar.to.content_id`"));
        assert!(e("similar: {to: {}, k: 5}").contains("`similar.to`: give exactly one"));
        assert!(e("similar: {to: {file: a.png}, k: 0}").contains("`similar.k`"));
        assert!(
            e("similar: {to: {file: a.png}, k: 3, metric: manhattan}").contains("`similar.metric`")
        );
        assert!(e("- a\n- b").contains("spec specs/cats.yaml"));
    }
}
