"""Per-DESCO webhook secrets, encrypted at rest with CIZO_SECRET_KEY (never logged)."""

from __future__ import annotations

from control.ledger import accounts as ledger
from control.ledger.accounts import Actor
from control.ledger.models import Desco, WebhookSecret
from control.payments.providers import webhook_signature
from control.runtime import Runtime


class UnknownDesco(LookupError):
    pass


def rotate_secret(rt: Runtime, desco_id: str, *, actor: Actor) -> str:
    """Set a new secret for ``desco_id`` and return it: shown once, stored encrypted."""
    secret = webhook_signature.new_secret()
    now = rt.clock.now()
    with rt.db.session() as s:
        if s.get(Desco, desco_id) is None:
            raise UnknownDesco(desco_id)
        row = s.get(WebhookSecret, desco_id)
        if row is None:
            s.add(WebhookSecret(desco_id=desco_id, secret_enc=rt.box.encrypt(secret),
                                created_at=now))
        else:
            row.secret_enc = rt.box.encrypt(secret)
            row.created_at = now
        ledger.audit(s, actor=actor, action="webhook.secret_rotated", now=now,
                     desco_id=desco_id)
    return secret


def secret_for(rt: Runtime, desco_id: str) -> str | None:
    with rt.db.session() as s:
        row = s.get(WebhookSecret, desco_id)
        return rt.box.decrypt(row.secret_enc) if row is not None else None
