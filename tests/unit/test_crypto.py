"""Field encryption: AES-GCM bound to its row, keys outside the database with safe permissions."""
from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

from facesearch.store.crypto import FieldCipher, KeyError_, load_key


def test_round_trip_and_binding_to_the_row(tmp_path: Path) -> None:
    c = FieldCipher(load_key(None, tmp_path / "keys" / "field.key"))
    blob = c.encrypt(b"probe bytes", aad="probe:1")
    assert b"probe bytes" not in blob
    assert c.decrypt(blob, aad="probe:1") == b"probe bytes"
    with pytest.raises(KeyError_):
        c.decrypt(blob, aad="probe:2")  # moved to another row
    tampered = blob[:-1] + bytes([blob[-1] ^ 1])
    with pytest.raises(KeyError_):
        c.decrypt(tampered, aad="probe:1")
    with pytest.raises(KeyError_):
        FieldCipher(os.urandom(32)).decrypt(blob, aad="probe:1")  # another key


def test_key_file_is_created_private_and_refused_when_readable_by_others(tmp_path: Path) -> None:
    f = tmp_path / "keys" / "field.key"
    key = load_key(None, f)
    assert len(key) == 32 and (f.stat().st_mode & 0o777) == 0o600
    assert load_key(None, f) == key
    f.chmod(0o644)
    with pytest.raises(KeyError_, match="readable by others"):
        load_key(None, f)


def test_key_from_the_environment(tmp_path: Path) -> None:
    k = os.urandom(32)
    assert load_key(base64.b64encode(k).decode(), tmp_path / "unused") == k
    with pytest.raises(KeyError_):
        load_key("not base64!", tmp_path / "unused")
