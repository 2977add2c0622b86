#!/usr/bin/env python3
"""Before/after: runs the producer and end-to-end benchmarks of two builds in alternation (base,
new, base, new, ...) in one session, so that both see the same noisy machine, and prints each
figure's median per build and the ratio new/base.

  bench/compare.py BASE_BUILD_DIR NEW_BUILD_DIR [--rounds N]

A build dir is a meson build of relayfs with benchmarks (bench/producer_bench, bench/e2e_bench,
bench/fuse_ceiling, src/fs/relayfs). Producer figures are ns/record (lower is better); e2e
figures are MB/s delivered to cat and its % of the zero-work FUSE ceiling measured in the same
run (higher is better)."""
import argparse
import re
import statistics
import subprocess
import sys

PRODUCER_ROWS = ["16 B 1 thread, per-CPU buffer", "64 B 1 thread, per-CPU buffer",
                 "64 B 2 threads, per-CPU buffers", "64 B 1 thread, per-CPU, CAS",
                 "64 B 2 threads, one shared buffer"]
E2E_ROWS = ["relayfs: relay_write, cat FILE", "relayfs: RELAY_BLOCKING, cat FILE"]


def run(cmd):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=900).stdout


def producer(build):
    out = run([f"{build}/bench/producer_bench", "--runs", "1", "--sizes", "16,64"])
    got = {}
    for row in PRODUCER_ROWS:
        m = re.search(re.escape(row) + r"\s*\|\s*([\d.]+)", out)
        if m:
            got[f"producer {row}, ns/record"] = float(m.group(1))
    return got


def e2e(build):
    out = run([f"{build}/bench/e2e_bench", f"{build}/src/fs/relayfs", "--ceiling",
               f"{build}/bench/fuse_ceiling", "--runs", "1"])
    got = {}
    m = re.search(r"ceiling: zero-work FUSE file, cat\s+(\d+)", out)
    if m:
        got["e2e ceiling (zero-work FUSE file), MB/s"] = float(m.group(1))
    for row in E2E_ROWS:
        m = re.search(re.escape(row) + r"\s+(\d+)\s+\[[^\]]*\]\s+([\d.]+)", out)
        if m:
            got[f"e2e {row}, MB/s"] = float(m.group(1))
            got[f"e2e {row}, % of ceiling"] = float(m.group(2))
    return got


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("base")
    ap.add_argument("new")
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    samples = {"base": {}, "new": {}}
    for r in range(a.rounds):
        for side, build in (("base", a.base), ("new", a.new)):
            for fig, v in {**producer(build), **e2e(build)}.items():
                samples[side].setdefault(fig, []).append(v)
        print(f"round {r + 1}/{a.rounds} done", file=sys.stderr)
    print(f"median of {a.rounds} alternating rounds; ratio = new / base")
    print(f"{'figure':62} {'base':>9} {'new':>9} {'ratio':>7}")
    for fig in samples["base"]:
        b = statistics.median(samples["base"][fig])
        n = statistics.median(samples["new"].get(fig, [float("nan")]))
        print(f"{fig:62} {b:9.1f} {n:9.1f} {n / b:7.2f}")


if __name__ == "__main__":
    main()
