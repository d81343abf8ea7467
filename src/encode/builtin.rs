//! The built-in encoder: deterministic, weight-free, and honest about what
//! its similarity means.
//!
//! Every vector has [`BUILTIN_DIM`] = 256 dimensions and unit L2 norm, so
//! cosine similarity and dot product agree. What the dimensions hold depends
//! on the media type:
//!
//! * **Images** (anything the `image` crate decodes): the picture resized to
//!   32x32, average-pooled with candle to an 8x8 RGB thumbnail (192 values,
//!   mean-centred and unit-normalised), followed by a 4x4x4 RGB colour
//!   histogram (64 values, square-rooted and unit-normalised). The two parts
//!   are weighted so that cosine similarity is `0.75 * layout + 0.25 *
//!   colour`: two images are close when they look alike at thumbnail scale
//!   and share a palette. It knows nothing of semantics.
//! * **Text** (`text/*`, JSON): character trigrams hashed (FNV-1a, signed)
//!   into 256 buckets. Cosine similarity approximates trigram-profile overlap:
//!   near-duplicate and same-language texts score high.
//! * **Anything else** (audio, binaries): the square root of the byte
//!   histogram. Cosine similarity is the Bhattacharyya coefficient of the two
//!   byte distributions: it separates formats and encodings, little more.
//!
//! The same bytes always give the same vector on every machine (no threads,
//! no randomness, f32 arithmetic in a fixed order).

use crate::error::{Context, Result, bail};
use candle_core::{Device, Tensor};

use super::Encoder;

/// Dimension of every built-in embedding.
pub const BUILTIN_DIM: usize = 256;
/// Value written to `embedding_model` for built-in vectors.
pub const BUILTIN_MODEL_ID: &str = "lakemount-builtin-v1";

/// Side of the resized image before pooling, and the pooling window: 32 / 4 = 8.
const RESIZE: u32 = 32;
const POOL: usize = 4;
const THUMB_DIMS: usize = 3 * 8 * 8;
const HIST_BINS_PER_CHANNEL: usize = 4;
/// Share of cosine similarity carried by the thumbnail; the rest is colour.
const THUMB_WEIGHT: f32 = 0.75;

/// The weight-free encoder described in the module docs.
#[derive(Debug, Default, Clone)]
pub struct BuiltinEncoder;

impl Encoder for BuiltinEncoder {
    fn model_id(&self) -> &str {
        BUILTIN_MODEL_ID
    }

    fn dim(&self) -> usize {
        BUILTIN_DIM
    }

    fn encode(&self, bytes: &[u8], media_type: &str) -> Result<Vec<f32>> {
        if media_type.starts_with("image/") {
            encode_image(bytes).with_context(|| format!("cannot decode {media_type} image"))
        } else if media_type.starts_with("text/") || media_type == "application/json" {
            Ok(encode_text(bytes))
        } else {
            Ok(encode_bytes(bytes))
        }
    }
}

fn encode_image(bytes: &[u8]) -> Result<Vec<f32>> {
    let img = super::decode_image(bytes)?;
    let small = img
        .resize_exact(RESIZE, RESIZE, image::imageops::FilterType::Triangle)
        .to_rgb8();
    let pixels: Vec<f32> = small
        .as_raw()
        .iter()
        .map(|&v| f32::from(v) / 255.0)
        .collect();

    let dev = Device::Cpu;
    let side = RESIZE as usize;
    let t = Tensor::from_vec(pixels.clone(), (side, side, 3), &dev)?
        .permute((2, 0, 1))?
        .unsqueeze(0)?
        .contiguous()?
        .avg_pool2d(POOL)?
        .flatten_all()?;
    debug_assert_eq!(t.dims1()?, THUMB_DIMS);
    let mean = t.mean_all()?;
    let centred = t.broadcast_sub(&mean)?;
    let thumb = unit(&centred)?;

    let mut hist = vec![0f32; HIST_BINS_PER_CHANNEL.pow(3)];
    for px in small.pixels() {
        let bin = |v: u8| usize::from(v) * HIST_BINS_PER_CHANNEL / 256;
        let idx =
            (bin(px[0]) * HIST_BINS_PER_CHANNEL + bin(px[1])) * HIST_BINS_PER_CHANNEL + bin(px[2]);
        hist[idx] += 1.0;
    }
    let hist = unit(&Tensor::from_vec(hist, HIST_BINS_PER_CHANNEL.pow(3), &dev)?.sqrt()?)?;

    let joined = Tensor::cat(
        &[
            thumb.affine(f64::from(THUMB_WEIGHT.sqrt()), 0.0)?,
            hist.affine(f64::from((1.0 - THUMB_WEIGHT).sqrt()), 0.0)?,
        ],
        0,
    )?;
    let v = unit(&joined)?.to_vec1::<f32>()?;
    if v.len() != BUILTIN_DIM {
        bail!("internal: image embedding has {} dims", v.len());
    }
    Ok(v)
}

