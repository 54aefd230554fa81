"""Write a world's social-care extracts in the Welsh Government's statutory returns (draft)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

LAC_FILES = ("WLAC_*.csv",)
CRCS_FILES = ("CRCS_*.csv",)


def write_wales_lac(rows: list[dict], bad: np.ndarray, out: Path) -> None:
    raise NotImplementedError


def write_crcs(rows: list[dict], bad: np.ndarray, out: Path) -> None:
    raise NotImplementedError
