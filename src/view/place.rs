//! Where each sample goes: the spec's layout rendered per row, clashes
//! resolved, paths sorted.
//!
//! Usually every sample gets its first-choice path: a hash check over all
//! of them ([`first_choices_are_clean`]) proves no two files share a path
//! and no file sits where a directory must be. Only when that check fails
//! are samples placed one by one ([`Names`]), in the order given (content
//! id, or rank in a similarity view): a later file whose name is taken gets
//! `~<12 hex digits of its content id>` before its extension (then the
//! whole id, then a counter), and a directory whose name is taken by a file
//! (a label equal to `_receipt.json`, say) becomes `<name>~dir` (then
//! `~dir2`, ...) for every sample in it.

use std::collections::HashMap;
use std::ops::Range;

use crate::error::Result;
use arrow_array::{Array, StringArray};

use super::scan::Rows;
use super::{INDEX_FILE, RECEIPT_FILE};
use crate::encode::extension_for;
use crate::layout::NAME_MAX;
use crate::spec::Spec;

/// Rendered paths, back to back, with whether each sample has a `.npy`.
#[derive(Default)]
pub struct Placed {
    arena: String,
    /// (end of the path in `arena`, has a `.npy` sidecar).
    ends: Vec<(usize, bool)>,
}

impl Placed {
    /// Number of paths.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Closes the path that started at `start`.
    fn end(&mut self, start: usize, npy: bool) {
        debug_assert_eq!(start, self.ends.last().map_or(0, |e| e.0));
        self.ends.push((self.arena.len(), npy));
    }

    /// Path `k`.
    pub fn path(&self, k: usize) -> &str {
        let start = if k == 0 { 0 } else { self.ends[k - 1].0 };
        &self.arena[start..self.ends[k].0]
    }

    /// Whether sample `k` has a `.npy` sidecar.
    pub fn npy(&self, k: usize) -> bool {
        self.ends[k].1
    }

    fn concat(parts: Vec<Placed>) -> Placed {
        let mut out = Placed::default();
        for part in parts {
            let base = out.arena.len();
            out.arena.push_str(&part.arena);
            out.ends
                .extend(part.ends.into_iter().map(|(end, npy)| (base + end, npy)));
        }
        out
    }
}

/// What the layout of a row is rendered from.
pub struct LayoutInput<'a> {
    /// The scanned rows.
    pub rows: &'a Rows,
    /// The rows shown, in placement order.
    pub selected: &'a [u32],
    /// (rank, distance) per selected row in a similarity view, else empty.
    pub ranks: &'a [(u32, f32)],
    /// Positions, shards and clusters per selected row.
    pub extra: &'a super::arrange::Extra,
    /// Whether selected row `k` has a `.npy` sidecar.
    pub npy: &'a (dyn Fn(usize) -> bool + Sync),
}

/// Every selected row's path, clashes resolved.
pub fn place(spec: &Spec, input: &LayoutInput<'_>) -> Result<Placed> {
    let placed = Placed::concat(crate::par::ranges(input.selected.len(), |range| {
        render_range(spec, input, range)
    }));
    if first_choices_are_clean(&placed, spec.sidecars.metadata) {
        return Ok(placed);
    }
    let mut names = Names::default();
    names.reserve(INDEX_FILE);
    names.reserve(RECEIPT_FILE);
    let mut again = Placed::default();
    for (k, &r) in input.selected.iter().enumerate() {
        let id = input.rows.ids[r as usize].hex();
        let npy = placed.npy(k);
        let path = names.place(placed.path(k), &id, npy, spec.sidecars.metadata);
        let start = again.arena.len();
        again.arena.push_str(&path);
        again.end(start, npy);
    }
    Ok(again)
}

