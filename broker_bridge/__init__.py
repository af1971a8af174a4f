"""The MQTT -> InfluxDB bridge: ``Bridge`` and the ``main`` entry point of ``cizo bridge``."""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

from broker_bridge.bridge import Bridge
from broker_bridge.deadletter import DeadLetter, DeadLetterStore
from broker_bridge.rejects import RejectCounters
from broker_bridge.stats import BridgeStats
from cizo.clock import Clock, SystemClock
from cizo.production import bridge_parts, require_production_ready
from cizo.settings import Settings

__all__ = ["Bridge", "BridgeStats", "DeadLetter", "DeadLetterStore", "RejectCounters", "main"]

log = logging.getLogger(__name__)


def main(settings: Settings, *, client_id: str = "cizo-bridge",
         shared_group: str | None = None, clock: Clock | None = None) -> None:
    """Run one bridge until SIGINT or SIGTERM, then flush, acknowledge and disconnect.

    Must be called from the main thread (signal handlers can only be installed there).
    Each process needs its own ``client_id``: the broker keeps one session per id.
    ``clock``: the wall clock unless a simulation runs the platform on its own time.
    """
    require_production_ready(settings, uses=bridge_parts(settings))
    stop = threading.Event()

    def _handle(signum: int, frame: FrameType | None) -> None:
        log.info("received %s: stopping the bridge", signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, _handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        Bridge(settings, clock or SystemClock(), client_id=client_id,
               shared_group=shared_group).run_forever(stop)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
