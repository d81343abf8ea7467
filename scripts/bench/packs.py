"""Small samples over object storage, side by side: one epoch of
torchvision-style work (PNG decode, resize to 64x64, ToTensor) with a
DataLoader of 2 workers, batch 32, shuffled, over ~100 KB PNGs kept in
SeaweedFS S3 behind a proxy adding 20 ms per request (the same proxy
program for every reader; one instance each, so each reader's requests
are counted):

- the local disk (the baseline; page cache warm);
- lakemount over a packed warehouse (`--pack`, the object-store default),
  a fresh mount, shuffled (with the auto warm-up, the default, and with
  `--no-auto-warm`); the same with `--warm` from mount time; and in
  listing (directory) order without shuffling;
- lakemount over the same samples one object each (`--pack off`), shuffled;
- MosaicML Streaming (`remote=s3://`, MDS shards, shuffled);
- rclone mount (`--vfs-cache-mode full`) of the samples as objects.

First and second epochs (samples/s) and the requests each reader made for
both, medians of --runs; plus ingest throughput with and without packing.

Needs torch, torchvision and mosaicml-streaming (never test dependencies):
Debian's python3-torch python3-torchvision, and a venv made with
--system-site-packages holding `mosaicml-streaming==0.13.0 --no-deps` and
its small dependencies (see README). Run with scripts/bench/run-packs
(starts the servers), as root.
"""

import argparse
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import Mount, find_bin, generate_images, median, read_files  # noqa: E402
from s3 import Rclone  # noqa: E402

import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402
from torchvision import datasets, transforms  # noqa: E402

HERE = Path(__file__).resolve().parents[1]
TRANSFORM = transforms.Compose([transforms.Resize((64, 64)), transforms.ToTensor()])


