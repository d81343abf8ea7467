"""Ingest as a Ray job (`lakemount.ray`, shipped in the wheel) on a real Ray
cluster on this machine: a head and a second `ray start --address` process
standing in for another node, one CPU each. Every sample published exactly
once (`lakemount check`), a mount shows them with the `.npy` sidecars
`lakemount embed` computes; and under failures: a stager SIGKILLed
mid-partition (Ray restarts the worker and retries the partition; `gc`
collects the dead attempt's files), a commit killed between the Lance and
the Iceberg commit then the job re-run (it resumes), and two jobs over
overlapping inputs at once.

The `s3` case needs the servers of scripts/servers.py: scripts/test.sh runs
this file after starting them.
"""

import json
import re
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import run, sha256
from test_mount import Mount

ROOT = Path(__file__).resolve().parents[2]
PY = str(ROOT / "python")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster(lakemount_bin):
    """A two-node Ray cluster (two `ray start` processes, 1 CPU each)."""
    ray = shutil.which("ray", path=str(Path(sys.executable).parent)) or "ray"
    # Ray's socket paths must stay short: a temp dir of its own under /tmp.
    tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    port = free_port()
    env = {**os.environ, "LAKEMOUNT_BIN": lakemount_bin, "RAY_USAGE_STATS_ENABLED": "0",
           "PYTHONPATH": PY}
    common = ["--num-cpus", "1", "--object-store-memory", str(80 << 20), "--disable-usage-stats"]
    subprocess.run([ray, "start", "--head", "--port", str(port), "--temp-dir", tmp,
                    "--include-dashboard", "false", *common], check=True, env=env, capture_output=True)
    try:
        subprocess.run([ray, "start", "--address", f"127.0.0.1:{port}", *common], check=True, env=env,
                       capture_output=True)
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([ray, "stop", "--force"], env=env, capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)


