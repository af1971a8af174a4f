"""Rotating CIZO_SECRET_KEY: every secret it encrypts at rest, re-encrypted with a new key.

The key encrypts the kits' command secrets and the DESCOs' webhook secrets (SecretBox);
the secrets themselves do not change, so no kit needs re-provisioning. All rows are
rewritten in one transaction (all or none), with an audit entry. A row that already
decrypts with the new key is left as it is, so running the rotation again after an
interruption, or after the new key was put in place, is harmless.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import select

from control.ledger.accounts import Actor, audit
from control.ledger.db import Database
from control.ledger.models import Kit, WebhookSecret
from control.ledger.secrets import SecretBox

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Rotated:
    kits: int  # command secrets re-encrypted
    webhook_secrets: int
    already_new: int  # rows that already decrypted with the new key


def rotate_secret_key(db: Database, *, current_key: str, new_key: str, actor: Actor,
                      now: float) -> Rotated:
    """Re-encrypt every stored secret from ``current_key`` to ``new_key``.

    A row that decrypts with neither key stops the rotation (nothing is written): it
    names the row, since a secret lost there would mean re-provisioning that kit.
    """
    if current_key == new_key:
        raise ValueError("the new key is the current key: generate one with `cizo keygen`")
    old_box, new_box = SecretBox(current_key), SecretBox(new_key)
    counts = {"kits": 0, "webhook_secrets": 0, "already_new": 0}
    with db.session() as s:
        rows: list[Kit | WebhookSecret] = [*s.scalars(select(Kit).with_for_update()),
                                           *s.scalars(select(WebhookSecret).with_for_update())]
        for row in rows:
            if _decrypts(new_box, row.secret_enc):
                counts["already_new"] += 1
                continue
            if not _decrypts(old_box, row.secret_enc):
                raise ValueError(f"{row.__tablename__} {_row_id(row)}: its secret decrypts "
                                 "with neither key; nothing was changed")
            row.secret_enc = new_box.encrypt(old_box.decrypt(row.secret_enc))
            counts["kits" if isinstance(row, Kit) else "webhook_secrets"] += 1
        audit(s, actor=actor, action="secret_key.rotate", now=now,
              reason="CIZO_SECRET_KEY rotated", after=dict(counts))
    rotated = Rotated(**counts)
    log.info("secret key rotated: %d kit secrets, %d webhook secrets re-encrypted",
             rotated.kits, rotated.webhook_secrets)
    return rotated


def _decrypts(box: SecretBox, token: str) -> bool:
    try:
        box.decrypt(token)
    except ValueError:
        return False
    return True


def _row_id(row: Kit | WebhookSecret) -> str:
    return row.id if isinstance(row, Kit) else row.desco_id
