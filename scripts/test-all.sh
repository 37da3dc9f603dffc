#!/usr/bin/env bash
# Runs every test of shardalloc: unit, integration and doc tests, then the
# loom models (bounded preemption depth; LOOM_MAX_PREEMPTIONS overrides it).
# Ends with one summary line: "all: N passed, M failed".
# Usage: bash scripts/test-all.sh
set -euo pipefail
cd "$(dirname "$0")/.."

log=$(mktemp)
trap 'rm -f "$log"' EXIT

echo "== unit, integration and doc tests"
cargo test --release --workspace --exclude shardalloc-bench 2>&1 | tee -a "$log"

echo "== loom models (LOOM_MAX_PREEMPTIONS=${LOOM_MAX_PREEMPTIONS:-2})"
# A separate target directory: --cfg loom rebuilds everything, and must not
# invalidate the normal build.
LOOM_MAX_PREEMPTIONS="${LOOM_MAX_PREEMPTIONS:-2}" RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom \
    cargo test --release -p shardalloc-loom-tests --tests 2>&1 | tee -a "$log"

# `set -o pipefail` has already stopped us on any failure; sum what ran.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "all: %d passed, %d failed\n", p, f }' "$log"
