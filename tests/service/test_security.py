"""The guards in front of the app, each on a tiny ASGI app: the concurrency limit, the body limit, the API key's
sources, the Host allow-list."""

import asyncio

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from simengine.errors import SimengineError
from simengine.service.security import BodyLimit, ConcurrencyLimit, allowed_hosts, read_api_key


def run(coro):
    return asyncio.run(coro)


def test_beyond_the_concurrency_limit_requests_get_503_with_retry_after_before_their_body_is_read():
    release, started = asyncio.Event(), []

    async def slow(request: Request):
        started.append(1)
        await release.wait()
        return JSONResponse({"ok": True})

    app = ConcurrencyLimit(Starlette(routes=[Route("/v1/slow", slow, methods=["POST"])]), max_requests=2)

    async def scenario():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as client:
            first = [asyncio.create_task(client.post("/v1/slow", content=b"x")) for _ in range(2)]
            while len(started) < 2:
                await asyncio.sleep(0.01)
            refused = await client.post("/v1/slow", content=b"y" * 1000)
            release.set()
            return refused, await asyncio.gather(*first), app.in_progress

    refused, admitted, left = run(scenario())
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert refused.json()["error"]["message"].startswith("busy: 2 requests in progress")
    assert [r.status_code for r in admitted] == [200, 200] and left == 0


def test_the_body_limit_refuses_a_declared_or_a_streamed_body_past_it():
    async def echo(request: Request):
        return JSONResponse({"bytes": len(await request.body())})

    app = Starlette(routes=[Route("/up", echo, methods=["POST"])])
    guarded = BodyLimit(app, max_bytes=1000)

    async def chunks(n):
        for _ in range(n):
            yield b"z" * 100

    async def scenario():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(guarded), base_url="http://t") as client:
            return (await client.post("/up", content=b"a" * 1000), await client.post("/up", content=b"a" * 1001),
                    await client.post("/up", content=chunks(10)), await client.post("/up", content=chunks(11)))

    fits, declared, streamed_fits, streamed = run(scenario())
    assert fits.json() == {"bytes": 1000} and streamed_fits.json() == {"bytes": 1000}
    assert declared.status_code == 413 and "larger than" in declared.json()["error"]["message"]
    assert streamed.status_code == 413

    async def slowly():
        for _ in range(10):
            await asyncio.sleep(0.05)
            yield b"z"

    async def slow_client():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(BodyLimit(app, 1000, timeout_s=0.2)),
                                     base_url="http://t") as client:
            return await client.post("/up", content=slowly())

    late = run(slow_client())
    assert late.status_code == 408 and "took longer than 0.2 s" in late.text


def test_api_key_sources(tmp_path, monkeypatch):
    monkeypatch.delenv("SIMENGINE_API_KEY", raising=False)
    assert read_api_key(None) is None
    monkeypatch.setenv("SIMENGINE_API_KEY", "  from-the-environment-1  ")
    assert read_api_key(None) == "from-the-environment-1"
    key = tmp_path / "key"
    key.write_text("from-a-file-0123456789\n")
    assert read_api_key(key) == "from-a-file-0123456789"  # the file wins over the environment
    key.write_text("short")
    with pytest.raises(SimengineError, match="at least 16 characters"):
        read_api_key(key)
    with pytest.raises(SimengineError, match="cannot read the API key"):
        read_api_key(tmp_path / "missing")


def test_metric_labels_and_the_rate_window_stay_bounded():
    import time

    from simengine.service.telemetry import Metrics, RateMeter, Telemetry

    metrics = Metrics()

    async def ok(request: Request):
        return JSONResponse({})

    app = Telemetry(Starlette(routes=[Route("/x", ok)]), metrics)

    async def scenario():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as client:
            for n in range(5):
                await client.request(f"MADEUP{n}", "/x")
            await client.get("/x")

    run(scenario())
    sample = metrics.registry.get_sample_value
    assert sample("simengine_http_requests_total", {"method": "other", "route": "/x", "status": "405"}) == 5
    assert sample("simengine_http_requests_total", {"method": "GET", "route": "/x", "status": "200"}) == 1
    meter = RateMeter(window_s=0.05)
    for _ in range(100):
        meter.add(1)
    time.sleep(0.06)
    meter.add(3)
    assert len(meter._events) == 1 and meter.rate() == pytest.approx(3 / 0.05)


def test_allowed_hosts_add_the_bound_address_and_bracket_ipv6():
    assert allowed_hosts("127.0.0.1") == ["localhost", "127.0.0.1", "[::1]"]
    assert allowed_hosts("0.0.0.0", ["search.example.com", "*.lan"]) == [
        "localhost", "127.0.0.1", "[::1]", "search.example.com", "*.lan"]
    assert allowed_hosts("192.168.1.5")[-1] == "192.168.1.5" and allowed_hosts("fe80::1")[-1] == "[fe80::1]"
    for bad in ("foo*", "*example.com", "example.com:8080", "http://example.com", ""):
        with pytest.raises(SimengineError, match="--allowed-host"):
            allowed_hosts("127.0.0.1", [bad])


def test_no_auth_and_a_key_contradict_each_other():
    from simengine.service.security import check_exposure

    with pytest.raises(SimengineError, match="contradict"):
        check_exposure("127.0.0.1", allow_remote=False, api_key="k" * 16, no_auth=True)


def test_the_app_sees_a_request_once_its_body_has_arrived_and_arriving_bodies_share_a_budget():
    seen = []

    async def echo(request: Request):
        seen.append(len(await request.body()))
        return JSONResponse({"in_progress": limited.in_progress})

    limited = ConcurrencyLimit(Starlette(routes=[Route("/v1/up", echo, methods=["POST"])]), max_requests=1)
    app = BodyLimit(limited, max_bytes=1000, timeout_s=5, max_arriving_bytes=1500)

    async def slowly(n: int):
        for _ in range(n):
            await asyncio.sleep(0.02)
            yield b"z" * 100

    async def scenario():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as client:
            slow = [asyncio.create_task(client.post("/v1/up", content=slowly(10))) for _ in range(2)]
            await asyncio.sleep(0.05)
            quick = await client.post("/v1/up", content=b"q" * 10)  # the slow bodies, still arriving, hold no slot
            return quick, await asyncio.gather(*slow), app.arriving

    quick, slow, arriving = run(scenario())
    assert quick.status_code == 200 and quick.json() == {"in_progress": 1}
    assert sorted(r.status_code for r in slow) == [200, 503] and arriving == 0
    assert "bodies arriving" in next(r for r in slow if r.status_code == 503).text and sorted(seen) == [10, 1000]
