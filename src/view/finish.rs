//! What resolving needs ([`Resolver`]) and the steps that finish a view
//! whichever way its rows came, from the table (`resolve`) or from
//! a materialized index (`materialize`): the samples the trust rule
//! refuses, the sizes of generated files, the epoch plan and the receipt's
//! `epochs` block.

use std::sync::{Arc, OnceLock};

use crate::error::{Context, Result};
use iceberg::Catalog;

use super::arrange::MountRank;
use super::epochs::{EpochPlan, Mix};
use super::{Entries, INDEX_STRIDE, Listing};
use crate::encode::Encoder;
use crate::spec::Spec;
use crate::trust::UriTrust;

/// What resolving a spec needs besides the spec.
pub struct Resolver<'a> {
    /// The catalog holding the spec's table.
    pub catalog: &'a dyn Catalog,
    /// Encoder for `similar.to.file` queries.
    pub encoder: &'a dyn Encoder,
    /// Which URIs samples may be read from.
    pub trust: &'a UriTrust,
    /// How to reach the Lance dataset.
    pub storage: &'a crate::storage::Storage,
    /// Show only this rank of every view (`--rank`, `--world-size`).
    pub rank: Option<MountRank>,
    /// Cut views into `rank.world_size` ranks but show every rank (what
    /// `lakemount pin --materialize --world-size` writes).
    pub every_rank: bool,
    /// The warehouse root, under which materialized views are stored.
    pub root: &'a url::Url,
    /// Where a resumed job starts, over the specs' own `resume:`
    /// (`--resume-at`).
    pub resume: Option<crate::spec::Resume>,
}

impl<'a> Resolver<'a> {
    /// Resolves against `wh` (its catalog, trust rule and storage), with
    /// `encoder` for queries, showing `rank` only if given.
    pub fn new(
        wh: &'a crate::warehouse::Warehouse,
        encoder: &'a dyn Encoder,
        rank: Option<MountRank>,
    ) -> Self {
        Self {
            catalog: wh.catalog.as_ref(),
            encoder,
            trust: &wh.trust,
            storage: &wh.storage,
            rank,
            every_rank: false,
            root: &wh.root_url,
            resume: None,
        }
    }
}

/// How a spec with `epochs:` lists: the mount's world size and rank over
/// the spec's `shard` (epochs are elastic), `--resume-at` over `resume:`.
pub(super) fn epoch_plan(
    spec: &Spec,
    r: &Resolver<'_>,
    entries: &Entries,
) -> Result<Option<EpochPlan>> {
    let Some(e) = spec.epochs else {
        return Ok(None);
    };
    let resume = r.resume.unwrap_or(e.resume);
    if resume.epoch >= e.count {
        return Err(spec.error(
            "epochs",
            format!(
                "resuming at epoch {}, but the view has epochs 0 to {}",
                resume.epoch,
                e.count - 1
            ),
        ));
    }
    let world_size = r
        .rank
        .map(|m| m.world_size)
        .or(spec.shard.map(|s| s.world_size))
        .unwrap_or(1);
    Ok(Some(EpochPlan {
        count: e.count,
        seed: match spec.order {
            Some(crate::spec::Order::Shuffle(s)) => Some(s),
            _ => None,
        },
        resume,
        world_size,
        ranked: r.rank.is_some() || spec.shard.is_some(),
        rank: r.rank.map(|m| m.rank),
        pad: spec.shard.is_some_and(|s| s.pad),
        mix: mixture(spec, entries),
    }))
}

/// The mixture a spec with `sources` draws from the view's samples.
fn mixture(spec: &Spec, entries: &Entries) -> Option<Arc<Mix>> {
    if spec.sources.is_empty() {
        return None;
    }
    let mut members: Vec<Vec<u32>> = vec![Vec::new(); spec.sources.len()];
    for (i, &s) in entries.extra.sources.iter().enumerate() {
        members[s as usize].push(i as u32);
    }
    let seed = match spec.order {
        Some(crate::spec::Order::Shuffle(s)) => s,
        _ => 0,
    };
    Some(Arc::new(Mix::new(
        spec.sources.iter().map(|s| s.name.clone()).collect(),
        members,
        &spec.sources.iter().map(|s| s.draw).collect::<Vec<_>>(),
        spec.epoch_size,
        seed,
    )))
}

