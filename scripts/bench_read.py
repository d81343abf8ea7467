"""Random-order read throughput of a mounted view against the local disk.

In one run, on the same files: the originals on the local disk (warm page
cache: the limit); a passthrough FUSE mount of them with bindfs (defaults,
and with kernel_cache and long TTLs: the cost of FUSE itself); a lakemount
view on first touch (fresh mount, nothing cached in lakemount or the
kernel's view of it), and the same view's second epoch (everything cached); and the same two with `--passthrough` (the kernel
reads blob-store files directly). Then the engines without FUSE, on the same
bytes stored inline in Lance: pylance `take_blobs` one row at a time, and
single-row reads from a Parquet file (row groups of 64 rows) with pyarrow,
which is what an Iceberg-only path costs; plus a lakemount view of that
inline table (first touch). Each at 1 and 2 reader threads, repeated
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


def engine_rows(fn, n: int, threads: int, seed: int) -> float:
    """Calls fn(i) for every row index in a seeded random order over
    `threads` threads; returns rows per second."""
    import random as _random
    import threading as _threading

    order = list(range(n))
    _random.Random(seed).shuffle(order)
    parts = [order[i::threads] for i in range(threads)]
    ts = [_threading.Thread(target=lambda part=part: [fn(i) for i in part]) for part in parts]
    start = time.perf_counter()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return n / (time.perf_counter() - start)


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
    inline_spec = work / "inline.yaml"
    inline_spec.write_text("name: inline\ntable: bench.inline\nsidecars: []\n")
    if not (wh / "lance" / "bench.inline.lance").exists():
        subprocess.run([binary, "ingest", "--quiet", "--inline-blobs", "--table", "bench.inline",
                        "--warehouse", str(wh), str(data)], check=True, stdout=subprocess.DEVNULL)
    import lance
    import pyarrow as pa
    import pyarrow.parquet as pq

    ds = lance.dataset(str(wh / "lance" / "bench.inline.lance"))
    parquet = work / "images.parquet"
    if not parquet.exists():
        table = pa.table({"path": [str(p) for p in paths], "bytes": [p.read_bytes() for p in paths]})
        pq.write_table(table, parquet, row_group_size=64)
    pf = pq.ParquetFile(parquet)
    rg_rows = pf.metadata.row_group(0).num_rows

    def lance_take(i):
        with ds.take_blobs("blob", indices=[i])[0] as f:
            f.read()

    def parquet_row(i):
        # Each reader opens its own handle, as a DataLoader worker would.
        f = pq.ParquetFile(parquet)
        f.read_row_group(i // rg_rows, columns=["bytes"]).column(0)[i % rg_rows].as_py()
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
            results.setdefault(("pylance take_blobs, 1 row", threads), []).append(
                engine_rows(lance_take, len(paths), threads, seed=run))
            results.setdefault(("parquet row read (pyarrow)", threads), []).append(
                engine_rows(parquet_row, min(len(paths), 500), threads, seed=run))
            with Mount(binary, wh, [inline_spec], mnt) as m:
                view = sorted((m.mnt / "inline").rglob("*.png"))
                results.setdefault(("lakemount inline first touch", threads), []).append(read_files(view, threads, seed=run))
        print(f"run {run + 1} done", flush=True)

    rows = []
    for threads in (1, 2):
        local = median(results[("local disk", threads)])
        for name in ("local disk", *BINDFS, "lakemount first touch", "lakemount second epoch",
                     "lakemount --passthrough first touch", "lakemount --passthrough second epoch",
                     "pylance take_blobs, 1 row", "parquet row read (pyarrow)", "lakemount inline first touch"):
            if (name, threads) not in results:
                continue
            v = median(results[(name, threads)])
            rows.append({"path": name, "readers": threads, "files_per_s": round(v), "ratio_to_local": round(v / local, 3)})
    report(f"random-order reads of {len(paths)} files of ~{args.size_kb} KB, median of {args.runs} runs ({binary})", rows, args.json)
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
