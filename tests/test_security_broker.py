"""The broker's doors, tested against a real Mosquitto whose dynamic-security plugin the
ledger drives (control/security/broker_auth.py): per-kit credentials and ACLs, client id =
username on every listener, no anonymous access, TLS with a test CA, optional X.509 client
certificates per kit; revocation and rotation cut an open session at once, a kit
provisioned while the broker runs connects straight away, and a broker restarted with an
old dynamic-security file comes back to the ledger.
"""

from __future__ import annotations

import json
import os
import pwd
import ssl
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from broker_bridge import Bridge
from cizo import protocol, services
from cizo.clock import SystemClock
from cizo.settings import Settings
from control.gateways.broker_admin import session
from control.ledger import accounts, credit
from control.ledger.db import Database, migrate
from control.ledger.secrets import SecretBox, generate_secret_key
from control.runtime import Runtime
from control.security import broker_auth, pki
from tests.support import wait_for

BRIDGE_PW = "bridge-" + uuid.uuid4().hex
CONTROL_PW = "control-" + uuid.uuid4().hex
ADMIN_PW = "admin-" + uuid.uuid4().hex


@dataclass
class Broker:
    proc: services.ManagedProcess
    service_port: int  # plain, services only (compose network in production)
    kit_port: int  # TLS, username/password, client id forced to the username
    cert_port: int  # TLS with a client certificate per kit (CN = kit id)
    db: Database
    dir: Path
    ca: pki.Issued
    doors: broker_auth.BrokerDoors
    passwords: dict[str, str] = field(default_factory=dict)


def door_settings(port: int, url: str, key: str) -> Settings:
    return Settings(mqtt_port=port, database_url=url, secret_key=key,
                    broker_admin_password=ADMIN_PW, broker_bridge_password=BRIDGE_PW,
                    broker_control_password=CONTROL_PW, paygate_url="http://127.0.0.1:9")


def provision(db: Database, box: SecretBox, kit_id: str) -> str:
    with db.session() as s:
        return accounts.provision_kit(
            s, kit_id=kit_id, desco_id="default", phone_e164="+22890000001",
            plan=credit.Plan(0, 100, 1000), box=box, now=time.time(),
            actor=accounts.SYSTEM).mqtt_password


