"""The HTTP service, against a real server process on loopback, and its web page in headless Chromium."""

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from fixtures import unlabelled_photos
from servers import browser, needs_chromium, running_server, wait_until
from simengine.service.security import is_loopback

@pytest.fixture(scope="module")
def server(built_index):
    with running_server(built_index, "--max-upload-mb", "0.1") as url:
        yield url


def test_health_and_metrics_follow_the_index_without_a_question(index_copy, val):
    """A new version written by another process shows in /healthz and the version gauge before any /v1 request."""
    from simengine.index.update import add_images

    with running_server(index_copy) as url:
        assert httpx.get(f"{url}/healthz").json()["version"] == 1
        add_images(index_copy, [val["coffee"][0]])
        assert httpx.get(f"{url}/healthz").json() == {"status": "ok", "items": 33, "version": 2}
        gauge = [line for line in httpx.get(f"{url}/metrics").text.splitlines() if line.startswith("simengine_index_version ")]
        assert gauge and all(line.endswith(" 2.0") for line in gauge), gauge


def upload(*paths, field="images"):
    return [(field, (Path(p).name, Path(p).read_bytes(), "image/jpeg")) for p in paths]


def test_health_info_and_items(server, built_index):
    assert httpx.get(f"{server}/healthz").json() == {"status": "ok", "items": 32, "version": 1}
    info = httpx.get(f"{server}/v1/info").json()
    assert info["items"] == 32 and info["backbone"] == "tf_efficientnet_lite0"
    item = httpx.get(f"{server}/v1/items/3").json()
    assert item["id"] == 3
    image = httpx.get(f"{server}/v1/items/3/image")
    assert image.status_code == 200 and image.content == Path(item["path"]).read_bytes()


def test_images_over_the_pixel_limit_are_refused(server, val, tmp_path):
    huge = tmp_path / "huge.png"
    Image.new("1", (7000, 7000)).save(huge, optimize=True)  # 6 kB, under the upload limit
    response = httpx.post(f"{server}/v1/pair", files=upload(huge, val["coffee"][0]))
    assert response.status_code == 422
    assert response.json()["error"]["message"].endswith("image too large to decode safely (7000x7000 px, more than 40,000,000)")


def rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmRSS:")).split()[1]) / 1024


def test_memory_comes_back_after_uploads_that_decode_to_huge_images(built_index, val, tmp_path):
    """Small files within the pixel limit (a 16-bit grey and an RGBA PNG of 6300 x 6300, 260 KB together) are
    answered, and the hundreds of MB they take while decoding are given back afterwards."""
    u16, rgba = tmp_path / "u16.png", tmp_path / "rgba.png"
    Image.new("I;16", (6300, 6300), 4000).save(u16)
    Image.new("RGBA", (6300, 6300), (10, 200, 30, 128)).save(rgba)
    with running_server(built_index) as url:
        for _ in range(3):  # warm: the first batches of a process take memory they keep
            assert httpx.post(f"{url}/v1/pair", files=upload(*val["coffee"][:2]), timeout=60).status_code == 200
        before = rss_mb(url.proc.pid)
        with ThreadPoolExecutor(2) as pool:
            answers = list(pool.map(lambda files: httpx.post(f"{url}/v1/triplet", files=files, timeout=120),
                                    [upload(u16, rgba, u16), upload(rgba, u16, rgba)]))
        assert [a.status_code for a in answers] == [200, 200], [a.text for a in answers]
        assert all(a.json()["any_match"] for a in answers)  # two copies of one picture in each
        time.sleep(1)
        assert rss_mb(url.proc.pid) - before < 100, f"{before:.0f} MB before, {rss_mb(url.proc.pid):.0f} MB after"


def test_ids_beyond_int64_are_not_found(server):
    for item_id in ("99999999999999999999999", "9223372036854775807"):
        response = httpx.get(f"{server}/v1/items/{item_id}")
        assert response.status_code == 404 and response.json()["error"]["message"] == f"no item with id {item_id}"
    response = httpx.post(f"{server}/v1/search", data={"id": "99999999999999999999999"})
    assert response.status_code == 404, response.text


