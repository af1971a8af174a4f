"""/v1/regulator/national: the regulator's national view across every DESCO.

National aggregates only (control.fleet.national): no kit, account, payment or phone.
Each DESCO's repayment health is there, so a DESCO's own staff do not read it: the
regulator and admin keys only.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from control.api.auth import RegulatorKey, RuntimeDep
from control.fleet import jobs, national, publication, summary

router = APIRouter(tags=["regulator"])


@router.get("/v1/regulator/national",
            summary="National figures per DESCO and region, and the monthly trend")
def national_figures(rt: RuntimeDep, actor: RegulatorKey) -> dict[str, Any]:
    # a DESCO-scoped admin key sees its own DESCO, never the others' repayment health
    rows = [r for r in summary.current_rows(rt.db, rt.clock.now())
            if actor.desco_id in (None, r.desco_id)]
    published = publication.published_rows(rt.settings, national.TREND_MONTHS)
    return national.national_view(
        rows, published, jobs.REGIONS, rt.settings.opendata_min_households, rt.clock.now(),
        min((r.computed_at for r in rows), default=None))
