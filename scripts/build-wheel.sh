#!/usr/bin/env bash
# Builds the lakemount wheel (the binary, for `pip install` on nodes
# without a Rust toolchain) into DIR (default dist/).
#
#   scripts/build-wheel.sh [--dev] [DIR]
#
# Default: an optimised build (the release profile: as long as the first
# release build of lance takes, ~35-55 min on 2 cores from scratch).
# --dev: the debug profile, reusing the test build (what CI's wheel test
# installs; slower at run time, same behaviour).
# The wheel is tagged for this machine's glibc or newer (manylinux check
# skipped: the binary needs only libc and the kernel's FUSE device).
set -euo pipefail
cd "$(dirname "$0")/.."
profile=release
if [[ ${1:-} == --dev ]]; then
    profile=dev
    shift
fi
out=${1:-dist}
venv=${LAKEMOUNT_VENV:-.venv}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}
[[ -x $venv/bin/maturin ]] || "$venv/bin/python" -m pip install -q "maturin>=1.7,<2"
"$venv/bin/maturin" build --quiet --profile "$profile" --auditwheel skip --compatibility linux \
    --out "$out" >&2
ls -t "$out"/lakemount-*.whl | head -1
