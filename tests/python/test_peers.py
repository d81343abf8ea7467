"""Real peers read what lakemount wrote: PyIceberg's SqlCatalog and pylance."""

from pathlib import Path

import lance
import numpy as np
import pyarrow as pa
from pyiceberg.catalog.sql import SqlCatalog

from conftest import export_digits, run, sha256
from test_mount import Mount


def catalog(wh: Path) -> SqlCatalog:
    # The catalog name is part of the contract: rows are keyed by it.
    return SqlCatalog("lakemount", uri=f"sqlite:///{wh}/catalog.db", warehouse=f"file://{wh}/iceberg")


def expected_first_label(files: dict[str, tuple[str, bytes]]) -> dict[str, str]:
    """content id -> label of the first file (in path order) with those bytes."""
    out: dict[str, str] = {}
    for path in sorted(files):
        label, data = files[path]
        out.setdefault(sha256(data), label)
    return out


def test_pyiceberg_and_pylance_read_a_real_digits_ingest(tmp_path, lakemount_bin):
    files = export_digits(tmp_path / "digits")
    assert len(files) == 1797
    wh = tmp_path / "wh"
    res = run(lakemount_bin, "ingest", "--quiet", "--warehouse", str(wh), str(tmp_path / "digits"))
    assert res.returncode == 0, res.stdout + res.stderr
    expected = expected_first_label(files)
    assert f"added {len(expected)} samples" in res.stdout
    assert f"skipped {len(files) - len(expected)} duplicates" in res.stdout

    table = catalog(wh).load_table("datasets.samples")
    rows = table.scan().to_arrow()
    assert rows.num_rows == len(expected)
    got = dict(zip(rows["content_id"].to_pylist(), rows["label"].to_pylist()))
    assert got == expected
    assert set(rows["media_type"].to_pylist()) == {"image/png"}
    assert rows.schema.field("ingested_at").type == pa.timestamp("us", tz="UTC")

    snap = table.current_snapshot()
    lance_version = int(snap.summary["lakemount.lance-version"])
    lance_uri = snap.summary["lakemount.lance-uri"]
    ds = lance.dataset(lance_uri)
    assert ds.version == lance_version

    # A filter pushed through PyIceberg selects the same rows as a filter on the full scan.
    train = table.scan(row_filter="split == 'train'").to_arrow()
    assert train.num_rows == rows["split"].to_pylist().count("train")
    assert 0.7 < train.num_rows / rows.num_rows < 0.9

    # pylance: take rows; embeddings are unit-norm float32 of the right dimension, and
    # the pointers lead to the original bytes.
    by_id = {sha256(data): data for _, data in files.values()}
    sample = ds.take(list(range(0, ds.count_rows(), 97)), columns=["content_id", "embedding", "uri", "size_bytes"])
    emb = np.stack(sample["embedding"].to_numpy(zero_copy_only=False)).astype(np.float32)
    assert emb.shape[1] == 256
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-4)
    for cid, uri, size in zip(sample["content_id"].to_pylist(), sample["uri"].to_pylist(), sample["size_bytes"].to_pylist()):
        data = Path(uri.removeprefix("file://")).read_bytes()
        assert sha256(data) == cid
        assert data == by_id[cid]
        assert size == len(data)

    # Same-digit images are closer than different digits, on average (real data, honest encoder).
    full = ds.to_table(columns=["content_id", "embedding"])
    vecs = np.stack(full["embedding"].to_numpy(zero_copy_only=False))
    labels = np.array([expected[c] for c in full["content_id"].to_pylist()])
    sims = vecs @ vecs.T
    same = sims[labels[:, None] == labels[None, :]].mean()
    diff = sims[labels[:, None] != labels[None, :]].mean()
    assert same > diff


def test_pylance_take_blobs_returns_inline_bytes(tmp_path, lakemount_bin):
    files = export_digits(tmp_path / "digits", limit=40)
    wh = tmp_path / "wh"
    res = run(lakemount_bin, "ingest", "--quiet", "--inline-blobs", "--table", "media.inline",
              "--warehouse", str(wh), str(tmp_path / "digits"))
    assert res.returncode == 0, res.stdout + res.stderr
    table = catalog(wh).load_table("media.inline")
    ds = lance.dataset(table.current_snapshot().summary["lakemount.lance-uri"])
    n = ds.count_rows()
    ids = ds.take(list(range(n)), columns=["content_id"])["content_id"].to_pylist()
    blobs = ds.take_blobs("blob", indices=list(range(n)))
    by_id = {sha256(data): data for _, data in files.values()}
    assert len(blobs) == n == len(by_id)
    for cid, blob in zip(ids, blobs):
        with blob as f:
            data = f.read()
        assert sha256(data) == cid
        assert data == by_id[cid]