class Client:
    """A paho v5 client that records what it receives and how the broker answered."""

    def __init__(self, client_id: str, *, username: str | None = None,
                 password: str | None = None) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=mqtt.MQTTv5)
        if username is not None:
            self.client.username_pw_set(username, password)
        self.connack: ReasonCode | None = None
        self.connected = threading.Event()
        self.answered = threading.Event()
        self.disconnected = threading.Event()
        self.received: list[tuple[str, bytes, bool]] = []
        self.suback: list[ReasonCode] = []
        self.lock = threading.Lock()
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe

    def tls(self, ca: Path, cert: Path | None = None, key: Path | None = None) -> Client:
        self.client.tls_set(ca_certs=str(ca), certfile=str(cert) if cert else None,
                            keyfile=str(key) if key else None, cert_reqs=ssl.CERT_REQUIRED)
        return self

    def _on_connect(self, _c: Any, _u: Any, _f: Any, rc: ReasonCode, _p: Any) -> None:
        self.connack = rc
        if not rc.is_failure:
            self.connected.set()
        self.answered.set()

    def _on_disconnect(self, _c: Any, _u: Any, _f: Any, rc: ReasonCode, _p: Any) -> None:
        self.disconnected.set()

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.received.append((msg.topic, bytes(msg.payload), bool(msg.retain)))

    def _on_subscribe(self, _c: Any, _u: Any, _mid: int, rcs: list[ReasonCode], _p: Any) -> None:
        self.suback = rcs

    def connect(self, port: int) -> bool:
        """True if the broker accepted; False if it refused (or closed the TLS session)."""
        self.client.reconnect_delay_set(30, 30)  # a refused client must not retry here
        try:
            self.client.connect("127.0.0.1", port, keepalive=10)
        except (ssl.SSLError, OSError):
            return False
        self.client.loop_start()
        wait_for(lambda: self.answered.is_set() or self.disconnected.is_set(), 5,
                 "CONNACK or disconnection")
        return self.connected.is_set()

    def subscribe(self, topic: str) -> list[ReasonCode]:
        self.suback = []
        self.client.subscribe(topic, qos=1)
        wait_for(lambda: self.suback, 5, f"SUBACK for {topic}")
        return self.suback

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(5)

    def topics(self) -> list[str]:
        with self.lock:
            return [t for t, _p, _r in self.received]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _telemetry(kit_id: str, seq: int) -> bytes:
    return json.dumps({
        "v": 1, "kit_id": kit_id, "ts": int(time.time()) - 60, "seq": seq, "boot": 1,
        "battery_v": 12.7, "soc": 80.0, "pv_w": 40.0, "load_w": 5.0, "pv_wh_total": 100.0,
        "load_wh_total": 50.0, "locked": False, "credit_until": None, "temp_c": 30.0,
    }).encode()


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    root = tmp_path_factory.mktemp("secure-broker")
    url = f"sqlite:///{root / 'accounts.db'}"
    migrate(url)
    db = Database(url)
    key = generate_secret_key()
    box = SecretBox(key)
    passwords = {kit: provision(db, box, kit) for kit in ("KIT-A", "KIT-B", "KIT-C", "KIT-D")}
    ca = pki.make_ca()
    server_crt, server_key = pki.make_server_cert(ca, ["127.0.0.1", "localhost"]).write(
        root / "certs", "server")
    ca_crt, _ = ca.write(root / "certs", "ca")
    pki.make_client_cert(ca, "KIT-A").write(root / "certs", "KIT-A")
    pki.make_client_cert(pki.make_ca("rogue CA"), "KIT-B").write(root / "certs", "rogue")
    service_port, kit_port, cert_port = (services.free_port() for _ in range(3))
    dynsec = root / "dynamic-security.json"
    assert services.dynsec_init(dynsec, "cizo-admin", ADMIN_PW)
    assert not services.dynsec_init(dynsec, "cizo-admin", "another"), "init is not idempotent"
    assert dynsec.stat().st_mode & 0o077 == 0, "dynamic-security file readable by others"
    proc = services.mosquitto(
        root / "mosquitto", service_port, allow_anonymous=False, dynsec_file=dynsec,
        listeners=(
            services.Listener(kit_port, certfile=server_crt, keyfile=server_key,
                              username_as_clientid=True),
            services.Listener(cert_port, certfile=server_crt, keyfile=server_key,
                              cafile=ca_crt, require_certificate=True,
                              identity_as_username=True, username_as_clientid=True),
        ),
    )
    proc.start()
    assert services.wait_for_port(kit_port) and services.wait_for_port(cert_port)
    doors = broker_auth.BrokerDoors(door_settings(service_port, url, key), db, box)
    outcome = doors.reconcile()
    assert outcome.created == 4 and not outcome.failed, outcome
    yield Broker(proc, service_port, kit_port, cert_port, db, root, ca, doors, passwords)
    proc.stop()
    db.dispose()


@pytest.fixture
def clients() -> Iterator[list[Client]]:
    made: list[Client] = []
    yield made
    for c in made:
        c.close()


def kit_login(broker: Broker, clients: list[Client], kit_id: str, *,
              client_id: str | None = None, password: str | None = None) -> Client:
    """A kit's connection attempt on the TLS listener (``connected`` tells the answer)."""
    c = Client(client_id or kit_id, username=kit_id,
               password=password if password is not None else broker.passwords[kit_id])
    c.tls(broker.dir / "certs" / "ca.crt")
    clients.append(c)
    c.connect(broker.kit_port)
    return c


def kit(broker: Broker, clients: list[Client], kit_id: str, *, client_id: str | None = None,
        password: str | None = None) -> Client:
    c = kit_login(broker, clients, kit_id, client_id=client_id, password=password)
    assert c.connected.is_set(), f"{kit_id} refused: {c.connack}"
    return c


def service_login(port: int, clients: list[Client], user: str, pw: str) -> Client:
    c = Client(f"{user}-{uuid.uuid4().hex[:6]}", username=user, password=pw)
    clients.append(c)
    assert c.connect(port), f"{user} refused: {c.connack}"
    return c


def service(broker: Broker, clients: list[Client], user: str, pw: str) -> Client:
    return service_login(broker.service_port, clients, user, pw)


