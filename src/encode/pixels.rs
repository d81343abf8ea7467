//! CLIP's image preprocessing, as Hugging Face's `CLIPImageProcessor` does
//! it on Pillow: RGB, shortest side resized with Pillow's bicubic filter,
//! centre crop, rescale to [0, 1], per-channel mean/std, channels first.
//!
//! The resize is a port of Pillow's `Resample.c` (the two-pass convolution
//! with 22-bit fixed-point coefficients and an 8-bit intermediate image),
//! so the pixels equal the reference's bit for bit, not just closely: a
//! different bicubic (the `image` crate's, say) moves every pixel a little
//! and the embedding with it.

use std::path::Path;

use crate::error::{Context, Result, bail};
use image::RgbImage;

/// `preprocessor_config.json` of a CLIP checkpoint (the fields we use; the
/// defaults are CLIPImageProcessor's).
#[derive(Debug, Clone)]
pub struct ImagePrep {
    /// Resize so the shortest side is this long (`size.shortest_edge`).
    pub shortest_edge: Option<u32>,
    /// `(height, width)` of the centre crop.
    pub crop: Option<(u32, u32)>,
    pub rescale: Option<f64>,
    pub mean_std: Option<([f32; 3], [f32; 3])>,
}

/// Largest `shortest_edge` and crop side a preprocessor config may ask
/// for (CLIP models take 224-336; a typo of 100000 would ask for a
/// 30 GB image).
pub const MAX_EDGE: u32 = 4096;
/// Most pixels the resize may produce: the shortest side becomes
/// `shortest_edge`, so a 1 x 20000 strip would become 224 x 4,480,000
/// (minutes of work and gigabytes); such an image is refused with the
/// reason instead.
pub const MAX_RESIZED_PIXELS: u64 = 16 << 20;

const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_6, 0.275_777_1];

impl ImagePrep {
    /// CLIPImageProcessor's defaults for an `image_size` model.
    pub fn clip_default(image_size: u32) -> Self {
        Self {
            shortest_edge: Some(image_size),
            crop: Some((image_size, image_size)),
            rescale: Some(1.0 / 255.0),
            mean_std: Some((CLIP_MEAN, CLIP_STD)),
        }
    }

    /// Reads `preprocessor_config.json` in `dir` when there is one.
    pub fn load(dir: &Path, image_size: u32) -> Result<Self> {
        let path = dir.join("preprocessor_config.json");
        let mut prep = Self::clip_default(image_size);
        let text =
            match crate::files::read_regular_string(&path, crate::files::limits::MODEL_CONFIG) {
                Ok(text) => text,
                Err(crate::files::ReadError::NotFound) => return Ok(prep),
                Err(e) => bail!("cannot read {}: {e}", path.display()),
            };
        let bad = |what: &str| format!("{}: {what}", path.display());
        let v: serde_json::Value = serde_json::from_str(&text).with_context(|| bad("not JSON"))?;
        let flag = |k: &str| v.get(k).and_then(|b| b.as_bool()).unwrap_or(true);
        if let Some(r) = v.get("resample").and_then(|r| r.as_u64())
            && r != 3
        {
            bail!(
                "{}",
                bad(&format!(
                    "resample is {r}; only 3 (bicubic, CLIP's) is implemented"
                ))
            );
        }
        prep.shortest_edge = if flag("do_resize") {
            match v.get("size") {
                None => Some(image_size),
                Some(s) => Some(
                    s.get("shortest_edge")
                        .and_then(|e| e.as_u64())
                        .or_else(|| s.as_u64())
                        .with_context(|| bad("size: expected {\"shortest_edge\": N}"))?
                        as u32,
                ),
            }
        } else {
            None
        };
        if let Some(e) = prep.shortest_edge
            && !(1..=MAX_EDGE).contains(&e)
        {
            bail!(
                "{}",
                bad(&format!(
                    "size.shortest_edge is {e}; expected 1 to {MAX_EDGE} pixels"
                ))
            );
        }
        prep.crop = if flag("do_center_crop") {
            match v.get("crop_size") {
                None => Some((image_size, image_size)),
                Some(c) if c.is_u64() => Some((
                    c.as_u64().unwrap_or(0) as u32,
                    c.as_u64().unwrap_or(0) as u32,
                )),
                Some(c) => {
                    let side = |k: &str| c.get(k).and_then(|x| x.as_u64()).map(|x| x as u32);
                    Some((
                        side("height").with_context(|| bad("crop_size.height missing"))?,
                        side("width").with_context(|| bad("crop_size.width missing"))?,
                    ))
                }
            }
        } else {
            None
        };
        prep.rescale = flag("do_rescale").then(|| {
            v.get("rescale_factor")
                .and_then(|f| f.as_f64())
                .unwrap_or(1.0 / 255.0)
        });
        prep.mean_std = if flag("do_normalize") {
            let three = |k: &str, d: [f32; 3]| -> Result<[f32; 3]> {
                match v.get(k) {
                    None => Ok(d),
                    Some(a) => {
                        let xs: Vec<f32> = a
                            .as_array()
                            .map(|a| {
                                a.iter()
                                    .filter_map(|x| x.as_f64())
                                    .map(|x| x as f32)
                                    .collect()
                            })
                            .unwrap_or_default();
                        xs.try_into().map_err(|_| {
                            crate::error::err!("{}", bad(&format!("{k}: expected three numbers")))
                        })
                    }
                }
            };
            Some((
                three("image_mean", CLIP_MEAN)?,
                three("image_std", CLIP_STD)?,
            ))
        } else {
            None
        };
        if let Some((h, w)) = prep.crop
            && (h == 0 || w == 0 || h.max(w) > MAX_EDGE)
        {
            bail!(
                "{}",
                bad(&format!(
                    "crop_size is {w}x{h}; expected sides of 1 to {MAX_EDGE} pixels"
                ))
            );
        }
        Ok(prep)
    }

