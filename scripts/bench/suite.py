"""The read-path benchmark suite: lakemount side by side with its limits.

One run, on one machine, each row a median over --runs repetitions with its
ratio to the local-disk baseline measured in the same run:

1. Random-order open/read/close of N generated ~100 KB images (ingested
   with their embeddings), files/s, with 1 and 2 reader threads and a
   DataLoader-like pool of 2 reader processes, for: the files on the local
   disk (warm page cache: the limit); bindfs over them, with defaults and
   with kernel_cache and long TTLs (the cost of FUSE itself); lakemount on
   first touch (fresh mount; the blob files are in the page cache like the
   local baseline's), moka warm (the page cache dropped, lakemount's cache
   full) and warm epochs (the better of epochs 2 and 3); the engines without
   FUSE: pylance `take_blobs` of one row at a time from the same bytes
   stored inline, and single-row reads from a Parquet file of them with
   pyarrow (what an Iceberg-only path costs).
2. A generated metadata-only table of --meta-rows samples: mount-ready
   time, RSS of the mount (and per sample, above an empty mount's RSS) and
   the time of a `find` over the whole mount, with `sidecars: []` (one file
   per sample) and again with the default sidecars (a `.json` per sample).
3. Memory bound: two random epochs over the images (the page cache dropped
   in between) with the cache set to a quarter of their size; peak RSS
   against the cache size plus the mount's fixed overhead: its RSS when
   ready, before any read, plus SLACK_MB (the cache applies evictions in
   batches, so it briefly holds a few dozen samples more than its size, and
   reads in flight hold their buffers).

Prints a table and writes JSON (--json). Needs root (drops the page cache,
mounts bindfs). Run it with scripts/bench/run, which installs what it needs
and builds the release binary.
"""

import argparse
import json
import multiprocessing as mp
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import Mount, drop_page_cache, find_bin, generate_images, median, meta_table, read_all, read_files, report  # noqa: E402


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


def read_processes(pool, paths, seed: int, batch: int = 32) -> float:
    """Like a DataLoader with workers: a pool of processes is handed batches
    of a shuffled order; returns files per second."""
    order = [str(p) for p in paths]
    random.Random(seed).shuffle(order)
    batches = [order[i:i + batch] for i in range(0, len(order), batch)]
    start = time.perf_counter()
    n = sum(pool.imap_unordered(read_all, batches))
    return n / (time.perf_counter() - start)


def engine_rows(fn, n: int, threads: int, seed: int) -> float:
    """Calls fn(i) for every row index in a seeded random order over
    `threads` threads; returns rows per second."""
    import threading

    order = list(range(n))
    random.Random(seed).shuffle(order)
    parts = [order[i::threads] for i in range(threads)]
    ts = [threading.Thread(target=lambda part=part: [fn(i) for i in part]) for part in parts]
    start = time.perf_counter()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return n / (time.perf_counter() - start)


