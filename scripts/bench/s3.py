"""Reading a shared warehouse over the network: lakemount against `rclone
mount` and direct object reads, on SeaweedFS over loopback, with and
without a per-request delay (scripts/proxy.py in front of the S3 port, the
same one for every client: this kernel has no netem).

For each delay (0 and --delay-ms) and each reader count (1, 2, 8 threads),
in listing order (sorted paths, as ImageFolder reads) and in a random
order, files/s of:
- lakemount, first touch (a fresh mount) and second epoch;
- rclone mount (--vfs-cache-mode full --use-server-modtime) of the same
  blob objects, first touch and second epoch;
- reading the same objects directly with pyarrow's S3 filesystem (one GET
  each, no FUSE).
With `--stores s3,azure` the same images are also ingested into Azurite
(Azure Blob Storage) and lakemount reads them through the same proxy in
front of Azurite's port: the second store family beside the first (rclone
and direct GETs run against S3 only; `--lakemount-only` skips them).
Each figure is a median of --runs runs. Prints a table and writes JSON.

Run with scripts/bench/run-s3 (installs rclone, builds the release binary,
starts the servers). Needs root (FUSE mounts).
"""

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import Mount, find_bin, generate_images, median, read_files, report, run_threads  # noqa: E402

HERE = Path(__file__).resolve().parents[1]


class Proxy:
    def __init__(self, upstream_port: int, delay_ms: float):
        self.proc = subprocess.Popen([sys.executable, str(HERE / "proxy.py"), str(upstream_port),
                                      "--delay-ms", str(delay_ms)], stdout=subprocess.PIPE, text=True)
        self.port = int(self.proc.stdout.readline())
        self.endpoint = f"http://127.0.0.1:{self.port}"

    def close(self):
        self.proc.terminate()
        self.proc.wait(timeout=10)


class Rclone:
    def __init__(self, endpoint: str, remote: str, mnt: Path, cache: Path, extra=(), keep_cache=False):
        mnt.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, RCLONE_CONFIG_LM_TYPE="s3", RCLONE_CONFIG_LM_PROVIDER="Other",
                   RCLONE_CONFIG_LM_ENDPOINT=endpoint,
                   RCLONE_CONFIG_LM_ACCESS_KEY_ID=os.environ["AWS_ACCESS_KEY_ID"],
                   RCLONE_CONFIG_LM_SECRET_ACCESS_KEY=os.environ["AWS_SECRET_ACCESS_KEY"])
        env.pop("AWS_CA_BUNDLE", None)  # rclone 1.60 fails to start with it set
        if not keep_cache:
            shutil.rmtree(cache, ignore_errors=True)
        self.proc = subprocess.Popen(["rclone", "mount", f"lm:{remote}", str(mnt), "--vfs-cache-mode", "full",
                                      "--use-server-modtime", "--cache-dir", str(cache), "--read-only", *extra],
                                     env=env, stderr=subprocess.PIPE, text=True)
        while not os.path.ismount(mnt):
            if self.proc.poll() is not None:
                raise RuntimeError(f"rclone mount failed: {self.proc.stderr.read()}")
            time.sleep(0.05)
        self.mnt = mnt

    def close(self):
        subprocess.run(["fusermount3", "-u", str(self.mnt)], check=False)
        self.proc.terminate()
        self.proc.wait(timeout=30)


