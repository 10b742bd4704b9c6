"""The backbone encoder: batch embedding of image files, with bad files reported instead of raised."""

from __future__ import annotations

import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from simengine.errors import ImageLoadError, SimengineError
from simengine.data.decode import MAX_PIXELS, load_rgb
from simengine.model.preprocess import Preprocess
from simengine.model.runtimes import Runtime, TorchRuntime, onnxruntime_version, usable_cores

log = logging.getLogger(__name__)

RUNTIMES = ("auto", "onnxruntime", "openvino", "openvino-bf16", "openvino-int8", "torch")


@dataclass
class EmbedResult:
    """Vectors for the files that decoded (rows follow `ok`), and (index, path, reason) for those that did not."""

    vectors: np.ndarray
    ok: list[int]
    failed: list[tuple[int, str, str]] = field(default_factory=list)


class Encoder:
    """A backbone with its own preprocessing; `embed_paths` returns pooled pre-logit features."""

    def __init__(self, identity: dict[str, Any], runtime: Runtime, dim: int, torch_model=None,
                 runtime_choice: dict[str, Any] | None = None):
        self.identity, self.runtime, self.dim, self.torch_model = identity, runtime, dim, torch_model
        self.runtime_choice = runtime_choice  # the measurement behind an "auto" choice
        self.preprocess = Preprocess(identity["data_config"])
        self.max_pixels = MAX_PIXELS  # images larger than this are refused (ImageLoadError)

    @classmethod
    def load(
        cls, name: str | None = None, weights: str | os.PathLike | None = None, runtime: str = "auto"
    ) -> "Encoder":
        """Choose a backbone (see backbones.choose_backbone), load it, and pick the fastest runtime available."""
        import timm.data

        from simengine.model.backbones import choose_backbone, create_backbone

        choice = choose_backbone(name, weights)
        log.info("backbone: %s", choice.reason)
        model = create_backbone(choice.name, choice.weights)
        data_config = timm.data.resolve_data_config({}, model=model)
        identity = {
            "backbone": choice.name,
            "weights_source": choice.weights.source,
            "weights_sha256": choice.weights.sha256,
            "weights_path": str(choice.weights.path) if choice.weights.source.startswith("file:") else None,
            "data_config": {k: list(v) if isinstance(v, tuple) else v for k, v in data_config.items()},
        }
        return cls.from_torch(identity, model, runtime)

    @classmethod
    def from_torch(cls, identity: dict[str, Any], model, runtime: str = "auto") -> "Encoder":
        """Wrap a torch backbone; with ONNX Runtime installed, export it once (into the cache) and run that export on
        the runtime asked for ("auto": the fastest measured here)."""
        if runtime not in RUNTIMES:
            raise SimengineError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")
        dim = int(model.num_features)
        if runtime == "torch" or (runtime == "auto" and onnxruntime_version() is None):
            return cls(identity, TorchRuntime(model), dim, model)
        if onnxruntime_version() is None:
            raise SimengineError(f"runtime {runtime} needs onnxruntime (it checks the ONNX export), which is not "
                                 "installed")
        path = cached_onnx_path(identity)
        record = ensure_onnx(model, identity, path)
        runtime_, choice = backbone_runtime(path, record["sha256"], tuple(identity["data_config"]["input_size"]),
                                            runtime)
        return cls(identity, runtime_, dim, model, choice)

    @property
    def name(self) -> str:
        return self.identity["backbone"]

    def load_image(self, source: str | os.PathLike | bytes, name: str | None = None,
                   formats: tuple[str, ...] | None = None) -> np.ndarray:
        """Decode and preprocess one file, or the bytes of one, to a CHW float32 array. Every failure is an
        ImageLoadError naming the image (see data.decode.load_rgb for `name` and `formats`)."""
        side = self.preprocess.resize_side
        try:
            return self.preprocess(load_rgb(source, draft_size=(side, side), max_pixels=self.max_pixels, name=name,
                                            formats=formats))
        except ImageLoadError:
            raise
        except Exception as exc:  # an odd image failing in preprocessing is the image's problem, not the batch's
            shown = name or ("<bytes>" if isinstance(source, bytes) else str(source))
            raise ImageLoadError(f"{shown}: cannot preprocess ({exc})") from exc

    def forward(self, batch: np.ndarray, flip: bool = False) -> np.ndarray:
        """Features of a preprocessed NCHW batch; with flip, the mean over the image and its mirror."""
        features = self.runtime(batch)
        if flip:
            features = (features + self.runtime(batch[..., ::-1])) / 2
        return features.astype(np.float32, copy=False)

    def embed_paths(
        self,
        paths: Sequence[str | os.PathLike],
        batch_size: int = 32,
        workers: int | None = None,
        flip: bool = False,
        progress: bool = False,
    ) -> EmbedResult:
        """Embed image files, decoding in a thread pool (one thread per usable core) one batch ahead of inference;
        undecodable files go to `failed`."""
        from tqdm import tqdm

        workers = workers or usable_cores()
        vectors, ok, failed = [], [], []
        starts = range(0, len(paths), batch_size)
        with ThreadPoolExecutor(workers) as pool, \
                tqdm(total=len(paths), unit="img", desc="embedding", disable=not progress) as bar:
            pending = self._submit(pool, paths, 0, batch_size)
            for start in starts:
                batch = [(i, f.result()) for i, f in pending]
                pending = self._submit(pool, paths, start + batch_size, batch_size)
                good = [(i, x) for i, x in batch if isinstance(x, np.ndarray)]
                for i, reason in ((i, x) for i, x in batch if not isinstance(x, np.ndarray)):
                    log.debug("skipped %s", reason)  # returned to the caller, who reports it once
                    failed.append((i, str(paths[i]), reason))
                if good:
                    vectors.append(self.forward(np.stack([x for _, x in good]), flip=flip))
                    ok.extend(i for i, _ in good)
                bar.update(len(batch))
        matrix = np.concatenate(vectors) if vectors else np.zeros((0, self.dim), np.float32)
        return EmbedResult(matrix, ok, failed)

    def _submit(self, pool, paths, start, batch_size):
        return [(i, pool.submit(self._load_or_reason, paths[i])) for i in range(start, min(start + batch_size, len(paths)))]

    def _load_or_reason(self, path) -> np.ndarray | str:
        try:
            return self.load_image(path)
        except ImageLoadError as exc:
            return str(exc)


