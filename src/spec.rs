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

use anyhow::{Context, Result, anyhow, bail};
use serde::Deserialize;

use crate::layout::Layout;

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
    /// SQL-style predicate, bound to the table's schema at resolve time.
    pub filter: Option<String>,
    /// Keep only the first N samples by content id.
    pub limit: Option<usize>,
    /// Path template.
    pub layout: Layout,
    /// Sidecars to present.
    pub sidecars: Sidecars,
    /// Similarity view, if any.
    pub similar: Option<Similar>,
    /// What `lakemount pin` recorded.
    pub pinned: Option<Pinned>,
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
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPinned {
    lance_version: Option<u64>,
    query_sha256: Option<String>,
    index_version: Option<u64>,
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
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("cannot read spec {}", file.display()))?;
    parse(&text, file, default_table)
}

/// Parses spec text; `file` names it in errors.
pub fn parse(text: &str, file: &Path, default_table: &str) -> Result<Spec> {
    let at = |key: &str| format!("spec {}: `{key}`", file.display());
    let raw: RawSpec = serde_yaml::from_str(text).map_err(|e| {
        anyhow!(
            "spec {}: {e} (keys: name, table, snapshot, filter, limit, layout, sidecars, similar, pinned)",
            file.display()
        )
    })?;
    let stem = file
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = raw.name.unwrap_or(stem);
    if name.is_empty()
        || name == "."
        || name == ".."
        || name.contains(['/', '\0'])
        || name.starts_with('.')
    {
        bail!("{}: {name:?} is not a usable directory name", at("name"));
    }
    let table = raw.table.unwrap_or_else(|| default_table.to_string());
    crate::warehouse::parse_table_ident(&table).map_err(|e| anyhow!("{}: {e}", at("table")))?;
    let snapshot = match raw.snapshot {
        None => SnapshotSel::Latest,
        Some(RawSnapshot::Id(id)) => SnapshotSel::Id(id),
        Some(RawSnapshot::Text(s)) if s == "latest" => SnapshotSel::Latest,
        Some(RawSnapshot::Text(s)) => match s.trim().parse::<i64>() {
            Ok(id) => SnapshotSel::Id(id),
            Err(_) => bail!(
                "{}: expected a snapshot id (see `lakemount snapshots`) or \"latest\", got {s:?}",
                at("snapshot")
            ),
        },
    };
    let filter = match raw.filter {
        Some(f) if f.trim().is_empty() => {
            bail!("{}: is empty; remove it to select every row", at("filter"))
        }
        other => other,
    };
    let limit = raw
        .limit
        .map(|l| {
            if l == 0 {
                bail!("{}: must be at least 1", at("limit"))
            } else {
                usize::try_from(l).map_err(|_| anyhow!("{}: too large", at("limit")))
            }
        })
        .transpose()?;
    let layout_text = raw.layout.unwrap_or_else(|| DEFAULT_LAYOUT.to_string());
    let layout = Layout::parse(&layout_text).map_err(|e| anyhow!("{}: {e}", at("layout")))?;
    let sidecars = match raw.sidecars {
        None => Sidecars {
            embedding: true,
            metadata: true,
        },
        Some(list) => {
            let mut s = Sidecars {
                embedding: false,
                metadata: false,
            };
            for item in list {
                match item.as_str() {
                    "embedding" => s.embedding = true,
                    "metadata" => s.metadata = true,
                    other => bail!(
                        "{}: unknown sidecar {other:?}; expected embedding and/or metadata",
                        at("sidecars")
                    ),
                }
            }
            s
        }
    };
    let base = file.parent().unwrap_or(Path::new("."));
    let similar = raw
        .similar
        .map(|r| {
            let to = match (r.to.content_id, r.to.vector, r.to.file) {
                (Some(id), None, None) => {
                    if id.len() != 64 || !id.chars().all(|c| c.is_ascii_hexdigit()) {
                        bail!("{}: expected a 64-digit hex SHA-256, got {id:?}", at("similar.to.content_id"));
                    }
                    Query::ContentId(id.to_ascii_lowercase())
                }
                (None, Some(v), None) => Query::Vector(base.join(v)),
                (None, None, Some(f)) => Query::File(base.join(f)),
                _ => bail!(
                    "{}: give exactly one of content_id, vector (an .npy file) or file (a media file)",
                    at("similar.to")
                ),
            };
            if r.k == 0 {
                bail!("{}: must be at least 1", at("similar.k"));
            }
            let metric = match r.metric.as_deref() {
                None | Some("cosine") => Metric::Cosine,
                Some("l2") => Metric::L2,
                Some("dot") => Metric::Dot,
                Some(other) => bail!("{}: expected cosine, l2 or dot, got {other:?}", at("similar.metric")),
            };
            if r.nprobes == Some(0) || r.refine == Some(0) {
                bail!("{}: nprobes and refine must be at least 1", at("similar"));
            }
            Ok(Similar {
                to,
                k: usize::try_from(r.k).map_err(|_| anyhow!("{}: too large", at("similar.k")))?,
                metric,
                nprobes: r.nprobes.map(|n| n as usize),
                refine: r.refine,
            })
        })
        .transpose()?;
    let pinned = raw.pinned.map(|p| Pinned {
        lance_version: p.lance_version,
        query_sha256: p.query_sha256,
        index_version: p.index_version,
    });
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
        pinned,
    })
}

