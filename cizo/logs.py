"""Structured logging: the message, then every ``extra={...}`` field as key=value.

``log.info("command applied", extra={"kit_id": k, "command_id": c})`` prints
``... control.commands.lifecycle command applied kit_id=K1 command_id=...`` so logs can be
grepped and parsed by kit, command or payment without a JSON pipeline.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message", "asctime", "color_message"}

# libraries that log every request or job run at INFO: quiet unless debugging
_CHATTY = ("httpx", "httpcore", "apscheduler", "uvicorn.access")


class KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        base = super().format(record)
        extras = [f"{k}={v}" for k, v in record.__dict__.items()
                  if k not in _STANDARD and not k.startswith("_")]
        return f"{base} {' '.join(extras)}" if extras else base


class _CurrentStderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at emit time, not the one seen at start-up, so
    a background thread never logs into a stream that was swapped out and closed."""

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        pass


def configure(level: str = "INFO") -> None:
    handler = _CurrentStderrHandler()
    handler.setFormatter(KeyValueFormatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    if level.upper() != "DEBUG":
        for name in _CHATTY:
            logging.getLogger(name).setLevel(logging.WARNING)