class CountingProxy:
    """scripts/proxy.py with its request count read back at close."""

    def __init__(self, upstream_port: int, delay_ms: float):
        self.proc = subprocess.Popen([sys.executable, str(HERE / "proxy.py"), str(upstream_port),
                                      "--delay-ms", str(delay_ms)],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.port = int(self.proc.stdout.readline())
        self.endpoint = f"http://127.0.0.1:{self.port}"

    def close(self) -> int:
        self.proc.terminate()
        _, err = self.proc.communicate(timeout=10)
        m = re.search(r"proxy: (\d+) requests", err)
        return int(m.group(1)) if m else -1


def epoch(ds, shuffle: bool, seed: int) -> float:
    loader = DataLoader(ds, batch_size=32, shuffle=shuffle, num_workers=2,
                        generator=torch.Generator().manual_seed(seed))
    start = time.perf_counter()
    n = 0
    for x, _ in loader:
        n += x.shape[0]
    return n / (time.perf_counter() - start)


def streaming_dataset(remote: str, local: Path, seed: int):
    from streaming import StreamingDataset

    class MDSImages(StreamingDataset):
        def __getitem__(self, i):
            obj = super().__getitem__(i)
            with Image.open(io.BytesIO(obj["image"])) as im:
                return TRANSFORM(im.convert("RGB")), obj["label"]

    shutil.rmtree(local, ignore_errors=True)
    ds = MDSImages(remote=remote, local=str(local), shuffle=True, shuffle_seed=seed, batch_size=32)
    # Streaming 0.13: forked DataLoader workers would share the main
    # process's boto3 connection and read each other's responses; drop it
    # before they start, as Streaming's own clean-up does.
    for stream in ds.streams:
        stream._downloader.clean_up()
    return ds


def write_mds(paths: list[Path], root: Path, out: Path) -> None:
    from streaming import MDSWriter
    classes = sorted({p.parent.name for p in paths})
    shutil.rmtree(out, ignore_errors=True)
    with MDSWriter(out=str(out), columns={"image": "bytes", "label": "int"}) as w:
        for p in paths:
            w.write({"image": p.read_bytes(), "label": classes.index(p.parent.name)})


def s3_client(endpoint: str):
    import boto3
    return boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=os.environ["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=os.environ["AWS_SECRET_ACCESS_KEY"], region_name="us-east-1")


def upload_tree(client, bucket: str, prefix: str, root: Path) -> None:
    for p in sorted(root.rglob("*")):
        if p.is_file():
            client.upload_file(str(p), bucket, f"{prefix}/{p.relative_to(root)}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=4000)
    ap.add_argument("--size-kb", type=int, default=100)
    ap.add_argument("--delay-ms", type=float, default=20)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--bin")
    ap.add_argument("--work", type=Path)
    ap.add_argument("--json", type=Path, default=Path("scripts/out/bench-packs.json"))
    args = ap.parse_args()
    for v in ("AWS_ENDPOINT_URL", "LAKEMOUNT_TEST_S3", "LAKEMOUNT_TEST_PG"):
        if v not in os.environ:
            raise SystemExit(f"{v} is not set: eval \"$(python scripts/servers.py start DIR)\" first")
    torch.set_num_threads(1)
    binary = find_bin(args.bin)
    work = args.work or Path(tempfile.mkdtemp(prefix="lakemount-bench-packs-"))
    work.mkdir(parents=True, exist_ok=True)
    data = work / "images"
    paths = sorted(generate_images(data, args.samples, args.size_kb, labels=10))
    bucket = os.environ["LAKEMOUNT_TEST_S3"].removeprefix("s3://")
    upstream = int(os.environ["AWS_ENDPOINT_URL"].rsplit(":", 1)[1])
    pg = os.environ["LAKEMOUNT_TEST_PG"]
    host, port = pg.rsplit("@", 1)[1].split(":")
    tag = f"packs-{args.samples}-{int(time.time())}"

    def warehouse(name: str) -> list[str]:
        # A database per run: a second run on the same servers must not
        # find the first run's table (it names another warehouse).
        db = f"bench_{name}_{tag}".replace("-", "_")
        subprocess.run(["psql", "-h", host, "-p", port, "-U", "postgres", "-d", "postgres", "-qc",
                        f"CREATE DATABASE {db}"], env=dict(os.environ, PGPASSWORD="postgres"), capture_output=True)
        return ["--warehouse", f"s3://{bucket}/{tag}/{name}", "--catalog", f"{pg}/{db}"]

    wh_packed, wh_plain = warehouse("packed"), warehouse("plain")
    ingest = {}
    for name, wh, extra in [("packed", wh_packed, []), ("one object each", wh_plain, ["--pack", "off"])]:
        start = time.perf_counter()
        subprocess.run([binary, "ingest", "--quiet", *extra, *wh, str(data)], check=True, stdout=subprocess.DEVNULL)
        ingest[name] = args.samples / (time.perf_counter() - start)
        print(f"ingest ({name}): {ingest[name]:.0f} samples/s", flush=True)
    client = s3_client(os.environ["AWS_ENDPOINT_URL"])
    upload_tree(client, bucket, f"{tag}/objects", data)
    write_mds(paths, data, work / "mds")
    upload_tree(client, bucket, f"{tag}/mds", work / "mds")
    spec = work / "bench.yaml"
    spec.write_text("name: bench\nsidecars: []\n")

    results: dict[str, list[tuple[float, float, int]]] = {}

    def rec(label, first, second, requests):
        results.setdefault(label, []).append((first, second, requests))

    for run in range(args.runs):
        read_files(paths, 2)
        local = datasets.ImageFolder(data, transform=TRANSFORM)
        rec("local disk", epoch(local, True, run), epoch(local, True, run), 0)
        for label, wh, extra, shuffle in [
            ("lakemount packed, shuffled", wh_packed, [], True),
            ("lakemount packed, --no-auto-warm, shuffled", wh_packed, ["--no-auto-warm"], True),
            ("lakemount packed, --warm from mount time, shuffled", wh_packed, ["--warm"], True),
            ("lakemount packed, listing order", wh_packed, [], False),
            ("lakemount one object each, shuffled", wh_plain, [], True),
        ]:
            proxy = CountingProxy(upstream, args.delay_ms)
            env = dict(os.environ, AWS_ENDPOINT_URL=proxy.endpoint)
            try:
                with Mount(binary, wh, [spec], work / "mnt", extra=extra, env=env) as m:
                    ds = datasets.ImageFolder(m.mnt / "bench", transform=TRANSFORM)
                    first = epoch(ds, shuffle, run)
                    second = epoch(ds, shuffle, run)
            finally:
                n = proxy.close()
            rec(label, first, second, n)
        proxy = CountingProxy(upstream, args.delay_ms)
        os.environ["S3_ENDPOINT_URL"] = proxy.endpoint
        try:
            ds = streaming_dataset(f"s3://{bucket}/{tag}/mds", work / "mds-cache", run)
            first = epoch(ds, False, run)  # StreamingDataset shuffles itself
            second = epoch(ds, False, run)
        finally:
            n = proxy.close()
        rec("MosaicML Streaming (MDS shards), shuffled", first, second, n)
        proxy = CountingProxy(upstream, args.delay_ms)
        try:
            rc = Rclone(proxy.endpoint, f"{bucket}/{tag}/objects", work / "rclone", work / "rclone-cache")
            try:
                ds = datasets.ImageFolder(rc.mnt, transform=TRANSFORM)
                first = epoch(ds, True, run)
                second = epoch(ds, True, run)
            finally:
                rc.close()
        finally:
            n = proxy.close()
        rec("rclone mount (full VFS cache), shuffled", first, second, n)
        print(f"run {run + 1}/{args.runs} done", flush=True)

    local1 = median([r[0] for r in results["local disk"]])
    rows = []
    print(f"\n{args.samples} x ~{args.size_kb} KB PNGs, S3 with {args.delay_ms:.0f} ms per request, "
          f"DataLoader(2 workers, batch 32), median of {args.runs} runs, torch {torch.__version__}")
    print(f"{'reader':<52} {'epoch 1':>9} {'vs local':>8} {'epoch 2':>9} {'requests':>9} {'req/MB':>7}")
    mb = args.samples * args.size_kb / 1000
    for label, vals in results.items():
        first = median([v[0] for v in vals])
        second = median([v[1] for v in vals])
        req = median([v[2] for v in vals])
        rows.append({"reader": label, "epoch1": round(first), "vs_local": round(first / local1, 2),
                     "epoch2": round(second), "requests_two_epochs": req,
                     "requests_per_mb": round(req / mb, 3)})
        print(f"{label:<52} {first:9.0f} {first / local1:7.2f}x {second:9.0f} {req:9.0f} {req / mb:7.3f}")
    for name, v in ingest.items():
        print(f"ingest ({name}): {v:.0f} samples/s")
    out = {"samples": args.samples, "size_kb": args.size_kb, "delay_ms": args.delay_ms, "runs": args.runs,
           "rows": rows, "ingest_samples_per_s": ingest}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=2) + "\n")
    print(f"(json: {args.json})")


if __name__ == "__main__":
    main()
