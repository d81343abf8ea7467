"""The mount as a node service: --daemon, status, Prometheus metrics,
--warm, prefetch in listing order, and an fstab line mounted by mount(8)."""

import json
import os
import re
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import export_digits, run, sha256
from test_mount import Mount


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory, lakemount_bin):
    tmp = tmp_path_factory.mktemp("daemon")
    files = export_digits(tmp / "digits", limit=240)
    wh = tmp / "wh"
    res = run(lakemount_bin, "ingest", "--quiet", "--warehouse", str(wh), str(tmp / "digits"))
    assert res.returncode == 0, res.stdout + res.stderr
    return tmp, wh, {sha256(d) for _, d in files.values()}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def counters(text: str) -> dict[str, float]:
    """Prometheus text -> {name{labels}: value}, comments skipped."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def status(bin_path, mnt) -> dict:
    res = run(bin_path, "status", "--json", str(mnt))
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    doc["counters"] = counters(doc["metrics"])
    return doc


def settled_misses(bin_path, mnt) -> float:
    """The mount's cache-miss count once it has stopped moving (background
    prefetch done): the same in two status reads 0.3 s apart."""
    deadline = time.monotonic() + 20
    last = status(bin_path, mnt)["counters"]["lakemount_cache_misses_total"]
    while True:
        time.sleep(0.3)
        now = status(bin_path, mnt)["counters"]["lakemount_cache_misses_total"]
        if now == last:
            return now
        assert time.monotonic() < deadline, "the cache-miss count never settled"
        last = now


def read_all(paths) -> None:
    for p in paths:
        Path(p).read_bytes()


def test_daemon_status_metrics_and_umount(warehouse, lakemount_bin):
    tmp, wh, ids = warehouse
    spec = tmp / "d.yaml"
    spec.write_text("name: d\nsidecars: []\n")
    mnt = tmp / "mnt-d"
    mnt.mkdir()
    port = free_port()
    res = run(lakemount_bin, "mount", "--daemon", "--metrics", f"127.0.0.1:{port}", "--warehouse", str(wh),
              str(spec), str(mnt))
    assert res.returncode == 0, res.stderr
    try:
        # Ready when --daemon returns: no polling.
        assert os.path.ismount(mnt)
        m = re.search(r"daemon pid (\d+), log (\S+)\)", res.stdout)
        assert m, res.stdout
        pid, log = int(m.group(1)), Path(m.group(2))
        assert pid != os.getpid() and Path(f"/proc/{pid}").exists()
        doc = status(lakemount_bin, mnt)
        assert doc["pid"] == pid
        assert [(v["name"], v["samples"]) for v in doc["views"]] == [("d", len(ids))]
        before = doc["counters"]
        files = sorted(p for p in (mnt / "d").rglob("*.png"))
        read_all(files[:50])
        scraped = counters(urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode())
        assert scraped["lakemount_samples_served_total"] - before["lakemount_samples_served_total"] == 50
        assert scraped["lakemount_served_bytes_total"] >= sum(p.stat().st_size for p in files[:50])
        assert scraped["lakemount_cache_misses_total"] > before["lakemount_cache_misses_total"]
        assert scraped['lakemount_fuse_requests_total{op="read"}'] >= 50
        assert scraped["lakemount_fetch_seconds_count"] > 0
        assert scraped["lakemount_views"] == 1 and scraped["lakemount_view_samples"] == len(ids)
        # Reading the same files again: cache hits (or the kernel's page cache), no new fetches.
        # Prefetch may still be fetching past the 50 (its lookups count as misses): wait until
        # the count settles first.
        settled = settled_misses(lakemount_bin, mnt)
        read_all(files[:50])
        again = status(lakemount_bin, mnt)["counters"]
        assert again["lakemount_cache_misses_total"] == settled
        text = run(lakemount_bin, "status", str(mnt)).stdout
        assert "d " in text and "lakemount_samples_served_total" in text
        assert "mounted d" in log.read_text()
    finally:
        res = run(lakemount_bin, "umount", str(mnt))
    assert res.returncode == 0, res.stderr
    assert not os.path.ismount(mnt)
    deadline = time.time() + 10
    while Path(f"/proc/{pid}").exists() and time.time() < deadline:
        time.sleep(0.05)
    assert not Path(f"/proc/{pid}").exists(), "the daemon outlived its mount"
    assert run(lakemount_bin, "status", str(mnt)).returncode != 0


def test_daemon_reports_failure_in_its_exit_status(warehouse, lakemount_bin):
    tmp, wh, _ = warehouse
    bad = tmp / "bad.yaml"
    bad.write_text("name: bad\nfilter: \"no_such_column = 1\"\n")
    mnt = tmp / "mnt-bad"
    mnt.mkdir()
    res = run(lakemount_bin, "mount", "--daemon", "--warehouse", str(wh), str(bad), str(mnt))
    assert res.returncode == 4, res.stderr  # bad input, passed up from the daemon
    assert "bad.yaml" in res.stderr and "no_such_column" in res.stderr, res.stderr
    assert not os.path.ismount(mnt)


def test_warm_fills_the_cache_before_the_first_epoch(warehouse, lakemount_bin):
    tmp, wh, ids = warehouse
    spec = tmp / "w.yaml"
    spec.write_text("name: w\norder: {shuffle: 5}\nsidecars: [embedding]\n")
    with Mount(lakemount_bin, wh, [spec], tmp / "mnt-w", extra=["--warm"]) as m:
        deadline = time.time() + 60
        while status(lakemount_bin, m.mnt)["counters"]["lakemount_warm_samples_total"] < len(ids):
            assert time.time() < deadline, "warm did not finish"
            time.sleep(0.1)
        before = status(lakemount_bin, m.mnt)["counters"]
        read_all(sorted((m.mnt / "w").rglob("*.png")))
        read_all(sorted((m.mnt / "w").rglob("*.npy")))
        after = status(lakemount_bin, m.mnt)["counters"]
        assert after["lakemount_cache_misses_total"] == before["lakemount_cache_misses_total"], \
            "an epoch after --warm fetched from storage"
        assert after["lakemount_cache_hits_total"] - before["lakemount_cache_hits_total"] >= 2 * len(ids)


@pytest.mark.parametrize("prefetch", ["128", "0"])
def test_prefetch_follows_the_shuffled_listing(warehouse, lakemount_bin, prefetch):
    tmp, wh, ids = warehouse
    spec = tmp / "p.yaml"
    # Directory order (label, content id) is not the epoch order.
    spec.write_text("name: p\norder: {shuffle: 11}\nsidecars: []\n")
    with Mount(lakemount_bin, wh, [spec], tmp / f"mnt-p{prefetch}", extra=["--prefetch", prefetch]) as m:
        root = m.mnt / "p"
        lines = [json.loads(line) for line in (root / "_index.jsonl").read_text().splitlines()]
        for line in lines:
            (root / line["path"]).read_bytes()
            time.sleep(0.002)  # a reader that decodes: prefetch gets ahead
        c = status(lakemount_bin, m.mnt)["counters"]
        if prefetch == "0":
            assert c["lakemount_prefetch_issued_total"] == 0
        else:
            assert c["lakemount_prefetch_issued_total"] >= len(ids) // 2
            assert c["lakemount_prefetch_hits_total"] >= len(ids) // 2, c


def test_fstab_line_is_mounted_by_mount(warehouse, lakemount_bin):
    tmp, wh, ids = warehouse
    specs = tmp / "fstab-specs"
    specs.mkdir()
    (specs / "train.yaml").write_text("sidecars: []\n")
    mnt = tmp / "mnt-fstab"
    mnt.mkdir()
    fstab = tmp / "fstab"
    fstab.write_text(f"{specs} {mnt} fuse.lakemount warehouse={wh},rank=1,world_size=2,cache_size=64MiB,"
                     "_netdev,noauto,x-systemd.requires=network-online.target 0 0\n")
    helper = Path("/sbin/mount.fuse.lakemount")
    created = not helper.exists()
    if created:
        helper.symlink_to(lakemount_bin)
    try:
        res = subprocess.run(["mount", "-T", str(fstab), str(mnt)], capture_output=True, text=True)
        assert res.returncode == 0, res.stdout + res.stderr
        assert os.path.ismount(mnt)
        assert sorted(os.listdir(mnt / "train")) == ["_index.jsonl", "_receipt.json", "rank-1"]
        got = {sha256(p.read_bytes()) for p in (mnt / "train" / "rank-1").rglob("*.png")}
        assert len(got) == len(ids) // 2 and got <= ids
        res = subprocess.run(["umount", str(mnt)], capture_output=True, text=True)
        assert res.returncode == 0, res.stderr
        assert not os.path.ismount(mnt)
    finally:
        if os.path.ismount(mnt):
            run(lakemount_bin, "umount", "--lazy", str(mnt))
        if created:
            helper.unlink()
