#!/usr/bin/env python3
"""Interleaved wall-clock comparison of ShardAlloc, System, mimalloc, jemalloc and rusty_alloc.

Each round runs every (pattern, size) once per allocator, in a rotating order, each
in its own process (`benches/src/bin/pairs.rs` with PAIRS_TIME=1). Ratios are taken
within a round (so slow phases of this noisy machine hit all allocators alike) and the
table prints the median over rounds.

Usage: python3 benches/interleaved.py [--rounds N] [--quick]
"""

import argparse
import os
import statistics
import subprocess
import sys

ALLOCATORS = ["ShardAlloc", "System", "mimalloc", "jemalloc", "rusty_alloc"]
REFERENCES = ["System", "mimalloc", "jemalloc", "rusty_alloc"]


def cases(quick):
    scale = 1 if quick else 4
    out = []
    for size in [16, 64, 256, 1024, 8192, 65536]:
        iters = (500_000 if size <= 8192 else 200_000) * scale
        out.append(("pair", size, iters))
    out.append(("xthread", 64, 250_000 * scale))
    out.append(("xthread-mix", 0, 250_000 * scale))
    return out


def run(binary, allocator, pattern, size, iters):
    env = dict(os.environ, PAIRS_TIME="1")
    result = subprocess.run(
        [binary, allocator, str(max(size, 8)), str(iters), pattern],
        capture_output=True, text=True, env=env, check=True,
    )
    for line in result.stdout.splitlines():
        if line.startswith("ns_per_op "):
            return float(line.split()[1])
    raise RuntimeError(f"no timing from {allocator} {pattern} {size}: {result.stdout!r}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="fewer iterations per run")
    args = parser.parse_args()

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    subprocess.run(["cargo", "build", "--quiet", "--release", "-p", "shardalloc-bench", "--bin", "pairs"],
                   cwd=root, check=True)
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(root, "target"))
    binary = os.path.join(target, "release", "pairs")

    all_cases = cases(args.quick)
    times = {(c, a): [] for c in all_cases for a in ALLOCATORS}
    ratio_best = {c: [] for c in all_cases}
    ratio_system = {c: [] for c in all_cases}
    for r in range(args.rounds):
        print(f"round {r + 1}/{args.rounds}", file=sys.stderr, flush=True)
        for i, case in enumerate(all_cases):
            k = (r + i) % len(ALLOCATORS)
            order = ALLOCATORS[k:] + ALLOCATORS[:k]
            got = {a: run(binary, a, *case) for a in order}
            for a, t in got.items():
                times[(case, a)].append(t)
            best = min(got[ref] for ref in REFERENCES)
            ratio_best[case].append(got["ShardAlloc"] / best)
            ratio_system[case].append(got["ShardAlloc"] / got["System"])

    print(f"median ns per operation over {args.rounds} interleaved rounds "
          "(pair = malloc+free; xthread = per block, producer allocates, consumer frees)")
    header = f"  {'case':<16}" + "".join(f"{a:>12}" for a in ALLOCATORS) + f"{'/best ref':>11}{'/System':>9}"
    print(header)
    for case in all_cases:
        pattern, size, _ = case
        name = f"{pattern}_{size}" if size else pattern
        cells = "".join(f"{statistics.median(times[(case, a)]):>12.2f}" for a in ALLOCATORS)
        print(f"  {name:<16}{cells}{statistics.median(ratio_best[case]):>10.2f}x"
              f"{statistics.median(ratio_system[case]):>8.2f}x")


if __name__ == "__main__":
    main()
