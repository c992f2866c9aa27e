#!/usr/bin/env python3
"""Two builds of `make bench`'s engine bench, run in turn, their medians side by side.

    python3 tests/bench/engine_ab.py BEFORE AFTER [--rounds 10]

BEFORE and AFTER are the bench executables cargo prints (`cargo bench -p switchyard-cli
--bench engine --no-run`, `Executable benches/engine.rs (...)`), e.g. built into two target
directories or copied aside between two builds. Each round runs BEFORE then AFTER (`--bench`),
so a machine that gets busier or quieter affects both alike; the figures are those of the
`normal` durability setting: the overhead per step of 5-, 20- and 40-step chains and completed
5-step runs per second with 1 and 16 runs at once. Prints the median and the range of each over
the rounds, and the load average. A single run of the bench varies by ±30 % on this machine;
compare medians, and quote the rounds. Run it from `crates/cli` (the bench writes its data
there). Figures, not assertions.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
from pathlib import Path

LABELS = ["overhead/step 5-step ms", "20-step ms", "40-step ms", "runs/s 1", "runs/s 16"]


def figures(binary: str) -> list[float]:
    done = subprocess.run([binary, "--bench"], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{binary} --bench exited with {done.returncode}:\n{done.stderr[-2000:]}")
    out = done.stdout
    normal = out.split("== durability full")[0]
    per_step = [float(x) for x in re.findall(r"instant model\): ([0-9.]+) ms", normal)]
    rates = [float(x) for x in re.findall(r"runs/s,\s+\d+ concurrent: ([0-9.]+)", normal)]
    got = per_step + rates
    if len(got) != len(LABELS):
        raise SystemExit(f"{binary}: expected {len(LABELS)} figures, read {got}")
    return got


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("before")
    ap.add_argument("after")
    ap.add_argument("--rounds", type=int, default=10)
    args = ap.parse_args()
    runs: dict[str, list[list[float]]] = {"before": [], "after": []}
    for _ in range(args.rounds):
        runs["before"].append(figures(args.before))
        runs["after"].append(figures(args.after))
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    print(f"{args.rounds} rounds, load average {load}")
    for name, rows in runs.items():
        cols = list(zip(*rows))
        parts = [f"{label} {statistics.median(c):.3f} [{min(c):.3f}-{max(c):.3f}]"
                 for label, c in zip(LABELS, cols)]
        print(f"{name}: " + " | ".join(parts))


if __name__ == "__main__":
    main()
