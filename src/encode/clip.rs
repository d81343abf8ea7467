//! `clip:DIR`: a CLIP checkpoint (the layout of
//! `openai/clip-vit-base-patch32`) run in-process with candle-transformers'
//! CLIP towers. Images go through the vision tower, text through the text
//! tower; both are projected into the shared space and L2-normalised, as
//! `get_image_features` / `get_text_features` followed by normalisation.
//!
//! The folder: `config.json`, `model.safetensors`, `tokenizer.json`, and
//! optionally `preprocessor_config.json` (else CLIPImageProcessor's
//! defaults). Nothing is downloaded.

use std::path::Path;

use crate::error::{Result, bail, err};
use candle_core::{Device, IndexOp, Tensor};
use candle_nn::{Linear, Module, VarBuilder};
use candle_transformers::models::clip::text_model::{
    Activation, ClipTextConfig, ClipTextTransformer,
};
use candle_transformers::models::clip::vision_model::{ClipVisionConfig, ClipVisionTransformer};
use serde::Deserialize;
use tokenizers::{PaddingParams, Tokenizer, TruncationParams};

use super::pixels::ImagePrep;
use super::{Checkpoint, l2_normalize_rows};

/// `config.json` of a CLIPModel; absent keys take transformers' defaults
/// (`save_pretrained` writes only the keys that differ from them).
#[derive(Debug, Deserialize)]
struct HfConfig {
    #[serde(default)]
    text_config: HfText,
    #[serde(default)]
    vision_config: HfVision,
    #[serde(default = "d512")]
    projection_dim: usize,
}

#[derive(Debug, Deserialize)]
#[serde(default)]
struct HfText {
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    max_position_embeddings: usize,
    hidden_act: String,
    layer_norm_eps: f64,
    eos_token_id: u32,
}

impl Default for HfText {
    fn default() -> Self {
        Self {
            vocab_size: 49408,
            hidden_size: 512,
            intermediate_size: 2048,
            num_hidden_layers: 12,
            num_attention_heads: 8,
            max_position_embeddings: 77,
            hidden_act: "quick_gelu".into(),
            layer_norm_eps: 1e-5,
            eos_token_id: 49407,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default)]
struct HfVision {
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_channels: usize,
    image_size: usize,
    patch_size: usize,
    hidden_act: String,
    layer_norm_eps: f64,
}

impl Default for HfVision {
    fn default() -> Self {
        Self {
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            num_channels: 3,
            image_size: 224,
            patch_size: 32,
            hidden_act: "quick_gelu".into(),
            layer_norm_eps: 1e-5,
        }
    }
}

fn d512() -> usize {
    512
}

/// A CLIP model loaded from a checkpoint folder.
pub struct ClipEncoder {
    text: ClipTextTransformer,
    vision: ClipVisionTransformer,
    text_projection: Linear,
    visual_projection: Linear,
    tokenizer: Tokenizer,
    /// Where the text tower's pooled token is: the first end token (or,
    /// for legacy configs with `eos_token_id == 2`, the largest id), as
    /// transformers does.
    eos: u32,
    prep: ImagePrep,
    image_size: u32,
    dim: usize,
    id: String,
    device: Device,
}

impl std::fmt::Debug for ClipEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClipEncoder").field("id", &self.id).finish()
    }
}