/// Rewrites spec text so it is pinned: the top-level `snapshot:` line says
/// `snapshot_id`, and a `pinned:` block at the end records the Lance version
/// and, for similarity specs, the query digest and the index version used.
/// Other lines, comments included, are kept as they were.
pub fn pin_text(
    text: &str,
    snapshot_id: i64,
    lance_version: Option<u64>,
    similar: Option<(Option<String>, Option<u64>)>,
) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut in_pinned = false;
    let mut replaced = false;
    for line in text.lines() {
        let top_level = !line.starts_with([' ', '\t', '#']) && !line.is_empty();
        if in_pinned && !top_level {
            continue;
        }
        in_pinned = false;
        if top_level && line.starts_with("pinned:") {
            in_pinned = true;
            continue;
        }
        if line.starts_with("# pinned by `lakemount pin`") {
            continue;
        }
        if top_level && line.starts_with("snapshot:") {
            let was = line["snapshot:".len()..].trim();
            out.push(format!("snapshot: {snapshot_id}  # pinned; was: {was}"));
            replaced = true;
            continue;
        }
        out.push(line.to_string());
    }
    if !replaced {
        let at = out
            .iter()
            .position(|l| l.starts_with("name:"))
            .map_or(0, |i| i + 1);
        out.insert(at, format!("snapshot: {snapshot_id}  # pinned"));
    }
    while out.last().is_some_and(|l| l.trim().is_empty()) {
        out.pop();
    }
    out.push(String::new());
    out.push("# pinned by `lakemount pin`: what this spec resolved to; checked at mount".into());
    out.push("pinned:".into());
    if let Some(v) = lance_version {
        out.push(format!("  lance_version: {v}"));
    }
    if let Some((digest, index)) = similar {
        if let Some(d) = digest {
            out.push(format!("  query_sha256: \"{d}\""));
        }
        match index {
            Some(v) => out.push(format!("  index_version: {v}")),
            None => out.push("  # no index_version: the search is exact".into()),
        }
    }
    out.push(String::new());
    out.join("\n")
}

/// Expands the command line's spec arguments: files as given, directories
/// to their `*.yaml`/`*.yml` files (sorted). Duplicate names are an error.
pub fn load_all(args: &[PathBuf], default_table: &str) -> Result<Vec<Spec>> {
    let mut files = Vec::new();
    for arg in args {
        if arg.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(arg)
                .with_context(|| format!("cannot list spec directory {}", arg.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.is_file()
                        && matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))
                })
                .collect();
            found.sort();
            if found.is_empty() {
                bail!("spec directory {} holds no .yaml files", arg.display());
            }
            files.extend(found);
        } else {
            files.push(arg.clone());
        }
    }
    let specs = files
        .iter()
        .map(|f| load(f, default_table))
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
    fn pinning_keeps_comments_and_replaces_old_pins() {
        let text = "# my dataset\nname: x\nsnapshot: latest   # moving\nfilter: \"a = 1\"\npinned:\n  lance_version: 1\n";
        let once = pin_text(text, 42, Some(3), None);
        assert!(
            once.starts_with(
                "# my dataset\nname: x\nsnapshot: 42  # pinned; was: latest   # moving\n"
            ),
            "{once}"
        );
        assert!(once.contains("pinned:\n  lance_version: 3\n"), "{once}");
        assert!(!once.contains("lance_version: 1"));
        let s = p(&once).unwrap();
        assert_eq!(s.snapshot, SnapshotSel::Id(42));
        assert_eq!(s.pinned.unwrap().lance_version, Some(3));
        let twice = pin_text(&once, 42, Some(3), Some((Some("ab".into()), Some(7))));
        assert_eq!(twice.matches("pinned:").count(), 1, "{twice}");
        let s = p(&twice).unwrap().pinned.unwrap();
        assert_eq!(
            (s.query_sha256.as_deref(), s.index_version),
            (Some("ab"), Some(7))
        );
        let inserted = pin_text("name: y\n", 5, None, None);
        assert!(
            inserted.starts_with("name: y\nsnapshot: 5  # pinned\n"),
            "{inserted}"
        );
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
            e("limit: many").contains("spec specs/cats.yaml: limit: invalid type")
                || e("limit: many").contains("invalid type"),
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
