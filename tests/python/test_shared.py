"""Other engines on a shared warehouse in S3 (SeaweedFS): PyIceberg, through
the SQL catalog on PostgreSQL and through SeaweedFS's Iceberg REST catalog,
and pylance write rows that follow the table contract; lakemount mounts
them. Rows another engine deletes or relabels vanish from views at the new
snapshot and stay in views pinned to older ones.

Needs the servers of scripts/servers.py (scripts/test.sh starts them and
runs this file on its own, after the local peer tests)."""

import hashlib
import os
import subprocess
import time
import uuid
from pathlib import Path

import lance
import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pytest

from conftest import export_digits, run, sha256

ENV = ["AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "LAKEMOUNT_TEST_S3",
       "LAKEMOUNT_TEST_PG", "LAKEMOUNT_TEST_REST"]
if any(v not in os.environ for v in ENV):
    raise RuntimeError("start the shared-warehouse servers first: eval $(python scripts/servers.py start DIR)")

ENDPOINT = os.environ["AWS_ENDPOINT_URL"]
KEY, SECRET = os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"]
S3_PROPS = {"s3.endpoint": ENDPOINT, "s3.access-key-id": KEY, "s3.secret-access-key": SECRET,
            "s3.region": "us-east-1", "s3.force-virtual-addressing": False}
LANCE_OPTS = {"aws_endpoint": ENDPOINT, "aws_access_key_id": KEY, "aws_secret_access_key": SECRET,
              "aws_region": "us-east-1", "aws_allow_http": "true"}


def s3fs():
    return pafs.S3FileSystem(access_key=KEY, secret_key=SECRET, endpoint_override=ENDPOINT,
                             scheme="http", region="us-east-1", force_virtual_addressing=False)


def warehouse(kind: str):
    """(lakemount warehouse args, a PyIceberg catalog) for a fresh warehouse."""
    wid = uuid.uuid4().hex[:12]
    location = f"{os.environ['LAKEMOUNT_TEST_S3']}/py-{wid}"
    if kind == "postgres":
        pg = os.environ["LAKEMOUNT_TEST_PG"]
        db = f"py_{wid}"
        host, port = pg.rsplit("@", 1)[1].split(":")
        subprocess.run(["psql", "-h", host, "-p", port, "-U", "postgres", "-d", "postgres", "-qc",
                        f"CREATE DATABASE {db}"], check=True, env=dict(os.environ, PGPASSWORD="postgres"))
        from pyiceberg.catalog.sql import SqlCatalog
        cat = SqlCatalog("lakemount", uri=f"postgresql+psycopg2://postgres:postgres@{host}:{port}/{db}",
                         warehouse=f"{location}/iceberg", **S3_PROPS)
        return ["--warehouse", location, "--catalog", f"{pg}/{db}"], cat, "datasets.samples"
    from pyiceberg.catalog.rest import RestCatalog
    rest = os.environ["LAKEMOUNT_TEST_REST"]
    cat = RestCatalog("lakemount", uri=rest, credential=f"{KEY}:{SECRET}",
                      **{"oauth2-server-uri": f"{rest}/v1/oauth/tokens"}, **S3_PROPS)
    table = f"py{wid}.samples"
    return (["--warehouse", location, "--catalog", rest, "--catalog-option", f"credential={KEY}:{SECRET}",
             "--table", table], cat, table)


def ls(lm, args, spec) -> dict[str, int]:
    res = run(lm, "ls", *args, str(spec))
    assert res.returncode == 0, res.stderr
    return {line.split("\t")[1]: int(line.split("\t")[0]) for line in res.stdout.splitlines()}


class Mounted:
    def __init__(self, lm, args, specs, mnt: Path):
        mnt.mkdir(parents=True, exist_ok=True)
        self.mnt = mnt
        self.proc = subprocess.Popen([lm, "mount", *args, *map(str, specs), str(mnt)], stderr=subprocess.PIPE,
                                     text=True)
        deadline = time.time() + 60
        while not os.path.ismount(mnt):
            if self.proc.poll() is not None:
                raise RuntimeError(self.proc.stderr.read())
            assert time.time() < deadline, "mount not ready"
            time.sleep(0.05)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.proc.terminate()
        self.proc.wait(timeout=60)


