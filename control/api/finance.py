"""/v1/suspense, /v1/reconciliation, /v1/settlement, /v1/ledger/check and DESCO webhook
secrets: the finance side of payments (maker-checker on every step that moves money)."""

from __future__ import annotations

import dataclasses
import logging
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, status
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from cizo.i18n import N_
from control.api.auth import AdminKey, FinanceKey, RuntimeDep, require_role
from control.api.errors import ApiError
from control.api.schemas import (
    DecisionIn,
    ImportOut,
    LinkIn,
    LinkOut,
    Problem,
    ProposalOut,
    SecretOut,
    SuspenseOut,
)
from control.ledger import check as accounting
from control.ledger.accounts import Actor
from control.ledger.models import Account, ReconImport, ReconProposal, SuspenseLink
from control.payments import reconcile, settlement, statements, suspense
from control.payments.providers import webhook_secrets

log = logging.getLogger(__name__)

router = APIRouter(tags=["finance"])

SupportOrFinance = Annotated[Actor, Depends(require_role("support", "finance"))]
_errors: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem}, 403: {"model": Problem}, 404: {"model": Problem},
    409: {"model": Problem}, 422: {"model": Problem},
}


def _raise(exc: suspense.SuspenseError) -> ApiError:
    return ApiError(exc.status, "suspense_refused",
                    N_("this step is refused for this payment in suspense"), detail=str(exc))


def _desco_not_found(desco_id: str | None) -> ApiError:
    return ApiError(status.HTTP_404_NOT_FOUND, "desco_not_found",
                    N_("DESCO {desco_id} not found"), desco_id=desco_id)


@router.post("/v1/descos/{desco_id}/webhook-secret", response_model=SecretOut,
             responses=_errors, summary="Create or rotate a DESCO's webhook secret (admin)")
def rotate_webhook_secret(rt: RuntimeDep, actor: AdminKey, desco_id: str) -> SecretOut:
    if actor.desco_id is not None and actor.desco_id != desco_id:
        raise _desco_not_found(desco_id)
    try:
        secret = webhook_secrets.rotate_secret(rt, desco_id, actor=actor)
    except webhook_secrets.UnknownDesco as exc:
        raise _desco_not_found(desco_id) from exc
    return SecretOut(desco_id=desco_id, secret=secret)


# --- suspense ----------------------------------------------------------------------------


def _link_out(link: SuspenseLink, kit_id: str | None, credited: bool = False) -> LinkOut:
    return LinkOut(link_id=link.id, payment_id=link.payment_id, account_id=link.account_id,
                   status=link.status, proposed_by=link.proposed_by,
                   decided_by=link.decided_by, credited=credited, kit_id=kit_id,
                   reason=link.reason, proposed_at=link.proposed_at,
                   decided_at=link.decided_at)


@router.get("/v1/suspense", response_model=list[SuspenseOut], responses=_errors,
            summary="Payments held but not credited, with their link proposals (support, "
                    "finance)")
def list_suspense(rt: RuntimeDep, actor: SupportOrFinance,
                  limit: Annotated[int, Query(ge=1, le=500)] = 100,
                  offset: Annotated[int, Query(ge=0)] = 0) -> list[SuspenseOut]:
    with rt.db.session() as s:
        rows = suspense.list_suspense(s, desco_id=actor.desco_id, limit=limit, offset=offset)
        by_payment: dict[int, list[LinkOut]] = {}
        for link, kit in suspense.links(s, desco_id=actor.desco_id,
                                        payment_ids=[p.id for p in rows], limit=10 * limit):
            by_payment.setdefault(link.payment_id, []).insert(0, _link_out(link, kit))
        return [SuspenseOut(payment_id=p.id, desco_id=p.desco_id, provider=p.provider,
                            provider_ref=p.provider_ref, kind=p.kind, amount_fcfa=p.amount_fcfa,
                            currency=p.currency, reference=p.reference, phone=p.phone,
                            reason=p.reason, hint_account_id=p.account_id,
                            received_at=p.paid_at or p.updated_at,
                            links=by_payment.get(p.id, [])) for p in rows]


@router.get("/v1/suspense/links", response_model=list[LinkOut], responses=_errors,
            summary="Link proposals and decisions, newest first: who proposed, who decided "
                    "(support, finance)")
