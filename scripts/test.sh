#!/usr/bin/env bash
# The test suite: formatting, lints, Rust unit and integration tests (real
# SQLite catalog, real Lance datasets, real mounts), the Python peer tests
# (PyIceberg, pylance, numpy, PIL) against the built binary, then the Rust
# integration suite again on the three shared-warehouse backends: SeaweedFS
# S3 with the Iceberg SQL catalog on PostgreSQL, SeaweedFS S3 with its
# Iceberg REST catalog, and Azurite's Azure Blob Storage with the SQL
# catalog on PostgreSQL (servers started on free ports by
# scripts/servers.py and stopped at the end).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}
venv=${LAKEMOUNT_VENV:-.venv}

# Tests that do not apply to a backend say so here (tests/common's
# `skipped`); the list is printed at the end, so a skip never reads as a pass.
export LAKEMOUNT_SKIP_LOG
LAKEMOUNT_SKIP_LOG=$(mktemp /tmp/lakemount-skips.XXXXXX)
trap 'rm -f "$LAKEMOUNT_SKIP_LOG"' EXIT
skips() {
    echo "test.sh: $(wc -l < "$LAKEMOUNT_SKIP_LOG") Rust tests skipped on a backend they do not apply to:"
    sort "$LAKEMOUNT_SKIP_LOG" | sed 's/^/  /'
}

cargo fmt --check
cargo clippy --all-targets --quiet -- -D warnings
LAKEMOUNT_TEST_BACKEND=local cargo test
export LAKEMOUNT_BIN="$CARGO_TARGET_DIR/debug/lakemount"
"$venv/bin/python" -m pytest -q -rs tests/python --ignore=tests/python/test_shared.py \
    --ignore=tests/python/test_ray.py

servers=$(mktemp -d)
trap '"$venv/bin/python" scripts/servers.py stop "$servers"; rm -rf "$servers" "$LAKEMOUNT_SKIP_LOG"' EXIT
eval "$("$venv/bin/python" scripts/servers.py start "$servers")"
for backend in s3-postgres s3-rest azure-postgres; do
    echo "test.sh: the integration suite on $backend"
    LAKEMOUNT_TEST_BACKEND=$backend cargo test --quiet --tests
done
"$venv/bin/python" -m pytest -q -rs tests/python/test_shared.py tests/python/test_ray.py
skips
