"""A minimal MQTT 3.1.1 client over asyncio streams: many kits on one event loop.

Why not paho: a paho client costs a thread (or a socket-callback adapter) and ~100 KB per
kit; a fleet of 10,000 kits in one process needs a connection to be a few coroutines and
a few KB. This client implements only what a kit uses - CONNECT (will, credentials,
persistent session), PUBLISH QoS 0/1 both ways, PUBACK, SUBSCRIBE, PINGREQ, DISCONNECT -
and counts every byte it writes and reads, which is how the simulator measures the data a
kit costs on the wire.

QoS 1 messages not yet acknowledged are kept and re-sent with DUP on the next connection
(MQTT 3.1.1 §4.4), so a link lost mid-flight loses nothing.

Over TLS (``tls``, a ``ResumingTLS`` context) a reconnect offers the previous session, as
a kit on a 2G budget must: a resumed handshake costs a fraction of a full one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import struct
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

CONNECT, CONNACK, PUBLISH, PUBACK = 0x10, 0x20, 0x30, 0x40
SUBSCRIBE, SUBACK, PINGREQ, PINGRESP, DISCONNECT = 0x82, 0x90, 0xC0, 0xD0, 0xE0

CONNACK_REASONS = {
    1: "unacceptable protocol version",
    2: "identifier rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorised",
}

MessageHandler = Callable[[str, bytes, bool], Awaitable[None]]


class MqttError(ConnectionError):
    """The link failed or the broker refused us; the caller reconnects with backoff."""


_OP_TLSEXT_PADDING = 0x10  # OpenSSL's SSL_OP_TLSEXT_PADDING (no constant in the ssl module)


class ResumingTLS(ssl.SSLContext):
    """A client TLS context that offers the last session it was given on its next
    handshake (TLS session resumption): asyncio's streams take no session argument, so the
    context passes it to ``wrap_bio`` itself. One context per kit."""

    session: ssl.SSLSession | None = None

    @classmethod
    def trusting(cls, cafile: str) -> ResumingTLS:
        ctx = cls(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(cafile)
        # no padding extension: OpenSSL pads a ClientHello to 512 bytes for old F5 load
        # balancers by default; a kit's TLS stack (e.g. mbedTLS) sends none
        ctx.options &= ~_OP_TLSEXT_PADDING
        return ctx

    def wrap_bio(self, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO,  # type: ignore[override]
                 server_side: bool = False, server_hostname: str | None = None,
                 session: ssl.SSLSession | None = None) -> ssl.SSLObject:
        return super().wrap_bio(incoming, outgoing, server_side, server_hostname,
                                session or self.session)


@dataclass(slots=True)
class WireCounters:
    """MQTT bytes and packets each way, for the data-budget figures (docs/protocol.md)."""

    bytes_out: int = 0
    bytes_in: int = 0
    packets_out: int = 0
    packets_in: int = 0
    connects: int = 0
    publishes_out: int = 0
    by_kind_out: dict[str, int] = field(default_factory=dict)

    def sent(self, kind: str, n: int) -> None:
        self.bytes_out += n
        self.packets_out += 1
        if kind == "publish":
            self.publishes_out += 1
        self.by_kind_out[kind] = self.by_kind_out.get(kind, 0) + n

    def received(self, n: int) -> None:
        self.bytes_in += n
        self.packets_in += 1


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _str(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("!H", len(b)) + b


def packet(first: int, body: bytes) -> bytes:
    return bytes([first]) + _varint(len(body)) + body


def connect_packet(client_id: str, *, username: str | None, password: str | None,
                   keepalive: int, clean_session: bool,
                   will: tuple[str, bytes, int, bool] | None) -> bytes:
    flags = 0x02 if clean_session else 0
    payload = _str(client_id)
    if will is not None:
        topic, message, qos, retain = will
        flags |= 0x04 | (qos << 3) | (0x20 if retain else 0)
        payload += _str(topic) + _str(message)
    if username is not None:
        flags |= 0x80
        payload += _str(username)
        if password is not None:
            flags |= 0x40
            payload += _str(password)
    header = _str("MQTT") + bytes([4, flags]) + struct.pack("!H", keepalive)
    return packet(CONNECT, header + payload)


def publish_packet(topic: str, payload: bytes, qos: int, retain: bool, mid: int,
                   dup: bool = False) -> bytes:
    first = PUBLISH | (qos << 1) | (1 if retain else 0) | (0x08 if dup else 0)
    body = _str(topic) + (struct.pack("!H", mid) if qos else b"") + payload
    return packet(first, body)


class MqttConnection:
    """One client session. ``connect()``, then ``publish()``/``subscribe()``; ``close()``.

    Incoming PUBLISHes go to ``on_message(topic, payload, retained)``; a QoS 1 one is
    acknowledged after the handler returns.
    """

    def __init__(
        self,
        host: str,
        port: int,
        client_id: str,
        *,
        username: str | None = None,
        password: str | None = None,
        keepalive: int = 60,
        clean_session: bool = False,
        will: tuple[str, bytes, int, bool] | None = None,
        on_message: MessageHandler | None = None,
        counters: WireCounters | None = None,
        local_addr: tuple[str, int] | None = None,
        tls: ResumingTLS | None = None,
        keepalive_clock: Callable[[], float] | None = None,
    ) -> None:
        self.host, self.port = host, port
        self.client_id = client_id
        self.username, self.password = username, password
        self.keepalive = keepalive
        self.clean_session = clean_session
        self.will = will
        self.on_message = on_message
        self.counters = counters if counters is not None else WireCounters()
        self.local_addr = local_addr
        self.tls = tls
        # what keepalive is timed on: the loop's clock, or a simulated one (a kit's month
        # played in minutes still sends the pings a real month would)
        self._clock = keepalive_clock
        self.local_ports: list[int] = []  # the kit's TCP port of each connection
        self.tls_resumed = 0  # connections whose TLS session was resumed
        self.acked = 0  # QoS 1 publishes the broker acknowledged
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._mid = 0
        self._inflight: dict[int, tuple[str, bytes, bool]] = {}
        self._connack: asyncio.Future[int] | None = None
        self.session_present = False  # the broker kept our session (CONNACK flag)
        self._suback: dict[int, asyncio.Future[None]] = {}
        self._last_out = 0.0
        self.connected = False
        self.closed_reason: str | None = None

    # --- connection ------------------------------------------------------------------

    async def connect(self, timeout_s: float = 10.0) -> None:
        """Open TCP, CONNECT, wait for CONNACK; re-send unacknowledged QoS 1 publishes."""
        loop = asyncio.get_running_loop()
        try:
            self._reader, writer = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port, local_addr=self.local_addr,
                                        ssl=self.tls,
                                        server_hostname=self.host if self.tls else None),
                timeout_s)
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            raise MqttError(f"connect to {self.host}:{self.port} failed: {exc!r}") from exc
        self._writer = writer
        self.local_ports.append(writer.get_extra_info("sockname")[1])
        self._connack = loop.create_future()
        self._reader_task = loop.create_task(self._read_loop())
        self._write("connect", connect_packet(
            self.client_id, username=self.username, password=self.password,
            keepalive=self.keepalive, clean_session=self.clean_session, will=self.will))
        self.counters.connects += 1
        try:
            code = await asyncio.wait_for(asyncio.shield(self._connack), timeout_s)
        except (TimeoutError, MqttError) as exc:
            self.abort()
            raise MqttError(f"no CONNACK: {exc!r}") from exc
        if code != 0:
            self.abort()
            raise MqttError(f"connect refused: {CONNACK_REASONS.get(code, code)}")
        self.connected = True
        tls_object = writer.get_extra_info("ssl_object")
        if self.tls is not None and tls_object is not None:
            self.tls_resumed += bool(tls_object.session_reused)
            self.tls.session = tls_object.session  # offered on the next connection
        for mid, (topic, payload, retain) in sorted(self._inflight.items()):
            self._write("publish", publish_packet(topic, payload, 1, retain, mid, dup=True))

    def _write(self, kind: str, data: bytes) -> None:
        if self._writer is None or self._writer.is_closing():
            raise MqttError("not connected")
        self._writer.write(data)
        self.counters.sent(kind, len(data))
        self._last_out = self._now()

    def _now(self) -> float:
        return self._clock() if self._clock is not None else asyncio.get_running_loop().time()

    async def drain(self) -> None:
        if self._writer is not None:
            try:
                await self._writer.drain()
            except OSError as exc:
                raise MqttError(f"write failed: {exc!r}") from exc

    def _next_mid(self) -> int:
        for _ in range(65535):
            self._mid = self._mid % 65535 + 1
            if self._mid not in self._inflight:
                return self._mid
        raise MqttError("65535 messages in flight")

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        """Queue one PUBLISH for writing; QoS 1 is kept until its PUBACK (or a re-send)."""
        mid = self._next_mid() if qos else 0
        if qos:
            self._inflight[mid] = (topic, payload, retain)
        if not self.connected:
            if qos:
                return  # sent with DUP after the next CONNACK
            raise MqttError("not connected")
        self._write("publish", publish_packet(topic, payload, qos, retain, mid))

    async def subscribe(self, topics: str | Sequence[str], qos: int = 1,
                        timeout_s: float = 10.0) -> None:
        """Subscribe to one or several filters in one SUBSCRIBE (one SUBACK: bytes a 2G
        kit does not pay twice); refused if the broker refuses any of them."""
        mid = self._next_mid()
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._suback[mid] = fut
        filters = [topics] if isinstance(topics, str) else list(topics)
        body = b"".join(_str(t) + bytes([qos]) for t in filters)
        self._write("subscribe", packet(SUBSCRIBE, struct.pack("!H", mid) + body))
        try:
            await asyncio.wait_for(fut, timeout_s)
        except TimeoutError as exc:  # a broker that hangs is a link failure like any other
            raise MqttError(f"no SUBACK in {timeout_s:g} s") from exc
        finally:
            self._suback.pop(mid, None)

    def ping_if_idle(self) -> None:
        """Send PINGREQ once nothing went out for a keepalive (the broker allows 1.5x)."""
        if self.connected and self._now() - self._last_out >= self.keepalive:
            self._write("pingreq", bytes([PINGREQ, 0]))

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    async def disconnect(self) -> None:
        """Clean DISCONNECT: the broker drops the will."""
        if self.connected:
            with contextlib.suppress(MqttError):
                self._write("disconnect", bytes([DISCONNECT, 0]))
                await self.drain()
        await self.close()

    def abort(self) -> None:
        """Drop the TCP link without DISCONNECT (power cut / radio loss): the will fires."""
        self.connected = False
        if self._writer is not None:
            transport = self._writer.transport
            transport.abort()
        if self._reader_task is not None and self._reader_task is not asyncio.current_task():
            self._reader_task.cancel()

    async def close(self) -> None:
        self.connected = False
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError, asyncio.CancelledError):
                await self._writer.wait_closed()
        if self._reader_task is not None and self._reader_task is not asyncio.current_task():
            self._reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, MqttError):
                await self._reader_task

    async def wait_closed(self) -> None:
        """Return when the link drops (or was closed)."""
        if self._reader_task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(self._reader_task)

    # --- reading ---------------------------------------------------------------------

    async def _read_loop(self) -> None:
        assert self._reader is not None
        reader = self._reader
        try:
            while True:
                first = (await reader.readexactly(1))[0]
                length, mult, nbytes = 0, 1, 1
                while True:
                    b = (await reader.readexactly(1))[0]
                    nbytes += 1
                    length += (b & 0x7F) * mult
                    mult *= 128
                    if not b & 0x80:
                        break
                body = await reader.readexactly(length) if length else b""
                self.counters.received(nbytes + length)
                await self._dispatch(first, body)
        except (asyncio.IncompleteReadError, OSError) as exc:
            self.closed_reason = f"link lost: {type(exc).__name__}"
        except asyncio.CancelledError:
            self.closed_reason = "closed"
            raise
        finally:
            self.connected = False
            if self._connack is not None and not self._connack.done():
                self._connack.set_exception(MqttError(self.closed_reason or "closed"))
            for fut in self._suback.values():
                if not fut.done():
                    fut.set_exception(MqttError(self.closed_reason or "closed"))

    async def _dispatch(self, first: int, body: bytes) -> None:
        kind = first & 0xF0
        if kind == PUBLISH:
            qos = (first >> 1) & 0x03
            tlen = struct.unpack_from("!H", body)[0]
            topic = body[2:2 + tlen].decode("utf-8", errors="replace")
            pos = 2 + tlen
            mid = 0
            if qos:
                mid = struct.unpack_from("!H", body, pos)[0]
                pos += 2
            if self.on_message is not None:
                await self.on_message(topic, body[pos:], bool(first & 0x01))
            if qos == 1 and self.connected:
                self._write("puback", packet(PUBACK, struct.pack("!H", mid)))
        elif kind == PUBACK:
            mid = struct.unpack_from("!H", body)[0]
            if self._inflight.pop(mid, None) is not None:
                self.acked += 1
        elif kind == CONNACK:
            if self._connack is not None and not self._connack.done():
                self.session_present = bool(body[0] & 0x01)
                self._connack.set_result(body[1])
        elif kind == SUBACK:
            mid = struct.unpack_from("!H", body)[0]
            fut = self._suback.get(mid)
            if fut is not None and not fut.done():
                if b"\x80" in body[2:]:
                    fut.set_exception(MqttError("subscription refused"))
                else:
                    fut.set_result(None)
        elif kind == PINGRESP:
            pass
        else:
            log.warning("mqtt %s: unexpected packet type 0x%02x", self.client_id, first)
