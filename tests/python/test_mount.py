"""Unmodified Python readers on a real mount: an ImageFolder-style walk with
PIL, numpy.load on every sidecar, compared with what pylance reads."""

import json
import os
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import lance
import numpy as np
from PIL import Image

from conftest import export_digits, run, sha256

# torchvision.datasets.folder.IMG_EXTENSIONS
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def image_folder(root: Path):
    """What torchvision's ImageFolder does: classes are the sorted
    sub-directories; samples are files with image extensions under them."""
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir())
    samples = []
    for idx, cls in enumerate(classes):
        for dirpath, _, files in sorted(os.walk(root / cls, followlinks=True)):
            for f in sorted(files):
                if f.lower().endswith(IMG_EXTENSIONS):
                    samples.append((Path(dirpath) / f, idx))
    return classes, samples


class Mount:
    def __init__(self, bin_path, wh, specs, mnt, extra=()):
        mnt.mkdir(parents=True, exist_ok=True)
        self.mnt = mnt
        self.proc = subprocess.Popen([bin_path, "mount", "--warehouse", str(wh), *extra, *map(str, specs), str(mnt)],
                                     stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 30
        while not os.path.ismount(mnt):
            if self.proc.poll() is not None:
                raise RuntimeError(f"mount failed: {self.proc.stderr.read()}")
            if time.time() > deadline:
                raise RuntimeError("mount not ready after 30 s")
            time.sleep(0.05)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(timeout=30) == 0
        assert not os.path.ismount(self.mnt)


def test_imagefolder_walk_pil_and_numpy_on_a_mounted_digits_view(tmp_path, lakemount_bin):
    files = export_digits(tmp_path / "digits")
    wh = tmp_path / "wh"
    res = run(lakemount_bin, "ingest", "--quiet", "--warehouse", str(wh), str(tmp_path / "digits"))
    assert res.returncode == 0, res.stdout + res.stderr
    expected_label = {}
    for path in sorted(files):
        label, data = files[path]
        expected_label.setdefault(sha256(data), label)
    train = {c for c, _ in expected_label.items()}

    spec = tmp_path / "digits-train.yaml"
    spec.write_text("name: digits-train\nfilter: \"split = 'train'\"\n")
    with Mount(lakemount_bin, wh, [spec], tmp_path / "mnt") as m:
        root = m.mnt / "digits-train"
        classes, samples = image_folder(root)
        assert classes == [str(d) for d in range(10)]
        receipt = json.loads((root / "_receipt.json").read_text())
        assert receipt["row_count"] == len(samples)

        ds = lance.dataset(receipt["lance_uri"], version=receipt["lance_version"])
        table = ds.to_table(columns=["content_id", "embedding"])
        emb = dict(zip(table["content_id"].to_pylist(), table["embedding"].to_numpy(zero_copy_only=False)))

        counts = Counter()
        for path, idx in samples:
            with Image.open(path) as img:
                img.load()
                assert img.size == (32, 32)
            cid = path.stem
            assert cid in train
            assert classes[idx] == expected_label[cid]
            assert sha256(path.read_bytes()) == cid
            vec = np.load(path.with_suffix(".npy"))
            assert vec.dtype == np.float32 and vec.shape == (256,)
            assert np.array_equal(vec, np.asarray(emb[cid], dtype=np.float32))
            meta = json.loads(path.with_suffix(".json").read_text())
            assert meta["split"] == "train" and meta["label"] == classes[idx]
            counts[classes[idx]] += 1

        index = [json.loads(line) for line in (root / "_index.jsonl").read_text().splitlines()]
        assert Counter(r["label"] for r in index) == counts
        assert all(r["split"] == "train" for r in index)
        assert 1000 < len(samples) < 1600
