//! Whisper's audio front end: decode (WAV, FLAC, MP3, Ogg Vorbis via
//! symphonia), mix to mono, resample to 16 kHz, and the log-mel
//! spectrogram exactly as transformers' `WhisperFeatureExtractor` computes
//! it: zero-padded (or cut) to 30 s, periodic Hann window of 400, hop 160,
//! reflect-padded centred STFT, power spectrum without the last frame,
//! Slaney mel filters from 0 to 8 kHz, log10 clamped at 1e-10, floored 8
//! below the maximum, then `(x + 4) / 4`.

use std::sync::Arc;

use crate::error::{Context, Result, bail};
use rustfft::{Fft, FftPlanner, num_complex::Complex};
use symphonia::core::audio::SampleBuffer;
use symphonia::core::codecs::DecoderOptions;
use symphonia::core::formats::FormatOptions;
use symphonia::core::io::MediaSourceStream;
use symphonia::core::meta::MetadataOptions;
use symphonia::core::probe::Hint;

/// Whisper's sample rate.
pub const SAMPLE_RATE: u32 = 16_000;
/// Samples in Whisper's 30 s window.
pub const N_SAMPLES: usize = 30 * SAMPLE_RATE as usize;
const N_FFT: usize = 400;
const HOP: usize = 160;
/// Frames of the log-mel input (3000 for 30 s).
pub const N_FRAMES: usize = N_SAMPLES / HOP;

/// Sample rates an audio file may declare: a forged header (1 Hz, 4 GHz)
/// would otherwise drive the resampler to absurd sizes.
const MIN_RATE: u32 = 1_000;
const MAX_RATE: u32 = 384_000;

/// Decodes an audio file to mono f32 samples and its sample rate; at most
/// 8 windows of Whisper's 30 s are decoded, whatever the file's length.
pub fn decode(bytes: &[u8], media_type: &str) -> Result<(Vec<f32>, u32)> {
    let mut hint = Hint::new();
    if let Some(ext) = media_type.strip_prefix("audio/") {
        hint.with_extension(match ext {
            "mpeg" => "mp3",
            other => other,
        });
    }
    let mss = MediaSourceStream::new(
        Box::new(std::io::Cursor::new(bytes.to_vec())),
        Default::default(),
    );
    let probed = symphonia::default::get_probe()
        .format(
            &hint,
            mss,
            &FormatOptions::default(),
            &MetadataOptions::default(),
        )
        .context("not a readable audio file (WAV, FLAC, MP3 or Ogg Vorbis)")?;
    let mut format = probed.format;
    let track = format
        .default_track()
        .context("the audio file has no track")?;
    let track_id = track.id;
    let rate = track
        .codec_params
        .sample_rate
        .context("the audio track has no sample rate")?;
    if !(MIN_RATE..=MAX_RATE).contains(&rate) {
        bail!("the audio's sample rate is {rate} Hz; expected {MIN_RATE} to {MAX_RATE} Hz");
    }
    let mut decoder = symphonia::default::get_codecs()
        .make(&track.codec_params, &DecoderOptions::default())
        .context("unsupported audio codec")?;
    let mut mono = Vec::new();
    let mut buf: Option<SampleBuffer<f32>> = None;
    loop {
        let packet = match format.next_packet() {
            Ok(p) => p,
            Err(symphonia::core::errors::Error::IoError(e))
                if e.kind() == std::io::ErrorKind::UnexpectedEof =>
            {
                break;
            }
            Err(e) => return Err(e).context("cannot read the audio stream"),
        };
        if packet.track_id() != track_id {
            continue;
        }
        let decoded = match decoder.decode(&packet) {
            Ok(d) => d,
            // A corrupt frame: skip it, as players do.
            Err(symphonia::core::errors::Error::DecodeError(_)) => continue,
            Err(e) => return Err(e).context("cannot decode the audio"),
        };
        let spec = *decoded.spec();
        let channels = spec.channels.count().max(1);
        let b = match &mut buf {
            Some(b) if b.capacity() >= decoded.capacity() * channels => b,
            _ => buf.insert(SampleBuffer::new(decoded.capacity() as u64, spec)),
        };
        b.copy_interleaved_ref(decoded);
        mono.extend(
            b.samples()
                .chunks(channels)
                .map(|f| f.iter().sum::<f32>() / channels as f32),
        );
        if mono.len() > N_SAMPLES * 8 {
            // Far beyond what Whisper looks at (30 s, at up to 128 kHz).
            break;
        }
    }
    if mono.is_empty() {
        bail!("the audio file has no samples");
    }
    Ok((mono, rate))
}

