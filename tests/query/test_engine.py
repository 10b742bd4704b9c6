import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from simengine.errors import SimengineError
from simengine.query.engine import Engine


@pytest.fixture(scope="module")
def engine(built_index):
    return Engine.open(built_index)


def test_same_image_twice_is_same(engine, val):
    r = engine.pair(val["coffee"][0], val["coffee"][0])
    assert r.same and r.distance == pytest.approx(0, abs=1e-5)


def test_two_classes_are_different(engine, val):
    r = engine.pair(val["coffee"][0], val["rocket"][0])
    assert not r.same and r.distance > r.distance_threshold


def test_two_views_of_one_class_are_same(engine, val):
    assert engine.pair(val["chelsea"][0], val["chelsea"][1]).same


def test_triplet_names_the_matching_pair(engine, val):
    r = engine.triplet(val["rocket"][0], val["coffee"][1], val["coffee"][2])
    assert r.any_match and r.matching_pairs == [[1, 2]]
    assert not engine.triplet(val["rocket"][0], val["coffee"][1], val["chelsea"][2]).any_match


def test_images_embedded_elsewhere_answer_like_their_files(engine, val):
    import numpy as np

    from simengine.errors import ModelChangedError
    from simengine.query.refs import Embedded

    files = [val["coffee"][0], val["coffee"][1], val["rocket"][0]]
    batch = np.stack([engine.model.encoder.load_image(f.read_bytes()) for f in files])
    embedded = [Embedded(f"upload:{f.name}", v, engine.model.hash) for f, v in zip(files, engine.model.embed_batch(batch))]
    by_file, by_vector = engine.triplet(*files).to_dict(), engine.triplet(*embedded).to_dict()
    assert by_vector["images"] == [e.name for e in embedded] and by_vector["matching_pairs"] == by_file["matching_pairs"]
    for p, q in zip(by_file["pairs"], by_vector["pairs"]):
        assert q["distance"] == pytest.approx(p["distance"], abs=1e-5)
    assert engine.neighbours(embedded[2], k=2).neighbours[0].id == engine.neighbours(files[2], k=2).neighbours[0].id
    with pytest.raises(ModelChangedError, match="another model"):
        engine.pair(Embedded("upload:x.jpg", embedded[0].vector, "0" * 64), "id:0")


def test_indexed_image_is_its_own_nearest_neighbour(engine, fixture_data):
    target = sorted((fixture_data / "train" / "astronaut").glob("*.jpg"))[2]
    r = engine.neighbours(target, k=3)
    top = r.neighbours[0]
    assert Path(top.path) == target.resolve() and top.distance == pytest.approx(0, abs=1e-5) and top.verified
    assert r.predicted_class == "astronaut" and r.confidence == 1.0
    assert engine.neighbours(f"id:{top.id}", k=1, include_self=True).neighbours[0].id == top.id
    others = engine.neighbours(f"id:{top.id}", k=3).neighbours  # an item's neighbours leave the item out
    assert len(others) == 3 and top.id not in {n.id for n in others}


def test_json_matches_the_schema(engine, val):
    pair = engine.pair(val["coffee"][0], val["chelsea"][0]).to_dict()
    assert {k: type(v) for k, v in pair.items()} == {
        "a": str, "b": str, "same": bool, "distance": float, "distance_threshold": float, "head_probability": float,
        "score": float, "threshold": float, "decision": str}
    trip = engine.triplet(val["coffee"][0], val["chelsea"][0], val["coffee"][1]).to_dict()
    assert set(trip) == {"images", "any_match", "matching_pairs", "pairs", "threshold", "decision"}
    assert all(set(p) == {"pair", "distance", "head_probability", "score", "match"} for p in trip["pairs"])
    nn = engine.neighbours(val["rocket"][0], k=2).to_dict()
    assert set(nn) == {"query", "k", "neighbours", "predicted_class", "confidence", "verified_count", "votes",
                        "restricted"}
    assert set(nn["neighbours"][0]) == {"id", "path", "label", "distance", "head_probability", "verified", "metadata"}
    json.dumps([pair, trip, nn])


def test_batch_csv_with_labels_reports_accuracy(engine, val, tmp_path):
    rel = lambda p: os.path.relpath(p, tmp_path)  # noqa: E731
    rows = [
        (val["coffee"][0], val["coffee"][1], 1),
        (val["coffee"][0], val["rocket"][1], 0),
        (val["chelsea"][0], val["chelsea"][2], 1),
        (val["astronaut"][0], val["rocket"][0], 1),  # deliberately mislabelled: the engine will say 0
    ]
    csv = tmp_path / "pairs.csv"
    csv.write_text("img1,img2,label\n" + "".join(f"{rel(a)},{rel(b)},{y}\n" for a, b, y in rows) + "missing.jpg,x.jpg,1\n")
    calls = []
    embed = engine.model.embed_paths
    engine.model.embed_paths = lambda paths, **kw: calls.append(len(paths)) or embed(paths, **kw)
    try:
        result = engine.score_csv(csv, 2)
    finally:
        del engine.model.embed_paths
    assert calls == [9]  # every distinct image once, in one batch
    assert [r["prediction"] for r in result.rows] == [1, 0, 1, 0]
    assert result.report["accuracy"] == 0.75
    assert result.report["1"]["recall"] == pytest.approx(2 / 3)
    assert len(result.errors) == 1 and ":6:" in result.errors[0]


def test_unknown_mode_is_an_error(built_index):
    with pytest.raises(SimengineError):
        Engine.open(built_index, mode="vibes")


def query_in_a_fresh_process(index, a, b, runtime: str = "auto") -> None:
    """A pair query in its own process, which must import neither torch nor NNCF."""
    script = (
        "import sys\nfrom simengine.query.engine import Engine\n"
        f"r = Engine.open({str(index)!r}, runtime={runtime!r}).pair({str(a)!r}, {str(b)!r})\n"
        "assert r.same\nassert 'torch' not in sys.modules, 'torch was imported'\n"
        "assert 'nncf' not in sys.modules, 'nncf was imported'\nprint('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=os.environ.copy())
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_query_path_does_not_import_torch(built_index, val):
    query_in_a_fresh_process(built_index, val["coffee"][0], val["coffee"][1])


def test_the_int8_query_path_does_not_import_torch_or_nncf(index_copy, fixture_data, val):
    from simengine.index.reader import Index
    from simengine.model.int8 import quantize_model

    quantize_model(Index(index_copy).model_dir, fixture_data, images=16, gate=False)
    query_in_a_fresh_process(index_copy, val["coffee"][0], val["coffee"][1], runtime="openvino-int8")


def test_a_long_lived_engine_follows_writes_and_a_rebuild(index_copy, fixture_data, model, val):
    from simengine.data.folders import scan_split
    from simengine.index.build import build_index
    from simengine.index.update import add_images, remove_items

    engine = Engine.open(index_copy)
    assert engine.neighbours(val["rocket"][0], k=1).neighbours[0].id != 32
    add_images(index_copy, val["rocket"][:1])
    assert engine.neighbours(val["rocket"][0], k=1).neighbours[0].id == 32
    remove_items(index_copy, ["32"])
    with pytest.raises(SimengineError, match="no item with id 32"):
        engine.item(32)
    build_index(scan_split(fixture_data, "val"), model, index_copy)  # a rebuild is the next version, new ids
    assert engine.info()["items"] == 12 and engine.index.version == 4
    assert engine.item(33)["split"] == "val"
    nearest = engine.neighbours(val["rocket"][0], k=1).neighbours[0]
    assert nearest.distance < 1e-4 and nearest.id > 32
