"""Field encryption at rest (AES-256-GCM from ``cryptography``, never hand-rolled) and keyed
blind indexes (HMAC-SHA256) for the few equality lookups on encrypted fields.

Keys live outside the database: ``FACESEARCH_KEY`` or a key file (``FACESEARCH_KEY_FILE``,
default ``$FACESEARCH_HOME/keys/field.key``, mode 0600). Both hold a **keyring**: one or more
numbered master keys, one per line (or comma-separated in the variable) as
``<version>:<base64 of 32 bytes>``; a bare base64 key (the format before rotation existed) is
version 1. New values are written under the newest version; every ciphertext names its version,
so old versions keep decrypting while ``facesearch keys rotate`` moves values to the newest.

From each master key two independent keys are derived with HKDF-SHA256 (different ``info``):
the AES-GCM key of that version and the HMAC key of that version's blind indexes. A blind index
is ``HMAC(k_index, domain || 0 || normalised value)`` in hex: equality without the plaintext,
and useless for guessing without the key. Lookups try every version of the keyring (normally
one, two during a rotation); the rotation recomputes every index under the newest key.

Ciphertext formats (binary; text columns store ``"enc:" + base64url``):

* ``0x02 | version (4 bytes, big-endian) | nonce (12) | AES-GCM(ciphertext + tag)`` with the
  version's derived key (the current format);
* ``0x01 | nonce | ...`` with version 1's raw key (probe images written before the keyring).

Every value is bound by the associated data to what it is (``table.column``, or the row for
probe images and suppressions), so a ciphertext copied elsewhere does not decrypt.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import stat
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from facesearch.errors import FaceSearchError

_V1 = b"\x01"
_V2 = b"\x02"
TEXT_PREFIX = "enc:"
DEV_MARKER = "# facesearch development key"
_MIN_BLOB = 1 + 12 + 16


class KeyError_(FaceSearchError):
    code = "key_error"
    http_status = 500


class FieldCipher:
    """One raw AES-256-GCM key, format 0x01 (kept for values written before the keyring)."""

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise KeyError_("the field encryption key must be 32 bytes")
        self._aead = AESGCM(key)

    def encrypt(self, plaintext: bytes, aad: str) -> bytes:
        nonce = secrets.token_bytes(12)
        return _V1 + nonce + self._aead.encrypt(nonce, plaintext, aad.encode())

    def decrypt(self, blob: bytes, aad: str) -> bytes:
        if not blob or blob[:1] != _V1 or len(blob) < _MIN_BLOB:
            raise KeyError_("not a facesearch ciphertext")
        try:
            return self._aead.decrypt(blob[1:13], blob[13:], aad.encode())
        except Exception:  # InvalidTag: wrong key, or the value was moved or altered
            raise KeyError_("a stored value could not be decrypted (wrong key, or altered)") from None


def _derive(master: bytes, purpose: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                info=b"facesearch/" + purpose).derive(master)


@dataclass(frozen=True)
class KeyVersion:
    version: int
    master: bytes


@dataclass(frozen=True)
class KeyMaterial:
    """What a key source holds, and where it came from (for the production checks)."""

    versions: tuple[KeyVersion, ...]
    source: str            # "env" | "file"
    path: Path | None
    dev_generated: bool    # a key file this program generated itself (development only)


def parse_keyring(text: str) -> tuple[list[KeyVersion], bool]:
    """Key versions from the keyring text (lines or commas); comments start with ``#``."""
    versions: list[KeyVersion] = []
    dev = False
    entries: list[str] = []
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith(DEV_MARKER):
            dev = True
        if line and not line.startswith("#"):
            entries.extend(e.strip() for e in line.split(","))
    for line in entries:
        if not line:
            continue
        ver_text, sep, b64 = line.partition(":")
        if not sep:
            ver_text, b64 = "1", line
        try:
            version = int(ver_text)
            master = base64.b64decode(b64.strip(), validate=True)
        except ValueError:
            raise KeyError_("the key must be base64 of 32 bytes, or lines '<version>:<base64>'") from None
        if len(master) != 32 or version < 1 or version >= 2**31:
            raise KeyError_("every key must be 32 bytes with a version from 1")
        if any(v.version == version for v in versions):
            raise KeyError_(f"key version {version} appears twice")
        versions.append(KeyVersion(version, master))
    if not versions:
        raise KeyError_("the key holds no key")
    return sorted(versions, key=lambda v: v.version), dev


