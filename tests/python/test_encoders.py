"""CLIP (`clip:DIR`) and Whisper (`whisper:DIR`) run in-process with
candle, on tiny random-weight checkpoints written by transformers
(tests/fixtures/{clip,whisper}, made by scripts/make_fixtures.py):

- parity with transformers on PyTorch CPU over the committed inputs
  (digits and generated images, sentences, generated audio): cosine >=
  0.9999 and max abs difference <= 1e-4 for every vector;
- media routing in ingest (images and text to CLIP, audio to Whisper, the
  rest listed as rejections), the vectors ingest stores equal `embed`'s;
- similarity views through a mount: a text query against CLIP image rows,
  an audio file query against Whisper rows (a 44.1 kHz stereo WAV found by
  the same tone at 16 kHz mono), checked by reading the mounted files.
"""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from audio import clips, tone, write_wav
from conftest import run
from test_mount import Mount

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
CLIP = FIXTURES / "clip"
WHISPER = FIXTURES / "whisper"


def assert_parity(got: np.ndarray, want: np.ndarray, what: str):
    assert got.shape == want.shape, (what, got.shape, want.shape)
    cos = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    diff = np.abs(got - want).max(1)
    assert cos.min() >= 0.9999 and diff.max() <= 1e-4, \
        f"{what}: worst cosine {cos.min():.6f} (row {cos.argmin()}), worst max-abs {diff.max():.2e} (row {diff.argmax()})"


def embed(lakemount_bin, encoder: str, out: Path, *args: str) -> np.ndarray:
    res = run(lakemount_bin, "embed", "--encoder", encoder, *args, "-o", str(out))
    assert res.returncode == 0, res.stderr
    return np.load(out)


def test_clip_matches_transformers_on_images_and_text(tmp_path, lakemount_bin):
    names = json.loads((CLIP / "images.json").read_text())
    assert len(names) >= 20
    images = embed(lakemount_bin, f"clip:{CLIP / 'model'}", tmp_path / "i.npy",
                   *[str(CLIP / "images" / n) for n in names])
    assert_parity(images, np.load(CLIP / "image_reference.npy"), "CLIP images")
    texts = json.loads((CLIP / "texts.json").read_text())
    assert len(texts) >= 20
    vectors = embed(lakemount_bin, f"clip:{CLIP / 'model'}", tmp_path / "t.npy",
                    *[a for t in texts for a in ("--text", t)])
    assert_parity(vectors, np.load(CLIP / "text_reference.npy"), "CLIP texts")
    # Text files take the same path as --text.
    for i, t in enumerate(texts[:3]):
        (tmp_path / f"{i}.txt").write_text(t)
    files = embed(lakemount_bin, f"clip:{CLIP / 'model'}", tmp_path / "f.npy",
                  *[str(tmp_path / f"{i}.txt") for i in range(3)])
    assert_parity(files, vectors[:3], "CLIP text files")


def test_whisper_matches_transformers_on_generated_audio(tmp_path, lakemount_bin):
    files = [str(write_wav(tmp_path / f"{n}.wav", x)) for n, x in clips().items()]
    assert len(files) >= 20
    got = embed(lakemount_bin, f"whisper:{WHISPER / 'model'}", tmp_path / "a.npy", *files)
    assert_parity(got, np.load(WHISPER / "reference.npy"), "Whisper")


