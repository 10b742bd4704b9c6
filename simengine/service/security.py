"""What keeps the service safe to expose: who may call it (an API key, compared in constant time), which Host names
it answers (against DNS rebinding; Starlette's TrustedHostMiddleware enforces the list made here), how much a
request may send and how many may be in progress, and the headers that keep browsers strict."""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import os
from collections import deque
from pathlib import Path

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from simengine.errors import SimengineError

API_KEY_ENV = "SIMENGINE_API_KEY"
MIN_KEY_LENGTH = 16
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")  # as Host headers carry them (IPv6 in brackets)
# Only same-origin scripts, styles and images (blob: for the page's previews of chosen files, data: for the icons
# inside Swagger UI's stylesheet); nothing may frame the page, no plugins, no <base> tricks.
CONTENT_SECURITY_POLICY = ("default-src 'self'; img-src 'self' blob: data:; object-src 'none'; base-uri 'none'; "
                           "frame-ancestors 'none'; form-action 'self'")
SECURITY_HEADERS = [
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-resource-policy", b"same-origin"),
]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def allowed_hosts(bind_host: str, extra: list[str] | tuple[str, ...] = ()) -> list[str]:
    """The Host names answered: loopback names, the address listened on when it is a specific one, and `extra`
    (names or `*.example.com` patterns; `*` answers any)."""
    for name in extra:
        if "*" in name[1:] or (name.startswith("*") and name != "*" and not name.startswith("*.")):
            raise SimengineError(f"--allowed-host {name}: a pattern is '*.example.com' (or '*' for any name)")
        if not name or "/" in name or name.count(":") == 1:
            raise SimengineError(f"--allowed-host {name}: give a host name or address, without scheme or port")
    bound = [] if bind_host in ("0.0.0.0", "::", "") else [bind_host]
    bracketed = [f"[{h}]" if ":" in h and not h.startswith("[") else h for h in (*bound, *extra)]
    return list(dict.fromkeys([*LOOPBACK_HOSTS, *bracketed]))


def read_api_key(key_file: str | os.PathLike | None) -> str | None:
    """The API key from `key_file`, else from $SIMENGINE_API_KEY, else None; a short one is refused."""
    if key_file is not None:
        try:
            key = Path(key_file).read_text().strip()
        except OSError as exc:
            raise SimengineError(f"{key_file}: cannot read the API key ({exc.strerror or exc})") from None
        source = str(key_file)
    else:
        key, source = os.environ.get(API_KEY_ENV, "").strip(), f"${API_KEY_ENV}"
        if not key:
            return None
    if len(key) < MIN_KEY_LENGTH:
        raise SimengineError(f"{source}: an API key needs at least {MIN_KEY_LENGTH} characters")
    return key


def check_exposure(host: str, allow_remote: bool, api_key: str | None, no_auth: bool) -> None:
    """Refuse, before anything starts, to listen beyond loopback without --allow-remote, or without a key unless
    --no-auth says so explicitly."""
    if api_key is not None and no_auth:
        raise SimengineError(f"--no-auth and an API key (--api-key-file or ${API_KEY_ENV}) contradict each other")
    if is_loopback(host):
        return
    if not allow_remote:
        raise SimengineError(f"refusing to listen on {host}: pass --allow-remote (with an API key) to serve beyond "
                             "this machine")
    if api_key is None and not no_auth:
        raise SimengineError(f"refusing to listen on {host} without an API key: give --api-key-file FILE or "
                             f"${API_KEY_ENV}, or --no-auth to serve without one")


def error_body(status: int, message: str) -> dict:
    """The JSON body of every error the service answers."""
    return {"error": {"status": status, "message": message}}


async def send_error(send: Send, status: int, message: str, headers: list[tuple[bytes, bytes]] = ()) -> None:
    """The service's JSON error, sent by a middleware (the app's own handlers never see these requests)."""
    body = json.dumps(error_body(status, message)).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": body})


def request_header(scope: Scope, name: bytes) -> str | None:
    return next((v.decode("latin-1") for k, v in scope["headers"] if k == name), None)


