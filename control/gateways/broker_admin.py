"""Mosquitto's dynamic-security plugin, driven over its control topic.

Commands are JSON published to ``$CONTROL/dynamic-security/v1``; the plugin answers each
message on ``.../response`` with one response per command, in order, echoing the
``correlationData`` we give every command. One session = one short MQTT connection as the
broker's admin user: nothing to keep alive between requests, and a reconnect never
replays a half-sent batch. Commands go in chunks under ``MAX_MESSAGE_BYTES`` (the broker
drops a client whose packet exceeds its ``max_packet_size``, 64 KiB in our configs); a
chunk's answer is awaited before the next is sent.

Which commands to send is decided by control.security.broker_auth; this module only
carries them.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from cizo.settings import Settings

log = logging.getLogger(__name__)

CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"
RESPONSE_TOPIC = f"{CONTROL_TOPIC}/response"
MAX_MESSAGE_BYTES = 48_000  # one message of commands, under max_packet_size (65536)

Command = dict[str, Any]


class BrokerAdminError(RuntimeError):
    """The broker could not be reached or did not answer; nothing is known to be applied."""


@dataclass(frozen=True, slots=True)
class BrokerAdminConfig:
    host: str
    port: int
    username: str
    password: str
    tls_ca: Path | None
    timeout_s: float

    @classmethod
    def from_settings(cls, s: Settings) -> BrokerAdminConfig | None:
        """None when no admin password is set: this deployment's broker is not driven."""
        if s.broker_admin_password is None:
            return None
        return cls(s.mqtt_host, s.mqtt_port, s.broker_admin_username,
                   s.broker_admin_password.get_secret_value(), s.mqtt_tls_ca,
                   s.broker_timeout_s)


class DynsecSession:
    """One admin connection; ``run`` sends commands and returns their responses."""

    def __init__(self, client: mqtt.Client, timeout_s: float) -> None:
        self._client = client
        self._timeout_s = timeout_s
        self._lock = threading.Lock()
        self._answered = threading.Condition(self._lock)
        self._responses: dict[str, Command] = {}
        self._batch = secrets.token_hex(4)
        self._seq = 0
        self._closed: str | None = None

    def on_disconnect(self, _c: mqtt.Client, _u: object, _f: object, rc: Any,
                      _p: object) -> None:
        with self._answered:
            self._closed = str(rc)
            self._answered.notify_all()

    def on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        try:
            body = json.loads(msg.payload)
            answers = body["responses"]
        except (ValueError, KeyError, TypeError):
            log.error("unreadable dynamic-security response: %r", msg.payload[:200])
            return
        with self._answered:
            for answer in answers:
                corr = answer.get("correlationData")
                if isinstance(corr, str) and corr.startswith(self._batch):
                    self._responses[corr] = answer
            self._answered.notify_all()

    def run(self, commands: Sequence[Command]) -> list[Command]:
        """Each command's response (``error`` set when the plugin refused it)."""
        out: list[Command] = []
        chunk: list[Command] = []
        size = 0
        for command in commands:
            self._seq += 1
            tagged = {**command, "correlationData": f"{self._batch}-{self._seq}"}
            length = len(json.dumps(tagged)) + 2
            if chunk and size + length > MAX_MESSAGE_BYTES:
                out += self._run_chunk(chunk)
                chunk, size = [], 0
            chunk.append(tagged)
            size += length
        if chunk:
            out += self._run_chunk(chunk)
        return out

    def _run_chunk(self, tagged: list[Command]) -> list[Command]:
        self._client.publish(CONTROL_TOPIC, json.dumps({"commands": tagged}), qos=1)
        keys = [c["correlationData"] for c in tagged]
        with self._answered:
            self._answered.wait_for(
                lambda: self._closed is not None or all(k in self._responses for k in keys),
                self._timeout_s)
            if self._closed is not None:
                raise BrokerAdminError(f"the broker closed the admin session ({self._closed})")
            if not all(k in self._responses for k in keys):
                raise BrokerAdminError(
                    f"the broker did not answer {len(keys)} dynamic-security commands within "
                    f"{self._timeout_s:.0f} s: is the plugin loaded and the admin user "
                    "allowed on $CONTROL/dynamic-security/#?")
            return [self._responses.pop(k) for k in keys]


# A broker that takes the username as client id (use_username_as_clientid: cizo up's, and
# any listener configured so) gives two admin sessions the same id, and the second takes the
# first over: a kit provisioned while the start-up reconcile ran failed that reconcile
# ("the broker closed the admin session"). One admin session at a time in a process.
_ONE_SESSION = threading.RLock()


@contextmanager
def session(config: BrokerAdminConfig) -> Iterator[DynsecSession]:
    """Connect as the admin user, subscribe to the responses, yield; always disconnect
    (one session at a time in this process: see ``_ONE_SESSION``)."""
    with _ONE_SESSION, _session(config) as dynsec:
        yield dynsec


@contextmanager
def _session(config: BrokerAdminConfig) -> Iterator[DynsecSession]:
    client = mqtt.Client(CallbackAPIVersion.VERSION2,
                         client_id=f"{config.username}-{secrets.token_hex(4)}",
                         protocol=mqtt.MQTTv5)
    client.username_pw_set(config.username, config.password)
    if config.tls_ca is not None:
        client.tls_set(ca_certs=str(config.tls_ca))
    dynsec = DynsecSession(client, config.timeout_s)
    ready = threading.Event()
    refused: list[str] = []

    def on_connect(_c: mqtt.Client, _u: object, _f: object, rc: Any, _p: object) -> None:
        if rc.is_failure:
            refused.append(str(rc))
            ready.set()
            return
        client.subscribe(RESPONSE_TOPIC, qos=1)

    def on_subscribe(_c: mqtt.Client, _u: object, _mid: int, rcs: list[Any],
                     _p: object) -> None:
        if any(rc.is_failure for rc in rcs):
            refused.append(f"subscription to {RESPONSE_TOPIC} refused")
        ready.set()

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = dynsec.on_message
    client.on_disconnect = dynsec.on_disconnect
    try:
        client.connect(config.host, config.port, keepalive=30)
    except OSError as exc:
        raise BrokerAdminError(f"broker {config.host}:{config.port} unreachable: {exc}") from exc
    client.loop_start()
    try:
        if not ready.wait(config.timeout_s):
            raise BrokerAdminError(f"broker {config.host}:{config.port} did not accept the "
                                   f"admin session within {config.timeout_s:.0f} s")
        if refused:
            raise BrokerAdminError(f"broker refused the admin user {config.username!r}: "
                                   f"{refused[0]}")
        yield dynsec
    finally:
        client.disconnect()
        client.loop_stop()