impl ClipEncoder {
    /// Loads the checkpoint in `dir`.
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let mut ck = Checkpoint::open(dir, "clip", "a Hugging Face CLIP folder")?;
        let cfg: HfConfig = ck.config()?;
        let (t, v) = (&cfg.text_config, &cfg.vision_config);
        for (tower, act, eps) in [
            ("text_config", &t.hidden_act, t.layer_norm_eps),
            ("vision_config", &v.hidden_act, v.layer_norm_eps),
        ] {
            if act != "quick_gelu" {
                bail!(
                    "{}: {tower}.hidden_act is {act:?}; only quick_gelu (OpenAI's CLIP) is supported",
                    ck.config_path.display()
                );
            }
            if (eps - 1e-5).abs() > 1e-12 {
                bail!(
                    "{}: {tower}.layer_norm_eps is {eps}; only 1e-5 (OpenAI's CLIP) is supported",
                    ck.config_path.display()
                );
            }
        }
        let text_cfg = ClipTextConfig {
            vocab_size: t.vocab_size,
            embed_dim: t.hidden_size,
            activation: Activation::QuickGelu,
            intermediate_size: t.intermediate_size,
            max_position_embeddings: t.max_position_embeddings,
            pad_with: None,
            num_hidden_layers: t.num_hidden_layers,
            num_attention_heads: t.num_attention_heads,
            projection_dim: cfg.projection_dim,
        };
        let vision_cfg = ClipVisionConfig {
            embed_dim: v.hidden_size,
            activation: Activation::QuickGelu,
            intermediate_size: v.intermediate_size,
            num_hidden_layers: v.num_hidden_layers,
            num_attention_heads: v.num_attention_heads,
            projection_dim: cfg.projection_dim,
            num_channels: v.num_channels,
            image_size: v.image_size,
            patch_size: v.patch_size,
        };
        let vb: VarBuilder = ck.weights(device)?;
        let fit = |e: candle_core::Error| {
            err!(
                "{}: the weights do not fit config.json's CLIP: {e}",
                ck.weights_path.display()
            )
        };
        let text = ClipTextTransformer::new(vb.pp("text_model"), &text_cfg).map_err(fit)?;
        let vision = ClipVisionTransformer::new(vb.pp("vision_model"), &vision_cfg).map_err(fit)?;
        let text_projection =
            candle_nn::linear_no_bias(t.hidden_size, cfg.projection_dim, vb.pp("text_projection"))
                .map_err(fit)?;
        let visual_projection = candle_nn::linear_no_bias(
            v.hidden_size,
            cfg.projection_dim,
            vb.pp("visual_projection"),
        )
        .map_err(fit)?;
        let mut tokenizer = ck.tokenizer()?;
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: t.max_position_embeddings,
                ..Default::default()
            }))
            .map_err(|e| err!("{}: {e}", ck.tokenizer_path.display()))?;
        // Pad after the end token: the causal mask keeps padding out of
        // every position up to it, so the pad id does not matter.
        tokenizer.with_padding(Some(PaddingParams {
            pad_id: 0,
            ..Default::default()
        }));
        let image_size = v.image_size as u32;
        Ok(Self {
            text,
            vision,
            text_projection,
            visual_projection,
            tokenizer,
            eos: t.eos_token_id,
            prep: ImagePrep::load(dir, image_size)?,
            image_size,
            dim: cfg.projection_dim,
            id: ck.model_id(),
            device: device.clone(),
        })
    }

    /// Embeds images (encoded bytes): one unit vector each, or the reason
    /// an image cannot be embedded.
    pub fn encode_images(&self, images: &[&[u8]]) -> Vec<Result<Vec<f32>>> {
        // Decoding and resizing are per image: spread them over the cores
        // (the forward pass uses them all anyway).
        let pixels = crate::par::map(images, |b| self.prep.pixels(b, self.image_size));
        super::batched(pixels, |ok| {
            super::split_forward(ok, super::MIN_PER_WORKER, |part| self.image_forward(part))
        })
    }

    fn image_forward(&self, pixels: &[&Vec<f32>]) -> Result<Vec<Vec<f32>>> {
        if pixels.is_empty() {
            return Ok(Vec::new());
        }
        let s = self.image_size as usize;
        let flat: Vec<f32> = pixels.iter().flat_map(|p| p.iter().copied()).collect();
        let x = Tensor::from_vec(flat, (pixels.len(), 3, s, s), &self.device)?;
        let pooled = self.vision.forward(&x)?;
        let features = self.visual_projection.forward(&pooled)?;
        Ok(l2_normalize_rows(&features)?.to_vec2::<f32>()?)
    }

    /// Embeds texts with the text tower: one unit vector each.
    pub fn encode_texts(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        super::split_forward(texts, super::MIN_PER_WORKER, |part| self.text_forward(part))
    }

    fn text_forward(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let enc = super::tokenize(&self.tokenizer, texts)?;
        let x = super::token_tensor(&enc, |e| e.get_ids(), &self.device)?;
        let hidden = self.text.forward_with_mask(&x, usize::MAX)?;
        let rows: Vec<Tensor> = enc
            .iter()
            .enumerate()
            .map(|(b, e)| hidden.i((b, pooled_position(e.get_ids(), self.eos))))
            .collect::<candle_core::Result<_>>()?;
        let pooled = Tensor::stack(&rows, 0)?;
        let features = self.text_projection.forward(&pooled)?;
        Ok(l2_normalize_rows(&features)?.to_vec2::<f32>()?)
    }
}

/// transformers' CLIP pooling position: the first `eos` token; for legacy
/// configs (`eos_token_id == 2`) the position of the largest id.
fn pooled_position(ids: &[u32], eos: u32) -> usize {
    if eos == 2 {
        let max = ids.iter().copied().max().unwrap_or(0);
        ids.iter().position(|&i| i == max).unwrap_or(0)
    } else {
        ids.iter()
            .position(|&i| i == eos)
            .unwrap_or(ids.len().saturating_sub(1))
    }
}

impl super::Encoder for ClipEncoder {
    fn model_id(&self) -> &str {
        &self.id
    }

    fn dim(&self) -> usize {
        self.dim
    }

    fn encode(&self, bytes: &[u8], media_type: &str) -> Result<Vec<f32>> {
        super::single(self.encode_batch(&[(bytes, media_type)]))
    }

    fn encode_text_batch(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        self.encode_texts(texts)
    }

    fn batch_size(&self) -> usize {
        32
    }

    /// Images through one vision forward pass, texts through one text
    /// pass; anything else is refused.
    fn encode_batch(&self, items: &[(&[u8], &str)]) -> Vec<Result<Vec<f32>>> {
        let is_image = |m: &str| m.starts_with("image/");
        let images: Vec<&[u8]> = items
            .iter()
            .filter(|(_, m)| is_image(m))
            .map(|(b, _)| *b)
            .collect();
        let mut image_vectors = self.encode_images(&images).into_iter();
        let mut text_vectors = super::encode_text_samples(
            items.iter().filter(|(_, m)| !is_image(m)),
            &self.id,
            "images and text",
            |t| self.encode_texts(t),
        )
        .into_iter();
        items
            .iter()
            .map(|(_, m)| {
                let next = if is_image(m) {
                    image_vectors.next()
                } else {
                    text_vectors.next()
                };
                next.unwrap_or_else(|| Err(err!("not embedded")))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::pooled_position;

    #[test]
    fn pooling_takes_the_first_end_token() {
        assert_eq!(pooled_position(&[216, 5, 9, 217, 0, 0], 217), 3);
        assert_eq!(pooled_position(&[216, 217, 217], 217), 1);
        // Legacy configs: the largest id.
        assert_eq!(pooled_position(&[49406, 5, 49407, 0], 2), 2);
    }
}