/// First-choice paths of `range` of the selected rows.
fn render_range(spec: &Spec, input: &LayoutInput<'_>, range: Range<usize>) -> Placed {
    let rows = input.rows;
    let width = spec
        .similar
        .as_ref()
        .map_or(1, |s| s.k.saturating_sub(1).to_string().len());
    let layout_cols: HashMap<&str, &dyn Array> = spec
        .layout
        .fields()
        .filter_map(|f| rows.column(f).map(|c| (f, c.as_ref())))
        .collect();
    let media = rows.column("media_type");
    let media_str = media.and_then(|m| m.as_any().downcast_ref::<StringArray>());
    let mut part = Placed::default();
    let mut scratch = String::new();
    for k in range {
        let r = input.selected[k] as usize;
        let id = &rows.ids[r];
        let ext = match media_str {
            Some(m) => extension_for(m.value(r)),
            None => extension_for(&rows.text("media_type", r).unwrap_or_default()),
        };
        let start = part.arena.len();
        let x = input.extra;
        if let Some(r) = x.shards.get(k) {
            part.arena
                .push_str(&format!("rank-{r:0w$}/", w = x.shard_width));
        }
        spec.layout
            .render_into(&mut part.arena, &mut scratch, |f, out| match f {
                "ext" => {
                    out.push_str(ext);
                    true
                }
                "content_id" => {
                    out.push_str(&id.hex());
                    true
                }
                "uri" => {
                    out.push_str(&rows.uris.get(rows.uri_refs[r], id));
                    true
                }
                "rank" if !input.ranks.is_empty() => {
                    out.push_str(&format!("{:0width$}", input.ranks[k].0));
                    true
                }
                "distance" if !input.ranks.is_empty() => {
                    out.push_str(&format!("{:.6}", input.ranks[k].1));
                    true
                }
                "pos" if !x.pos.is_empty() => {
                    out.push_str(&format!("{:0w$}", x.pos[k], w = x.pos_width));
                    true
                }
                // A mixture's layout names the source a sample came from.
                "source" if !x.sources.is_empty() => {
                    out.push_str(&spec.sources[x.sources[k] as usize].name);
                    true
                }
                "cluster" if !x.clusters.is_empty() => {
                    out.push_str(&format!("{:0w$}", x.clusters[k], w = x.cluster_width));
                    true
                }
                _ => match layout_cols.get(f) {
                    Some(c) => match c.as_any().downcast_ref::<StringArray>() {
                        Some(a) if a.is_valid(r) => {
                            out.push_str(a.value(r));
                            true
                        }
                        Some(_) => false,
                        None => super::scan::text_value(*c, r)
                            .map(|t| out.push_str(&t))
                            .is_some(),
                    },
                    None => false,
                },
            });
        let npy = (input.npy)(k);
        let file_start = part.arena[start..]
            .rfind('/')
            .map_or(start, |i| start + i + 1);
        if let Some(fitted) = fit_file_name(&part.arena[file_start..], npy, spec.sidecars.metadata)
        {
            part.arena.truncate(file_start);
            part.arena.push_str(&fitted);
        }
        part.end(start, npy);
    }
    part
}

/// The longest file name a sample named `file` brings: its own, or that
/// of a sidecar (`<base>.npy`, `<base>.json`).
fn longest_name(file: &str, npy: bool, json: bool) -> usize {
    let base = sidecar_base(file).len();
    let side = if json {
        base + ".json".len()
    } else if npy {
        base + ".npy".len()
    } else {
        0
    };
    file.len().max(side)
}

/// A sample's file name shortened so that it and its sidecars' names are
/// at most [`NAME_MAX`] bytes (`None` when they already are): the stem is
/// cut and given a hash of itself ([`crate::layout::shorten`]), the
/// extension kept, so `cp -r` of a view never meets a name too long.
fn fit_file_name(file: &str, npy: bool, json: bool) -> Option<String> {
    let longest = longest_name(file, npy, json);
    if longest <= NAME_MAX {
        return None;
    }
    let (stem, ext) = split_ext(file);
    let over = longest - NAME_MAX;
    let fitted = if stem.len() > over + 17 {
        format!("{}{ext}", crate::layout::shorten(stem, stem.len() - over))
    } else {
        // An extension too long to keep: the whole name is cut.
        crate::layout::shorten(file, NAME_MAX - ".json".len())
    };
    debug_assert!(longest_name(&fitted, npy, json) <= NAME_MAX);
    Some(fitted)
}

