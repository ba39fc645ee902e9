"""Client-side encryption of a dataset in its stores: AES-256-GCM, with the key held by the server.

A store sees neither the content, nor the names of the files, nor the chunks' sha256: each chunk
is kept under an HMAC of its sha256, and the manifest is sealed too. The nonce of a chunk is
derived from its content, so equal chunks encrypt alike and still deduplicate (equality is all a
store learns)."""

from __future__ import annotations

import hashlib
import hmac
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

NONCE = 12
OVERHEAD = NONCE + 16  # nonce + GCM tag, per object


class DecryptError(ValueError):
    """An object did not open with the dataset's key: corrupt, or not this dataset's."""


class DatasetKey:
    """The key of one encrypted dataset (32 random bytes; two sub-keys derived from it)."""

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("a dataset key is 32 bytes")
        self._ids = hmac.new(key, b"fermion-dataset-ids", hashlib.sha256).digest()
        self._aead = AESGCM(hmac.new(key, b"fermion-dataset-aead", hashlib.sha256).digest())
        self._nonces = hmac.new(key, b"fermion-dataset-nonces", hashlib.sha256).digest()

    @staticmethod
    def generate() -> bytes:
        return os.urandom(32)

    def object_id(self, sha: str) -> str:
        """The name a chunk is kept under in a store: reveals nothing of its sha256."""
        return hmac.new(self._ids, sha.encode(), hashlib.sha256).hexdigest()

    def seal_chunk(self, sha: str, data: bytes | memoryview) -> bytes:
        nonce = hmac.new(self._nonces, sha.encode(), hashlib.sha256).digest()[:NONCE]
        return nonce + self._aead.encrypt(nonce, bytes(data), sha.encode())

    def seal(self, data: bytes, label: str) -> bytes:
        """Seal an object that is not a chunk (a manifest), with a random nonce."""
        nonce = os.urandom(NONCE)
        return nonce + self._aead.encrypt(nonce, data, label.encode())

    def open(self, blob: bytes, label: str) -> bytes:
        """Open a sealed chunk (label: its sha256) or object (its label); DecryptError if it was changed."""
        if len(blob) < OVERHEAD:
            raise DecryptError("object too short")
        try:
            return self._aead.decrypt(blob[:NONCE], blob[NONCE:], label.encode())
        except InvalidTag:
            raise DecryptError("authentication failed") from None
