"""Ingest on a Ray cluster: `lakemount stage` in Ray actors, one
`lakemount commit` per group of partitions on the driver.

    import lakemount.ray
    summary = lakemount.ray.ingest("/data/images", warehouse="s3://bucket/wh",
                                   catalog="postgres://...", encoder="clip:/models/clip",
                                   num_workers=100, gpus_per_worker=1)

The input (an ImageFolder directory or a CSV/JSONL manifest, as for
`lakemount ingest`) is cut into partitions of `partition_size` rows. Each
worker is an actor holding one `lakemount stage --serve` process, so the
encoder is loaded once per worker; it stages one partition per request
(blobs, embeddings, Lance fragments, Iceberg data files, a staging
manifest; nothing published). The driver publishes every `commit_every`
staged partitions with `lakemount commit`: one Lance append and one
Iceberg snapshot each, duplicates dropped.

Failures: a worker (or its stager) that dies mid-partition is restarted by
Ray and the partition staged again; what the dead attempt wrote is never
published and `lakemount gc` collects it. The job id is a digest of the
input, table and partition size, so running the same call again after a
driver crash resumes: it first publishes what the crashed run staged
(`commit --job`), then stages only the partitions not yet published.

Workers must read the input files at the same paths as the driver (a
shared filesystem, or one machine) and reach the warehouse; the driver's
AWS_*, AZURE_* and LAKEMOUNT_* environment travels to them.
"""

import csv
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from . import binary as _binary

FORWARDED_ENV = ("AWS_", "AZURE_", "LAKEMOUNT_", "RUST_LOG")


class IngestError(RuntimeError):
    """A step of the job failed; the message says which and why."""


def _warehouse_args(warehouse, table, catalog, catalog_options, storage_options, encoder):
    args = ["--warehouse", str(warehouse), "--encoder", encoder]
    if table:
        args += ["--table", table]
    if catalog:
        args += ["--catalog", catalog]
    for k, v in (catalog_options or {}).items():
        args += ["--catalog-option", f"{k}={v}"]
    for k, v in (storage_options or {}).items():
        args += ["--storage-option", f"{k}={v}"]
    return args


