"""Issue #21: differential linkage error in the synthetic world, link draws from match
probabilities, Rubin's rules, and the true-link / drawn-link analysis zones."""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import polars as pl
import pytest

from ground.errors import ConfigError
from ground.run_layout import RunLayout
from linkage.imputation import (
    STRATA,
    CandidateLinks,
    LinkDrawError,
    draw_edges,
    edge_labels,
    edge_records,
    fit_calibration,
    load_candidates,
    record_person_for,
    review_sample,
    satellite_shares,
    true_record_person,
    write_link_set_zone,
)
from models.pooling import PoolingError, rubin_pool
from synthetic_data.linkage_error import DifferentialNoise, GroupMultipliers, record_rate
from synthetic_data.scenario import Scenario, load_scenario

# ---------------------------------------------------------------- differential noise


def test_differential_rates_multiply_by_group_and_default_returns_the_base_rate() -> None:
    person = np.arange(4)
    first_entry = np.array([-1, 100, 100, -1])
    kw = dict(
        first_entry=first_entry,
        decile=np.array([1, 1, 10, 10]),
        minority=np.array([False, False, False, True]),
        moves=np.zeros(4, np.int64),
    )
    # default: the base rate itself (a float), so default extracts draw exactly as before
    assert record_rate(0.06, "missing_nhs", DifferentialNoise(), person, None, **kw) == 0.06
    diff = DifferentialNoise(
        looked_after=GroupMultipliers(missing_nhs=5.0),
        most_deprived=GroupMultipliers(missing_nhs=2.0),
    )
    when = np.array([50, 50, 200, 200])  # person 1's record predates entry, person 2's follows
    rate = record_rate(0.06, "missing_nhs", diff, person, when, **kw)
    np.testing.assert_allclose(rate, [0.06, 0.06, 0.06 * 5 * 2, 0.06 * 2])
    # capped at 1
    big = DifferentialNoise(looked_after=GroupMultipliers(missing_nhs=50.0))
    assert record_rate(0.5, "missing_nhs", big, person, when, **kw).max() == 1.0


def test_shipped_scenario_loads_and_unknown_group_key_is_named(tmp_path: Path) -> None:
    sc = load_scenario("differential_linkage_error")
    assert sc.noise.differential.looked_after.missing_nhs > 1
    assert Scenario().noise.differential.is_neutral()
    bad = tmp_path / "bad.yaml"
    bad.write_text("noise:\n  differential:\n    looked_after:\n      missing_nsh: 2.0\n")
    with pytest.raises(ConfigError, match="missing_nsh.*allowed keys here: typo"):
        load_scenario(bad)


def test_differential_world_loses_looked_after_childrens_nhs_numbers(tmp_path: Path) -> None:
    from synthetic_data import generate_world

    generate_world(n_children=1500, seed=5, scenario="differential_linkage_error", out_dir=tmp_path)
    truth = tmp_path / "truth"
    noise = pl.read_parquet(truth / "identifier_noise.parquet")
    assert noise.filter(pl.col("noise") == "placement_postcode").height > 0
    rp = pl.read_parquet(truth / "record_person.parquet")
    cla = rp.filter(pl.col("source") == "looked_after_episodes")["person_id"].unique()
    adm = rp.filter(pl.col("source") == "hospital_admissions").with_columns(
        cla=pl.col("person_id").is_in(cla.implode()),
        missing=pl.col("record_id").is_in(
            noise.filter(
                (pl.col("source") == "hospital_admissions") & (pl.col("noise") == "missing_nhs")
            )["record_id"].implode()
        ),
    )
    rate = dict(adm.group_by("cla").agg(pl.col("missing").mean()).iter_rows())
    # looked-after children's admissions (before and after entry) miss the NHS number far
    # more often than the 6% of everyone else (x5 after entry, x2 if most deprived)
    assert rate[False] < 0.10
    assert rate[True] > 2 * rate[False]


# ---------------------------------------------------------------- link draws


def _candidates(edges: list[tuple[int, int, float]], spine: list[bool]) -> CandidateLinks:
    n = len(spine)
    return CandidateLinks(
        records=pl.DataFrame(
            {
                "source": ["population_register" if s else "hospital_admissions" for s in spine],
                "record_id": [f"R{i:03d}" for i in range(n)],
                "component": list(range(n)),
            }
        ),
        edge_a=np.array([e[0] for e in edges], np.int64),
        edge_b=np.array([e[1] for e in edges], np.int64),
        edge_p=np.array([e[2] for e in edges]),
        spine=np.array(spine),
    )


