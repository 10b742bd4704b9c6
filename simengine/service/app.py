"""`simengine serve`: the query layer over HTTP (JSON under /v1, OpenAPI at /openapi.json and /docs, Prometheus
metrics at /metrics) and a web page at /.

A request's uploads are decoded from memory in a thread pool and embedded in dynamic batches with those of every
other request in flight (service.embedding); the question itself is answered on the engine's own thread, where its
SQLite connection lives. Middlewares (service.security, service.telemetry) refuse what must be refused before the
body is read, and give every response its security headers and request id.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable

from fastapi import FastAPI, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from PIL import Image
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartParser
from starlette.middleware.trustedhost import TrustedHostMiddleware

from simengine.curation import LABEL_NEIGHBOURS, OUTLIER_NEIGHBOURS
from simengine.curation.label_errors import find_label_errors
from simengine.curation.outliers import find_outliers
from simengine.curation.projection import index_map
from simengine.data.decode import MAX_PIXELS, image_format
from simengine.dedup.groups import COPY_KINDS, KEEP_RULES
from simengine.dedup.near import NEIGHBOURS
from simengine.errors import (BundleError, ImageLoadError, IndexUnusableError, ModelChangedError, NotCalibratedError,
                              SimengineError, UnsupportedImageError)
from simengine.index.duplicates import move_index_duplicates
from simengine.query.engine import Engine
from simengine.service.batching import QueueFull
from simengine.service.curation import CurationReports
from simengine.service.reviews import THUMBNAIL_SIZES, DedupReview, Thumbnails
from simengine.service.embedding import MAX_BATCH_SIZE, MAX_WAIT_S, UploadEmbedder, in_thread
from simengine.service.security import (LOOPBACK_HOSTS, ApiKeyGuard, BodyLimit, ConcurrencyLimit, SecurityHeaders,
                                        allowed_hosts, check_exposure, error_body, header_deadline_protocol)
from simengine.service.telemetry import Metrics, RequestIdFilter, Telemetry
from simengine.store import browse

log = logging.getLogger("simengine.service")

STATIC = Path(__file__).parent / "static"
MULTIPART_OVERHEAD = 2**20  # headers, boundaries and form fields around the uploads of one request


class PerVersion:
    """Answers that only a new index version changes, computed once each on the engine's thread."""

    def __init__(self, worker: "EngineWorker"):
        self.worker, self.version, self.answers = worker, None, {}

    def get(self, name: str, compute: Callable[[], Any]) -> Any:
        self.worker.engine.refresh()
        if self.version != self.worker.engine.index.version:
            self.version, self.answers = self.worker.engine.index.version, {}
        if name not in self.answers:
            self.answers[name] = compute()
        return self.answers[name]


class PageQuery(BaseModel):
    filters: list = Field(default_factory=list, max_length=64)
    sort: str = Field("id", max_length=200)
    descending: bool = False
    offset: int = Field(0, ge=0)
    limit: int = Field(60, ge=1, le=browse.MAX_PAGE)


@dataclass(frozen=True)
class ServiceLimits:
    """What one server accepts. Request bodies in memory are bounded by 2 x max_pending x max_body_bytes: those still
    arriving together, and those of the requests in progress."""

    max_upload_bytes: int = 10 * 2**20  # per image
    max_pixels: int = MAX_PIXELS  # per image, checked from its header
    timeout_s: float = 30.0  # for a request's body to arrive (then 408), and again for its answer (then 504)
    header_timeout_s: float = 10.0  # for a request's headers to arrive (then the connection is closed)
    max_pending: int = 128  # API requests in progress, then 503 + Retry-After (a burst of 64 fits)
    max_batch_size: int = MAX_BATCH_SIZE  # images per embedding batch
    max_wait_s: float = MAX_WAIT_S  # how long a batch waits for more images

    def __post_init__(self):
        for name in ("max_upload_bytes", "max_pixels", "timeout_s", "header_timeout_s", "max_pending",
                     "max_batch_size"):
            if getattr(self, name) <= 0:
                raise SimengineError(f"{name} must be positive, got {getattr(self, name)}")
        if self.max_wait_s < 0:
            raise SimengineError(f"max_wait_s must not be negative, got {self.max_wait_s}")

    @property
    def max_body_bytes(self) -> int:
        return 3 * self.max_upload_bytes + MULTIPART_OVERHEAD


