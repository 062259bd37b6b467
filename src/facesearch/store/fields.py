"""Encrypted columns and their blind indexes, for the declarative tables.

``EncryptedText("table.column")`` stores a string as ``enc:<base64 AES-GCM>`` and gives it back
in clear, so services read and write ``agency.name`` as usual. The keyring is the one attached
to the engine at start-up (:func:`attach_keyring`), found through the SQL dialect of the
connection: no module global. Equality on an encrypted column cannot work (every encryption is
randomised), so comparing one in SQL raises; look rows up by their blind index instead, e.g.
``Agency.name_bi.in_(keyring.blind_indexes("agency", normalise(name)))``.

A class lists its blind indexes in ``__blind_indexes__`` (index column -> (source attribute,
domain)); they are computed on every insert and update from the clear value, under the newest
key version.
"""
from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine, Text, event
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import Mapper
from sqlalchemy.sql import operators
from sqlalchemy.types import TypeDecorator

from facesearch.store.crypto import KeyError_, Keyring, is_encrypted_text

_ATTR = "facesearch_keyring"


def attach_keyring(engine: Engine, keyring: Keyring) -> None:
    """Make ``keyring`` the one every encrypted column of ``engine`` uses."""
    setattr(engine.dialect, _ATTR, keyring)


def keyring_of(dialect: Dialect) -> Keyring:
    kr = getattr(dialect, _ATTR, None)
    if kr is None:
        raise KeyError_("no keyring is attached to this database engine (attach_keyring)")
    return kr


_NO_SQL_EQUALITY = {operator.eq, operator.ne, operators.in_op, operators.not_in_op,
                    operators.like_op, operators.ilike_op}


class EncryptedText(TypeDecorator[str]):
    impl = Text
    cache_ok = True

    class comparator_factory(TypeDecorator.Comparator):  # noqa: N801 - SQLAlchemy's name
        def operate(self, op: Any, *other: Any, **kwargs: Any) -> Any:
            if op in _NO_SQL_EQUALITY:
                raise TypeError("an encrypted column cannot be compared in SQL: use its blind index")
            return super().operate(op, *other, **kwargs)

    def __init__(self, aad: str) -> None:
        super().__init__()
        self.aad = aad

    def process_bind_param(self, value: str | None, dialect: Dialect) -> str | None:
        if value is None:
            return None
        if is_encrypted_text(value):
            return value  # already ciphertext (a rotation writing what it re-encrypted)
        return keyring_of(dialect).encrypt_text(value, self.aad)

    def process_result_value(self, value: str | None, dialect: Dialect) -> str | None:
        if value is None or not is_encrypted_text(value):
            return value  # clear text left by an older schema: encrypted at the next start
        return keyring_of(dialect).decrypt_text(value, self.aad)


Normaliser = Callable[[str], str]


def blind_index_listener(cls: type) -> None:
    """Compute ``cls.__blind_indexes__`` on insert and update."""
    spec: dict[str, tuple[str, str, Normaliser]] = cls.__blind_indexes__  # type: ignore[attr-defined]

    def fill(_mapper: Mapper, connection: Any, target: Any) -> None:
        kr = keyring_of(connection.dialect)
        for column, (source, domain, norm) in spec.items():
            value = getattr(target, source)
            if value is None:
                setattr(target, column, None)
            elif not is_encrypted_text(value):
                setattr(target, column, kr.blind_index(domain, norm(value)))

    event.listen(cls, "before_insert", fill)
    event.listen(cls, "before_update", fill)
