#!/usr/bin/env python3
"""Before/after: runs the producer and end-to-end benchmarks of two builds in alternation (base,
new, new, base, ...: which goes first alternates) in one session, so that both see the same noisy
machine, and prints each figure's median per build and the ratio new/base. Run it with the same
build on both sides first: the spread of those ratios is what this machine's noise allows.

  bench/compare.py BASE_BUILD_DIR NEW_BUILD_DIR [--rounds N] [--sizes 16,64,256,1024]
                   [--e2e-records 64,1024|none] [--producer-runs N]

A build dir is a meson build of relayfs with benchmarks (bench/producer_bench, bench/e2e_bench,
bench/fuse_ceiling, src/fs/relayfs). Producer figures are ns/record (lower is better) and the
share of records accepted, for every record size of --sizes, 1 and 2 threads, per-CPU buffers
with rseq, the CAS path, and one shared (global) buffer, which always takes the CAS path; e2e
figures are MB/s delivered to cat and its % of the zero-work FUSE ceiling measured in the same
run (higher is better), flat out and with RELAY_BLOCKING, for every record size of
--e2e-records. This is issue 17's "no regression" check: 256 B and 1 KiB records, 2 threads,
the CAS path (global buffers) and the blocking mode, base against new in one run."""
import argparse
import re
import statistics
import subprocess
import sys

# producer_bench's configurations, each printed once per record size.
PRODUCER_ROWS = ["1 thread, per-CPU buffer", "2 threads, per-CPU buffers", "1 thread, per-CPU, CAS",
                 "2 threads, per-CPU, CAS", "2 threads, one shared buffer"]
E2E_ROWS = ["relayfs: relay_write, cat FILE", "relayfs: RELAY_BLOCKING, cat FILE"]


def run(cmd):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=900).stdout


def producer(build, sizes, runs):
    out = run([f"{build}/bench/producer_bench", "--runs", str(runs), "--sizes", sizes])
    got = {}
    for size in sizes.split(","):
        for row in PRODUCER_ROWS:
            # "<size> B <row> | ns/rec ok% ..."
            m = re.search(r"^\s*" + size + " B " + re.escape(row) + r"\s*\|\s*([\d.]+)\s+([\d.]+)%",
                          out, re.M)
            if m:
                got[f"producer {size} B {row}, ns/record"] = float(m.group(1))
                got[f"producer {size} B {row}, % accepted"] = float(m.group(2))
    return got


def e2e(build, record):
    out = run([f"{build}/bench/e2e_bench", f"{build}/src/fs/relayfs", "--ceiling",
               f"{build}/bench/fuse_ceiling", "--runs", "1", "--record", record])
    got = {}
    m = re.search(r"ceiling: zero-work FUSE file, cat\s+(\d+)", out)
    if m:
        got[f"e2e {record} B ceiling (zero-work FUSE file), MB/s"] = float(m.group(1))
    for row in E2E_ROWS:
        m = re.search(re.escape(row) + r"\s+(\d+)\s+\[[^\]]*\]\s+([\d.]+)", out)
        if m:
            got[f"e2e {record} B {row}, MB/s"] = float(m.group(1))
            got[f"e2e {record} B {row}, % of ceiling"] = float(m.group(2))
    m = re.search(re.escape(E2E_ROWS[1]) + r"\s+\S+ \[[^\]]*\]\s+\S+ \[[^\]]*\]\s+(\d+)", out)
    if m:
        got[f"e2e {record} B RELAY_BLOCKING, records lost (must be 0)"] = float(m.group(1))
    return got


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("base")
    ap.add_argument("new")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--sizes", default="16,64,256,1024", help="producer_bench record sizes")
    ap.add_argument("--e2e-records", default="64,1024",
                    help="e2e_bench record sizes; 'none': the producer rows only")
    ap.add_argument("--producer-runs", type=int, default=1,
                    help="producer_bench --runs per round (each round then takes their median)")
    a = ap.parse_args()
    samples = {"base": {}, "new": {}}
    for r in range(a.rounds):
        # ABBA: which build goes first alternates. With the same build on both sides (an A/A
        # run, 3 rounds, base always first) the second side came out slower on 33 of 40 producer
        # rows, by up to 2.4x: the order itself was a bias.
        sides = (("base", a.base), ("new", a.new))
        for side, build in sides if r % 2 == 0 else sides[::-1]:
            figs = producer(build, a.sizes, a.producer_runs)
            for record in ([] if a.e2e_records == "none" else a.e2e_records.split(",")):
                figs.update(e2e(build, record))
            for fig, v in figs.items():
                samples[side].setdefault(fig, []).append(v)
        print(f"round {r + 1}/{a.rounds} done", file=sys.stderr)
    print(f"median of {a.rounds} alternating rounds; ratio = new / base "
          "(ns/record: lower is better; MB/s, % of ceiling, % accepted: higher is better)")
    print(f"{'figure':72} {'base':>9} {'new':>9} {'ratio':>7}")
    for fig in samples["base"]:
        b = statistics.median(samples["base"][fig])
        n = statistics.median(samples["new"].get(fig, [float("nan")]))
        ratio = f"{n / b:7.2f}" if b else f"{'-':>7}"
        print(f"{fig:72} {b:9.1f} {n:9.1f} {ratio}")


if __name__ == "__main__":
    main()
