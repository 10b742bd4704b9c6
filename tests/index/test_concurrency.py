"""Real processes on one index: concurrent writers, readers during writes, kill -9 at random points, the lock."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from simengine.errors import IndexBusyError
from simengine.index.reader import Index
from simengine.index.verify import verify_index
from simengine.store import rows
from simengine.store.writer import StoreWriter

WORKERS = Path(__file__).with_name("store_workers.py")


def start(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(WORKERS), *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=os.environ.copy())


def committed_ids(output: str) -> list[int]:
    return [int(i) for line in output.splitlines() if line.startswith("committed") for i in line.split()[1:]]


def live_rows(path: Path) -> list[dict]:
    idx = Index(path)
    return list(idx.items(rows.live_ids(idx.conn, idx.version)).values())


def test_concurrent_writers_lose_nothing_and_double_nothing(index_copy):
    writers = [start("write", index_copy, f"w{n}", 8, 5, n) for n in range(4)]
    outputs = [w.communicate(timeout=240)[0] for w in writers]
    assert all(w.returncode == 0 for w in writers), outputs
    ids = [i for out in outputs for i in committed_ids(out)]
    assert len(ids) == 4 * 8 * 5 and len(set(ids)) == len(ids)
    rows = live_rows(index_copy)
    assert len(rows) == 32 + 160
    assert sorted(r["sha256"] for r in rows if r["label"] and r["label"].startswith("w")) == sorted(
        f"w{n}-{n * 100_000 + b}-{i}" for n in range(4) for b in range(8) for i in range(5))
    assert verify_index(index_copy) == []


def test_concurrent_cli_adds_of_real_images(index_copy, fixture_data, tmp_path):
    from PIL import Image

    exe = Path(sys.executable).with_name("simengine")
    sets = []
    for n in range(3):
        folder = tmp_path / f"set{n}"
        folder.mkdir()
        for i, source in enumerate(sorted((fixture_data / "val").glob("*/*.jpg"))[:4]):
            Image.open(source).rotate(90 * (n + 1)).save(folder / f"{i}.jpg")  # distinct content per set
        sets.append(sorted(folder.glob("*.jpg")))
    procs = [subprocess.Popen([str(exe), "-q", "index", "add", "--index", str(index_copy), *map(str, paths)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=os.environ.copy())
             for paths in sets]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 and "added 4" in out for p, out in zip(procs, outputs)), outputs
    paths = {r["path"] for r in live_rows(index_copy)}
    assert {str(p.resolve()) for s in sets for p in s} <= paths and len(paths) == 32 + 12
    assert verify_index(index_copy) == []


def test_readers_never_fail_while_writers_commit(index_copy):
    readers = [start("read", index_copy, 6) for _ in range(2)]
    time.sleep(0.5)
    writer = start("write", index_copy, "w", 20, 3)
    with StoreWriter(index_copy) as w:  # a removal too, so the excluded-id filter changes under the readers
        w.remove([0, 1, 2])
        w.commit("remove 3")
    assert writer.wait(timeout=120) == 0
    for reader in readers:
        out = reader.communicate(timeout=60)[0]
        reads, errors, versions = (int(n) for n in out.split()[1:6:2])
        assert reader.returncode == 0 and reads > 10 and errors == 0 and versions > 5, out


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_kill_9_at_random_points_keeps_every_committed_item(index_copy, seed):
    rng = np.random.default_rng(seed)
    writer = start("write", index_copy, f"k{seed}", 1000, 50, seed)
    first = writer.stdout.readline()
    assert first.startswith("committed")  # running and past its start-up
    time.sleep(float(rng.uniform(0.05, 1.5)))
    writer.send_signal(signal.SIGKILL)
    reported = committed_ids(first + writer.communicate(timeout=30)[0])
    assert verify_index(index_copy) == []
    live = {r["id"] for r in live_rows(index_copy)}
    assert set(reported) <= live
    assert len(live) - 32 - len(reported) in (0, 50)  # at most the batch committed but not yet printed
    after = start("write", index_copy, "after", 1, 5, 99)  # the lock died with the writer; leftovers are cleaned
    assert after.wait(timeout=60) == 0 and verify_index(index_copy) == []
    assert not any(v > Index(index_copy).version for v in Index(index_copy).store.manifest_versions())


def test_a_second_writer_waits_then_names_the_holder(index_copy):
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\nfrom simengine.store.writer import StoreWriter\n"
        f"with StoreWriter({str(index_copy)!r}):\n    print('holding', flush=True)\n    time.sleep(30)\n")],
        stdout=subprocess.PIPE, text=True, env=os.environ.copy())
    try:
        assert holder.stdout.readline().strip() == "holding"
        started = time.monotonic()
        with pytest.raises(IndexBusyError, match=rf"pid {holder.pid} .*waited 0.5 s"):
            with StoreWriter(index_copy, timeout_s=0.5):
                pass
        assert 0.4 < time.monotonic() - started < 5
    finally:
        holder.kill()
        holder.wait()
    with StoreWriter(index_copy, timeout_s=5) as w:  # free again once the holder is gone
        assert w.version == 2