class SecurityHeaders:
    """ASGI middleware: the strict headers on every response."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        await self.app(scope, receive, send_with_headers if scope["type"] == "http" else send)


class ApiKeyGuard:
    """ASGI middleware: with a key set, every path under `protected` prefixes needs `Authorization: Bearer KEY` or
    `X-API-Key: KEY` (the page, its assets, the docs and /healthz stay open: they hold no data)."""

    def __init__(self, app: ASGIApp, api_key: str | None, protected: tuple[str, ...] = ("/v1/", "/metrics")):
        self.app, self.protected = app, protected
        self.key = api_key.encode() if api_key else None

    def _authorised(self, scope: Scope) -> bool:
        given = request_header(scope, b"x-api-key")
        if given is None and (auth := request_header(scope, b"authorization") or "").lower().startswith("bearer "):
            given = auth[7:].strip()
        return given is not None and hmac.compare_digest(given.encode("latin-1"), self.key)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (self.key is None or scope["type"] != "http" or not scope["path"].startswith(self.protected)
                or self._authorised(scope)):
            return await self.app(scope, receive, send)
        await send_error(send, 401, "an API key is required: send 'Authorization: Bearer KEY' or 'X-API-Key: KEY'",
                         [(b"www-authenticate", b'Bearer realm="simengine"')])


class BodyLimit:
    """ASGI middleware: the whole body is read before the app sees the request, so what lies inside (the request
    slots of ConcurrencyLimit, the engine) is only ever held by requests whose body has arrived: connections that
    start a body and stall hold nothing there. A body may be at most `max_bytes`: a larger Content-Length is refused
    (413) before any of it is read, a body without one is counted as it streams in. It must arrive within
    `timeout_s` (else 408), and the bodies arriving at one time may hold `max_arriving_bytes` together (else 503)."""

    def __init__(self, app: ASGIApp, max_bytes: int, timeout_s: float = 30.0, max_arriving_bytes: int | None = None):
        self.app, self.max_bytes, self.timeout_s = app, max_bytes, timeout_s
        self.max_arriving_bytes = max_arriving_bytes if max_arriving_bytes is not None else 64 * max_bytes
        self.arriving = 0  # bytes of the bodies being read now

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = request_header(scope, b"content-length")
        close = [(b"connection", b"close")]
        if declared is not None and not declared.isdigit():
            return await send_error(send, 400, "bad Content-Length", close)
        if declared is not None and int(declared) > self.max_bytes:
            return await send_error(send, 413, f"request body larger than {self.max_bytes / 2**20:.1f} MB", close)
        messages = await self._read_body(receive, send)
        if messages is None:
            return

        async def replayed() -> Message:
            return messages.popleft() if messages else await receive()  # then only a disconnect is left to come

        await self.app(scope, replayed, send)

    async def _read_body(self, receive: Receive, send: Send) -> deque[Message] | None:
        """The request's messages up to its last body part; None when it has been answered with an error here, or
        the client left."""
        loop = asyncio.get_running_loop()
        deadline, messages, received = loop.time() + self.timeout_s, deque(), 0
        try:
            while True:
                try:
                    message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
                except asyncio.TimeoutError:
                    await send_error(send, 408, f"the request body took longer than {self.timeout_s:g} s to arrive",
                                     [(b"connection", b"close")])
                    return None
                if message["type"] != "http.request":
                    return None
                size = len(message.get("body", b""))
                received += size
                self.arriving += size
                if received > self.max_bytes:
                    await send_error(send, 413, f"request body larger than {self.max_bytes / 2**20:.1f} MB",
                                     [(b"connection", b"close")])
                    return None
                if self.arriving > self.max_arriving_bytes:
                    await send_error(send, 503, "busy: too many request bodies arriving, try again shortly",
                                     [(b"retry-after", b"1"), (b"connection", b"close")])
                    return None
                messages.append(message)
                if not message.get("more_body", False):
                    return messages
        finally:
            self.arriving -= received


def header_deadline_protocol(timeout_s: float) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol (httptools), closing a connection whose request headers have not all arrived within
    `timeout_s` of the connection or of the request's first byte: uvicorn has no such limit, and a client that sends
    its headers slowly (or nothing at all) held a connection for ever. Idle keep-alive connections are uvicorn's to
    close."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class HeaderDeadline(HttpToolsProtocol):
        _timer: asyncio.TimerHandle | None = None
        _in_headers = False

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._in_headers = True
            if self.cycle is None or self.cycle.response_complete:  # a pipelined request waits for the one before
                self._arm()

        def on_headers_complete(self) -> None:
            self._in_headers = False
            self._disarm()
            super().on_headers_complete()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if self._in_headers:  # the next request's headers began while this one was answered
                self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._disarm()
            self._timer = self.loop.call_later(timeout_s, self.transport.close)

        def _disarm(self) -> None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

    return HeaderDeadline


class ConcurrencyLimit:
    """ASGI middleware: at most `max_requests` API requests in progress; beyond that, 503 with Retry-After at once,
    without reading the body (in the app, BodyLimit has read it by then: a slot is only ever held by a request whose
    body has arrived). `gauge` (a Prometheus Gauge) follows the count."""

    def __init__(self, app: ASGIApp, max_requests: int, gauge=None, prefix: str = "/v1/"):
        self.app, self.max_requests, self.gauge, self.prefix = app, max_requests, gauge, prefix
        self.in_progress = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(self.prefix):
            return await self.app(scope, receive, send)
        if self.in_progress >= self.max_requests:
            return await send_error(send, 503, f"busy: {self.in_progress} requests in progress, try again shortly",
                                    [(b"retry-after", b"1")])
        self.in_progress += 1
        if self.gauge is not None:
            self.gauge.inc()
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_progress -= 1
            if self.gauge is not None:
                self.gauge.dec()