/// The sizes of the generated files: the listing's (rendered once, for its
/// line offsets too) and each `.json` sidecar's (computed, not rendered).
pub(super) fn measure(
    spec: &Spec,
    entries: &mut Entries,
    order: Option<Vec<u32>>,
) -> Result<Listing> {
    let listing = measure_listing(entries, order);
    if spec.sidecars.metadata {
        let lens = crate::par::chunks(entries.samples.len(), |range| {
            range.map(|i| entries.metadata_len(i)).collect()
        });
        for (s, n) in entries.samples.iter_mut().zip(lens) {
            s.json_len = u32::try_from(n).context("a metadata sidecar exceeds 4 GiB")?;
        }
    }
    Ok(listing)
}

/// Samples whose URI fails the trust rule; logged once per view.
pub(super) fn untrusted(entries: &Entries, trust: &UriTrust) -> Vec<u32> {
    let verdicts = entries.uris.verdicts(|uri| trust.allows(uri));
    let out: Vec<u32> = (0..entries.samples.len() as u32)
        .filter(|&i| !verdicts.allows(entries.read_ref(i as usize)))
        .collect();
    if let Some(&first) = out.first() {
        tracing::warn!(
            samples = out.len(),
            example = %entries.uri(first as usize),
            "rows point outside the warehouse and the allowed prefixes; reading them gives EIO"
        );
    }
    out
}

/// Renders the listing once, in parallel, for its size and the offset of
/// every [`INDEX_STRIDE`]th line.
fn measure_listing(entries: &Entries, order: Option<Vec<u32>>) -> Listing {
    let lens = entries.index_line_lens(order.as_deref());
    let mut marks = Vec::with_capacity(lens.len() / INDEX_STRIDE + 1);
    let mut len = 0u64;
    for (n, l) in lens.iter().enumerate() {
        if n % INDEX_STRIDE == 0 {
            marks.push(len);
        }
        len += u64::from(*l);
    }
    if marks.is_empty() {
        marks.push(0);
    }
    let lines = order.as_ref().map(|o| {
        let mut lines = vec![0u32; o.len()];
        for (line, &i) in o.iter().enumerate() {
            lines[i as usize] = line as u32;
        }
        lines
    });
    Listing {
        order,
        lines,
        len,
        marks,
        sha256: OnceLock::new(),
    }
}

/// The receipt's `epochs` block: count, seed, where the job resumes, world
/// size, pad, the rank shown, and a mixture's sources.
pub(super) fn epochs_record(
    spec: &Spec,
    p: &EpochPlan,
    snapshot_id: i64,
    row_count: usize,
) -> serde_json::Value {
    use serde_json::json;
    let sources: Option<Vec<serde_json::Value>> = p.mix.as_ref().map(|m| {
        spec.sources
            .iter()
            .enumerate()
            .map(|(s, src)| {
                let draw = match src.draw {
                    crate::spec::Draw::Proportion(x) => json!({"proportion": x}),
                    crate::spec::Draw::Repeat(x) => json!({"repeat": x}),
                    crate::spec::Draw::Choose(x) => json!({"choose": x}),
                };
                json!({
                    "name": src.name,
                    "filter": src.filter.as_ref().map(|f| f.text().to_string()),
                    "draw": draw,
                    "samples": m.members[s].len(),
                    "per_epoch": m.counts[s],
                    "snapshot_id": snapshot_id,
                })
            })
            .collect()
    });
    json!({
        "count": p.count,
        "seed": p.seed,
        "resume": {"epoch": p.resume.epoch, "pos": p.resume.pos},
        "world_size": p.world_size,
        "pad": p.pad,
        "rank": p.rank,
        "per_epoch": p.mix.as_ref().map_or(row_count as u64, |m| m.len()),
        "sources": sources,
    })
}
