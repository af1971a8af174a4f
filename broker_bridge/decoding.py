"""One received MQTT message -> a line-protocol line, or a dead letter saying why not.

Runs on paho's network thread for every message, so it never blocks and never raises:
the contract's validator (``cizo.protocol.parse_telemetry``) and the line encoding
(``telemetry.schema``) decide, and even a bug of ours becomes a counted, logged
``internal_error`` dead letter rather than an unacknowledged message holding an
in-flight slot forever.

A reading that repeats a known ``(kit, ts)`` with other values, or reuses a
``(boot, seq)``, is refused here too (broker_bridge.dedup).
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
    line: str | None  # None: refused (``dead`` says why)
    kit_id: str
    dead: DeadLetter | None
    received: float  # time.monotonic() at receipt (lag)
    ts: int  # the reading's ts (0 for a status)
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
        line: str | None = None
        dead: DeadLetter | None = None
        payload = b""
        topic = ""
        ts = 0
        try:
            payload = msg.payload if isinstance(msg.payload, bytes) else bytes(msg.payload)
            topic = msg.topic  # paho decodes it here: UnicodeDecodeError if not UTF-8
            parts = topic.split("/")
            if len(parts) == 3 and parts[0] == _ROOT and protocol.is_kit_id(parts[1]):
                kit_id, kind = parts[1], parts[2]  # the common case, without a Topic object
            else:
                parsed = protocol.parse_topic(topic)
                kit_id, kind = parsed.kit_id, parsed.kind
            if kind == _TELEMETRY:
                line, ts, dead = self._telemetry(kit_id, topic, payload)
            elif kind == _STATUS:
                status = protocol.parse_status(payload)
                line = encode_status_line(kit_id, status, int(self.clock.now()))
            else:
                raise protocol.ContractError("bad_topic", topic)
        except protocol.ContractError as exc:
            dead = self.rejects.reject(kit_id, exc.reason, exc.detail, topic, payload)
        except LineProtocolError as exc:
            dead = self.rejects.reject(kit_id, exc.reason, str(exc), topic, payload)
        except UnicodeDecodeError as exc:
            dead = self.rejects.reject(kit_id, "bad_topic", str(exc), topic, payload)
        except Exception as exc:
            log.exception("unexpected error decoding message kit_id=%s mid=%d", kit_id,
                          msg.mid, extra={"kit_id": kit_id})
            line = None
            dead = self.rejects.reject(kit_id, INTERNAL_ERROR, repr(exc), topic, payload)
        return Received(epoch, msg.mid, msg.qos, line, kit_id, dead, received, ts, topic,
                        payload)

    def _telemetry(self, kit_id: str, topic: str,
                   payload: bytes) -> tuple[str | None, int, DeadLetter | None]:
        """(line, ts, None) for a new or repeated reading, (None, ts, letter) if refused."""
        tele = protocol.parse_telemetry(kit_id, payload, self.clock.now())
        line = encode_line(tele)
        ts, boot, seq = tele.ts, tele.boot, tele.seq
        verdict = self.recent.check(kit_id, ts, boot, seq, hash(line))
        if verdict is NEW or verdict is REPEAT:
            return line, ts, None
        return None, ts, self.rejects.reject(kit_id, verdict, f"ts={ts} boot={boot} seq={seq}",
                                             topic, payload)
