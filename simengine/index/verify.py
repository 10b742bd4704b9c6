"""Checking an index without changing a byte of it: the store's files, then the model and the calibration its
live version names. Every problem is one line, never a traceback."""

from __future__ import annotations

import os

from simengine.errors import IndexUnusableError
from simengine.index.model_link import check_index_fields
from simengine.store.layout import StoreDir
from simengine.store.verify import guarded, verify_store


def verify_index(path: str | os.PathLike) -> list[str]:
    """Every inconsistency of the live version: segment hashes and counts, FAISS ids against SQLite rows, the model.
    An empty list means the index is sound."""
    manifest, problems = verify_store(path)
    if manifest is None:
        return problems
    try:
        check_index_fields(manifest, StoreDir(path).manifest_path(manifest["version"]))
    except IndexUnusableError as exc:
        return problems + [str(exc)]
    problems += guarded("model", _check_model, StoreDir(path), manifest)
    problems += guarded("calibration", _check_calibration, manifest)
    return problems


def _check_model(store: StoreDir, manifest: dict) -> list[str]:
    from simengine.model.bundle import bundle_hash, read_config, stale_exports
    from simengine.model.runtimes import onnxruntime_version

    folder = store.attached_dir(manifest)
    config = read_config(folder)
    if bundle_hash(folder) != manifest["model"]["hash"]:
        return ["the model bundle's hash differs from the manifest's"]
    if config["encoder"] != manifest["model"].get("encoder"):
        return ["the model's encoder differs from the one recorded in the manifest"]
    if onnxruntime_version() is not None and config.get("onnx") and (why := stale_exports(folder, config)):
        return [f"the model's ONNX exports are unusable ({why}): queries fall back to torch"]
    return []


def _check_calibration(manifest: dict) -> list[str]:
    from simengine.evaluation.decisions import Calibration

    calibration = Calibration.from_dict(manifest["calibration"])
    if calibration.default not in calibration.pair or calibration.default not in calibration.triplet:
        return [f"calibration: the default rule {calibration.default!r} has no threshold"]
    return []