def test_draws_follow_the_match_probabilities_and_link_a_record_group_to_one_person() -> None:
    # component 2 (hospital records) has two register candidates (0 at 0.5, 1 at 0.3);
    # component 3 (hospital) pairs with component 4 (hospital) at 0.8, no constraint there
    c = _candidates([(0, 2, 0.5), (1, 2, 0.3), (3, 4, 0.8)], [True, True, False, False, False])
    rng = np.random.default_rng(0)
    n = 4000
    kept = np.array([draw_edges(c, rng) for _ in range(n)])
    freq = kept.mean(axis=0)
    se = np.sqrt(np.array([0.5, 0.3, 0.8]) * (1 - np.array([0.5, 0.3, 0.8])) / n)
    # each edge drawn at its probability (a draw that ignores them, e.g. linking at p >= 0.5,
    # gives 1, 0, 1 here and fails)
    assert np.all(np.abs(freq - [0.5, 0.3, 0.8]) < 4 * se)
    # the hospital records join at most one register person
    assert not (kept[:, 0] & kept[:, 1]).any()


def test_candidates_chosen_by_odds_when_their_probabilities_sum_above_one() -> None:
    """Two candidates at 0.9: each 9 / 19, none 1 / 19. A sure link (0.999999) beside a false
    0.89 candidate: the false one almost never (scaling both to sum 1, the old rule, gave it
    47%: this test failed on it)."""
    c = _candidates([(0, 2, 0.9), (1, 2, 0.9)], [True, True, False])
    rng = np.random.default_rng(1)
    n = 4000
    kept = np.array([draw_edges(c, rng) for _ in range(n)])
    assert not (kept[:, 0] & kept[:, 1]).any()  # never both
    for freq in kept.mean(axis=0):
        assert abs(freq - 9 / 19) < 4 * np.sqrt(9 / 19 * 10 / 19 / n)
    assert abs((~kept.any(axis=1)).mean() - 1 / 19) < 4 * np.sqrt(1 / 19 * 18 / 19 / n)
    sure = _candidates([(0, 2, 0.999999), (1, 2, 0.89)], [True, True, False])
    kept = np.array([draw_edges(sure, rng) for _ in range(n)])
    assert kept[:, 1].mean() < 0.001


def test_record_person_of_a_draw_is_connected_components() -> None:
    c = _candidates([(0, 1, 1.0), (2, 3, 1.0)], [True, False, True, False])
    rp = record_person_for(c, np.array([True, False]), np.random.default_rng(0))
    persons = rp.group_by("person_id").len()
    assert sorted(persons["len"].to_list()) == [1, 1, 2]
    assert rp.filter(pl.col("record_id") == "R003")["link_method"].item() == "unlinked"
    assert rp.filter(pl.col("record_id") == "R000")["link_method"].item() == "probabilistic"
    assert rp.filter(pl.col("record_id") == "R000")["match_probability"].item() == 1.0
    # a draw's person keys: no record id in them, the same from the same seed
    assert not rp["person_key"].str.contains("R0").any()
    again = record_person_for(c, np.array([True, False]), np.random.default_rng(0))
    assert again.equals(rp)


# ---------------------------------------------------------------- candidates below the threshold


def test_candidate_rule_proposes_a_nameless_record_with_a_named_one_only() -> None:
    """The candidate rule (date of birth + sex + postcode area) pairs a record with no name (a
    health record) with a named one, never two named records (those the usual rules score) nor
    two nameless ones, and only where the nameless record's postcode is one no register record
    holds (the flag ``postcode_unknown``). Shown failing with the name condition dropped (the
    named pair (0, 1) is proposed) and with the rule of 2026-12-02, date of birth + sex
    (record 5, at a known address, and record 6, in another postcode area, are proposed)."""
    from linkage.comparisons import PIPELINE_COLUMNS
    from linkage.link import PIPELINE_PLAN, candidate_rule_sql

    sql = candidate_rule_sql(
        PIPELINE_PLAN.candidate_rules[0],
        PIPELINE_COLUMNS,
        across_tables=False,
        unknown_postcode=PIPELINE_PLAN.candidate_unknown_postcode_table is not None,
    )
    prof = pl.DataFrame(
        {
            "profile_id": [0, 1, 2, 3, 4, 5, 6],
            "component": [0, 1, 2, 3, 4, 5, 6],
            "first_name": ["amy", "amy", None, None, "amy", None, None],
            "surname": ["ray", "roy", None, None, "ray", None, None],
            "date_of_birth": ["2010-01-02"] * 4 + ["2011-01-02"] + ["2010-01-02"] * 2,
            "sex": ["F"] * 7,
            "postcode_area": ["CF"] * 6 + ["SA"],
            "postcode_unknown": [False, False, True, True, False, False, True],
        }
    )
    con = duckdb.connect()
    con.register("p", prof)
    pairs = con.sql(
        f"SELECT l.profile_id, r.profile_id FROM p l JOIN p r ON l.profile_id < r.profile_id "
        f"AND {sql} ORDER BY 1, 2"
    ).fetchall()
    assert pairs == [(0, 2), (0, 3), (1, 2), (1, 3)]


