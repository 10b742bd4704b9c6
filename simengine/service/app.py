"""`simengine serve`: the query layer over HTTP (JSON under /v1, OpenAPI at /docs) and a web page at /."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import re
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

from fastapi import FastAPI, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from simengine.data.decode import MAX_PIXELS
from simengine.errors import ImageLoadError, SimengineError
from simengine.query.engine import Engine

log = logging.getLogger(__name__)

MAX_UPLOAD_BYTES = 10 * 2**20
TIMEOUT_S = 30.0
MAX_PENDING = 8
MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*")
STATIC = Path(__file__).parent / "static"


class EngineWorker:
    """Runs every engine call on one dedicated thread (the engine's SQLite connection lives there), with a bounded
    number of requests waiting; beyond it callers get 503 instead of queueing without limit."""

    def __init__(self, open_engine: Callable[[], Engine], max_pending: int, timeout_s: float):
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="simengine-engine")
        self.engine: Engine = self.pool.submit(open_engine).result()
        self.max_pending, self.timeout_s, self.pending = max_pending, timeout_s, 0

    async def call(self, fn, *args):
        if self.pending >= self.max_pending:
            raise HTTPException(503, f"busy: {self.pending} requests in progress, try again shortly")
        self.pending += 1
        try:
            future = asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)
            return await asyncio.wait_for(future, self.timeout_s)
        except asyncio.TimeoutError:
            raise HTTPException(504, f"the request took longer than {self.timeout_s:.0f} s") from None
        finally:
            self.pending -= 1


def sniff(data: bytes) -> bool:
    """Whether the bytes start like an image format simengine decodes."""
    return data.startswith(MAGIC) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP")


def create_app(
    index_dir: str | os.PathLike | None = None, mode: str | None = None, max_upload_bytes: int = MAX_UPLOAD_BYTES,
    max_pixels: int = MAX_PIXELS, timeout_s: float = TIMEOUT_S, max_pending: int = MAX_PENDING,
) -> FastAPI:
    """The HTTP app over one index; the model and index are loaded once, here."""
    worker = EngineWorker(lambda: Engine.open(index_dir, mode, max_pixels=max_pixels), max_pending, timeout_s)
    app = FastAPI(title="simengine", version="1", description="Image similarity: pair, triplet and neighbour queries.")
    app.state.worker = worker

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        return JSONResponse({"error": {"status": exc.status_code, "message": exc.detail}}, status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        message = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        return JSONResponse({"error": {"status": 422, "message": message}}, status_code=422)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):
        log.exception("unexpected error on %s", request.url.path)
        return JSONResponse({"error": {"status": 500, "message": "internal error"}}, status_code=500)

    async def refs_from(uploads: list[UploadFile], ids: list[int], folder: str) -> tuple[list[str], dict[str, str]]:
        """Uploads saved under `folder` (names chosen here, never by the client) and id:N refs; ref -> display name."""
        refs, names = [], {}
        for n, upload in enumerate(uploads):
            data = await upload.read(max_upload_bytes + 1)
            if len(data) > max_upload_bytes:
                raise HTTPException(413, f"{upload.filename}: larger than {max_upload_bytes // 2**20} MB")
            if upload.content_type and not (upload.content_type.startswith("image/")
                                            or upload.content_type == "application/octet-stream"):
                raise HTTPException(415, f"{upload.filename}: content type {upload.content_type} is not an image")
            if not sniff(data):
                raise HTTPException(415, f"{upload.filename}: not a supported image (JPEG, PNG, GIF, BMP, TIFF, WebP)")
            path = os.path.join(folder, f"upload{n}")
            with open(path, "wb") as fh:
                fh.write(data)
            refs.append(path)
            names[path] = "upload:" + re.sub(r"[^\w.\- ]", "_", upload.filename or f"image{n}")
        for item_id in ids:
            await item(item_id)
            refs.append(f"id:{item_id}")
            names[f"id:{item_id}"] = f"id:{item_id}"
        return refs, names

    async def item(item_id: int) -> dict[str, Any]:
        try:
            return await worker.call(worker.engine.item, item_id)
        except SimengineError:
            raise HTTPException(404, f"no item with id {item_id}") from None

    def relabel(obj: Any, names: dict[str, str]) -> Any:
        if isinstance(obj, str):
            return names.get(obj, obj)
        if isinstance(obj, list):
            return [relabel(x, names) for x in obj]
        if isinstance(obj, dict):
            return {k: relabel(v, names) for k, v in obj.items()}
        return obj

    async def answer(fn, want: int, images: list[UploadFile], ids: list[int]) -> dict:
        if len(images) + len(ids) != want:
            raise HTTPException(400, f"give exactly {want} images (uploads in 'images' and/or indexed 'ids'), got {len(images) + len(ids)}")
        with tempfile.TemporaryDirectory(prefix="simengine-serve-") as folder:
            refs, names = await refs_from(images, ids, folder)
            try:
                result = await worker.call(fn, *refs)
            except ImageLoadError as exc:
                raise HTTPException(422, relabel_message(str(exc), names)) from None
            except SimengineError as exc:
                raise HTTPException(400, relabel_message(str(exc), names)) from None
        return relabel(result.to_dict(), names)

    @app.post("/v1/pair", responses={200: {"content": {"application/json": {"example": PAIR_EXAMPLE}}}})
    async def pair(images: list[UploadFile] = File(default=[]), ids: list[int] = Form(default=[])) -> dict:
        """Are two images the same class? Multipart: repeated `images` uploads and/or `ids` of indexed items."""
        return await answer(worker.engine.pair, 2, images, ids)

    @app.post("/v1/triplet", responses={200: {"content": {"application/json": {"example": TRIPLET_EXAMPLE}}}})
    async def triplet(images: list[UploadFile] = File(default=[]), ids: list[int] = Form(default=[])) -> dict:
        """Do at least two of three images share a class?"""
        return await answer(worker.engine.triplet, 3, images, ids)

    @app.post("/v1/search", responses={200: {"content": {"application/json": {"example": SEARCH_EXAMPLE}}}})
    async def search(image: UploadFile | None = File(default=None), id: int | None = Form(default=None),
                     k: int = Query(5, ge=1, le=100)) -> dict:
        """Nearest indexed neighbours of an uploaded `image` or an indexed `id`, verified by the pair head."""
        uploads, ids = ([image] if image is not None else []), ([id] if id is not None else [])
        return await answer(lambda ref: worker.engine.neighbours(ref, k), 1, uploads, ids)

    @app.get("/v1/items/{item_id}")
    async def get_item(item_id: int) -> dict:
        """Metadata of an indexed item."""
        return await item(item_id)

    @app.get("/v1/items/{item_id}/image")
    async def get_item_image(item_id: int):
        """The bytes of an indexed image (only paths recorded in the index are ever served)."""
        path = Path((await item(item_id))["path"])
        if not path.is_file():
            raise HTTPException(404, f"the image of item {item_id} is no longer on disk")
        return FileResponse(path)

    @app.get("/v1/info")
    async def info() -> dict:
        """Summary of the index: counts, classes, backbone, thresholds."""
        return await worker.call(worker.engine.info)

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok", "items": len(worker.engine.index), "version": worker.engine.index.version}

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> str:
        return (STATIC / "index.html").read_text()

    return app


def relabel_message(message: str, names: dict[str, str]) -> str:
    """Replace server-side temp paths in an error message by the names the client gave."""
    for path, name in names.items():
        message = message.replace(path, name)
    return message


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(index_dir=None, host: str = "127.0.0.1", port: int = 8000, allow_remote: bool = False, **limits) -> None:
    """Run the app with uvicorn; a non-loopback host needs allow_remote (the API has no authentication)."""
    import uvicorn

    if not is_loopback(host) and not allow_remote:
        raise SimengineError(f"refusing to listen on {host}: the API has no authentication; pass --allow-remote to do it anyway")
    uvicorn.run(create_app(index_dir, **limits), host=host, port=port, log_level="warning")


PAIR_EXAMPLE = {"a": "upload:a.jpg", "b": "id:12", "same": True, "distance": 0.0965, "distance_threshold": 0.6515,
                "head_probability": 0.9972, "score": 0.9972, "threshold": 0.1613, "decision": "head"}
TRIPLET_EXAMPLE = {"images": ["upload:a.jpg", "upload:b.jpg", "id:12"], "any_match": True, "matching_pairs": [[0, 2]],
                   "pairs": [{"pair": [0, 1], "distance": 1.17, "head_probability": 0.0003, "score": 0.0003, "match": False},
                             {"pair": [0, 2], "distance": 0.17, "head_probability": 0.9961, "score": 0.9961, "match": True},
                             {"pair": [1, 2], "distance": 1.0, "head_probability": 0.0011, "score": 0.0011, "match": False}],
                   "threshold": 0.3558, "decision": "head"}
SEARCH_EXAMPLE = {"query": "upload:a.jpg", "k": 1, "neighbours": [
    {"id": 9364, "path": "/data/train/n03888257/n03888257_7046.JPEG", "label": "n03888257", "class_name": "parachute",
     "distance": 0.0168, "head_probability": 0.9947, "verified": True}],
    "predicted_class": "n03888257", "confidence": 1.0, "verified_count": 1}
