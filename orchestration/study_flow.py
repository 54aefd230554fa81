"""The whole study as one parent Prefect flow, one subflow per stage, resumable.

Before any work: the settings are read, the pseudonymisation key is resolved (environment or
Prefect Secret block) and checked against the key check value of the run's earlier linkage, and
the run folder's stamp (code, inputs, settings) is checked (:func:`~orchestration.
state.prepare_run_folder`). A stage is skipped when its marker records the same input
fingerprint (the chain of upstream fingerprints plus the stage's own settings) and every output
it recorded is still there with the same hash; otherwise it and every later stage rerun, after
the later stages' outputs are removed. Markers are written only after a stage's outputs are
complete, so a killed run resumes at the stage it was in.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast
from uuid import UUID

from prefect import flow, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    update_progress_artifact,
)

from cohort.config import load_study_config
from ground.run_layout import RunLayout
from linkage.pseudonym import DEMO_SECRET
from models.run import check_analyses
from orchestration.codebook import write_codebook
from orchestration.manifest import (
    code_version,
    input_hashes,
    lock_hash,
    output_hashes,
    package_versions,
    run_stamp,
    write_manifest,
)
from orchestration.prefect_logs import project_logs_to_prefect, run_name
from orchestration.report import build_report
from orchestration.resources import PeakMemory, process_peak_gib, release_memory
from orchestration.secrets import resolve_secret
from orchestration.settings import RunSettings, load_run_settings
from orchestration.state import (
    STAGES,
    RunLock,
    check_key,
    check_out_folder,
    clear_from,
    expand_run_dir,
    key_check_value,
    outputs_intact,
    prepare_run_folder,
    read_marker,
    sha256_file,
    sha256_text,
    stage_output_hashes,
    write_marker,
)

log = logging.getLogger(__name__)


@task(name="report")
def report_task(run_dir: str) -> str:
    """report.html, and the codebook of every output table (codebook.md, codebook.csv)."""
    with project_logs_to_prefect():
        layout = RunLayout.at(run_dir)
        write_codebook(layout)
        return str(build_report(layout))


def _stage_functions(
    data_dir: str,
    run_dir: str,
    config_path: str | None,
    demo: bool,
    secret_block: str | None,
    isolate: bool,
    settings: RunSettings,
) -> dict[str, Callable[[], Any]]:
    from orchestration.build_flow import build_flow
    from orchestration.link_flow import link_flow
    from orchestration.model_flow import model_flow
    from orchestration.validate_flow import validate_flow

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
    from cohort.config import config_to_yaml, load_study_config

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


@flow(name="cohort-study", log_prints=False, flow_run_name=run_name)
def study_flow(
    data_dir: str,
    run_dir: str,
    config_path: str | None = None,
    demo: bool = False,
    secret_block: str | None = None,
    isolate_stages: bool = True,
    settings_path: str | None = None,
    resume: bool = False,
    replace: bool = False,
) -> dict[str, Any]:
    """Validate, link, build, model and report, resuming from the last completed stage.

    The pseudonymisation key comes from ``COHORT_PSEUDONYM_SECRET``, or from the Prefect
    Secret block named ``secret_block`` (a deployment parameter). With ``isolate_stages``
    (the default) each stage's work runs in its own child process, so memory one stage leaves
    behind does not add to the next one's peak; peaks are measured over the process tree.
    ``settings_path``: a run-settings YAML (:mod:`orchestration.settings`).
    ``run_dir`` may hold ``{date}`` (today, YYYY-MM-DD): one folder per scheduled run.
    A folder made with other code, data or settings is refused unless ``resume`` (keep what is
    still valid) or ``replace`` (empty it first).

    The project's log lines (disclosure-safe) are in this flow run's and each stage's logs
    (:mod:`orchestration.prefect_logs`)."""
    with project_logs_to_prefect():
        return _run_study(
            data_dir,
            run_dir,
            config_path,
            demo,
            secret_block,
            isolate_stages,
            settings_path,
            resume,
            replace,
        )


def _run_study(
    data_dir: str,
    run_dir: str,
    config_path: str | None,
    demo: bool,
    secret_block: str | None,
    isolate_stages: bool,
    settings_path: str | None,
    resume: bool,
    replace: bool,
) -> dict[str, Any]:
    os.umask(0o077)  # run folders 0700, files 0600 (also for deployment runs)
    layout = RunLayout.at(expand_run_dir(run_dir))
    data = Path(data_dir)
    settings = load_run_settings(settings_path)
    # a bad analysis declaration (unknown estimator, option, duplicate name) fails here,
    # before validation and linkage run, not when the model stage starts
    check_analyses(load_study_config(config_path).analyses, settings.model)
    block = secret_block or settings.linkage.prefect_secret_block
    secret = resolve_secret(block, dict(os.environ), demo=demo)  # before any work
    check_out_folder(layout.root)  # nothing written into a folder that is not a run folder
    with RunLock(layout.root):
        stamp = run_stamp(data, config_path, settings)
        if not replace:  # --replace empties the folder: the old keys go with it
            check_key(layout.root, secret)
        outcome = prepare_run_folder(layout.root, stamp, resume=resume, replace=replace)
        log.info("run folder %s: %s", layout.root, outcome)
        layout.ensure()
        fingerprints = _fingerprints(data, config_path, settings)
        stages = _stage_functions(
            str(data), str(layout.root), config_path, demo, secret_block, isolate_stages, settings
        )
        previous = json.loads(layout.manifest.read_text()) if layout.manifest.exists() else {}
        timings: dict[str, float] = dict(previous.get("timings_seconds", {}))
        counts: dict[str, Any] = dict(previous.get("row_counts", {}))
        peak_memory: dict[str, float] = dict(previous.get("peak_memory_gib", {}))
        peak_pss: dict[str, float] = dict(previous.get("peak_pss_gib", {}))
        ran: list[str] = []
        # the share of stages done, as a progress bar on the flow run's page in the Prefect UI
        # called from a sync flow, Prefect returns the id (its type also allows a coroutine)
        progress = cast(
            UUID, create_progress_artifact(0.0, key="run-progress", description="stages done")
        )
        for number, stage in enumerate(STAGES, start=1):
            counter = f"[{number}/{len(STAGES)}]"
            marker = read_marker(layout.root, stage)
            if (
                not ran
                and marker
                and marker.get("fingerprint") == fingerprints[stage]
                and outputs_intact(layout.root, stage, marker.get("outputs"))
            ):
                log.info("stage %s %s: already complete, skipped", stage, counter)
                update_progress_artifact(progress, 100.0 * number / len(STAGES))
                continue
            if not ran:  # the first stage to rerun: clear it and everything after it
                layout.manifest.unlink(missing_ok=True)
                clear_from(layout.root, stage)
                layout.ensure()
            log.info("stage %s %s: running", stage, counter)
            t0 = time.perf_counter()
            release_memory()
            with PeakMemory() as mem:
                result = stages[stage]()
            timings[stage] = round(time.perf_counter() - t0, 2)
            log.info("stage %s %s: done in %.0f s", stage, counter, timings[stage])
            peak_memory[stage] = mem.peak_gib
            peak_pss[stage] = mem.peak_pss_gib
            counts[stage] = result
            marker = {
                "fingerprint": fingerprints[stage],
                "stage": stage,
                "outputs": stage_output_hashes(layout.root, stage),
            }
            if stage == "link":  # tells a later resume which secret made the keys
                marker["key_check_value"] = key_check_value(secret)
            write_marker(layout.root, stage, marker)
            ran.append(stage)
            update_progress_artifact(progress, 100.0 * number / len(STAGES))
        manifest = _manifest(layout, data, config_path, secret == DEMO_SECRET, counts, timings)
        manifest["run_settings"] = settings.to_yaml()
        manifest["seeds"] = {
            "linkage_u_sampling": settings.linkage.seed,
            "model_cv_and_bootstrap": settings.model.cv_seed,
        }
        manifest["run_settings_path"] = (
            str(Path(settings_path).resolve()) if settings_path else None
        )
        manifest["peak_memory_gib"] = peak_memory  # summed RSS of the process tree
        manifest["peak_pss_gib"] = peak_pss  # summed PSS: shared pages split, not repeated
        manifest["process_peak_memory_gib"] = process_peak_gib()
        manifest["stage_process_peak_memory_gib"] = process_peak_gib(resource.RUSAGE_CHILDREN)
        write_manifest(layout, manifest)
        create_markdown_artifact(
            key="run-summary",
            markdown="| stage | seconds | peak GiB (RSS) | peak GiB (PSS) |\n|---|---:|---:|---:|\n"
            + "\n".join(
                f"| {k} | {v} | {peak_memory.get(k, '')} | {peak_pss.get(k, '')} |"
                for k, v in timings.items()
            ),
            description="stage timings",
        )
    return {"ran": ran, "report": str(layout.report), "manifest": str(layout.manifest)}


def _manifest(
    layout: RunLayout,
    data: Path,
    config_path: str | None,
    demo_key: bool,
    counts: dict[str, Any],
    timings: dict[str, float],
) -> dict[str, Any]:
    from cohort.config import config_to_yaml, load_study_config

    delivery = data / "delivery.json"
    return {
        "data_dir": str(data.resolve()),
        "input_hashes": input_hashes(data),
        "delivery_metadata": json.loads(delivery.read_text()) if delivery.exists() else None,
        "study_config": config_to_yaml(load_study_config(config_path)),
        "study_config_path": str(Path(config_path).resolve()) if config_path else None,
        "demo_secret": demo_key,  # the key the person keys were made with, not the --demo flag
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
