"""Old import paths of the model stage, kept while code outside models/ moves to the new ones.

The stage now lives in :mod:`models.settings` (``ModelSettings``), :mod:`models.estimators`
(one class per estimator), :mod:`models.run` (the loop over the declared analyses) and
:mod:`models.outputs` (results, figures, release tables). Remove this module once
``orchestration/settings.py``, ``tests/test_disclosure.py`` and ``tests/test_sql_safety.py``
import from those.
"""

from __future__ import annotations

import pandas as pd

from ground.run_layout import RunLayout
from models.disclosure import Release
from models.run import ModelSummary, load_cohort, run_models
from models.settings import ModelSettings

__all__ = ["ModelSettings", "ModelSummary", "load_cohort", "run_models", "write_release"]


def write_release(
    layout: RunLayout,
    estimates: pd.DataFrame,
    t1: pd.DataFrame,
    children: pd.DataFrame,
    pt: pd.DataFrame,
    s: ModelSettings,
) -> Release:
    """:func:`models.outputs.write_release` with the run's model settings (the old signature)."""
    from models.outputs import write_release as write

    return write(layout, estimates, t1, children, pt, s.disclosure)


# the names tests/test_disclosure.py imports today
_release = write_release
_load = load_cohort