def test_anonymous_and_wrong_passwords_are_refused(broker: Broker, clients: list[Client]) -> None:
    anon = Client("anon")
    clients.append(anon)
    assert not anon.connect(broker.service_port)
    assert anon.connack is not None and anon.connack.is_failure
    anon_tls = Client("anon-tls").tls(broker.dir / "certs" / "ca.crt")
    clients.append(anon_tls)
    assert not anon_tls.connect(broker.kit_port)
    wrong = Client("KIT-A", username="KIT-A", password="not-the-password")
    wrong.tls(broker.dir / "certs" / "ca.crt")
    clients.append(wrong)
    assert not wrong.connect(broker.kit_port)
    # a kit's own password does not open a service account, nor another kit's
    for user in ("KIT-B", broker_auth.BRIDGE_USER):
        other = Client(user, username=user, password=broker.passwords["KIT-A"])
        clients.append(other)
        assert not other.connect(broker.service_port)


def test_tls_listener_presents_the_test_ca_certificate(broker: Broker) -> None:
    ctx = ssl.create_default_context(cafile=str(broker.dir / "certs" / "ca.crt"))
    import socket

    with socket.create_connection(("127.0.0.1", broker.kit_port), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname="localhost") as tls:
        cert = tls.getpeercert()
        assert cert is not None
        assert ("commonName", "127.0.0.1") in [kv for rdn in cert["subject"] for kv in rdn]
    # a client that does not trust the CA refuses the broker
    untrusting = ssl.create_default_context()
    with socket.create_connection(("127.0.0.1", broker.kit_port), timeout=5) as raw, \
            pytest.raises(ssl.SSLCertVerificationError):
        untrusting.wrap_socket(raw, server_hostname="localhost")


def test_kit_cannot_publish_as_another_and_the_bridge_never_sees_it(
    broker: Broker, clients: list[Client], influxd: services.InfluxProcess, influx_db: str,
    tmp_path: Path,
) -> None:
    settings = Settings(
        mqtt_port=broker.service_port, mqtt_username=broker_auth.BRIDGE_USER,
        mqtt_password=BRIDGE_PW, influx_url=f"http://127.0.0.1:{influxd.port}",
        influx_db=influx_db, influx_flush_interval_s=0.1, data_dir=tmp_path,
    )
    bridge = Bridge(settings, SystemClock(), client_id=f"bridge-{uuid.uuid4().hex[:6]}",
                    session_expiry_s=30)
    bridge.start()
    try:
        assert bridge.wait_subscribed(10), "the bridge's own account was refused"
        a = kit(broker, clients, "KIT-A")
        a.publish(protocol.telemetry_topic("KIT-B"), _telemetry("KIT-B", 1))  # forged
        a.publish(protocol.status_topic("KIT-B"), b'{"v":1,"online":false}')  # forged
        a.publish(protocol.telemetry_topic("KIT-A"), _telemetry("KIT-A", 1))  # its own
        wait_for(lambda: bridge.stats().written >= 1, 10, "KIT-A's reading written")
        time.sleep(0.3)  # anything forged would have arrived with or before it
        stats = bridge.stats()
        assert stats.messages_in == 1, stats
        assert stats.rejected_total == 0
        assert bridge.counters.for_kit("KIT-B") == {}
    finally:
        bridge.stop()


