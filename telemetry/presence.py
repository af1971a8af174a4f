"""Kit presence from InfluxDB: online/offline, last seen, and kits gone silent.

Online/offline comes from ``kit_status``: each kit publishes a retained
``{"online": true}`` on connect and registers ``{"online": false}`` as its MQTT last
will, so the broker reports a kit that vanished without a goodbye; the bridge stores both.
Last seen is the newest ``kit_telemetry`` point. A kit is *silent* when its last reading
is older than a threshold, whatever its status says (a connected kit with a broken
sensor, or a will not yet fired because the keepalive has not expired).

The InfluxQL is per kit with ``GROUP BY kit_id`` (one row per series), bounded by a
look-back window so a query never scans all history. ``classify_silent`` is the pure
part (last-seen times in, silent kits out), usable with inputs from anywhere.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from telemetry.influx import InfluxClient, quote_ident
from telemetry.schema import STATUS_MEASUREMENT, TAG_KIT_ID, TELEMETRY_MEASUREMENT

DEFAULT_LOOKBACK_S = 30 * 86400


@dataclass(frozen=True, slots=True)
class KitPresence:
    kit_id: str
    online: bool | None  # None: no status seen within the look-back window
    status_at: int | None  # unix s of the latest status
    last_seen: int | None  # unix s of the latest reading


def last_seen(client: InfluxClient, *, lookback_s: int = DEFAULT_LOOKBACK_S) -> dict[str, int]:
    """Unix time of each kit's latest reading within the look-back window."""
    q = (f"SELECT last(seq) FROM {quote_ident(TELEMETRY_MEASUREMENT)} "
         f"WHERE time > now() - {int(lookback_s)}s GROUP BY {quote_ident(TAG_KIT_ID)}")
    return {str(r[TAG_KIT_ID]): int(r["time"]) for r in client.query(q)}


def statuses(client: InfluxClient, *,
             lookback_s: int = DEFAULT_LOOKBACK_S) -> dict[str, tuple[bool, int]]:
    """Each kit's latest ``online`` flag and its time."""
    q = (f"SELECT last(online) FROM {quote_ident(STATUS_MEASUREMENT)} "
         f"WHERE time > now() - {int(lookback_s)}s GROUP BY {quote_ident(TAG_KIT_ID)}")
    return {str(r[TAG_KIT_ID]): (bool(r["last"]), int(r["time"])) for r in client.query(q)}


def presence(client: InfluxClient, *,
             lookback_s: int = DEFAULT_LOOKBACK_S) -> dict[str, KitPresence]:
    """Online flag, status time and last reading per kit seen in the window."""
    seen = last_seen(client, lookback_s=lookback_s)
    stat = statuses(client, lookback_s=lookback_s)
    return {
        kit: KitPresence(kit_id=kit, online=stat[kit][0] if kit in stat else None,
                         status_at=stat[kit][1] if kit in stat else None,
                         last_seen=seen.get(kit))
        for kit in sorted(set(seen) | set(stat))
    }


def classify_silent(last: Mapping[str, int | None], now: float, older_than_s: float,
                    expected: Iterable[str] = ()) -> dict[str, int | None]:
    """Kits whose last reading is older than ``older_than_s`` (or never, if expected).

    Pure: ``last`` maps kit id to its last reading time; ``expected`` adds kits known
    from elsewhere (the ledger) that may never have reported. Returns kit -> last seen.
    """
    cutoff = now - older_than_s
    silent: dict[str, int | None] = {k: t for k, t in last.items() if t is None or t < cutoff}
    for kit in expected:
        if kit not in last:
            silent[kit] = None
    return dict(sorted(silent.items()))


def silent_kits(client: InfluxClient, older_than_s: float, *, now: float | None = None,
                expected: Iterable[str] = (),
                lookback_s: int = DEFAULT_LOOKBACK_S) -> dict[str, int | None]:
    """Kits silent for longer than ``older_than_s``: kit id -> last reading (None: never
    within the look-back window, listed only if in ``expected``)."""
    import time

    last: dict[str, int | None] = dict(last_seen(client, lookback_s=lookback_s))
    return classify_silent(last, time.time() if now is None else now, older_than_s, expected)
