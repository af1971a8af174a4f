"""A fleet of simulated kits, one MQTT connection each, as ``cizo sim`` runs it.

A paho client with its own network thread per kit is plenty for the 50 kits of the
local stack; a much larger fleet would want one event loop multiplexing the sockets.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from cizo.clock import Clock, SystemClock
from cizo.settings import Settings
from firmware_sim.kit import KitIdentity, SimKit, identity_from_json

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class FleetStats:
    kits: int
    online: int
    messages_sent: int
    telemetry_sent: int
    commands_applied: int
    commands_rejected: int
    buffered: int

    def line(self) -> str:
        return (
            f"{self.online}/{self.kits} kits online, {self.messages_sent} messages sent "
            f"({self.telemetry_sent} telemetry), commands {self.commands_applied} applied "
            f"/ {self.commands_rejected} rejected, {self.buffered} readings buffered"
        )


def load_identities(path: Path) -> list[KitIdentity]:
    """Read ``[{"kit_id","mqtt_username","mqtt_password","command_secret"}, ...]``."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of kits")
    identities = [identity_from_json(item) for item in data]
    seen: set[str] = set()
    for ident in identities:
        if ident.kit_id in seen:
            raise ValueError(f"{path}: kit {ident.kit_id} listed twice")
        seen.add(ident.kit_id)
    return identities


class Fleet:
    """Start, watch and stop many ``SimKit``s together."""

    def __init__(self, identities: list[KitIdentity], settings: Settings, clock: Clock) -> None:
        self.kits = [SimKit(ident, settings, clock) for ident in identities]

    def start(self) -> None:
        for kit in self.kits:
            kit.start()

    def stop(self) -> None:
        """Stop every kit gracefully, in parallel (each may wait for a PUBACK)."""
        if not self.kits:
            return
        with ThreadPoolExecutor(max_workers=min(16, len(self.kits))) as pool:
            for future in [pool.submit(kit.stop) for kit in self.kits]:
                future.result()

    def stats(self) -> FleetStats:
        all_stats = [kit.stats() for kit in self.kits]
        return FleetStats(
            kits=len(all_stats),
            online=sum(s.online for s in all_stats),
            messages_sent=sum(s.messages_sent for s in all_stats),
            telemetry_sent=sum(s.telemetry_sent for s in all_stats),
            commands_applied=sum(s.commands_applied for s in all_stats),
            commands_rejected=sum(s.commands_rejected for s in all_stats),
            buffered=sum(s.buffered for s in all_stats),
        )


def main(settings: Settings, fleet_file: Path, *, progress_every_s: float = 5.0) -> None:
    """Run the fleet in the foreground until SIGINT/SIGTERM, printing progress lines."""
    identities = load_identities(fleet_file)
    fleet = Fleet(identities, settings, SystemClock())
    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("signal %d: stopping the fleet", signum)
        stop.set()

    previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    started = time.monotonic()
    print(f"sim: {len(identities)} kits -> {settings.mqtt_url}, telemetry every "
          f"{settings.sim_telemetry_interval_s:g}s (Ctrl-C to stop)", flush=True)
    try:
        fleet.start()
        while not stop.wait(progress_every_s):
            print(f"sim: {fleet.stats().line()}", flush=True)
    finally:
        fleet.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        elapsed = time.monotonic() - started
        print(f"sim: stopped after {elapsed:.0f}s: {fleet.stats().line()}", flush=True)
