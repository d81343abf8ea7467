"""Writes a metadata-only samples table of N rows (no blobs, no Lance rows).

`lakemount ingest` of one tiny image creates the table with the contract's
schema and partitioning; PyIceberg then appends N synthetic rows to it, each
pointing at a blob-store URI that does not exist (mount-ready time, memory
and listing cost do not read blobs). Rows spread over 1,000 labels and two
splits, like an ImageFolder of a large data set.

Usage: python scripts/bench/gen_meta.py WAREHOUSE --rows 1000000 --bin PATH
"""

import argparse
import hashlib
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("warehouse", type=Path)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--bin", required=True)
    ap.add_argument("--table", default="bench.meta")
    ap.add_argument("--batch", type=int, default=250_000)
    args = ap.parse_args()

    import pyarrow as pa
    from pyiceberg.catalog.sql import SqlCatalog

    wh = args.warehouse.resolve()
    with tempfile.TemporaryDirectory() as tmp:
        seed = Path(tmp) / "seed" / "seed"
        seed.mkdir(parents=True)
        # A valid 1x1 PNG is enough to create the table.
        from PIL import Image

        Image.new("L", (1, 1)).save(seed / "seed.png")
        subprocess.run([args.bin, "ingest", "--quiet", "--warehouse", str(wh), "--table", args.table,
                        str(seed.parent)], check=True, stdout=subprocess.DEVNULL)
    cat = SqlCatalog("lakemount", uri=f"sqlite:///{wh}/catalog.db", warehouse=f"file://{wh}/iceberg")
    table = cat.load_table(args.table)
    schema = table.schema().as_arrow()
    now = datetime.now(timezone.utc)
    done = 0
    while done < args.rows:
        n = min(args.batch, args.rows - done)
        ids = [hashlib.sha256(f"sample-{i}".encode()).hexdigest() for i in range(done, done + n)]
        cols = {
            "content_id": ids,
            "uri": [f"file://{wh}/blobs/{c[:2]}/{c}" for c in ids],
            "label": [f"class{(done + i) % 1000:04d}" for i in range(n)],
            "split": ["val" if (done + i) % 10 == 0 else "train" for i in range(n)],
            "media_type": ["image/jpeg"] * n,
            "size_bytes": [100_000 + (done + i) % 5000 for i in range(n)],
            "source": [f"gen/{done + i}.jpg" for i in range(n)],
            "ingested_at": [now] * n,
            "embedding_model": ["none"] * n,
        }
        arrays = [pa.array(cols[f.name], type=f.type) if f.name in cols else pa.nulls(n, f.type) for f in schema]
        table.append(pa.Table.from_arrays(arrays, schema=schema))
        done += n
        print(f"appended {done}/{args.rows} rows", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
