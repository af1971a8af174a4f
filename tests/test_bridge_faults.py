"""Nothing lost when something fails: real Mosquitto and influxd, a steady load, and an
exact count in InfluxDB at the end of each test.

The InfluxDB outage lasts ``CIZO_TEST_INFLUX_OUTAGE_S`` seconds (default 30; a third of
it for kit contract v2, whose messages take the same path past the decoder); the other
faults are quick. The three faults run for v1 (one reading a message) and v2 (four). The
servers, bridges and loads come from the ``fault_rig`` fixture (tests/bridge_support.py),
which stops them all when a test ends.
"""

from __future__ import annotations

import os

import pytest

from cizo import protocol
from tests.bridge_support import FaultRig, unique
from tests.support import wait_for

pytestmark = pytest.mark.integration

OUTAGE_S = float(os.environ.get("CIZO_TEST_INFLUX_OUTAGE_S", "30"))
VERSIONS = pytest.mark.parametrize("version", protocol.VERSIONS, ids=["v1", "v2"])


# --- InfluxDB down for 30 s: spooled to disk, acked, replayed, exact count ------------------


@VERSIONS
def test_influxd_outage_is_spooled_then_replayed_exactly(fault_rig: FaultRig,
                                                         version: int) -> None:
    run = fault_rig.bridge_under_load("outage", kits=20, rate_per_s=100, steady_written=100,
                                      version=version)
    bridge = run.bridge
    outage_s = OUTAGE_S if version == protocol.PROTOCOL_VERSION else OUTAGE_S / 3

    down_at = fault_rig.stop_influxd()
    acked_at_stop = bridge.stats().acked
    fault_rig.wait_until(down_at + outage_s)
    during = bridge.stats()
    # acknowledged while InfluxDB was down: durable in the spool, not held in the broker
    assert during.spooled > 0 and during.spool_records > 0
    assert during.acked - acked_at_stop >= 0.8 * outage_s * 100 * 0.5
    assert not during.influx_up

    fault_rig.influxd.start()
    wait_for(lambda: bridge.stats().written >= 100 + during.spooled, timeout_s=30,
             what="replay after restart")
    fault_rig.wait_for_points(run.settings, run.kits, run.load.stop())
    # the last record is committed just before its segment file goes: wait for both
    wait_for(lambda: bridge.stats().spool_records == 0 == bridge.stats().spool_bytes,
             what="spool emptied")
    stats = bridge.stats()
    assert stats.spool_bytes == 0 and stats.replayed > 0
    assert stats.rejected_total == 0


def test_full_spool_stops_acking_and_the_broker_holds_the_rest(fault_rig: FaultRig) -> None:
    # room for a few small batches only: the rest must wait, unacknowledged, in the broker
    run = fault_rig.bridge_under_load("full", kits=5, rate_per_s=100, steady_written=50,
                                      bridge_spool_max_bytes=4_000)
    bridge = run.bridge

    fault_rig.stop_influxd()
    wait_for(lambda: run.load.sent >= bridge.stats().acked + 100, what="acks held back")
    held = bridge.stats()
    assert 0 < held.spool_bytes <= 4_000 and held.spooled > 0

    fault_rig.influxd.start()
    fault_rig.wait_for_points(run.settings, run.kits, run.load.stop())
    wait_for(lambda: bridge.stats().spool_records == 0, what="spool emptied")


# --- Mosquitto restarted (persistence) under load: reconnect, resubscribe, exact count ------


@VERSIONS
def test_broker_restart_under_load_loses_nothing(fault_rig: FaultRig, version: int) -> None:
    run = fault_rig.bridge_under_load("brk", kits=10, rate_per_s=150, steady_written=150,
                                      version=version)
    bridge, load = run.bridge, run.load
    sent_before = load.sent

    fault_rig.restart_broker(bridge)
    written = bridge.stats().written
    wait_for(lambda: bridge.stats().written >= written + 150, timeout_s=20,
             what="writes after the restart")
    assert load.sent > sent_before + 150  # the load went on through the restart
    sent = load.stop()
    assert bridge.stats().connects == 2  # it really lost and regained the broker
    fault_rig.wait_for_points(run.settings, run.kits, sent, timeout_s=20)