def test_pyiceberg_appends_on_top_and_lakemount_keeps_going(tmp_path, lakemount_bin):
    files = export_digits(tmp_path / "digits", limit=20)
    wh = tmp_path / "wh"
    assert run(lakemount_bin, "ingest", "--quiet", "--warehouse", str(wh), str(tmp_path / "digits")).returncode == 0
    table = catalog(wh).load_table("datasets.samples")
    before = table.scan().to_arrow()

    # Another engine appends a row that follows the documented contract.
    row = before.slice(0, 1).to_pylist()[0]
    row.update(content_id="f" * 64, uri="file:///elsewhere/x.png", label="external", source="pyiceberg")
    table.append(pa.Table.from_pylist([row], schema=before.schema))

    listing = run(lakemount_bin, "snapshots", "--warehouse", str(wh))
    assert listing.returncode == 0, listing.stderr
    lines = listing.stdout.strip().splitlines()
    assert len(lines) == 3
    assert lines[1].split()[-1] == "-"  # the PyIceberg snapshot records no Lance version
    assert lines[2].split()[-1] == "1"

    # lakemount ingests on top of the foreign snapshot and sees its rows as published.
    more = export_digits(tmp_path / "more", limit=25)
    res = run(lakemount_bin, "ingest", "--quiet", "--warehouse", str(wh), str(tmp_path / "more"))
    assert res.returncode == 0, res.stdout + res.stderr
    new = set(expected_first_label(more)) - set(expected_first_label(files))
    assert f"added {len(new)} samples" in res.stdout, res.stdout
    assert len(new) > 0
    after = catalog(wh).load_table("datasets.samples").scan().to_arrow()
    ids = after["content_id"].to_pylist()
    assert len(ids) == len(set(ids))
    assert "f" * 64 in ids
    assert len(ids) == before.num_rows + 1 + len(new)


def test_pyiceberg_rows_with_plain_uris_mount_beside_packed_ones(tmp_path, lakemount_bin):
    """A packed table (`--pack on`) that another engine appends to with
    plain object URIs: both kinds of rows mount and read back; a reader
    that follows the contract (`#offset=&length=`) gets the same bytes."""
    export_digits(tmp_path / "digits", limit=30)
    wh = tmp_path / "wh"
    res = run(lakemount_bin, "ingest", "--quiet", "--pack", "on", "--warehouse", str(wh), str(tmp_path / "digits"))
    assert res.returncode == 0, res.stdout + res.stderr
    table = catalog(wh).load_table("datasets.samples")
    before = table.scan().to_arrow()
    uris = before["uri"].to_pylist()
    assert all("#offset=" in u for u in uris), uris[:3]
    # The contract, read by hand: bytes O..O+N of the pack object.
    for uri, cid in zip(uris[:5], before["content_id"].to_pylist()[:5]):
        obj, frag = uri.split("#")
        fields = dict(kv.split("=") for kv in frag.split("&"))
        with open(obj.removeprefix("file://"), "rb") as f:
            f.seek(int(fields["offset"]))
            assert sha256(f.read(int(fields["length"]))) == cid
    # Another engine writes a blob object of its own and appends its row.
    data = (tmp_path / "external.png")
    from PIL import Image
    Image.new("RGB", (9, 9), (200, 10, 30)).save(data)
    payload = data.read_bytes()
    cid = sha256(payload)
    blob = wh / "blobs" / cid[:2] / cid
    blob.parent.mkdir(parents=True, exist_ok=True)
    blob.write_bytes(payload)
    row = before.slice(0, 1).to_pylist()[0]
    row.update(content_id=cid, uri=blob.as_uri(), label="external", source="pyiceberg",
               size_bytes=len(payload), chunk_sha256=None)
    table.append(pa.Table.from_pylist([row], schema=before.schema))
    spec = tmp_path / "all.yaml"
    spec.write_text("name: all\nsidecars: []\n")
    with Mount(lakemount_bin, wh, [spec], tmp_path / "mnt") as m:
        files = sorted((m.mnt / "all").rglob("*.png"))
        assert len(files) == len(uris) + 1
        for p in files:
            assert sha256(p.read_bytes()) == p.stem
        assert (m.mnt / "all" / "external" / f"{cid}.png").read_bytes() == payload
