"""The fleet's customers, who only ever talk to the control API: they pay
(``POST /v1/payments/intents``, which drives the payment simulator behind it), and keypad
kits' customers get their OpenPAYGO codes and hand them to their kit to type.

Keypad kits are flagged keypad-only through the API at start and type the activation code
support issues; after each payment their customer reads the code as a customer would:
from the SMS the control service's file notifier wrote, or as support reads it out from
``GET /v1/kits/{id}/tokens``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from cizo.clock import Clock
from firmware_sim.clocks import clock_speed, sleep_or_stop
from firmware_sim.driven_kit import TICK_REAL_S, DrivenKit
from firmware_sim.keypad import token_in_text

log = logging.getLogger(__name__)

MOMO = "MTN"  # the network name of payments made by MTN MoMo request-to-pay
PAYGATE_INTENTS = "/v1/payments/intents"
MOMO_INTENTS = "/v1/payments/momo/intents"
CODES_POLL_REAL_S = 0.25  # how often the customers' SMS inbox / support is looked at
SUPPORT_WAIT_REAL_S = 30.0  # after paying, a keypad customer asks support this long


@dataclass
class PaymentOptions:
    """The control API the customers pay through (and support answers keypad customers on)."""

    api_url: str
    api_key: str  # finance/admin: payment intents
    concurrency: int = 8
    support_key: str | None = None  # support/admin: keypad flag and codes (None: api_key)
    outbox: Path | None = None  # the control service's SMS file (keypad source "receipt")
    momo_share: float = 0.0  # share of payments made by MTN MoMo request-to-pay (else PayGate)
    retries: int = 0  # a request with no answer or a 5xx is tried again this many times
    retry_wait_s: float = 1.0  # real seconds between tries


# Shorter than uvicorn's 5 s keep-alive: a pooled connection the server is closing at
# that moment would fail a POST with ReadError, and a payment is not retried blindly.
KEEPALIVE_EXPIRY_S = 2.0


def _api_client(opts: PaymentOptions, key: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=opts.api_url, timeout=30,
                             limits=httpx.Limits(keepalive_expiry=KEEPALIVE_EXPIRY_S),
                             headers={"Authorization": f"Bearer {key}"})


def _support_client(opts: PaymentOptions) -> httpx.AsyncClient:
    return _api_client(opts, opts.support_key or opts.api_key)


class PayingCustomers:
    """Every customer's payments, walked in time order and paid through the control API."""

    def __init__(self, opts: PaymentOptions, kits: list[DrivenKit], clock: Clock) -> None:
        self.opts = opts
        self.kits = kits
        self.by_id = {k.kit_id: k for k in kits}
        self.clock = clock
        self.made = 0
        self.failed = 0
        self.paid_at: dict[str, list[float]] = {}  # kit -> time.monotonic() of each payment

    async def run(self, stop: asyncio.Event) -> None:
        queue = sorted((p.at, k.kit_id, p.amount_fcfa, k.plan.phone, self._network(k))
                       for k in self.kits for p in k.plan.payments)
        sem = asyncio.Semaphore(self.opts.concurrency)
        pending: set[asyncio.Task[None]] = set()
        async with _api_client(self.opts, self.opts.api_key) as http:
            for at, kit_id, amount, phone, network in queue:
                if not await self._wait_until(at, stop):
                    break
                task = asyncio.create_task(
                    self._pay(http, sem, kit_id, amount, phone, network))
                pending.add(task)
                task.add_done_callback(pending.discard)
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)

    def _network(self, kit: DrivenKit) -> str:
        """The wallet the customer pays from: MTN MoMo for ``momo_share`` of payments (a
        draw only when that share is set, so other scenarios keep their draws)."""
        if self.opts.momo_share and kit.rng.random() < self.opts.momo_share:
            return MOMO
        return str(kit.rng.choice(["TMONEY", "FLOOZ"]))

    async def _wait_until(self, at: float, stop: asyncio.Event) -> bool:
        """Wait for simulated time ``at``; False if the run stopped first."""
        while self.clock.now() < at:
            if await sleep_or_stop(stop, min(
                    TICK_REAL_S, (at - self.clock.now()) / clock_speed(self.clock))):
                break
        return not stop.is_set()

    async def _pay(self, http: httpx.AsyncClient, sem: asyncio.Semaphore, kit_id: str,
                   amount: int, phone: str, network: str) -> None:
        body: dict[str, Any] = {"kit_id": kit_id, "amount_fcfa": amount, "phone": phone}
        if network == MOMO:
            # no Idempotency-Key on this endpoint: retried only when asked (opts.retries)
            path, headers, tries = MOMO_INTENTS, {}, self.opts.retries + 1
        else:
            # one key for every try: the API replays the first answer to a retry
            # (control/api/idempotency.py), so an answer lost with its connection is never
            # paid twice, and one more try is always safe
            body["network"], path = network, PAYGATE_INTENTS
            headers = {"Idempotency-Key": uuid.uuid4().hex}
            tries = max(self.opts.retries, 1) + 1
        async with sem:
            started = time.monotonic()
            for attempt in range(tries):
                if attempt:
                    await asyncio.sleep(self.opts.retry_wait_s)
                try:
                    r = await http.post(path, json=body, headers=headers)
                except httpx.HTTPError as exc:
                    error = repr(exc)
                    continue
                # 409 under a key: the first try is still being answered; ask again
                if r.status_code < 500 and not (headers and r.status_code == 409):
                    break
                error = f"HTTP {r.status_code}"
            else:
                self.failed += 1
                log.warning("payment for kit %s failed: %s", kit_id, error,
                            extra={"kit_id": kit_id})
                return
        if r.status_code == 201:
            self.made += 1
            self.paid_at.setdefault(kit_id, []).append(started)
            kit = self.by_id.get(kit_id)
            if kit is not None and kit.keypad is not None:
                kit.support_until = time.monotonic() + SUPPORT_WAIT_REAL_S
        else:
            self.failed += 1
            log.warning("payment for kit %s refused: HTTP %d %s", kit_id,
                        r.status_code, r.text[:200], extra={"kit_id": kit_id})


