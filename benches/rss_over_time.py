#!/usr/bin/env python3
"""Resident memory over time through burst / idle / burst for ShardAlloc, System, mimalloc and
jemalloc (memory-return issue, item 8), as a compact Markdown table.

Runs `benches/src/bin/rss_over_time.rs` once per allocator per round (each in its own process,
allocators in a rotating order) and prints RSS (MiB) at the key moments, medians over rounds:
start, peak of burst 1, end of the quiet idle second (no allocator calls), end of the idle second
with light activity, peak of burst 2, end (after the second idle) and after the allocator's
explicit release; "live" is what the program still holds at the end. Each burst allocates about
200 MiB in blocks of 64 B-256 KiB over two threads and frees 90 % of it; see the bin for details.

Every sample of every run goes to target/rss_over_time.csv (allocator, round, t_ms, rss_mib,
phase) unless --csv says otherwise.

Usage: python3 benches/rss_over_time.py [--rounds N] [--csv PATH] [--allocators A,B]
(about 5 s per run; 20 s per round with four allocators).
"""

import argparse
import csv
import os
import statistics
import subprocess

ALLOCATORS = ["ShardAlloc", "System", "mimalloc", "jemalloc"]
COLUMNS = [
    ("start", "start"),
    ("peak1", "peak 1"),
    ("quiet1", "idle 1 s, no calls"),
    ("active1", "+1 s light activity"),
    ("peak2", "peak 2"),
    ("quiet2", "idle 1 s, no calls"),
    ("active2", "end: +1 s activity"),
    ("release", "explicit release"),
]


def run(binary, allocator):
    """Runs the timeline once; returns (samples, marks, release label)."""
    result = subprocess.run([binary, allocator], capture_output=True, text=True, check=True)
    samples, marks, release = [], {}, "none"
    for line in result.stdout.splitlines():
        if line.startswith("# mark "):
            parts = line.split()
            fields = dict(p.split("=", 1) for p in parts[3:])
            marks[parts[2]] = {k: float(v) for k, v in fields.items()}
        elif line.startswith("# rss_over_time "):
            fields = dict(p.split("=", 1) for p in line.split()[2:] if "=" in p)
            release = fields.get("release", "none")
        elif line and line[0].isdigit():
            t, rss, phase = line.split()
            samples.append((int(t), float(rss), phase))
    if "release" not in marks:
        raise RuntimeError(f"rss_over_time {allocator}: incomplete output:\n{result.stdout}")
    return samples, marks, release


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--allocators", default=",".join(ALLOCATORS))
    parser.add_argument("--csv", default=None, help="default: <target dir>/rss_over_time.csv")
    args = parser.parse_args()
    allocators = [a for a in args.allocators.split(",") if a]

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    subprocess.run(["cargo", "build", "--quiet", "--release", "-p", "shardalloc-bench",
                    "--bin", "rss_over_time"], cwd=root, check=True)
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(root, "target"))
    binary = os.path.join(target, "release", "rss_over_time")
    csv_path = args.csv or os.path.join(target, "rss_over_time.csv")

    results = {a: [] for a in allocators}
    with open(csv_path, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["allocator", "round", "t_ms", "rss_mib", "phase"])
        for rnd in range(args.rounds):
            k = rnd % len(allocators)
            for allocator in allocators[k:] + allocators[:k]:
                samples, marks, release = run(binary, allocator)
                results[allocator].append((marks, release))
                for t, rss, phase in samples:
                    out.writerow([allocator, rnd + 1, t, rss, phase])

    rounds = f"median of {args.rounds} runs" if args.rounds > 1 else "one run"
    print(f"RSS in MiB at key moments of burst / idle / burst ({rounds} per allocator; "
          f"command: `python3 benches/rss_over_time.py"
          + (f" --rounds {args.rounds}" if args.rounds != 1 else "") + "`).")
    print()
    print("| allocator | " + " | ".join(label for _, label in COLUMNS) + " | live at end |")
    print("|---|" + "---:|" * (len(COLUMNS) + 1))
    for allocator in allocators:
        runs = results[allocator]
        cells = []
        for key, _ in COLUMNS:
            cells.append(f"{statistics.median(m[key]['rss_mib'] for m, _ in runs):.1f}")
        live = statistics.median(m["active2"]["live_mib"] for m, _ in runs)
        name = f"{allocator} ({runs[0][1]})"
        print(f"| {name} | " + " | ".join(cells) + f" | {live:.1f} |")
    print()
    print(f"Full samples: {os.path.relpath(csv_path, root)}")


if __name__ == "__main__":
    main()