def test_kit_reads_only_its_own_commands_and_cannot_overwrite_them(
    broker: Broker, clients: list[Client]
) -> None:
    control = service(broker, clients, broker_auth.CONTROL_USER, CONTROL_PW)
    control.publish(protocol.cmd_topic("KIT-A"), b'{"cmd":"for A"}', retain=True)
    control.publish(protocol.cmd_topic("KIT-B"), b'{"cmd":"for B"}', retain=True)
    a = kit(broker, clients, "KIT-A")
    # B's live and retained commands, and every kit's (wildcards), never reach A: Mosquitto
    # may grant the subscription but checks the ACL on every message it would deliver
    for topic in (protocol.cmd_topic("KIT-B"), "kits/+/cmd", "kits/#", "#"):
        a.subscribe(topic)
    (rc,) = a.subscribe(protocol.cmd_topic("KIT-A"))
    assert not rc.is_failure
    wait_for(lambda: a.received, 5, "A's retained command")
    # A tries to replace its own retained command (e.g. with an old unlock)
    a.publish(protocol.cmd_topic("KIT-A"), b'{"cmd":"forged by A"}', retain=True)
    control.publish(protocol.cmd_topic("KIT-B"), b'{"cmd":"new for B"}', retain=True)
    time.sleep(0.3)
    # only its own command, once per matching subscription (kits/#, #, +/cmd and its own)
    assert {(t, p) for t, p, _r in a.received} == {("kits/KIT-A/cmd", b'{"cmd":"for A"}')}
    fresh = kit(broker, clients, "KIT-A", client_id="other-session-of-A")
    fresh.subscribe(protocol.cmd_topic("KIT-A"))
    wait_for(lambda: fresh.received, 5, "retained command for a new subscriber")
    assert fresh.received == [("kits/KIT-A/cmd", b'{"cmd":"for A"}', True)]
    # a kit cannot read other kits' telemetry, nor their acks
    n = len(a.received)
    b = kit(broker, clients, "KIT-B")
    b.publish(protocol.telemetry_topic("KIT-B"), _telemetry("KIT-B", 5))
    b.publish(protocol.ack_topic("KIT-B"), b'{"v":1}')
    time.sleep(0.3)
    assert len(a.received) == n, a.received[n:]
    # and the bridge account may not publish commands
    bridge = service(broker, clients, broker_auth.BRIDGE_USER, BRIDGE_PW)
    bridge.publish(protocol.cmd_topic("KIT-A"), b'{"cmd":"from the bridge"}', retain=True)
    time.sleep(0.2)
    assert len(fresh.received) == 1


def test_a_kits_role_gives_it_the_same_rights_under_the_v2_topics(
    broker: Broker, clients: list[Client]
) -> None:
    """One role per kit for both contract versions: a kit moved to v2 keeps its account."""
    bridge = service(broker, clients, broker_auth.BRIDGE_USER, BRIDGE_PW)
    for topic in (protocol.telemetry_topic("+", protocol.V2),
                  protocol.status_topic("+", protocol.V2)):
        (rc,) = bridge.subscribe(topic)
        assert not rc.is_failure
    control = service(broker, clients, broker_auth.CONTROL_USER, CONTROL_PW)
    (rc,) = control.subscribe(protocol.ack_topic("+", protocol.V2))
    assert not rc.is_failure
    control.publish(protocol.cmd_topic("KIT-A", protocol.V2), b"\xa0A", retain=True)
    control.publish(protocol.cmd_topic("KIT-B", protocol.V2), b"\xa0B", retain=True)
    a = kit(broker, clients, "KIT-A")
    for topic in (protocol.cmd_topic("KIT-B", protocol.V2), "k/+/c", "k/#"):
        a.subscribe(topic)
    (rc,) = a.subscribe(protocol.cmd_topic("KIT-A", protocol.V2))
    assert not rc.is_failure
    wait_for(lambda: a.received, 5, "A's retained v2 command")
    a.publish(protocol.cmd_topic("KIT-A", protocol.V2), b"\xa0forged", retain=True)
    a.publish(protocol.telemetry_topic("KIT-B", protocol.V2), b"\x80forged")
    a.publish(protocol.telemetry_topic("KIT-A", protocol.V2), b"\x80own")
    a.publish(protocol.status_topic("KIT-A", protocol.V2), b"\xa0own")
    a.publish(protocol.ack_topic("KIT-A", protocol.V2), b"\xa0ack")
    wait_for(lambda: len(bridge.received) >= 2 and control.received, 5, "A's v2 messages")
    time.sleep(0.3)  # anything forged would have arrived with or before them
    assert {(t, p) for t, p, _r in a.received} == {("k/KIT-A/c", b"\xa0A")}
    assert sorted(bridge.topics()) == ["k/KIT-A/s", "k/KIT-A/t"]
    assert control.topics() == ["k/KIT-A/a"]
    fresh = kit(broker, clients, "KIT-A", client_id="v2-session-of-A")
    fresh.subscribe(protocol.cmd_topic("KIT-A", protocol.V2))
    wait_for(lambda: fresh.received, 5, "retained v2 command for a new subscriber")
    assert fresh.received == [("k/KIT-A/c", b"\xa0A", True)]


