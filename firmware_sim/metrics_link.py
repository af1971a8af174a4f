"""A simulated OpenPAYGO Metrics device's link: ``POST /dd`` over HTTP on its schedule.

The device keeps its readings as Metrics time steps and posts them every ``every_s`` of
simulated time (``firmware_sim.metrics_device`` builds and signs the request). As the spec
asks, steps are dropped only once an answer came back: a refused or failed post keeps them
for the next one (its request count still grows). The answer's signature is checked; its
tokens are decoded by the device's token state (``keypad.Keypad``, ``openpaygo.decode_token``)
and its active-until time (``auts``, the ledger's end) sets the firmware's credit end.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass
from typing import Any

import httpx
from openpaygo.metrics_shared import OpenPAYGOMetricsShared

from firmware_sim.firmware import KitFirmware
from firmware_sim.keypad import Keypad, KeypadResult
from firmware_sim.metrics_device import (
    CONTENT_TYPES,
    Encoding,
    build_request,
    decode_answer,
    encode,
    step_of,
)

log = logging.getLogger(__name__)

MAX_STEPS = 4 * 24 * 7  # a week of 15-minute readings: the device's flash


@dataclass
class MetricsCounters:
    requests: int = 0  # posts answered 201
    refused: int = 0  # answered 4xx/5xx, or no answer at all
    steps_sent: int = 0
    tokens_received: int = 0
    bad_answers: int = 0  # an answer whose signature did not match
    bytes_out: int = 0  # request bodies
    bytes_in: int = 0  # answer bodies


@dataclass(frozen=True, slots=True)
class Posted:
    steps: int  # readings the server took
    tokens: list[KeypadResult]  # what entering the answer's tokens did


NOTHING = Posted(0, [])


class MetricsLink:
    """One device's requests: its counter, its unsent steps, its token state."""

    def __init__(self, firmware: KitFirmware, *, every_s: float, first_post: float,
                 encoding: Encoding, anchor: int) -> None:
        self.firmware = firmware
        self.every_s = every_s
        self.next_post = first_post
        self.encoding = encoding
        self.keypad = Keypad(firmware, anchor=anchor)  # the device's token count and decoder
        self.request_count = 0
        self.timestamp = 0  # of the last request
        self._one_at_a_time = asyncio.Lock()
        self.steps: deque[dict[str, Any]] = deque(maxlen=MAX_STEPS)
        self.counters = MetricsCounters()

    def take(self, reading: dict[str, Any]) -> None:
        self.steps.append(step_of(reading))

    def due(self, now: float) -> bool:
        return now >= self.next_post

    async def post(self, http: httpx.AsyncClient, now: float) -> Posted:
        """Send the unsent steps; what the server took and the answer's tokens did. One request at a
        time, as a device makes them: the next one reports the token count this one's
        answer moved."""
        async with self._one_at_a_time:
            return await self._post(http, now)

    async def _post(self, http: httpx.AsyncClient, now: float) -> Posted:
        behind = (now - self.next_post) // self.every_s
        self.next_post += (behind + 1) * self.every_s  # a device that slept skips, not floods
        fw = self.firmware
        self.request_count += 1
        # the server takes only a growing timestamp: two requests in one second are not
        self.timestamp = max(int(fw.clock.now()), self.timestamp + 1)
        sent = list(self.steps)
        request = build_request(fw.kit_id, self.keypad.key, steps=sent,
                                timestamp=self.timestamp,
                                request_count=self.request_count,
                                token_count=self.keypad.count)
        body = encode(request, self.encoding)
        try:
            r = await http.post("/dd", content=body,
                                headers={"content-type": CONTENT_TYPES[self.encoding]})
        except httpx.HTTPError as exc:
            self.counters.refused += 1
            log.info("metrics device %s: no answer (%r)", fw.kit_id, exc)
            return NOTHING
        self.counters.bytes_out += len(body)
        self.counters.bytes_in += len(r.content)
        if r.status_code != 201:
            self.counters.refused += 1
            log.warning("metrics device %s: HTTP %d %s", fw.kit_id, r.status_code,
                        r.text[:200])
            return NOTHING
        answer = decode_answer(r.content, r.headers.get("content-type", ""))
        if not self._signed(answer, request):
            self.counters.bad_answers += 1
            log.warning("metrics device %s: answer signature does not match", fw.kit_id)
            return NOTHING
        self.counters.requests += 1
        self.counters.steps_sent += len(sent)
        for _ in sent:
            self.steps.popleft()
        return Posted(len(sent), self._apply(answer))

    def _signed(self, answer: dict[str, Any], request: dict[str, Any]) -> bool:
        simple = OpenPAYGOMetricsShared.convert_dict_keys_to_simple(answer)
        expected = OpenPAYGOMetricsShared.generate_response_signature_from_data(
            data=simple, secret_key=self.keypad.key, serial_number=self.firmware.kit_id,
            timestamp=request.get("ts"), request_count=request.get("rc"))
        return bool(answer.get("a") == expected)

    def _apply(self, answer: dict[str, Any]) -> list[KeypadResult]:
        tokens = [str(t) for t in answer.get("tkl") or []]
        results = [self.keypad.enter(token) for token in tokens]
        self.counters.tokens_received += len(tokens)
        fw = self.firmware
        until = answer.get("auts")
        if isinstance(until, int) and not fw.owned:
            fw.credit_until = until or None
            fw.locked = fw.credit_until is None or fw.credit_until <= fw.clock.now()
        return results
