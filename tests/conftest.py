"""Session fixtures: a hermetic cache, a fixture dataset of real photos, the offline encoder, a bundle and an index."""

from __future__ import annotations

import faulthandler
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from fixtures import make_dataset  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

# Fuzz tests: a bounded number of cases in `make test`, many in `make fuzz` (--hypothesis-profile=fuzz); at most
# 5 s per case (a bound on time, like the RSS bound in test_preprocess).
_FUZZ = dict(deadline=5000, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
settings.register_profile("default", max_examples=60, **_FUZZ)
settings.register_profile("fuzz", max_examples=5000, **_FUZZ)
settings.load_profile("default")

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenette2-160"
EXIT_STATUS = pytest.StashKey[int]()

faulthandler.enable()  # kept on past pytest's own handler: a native crash prints where it happened


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    session.config.stash[EXIT_STATUS] = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """End the test process once pytest is done, without the interpreter's exit-time teardown of the native
    libraries this session loaded in-process (Ray's core worker, OpenVINO's and ONNX Runtime's thread pools, FAISS):
    once in a clean-clone run, after all 456 tests had passed, that teardown crashed with SIGSEGV and turned the
    run red. Commands the tests start run in their own processes and exit normally, their exit codes checked."""
    if EXIT_STATUS in config.stash:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(config.stash[EXIT_STATUS])


@pytest.fixture(scope="session", autouse=True)
def hermetic_cache(tmp_path_factory):
    """Features and ONNX exports go to a per-session folder, never the user's cache; nothing asks the model hub."""
    os.environ["SIMENGINE_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    os.environ["HF_HUB_OFFLINE"] = "1"
    yield


@pytest.fixture(scope="session")
def builtin_model(hermetic_cache) -> Path:
    """The built-in model, prepared before any other model loads (the encoder asks for it first): the gate verdicts
    it brings (bf16 on CPUs that have it) then hold for the whole session, so that `--runtime auto` does not change
    its choice half-way through."""
    from simengine.model.builtin import builtin_model_dir

    return builtin_model_dir()


@pytest.fixture(scope="session")
def fixture_data(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("data"), {"train": 8, "val": 3})


@pytest.fixture(scope="session")
def encoder(builtin_model):
    from simengine.model.encoder import Encoder

    return Encoder.load()


@pytest.fixture(scope="session")
def tiny_options():
    from simengine.training.fit import TrainOptions

    # int8 off: its own tests make one; `--runtime auto` would otherwise switch the fixtures to it mid-session.
    return TrainOptions(steps=60, pair_steps=60, eval_every=20, classes_per_batch=4, per_class=4, int8=False)


@pytest.fixture(scope="session")
def bundle_dir(fixture_data, encoder, tiny_options, tmp_path_factory) -> Path:
    from simengine.training.pipeline import train_model

    return train_model(fixture_data, tmp_path_factory.mktemp("model") / "bundle", tiny_options)


@pytest.fixture(scope="session")
def model(bundle_dir):
    from simengine.model.bundle import load_bundle

    return load_bundle(bundle_dir)


@pytest.fixture(scope="session")
def built_index(fixture_data, model, bundle_dir, tmp_path_factory) -> Path:
    """A flat index of the fixture train split; tests that change an index copy it first."""
    from simengine.data.folders import scan_split
    from simengine.index.build import build_index

    path, _, _ = build_index(scan_split(fixture_data, "train"), model, tmp_path_factory.mktemp("indexes") / "default")
    return path


@pytest.fixture
def index_copy(built_index, tmp_path) -> Path:
    """A private copy of the fixture index (a plain `cp -r`), safe to modify."""
    import shutil

    return Path(shutil.copytree(built_index, tmp_path / "default"))


@pytest.fixture(scope="session")
def val(fixture_data) -> dict[str, list[Path]]:
    """The fixture's val images by class."""
    return {name: sorted((fixture_data / "val" / name).glob("*.jpg")) for name in ("coffee", "chelsea", "astronaut", "rocket")}


@pytest.fixture(scope="session")
def imagenette() -> Path:
    """The real Imagenette 160px, from $SIMENGINE_DATA or ../shared/data; skipped where absent."""
    path = Path(os.environ.get("SIMENGINE_DATA") or SHARED_DATA)
    if not (path / "val").is_dir():
        pytest.skip(f"Imagenette not found at {path} (set SIMENGINE_DATA)")
    return path
