"""Tokens: random bearer secrets, stored only as sha256 digests."""

from __future__ import annotations

import hashlib
import hmac
import secrets


def new_token(prefix: str = "fm") -> str:
    return f"{prefix}_{secrets.token_urlsafe(32)}"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def bearer_digest(authorization: str) -> str | None:
    """The stored digest of the token in an ``Authorization: Bearer …`` header value, if it holds one."""
    return hash_token(authorization[7:].strip()) if authorization.lower().startswith("bearer ") else None


def token_matches(token: str, token_hash: str | None) -> bool:
    return token_hash is not None and hmac.compare_digest(hash_token(token), token_hash)


from ._audit_anchor import HEAD_FILE, AuditAnchor, AuditHead, AuditKeyring, HeadFileError  # noqa: E402
from ._secrets import (  # noqa: E402 - after the token helpers, which nothing here depends on
    MASTER_KEY_ENV,
    MAX_SECRET_BYTES,
    SECRET_NAME_PATTERN,
    SECRET_REF,
    MissingSecretError,
    SecretBox,
    SecretError,
    dataset_key_purpose,
    env_purpose,
    run_token_purpose,
    secret_ref,
    valid_secret_name,
)
from ._tls import self_signed_certificate, ssl_context_from  # noqa: E402

__all__ = [
    "HEAD_FILE",
    "AuditAnchor",
    "AuditHead",
    "AuditKeyring",
    "HeadFileError",
    "MASTER_KEY_ENV",
    "MAX_SECRET_BYTES",
    "SECRET_NAME_PATTERN",
    "SECRET_REF",
    "MissingSecretError",
    "SecretBox",
    "SecretError",
    "dataset_key_purpose",
    "env_purpose",
    "run_token_purpose",
    "bearer_digest",
    "hash_token",
    "new_token",
    "secret_ref",
    "self_signed_certificate",
    "ssl_context_from",
    "token_matches",
    "valid_secret_name",
]
