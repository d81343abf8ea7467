"""`pip install lakemount` on a node without a Rust toolchain: the wheel
scripts/build-wheel.sh builds (the test build's binary, --dev), installed in
a fresh venv, runs and mounts."""

import os
import subprocess
import sys
import venv
from pathlib import Path

from conftest import export_digits, run, sha256
from test_mount import Mount

ROOT = Path(__file__).resolve().parents[2]


def test_wheel_installs_in_a_fresh_venv_and_mounts(tmp_path, lakemount_bin):
    res = subprocess.run([str(ROOT / "scripts" / "build-wheel.sh"), "--dev", str(tmp_path / "dist")],
                         capture_output=True, text=True, env={**os.environ, "LAKEMOUNT_VENV": str(Path(sys.prefix))})
    assert res.returncode == 0, res.stdout + res.stderr
    wheel = Path(res.stdout.strip().splitlines()[-1])
    assert wheel.name.startswith("lakemount-") and wheel.suffix == ".whl", wheel

    env_dir = tmp_path / "node-venv"
    venv.create(env_dir, with_pip=True)
    res = subprocess.run([str(env_dir / "bin" / "pip"), "install", "--no-index", "-q", str(wheel)],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    installed = env_dir / "bin" / "lakemount"
    assert installed.is_file()
    version = subprocess.run([str(installed), "--version"], capture_output=True, text=True)
    assert version.returncode == 0 and version.stdout.startswith("lakemount "), version
    # The Python package beside it: lakemount.ray finds this binary.
    found = subprocess.run([str(env_dir / "bin" / "python"), "-c",
                            "import lakemount, lakemount.ray; print(lakemount.binary())"],
                           capture_output=True, text=True, env={k: v for k, v in os.environ.items()
                                                                if k != "LAKEMOUNT_BIN"})
    assert found.returncode == 0, found.stderr
    assert Path(found.stdout.strip()).resolve() == installed.resolve(), found.stdout

    files = export_digits(tmp_path / "digits", limit=30)
    wh = tmp_path / "wh"
    res = run(str(installed), "ingest", "--quiet", "--warehouse", str(wh), str(tmp_path / "digits"))
    assert res.returncode == 0, res.stderr
    spec = tmp_path / "s.yaml"
    spec.write_text("name: s\nsidecars: []\n")
    with Mount(str(installed), wh, [spec], tmp_path / "mnt") as m:
        got = {sha256(p.read_bytes()) for p in (m.mnt / "s").rglob("*.png")}
    assert got == {sha256(d) for _, d in files.values()}