/// Band-limited resampling (Hann-windowed sinc, 16 zero crossings each
/// side, cut-off 95% of the lower Nyquist frequency).
pub fn resample(x: &[f32], from: u32, to: u32) -> Vec<f32> {
    if from == to || x.is_empty() {
        return x.to_vec();
    }
    let ratio = to as f64 / from as f64;
    let cutoff = 0.5 * ratio.min(1.0) * 0.95; // cycles per input sample
    let half_width = 16.0 / (2.0 * cutoff); // input samples
    let n_out = ((x.len() as f64) * ratio).round().max(1.0) as usize;
    (0..n_out)
        .map(|j| {
            let p = j as f64 / ratio;
            let lo = ((p - half_width).ceil().max(0.0)) as usize;
            let hi = ((p + half_width).floor() as usize).min(x.len() - 1);
            let mut acc = 0.0f64;
            for (k, &xk) in x.iter().enumerate().take(hi + 1).skip(lo) {
                let d = p - k as f64;
                let u = d / half_width;
                let window = 0.5 * (1.0 + (std::f64::consts::PI * u).cos());
                let arg = 2.0 * cutoff * d;
                let sinc = if arg.abs() < 1e-12 {
                    1.0
                } else {
                    (std::f64::consts::PI * arg).sin() / (std::f64::consts::PI * arg)
                };
                acc += xk as f64 * 2.0 * cutoff * sinc * window;
            }
            acc as f32
        })
        .collect()
}

fn hertz_to_mel(f: f64) -> f64 {
    let (min_log_hz, min_log_mel, logstep) = (1000.0, 15.0, 27.0 / 6.4f64.ln());
    if f >= min_log_hz {
        min_log_mel + (f / min_log_hz).ln() * logstep
    } else {
        3.0 * f / 200.0
    }
}

fn mel_to_hertz(m: f64) -> f64 {
    let (min_log_hz, min_log_mel) = (1000.0, 15.0);
    if m >= min_log_mel {
        min_log_hz * (6.4f64.ln() / 27.0 * (m - min_log_mel)).exp()
    } else {
        200.0 * m / 3.0
    }
}

/// transformers' `mel_filter_bank(201, n_mels, 0, 8000, 16000,
/// norm="slaney", mel_scale="slaney")`, as `[mel][frequency bin]`.
fn mel_filters(n_mels: usize) -> Vec<Vec<f32>> {
    let bins = 1 + N_FFT / 2;
    let (mel_min, mel_max) = (hertz_to_mel(0.0), hertz_to_mel(8000.0));
    let filter_freqs: Vec<f64> = (0..n_mels + 2)
        .map(|i| mel_to_hertz(mel_min + (mel_max - mel_min) * i as f64 / (n_mels + 1) as f64))
        .collect();
    let fft_freqs: Vec<f64> = (0..bins)
        .map(|i| (SAMPLE_RATE / 2) as f64 * i as f64 / (bins - 1) as f64)
        .collect();
    (0..n_mels)
        .map(|m| {
            let enorm = 2.0 / (filter_freqs[m + 2] - filter_freqs[m]);
            fft_freqs
                .iter()
                .map(|&f| {
                    let down = (f - filter_freqs[m]) / (filter_freqs[m + 1] - filter_freqs[m]);
                    let up =
                        (filter_freqs[m + 2] - f) / (filter_freqs[m + 2] - filter_freqs[m + 1]);
                    (down.min(up).max(0.0) * enorm) as f32
                })
                .collect()
        })
        .collect()
}

