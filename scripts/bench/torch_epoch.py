"""The figure users feel: one shuffled epoch of torchvision's ImageFolder +
DataLoader(num_workers=2) (PNG decode, resize to 64x64, ToTensor) over
generated ~100 KB images, samples/s, on the local disk (the baseline,
page cache warm), through a fresh lakemount mount (the blob files in the
page cache, as the baseline's), through one started with --warm (after the
warm-up), and through a fresh mount of a shuffled view read in its listing
order (a Dataset over `_index.jsonl`, shuffle=False: the order lakemount
prefetches along), and through a fresh --passthrough mount (the kernel
reads the local blob files itself), and through a mount with a disk tier
(--cache-dir) after a remount: its entries were filled by a first mount's
epoch, and the kernel reads them itself (passthrough, as root). Medians of
--runs, with ratios to the local disk.

torch is not a test dependency: on Debian, `apt-get install python3-torch
python3-torchvision` (CPU-only, ~650 MB) and run this with /usr/bin/python3:

    /usr/bin/python3 scripts/bench/torch_epoch.py --bin target/release/lakemount --work /tmp/te
"""

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import Mount, find_bin, generate_images, median, read_files  # noqa: E402

import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402
from torchvision import datasets, transforms  # noqa: E402

TRANSFORM = transforms.Compose([transforms.Resize((64, 64)), transforms.ToTensor()])


class Listing(Dataset):
    """A view's samples in its `_index.jsonl` order."""

    def __init__(self, root: Path):
        lines = [json.loads(line) for line in (root / "_index.jsonl").read_text().splitlines()]
        classes = sorted({line["label"] for line in lines})
        self.items = [(root / line["path"], classes.index(line["label"])) for line in lines]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        path, label = self.items[i]
        with Image.open(path) as im:
            return TRANSFORM(im.convert("RGB")), label


def epoch(ds, shuffle: bool, seed: int) -> float:
    loader = DataLoader(ds, batch_size=32, shuffle=shuffle, num_workers=2,
                        generator=torch.Generator().manual_seed(seed))
    start = time.perf_counter()
    n = 0
    for x, _ in loader:
        n += x.shape[0]
    return n / (time.perf_counter() - start)


def warm_done(binary: str, mnt: Path, expect: int) -> None:
    while True:
        doc = json.loads(subprocess.run([binary, "status", "--json", str(mnt)], capture_output=True,
                                        text=True, check=True).stdout)
        if any(line.startswith("lakemount_warm_samples_total") and float(line.split()[-1]) >= expect
               for line in doc["metrics"].splitlines()):
            return
        time.sleep(0.05)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bin")
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--samples", type=int, default=4000)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    binary = find_bin(args.bin)
    torch.set_num_threads(1)
    data = args.work / "images"
    paths = generate_images(data, args.samples, 100, labels=10)
    wh = args.work / "wh"
    if not (wh / "catalog.db").exists():
        subprocess.run([binary, "ingest", "--quiet", "--warehouse", str(wh), str(data)], check=True,
                       stdout=subprocess.DEVNULL)
    plain = args.work / "plain.yaml"
    plain.write_text("name: v\nsidecars: []\n")
    shuffled = args.work / "shuffled.yaml"
    shuffled.write_text("name: v\norder: {shuffle: 1}\nsidecars: []\n")
    blobs = [p for p in (wh / "blobs").rglob("*") if p.is_file()]
    cache = f"{args.samples * 100 * 2 // 1024}MiB"
    results: dict[str, list[float]] = {}
    for run in range(args.runs):
        read_files(paths, 2)
        results.setdefault("local disk, ImageFolder shuffle", []).append(
            epoch(datasets.ImageFolder(data, transform=TRANSFORM), True, run))
        for label, spec, extra, shuffle in [
            ("lakemount fresh mount, ImageFolder shuffle", plain, [], True),
            ("lakemount --warm, ImageFolder shuffle", plain, ["--warm"], True),
            ("lakemount fresh mount, shuffled view in listing order", shuffled, [], False),
            ("lakemount --passthrough fresh mount, ImageFolder shuffle", plain, ["--passthrough"], True),
        ]:
            read_files(blobs, 2)
            with Mount(binary, wh, [spec], args.work / "mnt", extra=["--cache-size", cache, *extra]) as m:
                if "--warm" in extra:
                    warm_done(binary, m.mnt, args.samples)
                root = m.mnt / "v"
                ds = datasets.ImageFolder(root, transform=TRANSFORM) if shuffle else Listing(root)
                results.setdefault(label, []).append(epoch(ds, shuffle, run))
        tier = args.work / "tier"
        shutil.rmtree(tier, ignore_errors=True)
        tier_args = ["--cache-size", "64MiB", "--cache-dir", str(tier)]
        with Mount(binary, wh, [plain], args.work / "mnt", extra=tier_args) as m:
            read_files(sorted((m.mnt / "v").rglob("*.png")), 2)
            time.sleep(2)
        with Mount(binary, wh, [plain], args.work / "mnt", extra=tier_args) as m:
            ds = datasets.ImageFolder(m.mnt / "v", transform=TRANSFORM)
            results.setdefault("lakemount --cache-dir, remounted, ImageFolder shuffle", []).append(
                epoch(ds, True, run))
        print(f"run {run + 1}/{args.runs} done", flush=True)
    local = median(results["local disk, ImageFolder shuffle"])
    print(f"\none epoch of {args.samples} ~100 KB PNGs, DataLoader(num_workers=2, batch 32), "
          f"median of {args.runs} runs, torch {torch.__version__}")
    for label, v in results.items():
        print(f"{label:<58} {median(v):8.0f} samples/s  {median(v) / local:5.2f}x local")


if __name__ == "__main__":
    main()
