"""Epochs that survive restarts and resizes, with real mounts: a global
order per epoch (the Python reference below, written out independently of
the Rust one), ranks dealt positions of it in lockstep, and a job of 4
ranks stopped mid-epoch and resumed by 6 new mounts at the position it
reached."""

import json
import os
import subprocess
from pathlib import Path

from PIL import Image

from conftest import run, sha256
from test_mount import Mount

M = (1 << 64) - 1


def mix(x: int) -> int:
    """SplitMix64's output function."""
    z = (x + 0x9E3779B97F4A7C15) & M
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M
    return z ^ (z >> 31)


class EpochOrder:
    """Position -> sample index of epoch `epoch` of `n` shuffled with `seed`:
    a 4-round Feistel network on the smallest even number of bits covering
    n, cycle-walked into 0..n."""

    def __init__(self, n: int, seed: int, epoch: int):
        bits = max((n - 1).bit_length() if n > 1 else 0, 2)
        bits += bits & 1
        self.n, self.key, self.half = n, mix(seed ^ mix(epoch)), bits // 2

    def _enc(self, x: int) -> int:
        mask = (1 << self.half) - 1
        left, right = x >> self.half, x & mask
        for r in range(4):
            left, right = right, left ^ (mix(self.key ^ ((r << 56) & M) ^ right) & mask)
        return (left << self.half) | right

    def at(self, p: int) -> int:
        x = self._enc(p)
        while x >= self.n:
            x = self._enc(x)
        return x


def test_reference_values_match_the_rust_ones():
    assert mix(0) == 0xE220A8397B1DCDAF
    o = EpochOrder(10, 7, 3)
    assert [o.at(p) for p in range(10)] == [4, 5, 8, 7, 1, 3, 9, 2, 6, 0]


