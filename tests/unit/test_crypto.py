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


# the keyring: versions, formats, blind indexes --------------------------------------------------
from facesearch.store.crypto import (DEV_MARKER, Keyring, KeySource, format_keyring,  # noqa: E402
                                     parse_keyring)


def test_the_keyring_writes_under_the_newest_version_and_reads_every_version() -> None:
    k1, k2 = os.urandom(32), os.urandom(32)
    old, both = Keyring.from_keys(k1), Keyring.from_keys(k1, k2)
    v1 = old.encrypt(b"Quillfeather", "agencies.name")
    v2 = both.encrypt(b"Quillfeather", "agencies.name")
    assert (Keyring.version_of(v1), Keyring.version_of(v2)) == (1, 2)
    assert both.decrypt(v1, "agencies.name") == both.decrypt(v2, "agencies.name") == b"Quillfeather"
    with pytest.raises(KeyError_, match="version 2"):
        old.decrypt(v2, "agencies.name")  # a keyring without the new version says so
    with pytest.raises(KeyError_):
        both.decrypt(v2, "users.display_name")  # bound to its column
    legacy = FieldCipher(k1).encrypt(b"probe", "probe:1")  # format 0x01, before the keyring
    assert both.decrypt(legacy, "probe:1") == b"probe" and Keyring.version_of(legacy) == 0
    t = both.encrypt_text("Ysolde", "users.display_name")
    assert t.startswith("enc:") and "Ysolde" not in t and both.decrypt_text(t, "users.display_name") == "Ysolde"


def test_blind_indexes_are_keyed_per_version_and_per_domain() -> None:
    k1, k2 = os.urandom(32), os.urandom(32)
    kr = Keyring.from_keys(k1, k2)
    a1, a2 = kr.blind_index("user", "alice", 1), kr.blind_index("user", "alice", 2)
    assert a1 != a2 and kr.blind_indexes("user", "alice") == [a2, a1]
    assert kr.blind_index("agency", "alice") != a2  # the domain is part of the message
    assert Keyring.from_keys(os.urandom(32)).blind_index("user", "alice") != a1  # keyed
    assert len(a2) == 64 and "alice" not in a2
    # the HMAC key is derived, not the encryption key itself
    import hashlib
    import hmac

    assert a1 != hmac.new(k1, b"user\x00alice", hashlib.sha256).hexdigest()


def test_keyring_text_formats() -> None:
    a, b = (base64.b64encode(os.urandom(32)).decode() for _ in range(2))
    versions, dev = parse_keyring(f"{DEV_MARKER}, generated today; never in production\n1:{a}\n2:{b}\n")
    assert [v.version for v in versions] == [1, 2] and dev
    assert [v.version for v in parse_keyring(f"2:{b}, 1:{a}")[0]] == [1, 2]
    assert parse_keyring(a)[0][0].version == 1 and not parse_keyring(a)[1]
    assert parse_keyring(format_keyring(versions, dev=True)) == (versions, True)
    for bad in (f"1:{a}\n1:{b}", "1:c2hvcnQ=", "", "x:" + a, "0:" + a):
        with pytest.raises(KeyError_):
            parse_keyring(bad)


def test_development_generates_the_key_production_does_not(tmp_path: Path) -> None:
    with pytest.raises(KeyError_, match="no key"):
        KeySource(None, tmp_path / "p" / "field.key", create_if_missing=False).load()
    m = KeySource(None, tmp_path / "d" / "field.key").load()
    assert m.dev_generated and m.source == "file" and len(m.versions) == 1
    assert (tmp_path / "d" / "field.key").stat().st_mode & 0o777 == 0o600


def test_an_encrypted_column_cannot_be_compared_in_sql() -> None:
    from facesearch.store.tables import Agency, User

    with pytest.raises(TypeError, match="blind index"):
        Agency.name == "x"  # noqa: B015
    with pytest.raises(TypeError, match="blind index"):
        User.username_key.in_(["x"])
    assert Agency.name.is_not(None) is not None  # what is not an equality still works
