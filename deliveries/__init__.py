"""Real deliveries: statutory-return layouts mapped onto this project's source contracts.

A *layout* (one YAML file per layout, shipped in ``deliveries/layouts/``) declares the files a
delivery in that layout holds, how their columns are renamed, parsed and recoded, and how tables
are joined or split into the contracts' extracts. :func:`adapt_delivery` writes the contract files
that ``cohort validate`` then checks as usual, and beside them ``adapted/``, which points
every written row back to its source file and line. :mod:`deliveries.dfe_rules` runs a named
subset of the DfE's SSDA903 validation rules on a 903-layout delivery.

This package imports only :mod:`ground` and :mod:`schemas`.
"""

from deliveries.adapt import AdaptSummary, adapt_delivery, detect_layout, inspect_delivery
from deliveries.mapping import Layout, MappingError, SourceLayoutError, load_layout, shipped_layouts

__all__ = [
    "AdaptSummary",
    "Layout",
    "MappingError",
    "SourceLayoutError",
    "adapt_delivery",
    "detect_layout",
    "inspect_delivery",
    "load_layout",
    "shipped_layouts",
]