class EngineWorker:
    """Runs every engine call on one dedicated thread (the engine's SQLite connection lives there)."""

    def __init__(self, open_engine: Callable[[], Engine]):
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="simengine-engine")
        self.engine: Engine = self.pool.submit(open_engine).result()

    async def call(self, fn: Callable, *args):
        return await in_thread(self.pool, fn, *args)

    def close(self) -> None:
        self.pool.shutdown()


def create_app(index_dir: str | os.PathLike | None = None, mode: str | None = None,
               limits: ServiceLimits = ServiceLimits(), api_key: str | None = None,
               hosts: list[str] | tuple[str, ...] = LOOPBACK_HOSTS, runtime: str = "auto",
               open_engine: Callable[[], Engine] | None = None, remote_embed=None,
               move_duplicates_to: str | os.PathLike | None = None) -> FastAPI:
    """The HTTP app over one index (the model and index are loaded here, once, by `open_engine` when given: a
    sharded index on Ray Serve, say; `remote_embed` then embeds uploads, see `UploadEmbedder`). `api_key` protects
    /v1 and /metrics; `hosts` are the Host names answered. Only with `move_duplicates_to` may a client move the
    duplicates a review found (into that folder, removing them from the index): the server's one write."""
    # Starlette spools an upload to a temporary file past this size; keep every accepted body in memory.
    MultiPartParser.spool_max_size = max(MultiPartParser.spool_max_size, limits.max_body_bytes)
    worker = EngineWorker(open_engine or (lambda: Engine.open(index_dir, mode, runtime, max_pixels=limits.max_pixels)))
    metrics = Metrics()
    # Up to three images per admitted request: the batcher's own bound is never the one that refuses first.
    max_queued = max(3 * limits.max_pending, limits.max_batch_size)
    embedder = UploadEmbedder(limits.max_batch_size, limits.max_wait_s, max_queued, on_batch=metrics.observe_batch,
                              remote=remote_embed)
    metrics.queue_depth.set_function(lambda: embedder.batcher.depth)
    metrics.index_version.set_function(lambda: worker.engine.index.version)
    reports = CurationReports()
    review, thumbnails = DedupReview(), Thumbnails()
    moving = asyncio.Lock()
    per_version = PerVersion(worker)  # the column summary and the thresholds' evidence: each once per version

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        embedder.close()  # uvicorn has finished the requests in flight by now
        reports.close()
        review.close()
        worker.close()

    app = FastAPI(title="simengine", version="1", lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Image similarity: pair, triplet and neighbour queries. With an API key set, send "
                              "`Authorization: Bearer KEY` (or `X-API-Key: KEY`) to /v1 and /metrics.")
    app.state.worker, app.state.embedder, app.state.metrics = worker, embedder, metrics
    # A request slot is taken only once its body has arrived: BodyLimit, outside, reads the whole body first.
    app.add_middleware(ConcurrencyLimit, max_requests=limits.max_pending, gauge=metrics.in_progress)
    app.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes, timeout_s=limits.timeout_s,
                       max_arriving_bytes=limits.max_pending * limits.max_body_bytes)
    app.add_middleware(ApiKeyGuard, api_key=api_key)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(hosts), www_redirect=False)
    app.add_middleware(Telemetry, metrics=metrics)
    app.add_middleware(SecurityHeaders)
    app.mount("/static/swagger", StaticFiles(directory=_swagger_assets()), name="swagger")
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        return JSONResponse(error_body(exc.status_code, exc.detail), status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        message = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        return JSONResponse(error_body(422, message), status_code=422)

    async def read_upload(upload: UploadFile, n: int) -> tuple[str, bytes]:
        """(display name, bytes) of one upload; the name is the client's, made safe, and only ever shown. Its
        declared content type is not trusted either way: the decoder decides (service.embedding)."""
        name = "upload:" + re.sub(r"[^\w.\- ]", "_", upload.filename or f"image{n}")[:200]
        data = await upload.read(limits.max_upload_bytes + 1)
        if len(data) > limits.max_upload_bytes:
            raise HTTPException(413, f"{name}: larger than {limits.max_upload_bytes / 2**20:g} MB")
        return name, data

    async def ask_engine(fn: Callable, *args):
        """`fn(*args)` on the engine's thread; an index or model that cannot be read is the server's problem (503,
        details in its log only), not the client's."""
        try:
            return await worker.call(fn, *args)
        except (IndexUnusableError, BundleError) as exc:
            log.error("the index cannot be served: %s", exc)
            raise HTTPException(503, "the index is unavailable right now; see the server's log",
                                headers={"Retry-After": "5"}) from None

    async def item(item_id: int) -> dict[str, Any]:
        try:
            return await ask_engine(worker.engine.item, item_id)
        except SimengineError:
            raise HTTPException(404, f"no item with id {item_id}") from None

    async def only_fields(request: Request, *names: str) -> None:
        """Refuse a form field this endpoint does not read: a `where` the client thinks filters, say, would
        otherwise be ignored without a word."""
        if unknown := sorted(set((await request.form()).keys()) - set(names)):
            raise HTTPException(400, f"unknown form field {unknown[0][:40]!r}; this endpoint reads "
                                     f"{', '.join(repr(n) for n in names)}")

    async def answer(question: Callable, want: int, uploads: list[UploadFile], ids: list[int]) -> dict:
        if len(uploads) + len(ids) != want:
            raise HTTPException(400, f"give exactly {want} images (uploads in 'images' and/or indexed 'ids'), "
                                     f"got {len(uploads) + len(ids)}")
        for item_id in ids:
            await item(item_id)
        files = [await read_upload(upload, n) for n, upload in enumerate(uploads)]
        return await within_limits(embed_and_ask(question, files, ids))

    async def embed_and_ask(question: Callable, files: list[tuple[str, bytes]], ids: list[int]):
        embedded = await embedder.embed(worker.engine.model, files) if files else []
        return await ask_engine(question, *embedded, *(f"id:{i}" for i in ids))

    async def within_limits(work: Awaitable) -> dict:
        """The answer of `work` within the time limit, or the HTTP error that says what went wrong."""
        try:
            result = await asyncio.wait_for(work, limits.timeout_s)
        except Exception as exc:
            if (error := http_error_for(exc, limits.timeout_s)) is None:
                raise
            raise error from None
        return result.to_dict()

    @app.post("/v1/pair", responses={200: {"content": {"application/json": {"example": PAIR_EXAMPLE}}}})
    async def pair(request: Request, images: list[UploadFile] = File(default=[]),
                   ids: list[int] = Form(default=[])) -> dict:
        """Are two images the same class? Multipart: repeated `images` uploads and/or `ids` of indexed items."""
        await only_fields(request, "images", "ids")
        return await answer(worker.engine.pair, 2, images, ids)

    @app.post("/v1/triplet", responses={200: {"content": {"application/json": {"example": TRIPLET_EXAMPLE}}}})
    async def triplet(request: Request, images: list[UploadFile] = File(default=[]),
                      ids: list[int] = Form(default=[])) -> dict:
        """Do at least two of three images share a class?"""
        await only_fields(request, "images", "ids")
        return await answer(worker.engine.triplet, 3, images, ids)

    @app.post("/v1/search", responses={200: {"content": {"application/json": {"example": SEARCH_EXAMPLE}}}})
    async def search(request: Request, image: UploadFile | None = File(default=None),
                     id: int | None = Form(default=None), k: int = Query(5, ge=1, le=100),
                     include_self: bool = Query(False)) -> dict:
        """Nearest indexed neighbours of an uploaded `image` or an indexed `id` (the item itself left out unless
        `include_self`), verified by the pair head."""
        await only_fields(request, "image", "id")
        uploads, ids = ([image] if image is not None else []), ([id] if id is not None else [])
        return await answer(lambda ref: worker.engine.neighbours(ref, k, include_self=include_self), 1, uploads, ids)

    @app.post("/v1/duplicates")
    async def duplicates(request: Request, image: UploadFile = File(...),
                         k: int = Query(NEIGHBOURS, ge=1, le=32)) -> dict:
        """Indexed copies of an uploaded `image` (exact, or resized, recompressed, cropped, recoloured, watermarked):
        the same picture, not the same class. Candidates are its `k` nearest items."""
        await only_fields(request, "image")
        name, data = await read_upload(image, 0)
        return await within_limits(ask_engine(worker.engine.copies, data, name, k))

    @app.get("/v1/items/{item_id}")
    async def get_item(item_id: int) -> dict:
        """Metadata of an indexed item."""
        return await item(item_id)

    @app.get("/v1/items/{item_id}/image", responses={200: {"content": {"image/jpeg": {}, "image/png": {}}}})
    async def get_item_image(item_id: int):
        """The bytes of an indexed image, with the content type of the format read from the file itself (only
        paths recorded in the index, and only JPEG, PNG, GIF, BMP, TIFF and WebP files, are ever served)."""
        path = Path((await item(item_id))["path"])
        found = await asyncio.to_thread(image_format, path)
        if found is None:
            on_disk = await asyncio.to_thread(path.is_file)
            raise HTTPException(404, f"the image of item {item_id} is no longer on disk" if not on_disk else
                                f"the file of item {item_id} is not an image served over HTTP")
        return FileResponse(path, media_type=mime_type(found))

    async def curation(question: Callable, *args) -> dict:
        await ask_engine(worker.engine.refresh)  # the version on disk now
        try:
            return await reports.report(question, str(worker.engine.index.path), worker.engine.index.version, args,
                                        limits.timeout_s)
        except Exception as exc:
            if (error := http_error_for(exc, limits.timeout_s)) is None:
                raise
            raise error from None

    @app.get("/v1/curate/label-errors")
    async def label_errors(k: int = Query(LABEL_NEIGHBOURS, ge=1, le=100), top: int = Query(100, ge=1, le=10_000)) -> dict:
        """Items whose label the rest of the collection disagrees with, worst first (the `top` ones): the `k` nearest
        other pictures' vote with a cross-validated linear head, out of sample; each with the label it looks like and
        the neighbours that disagree."""
        return await curation(find_label_errors, k, top)

    @app.get("/v1/curate/outliers")
    async def outliers(k: int = Query(OUTLIER_NEIGHBOURS, ge=1, le=200), top: int = Query(100, ge=1, le=10_000),
                       within_labels: bool = Query(False)) -> dict:
        """Items unlike the rest of the collection (or of their label), most unusual first."""
        return await curation(find_outliers, k, top, within_labels)

    async def from_index(read: Callable[[Any], Any]) -> Any:
        """`read(index)` of the version on disk now, on the engine's thread; what the store refuses (a column that
        is not there, say) is the client's 400."""
        def run():
            worker.engine.refresh()
            return read(worker.engine.index)

        try:
            return await ask_engine(run)
        except SimengineError as exc:
            raise HTTPException(400, str(exc)) from None

    async def items_page(filters: str | list, sort: str, descending: bool, offset: int, limit: int) -> Response:
        chosen = parse_filters(filters)
        found = await from_index(lambda index: browse.page(index.conn, index.version, chosen, sort, descending,
                                                           offset, limit))
        return json_response({"total": found.total, "offset": found.offset, "items": found.rows})

    @app.get("/v1/items")
    async def list_items(offset: int = Query(0, ge=0), limit: int = Query(60, ge=1, le=browse.MAX_PAGE),
                         sort: str = Query("id"), descending: bool = Query(False),
                         filters: str = Query("[]", max_length=8192)) -> Response:
        """A page of the live items, for the gallery: `filters` is a JSON list of {column, op, value} (ops: eq, ne,
        min, max, contains, in, missing, present), every value bound, never SQL; `sort` is a column. POST
        /v1/items/page takes the same as a JSON body, for long filters (a selection of ids)."""
        return await items_page(filters, sort, descending, offset, limit)

    @app.post("/v1/items/page")
    async def page_of_items(query: PageQuery) -> Response:
        """A page of the live items, as GET /v1/items, with the query as a JSON body."""
        return await items_page(query.filters, query.sort, query.descending, query.offset, query.limit)

    @app.get("/v1/columns")
    async def columns() -> Response:
        """The items' columns for the gallery's filters: each one's kind (number or text), how many lack a value,
        a number column's bounds, and the values (with counts) of a text column that has few."""
        def read() -> dict[str, Any]:
            index = worker.engine.index
            return {"version": index.version, "items": len(index), "labelled": worker.engine.labelled,
                    "columns": browse.column_summary(index.conn, index.version, skip=("sha256",))}

        return json_response(await ask_engine(per_version.get, "columns", read))

    @app.get("/v1/items/{item_id}/thumbnail", responses={200: {"content": {"image/jpeg": {}}}})
    async def get_item_thumbnail(item_id: int, size: int = Query(256)):
        """A small JPEG of an indexed image (`size`: 128, 256 or 512 pixels at most on its longer side), made once
        and kept."""
        if size not in THUMBNAIL_SIZES:
            raise HTTPException(400, f"size is one of {', '.join(map(str, THUMBNAIL_SIZES))}")
        found = await item(item_id)
        try:
            data = await asyncio.to_thread(thumbnails.get, found["path"], found["sha256"], size)
        except ImageLoadError:
            raise HTTPException(404, f"the image of item {item_id} cannot be read any more") from None
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})

    @app.get("/v1/map")
    async def projection_map() -> Response:
        """2-D coordinates (in [0, 1]) of every live item, for the map: t-SNE of the stored vectors, computed once
        per index version and kept in the index directory. 503 with Retry-After while it is being computed."""
        # Encoded directly: FastAPI's encoder walks each of the 300,000 numbers of a 100,000-point map in Python.
        return await asyncio.to_thread(json_response, await curation(index_map))

    @app.get("/v1/map/colours")
    async def map_colours(column: str = Query("label", max_length=200)) -> Response:
        """The value of `column` for every live item (ids ascending), as codes into `names`: the 11 commonest
        values, then "other"; items without a value have code -1."""
        return json_response(await from_index(lambda index: browse.value_codes(index.conn, index.version, column)))

    @app.get("/v1/calibration")
    async def calibration_curves() -> dict:
        """What the served thresholds stand on: score histograms of same- and different-label pairs drawn from the
        index's labelled items, the ROC curve, and the thresholds; `estimated` when the index has too few labels."""
        return await ask_engine(per_version.get, "calibration", worker.engine.score_curves)

    @app.post("/v1/dedup")
    async def start_dedup(request: Request, copies: str = Query("edited"), keep: str = Query("largest")) -> dict:
        """Start the duplicate search over the served index's items (or answer the one running): follow it with
        GET /v1/dedup."""
        same_origin_only(request)
        if copies not in COPY_KINDS or keep not in KEEP_RULES:
            raise HTTPException(400, f"copies is one of {', '.join(COPY_KINDS)}; keep one of {', '.join(KEEP_RULES)}")
        return dict(review.start(str(worker.engine.index.path), copies, keep), moves_allowed=move_duplicates_to is not None)

    @app.get("/v1/dedup")
    async def dedup_status() -> dict:
        """The duplicate search's state (idle, running, done with its groups, keeper first, or failed)."""
        return dict(review.status(), moves_allowed=move_duplicates_to is not None)

    @app.post("/v1/dedup/move")
    async def move_duplicates(request: Request) -> dict:
        """Move aside the duplicates of the reviewed groups a JSON body names, {"keepers": {GROUP: ITEM_ID}},
        keeping the chosen item of each, and remove them from the index. Only on a server started with
        --move-duplicates-to; files go into that folder, by the same plan and checks as `simengine dedup --move-to`."""
        if move_duplicates_to is None:
            raise HTTPException(403, "this server does not move files: start it with --move-duplicates-to FOLDER")
        same_origin_only(request)
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            raise HTTPException(415, "send the body as application/json")
        try:
            body = await request.json()
            keepers = {int(g): int(i) for g, i in dict(body["keepers"]).items()}
        except (ValueError, KeyError, TypeError):
            raise HTTPException(400, 'the body is {"keepers": {"GROUP": ITEM_ID, ...}}') from None
        async with moving:  # one move at a time, each against the index version its review read
            report = review.report
            if report is None:
                raise HTTPException(409, "no finished duplicate review to act on: POST /v1/dedup first")
            await ask_engine(worker.engine.refresh)
            if review.state.get("version") != worker.engine.index.version:
                raise HTTPException(409, "the index changed since the review: run the review again")
            try:
                moves = await asyncio.to_thread(move_index_duplicates, worker.engine.index.path, report, keepers,
                                                move_duplicates_to)
            except SimengineError as exc:
                raise HTTPException(400, str(exc)) from None
            return moves.to_dict()

    @app.get("/v1/info")
    async def info() -> Response:
        """Summary of the index: counts, classes, backbone, thresholds."""
        summary = await ask_engine(worker.engine.info)
        # Encoded as the CLI's --json encodes it: items without a label count under "null" (FastAPI wrote "None").
        return json_response(summary)

    @app.get("/healthz")
    async def healthz() -> dict:
        await ask_engine(worker.engine.refresh)  # the version on disk now, not the one of the last question
        return {"status": "ok", "items": len(worker.engine.index), "version": worker.engine.index.version}

    @app.get("/metrics", include_in_schema=False)
    async def prometheus_metrics() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        await ask_engine(worker.engine.refresh)  # the index-version gauge reads the engine's version
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> FileResponse:
        return FileResponse(STATIC / "docs.html")

    return app


