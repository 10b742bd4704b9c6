"""What the service tells its operators: Prometheus metrics (the standard client library, one registry per app), a
request id on every response and log line, and one access-log line per request."""

from __future__ import annotations

import contextvars
import logging
import re
import threading
import time
import uuid
from collections import deque

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from simengine.service.security import request_header, send_error

log = logging.getLogger("simengine.service")

REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
# A client's own X-Request-ID is kept when it is this tame (it ends up in log lines); otherwise one is made.
_CLIENT_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"})
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class RateMeter:
    """Events per second over the last `window_s` seconds (thread-safe)."""

    def __init__(self, window_s: float = 10.0):
        self.window_s = window_s
        self._events: deque[tuple[float, int]] = deque()
        self._lock = threading.Lock()

    def add(self, n: int) -> None:
        with self._lock:
            self._events.append((time.monotonic(), n))
            self._forget_old()

    def rate(self) -> float:
        with self._lock:
            self._forget_old()
            return sum(n for _, n in self._events) / self.window_s

    def _forget_old(self) -> None:
        horizon = time.monotonic() - self.window_s
        while self._events and self._events[0][0] < horizon:
            self._events.popleft()


class Metrics:
    """The service's metrics in their own registry (so several apps in one process do not collide)."""

    def __init__(self):
        self.registry = registry = CollectorRegistry()
        self.requests = Counter("simengine_http_requests", "HTTP requests answered, by method, route and status.",
                                ["method", "route", "status"], registry=registry)
        self.latency = Histogram("simengine_http_request_duration_seconds", "Time from request to response, by route.",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=registry)
        self.in_progress = Gauge("simengine_http_requests_in_progress", "API requests admitted and not yet answered.",
                                 registry=registry)
        self.batch_size = Histogram("simengine_embed_batch_size", "Images per embedding batch (uploads of concurrent "
                                    "requests are batched together).", buckets=BATCH_BUCKETS, registry=registry)
        self.batch_seconds = Histogram("simengine_embed_batch_duration_seconds", "Time to embed one batch.",
                                       buckets=LATENCY_BUCKETS, registry=registry)
        self.images = Counter("simengine_images_embedded", "Uploaded images embedded.", registry=registry)
        self.images_rate = RateMeter()
        Gauge("simengine_images_per_second", "Uploaded images embedded per second, over the last 10 s.",
              registry=registry).set_function(self.images_rate.rate)
        self.queue_depth = Gauge("simengine_embed_queue_depth", "Images waiting for an embedding batch.",
                                 registry=registry)
        self.index_version = Gauge("simengine_index_version", "Version of the index served (read again at each scrape "
                                   "and health check).", registry=registry)

    def observe_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)
        self.images.inc(size)
        self.images_rate.add(size)


class RequestIdFilter(logging.Filter):
    """Puts the current request's id on every log record (`%(request_id)s`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = REQUEST_ID.get()
        return True


class Telemetry:
    """ASGI middleware: gives each request an id (the client's X-Request-ID when tame, else a new one), returns it
    in X-Request-ID, counts and times the request by route template and status, and logs one line for it. An
    unexpected error is logged with its traceback and answered 500 without details."""

    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        given = request_header(scope, b"x-request-id") or ""
        request_id = given if _CLIENT_REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
        # Label values come from a fixed set: a client must not be able to mint new metric series.
        method = scope["method"] if scope["method"] in HTTP_METHODS else "other"
        token = REQUEST_ID.set(request_id)
        status, start = None, time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            log.exception("unexpected error on %s %s", scope["method"], scope["path"])
            if status is None:  # nothing sent yet (else the client sees the connection end mid-response)
                await send_error(send_with_id, 500, "internal error")
        finally:
            seconds = time.perf_counter() - start
            route = getattr(scope.get("route"), "path", "unmatched")
            status = status or 499  # the client went away before any answer (as nginx logs it)
            self.metrics.requests.labels(method, route, str(status)).inc()
            self.metrics.latency.labels(route).observe(seconds)
            log.info("%s %r %d %.1f ms", method, scope["path"], status, seconds * 1000)  # %r: no forged lines
            REQUEST_ID.reset(token)
