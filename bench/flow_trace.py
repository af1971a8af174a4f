"""How far a PayGate callback travels through our own code before its command is published.

Not a timing: a reading aid. One PayGate intent is created and paid at the PayGate simulator,
then ``handle_paygate_callback`` runs with ``sys.setprofile`` watching every call into a
function written in our packages (cizo, control; code that Python generates, such as a
dataclass's ``__init__``, does not count). Three figures: ``modules`` (how many different
modules one callback crosses on its way to ``publish_command``), ``calls_across`` (calls from
one of our modules into another) and ``comebacks`` (calls into a module that is already
further down the call stack: the flow leaves a module and comes back into it before it is
done, which is what makes a reader jump back and forth). Measured for an intent of ours and,
under ``matched_by_phone``, for a payment the customer started from the phone (no intent:
matched by the payer's phone). The last line is JSON; ``calls`` lists the cross-module calls
in order. SQLite in a temporary directory; nothing to set up.

It imports the tree it runs from, so the same script measures two trees for an A/B:
``PYTHONPATH=<other tree> python bench/flow_trace.py``.
"""

from __future__ import annotations

import importlib
import json
import sys
import tempfile
from pathlib import Path
from types import FrameType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(1, str(ROOT))

OURS = ("control", "cizo")


def _first(*names: str) -> Any:
    """The first of these modules that exists in this tree (layouts differ between trees)."""
    for name in names:
        try:
            return importlib.import_module(name)
        except ModuleNotFoundError:
            continue
    raise ModuleNotFoundError(names[0])


class Recorder:
    def __init__(self) -> None:
        self.sent: list[str] = []

    def publish_command(self, kit_id: str, payload: bytes, version: int = 1) -> bool:
        self.sent.append(kit_id)
        return True


def _ours(frame: FrameType) -> str | None:
    """The module of a frame running a function written in our packages, else None."""
    name = str(frame.f_globals.get("__name__", ""))
    if name.split(".")[0] not in OURS or frame.f_code.co_filename.startswith("<"):
        return None
    return name


def trace(fn: Any, *args: Any) -> tuple[Any, dict[str, Any]]:
    """Run ``fn`` and describe the cross-module calls it makes in our code."""
    calls: list[str] = []
    comebacks = 0
    stack: list[str] = []  # our modules on the call stack, one entry per our frame

    def watch(frame: FrameType, event: str, _arg: Any) -> None:
        nonlocal comebacks
        if event not in ("call", "return"):
            return
        where = _ours(frame)
        if where is None:
            return
        if event == "return":
            if stack:
                stack.pop()
            return
        caller = stack[-1] if stack else None
        if caller is not None and caller != where:
            calls.append(f"{caller} -> {where}")
            if where in stack:
                comebacks += 1
        stack.append(where)

    sys.setprofile(watch)
    try:
        result = fn(*args)
    finally:
        sys.setprofile(None)
    modules = {c.split(" -> ")[1] for c in calls} | {c.split(" -> ")[0] for c in calls}
    return result, {"modules": len(modules), "calls_across": len(calls),
                    "comebacks": comebacks, "calls": calls}


def main() -> int:
    settings_mod = importlib.import_module("cizo.settings")
    runtime_mod = importlib.import_module("control.runtime")
    db_mod = _first("control.ledger.db", "control.db")
    secrets_mod = _first("control.ledger.secrets", "control.security")
    accounts = _first("control.ledger.accounts", "control.ledger")
    credit = _first("control.ledger.credit", "control.credit")
    flows = _first("control.payments.providers.paygate", "control.payments")
    sim = importlib.import_module("payment_sim.paygate")
    token = "flow-trace-token"
    handle = sim.run_in_thread(sim.PayGateSimConfig(auth_token=token, callback_url=None,
                                                    outcome="never", seed=1))
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/ledger.db"
        db_mod.migrate(url)
        settings = settings_mod.Settings(
            database_url=url, secret_key=secrets_mod.generate_secret_key(),
            paygate_url=handle.url, paygate_auth_token=token, notify_backend="log",
            data_dir=Path(tmp))
        rt = runtime_mod.Runtime.build(settings)
        rt.service.publisher = Recorder()
        with rt.db.session() as s:
            accounts.provision_kit(
                s, kit_id="TRACE1", desco_id="default", phone_e164="+22890000001",
                plan=credit.Plan(0, 100, 50_000), box=rt.box, now=rt.clock.now(),
                actor=accounts.SYSTEM)
        actor = accounts.Actor(name="bench", role="finance")
        intent = flows.create_intent(rt, actor=actor, kit_id="TRACE1", amount_fcfa=700,
                                     phone="+22890000001", network="FLOOZ")
        handle.sim.by_identifier[intent.provider_ref].state = sim.PAID
        warm = flows.create_intent(rt, actor=actor, kit_id="TRACE1", amount_fcfa=100,
                                   phone="+22890000001", network="FLOOZ")
        handle.sim.by_identifier[warm.provider_ref].state = sim.PAID
        flows.handle_paygate_callback(rt, {"identifier": warm.provider_ref})  # imports, caches
        outcome, figures = trace(flows.handle_paygate_callback, rt,
                                 {"identifier": intent.provider_ref})
        # a payment the customer started from the phone: no intent of ours, matched by phone
        handle.sim.create({"auth_token": token, "phone_number": "90000001", "amount": 700,
                           "description": "from the phone", "identifier": "PHONE-1",
                           "network": "FLOOZ"})
        handle.sim.by_identifier["PHONE-1"].state = sim.PAID
        matched, by_phone = trace(flows.handle_paygate_callback, rt, {"identifier": "PHONE-1"})
        rt.db.dispose()
    handle.stop(timeout_s=10)
    figures = {"credited": bool(outcome.credited and matched.credited), **figures,
               "matched_by_phone": by_phone}
    print(json.dumps(figures))
    return 0 if figures["credited"] else 1


if __name__ == "__main__":
    sys.exit(main())