def same_origin_only(request: Request) -> None:
    """Refuse a request another site's page made a browser send (a form or a no-cors fetch to 127.0.0.1): browsers
    say so in Sec-Fetch-Site; clients that are no browser send none."""
    if request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
        raise HTTPException(403, "cross-site requests may not start or act on a duplicate review")


def json_response(value: Any) -> Response:
    """`value` as JSON, encoded as the CLI's --json encodes it (str() for what JSON lacks: paths, dates), and by
    json.dumps rather than FastAPI's encoder, which walks every number of a large answer in Python."""
    return Response(json.dumps(value, default=str), media_type="application/json")


def parse_filters(filters: str | list) -> list[browse.Filter]:
    """The gallery's filters from a JSON list (as text in a query string, or parsed from a body); 400 otherwise."""
    try:
        value = json.loads(filters) if isinstance(filters, str) else filters
    except ValueError:
        value = None
    if not isinstance(value, list):
        raise HTTPException(400, "filters must be a JSON list")
    try:
        return [browse.Filter.from_dict(f) for f in value]
    except SimengineError as exc:
        raise HTTPException(400, str(exc)) from None


def http_error_for(exc: BaseException, timeout_s: float) -> HTTPException | None:
    """The one mapping of what went wrong with a question to its HTTP answer; None for what is no known failure."""
    if isinstance(exc, HTTPException):
        return exc
    if isinstance(exc, asyncio.TimeoutError):
        return HTTPException(504, f"the request took longer than {timeout_s:g} s")
    if isinstance(exc, NotCalibratedError):
        log.error("%s", exc)
        return HTTPException(501, "this index's model has no same-picture calibration; see the server's log")
    if isinstance(exc, UnsupportedImageError):
        return HTTPException(415, str(exc))
    if isinstance(exc, ImageLoadError):
        return HTTPException(422, str(exc))
    if isinstance(exc, (QueueFull, ModelChangedError)):
        return HTTPException(503, str(exc), headers={"Retry-After": "1"})
    if isinstance(exc, SimengineError):
        return HTTPException(400, str(exc))
    return None


