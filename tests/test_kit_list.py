"""GET /v1/kits: filters, search by kit id / account / phone, sorting and keyset pages,
a DESCO's key seeing only its kits; the CSV exports, streamed, with chosen columns."""

from __future__ import annotations

import csv
import io
from typing import Any

import pytest
from sqlalchemy import update

from control.fleet import exports
from control.ledger.accounts import Actor
from control.ledger.models import Account, Alert, Kit
from control.runtime import Runtime
from tests.api_support import DAY, Keys, TestClient

KITS = 12  # K-00 .. K-11; K-08 .. K-11 belong to the "north" DESCO


def _fleet(client: TestClient, rt: Runtime, keys: Keys) -> float:
    rows = "".join(
        f"K-{i:02d},90 00 02 {i:02d},0,100,50000,{('Kara', 'Savanes')[i % 2]},true"
        f"{',north' if i >= 8 else ','}\n" for i in range(KITS))
    head = "kit_id,phone,deposit_fcfa,daily_rate_fcfa,total_price_fcfa,region,deposit_paid,"
    r = client.post("/v1/kits/import", content=(head + "desco_id\n" + rows).encode(),
                    headers={**Keys.auth(keys.admin), "Content-Type": "text/csv"})
    assert r.status_code == 200 and r.json()["created"] == KITS, r.text
    now = rt.clock.now()
    with rt.db.session() as s:
        for i in range(KITS):
            kid = f"K-{i:02d}"
            s.execute(update(Kit).where(Kit.id == kid).values(
                online=i % 3 == 0, reported_locked=i % 2 == 0,
                last_seen=None if i == 5 else now - i * 60))
            s.execute(update(Account).where(Account.kit_id == kid).values(
                owned=i == 7, credit_until=None if i == 6 else int(now + (3 - i) * DAY)))
        s.add(Alert(kit_id="K-04", desco_id="default", kind="battery", state="open",
                    opened_at=now, last_seen_at=now))
        s.add(Alert(kit_id="K-02", desco_id="default", kind="battery", state="closed",
                    opened_at=now, last_seen_at=now))
    return now