def test_reconcile_rewrites_a_kit_role_made_with_other_rights(
    broker: Broker, clients: list[Client]
) -> None:
    """A role created before the kit's rights changed (v1 topics only) is brought to
    ``kit_acls`` by the next reconcile, so a kit moved to v2 is not shut out."""
    kit_id = "KIT-OLDROLE"
    broker.passwords[kit_id] = provision(broker.db, broker.doors.box, kit_id)
    assert not broker.doors.converge_kits([kit_id]).failed
    assert broker.doors.config is not None
    role = broker_auth.kit_role(kit_id)
    v1_only = [a for a in broker_auth.kit_acls(kit_id) if a["topic"].startswith("kits/")]
    with session(broker.doors.config) as dynsec:
        (answer,) = dynsec.run([{"command": "modifyRole", "rolename": role, "acls": v1_only}])
        assert "error" not in answer, answer
    bridge = service(broker, clients, broker_auth.BRIDGE_USER, BRIDGE_PW)
    bridge.subscribe(protocol.telemetry_topic(kit_id, protocol.V2))
    k = kit(broker, clients, kit_id)
    k.publish(protocol.telemetry_topic(kit_id, protocol.V2), b"\x80refused")
    time.sleep(0.3)
    assert bridge.received == []  # the stale role refuses v2
    outcome = broker.doors.reconcile()
    assert outcome.updated >= 1 and not outcome.failed, outcome
    with session(broker.doors.config) as dynsec:
        (answer,) = dynsec.run([{"command": "getRole", "rolename": role}])
    got = {(a["acltype"], a["topic"]) for a in answer["data"]["role"]["acls"]}
    assert got == {(a["acltype"], a["topic"]) for a in broker_auth.kit_acls(kit_id)}
    k = kit(broker, clients, kit_id, client_id=kit_id)  # the role change cut its session
    k.publish(protocol.telemetry_topic(kit_id, protocol.V2), b"\x80accepted")
    wait_for(lambda: bridge.received, 5, "v2 telemetry after the reconcile")
    assert bridge.topics() == [f"k/{kit_id}/t"]
    assert broker.doors.reconcile().updated == 0  # converged: nothing rewritten again


def test_a_kit_claiming_another_kits_client_id_never_takes_its_session(
    broker: Broker, clients: list[Client]
) -> None:
    control = service(broker, clients, broker_auth.CONTROL_USER, CONTROL_PW)
    watcher = service(broker, clients, broker_auth.BRIDGE_USER, BRIDGE_PW)
    watcher.subscribe(f"{protocol.TOPIC_ROOT}/+/{protocol.TELEMETRY}")
    victim = kit(broker, clients, "KIT-B")
    victim.subscribe(protocol.cmd_topic("KIT-B"))
    # the kits' listener replaces the claimed client id with the username: it logs in as A
    intruder = kit(broker, clients, "KIT-A", client_id="KIT-B")
    # a listener without that replacement refuses the login: A's broker entry binds its id
    plain = Client("KIT-B", username="KIT-A", password=broker.passwords["KIT-A"])
    clients.append(plain)
    assert not plain.connect(broker.service_port)
    assert plain.connack is not None and plain.connack.is_failure
    # the intruder can neither read nor write the victim's topics
    intruder.subscribe(protocol.cmd_topic("KIT-B"))
    (own,) = intruder.subscribe(protocol.cmd_topic("KIT-A"))
    assert not own.is_failure
    intruder.publish(protocol.telemetry_topic("KIT-B"), _telemetry("KIT-B", 7))  # forged
    intruder.publish(protocol.telemetry_topic("KIT-A"), _telemetry("KIT-A", 7))
    control.publish(protocol.cmd_topic("KIT-B"), b'{"cmd":"B, after the takeover attempts"}')
    control.publish(protocol.cmd_topic("KIT-A"), b'{"cmd":"A, after the takeover attempts"}')
    # the victim keeps its session and still receives its commands
    wait_for(lambda: (protocol.cmd_topic("KIT-B"), b'{"cmd":"B, after the takeover attempts"}',
                      False) in victim.received, 5, "B's command after the attempts")
    assert not victim.disconnected.is_set() and victim.client.is_connected()
    # each connection delivers in order: what was refused would have come first
    wait_for(lambda: any(p.startswith(b'{"cmd":"A, after') for _t, p, _r in intruder.received),
             5, "A's own command")
    wait_for(lambda: watcher.received, 5, "A's own reading")
    assert protocol.cmd_topic("KIT-B") not in intruder.topics()
    assert watcher.topics()[0] == protocol.telemetry_topic("KIT-A")
    assert protocol.telemetry_topic("KIT-B") not in watcher.topics()


