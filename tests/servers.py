"""Helpers of the tests that need a running server or a browser: `simengine serve` on a free loopback port, and
Debian's Chromium under Playwright (never a browser downloaded by a test tool)."""

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"]
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server(str):
    """The URL of a running server, with its process and the file its log goes to."""

    proc: subprocess.Popen
    log: Path


@contextlib.contextmanager
def running_server(index: Path, *args: str, env: dict | None = None, host: str = "127.0.0.1"):
    """`simengine serve` on a free port, its log in a file (a pipe nobody reads would fill and stall it), stopped
    on exit."""
    port = free_port()
    exe = Path(sys.executable).with_name("simengine")
    log = index.parent / f"serve-{port}.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([str(exe), "serve", "--index", str(index), "--host", host, "--port", str(port), *args],
                                stdout=out, stderr=subprocess.STDOUT, text=True, env={**os.environ, **(env or {})})
    url = Server(f"http://127.0.0.1:{port}")
    url.proc, url.log = proc, log
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                if proc.poll() is not None:
                    pytest.fail(f"server exited: {log.read_text()}")
                time.sleep(0.3)
        else:
            pytest.fail("server did not start in 90 s")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def browser(p):
    return p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)


def wait_until(page, predicate: str, timeout_s: float = 60) -> None:
    """Poll a JS function in the page until it returns true. Not `page.wait_for_function`: its polling evaluates a
    string, which the app's CSP (no 'unsafe-eval') refuses."""
    deadline = time.monotonic() + timeout_s
    while not page.evaluate(predicate):
        if time.monotonic() > deadline:
            raise TimeoutError(f"not true within {timeout_s:g} s: {predicate}")
        time.sleep(0.05)