@pytest.mark.parametrize("kind", ["postgres", "rest"])
def test_other_engines_write_and_lakemount_mounts(tmp_path, lakemount_bin, kind):
    lm = lakemount_bin
    args, catalog, table_name = warehouse(kind)
    export_digits(tmp_path / "digits", limit=30)
    res = run(lm, "ingest", "--quiet", *args, str(tmp_path / "digits"))
    assert res.returncode == 0, res.stdout + res.stderr
    table = catalog.load_table(table_name)
    first = table.current_snapshot().snapshot_id
    rows = table.scan().to_arrow()
    location = args[1]

    # Another engine: bytes into the blob store, Lance rows with pylance,
    # then Iceberg rows with PyIceberg (Lance first: its rows must exist
    # before the snapshot that lists them).
    fs = s3fs()
    new = [bytes([i]) * (300 + i) for i in range(1, 6)]
    ids = [sha256(b) for b in new]
    uris = []
    for cid, data in zip(ids, new):
        path = f"{location.removeprefix('s3://')}/blobs/{cid[:2]}/{cid}"
        with fs.open_output_stream(path) as f:
            f.write(data)
        uris.append(f"{location}/blobs/{cid[:2]}/{cid}")
    lance_uri = table.current_snapshot().summary["lakemount.lance-uri"]
    ds = lance.dataset(lance_uri, storage_options=LANCE_OPTS)
    emb = np.random.default_rng(1).standard_normal((len(new), 256)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    schema = ds.schema
    lance_rows = pa.table({
        "content_id": pa.array(ids),
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.ravel()), 256),
        "uri": pa.array(uris),
        "media_type": pa.array(["application/octet-stream"] * len(new)),
        "size_bytes": pa.array([len(b) for b in new], pa.int64()),
        "blob": pa.nulls(len(new), schema.field("blob").type),
    }).cast(schema)
    lance.write_dataset(lance_rows, lance_uri, mode="append", storage_options=LANCE_OPTS)
    template = rows.slice(0, 1).to_pylist()[0]
    extra = []
    for cid, uri, data in zip(ids, uris, new):
        r = dict(template)
        r.update(content_id=cid, uri=uri, label="external", source="pyiceberg", size_bytes=len(data),
                 media_type="application/octet-stream", embedding_model="other", chunk_sha256=None)
        extra.append(r)
    table.append(pa.Table.from_pylist(extra, schema=rows.schema))
    second = catalog.load_table(table_name).current_snapshot().snapshot_id

    spec = tmp_path / "all.yaml"
    spec.write_text("name: all\n")
    listing = ls(lm, args, spec)
    external = [p for p in listing if p.startswith("all/external/") and p.endswith(".bin")]
    assert len(external) == 5
    # The rows' Lance rows are found (the newest Lance version no later than the snapshot).
    assert all(p.replace(".bin", ".npy") in listing for p in external)
    with Mounted(lm, args, [spec], tmp_path / "mnt") as m:
        for p in external:
            data = (m.mnt / p).read_bytes()
            assert sha256(data) == Path(p).stem
        vec = np.load(m.mnt / external[0].replace(".bin", ".npy"))
        assert vec.shape == (256,)

    # The other engine deletes its rows and relabels the digit 3s.
    table = catalog.load_table(table_name)
    table.delete(delete_filter="label == 'external'")
    threes = table.scan(row_filter="label == '3'").to_arrow()
    assert threes.num_rows > 0
    relabelled = threes.set_column(threes.schema.get_field_index("label"), "label",
                                   pa.array(["three"] * threes.num_rows))
    table.overwrite(relabelled, overwrite_filter="label == '3'")
    latest = ls(lm, args, spec)
    assert not any(p.startswith("all/external/") for p in latest)
    assert not any(p.startswith("all/3/") for p in latest)
    assert sum(p.startswith("all/three/") and p.endswith(".png") for p in latest) == threes.num_rows
    # Views pinned to older snapshots still show what they showed.
    for snap, expect_external in [(second, True), (first, False)]:
        old = tmp_path / f"old{snap}.yaml"
        old.write_text(f"name: all\nsnapshot: {snap}\n")
        listing = ls(lm, args, old)
        assert any(p.startswith("all/external/") for p in listing) == expect_external
        assert sum(p.startswith("all/3/") and p.endswith(".png") for p in listing) == threes.num_rows
    res = run(lm, "check", *args, "--snapshot", str(second))
    assert res.returncode == 0, res.stdout + res.stderr