def _strata_candidates(n: int, rng: np.random.Generator) -> tuple[CandidateLinks, np.ndarray]:
    """Edges between a register component and a health one, in strata whose true share of
    matches is known and far from Splink's probability (0.3 in every edge)."""
    rule = rng.random(n) < 0.5
    care = rng.random(n) < 0.3
    unknown = rng.random(n) < 0.3
    true_p = np.where(rule, np.where(care & unknown, 0.9, 0.05), 0.6)
    c = CandidateLinks(
        records=pl.DataFrame(
            {
                "source": ["population_register"] * n + ["hospital_admissions"] * n,
                "record_id": [f"P{i}" for i in range(n)] + [f"H{i}" for i in range(n)],
                "component": list(range(2 * n)),
            }
        ),
        edge_a=np.arange(n, dtype=np.int64),
        edge_b=np.arange(n, 2 * n, dtype=np.int64),
        edge_p=np.full(n, 0.3),
        spine=np.r_[np.ones(n, bool), np.zeros(n, bool)],
        edge_w=np.full(n, -1.2),
        edge_candidate_rule=rule,
        edge_looked_after=care,
        edge_unknown_postcode=unknown,
    )
    return c, rng.random(n) < true_p


def test_calibration_recovers_each_strata_share_of_true_matches_from_a_review_sample() -> None:
    """2,000 labelled pairs of 20,000: the calibrated probabilities match the true share of
    matches in every stratum within 0.1 (3 binomial SEs of a stratum's 250 labels; Splink's
    0.3 is off by 0.25-0.6); the labels are found again from the records a reviewer is
    shown."""
    rng = np.random.default_rng(5)
    c, is_match = _strata_candidates(20_000, rng)
    edges = review_sample(c, 2000, rng)
    assert edges.size == 2000
    # every stratum gets its equal share of the labels, the rare ones too (candidate rule x
    # looked after x unknown postcode: 4.5% of the pairs, 1/8 of the labels)
    strata = [tuple(r) for r in c.strata()[edges]]
    assert len(set(strata)) == 8
    assert strata.count((1, 1, 1, 0, 4)) == 250
    labels = edge_records(c, edges).with_columns(is_match=pl.Series(is_match[edges]))
    found, y = edge_labels(c, labels)
    np.testing.assert_array_equal(np.sort(found), edges)
    cal = fit_calibration(c, found, y)
    p = cal.probabilities(c)
    for key in {tuple(r) for r in c.strata()}:
        sel = (c.strata() == np.array(key)).all(axis=1)
        assert abs(p[sel].mean() - is_match[sel].mean()) < 0.1, key
    assert list(cal.table.columns[: len(STRATA)]) == list(STRATA)
    with pytest.raises(LinkDrawError, match="at least 50 labelled pairs"):
        fit_calibration(c, found[:10], y[:10])


def _register_and_admissions() -> tuple[dict[str, pl.DataFrame], dict[str, dict[str, str]]]:
    """Six register children and five admissions. ``h_missed``: Ava's admission with no NHS
    number and a placement postcode no register row holds, in her postcode area (the
    differential scenario's missed link); Ava shares her date of birth and sex with Isla, the
    decoy. ``h_known``: an admission with no NHS number born the same day as Ava and Isla, at
    Ella's address (a postcode the register holds): the usual date of birth + postcode rule is
    where such a record meets the children living there, so the candidate rule leaves it."""
    register = pl.DataFrame(
        {
            "rid": [f"p{i}" for i in range(6)],
            "nhs": ["9000000001", "9000000002", "9000000003", "9000000004", "9000000005", None],
            "first": ["ava", "isla", "noah", "leo", "mia", "ella"],
            "last": ["jones", "price", "evans", "davies", "hughes", "lewis"],
            "dob": [
                "2008-03-14",
                "2008-03-14",
                "2007-11-02",
                "2009-06-30",
                "2010-01-09",
                "2006-05-05",
            ],
            "sex": ["F", "F", "M", "M", "F", "F"],
            "pc": ["CF10 1AA", "CF24 3BB", "SA1 2CC", "LL57 3DD", "NP20 4EE", "CF5 9FF"],
        }
    )
    admissions = pl.DataFrame(
        {
            "rid": ["h_missed", "h_nhs", "h_postcode", "h_other", "h_known"],
            "nhs": [None, "9000000003", None, "9000000004", None],
            "dob": ["2008-03-14", "2007-11-02", "2010-01-09", "2009-06-30", "2008-03-14"],
            "sex": ["F", "M", "F", "M", "F"],
            "pc": ["CF48 9ZZ", "SA1 2CC", "NP20 4EE", "LL57 3DD", "CF5 9FF"],
        }
    )
    roles = {
        "population_register": {
            "record_id": "rid",
            "nhs_number": "nhs",
            "first_name": "first",
            "surname": "last",
            "date_of_birth": "dob",
            "sex": "sex",
            "postcode": "pc",
        },
        "hospital_admissions": {
            "record_id": "rid",
            "nhs_number": "nhs",
            "date_of_birth": "dob",
            "sex": "sex",
            "postcode": "pc",
        },
    }
    return {"population_register": register, "hospital_admissions": admissions}, roles


