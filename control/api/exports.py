"""/v1/exports: kits, payments and commands as CSV with chosen columns, streamed."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse

from control.api.auth import FinanceKey, ReaderKey, RuntimeDep
from control.api.schemas import Problem
from control.fleet import exports
from control.ledger.accounts import Actor
from control.runtime import Runtime

router = APIRouter(prefix="/v1/exports", tags=["exports"])

_responses: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/csv": {"schema": {"type": "string"}}},
          "description": "CSV, header first"},
    401: {"model": Problem}, 403: {"model": Problem}, 422: {"model": Problem},
}
Columns = Annotated[str | None, Query(max_length=1000,
                                      description="comma-separated; default: the usual ones")]
Desco = Annotated[str | None, Query(max_length=64, description="national keys only")]


def _csv(rt: Runtime, actor: Actor, kind: exports.Kind, columns: str | None,
         desco_id: str | None) -> StreamingResponse:
    names = exports.columns_for(kind, columns)  # refused before the first byte is sent
    return StreamingResponse(
        exports.stream_csv(rt.db, actor, kind, names, desco_id), media_type="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{kind}.csv"'})


@router.get("/kits.csv", response_class=StreamingResponse, responses=_responses,
            summary="Kits and their accounts as CSV")
def kits_csv(rt: RuntimeDep, actor: ReaderKey, columns: Columns = None,
             desco_id: Desco = None) -> StreamingResponse:
    return _csv(rt, actor, "kits", columns, desco_id)


@router.get("/payments.csv", response_class=StreamingResponse, responses=_responses,
            summary="Payments as CSV (finance)")
def payments_csv(rt: RuntimeDep, actor: FinanceKey, columns: Columns = None,
                 desco_id: Desco = None) -> StreamingResponse:
    return _csv(rt, actor, "payments", columns, desco_id)


@router.get("/commands.csv", response_class=StreamingResponse, responses=_responses,
            summary="Commands sent to kits as CSV")
def commands_csv(rt: RuntimeDep, actor: ReaderKey, columns: Columns = None,
                 desco_id: Desco = None) -> StreamingResponse:
    return _csv(rt, actor, "commands", columns, desco_id)
