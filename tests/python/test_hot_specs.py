"""Specs added, edited and removed under a running mount, with a reader
that keeps reading through every change."""

import os
import threading
import time
from pathlib import Path

from conftest import export_digits, run, sha256
from test_mount import Mount


def wait_for(cond, seconds: float) -> float:
    """Polls cond() until true; returns the seconds it took, fails after `seconds`."""
    start = time.time()
    while not cond():
        assert time.time() - start < seconds, f"not within {seconds} s"
        time.sleep(0.02)
    return time.time() - start


def pngs(root: Path) -> list[Path]:
    """The images under root; [] while a swap of the view makes a directory
    seen a moment ago vanish (the walk is then retried)."""
    try:
        return sorted(root.rglob("*.png"))
    except FileNotFoundError:
        return []


def test_specs_hot_added_edited_and_removed_under_a_reader(tmp_path, lakemount_bin):
    files = export_digits(tmp_path / "digits", limit=120)
    ids = {sha256(d) for _, d in files.values()}
    wh = tmp_path / "wh"
    res = run(lakemount_bin, "ingest", "--quiet", "--warehouse", str(wh), str(tmp_path / "digits"))
    assert res.returncode == 0, res.stderr
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "a.yaml").write_text("name: a\nlimit: 40\nsidecars: []\n")
    with Mount(lakemount_bin, wh, [specs], tmp_path / "mnt") as m:
        mnt = m.mnt
        assert os.listdir(mnt) == ["a"]
        # A reader that keeps reading the first view's files throughout.
        stop, errors, reads = threading.Event(), [], [0]
        first = pngs(mnt / "a")

        def reader():
            while not stop.is_set():
                for p in first:
                    try:
                        assert sha256(p.read_bytes()) in ids
                        reads[0] += 1
                    except (OSError, AssertionError) as e:
                        errors.append(f"{p}: {e}")

        # An open handle on a file of the view that is about to be edited and removed.
        held = open(first[0], "rb")
        held_bytes = first[0].read_bytes()
        t = threading.Thread(target=reader)
        t.start()
        try:
            # Added: appears within 2 s.
            (specs / "b.yaml").write_text("name: b\nlimit: 7\nsidecars: []\n")
            took = wait_for(lambda: (mnt / "b").is_dir(), 2.0)
            assert len(pngs(mnt / "b")) == 7, took
            assert sorted(os.listdir(mnt)) == ["a", "b"]

            # Edited: swapped in; the reader (which resolved its paths before) keeps going.
            reads_before = reads[0]
            (specs / "a.yaml").write_text("name: a\nlimit: 5\nsidecars: []\n")
            wait_for(lambda: len(pngs(mnt / "a")) == 5, 2.0)
            wait_for(lambda: reads[0] > reads_before + len(first), 10.0)

            # A spec that does not resolve: the old view stays.
            (specs / "a.yaml").write_text("name: a\nfilter: \"no_such_column = 1\"\n")
            time.sleep(1.0)
            assert len(pngs(mnt / "a")) == 5

            # Removed: disappears; the open handle still reads the old bytes.
            (specs / "b.yaml").unlink()
            wait_for(lambda: not (mnt / "b").exists(), 2.0)
            (specs / "a.yaml").unlink()
            wait_for(lambda: os.listdir(mnt) == [], 2.0)
            held.seek(0)
            assert held.read() == held_bytes
        finally:
            stop.set()
            t.join(timeout=30)
            held.close()
        # Paths resolved before an edit may vanish with it (ENOENT), but
        # nothing read ever returned wrong bytes or EIO.
        assert not [e for e in errors if "No such file" not in e], errors[:5]
        assert reads[0] > 0
    log = m.proc.stderr.read()
    assert "no_such_column" in log and "view a unchanged" in log, log
