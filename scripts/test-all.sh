#!/usr/bin/env bash
# Runs every test of shardalloc: unit, integration and doc tests (twice: the
# default build and the `secure` feature), then the loom models, also in both
# builds (bounded preemption depth; LOOM_MAX_PREEMPTIONS overrides it).
# Ends with one summary line: "all: N passed, M failed".
# Usage: bash scripts/test-all.sh
set -euo pipefail
cd "$(dirname "$0")/.."

log=$(mktemp)
trap 'rm -f "$log"' EXIT

echo "== unit, integration and doc tests"
cargo test --release --workspace --exclude shardalloc-bench 2>&1 | tee -a "$log"

echo "== the same suite in secure mode (--features secure: docs/security.md)"
# Its own target directory, so the two builds do not invalidate each other.
CARGO_TARGET_DIR=target/secure cargo test --release -p shardalloc --features secure 2>&1 | tee -a "$log"

echo "== loom models (LOOM_MAX_PREEMPTIONS=${LOOM_MAX_PREEMPTIONS:-2})"
# A separate target directory: --cfg loom rebuilds everything, and must not
# invalidate the normal build.
LOOM_MAX_PREEMPTIONS="${LOOM_MAX_PREEMPTIONS:-2}" RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom \
    cargo test --release -p shardalloc-loom-tests --tests 2>&1 | tee -a "$log"

echo "== loom models in secure mode (the links on thread_free and delayed lists are encoded)"
LOOM_MAX_PREEMPTIONS="${LOOM_MAX_PREEMPTIONS:-2}" RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom-secure \
    cargo test --release -p shardalloc-loom-tests --features shardalloc/secure --tests 2>&1 | tee -a "$log"

echo "== Miri (optional): the single-threaded core over the test OS backend"
if cargo +nightly miri --version >/dev/null 2>&1; then
    MIRIFLAGS="-Zmiri-strict-provenance" cargo +nightly miri test -p shardalloc --lib -- \
        size_class:: page::tests::extension page::tests::local_frees segment::tests::pointer \
        heap::tests::blocks_of_every_class heap::tests::exhausted 2>&1 | tee -a "$log"
else
    echo "skipping Miri: no nightly toolchain with the miri component" \
        "(rustup component add --toolchain nightly miri)"
fi

# `set -o pipefail` has already stopped us on any failure; sum what ran.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "all: %d passed, %d failed\n", p, f }' "$log"
