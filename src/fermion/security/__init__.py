"""Tokens: random bearer secrets, stored only as sha256 digests."""

from __future__ import annotations

import hashlib
import hmac
import secrets


def new_token(prefix: str = "fm") -> str:
    return f"{prefix}_{secrets.token_urlsafe(32)}"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def token_matches(token: str, token_hash: str | None) -> bool:
    return token_hash is not None and hmac.compare_digest(hash_token(token), token_hash)


__all__ = ["hash_token", "new_token", "token_matches"]
