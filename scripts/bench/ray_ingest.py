"""Ingest as a Ray job against `lakemount ingest` in one process.

Generates --files images of ~--size-kb KB, starts a two-node Ray cluster on
this machine (a head and a second `ray start --address` process, 1 CPU
each), then for each encoder, --runs times, ingests the same images into a
fresh local warehouse (a) with `lakemount ingest` (one process, the
baseline) and (b) with `python -m lakemount.ray` (2 workers, partitions of
--partition-size, one commit per --commit-every partitions), timing each
from process start to exit, and counting the catalog commits each made
(snapshots). Reports medians, the ratio (b)/(a), the same for the job's
staging and commit phase alone (without the driver's start, `import ray`,
connecting and starting the workers: what a long job amortises), and the
cost of one commit onto an empty table and onto a large one, which the
README's scaling model uses.

Encoders: the built-in one, the tiny CLIP test fixture (a model encoder
with batching), and --clip DIR if given (e.g. the ViT-B/32-sized checkpoint
`scripts/make_fixtures.py clip-b32 OUT` writes).

Usage: python scripts/bench/ray_ingest.py [--files 2000] [--runs 3] [--bin PATH] [--clip DIR]
"""

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import find_bin, generate_images, median, report

ROOT = Path(__file__).resolve().parents[2]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def snapshots(binary, wh):
    res = subprocess.run([binary, "snapshots", "--warehouse", str(wh)], capture_output=True, text=True,
                         check=True)
    return len(res.stdout.splitlines()) - 1


