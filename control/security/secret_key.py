"""Rotating CIZO_SECRET_KEY: every secret it encrypts at rest, re-encrypted with a new key.

The key (SecretBox) encrypts the kits' command secrets, the DESCOs' webhook secrets and
any other column the ledger keeps encrypted. Such a column is named ``*_enc``: that
convention is how this module finds every one of them, so a new encrypted column is
rotated without being listed here. The secrets themselves do not change, so no kit needs
re-provisioning. All rows are rewritten in one transaction (all or none), with an audit
entry. A value that already decrypts with the new key is left as it is, so running the
rotation again after an interruption, or after the new key was put in place, is harmless.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import inspect, select

from control.ledger.accounts import Actor, audit
from control.ledger.db import Database
from control.ledger.models import Base
from control.ledger.secrets import SecretBox

log = logging.getLogger(__name__)

ENCRYPTED_SUFFIX = "_enc"


@dataclass(frozen=True)
class Rotated:
    rewritten: dict[str, int]  # "table.column" -> values re-encrypted
    already_new: int  # values that already decrypted with the new key

    @property
    def total(self) -> int:
        return sum(self.rewritten.values())


def encrypted_columns() -> dict[type[Any], list[str]]:
    """Every mapped class with its ``*_enc`` attributes (ciphertext under the key)."""
    found: dict[type[Any], list[str]] = {}
    for mapper in Base.registry.mappers:
        names = [a.key for a in mapper.column_attrs if a.key.endswith(ENCRYPTED_SUFFIX)]
        if names:
            found[mapper.class_] = sorted(names)
    return found


def rotate_secret_key(db: Database, *, current_key: str, new_key: str, actor: Actor,
                      now: float) -> Rotated:
    """Re-encrypt every stored secret from ``current_key`` to ``new_key``.

    A value that decrypts with neither key stops the rotation (nothing is written): it
    names the row, since a secret lost there would mean re-provisioning that kit.
    """
    if current_key == new_key:
        raise ValueError("the new key is the current key: generate one with `cizo keygen`")
    old_box, new_box = SecretBox(current_key), SecretBox(new_key)
    rewritten: dict[str, int] = {}
    already_new = 0
    with db.session() as s:
        for model, names in encrypted_columns().items():
            for row in s.scalars(select(model).with_for_update()):
                for name in names:
                    token = getattr(row, name)
                    if token is None:
                        continue
                    if _decrypts(new_box, token):
                        already_new += 1
                        continue
                    where = f"{model.__tablename__}.{name} of {inspect(row).identity}"
                    if not _decrypts(old_box, token):
                        raise ValueError(f"{where}: decrypts with neither key; nothing was "
                                         "changed")
                    setattr(row, name, new_box.encrypt(old_box.decrypt(token)))
                    key = f"{model.__tablename__}.{name}"
                    rewritten[key] = rewritten.get(key, 0) + 1
        audit(s, actor=actor, action="secret_key.rotate", now=now,
              reason="CIZO_SECRET_KEY rotated",
              after={"rewritten": rewritten, "already_new": already_new})
    rotated = Rotated(rewritten, already_new)
    log.info("secret key rotated: %d values re-encrypted (%s)", rotated.total, rewritten)
    return rotated


def _decrypts(box: SecretBox, token: str) -> bool:
    try:
        box.decrypt(token)
    except ValueError:
        return False
    return True
