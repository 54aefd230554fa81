"""The synthetic world's causal graph: one table of edges, each naming the function that
draws it and the scenario keys that set its strength, rendered as a Mermaid figure.

    uv run --locked python -m synthetic_data.causal_graph [--scenario NAME_OR_FILE]

prints the Mermaid source for ``docs/synthetic_world.md`` (edges whose keys are all zero in
that scenario are drawn dotted: present in the code, switched off). ``tests/
test_synthetic_world.py`` checks that every key an edge names is a scenario key and that every
causal key of the scenario (the care-entry hazard, ``after_referral`` and ``effects``) sits on
some edge, so the figure cannot drift from the generator's parameters.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

from synthetic_data.scenario import Scenario, load_scenario


@dataclass(frozen=True)
class Edge:
    cause: str
    effect: str
    where: str  # the function in synthetic_data/world.py (or extracts.py) that draws it
    keys: tuple[str, ...] = ()  # scenario keys (section.key) that set its strength; () = fixed


NODES = {
    "la": "authority",
    "dep": "deprivation decile",
    "risk": "family risk",
    "adv": "true adversity (5 kinds, onsets)",
    "ref": "first referral (date, age)",
    "rec": "factors recorded at referral",
    "cp": "child-protection plan at referral",
    "newadv": "new adversity after referral",
    "review": "factors recorded at yearly reviews",
    "cpnew": "plan started at a review",
    "care": "entry to care / looked after (time-varying)",
    "ks2": "KS2 expected standard",
    "ks4": "KS4 score, level 2",
    "absence": "yearly absence",
    "health": "self-harm, emergency, mental-health hazards",
    "nco": "dental caries admissions (negative control)",
    "appx": "appendicitis (negative control, no shared causes)",
}

EDGES: tuple[Edge, ...] = (
    Edge("la", "dep", "build_people"),
    Edge("dep", "risk", "build_people", ("adversity.deprivation_loading",)),
    Edge("risk", "adv", "build_people", ("adversity.family_risk_loading",)),
    Edge("adv", "ref", "social_services", ("social_services.referral_prob_per_adversity",)),
    Edge("adv", "rec", "social_services", ("social_services.recording_sensitivity",)),
    Edge("rec", "cp", "social_services"),
    Edge(
        "rec",
        "care",
        "care",
        (
            "social_services.care_log_hr_recorded_factor",
            "social_services.care_log_hr_physical_abuse",
        ),
    ),
    Edge("cp", "care", "care"),
    Edge("dep", "care", "care", ("social_services.care_log_hr_per_deprivation_decile",)),
    Edge("la", "care", "care", ("population.la_care_propensity_sd",)),
    Edge("ref", "care", "care", ("social_services.care_base_rate",)),
    Edge("risk", "newadv", "after_referral", ("after_referral.new_adversity_log_hr_family_risk",)),
    Edge("ref", "newadv", "after_referral", ("after_referral.new_adversity_rate",)),
    Edge("care", "newadv", "after_referral", ("effects.new_adversity_log_hr_looked_after",)),
    Edge("newadv", "review", "after_referral", ("after_referral.reassessment_sensitivity",)),
    Edge("adv", "review", "after_referral", ("after_referral.reassessment_sensitivity",)),
    Edge("review", "cpnew", "after_referral", ("after_referral.cp_plan_prob_per_new_factor",)),
    Edge("review", "care", "after_referral", ("after_referral.care_log_hr_new_factor",)),
    Edge("cpnew", "care", "after_referral", ("after_referral.care_log_hr_cp_plan",)),
    Edge("adv", "ks2", "education", ("outcomes.ks4_per_adversity",)),
    Edge("dep", "ks2", "education", ("outcomes.ks4_per_deprivation_decile",)),
    Edge("care", "ks2", "education", ("effects.ks2_log_or_care",)),
    Edge("adv", "ks4", "education", ("outcomes.ks4_per_adversity",)),
    Edge("newadv", "ks4", "education", ("outcomes.ks4_per_adversity",)),
    Edge("dep", "ks4", "education", ("outcomes.ks4_per_deprivation_decile",)),
    Edge("risk", "ks4", "education", ("outcomes.ks4_family_risk",)),
    Edge(
        "care",
        "ks4",
        "education",
        (
            "effects.ks4_long_care",
            "effects.ks4_short_care",
            "effects.ks4_per_placement_move",
            "effects.level2_log_or_long",
            "effects.level2_log_or_short",
            "effects.ks4_care_x_adversity",
            "effects.ks4_care_per_year_in_care",
            "effects.ks4_care_per_year_age_at_entry",
            "effects.level2_log_or_care_x_adversity",
        ),
    ),
    Edge("adv", "absence", "_school_census"),
    Edge("newadv", "absence", "_school_census"),
    Edge("dep", "absence", "_school_census"),
    Edge(
        "care",
        "absence",
        "_school_census",
        (
            "effects.absence_rate_looked_after",
            "effects.absence_care_x_adversity",
            "effects.absence_care_per_year_since_entry",
        ),
    ),
    Edge("adv", "health", "health_events", ("outcomes.log_hr_per_adversity",)),
    Edge("newadv", "health", "health_events", ("outcomes.log_hr_per_adversity",)),
    Edge("dep", "health", "health_events", ("outcomes.log_hr_per_deprivation_decile",)),
    Edge(
        "care",
        "health",
        "health_events",
        (
            "effects.log_hr_self_harm",
            "effects.log_hr_emergency_admission",
            "effects.log_hr_mental_health_admission",
            "effects.log_hr_care_x_adversity",
            "effects.log_hr_care_per_year_since_entry",
        ),
    ),
    Edge("adv", "nco", "health_events", ("outcomes.log_hr_per_adversity",)),
    Edge("dep", "nco", "health_events", ("outcomes.log_hr_per_deprivation_decile",)),
    Edge("la", "nco", "health_events", ("outcomes.dental_caries_log_hr_per_la_propensity",)),
)

# Keys of the scenario that are causal strengths and must sit on an edge (checked by a test).
CAUSAL_SECTIONS = ("after_referral", "effects")
CAUSAL_KEYS_ELSEWHERE = (
    "social_services.care_log_hr_recorded_factor",
    "social_services.care_log_hr_physical_abuse",
    "social_services.care_log_hr_per_deprivation_decile",
    "outcomes.dental_caries_log_hr_per_la_propensity",
)


def key_value(sc: Scenario, key: str) -> float:
    section, name = key.split(".")
    return float(getattr(getattr(sc, section), name))


def edge_active(sc: Scenario, edge: Edge) -> bool:
    """An edge is switched on unless every key that sets its strength is zero."""
    return not edge.keys or any(key_value(sc, k) != 0 for k in edge.keys)


def mermaid(sc: Scenario) -> str:
    """The graph as Mermaid source; switched-off edges dotted."""
    lines = ["flowchart LR"]
    for node, label in NODES.items():
        lines.append(f'    {node}["{label}"]')
    for e in EDGES:
        arrow = "-->" if edge_active(sc, e) else "-.->"
        lines.append(f"    {e.cause} {arrow} {e.effect}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--scenario", default="default")
    a = p.parse_args(argv)
    sys.stdout.write(mermaid(load_scenario(a.scenario)))


if __name__ == "__main__":
    main()
