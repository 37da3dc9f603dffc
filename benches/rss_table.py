#!/usr/bin/env python3
"""Resident memory after frees: ShardAlloc, System, mimalloc and jemalloc on the four cases of
the memory-return issue (item 7), as a Markdown table for docs/.

Each (allocator, case) runs in a process of its own (`benches/src/bin/rss_cases.rs`, which runs
the same case code as `tests/rss.rs`); allocators are interleaved in a rotating order, every run
is repeated (default 3x) and the table shows medians. share = (RSS - baseline) / (peak -
baseline); ideal = bytes still live / bytes allocated. Columns: the share right after the frees,
after 1 s of light allocator activity (every 10 ms a few blocks of 16 B-32 KiB allocated and
freed; no explicit call) and when it first came within ideal + 5 pp, and after the allocator's
explicit release (ShardAlloc collect(true), System malloc_trim(0), mimalloc mi_collect(true),
jemalloc tcache flush + arena.<all>.purge). The targets (ShardAlloc only): within ideal + 5 pp
after at most 1 s of activity, within ideal + 2 pp after collect(true).

Usage: python3 benches/rss_table.py [--repeat N] [--cases abcd] [--allocators A,B] [--raw]
(about 2 minutes with the defaults).
"""

import argparse
import os
import platform
import statistics
import subprocess
import sys

ALLOCATORS = ["ShardAlloc", "System", "mimalloc", "jemalloc"]
CASES = {
    "a": "5000 x 100 KiB, all freed but the last",
    "b": "50 000 x 1 KiB + 50 000 x 32 B, all freed in reverse",
    "c": "100 x 16 B + 100 x 1 MiB, every other freed",
    "d": "2 threads x 100 000 x 64-4096 B, freed by main after exit",
}
TARGET_ACTIVITY = 0.05
TARGET_RELEASE = 0.02
WINDOW_MS = 1000


def run(binary, allocator, case):
    """Runs one case in a fresh process; returns its summary fields."""
    result = subprocess.run([binary, allocator, case], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"rss_cases {allocator} {case} failed:\n{result.stdout}{result.stderr}")
    for line in result.stdout.splitlines():
        if line.startswith("@rss ") and " phase=summary " in line:
            fields = dict(f.split("=", 1) for f in line.split()[1:] if "=" in f)
            return {
                "ideal": float(fields["ideal"]),
                "after_free": float(fields["after_free"]),
                "after_activity": float(fields["after_activity"]),
                "target_ms": None if fields["target_ms"] == "none" else int(fields["target_ms"]),
                "method": fields["release_method"],
                "after_release": None if fields["after_release"] == "na"
                else float(fields["after_release"]),
                "peak_mib": int(fields["peak_delta"]) / 2**20,
            }
    raise RuntimeError(f"no summary from rss_cases {allocator} {case}:\n{result.stdout}")


def median(values):
    """Median; `None` values (never reached) count as infinitely late."""
    vals = [float("inf") if v is None else v for v in values]
    return statistics.median(vals)


def pct(x):
    return f"{100 * x:.2f} %" if abs(x) < 0.01 else f"{100 * x:.1f} %"


def when(ms):
    if ms == float("inf"):
        return "never"
    return f"{ms:.0f} ms"


def system_line():
    thp = "?"
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            thp = f.read().strip()
    except OSError:
        pass
    return f"{platform.system()} {platform.release()}, {os.cpu_count()} CPUs, THP {thp}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs per (allocator, case)")
    parser.add_argument("--cases", default="abcd")
    parser.add_argument("--allocators", default=",".join(ALLOCATORS))
    parser.add_argument("--raw", action="store_true", help="print every run's figures too")
    args = parser.parse_args()
    allocators = [a for a in args.allocators.split(",") if a]
    cases = [c for c in args.cases if c in CASES]

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    subprocess.run(["cargo", "build", "--quiet", "--release", "-p", "shardalloc-bench",
                    "--bin", "rss_cases"], cwd=root, check=True)
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(root, "target"))
    binary = os.path.join(target, "release", "rss_cases")

    runs = {(c, a): [] for c in cases for a in allocators}
    for rep in range(args.repeat):
        for ci, case in enumerate(cases):
            k = (rep + ci) % len(allocators)
            for allocator in allocators[k:] + allocators[:k]:
                r = run(binary, allocator, case)
                runs[(case, allocator)].append(r)
                if args.raw:
                    print(f"# run {rep + 1} case {case} {allocator}: {r}", file=sys.stderr)
                else:
                    print(".", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)

    print(f"Resident memory after frees, medians of {args.repeat} runs, each in its own process "
          f"({system_line()}).")
    print("share = (RSS - baseline) / (peak - baseline); ideal = share of the allocated bytes "
          "still live. Command: `python3 benches/rss_table.py"
          + (f" --repeat {args.repeat}" if args.repeat != 3 else "") + "`.")
    print()
    print("| case | allocator | ideal | after frees | after 1 s activity | within ideal + 5 pp "
          "| explicit release | after release | targets (ShardAlloc) |")
    print("|---|---|---:|---:|---:|---:|---|---:|---|")
    for case in cases:
        for i, allocator in enumerate(allocators):
            rs = runs[(case, allocator)]
            ideal = rs[0]["ideal"]
            free = median([r["after_free"] for r in rs])
            act = median([r["after_activity"] for r in rs])
            t = median([r["target_ms"] for r in rs])
            method = rs[0]["method"]
            rel = (median([r["after_release"] for r in rs])
                   if rs[0]["after_release"] is not None else None)
            verdict = ""
            if allocator == "ShardAlloc":
                ok_act = t <= WINDOW_MS
                ok_rel = rel is not None and rel <= ideal + TARGET_RELEASE
                verdict = ("pass" if ok_act else "**FAIL**") + " / " + \
                    ("pass" if ok_rel else "**FAIL**")
                if not ok_act:
                    verdict += f" (1 s: +{100 * (act - ideal - TARGET_ACTIVITY):.1f} pp over)"
                if not ok_rel and rel is not None:
                    verdict += f" (collect: +{100 * (rel - ideal - TARGET_RELEASE):.1f} pp over)"
            label = f"{case}: {CASES[case]}" if i == 0 else ""
            print(f"| {label} | {allocator} | {pct(ideal)} | {pct(free)} | {pct(act)} "
                  f"| {when(t)} | {method if rel is not None else 'n/a'} "
                  f"| {pct(rel) if rel is not None else 'n/a'} | {verdict} |")
    print()
    print("Targets column: after <= 1 s of light activity / after collect(true). "
          "Time 0 ms = already within target right after the frees. Explicit release: "
          "ShardAlloc `collect(true)`, System (glibc) `malloc_trim(0)`, mimalloc "
          "`mi_collect(true)`, jemalloc `thread.tcache.flush` + `arena.<all>.purge`; none of "
          "them is part of the targets. mimalloc is the `mimalloc` crate's default build "
          "(mimalloc v3, purge delay 1 s); jemalloc is `tikv-jemallocator` (dirty-page decay 10 s, "
          "no background thread).")


if __name__ == "__main__":
    main()