def test_client_certificate_per_kit(broker: Broker, clients: list[Client]) -> None:
    certs = broker.dir / "certs"
    watcher = service(broker, clients, broker_auth.BRIDGE_USER, BRIDGE_PW)
    watcher.subscribe("kits/+/telemetry")
    a = Client("anything").tls(certs / "ca.crt", certs / "KIT-A.crt", certs / "KIT-A.key")
    clients.append(a)
    assert a.connect(broker.cert_port), a.connack  # no password: the certificate is the login
    a.publish(protocol.telemetry_topic("KIT-B"), _telemetry("KIT-B", 9))  # forged
    a.publish(protocol.telemetry_topic("KIT-A"), _telemetry("KIT-A", 9))
    wait_for(lambda: watcher.received, 5, "A's reading")
    time.sleep(0.2)
    assert watcher.topics() == ["kits/KIT-A/telemetry"]
    rogue = Client("rogue").tls(certs / "ca.crt", certs / "rogue.crt", certs / "rogue.key")
    clients.append(rogue)
    assert not rogue.connect(broker.cert_port)
    no_cert = Client("KIT-A", username="KIT-A", password=broker.passwords["KIT-A"])
    no_cert.tls(certs / "ca.crt")
    clients.append(no_cert)
    assert not no_cert.connect(broker.cert_port)


def test_revoking_a_kit_cuts_its_open_session_at_once(
    broker: Broker, clients: list[Client]
) -> None:
    c = kit(broker, clients, "KIT-C")
    assert broker_auth.revoke_kit(broker.db, "KIT-C", time.time())
    outcome = broker.doors.converge_kits(["KIT-C"])
    assert outcome.deleted == 1 and not outcome.failed, outcome
    wait_for(c.disconnected.is_set, 5, "the revoked kit's open session to be cut")
    assert not kit_login(broker, clients, "KIT-C").connected.is_set()
    kit(broker, clients, "KIT-A")  # the others are unaffected


def test_rotating_a_kit_password_cuts_the_old_session_and_the_new_one_works(
    broker: Broker, clients: list[Client]
) -> None:
    old_session = kit(broker, clients, "KIT-D")
    new = broker_auth.rotate_kit_password(broker.db, broker.doors.box, "KIT-D")
    assert new is not None and new != broker.passwords["KIT-D"]
    outcome = broker.doors.converge_kits(["KIT-D"])
    assert outcome.updated == 1 and not outcome.failed, outcome
    wait_for(old_session.disconnected.is_set, 5, "the old password's session to be cut")
    assert not kit_login(broker, clients, "KIT-D").connected.is_set()
    kit(broker, clients, "KIT-D", password=new)
    broker.passwords["KIT-D"] = new


def provision_live(broker: Broker, tmp_path: Path, kit_id: str, phone: str,
                   **kind: str) -> accounts.ProvisionedKit:
    """A kit provisioned through the service's one path while the broker runs."""
    from control.fleet.provisioning import provision as provision_kit

    rt = Runtime.build(broker.doors.settings.model_copy(update={"data_dir": tmp_path}))
    try:
        made = provision_kit(rt, accounts.SYSTEM, kit_id=kit_id, desco_id=None, phone=phone,
                             plan=(0, 100, 1000), deposit_paid=False, **kind)
    finally:
        rt.close()
    broker.passwords[kit_id] = made.mqtt_password
    return made


def test_a_kit_provisioned_while_the_broker_runs_connects_at_once(
    broker: Broker, clients: list[Client], tmp_path: Path
) -> None:
    provision_live(broker, tmp_path, "KIT-NEW", "+22890000009")
    kit(broker, clients, "KIT-NEW")  # first attempt: nothing to wait for
    kit(broker, clients, "KIT-NEW").subscribe(protocol.cmd_topic("KIT-NEW"))


def test_an_openpaygo_metrics_device_gets_no_broker_door(
    broker: Broker, clients: list[Client], tmp_path: Path
) -> None:
    made = provision_live(broker, tmp_path, "OPM-NEW", "+22890000010", kind="openpaygo_metrics")
    assert made.openpaygo_key is not None
    assert not kit_login(broker, clients, "OPM-NEW").connected.is_set()  # it posts to /dd
    assert broker.doors.converge_kits(["OPM-NEW"]).as_dict() == {
        "commands": 0, "created": 0, "updated": 0, "deleted": 0, "failed": 0}


