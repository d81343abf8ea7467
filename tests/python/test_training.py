"""Training-node views on a real mount: rank shards, epoch order (shuffle
and curriculum), diverse sampling, and a DDP-style run of one reader
process per rank."""

import csv
import json
import multiprocessing as mp
import os
import random
from collections import Counter
from pathlib import Path

import pytest

from conftest import export_digits, run, sha256
from test_mount import Mount


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory, lakemount_bin):
    """300 digit scans with a `quality` column, ingested once."""
    tmp = tmp_path_factory.mktemp("training")
    files = export_digits(tmp / "digits", limit=300)
    manifest = tmp / "m.csv"
    with manifest.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["path", "label", "quality"])
        w.writeheader()
        for i, (path, (label, _)) in enumerate(sorted(files.items())):
            # A few ties so the content-id tie-break matters.
            w.writerow({"path": path, "label": label, "quality": round(random.Random(i).random(), 1)})
    wh = tmp / "wh"
    res = run(lakemount_bin, "ingest", "--quiet", "--warehouse", str(wh), "--manifest", str(manifest))
    assert res.returncode == 0, res.stdout + res.stderr
    by_id = {sha256(data): label for label, data in files.values()}
    return tmp, wh, by_id


def spec(tmp: Path, name: str, body: str) -> Path:
    p = tmp / f"{name}.yaml"
    p.write_text(f"name: {name}\n{body}")
    return p


def index(root: Path) -> list[dict]:
    return [json.loads(line) for line in (root / "_index.jsonl").read_text().splitlines()]


def samples_under(root: Path) -> list[str]:
    """Relative paths of the sample files (not sidecars) under root, sorted."""
    out = []
    for dirpath, _, files in os.walk(root):
        for f in files:
            if f.endswith(".png"):
                out.append(str(Path(dirpath, f).relative_to(root)))
    return sorted(out)


def content(path: Path) -> str:
    return sha256(path.read_bytes())