def unique_pngs(dest: Path, n: int) -> list[bytes]:
    dest.mkdir(parents=True)
    out = []
    for k in range(n):
        im = Image.new("RGB", (6, 6), ((k * 37) % 256, (k * 11) % 256, k // 256))
        im.putpixel((k % 6, (k // 6) % 6), (255 - k % 256, 0, 0))
        p = dest / f"{k:04d}.png"
        im.save(p)
        out.append(p.read_bytes())
    assert len({sha256(b) for b in out}) == n
    return out


def rank_files(root: Path) -> list[Path]:
    """A rank directory's samples in its listing order: the epoch order."""
    return sorted(p for p in root.iterdir() if p.suffix == ".png")


def position(p: Path) -> int:
    return int(p.name.split("-", 1)[0])


def test_four_ranks_stopped_mid_epoch_resume_as_six(tmp_path, lakemount_bin):
    n = 240
    images = unique_pngs(tmp_path / "in" / "x", n)
    wh = tmp_path / "wh"
    res = run(lakemount_bin, "ingest", "--quiet", "--warehouse", str(wh), str(tmp_path / "in"))
    assert res.returncode == 0, res.stdout + res.stderr
    spec = tmp_path / "train.yaml"
    spec.write_text("name: train\nepochs: 2\norder: {shuffle: 11}\nshard: {world_size: 4}\nsidecars: []\n")
    base = sorted(sha256(b) for b in images)  # the view's base order: content ids
    expected = {e: [base[EpochOrder(n, 11, e).at(p)] for p in range(n)] for e in (0, 1)}
    assert expected[0] != expected[1]

    read: list[tuple[int, str]] = []  # (global position, content id) of every read
    # Run 1: 4 ranks (a mount each, as 4 nodes would) read 30 samples each.
    for r in range(4):
        with Mount(lakemount_bin, wh, [spec], tmp_path / f"a{r}", extra=["--rank", str(r), "--world-size", "4"]) as m:
            files = rank_files(m.mnt / "train" / "epoch-0" / f"rank-{r}")
            assert len(files) == n // 4
            for p in files[:30]:
                read.append((position(p), sha256(p.read_bytes())))
    reached = 4 * 30  # the global position a checkpoint records
    assert sorted(pos for pos, _ in read) == list(range(reached))

    # Run 2: 6 new mounts resume there; each reads the rest of epoch 0.
    for r in range(6):
        extra = ["--rank", str(r), "--world-size", "6", "--resume-at", f"0:{reached}"]
        with Mount(lakemount_bin, wh, [spec], tmp_path / f"b{r}", extra=extra) as m:
            root = m.mnt / "train"
            assert sorted(os.listdir(root)) == ["_index.jsonl", "_receipt.json", "epoch-0", "epoch-1"]
            files = rank_files(root / "epoch-0" / f"rank-{r}")
            assert len(files) == (n - reached) // 6
            for p in files:
                read.append((position(p), sha256(p.read_bytes())))
            if r == 0:
                receipt = json.loads((root / "_receipt.json").read_text())
                assert receipt["epochs"]["resume"] == {"epoch": 0, "pos": reached}
                assert receipt["epochs"]["world_size"] == 6 and receipt["epochs"]["rank"] == 0
                # The next epoch in full, in its own order.
                later = rank_files(root / "epoch-1" / "rank-0")
                assert [sha256(p.read_bytes()) for p in later] == expected[1][0::6]

    # Every sample of epoch 0 read exactly once, in the global order.
    read.sort()
    assert [pos for pos, _ in read] == list(range(n))
    assert [cid for _, cid in read] == expected[0]


def test_two_nodes_list_identical_epochs(tmp_path, lakemount_bin):
    unique_pngs(tmp_path / "in" / "x", 50)
    wh = tmp_path / "wh"
    assert run(lakemount_bin, "ingest", "--quiet", "--warehouse", str(wh), str(tmp_path / "in")).returncode == 0
    spec = tmp_path / "s.yaml"
    spec.write_text("name: s\nepochs: 3\norder: {shuffle: 2}\nshard: {world_size: 3, pad: true}\n")
    listings = []
    for node in ("a", "b"):
        with Mount(lakemount_bin, wh, [spec], tmp_path / node) as m:
            out = subprocess.run(["find", "."], cwd=m.mnt, capture_output=True, text=True, check=True)
            listings.append(sorted(out.stdout.splitlines()))
            # Padded: every rank holds ceil(50 / 3) samples of each epoch.
            for e in range(3):
                for r in range(3):
                    assert len(rank_files(m.mnt / "s" / f"epoch-{e}" / f"rank-{r}")) == 17
    assert listings[0] == listings[1]


def labelled_pngs(root: Path, counts: dict[str, int], salt: int = 0) -> None:
    for label, n in counts.items():
        d = root / label
        d.mkdir(parents=True, exist_ok=True)
        for k in range(n):
            Image.new("RGB", (5, 5), (ord(label[0]), k % 256, (k // 256) * 16 + salt)).save(d / f"{salt}-{k}.png")


MIX = """name: m
epochs: 10
epoch_size: 100
order: {shuffle: 3}
layout: "{source}-{content_id}{ext}"
sidecars: []
sources:
  - {name: web, filter: "label = 'a'", proportion: 0.5}
  - {name: books, filter: "label = 'b'", proportion: 0.3}
  - {name: code, filter: "label = 'c'", proportion: 0.2}
  - {name: rare, filter: "label = 'd'", repeat: 2}
"""


def epoch_listing(root: Path) -> dict[int, list[str]]:
    return {int(e.name.split("-")[1]): sorted(os.listdir(e)) for e in root.iterdir() if e.name.startswith("epoch-")}


def test_mixtures_draw_their_weights_every_epoch_and_replay_when_pinned(tmp_path, lakemount_bin):
    labelled_pngs(tmp_path / "in", {"a": 100, "b": 100, "c": 100, "d": 10})
    wh = tmp_path / "wh"
    assert run(lakemount_bin, "ingest", "--quiet", "--warehouse", str(wh), str(tmp_path / "in")).returncode == 0
    spec = tmp_path / "m.yaml"
    spec.write_text(MIX)
    # No read-ahead: the fetches counted below are the reads' own.
    with Mount(lakemount_bin, wh, [spec], tmp_path / "mnt", extra=["--prefetch", "0"]) as m:
        root = m.mnt / "m"
        listing = epoch_listing(root)
        assert sorted(listing) == list(range(10))
        firsts = set()
        for e, names in listing.items():
            count = {s: sum(f"-{s}-" in n for n in names) for s in ("web", "books", "code", "rare")}
            # 0.5/0.3/0.2 of 100, and each of the 10 rare samples twice.
            assert count == {"web": 50, "books": 30, "code": 20, "rare": 20}, (e, count)
            rare = [n.split("-", 1)[1] for n in names if "-rare-" in n]
            assert len(set(rare)) == 10 and all(rare.count(r) == 2 for r in set(rare))
            firsts.add(names[0])
        assert len(firsts) > 1, "every epoch drew the same order"
        receipt = json.loads((root / "_receipt.json").read_text())
        per = {s["name"]: s["per_epoch"] for s in receipt["epochs"]["sources"]}
        assert per == {"web": 50, "books": 30, "code": 20, "rare": 20}
        # The two copies of a rare sample: distinct names, the same bytes,
        # one cache entry (one fetch).
        before = json.loads(run(lakemount_bin, "status", "--json", str(m.mnt)).stdout)["metrics"]
        rare = sorted(p for p in (root / "epoch-0").iterdir() if "-rare-" in p.name)
        by_id: dict[str, list[bytes]] = {}
        for p in rare:
            by_id.setdefault(p.name.split("-", 2)[2], []).append(p.read_bytes())
        assert all(len(v) == 2 and v[0] == v[1] for v in by_id.values())
        after = json.loads(run(lakemount_bin, "status", "--json", str(m.mnt)).stdout)["metrics"]

        def fetches(text):
            return float(next(line.split()[-1] for line in text.splitlines()
                              if line.startswith("lakemount_fetch_seconds_count")))
        assert fetches(after) - fetches(before) == 10
        first = {p.name: p.read_bytes() for p in sorted((root / "epoch-3").iterdir())}

    # Pinned, then more samples land in every source: the pinned mixture
    # replays exactly.
    pinned = tmp_path / "m.pinned.yaml"
    res = run(lakemount_bin, "pin", "--warehouse", str(wh), str(spec), "-o", str(pinned))
    assert res.returncode == 0, res.stderr
    with Mount(lakemount_bin, wh, [pinned], tmp_path / "mnt2") as m:
        before_ingest = epoch_listing(m.mnt / "m")
    labelled_pngs(tmp_path / "more", {"a": 40, "b": 40, "c": 40, "d": 5}, salt=1)
    assert run(lakemount_bin, "ingest", "--quiet", "--warehouse", str(wh), str(tmp_path / "more")).returncode == 0
    for mnt, the_spec, same in ((tmp_path / "mnt3", pinned, True), (tmp_path / "mnt4", spec, False)):
        with Mount(lakemount_bin, wh, [the_spec], mnt) as m:
            root = m.mnt / "m"
            assert (epoch_listing(root) == before_ingest) == same
            if same:
                assert {p.name: p.read_bytes() for p in sorted((root / "epoch-3").iterdir())} == first
