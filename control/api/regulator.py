"""/v1/regulator/national: the regulator's national view across every DESCO.

National aggregates only, read from the published open data (control.fleet.national):
no kit, account, payment or phone.
Each DESCO's repayment health is there, so a DESCO's own staff do not read it: the
regulator and admin keys only.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from control.api.auth import RegulatorKey, RuntimeDep
from control.fleet import jobs, national, publication

router = APIRouter(tags=["regulator"])


@router.get("/v1/regulator/national",
            summary="National figures per DESCO and region, and the monthly trend")
def national_figures(rt: RuntimeDep, actor: RegulatorKey) -> dict[str, Any]:
    # every figure is a published open-data cell; a DESCO-scoped admin key is shown its own
    # DESCO's row, never the others' repayment health
    return national.national_view(
        publication.published_health(rt.settings),
        publication.published_rows(rt.settings, national.TREND_MONTHS), jobs.REGIONS,
        rt.settings.opendata_min_households, actor.desco_id)