def list_links(rt: RuntimeDep, actor: SupportOrFinance,
               link_status: Annotated[str | None, Query(alias="status",
                                                        pattern="^(proposed|approved|rejected)$")]
               = None,
               limit: Annotated[int, Query(ge=1, le=500)] = 50) -> list[LinkOut]:
    with rt.db.session() as s:
        return [_link_out(link, kit) for link, kit in
                suspense.links(s, desco_id=actor.desco_id, status=link_status, limit=limit)]


@router.post("/v1/suspense/{payment_id}/links", status_code=status.HTTP_201_CREATED,
             response_model=LinkOut, responses=_errors,
             summary="Propose linking a suspense payment to an account (support)")
def propose_link(rt: RuntimeDep, actor: Annotated[Actor, Depends(require_role("support"))],
                 payment_id: int, body: LinkIn) -> LinkOut:
    try:
        link = suspense.propose_link(rt, payment_id=payment_id, account=body.account,
                                     reason=body.reason, actor=actor)
    except suspense.SuspenseError as exc:
        raise _raise(exc) from exc
    return _link_out(link, None)


def _decide_link(rt: RuntimeDep, actor: Actor, link_id: int, approve: bool,
                 body: DecisionIn) -> LinkOut:
    try:
        link, receipt = suspense.decide_link(rt, link_id=link_id, approve=approve, actor=actor,
                                             reason=body.reason)
    except suspense.SuspenseError as exc:
        raise _raise(exc) from exc
    return _link_out(link, receipt.kit_id if receipt else None,
                     credited=bool(receipt and receipt.credited))


@router.post("/v1/suspense/links/{link_id}/approve", response_model=LinkOut, responses=_errors,
             summary="Approve a proposed link: credits the account now (finance, not the "
                     "proposer)")
def approve_link(rt: RuntimeDep, actor: FinanceKey, link_id: int,
                 body: DecisionIn | None = None) -> LinkOut:
    return _decide_link(rt, actor, link_id, True, body or DecisionIn())


@router.post("/v1/suspense/links/{link_id}/reject", response_model=LinkOut, responses=_errors,
             summary="Reject a proposed link (finance)")
def reject_link(rt: RuntimeDep, actor: FinanceKey, link_id: int,
                body: DecisionIn | None = None) -> LinkOut:
    return _decide_link(rt, actor, link_id, False, body or DecisionIn())


# --- reconciliation ----------------------------------------------------------------------


def _proposal_out(p: ReconProposal, outcome: str | None = None) -> ProposalOut:
    return ProposalOut(proposal_id=p.id, import_id=p.import_id, provider=p.provider,
                       transaction_id=p.transaction_id, day=p.day, amount_fcfa=p.amount_fcfa,
                       status=p.status, proposed_by=p.proposed_by, decided_by=p.decided_by,
                       payment_id=p.payment_id, outcome=outcome)


@router.post("/v1/reconciliation/{provider}/statements", status_code=status.HTTP_201_CREATED,
             response_model=ImportOut, responses={**_errors, 415: {"model": Problem}},
             openapi_extra={"requestBody": {"required": True,
                                            "content": {"text/csv": {"schema": {
                                                "type": "string"}}}}},
             summary="Import a provider's statement (CSV body): report per day, propose "
                     "missing payments (finance)")
async def import_statement(rt: RuntimeDep, actor: FinanceKey, provider: str, request: Request,
                           desco_id: str | None = None, filename: str = "statement.csv"
                           ) -> ImportOut:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype not in ("text/csv", "text/plain", "application/csv"):
        raise ApiError(status.HTTP_415_UNSUPPORTED_MEDIA_TYPE, "statement_media_type",
                       N_("send the statement as Content-Type: text/csv"))
    desco = actor.desco_id or desco_id or rt.settings.default_desco_id
    if actor.desco_id is not None and desco_id not in (None, actor.desco_id):
        raise _desco_not_found(desco_id)
    try:
        text = (await request.body()).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(status.HTTP_422_UNPROCESSABLE_CONTENT, "statement_not_utf8",
                       N_("the statement is not UTF-8 text")) from exc
    try:
        imp = await run_in_threadpool(lambda: reconcile.import_statement(
            rt, provider=provider, desco_id=desco, filename=filename, text=text, actor=actor))
    except statements.StatementError as exc:
        raise ApiError(status.HTTP_422_UNPROCESSABLE_CONTENT, "statement_invalid",
                       N_("the statement cannot be read"), detail=str(exc)) from exc
    return ImportOut(import_id=imp.id, provider=imp.provider, desco_id=imp.desco_id,
                     imported_by=imp.imported_by, report=imp.report)


