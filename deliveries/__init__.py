"""Real deliveries: statutory-return layouts mapped onto this project's source contracts.

A *layout* (one YAML file per layout, shipped in ``deliveries/layouts/``) declares the files a
delivery in that layout holds (a delivery may hold several layouts, each making different
contracts), how their columns are renamed, parsed and recoded, and how tables
are joined or split into the contracts' extracts. :func:`adapt_delivery` writes the contract files
that ``cohort validate`` then checks as usual, and beside them ``adapted/``, which points
every written row back to its source file and line. :mod:`deliveries.dfe_rules` runs a named
subset of the DfE's SSDA903 validation rules on a 903-layout delivery.

This package imports only :mod:`ground` and :mod:`schemas`.
"""

from deliveries.adapt import (
    AdaptSummary,
    adapt_delivery,
    declared_layouts,
    detect_layout,
    detect_layouts,
    inspect_delivery,
)
from deliveries.mapping import (
    Layout,
    LayoutConflictError,
    MappingError,
    SourceLayoutError,
    load_layout,
    load_layouts,
    shipped_layouts,
)

__all__ = [
    "AdaptSummary",
    "Layout",
    "LayoutConflictError",
    "MappingError",
    "SourceLayoutError",
    "adapt_delivery",
    "declared_layouts",
    "detect_layout",
    "detect_layouts",
    "inspect_delivery",
    "load_layout",
    "load_layouts",
    "shipped_layouts",
]
