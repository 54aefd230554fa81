"""``cohort synth``: generate a synthetic world with a known truth."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

MIN_CHILDREN, MAX_CHILDREN = 100, 20_000_000  # the largest world the generator is meant for
MAX_SEED = 2**32 - 1

# Polars' allocator (jemalloc) options for the generator's process: never hand freed pages
# back to the kernel ("a decay time of -1 disables purging", jemalloc(3), opt.dirty_decay_ms
# and opt.muzzy_decay_ms). Polars itself sets 500 ms and 1 s and appends this variable to
# them (polars/__init__.py) when it is first imported, which is when jemalloc reads it. On a
# machine that returns free memory to its host, a page polars freed and purged costs a host
# fault when it is used again. `cohort synth` is a short-lived process whose polars memory
# is freed and reallocated in rounds of the same sizes, so keeping it costs no more than its
# peak; the process gives everything back when it exits. docs/benchmarks.md (generator).
POLARS_ALLOCATOR_VARIABLE = "_RJEM_MALLOC_CONF"
POLARS_ALLOCATOR_OPTIONS = "dirty_decay_ms:-1,muzzy_decay_ms:-1"


def keep_polars_freed_memory() -> bool:
    """Set polars' allocator to keep freed memory for the rest of this process, unless the
    user set the variable or polars is already loaded (then its allocator is configured and
    the output is the same, only slower). Returns whether the setting is in force."""
    if POLARS_ALLOCATOR_VARIABLE in os.environ:
        return os.environ[POLARS_ALLOCATOR_VARIABLE].endswith(POLARS_ALLOCATOR_OPTIONS)
    if "polars" in sys.modules:
        logging.getLogger(__name__).debug("polars already loaded: its allocator is left as is")
        return False
    os.environ[POLARS_ALLOCATOR_VARIABLE] = POLARS_ALLOCATOR_OPTIONS
    return True


def command(
    children: Annotated[
        int, typer.Option("--children", help=f"Number of children (100 to {MAX_CHILDREN:,}).")
    ] = 20000,
    seed: Annotated[
        int, typer.Option("--seed", help=f"Random seed (0 to {MAX_SEED}); same seed, same bytes.")
    ] = 42,
    scenario: Annotated[
        str,
        typer.Option(
            "--scenario", help="Shipped scenario (default, null_effect, messy) or a YAML file."
        ),
    ] = "default",
    out: Annotated[
        Path, typer.Option("--out", help="Output folder for the extracts and truth/.")
    ] = Path("data/demo"),
    file_format: Annotated[
        str, typer.Option("--format", help="Extract file format: csv or parquet.")
    ] = "csv",
    layout: Annotated[
        list[str] | None,
        typer.Option(
            "--layout",
            help="Write sources in delivery layouts instead of the native extracts (ssda903: "
            "SSDA903 CSVs + CIN census XML; hes_apc: HES admitted patient care spells; "
            "wales_lac: the Welsh looked-after children census; wales_crcs: the Welsh children "
            "receiving care and support census; ecds: emergency department attendances; "
            "school_census: the DfE school census pupil extract; key_stages: NPD KS2/KS4 pupil "
            "files; repeat --layout or give a comma list for "
            "several, each writing different sources; `cohort adapt` reads them) or pre-linked "
            "(prelinked, alone: provider person ids and match quality, no identifiers; "
            "validate/run read it as it is).",
        ),
    ] = None,
    timings: Annotated[
        bool,
        typer.Option(
            "--timings",
            help="Also print each step's wall, CPU (user, system) seconds, minor page faults "
            "and peak memory.",
        ),
    ] = False,
) -> None:
    """Generate a synthetic world: seven messy source extracts plus a truth folder.

    The truth folder (OUT/truth/) holds record-to-person maps, latent variables, injected
    defects and the true causal effects; the pipeline never reads it.
    """
    keep_polars_freed_memory()  # before anything imports polars
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from ground.errors import ConfigError
    from synthetic_data import generate_world
    from synthetic_data.layouts import PRELINKED, layout_names

    # checked before any work or any file is written
    if not MIN_CHILDREN <= children <= MAX_CHILDREN:
        raise ConfigError(
            f"--children {children}: give a number from {MIN_CHILDREN} to {MAX_CHILDREN:,}"
        )
    if not 0 <= seed <= MAX_SEED:
        raise ConfigError(f"--seed {seed}: give a whole number from 0 to {MAX_SEED}")
    layouts = layout_names(layout)  # known, and no source written by two of them
    prelinked = layouts == (PRELINKED,)  # the native world, then rewritten as pre-linked
    if prelinked and file_format != "csv":
        raise ConfigError("--layout prelinked writes CSV extracts: leave --format at csv")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a folder")

    console = Console(stderr=True)
    existed = set(out.rglob("*")) if out.is_dir() else set()
    created_out = not out.exists()
    try:
        with Progress(
            SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console
        ) as bar:
            task = bar.add_task("synth", total=None)
            summary = generate_world(
                n_children=children,
                seed=seed,
                scenario=scenario,
                out_dir=out,
                file_format=file_format,  # type: ignore[arg-type]
                progress=lambda msg: bar.update(task, description=msg),
                layout=None if prelinked else layouts,
            )
            if prelinked:
                from synthetic_data.layouts import write_prelinked

                bar.update(task, description="writing the pre-linked extracts")
                write_prelinked(out, seed)
    except BaseException as exc:  # e.g. a full disk or Ctrl-C: no half-written world is left
        _remove_new_files(out, existed, created_out)
        from orchestration.isolation import operational_os_error, with_path

        # an OSError, or a library's own I/O error (polars' "No space left on device" from the
        # writer thread is a ComputeError naming no file): one line naming the folder
        os_error = operational_os_error(exc) if isinstance(exc, Exception) else None
        if os_error is not None:
            raise with_path(os_error, out) from None
        raise
    console.print(summary.to_markdown())
    if timings:
        console.print(summary.steps_markdown())
    console.print(f"extracts in {out}/, truth in {out}/truth/ (never read by the pipeline)")


def _remove_new_files(out: Path, existed: set[Path], created_out: bool) -> None:
    """Delete what a failed ``synth`` wrote into ``out`` (everything, if it made ``out``)."""
    import shutil

    if created_out:
        shutil.rmtree(out, ignore_errors=True)
        return
    for p in sorted(set(out.rglob("*")) - existed, reverse=True):  # files before their folders
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
