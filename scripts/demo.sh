#!/usr/bin/env bash
# The main job on the embedded default: build lakemount, ingest real
# labelled images (scikit-learn's digits) into ./warehouse, list snapshots.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}
cargo build --quiet
bin="$CARGO_TARGET_DIR/debug/lakemount"
venv=${LAKEMOUNT_VENV:-.venv}

data=${LAKEMOUNT_DEMO_DATA:-scripts/out/digits}
[[ -d $data ]] || "$venv/bin/python" scripts/export_digits.py "$data"

export LAKEMOUNT_WAREHOUSE=${LAKEMOUNT_WAREHOUSE:-./warehouse}
"$bin" ingest "$data" || [[ $? -eq 3 ]]
"$bin" snapshots

mnt=${LAKEMOUNT_DEMO_MOUNT:-./mnt}
mkdir -p "$mnt"
echo
echo "mounting specs/ at $mnt (Ctrl-C to unmount). In another shell try:"
echo "  ls $mnt/digits-train; cat $mnt/digits-train/_receipt.json"
echo "  python -c \"import numpy as np, glob; print(np.load(sorted(glob.glob('$mnt/digits-train/3/*.npy'))[0])[:8])\""
exec "$bin" mount specs/ "$mnt"
