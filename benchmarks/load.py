"""Load check of `simengine serve` on loopback: N concurrent clients posting pair queries (two uploads each) for a
fixed time, then on until a total number of requests, to see whether the server's memory stays flat.

Reports throughput in images/s against the encoder's best batched rate measured in the same run (forward pass on
preprocessed batches, the strictest baseline, and files -> embeddings as `index build` runs it), p50/p99 latency,
errors by status, the batch sizes the server formed, and its RSS over the run.

    python benchmarks/load.py --index indexes/default --data ../shared/data/imagenette2-160 --clients 64 \\
        --seconds 60 --total-requests 10000

The clients are threads of this process using http.client with request bodies built once, so that they take as
little as possible of the CPU the server shares with them.
"""

from __future__ import annotations

import argparse
import http.client
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from common import RESULTS, table, write  # noqa: E402

BATCH_SIZES = (1, 8, 32, 64)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU time of a process (this one by default)."""
    if pid is None:
        return time.process_time()
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def encoder_rates(model_dir: Path, images: list[Path], repeats: int = 5) -> dict:
    """Images/s of the model alone: the forward pass (encoder + embedding head) on preprocessed batches of each
    size in BATCH_SIZES (best of `repeats`), and files -> embeddings through Model.embed_paths."""
    from simengine.model.bundle import load_bundle

    model = load_bundle(model_dir)
    arrays = np.stack([model.encoder.load_image(p) for p in images[:max(BATCH_SIZES)]])
    forward = {}
    for size in (s for s in BATCH_SIZES if s <= len(arrays)):
        batch = arrays[:size]
        model.embed_batch(batch)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            model.embed_batch(batch)
            times.append(time.perf_counter() - start)
        forward[size] = size / min(times)
    start = time.perf_counter()
    model.embed_paths(images)
    pipeline = len(images) / (time.perf_counter() - start)
    return {"forward_by_batch": forward, "forward_best": max(forward.values()), "files_to_embeddings": pipeline}


def multipart(*paths: Path) -> tuple[bytes, str]:
    """The body and content type of a request uploading `paths` as repeated `images` fields."""
    boundary = uuid.uuid4().hex
    parts = b"".join(
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"images\"; filename=\"{p.name}\"\r\n"
        f"Content-Type: image/jpeg\r\n\r\n".encode() + p.read_bytes() + b"\r\n" for p in paths)
    return parts + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def scrape(port: int, name: str) -> dict[str, float]:
    """Samples of one metric family from the server's /metrics, by their label text."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    out = {}
    for line in text.splitlines():
        if line.startswith(name):
            key, value = line.rsplit(" ", 1)
            out[key[len(name):]] = float(value)
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", type=Path, default=Path("indexes/default"))
    parser.add_argument("--data", required=True, help="ImageFolder root whose val/ images are sent")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=60, help="the timed phase (throughput and latency)")
    parser.add_argument("--total-requests", type=int, default=0,
                        help="then go on until this many requests in all, sampling the server's RSS (0: stop)")
    parser.add_argument("--rss-every", type=int, default=500, help="sample the server's RSS every this many requests")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--name", default="load")
    args = parser.parse_args(argv)

    from simengine.index.reader import Index

    images = sorted(Path(args.data).glob("val/*/*"))[:200]
    rates = encoder_rates(Index(args.index).model_dir, images)
    rng = np.random.default_rng(0)
    bodies = [multipart(*(images[i] for i in rng.choice(len(images), 2, replace=False))) for _ in range(256)]

    port = free_port()
    exe = Path(sys.executable).with_name("simengine")
    server = subprocess.Popen([str(exe), "-q", "serve", "--index", str(args.index), "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ.copy())
    try:
        for _ in range(300):
            try:
                scrape(port, "simengine_http_requests_total")
                break
            except OSError:
                time.sleep(0.3)
        latencies, statuses, rss_samples, lock, timed_ok = [], Counter(), [], threading.Lock(), [0]
        cpu_timed: list[float] = []  # server, clients: CPU seconds over the timed phase
        timed_end = time.monotonic() + args.seconds
        done = threading.Event()

        def client(seed: int) -> None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            n = seed
            while not done.is_set():
                body, content_type = bodies[n % len(bodies)]
                n += args.clients
                start = time.perf_counter()
                try:
                    conn.request("POST", "/v1/pair", body, {"Content-Type": content_type})
                    response = conn.getresponse()
                    response.read()
                    status = response.status
                except (OSError, http.client.HTTPException) as exc:
                    status = type(exc).__name__
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
                now = time.monotonic()
                with lock:
                    if now <= timed_end:
                        latencies.append(time.perf_counter() - start)
                        timed_ok[0] += status == 200
                    statuses[status] += 1
                    total = sum(statuses.values())
                    if total % args.rss_every == 0:
                        rss_samples.append((total, rss_mb(server.pid)))
                    if now > timed_end and total >= args.total_requests:
                        done.set()
            conn.close()

        started, cpu_start = time.monotonic(), (cpu_seconds(server.pid), cpu_seconds())
        timer = threading.Timer(args.seconds, lambda: cpu_timed.extend(
            [cpu_seconds(server.pid) - cpu_start[0], cpu_seconds() - cpu_start[1]]))
        timer.start()
        threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        timer.join()
        elapsed_all = time.monotonic() - started
        peak = rss_mb(server.pid, "VmHWM")
        batches = scrape(port, "simengine_embed_batch_size_")
    finally:
        server.terminate()
        server.wait(timeout=60)

    elapsed = args.seconds
    ms = np.array(latencies) * 1000
    ok_timed = timed_ok[0]
    images_per_s = 2 * ok_timed / elapsed
    n_batches, n_images = batches.get("count", 0), batches.get("sum", 0)
    early = next((mb for n, mb in rss_samples if n >= 1000), None)
    result = {
        "clients": args.clients, "timed_seconds": elapsed, "timed_requests": len(latencies), "timed_ok": ok_timed,
        "total_requests": sum(statuses.values()), "total_seconds": elapsed_all,
        "statuses": {str(k): v for k, v in statuses.items()},
        "errors": sum(v for k, v in statuses.items() if k != 200),
        "throughput_rps": ok_timed / elapsed, "throughput_images_per_s": images_per_s,
        "encoder": rates,
        "ratio_to_forward_best": images_per_s / rates["forward_best"],
        "ratio_to_files_to_embeddings": images_per_s / rates["files_to_embeddings"],
        "p50_ms": float(np.percentile(ms, 50)) if len(ms) else None,
        "p99_ms": float(np.percentile(ms, 99)) if len(ms) else None,
        "mean_batch_size": n_images / n_batches if n_batches else None,
        "cpu_cores_busy": {"server": cpu_timed[0] / elapsed, "clients": cpu_timed[1] / elapsed, "machine": os.cpu_count()},
        "server_rss_mb_after_1000": early, "server_rss_mb_at_end": rss_samples[-1][1] if rss_samples else None,
        "server_peak_rss_mb": peak, "rss_samples": rss_samples,
    }
    forward_cells = ", ".join(f"{rate:.1f} (batch {size})" for size, rate in rates["forward_by_batch"].items())
    md = (
        "# Load check: `simengine serve`, POST /v1/pair with two uploads\n\n"
        f"{args.clients} concurrent clients on loopback; throughput and latency over the first {elapsed:g} s, then on "
        f"to {result['total_requests']} requests for the memory check.\n\n"
        + table(["clients", "answered 200 (timed)", "errors (all)", "req/s", "images/s", "p50 ms", "p99 ms",
                 "mean batch", "RSS MB @1000 req", f"RSS MB @{result['total_requests']} req", "peak RSS MB"],
                [[args.clients, ok_timed, result["errors"], result["throughput_rps"], images_per_s, result["p50_ms"],
                  result["p99_ms"], result["mean_batch_size"], early, result["server_rss_mb_at_end"], peak]])
        + f"\n\nCPU over the timed phase: server {result['cpu_cores_busy']['server']:.2f} cores, load clients "
        f"{result['cpu_cores_busy']['clients']:.2f} cores, of {os.cpu_count()}."
        + "\n\nThe model alone, in this run (images/s): forward pass on preprocessed batches "
        f"{forward_cells}; files -> embeddings (decode + forward, as `index build`) {rates['files_to_embeddings']:.1f}.\n\n"
        + table(["server images/s", "/ best forward pass", "/ files -> embeddings"],
                [[images_per_s, result["ratio_to_forward_best"], result["ratio_to_files_to_embeddings"]]]) + "\n"
    )
    write(args.name, result, md, args.out)
    return result


if __name__ == "__main__":
    main()
