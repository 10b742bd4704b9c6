"""Import boundaries: the query-time packages never import torch, and torch and faiss work in either import order
(each may bring its own OpenMP runtime; two in one process can crash, hang or oversubscribe)."""

import os
import pkgutil
import subprocess
import sys

import pytest

import simengine

# Training, and the torch definition of the heads that training and the torch fallback runtime share.
TORCH_MODULES = ("simengine.training.", "simengine.model.heads", "simengine.__main__")


def torch_free_modules() -> list[str]:
    names = [m.name for m in pkgutil.walk_packages(simengine.__path__, "simengine.")]
    return sorted(n for n in names if not n.startswith(TORCH_MODULES))


def run_python(code: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="2")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, env=env)


def test_query_time_packages_never_import_torch():
    modules = torch_free_modules()
    assert {"simengine.query.engine", "simengine.index.reader", "simengine.service.app", "simengine.model.bundle",
            "simengine.cli", "simengine.index.build", "simengine.dedup.job"} <= set(modules)
    out = run_python(
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "    assert 'torch' not in sys.modules, name + ' imported torch'\n"
        "print('ok')\n")
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


WORKLOAD = {
    "faiss": (
        "import faiss, numpy as np\n"
        "faiss.omp_set_num_threads(2)\n"
        "x = np.random.default_rng(0).normal(size=(20000, 64)).astype('float32')\n"
        "index = faiss.IndexFlatIP(64); index.add(x)\n"
        "_, ids = index.search(x[:200], 1)\n"
        "assert (ids[:, 0] == np.arange(200)).all()\n"
    ),
    "torch": (
        "import torch\n"
        "torch.set_num_threads(2)\n"
        "conv = torch.nn.Conv2d(3, 16, 3)\n"
        "out = conv(torch.randn(8, 3, 64, 64)); out.mean().backward()\n"
        "assert conv.weight.grad is not None and torch.isfinite(conv.weight.grad).all()\n"
    ),
}


@pytest.mark.parametrize("first,second", [("faiss", "torch"), ("torch", "faiss")])
def test_torch_and_faiss_work_in_either_import_order(first, second):
    code = f"import {first}\nimport {second}\n" + WORKLOAD[first] + WORKLOAD[second] + WORKLOAD[first] + "print('ok')\n"
    out = run_python(code)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_the_public_face_is_visible_to_tools_and_every_name_resolves():
    import ast
    from pathlib import Path

    tree = ast.parse(Path(simengine.__file__).read_text())
    checked = next(node for node in tree.body if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING")
    for_type_checkers = {alias.name: node.module for node in checked.body for alias in node.names}
    assert for_type_checkers == simengine._EXPORTS  # what IDEs see is what the package exports
    assert set(simengine.__all__) <= set(dir(simengine)) and len(simengine.__all__) >= 20
    for name in simengine.__all__:
        assert getattr(simengine, name).__name__ == name
    with pytest.raises(AttributeError, match="no attribute 'nonsense'"):
        simengine.nonsense  # noqa: B018
