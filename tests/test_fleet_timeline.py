"""The kit timeline's pure part: telemetry gaps found from reading times, and every source
merged into one time order."""

from __future__ import annotations

from control.fleet.timeline import Event, merge, telemetry_gaps


def test_gaps_are_the_silences_longer_than_the_limit_including_the_edges() -> None:
    readings = [1_000.0, 1_900.0, 2_800.0, 9_000.0, 9_900.0]
    gaps = telemetry_gaps(readings, start=0, end=20_000, max_silence_s=2_700)
    assert [(g.at, g.until) for g in gaps] == [(2_800.0, 9_000.0), (9_900.0, 20_000)]
    assert all(g.kind == "telemetry_gap" for g in gaps)
    assert gaps[0].detail == {"seconds": 6_200}
    # the window's start counts as the last reading: a kit quiet from the start has a gap
    assert [(g.at, g.until) for g in telemetry_gaps([5_000.0], start=0, end=5_500,
                                                    max_silence_s=2_700)] == [(0, 5_000.0)]
    assert telemetry_gaps([], start=0, end=1_000, max_silence_s=2_700) == []
    # readings outside the window are ignored, the order of the input does not matter
    assert telemetry_gaps([3_000.0, 1_000.0, 2_000.0, 99_999.0], start=900, end=3_100,
                          max_silence_s=2_700) == []


def test_merge_orders_every_source_newest_first_cause_before_effect_at_a_tie() -> None:
    payments = [Event(at=100, kind="payment", summary="credited"),
                Event(at=300, kind="payment", summary="credited")]
    commands = [Event(at=100, kind="command_issued", summary="set_credit"),
                Event(at=160, kind="command_applied", summary="set_credit")]
    audit = [Event(at=200, kind="audit", summary="kit.unlock")]
    gaps = [Event(at=120, kind="telemetry_gap", summary="silent", until=180)]
    out = merge(payments, commands, audit, gaps)
    assert [(e.at, e.kind) for e in out] == [
        (300, "payment"), (200, "audit"), (160, "command_applied"), (120, "telemetry_gap"),
        (100, "command_issued"), (100, "payment")]
    assert merge(payments, commands, limit=2) == [payments[1], commands[1]]
    assert out[3].as_dict() == {"at": 120, "kind": "telemetry_gap", "summary": "silent",
                                "until": 180, "detail": {}}