def _walk(root):
    """ImageFolder rows as `lakemount ingest DIR` sees them: hidden entries
    skipped, the first directory is the label, sorted by path."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for f in filenames:
            if not f.startswith("."):
                out.append(Path(dirpath) / f)
    out.sort()
    rows = []
    for p in out:
        rel = p.relative_to(root).parts
        rows.append({"path": str(p), "label": rel[0] if len(rel) > 1 else "", "source": str(p)})
    return rows


def _read_input(inputs):
    """(format, header, rows, folder) of the input: rows are dicts whose
    `path`s are absolute."""
    p = Path(inputs).resolve()
    if p.is_dir():
        return "csv", ["path", "label", "source"], _walk(p), p
    folder = p.parent
    text = p.read_text()
    if p.suffix in (".jsonl", ".ndjson"):
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        header = None
    else:
        reader = csv.DictReader(io.StringIO(text))
        header = list(reader.fieldnames or [])
        rows = list(reader)
    for r in rows:
        if r.get("path"):
            r["path"] = str((folder / r["path"]).resolve())
    return ("jsonl" if header is None else "csv"), header, rows, folder


def _job_id(fmt, rows, table, partition_size):
    h = hashlib.sha256()
    h.update(json.dumps([fmt, table or "", partition_size]).encode())
    for r in rows:
        h.update(json.dumps(r, sort_keys=True).encode())
        h.update(b"\n")
    return "j" + h.hexdigest()[:20]


def _run(cmd, env=None):
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if res.returncode != 0:
        raise IngestError(f"`lakemount {cmd[1]}` failed (exit {res.returncode}): {res.stderr.strip()}")
    return res.stdout


def _stager_class(ray):
    @ray.remote
    class Stager:
        """One worker: a `lakemount stage --serve` process, the encoder
        loaded once, staging one partition per call."""

        def __init__(self, cmd, env):
            self.cmd = cmd
            self.env = {**os.environ, **env}
            self.proc = None

        def node(self):
            return ray.get_runtime_context().get_node_id()

        def stage(self, partition, fmt, header, rows):
            with tempfile.TemporaryDirectory(prefix="lakemount-stage-") as d:
                return self._stage(os.path.join(d, f"{partition}.{fmt}"), partition, fmt, header, rows)

        def _stage(self, path, partition, fmt, header, rows):
            with open(path, "w", newline="") as f:
                if fmt == "csv":
                    w = csv.DictWriter(f, fieldnames=header)
                    w.writeheader()
                    w.writerows(rows)
                else:
                    for r in rows:
                        f.write(json.dumps(r) + "\n")
            if self.proc is None or self.proc.poll() is not None:
                self.proc = subprocess.Popen(self.cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                             text=True, env=self.env)
            try:
                self.proc.stdin.write(json.dumps({"partition": partition, "manifest": path}) + "\n")
                self.proc.stdin.flush()
                line = self.proc.stdout.readline()
            except BrokenPipeError:
                line = ""
            if not line:
                # The stager died mid-partition (killed, out of memory): this
                # worker goes with it, Ray restarts it and retries the
                # partition; the dead attempt's files are never published.
                print(f"lakemount stager died on {partition} (exit {self.proc.wait()})", file=sys.stderr)
                shutil.rmtree(os.path.dirname(path), ignore_errors=True)
                os._exit(1)
            return json.loads(line)

    return Stager


def ingest(inputs, *, warehouse, table=None, catalog=None, catalog_options=None,
           storage_options=None, encoder="builtin", num_workers=2, gpus_per_worker=0,
           partition_size=256, commit_every=64, stage_args=(), job=None, address=None,
           max_retries=3, progress=True, binary=None):
    """Ingests `inputs` (an ImageFolder directory or a CSV/JSONL manifest)
    into the warehouse with `num_workers` Ray actors; returns a summary
    dict (samples, duplicates, rejected, commits, samples_per_s, ...).

    `stage_args` are extra `lakemount stage` options (`--pack on`,
    `--split 0.9,0.1,0`, ...). `job` overrides the digest-derived job id.
    """
    import ray

    started = time.monotonic()
    exe = binary or _binary()
    wh = _warehouse_args(warehouse, table, catalog, catalog_options, storage_options, encoder)
    fmt, header, rows, folder = _read_input(inputs)
    if not rows:
        raise IngestError(f"{inputs}: no files to ingest")
    job = job or _job_id(fmt, rows, table, partition_size)
    parts = [(f"p{i // partition_size:06d}", rows[i:i + partition_size])
             for i in range(0, len(rows), partition_size)]
    env = {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV)}
    env.pop("LAKEMOUNT_BIN", None)

    summary = {"job": job, "partitions": len(parts), "staged": 0, "samples": 0, "duplicates": 0,
               "rejected": [], "commits": 0, "snapshot_id": None, "resumed": 0, "nodes": 0}

    timings = {"list_s": 0.0, "init_s": 0.0, "stage_s": 0.0, "commit_s": 0.0}
    summary["timings"] = timings

    def commit(args):
        t = time.monotonic()
        out = json.loads(_run([exe, "commit", "--json", *wh, *args]))
        timings["commit_s"] += time.monotonic() - t
        summary["samples"] += out["added"]
        summary["duplicates"] += out["duplicates"]
        if out["snapshot_id"] is not None:
            summary["commits"] += 1
            summary["snapshot_id"] = out["snapshot_id"]
        return out

    # Resume: publish what an earlier run of this job staged, skip what it published.
    t = time.monotonic()
    status = json.loads(_run([exe, "stage", "--job", job, "--list", *wh]))
    timings["list_s"] = time.monotonic() - t
    if status["staged"]:
        summary["resumed"] = commit(["--job", job])["added"]
        status = json.loads(_run([exe, "stage", "--job", job, "--list", *wh]))
    done = set(status["committed"])
    todo = [p for p in parts if p[0] not in done]

    if todo:
        t = time.monotonic()
        if not ray.is_initialized():
            ray.init(address=address, logging_level="warning", log_to_driver=False)
        cmd = [exe, "stage", "--serve", "--job", job, "--allow-path-prefix", str(folder),
               *stage_args, *wh]
        Stager = _stager_class(ray)
        workers = [Stager.options(num_cpus=1, num_gpus=gpus_per_worker, max_restarts=max_retries,
                                  max_task_retries=max_retries).remote(cmd, env)
                   for _ in range(max(1, min(num_workers, len(todo))))]
        summary["nodes"] = len(set(ray.get([w.node.remote() for w in workers])))
        pool = ray.util.ActorPool(workers)
        timings["init_s"] = time.monotonic() - t
        t = time.monotonic()
        pending = []
        staged_samples = 0
        for i, answer in enumerate(pool.map_unordered(
                lambda w, p: w.stage.remote(p[0], fmt, header, p[1]), todo)):
            if not answer.get("ok"):
                raise IngestError(f"staging failed: {answer.get('error')}")
            summary["staged"] += 1
            summary["duplicates"] += answer["duplicates"]
            summary["rejected"] += answer["rejected"]
            staged_samples += answer["samples"]
            pending.append(answer["staged"])
            if len(pending) >= commit_every:
                commit(pending)
                pending = []
            if progress:
                rate = staged_samples / max(time.monotonic() - started, 1e-9)
                print(f"\rlakemount: staged {i + 1}/{len(todo)} partitions, {staged_samples} samples, "
                      f"{rate:.0f} samples/s, {summary['commits']} commits", end="", file=sys.stderr)
        timings["stage_s"] = time.monotonic() - t
        if pending:
            commit(pending)
        if progress:
            print(file=sys.stderr)
        for w in workers:
            ray.kill(w)

    seconds = time.monotonic() - started
    summary["seconds"] = seconds
    summary["samples_per_s"] = summary["samples"] / seconds if seconds > 0 else 0.0
    if progress:
        print(f"lakemount: job {job}: {summary['samples']} samples published in {summary['commits']} "
              f"commits, {summary['duplicates']} duplicates, {len(summary['rejected'])} rejected, "
              f"{summary['samples_per_s']:.1f} samples/s", file=sys.stderr)
        for r in summary["rejected"]:
            print(f"  rejected {r['what']}: {r['reason']}", file=sys.stderr)
    return summary


def main(argv=None):
    import argparse

    ap = argparse.ArgumentParser(prog="python -m lakemount.ray", description=__doc__.split("\n\n")[0])
    ap.add_argument("inputs", help="ImageFolder directory or CSV/JSONL manifest")
    ap.add_argument("--warehouse", required=True)
    ap.add_argument("--table")
    ap.add_argument("--catalog")
    ap.add_argument("--encoder", default=os.environ.get("LAKEMOUNT_ENCODER", "builtin"))
    ap.add_argument("--num-workers", type=int, default=2)
    ap.add_argument("--gpus-per-worker", type=float, default=0)
    ap.add_argument("--partition-size", type=int, default=256)
    ap.add_argument("--commit-every", type=int, default=64, help="partitions per commit")
    ap.add_argument("--address", help="Ray cluster address [default: RAY_ADDRESS or a local cluster]")
    ap.add_argument("--job", help="job id [default: a digest of the input]")
    a = ap.parse_args(argv)
    s = ingest(a.inputs, warehouse=a.warehouse, table=a.table, catalog=a.catalog, encoder=a.encoder,
               num_workers=a.num_workers, gpus_per_worker=a.gpus_per_worker,
               partition_size=a.partition_size, commit_every=a.commit_every, address=a.address,
               job=a.job)
    print(json.dumps(s))
    return 3 if s["rejected"] else 0


if __name__ == "__main__":
    sys.exit(main())
