"""The control service's MQTT link over a real Mosquitto: acks and presence are read ahead
of a telemetry backlog, and the link says how many are still unread."""

from __future__ import annotations

import threading
import uuid
from typing import cast

import pytest

from cizo import protocol as p
from cizo import services
from cizo.settings import Settings
from control.commands.mqtt_link import MqttLink
from control.commands.service import ControlService
from tests.support import Watcher, wait_for

pytestmark = pytest.mark.integration


class Handler:
    """Stands in for the ControlService behind the link: records what it is handed, in
    order, and holds the first telemetry until released (a database that is slow)."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.release = threading.Event()
        self.holding = threading.Event()

    def handle_telemetry(self, kit_id: str, payload: bytes, version: int = 1) -> None:
        self.seen.append(f"telemetry {payload.decode()}")
        if not self.holding.is_set():
            self.holding.set()
            self.release.wait(10)

    def handle_ack(self, kit_id: str, payload: bytes, version: int = 1) -> None:
        self.seen.append("ack")

    def handle_status(self, kit_id: str, payload: bytes, version: int = 1) -> None:
        self.seen.append("status")


def test_acks_and_status_jump_a_telemetry_backlog(mosquitto: services.ManagedProcess) -> None:
    run = uuid.uuid4().hex[:8]
    kit_id = f"LANE{run}"
    handler = Handler()
    link = MqttLink(Settings(mqtt_port=mosquitto.port), cast(ControlService, handler),
                    client_id=f"control-{run}")
    link.start()
    kit = Watcher(mosquitto.port, kit_id)
    try:
        assert link.wait_connected(10)
        kit.publish(p.telemetry_topic(kit_id), b"0")
        wait_for(handler.holding.is_set, what="first telemetry being handled")
        for i in range(1, 21):
            kit.publish(p.telemetry_topic(kit_id), str(i).encode())
        kit.publish(p.ack_topic(kit_id), b"{}")
        kit.publish(p.status_topic(kit_id), b"{}")
        wait_for(lambda: link.acks_waiting == 2, what="ack and status queued")
        handler.release.set()
        wait_for(lambda: len(handler.seen) == 23, what="every message handled")
        assert handler.seen[:3] == ["telemetry 0", "ack", "status"]
        assert handler.seen[3:] == [f"telemetry {i}" for i in range(1, 21)]  # still in order
        assert link.acks_waiting == 0
    finally:
        handler.release.set()
        link.stop()
        kit.close()