def timed(cmd, env=None):
    start = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    took = time.perf_counter() - start
    if res.returncode != 0:
        raise SystemExit(f"{cmd[:3]} failed: {res.stderr[-2000:]}")
    return took, res.stdout


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("--size-kb", type=int, default=100)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--partition-size", type=int, default=250)
    ap.add_argument("--commit-every", type=int, default=64)
    ap.add_argument("--commit-rows", type=int, default=1_000_000,
                    help="also time one commit onto a table of this many rows (0: skip)")
    ap.add_argument("--clip", help="a CLIP checkpoint directory (clip:DIR) to measure too")
    ap.add_argument("--bin")
    ap.add_argument("--work", type=Path)
    ap.add_argument("--json", type=Path, default=Path("scripts/out/bench_ray_ingest.json"))
    args = ap.parse_args()
    binary = find_bin(args.bin)
    work = args.work or Path(tempfile.mkdtemp(prefix="lakemount-bench-ray-"))
    data = work / "images"
    print(f"generating {args.files} images of ~{args.size_kb} KB in {data} ...", flush=True)
    paths = generate_images(data, args.files, args.size_kb)
    mb = sum(p.stat().st_size for p in paths) / 1e6

    encoders = {"builtin": "builtin", "clip-tiny": f"clip:{ROOT / 'tests/fixtures/clip/model'}"}
    if args.clip:
        encoders["clip"] = f"clip:{args.clip}"

    ray = str(Path(sys.executable).parent / "ray")
    tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    port = free_port()
    env = {**os.environ, "LAKEMOUNT_BIN": binary, "RAY_USAGE_STATS_ENABLED": "0",
           "PYTHONPATH": str(ROOT / "python")}
    common = ["--num-cpus", "1", "--object-store-memory", str(100 << 20), "--disable-usage-stats"]
    subprocess.run([ray, "start", "--head", "--port", str(port), "--temp-dir", tmp,
                    "--include-dashboard", "false", *common], check=True, env=env, capture_output=True)
    subprocess.run([ray, "start", "--address", f"127.0.0.1:{port}", *common], check=True, env=env,
                   capture_output=True)
    results = {"files": args.files, "mb": mb, "encoders": {}}
    try:
        for name, enc in encoders.items():
            single, distributed, phase, commits = [], [], [], {}
            for run in range(args.runs):
                wh = work / f"wh-{name}-single-{run}"
                shutil.rmtree(wh, ignore_errors=True)
                took, _ = timed([binary, "ingest", "--quiet", "--encoder", enc, "--warehouse", str(wh),
                                 str(data)])
                single.append(took)
                commits["single"] = snapshots(binary, wh)

                wh = work / f"wh-{name}-ray-{run}"
                shutil.rmtree(wh, ignore_errors=True)
                took, out = timed([sys.executable, "-m", "lakemount.ray", str(data), "--warehouse", str(wh),
                                   "--encoder", enc, "--address", f"127.0.0.1:{port}", "--num-workers", "2",
                                   "--partition-size", str(args.partition_size),
                                   "--commit-every", str(args.commit_every)], env=env)
                summary = json.loads(out.strip().splitlines()[-1])
                assert summary["samples"] == args.files, summary
                distributed.append(took)
                t = summary["timings"]
                phase.append(t["stage_s"] + t["commit_s"])
                commits["ray"] = snapshots(binary, wh)
                print(f"  {name} run {run + 1}: single {single[-1]:.2f} s, ray {took:.2f} s", flush=True)
            s, d = median(single), median(distributed)
            results["encoders"][name] = {
                "single_s": single, "ray_s": distributed,
                "single_samples_per_s": args.files / s, "ray_samples_per_s": args.files / d,
                "ratio": s / d, "commits": commits, "ray_phase_s": phase,
                "ray_phase_samples_per_s": args.files / median(phase),
            }
    finally:
        subprocess.run([ray, "stop", "--force"], env=env, capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)

    if args.commit_rows:
        results["commit"] = commit_cost(binary, work, paths, args.commit_rows, args.runs)

    rows = [{
        "encoder": name,
        "ingest samples/s": f"{r['single_samples_per_s']:.0f}",
        "ray samples/s": f"{r['ray_samples_per_s']:.0f}",
        "ray / ingest": f"{r['ratio']:.2f}x",
        "ray staging+commit samples/s": f"{r['ray_phase_samples_per_s']:.0f}",
        "that / ingest": f"{r['ray_phase_samples_per_s'] / r['single_samples_per_s']:.2f}x",
        "commits ingest": r["commits"]["single"],
        "commits ray": r["commits"]["ray"],
    } for name, r in results["encoders"].items()]
    report(f"{args.files} images ({mb:.0f} MB), medians of {args.runs}; Ray: 2 workers on a two-node "
           f"cluster of this machine, partitions of {args.partition_size}", rows, None)
    if "commit" in results:
        c = results["commit"]
        report(f"one commit of a staged partition of 250 samples, medians of {args.runs}", [
            {"table rows before": 0, "commit s": f"{c['empty_s']:.2f}"},
            {"table rows before": args.commit_rows, "commit s": f"{c['big_s']:.2f}"},
        ], None)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(f"(json: {args.json})")


def commit_cost(binary, work, paths, table_rows, runs):
    """Seconds of `lakemount commit` of one staged partition (250 new
    samples, other ones each run) onto an empty table and onto one of
    `table_rows` rows (the duplicate check reads every published content
    id)."""
    parts = []
    for run in range(runs):
        part = work / f"partition-{run}"
        if not part.exists():
            (part / "x").mkdir(parents=True)
            for p in paths[run * 250:(run + 1) * 250]:
                shutil.copy(p, part / "x" / p.name)
        parts.append(part)
    big = work / "wh-big"
    if not big.exists():
        subprocess.run([sys.executable, str(Path(__file__).with_name("gen_meta.py")), str(big),
                        "--rows", str(table_rows), "--bin", binary], check=True)
    out = {}
    for key, wh, table in (("empty_s", None, "bench.empty"), ("big_s", big, "bench.meta")):
        times = []
        for run in range(runs):
            target = wh or work / f"wh-empty-{run}"
            args = ["--warehouse", str(target), "--table", table]
            subprocess.run([binary, "stage", "--quiet", "--job", f"cc{run}", "--partition", "p", *args, str(parts[run])],
                           check=True, capture_output=True)
            took, _ = timed([binary, "commit", "--json", "--job", f"cc{run}", *args])
            times.append(took)
        out[key] = median(times)
        out[key.replace("_s", "_runs")] = times
    return out


if __name__ == "__main__":
    main()
