"""Reading an index: a store snapshot whose version also names the model that embedded it and its calibration."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from simengine.errors import IndexUnusableError
from simengine.evaluation.decisions import Calibration
from simengine.index import items
from simengine.index.calibrate import UNCALIBRATED
from simengine.index.model_link import check_index_fields
from simengine.store.reader import StoreReader


class Index(StoreReader):
    """FAISS segments and SQLite rows of one version, its model bundle and its calibrated thresholds. Writers never
    disturb it; `refresh()` (cheap when nothing changed) moves it to the newest committed version."""

    calibration: Calibration

    def _derive(self, manifest: dict[str, Any]) -> Calibration:
        check_index_fields(manifest, self.store.manifest_path(manifest["version"]))
        try:
            return Calibration.from_dict(manifest["calibration"])
        except (KeyError, TypeError, ValueError) as exc:
            raise IndexUnusableError(f"{self.path}: the calibration of version {manifest['version']} is unreadable "
                                     f"({exc!r}); run `simengine index calibrate`") from None

    def _adopt(self, derived: Calibration) -> None:
        self.calibration = derived

    @property
    def model_dir(self) -> Path:
        """The bundle of the model that embedded this version's vectors."""
        return self.attached_dir

    def info(self) -> dict[str, Any]:
        store, m = super().info(), self.manifest
        cal = m["calibration"]
        return {
            **{k: store[k] for k in ("path", "version", "items", "removed_not_compacted", "segments", "next_id")},
            "classes": items.label_counts(self.conn, self.version),
            "metadata_columns": items.metadata_columns(self.conn),
            "backbone": m["model"]["encoder"]["backbone"],
            "weights": m["model"]["encoder"]["weights_source"],
            "model_hash": m["model"]["hash"],
            **{k: store[k] for k in ("index_type", "segment_types", "dim")},
            "decision": cal["default"],
            "pair_threshold": cal["pair"][cal["default"]]["value"],
            "triplet_threshold": cal["triplet"][cal["default"]]["value"],
            "calibration_cv_accuracy": cal["pair"][cal["default"]]["cv_accuracy"],
            "calibrated_on": cal["source"],
            "thresholds_from": _thresholds_from(cal),
            "pair_threshold_interval": cal["pair"][cal["default"]].get("interval"),
            "thresholds_estimated": cal["source"].startswith(UNCALIBRATED),
            "embedding": (m.get("build") or {}).get("embedding"),
            **{k: store[k] for k in ("size_bytes", "created_at", "committed_at", "last_operation")},
        }


def _thresholds_from(calibration: dict[str, Any]) -> str:
    """How an index's thresholds were obtained, in a few words (its `source` says on what exactly)."""
    if calibration["source"].startswith(UNCALIBRATED):
        return "estimated: the model's thresholds, no labels here"
    examples = calibration["pair"][calibration["default"]].get("examples")
    if examples:
        return f"{examples} labelled examples (index calibrate --pairs/--labels)"
    return "the index's labelled items"
