#!/usr/bin/env bash
# The comparison: criterion micro-benchmarks of shardalloc, the system
# allocator (glibc), mimalloc and jemalloc in one run, then the ratio table.
# Usage: bash scripts/compare.sh [criterion filter]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo bench -p shardalloc-bench --bench micro -- "$@"
python3 benches/ratios.py
