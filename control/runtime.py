"""Everything one control-service process holds, built once from Settings."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from cizo.clock import Clock, SystemClock
from cizo.settings import Settings
from control.commands.service import ControlService
from control.ledger.db import Database
from control.ledger.secrets import SecretBox

if TYPE_CHECKING:
    from control.gateways.momo import MoMoClient
    from control.gateways.paygate import PayGateClient


@dataclass
class Runtime:
    settings: Settings
    db: Database
    box: SecretBox
    clock: Clock
    service: ControlService
    paygate: PayGateClient
    started_at: float = field(default=0.0)
    momo: MoMoClient | None = None  # issue 4: MTN MoMo collections

    @classmethod
    def build(cls, settings: Settings, clock: Clock | None = None) -> Runtime:
        from control.gateways.momo import MoMoClient
        from control.gateways.paygate import PayGateClient

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
        return cls(settings, db, box, clock, service, paygate, started_at=clock.now(),
                   momo=momo)
