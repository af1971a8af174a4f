"""Sending one text to one phone: the SMS gateways a DESCO can use.

Three are built in: ``FileNotifier`` (JSON lines, the default: the outbox a test or an
operator reads), ``LogNotifier`` and ``HttpSmsNotifier`` (a generic HTTP SMS gateway:
``POST {"to", "text", "kind", "ref"}`` with a bearer token). Phone numbers go to the
notifier only, never to the log.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import httpx

from cizo.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Message:
    kind: str  # receipt|reminder|token|owned
    to: str  # E.164
    text: str
    kit_id: str
    desco_id: str
    ref: str  # what the message is about (payment id, token count, day)


class Notifier(Protocol):
    def send(self, msg: Message) -> None:
        """Deliver or raise; the caller logs failures."""
        ...


class FileNotifier:
    """Appends one JSON object per message to a file (thread-safe)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def send(self, msg: Message) -> None:
        line = json.dumps({"at": time.time(), "kind": msg.kind, "to": msg.to, "text": msg.text,
                           "kit_id": msg.kit_id, "desco_id": msg.desco_id, "ref": msg.ref},
                          ensure_ascii=False)
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as fh:
                fh.write(line + "\n")


class LogNotifier:
    """Logs that a message would be sent (kind and kit only: no phone, no text)."""

    def send(self, msg: Message) -> None:
        log.info("notification %s", msg.kind, extra={"kit_id": msg.kit_id, "ref": msg.ref})


class HttpSmsNotifier:
    """A generic HTTP SMS gateway; 2xx is delivered, anything else raises."""

    def __init__(self, url: str, token: str | None, timeout_s: float) -> None:
        self.url = url
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.timeout_s = timeout_s

    def send(self, msg: Message) -> None:
        r = httpx.post(self.url, json={"to": msg.to, "text": msg.text, "kind": msg.kind,
                                       "ref": f"{msg.kit_id}:{msg.kind}:{msg.ref}"},
                       headers=self.headers, timeout=self.timeout_s)
        if r.status_code // 100 != 2:
            raise RuntimeError(f"SMS gateway answered {r.status_code}")


def notifier_for(settings: Settings) -> Notifier:
    if settings.notify_backend == "http":
        if not settings.sms_gateway_url:
            raise RuntimeError("notify_backend is http but CIZO_SMS_GATEWAY_URL is not set")
        tok = settings.sms_gateway_token.get_secret_value() if settings.sms_gateway_token \
            else None
        return HttpSmsNotifier(settings.sms_gateway_url, tok, settings.sms_gateway_timeout_s)
    if settings.notify_backend == "log":
        return LogNotifier()
    return FileNotifier(settings.notify_file or settings.data_dir / "notifications.jsonl")
