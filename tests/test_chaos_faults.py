"""Faults the chaos month (bench/chaos.py, tests/test_chaos.py) found, each on its own."""

from __future__ import annotations

import time

from tests.bridge_support import FaultRig
from tests.support import wait_for


def test_broker_sigkilled_under_load_loses_nothing_it_acknowledged(fault_rig: FaultRig) -> None:
    run = fault_rig.bridge_under_load("crash", kits=10, rate_per_s=150, steady_written=150)
    bridge, load = run.bridge, run.load
    fault_rig.broker.crash()  # no clean shutdown: only what Mosquitto saved survives
    time.sleep(0.5)
    fault_rig.broker.start()
    written = bridge.stats().written
    wait_for(lambda: bridge.stats().written >= written + 150, timeout_s=20,
             what="writes after the restart")
    sent = load.stop()
    fault_rig.wait_for_points(run.settings, run.kits, sent, timeout_s=20)
