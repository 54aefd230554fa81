"""Linkage stage: deterministic ids, then Splink, one pseudonymous person key."""

from pipelines.linkage.evaluate import evaluate_linkage
from pipelines.linkage.link import DuckDBTable, LinkResult, link_tables
from pipelines.linkage.pipeline import LinkageSummary, link_run
from pipelines.linkage.pseudonym import pseudonymise, secret_from_environment
from pipelines.linkage.settings import LinkageSettings

__all__ = [
    "DuckDBTable",
    "LinkResult",
    "LinkageSettings",
    "LinkageSummary",
    "evaluate_linkage",
    "link_run",
    "link_tables",
    "pseudonymise",
    "secret_from_environment",
]