@router.get("/v1/reconciliation/imports/{import_id}", response_model=ImportOut,
            responses=_errors, summary="A statement import's report (finance)")
def get_import(rt: RuntimeDep, actor: FinanceKey, import_id: int) -> ImportOut:
    with rt.db.session() as s:
        imp = s.get(ReconImport, import_id)
        if imp is None or (actor.desco_id is not None and imp.desco_id != actor.desco_id):
            raise ApiError(status.HTTP_404_NOT_FOUND, "import_not_found",
                           N_("import not found"))
        return ImportOut(import_id=imp.id, provider=imp.provider, desco_id=imp.desco_id,
                         imported_by=imp.imported_by, report=imp.report)


@router.post("/v1/reconciliation/proposals/{proposal_id}/approve", response_model=ProposalOut,
             responses=_errors,
             summary="Approve a statement proposal: records and credits it (a second finance "
                     "user)")
def approve_proposal(rt: RuntimeDep, actor: FinanceKey, proposal_id: int,
                     body: DecisionIn | None = None) -> ProposalOut:
    try:
        prop, receipt = reconcile.decide_proposal(rt, proposal_id=proposal_id, approve=True,
                                                  actor=actor, reason=(body or DecisionIn()).reason)
    except suspense.SuspenseError as exc:
        raise _raise(exc) from exc
    return _proposal_out(prop, receipt.outcome if receipt else None)


@router.post("/v1/reconciliation/proposals/{proposal_id}/reject", response_model=ProposalOut,
             responses=_errors, summary="Reject a statement proposal (finance)")
def reject_proposal(rt: RuntimeDep, actor: FinanceKey, proposal_id: int,
                    body: DecisionIn | None = None) -> ProposalOut:
    try:
        prop, _ = reconcile.decide_proposal(rt, proposal_id=proposal_id, approve=False,
                                            actor=actor, reason=(body or DecisionIn()).reason)
    except suspense.SuspenseError as exc:
        raise _raise(exc) from exc
    return _proposal_out(prop)


# --- settlement and ledger proof ---------------------------------------------------------


def _today(rt: RuntimeDep) -> str:
    return datetime.fromtimestamp(rt.clock.now(), UTC).date().isoformat()


@router.get("/v1/settlement", responses=_errors,
            summary="Daily settlement per DESCO and provider, checked against the ledger")
def settlement_report(rt: RuntimeDep, actor: FinanceKey,
                      first_day: Annotated[str | None, Query(pattern=r"^\d{4}-\d{2}-\d{2}$")]
                      = None,
                      last_day: Annotated[str | None, Query(pattern=r"^\d{4}-\d{2}-\d{2}$")]
                      = None,
                      provider: str | None = None, desco_id: str | None = None
                      ) -> dict[str, Any]:
    first = first_day or _today(rt)
    desco = actor.desco_id or desco_id
    try:
        with rt.db.session() as s:
            return settlement.report(s, first_day=first, last_day=last_day or first,
                                     desco_id=desco, provider=provider)
    except ValueError as exc:  # e.g. 2026-02-31 matches the pattern but is no day
        raise ApiError(status.HTTP_422_UNPROCESSABLE_CONTENT, "date_invalid",
                       N_("a date in the request is not a real day"), detail=str(exc)) from exc


@router.get("/v1/ledger/check", responses=_errors,
            summary="Re-derive every balance from the append-only ledger (finance)")
def ledger_check(rt: RuntimeDep, actor: FinanceKey) -> dict[str, Any]:
    with rt.db.session() as s:
        ids = None if actor.desco_id is None else list(s.scalars(
            select(Account.id).where(Account.desco_id == actor.desco_id)))
        problems = accounting.check_ledger(s, account_ids=ids)
    return {"ok": not problems, "problems": [dataclasses.asdict(p) for p in problems[:200]]}