def mime_type(pillow_format: str) -> str:
    """The content type of a Pillow format (one of data.decode.WEB_FORMATS, which Pillow registers as it opens them);
    a JPEG with extra pictures, as phones write for HDR, opens as MPO and is served as the JPEG it is."""
    return "image/jpeg" if pillow_format == "MPO" else Image.MIME[pillow_format]


def _swagger_assets() -> Path:
    """Swagger UI's files, bundled by the fastapi-offline package: the docs page works with no internet."""
    import fastapi_offline

    return Path(fastapi_offline.__file__).parent / "static"


def serve(index_dir: str | os.PathLike | None = None, host: str = "127.0.0.1", port: int = 8000,
          allow_remote: bool = False, api_key: str | None = None, no_auth: bool = False,
          extra_hosts: list[str] | tuple[str, ...] = (), mode: str | None = None,
          limits: ServiceLimits = ServiceLimits(), runtime: str = "auto",
          move_duplicates_to: str | os.PathLike | None = None) -> None:
    """Run the app with uvicorn until SIGINT/SIGTERM, then finish the requests in flight. Beyond loopback it needs
    allow_remote, and an API key unless no_auth. `move_duplicates_to` lets the web app move reviewed duplicates
    into that folder (see `create_app`)."""
    import uvicorn

    check_exposure(host, allow_remote, api_key, no_auth)
    _check_port_free(host, port)
    hosts = allowed_hosts(host, extra_hosts)
    _unmap_large_blocks_when_freed()
    if move_duplicates_to is not None and Path(move_duplicates_to).exists() and not Path(move_duplicates_to).is_dir():
        raise SimengineError(f"--move-duplicates-to {move_duplicates_to} is a file, not a folder")
    app = create_app(index_dir, mode, limits, api_key, hosts, runtime, move_duplicates_to=move_duplicates_to)
    _log_request_ids()
    if host in ("0.0.0.0", "::") and not extra_hosts:
        log.warning("listening on all interfaces, but answering only the Host names %s: add --allowed-host NAME "
                    "for each name or address clients use", ", ".join(hosts))
    shown = f"[{host}]" if ":" in host else host
    log.info("serving on http://%s:%d/ (API docs at /docs, metrics at /metrics%s)", shown, port,
             ", API key required" if api_key else "")
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False, server_header=False,
                timeout_graceful_shutdown=int(limits.timeout_s) + 5,
                http=header_deadline_protocol(limits.header_timeout_s))


