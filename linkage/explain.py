"""Explain a trained model: Splink's match-weight and m/u charts (no identifiers), and, in a
private folder, waterfall charts and a clerical-review sample of pairs near the threshold
(both show identifiers). Charts are standalone HTML with Splink's bundled JavaScript inlined,
so they open offline."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import polars as pl

from ground.db import private_dir as make_private_dir
from linkage.training import quiet_splink

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Explain:
    """Where the model's explanations go.

    ``charts_dir``: ``match_weights.html`` and ``m_u_parameters.html`` (the model's parameters
    only; names after ``chart_prefix``). ``private_dir`` (created owner-only; keep it with the identifiers, never in a
    release): ``waterfall.html`` for ``waterfall_pairs`` pairs nearest the threshold and
    ``clerical_review.csv``, ``review_pairs`` pairs around the threshold for people to label
    (an empty ``is_match`` column).
    """

    charts_dir: Path | None = None
    private_dir: Path | None = None
    waterfall_pairs: int = 12
    review_pairs: int = 200
    seed: int = 42
    keep_review: bool = False  # also return the review sample (LinkResult.review)
    # "html": Splink's interactive charts, JavaScript inlined (the bundled Vega libraries carry
    # URLs in their code, never fetched); "png": the same parameters drawn with matplotlib, for
    # folders that must hold no URL at all (a run's linkage folder)
    chart_format: Literal["html", "png"] = "html"
    chart_prefix: str = ""  # e.g. "model_": RUN/linkage/model_match_weights.html


def _stable_html(chart: Any) -> str:
    """Standalone HTML with the JavaScript inlined; Splink names the chart's element with a
    random id, fixed here so that a rerun writes byte-identical files."""
    return re.sub(r"splink-chart-[0-9a-f]{32}", "splink-chart-0", chart.to_html(inline=True))


def model_charts_png(model: dict[str, Any], folder: Path, prefix: str = "") -> dict[str, Path]:
    """The match weight (log2 m/u) and the m and u of every comparison level, as PNGs drawn
    from the saved model (its parameters only: no identifiers, no URL)."""
    import math

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels, weights, ms, us = [], [], [], []
    for comp in model["comparisons"]:
        for lv in comp["comparison_levels"]:
            if lv.get("is_null_level"):
                continue
            m, u = lv.get("m_probability"), lv.get("u_probability")
            labels.append(f"{comp['output_column_name']}: {lv.get('label_for_charts')}"[:60])
            ms.append(float(m or 0.0))
            us.append(float(u or 0.0))
            weights.append(math.log2(m / u) if m and u else 0.0)
    folder.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}
    height = max(3.0, 0.28 * len(labels) + 1)
    y = list(range(len(labels)))[::-1]
    fig, ax = plt.subplots(figsize=(8, height))
    ax.barh(y, weights, color=["#2a7" if w >= 0 else "#c44" for w in weights])
    ax.set_yticks(y, labels, fontsize=7)
    ax.axvline(0, color="#555", lw=0.8)
    ax.set_xlabel("partial match weight, log2(m / u)")
    fig.tight_layout()
    out["match_weights"] = folder / f"{prefix}match_weights.png"
    fig.savefig(out["match_weights"], dpi=100, metadata={"Software": None})
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(8, height))
    ax.barh([v + 0.2 for v in y], ms, height=0.4, label="m (matches)")
    ax.barh([v - 0.2 for v in y], us, height=0.4, label="u (non-matches)")
    ax.set_yticks(y, labels, fontsize=7)
    ax.set_xlabel("probability of the level")
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    out["m_u_parameters"] = folder / f"{prefix}m_u_parameters.png"
    fig.savefig(out["m_u_parameters"], dpi=100, metadata={"Software": None})
    plt.close(fig)
    return out


def review_sample(
    prof: pl.DataFrame, pairs: pl.DataFrame, threshold: float, n: int, seed: int
) -> pl.DataFrame:
    """Up to ``n`` scored pairs near the threshold (half just above, half just below, by
    match weight), both sides' profile columns side by side, and an empty ``is_match``."""
    if pairs.is_empty():
        return pl.DataFrame()
    above = pairs.filter(pl.col("match_probability") >= threshold).sort("match_weight")
    below = pairs.filter(pl.col("match_probability") < threshold).sort(
        "match_weight", descending=True
    )
    picked = pl.concat([above.head(n - n // 2), below.head(n // 2)]).sort(
        ["match_weight", "profile_id_l", "profile_id_r"]
    )
    shown = [c for c in prof.columns if c not in {"component"} and not c.endswith("_phonetic")]
    side = prof.select(shown)
    out = picked.join(
        side.rename({c: f"{c}_l" for c in shown}), on="profile_id_l", how="left"
    ).join(side.rename({c: f"{c}_r" for c in shown}), on="profile_id_r", how="left")
    return out.with_columns(is_match=pl.lit(None, dtype=pl.Boolean))


def explain_model(
    linker: Any, prof: pl.DataFrame, pairs: pl.DataFrame, threshold: float, explain: Explain
) -> tuple[dict[str, Path], pl.DataFrame | None]:
    """Save the charts (and the private review files) ``explain`` asks for: their paths, and
    the clerical-review sample when ``explain.keep_review``."""
    saved: dict[str, Path] = {}
    review = None
    if explain.keep_review:
        review = review_sample(prof, pairs, threshold, explain.review_pairs, explain.seed)
    if explain.charts_dir is not None and explain.chart_format == "png":
        saved |= model_charts_png(
            linker.misc.save_model_to_json(), explain.charts_dir, explain.chart_prefix
        )
    elif explain.charts_dir is not None:
        explain.charts_dir.mkdir(parents=True, exist_ok=True)
        for name, chart in (
            ("match_weights", linker.visualisations.match_weights_chart()),
            ("m_u_parameters", linker.visualisations.m_u_parameters_chart()),
        ):
            path = explain.charts_dir / f"{explain.chart_prefix}{name}.html"
            path.write_text(_stable_html(chart), encoding="utf-8")
            saved[name] = path
    if explain.private_dir is not None:
        folder = make_private_dir(explain.private_dir)
        sample = review_sample(prof, pairs, threshold, explain.review_pairs, explain.seed)
        path = folder / "clerical_review.csv"
        sample.write_csv(path)
        saved["clerical_review"] = path
        nearest = (
            pairs.with_columns(gap=(pl.col("match_probability") - threshold).abs())
            .sort(["gap", "profile_id_l", "profile_id_r"])
            .head(explain.waterfall_pairs)
        )
        if nearest.height:
            from splink import Linker

            # waterfalls need the comparison columns that scoring at scale does not keep: the
            # same trained model, on a linker that keeps them, scores just these pairs
            model = linker.misc.save_model_to_json()
            model["retain_intermediate_calculation_columns"] = True
            model["retain_matching_columns"] = True
            source = linker.table_management.register_table(
                prof.to_arrow(), "__waterfall_profiles", overwrite=True
            )
            linker = Linker(source, model, log_level=logging.ERROR)
            records = []
            side = prof
            for i, (left, right) in enumerate(
                zip(nearest["profile_id_l"], nearest["profile_id_r"], strict=True)
            ):
                # registered one-row tables keep the column types (a dict with a null date
                # does not)
                frames = [
                    linker.table_management.register_table(
                        side.slice(pid, 1).to_arrow(), f"__waterfall_{i}_{s}", overwrite=True
                    )
                    for pid, s in ((left, "l"), (right, "r"))
                ]
                with quiet_splink([]):  # untrained levels were reported once, by training
                    records += linker.inference.score_pair(*frames).as_record_list()
            chart = linker.visualisations.waterfall_chart(records, filter_nulls=False)
            path = folder / "waterfall.html"
            path.write_text(_stable_html(chart), encoding="utf-8")
            saved["waterfall"] = path
    for name, path in saved.items():
        log.info("linkage: %s saved to %s", name, path)
    return saved, review
