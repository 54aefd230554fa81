"""Stage and end-to-end benchmarks: wall seconds, peak memory and rows per second (not a test).

    uv run --locked python benchmarks/run_all.py                      # 1,000,000 children
    uv run --locked python benchmarks/run_all.py --sizes 100000,300000,1000000 --seeds 1,2,3 --readme

For each size: generate the world (`cohort synth`, its own process), then run the whole
pipeline as one `cohort run` (its own process). Per-stage wall time and peak memory come from
the run's manifest (the flow samples the RSS of its process tree, parent plus stage process,
during each stage); the synth peak is that process's maximum resident set size (``os.wait4``),
the end-to-end peak the larger of that and the largest stage peak. ``--separate-stages`` also runs
validate, link, build and model each as its own process. The largest size is run on every world of ``--seeds`` (a figure tuned on one world can
miss on another), the smaller ones on the first: the spread over the seeds is a table of its
own, and a target is met only if every seed meets it. With several seeds each world and run
folder is deleted once measured (logs and figures are kept). Writes
``bench_out/bench_<n>_seed<s>.json``, prints
Markdown tables, and with ``--readme`` replaces the block between the ``bench:start`` /
``bench:end`` markers in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import duckdb

ROOT = Path(__file__).resolve().parents[1]
TARGETS = {  # issue targets: (wall seconds, peak GiB) at 1,000,000 children
    "synth": (60, 6),
    "report": (0, 0),
    "validate": (180, 8),
    "link": (600, 12),
    "build": (120, 8),
    "model": (300, 8),
    "end_to_end": (1200, 12),
}


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB RAM, Python {platform.python_version()}"


def run_stage(name: str, args: list[str], env: dict[str, str], log_dir: Path) -> dict[str, object]:
    """Run one `cohort` command; its own wall time and peak RSS (``os.wait4``)."""
    log = log_dir / f"{name}.log"
    t0 = time.perf_counter()
    with log.open("w") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "orchestration.cli", *args], env=env, stdout=fh, stderr=fh
        )
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        print(log.read_text()[-3000:], file=sys.stderr)
        raise SystemExit(f"stage {name} failed; log: {log}")
    # CPU time and minor page faults as well: on a loaded or memory-ballooned VM the wall time
    # moves a lot between runs, these much less (docs/benchmarks.md, generator section)
    print(
        f"  {name}: {wall:.1f} s, {usage.ru_maxrss / 2**20:.2f} GiB (user {usage.ru_utime:.1f} s,"
        f" system {usage.ru_stime:.1f} s, {usage.ru_minflt / 1e6:.2f} M minor faults)",
        flush=True,
    )
    return {
        "stage": name,
        "wall_seconds": round(wall, 1),
        "peak_gib": usage.ru_maxrss / 2**20,
        "user_seconds": round(usage.ru_utime, 1),
        "system_seconds": round(usage.ru_stime, 1),
        "minor_faults": usage.ru_minflt,
    }


def _count(db: Path, sql: str) -> int:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return int(con.execute(sql).fetchone()[0])  # type: ignore[index]
    finally:
        con.close()


def bench_size(
    n: int, out: Path, env: dict[str, str], separate: bool, seed: int = 1, clean: bool = False
) -> dict[str, object]:
    """Synth the world of ``seed``, then the whole pipeline as one `cohort run` (stage figures
    from its manifest: wall time and sampled peak RSS per stage); with ``separate``, each stage
    also as its own process on a second run folder; with ``clean``, the world and run folders
    are deleted afterwards."""
    tag = f"{n}_seed{seed}"
    data, run, e2e = out / f"world_{tag}", out / f"run_{tag}", out / f"e2e_{tag}"
    logs = out / f"logs_{tag}"
    for p in (data, run, e2e, logs):
        shutil.rmtree(p, ignore_errors=True)
    logs.mkdir(parents=True)
    print(f"{n:,} children, seed {seed}", flush=True)
    synth = run_stage(
        "synth", ["synth", "--children", str(n), "--seed", str(seed), "--out", str(data)], env, logs
    )
    whole = run_stage("end_to_end", ["run", "--data", str(data), "--out", str(e2e)], env, logs)
    manifest = json.loads((e2e / "manifest.json").read_text())
    report = json.loads((e2e / "validation" / "dq_report.json").read_text())
    records = sum(int(s["rows_read"]) for s in report.values())
    staged = sum(int(s["rows_staged"]) for s in report.values())
    cohort = _count(e2e / "analysis_zone.duckdb", "SELECT count(*) FROM cohort.children")
    person_time = _count(e2e / "analysis_zone.duckdb", "SELECT count(*) FROM cohort.person_time")
    stages = [synth]
    for stage in ("validate", "link", "build", "model", "report"):
        stages.append(
            {
                "stage": stage,
                "wall_seconds": manifest["timings_seconds"][stage],
                "peak_gib": manifest.get("peak_memory_gib", {}).get(stage, float("nan")),
                # summed PSS: the forked model workers' shared pages counted once
                "peak_pss_gib": manifest.get("peak_pss_gib", {}).get(stage, float("nan")),
            }
        )
    # `cohort run` runs each stage in a child process: the flow samples the whole process tree
    # (parent + stage process at the same moment), which wait4's per-process maximum understates
    tree_peaks = [float(v) for v in manifest.get("peak_memory_gib", {}).values()]
    whole["peak_gib"] = max([float(whole["peak_gib"]), *tree_peaks])  # type: ignore[arg-type]
    stages.append(whole)
    if separate:
        args = {
            "validate": ["validate", "--data", str(data), "--out", str(run)],
            "link": ["link", "--run", str(run)],
            "build": ["build", "--run", str(run)],
            "model": ["model", "--run", str(run)],
        }
        for stage, a in args.items():
            r = run_stage(stage, a, env, logs)
            r["stage"] = f"{stage} (own process)"
            stages.append(r)
    rows = {
        "synth": records,
        "validate": records,
        "link": staged,
        "build": staged,
        "model": person_time,
        "report": cohort,
        "end_to_end": records,
    }
    for s in stages:
        s["rows"] = rows[str(s["stage"]).split(" ")[0]]
        s["rows_per_second"] = round(int(s["rows"]) / max(float(s["wall_seconds"]), 0.1))  # type: ignore[arg-type]
    result = {
        "children": n,
        "seed": seed,
        "records": records,
        "cohort_children": cohort,
        "person_time_rows": person_time,
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d"),
        "stages": stages,
    }
    (out / f"bench_{tag}.json").write_text(json.dumps(result, indent=2) + "\n")
    for p in (data, run, e2e) if clean else (run / "tmp", e2e / "tmp"):
        shutil.rmtree(p, ignore_errors=True)
    return result


def memory_cell(s: dict[str, object]) -> str:
    """Peak GiB as summed RSS, and as summed PSS where the flow sampled it."""
    pss = float(s.get("peak_pss_gib", float("nan")))  # type: ignore[arg-type]
    rss = float(s["peak_gib"])  # type: ignore[arg-type]
    return f"{rss:.1f}" if pss != pss else f"{rss:.1f} (PSS {pss:.1f})"


def verdict(walls: list[float], runs: list[dict[str, object]], stage: str, every: str) -> str:
    """A stage's target met or not: time, and memory by summed RSS, or by PSS only (the shared
    pages of forked workers split among them) where only PSS is within it."""
    t_wall, t_mem = TARGETS[stage]
    if not t_wall:
        return ""
    rss = max(float(x["peak_gib"]) for x in runs)  # type: ignore[arg-type]
    pss = max(float(x.get("peak_pss_gib", float("nan"))) for x in runs)  # type: ignore[arg-type]
    time_ok = max(walls) <= t_wall
    if rss <= t_mem and time_ok:
        return f"{t_wall} s / {t_mem} GiB: met{every}"
    if time_ok and pss <= t_mem:
        return f"{t_wall} s / {t_mem} GiB: met{every} by PSS, not by summed RSS"
    return f"{t_wall} s / {t_mem} GiB: NOT met"


def stage_table(r: dict[str, object]) -> str:
    lines = [
        f"{int(r['children']):,} children, seed {r.get('seed', 1)} "  # type: ignore[call-overload]
        f"({int(r['records']):,} source records, "  # type: ignore[call-overload]
        f"{int(r['cohort_children']):,} in the cohort); {r['machine']}; {r['date']}.",  # type: ignore[call-overload]
        "",
        "| stage | rows | wall s | peak GiB | rows/s | target (1M) |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for s in r["stages"]:  # type: ignore[attr-defined]
        met = verdict([float(s["wall_seconds"])], [s], str(s["stage"]).split(" ")[0], "")
        lines.append(
            f"| {s['stage']} | {s['rows']:,} | {s['wall_seconds']:.0f} | {memory_cell(s)} | "
            f"{s['rows_per_second']:,} | {met if r['children'] == 1_000_000 else ''} |"
        )
    return "\n".join(lines)


def spread_table(results: list[dict[str, object]]) -> str:
    """Each stage's wall seconds and peak GiB on every seed's world of one size, the range, and
    the target met only if every seed meets it."""
    seeds = [int(r.get("seed", 1)) for r in results]  # type: ignore[call-overload]
    n = int(results[0]["children"])  # type: ignore[call-overload]
    lines = [
        f"{n:,} children on {len(seeds)} worlds (seeds {', '.join(map(str, seeds))}); "
        "wall s / peak GiB:",
        "",
        "| stage | " + " | ".join(f"seed {s}" for s in seeds) + " | range (s) | target (1M) |",
        "|---|" + "---:|" * (len(seeds) + 1) + "---|",
    ]
    for i, s in enumerate(results[0]["stages"]):  # type: ignore[attr-defined]
        runs = [r["stages"][i] for r in results]  # type: ignore[index]
        walls = [float(x["wall_seconds"]) for x in runs]
        met = verdict(walls, runs, str(s["stage"]).split(" ")[0], " on every seed")
        cells = " | ".join(f"{w:.0f} / {memory_cell(x)}" for w, x in zip(walls, runs, strict=True))
        lines.append(
            f"| {s['stage']} | {cells} | {min(walls):.0f}-{max(walls):.0f} | "
            f"{met if n == 1_000_000 else ''} |"
        )
    return "\n".join(lines)


def scaling_table(results: list[dict[str, object]]) -> str:
    sizes = [int(r["children"]) for r in results]  # type: ignore[call-overload]
    head = "| stage | " + " | ".join(f"{n:,}: s / GiB" for n in sizes)
    head += " | growth exponent (time) |"
    lines = [head, "|---|" + "---:|" * (len(sizes) + 1)]
    import math

    for i, s in enumerate(results[0]["stages"]):  # type: ignore[attr-defined]
        cells = [
            f"{r['stages'][i]['wall_seconds']:.0f} / {r['stages'][i]['peak_gib']:.1f}"  # type: ignore[index]
            for r in results
        ]
        t0 = float(results[0]["stages"][i]["wall_seconds"])  # type: ignore[index]
        t1 = float(results[-1]["stages"][i]["wall_seconds"])  # type: ignore[index]
        slope = math.log(t1 / t0) / math.log(sizes[-1] / sizes[0]) if len(sizes) > 1 else 1.0
        lines.append(f"| {s['stage']} | " + " | ".join(cells) + f" | {slope:.2f} |")
    return "\n".join(lines)


def update_readme(text: str) -> None:
    readme = ROOT / "docs" / "benchmarks.md"  # the README links there
    body = readme.read_text()
    start, end = "<!-- bench:start -->", "<!-- bench:end -->"
    if start not in body or end not in body:
        raise SystemExit(f"{readme} has no bench:start / bench:end markers")
    head, rest = body.split(start, 1)
    _, tail = rest.split(end, 1)
    readme.write_text(f"{head}{start}\n{text}\n{end}{tail}")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--sizes", default="1000000", help="comma-separated numbers of children")
    p.add_argument("--out", default="bench_out")
    p.add_argument("--readme", action="store_true", help="write the tables into docs/benchmarks.md")
    p.add_argument(
        "--separate-stages",
        action="store_true",
        help="also run validate, link, build and model each as its own process",
    )
    p.add_argument(
        "--seeds",
        default="1",
        help="comma-separated world seeds: every one at the largest size, the first at the others",
    )
    p.add_argument(
        "--from-json", action="store_true", help="only rebuild the tables from bench_out/*.json"
    )
    a = p.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.setdefault("COHORT_PSEUDONYM_SECRET", "benchmark-secret-0123456789abcdef")
    sizes = [int(s) for s in a.sizes.split(",")]
    seeds = [int(s) for s in a.seeds.split(",")]
    results, largest = [], []
    for n in sizes:
        for seed in seeds if n == sizes[-1] else seeds[:1]:
            if a.from_json:
                r = json.loads((out / f"bench_{n}_seed{seed}.json").read_text())
            else:
                r = bench_size(n, out, env, a.separate_stages, seed, clean=len(seeds) > 1)
            if seed == seeds[0]:
                results.append(r)
            if n == sizes[-1]:
                largest.append(r)
    text = stage_table(results[-1])
    if len(largest) > 1:
        text += "\n\n" + spread_table(largest)
    if len(results) > 1:
        text += "\n\nScaling (wall seconds / peak GiB; exponent b in time ~ n^b):\n\n"
        text += scaling_table(results)
    print(text)
    if a.readme:
        update_readme(text)


if __name__ == "__main__":
    main()
