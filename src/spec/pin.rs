//! `lakemount pin`: turn a spec that says `latest` into one that names
//! exactly what it resolved to, so mounting it later shows the same files.
//!
//! The protocol: resolve the spec; rewrite its text with the snapshot id
//! and a `pinned:` block (the Lance version the snapshot records and, for a
//! similarity spec, the query's digest and the index version searched);
//! resolve the rewritten text again and require the identical listing
//! digest before handing it out. Comments and other lines are kept.

use std::path::Path;

use anyhow::{Context, Result, bail};

use crate::view::{Resolver, View, resolve};

/// The pinned text of the spec at `path`, and the view it resolves to.
pub async fn pin(
    path: &Path,
    default_table: &str,
    resolver: &Resolver<'_>,
) -> Result<(String, View)> {
    let spec = super::load(path, default_table)?;
    let view = resolve(&spec, resolver).await?;
    let text = crate::files::read_regular_string(path, crate::files::limits::SPEC)
        .with_context(|| format!("cannot read spec {}", path.display()))?;
    let search = view.search.clone().unwrap_or_default();
    let pinned = pin_text(
        &text,
        view.snapshot_id,
        view.lance.as_ref().map(|l| l.version),
        spec.similar
            .is_some()
            .then_some((search.query_sha256, search.index_version)),
    );
    // The pinned text must resolve to the very same listing.
    let check = super::parse(&pinned, path, default_table)?;
    let again = resolve(&check, resolver).await?;
    if again.listing_sha256() != view.listing_sha256() {
        bail!("internal: the pinned spec resolves to a different listing");
    }
    Ok((pinned, view))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::SnapshotSel;

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
        let s = crate::spec::parse(
            &once,
            std::path::Path::new("specs/cats.yaml"),
            "datasets.samples",
        )
        .unwrap();
        assert_eq!(s.snapshot, SnapshotSel::Id(42));
        assert_eq!(s.pinned.unwrap().lance_version, Some(3));
        let twice = pin_text(&once, 42, Some(3), Some((Some("ab".into()), Some(7))));
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
        let inserted = pin_text("name: y\n", 5, None, None);
        assert!(
            inserted.starts_with("name: y\nsnapshot: 5  # pinned\n"),
            "{inserted}"
        );
    }
}
