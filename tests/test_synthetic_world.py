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
    assert len(ha) == 7 + 1 + 10 and ha == hb  # ks4_entry_trials.json the tenth truth file
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
    with pytest.raises(
        ConfigError,
        match="shipped scenarios: default, differential_linkage_error, effect_modification, "
        "messy, null_effect, time_varying_confounding",
    ):
        load_scenario("nonsense")


# --- issue #18: effect modification, time-varying confounding, yearly outcomes ----------------


@pytest.fixture(scope="module")
def modified_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("effect_modification")
    generate_world(
        n_children=4000, seed=21, scenario="effect_modification", out_dir=out, file_format="parquet"
    )
    return out


def _effect(truth: Path, outcome: str, contrast: str) -> float:
    import json

    rows = json.loads((truth / "effects.json").read_text(encoding="utf-8"))["estimands"]
    (value,) = [r["value"] for r in rows if r["outcome"] == outcome and r["contrast"] == contrast]
    return float(value)


def test_modified_effects_computed_by_hand_from_potential_outcomes(modified_world: Path) -> None:
    """The ATT of care on the released KS4 score among exposed children with and without
    pre-care domestic abuse, and the yearly absence ATT by years since entry, recomputed from
    potential_outcomes, persons and school_years as the docs define them."""
    truth = modified_world / "truth"
    po = pl.read_parquet(truth / "potential_outcomes.parquet")
    persons = pl.read_parquet(truth / "persons.parquet").join(po, on="person_id")
    exposed = persons.filter(
        (pl.col("ever_cin") == 1)
        & (pl.col("has_ks4") == 1)
        & (pl.col("first_cin_date") < pl.col("ks4_year_start"))
        & (pl.col("care_days_before_ks4") > 0)
    ).with_columns(
        effect=(pl.col("ks4_y0") + pl.col("ks4_effect")).clip(0, 90) - pl.col("ks4_y0").clip(0, 90)
    )
    by = {
        flag: exposed.filter(pl.col("pre_care_domestic_abuse") == flag)["effect"].mean()
        for flag in (0, 1)
    }
    assert exposed.filter(pl.col("pre_care_domestic_abuse") == 1).height >= 20
    with_, without = (
        _effect(truth, "ks4_score", "cla_vs_nla_with_domestic_abuse"),
        _effect(truth, "ks4_score", "cla_vs_nla_without_domestic_abuse"),
    )
    assert with_ == pytest.approx(by[1]) and without == pytest.approx(by[0])
    diff = _effect(truth, "ks4_score", "cla_vs_nla_with_minus_without_domestic_abuse")
    assert diff == pytest.approx(by[1] - by[0])
    ks2 = persons.filter(
        (pl.col("ever_cin") == 1)
        & (pl.col("has_ks2") == 1)
        & (pl.col("first_cin_date") < pl.col("ks2_year_start"))
        & (pl.col("care_days_before_ks2") > 0)
    )
    ks2_truth = _effect(truth, "ks2_expected_standard", "cla_vs_nla")
    assert ks2_truth == pytest.approx((ks2["ks2_p1"] - ks2["ks2_p0"]).mean())
    assert ks2_truth < -0.01  # ks2_log_or_care -0.3 in this scenario
    sy = pl.read_parquet(truth / "school_years.parquet").filter(pl.col("looked_after_share") > 0)
    sy = sy.with_columns(
        effect=pl.col("absence_rate_factual").cast(pl.Float64) - pl.col("absence_rate_no_care")
    )
    assert _effect(truth, "absence_rate", "looked_after_year") == pytest.approx(
        sy["effect"].mean(), rel=1e-6
    )
    per_year = (sy["effect"] / sy["looked_after_share"]).mean()
    assert _effect(truth, "absence_rate", "looked_after_share") == pytest.approx(per_year, rel=1e-5)
    by_year = [sy.filter(pl.col("years_since_entry") == j)["effect"].mean() for j in range(4)] + [
        sy.filter(pl.col("years_since_entry") >= 4)["effect"].mean()
    ]
    for j, v in enumerate(by_year):
        assert _effect(truth, "absence_rate", f"looked_after_year_since_entry_{j}") == (
            pytest.approx(v, rel=1e-6)
        )
    assert by_year[4] < by_year[0] < 0  # the scenario deepens the absence effect each year


