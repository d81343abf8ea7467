//! Encoders turn a sample's bytes into an embedding vector.
//!
//! The [`Encoder`] trait is the seam between ingest and whatever computes
//! embeddings: the built-in, weight-free [`builtin::BuiltinEncoder`], and
//! candle models read from a local checkpoint folder ([`Checkpoint`]): a
//! sentence encoder ([`text`]), CLIP's image and text towers ([`clip`],
//! preprocessing in [`pixels`]) and Whisper's audio encoder ([`whisper`],
//! decoding and log-mel in [`audio`]). Every row records the encoder's
//! [`Encoder::model_id`] in `embedding_model`, so a reader can tell which
//! vectors are comparable. Media type detection lives here too because an
//! encoder dispatches on it.

pub mod audio;
pub mod builtin;
pub mod clip;
pub mod pixels;
pub mod text;
pub mod whisper;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Context, Result, bail, err};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use sha2::{Digest, Sha256};

/// Computes a fixed-dimension embedding for one sample.
pub trait Encoder: Send + Sync {
    /// Identifier stored in the `embedding_model` column, including a version.
    fn model_id(&self) -> &str;
    /// Length of every vector this encoder returns.
    fn dim(&self) -> usize;
    /// Embeds one sample. `media_type` is a MIME type from [`detect_media_type`].
    fn encode(&self, bytes: &[u8], media_type: &str) -> Result<Vec<f32>>;
    /// Embeds a text query (`similar: {to: {text: ...}}`, `lakemount embed
    /// --text`); an error for encoders without a text tower.
    fn encode_text(&self, text: &str) -> Result<Vec<f32>> {
        self.encode_text_batch(&[text])?
            .pop()
            .context("the encoder returned nothing")
    }
    /// Embeds several text queries in as few forward passes as the model
    /// allows; an error for encoders without a text tower.
    fn encode_text_batch(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        let _ = texts;
        bail!(
            "{} has no text tower; use an encoder such as clip:DIR or text:DIR",
            self.model_id()
        )
    }
    /// How many samples [`Encoder::encode_batch`] wants at once; 1 for
    /// encoders that gain nothing from batches (ingest then spreads
    /// single samples over the cores instead).
    fn batch_size(&self) -> usize {
        1
    }
    /// Embeds several samples (`(bytes, media type)`), one result each, in
    /// as few forward passes as the model allows; the model uses all cores.
    fn encode_batch(&self, items: &[(&[u8], &str)]) -> Vec<Result<Vec<f32>>> {
        items.iter().map(|(b, m)| self.encode(b, m)).collect()
    }
}

/// The encoder `--encoder` names: `builtin` (the default), `clip:DIR`,
/// `text:DIR` or `whisper:DIR` (Hugging Face checkpoint folders).
pub fn load(spec: &str) -> Result<Arc<dyn Encoder>> {
    let device = device()?;
    let loaded: Arc<dyn Encoder> = match spec.split_once(':') {
        None if spec == "builtin" => Arc::new(builtin::BuiltinEncoder),
        Some(("text", dir)) if !dir.is_empty() => {
            Arc::new(text::TextEncoder::load(Path::new(dir), &device)?)
        }
        Some(("clip", dir)) if !dir.is_empty() => {
            Arc::new(clip::ClipEncoder::load(Path::new(dir), &device)?)
        }
        Some(("whisper", dir)) if !dir.is_empty() => {
            Arc::new(whisper::WhisperEncoder::load(Path::new(dir), &device)?)
        }
        _ => bail!(
            "--encoder {spec:?}: expected builtin, clip:DIR, text:DIR or whisper:DIR (a Hugging Face checkpoint folder)"
        ),
    };
    Ok(loaded)
}

/// Where models run: the first CUDA GPU in a `--features cuda` build when
/// there is one, else the CPU.
pub fn device() -> Result<Device> {
    #[cfg(feature = "cuda")]
    {
        Device::cuda_if_available(0).context("cannot open the CUDA device")
    }
    #[cfg(not(feature = "cuda"))]
    {
        Ok(Device::Cpu)
    }
}

/// Text media types the text towers accept.
pub fn is_text(media_type: &str) -> bool {
    media_type.starts_with("text/") || media_type == "application/json"
}

