"""The broker's doors: Mosquitto's dynamic-security plugin converged to the ledger.

The ledger is the source of truth (kits, revocations, password hashes and the password
encrypted with CIZO_SECRET_KEY); the broker holds a copy the control service keeps equal
to it over ``$CONTROL/dynamic-security/v1`` (control.gateways.broker_admin):

- a kit is a dynsec client: username = client id = its kit_id (a login that claims another
  client id is refused on every listener), one role of its own whose ACLs are its own
  topics (2.0's plugin has no ``%u`` in ACLs), and a textdescription holding a fingerprint
  of its ledger hash, which tells whether the broker has the current password;
- revoked and decommissioned kits are deleted; the plugin disconnects them at once;
- an OpenPAYGO Metrics device (kind ``openpaygo_metrics``) posts to ``/dd`` and never
  connects: it has no door (one found on the broker is deleted like a revoked kit's);
- a rotation sets the new password; the plugin disconnects the old session at once;
- the bridge and control service accounts, with their roles, from CIZO_BROKER_*_PASSWORD.

Mosquitto 2.0's plugin rewrites its whole file on every change (createRole, createClient,
deleteClient... each), on the broker's one thread: a change costs time proportional to the
number of accounts, so commands are sent only for what differs (docs/security.md has the
figures).

One function plans what a kit needs (``plan_kit``); a provisioning, revocation or
rotation converges just that kit, and ``reconcile`` (at start and every
``broker_reconcile_interval_s``) converges everything, so a broker restarted with an old or
empty dynamic-security file comes back to the ledger. Every change is a no-op when the
broker already agrees: dynsec disconnects a client whenever its entry is modified.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select

from cizo import protocol
from cizo.settings import Settings
from control.gateways.broker_admin import (
    BrokerAdminConfig,
    BrokerAdminError,
    Command,
    DynsecSession,
    session,
)
from control.ledger.db import Database
from control.ledger.models import KIT_MQTT, Kit
from control.ledger.secrets import (
    SecretBox,
    hash_mqtt_password,
    mqtt_password_fingerprint,
    new_kit_login,
    verify_mqtt_password,
)
from control.runtime import Runtime

log = logging.getLogger(__name__)

BRIDGE_USER = "cizo-bridge"
CONTROL_USER = "cizo-control"
SERVICE_USERS = (BRIDGE_USER, CONTROL_USER)
KIT_TEXTNAME = "cizo kit"  # marks the clients this module owns
KIT_ROLE_PREFIX = "cizo-kit:"
PAGE = 1000  # clients or roles per listing request


# Anything not granted below is refused, receiving included: a kit granted a wildcard
# subscription still receives only what its role lets it receive.
DEFAULT_ACL_ACCESS = {"publishClientSend": False, "publishClientReceive": False,
                      "subscribe": False, "unsubscribe": True}
# errors that mean "already as wanted" (another process converged it first)
_ALREADY = ("already exists", "not found")


def _acl(acltype: str, topic: str) -> dict[str, Any]:
    return {"acltype": acltype, "topic": topic, "priority": 0, "allow": True}


def _reads(topic: str) -> list[dict[str, Any]]:
    return [_acl("subscribePattern", topic), _acl("publishClientReceive", topic)]


def kit_role(kit_id: str) -> str:
    return f"{KIT_ROLE_PREFIX}{kit_id}"


def kit_acls(kit_id: str) -> list[dict[str, Any]]:
    """Its own topics only, under every contract version (a kit moves between them on a
    signed command, with the same account); it reads its command but never writes it (a
    kit cannot replace its own retained command with an old unlock)."""
    return [acl for v in protocol.VERSIONS for acl in (
        _acl("publishClientSend", protocol.telemetry_topic(kit_id, v)),
        _acl("publishClientSend", protocol.status_topic(kit_id, v)),
        _acl("publishClientSend", protocol.ack_topic(kit_id, v)),
        *_reads(protocol.cmd_topic(kit_id, v)),
        *_reads(protocol.replay_topic(v)),
    )]


def _sends(kind: str) -> list[dict[str, Any]]:
    return [_acl("publishClientSend", f) for f in protocol.topic_filters(kind)]


def _reads_all(kind: str) -> list[dict[str, Any]]:
    return [acl for f in protocol.topic_filters(kind) for acl in _reads(f)]


# every kit's topics, under both contract versions (protocol.topic_filters)
SERVICE_ACLS: dict[str, list[dict[str, Any]]] = {
    # the telemetry bridge ingests readings and presence, and asks kits for a replay
    BRIDGE_USER: [*_reads_all(protocol.TELEMETRY), *_reads_all(protocol.STATUS),
                  *(_acl("publishClientSend", protocol.replay_topic(v))
                    for v in protocol.VERSIONS)],
    # the control service publishes signed retained commands, reads acks, presence, telemetry
    CONTROL_USER: [*_sends(protocol.CMD), *_reads_all(protocol.CMD_ACK),
                   *_reads_all(protocol.STATUS), *_reads_all(protocol.TELEMETRY)],
}


def valid_username(name: str) -> bool:
    """A kit id usable as a broker username and inside ACL topics: no separators."""
    return (
        0 < len(name) <= 64
        and name not in SERVICE_USERS
        and not any(c in name for c in ":/+#$ \t\r\n\x00")
    )


@dataclass(frozen=True, slots=True)
class LedgerKit:
    kit_id: str
    fingerprint: str
    password_enc: str | None
    active: bool  # an MQTT kit, not revoked, not decommissioned: it has a door


@dataclass
class Outcome:
    """What one convergence did; ``failed`` lists kits (or accounts) left unconverged."""

    commands: int = 0
    created: int = 0
    updated: int = 0
    deleted: int = 0
    failed: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"commands": self.commands, "created": self.created, "updated": self.updated,
                "deleted": self.deleted, "failed": len(self.failed)}


def ledger_kits(db: Database, kit_ids: Iterable[str] | None = None) -> list[LedgerKit]:
    q = select(Kit.mqtt_username, Kit.mqtt_password_hash, Kit.mqtt_password_enc,
               Kit.mqtt_revoked_at, Kit.decommissioned_at, Kit.kind)
    if kit_ids is not None:
        q = q.where(Kit.mqtt_username.in_(list(kit_ids)))
    with db.session() as s:
        rows = s.execute(q.order_by(Kit.mqtt_username)).all()
    return [LedgerKit(u, mqtt_password_fingerprint(h), enc,
                      rev is None and dec is None and kind == KIT_MQTT)
            for u, h, enc, rev, dec, kind in rows]


def _roles_of(entry: dict[str, Any]) -> list[str]:
    return sorted(r["rolename"] for r in entry.get("roles", []))


def plan_kit(kit: LedgerKit, present: dict[str, Any] | None, box: SecretBox,
             roles: dict[str, dict[str, Any]] | None = None
             ) -> tuple[list[Command], str | None]:
    """The commands that bring the broker's entry (``present``) to the ledger's kit, and
    the reason it cannot be converged (None if it can). ``roles``: the broker's roles with
    their ACLs when known (a reconcile): a kit role whose ACLs differ from ``kit_acls``
    (made before the kit's rights changed, e.g. before v2's topics) is rewritten."""
    user, role = kit.kit_id, kit_role(kit.kit_id)
    gone: list[Command] = [{"command": "deleteClient", "username": user},
                           {"command": "deleteRole", "rolename": role}]
    if not kit.active:
        return (gone if present is not None else []), None
    if not valid_username(user):
        return (gone if present is not None else []), f"{user}: unusable as a broker username"
    wanted = {"clientid": user, "textname": KIT_TEXTNAME, "textdescription": kit.fingerprint,
              "roles": [{"rolename": role}]}
    new_password = present is None or present.get("textdescription") != kit.fingerprint
    password: dict[str, str] = {}
    if new_password:
        if kit.password_enc is None:
            return [], (f"{user}: no recoverable broker password in the ledger (provisioned "
                        f"before it was kept encrypted); rotate it: cizo broker rotate-kit "
                        f"{user}")
        password = {"password": box.decrypt(kit.password_enc)}
    acls = kit_acls(user)
    make_role = {"command": "createRole", "rolename": role, "acls": acls}
    stale = (roles is not None and role in roles
             and _acl_set(roles[role].get("acls", [])) != _acl_set(acls))
    fix_role = [{"command": "modifyRole", "rolename": role, "acls": acls}] if stale else []
    if present is None:
        return [make_role, *fix_role, {"command": "createClient", "username": user,
                                       **password, **wanted}], None
    commands: list[Command] = []
    if _roles_of(present) != [role]:
        commands.append(make_role)  # (refused as existing if only the client lost it)
    commands += fix_role
    if (new_password or present.get("clientid") != user
            or present.get("textname") != KIT_TEXTNAME or _roles_of(present) != [role]):
        commands.append({"command": "modifyClient", "username": user, **password, **wanted})
    if present.get("disabled"):
        commands.append({"command": "enableClient", "username": user})
    return commands, None


def _service_plan(user: str, password: str, present: dict[str, Any] | None,
                  role_present: dict[str, Any] | None) -> list[Command]:
    acls = SERVICE_ACLS[user]
    commands: list[Command] = []
    if role_present is None:
        commands.append({"command": "createRole", "rolename": user, "acls": acls})
    elif _acl_set(role_present.get("acls", [])) != _acl_set(acls):
        commands.append({"command": "modifyRole", "rolename": user, "acls": acls})
    stored = (present or {}).get("textdescription") or ""
    if present is None:
        commands.append({"command": "createClient", "username": user, "password": password,
                         "textdescription": hash_mqtt_password(password),
                         "roles": [{"rolename": user}]})
        return commands
    if not verify_mqtt_password(password, stored) or _roles_of(present) != [user]:
        commands.append({"command": "modifyClient", "username": user, "password": password,
                         "textdescription": hash_mqtt_password(password),
                         "roles": [{"rolename": user}]})
    if present.get("disabled"):
        commands.append({"command": "enableClient", "username": user})
    return commands


def _acl_set(acls: Sequence[dict[str, Any]]) -> set[tuple[str, str, bool]]:
    return {(a["acltype"], a["topic"], bool(a.get("allow"))) for a in acls}


class BrokerDoors:
    """Converges the broker to the ledger; a no-op object when no admin is configured."""

    def __init__(self, settings: Settings, db: Database, box: SecretBox) -> None:
        self.settings = settings
        self.db = db
        self.box = box
        self.config = BrokerAdminConfig.from_settings(settings)

    @property
    def enabled(self) -> bool:
        return self.config is not None

    def converge_kits(self, kit_ids: Sequence[str]) -> Outcome:
        """Bring these kits' doors to the ledger now (provisioning, revocation, rotation).

        Raises BrokerAdminError if the broker cannot be reached (the periodic reconcile
        retries)."""
        outcome = Outcome()
        if self.config is None or not kit_ids:
            return outcome
        kits = {k.kit_id: k for k in ledger_kits(self.db, kit_ids)}
        with session(self.config) as dynsec:
            answers = dynsec.run([{"command": "getClient", "username": k} for k in kits])
            present = {k: a["data"]["client"] for k, a in zip(kits, answers, strict=True)
                       if "error" not in a}
            self._apply_kits(dynsec, kits.values(), present, outcome)
        return outcome

    def reconcile(self) -> Outcome:
        """Converge everything: defaults, service accounts, every kit, orphans removed."""
        outcome = Outcome()
        if self.config is None:
            return outcome
        with session(self.config) as dynsec:
            self._send(dynsec, [{"command": "setDefaultACLAccess", "acls": [
                {"acltype": t, "allow": v} for t, v in DEFAULT_ACL_ACCESS.items()]}],
                outcome, "default ACL access")
            clients = _clients(dynsec)
            roles = _roles(dynsec)
            self._apply_services(dynsec, clients, roles, outcome)
            kits = ledger_kits(self.db)
            self._apply_kits(dynsec, kits, clients, outcome, roles)
            in_ledger = {k.kit_id for k in kits}
            active = {k.kit_id for k in kits if k.active}
            orphans = [u for u, c in clients.items()
                       if c.get("textname") == KIT_TEXTNAME and u not in in_ledger]
            orphan_roles = [r for r in roles if r.startswith(KIT_ROLE_PREFIX)
                            and r[len(KIT_ROLE_PREFIX):] not in active]
            cleanup = [{"command": "deleteClient", "username": u} for u in orphans]
            cleanup += [{"command": "deleteRole", "rolename": r} for r in orphan_roles]
            self._send(dynsec, cleanup, outcome, "orphans")
            outcome.deleted += len(orphans)
        log.info("broker reconciled with the ledger: %s", outcome.as_dict())
        return outcome

    def _apply_services(self, dynsec: DynsecSession, clients: dict[str, dict[str, Any]],
                        roles: dict[str, dict[str, Any]], outcome: Outcome) -> None:
        secrets = {BRIDGE_USER: self.settings.broker_bridge_password,
                   CONTROL_USER: self.settings.broker_control_password}
        for user, secret in secrets.items():
            if secret is None:  # an account this deployment manages by other means
                continue
            plan = _service_plan(user, secret.get_secret_value(), clients.get(user),
                                 roles.get(user))
            if plan and not self._send(dynsec, plan, outcome, user):
                outcome.failed.append(user)

    def _apply_kits(self, dynsec: DynsecSession, kits: Iterable[LedgerKit],
                    present: dict[str, dict[str, Any]], outcome: Outcome,
                    roles: dict[str, dict[str, Any]] | None = None) -> None:
        batch: list[Command] = []
        owners: list[str] = []
        for kit in kits:
            entry = present.get(kit.kit_id)
            commands, problem = plan_kit(kit, entry, self.box, roles)
            if problem is not None:
                log.error("broker door not converged: %s", problem, extra={"kit_id": kit.kit_id})
                outcome.failed.append(kit.kit_id)
            if not commands:
                continue
            if not kit.active:
                outcome.deleted += 1
            elif entry is None:
                outcome.created += 1
            else:
                outcome.updated += 1
            batch += commands
            owners += [kit.kit_id] * len(commands)
        answers = dynsec.run(batch)
        outcome.commands += len(batch)
        for owner, command, answer in zip(owners, batch, answers, strict=True):
            if _refused(command, answer):
                log.error("broker refused %s: %s", command["command"], answer["error"],
                          extra={"kit_id": owner})
                outcome.failed.append(owner)

    def _send(self, dynsec: DynsecSession, commands: list[Command], outcome: Outcome,
              what: str) -> bool:
        answers = dynsec.run(commands)
        outcome.commands += len(commands)
        ok = True
        for command, answer in zip(commands, answers, strict=True):
            if _refused(command, answer):
                log.error("broker refused %s (%s): %s", command["command"], what,
                          answer["error"])
                ok = False
        return ok


def _refused(command: Command, answer: Command) -> bool:
    error = str(answer.get("error", ""))
    if not error:
        return False
    tolerated = command["command"].startswith(("create", "delete"))
    return not (tolerated and any(e in error.lower() for e in _ALREADY))


def _pages(dynsec: DynsecSession, command: str, key: str, verbose: bool) -> list[Any]:
    """Every entry of a listing (clients or roles), paged."""
    out: list[Any] = []
    while True:
        (answer,) = dynsec.run([{"command": command, "verbose": verbose, "count": PAGE,
                                 "offset": len(out)}])
        if "error" in answer:
            raise BrokerAdminError(f"broker refused {command}: {answer['error']}")
        page = answer["data"][key]
        out += page
        if len(page) < PAGE or len(out) >= answer["data"].get("totalCount", 0):
            return out


def _clients(dynsec: DynsecSession) -> dict[str, dict[str, Any]]:
    return {c["username"]: c for c in _pages(dynsec, "listClients", "clients", True)}


def _roles(dynsec: DynsecSession) -> dict[str, dict[str, Any]]:
    """Every role with its ACLs."""
    return {r["rolename"]: r for r in _pages(dynsec, "listRoles", "roles", True)}


def converge_now(rt: Runtime, kit_ids: Sequence[str]) -> Outcome | None:
    """After a committed ledger change to these kits: their doors now. A broker that
    cannot be reached is logged, never raised: the ledger change stands and the periodic
    reconcile converges the broker when it is back."""
    try:
        return BrokerDoors(rt.settings, rt.db, rt.box).converge_kits(kit_ids)
    except BrokerAdminError as exc:
        log.error("broker doors not converged now (the next reconcile retries): %s", exc,
                  extra={"kit_id": ",".join(kit_ids)})
        return None


# --- the ledger side: revocation and rotation -------------------------------------------


def revoke_kit(db: Database, kit_id: str, now: float) -> bool:
    """Revoke a kit's broker password in the ledger; converge it to cut its session."""
    with db.session() as s:
        kit = s.get(Kit, kit_id)
        if kit is None:
            return False
        if kit.mqtt_revoked_at is None:
            kit.mqtt_revoked_at = now
    log.info("kit broker password revoked", extra={"kit_id": kit_id})
    return True


def rotate_kit_password(db: Database, box: SecretBox, kit_id: str) -> str | None:
    """A new broker password for the kit (returned once; None: no such kit). A revoked kit
    is admitted again with it; converge it to cut the old password's session."""
    login = new_kit_login(box)
    with db.session() as s:
        kit = s.get(Kit, kit_id)
        if kit is None or kit.decommissioned_at is not None:
            return None
        kit.mqtt_password_hash = login.hashed
        kit.mqtt_password_enc = login.encrypted
        kit.mqtt_revoked_at = None
    log.info("kit broker password rotated", extra={"kit_id": kit_id})
    return login.password
