#!/usr/bin/env bash
# Instructions per malloc/free pair of ShardAlloc, System (glibc), mimalloc, jemalloc and
# rusty_alloc, counted by valgrind's callgrind (deterministic, unlike wall-clock time on a
# noisy box).
#
# For each allocator and size it runs the `pairs` binary (benches/src/bin/pairs.rs, the same
# code `cargo bench --bench micro` times) twice, with N1 and N2 iterations, and prints
# (Ir(N2) - Ir(N1)) / (N2 - N1): start-up, first-use initialisation and the warm-up of the
# first N1 iterations cancel out.
#
# Usage: benches/callgrind.sh
# Environment (all optional):
#   SIZES="16 256 8192"   ALLOCATORS="ShardAlloc System mimalloc jemalloc rusty_alloc"
#   (also ShardAlloc-secure and mimalloc-secure: the `secure` feature of shardalloc-bench,
#   built into target/secure)
#   PATTERNS="pair ring"  N1=10000  N2=110000
set -euo pipefail

cd "$(dirname "$0")/.."

if ! command -v valgrind >/dev/null 2>&1; then
    echo "callgrind.sh: valgrind not found; skipping instruction counts."
    exit 0
fi

SIZES=${SIZES:-"16 256 8192"}
ALLOCATORS=${ALLOCATORS:-"ShardAlloc System mimalloc jemalloc rusty_alloc"}
PATTERNS=${PATTERNS:-"pair ring"}
N1=${N1:-10000}
N2=${N2:-110000}

cargo build --quiet --release -p shardalloc-bench --bin pairs
target_dir=${CARGO_TARGET_DIR:-target}
bin_plain="$target_dir/release/pairs"
bin_secure="target/secure/release/pairs"
case " $ALLOCATORS " in
    *-secure*) CARGO_TARGET_DIR=target/secure cargo build --quiet --release -p shardalloc-bench \
        --features secure --bin pairs ;;
esac

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# Total instructions (Ir) of one run: `instructions <allocator> <size> <iters> <pattern>`.
instructions() {
    local out="$tmp/callgrind.out"
    local bin=$bin_plain
    case $1 in
        *-secure) bin=$bin_secure; set -- "${1%-secure}" "${@:2}" ;;
    esac
    if ! valgrind --tool=callgrind --callgrind-out-file="$out" \
        "$bin" "$@" >"$tmp/log" 2>&1; then
        echo "callgrind.sh: run failed: $bin $*" >&2
        cat "$tmp/log" >&2
        return 1
    fi
    awk '/^summary:/ { print $2; found = 1 } END { if (!found) exit 1 }' "$out"
}

echo "instructions per operation (Ir(N2=$N2) - Ir(N1=$N1)) / (N2 - N1); valgrind $(valgrind --version)"
for pattern in $PATTERNS; do
    case $pattern in
        pair) what="alloc+free pair" ;;
        ring) what="ring-64 step (alloc new, free oldest)" ;;
        *) what=$pattern ;;
    esac
    echo
    echo "== $pattern: $what"
    printf '  %-8s' "size"
    for a in $ALLOCATORS; do printf ' %11s' "$a"; done
    echo
    for size in $SIZES; do
        printf '  %-8s' "$size"
        for a in $ALLOCATORS; do
            if lo=$(instructions "$a" "$size" "$N1" "$pattern") &&
                hi=$(instructions "$a" "$size" "$N2" "$pattern"); then
                per=$(awk -v lo="$lo" -v hi="$hi" -v n1="$N1" -v n2="$N2" \
                    'BEGIN { printf "%.1f", (hi - lo) / (n2 - n1) }')
                printf ' %11s' "$per"
            else
                printf ' %11s' "failed"
            fi
        done
        echo
    done
done