/// Embeds text samples (`(bytes, media type)`) with `encode_texts`, one
/// result each: a sample that is not UTF-8 text is refused, saying that
/// `model` embeds `what`.
pub(crate) fn encode_text_samples<'a>(
    items: impl Iterator<Item = &'a (&'a [u8], &'a str)>,
    model: &str,
    what: &str,
    encode_texts: impl FnOnce(&[&str]) -> Result<Vec<Vec<f32>>>,
) -> Vec<Result<Vec<f32>>> {
    let texts = items
        .map(|(bytes, media_type)| {
            if !is_text(media_type) {
                bail!("{model} embeds {what}, not {media_type}")
            }
            std::str::from_utf8(bytes).context("the text is not UTF-8")
        })
        .collect();
    batched(texts, |ok| {
        encode_texts(&ok.iter().map(|t| **t).collect::<Vec<_>>())
    })
}

/// The result of a batch of one.
pub(crate) fn single(mut batch: Vec<Result<Vec<f32>>>) -> Result<Vec<f32>> {
    batch.pop().context("the encoder returned nothing")?
}

/// Tokenises `texts` as one padded batch.
pub(crate) fn tokenize(
    tokenizer: &tokenizers::Tokenizer,
    texts: &[&str],
) -> Result<Vec<tokenizers::Encoding>> {
    tokenizer
        .encode_batch(texts.to_vec(), true)
        .map_err(|e| err!("tokenizing: {e}"))
}

/// One field of a padded batch of encodings as an `(n, len)` tensor.
pub(crate) fn token_tensor(
    enc: &[tokenizers::Encoding],
    field: impl Fn(&tokenizers::Encoding) -> &[u32],
    device: &Device,
) -> candle_core::Result<Tensor> {
    let len = enc.first().map_or(0, |e| field(e).len());
    let flat: Vec<u32> = enc.iter().flat_map(|e| field(e).iter().copied()).collect();
    Tensor::from_vec(flat, (enc.len(), len), device)
}

/// Cores to use.
/// Fewest texts or images a concurrent forward pass gets.
pub(crate) const MIN_PER_WORKER: usize = 8;

/// How many forward passes run at once over `n` samples: one per core,
/// each with at least `min` samples.
fn workers(n: usize, min: usize) -> usize {
    crate::par::cores().min(n / min.max(1)).max(1)
}

/// Threads each matrix product should use in commands that embed batches
/// of 32, so that the concurrent passes of [`split_forward`] share the
/// cores instead of oversubscribing them (candle reads
/// `RAYON_NUM_THREADS` for its products). On 2 cores: 2 passes of 16, one
/// thread each, measured 1.3x the throughput of one pass of 32 on both
/// cores, whose per-operation fork/join and single-threaded element-wise
/// operations leave a core idle much of the time.
pub fn threads_for_batches() -> Option<usize> {
    let cores = crate::par::cores();
    (cores > 1).then(|| (cores / workers(32, MIN_PER_WORKER)).max(1))
}

/// Runs `forward` over `items` in concurrent parts of at least `min`
/// items, one per core at most (results in order).
pub(crate) fn split_forward<T: Sync>(
    items: &[T],
    min: usize,
    forward: impl Fn(&[T]) -> Result<Vec<Vec<f32>>> + Sync,
) -> Result<Vec<Vec<f32>>> {
    let w = workers(items.len(), min);
    if w < 2 {
        return forward(items);
    }
    let parts: Vec<&[T]> = items.chunks(items.len().div_ceil(w)).collect();
    let mut all = Vec::with_capacity(items.len());
    for part in crate::par::map(&parts, |p| forward(p)) {
        all.extend(part?);
    }
    Ok(all)
}

/// Runs `forward` once over the items that were prepared and gives every
/// item its vector, or its own preparation error (a forward failure is
/// every prepared item's error).
pub(crate) fn batched<T>(
    prepared: Vec<Result<T>>,
    forward: impl FnOnce(&[&T]) -> Result<Vec<Vec<f32>>>,
) -> Vec<Result<Vec<f32>>> {
    let ok: Vec<&T> = prepared.iter().filter_map(|p| p.as_ref().ok()).collect();
    let n = ok.len();
    let mut vectors = match forward(&ok) {
        Ok(v) if v.len() == n => Ok(v.into_iter()),
        Ok(v) => Err(format!(
            "the encoder returned {} vectors for {n} inputs",
            v.len()
        )),
        Err(e) => Err(format!("{e:#}")),
    };
    prepared
        .into_iter()
        .map(|p| {
            p.and_then(|_| match &mut vectors {
                Ok(v) => v.next().context("the encoder returned too few vectors"),
                Err(msg) => Err(err!("{msg}")),
            })
        })
        .collect()
}

