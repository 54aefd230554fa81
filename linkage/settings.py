"""Typed linkage settings; saved with every run."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ground.db import MemorySize


class LinkageSettings(BaseModel):
    """Thresholds and limits of the linkage stage."""

    model_config = ConfigDict(extra="forbid")
    match_threshold: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="match probability at or above which two profiles link (None: chosen "
        "from the trained model for target_precision)",
    )
    target_precision: float = Field(
        0.95,
        gt=0.5,
        lt=1,
        description="when match_threshold is None: the lowest threshold on a fixed grid "
        "(0.5 ... 0.999) above which every band of scored pairs has at least this expected "
        "precision by the model (linkage.training.choose_threshold)",
    )
    max_pairs_per_rule: float = Field(
        2e7, gt=0, description="pair budget of each blocking rule chosen from the data"
    )
    candidate_floor: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="set (e.g. 0.001) for `cohort link-uncertainty`: scored pairs from this "
        "match probability up to the prediction floor (0.5), and the pairs only the candidate "
        "rules block together, are kept in the linkage zone (linkage.candidate_pairs) for link "
        "draws; never linked by the linker. None (the default): no candidate pairs, no draws "
        "(they cost more than the whole link stage at 1,000,000 children)",
    )
    high_quality_threshold: float = Field(
        0.99, gt=0, le=1, description="records linked below this are flagged low quality"
    )
    model_path: str | None = Field(
        None, description="reuse a trained Splink model JSON instead of training"
    )
    em_max_pairs: float = Field(2e6, gt=0, description="cap on pairs per EM session")
    em_probe_profiles: int = Field(
        300_000,
        gt=0,
        description="profiles per side in the probe that sizes EM's pair sample (all if fewer)",
    )
    u_max_pairs: float = Field(2e6, gt=0, description="pairs sampled to estimate u")
    seed: int = 42
    deterministic: bool = Field(
        True, description="train on one DuckDB thread so reruns are byte-identical"
    )
    prior_recall: float | None = Field(
        0.8,
        gt=0,
        le=1,
        description="recall assumed for the prior's exact-agreement rule (None: estimated "
        "from the trained model's m, which assumes agreements independent among matches)",
    )
    duckdb_memory_limit: MemorySize = Field(
        "6GB", description="DuckDB memory limit (spills to RUN/linkage_zone.tmp beyond it)"
    )
    duckdb_threads: int | None = Field(
        None, ge=1, description="DuckDB threads for scoring pairs (default: every core)"
    )
    backend: Literal["duckdb", "spark"] = Field(
        "duckdb", description="where Splink scores pairs: DuckDB in process, or Spark"
    )
    spark_master: str = Field(
        "local[2]",
        pattern=r"^(local(\[(\d+|\*)(,\d+)?\])?|yarn|(spark|k8s|mesos)://[A-Za-z0-9.:/_\[\]-]+)$",
        description="Spark master URL (local[N], spark://host:7077, yarn, k8s://...)",
    )
    spark_driver_memory: str = Field(
        "4g",
        pattern=r"^\d+[kmgtp]?$",
        description="Spark driver memory in Spark's notation (512m, 4g)",
    )
    spark_shuffle_partitions: int = Field(
        8, gt=0, description="shuffle partitions; a few per core locally, more on a cluster"
    )
    prefect_secret_block: str | None = Field(
        None,
        pattern=r"^[a-z0-9]+(-[a-z0-9]+)*$",  # Prefect's rule for block names
        description="name of a Prefect Secret block holding the pseudonymisation key",
    )
