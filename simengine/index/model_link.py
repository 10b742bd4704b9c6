"""How an index ties a store to a model: the bundle is the store's attached directory, and every manifest records
the model's identity and calibration, so a version's vectors are only ever compared with the model that made them."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from simengine.errors import IndexUnusableError
from simengine.index import items
from simengine.model.bundle import Model, bundle_hash
from simengine.model.general import GENERAL_DIR
from simengine.store.writer import Attachment, RowSchema, StoreWriter, create_empty

ROW_SCHEMA = RowSchema(items.ITEM_COLUMNS, items.NOT_NULL, items.LOOKED_UP)


def model_identity(model: Model) -> dict[str, Any]:
    return {"hash": model.hash} | {k: v for k, v in model.config.items() if k not in ("holdout_sha256", "calibration")}


def bundle_attachment(model: Model) -> Attachment:
    """The model's bundle as a store attachment. Its general twin stays behind: the index uses the bundle it was
    given, whichever that is."""

    def intact(folder: Path) -> bool:
        try:
            return bundle_hash(folder) == model.hash
        except (OSError, ValueError, TypeError, AttributeError):
            return False

    return Attachment(model.path, model.hash, skip=(GENERAL_DIR,), intact=intact, what="the model bundle")


def create_index(folder: Path, model: Model) -> None:
    """An index with no items (version 0) in the new directory `folder`, holding a copy of `model`."""
    create_empty(folder, model.dim, ROW_SCHEMA, bundle_attachment(model),
                 {"model": model_identity(model), "calibration": model.calibration.to_dict()})


INDEX_FIELDS = ("model", "calibration")  # what an index keeps in each manifest, beside the store's own fields


def check_index_fields(manifest: dict[str, Any], where: str | os.PathLike) -> None:
    """One clear line for a manifest without the index's own fields (the store checks only its own)."""
    for key in INDEX_FIELDS:
        if not isinstance(manifest.get(key), dict):
            raise IndexUnusableError(f"{where}: {key!r} missing or not dict")


def require_model(manifest: dict[str, Any], model: Model, where: str | os.PathLike) -> None:
    """Refuse a model other than the one that embedded this version's vectors."""
    check_index_fields(manifest, where)
    if model.hash != manifest["model"].get("hash"):
        raise IndexUnusableError(f"{where}: the index was built with model {str(manifest['model'].get('hash'))[:12]}, "
                                 f"the model given is {model.hash[:12]}")


def _replacement(writer: StoreWriter, model: Model, calibration: dict[str, Any], build_info: dict[str, Any]
                 ) -> tuple[dict[str, Any], Attachment | None]:
    metadata = {"model": model_identity(model), "calibration": calibration, "build": build_info}
    check_index_fields(writer.base, writer.store.root)
    same = model.hash == writer.base["model"]["hash"]
    return metadata, None if same else bundle_attachment(model)


def replace_collection(writer: StoreWriter, vectors: np.ndarray, rows: Sequence[dict[str, Any]], model: Model,
                       calibration: dict[str, Any], index_type: str, build_info: dict[str, Any]) -> list[int]:
    """Stage a new collection embedded by `model` (which may differ from the index's) in place of the current one."""
    metadata, attachment = _replacement(writer, model, calibration, build_info)
    return writer.replace_all(vectors, rows, model.dim, index_type, metadata, attachment)


def replace_streamed(writer: StoreWriter, model: Model, calibration: dict[str, Any], index_type: str,
                     build_info: dict[str, Any]) -> None:
    """The same for a collection too large to hold (see `StoreWriter.replace_streamed`)."""
    metadata, attachment = _replacement(writer, model, calibration, build_info)
    writer.replace_streamed(model.dim, index_type, metadata, attachment)