def test_clip_ingest_routes_media_and_a_text_query_finds_the_nearest_images(tmp_path, lakemount_bin):
    src = tmp_path / "in" / "digits"
    src.mkdir(parents=True)
    names = json.loads((CLIP / "images.json").read_text())
    for n in names:
        (src / n).write_bytes((CLIP / "images" / n).read_bytes())
    (src / "caption.txt").write_text("a handwritten seven")
    write_wav(src / "noise.wav", clips()["clip03"])
    (src / "blob.bin").write_bytes(bytes(range(256)) * 4)
    (src / "broken.png").write_bytes((CLIP / "images" / "landscape.png").read_bytes()[:300])
    wh = tmp_path / "wh"
    enc = ["--encoder", f"clip:{CLIP / 'model'}"]
    res = run(lakemount_bin, "ingest", "--warehouse", str(wh), *enc, str(tmp_path / "in"))
    assert res.returncode == 3, res.stdout + res.stderr  # some rejected
    assert f"added {len(names) + 1} samples" in res.stdout, res.stdout
    for bad, media in [("noise.wav", "audio/wav"), ("blob.bin", "application/octet-stream")]:
        assert f"rejected {src / bad}: clip:model@sha256:" in res.stdout and \
            f"embeds images and text, not {media}" in res.stdout, res.stdout
    assert f"rejected {src / 'broken.png'}: cannot decode the image" in res.stdout, res.stdout
    assert "samples/s" in res.stdout

    query = "a photo of a damaged part"
    q = embed(lakemount_bin, f"clip:{CLIP / 'model'}", tmp_path / "q.npy", "--text", query)[0]
    spec = tmp_path / "near.yaml"
    spec.write_text(f"name: near\nsimilar: {{to: {{text: {json.dumps(query)}}}, k: 5}}\n"
                    "layout: \"{rank}-{content_id}{ext}\"\nsidecars: [embedding]\n")
    every = tmp_path / "all.yaml"
    every.write_text("name: all\nlayout: \"{content_id}{ext}\"\nsidecars: [embedding]\n")
    with Mount(lakemount_bin, wh, [spec, every], tmp_path / "mnt", extra=enc) as m:
        # The vectors ingest stored are embed's, file by file.
        stored = {p.stem: np.load(p) for p in (m.mnt / "all").glob("*.npy")}
        assert len(stored) == len(names) + 1
        for n in names[:5] + ["caption.txt"]:
            want = embed(lakemount_bin, f"clip:{CLIP / 'model'}", tmp_path / "one.npy", str(src / n))[0]
            cid = hashlib.sha256((src / n).read_bytes()).hexdigest()
            assert_parity(stored[cid][None], want[None], n)
        # The view holds the five rows nearest the query, nearest first.
        ids = sorted(stored)
        cos = np.array([stored[i] @ q for i in ids])
        nearest = [ids[j] for j in np.argsort(-cos, kind="stable")[:5]]
        shown = sorted(p for p in (m.mnt / "near").iterdir() if p.suffix in (".png", ".txt"))
        assert [p.name.split("-", 1)[1].split(".")[0] for p in shown] == nearest
        receipt = json.loads((m.mnt / "near" / "_receipt.json").read_text())
        assert receipt["similar"]["query_model"].startswith("clip:model@sha256:")


def test_whisper_ingest_and_an_audio_query_finds_the_same_tone_resampled(tmp_path, lakemount_bin):
    src = tmp_path / "in" / "sounds"
    src.mkdir(parents=True)
    for n, x in clips().items():
        write_wav(src / f"{n}.wav", x)
    write_wav(src / "tone-44k-stereo.wav", tone(1.0, 44_100, channels=2), rate=44_100)
    (src / "digit.png").write_bytes((CLIP / "images" / "digit00.png").read_bytes())
    (src / "broken.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(40))
    query = write_wav(tmp_path / "tone-16k.wav", tone(1.0, 16_000))
    wh = tmp_path / "wh"
    enc = ["--encoder", f"whisper:{WHISPER / 'model'}"]
    res = run(lakemount_bin, "ingest", "--warehouse", str(wh), *enc, str(tmp_path / "in"))
    assert res.returncode == 3, res.stdout + res.stderr
    assert "added 25 samples" in res.stdout and "embeds audio, not image/png" in res.stdout, res.stdout
    assert f"rejected {src / 'broken.wav'}: not a readable audio file" in res.stdout, res.stdout
    spec = tmp_path / "q.yaml"
    spec.write_text(f"name: q\nsimilar: {{to: {{file: {query}}}, k: 1}}\nlayout: \"{{content_id}}{{ext}}\"\n")
    with Mount(lakemount_bin, wh, [spec], tmp_path / "mnt", extra=enc) as m:
        [found] = [p for p in (m.mnt / "q").iterdir() if p.suffix == ".wav"]
        assert found.read_bytes() == (src / "tone-44k-stereo.wav").read_bytes()
    # Resampled and mixed down, the same tone embeds almost identically.
    v = embed(lakemount_bin, enc[1], tmp_path / "v.npy", str(query), str(src / "tone-44k-stereo.wav"))
    assert float(v[0] @ v[1]) > 0.99


def test_manifest_text_rows_are_text_samples(tmp_path, lakemount_bin):
    """A manifest row with `text` and no `path` is a text sample: CLIP's
    text tower embeds it, the mount shows it as a .txt file."""
    (tmp_path / "d.png").write_bytes((CLIP / "images" / "digit02.png").read_bytes())
    rows = [{"text": "a handwritten seven", "label": "caption"},
            {"text": "a photo of a damaged part", "label": "caption", "quality": 0.5},
            {"path": "d.png", "label": "digit", "text": "a caption kept as a column"}]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    wh = tmp_path / "wh"
    enc = ["--encoder", f"clip:{CLIP / 'model'}"]
    res = run(lakemount_bin, "ingest", "--quiet", "--warehouse", str(wh), *enc, "--manifest", str(manifest))
    assert res.returncode == 0 and "added 3 samples" in res.stdout, res.stdout + res.stderr
    spec = tmp_path / "all.yaml"
    spec.write_text("name: all\nlayout: \"{label}/{content_id}{ext}\"\nsidecars: [embedding, metadata]\n")
    with Mount(lakemount_bin, wh, [spec], tmp_path / "mnt", extra=enc) as m:
        texts = sorted(m.mnt.joinpath("all", "caption").glob("*.txt"))
        assert sorted(p.read_text() for p in texts) == ["a handwritten seven", "a photo of a damaged part"]
        for p in texts:
            want = embed(lakemount_bin, enc[1], tmp_path / "q.npy", "--text", p.read_text())
            assert_parity(np.load(p.with_suffix(".npy"))[None], want, p.read_text())
        [png] = m.mnt.joinpath("all", "digit").glob("*.png")
        assert png.read_bytes() == (tmp_path / "d.png").read_bytes()
        meta = json.loads(png.with_suffix(".json").read_text())
        assert meta["text"] == "a caption kept as a column", meta
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "fine"}) + "\n" + json.dumps({"label": "x"}) + "\n")
    res = run(lakemount_bin, "ingest", "--quiet", "--warehouse", str(tmp_path / "wh2"), *enc, "--manifest", str(bad))
    assert res.returncode != 0 and "line 2" in res.stderr and "no `path`" in res.stderr and "`text`" in res.stderr, \
        res.stderr


