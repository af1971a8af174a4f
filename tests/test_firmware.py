"""Firmware rules of the simulated kit: command checks, credit and the fail-safe lock."""

from __future__ import annotations

import json
from typing import Any

import pytest

from cizo import protocol as p
from cizo.clock import FrozenClock
from firmware_sim import KitFirmware
from firmware_sim.physics import KitProfile, PhysicsState

NOW = 1_790_000_000 - (1_790_000_000 % 86_400) + 20 * 3600  # 20:00 in Lomé: evening load
SECRET = "11" * 32
OTHER_SECRET = "22" * 32


def command(seq: int = 1, *, action: p.Action = "unlock", kit_id: str = "KIT1",
            credit_until: int | None = NOW + 86_400, expires_at: int = NOW + 3600,
            secret: str = SECRET, command_id: str | None = None) -> bytes:
    cmd = p.build_command(
        kit_id=kit_id, command_id=command_id or f"cmd-{seq}", seq=seq, action=action,
        credit_until=credit_until, issued_at=NOW - 10, expires_at=expires_at, secret_hex=secret,
    )
    return p.encode(cmd)


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(NOW)


@pytest.fixture
def kit(clock: FrozenClock) -> KitFirmware:
    return KitFirmware("KIT1", SECRET, clock)


def ack_of(kit: KitFirmware, payload: bytes) -> p.Ack:
    ack = kit.handle_command(payload)
    return p.parse_ack(p.encode(ack))  # the ack itself honours the contract


def test_starts_locked_without_credit(kit: KitFirmware) -> None:
    assert kit.locked and kit.credit_until is None and kit.last_seq == 0


def test_valid_unlock_is_applied_and_acked(kit: KitFirmware) -> None:
    ack = ack_of(kit, command(1))
    assert (ack.result, ack.reason, ack.id, ack.seq) == ("applied", None, "cmd-1", 1)
    assert ack.locked is False and ack.credit_until == NOW + 86_400
    assert not kit.locked and kit.last_seq == 1 and kit.last_applied_id == "cmd-1"


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (command(1, secret=OTHER_SECRET), "bad_signature"),
        (command(1, kit_id="KIT2"), "wrong_kit"),
        (command(1, kit_id="KIT2", secret=OTHER_SECRET), "wrong_kit"),
        (command(1, expires_at=NOW), "expired"),
        (command(1, credit_until=None), "malformed"),
        (b"{not json", "malformed"),
        (json.dumps({"v": 1, "id": "x", "seq": 4}).encode(), "malformed"),
    ],
)
def test_bad_commands_are_rejected_with_a_reason(kit: KitFirmware, payload: bytes,
                                                 reason: str) -> None:
    ack = ack_of(kit, payload)
    assert (ack.result, ack.reason) == ("rejected", reason)
    assert kit.locked and kit.credit_until is None and kit.last_seq == 0


def test_tampered_field_breaks_the_signature(kit: KitFirmware) -> None:
    cmd: dict[str, Any] = json.loads(command(1))
    cmd["credit_until"] += 365 * 86_400
    ack = ack_of(kit, p.encode(cmd))
    assert ack.reason == "bad_signature" and kit.locked


def test_malformed_ack_keeps_readable_id_and_seq(kit: KitFirmware) -> None:
    ack = ack_of(kit, json.dumps({"v": 1, "id": "c-9", "seq": 9, "action": "fly"}).encode())
    assert (ack.id, ack.seq, ack.reason) == ("c-9", 9, "malformed")


def test_replayed_seq_is_rejected(kit: KitFirmware) -> None:
    assert ack_of(kit, command(5)).result == "applied"
    for old in (command(5, command_id="other"), command(4, action="own")):
        ack = ack_of(kit, old)
        assert (ack.result, ack.reason) == ("rejected", "replayed_seq")
    assert kit.last_seq == 5 and not kit.owned


def test_repeat_of_last_applied_command_is_acked_applied_again(
    kit: KitFirmware, clock: FrozenClock
) -> None:
    first = command(3)
    assert ack_of(kit, first).result == "applied"
    clock.advance(7200)  # even after it expired: a retained redelivery still gets its ack
    ack = ack_of(kit, first)
    assert (ack.result, ack.reason, ack.seq) == ("applied", None, 3)
    assert kit.last_seq == 3


def test_lock_command_locks_and_later_unlock_reopens(kit: KitFirmware) -> None:
    ack_of(kit, command(1))
    ack = ack_of(kit, command(2, action="lock", credit_until=NOW))
    assert ack.result == "applied" and ack.locked and kit.credit_until == NOW
    assert ack_of(kit, command(3, credit_until=NOW + 100)).locked is False


def test_unlock_with_credit_in_the_past_stays_locked(kit: KitFirmware) -> None:
    ack = ack_of(kit, command(1, credit_until=NOW - 1))
    assert ack.result == "applied" and ack.locked


def test_fail_safe_locks_when_credit_runs_out_without_the_server(
    kit: KitFirmware, clock: FrozenClock
) -> None:
    ack_of(kit, command(1, credit_until=NOW + 3600))
    clock.advance(3599)
    assert kit.tick() is False and not kit.locked
    clock.advance(1)
    assert kit.tick() is True and kit.locked
    assert kit.tick() is False  # reports the change once
    assert kit.telemetry()["locked"] is True


def test_telemetry_notices_lapsed_credit_without_tick(kit: KitFirmware,
                                                      clock: FrozenClock) -> None:
    ack_of(kit, command(1, credit_until=NOW + 600))
    clock.advance(2 * 86_400)
    assert kit.telemetry()["locked"] is True


