#!/usr/bin/env python3
"""Pools several runs of the workload suite (`benches/suite.py --json FILE`, as written by
`bash scripts/bench.sh ... --json FILE`) into one estimate of one allocator's time over
another's: every round of every run, the median per case of the per-round ratios, and their
geomean over the cases that are not oversubscribed -- the suite's own figure, over more
rounds. A bootstrap over the rounds (each case's ratios resampled with replacement) gives the
spread of that geomean.

One run of the suite moves by a few per cent from the next on these 2-core machines; a
target such as issue 13's (ShardAlloc-secure within 1.10x ShardAlloc) is judged on runs
pooled this way, not on one run.

Usage: python3 benches/pooled.py [--of A] [--over B] [--target X] FILE.json [FILE.json ...]
(defaults: ShardAlloc-secure over ShardAlloc, target 1.10).
"""

import argparse
import json
import math
import random
import statistics
import sys

from suite import geomean


def ratios(files, of, over):
    """{(workload, threads): [ratio per round, over all files]} for cases not oversubscribed."""
    pooled = {}
    for path in files:
        with open(path) as f:
            runs = json.load(f)["runs"]
        by_key = {(r["workload"], r["threads"], r["allocator"], r["round"]): r for r in runs}
        for (w, t, a, rnd), r in by_key.items():
            if a != of or r.get("os_threads", 0) > r.get("cpus", 0) or "secs" not in r:
                continue
            base = by_key.get((w, t, over, rnd))
            if base is None or base.get("secs", 0) <= 0:
                continue
            pooled.setdefault((w, t), []).append(r["secs"] / base["secs"])
    return pooled


def estimate(pooled):
    return geomean([statistics.median(v) for v in pooled.values()])


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--of", default="ShardAlloc-secure")
    p.add_argument("--over", default="ShardAlloc")
    p.add_argument("--target", type=float, default=1.10)
    p.add_argument("--resamples", type=int, default=2000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("files", nargs="+")
    args = p.parse_args()
    pooled = ratios(args.files, args.of, args.over)
    if not pooled:
        sys.exit(f"pooled.py: no rounds with both {args.of} and {args.over} in {args.files}")
    for path in args.files:
        one = ratios([path], args.of, args.over)
        print(f"{path}: {estimate(one):.3f} ({len(one)} cases)")
    rng = random.Random(args.seed)
    samples = sorted(
        estimate({k: [rng.choice(v) for _ in v] for k, v in pooled.items()})
        for _ in range(args.resamples)
    )
    low = samples[int(0.025 * len(samples))]
    high = samples[int(0.975 * len(samples)) - 1]
    above = sum(s > args.target for s in samples) / len(samples)
    rounds = min(len(v) for v in pooled.values())
    print(f"pooled {args.of} / {args.over}: {estimate(pooled):.3f} over {len(pooled)} cases, "
          f"{rounds}+ rounds each; 95 % of {args.resamples} resamples {low:.3f}-{high:.3f}; "
          f"above {args.target:.2f} in {100 * above:.0f} %")
    print()
    print("| workload | t | median ratio | rounds |")
    print("|---|---:|---:|---:|")
    for (w, t), v in sorted(pooled.items(), key=lambda kv: -statistics.median(kv[1])):
        print(f"| {w} | {t} | {statistics.median(v):.3f} | {len(v)} |")


if __name__ == "__main__":
    main()
