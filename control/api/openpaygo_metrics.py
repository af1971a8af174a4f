"""``POST /dd`` (and the spec's long name ``/device_data``): the OpenPAYGO Metrics door.

HTTP only: the body is read through the public endpoints' one body path
(control.api.bodies) and decoded here (``read_metrics_body``); the request is
checked, stored and answered by ``control.fleet.metrics_door``. A refusal is a 4xx with a
stable ``code`` beside the ``detail`` sentence (docs/protocol.md lists them) and is counted
in ``/metrics`` by that code, as is every request taken.

No API key: a device proves itself by its request's signature (the spec's SipHash auth).
The answer is in the request's encoding (JSON or CBOR), status 201 as the spec says.
"""

from __future__ import annotations

import math
from typing import Any

import cbor2
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from cizo.settings import Settings
from control.api import bodies, errors
from control.api.auth import RuntimeDep
from control.api.prometheus import counters
from control.api.schemas import Problem
from control.fleet.metrics_door import MetricsRefused, handle

router = APIRouter(tags=["openpaygo-metrics"])

REQUESTS = "cizo_openpaygo_metrics_requests_total"
READINGS = "cizo_openpaygo_metrics_readings_total"
JSON_TYPES = ("application/json", "json")
CBOR_TYPES = ("application/cbor", "cbor")
_INT_LIMIT = 2**63  # what a ledger BigInteger holds (the request count is stored)


async def read_metrics_body(request: Request, settings: Settings
                            ) -> tuple[dict[str, Any], str]:
    """The request's body as a plain JSON object, and its encoding ("json" or "cbor").

    Read by the public endpoints' one body path (control.api.bodies: content type, size
    within ``metrics_max_body_bytes``, time, and a JSON body's strict parse), which raises
    BodyRefused. A CBOR body is decoded here; then either must say only what JSON can
    (MetricsRefused otherwise): no CBOR tags or byte strings, no non-finite numbers,
    string keys, integers within 64 bits, nesting no deeper than ``metrics_max_depth``."""
    raw = await bodies.read_raw(request, settings, media_types=JSON_TYPES + CBOR_TYPES,
                                limit=settings.metrics_max_body_bytes)
    if bodies.media_type(request) in JSON_TYPES:
        value, encoding = bodies.json_object(raw), "json"
    else:
        encoding = "cbor"
        try:
            value = cbor2.loads(raw)
        except (ValueError, RecursionError, cbor2.CBORDecodeError) as exc:
            raise MetricsRefused(400, "malformed_body",
                                 f"not valid cbor: {str(exc)[:120]}") from exc
        if not isinstance(value, dict):
            raise MetricsRefused(400, "malformed_body", "the body must be one object")
    _check_plain(value, settings.metrics_max_depth)
    return value, encoding


def _check_plain(value: Any, max_depth: int) -> None:
    """Only what JSON can say, no deeper than ``max_depth`` (walked without recursion)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > max_depth:
                raise MetricsRefused(400, "malformed_body", f"nested deeper than {max_depth}")
            if isinstance(item, dict):
                if not all(isinstance(k, str) for k in item):
                    raise MetricsRefused(400, "malformed_body", "object keys must be strings")
                stack.extend((v, depth + 1) for v in item.values())
            else:
                stack.extend((v, depth + 1) for v in item)
        elif isinstance(item, bool) or item is None or isinstance(item, str):
            continue
        elif isinstance(item, int):
            if not -_INT_LIMIT < item < _INT_LIMIT:
                raise MetricsRefused(400, "malformed_body", "integer beyond 64 bits")
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise MetricsRefused(400, "malformed_body", "non-finite number")
        else:
            raise MetricsRefused(400, "malformed_body",
                                 f"{type(item).__name__} has no JSON equivalent")


@router.post(
    "/dd", status_code=201, summary="OpenPAYGO Metrics: a device posts its data",
    responses={400: {"model": Problem}, 401: {"model": Problem}, 404: {"model": Problem},
               409: {"model": Problem}, 413: {"model": Problem}, 415: {"model": Problem},
               422: {"model": Problem}, 503: {"model": Problem}},
    openapi_extra={"requestBody": {"required": True, "content": {
        "application/json": {"schema": {"type": "object"}},
        "application/cbor": {"schema": {"type": "object"}}}}},
)
@router.post("/device_data", status_code=201, include_in_schema=False)
async def device_data(rt: RuntimeDep, request: Request) -> Response:
    count = counters(request.app)
    try:
        payload, encoding = await read_metrics_body(request, rt.settings)
        answer = await run_in_threadpool(handle, rt, payload)
    except bodies.BodyRefused as exc:
        count.inc(REQUESTS, "outcome", exc.code)
        return errors.body_refused(request, exc)
    except MetricsRefused as exc:
        count.inc(REQUESTS, "outcome", exc.code)
        # the wording is for a device's maintainer: people get their status's message
        return errors.problem(request, exc.status, exc.code, errors.status_message(exc.status),
                              detail=exc.message)
    count.inc(REQUESTS, "outcome", "ok")
    count.inc(READINGS, "kind", "openpaygo_metrics", by=answer.readings)
    if encoding == "cbor":
        return Response(cbor2.dumps(answer.body, canonical=True), status_code=201,
                        media_type="application/cbor")
    return JSONResponse(answer.body, status_code=201)
