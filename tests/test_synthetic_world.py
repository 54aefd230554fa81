"""The synthetic world matches its scenario (calibration, causal structure, noise, determinism)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from ground.errors import ConfigError
from synthetic_data import generate_world, load_scenario
from synthetic_data.world import add_years, build_world, day


def _world_stats(n: int, scenario: str, seed: int = 3) -> dict[str, float]:
    w = build_world(n, load_scenario(scenario), seed)
    c = day("2020-03-31")
    alive = (w.fu_start <= c) & (w.fu_end > c)
    la_now = np.zeros(w.n, bool)
    sel = (w.care_start <= c) & (w.care_end > c)
    la_now[w.care_person[sel]] = True
    cin_now = ((w.ref1 >= 0) & (w.ref1 <= c) & (w.close1 >= c)) | (
        (w.ref2 >= 0) & (w.ref2 <= c) & (w.close2 >= c)
    )
    ever_la = np.isin(np.arange(w.n), w.care_person)
    cin = w.ref1 >= 0
    rate_by_decile = [ever_la[w.decile == d].mean() for d in range(1, 11)]
    ks4 = w.ks4_y0 + w.ks4_effect
    long_ = w.care_days_before_ks4 >= 365
    short = (w.care_days_before_ks4 > 0) & ~long_
    return {
        "la_per_10k": 1e4 * la_now[alive].mean(),
        "cin_per_10k": 1e4 * (cin_now | la_now)[alive].mean(),
        "recorded_mh_in_cin": w.recorded1[cin, 1].mean(),
        "recorded_da_in_cin": w.recorded1[cin, 3].mean(),
        "recorded_sm_in_cin": w.recorded1[cin, 2].mean(),
        "gradient_1_vs_10": rate_by_decile[0] / rate_by_decile[9],
        "gradient_step": float(np.exp(np.polyfit(np.arange(10), np.log(rate_by_decile), 1)[0])),
        "ks4_all": ks4.mean(),
        "ks4_cin": ks4[cin].mean(),
        "ks4_long": ks4[long_].mean(),
        "ks4_short": ks4[short].mean(),
    }


def test_default_world_is_calibrated_at_20k() -> None:
    s = _world_stats(20_000, "default")
    assert 85 <= s["la_per_10k"] <= 160, s  # Wales ~115 per 10,000
    assert 200 <= s["cin_per_10k"] <= 380, s  # ~270 per 10,000
    for k in ("recorded_mh_in_cin", "recorded_da_in_cin", "recorded_sm_in_cin"):
        assert 0.1 <= s[k] <= 0.45, (k, s)
    assert 6 <= s["gradient_1_vs_10"] <= 25, s  # ~16x most vs least deprived
    assert 1.2 <= 1 / s["gradient_step"] <= 1.5, s  # ~a third per decile
    assert s["ks4_all"] > s["ks4_cin"] > s["ks4_long"] > s["ks4_short"], s


def test_care_periods_end_for_the_reason_follow_up_ends() -> None:
    """A period still running at the 18th birthday ends E8 on it, one running at a death ends
    E2 on it, and only periods running when the child leaves the region or the window closes
    are open; an E8 never precedes the 18th birthday unless follow-up is still going."""
    w = build_world(20_000, load_scenario("default"), 3)
    p = w.care_person
    fu_end, why = w.fu_end[p], w.fu_end_reason[p]
    age18 = add_years(w.birth[p], 18)
    running = w.care_end >= np.minimum(fu_end, age18)
    assert w.care_open.sum() > 0 and (w.care_end_reason == "E2").sum() > 0
    assert np.all(w.care_open == (running & np.isin(why, [1, 3])))
    assert np.all(w.care_end_reason[running & (why == 0)] == "E8")
    assert np.all(w.care_end_reason[running & (why == 2)] == "E2")
    assert np.all(w.care_end[w.care_end_reason == "E2"] == fu_end[w.care_end_reason == "E2"])
    # an early E8 (the 15% of long plans that end at 16-17) is a closed period within follow-up
    early_e8 = (w.care_end_reason == "E8") & (w.care_end < fu_end)
    assert not np.any(w.care_open[early_e8])


@pytest.mark.slow
def test_default_world_is_calibrated_at_100k() -> None:
    s = _world_stats(100_000, "default")
    assert 95 <= s["la_per_10k"] <= 140, s
    assert 220 <= s["cin_per_10k"] <= 340, s
    assert 8 <= s["gradient_1_vs_10"] <= 20, s
    assert s["ks4_all"] > s["ks4_cin"] > s["ks4_long"] > s["ks4_short"], s


def _confounding(scenario: str, n: int = 60_000) -> tuple[float, float, float]:
    """Naive and truth-adjusted OLS of KS4 on long-term care among children in need."""
    sc = load_scenario(scenario)
    w = build_world(n, sc, 11)
    elig = (w.ref1 >= 0) & (w.ref1 < w.ks4_start)
    days = w.care_days_before_ks4[elig]
    long_ = (days >= 365).astype(float)
    short = ((days > 0) & (days < 365)).astype(float)
    moves = w.moves_before_ks4[elig].astype(float)
    y = (w.ks4_y0 + w.ks4_effect)[elig]
    adv = (w.adversity & (w.onset < w.ks4_start[:, None]))[elig].sum(axis=1)
    dep = 10 - w.decile[elig]
    fr = np.maximum(w.family_risk[elig], -1)
    girl = (~w.sex_male[elig]).astype(float)
    dis = w.disability[elig].astype(float)
    one = np.ones(y.size)
    naive = np.linalg.lstsq(np.c_[one, long_, short, moves], y, rcond=None)[0][1]
    x = np.c_[one, long_, short, moves, adv, dep, fr, girl, dis]
    adjusted = np.linalg.lstsq(x, y, rcond=None)[0][1]
    return naive, adjusted, sc.effects.ks4_long_care


def test_naive_estimate_biased_under_default_and_truth_adjusted_recovers_effect() -> None:
    naive, adjusted, truth = _confounding("default")
    assert naive < truth - 3, (naive, truth)  # biased away, in the literature's direction
    assert abs(adjusted - truth) < 1.0, (adjusted, truth)


def test_truth_adjusted_estimate_is_null_under_null_effect() -> None:
    naive, adjusted, truth = _confounding("null_effect")
    assert truth == 0.0
    assert naive < -3, naive  # confounding alone makes care look harmful
    assert abs(adjusted) < 1.0, adjusted


def test_true_ks4_effect_is_on_the_released_score_scale() -> None:
    """The released score is clipped to 0-90, so a child at the floor cannot lose points: the
    truth an estimator on the data can recover is the effect on the clipped score, which is
    smaller than the latent one wherever care pushes scores below zero."""
    from synthetic_data.generate import _effects
    from synthetic_data.world import observed_ks4

    w = build_world(20_000, load_scenario("default"), 5)
    ks4_has = np.ones(w.n, dtype=bool)
    eff = {
        (r["outcome"], r["contrast"]): r
        for r in _effects(w, load_scenario("default"), ks4_has)["estimands"]
    }
    row = eff[("ks4_score", "cla_vs_nla")]
    sel = (w.ref1 >= 0) & (w.ref1 < w.ks4_start) & (w.care_days_before_ks4 > 0)
    expected = (observed_ks4(w.ks4_y0 + w.ks4_effect) - observed_ks4(w.ks4_y0))[sel].mean()
    assert row["value"] == pytest.approx(expected)
    assert row["latent_value"] == pytest.approx(w.ks4_effect[sel].mean())
    assert row["latent_value"] < row["value"] < 0  # clipping shrinks the harm, never flips it


def test_hospital_contacts_higher_in_cla_than_nla() -> None:
    w = build_world(20_000, load_scenario("default"), 5)
    cin = w.ref1 >= 0
    la = np.isin(np.arange(w.n), w.care_person)
    years = (w.fu_end - w.fu_start) / 365.25
    contacts = np.bincount(w.ev_person, minlength=w.n) / np.maximum(years, 0.1)
    assert contacts[la].mean() > contacts[cin & ~la].mean() > contacts[~cin].mean()


def _hashes(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_same_seed_gives_identical_bytes(tmp_path: Path, fmt: str) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    generate_world(n_children=1500, seed=9, out_dir=a, file_format=fmt)  # type: ignore[arg-type]
    generate_world(n_children=1500, seed=9, out_dir=b, file_format=fmt)  # type: ignore[arg-type]
    ha, hb = _hashes(a), _hashes(b)
    assert len(ha) == 7 + 1 + 8 and ha == hb
    c = tmp_path / "c"
    generate_world(n_children=1500, seed=10, out_dir=c, file_format=fmt)  # type: ignore[arg-type]
    assert _hashes(c) != ha


def test_extracts_follow_contracts_and_truth_maps_every_record(small_world: Path) -> None:
    from schemas.contracts import SOURCES

    rp = pl.read_parquet(small_world / "truth" / "record_person.parquet")
    for name, contract in SOURCES.items():
        header = (
            (small_world / f"{contract.file_stem}.csv").read_text(encoding="utf-8").split("\n")[0]
        )
        assert header.split(",") == contract.column_names
        assert rp.filter(pl.col("source") == name).height > 0
    assert rp.select(pl.struct("source", "record_id").is_unique().all()).item()


def test_noise_and_defect_rates_match_scenario(tmp_path: Path) -> None:
    sc = load_scenario("messy")
    generate_world(n_children=6000, seed=2, scenario="messy", out_dir=tmp_path)
    noise = pl.read_parquet(tmp_path / "truth" / "identifier_noise.parquet")
    defects = pl.read_parquet(tmp_path / "truth" / "defects.parquet")
    rp = pl.read_parquet(tmp_path / "truth" / "record_person.parquet")
    sc_rows = rp.filter(pl.col("source") == "school_census").height
    ed_rows = rp.filter(pl.col("source") == "emergency_department").height

    def rate(frame: pl.DataFrame, col: str, kind: str, source: str, n: int) -> float:
        return frame.filter((pl.col(col) == kind) & (pl.col("source") == source)).height / n

    def close(observed: float, expected: float, n: int) -> bool:
        return abs(observed - expected) <= 4 * np.sqrt(expected * (1 - expected) / n) + 1e-4

    assert close(
        rate(noise, "noise", "missing_nhs", "emergency_department", ed_rows),
        sc.noise.missing_nhs_ed,
        ed_rows,
    )
    # stale postcodes only exist for children who have moved: a share of the scenario rate
    stale = rate(noise, "noise", "stale_postcode", "school_census", sc_rows)
    assert 0.1 * sc.noise.stale_postcode < stale < sc.noise.stale_postcode
    assert close(
        rate(defects, "defect", "duplicate_row", "school_census", sc_rows),
        sc.defects.duplicate_row,
        sc_rows,
    )
    assert close(
        rate(defects, "defect", "code_outside_list", "school_census", sc_rows),
        sc.defects.code_outside_list,
        sc_rows,
    )
    assert close(
        rate(defects, "defect", "placeholder_date", "emergency_department", ed_rows),
        sc.defects.placeholder_date,
        ed_rows,
    )
    typos = rate(noise, "noise", "typo", "school_census", sc_rows)
    assert 0.6 * sc.noise.typo < typos <= sc.noise.typo * 1.1


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("effects:\n  ks4_long_cair: 2\n", "ks4_long_cair.*allowed keys here: .*ks4_long_care"),
        ("noise:\n  typo: 3\n", "noise.typo"),
        ("population:\n  window_end: 2024-31-08\n", "dates are YYYY-MM-DD"),
        ("population:\n  window_end: '31/08/2024'\n", "population.window_end.*ISO date"),
        ("population:\n  window_end: 2010-08-31\n", "population.*after the last birth year 2011"),
        ("social_services:\n  re_entry_prob: 0.9\n", "social_services.re_entry_prob"),
    ],
)
def test_bad_scenario_names_the_key(tmp_path: Path, text: str, match: str) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=match):
        load_scenario(bad)


def test_unquoted_yaml_date_and_unknown_scenario_name(tmp_path: Path) -> None:
    # YAML reads an unquoted date as a date: accepted and kept as ISO text
    path = tmp_path / "window.yaml"
    path.write_text("population:\n  window_end: 2023-08-31\n", encoding="utf-8")
    assert load_scenario(path).population.window_end == "2023-08-31"
    with pytest.raises(ConfigError, match="shipped scenarios: default, messy, null_effect"):
        load_scenario("nonsense")
