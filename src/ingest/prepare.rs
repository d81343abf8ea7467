//! Stage one of a batch: read, hash, detect the media type and embed each
//! file, on all cores. Nothing is written. A file that cannot be read,
//! is empty or cannot be embedded becomes a [`Rejection`]; the rest become
//! [`Prepared`] samples and, later, table rows ([`sample_row`]).
//!
//! Files are read and hashed on one thread per core. Encoders without a
//! batch size (the built-in one) embed there too, one sample at a time;
//! model encoders then embed the new samples in batches of their
//! [`Encoder::batch_size`], one forward pass each, the model using all
//! cores.

use std::collections::HashSet;

use bytes::Bytes;

use super::input::InputItem;
use super::{IngestConfig, Rejection};
use crate::catalog::write::SampleRow;
use crate::content_id::{ContentId, chunk_digests};
use crate::encode::{Encoder, detect_media_type};
use crate::npy;

/// Where embeddings come from.
pub enum Embeddings<'a> {
    /// Computed by an encoder.
    Encoder(&'a dyn Encoder),
    /// Rows of a precomputed matrix, one per input item.
    Precomputed(npy::Matrix),
}

/// A file read, hashed and embedded.
pub struct Prepared {
    /// Its position in the input.
    pub index: usize,
    /// The bytes.
    pub bytes: Bytes,
    /// Their SHA-256.
    pub content_id: ContentId,
    /// MIME type.
    pub media_type: String,
    /// The embedding; `None` for bytes already published or in Lance.
    pub embedding: Option<Vec<f32>>,
}

/// Prepares the items at `chunk` in parallel. Embeddings are skipped for
/// bytes already published or already in Lance.
pub fn prepare(
    items: &[InputItem],
    chunk: &[usize],
    max_bytes: u64,
    embeddings: &Embeddings<'_>,
    published: &HashSet<ContentId>,
    in_lance: &HashSet<ContentId>,
) -> (Vec<Prepared>, Vec<Rejection>) {
    let skip = |id: &ContentId| published.contains(id) || in_lance.contains(id);
    let batch_encoder = match embeddings {
        Embeddings::Encoder(enc) if enc.batch_size() > 1 => Some(*enc),
        _ => None,
    };
    let embed_now = batch_encoder.is_none();
    let results = crate::par::map(chunk, |&i| {
        let item = &items[i];
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            prepare_one(i, item, max_bytes, embeddings, &skip, embed_now)
        }))
        .unwrap_or_else(|_| {
            Err(Rejection {
                what: item.origin.clone(),
                reason: "encoder panicked".into(),
            })
        })
    });
    let mut ok = Vec::new();
    let mut bad = Vec::new();
    for r in results {
        match r {
            Ok(p) => ok.push(p),
            Err(e) => bad.push(e),
        }
    }
    if let Some(enc) = batch_encoder {
        let reasons = embed_batches(enc, &mut ok, &skip);
        let mut embedded = Vec::with_capacity(ok.len());
        for (p, reason) in ok.into_iter().zip(reasons) {
            match reason {
                None => embedded.push(p),
                Some(reason) => bad.push(Rejection {
                    what: items[p.index].origin.clone(),
                    reason,
                }),
            }
        }
        ok = embedded;
    }
    (ok, bad)
}

/// Embeds the samples that need it in batches of the encoder's size;
/// returns, for each sample, why it could not be embedded (if so).
fn embed_batches(
    enc: &dyn Encoder,
    prepared: &mut [Prepared],
    skip: &(dyn Fn(&ContentId) -> bool + Sync),
) -> Vec<Option<String>> {
    let mut reasons = vec![None; prepared.len()];
    let mut todo: Vec<(usize, &mut Prepared)> = prepared
        .iter_mut()
        .enumerate()
        .filter(|(_, p)| !skip(&p.content_id))
        .collect();
    for chunk in todo.chunks_mut(enc.batch_size()) {
        let items: Vec<(&[u8], &str)> = chunk
            .iter()
            .map(|(_, p)| (p.bytes.as_ref(), p.media_type.as_str()))
            .collect();
        let vectors = enc.encode_batch(&items);
        for ((k, p), v) in chunk.iter_mut().zip(vectors) {
            match v {
                Ok(v) => p.embedding = Some(v),
                Err(e) => reasons[*k] = Some(format!("{e:#}")),
            }
        }
    }
    reasons
}

fn prepare_one(
    index: usize,
    item: &InputItem,
    max_bytes: u64,
    embeddings: &Embeddings<'_>,
    skip: &(dyn Fn(&ContentId) -> bool + Sync),
    embed_now: bool,
) -> Result<Prepared, Rejection> {
    let reject = |reason: String| Rejection {
        what: item.origin.clone(),
        reason,
    };
    let bytes = match &item.text {
        Some(text) => text.as_bytes().to_vec(),
        None => {
            let read = match &item.beneath {
                Some((base, rel)) => crate::files::read_regular_beneath(base, rel, max_bytes),
                None => crate::files::read_regular(&item.path, max_bytes),
            };
            read.map_err(|e| match e {
                crate::files::ReadError::NotFound => reject("file not found".into()),
                crate::files::ReadError::TooLarge { .. } => {
                    reject(format!("{e}; raise --max-sample-size to ingest it"))
                }
                e => reject(format!("cannot read: {e}")),
            })?
        }
    };
    if bytes.is_empty() {
        let what = if item.text.is_some() { "text" } else { "file" };
        return Err(reject(format!("{what} is empty")));
    }
    let id = ContentId::of(&bytes);
    let ext = match item.text {
        Some(_) => Some("txt"),
        None => item.path.extension().and_then(|e| e.to_str()),
    };
    let media_type = detect_media_type(&bytes, ext).to_string();
    let embedding = if skip(&id) || !embed_now {
        None
    } else {
        Some(match embeddings {
            Embeddings::Encoder(enc) => enc
                .encode(&bytes, &media_type)
                .map_err(|e| reject(format!("{e:#}")))?,
            Embeddings::Precomputed(m) => {
                let v = m.row(index).to_vec();
                if v.iter().any(|x| !x.is_finite()) {
                    return Err(reject(format!(
                        "embedding row {index} has NaN or infinite values"
                    )));
                }
                v
            }
        })
    };
    Ok(Prepared {
        index,
        bytes: Bytes::from(bytes),
        content_id: id,
        media_type,
        embedding,
    })
}

/// The Iceberg row of a prepared sample.
pub fn sample_row(
    config: &IngestConfig,
    item: &InputItem,
    p: &Prepared,
    uri: String,
    model_id: &str,
) -> SampleRow {
    let id = p.content_id.hex();
    SampleRow {
        split: item
            .split
            .clone()
            .unwrap_or_else(|| config.split.assign(&id).to_string()),
        content_id: id,
        uri,
        label: item.label.clone(),
        media_type: p.media_type.clone(),
        size_bytes: p.bytes.len() as i64,
        source: item
            .source
            .clone()
            .or_else(|| config.source.clone())
            .or_else(|| {
                Some(match item.text {
                    Some(_) => item.origin.clone(),
                    None => item.path.display().to_string(),
                })
            }),
        ingested_at_us: 0,
        embedding_model: model_id.to_string(),
        chunk_sha256: chunk_digests(&p.bytes),
        extras: item.extras.clone(),
    }
}
