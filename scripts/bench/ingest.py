"""Ingest throughput with the built-in encoder.

Generates a few thousand ~100 KB PNGs, then, repeated --runs times, times
(a) the baseline: reading and SHA-256 hashing every file in this process,
the least any ingest must do, and (b) `lakemount ingest` into a fresh
warehouse. Reports medians and the ratio of (b) to (a).

Usage: python scripts/bench/ingest.py [--files 3000] [--size-kb 100] [--runs 3] [--bin PATH]
"""

import argparse
import hashlib
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from benchlib import find_bin, generate_images, median, report


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=3000)
    ap.add_argument("--size-kb", type=int, default=100)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--bin")
    ap.add_argument("--work", type=Path, help="working directory (default: a temp dir)")
    ap.add_argument("--json", type=Path, default=Path("scripts/out/bench_ingest.json"))
    args = ap.parse_args()
    binary = find_bin(args.bin)
    work = args.work or Path(tempfile.mkdtemp(prefix="lakemount-bench-"))
    data = work / "images"
    print(f"generating {args.files} images of ~{args.size_kb} KB in {data} ...", flush=True)
    paths = generate_images(data, args.files, args.size_kb)
    total_mb = sum(p.stat().st_size for p in paths) / 1e6

    base, ingest = [], []
    for run in range(args.runs):
        start = time.perf_counter()
        for p in paths:
            hashlib.sha256(p.read_bytes()).hexdigest()
        base.append(time.perf_counter() - start)

        wh = work / f"wh{run}"
        shutil.rmtree(wh, ignore_errors=True)
        start = time.perf_counter()
        res = subprocess.run([binary, "ingest", "--quiet", "--warehouse", str(wh), str(data)],
                             capture_output=True, text=True)
        ingest.append(time.perf_counter() - start)
        if res.returncode != 0:
            raise SystemExit(f"ingest failed: {res.stdout}{res.stderr}")
        if f"added {len(paths)} samples" not in res.stdout:
            raise SystemExit(f"unexpected ingest summary: {res.stdout}")
        shutil.rmtree(wh)
        print(f"run {run + 1}: baseline {base[-1]:.2f} s, ingest {ingest[-1]:.2f} s", flush=True)

    b, i = median(base), median(ingest)
    rows = [
        {"path": "read + sha256 (baseline)", "files_per_s": round(len(paths) / b), "MB_per_s": round(total_mb / b, 1), "ratio": 1.0},
        {"path": "lakemount ingest", "files_per_s": round(len(paths) / i), "MB_per_s": round(total_mb / i, 1), "ratio": round(b / i, 3)},
    ]
    report(f"ingest of {len(paths)} files, {total_mb:.0f} MB, median of {args.runs} runs ({binary})", rows, args.json)
    if not args.work:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
