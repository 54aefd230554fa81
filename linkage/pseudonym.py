"""Keyed pseudonyms: HMAC-SHA256 of an internal person id with a secret key.

The secret never leaves the entry point that read it (the environment here, or a Prefect Secret
block through :mod:`orchestration.secrets`);
without it, a pseudonym cannot be reversed or recomputed.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

from ground.errors import SecretError

SECRET_ENV = "COHORT_PSEUDONYM_SECRET"
DEMO_SECRET = b"demo-only-secret-never-use-for-real-data"
MIN_SECRET_BYTES = 16


def secret_from_environment(environ: dict[str, str], *, demo: bool = False) -> bytes:
    """Read the pseudonymisation key; a missing or short key is an error outside ``--demo``."""
    value = environ.get(SECRET_ENV, "")
    if value:
        if len(value.encode()) < MIN_SECRET_BYTES:
            raise SecretError(
                f"{SECRET_ENV} is shorter than {MIN_SECRET_BYTES} bytes; use a long random key"
            )
        return value.encode()
    if demo:
        return DEMO_SECRET
    raise SecretError(
        f"no pseudonymisation secret: set {SECRET_ENV} (or name a Prefect Secret block in the "
        "linkage settings); only --demo runs may use the built-in demo key"
    )


def pseudonymise(values: Iterable[str], secret: bytes) -> list[str]:
    """Return the 64-hex-character HMAC-SHA256 of each value under ``secret``."""
    if not secret:
        raise SecretError("empty pseudonymisation secret")
    return [hmac.new(secret, v.encode("utf-8"), hashlib.sha256).hexdigest() for v in values]