def rss_kb(pid: int, key: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {key} for pid {pid}")


def listing(root: Path, expect: int) -> list[Path]:
    files = sorted(p for p in root.rglob("*.png"))
    if len(files) != expect:
        raise RuntimeError(f"{root}: {len(files)} files, expected {expect}")
    return files


def read_section(args, binary, work, data, paths, wh, results, pool):
    spec = work / "bench.yaml"
    spec.write_text("name: bench\nsidecars: []\n")
    import lance
    import pyarrow as pa
    import pyarrow.parquet as pq

    ds = lance.dataset(str(wh / "lance" / "bench.inline.lance"))
    parquet = work / "images.parquet"
    if not parquet.exists():
        table = pa.table({"path": [str(p) for p in paths], "bytes": [p.read_bytes() for p in paths]})
        pq.write_table(table, parquet, row_group_size=64)
    rg_rows = pq.ParquetFile(parquet).metadata.row_group(0).num_rows

    def lance_take(i):
        with ds.take_blobs("blob", indices=[i])[0] as f:
            f.read()

    def parquet_row(i):
        # Each read opens its own handle, as a DataLoader worker would.
        f = pq.ParquetFile(parquet)
        f.read_row_group(i // rg_rows, columns=["bytes"]).column(0)[i % rg_rows].as_py()

    blobs = [p for p in (wh / "blobs").rglob("*") if p.is_file()]
    # Enough cache for the whole data set: moka warm means everything is in it.
    cache = f"{max(1, args.samples * args.size_kb * 2 // 1024)}MiB"
    mnt = work / "mnt"
    readers = [("1 thread", 1), ("2 threads", 2), ("2 processes", "p")]

    def measure(files, how, seed):
        if how == "p":
            return read_processes(pool, files, seed)
        return read_files(files, how, seed=seed)

    def record(name, label, value):
        results.setdefault((name, label), []).append(value)

    for run in range(args.runs):
        for label, how in readers:
            read_files(paths, 2)  # the local baseline reads from a warm page cache
            record("local disk", label, measure(paths, how, run))
            for name, opts in BINDFS.items():
                with Bindfs(data, work / "bindfs", opts) as b:
                    view = [b.mnt / p.relative_to(data) for p in paths]
                    record(name, label, measure(view, how, run))
            read_files(blobs, 2)  # first touch: nothing in lakemount, blob files in the page cache
            with Mount(binary, wh, [spec], mnt, extra=["--cache-size", cache]) as m:
                view = listing(m.mnt / "bench", len(paths))
                record("lakemount first touch", label, measure(view, how, run))
                drop_page_cache()
                view = listing(m.mnt / "bench", len(paths))
                record("lakemount moka warm (page cache dropped)", label, measure(view, how, run + 100))
                e2 = measure(view, how, run + 200)
                e3 = measure(view, how, run + 300)
                record("lakemount warm epoch (best of 2, 3)", label, max(e2, e3))
            if how != "p":
                n = min(len(paths), args.engine_rows)
                record("pylance take_blobs, 1 row", label, engine_rows(lance_take, n, how, seed=run))
                record("parquet row read (pyarrow)", label, engine_rows(parquet_row, min(n, 500), how, seed=run))
        print(f"read run {run + 1}/{args.runs} done", flush=True)


def epoch_order(root: Path, expect: int) -> list[Path]:
    """The view's files in its listing order (`_index.jsonl`): the epoch order."""
    lines = (root / "_index.jsonl").read_text().splitlines()
    if len(lines) != expect:
        raise RuntimeError(f"{root}: {len(lines)} samples, expected {expect}")
    return [root / json.loads(line)["path"] for line in lines]


def warm_done(binary, mnt: Path, expect: int, timeout: float = 600) -> float:
    """Waits until `--warm` has fetched `expect` samples; returns the seconds waited."""
    start = time.perf_counter()
    while True:
        res = subprocess.run([binary, "status", "--json", str(mnt)], capture_output=True, text=True, check=True)
        metrics = json.loads(res.stdout)["metrics"]
        done = next(float(line.split()[-1]) for line in metrics.splitlines()
                    if line.startswith("lakemount_warm_samples_total"))
        if done >= expect:
            return time.perf_counter() - start
        if time.perf_counter() - start > timeout:
            raise RuntimeError(f"--warm fetched {done} of {expect} samples in {timeout} s")
        time.sleep(0.05)


def prefetch_section(args, binary, work, paths, wh, results):
    """First epoch, one reader, on a fresh mount: in directory order (sorted
    names, as ImageFolder reads) and in a shuffled view's listing order
    (`order: {shuffle: 1}`, read as `_index.jsonl` lists it), prefetch on
    (the default) and off; and with `--warm`, once the warm-up is done."""
    spec = work / "bench.yaml"
    shuffled = work / "bench-shuffled.yaml"
    shuffled.write_text("name: bench\norder: {shuffle: 1}\nsidecars: []\n")
    cache = f"{max(1, args.samples * args.size_kb * 2 // 1024)}MiB"
    blobs = [p for p in (wh / "blobs").rglob("*") if p.is_file()]
    n = len(paths)
    cases = [
        ("lakemount first epoch, directory order, prefetch 128 (default)", spec, ["--prefetch", "128"], listing),
        ("lakemount first epoch, directory order, prefetch off", spec, ["--prefetch", "0"], listing),
        ("lakemount first epoch, shuffled listing order, prefetch 128", shuffled, ["--prefetch", "128"], epoch_order),
        ("lakemount first epoch, shuffled listing order, prefetch off", shuffled, ["--prefetch", "0"], epoch_order),
        ("lakemount epoch after --warm, shuffled listing order", shuffled, ["--warm"], epoch_order),
    ]
    for run in range(args.runs):
        for label, spec_file, extra, order in cases:
            read_files(blobs, 2)
            with Mount(binary, wh, [spec_file], work / "mnt", extra=["--cache-size", cache, *extra]) as m:
                if "--warm" in extra:
                    warm_done(binary, m.mnt, n)
                view = order(m.mnt / "bench", n)
                results.setdefault((label, "1 thread"), []).append(read_files(view, 1, seed=None))
        print(f"prefetch run {run + 1}/{args.runs} done", flush=True)


def meta_section(args, binary, work, out):
    wh = work / "meta-wh"
    meta_table(wh, args.meta_rows, binary)
    spec = work / "meta.yaml"
    spec.write_text("name: meta\ntable: bench.meta\nsidecars: []\n")
    empty = work / "empty.yaml"
    empty.write_text("name: empty\ntable: bench.meta\nfilter: \"split = 'none'\"\nsidecars: []\n")
    mnt = work / "mnt-meta"
    ready, rss, finds, base = [], [], [], []
    for _ in range(args.runs):
        with Mount(binary, wh, [empty], mnt) as m:
            time.sleep(0.5)
            base.append(rss_kb(m.proc.pid))
        with Mount(binary, wh, [spec], mnt) as m:
            ready.append(m.ready_s)
            time.sleep(0.5)
            rss.append(rss_kb(m.proc.pid))
            start = time.perf_counter()
            res = subprocess.run(["find", str(mnt)], stdout=subprocess.PIPE, check=True)
            finds.append(time.perf_counter() - start)
            entries = res.stdout.count(b"\n")
    # The same table with the default sidecars: every sample and its .json
    # (sizes computed at resolve, twice the entries to list).
    full = work / "meta-sidecars.yaml"
    full.write_text("name: meta\ntable: bench.meta\n")
    ready_sc, finds_sc = [], []
    for _ in range(args.runs):
        with Mount(binary, wh, [full], mnt) as m:
            ready_sc.append(m.ready_s)
            start = time.perf_counter()
            res = subprocess.run(["find", str(mnt)], stdout=subprocess.PIPE, check=True)
            finds_sc.append(time.perf_counter() - start)
            entries_sc = res.stdout.count(b"\n")
    per_sample = (median(rss) - median(base)) * 1024 / args.meta_rows
    out["meta"] = {
        "rows": args.meta_rows,
        "ready_s": round(median(ready), 2),
        "rss_mb": round(median(rss) / 1024, 1),
        "empty_mount_rss_mb": round(median(base) / 1024, 1),
        "bytes_per_sample_above_empty": round(per_sample),
        "bytes_per_sample_total": round(median(rss) * 1024 / args.meta_rows),
        "find_s": round(median(finds), 2),
        "find_entries": entries,
        "ready_s_default_sidecars": round(median(ready_sc), 2),
        "find_s_default_sidecars": round(median(finds_sc), 2),
        "find_entries_default_sidecars": entries_sc,
    }


def epochs_section(args, binary, work, out):
    """A 1M-row view as a mixture of 3 sources over 100 epochs against the
    plain view of the same rows: mount-ready time and RSS above an empty
    mount (medians), and `find` over one epoch of one rank (of 8)."""
    wh = work / "meta-wh"
    meta_table(wh, args.meta_rows, binary)
    plain = work / "plain.yaml"
    plain.write_text("name: v\ntable: bench.meta\nsidecars: []\n")
    mix = work / "mix.yaml"
    mix.write_text(
        "name: v\ntable: bench.meta\nsidecars: []\nepochs: 100\norder: {shuffle: 1}\n"
        "sources:\n"
        "  - {name: a, filter: \"label < 'class0333'\", proportion: 0.5}\n"
        "  - {name: b, filter: \"label >= 'class0333' AND label < 'class0666'\", proportion: 0.3}\n"
        "  - {name: c, filter: \"label >= 'class0666'\", proportion: 0.2}\n")
    empty = work / "empty.yaml"
    empty.write_text("name: v\ntable: bench.meta\nfilter: \"split = 'none'\"\nsidecars: []\n")
    mnt = work / "mnt-epochs"
    res = {"plain": {"ready": [], "rss": []}, "mix": {"ready": [], "rss": [], "rss_ready": []}}
    base, finds = [], []
    entries = 0
    for _ in range(args.runs):
        with Mount(binary, wh, [empty], mnt) as m:
            time.sleep(0.5)
            base.append(rss_kb(m.proc.pid))
        for name, spec, extra in (("plain", plain, []), ("mix", mix, ["--rank", "0", "--world-size", "8"])):
            with Mount(binary, wh, [spec], mnt, extra=extra) as m:
                res[name]["ready"].append(m.ready_s)
                time.sleep(0.5)
                if name == "mix":
                    res[name]["rss_ready"].append(rss_kb(m.proc.pid))
                    start = time.perf_counter()
                    r = subprocess.run(["find", str(mnt / "v" / "epoch-42" / "rank-0")], stdout=subprocess.PIPE,
                                       check=True)
                    finds.append(time.perf_counter() - start)
                    entries = r.stdout.count(b"\n")
                res[name]["rss"].append(rss_kb(m.proc.pid))
    b = median(base)
    plain_rss, mix_rss = median(res["plain"]["rss"]) - b, median(res["mix"]["rss"]) - b
    out["epochs"] = {
        "rows": args.meta_rows,
        "plain_ready_s": round(median(res["plain"]["ready"]), 2),
        "mix_ready_s": round(median(res["mix"]["ready"]), 2),
        "ready_ratio": round(median(res["mix"]["ready"]) / median(res["plain"]["ready"]), 2),
        "plain_mb_above_empty": round(plain_rss / 1024, 1),
        "mix_mb_above_empty_ready": round((median(res["mix"]["rss_ready"]) - b) / 1024, 1),
        "mix_mb_above_empty_after_find": round(mix_rss / 1024, 1),
        "memory_ratio_ready": round((median(res["mix"]["rss_ready"]) - b) / plain_rss, 2),
        "memory_ratio_after_find": round(mix_rss / plain_rss, 2),
        "find_one_epoch_one_rank_s": round(median(finds), 2),
        "find_entries": entries,
    }


SLACK_MB = 16


def memory_section(args, binary, work, paths, wh, out):
    spec = work / "bench.yaml"
    total = sum(p.stat().st_size for p in paths)
    cache = total // 4
    mnt = work / "mnt"
    with Mount(binary, wh, [spec], mnt, extra=["--cache-size", str(cache)]) as m:
        view = listing(m.mnt / "bench", len(paths))
        time.sleep(0.5)
        ready_rss = rss_kb(m.proc.pid) * 1024
        fixed = ready_rss + SLACK_MB * 2**20
        read_files(view, 2, seed=9)
        drop_page_cache()  # the kernel's copies go; lakemount must re-read
        read_files(view, 2, seed=10)
        peak = rss_kb(m.proc.pid, "VmHWM") * 1024
    out["memory"] = {
        "data_mb": round(total / 2**20),
        "cache_mb": round(cache / 2**20),
        "ready_rss_mb": round(ready_rss / 2**20),
        "fixed_overhead_mb": round(fixed / 2**20),
        "peak_rss_mb": round(peak / 2**20),
        "bound_mb": round((cache + fixed) / 2**20),
        "within_bound": peak <= cache + fixed,
        "peak_over_bound_mb": round((peak - cache - fixed) / 2**20),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=20000, help="generated images (default 20000)")
    ap.add_argument("--size-kb", type=int, default=100, help="size of each image (default 100)")
    ap.add_argument("--runs", type=int, default=3, help="repetitions; rows are medians (default 3)")
    ap.add_argument("--meta-rows", type=int, default=1_000_000, help="rows of the metadata-only table")
    ap.add_argument("--engine-rows", type=int, default=3000, help="rows read per pylance/Parquet measurement")
    ap.add_argument("--bin", help="lakemount binary (default: the release build)")
    ap.add_argument("--work", type=Path, help="keep generated data here and reuse it")
    ap.add_argument("--json", type=Path, default=Path("scripts/out/bench.json"))
    ap.add_argument("--only", choices=["read", "prefetch", "meta", "memory", "epochs"], action="append",
                    help="run only these sections (repeatable)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("the suite drops the page cache and mounts bindfs: run it as root")
    if not shutil.which("bindfs"):
        raise SystemExit("bindfs is missing: run scripts/bench/run, or apt-get install bindfs")
    sections = args.only or ["read", "prefetch", "meta", "memory"]
    binary = find_bin(args.bin)
    work = args.work or Path(tempfile.mkdtemp(prefix="lakemount-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    out = {"binary": binary, "samples": args.samples, "size_kb": args.size_kb, "runs": args.runs}

    if {"read", "prefetch", "memory"} & set(sections):
        data = work / "images"
        print(f"generating {args.samples} images of ~{args.size_kb} KB in {data} ...", flush=True)
        paths = generate_images(data, args.samples, args.size_kb, labels=100)
        wh = work / "wh"
        if not (wh / "lance" / "bench.inline.lance").exists():
            print("ingesting (blob store, then inline) ...", flush=True)
            subprocess.run([binary, "ingest", "--quiet", "--warehouse", str(wh), str(data)], check=True,
                           stdout=subprocess.DEVNULL)
            subprocess.run([binary, "ingest", "--quiet", "--inline-blobs", "--table", "bench.inline",
                            "--warehouse", str(wh), str(data)], check=True, stdout=subprocess.DEVNULL)
        (work / "bench.yaml").write_text("name: bench\nsidecars: []\n")

    if "read" in sections:
        results = {}
        with mp.get_context("fork").Pool(2) as pool:
            read_section(args, binary, work, data, paths, wh, results, pool)
        rows = []
        for label in ("1 thread", "2 threads", "2 processes"):
            local = median(results[("local disk", label)])
            for (name, lab), vals in results.items():
                if lab != label:
                    continue
                v = median(vals)
                rows.append({"path": name, "readers": label, "files_per_s": round(v),
                             "ratio_to_local": round(v / local, 3)})
        out["read"] = rows
    if "prefetch" in sections:
        results = {}
        prefetch_section(args, binary, work, paths, wh, results)
        off = {kind: median(results[(f"lakemount first epoch, {kind} order, prefetch off", "1 thread")])
               for kind in ("directory", "shuffled listing")}
        out["prefetch"] = [
            {"path": name, "readers": lab, "files_per_s": round(median(v)),
             "ratio_to_prefetch_off": round(median(v) / off["directory" if "directory" in name else "shuffled listing"], 2)}
            for (name, lab), v in results.items()
        ]
    if "meta" in sections:
        print(f"metadata-only table of {args.meta_rows} rows ...", flush=True)
        meta_section(args, binary, work, out)
    if "memory" in sections:
        print("memory bound ...", flush=True)
        memory_section(args, binary, work, paths, wh, out)
    if "epochs" in sections:
        print(f"{args.meta_rows} rows as 3 sources over 100 epochs ...", flush=True)
        epochs_section(args, binary, work, out)
    out["suite_s"] = round(time.perf_counter() - started)

    print_report(out)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=2) + "\n")
    print(f"(json: {args.json})")
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)


def print_report(out):
    if "prefetch" in out:
        report("first epoch, 1 reader, median of runs (ratio to the same order with prefetch off)",
               out["prefetch"], None)
    if "read" in out:
        rows = out["read"]
        print(f"\nrandom-order reads of {out['samples']} files of ~{out['size_kb']} KB, "
              f"median of {out['runs']} runs ({out['binary']})")
        keys = list(rows[0].keys())
        widths = [max(len(k), *(len(str(r[k])) for r in rows)) for k in keys]
        print("  ".join(k.ljust(w) for k, w in zip(keys, widths)))
        for r in rows:
            print("  ".join(str(r[k]).ljust(w) for k, w in zip(keys, widths)))
    for section in ("meta", "memory", "epochs"):
        if section in out:
            print(f"\n{section}: " + ", ".join(f"{k}={v}" for k, v in out[section].items()))
    print(f"\nsuite took {out['suite_s']} s")


if __name__ == "__main__":
    main()
