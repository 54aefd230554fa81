"""Great Expectations 1.x suites generated from the contracts: the system of record.

One suite per source, run per delivery through GX's pandas path (GX has no DuckDB or polars path
that works here, see STACK.md). The suite runs over the typed rows (staged and quarantined
together, i.e. everything delivered that could be parsed), so its unexpected counts can be
checked against the DuckDB row rules. For very large sources a deterministic sample of
``gx_max_rows`` rows is fed to GX; the row rules in DuckDB always see every row. Data Docs (static
HTML) go to ``RUN/validation/gx/``, rewritten after the build to open offline (no CDN, no remote
logo: :mod:`validation.data_docs`).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import duckdb

from ground.db import quote_ident
from ground.run_layout import RunLayout
from schemas.contracts import SOURCES, SourceContract, load_codelist
from validation.data_docs import make_offline
from validation.rules import q
from validation.settings import SourceResult, ValidationSettings

log = logging.getLogger(__name__)


def build_suite(contract: SourceContract) -> Any:
    """The expectation suite of one source, from its contract."""
    import great_expectations as gx

    gxe = gx.expectations
    suite = gx.ExpectationSuite(name=f"{contract.name}_suite")
    suite.add_expectation(
        gxe.ExpectTableColumnsToMatchSet(column_set=contract.column_names, exact_match=False)
    )
    suite.add_expectation(gxe.ExpectTableRowCountToBeBetween(min_value=1))
    for c in contract.columns:
        if not c.nullable:
            suite.add_expectation(gxe.ExpectColumnValuesToNotBeNull(column=c.name))
        if c.pattern:
            suite.add_expectation(
                gxe.ExpectColumnValuesToMatchRegex(column=c.name, regex=c.pattern)
            )
        if c.codelist:
            suite.add_expectation(
                gxe.ExpectColumnValuesToBeInSet(
                    column=c.name, value_set=sorted(load_codelist(c.codelist))
                )
            )
        if c.min_value is not None or c.max_value is not None:
            suite.add_expectation(
                gxe.ExpectColumnValuesToBeBetween(
                    column=c.name, min_value=c.min_value, max_value=c.max_value
                )
            )
    if contract.primary_key:
        suite.add_expectation(
            gxe.ExpectCompoundColumnsToBeUnique(column_list=list(contract.primary_key))
            if len(contract.primary_key) > 1
            else gxe.ExpectColumnValuesToBeUnique(column=contract.primary_key[0])
        )
    return suite


def _frame_for_gx(con: duckdb.DuckDBPyConnection, contract: SourceContract, limit: int) -> Any:
    """Typed rows (staged + quarantined, malformed lines excluded) as pandas, sampled if large."""
    name = contract.name
    checked = quote_ident(f"work.{name}_checked")
    typed = ", ".join(
        f"{q('__raw_' + c.name)} AS {q(c.name)}" if c.pattern or c.codelist else q(c.name)
        for c in contract.columns
    )
    sql = f"SELECT {typed} FROM {checked} WHERE NOT list_contains(_reasons, 'duplicate_row')"
    n = con.execute(f"SELECT count(*) FROM ({sql})").fetchone()[0]  # type: ignore[index]
    if n > limit:
        sql += f" AND hash(_row_number) % {int(n // limit + 1)} = 0"
    return con.execute(sql + " ORDER BY _row_number").df()


def run_suites(
    con: duckdb.DuckDBPyConnection,
    results: dict[str, SourceResult],
    layout: RunLayout,
    settings: ValidationSettings,
    contracts: dict[str, SourceContract] | None = None,
) -> None:
    """Run every source's suite, store results in each SourceResult, build Data Docs.

    ``contracts``: the delivery's contracts (the pre-linked variants), else the native ones."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx

    root = layout.validation_dir / "gx"
    ctx = gx.get_context(mode="file", project_root_dir=str(root))
    try:
        from great_expectations.data_context.types.base import ProgressBarsConfig

        ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    except Exception:  # pragma: no cover - cosmetic only
        pass
    ds = ctx.data_sources.add_or_update_pandas("delivery")
    for name, result in results.items():
        contract = (contracts or SOURCES)[name]
        try:
            asset = ds.get_asset(name)
        except LookupError:
            asset = ds.add_dataframe_asset(name=name)
        try:
            bd = asset.get_batch_definition("whole")
        except (KeyError, LookupError, ValueError):
            bd = asset.add_batch_definition_whole_dataframe("whole")
        suite = ctx.suites.add_or_update(build_suite(contract))
        vd = ctx.validation_definitions.add_or_update(
            gx.ValidationDefinition(name=f"{name}_validation", data=bd, suite=suite)
        )
        checkpoint = ctx.checkpoints.add_or_update(
            gx.Checkpoint(
                name=f"{name}_checkpoint",
                validation_definitions=[vd],
                actions=[gx.checkpoint.UpdateDataDocsAction(name="data_docs")],
                result_format={"result_format": "SUMMARY", "partial_unexpected_count": 0},
            )
        )
        df = _frame_for_gx(con, contract, settings.gx_max_rows)
        run = checkpoint.run(batch_parameters={"dataframe": df})
        for vr in run.run_results.values():
            for er in vr.results:
                cfg = er.expectation_config
                kwargs = cfg.kwargs if cfg is not None else {}
                result.expectations.append(
                    {
                        "expectation": cfg.type if cfg is not None else "?",
                        "column": kwargs.get("column", ""),
                        "success": bool(er.success),
                        "unexpected_count": int(er.result.get("unexpected_count") or 0),
                        "rows_checked": len(df),
                    }
                )
        # no row count in the log: logs follow the release's disclosure rules
        log.info("GX suite %s: %d expectations checked", name, len(result.expectations))
    # every checkpoint rebuilt the site; rewrite it once, at the end, to make no remote request
    make_offline(root)
