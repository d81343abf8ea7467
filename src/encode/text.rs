//! `text:DIR`: a BERT-family sentence encoder (all-MiniLM-L6-v2 and the
//! like) run in-process with candle: tokenised with the folder's
//! `tokenizer.json`, truncated to the model's sequence length, mean-pooled
//! over the tokens the attention mask keeps and L2-normalised, as
//! sentence-transformers does.
//!
//! The folder is a Hugging Face checkpoint: `config.json`,
//! `model.safetensors`, `tokenizer.json`, and optionally
//! `sentence_bert_config.json` (its `max_seq_length` caps the tokens; else
//! the model's `max_position_embeddings`). Nothing is downloaded.

use std::path::Path;

use crate::error::{Result, err};
use candle_core::{DType, Device};
use candle_transformers::models::bert::{BertModel, Config};
use tokenizers::{PaddingParams, Tokenizer, TruncationParams};

use super::{Checkpoint, l2_normalize_rows};

/// A sentence encoder loaded from a checkpoint folder.
pub struct TextEncoder {
    model: BertModel,
    tokenizer: Tokenizer,
    dim: usize,
    id: String,
}

impl std::fmt::Debug for TextEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextEncoder").field("id", &self.id).finish()
    }
}

impl TextEncoder {
    /// Loads the checkpoint in `dir`.
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let mut ck = Checkpoint::open(dir, "text", "a Hugging Face sentence-encoder folder")?;
        let config: Config = ck.config()?;
        let max_len = crate::files::read_regular_string(
            &dir.join("sentence_bert_config.json"),
            crate::files::limits::MODEL_CONFIG,
        )
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v["max_seq_length"].as_u64())
        .map_or(config.max_position_embeddings, |n| n as usize)
        .min(config.max_position_embeddings);
        let vb = ck.weights(device)?;
        let model = BertModel::load(vb, &config).map_err(|e| {
            err!(
                "{}: the weights do not fit a BERT model: {e}",
                ck.weights_path.display()
            )
        })?;
        let mut tokenizer = ck.tokenizer()?;
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: max_len,
                ..Default::default()
            }))
            .map_err(|e| err!("{}: {e}", ck.tokenizer_path.display()))?;
        tokenizer.with_padding(Some(PaddingParams::default()));
        Ok(Self {
            model,
            tokenizer,
            dim: config.hidden_size,
            id: ck.model_id(),
        })
    }

    /// Embeds a batch of texts: one unit vector each.
    pub fn encode_texts(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        super::split_forward(texts, super::MIN_PER_WORKER, |part| self.forward(part))
    }

    /// One forward pass (texts padded to the longest).
    fn forward(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let enc = super::tokenize(&self.tokenizer, texts)?;
        let device = &self.model.device;
        let ids = super::token_tensor(&enc, |e| e.get_ids(), device)?;
        let types = super::token_tensor(&enc, |e| e.get_type_ids(), device)?;
        let mask = super::token_tensor(&enc, |e| e.get_attention_mask(), device)?;
        let hidden = self.model.forward(&ids, &types, Some(&mask))?;
        // Mean over the kept tokens, then L2 normalisation.
        let m = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
        let summed = hidden.broadcast_mul(&m)?.sum(1)?;
        let counts = m.sum(1)?.clamp(1e-9, f64::MAX)?;
        let mean = summed.broadcast_div(&counts)?;
        Ok(l2_normalize_rows(&mean)?.to_vec2::<f32>()?)
    }
}

impl super::Encoder for TextEncoder {
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

    fn encode_batch(&self, items: &[(&[u8], &str)]) -> Vec<Result<Vec<f32>>> {
        super::encode_text_samples(items.iter(), &self.id, "text", |t| self.encode_texts(t))
    }
}
