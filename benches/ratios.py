#!/usr/bin/env python3
"""Summarise the criterion results of `benches/micro.rs`: ns per operation for each allocator,
and how ShardAlloc compares with the fastest reference allocator and with System.

Reads target/criterion/<group>/<allocator>/new/estimates.json (the median point estimate, in
ns per criterion iteration = per alloc/free pair, per ring step, or per cross-thread block;
for the xthread_cpu_* groups it is producer plus consumer CPU time rather than wall-clock)
and prints one table per group, then a one-line-per-group summary. Ratios above 1 mean
ShardAlloc is slower. Missing results are listed; the exit status is 0 regardless.

Usage: python3 benches/ratios.py [CRITERION_DIR]
       (default: $CARGO_TARGET_DIR/criterion, else <workspace>/target/criterion)
"""

import json
import os
import sys

ALLOCATORS = ["ShardAlloc", "System", "mimalloc", "jemalloc", "rusty_alloc"]
REFERENCES = ["System", "mimalloc", "jemalloc", "rusty_alloc"]
SIZES = [16, 64, 256, 1024, 8192, 65536]
EXPECTED_GROUPS = (
    [f"pair_{s}" for s in SIZES]
    + [f"ring64_{s}" for s in SIZES]
    + ["xthread_64", "xthread_mix", "xthread_cpu_64", "xthread_cpu_mix"]
)


def criterion_dir():
    if len(sys.argv) > 1:
        return sys.argv[1]
    target = os.environ.get("CARGO_TARGET_DIR")
    if not target:
        here = os.path.dirname(os.path.abspath(__file__))
        target = os.path.join(os.path.dirname(here), "target")
    return os.path.join(target, "criterion")


def read_median(root, group, alloc):
    """Median estimate (ns, low, high) or None if missing or unreadable."""
    path = os.path.join(root, group, alloc, "new", "estimates.json")
    try:
        with open(path) as f:
            med = json.load(f)["median"]
        ci = med.get("confidence_interval", {})
        return (
            float(med["point_estimate"]),
            float(ci.get("lower_bound", "nan")),
            float(ci.get("upper_bound", "nan")),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def groups_in(root):
    """Expected groups first (in a fixed order), then any other group holding our results."""
    found = []
    try:
        entries = sorted(os.listdir(root))
    except OSError:
        entries = []
    for name in entries:
        if name in EXPECTED_GROUPS:
            continue
        if any(os.path.isdir(os.path.join(root, name, a)) for a in ALLOCATORS):
            found.append(name)
    return EXPECTED_GROUPS + found


def fmt_ratio(x):
    return f"{x:.2f}x" if x is not None else "-"


def main():
    root = criterion_dir()
    print(f"criterion results: {root}")
    print("ns/op = median of criterion's samples (per pair / ring step / cross-thread block)")
    missing = []
    summary = []
    for group in groups_in(root):
        results = {a: read_median(root, group, a) for a in ALLOCATORS}
        if all(r is None for r in results.values()):
            missing.append(f"{group}/*")
            continue
        missing += [f"{group}/{a}" for a, r in results.items() if r is None]
        refs = {a: results[a][0] for a in REFERENCES if results[a] is not None}
        best_ref = min(refs, key=refs.get) if refs else None
        fastest = min(v[0] for v in results.values() if v is not None)
        print()
        print(f"== {group}")
        print(f"  {'allocator':<11} {'ns/op':>9}   {'95% CI of median':<19} {'vs fastest':>10}")
        for a in ALLOCATORS:
            r = results[a]
            if r is None:
                print(f"  {a:<11} {'missing':>9}")
                continue
            ci = f"[{r[1]:.2f}, {r[2]:.2f}]"
            print(f"  {a:<11} {r[0]:>9.2f}   {ci:<19} {r[0] / fastest:>9.2f}x")
        shard = results["ShardAlloc"]
        vs_best = vs_sys = None
        if shard is not None:
            if best_ref is not None:
                vs_best = shard[0] / refs[best_ref]
            if "System" in refs:
                vs_sys = shard[0] / refs["System"]
            print(
                f"  ShardAlloc / fastest reference ({best_ref or 'none'}): {fmt_ratio(vs_best)}"
                f"   ShardAlloc / System: {fmt_ratio(vs_sys)}"
            )
        summary.append(
            (group, shard[0] if shard else None, best_ref,
             refs.get(best_ref) if best_ref else None, vs_best, vs_sys)
        )

    if summary:
        print()
        print("== summary (ratios > 1: ShardAlloc slower)")
        print(f"  {'group':<14} {'ShardAlloc':>10} {'best ref':>18} {'/best':>7} {'/System':>8}")
        for group, shard, best, best_ns, vs_best, vs_sys in summary:
            s = f"{shard:.2f}" if shard is not None else "missing"
            b = f"{best_ns:.2f} {best}" if best is not None else "-"
            print(
                f"  {group:<14} {s:>10} {b:>18} {fmt_ratio(vs_best):>7} {fmt_ratio(vs_sys):>8}"
            )

    if missing:
        print()
        print(f"missing ({len(missing)}): " + ", ".join(missing))
    return 0


if __name__ == "__main__":
    sys.exit(main())
