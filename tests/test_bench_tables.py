"""`make bench`'s verdicts (benchmarks/run_all.py): a memory target is met by summed RSS, or
"by PSS, not by summed RSS" where only the proportional figure is within it (the model stage's
forked workers share the parent's pages), or not met. Small stage rows beside their verdicts."""

from __future__ import annotations

import importlib.util
import sys

import pytest

from tests.e2e import ROOT


def _run_all():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("run_all", ROOT / "benchmarks" / "run_all.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["run_all"] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("walls", "rss", "pss", "expected"),
    [
        ((137, 171), (7.6, 7.9), (6.9, 7.5), "300 s / 8 GiB: met on every seed"),
        (
            (137, 171),
            (10.0, 9.4),
            (7.5, 6.9),
            "300 s / 8 GiB: met on every seed by PSS, not by summed RSS",
        ),
        ((137, 171), (10.0, 9.4), (8.5, 6.9), "300 s / 8 GiB: NOT met"),
        ((137, 303), (7.0, 7.0), (6.0, 6.0), "300 s / 8 GiB: NOT met"),
    ],
)
def test_model_stage_memory_verdict(
    walls: tuple[float, ...], rss: tuple[float, ...], pss: tuple[float, ...], expected: str
) -> None:
    run_all = _run_all()
    runs = [{"peak_gib": r, "peak_pss_gib": p} for r, p in zip(rss, pss, strict=True)]
    assert run_all.verdict(list(walls), runs, "model", " on every seed") == expected


def test_a_stage_without_pss_is_judged_by_rss_and_shown_without_it() -> None:
    run_all = _run_all()
    synth = {"stage": "synth", "peak_gib": 5.2}  # timed by wait4: no PSS
    assert run_all.verdict([68.0], [synth], "synth", "") == "60 s / 6 GiB: NOT met"
    assert run_all.memory_cell(synth) == "5.2"
    model = {"stage": "model", "peak_gib": 9.44, "peak_pss_gib": 7.04}
    assert run_all.memory_cell(model) == "9.4 (PSS 7.0)"
