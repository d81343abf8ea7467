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
    similar: Option<serde_yaml::Value>,
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
            "spec {}: {e} (keys: name, table, snapshot, filter, limit, layout, sidecars)",
            file.display()
        )
    })?;
    if raw.similar.is_some() {
        bail!(
            "{}: similarity views are reserved for a later version of lakemount; remove the key",
            at("similar")
        );
    }
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
    Ok(Spec {
        file: file.to_path_buf(),
        name,
        table,
        snapshot,
        filter,
        limit,
        layout,
        sidecars,
    })
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
        assert!(e("similar: {k: 5}").contains("`similar`"));
        assert!(e("- a\n- b").contains("spec specs/cats.yaml"));
    }
}