@pytest.mark.parametrize("spec,expect", [
    ("clip:/nonexistent/folder", "no such folder"),
    (f"clip:{WHISPER / 'model'}", 'model_type is "whisper", but clip:DIR takes a "clip" checkpoint'),
    (f"whisper:{CLIP / 'model'}", 'model_type is "clip", but whisper:DIR takes a "whisper" checkpoint'),
    (f"text:{CLIP / 'model'}", 'takes a "bert" checkpoint'),
    ("vit:/x", "expected builtin, clip:DIR, text:DIR or whisper:DIR"),
])
def test_bad_checkpoints_are_clear_errors(tmp_path, lakemount_bin, spec, expect):
    (tmp_path / "a.txt").write_text("hello")
    res = run(lakemount_bin, "embed", "--encoder", spec, str(tmp_path / "a.txt"), "-o", str(tmp_path / "o.npy"))
    assert res.returncode != 0 and expect in res.stderr, res.stderr
    assert "panicked" not in res.stderr


def test_a_folder_without_a_tokenizer_is_a_clear_error(tmp_path, lakemount_bin):
    d = tmp_path / "clip-no-tokenizer"
    d.mkdir()
    for f in ("config.json", "model.safetensors"):
        (d / f).write_bytes((CLIP / "model" / f).read_bytes())
    res = run(lakemount_bin, "embed", "--encoder", f"clip:{d}", "--text", "hi", "-o", str(tmp_path / "o.npy"))
    assert res.returncode != 0 and "no tokenizer.json" in res.stderr, res.stderr


def test_a_table_keeps_one_model(tmp_path, lakemount_bin):
    src = tmp_path / "in" / "a"
    src.mkdir(parents=True)
    (src / "d.png").write_bytes((CLIP / "images" / "digit01.png").read_bytes())
    wh = tmp_path / "wh"
    res = run(lakemount_bin, "ingest", "--quiet", "--warehouse", str(wh), "--encoder", f"clip:{CLIP / 'model'}",
              str(tmp_path / "in"))
    assert res.returncode == 0, res.stdout + res.stderr
    write_wav(src / "s.wav", clips()["clip00"])
    res = run(lakemount_bin, "ingest", "--quiet", "--warehouse", str(wh), "--encoder", f"whisper:{WHISPER / 'model'}",
              str(tmp_path / "in"))
    assert res.returncode != 0 and "never mixes models" in res.stderr and "clip:model@sha256:" in res.stderr, \
        res.stderr
