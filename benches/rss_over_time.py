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
phase) unless --csv says otherwise. The curves (RSS against time, one line per allocator: of each
allocator the run whose final RSS is the median of its runs) are drawn as an SVG, by hand (no
plotting library), to docs/rss_over_time.svg unless --svg says otherwise (--svg '' for none).

Usage: python3 benches/rss_over_time.py [--rounds N] [--csv PATH] [--svg PATH] [--allocators A,B]
(about 5 s per run; 20 s per round with four allocators).
"""

import argparse
import csv
import os
import statistics
import subprocess
import time
from xml.sax.saxutils import escape

ALLOCATORS = ["ShardAlloc", "System", "mimalloc", "jemalloc"]
# Line colours of the SVG (ShardAlloc drawn last and thicker, on top).
COLOURS = {
    "ShardAlloc": "#d62728",
    "System": "#7f7f7f",
    "mimalloc": "#1f77b4",
    "jemalloc": "#2ca02c",
    "rusty_alloc": "#9467bd",
}
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
# The key moments of a run, in order, and the phase between each and the next: (label,
# background colour) in the SVG.
MARKS = ["start", "peak1", "free1", "quiet1", "active1", "peak2", "free2", "quiet2", "active2",
         "release"]
PHASES = [
    ("burst 1", "#fbe9d0"),
    ("free", "#f3e3c8"),
    ("idle, no calls", "#eeeeee"),
    ("light activity", "#e3eefa"),
    ("burst 2", "#fbe9d0"),
    ("free", "#f3e3c8"),
    ("idle, no calls", "#eeeeee"),
    ("light activity", "#e3eefa"),
    ("release", "#e6f4e6"),
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


def nice_step(span, target_ticks):
    """A 1/2/5 x 10^k step giving about `target_ticks` ticks over `span`."""
    raw = span / max(target_ticks, 1)
    k = 10 ** len(str(int(raw))) / 10 if raw >= 1 else 1
    for m in (1, 2, 5, 10):
        if m * k >= raw:
            return m * k
    return 10 * k


def write_svg(path, curves, title, subtitle):
    """RSS-over-time curves as an SVG: `curves` = [(allocator, samples, marks)] with samples
    [(t_ms, rss_mib, phase)] and marks {name: {"t_ms": ...}} (see MARKS).

    The allocators do not take the same time over a phase (a burst takes 0.4 s on one, 1.3 s on
    another), so the time axis is aligned by phase: each phase is drawn with its median length
    over the allocators, and every run's samples in it are stretched or squeezed to fit. Phase
    bands are then common to all curves."""
    W, H = 940, 480
    left, right, top, bottom = 70, 180, 72, 50
    pw, ph = W - left - right, H - top - bottom
    times = [[m[k]["t_ms"] for k in MARKS] for _, _, m in curves]
    lengths = [statistics.median(t[i + 1] - t[i] for t in times) for i in range(len(MARKS) - 1)]
    edges = [0.0]
    for d in lengths:
        edges.append(edges[-1] + d)

    def warp(t_ms, t):
        """Aligned time (ms) of a sample at `t_ms` of a run whose marks are at `t`."""
        if t_ms <= t[0]:
            return 0.0
        for i in range(len(t) - 1):
            if t_ms <= t[i + 1]:
                span = t[i + 1] - t[i]
                frac = (t_ms - t[i]) / span if span > 0 else 1.0
                return edges[i] + frac * lengths[i]
        return edges[-1]

    t_max = edges[-1] / 1000
    r_max = max(r for _, smp, _ in curves for _, r, _ in smp)
    y_step = nice_step(r_max, 6)
    y_top = y_step * (int(r_max / y_step) + 1)
    x_step = nice_step(t_max, 10)
    x_right = x_step * (int(t_max / x_step) + (0 if t_max % x_step == 0 else 1))

    def x(t_s):
        return left + pw * t_s / x_right

    def y(mib):
        return top + ph * (1 - mib / y_top)

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
        f'viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">',
        f'<rect width="{W}" height="{H}" fill="white"/>',
        f'<text x="{left}" y="22" font-size="15" font-weight="bold">{escape(title)}</text>',
    ]
    for i, line in enumerate(subtitle):
        out.append(f'<text x="{left}" y="{40 + 15 * i}" fill="#555">{escape(line)}</text>')
    for i, (label, colour) in enumerate(PHASES):
        x0, x1 = x(edges[i] / 1000), x(edges[i + 1] / 1000)
        out.append(f'<rect x="{x0:.1f}" y="{top}" width="{max(x1 - x0, 1):.1f}" height="{ph}" '
                   f'fill="{colour}"/>')
        if x1 - x0 > 8 * len(label):
            out.append(f'<text x="{(x0 + x1) / 2:.1f}" y="{top + 14}" text-anchor="middle" '
                       f'fill="#666" font-size="11">{escape(label)}</text>')
    # Grid and axes.
    v = 0.0
    while v <= y_top + 1e-9:
        out.append(f'<line x1="{left}" y1="{y(v):.1f}" x2="{left + pw}" y2="{y(v):.1f}" '
                   f'stroke="#ccc" stroke-width="0.5"/>')
        out.append(f'<text x="{left - 6}" y="{y(v) + 4:.1f}" text-anchor="end">{v:g}</text>')
        v += y_step
    t = 0.0
    while t <= x_right + 1e-9:
        out.append(f'<line x1="{x(t):.1f}" y1="{top + ph}" x2="{x(t):.1f}" y2="{top + ph + 5}" '
                   f'stroke="black"/>')
        out.append(f'<text x="{x(t):.1f}" y="{top + ph + 18}" text-anchor="middle">{t:g}</text>')
        t += x_step
    out.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="black"/>')
    out.append(f'<text x="{left + pw / 2}" y="{H - 10}" text-anchor="middle">time, s (phases '
               f'aligned: each drawn with its median length over the allocators)</text>')
    out.append(f'<text transform="translate(18 {top + ph / 2}) rotate(-90)" '
               f'text-anchor="middle">resident set, MiB</text>')
    # Curves, ShardAlloc last (on top), and the legend.
    for (name, smp, _), t in sorted(zip(curves, times), key=lambda c: c[0][0] == "ShardAlloc"):
        colour = COLOURS.get(name, "black")
        width = 2.2 if name == "ShardAlloc" else 1.4
        pts = " ".join(f"{x(warp(ms, t) / 1000):.1f},{y(r):.1f}" for ms, r, _ in smp)
        out.append(f'<polyline fill="none" stroke="{colour}" stroke-width="{width}" '
                   f'stroke-linejoin="round" points="{pts}"/>')
    for i, (name, _, marks) in enumerate(curves):
        ly = top + 10 + 22 * i
        colour = COLOURS.get(name, "black")
        out.append(f'<line x1="{left + pw + 14}" y1="{ly}" x2="{left + pw + 40}" y2="{ly}" '
                   f'stroke="{colour}" stroke-width="2.5"/>')
        out.append(f'<text x="{left + pw + 46}" y="{ly + 4}">{escape(name)} '
                   f'({marks["active2"]["rss_mib"]:.0f} / {marks["release"]["rss_mib"]:.0f})</text>')
    out.append(f'<text x="{left + pw + 14}" y="{top + 10 + 22 * len(curves)}" fill="#555" '
               f'font-size="11">(MiB at the end / after</text>')
    out.append(f'<text x="{left + pw + 14}" y="{top + 24 + 22 * len(curves)}" fill="#555" '
               f'font-size="11">the explicit release)</text>')
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--allocators", default=",".join(ALLOCATORS))
    parser.add_argument("--csv", default=None, help="default: <target dir>/rss_over_time.csv")
    parser.add_argument("--svg", default=None,
                        help="default: docs/rss_over_time.svg; an empty string for none")
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
                results[allocator].append((marks, release, samples))
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
            cells.append(f"{statistics.median(m[key]['rss_mib'] for m, _, _ in runs):.1f}")
        live = statistics.median(m["active2"]["live_mib"] for m, _, _ in runs)
        name = f"{allocator} ({runs[0][1]})"
        print(f"| {name} | " + " | ".join(cells) + f" | {live:.1f} |")
    print()
    print(f"Full samples: {os.path.relpath(csv_path, root)}")

    svg_path = os.path.join(root, "docs", "rss_over_time.svg") if args.svg is None else args.svg
    if svg_path:
        curves = []
        for allocator in allocators:
            # The run whose RSS at the end (after the second idle with activity) is the median.
            runs = sorted(results[allocator], key=lambda r: r[0]["active2"]["rss_mib"])
            median_run = runs[(len(runs) - 1) // 2]
            curves.append((allocator, median_run[2], median_run[0]))
        live = statistics.median(m["active2"]["live_mib"] for m, _, _ in results[allocators[0]])
        write_svg(
            svg_path, curves,
            "Resident set through burst / idle / burst / idle / explicit release",
            [f"Two threads allocate 100 MiB each per burst (blocks of 64 B-256 KiB, every page "
             f"written) and free a random 90 %; {live:.1f} MiB live at the end.",
             f"{time.strftime('%Y-%m-%d')}; of each allocator the run (of {args.rounds}) with the "
             f"median final RSS; command: python3 benches/rss_over_time.py --rounds {args.rounds}"])
        print(f"Curves: {os.path.relpath(svg_path, root)}")


if __name__ == "__main__":
    main()
