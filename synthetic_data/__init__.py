"""The synthetic world: a known causal truth and the messy extracts it emits."""

from synthetic_data.generate import SynthSummary, generate_world
from synthetic_data.scenario import Scenario, load_scenario

__all__ = ["Scenario", "SynthSummary", "generate_world", "load_scenario"]