def test_null_effect_zeroes_every_new_effect_also_with_time_varying_confounding(
    tmp_path: Path,
) -> None:
    """null_effect's effects section with the time-varying confounding world: every estimand
    in effects.json is exactly null (0 difference, ratio 1), the mediated path included."""
    import json

    tvc = load_scenario("time_varying_confounding")
    null = load_scenario("null_effect")
    sc = tvc.model_copy(update={"effects": null.effects, "name": "null_tvc"})
    generate_world(n_children=3000, seed=4, scenario=sc, out_dir=tmp_path, file_format="parquet")
    rows = json.loads((tmp_path / "truth" / "effects.json").read_text(encoding="utf-8"))
    assert len(rows["estimands"]) > 80
    for r in rows["estimands"]:
        null_value = (
            1.0 if r["scale"] in ("hazard_ratio", "odds_ratio", "ratio_of_hazard_ratios") else 0.0
        )
        assert r["value"] == null_value, r
    po = pl.read_parquet(tmp_path / "truth" / "potential_outcomes.parquet")
    assert (po["ks4_effect"] == 0).all()


def test_census_records_factors_at_each_assessment_with_its_date(tmp_path: Path) -> None:
    """Under time_varying_confounding: later census rows carry reviews (assessment date after
    the referral) that add factors; every recorded factor was truly present by its assessment
    date; no assessment postdates its census day; some rows arrive in a later year's return."""
    generate_world(
        n_children=4000,
        seed=8,
        scenario="time_varying_confounding",
        out_dir=tmp_path,
        file_format="parquet",
    )
    truth = tmp_path / "truth"
    rp = pl.read_parquet(truth / "record_person.parquet").filter(
        pl.col("source") == "care_support_census"
    )
    d = pl.read_parquet(tmp_path / "care_support_census.parquet").join(
        rp.select("record_id", "person_id"), on="record_id"
    )
    ok = pl.col("assessment_date").str.contains(r"^\d{4}-\d\d-\d\d$") & pl.col(
        "referral_date"
    ).str.contains(r"^(19|20)\d\d-\d\d-\d\d$")
    d = (
        d.filter(ok & (pl.col("referral_date") != "1900-01-01"))
        .with_columns(
            a=pl.col("assessment_date").str.to_date(strict=False),
            r=pl.col("referral_date").str.to_date(strict=False),
            census=pl.date(pl.col("census_year").cast(pl.Int32), 3, 31),
        )
        .drop_nulls(["a", "r"])
    )
    reviews = d.filter(pl.col("a") > pl.col("r"))
    assert reviews.height > 100
    assert d.filter(pl.col("a") > pl.col("census")).height == 0
    persons = pl.read_parquet(truth / "persons.parquet")
    factors = {
        "parent_domestic_abuse": "domestic_abuse",
        "parent_mental_ill_health": "parental_mental_ill_health",
        "parent_substance_misuse": "parental_substance_misuse",
        "parent_learning_disability": "parental_learning_disability",
    }
    j = d.join(persons, on="person_id")
    for col, adv in factors.items():
        rec = j.filter(pl.col(col) == "1")
        onset = pl.col(f"{adv}_onset").str.to_date()
        assert rec.filter(onset.is_null() | (onset > pl.col("a"))).height == 0, col
    # a review adds a factor its referral's row did not have
    first = (
        d.sort("a")
        .group_by("person_id", "r")
        .agg(
            pl.col("parent_domestic_abuse", "parent_substance_misuse")
            .first()
            .name.prefix("first_"),
            pl.col("parent_domestic_abuse", "parent_substance_misuse").last().name.prefix("last_"),
        )
    )
    added = first.filter(
        (
            (pl.col("first_parent_domestic_abuse") == "0")
            & (pl.col("last_parent_domestic_abuse") == "1")
        )
        | (
            (pl.col("first_parent_substance_misuse") == "0")
            & (pl.col("last_parent_substance_misuse") == "1")
        )
    )
    assert added.height > 20
    # late records: an assessment whose first row is in a later census year than its own
    own_year = (pl.col("a") - pl.duration(days=90)).dt.year() + 1
    first_filed = d.group_by("person_id", "a").agg(
        own=own_year.first(), filed=pl.col("census_year").cast(pl.Int64).min()
    )
    late = first_filed.filter(pl.col("filed") > pl.col("own")).height
    assert 0.01 * first_filed.height < late < 0.1 * first_filed.height, late
    plans = d.filter(pl.col("child_protection_plan_start").is_not_null())
    assert (
        plans.filter(pl.col("child_protection_plan_start") > pl.col("assessment_date")).height == 0
    )
    assert plans.filter(pl.col("child_protection_plan_start") > pl.col("referral_date")).height > 10


