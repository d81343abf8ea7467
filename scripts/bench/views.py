"""Materialized views against resolving at mount, one rank at a time.

A synthetic metadata-only table (gen_meta.py, --rows samples over 1,000
labels) is pinned once plainly and once materialized for each world size W
(`lakemount pin --materialize --world-size W`). Then, for W = 1, 8 and 64,
the mount of rank 0 (`--rank 0 --world-size W`) of each: ready time (spawn
to mounted), RSS when ready above an empty mount's, peak RSS (VmHWM), bytes
the process read (/proc/PID/io rchar: the catalog, the Iceberg metadata and
data files, or the index), and `find` over the rank's directory (W >= 8).
Medians of --runs; ratios of materialized to resolved in the same run.

Usage: python scripts/bench/views.py --bin target/release/lakemount --rows 10000000
(scripts/bench/run-views builds the release binary and runs this.)
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import Mount, find_bin, median, meta_table  # noqa: E402


def status(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {key} for pid {pid}")


def rchar(pid: int) -> int:
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise RuntimeError(f"no rchar for pid {pid}")


def pin(binary, wh, spec, out, extra=()):
    start = time.perf_counter()
    res = subprocess.run([binary, "pin", "--warehouse", str(wh), *extra, str(spec), "-o", str(out)],
                         capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"pin failed: {res.stderr}")
    return time.perf_counter() - start, res.stderr.strip()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--worlds", default="1,8,64")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--bin")
    ap.add_argument("--work", type=Path)
    ap.add_argument("--json", type=Path, default=Path("scripts/out/bench-views.json"))
    ap.add_argument("--reuse-pins", action="store_true",
                    help="keep pinned specs already in --work (same table, same index format)")
    args = ap.parse_args()
    binary = find_bin(args.bin)
    work = args.work or Path(tempfile.mkdtemp(prefix="lakemount-bench-views-"))
    work.mkdir(parents=True, exist_ok=True)
    wh = work / f"wh-{args.rows}"
    meta_table(wh, args.rows, binary)
    spec = work / "v.yaml"
    spec.write_text("name: v\ntable: bench.meta\n")
    empty = work / "empty.yaml"
    empty.write_text("name: v\ntable: bench.meta\nfilter: \"split = 'none'\"\nsidecars: []\n")
    worlds = [int(w) for w in args.worlds.split(",")]
    plain = work / "plain.yaml"
    reuse = args.reuse_pins and plain.exists()
    secs = None if reuse else pin(binary, wh, spec, plain)[0]
    out = {"rows": args.rows, "pin_s": secs and round(secs, 1), "worlds": {}}
    mats = {}
    for w in worlds:
        mats[w] = work / f"mat-{w}.yaml"
        if reuse and mats[w].exists():
            index = next(line.split('"')[1] for line in mats[w].read_text().splitlines()
                         if line.strip().startswith("index:"))
            size = (wh / "views" / f"{index}.parquet").stat().st_size
            out["worlds"][w] = {"materialize_s": None, "index_bytes": size,
                                "index_bytes_per_row": round(size / args.rows, 1)}
            continue
        secs, said = pin(binary, wh, spec, mats[w], ["--materialize", "--world-size", str(w)])
        name = next(t for t in said.split() if t.endswith(".parquet"))
        size = Path(name.removeprefix("file://")).stat().st_size
        out["worlds"][w] = {"materialize_s": round(secs, 1), "index_bytes": size,
                            "index_bytes_per_row": round(size / args.rows, 1)}
        print(f"materialized for W={w} in {secs:.0f} s: {size / 1e6:.1f} MB", flush=True)
    mnt = work / "mnt"
    base = []
    res: dict[tuple, dict[str, list]] = {}
    for run in range(args.runs):
        with Mount(binary, wh, [empty], mnt) as m:
            time.sleep(0.5)
            base.append(status(m.proc.pid, "VmRSS"))
        for w in worlds:
            for kind, spec_file in (("resolved", plain), ("materialized", mats[w])):
                r = res.setdefault((w, kind), {"ready": [], "rss": [], "peak": [], "read": [], "find": []})
                with Mount(binary, wh, [spec_file], mnt, extra=["--rank", "0", "--world-size", str(w)]) as m:
                    r["ready"].append(m.ready_s)
                    r["read"].append(rchar(m.proc.pid))
                    time.sleep(0.5)
                    r["rss"].append(status(m.proc.pid, "VmRSS"))
                    r["peak"].append(status(m.proc.pid, "VmHWM"))
                    if w >= 8:
                        start = time.perf_counter()
                        found = subprocess.run(["find", str(mnt / "v")], stdout=subprocess.PIPE, check=True)
                        r["find"].append(time.perf_counter() - start)
                        r["entries"] = found.stdout.count(b"\n")
        print(f"run {run + 1}/{args.runs} done", flush=True)
    b = median(base)
    out["empty_mount_rss_mb"] = round(b / 1e6, 1)
    print(f"\n{args.rows} rows, rank 0 of W, medians of {args.runs} (RSS above an empty mount of {b / 1e6:.0f} MB)")
    print(f"{'W':>3} {'view':<13} {'ready s':>8} {'RSS MB':>8} {'peak MB':>8} {'read MB':>9} {'find s':>7}")
    for w in worlds:
        for kind in ("resolved", "materialized"):
            r = res[(w, kind)]
            row = {
                "ready_s": round(median(r["ready"]), 3),
                "rss_mb_above_empty": round((median(r["rss"]) - b) / 1e6, 1),
                "peak_mb": round(median(r["peak"]) / 1e6, 1),
                "read_mb": round(median(r["read"]) / 1e6, 2),
                "find_s": round(median(r["find"]), 2) if r["find"] else None,
                "find_entries": r.get("entries"),
            }
            out["worlds"][w][kind] = row
            find = f"{row['find_s']:.2f}" if row["find_s"] is not None else "-"
            print(f"{w:>3} {kind:<13} {row['ready_s']:>8.3f} {row['rss_mb_above_empty']:>8.1f} "
                  f"{row['peak_mb']:>8.1f} {row['read_mb']:>9.2f} {find:>7}")
        rv, mv = out["worlds"][w]["resolved"], out["worlds"][w]["materialized"]
        out["worlds"][w]["ratios"] = {
            "ready": round(mv["ready_s"] / rv["ready_s"], 3),
            "read": round(mv["read_mb"] / max(rv["read_mb"], 1e-9), 4),
        }
        print(f"    materialized/resolved: ready {out['worlds'][w]['ratios']['ready']:.3f}x, "
              f"bytes read {out['worlds'][w]['ratios']['read']:.4f}x")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=2))
    print(f"(json: {args.json})")


if __name__ == "__main__":
    main()