def test_pair_triplet_search_match_the_cli_json(server, val):
    pair = httpx.post(f"{server}/v1/pair", files=upload(val["coffee"][0], val["coffee"][1])).json()
    assert pair["same"] is True and pair["a"] == f"upload:{val['coffee'][0].name}"
    assert set(pair) == {"a", "b", "same", "distance", "distance_threshold", "head_probability", "score", "threshold", "decision"}
    trip = httpx.post(f"{server}/v1/triplet", files=upload(val["rocket"][0], val["coffee"][1]), data={"ids": ["0"]}).json()
    assert trip["images"][2] == "id:0" and set(trip) == {"images", "any_match", "matching_pairs", "pairs", "threshold", "decision"}
    found = httpx.post(f"{server}/v1/search?k=3", files=upload(val["chelsea"][0], field="image")).json()
    assert len(found["neighbours"]) == 3 and found["predicted_class"] == "chelsea"
    by_id = httpx.post(f"{server}/v1/search?k=1&include_self=true", data={"id": "5"}).json()
    assert by_id["neighbours"][0]["id"] == 5 and by_id["neighbours"][0]["distance"] == pytest.approx(0, abs=1e-5)
    others = httpx.post(f"{server}/v1/search?k=2", data={"id": "5"}).json()["neighbours"]
    assert len(others) == 2 and 5 not in {n["id"] for n in others}


def error(response, status):
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and body["error"]["status"] == status and "Traceback" not in response.text
    return body["error"]["message"]


