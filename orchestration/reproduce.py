"""Rerun a run from its manifest and compare outputs."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from ground.errors import RunStateError
from ground.run_layout import RunLayout
from orchestration.manifest import code_version, input_hashes, lock_hash


def reproduce(run: Path, out: Path, *, demo: bool = False) -> dict[str, Any]:
    from orchestration.study_flow import study_flow

    layout = RunLayout.at(run)
    if not layout.manifest.exists():
        raise RunStateError(f"{layout.manifest} not found: is {run} a finished run?")
    manifest = json.loads(layout.manifest.read_text(encoding="utf-8"))
    warnings = []
    data = Path(manifest["data_dir"])
    if input_hashes(data) != manifest["input_hashes"]:
        warnings.append(f"input files in {data} differ from the manifest's hashes")
    if code_version()["git_commit"] != manifest["code_version"]["git_commit"]:
        warnings.append("code version differs from the manifest's")
    if lock_hash() != manifest["lock_file_sha256"]:
        warnings.append("uv.lock differs from the manifest's")
    config_path = None
    if manifest.get("study_config"):
        tmp = Path(tempfile.mkdtemp()) / "study_config.yaml"
        tmp.write_text(manifest["study_config"], encoding="utf-8")
        config_path = str(tmp)
    settings_path = None
    if manifest.get("run_settings"):  # the settings the run used, whatever file they came from
        tmp_settings = Path(tempfile.mkdtemp()) / "run_settings.yaml"
        tmp_settings.write_text(manifest["run_settings"], encoding="utf-8")
        settings_path = str(tmp_settings)
    study_flow(
        str(data),
        str(out),
        config_path,
        demo or bool(manifest.get("demo_secret")),
        settings_path=settings_path,
    )
    new = json.loads(RunLayout.at(out).manifest.read_text(encoding="utf-8"))
    old_h, new_h = manifest["output_hashes"], new["output_hashes"]
    outputs = {}
    for name in sorted(set(old_h) | set(new_h)):
        if name not in new_h:
            outputs[name] = "missing in rerun"
        elif name not in old_h:
            outputs[name] = "new in rerun"
        else:
            outputs[name] = "identical" if old_h[name] == new_h[name] else "DIFFERENT"
    identical = all(v == "identical" for v in outputs.values())
    return {"identical": identical, "outputs": outputs, "warnings": warnings}