def direct_reads(endpoint: str, keys: list[str], threads: int, seed) -> float:
    import pyarrow.fs as pafs
    fs = pafs.S3FileSystem(access_key=os.environ["AWS_ACCESS_KEY_ID"], secret_key=os.environ["AWS_SECRET_ACCESS_KEY"],
                           endpoint_override=endpoint, scheme="http", region="us-east-1",
                           force_virtual_addressing=False)
    order = list(keys)
    if seed is not None:
        random.Random(seed).shuffle(order)
    parts = [order[i::threads] for i in range(threads)]

    def work(part):
        for k in part:
            with fs.open_input_stream(k) as f:
                f.read()

    return len(keys) / run_threads(work, parts)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument("--size-kb", type=int, default=100)
    ap.add_argument("--delay-ms", type=float, default=20)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", default="1,2,8")
    ap.add_argument("--prefetch", type=int, help="lakemount --prefetch (default: its default)")
    ap.add_argument("--delays", help="comma-separated delays in ms to run (default: 0 and --delay-ms)")
    ap.add_argument("--stores", default="s3", help="comma-separated: s3, azure (Azurite)")
    ap.add_argument("--lakemount-only", action="store_true", help="skip rclone and direct GETs")
    ap.add_argument("--bin")
    ap.add_argument("--work", type=Path)
    ap.add_argument("--json", type=Path, default=Path("scripts/out/bench-s3.json"))
    args = ap.parse_args()
    for v in ("AWS_ENDPOINT_URL", "LAKEMOUNT_TEST_S3", "LAKEMOUNT_TEST_PG", "AZURE_STORAGE_ENDPOINT"):
        if v not in os.environ:
            raise SystemExit(f"{v} is not set: eval \"$(python scripts/servers.py start DIR)\" first")
    binary = find_bin(args.bin)
    work = args.work or Path(tempfile.mkdtemp(prefix="lakemount-bench-s3-"))
    work.mkdir(parents=True, exist_ok=True)
    data = work / "images"
    paths = generate_images(data, args.samples, args.size_kb, labels=10)
    bucket = os.environ["LAKEMOUNT_TEST_S3"].removeprefix("s3://")
    prefix = f"bench-{args.samples}"
    pg = os.environ["LAKEMOUNT_TEST_PG"]
    db = f"bench_{args.samples}"
    host, port = pg.rsplit("@", 1)[1].split(":")
    subprocess.run(["psql", "-h", host, "-p", port, "-U", "postgres", "-d", "postgres", "-qc",
                    f"CREATE DATABASE {db}"], env=dict(os.environ, PGPASSWORD="postgres"), capture_output=True)
    stores = args.stores.split(",")
    wh_args, upstream = {}, {}
    for store in stores:
        if store == "s3":
            url, endpoint_var = f"s3://{bucket}/{prefix}", "AWS_ENDPOINT_URL"
        elif store == "azure":
            url, endpoint_var = f"{os.environ['LAKEMOUNT_TEST_AZURE']}/{prefix}", "AZURE_STORAGE_ENDPOINT"
        else:
            raise SystemExit(f"--stores: {store}? expected s3 or azure")
        db_store = f"{db}_{store}"
        subprocess.run(["psql", "-h", host, "-p", port, "-U", "postgres", "-d", "postgres", "-qc",
                        f"CREATE DATABASE {db_store}"], env=dict(os.environ, PGPASSWORD="postgres"),
                       capture_output=True)
        wh_args[store] = ["--warehouse", url, "--catalog", f"{pg}/{db_store}"]
        upstream[store] = (endpoint_var, os.environ[endpoint_var])
        print(f"ingesting {args.samples} images into {url} ...", flush=True)
        subprocess.run([binary, "ingest", "--quiet", *wh_args[store], str(data)], check=True,
                       stdout=subprocess.DEVNULL)
    spec = work / "bench.yaml"
    spec.write_text("name: bench\nsidecars: []\n")
    import hashlib
    keys = sorted(f"{bucket}/{prefix}/blobs/{h[:2]}/{h}" for h in
                  (hashlib.sha256(p.read_bytes()).hexdigest() for p in paths))
    threads = [int(t) for t in args.threads.split(",")]
    results: dict[tuple, list[float]] = {}

    def rec(*key_value):
        *key, value = key_value
        results.setdefault(tuple(key), []).append(value)

    def through(endpoint: str, proxy) -> str:
        """The endpoint URL with the proxy's port in place of the server's."""
        from urllib.parse import urlsplit, urlunsplit
        u = urlsplit(endpoint)
        return urlunsplit(u._replace(netloc=f"127.0.0.1:{proxy.endpoint.rsplit(':', 1)[1]}"))

    for run in range(args.runs):
        delays = [float(d) for d in args.delays.split(",")] if args.delays else [0.0, args.delay_ms]
        for delay in delays:
            for store in stores:
                var, endpoint = upstream[store]
                proxy = Proxy(int(endpoint.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)[1]), delay)
                env_ep = through(endpoint, proxy)
                name = "lakemount" if store == "s3" else f"lakemount on {store}"
                try:
                    for n in threads:
                        for order in ("listing", "random"):
                            seed = None if order == "listing" else run
                            env = dict(os.environ, **{var: env_ep})
                            extra = ["--prefetch", str(args.prefetch)] if args.prefetch is not None else []
                            with Mount(binary, wh_args[store], [spec], work / "mnt", extra=extra, env=env) as m:
                                view = sorted((m.mnt / "bench").rglob("*.png"))
                                rec(delay, n, order, f"{name} first touch", read_files(view, n, seed=seed))
                                rec(delay, n, order, f"{name} second epoch", read_files(view, n, seed=seed))
                            if store == "s3" and not args.lakemount_only:
                                rc = Rclone(env_ep, f"{bucket}/{prefix}/blobs", work / "rclone", work / "rclone-cache")
                                try:
                                    files = sorted(p for p in rc.mnt.rglob("*") if p.is_file())
                                    rec(delay, n, order, "rclone first touch", read_files(files, n, seed=seed))
                                    rec(delay, n, order, "rclone second epoch", read_files(files, n, seed=seed))
                                finally:
                                    rc.close()
                                rec(delay, n, order, "direct GETs (pyarrow S3)", direct_reads(env_ep, keys, n, seed))
                            print(f"run {run + 1}: {store}, delay {delay} ms, {n} readers, {order} order done",
                                  flush=True)
                finally:
                    proxy.close()

    rows = []
    for (delay, n, order, what), vals in sorted(results.items()):
        rows.append({"delay_ms": delay, "readers": n, "order": order, "path": what,
                     "files_per_s": round(median(vals))})
    out = {"samples": args.samples, "size_kb": args.size_kb, "runs": args.runs, "rows": rows}
    report(f"{args.samples} files of ~{args.size_kb} KB from {' and '.join(stores)} over loopback, "
           f"medians of {args.runs}", rows,
           None)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=2) + "\n")
    print(f"(json: {args.json})")


if __name__ == "__main__":
    main()