def _check_port_free(host: str, port: int) -> None:
    """Refuse in one line, before the model loads and "serving on" is said, a port another process listens on
    (uvicorn would log its own error and exit 3). A bind that is let go at once: SO_REUSEADDR, as uvicorn binds."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise SimengineError(f"cannot listen on {host}:{port} ({(exc.strerror or str(exc)).lower()}): stop what "
                                 "uses it, or give another --port") from None


M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter


def _unmap_large_blocks_when_freed() -> None:
    """Blocks of 1 MB and more (decoded uploads, batches) get their own mappings, returned to the system when freed.
    glibc's default threshold rises with every such block freed, after which big blocks come from the heap and stay
    there: a server that had decoded a few large uploads held hundreds of MB for good. No-op where libc is not glibc."""
    import ctypes
    import ctypes.util

    try:
        done = ctypes.CDLL(ctypes.util.find_library("c")).mallopt(M_MMAP_THRESHOLD, 2**20)
    except (OSError, AttributeError):
        done = 0
    if not done:
        log.debug("mallopt refused or absent (not glibc): large blocks are freed as the C library does it")


def _log_request_ids() -> None:
    """simengine's log lines, while serving, carry the time and the request id they belong to."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s [%(request_id)s] %(message)s"))
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger("simengine")
    root.handlers, root.propagate = [handler], False