def _baseline_only_bias(scenario: str, n: int = 60_000) -> tuple[float, float]:
    """Regression-imputation ATT of any care before year 11 on the latent KS4 score, adjusting
    for everything true about the child up to the first referral (family risk, true adversity
    before referral, deprivation, authority's care propensity, age at referral, recorded
    factors, sex, disability), against the true ATT."""
    sc = load_scenario(scenario)
    w = build_world(n, sc, 11)
    elig = (w.ref1 >= 0) & (w.ref1 < w.ks4_start)
    exposed = (w.care_days_before_ks4 > 0)[elig]
    y = (w.ks4_y0 + w.ks4_effect)[elig]
    adv_ref = ((w.onset >= 0) & (w.onset <= w.ref1[:, None]))[elig].astype(float)
    x = np.c_[
        np.ones(y.size),
        adv_ref,
        adv_ref.sum(axis=1) ** 2,
        10 - w.decile[elig],
        np.maximum(w.family_risk[elig], -1),
        w.family_risk[elig],
        w.la_care_effect[w.la_at_referral[elig]],
        (w.ref1 - w.birth)[elig] / 365.25,
        (w.ks4_start - w.ref1)[elig] / 365.25,
        w.recorded1[elig].astype(float),
        w.cp1[elig] > 0,
        ~w.sex_male[elig],
        w.disability[elig],
    ].astype(float)
    beta = np.linalg.lstsq(x[~exposed], y[~exposed], rcond=None)[0]
    att_hat = float((y[exposed] - x[exposed] @ beta).mean())
    return att_hat, float(w.ks4_effect[elig][exposed].mean())


def test_baseline_only_adjustment_is_biased_under_time_varying_confounding() -> None:
    """With everything true up to the first referral adjusted for, the ATT is right under
    default and visibly wrong under time_varying_confounding (later recorded adversity drives
    entry and lowers the score)."""
    est, truth = _baseline_only_bias("default")
    assert abs(est - truth) < 0.8, (est, truth)
    est, truth = _baseline_only_bias("time_varying_confounding")
    assert est - truth < -2.0, (est, truth)


def test_dental_caries_shares_cares_causes_and_has_no_care_effect() -> None:
    """The negative control: more frequent with adversity, deprivation and in authorities with
    more care entry; care itself leaves its rate unchanged (the world's own hazard uses no
    care term, so among children in need the looked-after excess is confounding only)."""
    from synthetic_data.world import EVENT_KINDS

    w = build_world(40_000, load_scenario("default"), 6)
    k = EVENT_KINDS.index("dental_caries")
    cnt = np.bincount(w.ev_person[w.ev_kind == k], minlength=w.n)
    years = (w.fu_end - w.fu_start) / 365.25
    rate = cnt.sum() / years.sum()
    assert 0.001 < rate < 0.01, rate
    adv = w.adversity.sum(axis=1) > 0
    assert cnt[adv].sum() / years[adv].sum() > 1.2 * cnt[~adv].sum() / years[~adv].sum()
    la_eff = w.la_care_effect[w.la_at_referral]
    hi = la_eff > np.median(la_eff)
    # about 1.8 with the default loading of 1.0 (1.0 without it)
    assert cnt[hi].sum() / years[hi].sum() > 1.4 * cnt[~hi].sum() / years[~hi].sum()


