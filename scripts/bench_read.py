"""Random-order read throughput of a mounted view against the local disk.

In one run, on the same files: the originals on the local disk (warm page
cache: the limit), a lakemount view on first touch (fresh mount, nothing
cached in lakemount or the kernel's view of it), and the same view's second
epoch (everything cached). Each at 1 and 2 reader threads, repeated
--runs times; reports medians of files/s (open, read all, close) and the
ratio to the local disk.

Usage: python scripts/bench_read.py [--files 2000] [--size-kb 100] [--runs 3] [--bin PATH]
"""

import argparse
import shutil
import subprocess
import tempfile
from pathlib import Path

from benchlib import Mount, find_bin, generate_images, median, read_files, report


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("--size-kb", type=int, default=100)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--bin")
    ap.add_argument("--work", type=Path)
    ap.add_argument("--json", type=Path, default=Path("scripts/out/bench_read.json"))
    args = ap.parse_args()
    binary = find_bin(args.bin)
    work = args.work or Path(tempfile.mkdtemp(prefix="lakemount-bench-"))
    data = work / "images"
    print(f"generating {args.files} images of ~{args.size_kb} KB ...", flush=True)
    paths = generate_images(data, args.files, args.size_kb)
    wh = work / "wh"
    if not wh.exists():
        subprocess.run([binary, "ingest", "--quiet", "--warehouse", str(wh), str(data)], check=True,
                       stdout=subprocess.DEVNULL)
    spec = work / "bench.yaml"
    spec.write_text("name: bench\nsidecars: []\n")
    mnt = work / "mnt"

    results = {}
    for run in range(args.runs):
        for threads in (1, 2):
            read_files(paths, threads)  # warm the local page cache
            results.setdefault(("local disk", threads), []).append(read_files(paths, threads, seed=run))
            with Mount(binary, wh, [spec], mnt) as m:
                view = sorted((m.mnt / "bench").rglob("*.png"))
                assert len(view) == len(paths), (len(view), len(paths))
                results.setdefault(("lakemount first touch", threads), []).append(read_files(view, threads, seed=run))
                results.setdefault(("lakemount second epoch", threads), []).append(read_files(view, threads, seed=run + 100))
        print(f"run {run + 1} done", flush=True)

    rows = []
    for threads in (1, 2):
        local = median(results[("local disk", threads)])
        for name in ("local disk", "lakemount first touch", "lakemount second epoch"):
            v = median(results[(name, threads)])
            rows.append({"path": name, "readers": threads, "files_per_s": round(v), "ratio_to_local": round(v / local, 3)})
    report(f"random-order reads of {len(paths)} files of ~{args.size_kb} KB, median of {args.runs} runs ({binary})", rows, args.json)
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
