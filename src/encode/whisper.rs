//! `whisper:DIR`: the encoder of a Whisper checkpoint (the layout of
//! `openai/whisper-base`) run in-process with candle-transformers'
//! Whisper, mean-pooled over the frames the audio covers and
//! L2-normalised. The decoder is not used.
//!
//! Audio is decoded with symphonia, mixed to mono and resampled to 16 kHz
//! ([`super::audio`]); Whisper looks at the first 30 s. The folder:
//! `config.json`, `model.safetensors` (`preprocessor_config.json` is not
//! read: Whisper's front end is fixed but for `num_mel_bins`).

use std::path::Path;

use crate::error::{Result, bail, err};
use candle_core::{Device, Tensor};
use candle_transformers::models::whisper::{Config, model::AudioEncoder, model::Whisper};

use super::audio::{LogMel, N_FRAMES, N_SAMPLES, SAMPLE_RATE, decode, resample};
use super::{Checkpoint, l2_normalize_rows};

/// A Whisper audio encoder loaded from a checkpoint folder.
pub struct WhisperEncoder {
    encoder: AudioEncoder,
    mel: LogMel,
    n_mels: usize,
    dim: usize,
    id: String,
    device: Device,
}

impl std::fmt::Debug for WhisperEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WhisperEncoder")
            .field("id", &self.id)
            .finish()
    }
}

/// The config keys candle's loader does not read but we depend on.
#[derive(serde::Deserialize)]
struct Extra {
    #[serde(default = "gelu")]
    activation_function: String,
    encoder_ffn_dim: Option<usize>,
}

fn gelu() -> String {
    "gelu".into()
}

impl WhisperEncoder {
    /// Loads the checkpoint in `dir`.
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let mut ck = Checkpoint::open(dir, "whisper", "a Hugging Face Whisper folder")?;
        let cfg: Config = ck.config()?;
        let extra: Extra = ck.config()?;
        if extra.activation_function != "gelu" {
            bail!(
                "{}: activation_function is {:?}; Whisper uses gelu",
                ck.config_path.display(),
                extra.activation_function
            );
        }
        if let Some(ffn) = extra.encoder_ffn_dim
            && ffn != 4 * cfg.d_model
        {
            bail!(
                "{}: encoder_ffn_dim is {ffn}; Whisper's is 4 × d_model = {}",
                ck.config_path.display(),
                4 * cfg.d_model
            );
        }
        if cfg.max_source_positions * 2 != N_FRAMES {
            bail!(
                "{}: max_source_positions is {}; Whisper's 30 s window needs {}",
                ck.config_path.display(),
                cfg.max_source_positions,
                N_FRAMES / 2
            );
        }
        let vb = ck.weights(device)?;
        let whisper = Whisper::load(&vb, cfg.clone()).map_err(|e| {
            err!(
                "{}: the weights do not fit config.json's Whisper: {e}",
                ck.weights_path.display()
            )
        })?;
        Ok(Self {
            encoder: whisper.encoder,
            mel: LogMel::new(cfg.num_mel_bins),
            n_mels: cfg.num_mel_bins,
            dim: cfg.d_model,
            id: ck.model_id(),
            device: device.clone(),
        })
    }

    /// 16 kHz mono samples of an audio file.
    fn samples(bytes: &[u8], media_type: &str) -> Result<Vec<f32>> {
        let (pcm, rate) = decode(bytes, media_type)?;
        // Only the first 30 s matter; resample no more than that.
        let keep =
            ((N_SAMPLES as u64 * rate as u64).div_ceil(SAMPLE_RATE as u64) as usize).min(pcm.len());
        Ok(resample(&pcm[..keep], rate, SAMPLE_RATE))
    }

    /// Embeds 16 kHz mono clips: one unit vector each.
    pub fn encode_pcm(&self, clips: &[&[f32]]) -> Result<Vec<Vec<f32>>> {
        // Each clip is 1500 positions: one is enough work for a pass.
        super::split_forward(clips, 1, |part| self.forward(part))
    }

    fn forward(&self, clips: &[&[f32]]) -> Result<Vec<Vec<f32>>> {
        if clips.is_empty() {
            return Ok(Vec::new());
        }
        let flat: Vec<f32> = crate::par::map(clips, |c| self.mel.features(c))
            .into_iter()
            .flatten()
            .collect();
        let x = Tensor::from_vec(flat, (clips.len(), self.n_mels, N_FRAMES), &self.device)?;
        // The encoder's forward takes &mut (a key/value cache it does not
        // use without a decoder); a clone shares the weights.
        let hidden = self.encoder.clone().forward(&x, true)?;
        let positions = hidden.dim(1)?;
        // Mean over the frames the audio covers: one per 320 samples.
        let rows: Vec<Tensor> = clips
            .iter()
            .enumerate()
            .map(|(b, c)| {
                let frames = c.len().min(N_SAMPLES).div_ceil(320).clamp(1, positions);
                hidden.get(b)?.narrow(0, 0, frames)?.mean(0)
            })
            .collect::<candle_core::Result<_>>()?;
        Ok(l2_normalize_rows(&Tensor::stack(&rows, 0)?)?.to_vec2::<f32>()?)
    }
}

impl super::Encoder for WhisperEncoder {
    fn model_id(&self) -> &str {
        &self.id
    }

    fn dim(&self) -> usize {
        self.dim
    }

    fn encode(&self, bytes: &[u8], media_type: &str) -> Result<Vec<f32>> {
        super::single(self.encode_batch(&[(bytes, media_type)]))
    }

    fn batch_size(&self) -> usize {
        8
    }

    fn encode_batch(&self, items: &[(&[u8], &str)]) -> Vec<Result<Vec<f32>>> {
        let decoded = crate::par::map(items, |(bytes, media)| {
            if media.starts_with("audio/") {
                Self::samples(bytes, media)
            } else {
                Err(err!("{} embeds audio, not {media}", self.id))
            }
        });
        super::batched(decoded, |ok| {
            self.encode_pcm(&ok.iter().map(|c| c.as_slice()).collect::<Vec<_>>())
        })
    }
}