def _zone_of(result: object, *, with_candidates: bool) -> duckdb.DuckDBPyConnection:
    """A linkage zone's tables from a LinkResult (record ids only), in memory."""
    con = duckdb.connect()
    con.execute("CREATE SCHEMA linkage")
    clusters = result.clusters  # type: ignore[attr-defined]
    con.register("c", clusters)
    con.execute(
        'CREATE TABLE linkage.record_person AS SELECT "table" AS source, record_id, '
        "component_id FROM c"
    )
    con.register("p", result.pairs)  # type: ignore[attr-defined]
    con.execute("CREATE TABLE linkage.scored_pairs AS SELECT * FROM p")
    if with_candidates:
        con.register("k", result.candidate_pairs)  # type: ignore[attr-defined]
        con.execute("CREATE TABLE linkage.candidate_pairs AS SELECT * FROM k")
    return con


def test_a_planted_missed_link_is_scored_as_a_candidate_and_recovered_by_draws(
    linked_run: Path,
) -> None:
    """The linker leaves Ava's placement-address admission unlinked (nothing it blocks on
    agrees), exactly as before; the candidate rule scores it with Ava and with Isla (same
    date of birth, sex and postcode area) and draws link it to one of them. The planted
    error, drawing only among the pairs the linker scores from 0.5 (the old behaviour: no
    candidate pairs), never recovers it. Shown failing with `candidate_floor=None` (no
    candidate pairs: recovered in 0 of 200 draws), and with the candidate rule of 2026-12-02
    (date of birth + sex: ``h_known``, at a known address, gets 2 candidate-rule pairs)."""
    from linkage import LinkageSettings
    from linkage.link import link_tables

    tables, roles = _register_and_admissions()
    model = RunLayout.at(linked_run).linkage_dir / "model.json"  # tiny data cannot train
    kept = LinkageSettings(model_path=str(model), candidate_floor=0.001)
    result = link_tables(tables, roles, settings=kept)
    # off by default: the same links, no candidate pairs
    plain = link_tables(tables, roles, settings=LinkageSettings(model_path=str(model)))
    assert plain.candidate_pairs is None
    assert plain.clusters.equals(result.clusters)
    cluster = dict(
        zip(
            result.clusters["record_id"].to_list(),
            result.clusters["cluster_id"].to_list(),
            strict=True,
        )
    )
    # the linker: the NHS number and the postcode link their admissions; the missed one is alone
    assert cluster["h_nhs"] == cluster["p2"] and cluster["h_postcode"] == cluster["p4"]
    assert sum(v == cluster["h_missed"] for v in cluster.values()) == 1
    cand = result.candidate_pairs
    assert cand is not None
    group = dict(
        zip(
            result.clusters["record_id"].to_list(),
            result.clusters["component_id"].to_list(),
            strict=True,
        )
    )

    def touches(record: str) -> pl.Expr:
        g = group[record]
        return (pl.col("component_id_l") == g) | (pl.col("component_id_r") == g)

    missed = cand.filter(touches("h_missed"))
    partners = set(missed["component_id_l"].to_list() + missed["component_id_r"].to_list()) - {
        group["h_missed"]
    }
    assert partners == {group["p0"], group["p1"]} and missed["candidate_rule"].all()
    # at a known address: no candidate-rule pair (the date of birth + sex rule of 2026-12-02
    # paired it with Ava and Isla too)
    known = cand.filter(pl.col("candidate_rule") & touches("h_known"))
    assert known.height == 0

    def p_of(child: str) -> float:
        return float(missed.filter(touches(child))["match_probability"].item())

    # Ava's share of the draws: her probability, or by odds where Ava's and Isla's sum above 1
    # (with the postcode area agreeing they score about 0.53 each)
    p_ava = float(satellite_shares(np.array([p_of("p0"), p_of("p1")]), np.array([0, 0]))[0])
    rng = np.random.default_rng(11)
    n = 200
    recovered = {}
    for with_candidates in (True, False):
        con = _zone_of(result, with_candidates=with_candidates)
        c = load_candidates(con)
        con.close()
        person = [record_person_for(c, draw_edges(c, rng), rng) for _ in range(n)]

        def same(rp: pl.DataFrame, ids: list[str]) -> bool:
            return rp.filter(pl.col("record_id").is_in(ids))["person_id"].n_unique() == 1

        recovered[with_candidates] = np.mean([same(rp, ["h_missed", "p0"]) for rp in person])
        # one register person per record group: never Ava and Isla at once
        assert not any(same(rp, ["p0", "p1"]) for rp in person)
    assert recovered[False] == 0.0
    # drawn at its share (from Splink's probabilities here: no labels to calibrate on)
    assert abs(recovered[True] - p_ava) < 4 * np.sqrt(p_ava * (1 - p_ava) / n)
    assert recovered[True] > 0