def test_rank_shards_are_equal_disjoint_and_cover_the_view(warehouse, lakemount_bin):
    tmp, wh, by_id = warehouse
    plain = spec(tmp, "plain", "sidecars: []\n")
    drop = spec(tmp, "drop", "shard: {world_size: 7}\nsidecars: []\n")
    pad = spec(tmp, "pad", "shard: {world_size: 7, pad: true}\nsidecars: []\n")
    with Mount(lakemount_bin, wh, [plain, drop, pad], tmp / "mnt") as m:
        everything = {content(m.mnt / "plain" / p) for p in samples_under(m.mnt / "plain")}
        assert everything == set(by_id)
        for name, pad_on in [("drop", False), ("pad", True)]:
            root = m.mnt / name
            ranks = sorted(os.listdir(root))
            assert ranks == ["_index.jsonl", "_receipt.json"] + [f"rank-{r}" for r in range(7)]
            per_rank = [[content(root / f"rank-{r}" / p) for p in samples_under(root / f"rank-{r}")]
                        for r in range(7)]
            sizes = {len(r) for r in per_rank}
            n = len(everything)
            assert sizes == {-(-n // 7) if pad_on else n // 7}, (name, sizes)
            for r in per_rank:
                assert len(set(r)) == len(r), "a rank holds a sample twice"
            union = set().union(*map(set, per_rank))
            if pad_on:
                assert union == everything
                assert sum(map(len, per_rank)) == 7 * -(-n // 7)
            else:
                assert union <= everything and len(union) == 7 * (n // 7)
                assert sum(map(len, per_rank)) == len(union), "ranks overlap"
            # Labels spread evenly: per label, rank counts differ by at most 1
            # (pad adds at most one more).
            for label in set(by_id.values()):
                counts = [sum(by_id[c] == label for c in r) for r in per_rank]
                assert max(counts) - min(counts) <= 2, (label, counts)
            receipt = json.loads((root / "_receipt.json").read_text())
            assert receipt["shard"]["world_size"] == 7 and receipt["shard"]["pad"] == pad_on
            assert receipt["shard"]["per_rank"] == len(per_rank[0])
            lines = index(root)
            assert [(line["shard"], line["pos"]) for line in lines] == \
                [(r, p) for r in range(7) for p in range(len(per_rank[0]))]


def test_mount_rank_shows_only_its_shard(warehouse, lakemount_bin):
    tmp, wh, _ = warehouse
    s = spec(tmp, "ranked", "sidecars: []\n")
    full = {}
    for r in range(3):
        with Mount(lakemount_bin, wh, [s], tmp / "mnt", extra=["--rank", str(r), "--world-size", "3"]) as m:
            root = m.mnt / "ranked"
            assert sorted(os.listdir(root)) == ["_index.jsonl", "_receipt.json", f"rank-{r}"]
            full[r] = [content(root / p) for p in samples_under(root)]
            assert json.loads((root / "_receipt.json").read_text())["shard"]["rank"] == r
    assert len({len(v) for v in full.values()}) == 1
    assert not set(full[0]) & set(full[1]) and not set(full[1]) & set(full[2])
    # The same shards as the spec-side split.
    both = spec(tmp, "both", "shard: {world_size: 3}\nsidecars: []\n")
    with Mount(lakemount_bin, wh, [both], tmp / "mnt") as m:
        for r in range(3):
            sub = m.mnt / "both" / f"rank-{r}"
            assert [content(sub / p) for p in samples_under(sub)] == full[r]
    # A spec that says another world size is refused, naming the key.
    other = spec(tmp, "other", "shard: {world_size: 4}\n")
    res = run(lakemount_bin, "ls", "--warehouse", str(wh), str(other))
    assert res.returncode == 0
    (tmp / "mnt2").mkdir()
    res = run(lakemount_bin, "mount", "--warehouse", str(wh), "--rank", "1", "--world-size", "3",
              str(other), str(tmp / "mnt2"))
    assert res.returncode != 0 and "shard.world_size" in res.stderr and "--world-size 3" in res.stderr
    res = run(lakemount_bin, "mount", "--warehouse", str(wh), "--rank", "3", "--world-size", "3",
              str(s), str(tmp / "mnt2"))
    assert res.returncode != 0 and "--rank 3" in res.stderr


def test_shuffle_order_is_stable_and_seeded(warehouse, lakemount_bin):
    tmp, wh, by_id = warehouse
    a = spec(tmp, "shuf", "order: {shuffle: 42}\nlayout: \"{pos}-{label}{ext}\"\nsidecars: []\n")
    b = spec(tmp, "shuf2", "order: {shuffle: 43}\nlayout: \"{pos}-{label}{ext}\"\nsidecars: []\n")
    orders = []
    for _ in range(2):
        with Mount(lakemount_bin, wh, [a, b], tmp / "mnt") as m:
            names = sorted(os.listdir(m.mnt / "shuf"))[:-2]  # minus _index.jsonl, _receipt.json
            listed = [line["content_id"] for line in index(m.mnt / "shuf")]
            # A plain directory sort is the epoch order, which is the listing's.
            assert [content(m.mnt / "shuf" / n) for n in names] == listed
            assert [line["pos"] for line in index(m.mnt / "shuf")] == list(range(len(listed)))
            other = [line["content_id"] for line in index(m.mnt / "shuf2")]
            orders.append((listed, other))
    assert orders[0] == orders[1], "the same spec gave another order"
    listed, other = orders[0]
    assert sorted(listed) == sorted(other) == sorted(by_id)
    assert listed != other and listed != sorted(listed)
    # The permutation is the documented one: Fisher-Yates over content-id order, SplitMix64.
    assert listed == reference_shuffle(sorted(by_id), 42)


def reference_shuffle(items, seed):
    """specs/README.md's reference implementation of `order: {shuffle: SEED}`."""
    mask = (1 << 64) - 1
    state = seed

    def nxt():
        nonlocal state
        state = (state + 0x9E3779B97F4A7C15) & mask
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        return z ^ (z >> 31)

    out = list(items)
    for i in range(len(out) - 1, 0, -1):
        j = (nxt() * (i + 1)) >> 64
        out[i], out[j] = out[j], out[i]
    return out


def test_curriculum_order_matches_a_python_sort(warehouse, lakemount_bin):
    tmp, wh, _ = warehouse
    s = spec(tmp, "cur", "order: {by: \"quality DESC, content_id\"}\nlayout: \"{label}/{pos}{ext}\"\n")
    with Mount(lakemount_bin, wh, [s], tmp / "mnt") as m:
        root = m.mnt / "cur"
        rows = []
        for p in samples_under(root):
            meta = json.loads((root / p).with_suffix(".json").read_text())
            rows.append((meta["quality"], meta["content_id"], meta["pos"]))
        expected = sorted(rows, key=lambda r: (-r[0], r[1]))
        assert [r[2] for r in expected] == list(range(len(rows)))
        assert [line["content_id"] for line in index(root)] == [r[1] for r in expected]


def test_diverse_selection_is_deterministic(warehouse, lakemount_bin):
    tmp, wh, _ = warehouse
    s = spec(tmp, "div", "select: {diverse: {clusters: 6, per_cluster: 5, seed: 3}}\n"
                         "layout: \"{cluster}/{content_id}{ext}\"\n")
    seen = []
    for _ in range(2):
        with Mount(lakemount_bin, wh, [s], tmp / "mnt") as m:
            root = m.mnt / "div"
            clusters = sorted(d for d in os.listdir(root) if not d.startswith("_"))
            assert clusters == [str(c) for c in range(6)]
            picked = {c: sorted(samples_under(root / c)) for c in clusters}
            assert all(len(v) == 5 for v in picked.values()), picked
            ids = [p for v in picked.values() for p in v]
            assert len(set(ids)) == 30
            lines = index(root)
            assert [line["cluster"] for line in lines] == [c for c in range(6) for _ in range(5)]
            seen.append(picked)
    assert seen[0] == seen[1]
    # `lakemount pin` re-resolves and demands the identical listing.
    res = run(lakemount_bin, "pin", "--warehouse", str(wh), str(s))
    assert res.returncode == 0, res.stderr


def read_rank(root: str, out) -> None:
    """One DDP rank's epoch: every file of its shard, in directory order."""
    got = []
    for dirpath, dirs, files in os.walk(root):
        dirs.sort()
        for f in sorted(files):
            if f.endswith(".png"):
                got.append(sha256(Path(dirpath, f).read_bytes()))
    out.put((root, got))


def test_ddp_style_readers_read_every_sample_once_per_epoch(warehouse, lakemount_bin):
    tmp, wh, by_id = warehouse
    world = 4
    s = spec(tmp, "ddp", f"order: {{shuffle: 1}}\nshard: {{world_size: {world}}}\n"
                         "layout: \"{label}/{pos}{ext}\"\nsidecars: []\n")
    with Mount(lakemount_bin, wh, [s], tmp / "mnt") as m:
        for epoch in range(2):
            q = mp.get_context("fork").Queue()
            procs = [mp.get_context("fork").Process(target=read_rank, args=(str(m.mnt / "ddp" / f"rank-{r}"), q))
                     for r in range(world)]
            for p in procs:
                p.start()
            results = [q.get(timeout=60) for _ in procs]
            for p in procs:
                p.join(timeout=60)
                assert p.exitcode == 0
            counts = Counter(c for _, got in results for c in got)
            assert len({len(got) for _, got in results}) == 1, "ranks of unequal size"
            assert all(v == 1 for v in counts.values()), "a sample was read twice in one epoch"
            assert len(counts) == world * (len(by_id) // world)
