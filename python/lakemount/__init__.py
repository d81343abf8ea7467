"""lakemount: mount Iceberg + Lance training data as plain read-only files.

The `lakemount` command is the tool; this package adds what runs inside
Python: `lakemount.ray.ingest`, an ingest on a Ray cluster (the command's
`stage` in Ray actors, one `commit` on the driver).
"""

import os
import shutil
import sysconfig


def binary():
    """Path of the `lakemount` command: $LAKEMOUNT_BIN, the one this wheel
    installed beside the interpreter, or the first on PATH."""
    explicit = os.environ.get("LAKEMOUNT_BIN")
    if explicit:
        return explicit
    beside = os.path.join(sysconfig.get_path("scripts"), "lakemount")
    if os.access(beside, os.X_OK):
        return beside
    found = shutil.which("lakemount")
    if found:
        return found
    raise FileNotFoundError(
        "no lakemount command: install the lakemount wheel on every node, or set LAKEMOUNT_BIN")
