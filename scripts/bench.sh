#!/usr/bin/env bash
# The workload suite: ShardAlloc, System (glibc), mimalloc, jemalloc and rusty_alloc, each
# installed as the #[global_allocator] of its own process, on twelve workloads (ten modelled on
# the classic allocator benchmarks, two on the patterns of issue 12); time, peak RSS and minor
# page faults, medians and ratios to mimalloc (docs/benchmarks.md).
# Usage: bash scripts/bench.sh [--full] [--secure] [other benches/suite.py options]
#   quick (default): threads 1 and 2, 5 rounds, about 3-4 minutes after the build;
#   --full: threads 1, 2, 4 and 8 (4 and 8 oversubscribed on 2 cores), 5 rounds, scale 2;
#   --secure: also the columns ShardAlloc-secure and mimalloc-secure (issue 13), separate
#   binaries built with `--features secure` into target/secure, and a section with
#   ShardAlloc-secure's time over ShardAlloc's and over mimalloc-secure's (about 40 % longer).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p shardalloc-bench --bins
for arg in "$@"; do
    case $arg in
        --secure | *-secure*)
            CARGO_TARGET_DIR=target/secure cargo build --release -p shardalloc-bench \
                --features secure --bin work_shardalloc --bin work_mimalloc
            break ;;
    esac
done
exec python3 benches/suite.py --no-build "$@"