def test_candidate_rule_pairs_are_kept_only_from_a_group_without_a_register_person() -> None:
    """Candidate-rule pairs propose a register person for a record group that has none: one
    between two register groups (a register group's own nameless health record paired with
    another child born that day) or between a school group and a health record would, drawn
    independently, merge two children, and is dropped. Usual-rule pairs are all kept. Shown
    failing without the filter: 4 edges instead of 2."""
    con = duckdb.connect()
    con.execute("CREATE SCHEMA linkage")
    con.execute(
        """CREATE TABLE linkage.record_person AS SELECT * FROM (VALUES
        ('population_register', 'p0', 0), ('hospital_admissions', 'h0', 0),
        ('population_register', 'p1', 1), ('hospital_admissions', 'h9', 2),
        ('school_census', 's1', 3)) t(source, record_id, component_id)"""
    )
    pair = "SELECT * FROM (VALUES {}) t(table_l, record_id_l, table_r, record_id_r, "
    con.execute(
        "CREATE TABLE linkage.scored_pairs AS "
        + pair.format("('school_census', 's1', 'population_register', 'p1', 0.97, 5.0)")
        + "match_probability, match_weight)"
    )
    # by record group (component_id): h9 with p1, p0 with p1, h9 with s1
    con.execute(
        """CREATE TABLE linkage.candidate_pairs AS SELECT * FROM (VALUES
        (2, 1, 0.1, -3.2, true), (0, 1, 0.1, -3.2, true), (2, 3, 0.1, -3.2, true))
        t(component_id_l, component_id_r, match_probability, match_weight, candidate_rule)"""
    )
    c = load_candidates(con)
    con.close()
    assert c.edge_candidate_rule is not None
    edges = sorted(
        zip(c.edge_a.tolist(), c.edge_b.tolist(), c.edge_candidate_rule.tolist(), strict=True)
    )
    # components 0 (p0+h0), 1 (p1), 2 (h9), 3 (s1)
    assert edges == [(1, 2, True), (1, 3, False)]


def test_care_then_codes_the_register_childs_care_on_the_health_records_date() -> None:
    """A nameless health record at a placement address is a candidate for every child born
    that day in the area; the child in care on the record's date is the likely one. The code
    reads the care episodes of the register child's person as the linker linked them (Ava's
    episode is a record group of its own, joined to her register record by Splink), and an
    open episode runs on. A record after the child left care is coded apart (2): it may carry
    an old placement address too."""
    con = duckdb.connect()
    con.execute("CREATE SCHEMA linkage")
    con.execute("CREATE SCHEMA staging")
    # record group (component_id) and the linker's person of each record
    con.execute(
        """CREATE TABLE linkage.record_person AS SELECT * FROM (VALUES
        ('population_register',   'p_ava',  0, 'A'),
        ('looked_after_episodes', 'e_ava',  1, 'A'),
        ('population_register',   'p_isla', 2, 'I'),
        ('looked_after_episodes', 'e_isla', 3, 'I'),
        ('population_register',   'p_noah', 4, 'N'),
        ('emergency_department',  'd1',     5, 'd1'),
        ('hospital_admissions',   'h1',     6, 'h1'),
        ('hospital_admissions',   'h2',     7, 'h2'))
        t(source, record_id, component_id, person_id)"""
    )
    con.execute(
        """CREATE TABLE staging.looked_after_episodes AS SELECT * FROM (VALUES
        ('e_ava',  DATE '2020-01-01', DATE '2020-12-31'),
        ('e_isla', DATE '2018-06-01', NULL)) t(record_id, episode_start, episode_end)"""
    )
    con.execute(
        "CREATE TABLE staging.emergency_department AS "
        "SELECT 'd1' AS record_id, DATE '2020-06-01' AS arrival_date"
    )
    con.execute(
        "CREATE TABLE staging.hospital_admissions AS "
        "SELECT * FROM (VALUES ('h1', DATE '2019-01-01'), ('h2', DATE '2021-03-01')) "
        "t(record_id, admission_date)"
    )
    con.execute(
        """CREATE TABLE linkage.scored_pairs AS SELECT * FROM (VALUES
        ('looked_after_episodes', 'e_ava', 'population_register', 'p_ava', 0.99, 9.0),
        ('looked_after_episodes', 'e_isla', 'population_register', 'p_isla', 0.99, 9.0))
        t(table_l, record_id_l, table_r, record_id_r, match_probability, match_weight)"""
    )
    con.execute(
        """CREATE TABLE linkage.candidate_pairs AS SELECT * FROM (VALUES
        (5, 0, 0.08, -3.6, true), (5, 2, 0.08, -3.6, true), (5, 4, 0.08, -3.6, true),
        (6, 0, 0.08, -3.6, true), (6, 2, 0.08, -3.6, true),
        (7, 0, 0.08, -3.6, true), (7, 4, 0.08, -3.6, true))
        t(component_id_l, component_id_r, match_probability, match_weight, candidate_rule)"""
    )
    c = load_candidates(con)
    con.close()
    assert c.edge_care_then is not None
    got = sorted(zip(c.edge_a.tolist(), c.edge_b.tolist(), c.edge_care_then.tolist(), strict=True))
    assert got == [
        (0, 1, 0),  # Ava's register record and her care episode: no health record
        (0, 5, 1),  # the attendance of 2020-06-01, Ava in care in 2020
        (0, 6, 0),  # the admission of 2019-01-01, before Ava entered care
        (0, 7, 2),  # the admission of 2021-03-01, after Ava left care
        (2, 3, 0),
        (2, 5, 1),  # Isla in care since 2018, open episode
        (2, 6, 1),
        (4, 5, 0),  # Noah never in care
        (4, 7, 0),
    ]
    assert c.strata()[:, STRATA.index("care_then")].tolist() == [0, 1, 0, 2, 0, 1, 1, 0, 0]


