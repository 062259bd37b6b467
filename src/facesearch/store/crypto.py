"""Field encryption at rest (AES-256-GCM from ``cryptography``, never hand-rolled).

The key lives outside the database: ``FACESEARCH_KEY`` (base64 of 32 bytes) or a key file
(``FACESEARCH_KEY_FILE``, default ``$FACESEARCH_HOME/keys/field.key``, created with mode 0600
on first use). Every value is bound to its purpose and row by the associated data, so a
ciphertext copied into another row does not decrypt.
"""
from __future__ import annotations

import base64
import os
import secrets
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from facesearch.errors import FaceSearchError

_VERSION = b"\x01"


class KeyError_(FaceSearchError):
    code = "key_error"
    http_status = 500


class FieldCipher:
    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise KeyError_("the field encryption key must be 32 bytes")
        self._aead = AESGCM(key)

    def encrypt(self, plaintext: bytes, aad: str) -> bytes:
        nonce = secrets.token_bytes(12)
        return _VERSION + nonce + self._aead.encrypt(nonce, plaintext, aad.encode())

    def decrypt(self, blob: bytes, aad: str) -> bytes:
        if not blob or blob[:1] != _VERSION or len(blob) < 13 + 16:
            raise KeyError_("not a facesearch ciphertext")
        try:
            return self._aead.decrypt(blob[1:13], blob[13:], aad.encode())
        except Exception:  # InvalidTag: wrong key, or the value was moved or altered
            raise KeyError_("a stored value could not be decrypted (wrong key, or altered)") from None


def load_key(env_key: str | None, key_file: Path) -> bytes:
    """The key from the environment, else from the key file (created 0600 when missing)."""
    if env_key:
        try:
            key = base64.b64decode(env_key, validate=True)
        except ValueError:
            raise KeyError_("FACESEARCH_KEY must be base64 of 32 bytes") from None
        return key
    if not key_file.exists():
        key_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(base64.b64encode(secrets.token_bytes(32)) + b"\n")
    if key_file.stat().st_mode & 0o077:
        raise KeyError_(f"key file {key_file} is readable by others: chmod 600 it")
    return base64.b64decode(key_file.read_bytes().strip())