def test_error_cases(server, val, tmp_path):
    noise = tmp_path / "noise.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8)).save(noise)
    assert "larger than" in error(httpx.post(f"{server}/v1/pair", files=upload(noise, val["coffee"][0])), 413)
    text = [("images", ("notes.jpg", b"hello, not an image", "image/jpeg")), *upload(val["coffee"][0])]
    assert "upload:notes.jpg: not an image in a supported format" in error(httpx.post(f"{server}/v1/pair", files=text), 415)
    html = [("images", ("x.html", b"<html></html>", "text/html")), *upload(val["coffee"][0])]
    assert "not an image" in error(httpx.post(f"{server}/v1/pair", files=html), 415)
    broken = [("images", ("bad.jpg", val["coffee"][0].read_bytes()[:400], "image/jpeg")), *upload(val["coffee"][0])]
    assert "bad.jpg" in error(httpx.post(f"{server}/v1/pair", files=broken), 422)
    error(httpx.get(f"{server}/v1/items/999"), 404)
    error(httpx.post(f"{server}/v1/pair", files=upload(val["coffee"][0]), data={"ids": ["999"]}), 404)
    assert "exactly 2" in error(httpx.post(f"{server}/v1/pair", files=upload(*val["coffee"][:3])), 400)
    assert "exactly 3" in error(httpx.post(f"{server}/v1/triplet", files=upload(*val["coffee"], val["rocket"][0])), 400)
    error(httpx.post(f"{server}/v1/search?k=0", data={"id": "1"}), 422)
    for attempt in ("/v1/items/..%2F..%2Fetc%2Fpasswd/image", "/v1/items/%2Fetc%2Fpasswd/image", "/../../etc/passwd",
                    "/static/../../../../etc/passwd", "/static/%2e%2e/%2e%2e/%2e%2e/etc/passwd"):
        answer, _ = raw_request(server, f"GET {attempt} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode(), [])
        assert answer.split(b" ")[1] in (b"400", b"404", b"422") and b"root:" not in answer, attempt


def test_64_concurrent_requests_are_all_answered_and_batched_together(server, val):
    before = metric(server, "simengine_embed_batch_size_count")
    results, start = [], threading.Barrier(64)

    def one(n):
        files = upload(val["coffee"][n % 3], val["rocket"][n % 3])
        start.wait()
        results.append(httpx.post(f"{server}/v1/pair", files=files, timeout=120).status_code)

    threads = [threading.Thread(target=one, args=(n,)) for n in range(64)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [200] * 64
    batches = metric(server, "simengine_embed_batch_size_count") - before
    assert batches < 64, f"128 images in {batches} batches: requests were not batched together"


def metric(url: str, name: str, labels: str = "", headers: dict | None = None) -> float:
    """One sample from the server's /metrics (0 when absent)."""
    for line in httpx.get(f"{url}/metrics", headers=headers).text.splitlines():
        if line.startswith(name + labels + " ") or (not labels and line.startswith(name + " ")):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_metrics_count_requests_images_and_batches(server, val):
    route = '{method="POST",route="/v1/pair",status="200"}'
    requests, images = metric(server, "simengine_http_requests_total", route), metric(server, "simengine_images_embedded_total")
    for _ in range(3):
        assert httpx.post(f"{server}/v1/pair", files=upload(val["coffee"][0], val["rocket"][0])).status_code == 200
    httpx.get(f"{server}/v1/items/999")
    assert metric(server, "simengine_http_requests_total", route) == requests + 3
    assert metric(server, "simengine_images_embedded_total") == images + 6
    assert metric(server, "simengine_http_requests_total", '{method="GET",route="/v1/items/{item_id}",status="404"}') >= 1
    text = httpx.get(f"{server}/metrics").text
    for family in ("simengine_http_request_duration_seconds_bucket", "simengine_embed_batch_size_bucket",
                   "simengine_embed_queue_depth", "simengine_images_per_second", "simengine_http_requests_in_progress",
                   "simengine_index_version"):
        assert family in text
    assert metric(server, "simengine_images_per_second") > 0


def test_every_response_has_a_request_id_and_it_reaches_the_log(server):
    generated = httpx.get(f"{server}/healthz").headers["x-request-id"]
    assert len(generated) == 32 and generated != httpx.get(f"{server}/healthz").headers["x-request-id"]
    response = httpx.get(f"{server}/v1/items/999", headers={"X-Request-ID": "trace-42.a"})
    assert response.headers["x-request-id"] == "trace-42.a"
    hostile = httpx.get(f"{server}/healthz", headers={"X-Request-ID": "a b\tc<script>"}).headers["x-request-id"]
    assert len(hostile) == 32 and "<" not in hostile  # replaced, never echoed
    deadline = time.monotonic() + 5
    while "[trace-42.a] GET '/v1/items/999' 404" not in server.log.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "[trace-42.a] GET '/v1/items/999' 404" in server.log.read_text()


def test_security_headers_on_every_kind_of_response(server):
    for path in ("/", "/healthz", "/v1/items/3/image", "/v1/items/999", "/static/app.js", "/docs", "/nowhere"):
        headers = httpx.get(f"{server}{path}").headers
        assert headers["x-content-type-options"] == "nosniff", path
        assert headers["x-frame-options"] == "DENY", path
        assert "frame-ancestors 'none'" in headers["content-security-policy"], path
    page = httpx.get(server).text
    assert "<script>" not in page and "style=" not in page and 'src="/static/app.js"' in page


def test_a_foreign_host_is_refused(server):
    assert httpx.get(f"{server}/healthz", headers={"Host": "attacker.example"}).status_code == 400
    assert httpx.get(f"{server}/v1/info", headers={"Host": "attacker.example:80"}).status_code == 400
    for name in ("localhost", "127.0.0.1", "[::1]"):
        port = server.rsplit(":", 1)[1]
        assert httpx.get(f"{server}/healthz", headers={"Host": f"{name}:{port}"}).status_code == 200, name


def raw_request(url: str, head: bytes, body_chunks, timeout: float = 30) -> tuple[bytes, int]:
    """Send a request over a plain socket, body chunk by chunk, stopping once the server has answered; return
    (the start of the answer, body bytes sent)."""
    import select

    host, port = url.removeprefix("http://").split(":")
    sent = 0
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(head)
        for chunk in body_chunks:
            if select.select([sock], [], [], 0)[0]:
                break
            try:
                sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(chunk)
        answer = b""
        while b"\r\n\r\n" not in answer and (data := sock.recv(65536)):
            answer += data
        head, _, body = answer.partition(b"\r\n\r\n")
        length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)
        while len(body) < length and (data := sock.recv(65536)):
            body += data
        return head + b"\r\n\r\n" + body, sent


def test_the_body_limit_is_enforced_without_reading_the_body(server):
    declared = (b"POST /v1/pair HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=x\r\n"
                b"Content-Length: 300000000\r\n\r\n")
    answer, sent = raw_request(server, declared, [])
    assert answer.startswith(b"HTTP/1.1 413") and b"request body larger than" in answer
    chunked = (b"POST /v1/pair HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=x\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n")
    block = b"--x\r\nContent-Disposition: form-data; name=\"images\"; filename=\"a.jpg\"\r\n\r\n" + b"\0" * 65536
    chunks = (b"%x\r\n%s\r\n" % (len(block), block) for _ in range(4000))  # 262 MB if all were sent
    answer, sent = raw_request(server, chunked, chunks)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert sent < 50 * 2**20, f"{sent} bytes were sent before the 413"


def test_stalled_bodies_hold_no_request_slot_and_slow_headers_are_cut_off(built_index, val):
    """Connections that start a body and stall do not make others wait for a slot (a slot is taken once a body has
    arrived); connections whose headers never finish, or that send nothing, are closed after the header timeout."""
    start = (b"POST /v1/pair HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=x\r\n"
             b"Content-Length: 50000\r\n\r\n--x\r\nContent-Disposition: form-data; name=\"images\"; "
             b"filename=\"a.jpg\"\r\n\r\n")
    with running_server(built_index, "--max-pending", "4") as url, contextlib.ExitStack() as stack:
        host, port = url.removeprefix("http://").split(":")
        stalled = [stack.enter_context(socket.create_connection((host, int(port)))) for _ in range(12)]
        for sock in stalled:
            sock.sendall(start)
        time.sleep(0.5)
        answer = httpx.post(f"{url}/v1/pair", files=upload(*val["coffee"][:2]), timeout=60)
        assert answer.status_code == 200, answer.text
        slow_headers = stack.enter_context(socket.create_connection((host, int(port)), timeout=30))
        slow_headers.sendall(b"POST /v1/pair HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        silent = stack.enter_context(socket.create_connection((host, int(port)), timeout=30))
        started = time.monotonic()
        for sock in (slow_headers, silent):
            try:
                assert sock.recv(1024) == b""
            except ConnectionResetError:
                pass
        assert time.monotonic() - started < 20


def test_openapi_schema_and_its_examples(server, val):
    schema = httpx.get(f"{server}/openapi.json").json()
    assert {"/v1/pair", "/v1/triplet", "/v1/search", "/v1/items/{item_id}", "/v1/items/{item_id}/image", "/v1/info"} <= set(schema["paths"])
    example = schema["paths"]["/v1/pair"]["post"]["responses"]["200"]["content"]["application/json"]["example"]
    real = httpx.post(f"{server}/v1/pair", files=upload(val["coffee"][0], val["coffee"][1])).json()
    assert set(example) == set(real) and {k: type(v) for k, v in example.items()} == {k: type(v) for k, v in real.items()}
    search_example = schema["paths"]["/v1/search"]["post"]["responses"]["200"]["content"]["application/json"]["example"]
    real = httpx.post(f"{server}/v1/search?k=1", data={"id": "1"}).json()
    assert set(search_example) == set(real) and set(search_example["neighbours"][0]) == set(real["neighbours"][0])


def test_binding_beyond_loopback_needs_a_key_or_an_explicit_no_auth(built_index, tmp_path):
    from simengine.errors import SimengineError
    from simengine.service.security import check_exposure

    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5")
    with pytest.raises(SimengineError, match="--allow-remote"):
        check_exposure("0.0.0.0", allow_remote=False, api_key="k" * 16, no_auth=False)
    with pytest.raises(SimengineError, match="without an API key"):
        check_exposure("0.0.0.0", allow_remote=True, api_key=None, no_auth=False)
    check_exposure("0.0.0.0", allow_remote=True, api_key=None, no_auth=True)
    check_exposure("0.0.0.0", allow_remote=True, api_key="k" * 16, no_auth=False)
    exe = Path(sys.executable).with_name("simengine")
    env = {k: v for k, v in os.environ.items() if k != "SIMENGINE_API_KEY"}
    for args, expected in ((["--host", "0.0.0.0"], "--allow-remote"),
                           (["--host", "0.0.0.0", "--allow-remote"], "without an API key")):
        done = subprocess.run([str(exe), "serve", "--index", str(built_index), *args], capture_output=True,
                              text=True, timeout=60, env=env)
        assert done.returncode == 1 and expected in done.stderr and "serving on" not in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1
    short = tmp_path / "key"
    short.write_text("tooshort\n")
    done = subprocess.run([str(exe), "serve", "--index", str(built_index), "--api-key-file", str(short)],
                          capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 1 and "at least 16 characters" in done.stderr


def test_with_an_api_key_the_api_needs_it_and_the_page_does_not(built_index, val):
    key = "correct horse battery staple"
    with running_server(built_index, "--allow-remote", host="0.0.0.0", env={"SIMENGINE_API_KEY": key}) as url:
        for path in ("/v1/info", "/v1/items/3", "/metrics"):
            response = httpx.get(f"{url}{path}")
            assert response.status_code == 401 and response.headers["www-authenticate"].startswith("Bearer"), path
            assert httpx.get(f"{url}{path}", headers={"Authorization": "Bearer wrong key, same length.."}).status_code == 401
            assert httpx.get(f"{url}{path}", headers={"Authorization": f"Bearer {key}"}).status_code == 200, path
            assert httpx.get(f"{url}{path}", headers={"X-API-Key": key}).status_code == 200, path
        files = upload(val["coffee"][0], val["coffee"][1])
        assert httpx.post(f"{url}/v1/pair", files=files).status_code == 401
        assert httpx.post(f"{url}/v1/pair", files=files, headers={"X-API-Key": key}).json()["same"] is True
        for path in ("/", "/healthz", "/static/app.js", "/docs"):
            assert httpx.get(f"{url}{path}").status_code == 200, path


def test_shutdown_finishes_the_requests_in_flight(built_index, val):
    import signal

    # A batch waits 8 s for more images (64 would fill it; 48 come), so the 16 requests are all in flight at once.
    with running_server(built_index, "--max-wait-ms", "8000", "--max-batch", "64") as url:
        bodies = [upload(val["coffee"][n % 3], val["rocket"][n % 3], val["chelsea"][n % 3]) for n in range(16)]
        results = []

        def one(files):
            try:
                results.append(httpx.post(f"{url}/v1/triplet", files=files, timeout=60).status_code)
            except httpx.TransportError as exc:
                results.append(type(exc).__name__)

        threads = [threading.Thread(target=one, args=(files,)) for files in bodies]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 20
        while metric(url, "simengine_http_requests_in_progress") < 16 and time.monotonic() < deadline:
            time.sleep(0.01)
        in_flight = metric(url, "simengine_http_requests_in_progress")
        url.proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join()
        # uvicorn re-raises the signal once it has shut down, so the exit status says "terminated by SIGTERM"
        assert url.proc.wait(timeout=60) in (0, -signal.SIGTERM)
    assert in_flight == 16 and sorted(map(str, results)) == ["200"] * 16, (in_flight, results)


@needs_chromium
def test_web_page_in_headless_chromium(server, val):
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        chromium = browser(p)
        page = chromium.new_page(viewport={"width": 390, "height": 844})  # a phone-sized screen
        violations = []
        page.on("console", lambda m: violations.append(m.text) if "Content Security Policy" in m.text else None)
        page.goto(f"{server}/#/search")
        page.set_input_files("#files", str(val["astronaut"][0]))
        page.fill("#k", "4")
        page.focus("#go")
        page.keyboard.press("Enter")  # keyboard alone
        expect(page.locator("#results figure")).to_have_count(4, timeout=30_000)
        expect(page.locator("#answer")).to_contain_text("astronaut")
        expect(page.locator("#results figcaption").first).to_contain_text("astronaut")  # the label, as stored
        # thumbnails, served small by the index, not the uploads' blobs
        expect(page.locator("#results figure img[src*='/thumbnail?size=']")).to_have_count(4, timeout=30_000)
        wait_until(page, "() => [...document.querySelectorAll('#results img')].every(i => i.complete && i.naturalWidth > 0)")
        page.click("#clear")
        page.set_input_files("#files", [str(val["coffee"][0]), str(val["coffee"][1])])
        page.click("#go")
        expect(page.locator("#answer")).to_have_text("Same class: YES", timeout=30_000)
        page.set_input_files("#files", [str(val["coffee"][0]), str(val["rocket"][1]), str(val["coffee"][2])])
        page.click("#go")
        expect(page.locator("#answer")).to_contain_text("YES (1–3)", timeout=30_000)
        chromium.close()
    assert violations == []


@needs_chromium
def test_the_page_of_an_unlabelled_index_never_speaks_of_classes(model, fixture_data, val, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    from simengine.index.build import build_index

    build_index(unlabelled_photos(fixture_data, tmp_path / "photos", 3), model, tmp_path / "unlabelled")
    with running_server(tmp_path / "unlabelled") as url, sync_playwright() as p:
        assert httpx.get(f"{url}/v1/info").json()["classes"] == {"null": 11}  # as the CLI's --json says it
        chromium = browser(p)
        page = chromium.new_page()
        page.goto(f"{url}/#/search")
        page.set_input_files("#files", [str(val["coffee"][0]), str(val["coffee"][1])])
        page.click("#go")
        expect(page.locator("#answer")).to_have_text("Similar: YES", timeout=30_000)
        expect(page.locator("#details")).to_contain_text("(threshold estimated)")
        page.click("#clear")
        page.set_input_files("#files", str(val["coffee"][0]))
        page.fill("#k", "3")
        page.click("#go")
        expect(page.locator("#answer")).to_contain_text("of 3 neighbours verified", timeout=30_000)
        expect(page.locator("body")).not_to_contain_text("class")
        chromium.close()


def test_a_running_server_sees_adds_and_removes(index_copy, val):
    from simengine.index.update import add_images, remove_items

    def within(seconds: float, check) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if check():
                return True
            time.sleep(0.1)
        return False

    with running_server(index_copy) as url:
        assert httpx.get(f"{url}/v1/items/32").status_code == 404
        added = add_images(index_copy, val["rocket"][:1]).added
        assert added == [32]
        assert within(2, lambda: httpx.get(f"{url}/v1/items/32").status_code == 200)
        found = httpx.post(f"{url}/v1/search", params={"k": 1}, files=upload(val["rocket"][0], field="image")).json()
        assert found["neighbours"][0]["id"] == 32
        remove_items(index_copy, ["32"])
        assert within(2, lambda: httpx.get(f"{url}/v1/items/32").status_code == 404)
        found = httpx.post(f"{url}/v1/search", params={"k": 3}, files=upload(val["rocket"][0], field="image")).json()
        assert 32 not in [n["id"] for n in found["neighbours"]]
        assert httpx.get(f"{url}/v1/info").json()["version"] == 3


@needs_chromium
def test_api_docs_work_offline_under_the_csp(server):
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        chromium = browser(p)
        page = chromium.new_page()
        foreign, violations = [], []
        page.route("**/*", lambda route: route.continue_() if route.request.url.startswith(server)
                   else (foreign.append(route.request.url), route.abort()))
        page.on("console", lambda m: violations.append(m.text) if "Content Security Policy" in m.text else None)
        page.goto(f"{server}/docs")
        expect(page.locator(".opblock-summary-path", has_text="/v1/pair")).to_have_count(1, timeout=30_000)
        chromium.close()
    assert foreign == [] and violations == []


@needs_chromium
def test_no_markup_from_file_names_labels_or_indexed_files_ever_runs(index_copy, val, tmp_path):
    from PIL.PngImagePlugin import PngInfo
    from playwright.sync_api import expect, sync_playwright

    from simengine.index.update import add_images

    evil_label = "<img src=x onerror=alert('label')>"
    disguised = tmp_path / "x.html"  # a valid PNG whose text chunk is a script, indexed under a name browsers render
    script = PngInfo()
    script.add_text("comment", "<html><script>alert('file')</script></html>")
    Image.open(val["rocket"][0]).save(disguised, format="PNG", pnginfo=script)
    [item_id] = add_images(index_copy, [disguised], label=evil_label).added
    bad_upload = tmp_path / "<img src=x onerror=alert('name')>.jpg"
    bad_upload.write_bytes(b"<script>alert('body')</script>")
    with running_server(index_copy) as url, sync_playwright() as p:
        chromium = browser(p)
        page = chromium.new_page()
        dialogs = []
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.goto(f"{url}/#/search")
        page.set_input_files("#files", [str(bad_upload), str(val["coffee"][0])])
        expect(page.locator("#chosen")).to_contain_text("<img src=x onerror=alert('name')>.jpg")  # shown as text
        page.click("#go")
        expect(page.locator("#answer")).to_contain_text("not an image", timeout=30_000)
        page.click("#clear")
        page.set_input_files("#files", str(disguised))
        page.fill("#k", "1")  # its own item alone: the predicted class is the label
        page.click("#go")
        expect(page.locator("#results figure").first).to_contain_text(evil_label, timeout=30_000)
        expect(page.locator("#answer")).to_contain_text(evil_label)
        served = httpx.get(f"{url}/v1/items/{item_id}/image")
        assert served.headers["content-type"] == "image/png" and served.headers["x-content-type-options"] == "nosniff"
        page.goto(f"{url}/v1/items/{item_id}/image")
        disguised.write_text("<html><script>alert('swapped')</script></html>")  # the file changes after indexing
        swapped = httpx.get(f"{url}/v1/items/{item_id}/image")
        assert swapped.status_code == 404 and "not an image served" in swapped.json()["error"]["message"]
        page.goto(f"{url}/v1/items/{item_id}/image")
        page.wait_for_timeout(500)
        chromium.close()
    assert dialogs == []


def in_process(index: Path, ask, **limits):
    """ask(client) against an app over `index` in this process (no server), then its threads stopped."""
    import asyncio

    from simengine.service.app import ServiceLimits, create_app

    app = create_app(index, limits=ServiceLimits(**limits))

    async def run():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://127.0.0.1") as client:
            return await ask(client)

    try:
        return asyncio.run(run())
    finally:
        app.state.embedder.close()
        app.state.worker.close()


def test_a_request_past_the_timeout_gets_504(built_index, val):
    files = upload(val["coffee"][0], val["rocket"][0])
    # the batch waits 2 s for more images; the answer may take 0.3 s
    response = in_process(built_index, lambda client: client.post("/v1/pair", files=files), timeout_s=0.3, max_wait_s=2.0)
    assert "longer than" in error(response, 504)


def test_an_index_that_cannot_be_read_is_503_without_its_paths(index_copy, val):
    async def ask(client):
        (index_copy / "CURRENT").write_text("v99999999\n")  # points at a manifest that does not exist
        return [await client.post("/v1/pair", data={"ids": ["1", "2"]}), await client.get("/v1/info")]

    for response in in_process(index_copy, ask):
        message = error(response, 503)
        assert response.headers["retry-after"] == "5" and str(index_copy) not in message


def test_duplicates_of_an_upload(server):
    item = httpx.get(f"{server}/v1/items/3").json()
    found = httpx.post(f"{server}/v1/duplicates", files=upload(item["path"], field="image"))
    assert found.status_code == 200, found.text
    body = found.json()
    assert body["image"] == f"upload:{Path(item['path']).name}" and set(body) == {"image", "copies", "decision"}
    assert body["copies"][0]["item_id"] == 3 and body["copies"][0]["kind"] == "exact"
    assert error(httpx.post(f"{server}/v1/duplicates", files=[("image", ("x.jpg", b"plain text", "image/jpeg"))]),
                 415)
    error(httpx.post(f"{server}/v1/duplicates?k=0", files=upload(item["path"], field="image")), 422)


def test_duplicates_need_a_calibrated_model(index_copy):
    from simengine.index.reader import Index

    with Index(index_copy) as index:
        (index.model_dir / "same_picture.json").unlink()
    with running_server(index_copy) as url:
        image = httpx.get(f"{url}/v1/items/0").json()["path"]
        assert "same-picture calibration" in error(httpx.post(f"{url}/v1/duplicates", files=upload(image, field="image")), 501)
        assert "dedup-calibrate" in url.log.read_text()  # the server's log says how to fix it


def test_curation_endpoints_answer_for_the_served_version(index_copy, val):
    from simengine.index.update import add_images

    # The first report loads torch for the cross-validated head: the client waits as long as the server may (30 s).
    with running_server(index_copy) as url:
        first = httpx.get(f"{url}/v1/curate/label-errors", params={"k": 5}, timeout=60).json()
        assert set(first) == {"index", "version", "k", "items", "labelled", "flagged", "seconds", "warning", "issues"}
        assert first["items"] == 32 and first["warning"]  # the fixture model was trained on these very images
        [planted] = add_images(index_copy, [val["coffee"][0]], label="rocket").added
        again = httpx.get(f"{url}/v1/curate/label-errors", params={"k": 5}, timeout=60).json()
        assert again["items"] == 33 and again["issues"][0]["id"] == planted  # the new version, not a cached answer
        assert again["issues"][0]["suggested"] == "coffee"
        outliers = httpx.get(f"{url}/v1/curate/outliers", params={"top": 3, "within_labels": True}, timeout=60).json()
        assert len(outliers["outliers"]) == 3 and outliers["within_labels"] is True
        assert httpx.get(f"{url}/v1/curate/outliers", params={"k": 0}).status_code == 422


def test_a_curation_report_outlasting_the_limit_is_computed_once_and_answered_later():
    """503 with Retry-After while it runs; asking again waits on the same computation; then the answer, from
    memory for that version."""
    import asyncio
    import threading

    from fastapi import HTTPException

    from simengine.service.curation import CurationReports

    calls, release = [], threading.Event()

    class Report:
        version = 7

        def to_dict(self):
            return {"version": 7}

    def slow(path, k):
        calls.append(k)
        release.wait(10)
        return Report()

    async def scenario():
        reports = CurationReports()
        with pytest.raises(HTTPException) as first:
            await reports.report(slow, "idx", 7, (5,), timeout_s=0.2)
        with pytest.raises(HTTPException):
            await reports.report(slow, "idx", 7, (5,), timeout_s=0.2)
        release.set()
        answer = await reports.report(slow, "idx", 7, (5,), timeout_s=5)
        again = await reports.report(slow, "idx", 7, (5,), timeout_s=5)
        reports.close()
        return first.value, answer, again

    error, answer, again = asyncio.run(scenario())
    assert error.status_code == 503 and error.headers["Retry-After"] == "10"
    assert answer == again == {"version": 7} and calls == [5]
