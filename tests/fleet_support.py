"""A simulated fleet against the real control service, for the fleet tests (the keypad
scenario, the month): the PayGate simulator and the control service on the scenario's
accelerated clock, every planned kit provisioned through the API, and the steps of a run's
end (freeze time, let payments settle, wait until kits and accounts agree)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from cizo import services
from cizo.settings import Settings
from control.ledger.secrets import generate_secret_key
from control.main import build_app
from control.payments.callbacks import OPEN
from firmware_sim.clocks import AcceleratedClock
from firmware_sim.customers import PaymentOptions
from firmware_sim.driven_kit import DrivenKit
from firmware_sim.driver import FleetDriver
from firmware_sim.kit import KitIdentity
from firmware_sim.scenario import FleetPlan, PlanSpec
from payment_sim.paygate import PayGateHandle, PayGateSimConfig, run_in_thread
from payment_sim.paygate_wire import PAID, PENDING
from tests.support import ServerThread, wait_until_none_left

log = logging.getLogger(__name__)

HEAL_STEPS = 3  # at the end, at most this many re-send delays pass for the kits to agree


def fleet_control(mosquitto: services.ManagedProcess, tmp_path: Path, clock: AcceleratedClock,
                  *, admin_key: str, paygate_token: str, approve_after_s: float,
                  **settings_extra: Any) -> tuple[PayGateHandle, Settings]:
    """A PayGate simulator on the scenario's clock and the control service's settings for a
    fleet test: SQLite ledger and receipts (``sms.jsonl``) in ``tmp_path``, a 0.2 s sweep,
    a 6 h resend delay (the scenario's clock runs fast). The caller serves
    ``build_app(settings, clock)`` on ``settings.api_port`` and stops the simulator."""
    api_port = services.free_port()
    paygate = run_in_thread(PayGateSimConfig(
        auth_token=paygate_token, approve_after_s=approve_after_s, clock=clock,
        callback_url=f"http://127.0.0.1:{api_port}/v1/payments/paygate"))
    settings = Settings(
        mqtt_port=mosquitto.port, mqtt_client_id=f"control-{uuid.uuid4().hex[:8]}",
        database_url=f"sqlite:///{tmp_path / 'ledger.db'}", api_port=api_port,
        admin_api_key=admin_key, secret_key=generate_secret_key(),
        paygate_auth_token=paygate_token, paygate_url=paygate.url,
        notify_file=tmp_path / "sms.jsonl", sweep_interval_s=0.2,
        command_resend_after_s=6 * 3600, **settings_extra)
    return paygate, settings


def provision_fleet(api: httpx.Client, plan: FleetPlan, plan_spec: PlanSpec
                    ) -> list[KitIdentity]:
    """Each planned kit provisioned through the API; the credentials its firmware uses."""
    identities = []
    for kp in plan.kits:
        r = api.post("/v1/kits", json={"kit_id": kp.kit_id, "phone": kp.phone,
                                       "plan": plan_spec.model_dump(), "kind": kp.kind})
        assert r.status_code == 201, r.text
        c = r.json()
        identities.append(KitIdentity(c["kit_id"], c["mqtt_username"], c["mqtt_password"],
                                      c["command_secret"]))
    return identities


def keypad_problems(kits: list[DrivenKit], accounts: dict[str, dict[str, Any]],
                    tokens: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Kits not (yet) where their account and their codes put them. A token carries whole
    days on the kit's chain (docs/commands.md), so a keypad kit ends on the chain end the API
    shows, within half a day of the ledger's; one that also gets MQTT holds one of the two
    ends, never their sum. Every code issued has been typed."""
    wrong = []
    for k in kits:
        fw, acct, toks = k.firmware, accounts[k.kit_id], tokens.get(k.kit_id, [])
        until = acct["credit_until"]
        chain = toks[0]["chain_until"] if toks else None
        if acct["owned"]:
            ok = fw.owned and not fw.locked and k.counters.tokens_entered == len(toks)
        elif k.plan.keypad is None:
            ok = fw.credit_until == until
        elif k.plan.keypad == "only":
            ok = fw.credit_until == chain and k.counters.tokens_entered == len(toks)
        else:
            ok = fw.credit_until in (until, chain) and k.counters.tokens_entered == len(toks)
        if chain is not None and until is not None:
            ok = ok and abs(chain - until) <= 43_200
        ok = ok and (acct["owned"] or fw.locked == (fw.credit_until is None
                                                     or fw.credit_until <= fw.clock.now()))
        if not ok:
            wrong.append(f"{k.kit_id} ({k.plan.keypad}): kit credit_until={fw.credit_until} "
                         f"locked={fw.locked}, account {until}, chain {chain}, "
                         f"{len(toks)} codes issued, {k.counters}")
    return wrong


def kit_mismatches(kits: list[DrivenKit], accounts: dict[str, dict[str, Any]],
                   tokens: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Kits whose firmware does not hold what their account says (on the kit's clock); keypad
    kits hold it to the day grid of their codes (tests/fleet_support.keypad_problems)."""
    wrong = keypad_problems([k for k in kits if k.keypad is not None], accounts, tokens)
    for k in kits:
        if k.keypad is not None:
            continue
        acct, fw = accounts[k.kit_id], k.firmware
        now = fw.clock.now()
        if acct["owned"]:
            ok = fw.owned and not fw.locked
        elif acct["credit_until"] is not None and acct["credit_until"] > now:
            ok = not fw.locked and fw.credit_until == acct["credit_until"]
        else:
            ok = fw.locked
        if not ok:
            wrong.append(f"{k.kit_id}: account {acct} firmware locked={fw.locked} "
                         f"owned={fw.owned} credit_until={fw.credit_until}")
    return wrong


@dataclass
class ControlledFleet:
    """A provisioned fleet, its control service (``api``: an admin client) and PayGate."""

    plan: FleetPlan
    clock: AcceleratedClock
    broker_port: int
    paygate: PayGateHandle
    settings: Settings
    url: str
    api: httpx.Client
    admin_key: str
    identities: list[KitIdentity]
    resends_awaited: int = 0  # times ``converge`` let the re-send delay pass

    def accounts(self) -> dict[str, dict[str, Any]]:
        """The fleet's accounts as the API shows them, by kit id."""
        ids = {i.kit_id for i in self.identities}
        r = self.api.get("/v1/kits", params={"limit": 500})
        r.raise_for_status()
        return {k["kit_id"]: k for k in r.json()["items"] if k["kit_id"] in ids}

    def codes(self, kits: list[DrivenKit]) -> dict[str, list[dict[str, Any]]]:
        """The codes issued for each of ``kits``, newest first."""
        return {k.kit_id: self.api.get(f"/v1/kits/{k.kit_id}/tokens",
                                       params={"limit": 500}).json()["items"]
                for k in kits}

    def driver(self, *, ramp_s: float = 0.0, outbox: Path | None = None) -> FleetDriver:
        """The fleet's kits and customers, paying through the control API; the kits stay
        up after the scenario's end, for the check."""
        driver = FleetDriver(self.plan, self.clock, host="127.0.0.1", port=self.broker_port,
                             identities=self.identities, ramp_s=ramp_s,
                             payments=PaymentOptions(self.url, self.admin_key, outbox=outbox))
        driver.sim_end = None
        return driver

    async def run_to(self, end: float, poll_s: float) -> None:
        """Let simulated time run until ``end``, then freeze it so states can be compared."""
        self.clock.resume()
        while self.clock.now() < end:
            await asyncio.sleep(poll_s)
        self.clock.pause()

    def unsettled_payments(self) -> list[str]:
        """PayGate transactions not settled yet: still pending, or paid and neither
        acknowledged by the control service's callback endpoint nor found by its poll job
        (PayGate gives a callback up after a few tries; the ledger then learns of the
        payment by asking PayGate)."""
        left = []
        for t in list(self.paygate.sim.by_ref.values()):
            if t.state == PENDING:
                left.append(f"{t.identifier} pending at PayGate")
            elif t.state == PAID and not any(c["ok"] for c in t.callbacks):
                r = self.api.get(f"/v1/payments/{t.identifier}")
                if r.status_code != 200 or r.json()["status"] in OPEN:
                    left.append(f"{t.identifier} paid, callback not acknowledged, "
                                f"ledger {r.status_code} {r.text[:80]}")
        return left

    async def settle(self, driver: FleetDriver, stall_s: float) -> None:
        """The last payments made and settled (``unsettled_payments``), then every customer
        types the codes they hold. A loaded machine pays behind the simulated clock: the
        wait lasts while payments keep being answered and fails after ``stall_s`` without
        one."""
        task, payers = driver.pay_task, driver.payers
        assert task is not None and payers is not None
        planned = sum(len(k.plan.payments) for k in driver.kits)

        def unanswered() -> range:
            return range(0 if task.done() else max(1, planned - payers.made - payers.failed))

        await asyncio.to_thread(wait_until_none_left, unanswered, stall_s,
                                "customers' payments answered by the control API")
        await task
        await asyncio.to_thread(wait_until_none_left, self.unsettled_payments, stall_s,
                                "payments settled")
        driver.settle()

    def command_history(self, problems: list[str]) -> str:
        """The commands of the first kits in ``problems`` (each starts with a kit id), as
        the ledger has them: what a failed convergence needs to be understood."""
        out = []
        for kit_id in [p.split(":")[0].split(" ")[0] for p in problems[:3]]:
            items = self.api.get(f"/v1/kits/{kit_id}/commands",
                                 params={"limit": 50}).json().get("items", [])
            out.append(f"{kit_id} commands: " + "; ".join(
                f"seq {c.get('seq')} {c.get('action')} until {c.get('credit_until')} "
                f"{c.get('status')} ({c.get('reason')}) attempts {c.get('attempts')} "
                f"issued {c.get('issued_at')}" for c in items))
        return "\n".join(out)

    async def converge(self, problems: Callable[[], list[str]], stall_s: float, what: str
                       ) -> None:
        """Wait until ``problems()`` is empty, as long as it keeps shrinking; fail with the
        kits still wrong after ``stall_s`` without progress. A command lost on its way (a
        publish or an ack caught in a reconnect on a loaded machine) is repaired by the
        sweep's re-send, ``command_resend_after_s`` of simulated time later, which never
        comes while the clock is frozen for the check: when the wait stalls, that much
        simulated time passes, a few times at most."""
        for step in range(1, HEAL_STEPS + 1):
            try:
                await asyncio.to_thread(wait_until_none_left, problems, stall_s / HEAL_STEPS,
                                        what)
                return
            except AssertionError as exc:
                if step == HEAL_STEPS:
                    raise AssertionError(f"{exc}\n{self.command_history(problems())}") from None
            log.warning("%s: stalled; the clock moves on by the re-send delay", what)
            self.resends_awaited += 1
            await self.run_to(self.clock.now() + self.settings.command_resend_after_s + 60,
                              0.02)


@contextlib.contextmanager
def controlled_fleet(mosquitto: services.ManagedProcess, tmp_path: Path, plan: FleetPlan, *,
                     admin_key: str, paygate_token: str, approve_after_s: float,
                     **settings_extra: Any) -> Iterator[ControlledFleet]:
    """The plan's fleet provisioned on a control service in a thread (``fleet_control``),
    its accelerated clock paused: provisioning takes real time, the scenario starts when
    the caller runs it."""
    sc = plan.scenario
    clock = AcceleratedClock(sc.start_ts, sc.speed)
    clock.pause()
    paygate, settings = fleet_control(mosquitto, tmp_path, clock, admin_key=admin_key,
                                      paygate_token=paygate_token,
                                      approve_after_s=approve_after_s, **settings_extra)
    try:
        with ServerThread(build_app(settings, clock), settings.api_port) as server, \
                httpx.Client(base_url=server.url, timeout=30,
                             headers={"Authorization": f"Bearer {admin_key}"}) as api:
            yield ControlledFleet(plan, clock, mosquitto.port, paygate, settings, server.url,
                                  api, admin_key, provision_fleet(api, plan, sc.plan))
    finally:
        paygate.stop()
