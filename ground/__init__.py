"""The ground every other package stands on: errors, the DuckDB connection, the run folder's
layout and config-file loading. It imports nothing of the project but itself."""

# The project's packages, top layer last. Their names are also their loggers' names, and the
# code whose uncommitted diff the run stamp hashes.
PROJECT_PACKAGES = (
    "ground",
    "schemas",
    "synthetic_data",
    "deliveries",
    "validation",
    "linkage",
    "cohort",
    "models",
    "evaluation",
    "orchestration",
)
