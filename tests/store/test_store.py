"""The store on its own: random vectors, plain rows and a small attached folder; no model anywhere."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from simengine.errors import IndexBusyError, SimengineError
from simengine.store import rows
from simengine.store.layout import StoreDir
from simengine.store.reader import StoreReader
from simengine.store.verify import verify_store
from simengine.store.writer import Attachment, RowSchema, StoreWriter, create_empty

DIM = 16
SCHEMA = RowSchema({"name": str, "colour": str}, not_null=("name",), indexed=("name",))


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.normal(size=(n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def attached(folder: Path, text: str) -> Attachment:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "weights.txt").write_text(text)
    (folder / "skipped").mkdir(exist_ok=True)
    return Attachment(folder, digest=f"{abs(hash(text)):016x}", skip=("skipped",),
                      intact=lambda copy: (copy / "weights.txt").read_text() == text)


@pytest.fixture
def store(tmp_path) -> Path:
    path = tmp_path / "store"
    create_empty(path, DIM, SCHEMA, attached(tmp_path / "first", "v1"), {"owner": {"who": "test"}})
    return path


def add(path: Path, vectors: np.ndarray, colour: str = "red") -> list[int]:
    with StoreWriter(path) as writer:
        ids = writer.add(vectors, [{"name": f"n{i}", "colour": colour} for i in range(len(vectors))])
        writer.commit(f"add {len(vectors)}")
    return ids


def test_an_empty_store_holds_its_metadata_and_a_copy_of_the_attached_folder(store):
    reader = StoreReader(store)
    assert len(reader) == 0 and reader.version == 0 and reader.manifest["owner"] == {"who": "test"}
    assert (reader.attached_dir / "weights.txt").read_text() == "v1"
    assert not (reader.attached_dir / "skipped").exists()
    assert verify_store(store)[1] == []


def test_vectors_come_back_by_id_and_by_search_and_removed_ones_never(store):
    rng = np.random.default_rng(0)
    vectors = unit(rng, 50)
    ids = add(store, vectors)
    reader = StoreReader(store)
    assert ids == list(range(50)) and np.allclose(reader.vectors([7, 3]), vectors[[7, 3]])
    sims, found = reader.search(vectors[:5], k=1)
    assert found[:, 0].tolist() == [0, 1, 2, 3, 4] and np.allclose(sims[:, 0], 1, atol=1e-5)
    with StoreWriter(store) as writer:
        writer.remove([1, 2])
        writer.commit("remove 2")
    assert not reader.refresh() or reader.version == 2  # a reader moves only when asked
    reader.refresh()
    _, found = reader.search(vectors[1:3], k=3)
    assert 1 not in found and 2 not in found and len(reader) == 48
    with pytest.raises(SimengineError, match="removed"):
        reader.vectors([1])
    assert verify_store(store)[1] == []


def test_a_snapshot_stays_whole_while_writers_commit(store):
    rng = np.random.default_rng(1)
    add(store, unit(rng, 20))
    reader = StoreReader(store)
    add(store, unit(rng, 20), colour="blue")
    assert len(reader) == 20 and len(reader.ids_where("colour = :c", {"c": "blue"})) == 0
    assert reader.refresh() and len(reader) == 40 and len(reader.ids_where("colour = :c", {"c": "blue"})) == 20


def test_rows_take_any_columns_and_filters_see_only_live_rows(store):
    rng = np.random.default_rng(2)
    with StoreWriter(store) as writer:
        writer.add(unit(rng, 3), [{"name": "a", "colour": "red", "shot": 3}, {"name": "b", "colour": "red", "shot": 9},
                                  {"name": "c", "colour": "green"}])
        writer.commit("add")
    reader = StoreReader(store)
    assert reader.ids_where("shot > :s", {"s": 5}).tolist() == [1]
    assert rows.column_names(reader.conn)[-1] == "shot" and reader.item(0)["shot"] == 3
    assert rows.count_by(reader.conn, reader.version, "colour") == {"green": 1, "red": 2}
    with StoreWriter(store) as writer:
        assert writer.live_ids_by("name", ["b", "zz"]) == {"b": 1}
        writer.remove(writer.live_ids_with("name", "b"))
        writer.commit("remove b")
    reader.refresh()
    assert reader.ids_where("shot > :s", {"s": 0}).tolist() == [0]


def test_compaction_keeps_exactly_the_live_vectors_in_one_segment(store):
    rng = np.random.default_rng(3)
    vectors = np.concatenate([unit(rng, 30), unit(rng, 30), unit(rng, 30)])
    for part in np.split(vectors, 3):
        add(store, part)
    with StoreWriter(store) as writer:
        writer.remove(list(range(0, 90, 3)))
        writer.commit("remove")
    with StoreWriter(store) as writer:
        writer.compact()
        manifest = writer.commit("compact")
    live = [i for i in range(90) if i % 3]
    assert len(manifest["segments"]) == 1 and manifest["counts"] == {"items": 60, "removed": 0, "vectors": 60}
    reader = StoreReader(store)
    _, found = reader.search(vectors[live], k=1)
    assert found[:, 0].tolist() == live and verify_store(store)[1] == []


def test_replacing_the_collection_gives_new_ids_and_may_replace_the_attached_folder(store, tmp_path):
    rng = np.random.default_rng(4)
    add(store, unit(rng, 10))
    with StoreWriter(store) as writer:
        new = writer.replace_all(unit(rng, 4), [{"name": f"m{i}"} for i in range(4)], DIM, "flat",
                                 {"owner": {"who": "rebuild"}}, attached(tmp_path / "second", "v2"))
        writer.commit("rebuild")
    reader = StoreReader(store)
    assert new == [10, 11, 12, 13] and len(reader) == 4 and reader.manifest["owner"] == {"who": "rebuild"}
    assert (reader.attached_dir / "weights.txt").read_text() == "v2" and reader.attached_dir.parent.name == "models"
    with StoreWriter(store, grace_s=0) as writer:
        cleaned = writer.collect_garbage()
    assert cleaned["versions"] >= 1 and not (store / "model").exists() and verify_store(store)[1] == []


def test_a_write_that_never_commits_leaves_nothing(store):
    rng = np.random.default_rng(5)
    add(store, unit(rng, 5))
    with pytest.raises(RuntimeError, match="boom"):
        with StoreWriter(store) as writer:
            writer.add(unit(rng, 5), [{"name": "x"}] * 5)
            writer.compact()
            raise RuntimeError("boom")
    reader = StoreReader(store)
    assert reader.version == 1 and len(reader) == 5 and verify_store(store)[1] == []
    assert len(list((store / "segments").iterdir())) == 1


def test_one_writer_at_a_time(store):
    with StoreWriter(store):
        with pytest.raises(IndexBusyError, match="another writer"):
            with StoreWriter(store, timeout_s=0.2):
                pass


def test_damaged_segment_is_reported_by_verify(store):
    add(store, unit(np.random.default_rng(6), 8))
    segment = next((store / "segments").iterdir())
    data = bytearray(segment.read_bytes())
    data[-8:] = b"\x00" * 8
    segment.write_bytes(bytes(data))
    manifest, problems = verify_store(store)
    assert manifest is not None and any("sha256 differs" in p for p in problems)
    assert StoreDir(store).current_version() == 1


def test_a_damaged_segment_is_refused_when_opened_not_searched(store):
    """Four changed bytes keep the file's size and may still load: the reader checks the recorded sha256 itself."""
    from simengine.errors import IndexUnusableError

    vectors = unit(np.random.default_rng(7), 8)
    add(store, vectors)
    segment = next((store / "segments").iterdir())
    data = bytearray(segment.read_bytes())
    data[-40:-36] = np.float32(1e7).tobytes()  # inside the vectors, the layout untouched
    segment.write_bytes(bytes(data))
    with pytest.raises(IndexUnusableError, match="sha256") as err:
        StoreReader(store)
    assert "\n" not in str(err.value)