def test_causal_graph_names_every_causal_key() -> None:
    from synthetic_data.causal_graph import CAUSAL_KEYS_ELSEWHERE, CAUSAL_SECTIONS, EDGES, mermaid
    from synthetic_data.scenario import Scenario

    sc = Scenario()
    on_edges = {k for e in EDGES for k in e.keys}
    for key in on_edges:  # every key an edge names exists
        section, name = key.split(".")
        assert name in type(getattr(sc, section)).model_fields, key
    causal = {f"{s}.{k}" for s in CAUSAL_SECTIONS for k in type(getattr(sc, s)).model_fields} | set(
        CAUSAL_KEYS_ELSEWHERE
    )
    assert causal <= on_edges, causal - on_edges
    text = mermaid(load_scenario("time_varying_confounding"))
    assert "review --> care" in text and "care --> newadv" in text
    assert "review -.-> care" in mermaid(sc)  # switched off by default


@pytest.mark.parametrize("scenario", ["time_varying_confounding", "effect_modification"])
def test_new_scenarios_give_identical_bytes_per_seed(tmp_path: Path, scenario: str) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    generate_world(n_children=1500, seed=9, scenario=scenario, out_dir=a)
    generate_world(n_children=1500, seed=9, scenario=scenario, out_dir=b)
    assert _hashes(a) == _hashes(b)
    assert len(_hashes(a)) == 7 + 1 + 10  # 10 truth files: ks4_entry_trials.json the tenth


def test_each_study_outcome_has_its_truth_and_its_own_diagnoses(tmp_path: Path) -> None:
    """Every outcome of the shipped study config has a true hazard ratio in effects.json under
    its own name (so benchmarks/coverage_seeds.py scores it), and each code-list outcome picks
    out exactly the generator's event kind it stands for: dental caries (K02) is counted by the
    dental_caries group only, never by appendicitis or another outcome's group."""
    import json

    from cohort.config import KNOWN_OUTCOMES, load_study_config
    from schemas.contracts import load_codelist
    from synthetic_data.extracts import DIAGNOSES

    outcomes = load_study_config().outcomes
    assert {o.name for o in outcomes} == set(KNOWN_OUTCOMES)
    generate_world(n_children=300, seed=2, out_dir=tmp_path)
    effects = json.loads((tmp_path / "truth" / "effects.json").read_text(encoding="utf-8"))
    hazard = {
        e["outcome"]: e["value"]
        for e in effects["estimands"]
        if e["contrast"] == "cla_vs_nla" and e["scale"] == "hazard_ratio"
    }
    assert set(KNOWN_OUTCOMES) <= set(hazard), set(KNOWN_OUTCOMES) - set(hazard)
    assert hazard["dental_caries"] == hazard["appendicitis"] == 1.0

    groups = load_codelist("icd10_groups")

    def in_group(code: str, group: str) -> bool:
        return groups[group]["code_from"] <= code[:3] <= groups[group]["code_to"]

    kind_of_group = {
        "self_harm": "self_harm",
        "mental_behavioural": "mental_health",
        "appendicitis": "appendicitis",
        "dental_caries": "dental_caries",
    }
    by_group = {o.codelist_group for o in outcomes if o.codelist_group}
    assert by_group == set(kind_of_group), by_group
    for group, kind in kind_of_group.items():
        for other, codes in DIAGNOSES.items():
            hits = [c for c in codes if in_group(c, group)]
            assert hits == (codes if other == kind else []), (group, other, hits)
    # a chapter group contains an outcome group whole or not at all (nested, never overlapping)
    for a in groups.values():
        for b in groups.values():
            overlap = a["code_from"] <= b["code_to"] and b["code_from"] <= a["code_to"]
            nested = a["code_from"] <= b["code_from"] and b["code_to"] <= a["code_to"]
            nested |= b["code_from"] <= a["code_from"] and a["code_to"] <= b["code_to"]
            assert not overlap or nested, (a["group"], b["group"])


