"""API keys: generation, hashing and constant-time verification.

A key looks like ``ptk_<prefix>_<secret>``: ``prefix`` (12 hex chars) is stored in clear and used to find
the row; ``secret`` is 32 random bytes (url-safe base64). Only the SHA-256 of the whole key is stored:
the key has 256 bits of entropy, so a fast hash is enough (no password-style KDF needed).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

KEY_SCHEME = "ptk"
_KEY_RE = re.compile(r"^ptk_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")
# security: compared against when the prefix is unknown, so that a miss costs the same as a hit.
_DUMMY_SHA256 = hashlib.sha256(b"promptune-dummy-key").hexdigest()


@dataclass(frozen=True)
class NewKey:
    key: str  # shown to the user once, never stored
    prefix: str
    sha256: str


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def generate_key() -> NewKey:
    prefix = secrets.token_hex(6)
    key = f"{KEY_SCHEME}_{prefix}_{secrets.token_urlsafe(32)}"
    return NewKey(key=key, prefix=prefix, sha256=hash_key(key))


def parse_prefix(key: str) -> str | None:
    """The lookup prefix of a well-formed key, else None."""
    match = _KEY_RE.match(key)
    return match.group(1) if match else None


def verify_key(key: str, stored_sha256: str | None) -> bool:
    """Constant-time check of ``key`` against a stored hash (``None`` = unknown prefix: dummy compare)."""
    expected = stored_sha256 if stored_sha256 is not None else _DUMMY_SHA256
    ok = hmac.compare_digest(hash_key(key), expected)
    return ok and stored_sha256 is not None