# --- bridge processes: SIGKILL mid-stream, and two on a shared subscription ------------------


@VERSIONS
def test_bridge_sigkilled_mid_stream_and_restarted_loses_and_doubles_nothing(
    fault_rig: FaultRig, version: int,
) -> None:
    run = fault_rig.bridge_process_under_load("kill", kits=10, rate_per_s=200,
                                              steady_written=200, version=version)
    first, load = run.bridge, run.load

    first.kill()  # no flush, no acks for what it held
    sent_at_kill = load.sent
    second = fault_rig.bridge_process(run.settings, first.client_id)  # same session
    wait_for(lambda: load.sent >= sent_at_kill + 200, what="load continues")
    fault_rig.assert_stored_once(run.settings, run.kits, load.stop())
    m = second.metrics()
    assert m["cizo_bridge_messages_in_total"] > 0 and m.get("cizo_bridge_rejected_total",
                                                              0) == 0


def test_two_bridge_processes_share_the_load_and_each_message_lands_once(
    fault_rig: FaultRig,
) -> None:
    settings = fault_rig.settings("share")
    kits = [unique("SH") for _ in range(20)]
    group = unique("grp")
    bridges = [fault_rig.bridge_process(settings, group=group) for _ in range(2)]
    load = fault_rig.load(kits, rate_per_s=400)
    wait_for(lambda: load.sent >= 1200, what="1200 published")
    sent = load.stop()
    fault_rig.wait_for_points(settings, kits, sent, timeout_s=20)
    # points are visible a moment before a bridge counts its write
    wait_for(lambda: sum(b.metrics()["cizo_bridge_written_total"] for b in bridges) >= sent,
             what="writes counted")
    written = [b.metrics()["cizo_bridge_written_total"] for b in bridges]
    received = [b.metrics()["cizo_bridge_messages_in_total"] for b in bridges]
    assert sum(written) == sent and sum(received) == sent  # every message once
    assert min(written) > 0.2 * sent  # both took a share


# --- the container recreated mid-outage: a new bridge on the same data volume ------------


def test_bridge_replaced_mid_outage_replays_the_old_spool_from_the_same_data_dir(
    fault_rig: FaultRig,
) -> None:
    """What `docker compose up` does to a changed bridge while InfluxDB is down: stop the
    process (SIGTERM) after it acknowledged readings into its spool, start a new one on the
    same data directory (volume bridge-data in docker-compose.yml) and client id. The new
    bridge replays the old spool: every reading the broker was told is safe is counted."""
    run = fault_rig.bridge_process_under_load("recreate", kits=10, rate_per_s=100,
                                              steady_written=100)
    settings, first, load = run.settings, run.bridge, run.load

    fault_rig.stop_influxd()
    wait_for(lambda: first.metrics().get("cizo_bridge_spool_records", 0) >= 3,
             what="readings acknowledged into the spool")
    first.stop()
    # the old container is gone; its spool is all that holds those readings
    spool = settings.data_dir / "spool" / first.client_id
    assert spool.is_dir() and any(spool.iterdir())

    second = fault_rig.bridge_process(settings, first.client_id)
    spooled_before = second.metrics().get("cizo_bridge_spool_records", 0)
    assert spooled_before >= 3  # found the old spool at start
    sent_at_restart = load.sent
    wait_for(lambda: load.sent >= sent_at_restart + 100, what="load continues in the outage")
    fault_rig.influxd.start()
    fault_rig.assert_stored_once(settings, run.kits, load.stop(), timeout_s=30)
    wait_for(lambda: second.metrics().get("cizo_bridge_spool_records", 0) == 0,
             what="spool emptied")
    m = second.metrics()
    assert m.get("cizo_bridge_replayed_total", 0) > 0
    assert m.get("cizo_bridge_rejected_total", 0) == 0
