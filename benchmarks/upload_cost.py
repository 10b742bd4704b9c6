"""The cost of small uploads that decode to huge images (issue 29, item 1): a 16-bit grey and an RGBA PNG of
6300 x 6300 pixels, 91 KB and 170 KB on disk, within the 40 MP limit. Their cost must be bounded by the 224 x 224
result, not by their size, and a server's memory must come back after them.

- Through the CLI: `simengine query FILE --k 1`, each file `--runs` times, interleaved with an ordinary photo (the
  baseline), as new processes: median wall time and the largest peak RSS (the child's ru_maxrss).
- Through the server: `simengine serve` on loopback; its RSS when idle; then `--bursts` bursts of four concurrent
  /v1/triplet requests uploading the probe files (about 1.4 MB in all) with a small /v1/pair sent 0.5 s into each:
  statuses and latencies, the server's peak RSS during the burst and its RSS 3 s after.

    python benchmarks/upload_cost.py --index indexes/default
"""

from __future__ import annotations

import argparse
import http.client
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from common import RESULTS, table, write  # noqa: E402
from load import free_port, multipart, rss_mb  # noqa: E402

SIDE = 6300
SIMENGINE = Path(sys.executable).with_name("simengine")


def probe_files(folder: Path, side: int = SIDE) -> dict[str, Path]:
    """The two probe PNGs of the issue, and an ordinary photo (scikit-image's astronaut, 512 x 512 JPEG)."""
    from PIL import Image
    from skimage import data

    files = {"u16.png": folder / "u16.png", "rgba.png": folder / "rgba.png", "photo.jpg": folder / "photo.jpg"}
    Image.new("I;16", (side, side), 4000).save(files["u16.png"])
    Image.new("RGBA", (side, side), (10, 200, 30, 128)).save(files["rgba.png"])
    Image.fromarray(data.astronaut()).save(files["photo.jpg"], quality=90)
    return files


def run_cli(path: Path, index: Path) -> tuple[float, float]:
    """(seconds, peak RSS in MB) of `simengine query PATH --k 1` as a new process."""
    with tempfile.TemporaryFile() as errors:  # a file, not a pipe: a pipe nobody reads could stall the child
        started = time.perf_counter()
        child = subprocess.Popen([str(SIMENGINE), "-q", "query", str(path), "--k", "1", "--index", str(index)],
                                 stdout=subprocess.DEVNULL, stderr=errors)
        _, status, usage = os.wait4(child.pid, 0)  # reaped here, with its resource usage
        child.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - started
        if child.returncode != 0:
            errors.seek(0)
            raise SystemExit(f"query {path.name} failed: {errors.read().decode()[-2000:]}")
    return seconds, usage.ru_maxrss / 1024


def cli_costs(files: dict[str, Path], index: Path, runs: int) -> dict:
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in files}
    run_cli(files["photo.jpg"], index)  # not counted: a first run may still measure the runtimes of this machine
    for round_ in range(runs):
        names = list(files)
        for name in names[round_ % len(names):] + names[:round_ % len(names)]:
            samples[name].append(run_cli(files[name], index))
    return {name: {"seconds": round(statistics.median(s for s, _ in runs_), 2),
                   "peak_rss_mb": round(max(m for _, m in runs_)), "runs": len(runs_)}
            for name, runs_ in samples.items()}


def post(port: int, path: str, body: bytes, content_type: str, timeout: float = 120) -> tuple[int, float]:
    started = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", path, body, {"Content-Type": content_type})
        status = conn.getresponse().status
    except OSError:
        status = 0
    finally:
        conn.close()
    return status, time.perf_counter() - started


