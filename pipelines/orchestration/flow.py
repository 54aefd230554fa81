"""The whole study as one parent Prefect flow, one subflow per stage, resumable.

A stage is skipped when its marker records the same input fingerprint (the chain of upstream
fingerprints plus the stage's own settings); otherwise it and every later stage rerun. Markers
are written only after a stage's outputs are complete, so a killed run resumes at the stage it
was in.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact

from pipelines.orchestration.manifest import (
    code_version,
    input_hashes,
    lock_hash,
    output_hashes,
    package_versions,
    write_manifest,
)
from pipelines.orchestration.report import build_report
from pipelines.orchestration.resources import PeakMemory, process_peak_gib, release_memory
from pipelines.orchestration.settings import RunSettings, load_run_settings
from pipelines.orchestration.state import (
    STAGES,
    RunLock,
    clear_markers_from,
    read_marker,
    sha256_file,
    sha256_text,
    write_marker,
)
from pipelines.run_layout import RunLayout

log = logging.getLogger(__name__)


@task(name="report")
def report_task(run_dir: str) -> str:
    return str(build_report(RunLayout.at(run_dir)))


def _stage_functions(
    data_dir: str,
    run_dir: str,
    config_path: str | None,
    demo: bool,
    secret_block: str | None,
    isolate: bool,
    settings: RunSettings,
) -> dict[str, Callable[[], Any]]:
    from models.flow import model_flow
    from pipelines.cohort.flow import build_flow
    from pipelines.linkage.flow import link_flow
    from pipelines.validation.flow import validate_flow

    linkage = settings.linkage
    if secret_block:
        linkage = linkage.model_copy(update={"prefect_secret_block": secret_block})
    memory = settings.build.duckdb_memory_limit
    return {
        "validate": lambda: validate_flow(
            data_dir, run_dir, settings=settings.validation, isolate=isolate
        ),
        "link": lambda: link_flow(run_dir, settings=linkage, demo=demo, isolate=isolate),
        "build": lambda: build_flow(run_dir, config_path, isolate=isolate, memory_limit=memory),
        "model": lambda: model_flow(run_dir, settings=settings.model, isolate=isolate),
        "report": lambda: {"report": report_task(run_dir)},
    }


def _fingerprints(data_dir: Path, config_path: str | None, settings: RunSettings) -> dict[str, str]:
    """Per stage, a hash of everything it depends on (chained through earlier stages): the
    inputs and code, the study config from `build` on, and each stage's own settings."""
    from pipelines.cohort.config import config_to_yaml, load_study_config

    inputs = json.dumps(input_hashes(data_dir), sort_keys=True)
    cfg = config_to_yaml(load_study_config(config_path))
    version = code_version()
    code = version["git_commit"] + version.get("diff_sha256", "") + lock_hash()
    fp: dict[str, str] = {}
    prev = sha256_text(inputs + code)
    for stage, own in (
        ("validate", settings.stage_yaml("validation")),
        # where the key comes from does not change results
        ("link", settings.stage_yaml("linkage", exclude={"prefect_secret_block"})),
        ("build", cfg + settings.stage_yaml("build")),
        ("model", settings.stage_yaml("model")),
        ("report", ""),
    ):
        prev = sha256_text(prev + stage + own)
        fp[stage] = prev
    return fp


@flow(name="cohort-study", log_prints=False)
def study_flow(
    data_dir: str,
    run_dir: str,
    config_path: str | None = None,
    demo: bool = False,
    secret_block: str | None = None,
    isolate_stages: bool = True,
    settings_path: str | None = None,
) -> dict[str, Any]:
    """Validate, link, build, model and report, resuming from the last completed stage.

    The pseudonymisation key comes from ``COHORT_PSEUDONYM_SECRET``, or from the Prefect
    Secret block named ``secret_block`` (a deployment parameter). With ``isolate_stages``
    (the default) each stage's work runs in its own child process, so memory one stage leaves
    behind does not add to the next one's peak; peaks are measured over the process tree.
    ``settings_path``: a run-settings YAML (:mod:`pipelines.orchestration.settings`)."""
    layout = RunLayout.at(run_dir).ensure()
    data = Path(data_dir)
    settings = load_run_settings(settings_path)
    with RunLock(layout.root):
        fingerprints = _fingerprints(data, config_path, settings)
        stages = _stage_functions(
            str(data), str(layout.root), config_path, demo, secret_block, isolate_stages, settings
        )
        previous = json.loads(layout.manifest.read_text()) if layout.manifest.exists() else {}
        timings: dict[str, float] = dict(previous.get("timings_seconds", {}))
        counts: dict[str, Any] = dict(previous.get("row_counts", {}))
        peak_memory: dict[str, float] = dict(previous.get("peak_memory_gib", {}))
        ran: list[str] = []
        for stage in STAGES:
            marker = read_marker(layout.root, stage)
            if marker and marker.get("fingerprint") == fingerprints[stage]:
                log.info("stage %s: already complete, skipped", stage)
                continue
            clear_markers_from(layout.root, stage)
            log.info("stage %s: running", stage)
            t0 = time.perf_counter()
            release_memory()
            with PeakMemory() as mem:
                result = stages[stage]()
            timings[stage] = round(time.perf_counter() - t0, 2)
            peak_memory[stage] = mem.peak_gib
            counts[stage] = result
            write_marker(layout.root, stage, {"fingerprint": fingerprints[stage], "stage": stage})
            ran.append(stage)
        manifest = _manifest(layout, data, config_path, demo, counts, timings)
        manifest["run_settings"] = settings.to_yaml()
        manifest["seeds"] = {
            "linkage_u_sampling": settings.linkage.seed,
            "model_cv_and_bootstrap": settings.model.cv_seed,
        }
        manifest["run_settings_path"] = (
            str(Path(settings_path).resolve()) if settings_path else None
        )
        manifest["peak_memory_gib"] = peak_memory
        manifest["process_peak_memory_gib"] = process_peak_gib()
        manifest["stage_process_peak_memory_gib"] = process_peak_gib(resource.RUSAGE_CHILDREN)
        write_manifest(layout, manifest)
        create_markdown_artifact(
            key="run-summary",
            markdown="| stage | seconds | peak GiB |\n|---|---:|---:|\n"
            + "\n".join(f"| {k} | {v} | {peak_memory.get(k, '')} |" for k, v in timings.items()),
            description="stage timings",
        )
    return {"ran": ran, "report": str(layout.report), "manifest": str(layout.manifest)}


def _manifest(
    layout: RunLayout,
    data: Path,
    config_path: str | None,
    demo: bool,
    counts: dict[str, Any],
    timings: dict[str, float],
) -> dict[str, Any]:
    from pipelines.cohort.config import config_to_yaml, load_study_config

    delivery = data / "delivery.json"
    return {
        "data_dir": str(data.resolve()),
        "input_hashes": input_hashes(data),
        "delivery_metadata": json.loads(delivery.read_text()) if delivery.exists() else None,
        "study_config": config_to_yaml(load_study_config(config_path)),
        "study_config_path": str(Path(config_path).resolve()) if config_path else None,
        "demo_secret": demo and not os.environ.get("COHORT_PSEUDONYM_SECRET"),
        "code_version": code_version(),
        "lock_file_sha256": lock_hash(),
        "package_versions": package_versions(),
        "seeds": {},  # filled in by the flow from the run settings
        "row_counts": counts,
        "timings_seconds": timings,
        "output_hashes": output_hashes(layout),
        "config_sha256": sha256_file(layout.cohort_dir / "study_config.yaml")
        if (layout.cohort_dir / "study_config.yaml").exists()
        else None,
    }
