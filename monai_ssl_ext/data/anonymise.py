"""Identifiers taken from patient data become salted hashes before they reach a manifest, a report or a log.

Manifests keep a ``group`` per image (the patient, study or lesion it comes from) so that splits and
label budgets keep related images together. The value stored is never the identifier itself but

    ``HMAC-SHA256(key=salt, message=identifier)``, hex, truncated to the first 16 characters (64 bits)

which keeps groups apart (a collision among 10^6 identifiers has a probability near 3e-8) while the
identifier cannot be read back. The policy applies to every identifier a builder takes from the data
(DICOM PatientID or StudyInstanceUID, HAM10000 lesion ids, a ``group`` column of a CSV), whether or
not it identifies a person, so that nobody has to judge case by case.

The salt, in order of precedence:

1. the ``salt`` argument;
2. the environment variable ``MONAI_SSL_ID_SALT``;
3. :data:`DEFAULT_SALT`, a public constant, so that the manifests committed for public data sets are
   reproducible by anyone. With the public salt the hash of a *known* identifier can be recomputed:
   it hides nothing from someone who already holds the identifiers. For private data set
   ``MONAI_SSL_ID_SALT`` to a secret, kept outside the repository, and keep it to rebuild the same groups.
"""

from __future__ import annotations

import hashlib
import hmac
import os

__all__ = ["DEFAULT_SALT", "HASH_LENGTH", "SALT_ENV", "hash_identifier", "hash_policy", "resolve_salt", "salt_origin"]

SALT_ENV = "MONAI_SSL_ID_SALT"
DEFAULT_SALT = "monai-ssl-ext/public-manifests/v1"
HASH_LENGTH = 16


def resolve_salt(salt: str | bytes | None = None) -> bytes:
    """The salt: ``salt`` if given, else ``$MONAI_SSL_ID_SALT`` if set and not empty, else :data:`DEFAULT_SALT`."""
    if salt is None:
        salt = os.environ.get(SALT_ENV) or DEFAULT_SALT
    if isinstance(salt, str):
        salt = salt.encode("utf-8")
    if not salt:
        raise ValueError("the identifier salt is empty; give a non-empty salt or leave it unset for the default.")
    return salt


def salt_origin(salt: str | bytes | None = None) -> str:
    """Where the salt comes from (never the salt itself), for a manifest: ``default``, ``env`` or ``argument``."""
    if salt is not None:
        return "argument"
    return "env" if os.environ.get(SALT_ENV) else "default"


def hash_identifier(value: object, salt: str | bytes | None = None, length: int = HASH_LENGTH) -> str:
    """``HMAC-SHA256(salt, value)`` as lower-case hex, truncated to ``length`` characters.

    Args:
        value: the identifier (converted with ``str`` and stripped of surrounding spaces, so that
            DICOM's padded strings and CSV cells give the same hash).
        salt: see :func:`resolve_salt`.
        length: hex characters kept (4 to 64).

    Raises:
        ValueError: the identifier is empty (an empty id would merge every image without one into
            a single group), or ``length`` is out of range.
    """
    if not 4 <= length <= 64:
        raise ValueError(f"hash length must be between 4 and 64 hex characters, got {length}.")
    text = "" if value is None else str(value).strip()
    if not text:
        raise ValueError("cannot hash an empty identifier.")
    digest = hmac.new(resolve_salt(salt), text.encode("utf-8"), hashlib.sha256).hexdigest()
    return digest[:length]


def hash_policy(salt: str | bytes | None = None, length: int = HASH_LENGTH) -> dict:
    """How group ids were hashed, for a manifest's ``source``: method, length and the salt's origin (not its value)."""
    return {"method": "hmac-sha256", "hex_length": length, "salt": salt_origin(salt)}