def restore_keypad(kit: DrivenKit, issued: list[dict[str, Any]], provisioned: list[float]
                   ) -> None:
    """Give the kit's keypad the state the server's token chain assumes: the newest code's
    chain and count if codes were issued before (a fleet run again: the kit's flash kept
    them), else its anchor at the provisioning time (a real kit has it written at the
    factory)."""
    pad = kit.keypad
    assert pad is not None
    if issued:
        newest = issued[0]
        log.warning("kit %s already has %d codes: its keypad resumes from them",
                    kit.kit_id, newest["count"], extra={"kit_id": kit.kit_id})
        pad.count = kit.token_count_seen = int(newest["count"])
        if newest["chain_until"] is None:
            kit.firmware.owned, kit.firmware.locked = True, False
            kit.firmware.credit_until = None
        else:
            pad.chain_until = kit.firmware.credit_until = int(newest["chain_until"])
            kit.firmware.locked = pad.chain_until <= kit.firmware.clock.now()
    elif provisioned:
        pad.chain_until = int(provisioned[-1])
    else:
        raise RuntimeError(f"kit {kit.kit_id}: no provisioning in its audit")


class KeypadCustomers:
    """The customers (and the installer) of the keypad kits."""

    def __init__(self, kits: list[DrivenKit], opts: PaymentOptions | None, source: str
                 ) -> None:
        self.kits = kits
        self.by_id = {k.kit_id: k for k in kits}
        self.opts = opts
        self.source = source

    async def setup(self) -> None:
        """Flag every keypad kit keypad-only (``POST /v1/kits/{id}/keypad``), restore its
        keypad (``restore_keypad``), and have a new kit that already has credit type the
        activation code support issues (the installer does, at the customer's home); one
        without credit starts locked and needs none (a SET_TIME code for "locked" would put
        the chain on the kit's own midnight, a day off when clocks straddle it)."""
        opts = self.opts
        if opts is None:
            log.warning("%d keypad kits but no control API: they will get no codes",
                        len(self.kits))
            return
        sem = asyncio.Semaphore(opts.concurrency)
        async with _support_client(opts) as http:
            await asyncio.gather(*(self._install(http, sem, k) for k in self.kits))
        log.info("%d keypad kits flagged keypad-only", len(self.kits))

    async def _install(self, http: httpx.AsyncClient, sem: asyncio.Semaphore,
                       kit: DrivenKit) -> None:
        async with sem:
            r = await http.post(f"/v1/kits/{kit.kit_id}/keypad", json={
                "keypad_only": True, "reason": "simulated keypad kit"})
            r.raise_for_status()
            account = r.json()["after"]
            r = await http.get(f"/v1/kits/{kit.kit_id}/tokens", params={"limit": 1})
            r.raise_for_status()
            issued = r.json()["items"]
            r = await http.get(f"/v1/kits/{kit.kit_id}/audit", params={"limit": 500})
            r.raise_for_status()
        made = [e["at"] for e in r.json()["items"] if e["action"] == "kit.provision"]
        restore_keypad(kit, issued, made)
        until = account.get("credit_until")
        lapsed = until is None or until <= kit.firmware.clock.now()
        if issued or (lapsed and not account.get("owned")):
            return  # its codes hold its credit, or it starts locked on its anchor
        async with sem:
            r = await http.post(f"/v1/kits/{kit.kit_id}/tokens", json={
                "reason": "installation: activation code", "send_sms": False})
            r.raise_for_status()
        tok = r.json()
        kit.token_count_seen = max(kit.token_count_seen, int(tok["count"]))
        kit.type_code(str(tok["token"]))

    async def read_codes(self, stop: asyncio.Event) -> None:
        """Hand each keypad kit's customer the codes the control service issued."""
        opts = self.opts
        assert opts is not None
        if self.source == "receipt" and opts.outbox is None:
            log.warning("keypad source 'receipt' but no SMS outbox file given: "
                        "keypad kits will get no codes after activation")
            return
        offset = opts.outbox.stat().st_size if opts.outbox is not None \
            and opts.outbox.exists() else 0
        async with _support_client(opts) as http:
            while not await sleep_or_stop(stop, CODES_POLL_REAL_S):
                if self.source == "receipt":
                    assert opts.outbox is not None
                    offset = self.read_outbox(opts.outbox, offset)
                else:
                    await self.ask_support(http, opts.concurrency)

    def read_outbox(self, path: Path, offset: int) -> int:
        """New SMS lines since ``offset`` (a partly written last line waits for next time)."""
        if not path.exists():
            return 0
        with path.open("rb") as fh:
            fh.seek(0, 2)
            if fh.tell() < offset:
                offset = 0  # the file was replaced
            fh.seek(offset)
            data = fh.read()
        end = data.rfind(b"\n") + 1
        for line in data[:end].splitlines():
            try:
                msg = json.loads(line)
            except ValueError:
                log.warning("unreadable SMS outbox line skipped: %r", line[:80])
                continue
            kit = self.by_id.get(str(msg.get("kit_id")))
            if kit is None:
                continue  # another kit's SMS, or one without a keypad
            code = token_in_text(str(msg.get("text", "")))
            if code is not None:
                kit.receive_code(code)
        return offset + end

    async def ask_support(self, http: httpx.AsyncClient, concurrency: int) -> None:
        """Customers who paid lately call support, who reads out the codes issued since."""
        now = time.monotonic()
        waiting = [k for k in self.kits if k.support_until > now]
        sem = asyncio.Semaphore(concurrency)
        await asyncio.gather(*(self._codes_from_support(http, sem, k) for k in waiting))

    async def _codes_from_support(self, http: httpx.AsyncClient, sem: asyncio.Semaphore,
                                  kit: DrivenKit) -> None:
        async with sem:
            try:
                r = await http.get(f"/v1/kits/{kit.kit_id}/tokens", params={"limit": 20})
                r.raise_for_status()
            except httpx.HTTPError as exc:
                log.warning("support could not list kit %s's codes: %r", kit.kit_id, exc,
                            extra={"kit_id": kit.kit_id})
                return
        fresh = sorted((t for t in r.json()["items"] if t["count"] > kit.token_count_seen),
                       key=lambda t: int(t["count"]))
        for t in fresh:
            kit.token_count_seen = int(t["count"])
            kit.receive_code(str(t["token"]))