def test_residence_at_is_the_last_residence_begun_by_the_day() -> None:
    """The counting look-up agrees with its definition (a binary search over every residence,
    the code before it), including days before a person's first residence and after the last."""
    from synthetic_data.world import WINDOW_START

    w = build_world(3_000, load_scenario("default"), 4, with_health=False)
    rng = np.random.default_rng(0)
    person = rng.integers(0, w.n, 50_000)
    span = w.fu_end[person] - w.fu_start[person]
    when = w.fu_start[person] - 30 + (rng.random(person.size) * (span + 60)).astype(np.int64)
    when[:100] = w.res_start[np.searchsorted(w.res_person, person[:100], side="right") - 1]
    keys = w.res_person * 100_000 + (w.res_start - WINDOW_START + 20_000)
    q = person * 100_000 + (when - WINDOW_START + 20_000)
    first = np.searchsorted(w.res_person, person, side="left")
    expected = np.maximum(np.searchsorted(keys, q, side="right") - 1, first)
    assert (w.res_count > 2).any()  # people who moved more than once are in the test
    assert np.array_equal(w.residence_at(person, when), expected)


def test_parquet_extracts_hold_text_as_csv_does(tmp_path: Path) -> None:
    """The school census keeps its counts and flags as integers until written: a parquet
    extract holds them as the same text as the CSV extract (record by record; the two formats
    differ only in which rows carry defects, never in these columns)."""
    generate_world(n_children=400, seed=5, out_dir=tmp_path / "csv")
    generate_world(n_children=400, seed=5, out_dir=tmp_path / "pq", file_format="parquet")
    pq = pl.read_parquet(tmp_path / "pq" / "school_census.parquet")
    assert set(pq.dtypes) == {pl.String}, pq.schema
    csv = pl.read_csv(
        tmp_path / "csv" / "school_census.csv", infer_schema=False, truncate_ragged_lines=True
    )
    counts = [
        "academic_year",
        "deprivation_decile",
        "free_school_meals",
        "sessions_possible",
        "sessions_authorised_absence",
        "sessions_unauthorised_absence",
        "fixed_exclusions",
        "permanent_exclusion",
    ]
    both = pq.unique("record_id").join(csv.unique("record_id"), on="record_id", suffix="_csv")
    assert both.height > 0.99 * pq.height
    for c in counts:
        assert both[c].equals(both[f"{c}_csv"], check_names=False), c
        assert both[c].str.contains(r"^[0-9]+$").all(), c


def test_ks2_depends_only_on_adversity_begun_before_year_6() -> None:
    """KS2's potential outcomes, computed by hand: Y(0) less the KS4 cost of each adversity
    (had the child never entered care) begun on or after 1 September of year 6. Fails while
    KS2 read the KS4 Y(0), which counts adversity up to year 11."""
    from synthetic_data.world import expit

    sc = load_scenario("time_varying_confounding")
    w = build_world(4_000, sc, 3, with_health=False)
    onset = w.onset_no_care
    begun = onset >= 0
    late = (begun & (onset >= w.ks2_start[:, None]) & (onset < w.ks4_start[:, None])).sum(axis=1)
    assert (late > 0).sum() > 50  # children whose adversity begins between KS2 and KS4
    y2 = w.ks4_y0 - sc.outcomes.ks4_per_adversity * late
    assert np.allclose(w.ks2_p0, expit((y2 - 40.0) / 7.0), rtol=0, atol=1e-12)
    care = w.care_days_before_ks2 > 0
    expected_p1 = expit((y2 - 40.0) / 7.0 + sc.effects.ks2_log_or_care * care)
    assert np.allclose(w.ks2_p1, expected_p1, rtol=0, atol=1e-12)
