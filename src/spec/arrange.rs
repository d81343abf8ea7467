//! The spec keys that arrange a view for training: `select` (diverse
//! sampling), `order` (epoch order) and `shard` (data-parallel ranks).
//!
//! ```yaml
//! select: {diverse: {clusters: 10, per_cluster: 50, seed: 7}}
//! order: {shuffle: 42}                  # or {by: "quality DESC, content_id"}
//! shard: {world_size: 8, pad: false}
//! ```

use serde::Deserialize;

/// How a view's samples are ordered: the listing order, and `{pos}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Order {
    /// A permutation of the selection drawn from this seed.
    Shuffle(u64),
    /// Sorted by these columns; ties by content id.
    By(Vec<SortKey>),
}

/// One column of an `order.by` list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SortKey {
    /// Column name (`content_id` included).
    pub column: String,
    /// `DESC`.
    pub descending: bool,
}

/// Data-parallel shards: `rank-<r>/` directories of equal size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// Number of ranks.
    pub world_size: u32,
    /// Fill the last ranks by repeating samples instead of dropping the remainder.
    pub pad: bool,
}

/// `select: {diverse: ...}`: k-means over the embeddings, the samples
/// nearest each centroid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Diverse {
    /// K, the number of clusters.
    pub clusters: usize,
    /// N, samples kept per cluster.
    pub per_cluster: usize,
    /// Seed of the centroids' initialisation.
    pub seed: u64,
}

/// `epochs: N`: the view as `epoch-<e>/` directories, one per epoch, each
/// in its own order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Epochs {
    /// Number of epochs.
    pub count: u32,
    /// Where a resumed job starts (`resume:` or `--resume-at`).
    pub resume: Resume,
}

/// A global position in the sequence of epochs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Resume {
    /// The epoch.
    pub epoch: u32,
    /// Samples of it already read by the whole job (all ranks).
    pub pos: u64,
}

impl std::str::FromStr for Resume {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (e, p) = s
            .split_once(':')
            .ok_or_else(|| format!("expected EPOCH:POS, as 3:12000, got {s:?}"))?;
        Ok(Resume {
            epoch: e
                .trim()
                .parse()
                .map_err(|_| format!("the epoch in {s:?} is not a number"))?,
            pos: p
                .trim()
                .parse()
                .map_err(|_| format!("the position in {s:?} is not a number"))?,
        })
    }
}

/// One source of a mixture: the samples of the spec's table (at its
/// snapshot) that pass the spec's filter and this one, and how many of
/// them each epoch draws.
#[derive(Debug, Clone)]
pub struct MixSource {
    /// Its name (the `{source}` layout field).
    pub name: String,
    /// Its filter, with the spec's.
    pub filter: Option<crate::catalog::filter::Filter>,
    /// How many samples an epoch draws from it.
    pub draw: Draw,
}

/// How many samples an epoch draws from a source.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Draw {
    /// This share of the epoch (`proportion`).
    Proportion(f64),
    /// Every sample this many times (`repeat`, may be fractional).
    Repeat(f64),
    /// Exactly this many (`choose`).
    Choose(u64),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSource {
    name: String,
    filter: Option<String>,
    proportion: Option<f64>,
    repeat: Option<f64>,
    choose: Option<u64>,
    table: Option<String>,
    spec: Option<String>,
    snapshot: Option<serde_yaml::Value>,
}

/// Most sources a mixture may have.
pub const MAX_SOURCES: usize = 1024;

pub(super) fn sources(list: Vec<RawSource>) -> Result<Vec<MixSource>, (String, String)> {
    if list.is_empty() || list.len() > MAX_SOURCES {
        return Err((
            "sources".into(),
            format!(
                "give 1 to {MAX_SOURCES} sources, each {{name, filter, proportion|repeat|choose}}"
            ),
        ));
    }
    let mut out: Vec<MixSource> = Vec::with_capacity(list.len());
    for (k, raw) in list.into_iter().enumerate() {
        let key = |field: &str| format!("sources.{field}");
        if raw.table.is_some() || raw.spec.is_some() || raw.snapshot.is_some() {
            return Err((
                key("name"),
                format!(
                    "source {k}: `table`, `spec` and `snapshot` are not supported in a source yet; \
                     every source is a filter on the spec's table at its snapshot"
                ),
            ));
        }
        let name_ok = !raw.name.is_empty()
            && raw.name.len() <= 64
            && raw
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c));
        if !name_ok {
            return Err((
                key("name"),
                format!(
                    "source {k}: name {} must be 1 to 64 letters, digits, `_`, `-` or `.`",
                    crate::files::quoted(&raw.name)
                ),
            ));
        }
        if out.iter().any(|s| s.name == raw.name) {
            return Err((
                key("name"),
                format!("source name {:?} is used twice", raw.name),
            ));
        }
        let draw = match (raw.proportion, raw.repeat, raw.choose) {
            (Some(p), None, None) if p > 0.0 && p <= 1.0 => Draw::Proportion(p),
            (Some(_), None, None) => {
                return Err((
                    key("proportion"),
                    format!("source {:?}: must be in (0, 1]", raw.name),
                ));
            }
            (None, Some(r), None) if r > 0.0 && r <= 1e6 => Draw::Repeat(r),
            (None, Some(_), None) => {
                return Err((
                    key("repeat"),
                    format!("source {:?}: must be above 0", raw.name),
                ));
            }
            (None, None, Some(c)) => Draw::Choose(c),
            _ => {
                return Err((
                    key("name"),
                    format!(
                        "source {:?}: give exactly one of proportion (a share of each epoch), \
                         repeat (times each sample is shown) or choose (samples per epoch)",
                        raw.name
                    ),
                ));
            }
        };
        let filter = match raw.filter {
            Some(f) => Some(
                crate::catalog::filter::Filter::parse(&f)
                    .map_err(|e| (key("filter"), format!("source {:?}: {e}", raw.name)))?,
            ),
            None => None,
        };
        out.push(MixSource {
            name: raw.name,
            filter,
            draw,
        });
    }
    let total: f64 = out
        .iter()
        .filter_map(|s| match s.draw {
            Draw::Proportion(p) => Some(p),
            _ => None,
        })
        .sum();
    if total > 1.0 + 1e-9 {
        return Err((
            "sources".into(),
            format!("the proportions add up to {total}, more than 1"),
        ));
    }
    Ok(out)
}