/// Computes Whisper log-mel features.
pub struct LogMel {
    n_mels: usize,
    filters: Vec<Vec<f32>>,
    window: Vec<f32>,
    fft: Arc<dyn Fft<f32>>,
}

impl LogMel {
    pub fn new(n_mels: usize) -> Self {
        let window = (0..N_FFT)
            .map(|i| {
                (0.5 - 0.5 * (2.0 * std::f64::consts::PI * i as f64 / N_FFT as f64).cos()) as f32
            })
            .collect();
        Self {
            n_mels,
            filters: mel_filters(n_mels),
            window,
            fft: FftPlanner::new().plan_fft_forward(N_FFT),
        }
    }

    /// `n_mels × N_FRAMES` features (row-major) of 16 kHz mono `audio`,
    /// which is cut to 30 s or padded with silence.
    pub fn features(&self, audio: &[f32]) -> Vec<f32> {
        let n = audio.len().min(N_SAMPLES);
        let mut x = vec![0f32; N_SAMPLES];
        x[..n].copy_from_slice(&audio[..n]);
        let pad = N_FFT / 2;
        // Reflect padding (torch.stft center=True, pad_mode="reflect").
        let at = |i: isize| -> f32 {
            let len = N_SAMPLES as isize;
            let j = if i < 0 {
                -i
            } else if i >= len {
                2 * (len - 1) - i
            } else {
                i
            };
            x[j as usize]
        };
        let bins = 1 + N_FFT / 2;
        let floor = 1e-10f32.log10();
        let mut mel = vec![floor; self.n_mels * N_FRAMES];
        let mut buf = vec![Complex::new(0f32, 0f32); N_FFT];
        let mut power = vec![0f32; bins];
        for t in 0..N_FRAMES {
            let start = (t * HOP) as isize - pad as isize;
            // Frames entirely in the silent padding have zero power.
            if n < N_SAMPLES && start >= n as isize {
                break;
            }
            for (i, c) in buf.iter_mut().enumerate() {
                *c = Complex::new(at(start + i as isize) * self.window[i], 0.0);
            }
            self.fft.process(&mut buf);
            for (p, c) in power.iter_mut().zip(&buf) {
                *p = c.norm_sqr();
            }
            for (m, filter) in self.filters.iter().enumerate() {
                let e: f32 = filter.iter().zip(&power).map(|(w, p)| w * p).sum();
                mel[m * N_FRAMES + t] = e.max(1e-10).log10();
            }
        }
        let max = mel.iter().copied().fold(f32::MIN, f32::max);
        for v in &mut mel {
            *v = (v.max(max - 8.0) + 4.0) / 4.0;
        }
        mel
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mel_scale_round_trips() {
        for f in [0.0, 440.0, 999.0, 1000.0, 4000.0, 8000.0] {
            assert!((mel_to_hertz(hertz_to_mel(f)) - f).abs() < 1e-6, "{f}");
        }
    }

    #[test]
    fn resampling_keeps_a_tone() {
        let from = 44_100;
        let tone: Vec<f32> = (0..from)
            .map(|i| (2.0 * std::f32::consts::PI * 440.0 * i as f32 / from as f32).sin())
            .collect();
        let y = resample(&tone, from, SAMPLE_RATE);
        assert_eq!(y.len(), SAMPLE_RATE as usize);
        // Away from the edges it is the same tone at the new rate.
        for (j, &v) in y.iter().enumerate().skip(200).take(15_000) {
            let want = (2.0 * std::f32::consts::PI * 440.0 * j as f32 / SAMPLE_RATE as f32).sin();
            assert!((v - want).abs() < 0.01, "sample {j}: {v} vs {want}");
        }
    }

    #[test]
    fn silence_is_the_floor_everywhere() {
        let m = LogMel::new(80).features(&[0.0; 1600]);
        assert_eq!(m.len(), 80 * N_FRAMES);
        assert!(m.iter().all(|&v| (v - (-10.0 + 4.0) / 4.0).abs() < 1e-6));
    }
}
