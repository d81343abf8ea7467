"""Shared helpers for the benchmark scripts: generated images, timing,
medians, mounting. Benchmarks report ratios to a baseline measured in the
same run; they are not tests and assert nothing about speed."""

import json
import os
import random
import statistics
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image


def find_bin(explicit: str | None) -> str:
    if explicit:
        return explicit
    target = Path(os.environ.get("CARGO_TARGET_DIR", Path(__file__).resolve().parents[2] / "target"))
    for profile in ("release", "debug"):
        b = target / profile / "lakemount"
        if b.is_file():
            return str(b)
    raise SystemExit("no lakemount binary found: run `cargo build --release` or pass --bin")


def meta_table(wh: Path, rows: int, binary: str) -> None:
    """The metadata-only table bench.meta of `rows` rows in warehouse `wh`
    (gen_meta.py), unless `wh` exists already."""
    if wh.exists():
        return
    print(f"generating a {rows}-row metadata table ...", flush=True)
    import subprocess
    import sys
    subprocess.run([sys.executable, str(Path(__file__).resolve().parent / "gen_meta.py"), str(wh),
                    "--rows", str(rows), "--bin", binary], check=True)


def generate_images(dest: Path, count: int, size_kb: int, labels: int = 10, seed: int = 1) -> list[Path]:
    """`count` PNGs of about `size_kb` KB each (noise does not compress), in
    DEST/<label>/<n>.png. Deterministic for a given seed."""
    rng = np.random.default_rng(seed)
    side = max(8, int((size_kb * 1000 / 3) ** 0.5))
    paths = []
    for i in range(count):
        d = dest / f"class{i % labels:02d}"
        d.mkdir(parents=True, exist_ok=True)
        p = d / f"{i:06d}.png"
        if not p.exists():
            pixels = rng.integers(0, 256, size=(side, side, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(p, compress_level=1)
        paths.append(p)
    return paths


def read_all(paths) -> int:
    """Opens, reads to the end and closes each file, as a data loader would."""
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            while os.read(fd, 1 << 20):
                pass
        finally:
            os.close(fd)
    return len(paths)


def run_threads(fn, parts) -> float:
    """Runs fn(part) for each part on its own thread; returns the seconds taken."""
    ts = [threading.Thread(target=fn, args=(part,)) for part in parts]
    start = time.perf_counter()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return time.perf_counter() - start


def read_files(paths: list[Path], threads: int, seed: int | None = 7) -> float:
    """Reads every file once (open, read all, close) in a seeded random
    order (or, with seed None, in the order given) split across `threads`
    threads; returns files per second."""
    order = list(paths)
    if seed is not None:
        random.Random(seed).shuffle(order)
    parts = [order[i::threads] for i in range(threads)]
    errors = []

    def worker(part):
        try:
            read_all(part)
        except OSError as e:  # reported, never silently skipped
            errors.append(e)

    elapsed = run_threads(worker, parts)
    if errors:
        raise RuntimeError(f"{len(errors)} read errors, first: {errors[0]}")
    return len(paths) / elapsed


def median(xs):
    return statistics.median(xs)


def drop_page_cache() -> bool:
    """Drops the kernel page cache (root only). Returns whether it worked."""
    try:
        subprocess.run(["sync"], check=True)
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


class Mount:
    """`lakemount mount` in the background; unmounts on exit."""

    def __init__(self, bin_path, wh, specs, mnt, extra=(), env=None):
        """`wh`: a warehouse directory, or the warehouse arguments as a list."""
        mnt.mkdir(parents=True, exist_ok=True)
        self.mnt = mnt
        start = time.perf_counter()
        wh_args = list(wh) if isinstance(wh, (list, tuple)) else ["--warehouse", str(wh)]
        self.proc = subprocess.Popen([bin_path, "mount", *wh_args, *extra, *map(str, specs), str(mnt)],
                                     stderr=subprocess.PIPE, text=True, env=env)
        while not os.path.ismount(mnt):
            if self.proc.poll() is not None:
                raise RuntimeError(f"mount failed: {self.proc.stderr.read()}")
            time.sleep(0.01)
        self.ready_s = time.perf_counter() - start

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.proc.terminate()
        self.proc.wait(timeout=60)


def report(title: str, rows: list[dict], out_json: Path | None):
    print(f"\n{title}")
    keys = list(rows[0].keys())
    widths = [max(len(k), *(len(str(r[k])) for r in rows)) for k in keys]
    print("  ".join(k.ljust(w) for k, w in zip(keys, widths)))
    for r in rows:
        print("  ".join(str(r[k]).ljust(w) for k, w in zip(keys, widths)))
    if out_json:
        out_json.parent.mkdir(parents=True, exist_ok=True)
        out_json.write_text(json.dumps(rows, indent=2) + "\n")
        print(f"(json: {out_json})")
