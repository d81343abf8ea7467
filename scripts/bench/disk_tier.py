"""The disk tier (`--cache-dir`) over S3 with 20 ms per request: a dataset
several times the RAM cache, read by 8 threads in listing order and in a
random order, epoch 1, epoch 2, and epoch 2 after a remount, against the
local disk and `rclone mount --vfs-cache-mode full` given the same cache
budget, all in one run; then a shuffled epoch after `--warm` filled the
disk tier, and a listing-order first epoch of 2 decoding worker processes
(a DataLoader's shape: open, read, decode with PIL).

The page cache is dropped before every epoch of every path, so each epoch
reads from where that path keeps its bytes (the local disk, lakemount's
disk tier or the network, rclone's cache) rather than from RAM: the point
is a dataset larger than RAM.

Run with scripts/bench/run-disk-tier (installs rclone, builds the release
binary, starts the servers). Needs root (FUSE mounts, drop_caches).
"""

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from multiprocessing import Pool
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import Mount, drop_page_cache, find_bin, generate_images, median, read_files, report  # noqa: E402
from s3 import Proxy, Rclone  # noqa: E402


def status(binary: str, mnt: Path) -> dict:
    res = subprocess.run([binary, "status", "--json", str(mnt)], capture_output=True, text=True, check=True)
    doc = json.loads(res.stdout)
    out = {}
    for line in doc["metrics"].splitlines():
        if line and not line.startswith("#"):
            k, v = line.rsplit(" ", 1)
            out[k] = float(v)
    return out


def decode(path: str) -> int:
    from PIL import Image
    with Image.open(path) as im:
        im.convert("RGB").resize((64, 64))
    return 1


def loader_epoch(paths: list[Path], workers: int = 2) -> float:
    """A DataLoader's first epoch in listing order: `workers` processes,
    each opening, reading and decoding its share, in order."""
    drop_page_cache()
    start = time.perf_counter()
    with Pool(workers) as pool:
        n = sum(pool.imap(decode, [str(p) for p in paths], chunksize=32))
    return n / (time.perf_counter() - start)