fn encode_text(bytes: &[u8]) -> Vec<f32> {
    let text = String::from_utf8_lossy(bytes).to_lowercase();
    let chars: Vec<char> = text.chars().collect();
    let mut v = vec![0f32; BUILTIN_DIM];
    for w in chars.windows(3) {
        let mut buf = [0u8; 12];
        let mut n = 0;
        for c in w {
            n += c.encode_utf8(&mut buf[n..]).len();
        }
        let h = fnv1a(&buf[..n]);
        let sign = if h >> 63 == 0 { 1.0 } else { -1.0 };
        v[(h % BUILTIN_DIM as u64) as usize] += sign;
    }
    unit_vec(v)
}

fn encode_bytes(bytes: &[u8]) -> Vec<f32> {
    let mut v = vec![0f32; BUILTIN_DIM];
    for &b in bytes {
        v[usize::from(b)] += 1.0;
    }
    unit_vec(v.into_iter().map(f32::sqrt).collect())
}

fn unit(t: &Tensor) -> Result<Tensor> {
    let norm = t.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()?;
    if norm > 0.0 {
        Ok(t.affine(1.0 / f64::from(norm), 0.0)?)
    } else {
        Ok(t.clone())
    }
}

fn unit_vec(mut v: Vec<f32>) -> Vec<f32> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
    v
}

/// FNV-1a, 64-bit: tiny, stable across platforms and releases.
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(width: u32, height: u32, f: impl Fn(u32, u32) -> [u8; 3]) -> Vec<u8> {
        let img = image::RgbImage::from_fn(width, height, |x, y| image::Rgb(f(x, y)));
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png).unwrap();
        out.into_inner()
    }

    fn cos(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    #[test]
    fn image_vectors_are_unit_and_deterministic() {
        let e = BuiltinEncoder;
        let a = png(64, 48, |x, y| [(x * 4) as u8, (y * 5) as u8, 100]);
        let v1 = e.encode(&a, "image/png").unwrap();
        let v2 = e.encode(&a, "image/png").unwrap();
        assert_eq!(v1.len(), BUILTIN_DIM);
        assert_eq!(v1, v2);
        assert!((cos(&v1, &v1) - 1.0).abs() < 1e-4);
    }

    #[test]
    fn similar_images_score_higher_than_different_ones() {
        let e = BuiltinEncoder;
        let grad = |shift: u32| png(64, 64, move |x, _| [(x * 4 + shift) as u8, 0, 0]);
        let checker = png(64, 64, |x, y| {
            if (x / 8 + y / 8) % 2 == 0 {
                [0, 255, 0]
            } else {
                [0, 0, 255]
            }
        });
        let a = e.encode(&grad(0), "image/png").unwrap();
        let b = e.encode(&grad(3), "image/png").unwrap();
        let c = e.encode(&checker, "image/png").unwrap();
        assert!(cos(&a, &b) > 0.9, "{}", cos(&a, &b));
        assert!(cos(&a, &c) < cos(&a, &b));
    }

    #[test]
    fn text_similarity_follows_trigram_overlap() {
        let e = BuiltinEncoder;
        let a = e
            .encode(b"the quick brown fox jumps", "text/plain")
            .unwrap();
        let b = e
            .encode(b"the quick brown fox jumped", "text/plain")
            .unwrap();
        let c = e.encode(b"zzzz yyyy xxxx 1234", "text/plain").unwrap();
        assert!(cos(&a, &b) > 0.8);
        assert!(cos(&a, &c) < 0.5);
    }

    #[test]
    fn undecodable_image_is_an_error() {
        let err = BuiltinEncoder.encode(b"\x89PNG\r\n\x1a\ngarbage", "image/png");
        assert!(err.is_err());
    }
}
