"""Linkage stage: deterministic ids, then Splink, one pseudonymous person key."""

from linkage.link import DuckDBTable, LinkResult, link_tables
from linkage.pipeline import LinkageSummary, link_run
from linkage.pseudonym import pseudonymise, secret_from_environment
from linkage.settings import LinkageSettings

__all__ = [
    "DuckDBTable",
    "LinkResult",
    "LinkageSettings",
    "LinkageSummary",
    "link_run",
    "link_tables",
    "pseudonymise",
    "secret_from_environment",
]
