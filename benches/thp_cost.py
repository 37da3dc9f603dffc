#!/usr/bin/env python3
"""What a first touch costs on this machine: 4 KiB pages against transparent
huge pages (MADV_HUGEPAGE), on memory the process has never touched.

Each round maps SIZE MiB of anonymous memory, optionally advises it
MADV_HUGEPAGE, and writes one byte per 4 KiB page, timing the loop; the two
kinds alternate, with a pause before each (--pause, default 4 s) so that the
memory the previous run freed has gone cold again (a VM whose kernel reports
free memory to its host, `page_reporting`, hands out memory the host must back
again). Prints the median over rounds of the time per 2 MiB for each kind.

Usage: python3 benches/thp_cost.py [--size MiB] [--rounds N] [--pause S]
"""

import argparse
import mmap
import statistics
import time

PAGE = 4096
HUGE = 2 << 20


def touch(size_mib: int, huge: bool) -> float:
    """Seconds to write one byte into each 4 KiB page of a fresh mapping."""
    size = size_mib << 20
    m = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if huge:
        m.madvise(mmap.MADV_HUGEPAGE)
    start = time.perf_counter()
    for offset in range(0, size, PAGE):
        m[offset] = 1
    elapsed = time.perf_counter() - start
    m.close()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="MiB per run (default 256)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pause", type=float, default=4.0, help="seconds before each run")
    args = parser.parse_args()
    per_2mib = {"4 KiB pages": [], "MADV_HUGEPAGE": []}
    for r in range(args.rounds):
        for kind, huge in (("4 KiB pages", False), ("MADV_HUGEPAGE", True)):
            time.sleep(args.pause)
            seconds = touch(args.size, huge)
            per_2mib[kind].append(seconds * 1e3 * HUGE / (args.size << 20))
            print(f"round {r + 1}: {kind:13} {args.size} MiB in {seconds * 1e3:8.1f} ms", flush=True)
    with open("/proc/loadavg") as f:
        load = " ".join(f.read().split()[:3])
    for kind, values in per_2mib.items():
        print(f"{kind:13}: median {statistics.median(values):6.2f} ms per 2 MiB "
              f"(runs: {', '.join(f'{v:.2f}' for v in values)})")
    print(f"load average after: {load}")


if __name__ == "__main__":
    main()