def images(root: Path, start: int, n: int, label_of=lambda i: f"c{i % 4}"):
    """`n` distinct small PNGs ROOT/<label>/<i>.png; their bytes by path."""
    rng = np.random.default_rng(start)
    out = {}
    for i in range(start, start + n):
        d = root / label_of(i)
        d.mkdir(parents=True, exist_ok=True)
        px = rng.integers(0, 256, size=(12, 12, 3), dtype=np.uint8)
        px[0, 0] = [i % 256, (i // 256) % 256, 7]
        p = d / f"{i}.png"
        Image.fromarray(px).save(p)
        out[p] = p.read_bytes()
    return out


def manifest(path: Path, files):
    path.write_text("".join(json.dumps({"path": str(p), "label": p.parent.name}) + "\n" for p in files))
    return path


class Backend:
    """Warehouse arguments for `local` or `s3` (SeaweedFS + PostgreSQL)."""

    def __init__(self, kind, tmp):
        self.kind = kind
        if kind == "local":
            self.location = str(tmp / "wh")
            self.catalog = None
        else:
            for v in ("LAKEMOUNT_TEST_S3", "LAKEMOUNT_TEST_PG", "AWS_ENDPOINT_URL"):
                if v not in os.environ:
                    raise RuntimeError(f"{v} is not set: start the servers (scripts/servers.py)")
            wid = os.urandom(6).hex()
            pg = os.environ["LAKEMOUNT_TEST_PG"]
            host, port = pg.rsplit("@", 1)[1].split(":")
            subprocess.run(["psql", "-h", host, "-p", port, "-U", "postgres", "-d", "postgres", "-qc",
                            f"CREATE DATABASE ray_{wid}"], check=True,
                           env=dict(os.environ, PGPASSWORD="postgres"), capture_output=True)
            self.location = f"{os.environ['LAKEMOUNT_TEST_S3']}/ray-{wid}"
            self.catalog = f"{pg}/ray_{wid}"

    def args(self):
        return ["--warehouse", self.location] + (["--catalog", self.catalog] if self.catalog else [])

    def catalog_args(self):
        return ["--catalog", self.catalog] if self.catalog else []


def ray_ingest(cluster, backend, inputs, *extra, env=None, check=True):
    """`python -m lakemount.ray` as its own driver process; its summary."""
    cmd = [sys.executable, "-m", "lakemount.ray", str(inputs), *backend.args(), "--address", cluster,
           "--num-workers", "2", *extra]
    res = subprocess.run(cmd, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": PY, **(env or {})})
    if check:
        assert res.returncode == 0, res.stdout + res.stderr
        return json.loads(res.stdout.strip().splitlines()[-1])
    return res


def published(lakemount_bin, backend):
    """Content ids of the current snapshot, as `lakemount ls` lists them."""
    spec = Path(tempfile.mkdtemp()) / "all.yaml"
    spec.write_text("name: all\nsidecars: []\nlayout: \"{content_id}{ext}\"\n")
    res = run(lakemount_bin, "ls", *backend.args(), str(spec))
    if "has no snapshots yet" in res.stderr:
        return []
    assert res.returncode == 0, res.stderr
    names = [line.split("\t")[1].split("/", 1)[1] for line in res.stdout.splitlines()]
    return [n.split(".")[0] for n in names if not n.startswith("_")]


def check(lakemount_bin, backend):
    res = run(lakemount_bin, "check", *backend.args())
    assert res.returncode == 0 and "FAILED" not in res.stdout, res.stdout + res.stderr


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_a_ray_job_publishes_every_sample_once_and_mounts(tmp_path, lakemount_bin, cluster, kind):
    backend = Backend(kind, tmp_path)
    files = images(tmp_path / "in", 0, 2000)
    s = ray_ingest(cluster, backend, tmp_path / "in", "--partition-size", "250")
    assert s["partitions"] == 8 and s["staged"] == 8, s
    assert s["samples"] == 2000 and s["commits"] == 1, s
    assert s["nodes"] == 2, f"the two workers ran on one node: {s}"
    ids = published(lakemount_bin, backend)
    assert sorted(ids) == sorted({sha256(b) for b in files.values()})
    check(lakemount_bin, backend)

    # The sidecars are what `lakemount embed` computes for the same bytes.
    some = sorted(files)[::50]
    out = tmp_path / "embed.npy"
    res = run(lakemount_bin, "embed", "-o", str(out), *map(str, some))
    assert res.returncode == 0, res.stderr
    want = {sha256(files[p]): v for p, v in zip(some, np.load(out))}
    spec = tmp_path / "v.yaml"
    spec.write_text("name: v\nsidecars: [embedding]\n")
    with Mount(lakemount_bin, backend.location, [spec], tmp_path / "mnt", backend.catalog_args()) as m:
        pngs = list((m.mnt / "v").rglob("*.png"))
        assert len(pngs) == 2000
        seen = 0
        for p in pngs:
            cid = sha256(p.read_bytes())
            if cid in want:
                np.testing.assert_allclose(np.load(p.with_suffix(".npy")), want[cid], rtol=1e-6)
                seen += 1
        assert seen == len(want)


def test_a_stager_killed_mid_partition_is_retried_exactly_once(tmp_path, lakemount_bin, cluster):
    backend = Backend("local", tmp_path)
    files = images(tmp_path / "in", 5000, 400)
    marker = tmp_path / "killed-once"
    s = ray_ingest(cluster, backend, tmp_path / "in", "--partition-size", "50",
                   env={"LAKEMOUNT_TEST_CRASH": f"stage-before-manifest@{marker}"})
    assert marker.exists(), "no stager was killed"
    assert s["samples"] == 400 and s["staged"] == 8, s
    ids = published(lakemount_bin, backend)
    assert sorted(ids) == sorted({sha256(b) for b in files.values()})
    check(lakemount_bin, backend)
    # The dead attempt wrote fragments and data files nobody publishes.
    res = run(lakemount_bin, "gc", "--grace", "0s", *backend.args())
    assert res.returncode == 0, res.stderr
    lance, iceberg = map(int, re.match(r"removed (\d+) Lance data files, (\d+) Iceberg", res.stdout).groups())
    assert lance >= 1 and iceberg >= 1, res.stdout
    check(lakemount_bin, backend)
    assert len(published(lakemount_bin, backend)) == 400


def test_a_job_whose_commit_died_resumes_when_run_again(tmp_path, lakemount_bin, cluster):
    backend = Backend("local", tmp_path)
    files = images(tmp_path / "in", 9000, 300)
    res = ray_ingest(cluster, backend, tmp_path / "in", "--partition-size", "100",
                     env={"LAKEMOUNT_TEST_CRASH": "commit-after-lance"}, check=False)
    assert res.returncode != 0 and "commit" in res.stderr, res.stderr
    assert published(lakemount_bin, backend) == []
    s = ray_ingest(cluster, backend, tmp_path / "in", "--partition-size", "100")
    assert s["resumed"] == 300 and s["staged"] == 0, s
    ids = published(lakemount_bin, backend)
    assert sorted(ids) == sorted({sha256(b) for b in files.values()})
    check(lakemount_bin, backend)
    # Run again: nothing to do.
    s = ray_ingest(cluster, backend, tmp_path / "in", "--partition-size", "100")
    assert s["samples"] == 0 and s["staged"] == 0, s


def test_two_jobs_over_overlapping_inputs_at_once(tmp_path, lakemount_bin, cluster):
    backend = Backend("local", tmp_path)
    files = images(tmp_path / "in", 20000, 450)
    paths = sorted(files)
    a = manifest(tmp_path / "a.jsonl", paths[:300])
    b = manifest(tmp_path / "b.jsonl", paths[150:])
    cmd = lambda m: [sys.executable, "-m", "lakemount.ray", str(m), *backend.args(), "--address", cluster,
                     "--num-workers", "1", "--partition-size", "50"]
    env = {**os.environ, "PYTHONPATH": PY}
    procs = [subprocess.Popen(cmd(m), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for m in (a, b)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, out + err
    sums = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
    assert sums[0]["samples"] + sums[1]["samples"] == 450, sums
    ids = published(lakemount_bin, backend)
    assert len(ids) == 450 and sorted(ids) == sorted({sha256(b) for b in files.values()})
    check(lakemount_bin, backend)


def test_ray_data_reads_a_ray_ingested_table_and_writes_rows_a_mount_serves(tmp_path, lakemount_bin, cluster):
    """Ray Data as the other engine: its read_iceberg + lance-ray's
    read_lance see what the Ray job published, identical to the mount; rows
    it appends by the contract (lance-ray's write_lance, then a PyIceberg
    append) mount with their bytes and embeddings."""
    backend = Backend("local", tmp_path)
    wh = Path(backend.location)
    files = images(tmp_path / "in", 30000, 120)
    ray_ingest(cluster, backend, tmp_path / "in", "--partition-size", "40")
    env = {**os.environ, "PYTHONPATH": PY}
    peer = str(Path(__file__).with_name("ray_peer.py"))

    def peer_run(*args):
        res = subprocess.run([sys.executable, peer, args[0], cluster, str(wh), *map(str, args[1:])],
                             capture_output=True, text=True, env=env)
        assert res.returncode == 0, res.stdout + res.stderr[-3000:]

    peer_run("read", tmp_path / "read.json")
    seen = json.loads((tmp_path / "read.json").read_text())
    assert set(seen) == {sha256(b) for b in files.values()}
    assert all(emb is not None and len(emb) == 256 for _, _, emb in seen.values())

    extra = images(tmp_path / "peer", 40000, 15)
    peer_run("write", tmp_path / "peer", tmp_path / "wrote.json")
    wrote = json.loads((tmp_path / "wrote.json").read_text())
    assert set(wrote) == {sha256(b) for b in extra.values()}

    spec = tmp_path / "all.yaml"
    spec.write_text("name: all\nsidecars: [embedding]\n")
    with Mount(lakemount_bin, wh, [spec], tmp_path / "mnt") as m:
        pngs = list((m.mnt / "all").rglob("*.png"))
        assert len(pngs) == 135
        for p in pngs:
            cid = sha256(p.read_bytes())
            assert p.stem == cid
            vec = np.load(p.with_suffix(".npy"))
            want = wrote.get(cid) or seen[cid][2]
            np.testing.assert_allclose(vec, want, rtol=1e-6)
        assert {p.stem for p in (m.mnt / "all" / "peer").glob("*.png")} == set(wrote)
    check(lakemount_bin, backend)