/// Most epoch directories a spec may ask for.
pub const MAX_EPOCHS: u32 = 1_000_000;

/// Most ranks a spec may ask for.
pub const MAX_WORLD_SIZE: u32 = 65_536;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOrder {
    shuffle: Option<u64>,
    by: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawShard {
    world_size: u64,
    pad: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawResume {
    epoch: u64,
    pos: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSelect {
    diverse: RawDiverse,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDiverse {
    clusters: u64,
    per_cluster: u64,
    seed: Option<u64>,
}

type KeyError = (&'static str, String);

pub(super) fn epochs(
    count: Option<u64>,
    resume: Option<RawResume>,
) -> Result<Option<Epochs>, KeyError> {
    let Some(count) = count else {
        if resume.is_some() {
            return Err((
                "resume",
                "needs `epochs`: a position is one of an epoch".into(),
            ));
        }
        return Ok(None);
    };
    if count == 0 || count > u64::from(MAX_EPOCHS) {
        return Err(("epochs", format!("must be 1 to {MAX_EPOCHS}")));
    }
    let resume = match resume {
        None => Resume::default(),
        Some(r) if r.epoch >= count => {
            return Err((
                "resume.epoch",
                format!("is {}, but the view has epochs 0 to {}", r.epoch, count - 1),
            ));
        }
        Some(r) => Resume {
            epoch: r.epoch as u32,
            pos: r.pos,
        },
    };
    Ok(Some(Epochs {
        count: count as u32,
        resume,
    }))
}

pub(super) fn order(raw: RawOrder) -> Result<Order, KeyError> {
    match (raw.shuffle, raw.by) {
        (Some(seed), None) => Ok(Order::Shuffle(seed)),
        (None, Some(by)) => parse_by(&by).map(Order::By).map_err(|m| ("order.by", m)),
        _ => Err((
            "order",
            "give exactly one of shuffle (a seed) or by (columns, as \"quality DESC, content_id\")"
                .into(),
        )),
    }
}

/// Parses `col [ASC|DESC], ...`.
pub fn parse_by(text: &str) -> Result<Vec<SortKey>, String> {
    let mut keys: Vec<SortKey> = Vec::new();
    for part in text.split(',') {
        let words: Vec<&str> = part.split_whitespace().collect();
        let (column, descending) = match words.as_slice() {
            [c] => (*c, false),
            [c, d] if d.eq_ignore_ascii_case("asc") => (*c, false),
            [c, d] if d.eq_ignore_ascii_case("desc") => (*c, true),
            _ => {
                return Err(format!(
                    "expected `column [ASC|DESC]` separated by commas, got {:?}",
                    part.trim()
                ));
            }
        };
        let column = column.trim_matches('"');
        if keys.iter().any(|k| k.column == column) {
            return Err(format!("column {column:?} is listed twice"));
        }
        keys.push(SortKey {
            column: column.to_string(),
            descending,
        });
    }
    Ok(keys)
}

pub(super) fn shard(raw: RawShard) -> Result<Shard, KeyError> {
    if raw.world_size == 0 || raw.world_size > u64::from(MAX_WORLD_SIZE) {
        return Err((
            "shard.world_size",
            format!("must be between 1 and {MAX_WORLD_SIZE}"),
        ));
    }
    Ok(Shard {
        world_size: raw.world_size as u32,
        pad: raw.pad.unwrap_or(false),
    })
}

pub(super) fn select(raw: RawSelect) -> Result<Diverse, KeyError> {
    let d = raw.diverse;
    if d.clusters == 0 || d.clusters > 65_536 {
        return Err((
            "select.diverse.clusters",
            "must be between 1 and 65536".into(),
        ));
    }
    if d.per_cluster == 0 {
        return Err(("select.diverse.per_cluster", "must be at least 1".into()));
    }
    Ok(Diverse {
        clusters: d.clusters as usize,
        per_cluster: usize::try_from(d.per_cluster)
            .map_err(|_| ("select.diverse.per_cluster", "too large".to_string()))?,
        seed: d.seed.unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn by_lists_parse() {
        let keys = parse_by("quality DESC, content_id").unwrap();
        assert_eq!(
            keys,
            vec![
                SortKey {
                    column: "quality".into(),
                    descending: true
                },
                SortKey {
                    column: "content_id".into(),
                    descending: false
                }
            ]
        );
        assert!(parse_by("quality sideways").is_err());
        assert!(parse_by("a, a DESC").is_err());
        assert!(parse_by("a,,b").is_err());
    }
}
