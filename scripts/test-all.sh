#!/usr/bin/env bash
# Runs every test of shardalloc: unit, integration and doc tests, then the
# loom models (bounded preemption depth; LOOM_MAX_PREEMPTIONS overrides it).
# Usage: bash scripts/test-all.sh
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== unit, integration and doc tests"
cargo test --release --workspace --exclude shardalloc-bench

echo "== loom models (LOOM_MAX_PREEMPTIONS=${LOOM_MAX_PREEMPTIONS:-2})"
# A separate target directory: --cfg loom rebuilds everything, and must not
# invalidate the normal build.
LOOM_MAX_PREEMPTIONS="${LOOM_MAX_PREEMPTIONS:-2}" RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom \
    cargo test --release -p shardalloc-loom-tests
