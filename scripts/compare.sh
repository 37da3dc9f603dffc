#!/usr/bin/env bash
# The comparison: shardalloc against the system allocator (glibc), mimalloc,
# jemalloc and rusty_alloc, in one run.
#  1. interleaved wall-clock medians (each allocator in its own process,
#     rotating order, ratios taken per round) — the robust figure;
#  2. callgrind instruction counts per malloc/free pair — the stable figure;
#  3. the criterion micro-benchmarks and their ratio table.
# Usage: bash scripts/compare.sh [--quick]   (--quick: fewer rounds, no criterion)
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ "${1:-}" == "--quick" ]]; then
    python3 benches/interleaved.py --rounds 3 --quick
    exit 0
fi
python3 benches/interleaved.py --rounds 5
bash benches/callgrind.sh
cargo bench -p shardalloc-bench --bench micro
python3 benches/ratios.py