/// Whether the first-choice names of all samples, their sidecars and the
/// reserved names are free of clashes: no name twice, no file where another
/// name needs a directory. Compares hashes, so it may see a clash that is not
/// there (names are then placed one by one), never miss one.
fn first_choices_are_clean(placed: &Placed, json: bool) -> bool {
    use std::hash::BuildHasher;
    let state = foldhash::fast::FixedState::default();
    let mut files: foldhash::HashSet<u64> = foldhash::HashSet::default();
    files.reserve(placed.len() * (1 + usize::from(json)) + 2);
    let mut dirs: foldhash::HashSet<u64> = foldhash::HashSet::default();
    for name in [INDEX_FILE, RECEIPT_FILE] {
        files.insert(state.hash_one(name));
    }
    let mut side = String::new();
    for k in 0..placed.len() {
        let (path, npy) = (placed.path(k), placed.npy(k));
        if !files.insert(state.hash_one(path)) {
            return false;
        }
        let base = sidecar_base(path);
        for suffix in [npy.then_some(".npy"), json.then_some(".json")]
            .into_iter()
            .flatten()
        {
            side.clear();
            side.push_str(base);
            side.push_str(suffix);
            if !files.insert(state.hash_one(side.as_str())) {
                return false;
            }
        }
        let mut prefix = path;
        while let Some((head, _)) = prefix.rsplit_once('/') {
            if !dirs.insert(state.hash_one(head)) {
                break; // seen before, and so were its ancestors
            }
            prefix = head;
        }
    }
    !dirs.iter().any(|d| files.contains(d))
}

/// Indices of `placed` in path order.
pub fn sort_by_path(placed: &Placed) -> Vec<u32> {
    let keys = (0..placed.len())
        .map(|k| (super::compact::prefix16(placed.path(k).bytes()), k as u32))
        .collect();
    super::compact::sort_by_prefix16(keys, |a, b| {
        placed.path(a as usize).cmp(placed.path(b as usize))
    })
}

/// Path bookkeeping for placing samples one by one.
#[derive(Default)]
struct Names {
    files: foldhash::HashSet<String>,
    /// Placed directories, each with the first-choice directory it holds.
    dirs: foldhash::HashMap<String, String>,
    /// First-choice directory -> where it was placed.
    moved: foldhash::HashMap<String, String>,
}

impl Names {
    fn reserve(&mut self, path: &str) {
        self.files.insert(path.to_string());
    }

    fn free(&self, path: &str) -> bool {
        if self.files.contains(path) || self.dirs.contains_key(path) {
            return false;
        }
        let mut prefix = path;
        while let Some((head, _)) = prefix.rsplit_once('/') {
            if self.files.contains(head) {
                return false;
            }
            prefix = head;
        }
        true
    }

    fn claim(&mut self, path: String) {
        self.files.insert(path);
    }

    /// The placed directory for the first-choice directory `dir` (a path
    /// without trailing `/`), placing it and its ancestors if new.
    fn place_dir(&mut self, dir: &str) -> String {
        if let Some(placed) = self.moved.get(dir) {
            return placed.clone();
        }
        let (parent, name) = match dir.rsplit_once('/') {
            Some((p, n)) => (format!("{}/", self.place_dir(p)), n),
            None => (String::new(), dir),
        };
        let mut attempt = 0;
        let placed = loop {
            let tag = match attempt {
                0 => String::new(),
                1 => "~dir".to_string(),
                n => format!("~dir{n}"),
            };
            let candidate = format!(
                "{parent}{}{tag}",
                crate::layout::shorten(name, NAME_MAX - tag.len())
            );
            let owner = self.dirs.get(&candidate);
            if !self.files.contains(&candidate) && owner.is_none_or(|o| o == dir) {
                break candidate;
            }
            attempt += 1;
        };
        self.dirs.insert(placed.clone(), dir.to_string());
        self.moved.insert(dir.to_string(), placed.clone());
        placed
    }

    /// Places a sample whose first-choice path is `path` and its sidecars;
    /// returns the sample's path.
    fn place(&mut self, path: &str, content_id: &str, npy: bool, json: bool) -> String {
        let (dir, file) = match path.rsplit_once('/') {
            Some((d, f)) => (format!("{}/", self.place_dir(d)), f),
            None => (String::new(), path),
        };
        let (stem, ext) = split_ext(file);
        let mut attempt = 0;
        loop {
            let tag = match attempt {
                0 => String::new(),
                1 => format!("~{}", &content_id[..12.min(content_id.len())]),
                2 => format!("~{content_id}"),
                n => format!("~{content_id}-{n}"),
            };
            let file = format!("{stem}{tag}{ext}");
            let file = fit_file_name(&file, npy, json).unwrap_or(file);
            let name = format!("{dir}{file}");
            let side_base = sidecar_base(&name);
            let sidecars: Vec<String> = [npy.then_some(".npy"), json.then_some(".json")]
                .into_iter()
                .flatten()
                .map(|s| format!("{side_base}{s}"))
                .collect();
            if self.free(&name) && sidecars.iter().all(|p| self.free(p)) {
                self.claim(name.clone());
                for p in sidecars {
                    self.claim(p);
                }
                return name;
            }
            attempt += 1;
        }
    }
}