def test_a_zone_with_candidate_pairs_by_record_is_refused_with_relink() -> None:
    """A linkage zone written before 2026-12-03 stores candidate pairs by representative
    record; the draws read them by record group, so they ask for a relink instead of failing
    in SQL."""
    con = duckdb.connect()
    con.execute("CREATE SCHEMA linkage")
    con.execute(
        "CREATE TABLE linkage.record_person AS SELECT * FROM (VALUES "
        "('population_register', 'p0', 0)) t(source, record_id, component_id)"
    )
    con.execute(
        "CREATE TABLE linkage.scored_pairs (table_l VARCHAR, record_id_l VARCHAR, "
        "table_r VARCHAR, record_id_r VARCHAR, match_probability DOUBLE, match_weight DOUBLE)"
    )
    con.execute(
        "CREATE TABLE linkage.candidate_pairs AS SELECT *, true AS candidate_rule "
        "FROM linkage.scored_pairs"
    )
    with pytest.raises(LinkDrawError, match="names records.*relink the run with `cohort link`"):
        load_candidates(con)
    con.close()


# ---------------------------------------------------------------- Rubin's rules


def _draw_tables(q: np.ndarray, se: float) -> list[pd.DataFrame]:
    """One estimates table per draw (column of ``q``); each row of ``q`` is one study."""
    q = np.atleast_2d(q)
    return [
        pd.DataFrame(
            {
                "outcome": [f"study_{i}" for i in range(q.shape[0])],
                "contrast": "c",
                "method": "m",
                "scale": "mean_difference",
                "estimate": q[:, d],
                "ci_low": q[:, d] - 1.959964 * se,
                "ci_high": q[:, d] + 1.959964 * se,
            }
        )
        for d in range(q.shape[1])
    ]


def test_rubin_pool_matches_the_hand_computation() -> None:
    q = np.array([1.0, 1.4, 0.8, 1.2])
    out = rubin_pool(_draw_tables(q, 0.5)).iloc[0]
    w, b, m = 0.25, q.var(ddof=1), 4
    t = w + (1 + 1 / m) * b
    assert out["estimate"] == pytest.approx(q.mean())
    assert out["total_var"] == pytest.approx(t)
    assert out["linkage_share"] == pytest.approx((1 + 1 / m) * b / t)
    with pytest.raises(PoolingError, match="at least 2 draws"):
        rubin_pool(_draw_tables(q[:1], 0.5))


def test_linkage_aware_intervals_cover_where_pooling_without_between_variance_does_not() -> None:
    """Simulated studies (truth 0): sampling error of SD 1 (the within-draw SE); the observed
    links put the estimate off by an error of SD 1, and the link draws spread around it with
    the same SD (proper imputation). Rubin's rules cover about 95% with the right width; the
    planted error, pooling without the between-draw variance, gives intervals too narrow and
    coverage far below."""
    rng = np.random.default_rng(21)
    studies, m, s, tau = 2000, 10, 1.0, 1.0
    q = (
        rng.normal(0, s, (studies, 1))  # sampling error (shared by the draws of a study)
        + rng.normal(0, tau, (studies, 1))  # linkage error of the observed links
        + rng.normal(0, tau, (studies, m))  # each draw's own link set
    )
    good = rubin_pool(_draw_tables(q, s))
    bad = rubin_pool(_draw_tables(q, s), include_between=False)
    # no bias; the pooled estimate's spread is the one the total variance claims
    assert abs(good["estimate"].mean()) < 0.1
    sd = np.sqrt(s**2 + tau**2 + tau**2 / m)
    assert good["estimate"].std() == pytest.approx(sd, rel=0.06)
    assert np.sqrt(good["total_var"]).mean() == pytest.approx(sd, rel=0.06)
    cover = ((good["ci_low"] <= 0) & (good["ci_high"] >= 0)).mean()
    cover_planted = ((bad["ci_low"] <= 0) & (bad["ci_high"] >= 0)).mean()
    assert 0.93 <= cover <= 0.975
    assert cover_planted < 0.88
    assert (good["ci_high"] - good["ci_low"]).mean() > 1.3 * (bad["ci_high"] - bad["ci_low"]).mean()


