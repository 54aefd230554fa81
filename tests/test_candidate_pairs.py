"""Issue #21: the candidate pairs for link draws come from the same prediction as the linker's
own pairs (one Splink prediction, not two), and keeping them changes nothing the linker makes.

All on the small session run (4,000 children), relinked with its trained model (no training)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from ground.run_layout import RunLayout
from linkage import LinkageSettings, LinkResult
from linkage.imputation import CandidateLinks, load_candidates
from linkage.link import PIPELINE_PLAN, ModelPlan, link_tables
from linkage.pipeline import source_roles, staged_identifier_tables
from tests.test_linkage_error import _zone_of

FLOOR = 0.001  # the candidate floor a run meant for link draws sets
#: the candidate rule until 2026-12-02 (date of birth + sex, any postcode): the session world
#: (`default`) has almost no record at an address the register does not know, so the
#: pipeline's rule proposes few pairs there; this wide rule's many pairs exercise the one
#: prediction and the spine filter, which do not depend on the rule
WIDE_PLAN = dataclasses.replace(
    PIPELINE_PLAN,
    candidate_rules=(("date_of_birth", "sex"),),
    candidate_unknown_postcode_table=None,
)


@pytest.fixture(scope="module")
def relinked(linked_run: Path) -> dict[str, LinkResult]:
    """The session run's staged records relinked with its model: with the defaults, with
    candidate pairs kept, and with the linker's own prediction taken down to the candidate
    floor (``match_threshold`` at the floor: every usual pair from it up, predicted by the
    linker alone, as the old code predicted them before its second prediction)."""
    roles = source_roles()
    layout = RunLayout.at(linked_run)
    tables = staged_identifier_tables(layout, roles)
    model = str(layout.linkage_dir / "model.json")

    def link(plan: ModelPlan = PIPELINE_PLAN, **settings: float) -> LinkResult:
        return link_tables(
            tables, roles, plan=plan, settings=LinkageSettings(model_path=model, **settings)
        )

    return {
        "plain": link(),
        "pipeline": link(candidate_floor=FLOOR),
        "kept": link(WIDE_PLAN, candidate_floor=FLOOR),
        "usual_from_floor": link(match_threshold=FLOOR),
        # every candidate-rule pair kept, also those the draws drop (the code before
        # 2026-12-02 kept them all)
        "every_candidate": link(
            dataclasses.replace(WIDE_PLAN, candidate_spine_table=None), candidate_floor=FLOOR
        ),
    }


def test_keeping_candidate_pairs_changes_no_scored_pair_cluster_or_model(
    relinked: dict[str, LinkResult],
) -> None:
    """The linker's scored pairs, clusters, threshold and model are identical (as written)
    with candidate pairs kept and without."""
    plain = relinked["plain"]
    assert plain.candidate_pairs is None
    for name in ("kept", "pipeline"):
        kept = relinked[name]
        assert kept.candidate_pairs is not None, name
        assert kept.pairs.equals(plain.pairs), name
        assert kept.clusters.equals(plain.clusters), name
        assert kept.match_threshold == plain.match_threshold, name
        assert kept.model_json == plain.model_json, name


def test_candidate_pairs_are_the_usual_pairs_below_the_floor_then_the_candidate_rule_pairs(
    relinked: dict[str, LinkResult],
) -> None:
    """The candidate pairs are (1) every pair the usual rules make from the candidate floor to
    the linker's floor, with the probability the linker's own prediction gives it (the usual
    pairs predicted by the linker alone, down to the floor, split at 0.5), then (2) pairs no
    usual rule makes, all from the floor up; each part sorted by profile pair, as before."""
    kept, reference = relinked["kept"], relinked["usual_from_floor"]
    cand = kept.candidate_pairs
    assert cand is not None
    below = cand.filter(~pl.col("candidate_rule")).drop("candidate_rule")
    extra = cand.filter(pl.col("candidate_rule"))
    # (1) the same rows, probabilities and order as the linker's own prediction (its pairs are
    # reported by one record of each record group; the candidates by the groups themselves)
    expected_below = by_group(reference, reference.pairs.filter(pl.col("match_probability") < 0.5))
    assert below.height > 0
    assert below.equals(expected_below)
    assert kept.pairs.equals(reference.pairs.filter(pl.col("match_probability") >= 0.5))
    # (2) then the candidate rule's own pairs, none below the floor. (A usual rule may pair
    # other profiles of the same two record groups, so the group pairs may repeat.)
    assert extra.height > 0
    assert cand["candidate_rule"].to_list() == [False] * below.height + [True] * extra.height
    assert (extra["match_probability"] >= FLOOR).all()


def by_group(result: LinkResult, pairs: pl.DataFrame) -> pl.DataFrame:
    """Scored pairs of records (``LinkResult.pairs``) as pairs of their record groups
    (``component_id`` in ``result.clusters``), in the same order."""
    group = result.clusters.select("table", "record_id", "component_id")
    out = pairs
    for side in ("l", "r"):
        out = out.join(
            group.rename({c: f"{c}_{side}" for c in group.columns}),
            on=[f"table_{side}", f"record_id_{side}"],
            how="left",
            maintain_order="left",
        )
    return out.select("component_id_l", "component_id_r", "match_probability", "match_weight")


def _draw_inputs(result: LinkResult) -> CandidateLinks:
    con = _zone_of(result, with_candidates=True)
    try:
        return load_candidates(con)
    finally:
        con.close()


def test_candidate_pairs_the_draws_drop_are_not_kept_and_the_draws_inputs_are_unchanged(
    relinked: dict[str, LinkResult],
) -> None:
    """Candidate-rule pairs between two record groups that both hold a register record, or
    neither does, with no usual pair between them, are not kept (the draws drop them): fewer
    rows, and the draws read exactly the same candidate links (every edge, probability, weight
    and flag) as from every candidate pair."""
    kept, every = relinked["kept"], relinked["every_candidate"]
    assert kept.candidate_pairs is not None and every.candidate_pairs is not None
    assert kept.candidate_pairs.height < every.candidate_pairs.height
    # the rows kept are rows of the full set, in the same order
    assert kept.candidate_pairs.equals(
        every.candidate_pairs.join(
            kept.candidate_pairs.unique(), on=kept.candidate_pairs.columns, how="semi"
        )
    )
    mine, reference = _draw_inputs(kept), _draw_inputs(every)
    assert mine.edge_a.size > 0 and mine.edge_candidate_rule.any()
    for f in dataclasses.fields(CandidateLinks):
        a, b = getattr(mine, f.name), getattr(reference, f.name)
        if isinstance(a, pl.DataFrame):
            assert a.equals(b), f.name
        else:
            np.testing.assert_array_equal(a, b, err_msg=f.name)


def test_a_candidate_floor_above_the_linkers_floor_keeps_the_linkers_pairs(
    relinked: dict[str, LinkResult], linked_run: Path
) -> None:
    """A candidate floor above 0.5 (only confident candidate-rule pairs kept) still gives the
    linker every pair from 0.5 up: the one prediction starts at the lower of the two floors."""
    layout = RunLayout.at(linked_run)
    roles = source_roles()
    high = link_tables(
        staged_identifier_tables(layout, roles),
        roles,
        settings=LinkageSettings(
            model_path=str(layout.linkage_dir / "model.json"), candidate_floor=0.9
        ),
    )
    assert high.pairs.equals(relinked["plain"].pairs)
    assert high.clusters.equals(relinked["plain"].clusters)
    assert high.candidate_pairs is not None
    assert high.candidate_pairs["candidate_rule"].all()
    assert (high.candidate_pairs["match_probability"] >= 0.9).all()


def test_the_pipeline_candidate_rule_keeps_a_small_part_of_the_wide_rules_pairs(
    relinked: dict[str, LinkResult],
) -> None:
    """The pipeline's candidate rule (date of birth + sex + postcode area, nameless side at a
    postcode no register record holds) proposes only pairs the wide rule (date of birth + sex)
    proposes, with the same probabilities, and a small part of them: the wide rule grew as
    N^2 (680 million rows extrapolated at a million children; docs/linkage_error.md). The
    usual pairs below the floor are the same. Shown failing with the pipeline's rule set back
    to date of birth + sex (every row kept: 23,761 of 23,761 on the session run)."""
    mine, wide = relinked["pipeline"].candidate_pairs, relinked["kept"].candidate_pairs
    assert mine is not None and wide is not None
    usual = ~pl.col("candidate_rule")
    assert mine.filter(usual).equals(wide.filter(usual))
    mine_rule, wide_rule = mine.filter(~usual), wide.filter(~usual)
    assert wide_rule.height > 1000
    assert mine_rule.join(wide_rule, on=mine_rule.columns, how="anti").height == 0
    assert mine_rule.height <= 0.05 * wide_rule.height, (mine_rule.height, wide_rule.height)