/// What a sidecar's suffix (`.npy`, `.json`) is appended to: the path
/// without its file name's extension, or whole when the sample is itself a
/// `.npy` or `.json` file.
pub fn sidecar_base(path: &str) -> &str {
    let name = path.rsplit('/').next().unwrap_or(path);
    match split_ext(name).1 {
        ".npy" | ".json" => path,
        ext => &path[..path.len() - ext.len()],
    }
}

fn split_ext(name: &str) -> (&str, &str) {
    match name.rfind('.') {
        Some(i) if i > 0 => (&name[..i], &name[i..]),
        _ => (name, ""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn collisions_get_content_id_suffixes() {
        let mut n = Names::default();
        n.reserve(INDEX_FILE);
        assert_eq!(
            n.place("cat/x.png", "aaaaaaaaaaaaaaaa", true, true),
            "cat/x.png"
        );
        assert!(n.files.contains("cat/x.npy") && n.files.contains("cat/x.json"));
        let b = n.place("cat/x.png", "bbbbbbbbbbbbbbbb", true, true);
        assert_eq!(b, "cat/x~bbbbbbbbbbbb.png");
        assert!(n.files.contains("cat/x~bbbbbbbbbbbb.npy"));
        // A file where a directory is goes aside.
        assert_eq!(
            n.place("cat", "cccccccccccccccc", false, false),
            "cat~cccccccccccc"
        );
        // A JSON sample keeps its sidecars distinct from itself.
        assert_eq!(n.place("d.json", "dddddddddddddddd", true, true), "d.json");
        assert!(n.files.contains("d.json.json"));
        // Reserved names are never taken.
        assert_eq!(
            n.place("_index.jsonl", "eeeeeeeeeeeeeeee", false, false),
            "_index~eeeeeeeeeeee.jsonl"
        );
    }

    #[test]
    fn a_directory_where_a_file_is_goes_aside() {
        let mut n = Names::default();
        n.reserve(RECEIPT_FILE);
        let a = n.place("_receipt.json/a.png", "aaaaaaaaaaaaaaaa", false, true);
        assert_eq!(a, "_receipt.json~dir/a.png");
        // Every sample of that directory follows it.
        let b = n.place("_receipt.json/b.png", "bbbbbbbbbbbbbbbb", false, true);
        assert_eq!(b, "_receipt.json~dir/b.png");
        // A file placed first, then a directory of the same name.
        assert_eq!(n.place("cat", "cccccccccccccccc", false, false), "cat");
        assert_eq!(
            n.place("cat/x.png", "dddddddddddddddd", false, false),
            "cat~dir/x.png"
        );
        // A real directory of the renamed name is not merged into it.
        assert_eq!(
            n.place("cat~dir/y.png", "eeeeeeeeeeeeeeee", false, false),
            "cat~dir~dir/y.png"
        );
    }

    fn component() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("_receipt.json".to_string()),
            Just("_index.jsonl".to_string()),
            Just("a".to_string()),
            Just("a.npy".to_string()),
            Just("a.json".to_string()),
            Just("a~dir".to_string()),
            "[a-c.~]{1,5}",
        ]
    }

    proptest! {
        /// Any mix of names, however hostile, is placed without a clash:
        /// every file unique, no file where a directory is.
        #[test]
        fn placement_never_clashes(paths in proptest::collection::vec(
            proptest::collection::vec(component(), 1..4), 1..30)) {
            let mut n = Names::default();
            n.reserve(INDEX_FILE);
            n.reserve(RECEIPT_FILE);
            let mut files: Vec<String> = vec![INDEX_FILE.into(), RECEIPT_FILE.into()];
            for (k, parts) in paths.iter().enumerate() {
                let id = format!("{k:064x}");
                let p = n.place(&parts.join("/"), &id, true, true);
                let base = sidecar_base(&p).to_string();
                files.extend([p, format!("{base}.npy"), format!("{base}.json")]);
            }
            let unique: std::collections::HashSet<&String> = files.iter().collect();
            prop_assert_eq!(unique.len(), files.len());
            for f in &files {
                let mut prefix = f.as_str();
                while let Some((head, _)) = prefix.rsplit_once('/') {
                    prop_assert!(!unique.contains(&head.to_string()), "{} is a file and a directory", head);
                    prefix = head;
                }
            }
        }
    }
}