def _ids(client: TestClient, key: str, **params: Any) -> list[str]:
    """Every kit of the list, page after page (3 a page)."""
    got: list[str] = []
    cursor = None
    while True:
        q = {**params, "limit": 3, **({"cursor": cursor} if cursor else {})}
        r = client.get("/v1/kits", params=q, headers=Keys.auth(key))
        assert r.status_code == 200, r.text
        page = r.json()
        got += [k["kit_id"] for k in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            return got
        assert len(page["items"]) == 3


def test_filters_search_sorting_and_pages(client: TestClient, rt: Runtime, keys: Keys) -> None:
    _fleet(client, rt, keys)
    ops = keys.operator
    every = [f"K-{i:02d}" for i in range(KITS)]
    assert _ids(client, ops) == every
    assert _ids(client, ops, desc=True) == every[::-1]
    assert _ids(client, ops, desco_id="north") == every[8:]
    assert _ids(client, ops, region="Kara") == every[0::2]
    assert _ids(client, ops, state="owned") == ["K-07"]
    assert _ids(client, ops, state="locked") == every[0::2]
    assert _ids(client, ops, state="unlocked") == ["K-01", "K-03", "K-05", "K-09", "K-11"]
    assert _ids(client, ops, online=True) == every[0::3]
    # credit ended at least 2 days ago: credit_until = now + (3 - i) days, K-07 owned
    assert _ids(client, ops, overdue_days=2) == ["K-05", "K-08", "K-09", "K-10", "K-11"]
    assert _ids(client, ops, open_alerts=True) == ["K-04"]
    assert _ids(client, ops, region="Kara", online=True, state="locked") == ["K-00", "K-06"]
    # by credit end: no credit at all first, then the end furthest in the past
    by_credit = ["K-06", *[f"K-{i:02d}" for i in range(11, -1, -1) if i != 6]]
    assert _ids(client, ops, sort="credit_until") == by_credit
    assert _ids(client, ops, sort="credit_until", desc=True) == by_credit[::-1]
    assert _ids(client, ops, sort="credit_until", region="Kara") == [
        k for k in by_credit if int(k[2:]) % 2 == 0]
    assert client.get("/v1/kits", params={"sort": "last_seen"},  # not an order it offers
                      headers=Keys.auth(ops)).status_code == 422

    # search: kit id, account number, phone in any Togo form
    assert _ids(client, ops, q="K-03") == ["K-03"]
    assert _ids(client, ops, q="+228 90 00 02 10") == ["K-10"]
    assert _ids(client, ops, q="90000204", region="Savanes") == []
    assert _ids(client, ops, q="nobody") == []
    # a DESCO's key sees its own kits only, whatever it asks
    north = keys.north_operator
    assert _ids(client, north) == every[8:]
    assert _ids(client, north, desco_id="default") == every[8:]
    assert _ids(client, north, q="90000203") == []
    assert _ids(client, north, q="K-10") == ["K-10"]


def test_list_refusals_have_codes(client: TestClient, rt: Runtime, keys: Keys) -> None:
    _fleet(client, rt, keys)
    auth = Keys.auth(keys.operator)
    page = client.get("/v1/kits", params={"limit": 2, "sort": "credit_until"},
                      headers=auth).json()
    other = client.get("/v1/kits", params={"cursor": page["next_cursor"]}, headers=auth)
    assert other.status_code == 422 and other.json()["code"] == "cursor_invalid"
    junk = client.get("/v1/kits", params={"cursor": "not-a-cursor"}, headers=auth)
    assert junk.status_code == 422 and junk.json()["code"] == "cursor_invalid"
    assert client.get("/v1/kits", params={"state": "stolen"}, headers=auth).status_code == 422


def _csv(client: TestClient, key: str, kind: str, **params: str) -> list[dict[str, str]]:
    r = client.get(f"/v1/exports/{kind}.csv", params=params, headers=Keys.auth(key))
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/csv")
    return list(csv.DictReader(io.StringIO(r.text)))


def test_exports_with_chosen_columns_per_desco(client: TestClient, rt: Runtime,
                                               keys: Keys) -> None:
    _fleet(client, rt, keys)
    rows = _csv(client, keys.operator, "kits", columns="kit_id,region,customer_phone")
    assert len(rows) == KITS and list(rows[0]) == ["kit_id", "region", "customer_phone"]
    assert rows[3] == {"kit_id": "K-03", "region": "Savanes", "customer_phone": "+22890000203"}
    north = _csv(client, keys.north_operator, "kits", desco_id="default")
    assert [r["kit_id"] for r in north] == [f"K-{i:02d}" for i in range(8, KITS)]
    assert "locked" in north[0] and "customer_phone" not in north[0]  # the default columns
    bad = client.get("/v1/exports/kits.csv", params={"columns": "kit_id,secret_enc"},
                     headers=Keys.auth(keys.operator))
    assert bad.status_code == 422 and bad.json()["code"] == "columns_unknown"
    assert "secret_enc" in bad.json()["detail"]

    client.post("/v1/kits/K-01/unlock", json={"days": 2, "reason": "pluie"},
                headers=Keys.auth(keys.support))
    commands = _csv(client, keys.operator, "commands", columns="kit_id,action,origin")
    assert {"kit_id": "K-01", "action": "unlock", "origin": "support"} in commands
    assert client.get("/v1/exports/payments.csv",
                      headers=Keys.auth(keys.operator)).status_code == 403
    assert _csv(client, keys.finance, "payments") == []


def test_exports_stream_a_few_rows_at_a_time(
    client: TestClient, rt: Runtime, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fleet(client, rt, keys)
    monkeypatch.setattr(exports, "ROWS_PER_FETCH", 5)
    chunks = exports.stream_csv(rt.db, Actor("ops", "operator"), "kits",
                                exports.columns_for("kits", "kit_id"))
    # the header leaves before the query runs; then the rows, one fetch at a time
    assert next(chunks) == b"kit_id\r\n"
    sizes = [c.count(b"\r\n") for c in chunks]
    assert sizes == [5, 5, 2]
