//! `lakemount pin`: turn a spec that says `latest` into one that names
//! exactly what it resolved to, so mounting it later shows the same files.
//!
//! The protocol: resolve the spec; rewrite its text with the snapshot id
//! and a `pinned:` block (the Lance version the snapshot records and, for a
//! similarity spec, the query's digest and the index version searched);
//! resolve the rewritten text again and require the identical listing
//! digest before handing it out. Comments and other lines are kept.
//!
//! With `--materialize` the view is also written whole to the warehouse
//! ([`crate::view::materialize`]) and the `pinned:` block names it; the
//! check then reads the pinned spec back through that index.

use std::path::Path;

use crate::error::{Context, Result, bail};

use crate::view::{Resolver, View, materialize, resolve, resolve_from_table};

/// A materialized index, as `pinned.materialized` records it.
pub struct IndexPin<'a> {
    /// Its SHA-256 (footer).
    pub sha256: &'a str,
    /// Samples in the whole view.
    pub rows: u64,
    /// Ranks it is cut into.
    pub world_size: Option<u32>,
}

/// What `lakemount pin --materialize` wrote.
pub struct Materialized {
    /// Where the index is.
    pub uri: String,
    /// Its size in bytes.
    pub bytes: u64,
    /// Its row groups.
    pub groups: usize,
}

/// The pinned text of the spec at `path`, the view it resolves to, and,
/// when `materialize` gives the warehouse, the index written there
/// (`resolver` then cuts the view into its ranks but shows them all).
pub async fn pin(
    path: &Path,
    default_table: &str,
    resolver: &Resolver<'_>,
    materialize: Option<&crate::warehouse::Warehouse>,
) -> Result<(String, View, Option<Materialized>)> {
    let mut spec = super::load(path, default_table)?;
    if let Some(p) = &mut spec.pinned {
        // Pinning again resolves from the table, not from an older index.
        p.materialized = None;
    }
    let view = resolve_from_table(&spec, resolver).await?;
    let text = crate::files::read_regular_string(path, crate::files::limits::SPEC)
        .with_context(|| format!("cannot read spec {}", path.display()))?;
    let search = view.search.clone().unwrap_or_default();
    let similar = spec
        .similar
        .is_some()
        .then_some((search.query_sha256, search.index_version));
    let lance_version = view.lance.as_ref().map(|l| l.version);
    let plain = pin_text(
        &text,
        view.snapshot_id,
        lance_version,
        similar.clone(),
        None,
    );
    // The pinned text must resolve to the very same listing.
    let pinned_spec = super::parse(&plain, path, default_table)?;
    let again = resolve_from_table(&pinned_spec, resolver).await?;
    if again.listing_sha256() != view.listing_sha256() {
        bail!("internal: the pinned spec resolves to a different listing");
    }
    let Some(wh) = materialize else {
        return Ok((plain, view, None));
    };
    // Materialized: the view as the pinned spec resolves it (its receipt
    // names the pinned snapshot), read back through the index written.
    let world_size = resolver
        .rank
        .map(|m| m.world_size)
        .or(spec.shard.map(|s| s.world_size))
        .filter(|_| spec.epochs.is_none());
    let w = materialize::write(&again, &pinned_spec, world_size)?;
    let uri = materialize::store(wh, &w).await?;
    let pinned = pin_text(
        &text,
        view.snapshot_id,
        lance_version,
        similar,
        Some(IndexPin {
            sha256: &w.sha256,
            rows: w.rows,
            world_size,
        }),
    );
    let check = super::parse(&pinned, path, default_table)?;
    let loaded = resolve(&check, resolver).await?;
    if loaded.listing_sha256() != again.listing_sha256() || loaded.receipt() != again.receipt() {
        bail!(
            "internal: the materialized index {} reads back as a different view",
            crate::trust::redact(&uri)
        );
    }
    let written = Materialized {
        uri,
        bytes: w.bytes.len() as u64,
        groups: w.groups,
    };
    Ok((pinned, again, Some(written)))
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
    index: Option<IndexPin<'_>>,
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
    if let Some(m) = index {
        out.push(
            "  # the view resolved and written whole: <warehouse>/views/<index>.parquet".into(),
        );
        out.push("  materialized:".into());
        out.push(format!("    index: \"{}\"", m.sha256));
        out.push(format!("    rows: {}", m.rows));
        if let Some(w) = m.world_size {
            out.push(format!("    world_size: {w}"));
        }
    }
    out.push(String::new());
    out.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::SnapshotSel;

    #[test]
    fn pinning_keeps_comments_and_replaces_old_pins() {
        let text = "# my dataset\nname: x\nsnapshot: latest   # moving\nfilter: \"a = 1\"\npinned:\n  lance_version: 1\n";
        let once = pin_text(text, 42, Some(3), None, None);
        assert!(
            once.starts_with(
                "# my dataset\nname: x\nsnapshot: 42  # pinned; was: latest   # moving\n"
            ),
            "{once}"
        );
        assert!(once.contains("pinned:\n  lance_version: 3\n"), "{once}");
        assert!(!once.contains("lance_version: 1"));
        let s = crate::spec::parse(
            &once,
            std::path::Path::new("specs/cats.yaml"),
            "datasets.samples",
        )
        .unwrap();
        assert_eq!(s.snapshot, SnapshotSel::Id(42));
        assert_eq!(s.pinned.unwrap().lance_version, Some(3));
        let twice = pin_text(&once, 42, Some(3), Some((Some("ab".into()), Some(7))), None);
        assert_eq!(twice.matches("pinned:").count(), 1, "{twice}");
        let s = crate::spec::parse(
            &twice,
            std::path::Path::new("specs/cats.yaml"),
            "datasets.samples",
        )
        .unwrap()
        .pinned
        .unwrap();
        assert_eq!(
            (s.query_sha256.as_deref(), s.index_version),
            (Some("ab"), Some(7))
        );
        let inserted = pin_text("name: y\n", 5, None, None, None);
        assert!(
            inserted.starts_with("name: y\nsnapshot: 5  # pinned\n"),
            "{inserted}"
        );
    }
}
