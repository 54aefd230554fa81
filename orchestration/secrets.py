"""The pseudonymisation key from a Prefect Secret block or the environment (the Prefect side of
:mod:`linkage.pseudonym`, which stays free of Prefect)."""

from __future__ import annotations

from ground.errors import SecretError
from linkage.pseudonym import MIN_SECRET_BYTES, secret_from_environment


def secret_from_block(name: str) -> bytes:
    """The key held in the Prefect Secret block ``name`` (needs a Prefect API: the ephemeral
    one of ``cohort run`` or a server). A missing or mistyped block is a :class:`SecretError`
    naming it, not Prefect's traceback."""
    from prefect.blocks.system import Secret

    try:
        block = Secret.load(name)
    except (ValueError, KeyError) as exc:  # Prefect: "Unable to find block document named ..."
        raise SecretError(
            f"no Prefect Secret block named {name!r} ({type(exc).__name__}); check the name "
            "given by --secret-block or linkage.prefect_secret_block, or create the block"
        ) from None
    value = str(block.get()).encode()  # type: ignore[union-attr]
    if len(value) < MIN_SECRET_BYTES:
        raise SecretError(
            f"Prefect Secret block {name!r} holds fewer than {MIN_SECRET_BYTES} bytes; "
            "use a long random key"
        )
    return value


def resolve_secret(block: str | None, environ: dict[str, str], *, demo: bool = False) -> bytes:
    """The pseudonymisation key: from the Prefect Secret block ``block`` when named, else from
    the environment (or the demo key with ``demo``)."""
    if block:
        return secret_from_block(block)
    return secret_from_environment(environ, demo=demo)
