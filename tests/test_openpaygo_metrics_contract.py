"""How a Metrics request's time steps become kit_telemetry readings (cizo.openpaygo_metrics,
pure), and migration 0003_kit_kind down and up on both databases."""

from __future__ import annotations

from typing import Any

import pytest
from alembic import command
from sqlalchemy import inspect

from cizo import openpaygo_metrics as contract
from cizo.protocol import ContractError
from tests.support import migrated

NOW = 1_790_000_000
STEP = {"battery_voltage": 12.5, "battery_soc": 64, "panel_power": 30, "load_power": 8.5,
        "panel_energy_total": 900, "load_energy_total": 420, "temperature": 29}


def simple(steps: list[dict[str, Any]], data: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"serial_number": "M1", "timestamp": NOW, "data": data or {},
            "historical_data": steps}


def test_each_time_step_is_one_reading_with_the_v1_fields() -> None:
    out = contract.readings("M1", simple([{**STEP, "timestamp": NOW},
                                          {**STEP, "timestamp": NOW - 900, "locked": 1}]),
                            seq=7, now=NOW, credit_until=NOW + 3600, owned=False)
    assert [(r.ts, r.locked, r.seq, r.boot) for r in out] == [(NOW, False, 7, 0),
                                                              (NOW - 900, True, 7, 0)]
    first = out[0]
    assert (first.kit_id, first.battery_v, first.soc, first.pv_w, first.load_w) == \
        ("M1", 12.5, 64.0, 30.0, 8.5)
    assert (first.pv_wh_total, first.load_wh_total, first.temp_c, first.credit_until) == \
        (900.0, 420.0, 29.0, None)


def test_locked_comes_from_the_ledger_when_the_device_does_not_say() -> None:
    steps = [{**STEP, "timestamp": NOW - 100}, {**STEP, "timestamp": NOW + 100}]
    lapsed = contract.readings("M1", simple(steps), seq=0, now=NOW, credit_until=NOW,
                               owned=False)
    assert [r.locked for r in lapsed] == [False, True]
    owned = contract.readings("M1", simple(steps), seq=0, now=NOW, credit_until=None,
                              owned=True)
    assert [r.locked for r in owned] == [False, False]


def test_current_data_fills_each_step_and_alone_is_one_reading() -> None:
    slow = {"temperature": 33, "active_until_timestamp": NOW + 86_400}
    step = {k: v for k, v in STEP.items() if k != "temperature"}
    out = contract.readings("M1", simple([{**step, "timestamp": NOW}], slow), seq=1, now=NOW,
                            credit_until=None, owned=False)
    assert (out[0].temp_c, out[0].credit_until) == (33.0, NOW + 86_400)
    alone = contract.readings("M1", simple([], dict(STEP)), seq=1, now=NOW,
                              credit_until=None, owned=False)
    assert [r.ts for r in alone] == [NOW]
    assert contract.readings("M1", simple([], {"token_count": 3}), seq=1, now=NOW,
                             credit_until=None, owned=False) == []


@pytest.mark.parametrize(("step", "reason"), [
    ({"battery_voltage": 12.0, "timestamp": NOW}, "missing_variable"),
    ({**STEP, "timestamp": "yesterday"}, "bad_time"),
    ({**STEP, "timestamp": NOW, "battery_soc": 140}, "invalid_field"),
    ({**STEP, "timestamp": NOW, "locked": "yes"}, None),
    ({**STEP, "timestamp": NOW + 86_400}, "ts_in_future"),
    ({**STEP, "timestamp": 1_000}, "ts_too_old"),
])
def test_a_bad_step_refuses_the_request_with_the_contract_reason(
        step: dict[str, Any], reason: str | None) -> None:
    with pytest.raises(ContractError) as err:
        contract.readings("M1", simple([{**STEP, "timestamp": NOW}, step]), seq=0, now=NOW,
                          credit_until=None, owned=False)
    if reason is not None:
        assert err.value.reason == reason


def test_data_formats_are_found_by_id_or_its_decimal_string() -> None:
    assert contract.data_format(1) is contract.CIZO_FORMAT
    assert contract.data_format("1") is contract.CIZO_FORMAT
    assert contract.data_format(2) is None and contract.data_format([1]) is None


def test_kit_kind_migration_down_and_up(database_url: str) -> None:
    cfg, engine = migrated(database_url)
    added = {"kind", "metrics_request_count", "metrics_request_ts"}
    try:
        command.downgrade(cfg, "0003_kit_kind@0002_commands")
        insp = inspect(engine)
        assert not added & {c["name"] for c in insp.get_columns("kits")}
        assert "delivered_at" not in {c["name"] for c in insp.get_columns("kit_tokens")}
        command.upgrade(cfg, "heads")
        insp = inspect(engine)
        assert added <= {c["name"] for c in insp.get_columns("kits")}
        assert "delivered_at" in {c["name"] for c in insp.get_columns("kit_tokens")}
    finally:
        engine.dispose()