def test_owned_kit_never_locks_itself(kit: KitFirmware, clock: FrozenClock) -> None:
    ack = ack_of(kit, command(1, action="own", credit_until=None))
    assert ack.result == "applied" and not ack.locked and ack.credit_until is None
    clock.advance(5 * 365 * 86_400)
    assert kit.tick() is False and not kit.locked and kit.owned


def test_locked_kit_delivers_no_load_power(kit: KitFirmware, clock: FrozenClock) -> None:
    kit.telemetry()
    clock.advance(600)
    tele = kit.telemetry()
    assert tele["locked"] is True and tele["load_w"] == 0
    ack_of(kit, command(1))
    clock.advance(600)
    tele = kit.telemetry()
    assert tele["locked"] is False and tele["load_w"] > 0  # 20:00: the evening load


def test_telemetry_is_valid_v1_and_counters_grow(kit: KitFirmware, clock: FrozenClock) -> None:
    ack_of(kit, command(1, credit_until=NOW + 30 * 86_400))
    previous = p.parse_telemetry("KIT1", p.encode(kit.telemetry()), clock.now())
    for _ in range(48):  # a day in half-hour steps
        clock.advance(1800)
        tele = p.parse_telemetry("KIT1", p.encode(kit.telemetry()), clock.now())
        assert tele.seq == previous.seq + 1 and tele.boot == 1
        assert tele.pv_wh_total >= previous.pv_wh_total
        assert tele.load_wh_total >= previous.load_wh_total
        assert 10.0 < tele.battery_v < 15.0
        previous = tele
    assert previous.pv_wh_total > 0 and previous.load_wh_total > 0


def test_a_long_clock_jump_is_bounded_work(kit: KitFirmware, clock: FrozenClock) -> None:
    kit.telemetry()
    clock.advance(365 * 86_400)
    tele = kit.telemetry()
    assert tele["ts"] == int(clock.now()) and tele["locked"] is True


def test_reboot_restarts_seq_with_a_new_boot(kit: KitFirmware) -> None:
    kit.telemetry()
    kit.reboot()
    tele = kit.telemetry()
    assert (tele["boot"], tele["seq"]) == (2, 1)


def test_bad_secret_fails_at_construction(clock: FrozenClock) -> None:
    with pytest.raises(ValueError):
        KitFirmware("KIT1", "not-hex", clock)


def test_physics_pv_is_zero_at_night_and_battery_stays_in_range() -> None:
    profile = KitProfile()
    state = PhysicsState(soc=50.0)
    t0 = NOW - 20 * 3600  # midnight
    state.step(profile, t0 + 2 * 3600, 300, load_enabled=True)
    assert state.pv_w == 0
    for i in range(1, 2000):
        state.step(profile, t0 + i * 300, 300, load_enabled=True)
        assert 0.0 <= state.soc <= 100.0


# --- replay: the telemetry log a bridge's request draws on ----------------------------


V1 = p.PROTOCOL_VERSION


def _publish(kit: KitFirmware, clock: FrozenClock, n: int) -> list[bytes]:
    sent = []
    for _ in range(n):
        clock.advance(900)
        payload = p.encode(kit.telemetry())
        kit.published(payload, V1)
        sent.append(payload)
    return sent


def _ask(kit: KitFirmware, since: float) -> list[tuple[int, bytes]]:
    return kit.replay(p.replay_request(int(since), V1), V1)


def test_a_replay_request_sends_again_what_went_out_since_its_time(
        kit: KitFirmware, clock: FrozenClock) -> None:
    before = _publish(kit, clock, 3)
    since = int(clock.now()) + 1
    after = _publish(kit, clock, 2)
    again = _ask(kit, since)
    assert again == [(V1, m) for m in after]
    assert not set(before) & {m for _v, m in again}


def test_every_replay_request_is_answered_the_second_bridges_too(
        kit: KitFirmware, clock: FrozenClock) -> None:
    sent = _publish(kit, clock, 2)
    # the first may be an old request queued while the kit was away, answered before any
    # bridge is back (and so dropped): the one sent once a bridge is back must work too
    assert [m for _v, m in _ask(kit, NOW)] == sent
    assert [m for _v, m in _ask(kit, NOW)] == sent


def test_the_replay_log_keeps_each_message_once_with_its_topic_version_and_is_bounded(
        kit: KitFirmware, clock: FrozenClock) -> None:
    from firmware_sim.firmware import REPLAY_LOG

    first = _publish(kit, clock, 1)[0]
    clock.advance(60)
    kit.published(first, V1)  # sent again: once in the log, at the time it first went out
    v2 = b"\xa1\x61v\x02"
    kit.published(v2, p.V2)
    assert _ask(kit, int(clock.now())) == [(p.V2, v2)]
    assert _ask(kit, NOW) == [(V1, first), (p.V2, v2)]
    _publish(kit, clock, REPLAY_LOG + 5)
    assert len(_ask(kit, NOW)) == REPLAY_LOG
    # a kit moved to v2 still hears v1's request (its old subscription): it answers v2's
    kit.protocol = p.V2
    assert _ask(kit, NOW) == []
    assert len(kit.replay(p.replay_request(NOW, p.V2), p.V2)) == REPLAY_LOG


@pytest.mark.parametrize("payload", [b"", b"{}", b'{"v":1,"since":"yesterday"}',
                                     b'{"v":2,"since":1800000000}', b'{"v":1,"since":5}',
                                     b"\xff"])
def test_a_malformed_replay_request_sends_nothing(
        kit: KitFirmware, clock: FrozenClock, payload: bytes) -> None:
    _publish(kit, clock, 2)
    assert kit.replay(payload, V1) == []
    assert len(_ask(kit, NOW)) == 2  # and a good one still works