def test_a_broker_restarted_with_an_old_dynsec_file_comes_back_to_the_ledger(
    tmp_path: Path, clients: list[Client]
) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    migrate(url)
    db = Database(url)
    key = generate_secret_key()
    box = SecretBox(key)
    pw = {k: provision(db, box, k) for k in ("R-KEEP", "R-REVOKE", "R-ROTATE")}
    port = services.free_port()
    proc = services.mosquitto_with_doors(tmp_path / "mosquitto", port,
                                         admin_user="cizo-admin", admin_password=ADMIN_PW)
    dynsec = tmp_path / "mosquitto" / "dynamic-security.json"
    proc.start()
    doors = broker_auth.BrokerDoors(door_settings(port, url, key), db, box)

    def login(kit_id: str, password: str) -> bool:
        c = Client(kit_id, username=kit_id, password=password)
        clients.append(c)
        return c.connect(port)

    try:
        assert doors.reconcile().created == 3
        proc.stop()
        old = dynsec.read_bytes()  # a backup of the broker's volume, say
        proc.start()
        pw["R-NEW"] = provision(db, box, "R-NEW")
        broker_auth.revoke_kit(db, "R-REVOKE", time.time())
        new = broker_auth.rotate_kit_password(db, box, "R-ROTATE")
        assert new is not None
        doors.converge_kits(["R-NEW", "R-REVOKE", "R-ROTATE"])
        proc.stop()
        dynsec.write_bytes(old)
        proc.start()
        assert login("R-REVOKE", pw["R-REVOKE"]), "the old file should still admit it"
        assert not login("R-NEW", pw["R-NEW"])
        outcome = doors.reconcile()
        assert (outcome.created, outcome.updated, outcome.deleted) == (1, 1, 1), outcome
        assert not outcome.failed
        assert login("R-KEEP", pw["R-KEEP"]) and login("R-NEW", pw["R-NEW"])
        assert login("R-ROTATE", new) and not login("R-ROTATE", pw["R-ROTATE"])
        assert not login("R-REVOKE", pw["R-REVOKE"])
        # converged: a second reconcile changes nothing (dynsec would kick a modified client)
        again = doors.reconcile()
        assert again.as_dict() == {"commands": 1, "created": 0, "updated": 0, "deleted": 0,
                                   "failed": 0}, again
    finally:
        proc.stop()
        db.dispose()


def test_the_production_broker_config_and_init_admit_kits_on_debian_mosquitto(
    tmp_path: Path, clients: list[Client]
) -> None:
    """deploy/mosquitto as docker-compose.yml runs it, paths mapped to this machine: the
    init (twice: idempotent) makes the admin user; control's reconcile gives kits their
    doors over the plain listener; on the TLS listener a kit claiming another's client id
    logs in as itself and the victim keeps its session."""
    deploy = Path(__file__).resolve().parents[1] / "deploy" / "mosquitto"
    auth, data, certs = tmp_path / "auth", tmp_path / "data", tmp_path / "certs"
    data.mkdir()
    env = {**os.environ, "MQTT_ADMIN_PASSWORD": ADMIN_PW,
           "DYNSEC_FILE": str(auth / "dynamic-security.json")}
    first = subprocess.run(["sh", str(deploy / "init-auth.sh")], env=env, check=True,
                           capture_output=True, text=True)
    again = subprocess.run(["sh", str(deploy / "init-auth.sh")],
                           env={**env, "MQTT_ADMIN_PASSWORD": "changed"}, check=True,
                           capture_output=True, text=True)
    assert "created" in first.stdout and "kept" in again.stdout
    ca = pki.make_ca()
    crt, key = pki.make_server_cert(ca, ["127.0.0.1"]).write(certs, "server")
    ca.write(certs, "ca")
    svc_port, tls_port = services.free_port(), services.free_port()
    conf = (deploy / "mosquitto.conf").read_text()
    for prod, here in (("listener 1883", f"listener {svc_port} 127.0.0.1"),
                       ("listener 8883", f"listener {tls_port} 127.0.0.1"),
                       ("/usr/lib/mosquitto_dynamic_security.so",
                        str(services.find_dynsec_plugin())),
                       ("/mosquitto/auth/", f"{auth}/"), ("/mosquitto/data/", f"{data}/"),
                       ("/mosquitto/certs/server.crt", str(crt)),
                       ("/mosquitto/certs/server.key", str(key))):
        assert prod in conf, prod
        conf = conf.replace(prod, here)
    (tmp_path / "mosquitto.conf").write_text(f"user {pwd.getpwuid(os.getuid()).pw_name}\n"
                                             + conf)
    proc = services.ManagedProcess(
        "mqtt-production", [services.find_binary("mosquitto", "/usr/sbin"), "-c",
                            str(tmp_path / "mosquitto.conf")],
        svc_port, tmp_path, tmp_path / "mosquitto.log")
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    migrate(url)
    db = Database(url)
    secret = generate_secret_key()
    box = SecretBox(secret)
    pw = {k: provision(db, box, k) for k in ("P-VICTIM", "P-INTRUDER")}
    proc.start()
    try:
        assert services.wait_for_port(tls_port)
        doors = broker_auth.BrokerDoors(door_settings(svc_port, url, secret), db, box)
        assert doors.reconcile().created == 2

        def tls_kit(kit_id: str, client_id: str) -> Client:
            c = Client(client_id, username=kit_id, password=pw[kit_id])
            c.tls(certs / "ca.crt")
            clients.append(c)
            assert c.connect(tls_port), c.connack
            return c

        victim = tls_kit("P-VICTIM", "P-VICTIM")
        victim.subscribe(protocol.cmd_topic("P-VICTIM"))
        tls_kit("P-INTRUDER", "P-VICTIM")
        control = service_login(svc_port, clients, broker_auth.CONTROL_USER, CONTROL_PW)
        control.publish(protocol.cmd_topic("P-VICTIM"), b'{"cmd":"still yours"}')
        wait_for(lambda: victim.received, 5, "the victim's command")
        assert not victim.disconnected.is_set()
    finally:
        proc.stop()
        db.dispose()