/// Rows scaled to unit length.
pub(crate) fn l2_normalize_rows(x: &Tensor) -> candle_core::Result<Tensor> {
    let norm = x.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12, f64::MAX)?;
    x.broadcast_div(&norm)
}

/// A Hugging Face checkpoint folder: `config.json`, `model.safetensors`
/// and (for models with a text side) `tokenizer.json`.
pub(crate) struct Checkpoint {
    kind: &'static str,
    name: String,
    pub config_path: PathBuf,
    pub weights_path: PathBuf,
    pub tokenizer_path: PathBuf,
    weights: Vec<u8>,
    digest: String,
}

impl Checkpoint {
    /// Checks the files and reads the weights. `what` describes the
    /// expected folder in errors.
    pub fn open(dir: &Path, kind: &'static str, what: &str) -> Result<Self> {
        if !dir.is_dir() {
            bail!(
                "--encoder {kind}:{}: no such folder (expected {what}: config.json, model.safetensors)",
                dir.display()
            );
        }
        let need = |name: &str| -> Result<PathBuf> {
            let p = dir.join(name);
            // Present but not a regular file (a FIFO, a device) is the
            // read's error, which says so.
            if !p.exists() {
                bail!(
                    "{}: no {name} (expected {what}: config.json, model.safetensors{})",
                    dir.display(),
                    if kind == "whisper" {
                        ""
                    } else {
                        ", tokenizer.json"
                    }
                );
            }
            Ok(p)
        };
        let config_path = need("config.json")?;
        let model_type = read_config_text(&config_path)?;
        let model_type = serde_json::from_str::<serde_json::Value>(&model_type)
            .ok()
            .and_then(|v| v["model_type"].as_str().map(str::to_owned));
        let expected = match kind {
            "text" => "bert",
            other => other,
        };
        if let Some(t) = model_type.filter(|t| t != expected) {
            bail!(
                "{}: model_type is {t:?}, but {kind}:DIR takes a {expected:?} checkpoint",
                config_path.display()
            );
        }
        let weights_path = need("model.safetensors")?;
        let tokenizer_path = dir.join("tokenizer.json");
        let weights = crate::files::read_regular(&weights_path, crate::files::limits::WEIGHTS)
            .with_context(|| format!("cannot read {}", weights_path.display()))?;
        let digest = hex::encode(Sha256::digest(&weights));
        let name = dir
            .canonicalize()
            .ok()
            .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| kind.into());
        Ok(Self {
            kind,
            name,
            config_path,
            weights_path,
            tokenizer_path,
            weights,
            digest,
        })
    }

    /// `config.json` parsed as `T`.
    pub fn config<T: serde::de::DeserializeOwned>(&self) -> Result<T> {
        let text = read_config_text(&self.config_path)?;
        serde_json::from_str(&text)
            .with_context(|| format!("{}: not a {} config", self.config_path.display(), self.kind))
    }

    /// The weights, as f32 on `device` (taken from the checkpoint: call once).
    pub fn weights(&mut self, device: &Device) -> Result<VarBuilder<'static>> {
        let bytes = std::mem::take(&mut self.weights);
        VarBuilder::from_buffered_safetensors(bytes, DType::F32, device)
            .with_context(|| format!("{}: not safetensors", self.weights_path.display()))
    }

    /// `tokenizer.json`.
    pub fn tokenizer(&self) -> Result<tokenizers::Tokenizer> {
        if !self.tokenizer_path.exists() {
            bail!(
                "{}: no tokenizer.json (the {} folder needs one)",
                self.tokenizer_path
                    .parent()
                    .unwrap_or(Path::new("."))
                    .display(),
                self.kind
            );
        }
        let bytes =
            crate::files::read_regular(&self.tokenizer_path, crate::files::limits::TOKENIZER)
                .with_context(|| format!("cannot read {}", self.tokenizer_path.display()))?;
        tokenizers::Tokenizer::from_bytes(bytes)
            .map_err(|e| err!("{}: {e}", self.tokenizer_path.display()))
    }

    /// `KIND:FOLDER@sha256:<16 hex of the weights>`: the `embedding_model`
    /// value; equal only for the same weights.
    pub fn model_id(&self) -> String {
        format!("{}:{}@sha256:{}", self.kind, self.name, &self.digest[..16])
    }
}

/// Largest width or height of an image an encoder decodes.
pub const MAX_IMAGE_SIDE: u32 = 32_768;
/// Most bytes a decoder may allocate for one image (the `image` crate's
/// own default).
pub const MAX_IMAGE_ALLOC: u64 = 512 << 20;

