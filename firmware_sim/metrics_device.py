"""An OpenPAYGO Metrics device's side of ``POST /dd``: its request, built and signed by the
``openpaygo`` library's ``MetricsRequestHandler`` in the CIZO data format
(``cizo.openpaygo_metrics``), encoded as JSON or CBOR.

Pure code, no I/O: the fleet's Metrics devices (``firmware_sim.driven_kit``) and the tests
post what this builds.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import cbor2
from openpaygo import MetricsRequestHandler
from openpaygo.metrics_shared import AuthMethod

from cizo import openpaygo_metrics as contract

Encoding = Literal["json", "cbor"]
CONTENT_TYPES: dict[Encoding, str] = {"json": "application/json", "cbor": "application/cbor"}
_FIELD_TO_VARIABLE = {field: var for var, field in contract.VARIABLES.items()}


def step_of(reading: Mapping[str, Any]) -> dict[str, Any]:
    """A v1-shaped reading (``battery_v``, ``soc``...) as a Metrics time step."""
    step = {_FIELD_TO_VARIABLE[f]: v for f, v in reading.items() if f in _FIELD_TO_VARIABLE}
    step["locked"] = 1 if reading.get("locked") else 0
    step["timestamp"] = int(reading["ts"])
    return step


def build_request(serial: str, key: str, *, steps: Sequence[Mapping[str, Any]],
                  timestamp: int | None, request_count: int | None,
                  token_count: int | None = None, condensed: bool = True,
                  auth: str = AuthMethod.RECURSIVE_DATA_AUTH,
                  asks: Literal["auts", "asl"] = "auts") -> dict[str, Any]:
    """One signed request in the CIZO format (``df`` 1): ``steps`` (each with its
    ``timestamp``) newest first; a step exactly one interval after the previous (or at the
    request's time, for the first) leaves its timestamp out, as the format allows."""
    fmt = contract.CIZO_FORMAT
    handler = MetricsRequestHandler(serial, data_format=fmt, secret_key=key, auth_method=auth)
    if request_count is not None:
        handler.set_request_count(request_count)
    if timestamp is not None:
        handler.set_timestamp(timestamp)
    data: dict[str, Any] = {}
    if token_count is not None:
        data["token_count"] = token_count
    data[f"active_{'until_timestamp' if asks == 'auts' else 'seconds_left'}_requested"] = 1
    handler.set_data(data)
    ordered = sorted(steps, key=lambda s: -int(s["timestamp"]))
    expected = timestamp
    history: list[dict[str, Any]] = []
    for step in ordered:
        step = dict(step)
        if step["timestamp"] == expected:
            del step["timestamp"]
        expected = int(ordered[len(history)]["timestamp"]) + fmt["historical_data_interval"]
        history.append(step)
    handler.set_historical_data(history)
    request: dict[str, Any] = (handler.get_condensed_request_dict() if condensed
                               else handler.get_simple_request_dict())
    return request


def encode(request: Mapping[str, Any], encoding: Encoding) -> bytes:
    if encoding == "cbor":
        return cbor2.dumps(dict(request), canonical=True)  # shortest floats (docs/protocol.md)
    return json.dumps(request, separators=(",", ":")).encode()


def decode_answer(body: bytes, content_type: str) -> dict[str, Any]:
    answer = cbor2.loads(body) if "cbor" in content_type else json.loads(body)
    if not isinstance(answer, dict):
        raise ValueError("a Metrics answer is an object")
    return answer
