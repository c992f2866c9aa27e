#!/usr/bin/env python3
"""Process-level figures for `make bench`, per durability setting:

- fsyncs per step: `switchyard run` of a 20-step chain of an instant local model under
  `strace -f -c`, counting fsync + fdatasync calls, divided by the steps (skipped, with a note,
  when strace is not installed);
- `switchyard run` process time for a one-step local workflow: median (and min) of 30 runs
  timed around subprocess.run, on a warm data dir.

Usage: process.py PATH/TO/switchyard (a release build).
"""
import os
import statistics
import subprocess
import shutil
import sys
import tempfile
import time


def chain(n):
    y = f'name: chain{n}\nversion: "1"\nsteps:\n'
    for i in range(n):
        prev = "${input.x}" if i == 0 else "${steps.s%d.output.json.x}" % (i - 1)
        y += f'  - id: s{i}\n    model: local/echo\n    input: {{x: "{prev}"}}\n'
    return y


def run(sy, wf, data, env):
    return subprocess.run(
        [sy, "run", wf, "--input", input_file(data), "--data-dir", data],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True,
    )


def input_file(data):
    path = data.rstrip("/") + ".input.json"
    with open(path, "w") as f:
        f.write('{"x": "1"}')
    return path


def fsyncs(sy, tmp, durability, steps=20):
    wf = os.path.join(tmp, f"chain{steps}.yaml")
    with open(wf, "w") as f:
        f.write(chain(steps))
    data = tempfile.mkdtemp(dir=tmp)
    env = dict(os.environ, SWITCHYARD_DURABILITY=durability)
    run(sy, wf, data, env)  # creates the schema: not part of the figure
    out = os.path.join(tmp, "strace.txt")
    subprocess.run(
        ["strace", "-f", "-c", "-e", "trace=fsync,fdatasync", "-o", out,
         sy, "run", wf, "--input", input_file(data), "--data-dir", data],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True,
    )
    calls = 0
    for line in open(out):
        parts = line.split()
        if parts and parts[-1] in ("fsync", "fdatasync"):
            # columns: % time, seconds, usecs/call, calls, [errors], syscall
            calls += int(parts[3])
    return calls / steps


def process_ms(sy, tmp, durability, reps=30):
    wf = os.path.join(tmp, "one.yaml")
    with open(wf, "w") as f:
        f.write(chain(1))
    data = tempfile.mkdtemp(dir=tmp)
    env = dict(os.environ, SWITCHYARD_DURABILITY=durability)
    run(sy, wf, data, env)  # warm data dir
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        run(sy, wf, data, env)
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times), min(times)


def main():
    sy = sys.argv[1]
    with tempfile.TemporaryDirectory() as tmp:
        for d in ("normal", "full"):
            print(f"== durability {d}, whole process")
            if shutil.which("strace"):
                print(f"fsyncs per step (20-step chain, `switchyard run` under strace): {fsyncs(sy, tmp, d):.2f}")
            else:
                print("fsyncs per step: strace is not installed (apt-get install strace); skipped")
            med, low = process_ms(sy, tmp, d)
            print(f"`switchyard run`, one-step local workflow: {med:.1f} ms median of 30 (min {low:.1f} ms; target <= 8 ms)")


if __name__ == "__main__":
    main()
