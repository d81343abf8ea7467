//! Encoders turn a sample's bytes into an embedding vector.
//!
//! The [`Encoder`] trait is the seam between ingest and whatever computes
//! embeddings: the built-in, weight-free [`builtin::BuiltinEncoder`] today,
//! model-backed encoders later. Every row records the encoder's
//! [`Encoder::model_id`] in `embedding_model`, so a reader can tell which
//! vectors are comparable. Media type detection lives here too because an
//! encoder dispatches on it.

pub mod builtin;
pub mod text;

use std::sync::Arc;

use anyhow::{Result, bail};

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
        let _ = text;
        bail!(
            "{} has no text tower; use an encoder such as text:DIR",
            self.model_id()
        )
    }
    /// Embeds several text queries at once (one forward pass where the
    /// model allows); the default embeds them one by one.
    fn encode_text_batch(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        texts.iter().map(|t| self.encode_text(t)).collect()
    }
}

/// The encoder `--encoder` names: `builtin` (the default) or `text:DIR`
/// (a BERT-family sentence encoder checkpoint folder).
pub fn load(spec: &str) -> Result<Arc<dyn Encoder>> {
    match spec.split_once(':') {
        None if spec == "builtin" => Ok(Arc::new(builtin::BuiltinEncoder)),
        Some(("text", dir)) if !dir.is_empty() => Ok(Arc::new(text::TextEncoder::load(
            std::path::Path::new(dir),
        )?)),
        Some(("clip" | "whisper", _)) => {
            bail!("--encoder {spec}: CLIP and Whisper are not built yet; use builtin or text:DIR")
        }
        _ => bail!("--encoder {spec:?}: expected builtin or text:DIR (a sentence-encoder folder)"),
    }
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