def backbone_runtime(onnx_path: Path, export_sha256: str, input_shape: tuple[int, ...], runtime: str
                     ) -> tuple[Runtime, dict[str, Any] | None]:
    """The runtime for a backbone export: the one named, or for "auto" the fastest measured on this machine (with
    the record of the measurement)."""
    if runtime not in RUNTIMES or runtime == "torch":
        raise SimengineError(f"not an ONNX runtime: {runtime!r}")
    if runtime == "auto":
        from simengine.model.runtime_choice import choose_runtime

        return choose_runtime(onnx_path, export_sha256, input_shape)
    from simengine.model.runtime_choice import make_runtime

    try:
        return make_runtime(onnx_path, runtime, export_sha256), None
    except ImportError as exc:
        raise SimengineError(f"runtime {runtime} requested but not installed ({exc}); pip install "
                             "openvino") from exc


def cached_onnx_path(identity: dict[str, Any]) -> Path:
    from simengine.files import cache_dir

    return cache_dir() / "onnx" / f"{identity['backbone']}-{identity['weights_sha256'][:12]}.onnx"


def ensure_onnx(model, identity: dict[str, Any], path: Path) -> dict[str, Any]:
    """Make `path` an ONNX export of `model`: reuse a current one there or in the cache, else export (once) to the cache."""
    import shutil

    from simengine.model.runtimes import export_onnx

    cached = cached_onnx_path(identity)
    for candidate in dict.fromkeys([path, cached]):
        record = _current_export_record(candidate, identity)
        if record is not None:
            if candidate != path:
                shutil.copyfile(candidate, path)
            return record
    log.info("exporting %s to ONNX at %s", identity["backbone"], cached)
    record = export_onnx(model, cached, tuple(identity["data_config"]["input_size"]))
    record["weights_sha256"] = identity["weights_sha256"]
    cached.with_suffix(".json").write_text(json.dumps(record, indent=2))
    if path != cached:
        shutil.copyfile(cached, path)
    return record


def _current_export_record(path: Path, identity: dict[str, Any]) -> dict[str, Any] | None:
    """The export record beside `path` when it is for these weights and the file still matches it."""
    from simengine.files import sha256_file

    record_path = path.with_suffix(".json")
    if not (path.is_file() and record_path.is_file()):
        return None
    record = json.loads(record_path.read_text())
    if record.get("weights_sha256") != identity["weights_sha256"] or record.get("sha256") != sha256_file(path):
        return None
    return record
