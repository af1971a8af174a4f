"""One received MQTT message -> a line-protocol line, or a dead letter saying why not.

Runs on paho's network thread for every message, so it never blocks and never raises:
the contract's validator (``cizo.protocol.parse_telemetry``) and the line encoding
(``telemetry.schema``) decide, and even a bug of ours becomes a counted, logged
``internal_error`` dead letter rather than an unacknowledged message holding an
in-flight slot forever.

A reading that repeats a known ``(kit, ts)`` with other values, or reuses a
``(boot, seq)``, is refused here too (broker_bridge.dedup).

A v2 message carries several readings: each is judged alone, so one bad reading is
dead-lettered with its reason while the others are stored (the message is acknowledged
once both are durable).
"""

from __future__ import annotations

import logging
from typing import NamedTuple

import paho.mqtt.client as mqtt

from broker_bridge.deadletter import DeadLetter
from broker_bridge.dedup import NEW, REPEAT, RecentReadings
from broker_bridge.rejects import Rejects
from cizo import protocol
from cizo.clock import Clock
from telemetry.schema import LineProtocolError, encode_line, encode_status_line

log = logging.getLogger(__name__)

INTERNAL_ERROR = "internal_error"  # a bug in our own decoding (logged with its traceback)
_ROOT, _TELEMETRY, _STATUS = protocol.TOPIC_ROOT, protocol.TELEMETRY, protocol.STATUS


class Received(NamedTuple):
    """One received message on its way to InfluxDB (or the dead letters) and its ack."""

    epoch: int  # connection generation it arrived on: acks only go back on that one
    mid: int
    qos: int
    lines: tuple[str, ...]  # one per accepted reading (v2: several), or the status line
    kit_id: str
    dead: tuple[DeadLetter, ...]  # the refused message, or a v2 message's refused readings
    received: float  # time.monotonic() at receipt (lag)
    ts: int  # the (earliest) reading's ts (0 for a status)
    topic: str
    payload: bytes


class Decoder:
    """Topic and payload -> ``Received``; owns the record of recent readings (its
    thread only)."""

    def __init__(self, clock: Clock, rejects: Rejects, recent: RecentReadings) -> None:
        self.clock = clock
        self.rejects = rejects
        self.recent = recent

    def decode(self, msg: mqtt.MQTTMessage, epoch: int, received: float) -> Received:
        kit_id = "?"
        lines: tuple[str, ...] = ()
        dead: tuple[DeadLetter, ...] = ()
        payload = b""
        topic = ""
        ts = 0
        try:
            payload = msg.payload if isinstance(msg.payload, bytes) else bytes(msg.payload)
            topic = msg.topic  # paho decodes it here: UnicodeDecodeError if not UTF-8
            parts = topic.split("/")
            version = protocol.PROTOCOL_VERSION
            if len(parts) == 3 and parts[0] == _ROOT and protocol.is_kit_id(parts[1]):
                kit_id, kind = parts[1], parts[2]  # the common case, without a Topic object
            else:
                parsed = protocol.parse_topic(topic)
                kit_id, kind, version = parsed.kit_id, parsed.kind, parsed.version
            if kind == _TELEMETRY and version == protocol.V2:
                lines, ts, dead = self._readings(kit_id, topic, payload)
            elif kind == _TELEMETRY:
                tele = protocol.parse_telemetry(kit_id, payload, self.clock.now())
                lines, dead = self._reading(tele, topic, payload)
                ts = tele.ts
            elif kind == _STATUS:
                status = protocol.parse_status(payload, version)
                lines = (encode_status_line(kit_id, status, int(self.clock.now())),)
            else:
                raise protocol.ContractError("bad_topic", topic)
        except protocol.ContractError as exc:
            dead = (self.rejects.reject(kit_id, exc.reason, exc.detail, topic, payload),)
        except LineProtocolError as exc:
            dead = (self.rejects.reject(kit_id, exc.reason, str(exc), topic, payload),)
        except UnicodeDecodeError as exc:
            dead = (self.rejects.reject(kit_id, "bad_topic", str(exc), topic, payload),)
        except Exception as exc:
            log.exception("unexpected error decoding message kit_id=%s mid=%d", kit_id,
                          msg.mid, extra={"kit_id": kit_id})
            lines = ()
            dead = (self.rejects.reject(kit_id, INTERNAL_ERROR, repr(exc), topic, payload),)
        return Received(epoch, msg.mid, msg.qos, lines, kit_id, dead, received, ts, topic,
                        payload)

    def _reading(self, tele: protocol.Telemetry, topic: str, payload: bytes
                 ) -> tuple[tuple[str, ...], tuple[DeadLetter, ...]]:
        """((line,), ()) for a new or repeated reading, ((), (letter,)) if refused."""
        line = encode_line(tele)
        kit_id, ts, boot, seq = tele.kit_id, tele.ts, tele.boot, tele.seq
        verdict = self.recent.check(kit_id, ts, boot, seq, hash(line))
        if verdict is NEW or verdict is REPEAT:
            return (line,), ()
        return (), (self.rejects.reject(kit_id, verdict, f"ts={ts} boot={boot} seq={seq}",
                                        topic, payload),)

    def _readings(self, kit_id: str, topic: str, payload: bytes
                  ) -> tuple[tuple[str, ...], int, tuple[DeadLetter, ...]]:
        """A v2 message: the lines of its good readings, its earliest ts, and a dead letter
        (the whole message, with the reading's reason) for each bad one."""
        lines: list[str] = []
        dead: list[DeadLetter] = []
        stamps: list[int] = []
        for reading in protocol.parse_readings(kit_id, payload, self.clock.now()):
            if isinstance(reading, protocol.ContractError):
                dead.append(self.rejects.reject(kit_id, reading.reason, reading.detail,
                                                topic, payload))
                continue
            try:
                good, bad = self._reading(reading, topic, payload)
            except LineProtocolError as exc:
                good, bad = (), (self.rejects.reject(kit_id, exc.reason, str(exc), topic,
                                                     payload),)
            lines.extend(good)
            dead.extend(bad)
            stamps.append(reading.ts)
        return tuple(lines), min(stamps, default=0), tuple(dead)