    /// Decodes `bytes` and returns the model's input: 3 × H × W floats.
    pub fn pixels(&self, bytes: &[u8], image_size: u32) -> Result<Vec<f32>> {
        let img = super::decode_image(bytes)?;
        if let Some(edge) = self.shortest_edge {
            let (nw, nh) = shortest_edge_size(img.width(), img.height(), edge);
            if u64::from(nw) * u64::from(nh) > MAX_RESIZED_PIXELS {
                bail!(
                    "the image is {}x{}: resizing its shortest side to {edge} would make {nw}x{nh} pixels, \
                     more than the limit of {MAX_RESIZED_PIXELS}",
                    img.width(),
                    img.height()
                );
            }
        }
        // Pillow's convert("RGB"): grey replicated, alpha dropped.
        let mut rgb = img.to_rgb8();
        if let Some(edge) = self.shortest_edge {
            let (w, h) = rgb.dimensions();
            let (nw, nh) = shortest_edge_size(w, h, edge);
            rgb = resize_bicubic(&rgb, nw, nh);
        }
        let (ch, cw) = self.crop.unwrap_or((rgb.height(), rgb.width()));
        if (ch, cw) != (image_size, image_size) {
            bail!(
                "the preprocessed image is {cw}x{ch} but the model takes {image_size}x{image_size}"
            );
        }
        Ok(self.to_chw(&rgb, ch, cw))
    }

    /// Centre crop (zero-padded when the image is smaller, as
    /// transformers' `center_crop` does), rescale and normalise, CHW.
    fn to_chw(&self, rgb: &RgbImage, ch: u32, cw: u32) -> Vec<f32> {
        let (w, h) = (rgb.width() as i64, rgb.height() as i64);
        let (ch_, cw_) = (ch as i64, cw as i64);
        // Offsets of the crop in the (possibly padded) image.
        let top = if h >= ch_ {
            (h - ch_) / 2
        } else {
            -((ch_ - h) / 2)
        };
        let left = if w >= cw_ {
            (w - cw_) / 2
        } else {
            -((cw_ - w) / 2)
        };
        let plane = (ch * cw) as usize;
        let mut out = vec![0f32; 3 * plane];
        for y in 0..ch_ {
            for x in 0..cw_ {
                let (sy, sx) = (top + y, left + x);
                let px = if (0..h).contains(&sy) && (0..w).contains(&sx) {
                    rgb.get_pixel(sx as u32, sy as u32).0
                } else {
                    [0, 0, 0]
                };
                for c in 0..3 {
                    let mut v = match self.rescale {
                        Some(r) => (px[c] as f64 * r) as f32,
                        None => px[c] as f32,
                    };
                    if let Some((mean, std)) = &self.mean_std {
                        v = (v - mean[c]) / std[c];
                    }
                    out[c * plane + (y * cw_ + x) as usize] = v;
                }
            }
        }
        out
    }
}