def test_the_broker_cli_syncs_rotates_and_revokes(
    broker: Broker, clients: list[Client], monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from cizo_cli import main as cli

    settings = broker.doors.settings
    assert settings.secret_key is not None and settings.broker_admin_password is not None
    for var in [v for v in os.environ if v.startswith("CIZO_")]:
        monkeypatch.delenv(var)
    for name, value in (("DATABASE_URL", settings.database_url),
                        ("SECRET_KEY", settings.secret_key.get_secret_value()),
                        ("MQTT_PORT", str(broker.service_port)),
                        ("BROKER_ADMIN_PASSWORD", ADMIN_PW)):
        monkeypatch.setenv(f"CIZO_{name}", value)
    broker.passwords["KIT-CLI"] = provision(broker.db, broker.doors.box, "KIT-CLI")
    assert not kit_login(broker, clients, "KIT-CLI").connected.is_set()  # not converged yet
    assert cli.main(["broker", "sync"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["created"] == 1
    first = kit(broker, clients, "KIT-CLI")
    assert cli.main(["broker", "rotate-kit", "KIT-CLI"]) == 0
    rotated = json.loads(capsys.readouterr().out.splitlines()[-1])
    wait_for(first.disconnected.is_set, 5, "the old password's session cut")
    second = kit(broker, clients, "KIT-CLI", password=rotated["mqtt_password"])
    assert cli.main(["broker", "revoke-kit", "KIT-CLI"]) == 0
    wait_for(second.disconnected.is_set, 5, "the revoked kit's session cut")
    assert cli.main(["broker", "revoke-kit", "NO-SUCH-KIT"]) == 1


def test_the_control_service_reconciles_the_broker_when_it_starts(
    broker: Broker, clients: list[Client], tmp_path: Path
) -> None:
    """A kit the broker does not know yet (written to the ledger while control was down)
    gets its door from the control process's scheduler, at start, not a period later."""
    from control import scheduler

    broker.passwords["KIT-START"] = provision(broker.db, broker.doors.box, "KIT-START")
    assert not kit_login(broker, clients, "KIT-START").connected.is_set()
    rt = Runtime.build(broker.doors.settings.model_copy(
        update={"data_dir": tmp_path, "broker_reconcile_interval_s": 3600.0}))
    jobs = scheduler.start(rt)
    try:
        assert jobs.get_job("broker-reconcile") is not None
        wait_for(lambda: kit_login(broker, clients, "KIT-START").connected.is_set(), 15,
                 "KIT-START admitted by control's reconcile at start")
    finally:
        jobs.shutdown(wait=True)
        rt.close()
