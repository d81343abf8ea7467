"""Ray Data as another engine on a lakemount table (run by test_ray.py as
its own driver process, connected to the test's Ray cluster).

    ray_peer.py read ADDRESS WAREHOUSE OUT.json
        read_iceberg + read_lance (lance-ray), joined on content_id:
        {content_id: [uri, label, embedding]} for the current snapshot.
    ray_peer.py write ADDRESS WAREHOUSE IMAGES_DIR OUT.json
        appends the images the way the table contract says another engine
        may: blob objects by content id, Lance rows with lance-ray's
        write_lance, then one PyIceberg append. Writes {content_id: embedding}.
"""

import hashlib
import json
import sys
from datetime import datetime, timezone
from pathlib import Path

import lance
import lance_ray
import numpy as np
import pyarrow as pa
import ray
from pyiceberg.catalog.sql import SqlCatalog

TABLE = "datasets.samples"


def catalog(wh: Path):
    return SqlCatalog("lakemount", uri=f"sqlite:///{wh}/catalog.db", warehouse=f"file://{wh}/iceberg")


def catalog_kwargs(wh: Path):
    return {"name": "lakemount", "type": "sql", "uri": f"sqlite:///{wh}/catalog.db",
            "warehouse": f"file://{wh}/iceberg"}


def lance_uri(wh: Path):
    return str(wh / "lance" / f"{TABLE}.lance")


def read(wh: Path, out: Path):
    rows = ray.data.read_iceberg(table_identifier=TABLE, catalog_kwargs=catalog_kwargs(wh)).to_pandas()
    vecs = lance_ray.read_lance(lance_uri(wh), columns=["content_id", "embedding"]).to_pandas()
    first = {}
    for cid, emb in zip(vecs["content_id"], vecs["embedding"]):
        first.setdefault(cid, [float(x) for x in emb])
    joined = {r.content_id: [r.uri, r.label, first.get(r.content_id)] for r in rows.itertuples()}
    out.write_text(json.dumps(joined))


def write(wh: Path, images: Path, out: Path):
    ds = lance.dataset(lance_uri(wh))
    schema = ds.schema
    dim = schema.field("embedding").type.list_size
    rng = np.random.default_rng(1)
    lance_rows, iceberg_rows, written = [], [], {}
    now = datetime.now(timezone.utc)
    for p in sorted(images.rglob("*.png")):
        data = p.read_bytes()
        cid = hashlib.sha256(data).hexdigest()
        blob = wh / "blobs" / cid[:2] / cid
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        v = rng.normal(size=dim).astype(np.float32)
        v /= np.linalg.norm(v)
        written[cid] = [float(x) for x in v]
        lance_rows.append({"content_id": cid, "embedding": v.tolist(), "uri": blob.as_uri(),
                           "media_type": "image/png", "size_bytes": len(data), "blob": None})
        iceberg_rows.append({"content_id": cid, "uri": blob.as_uri(), "label": "peer", "split": "train",
                             "media_type": "image/png", "size_bytes": len(data), "source": "ray-data",
                             "ingested_at": now, "embedding_model": "lakemount-builtin-v1"})
    lance_ray.write_lance(ray.data.from_arrow(pa.Table.from_pylist(lance_rows, schema=schema)),
                          lance_uri(wh), schema=schema, mode="append")
    table = catalog(wh).load_table(TABLE)
    arrow_schema = table.schema().as_arrow()
    full = [{f.name: r.get(f.name) for f in arrow_schema} for r in iceberg_rows]
    table.append(pa.Table.from_pylist(full, schema=arrow_schema))
    out.write_text(json.dumps(written))


if __name__ == "__main__":
    what, address, wh = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    ray.init(address=address, logging_level="warning", log_to_driver=False)
    if what == "read":
        read(wh, Path(sys.argv[4]))
    else:
        write(wh, Path(sys.argv[4]), Path(sys.argv[5]))
