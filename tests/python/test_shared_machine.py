"""A node shared with hostile users: the runtime directory another user
prepared, a daemon's private log and status socket, a spec directory that
is deleted and made again (or given a FIFO) under a running mount, and a
catalog database that dies in the middle of an ingest.

Needs root: it creates two users for the duration of a test (and removes
them), relaxes /dev/fuse only while a test runs a mount as one of them, and
starts a PostgreSQL of its own."""

import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import export_digits, run
from test_hot_specs import wait_for
from test_mount import Mount

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import servers  # noqa: E402


@pytest.fixture
def users():
    """Two throwaway users: (victim, attacker) as pwd entries."""
    names = [f"lmv{os.getpid() % 10000}", f"lma{os.getpid() % 10000}"]
    for n in names:
        subprocess.run(["userdel", n], capture_output=True)
        subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", n], check=True)
    try:
        yield [pwd.getpwnam(n) for n in names]
    finally:
        for n in names:
            subprocess.run(["userdel", n], capture_output=True)


@pytest.fixture
def shared_tmp():
    """A directory every user can reach (pytest's tmp_path is root's own)."""
    d = Path(tempfile.mkdtemp(prefix="lm-shared-"))
    os.chmod(d, 0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def user_bin(shared_tmp, lakemount_bin):
    """The binary at a path the test users can reach: the build's target
    directory may sit under a directory private to root (a hard link when
    on the same file system, else a copy)."""
    path = shared_tmp / "bin" / "lakemount"
    path.parent.mkdir(mode=0o755)
    try:
        os.link(lakemount_bin, path)
    except OSError:
        shutil.copy2(lakemount_bin, path)
    return str(path)


def as_user(user, *cmd, env_extra=None, timeout=60):
    env = {k: v for k, v in os.environ.items() if k not in ("XDG_RUNTIME_DIR", "LAKEMOUNT_RUNTIME_DIR")}
    env["HOME"] = "/tmp"
    env.update(env_extra or {})
    return subprocess.run(list(cmd), user=user.pw_uid, group=user.pw_gid, extra_groups=[], env=env,
                          capture_output=True, text=True, timeout=timeout, cwd="/")


def test_a_runtime_directory_another_user_made_is_refused(users, shared_tmp, user_bin):
    victim, attacker = users
    rt = Path(f"/tmp/lakemount-{victim.pw_uid}")
    shutil.rmtree(rt, ignore_errors=True)
    mnt = shared_tmp / "mnt"
    mnt.mkdir()
    os.chown(mnt, victim.pw_uid, victim.pw_gid)
    spec = shared_tmp / "s.yaml"
    spec.write_text("name: s\n")
    try:
        # The attacker takes the name first, open to all.
        res = as_user(attacker, "mkdir", "-m", "0777", str(rt))
        assert res.returncode == 0, res.stderr
        res = as_user(victim, user_bin, "mount", "--daemon", "--warehouse", str(shared_tmp / "wh"),
                      str(spec), str(mnt))
        assert res.returncode == 4, res.stdout + res.stderr
        assert f"belongs to uid {attacker.pw_uid}" in res.stderr, res.stderr
        assert not os.path.ismount(mnt)
        # `status` does not trust whatever answers there either.
        res = as_user(victim, user_bin, "status", str(mnt))
        assert res.returncode == 4 and f"belongs to uid {attacker.pw_uid}" in res.stderr, res.stderr
        # Even private (0700), a directory of another user's is refused.
        os.chmod(rt, 0o700)
        res = as_user(victim, user_bin, "mount", "--daemon", "--warehouse", str(shared_tmp / "wh"),
                      str(spec), str(mnt))
        assert res.returncode == 4 and "not to you" in res.stderr, res.stderr
        # The victim's own directory, open to others, is refused too, with what to do.
        shutil.rmtree(rt)
        res = as_user(victim, "mkdir", "-m", "0755", str(rt))
        assert res.returncode == 0
        res = as_user(victim, user_bin, "status", str(mnt))
        assert res.returncode == 4 and "chmod 700" in res.stderr, res.stderr
    finally:
        shutil.rmtree(rt, ignore_errors=True)


def test_a_users_daemon_keeps_its_log_and_socket_private(users, shared_tmp, user_bin):
    victim, attacker = users
    export_digits(shared_tmp / "digits", limit=20)
    wh = shared_tmp / "wh"
    res = run(user_bin, "ingest", "--quiet", "--warehouse", str(wh), str(shared_tmp / "digits"))
    assert res.returncode == 0, res.stderr
    subprocess.run(["chown", "-R", f"{victim.pw_uid}:{victim.pw_gid}", str(wh)], check=True)
    subprocess.run(["chmod", "-R", "a+rX", str(shared_tmp)], check=True)
    spec = shared_tmp / "s.yaml"
    spec.write_text("name: s\nsidecars: []\n")
    mnt = shared_tmp / "mnt"
    mnt.mkdir()
    os.chown(mnt, victim.pw_uid, victim.pw_gid)
    rt = Path(f"/tmp/lakemount-{victim.pw_uid}")
    shutil.rmtree(rt, ignore_errors=True)
    fuse_mode = os.stat("/dev/fuse").st_mode & 0o777
    os.chmod("/dev/fuse", 0o666)
    try:
        res = as_user(victim, user_bin, "mount", "--daemon", "--warehouse", str(wh), str(spec), str(mnt))
        assert res.returncode == 0, res.stdout + res.stderr
        daemon_pid = int(re.search(r"daemon pid (\d+)", res.stdout + res.stderr).group(1))
        st = os.lstat(rt)
        assert st.st_uid == victim.pw_uid and st.st_mode & 0o777 == 0o700, oct(st.st_mode)
        logs = list(rt.glob("*.log"))
        assert len(logs) == 1 and logs[0].stat().st_mode & 0o777 == 0o600
        assert logs[0].stat().st_uid == victim.pw_uid
        # The victim asks its own mount; the attacker can reach neither the log nor the socket.
        res = as_user(victim, user_bin, "status", "--json", str(mnt))
        assert res.returncode == 0, res.stderr
        assert as_user(attacker, "cat", str(logs[0])).returncode != 0
        res = as_user(attacker, user_bin, "status", str(mnt),
                      env_extra={"LAKEMOUNT_RUNTIME_DIR": str(rt)})
        assert res.returncode != 0
        res = as_user(victim, user_bin, "umount", str(mnt))
        assert res.returncode == 0, res.stderr
        # Unmounted by its user (through fusermount3), the daemon exits.
        deadline = time.monotonic() + 10
        while Path(f"/proc/{daemon_pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not Path(f"/proc/{daemon_pid}").exists(), "the daemon outlived its mount"
        assert not os.path.ismount(mnt)
    finally:
        os.chmod("/dev/fuse", fuse_mode)
        if os.path.ismount(mnt):
            run(user_bin, "umount", "--lazy", str(mnt))
        shutil.rmtree(rt, ignore_errors=True)


def test_root_daemon_log_is_private(tmp_path, lakemount_bin):
    export_digits(tmp_path / "digits", limit=10)
    wh = tmp_path / "wh"
    assert run(lakemount_bin, "ingest", "--quiet", "--warehouse", str(wh), str(tmp_path / "digits")).returncode == 0
    spec = tmp_path / "s.yaml"
    spec.write_text("name: s\n")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    rt = tmp_path / "rt"
    env = dict(os.environ, LAKEMOUNT_RUNTIME_DIR=str(rt))
    res = subprocess.run([lakemount_bin, "mount", "--daemon", "--warehouse", str(wh), str(spec), str(mnt)],
                         env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    try:
        assert rt.stat().st_mode & 0o777 == 0o700
        (log,) = rt.glob("*.log")
        assert log.stat().st_mode & 0o777 == 0o600
        assert len(list(rt.glob("*.sock"))) == 1
        assert subprocess.run([lakemount_bin, "status", str(mnt)], env=env).returncode == 0
    finally:
        subprocess.run([lakemount_bin, "umount", str(mnt)], env=env)


def test_a_spec_directory_deleted_and_made_again_is_watched_again(tmp_path, lakemount_bin):
    export_digits(tmp_path / "digits", limit=30)
    wh = tmp_path / "wh"
    assert run(lakemount_bin, "ingest", "--quiet", "--warehouse", str(wh), str(tmp_path / "digits")).returncode == 0
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "a.yaml").write_text("name: a\nlimit: 3\n")
    m = Mount(lakemount_bin, wh, [specs], tmp_path / "mnt")
    with m:
        assert os.listdir(m.mnt) == ["a"]
        shutil.rmtree(specs)
        wait_for(lambda: os.listdir(m.mnt) == [], 3.0)
        specs.mkdir()
        (specs / "b.yaml").write_text("name: b\nlimit: 4\n")
        wait_for(lambda: os.listdir(m.mnt) == ["b"], 3.0)
        # A FIFO dropped in the directory: an error in the log, and later
        # changes are still applied (the watcher does not hang on it).
        os.mkfifo(specs / "f.yaml")
        (specs / "c.yaml").write_text("name: c\nlimit: 2\n")
        wait_for(lambda: sorted(os.listdir(m.mnt)) == ["b", "c"], 3.0)
        # Replaced by a rename, as editors and config managers do.
        tmp = tmp_path / "specs.new"
        tmp.mkdir()
        (tmp / "d.yaml").write_text("name: d\nlimit: 1\n")
        shutil.rmtree(specs)
        tmp.rename(specs)
        wait_for(lambda: os.listdir(m.mnt) == ["d"], 3.0)
    log = m.proc.stderr.read()
    assert "f.yaml" in log and "not a regular file (a FIFO)" in log, log
    assert "was removed" in log and "watching it again" in log, log


def test_a_catalog_database_that_dies_mid_ingest_is_named_within_seconds(lakemount_bin):
    work = Path(tempfile.mkdtemp(prefix="lm-pg-"))
    os.chmod(work, 0o755)
    try:
        pg = servers.start_postgres(work)
        subprocess.run(["psql", pg + "/postgres", "-qc", "CREATE DATABASE ing"], check=True,
                       capture_output=True)
        export_digits(work / "digits")
        wh = work / "wh"
        proc = subprocess.Popen([lakemount_bin, "ingest", "--quiet", "--batch-size", "20",
                                 "--warehouse", str(wh), "--catalog", pg + "/ing", str(work / "digits")],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # Let it publish a few batches, then kill the server hard.
        deadline = time.time() + 60
        while not list((wh / "iceberg").rglob("*.avro")) and time.time() < deadline:
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.05)
        time.sleep(0.5)
        pid = int((work / "pg" / "postmaster.pid").read_text().split()[0])
        os.kill(pid, signal.SIGKILL)
        killed = time.time()
        out, err = proc.communicate(timeout=60)
        took = time.time() - killed
        assert proc.returncode == 6, out + err  # storage
        assert took < 15, f"{took:.1f} s to notice: {err}"
        port = (work / "pg.port").read_text()
        assert f"postgres://postgres:***@127.0.0.1:{port}/ing" in err, err
        assert "stopped answering" in err, err
        assert "postgres:postgres@" not in err
    finally:
        subprocess.run(["pkill", "-9", "-f", f"postgres -D {work}"], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
