"""Load check of `simengine serve` on loopback: N concurrent clients posting pair queries for a fixed time.
Reports throughput, p50/p99 latency, errors by status, and the server's peak RSS.

    python benchmarks/load.py --index indexes/default --data ../shared/data/imagenette2-160 --clients 8 --seconds 30
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from common import RESULTS, table, write  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main(argv=None) -> dict:
    import httpx

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", type=Path, default=Path("indexes/default"))
    parser.add_argument("--data", required=True, help="ImageFolder root whose val/ images are sent")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--name", default="load")
    args = parser.parse_args(argv)

    images = sorted(Path(args.data).glob("val/*/*"))[:200]
    port = free_port()
    exe = Path(sys.executable).with_name("simengine")
    server = subprocess.Popen([str(exe), "-q", "serve", "--index", str(args.index), "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ.copy())
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.3)
        latencies, statuses, lock = [], Counter(), threading.Lock()
        stop = time.monotonic() + args.seconds

        def client(seed: int) -> None:
            rng = np.random.default_rng(seed)
            with httpx.Client(timeout=60) as http:
                while time.monotonic() < stop:
                    a, b = (images[i] for i in rng.choice(len(images), 2, replace=False))
                    files = [("images", (a.name, a.read_bytes(), "image/jpeg")), ("images", (b.name, b.read_bytes(), "image/jpeg"))]
                    start = time.perf_counter()
                    try:
                        status = http.post(f"{url}/v1/pair", files=files).status_code
                    except httpx.TransportError:
                        status = "transport error"
                    with lock:
                        latencies.append(time.perf_counter() - start)
                        statuses[status] += 1

        started = time.monotonic()
        threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - started
        rss = peak_rss_mb(server.pid)
    finally:
        server.terminate()
        server.wait(timeout=10)
    ms = np.array(latencies) * 1000
    ok = statuses.get(200, 0)
    result = {"clients": args.clients, "seconds": elapsed, "requests": int(len(ms)), "ok": ok,
              "errors": {str(k): v for k, v in statuses.items() if k != 200}, "throughput_rps": ok / elapsed,
              "p50_ms": float(np.percentile(ms, 50)) if len(ms) else None,
              "p99_ms": float(np.percentile(ms, 99)) if len(ms) else None, "server_peak_rss_mb": rss}
    md = ("# Load check: `simengine serve`, POST /v1/pair with two uploads\n\n"
          + table(["clients", "seconds", "requests", "ok", "errors", "req/s", "p50 ms", "p99 ms", "server peak RSS MB"],
                  [[args.clients, elapsed, len(ms), ok, result["errors"] or 0, result["throughput_rps"], result["p50_ms"],
                    result["p99_ms"], rss]]) + "\n")
    write(args.name, result, md, args.out)
    return result


if __name__ == "__main__":
    main()