# ---------------------------------------------------------------- zones from a link set


def test_true_links_zone_has_one_person_per_true_person(full_run: Path, world: Path) -> None:
    """The analysis zone written from the truth's links: as many persons as the truth has
    among the staged records, and the persons table as the linker writes it."""
    from ground.run_layout import RunLayout

    run = RunLayout.at(full_run)
    con = duckdb.connect(str(run.linkage_db), read_only=True)
    try:
        cand = load_candidates(con)
    finally:
        con.close()
    truth = pl.read_parquet(world / "truth" / "record_person.parquet")
    rp = true_record_person(cand.records, truth, b"t" * 20)
    out = RunLayout.at(full_run.parent / "true_links_zone")
    write_link_set_zone(run.linkage_db, rp, out)
    az = duckdb.connect(str(out.analysis_db), read_only=True)
    try:
        persons = az.execute("SELECT count(*) FROM analysis.persons").fetchone()[0]  # type: ignore[index]
        cols = [r[0] for r in az.execute("DESCRIBE analysis.persons").fetchall()]
    finally:
        az.close()
    staged_truth = cand.records.join(truth, on=["source", "record_id"], how="left")
    expected = (
        staged_truth["person_id"].drop_nulls().n_unique() + staged_truth["person_id"].null_count()
    )
    assert persons == expected
    assert "person_key" in cols and "high_quality_links" in cols


def _copy_with_candidate_pairs(full_run: Path, tmp_path: Path) -> Path:
    """A copy of the session run relinked with candidate pairs kept (off by default)."""
    import shutil

    from tests.e2e import _cohort, _env

    run = tmp_path / "run"
    shutil.copytree(full_run, run)
    settings = tmp_path / "with_candidates.yaml"
    settings.write_text("linkage:\n  candidate_floor: 0.001\n", encoding="utf-8")
    r = _cohort("link", "--run", str(run), "--settings", str(settings), env=_env(tmp_path))
    assert r.returncode == 0, r.stderr[-3000:]
    return run


