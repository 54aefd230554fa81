"""Linkage: deterministic ids, then Splink over declared column kinds; one pseudonymous person
key per person in a run."""

from linkage.comparisons import Column, ColumnKind
from linkage.explain import Explain
from linkage.link import DuckDBTable, LinkResult, ModelPlan, link_tables
from linkage.pipeline import LinkageSummary, link_run
from linkage.pseudonym import pseudonymise, secret_from_environment
from linkage.settings import LinkageSettings
from linkage.training import LinkageTrainingError

__all__ = [
    "Column",
    "ColumnKind",
    "DuckDBTable",
    "Explain",
    "LinkResult",
    "LinkageSettings",
    "LinkageSummary",
    "LinkageTrainingError",
    "ModelPlan",
    "link_run",
    "link_tables",
    "pseudonymise",
    "secret_from_environment",
]
