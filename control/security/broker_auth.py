"""Mosquitto credentials kept in sync with the ledger: a password file and an ACL.

Why a password file + ACL and not the Dynamic Security plugin: every kit's password is
already stored as a Mosquitto ``$7$`` PBKDF2-SHA512 hash (control/ledger/secrets.py), which
is exactly a password-file line, so the file is rendered from the ledger without ever
knowing a password. Dynamic Security's API wants the clear password to create a client
(it is never kept after provisioning) and its JSON store is not meant to be written
while the broker runs. A reload is one SIGHUP; Mosquitto re-reads both files without
dropping connections (a revoked kit is refused at its next connect).

The ACL is static: ``pattern`` lines with ``%u`` give each kit its own subtree only, so
it does not grow with the fleet. Client id = username is enforced by the broker
(``use_username_as_clientid`` on the kits' listener): a kit cannot take over another
kit's session.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select

from cizo import compact, protocol
from control.ledger.db import Database
from control.ledger.models import Kit
from control.ledger.secrets import hash_mqtt_password

log = logging.getLogger(__name__)

BRIDGE_USER = "cizo-bridge"
CONTROL_USER = "cizo-control"
SERVICE_USERS = (BRIDGE_USER, CONTROL_USER)

_T = protocol.TOPIC_ROOT
_K, _S = compact.TOPIC_ROOT, compact.SHORT  # the v2 topics


def render_acl() -> str:
    """The broker ACL (identical to deploy/mosquitto/acl; a test keeps them equal)."""
    return f"""\
# CIZO broker ACL (v1 and v2 kit contract, docs/protocol.md), written by `cizo broker sync`
# (control/security/broker_auth.py). In production the one-shot mosquitto-init service copies it
# to /mosquitto/auth/acl (owner mosquitto, mode 0600).
#
# "read" allows subscribing and receiving, "write" allows publishing. Anything not
# granted here is refused.

# --- kits ---------------------------------------------------------------------------
# A kit logs in with username = its kit_id; %u is replaced by that username, so a kit
# can only publish and subscribe under its own {_T}/{{kit_id}}/ subtree. It may read its
# command but never write it: it cannot replace its own retained command.
pattern write {_T}/%u/{protocol.TELEMETRY}
pattern write {_T}/%u/{protocol.STATUS}
pattern write {_T}/%u/{protocol.CMD_ACK}
pattern read {_T}/%u/{protocol.CMD}
# the same rights under the v2 (compact) topics
pattern write {_K}/%u/{_S[protocol.TELEMETRY]}
pattern write {_K}/%u/{_S[protocol.STATUS]}
pattern write {_K}/%u/{_S[protocol.CMD_ACK]}
pattern read {_K}/%u/{_S[protocol.CMD]}

# --- service accounts (passwords from the environment, deploy/mosquitto/init-auth.sh) --
# The telemetry bridge: ingests readings and presence.
user {BRIDGE_USER}
topic read {_T}/+/{protocol.TELEMETRY}
topic read {_T}/+/{protocol.STATUS}
topic read {_K}/+/{_S[protocol.TELEMETRY]}
topic read {_K}/+/{_S[protocol.STATUS]}

# The control service: publishes signed retained commands, reads acknowledgements,
# presence and telemetry.
user {CONTROL_USER}
topic write {_T}/+/{protocol.CMD}
topic read {_T}/+/{protocol.CMD_ACK}
topic read {_T}/+/{protocol.STATUS}
topic read {_T}/+/{protocol.TELEMETRY}
topic write {_K}/+/{_S[protocol.CMD]}
topic read {_K}/+/{_S[protocol.CMD_ACK]}
topic read {_K}/+/{_S[protocol.STATUS]}
topic read {_K}/+/{_S[protocol.TELEMETRY]}
"""


def valid_username(name: str) -> bool:
    """A username usable in the password file and as an ACL ``%u``: no separators."""
    return (
        0 < len(name) <= 64
        and name not in SERVICE_USERS
        and not any(c in name for c in ":/+#$ \t\r\n\x00")
    )


def render_password_file(
    kits: Iterable[tuple[str, str]], services: Mapping[str, str] | None = None
) -> tuple[str, int]:
    """Password-file text from (username, $7$ hash) pairs; returns (text, kit lines).

    A kit whose username could name a service account, or break the file format, is
    left out (and logged): it must never be able to log in as something else.
    """
    lines: list[str] = []
    for user, hashed in (services or {}).items():
        lines.append(f"{user}:{hashed}")
    count = 0
    for user, hashed in kits:
        if not valid_username(user) or not hashed.startswith("$7$") or "\n" in hashed:
            log.warning("kit left out of the broker password file: unusable username or hash",
                        extra={"kit_id": user})
            continue
        lines.append(f"{user}:{hashed}")
        count += 1
    return "\n".join(lines) + ("\n" if lines else ""), count


def active_kit_credentials(db: Database) -> list[tuple[str, str]]:
    """Kits allowed on the broker: not decommissioned, password not revoked."""
    with db.session() as s:
        rows = s.execute(
            select(Kit.mqtt_username, Kit.mqtt_password_hash)
            .where(Kit.decommissioned_at.is_(None), Kit.mqtt_revoked_at.is_(None))
            .order_by(Kit.mqtt_username)
        ).all()
    return [(u, h) for u, h in rows]


def _write_private(path: Path, text: str) -> None:
    """Write atomically with mode 0600: a half-written file must never be loaded."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


@dataclass(frozen=True, slots=True)
class SyncResult:
    kits: int
    services: int
    reloaded: bool


def sync(
    db: Database,
    *,
    password_file: Path,
    acl_file: Path | None = None,
    service_passwords: Mapping[str, str] | None = None,
    reload_pid: int | None = None,
) -> SyncResult:
    """Write the password file (and ACL) from the ledger; SIGHUP the broker if asked."""
    services = {u: hash_mqtt_password(p) for u, p in (service_passwords or {}).items()}
    text, kits = render_password_file(active_kit_credentials(db), services)
    _write_private(password_file, text)
    if acl_file is not None:
        _write_private(acl_file, render_acl())
    reloaded = False
    if reload_pid is not None:
        os.kill(reload_pid, signal.SIGHUP)
        reloaded = True
    log.info("broker credentials written: %d kits, %d service accounts%s", kits,
             len(services), " (broker reloaded)" if reloaded else "")
    return SyncResult(kits, len(services), reloaded)


def revoke_kit(db: Database, kit_id: str, now: float) -> bool:
    """Revoke a kit's broker password (takes effect at the next sync + reload)."""
    with db.session() as s:
        kit = s.get(Kit, kit_id)
        if kit is None:
            return False
        if kit.mqtt_revoked_at is None:
            kit.mqtt_revoked_at = now
    log.info("kit broker password revoked", extra={"kit_id": kit_id})
    return True