@pytest.mark.slow
def test_link_uncertainty_command_pools_draws_beside_the_main_estimates(
    full_run: Path, tmp_path: Path
) -> None:
    """`cohort link-uncertainty` on a copy of the session run: two draws, pooled estimates
    beside the main ones, the draws' folders removed."""

    from tests.e2e import _cohort, _env

    run = _copy_with_candidate_pairs(full_run, tmp_path)
    r = _cohort(
        "link-uncertainty",
        "--run",
        str(run),
        "--draws",
        "2",
        "--bootstrap-replicates",
        "0",
        "--uncalibrated",
        env=_env(tmp_path),
        timeout=900,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "uncalibrated" in r.stdout
    table = pd.read_csv(run / "results" / "linkage_uncertainty.csv")
    assert {"main_estimate", "estimate", "ci_low", "ci_high", "linkage_share"} <= set(table.columns)
    main = table[(table["outcome"] == "ks4_score") & (table["method"] == "regression")]
    assert len(main) and main["linkage_share"].between(0, 1).all()
    assert not (run / "link_draws").exists()
    # a run without scored pairs is named, one line, exit 2
    r = _cohort("link-uncertainty", "--run", str(tmp_path / "nowhere"), env=_env(tmp_path))
    assert r.returncode == 2 and "cohort link" in r.stderr


def test_link_uncertainty_names_the_setting_when_the_run_kept_no_candidate_pairs(
    tmp_path: Path,
) -> None:
    """A run linked with the defaults (no candidate pairs) cannot be drawn from: one clear
    error naming `candidate_floor`, for draws and for a review sample alike."""
    from ground.errors import RunStateError
    from orchestration.link_uncertainty import run_link_uncertainty, write_review_sample

    run = RunLayout.at(tmp_path / "run")
    run.linkage_dir.mkdir(parents=True)
    con = duckdb.connect(str(run.linkage_db))
    con.execute("CREATE SCHEMA linkage")
    con.execute("CREATE TABLE linkage.scored_pairs (match_probability DOUBLE)")
    con.close()
    with pytest.raises(RunStateError, match="candidate_floor: 0.001"):
        run_link_uncertainty(run_dir=run.root, draws=2)
    with pytest.raises(RunStateError, match="candidate_floor: 0.001"):
        write_review_sample(run.root, pairs=10)


def test_link_draws_without_review_labels_stop_unless_asked_for_uncalibrated(
    tmp_path: Path,
) -> None:
    """Draws from Splink's own probabilities link too much on these data (docs/linkage_error.md
    "Draws need calibrated probabilities"), so a run without labelled review pairs is refused,
    naming both ways on, before anything is read or drawn; ``uncalibrated=True`` gets past the
    check (and then fails on this empty zone's candidate pairs, further on)."""
    import shutil

    from ground.errors import RunStateError
    from orchestration.link_uncertainty import run_link_uncertainty
    from tests.e2e import ROOT

    run = RunLayout.at(tmp_path / "run")
    for d in (run.linkage_dir, run.cohort_dir, run.results_dir):
        d.mkdir(parents=True)
    con = duckdb.connect(str(run.linkage_db))
    con.execute("CREATE SCHEMA linkage")
    con.execute("CREATE TABLE linkage.candidate_pairs (component_id_l BIGINT)")
    con.close()
    shutil.copy(ROOT / "cohort" / "study_default.yaml", run.cohort_dir / "study_config.yaml")
    (run.linkage_dir / "linkage_settings.yaml").write_text("{}\n", encoding="utf-8")
    (run.results_dir / "model_settings.yaml").write_text("{}\n", encoding="utf-8")
    (run.results_dir / "estimates.csv").write_text("outcome\n", encoding="utf-8")
    with pytest.raises(
        RunStateError, match="no labelled pairs.*--review-sample 1000.*--uncalibrated"
    ):
        run_link_uncertainty(run_dir=run.root, draws=2)
    with pytest.raises(Exception) as past:
        run_link_uncertainty(run_dir=run.root, draws=2, uncalibrated=True)
    assert "no labelled pairs" not in str(past.value)


def test_the_draws_read_the_reviewers_labels_from_the_zone(tmp_path: Path) -> None:
    """The labelled rows of ``linkage.link_review_sample`` are what the draws calibrate on
    (the unlabelled ones are not); a zone without the table has none. Failed before
    2026-12-03: the table lookup left a DuckDB result unfinished and reading the labels
    raised "connection has an unfinished result": `cohort link-uncertainty` failed on any zone
    holding a review sample."""
    from orchestration.link_uncertainty import _zone_labels

    run = RunLayout.at(tmp_path / "run")
    run.linkage_dir.mkdir(parents=True)
    con = duckdb.connect(str(run.linkage_db))
    con.execute("CREATE SCHEMA linkage")
    con.close()
    assert _zone_labels(run) is None
    con = duckdb.connect(str(run.linkage_db))
    con.execute(
        "CREATE TABLE linkage.link_review_sample (source_l VARCHAR, record_id_l VARCHAR, "
        "source_r VARCHAR, record_id_r VARCHAR, is_match BOOLEAN)"
    )
    con.execute(
        "INSERT INTO linkage.link_review_sample VALUES "
        "('school_census', 'S1', 'population_register', 'P1', true), "
        "('school_census', 'S2', 'population_register', 'P2', NULL)"
    )
    con.close()
    labels = _zone_labels(run)
    assert labels is not None and labels["record_id_l"].to_list() == ["S1"]


def test_link_draws_fit_the_named_analyses_or_name_the_declared_ones(tmp_path: Path) -> None:
    """`--analyses` chooses which of the run's declared analyses each draw fits, in declared
    order; a name the run does not declare is an error that lists the declared ones."""
    import shutil

    from ground.errors import ConfigError
    from orchestration.link_uncertainty import select_analyses
    from tests.e2e import ROOT

    run = RunLayout.at(tmp_path / "run")
    run.cohort_dir.mkdir(parents=True)
    shutil.copy(ROOT / "cohort" / "study_default.yaml", run.cohort_dir / "study_config.yaml")
    every = select_analyses(run, None)
    assert len(every) > 10
    chosen = select_analyses(run, ["time_to_event", "ks4_cla_vs_nla"])
    assert [a.name for a in chosen] == ["ks4_cla_vs_nla", "time_to_event"]
    with pytest.raises(ConfigError, match="time_to_evnt: not an analysis.*declares ks4_cla"):
        select_analyses(run, ["time_to_evnt", "ks4_cla_vs_nla"])
    with pytest.raises(ConfigError, match="empty"):
        select_analyses(run, [])


def test_review_sample_command_stores_pairs_for_review_in_the_zone_only(
    full_run: Path, tmp_path: Path
) -> None:
    """`cohort link-uncertainty --review-sample N` stores N candidate pairs (record ids and an
    empty is_match, no identifier) in the linkage zone of a copy of the session run, and
    writes nothing else: no draws, no results."""

    import duckdb

    from tests.e2e import _cohort, _env

    run = _copy_with_candidate_pairs(full_run, tmp_path)
    results_before = sorted(p.name for p in (run / "results").iterdir())
    r = _cohort("link-uncertainty", "--run", str(run), "--review-sample", "40", env=_env(tmp_path))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "linkage.link_review_sample" in r.stdout
    con = duckdb.connect(str(run / "linkage_zone.duckdb"), read_only=True)
    try:
        sample = con.execute("SELECT * FROM linkage.link_review_sample").df()
    finally:
        con.close()
    assert list(sample.columns) == [
        "source_l",
        "record_id_l",
        "source_r",
        "record_id_r",
        "is_match",
    ]
    assert 0 < len(sample) <= 40 and sample["is_match"].isna().all()
    assert sorted(p.name for p in (run / "results").iterdir()) == results_before
    assert not (run / "link_draws").exists()