def format_keyring(versions: list[KeyVersion], dev: bool = False) -> str:
    head = [f"{DEV_MARKER}, generated {datetime.now(timezone.utc):%Y-%m-%d}; never use it in production"] if dev else []
    return "\n".join(head + [f"{v.version}:{base64.b64encode(v.master).decode()}" for v in versions]) + "\n"


def file_problems(path: Path) -> list[str]:
    """Why a key file may not be used: not a regular file, or readable by group or others."""
    st = path.stat()
    out = []
    if not stat.S_ISREG(st.st_mode):
        out.append(f"key file {path} is not a regular file")
    if st.st_mode & 0o077:
        out.append(f"key file {path} is readable by others: chmod 600 it")
    return out


def write_key_file(path: Path, versions: list[KeyVersion], dev: bool = False) -> None:
    """Write (or atomically replace) a keyring file with mode 0600."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(format_keyring(versions, dev))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def new_master() -> bytes:
    return secrets.token_bytes(32)


@dataclass(frozen=True)
class KeySource:
    """Where the keyring comes from: the environment value wins over the file."""

    env_key: str | None
    key_file: Path
    create_if_missing: bool = True  # development: generate a key file on first use

    def load(self) -> KeyMaterial:
        if self.env_key:
            versions, _ = parse_keyring(self.env_key)
            return KeyMaterial(tuple(versions), "env", None, False)
        if not self.key_file.exists():
            if not self.create_if_missing:
                raise KeyError_(f"no key: set FACESEARCH_KEY or create the key file {self.key_file}")
            try:
                write_key_file_exclusive(self.key_file, [KeyVersion(1, new_master())], dev=True)
            except FileExistsError:
                pass  # another process created it first
        problems = file_problems(self.key_file)
        if problems:
            raise KeyError_(problems[0])
        versions, dev = parse_keyring(self.key_file.read_text())
        return KeyMaterial(tuple(versions), "file", self.key_file, dev)

    def mtime(self) -> int | None:
        if self.env_key:
            return None
        try:
            return self.key_file.stat().st_mtime_ns
        except FileNotFoundError:
            return None


def write_key_file_exclusive(path: Path, versions: list[KeyVersion], dev: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(format_keyring(versions, dev))


class _Version:
    def __init__(self, kv: KeyVersion) -> None:
        self.version = kv.version
        self.aead = AESGCM(_derive(kv.master, b"field-encryption/v2"))
        self.index_key = _derive(kv.master, b"blind-index/v1")
        self.legacy = FieldCipher(kv.master) if kv.version == 1 else None


class Keyring:
    """Every key version of one installation: encrypts under the newest, decrypts any, and
    computes blind indexes. Loaded on first use; re-read when the key file changes (so a running
    server follows ``keys rotate`` without a restart)."""

    def __init__(self, source: KeySource) -> None:
        self._source = source
        self._lock = threading.Lock()
        self._versions: dict[int, _Version] = {}
        self._material: KeyMaterial | None = None
        self._mtime: int | None = None

    @classmethod
    def from_keys(cls, *masters: bytes) -> Keyring:
        """A keyring of the given master keys (versions 1, 2, ...), for tests and tools."""
        text = ",".join(f"{i}:{base64.b64encode(m).decode()}" for i, m in enumerate(masters, 1))
        return cls(KeySource(text, Path("/nonexistent")))

    # loading ---------------------------------------------------------------------------------
    def _ensure(self) -> dict[int, _Version]:
        with self._lock:
            mtime = self._source.mtime()
            if self._material is None or mtime != self._mtime:
                material = self._source.load()
                self._versions = {kv.version: (self._versions.get(kv.version) or _Version(kv))
                                  for kv in material.versions}
                self._material, self._mtime = material, self._source.mtime()
            return self._versions

    def reload(self) -> None:
        with self._lock:
            self._material = None
        self._ensure()

    @property
    def material(self) -> KeyMaterial:
        self._ensure()
        assert self._material is not None  # nosec B101 - narrows the type; _ensure() just loaded it
        return self._material

    @property
    def current_version(self) -> int:
        return max(self._ensure())

    @property
    def versions(self) -> list[int]:
        return sorted(self._ensure())

    def _get(self, version: int) -> _Version:
        vs = self._ensure()
        if version not in vs:
            self.reload()  # written by a newer key version than this process has seen
            vs = self._ensure()
        if version not in vs:
            raise KeyError_(f"a stored value needs key version {version}, which the keyring lacks")
        return vs[version]

    # bytes -----------------------------------------------------------------------------------
    def encrypt(self, plaintext: bytes, aad: str, version: int | None = None) -> bytes:
        v = self._get(version if version is not None else self.current_version)
        nonce = secrets.token_bytes(12)
        return _V2 + v.version.to_bytes(4, "big") + nonce + v.aead.encrypt(nonce, plaintext, aad.encode())

    def decrypt(self, blob: bytes, aad: str) -> bytes:
        if blob[:1] == _V1:
            legacy = self._get(1).legacy
            assert legacy is not None  # nosec B101 - narrows the type; version 1 always has its legacy cipher
            return legacy.decrypt(blob, aad)
        if blob[:1] != _V2 or len(blob) < 5 + _MIN_BLOB - 1:
            raise KeyError_("not a facesearch ciphertext")
        v = self._get(int.from_bytes(blob[1:5], "big"))
        try:
            return v.aead.decrypt(blob[5:17], blob[17:], aad.encode())
        except Exception:  # InvalidTag: wrong key, or the value was moved or altered
            raise KeyError_("a stored value could not be decrypted (wrong key, or altered)") from None

    @staticmethod
    def version_of(blob: bytes) -> int:
        if blob[:1] == _V1:
            return 0  # older than every versioned format: always re-encrypted by a rotation
        if blob[:1] == _V2 and len(blob) >= 5:
            return int.from_bytes(blob[1:5], "big")
        raise KeyError_("not a facesearch ciphertext")

    # text ------------------------------------------------------------------------------------
    def encrypt_text(self, value: str, aad: str, version: int | None = None) -> str:
        return TEXT_PREFIX + base64.urlsafe_b64encode(self.encrypt(value.encode("utf-8"), aad, version)).decode()

    def decrypt_text(self, stored: str, aad: str) -> str:
        return self.decrypt(text_blob(stored), aad).decode("utf-8")

    # blind indexes ---------------------------------------------------------------------------
    def blind_index(self, domain: str, value: str, version: int | None = None) -> str:
        v = self._get(version if version is not None else self.current_version)
        return hmac.new(v.index_key, domain.encode() + b"\x00" + value.encode("utf-8"), hashlib.sha256).hexdigest()

    def blind_indexes(self, domain: str, value: str) -> list[str]:
        """The value's index under every key version (newest first): what a lookup matches."""
        return [self.blind_index(domain, value, v) for v in sorted(self._ensure(), reverse=True)]


def is_encrypted_text(stored: object) -> bool:
    return isinstance(stored, str) and stored.startswith(TEXT_PREFIX)


def text_blob(stored: str) -> bytes:
    if not is_encrypted_text(stored):
        raise KeyError_("not a facesearch ciphertext")
    try:
        return base64.urlsafe_b64decode(stored[len(TEXT_PREFIX):])
    except ValueError:
        raise KeyError_("not a facesearch ciphertext") from None


def load_key(env_key: str | None, key_file: Path) -> bytes:
    """Version 1's master key from the environment or the key file (created 0600 when missing)."""
    material = KeySource(env_key, key_file).load()
    return material.versions[0].master