def epoch(paths: list[Path], readers: int, seed) -> float:
    if not paths:
        raise SystemExit("nothing to read: the mount shows no files")
    drop_page_cache()
    return read_files(paths, readers, seed=seed)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=8000)
    ap.add_argument("--size-kb", type=int, default=100)
    ap.add_argument("--cache-size", default="200MiB", help="lakemount's RAM cache")
    ap.add_argument("--disk-budget", default="4GiB", help="disk tier and rclone VFS cache size")
    ap.add_argument("--delay-ms", type=float, default=20)
    ap.add_argument("--readers", type=int, default=8)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--bin")
    ap.add_argument("--work", type=Path)
    ap.add_argument("--json", type=Path, default=Path("scripts/out/bench-disk-tier.json"))
    args = ap.parse_args()
    for v in ("AWS_ENDPOINT_URL", "LAKEMOUNT_TEST_S3", "LAKEMOUNT_TEST_PG"):
        if v not in os.environ:
            raise SystemExit(f"{v} is not set: eval \"$(python scripts/servers.py start DIR)\" first")
    binary = find_bin(args.bin)
    work = args.work or Path(tempfile.mkdtemp(prefix="lakemount-bench-disk-"))
    work.mkdir(parents=True, exist_ok=True)
    data = work / "images"
    local = generate_images(data, args.samples, args.size_kb, labels=10)
    local = sorted(local)
    bucket = os.environ["LAKEMOUNT_TEST_S3"].removeprefix("s3://")
    # One object per sample (--pack off): the disk tier is measured against
    # rclone's VFS cache over the same objects; packing has its own benchmark.
    prefix = f"bench-disk-plain-{args.samples}"
    pg = os.environ["LAKEMOUNT_TEST_PG"]
    db = f"bench_disk_plain_{args.samples}"
    host, port = pg.rsplit("@", 1)[1].split(":")
    subprocess.run(["psql", "-h", host, "-p", port, "-U", "postgres", "-d", "postgres", "-qc",
                    f"CREATE DATABASE {db}"], env=dict(os.environ, PGPASSWORD="postgres"), capture_output=True)
    wh_args = ["--warehouse", f"s3://{bucket}/{prefix}", "--catalog", f"{pg}/{db}"]
    print(f"ingesting {args.samples} images into s3://{bucket}/{prefix} ...", flush=True)
    subprocess.run([binary, "ingest", "--quiet", "--pack", "off", *wh_args, str(data)], check=True, stdout=subprocess.DEVNULL)
    spec = work / "bench.yaml"
    spec.write_text("name: bench\nsidecars: []\n")
    upstream = int(os.environ["AWS_ENDPOINT_URL"].rsplit(":", 1)[1])
    proxy = Proxy(upstream, args.delay_ms)
    env = dict(os.environ, AWS_ENDPOINT_URL=proxy.endpoint)
    cache = work / "cache"
    extra = ["--cache-size", args.cache_size, "--cache-dir", str(cache), "--cache-dir-size", args.disk_budget]
    results: dict[tuple, list[float]] = {}

    def rec(*key_value):
        *key, value = key_value
        results.setdefault(tuple(key), []).append(value)

    try:
        for run in range(args.runs):
            for order in ("listing", "random"):
                seed = None if order == "listing" else run
                rec(order, "local disk", "epoch 1", epoch(local, args.readers, seed))
                rec(order, "local disk", "epoch 2", epoch(local, args.readers, seed))
                shutil.rmtree(cache, ignore_errors=True)
                with Mount(binary, wh_args, [spec], work / "mnt", extra=extra, env=env) as m:
                    view = sorted((m.mnt / "bench").rglob("*.png"))
                    rec(order, "lakemount disk tier", "epoch 1", epoch(view, args.readers, seed))
                    time.sleep(2)  # let the disk writes land
                    rec(order, "lakemount disk tier", "epoch 2", epoch(view, args.readers, seed))
                with Mount(binary, wh_args, [spec], work / "mnt", extra=extra, env=env) as m:
                    view = sorted((m.mnt / "bench").rglob("*.png"))
                    rec(order, "lakemount disk tier", "epoch 2 after remount",
                        epoch(view, args.readers, seed))
                    fetched = status(binary, m.mnt)["lakemount_fetch_seconds_count"]
                    rec(order, "lakemount disk tier", "source requests after remount", fetched)
                rcache = work / "rclone-cache"
                shutil.rmtree(rcache, ignore_errors=True)
                rc_args = ["--vfs-cache-max-size", args.disk_budget.replace("iB", "")]
                rc = Rclone(proxy.endpoint, f"{bucket}/{prefix}/blobs", work / "rclone", rcache, extra=rc_args)
                try:
                    files = sorted(p for p in rc.mnt.rglob("*") if p.is_file())
                    rec(order, "rclone full cache", "epoch 1", epoch(files, args.readers, seed))
                    rec(order, "rclone full cache", "epoch 2", epoch(files, args.readers, seed))
                finally:
                    rc.close()
                rc = Rclone(proxy.endpoint, f"{bucket}/{prefix}/blobs", work / "rclone", rcache, extra=rc_args,
                            keep_cache=True)
                try:
                    files = sorted(p for p in rc.mnt.rglob("*") if p.is_file())
                    rec(order, "rclone full cache", "epoch 2 after remount", epoch(files, args.readers, seed))
                finally:
                    rc.close()
                print(f"run {run + 1}: {order} order done", flush=True)
            # A shuffled epoch once --warm has filled the disk tier.
            shutil.rmtree(cache, ignore_errors=True)
            with Mount(binary, wh_args, [spec], work / "mnt", extra=[*extra, "--warm"], env=env) as m:
                start = time.perf_counter()
                while status(binary, m.mnt)["lakemount_warm_samples_total"] < args.samples:
                    time.sleep(0.2)
                rec("random", "lakemount disk tier", "warm-up seconds", time.perf_counter() - start)
                view = sorted((m.mnt / "bench").rglob("*.png"))
                time.sleep(2)
                rec("random", "lakemount disk tier", "epoch 1 after --warm", epoch(view, args.readers, run))
            # A DataLoader-shaped first epoch: 2 decoding workers, listing order.
            rec("listing", "local disk", "2 decoding workers, epoch 1", loader_epoch(local))
            shutil.rmtree(cache, ignore_errors=True)
            with Mount(binary, wh_args, [spec], work / "mnt", extra=extra, env=env) as m:
                view = sorted((m.mnt / "bench").rglob("*.png"))
                rec("listing", "lakemount disk tier", "2 decoding workers, epoch 1", loader_epoch(view))
            print(f"run {run + 1}: warm and decoding epochs done", flush=True)
    finally:
        proxy.close()

    local_of = {}
    for (order, path, what), vals in results.items():
        if path == "local disk":
            local_of[(order, what)] = median(vals)
    rows = []
    for (order, path, what), vals in sorted(results.items()):
        v = median(vals)
        base = local_of.get((order, what)) or local_of.get((order, "epoch 2" if "epoch 2" in what else "epoch 1"))
        ratio = f"{v / base:.2f}x" if base and "seconds" not in what and "requests" not in what else ""
        rows.append({"order": order, "path": path, "what": what, "value": round(v, 1), "vs local": ratio})
    out = {"samples": args.samples, "size_kb": args.size_kb, "cache_size": args.cache_size,
           "disk_budget": args.disk_budget, "delay_ms": args.delay_ms, "readers": args.readers,
           "runs": args.runs, "rows": rows}
    report(f"{args.samples} x ~{args.size_kb} KB over S3 with {args.delay_ms} ms per request, "
           f"{args.readers} readers (files/s), RAM cache {args.cache_size}, medians of {args.runs}", rows, None)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=2) + "\n")
    print(f"(json: {args.json})")


if __name__ == "__main__":
    main()