/// Decodes an image, refusing (with the reason) one whose size is beyond
/// [`MAX_IMAGE_SIDE`] or whose pixels would take more than
/// [`MAX_IMAGE_ALLOC`], before allocating them.
pub fn decode_image(bytes: &[u8]) -> Result<image::DynamicImage> {
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_SIDE);
    limits.max_image_height = Some(MAX_IMAGE_SIDE);
    limits.max_alloc = Some(MAX_IMAGE_ALLOC);
    let mut reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .context("cannot decode the image")?;
    reader.limits(limits);
    reader.decode().context("cannot decode the image")
}

/// A JSON configuration file of a model folder, as text (bounded).
fn read_config_text(path: &Path) -> Result<String> {
    crate::files::read_regular_string(path, crate::files::limits::MODEL_CONFIG)
        .with_context(|| format!("cannot read {}", path.display()))
}

/// Guesses a MIME type from magic bytes first, then from the file extension.
///
/// Magic bytes win because extensions lie more often than headers do; the
/// extension is the fallback for formats without a signature (text, CSV).
pub fn detect_media_type(bytes: &[u8], extension: Option<&str>) -> &'static str {
    if let Some(t) = media_type_from_magic(bytes) {
        return t;
    }
    let ext = extension.map(|e| e.to_ascii_lowercase());
    match ext.as_deref() {
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("gif") => "image/gif",
        Some("bmp") => "image/bmp",
        Some("webp") => "image/webp",
        Some("tif" | "tiff") => "image/tiff",
        Some("wav") => "audio/wav",
        Some("flac") => "audio/flac",
        Some("mp3") => "audio/mpeg",
        Some("ogg" | "oga") => "audio/ogg",
        Some("txt" | "text" | "md") => "text/plain",
        Some("csv") => "text/csv",
        Some("json" | "jsonl") => "application/json",
        Some("html" | "htm") => "text/html",
        _ if std::str::from_utf8(bytes).is_ok() => "text/plain",
        _ => "application/octet-stream",
    }
}

fn media_type_from_magic(b: &[u8]) -> Option<&'static str> {
    let starts = |sig: &[u8]| b.starts_with(sig);
    if starts(b"\x89PNG\r\n\x1a\n") {
        Some("image/png")
    } else if starts(b"\xff\xd8\xff") {
        Some("image/jpeg")
    } else if starts(b"GIF87a") || starts(b"GIF89a") {
        Some("image/gif")
    } else if starts(b"BM") && b.len() > 14 {
        Some("image/bmp")
    } else if starts(b"RIFF") && b.len() >= 12 && &b[8..12] == b"WEBP" {
        Some("image/webp")
    } else if starts(b"RIFF") && b.len() >= 12 && &b[8..12] == b"WAVE" {
        Some("audio/wav")
    } else if starts(b"II*\0") || starts(b"MM\0*") {
        Some("image/tiff")
    } else if starts(b"fLaC") {
        Some("audio/flac")
    } else if starts(b"OggS") {
        Some("audio/ogg")
    } else if starts(b"ID3") {
        Some("audio/mpeg")
    } else if starts(b"%PDF-") {
        Some("application/pdf")
    } else {
        None
    }
}

/// The canonical file extension (with dot) for a media type, used when a
/// sample is presented as a file and its original name is not kept.
pub fn extension_for(media_type: &str) -> &'static str {
    match media_type {
        "image/png" => ".png",
        "image/jpeg" => ".jpg",
        "image/gif" => ".gif",
        "image/bmp" => ".bmp",
        "image/webp" => ".webp",
        "image/tiff" => ".tiff",
        "audio/wav" => ".wav",
        "audio/flac" => ".flac",
        "audio/ogg" => ".ogg",
        "audio/mpeg" => ".mp3",
        "application/pdf" => ".pdf",
        "text/plain" => ".txt",
        "text/csv" => ".csv",
        "text/html" => ".html",
        "application/json" => ".json",
        _ => ".bin",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magic_beats_extension() {
        assert_eq!(
            detect_media_type(b"\x89PNG\r\n\x1a\nxxxx", Some("jpg")),
            "image/png"
        );
        assert_eq!(detect_media_type(b"hello", Some("md")), "text/plain");
        assert_eq!(detect_media_type(b"a,b\n1,2", Some("csv")), "text/csv");
        assert_eq!(
            detect_media_type(&[0xff, 0x00, 0xfe], None),
            "application/octet-stream"
        );
    }
}
