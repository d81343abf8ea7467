"""Random-order read throughput of a mounted view against the local disk.

In one run, on the same files: the originals on the local disk (warm page
cache: the limit); a passthrough FUSE mount of them with bindfs (defaults,
and with kernel_cache and long TTLs: the cost of FUSE itself); a lakemount
view on first touch (fresh mount, nothing cached in lakemount or the
kernel's view of it), and the same view's second epoch (everything cached); and the same two with `--passthrough` (the kernel
reads blob-store files directly). Each at 1 and 2 reader threads, repeated
--runs times; reports medians of files/s (open, read all, close) and the
ratio to the local disk.

Usage: python scripts/bench_read.py [--files 2000] [--size-kb 100] [--runs 3] [--bin PATH]
"""

import argparse
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from benchlib import Mount, find_bin, generate_images, median, read_files, report


def ensure_bindfs() -> bool:
    """bindfs is the passthrough-FUSE baseline; install it (Debian) if we may."""
    if shutil.which("bindfs"):
        return True
    if os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(["apt-get", "install", "-y", "-qq", "bindfs"], stdout=subprocess.DEVNULL, check=False)
    return shutil.which("bindfs") is not None


class Bindfs:
    def __init__(self, src: Path, mnt: Path, options: list[str]):
        mnt.mkdir(parents=True, exist_ok=True)
        subprocess.run(["bindfs", *options, str(src), str(mnt)], check=True)
        while not os.path.ismount(mnt):
            time.sleep(0.01)
        self.mnt = mnt

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        subprocess.run(["umount", str(self.mnt)], check=False)


BINDFS = {
    "bindfs default": ["--multithreaded"],
    "bindfs kernel_cache, long TTLs": ["--multithreaded", "-o", "kernel_cache,entry_timeout=3600,attr_timeout=3600"],
}


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
    have_bindfs = ensure_bindfs()
    if not have_bindfs:
        print("bindfs not available: its rows are left out (install the Debian package bindfs)")

    results = {}
    for run in range(args.runs):
        for threads in (1, 2):
            read_files(paths, threads)  # warm the local page cache
            results.setdefault(("local disk", threads), []).append(read_files(paths, threads, seed=run))
            if have_bindfs:
                for name, opts in BINDFS.items():
                    with Bindfs(data, work / "bindfs", opts) as b:
                        view = [b.mnt / p.relative_to(data) for p in paths]
                        results.setdefault((name, threads), []).append(read_files(view, threads, seed=run))
            with Mount(binary, wh, [spec], mnt) as m:
                view = sorted((m.mnt / "bench").rglob("*.png"))
                assert len(view) == len(paths), (len(view), len(paths))
                results.setdefault(("lakemount first touch", threads), []).append(read_files(view, threads, seed=run))
                results.setdefault(("lakemount second epoch", threads), []).append(read_files(view, threads, seed=run + 100))
            with Mount(binary, wh, [spec], mnt, extra=["--passthrough"]) as m:
                view = sorted((m.mnt / "bench").rglob("*.png"))
                results.setdefault(("lakemount --passthrough first touch", threads), []).append(read_files(view, threads, seed=run))
                results.setdefault(("lakemount --passthrough second epoch", threads), []).append(read_files(view, threads, seed=run + 100))
        print(f"run {run + 1} done", flush=True)

    rows = []
    for threads in (1, 2):
        local = median(results[("local disk", threads)])
        for name in ("local disk", *BINDFS, "lakemount first touch", "lakemount second epoch",
                     "lakemount --passthrough first touch", "lakemount --passthrough second epoch"):
            if (name, threads) not in results:
                continue
            v = median(results[(name, threads)])
            rows.append({"path": name, "readers": threads, "files_per_s": round(v), "ratio_to_local": round(v / local, 3)})
    report(f"random-order reads of {len(paths)} files of ~{args.size_kb} KB, median of {args.runs} runs ({binary})", rows, args.json)
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