/// transformers' `get_resize_output_image_size(size=edge,
/// default_to_square=False)`: the shortest side becomes `edge`, the other
/// `int(edge * long / short)`. Returns `(width, height)`.
pub fn shortest_edge_size(w: u32, h: u32, edge: u32) -> (u32, u32) {
    let (short, long) = if w <= h { (w, h) } else { (h, w) };
    let new_long = (edge as f64 * long as f64 / short.max(1) as f64) as u32;
    if w <= h {
        (edge, new_long)
    } else {
        (new_long, edge)
    }
}

const PRECISION_BITS: u32 = 32 - 8 - 2;

fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc` for one axis:
/// for each output index, the first input index and the fixed-point
/// weights of the inputs it reads.
fn coefficients(in_size: u32, out_size: u32) -> Vec<(usize, Vec<i32>)> {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = 2.0 * filterscale;
    let ss = 1.0 / filterscale;
    (0..out_size)
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            // C's (int) cast truncates toward zero, as `as` does.
            let xmin = ((center - support + 0.5) as i64).max(0);
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) - xmin;
            let mut k: Vec<f64> = (0..xmax.max(0))
                .map(|x| bicubic((x as f64 + xmin as f64 - center + 0.5) * ss))
                .collect();
            let ww: f64 = k.iter().sum();
            if ww != 0.0 {
                k.iter_mut().for_each(|w| *w /= ww);
            }
            let fixed = k
                .iter()
                .map(|&w| {
                    let s = w * (1u32 << PRECISION_BITS) as f64;
                    (if w < 0.0 { -0.5 + s } else { 0.5 + s }) as i32
                })
                .collect();
            (xmin as usize, fixed)
        })
        .collect()
}

fn clip8(v: i64) -> u8 {
    (v >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Pillow's `Image.resize((w, h), Image.BICUBIC)` for an RGB image:
/// horizontal pass, then vertical, each rounded to 8 bits.
pub fn resize_bicubic(img: &RgbImage, w: u32, h: u32) -> RgbImage {
    let (iw, ih) = img.dimensions();
    if (iw, ih) == (w, h) {
        return img.clone();
    }
    let src = img.as_raw();
    let half = 1i64 << (PRECISION_BITS - 1);
    let horizontal = if w != iw {
        let coeffs = coefficients(iw, w);
        let mut out = vec![0u8; (w * ih * 3) as usize];
        for y in 0..ih as usize {
            let row = &src[y * iw as usize * 3..(y + 1) * iw as usize * 3];
            for (x, (xmin, k)) in coeffs.iter().enumerate() {
                for c in 0..3 {
                    let mut ss = half;
                    for (i, &kv) in k.iter().enumerate() {
                        ss += row[(xmin + i) * 3 + c] as i64 * kv as i64;
                    }
                    out[(y * w as usize + x) * 3 + c] = clip8(ss);
                }
            }
        }
        out
    } else {
        src.to_vec()
    };
    let result = if h != ih {
        let coeffs = coefficients(ih, h);
        let stride = w as usize * 3;
        let mut out = vec![0u8; stride * h as usize];
        for (y, (ymin, k)) in coeffs.iter().enumerate() {
            for i in 0..stride {
                let mut ss = half;
                for (j, &kv) in k.iter().enumerate() {
                    ss += horizontal[(ymin + j) * stride + i] as i64 * kv as i64;
                }
                out[y * stride + i] = clip8(ss);
            }
        }
        out
    } else {
        horizontal
    };
    RgbImage::from_raw(w, h, result).expect("the buffer has w * h * 3 bytes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shortest_edge_keeps_the_aspect_ratio_truncating() {
        assert_eq!(shortest_edge_size(300, 200, 224), (336, 224));
        assert_eq!(shortest_edge_size(150, 400, 224), (224, 597));
        assert_eq!(shortest_edge_size(32, 32, 224), (224, 224));
    }

    #[test]
    fn a_flat_image_stays_flat_through_the_resize() {
        let img = RgbImage::from_pixel(37, 23, image::Rgb([10, 128, 250]));
        for (w, h) in [(224, 224), (11, 7), (100, 13)] {
            let out = resize_bicubic(&img, w, h);
            assert!(out.pixels().all(|p| p.0 == [10, 128, 250]), "{w}x{h}");
        }
    }

    #[test]
    fn weights_sum_to_one_in_fixed_point() {
        for (i, o) in [(32, 224), (300, 224), (500, 224), (7, 3)] {
            for (_, k) in coefficients(i, o) {
                let sum: i64 = k.iter().map(|&v| v as i64).sum();
                assert!(
                    (sum - (1 << PRECISION_BITS)).abs() <= k.len() as i64,
                    "{i}->{o}: {sum}"
                );
            }
        }
    }
}
