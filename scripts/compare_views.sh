#!/usr/bin/env bash
# Compares what two lakemount binaries show for the same specs and
# warehouse: `lakemount ls`, then, mounted side by side, the tree
# (`ls -lR`) and the bytes of every generated file (_index.jsonl,
# _receipt.json, .json and .npy sidecars) and of every sample. Used to
# check that a refactoring changed nothing a user can see.
#
# Usage: scripts/compare_views.sh OLD_BIN NEW_BIN WAREHOUSE SPEC...
# Exit status 0 when identical; the first differences otherwise. Needs root
# (or fusermount3) for the mounts.
set -euo pipefail
old=$1 new=$2 wh=$3
shift 3
work=$(mktemp -d)
trap 'for m in "$work"/mnt-*; do "$new" umount --lazy "$m" >/dev/null 2>&1 || true; done; kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

status=0
"$old" ls --warehouse "$wh" "$@" >"$work/ls-old"
"$new" ls --warehouse "$wh" "$@" >"$work/ls-new"
if cmp -s "$work/ls-old" "$work/ls-new"; then
    echo "ls: identical ($(wc -l <"$work/ls-old") files)"
else
    echo "ls: DIFFERENT"; diff "$work/ls-old" "$work/ls-new" | head -20; status=1
fi

for which in old new; do
    bin=${!which}
    mkdir -p "$work/mnt-$which"
    "$bin" mount --warehouse "$wh" "$@" "$work/mnt-$which" 2>"$work/log-$which" &
    for _ in $(seq 600); do
        mountpoint -q "$work/mnt-$which" && break
        sleep 0.1
    done
    mountpoint -q "$work/mnt-$which" || { echo "$which mount failed:"; cat "$work/log-$which"; exit 2; }
done

for which in old new; do
    (cd "$work/mnt-$which" && ls -lR --time-style=+%s . >"$work/tree-$which")
    # A sample whose blob is missing reads as EIO in both: the error lines
    # are compared too.
    (cd "$work/mnt-$which" && find . -type f -print0 | sort -z | xargs -0 sha256sum >"$work/sums-$which" 2>&1 || true)
done
for what in tree sums; do
    if cmp -s "$work/$what-old" "$work/$what-new"; then
        echo "$what: identical ($(wc -l <"$work/$what-old") lines)"
    else
        echo "$what: DIFFERENT"; diff "$work/$what-old" "$work/$what-new" | head -20; status=1
    fi
done
exit $status
