#!/usr/bin/env bash
# The test suite: formatting, lints, Rust unit and integration tests (real
# SQLite catalog, real Lance datasets, real mounts), then the Python peer
# tests (PyIceberg, pylance, numpy, PIL) against the built binary.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}
venv=${LAKEMOUNT_VENV:-.venv}

cargo fmt --check
cargo clippy --all-targets --quiet -- -D warnings
cargo test
LAKEMOUNT_BIN="$CARGO_TARGET_DIR/debug/lakemount" "$venv/bin/python" -m pytest -q tests/python
