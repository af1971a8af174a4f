"""Helpers shared by integration tests: servers in threads, polling with a deadline, an
MQTT client that records what a kit's topics carry."""

from __future__ import annotations

import json
import queue
import threading
import time
import uuid
from collections.abc import Callable, Sized
from typing import Any, TypeVar

import paho.mqtt.client as mqtt
import uvicorn
from fastapi import FastAPI
from paho.mqtt.enums import CallbackAPIVersion

T = TypeVar("T")


class ServerThread:
    """A real uvicorn server on 127.0.0.1:port in a background thread (real HTTP)."""

    def __init__(self, app: FastAPI, port: int) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name=f"uvicorn-{port}",
                                       daemon=True)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"server on port {self.port} did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)


def wait_for(predicate: Callable[[], T], timeout_s: float = 15.0, what: str = "condition",
             interval_s: float = 0.05) -> T:
    """Poll until ``predicate()`` is truthy; fail with ``what`` after the deadline."""
    deadline = time.monotonic() + timeout_s
    last: T = predicate()
    while not last:
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(interval_s)
        last = predicate()
    return last


def wait_until_none_left(left: Callable[[], Sized], stall_s: float, what: str,
                         interval_s: float = 0.1) -> None:
    """Poll until ``left()`` is empty; fail only when it has not shrunk for ``stall_s``:
    a loaded machine that works through a backlog finishes late, a stuck one fails, and
    the message shows what was left."""
    remaining = left()
    fewest, since = len(remaining), time.monotonic()
    while len(remaining):
        if time.monotonic() - since > stall_s:
            shown = remaining[:10] if isinstance(remaining, list) else ""
            raise AssertionError(f"{what}: {len(remaining)} left and none done in the last "
                                 f"{stall_s:g} s {shown}")
        time.sleep(interval_s)
        remaining = left()
        if len(remaining) < fewest:
            fewest, since = len(remaining), time.monotonic()


class Watcher:
    """A plain MQTT client recording everything under ``kits/{kit_id}/#``."""

    def __init__(self, port: int, kit_id: str) -> None:
        self.messages: queue.Queue[tuple[str, bytes, bool]] = queue.Queue()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"watch-{uuid.uuid4()}")
        subscribed = threading.Event()
        self.client.on_message = lambda c, u, m: self.messages.put(
            (m.topic, bytes(m.payload), m.retain)
        )
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.on_connect = lambda c, *a: c.subscribe(f"kits/{kit_id}/#", qos=1)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert subscribed.wait(10), "watcher could not subscribe"

    def wait_for(self, predicate: Callable[[str, Any, bool], bool],
                 timeout_s: float = 10.0) -> tuple[str, Any]:
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            try:
                topic, payload, retain = self.messages.get(timeout=left)
            except queue.Empty:
                break
            data = json.loads(payload) if payload else None
            if predicate(topic, data, retain):
                return topic, data
        raise AssertionError("expected MQTT message did not arrive")

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def migrated(database_url: str) -> tuple[Any, Any]:
    """A ledger migrated to heads, with the Alembic config and an engine (dispose it) for a
    test that moves one migration down and up again."""
    from sqlalchemy import create_engine

    from cizo.settings import sqlalchemy_url
    from control.ledger.db import alembic_config, migrate

    migrate(database_url)
    return alembic_config(database_url), create_engine(sqlalchemy_url(database_url))