def server_costs(files: dict[str, Path], index: Path, bursts: int) -> dict:
    port = free_port()
    server = subprocess.Popen([str(SIMENGINE), "-q", "serve", "--index", str(index), "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(600):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            try:
                conn.request("GET", "/healthz")
                if conn.getresponse().status == 200:
                    break
            except OSError:
                pass
            finally:
                conn.close()
            time.sleep(0.2)
        else:
            raise SystemExit("the server did not start")
        small = multipart(files["photo.jpg"], files["photo.jpg"])
        for _ in range(3):  # warm: the first batches of a new process are slower
            post(port, "/v1/pair", *small)
        alone = [post(port, "/v1/pair", *small)[1] for _ in range(5)]
        idle_before = rss_mb(server.pid)
        u16, rgba = files["u16.png"], files["rgba.png"]
        bodies = [multipart(u16, rgba, u16), multipart(rgba, u16, rgba), multipart(u16, rgba, u16),
                  multipart(rgba, u16, rgba)]
        results = []
        for _ in range(bursts):
            answers: list = [None] * 5
            peak, done = [rss_mb(server.pid)], threading.Event()

            def sample() -> None:
                while not done.wait(0.05):
                    peak[0] = max(peak[0], rss_mb(server.pid))

            def send(slot: int, path: str, body: tuple[bytes, str]) -> None:
                answers[slot] = post(port, path, *body)

            sampler = threading.Thread(target=sample)
            sampler.start()
            threads = [threading.Thread(target=send, args=(i, "/v1/triplet", b)) for i, b in enumerate(bodies)]
            for t in threads:
                t.start()
            time.sleep(0.5)
            threads.append(threading.Thread(target=send, args=(4, "/v1/pair", small)))
            threads[-1].start()
            for t in threads:
                t.join()
            done.set()
            sampler.join()
            time.sleep(3)
            results.append({"triplet_statuses": [a[0] for a in answers[:4]],
                            "triplet_seconds": [round(a[1], 2) for a in answers[:4]],
                            "pair_status": answers[4][0], "pair_seconds": round(answers[4][1], 2),
                            "peak_rss_mb": round(peak[0]), "rss_after_mb": round(rss_mb(server.pid))})
        return {"small_pair_alone_seconds": round(statistics.median(alone), 3), "idle_rss_mb": round(idle_before),
                "bursts": results}
    finally:
        server.terminate()
        server.wait(60)


def markdown(result: dict) -> str:
    cli, srv = result["cli"], result["server"]
    base = cli["photo.jpg"]
    rows = [[f"{name} ({result['file_bytes'][name] / 1024:.0f} KB)", f"{c['seconds']:.2f}",
             f"{c['seconds'] / base['seconds']:.2f}", c["peak_rss_mb"], f"{c['peak_rss_mb'] / base['peak_rss_mb']:.2f}"]
            for name, c in cli.items()]
    burst_rows = [[n + 1, " ".join(map(str, b["triplet_statuses"])), f"{max(b['triplet_seconds']):.2f}",
                   b["pair_status"], f"{b['pair_seconds']:.2f}", b["peak_rss_mb"], b["rss_after_mb"]]
                  for n, b in enumerate(srv["bursts"])]
    return "\n\n".join([
        f"# Upload cost: small files that decode to {result['side']} x {result['side']} images",
        f"`simengine query FILE --k 1`, a new process each time, median of {base['runs']} interleaved runs; "
        "the baseline is a 512 x 512 JPEG photo measured in the same rounds.",
        table(["file", "seconds", "x photo", "peak RSS MB", "x photo"], rows),
        f"`simengine serve`: idle RSS {srv['idle_rss_mb']} MB; a small /v1/pair alone "
        f"{srv['small_pair_alone_seconds']} s. Each burst: four concurrent /v1/triplet requests with the probe files "
        "and a small /v1/pair sent 0.5 s in.",
        table(["burst", "triplet statuses", "slowest triplet s", "pair status", "pair s", "peak RSS MB",
               "RSS 3 s after MB"], burst_rows),
    ])


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", type=Path, default=Path("indexes/default"))
    parser.add_argument("--runs", type=int, default=3, help="CLI runs per file")
    parser.add_argument("--bursts", type=int, default=3)
    parser.add_argument("--side", type=int, default=SIDE, help="side of the probe PNGs in pixels")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--name", default="upload_cost")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        files = probe_files(Path(tmp), args.side)
        result = {"side": args.side, "file_bytes": {name: path.stat().st_size for name, path in files.items()},
                  "cli": cli_costs(files, args.index, args.runs), "server": server_costs(files, args.index, args.bursts)}
    write(args.name, result, markdown(result), args.out)
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