PAIR_EXAMPLE = {"a": "upload:a.jpg", "b": "id:12", "same": True, "distance": 0.0965, "distance_threshold": 0.6515,
                "head_probability": 0.9972, "score": 0.9972, "threshold": 0.1613, "decision": "head"}
TRIPLET_EXAMPLE = {"images": ["upload:a.jpg", "upload:b.jpg", "id:12"], "any_match": True, "matching_pairs": [[0, 2]],
                   "pairs": [{"pair": [0, 1], "distance": 1.17, "head_probability": 0.0003, "score": 0.0003, "match": False},
                             {"pair": [0, 2], "distance": 0.17, "head_probability": 0.9961, "score": 0.9961, "match": True},
                             {"pair": [1, 2], "distance": 1.0, "head_probability": 0.0011, "score": 0.0011, "match": False}],
                   "threshold": 0.3558, "decision": "head"}
SEARCH_EXAMPLE = {"query": "upload:a.jpg", "k": 1, "neighbours": [
    {"id": 9364, "path": "/data/train/n03888257/n03888257_7046.JPEG", "label": "parachute",
     "distance": 0.0168, "head_probability": 0.9947, "verified": True, "metadata": {"wnid": "n03888257"}}],
    "predicted_class": "parachute", "confidence": 1.0, "verified_count": 1, "votes": 1, "restricted": False}
