"""Export scikit-learn's digits (1,797 real 8x8 handwritten-digit scans that
ship inside the package) as an ImageFolder tree: DEST/<digit>/<n>.png.

Usage: python scripts/export_digits.py DEST [--limit N]
"""

import argparse
from pathlib import Path

import numpy as np
from PIL import Image


def export_digits(dest: Path, limit: int | None = None) -> dict[str, tuple[str, bytes]]:
    """Writes the PNGs and returns {path: (label, bytes)}."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    out = {}
    for i, (img, target) in enumerate(zip(digits.images, digits.target)):
        if limit is not None and i >= limit:
            break
        label_dir = dest / str(target)
        label_dir.mkdir(parents=True, exist_ok=True)
        pixels = (img * 255 / 16).astype(np.uint8)
        path = label_dir / f"{i:04d}.png"
        # 32x32 nearest-neighbour keeps the scan's pixels and is what
        # ImageFolder pipelines usually resize from.
        Image.fromarray(pixels).resize((32, 32), Image.NEAREST).save(path)
        out[str(path)] = (str(target), path.read_bytes())
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dest", type=Path)
    ap.add_argument("--limit", type=int)
    args = ap.parse_args()
    n = len(export_digits(args.dest, args.limit))
    print(f"exported {n} digit images to {args.dest}")
