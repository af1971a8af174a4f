"""Everything one control-service process holds, built once from Settings.

The runtime is what the payment flows, the support actions and the API routes are given:
the ledger database, the secret box, the clock, the command service and the gateways to the
outside (PayGate, MoMo, SMS). It also holds the after-credit hooks the app registers (the
customer's receipt): they belong to this process, not to a module, so two runtimes in one
process (tests, benchmarks) never share them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from cizo.clock import Clock, SystemClock
from cizo.settings import Settings
from control.commands.service import ControlService
from control.gateways.momo import MoMoClient
from control.gateways.paygate import PayGateClient
from control.gateways.sms import Notifier, notifier_for
from control.ledger.db import Database
from control.ledger.events import CreditNotice
from control.ledger.secrets import SecretBox

log = logging.getLogger(__name__)

CreditHook = Callable[["Runtime", CreditNotice], None]


@dataclass
class Runtime:
    settings: Settings
    db: Database
    box: SecretBox
    clock: Clock
    service: ControlService
    paygate: PayGateClient
    notifier: Notifier
    started_at: float = 0.0
    momo: MoMoClient | None = None
    credit_hooks: list[CreditHook] = field(default_factory=list)

    @classmethod
    def build(cls, settings: Settings, clock: Clock | None = None) -> Runtime:
        clock = clock or SystemClock()
        db = Database(settings.database_url, pool_size=settings.db_pool_size,
                      max_overflow=settings.db_max_overflow)
        box = SecretBox(settings.require_secret_key())
        service = ControlService(settings, db, box, clock)
        paygate = PayGateClient(
            settings.paygate_url,
            settings.paygate_auth_token.get_secret_value(),
            timeout_s=settings.paygate_timeout_s,
        )
        momo = MoMoClient(
            settings.momo_url,
            subscription_key=settings.momo_subscription_key.get_secret_value(),
            api_user=settings.momo_api_user,
            api_key=settings.momo_api_key.get_secret_value(),
            target_environment=settings.momo_target_environment,
            timeout_s=settings.momo_timeout_s,
        )
        return cls(settings, db, box, clock, service, paygate, notifier_for(settings),
                   started_at=clock.now(), momo=momo)

    def on_credit(self, hook: CreditHook) -> None:
        """Run ``hook`` after every committed credit or reversal (once per hook)."""
        if hook not in self.credit_hooks:
            self.credit_hooks.append(hook)

    def credited(self, notice: CreditNotice) -> None:
        """Run the after-credit hooks; one that raises is logged and never undoes money."""
        for hook in list(self.credit_hooks):
            try:
                hook(self, notice)
            except Exception:
                log.exception("after-credit hook %s failed", getattr(hook, "__name__", hook),
                              extra={"kit_id": notice.kit_id, "payment_id": notice.payment_id})

    def close(self) -> None:
        self.paygate.close()
        if self.momo is not None:
            self.momo.close()
        self.db.dispose()
