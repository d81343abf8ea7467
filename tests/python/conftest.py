"""Fixtures for the peer tests: the lakemount binary and real images."""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
from export_digits import export_digits  # noqa: E402,F401  (re-exported for the tests)


@pytest.fixture(scope="session")
def lakemount_bin() -> str:
    path = os.environ.get("LAKEMOUNT_BIN")
    if not path or not Path(path).is_file():
        raise RuntimeError("set LAKEMOUNT_BIN to the built lakemount binary (scripts/test.sh does)")
    return path


def sha256(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def run(bin_path: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([bin_path, *args], capture_output=True, text=True, check=False)
