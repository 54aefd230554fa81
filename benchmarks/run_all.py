"""Stage benchmarks: wall seconds and peak memory per stage at a given size (not a test).

    uv run --locked python benchmarks/run_all.py [--children 1000000] [--out bench_out]

Each stage runs as its own `cohort` subprocess under /usr/bin/time-style accounting
(resource.getrusage of children), so peak RSS is per stage. Prints a markdown table and writes
bench_out/bench.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path


def run_stage(name: str, args: list[str], env: dict[str, str]) -> dict[str, object]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    r = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", *args], env=env, capture_output=True, text=True
    )
    wall = time.perf_counter() - t0
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if r.returncode != 0:
        print(r.stderr[-3000:], file=sys.stderr)
        raise SystemExit(f"stage {name} failed")
    return {
        "stage": name,
        "wall_seconds": round(wall, 1),
        "peak_gib_upper_bound": round(max(peak_kib, before) / 2**20, 2),
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--children", type=int, default=1_000_000)
    p.add_argument("--out", default="bench_out")
    a = p.parse_args()
    out = Path(a.out)
    data, run = out / f"world_{a.children}", out / f"run_{a.children}"
    env = dict(os.environ)
    env.setdefault("COHORT_PSEUDONYM_SECRET", "benchmark-secret-0123456789abcdef")
    rows = [
        run_stage(
            "synth",
            ["synth", "--children", str(a.children), "--seed", "1", "--out", str(data)],
            env,
        ),
        run_stage("validate", ["validate", "--data", str(data), "--out", str(run)], env),
        run_stage("link", ["link", "--run", str(run)], env),
        run_stage("build", ["build", "--run", str(run)], env),
        run_stage("model", ["model", "--run", str(run)], env),
    ]
    print("| stage | children | wall s | peak GiB (max so far) |\n|---|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['stage']} | {a.children:,} | {r['wall_seconds']} | {r['peak_gib_upper_bound']} |"
        )
    (out / "bench.json").write_text(json.dumps({"children": a.children, "stages": rows}, indent=2))


if __name__ == "__main__":
    main()
