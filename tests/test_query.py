import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from simengine.cli import cli
from simengine.errors import SimengineError
from simengine.query import Engine


@pytest.fixture(scope="module")
def engine(built_index):
    return Engine.open(built_index)


@pytest.fixture(scope="module")
def val(fixture_data):
    return {name: sorted((fixture_data / "val" / name).glob("*.jpg")) for name in ("coffee", "chelsea", "astronaut", "rocket")}


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


def test_indexed_image_is_its_own_nearest_neighbour(engine, fixture_data):
    target = sorted((fixture_data / "train" / "astronaut").glob("*.jpg"))[2]
    r = engine.neighbours(target, k=3)
    top = r.neighbours[0]
    assert Path(top.path) == target.resolve() and top.distance == pytest.approx(0, abs=1e-5) and top.verified
    assert r.predicted_class == "astronaut" and r.confidence == 1.0
    by_id = engine.neighbours(f"id:{top.id}", k=1)
    assert by_id.neighbours[0].id == top.id


def test_json_matches_the_schema(engine, val):
    pair = engine.pair(val["coffee"][0], val["chelsea"][0]).to_dict()
    assert {k: type(v) for k, v in pair.items()} == {
        "a": str, "b": str, "same": bool, "distance": float, "distance_threshold": float, "head_probability": float,
        "score": float, "threshold": float, "decision": str}
    trip = engine.triplet(val["coffee"][0], val["chelsea"][0], val["coffee"][1]).to_dict()
    assert set(trip) == {"images", "any_match", "matching_pairs", "pairs", "threshold", "decision"}
    assert all(set(p) == {"pair", "distance", "head_probability", "score", "match"} for p in trip["pairs"])
    nn = engine.neighbours(val["rocket"][0], k=2).to_dict()
    assert set(nn) == {"query", "k", "neighbours", "predicted_class", "confidence", "verified_count"}
    assert set(nn["neighbours"][0]) == {"id", "path", "label", "class_name", "distance", "head_probability", "verified"}
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
    embed = engine.index.model.embed_paths
    engine.index.model.embed_paths = lambda paths, **kw: calls.append(len(paths)) or embed(paths, **kw)
    try:
        result = engine.score_csv(csv, 2)
    finally:
        del engine.index.model.embed_paths
    assert calls == [9]  # every distinct image once, in one batch
    assert [r["prediction"] for r in result.rows] == [1, 0, 1, 0]
    assert result.report["accuracy"] == 0.75
    assert result.report["1"]["recall"] == pytest.approx(2 / 3)
    assert len(result.errors) == 1 and ":6:" in result.errors[0]


def test_unknown_mode_is_an_error(built_index):
    with pytest.raises(SimengineError):
        Engine.open(built_index, mode="vibes")


# --- the CLI ---------------------------------------------------------------------------------------------------------

def run(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    return result.exit_code, result.output


def test_cli_pair_triplet_neighbours_and_json(built_index, val):
    code, out = run("query", "--index", built_index, val["coffee"][0], val["coffee"][1])
    assert code == 0 and "same class: YES" in out
    code, out = run("query", "--index", built_index, "--json", val["coffee"][0], val["rocket"][0], val["coffee"][2])
    assert code == 0 and json.loads(out)["matching_pairs"] == [[0, 2]]
    code, out = run("search", "--index", built_index, "--json", "--k", "2", val["chelsea"][0])
    assert code == 0 and json.loads(out)["predicted_class"] == "chelsea"


def test_cli_batch_json(built_index, val, tmp_path):
    csv = tmp_path / "t.csv"
    csv.write_text(f"{val['coffee'][0]},{val['rocket'][0]},{val['coffee'][1]},1\n{val['coffee'][0]},{val['rocket'][0]},{val['chelsea'][1]},0\n")
    code, out = run("query", "--index", built_index, "--json", "--triplets", csv)
    data = json.loads(out)
    assert code == 0 and data["accuracy"] == 1.0 and data["report"]["n"] == 2


@pytest.mark.parametrize("case", ["missing", "corrupt", "one_without_k", "four", "no_index", "other_backbone", "bad_csv"])
def test_cli_bad_input_is_one_line_and_nonzero(case, built_index, val, tmp_path, index_copy):
    index = built_index
    args = [val["coffee"][0], val["coffee"][1]]
    if case == "missing":
        args = [tmp_path / "nope.jpg", val["coffee"][0]]
    elif case == "corrupt":
        bad = tmp_path / "bad.jpg"
        bad.write_bytes(val["coffee"][0].read_bytes()[:300])
        args = [bad, val["coffee"][0]]
    elif case == "one_without_k":
        args = [val["coffee"][0]]
    elif case == "four":
        args = [val["coffee"][0]] * 4
    elif case == "no_index":
        index = tmp_path / "empty"
    elif case == "other_backbone":
        manifest = json.loads((index_copy / "manifest.json").read_text())
        manifest["model"]["encoder"]["backbone"] = "efficientnet_b0"
        manifest["model"]["hash"] = "0" * 64
        (index_copy / "manifest.json").write_text(json.dumps(manifest))
        index = index_copy
    elif case == "bad_csv":
        csv = tmp_path / "bad.csv"
        csv.write_text(f"{val['coffee'][0]},{val['coffee'][1]},7\n")
        args = ["--pairs", csv]
    code, out = run("query", "--index", index, *args)
    if case == "bad_csv":  # the bad row is reported and skipped; the run itself succeeds
        assert code == 0 and "label must be 0 or 1" in out
        return
    assert code == 1, out
    lines = out.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error") and "Traceback" not in out


def test_cli_help_lists_commands():
    code, out = run("--help")
    for command in ("data", "train", "index", "query", "search"):
        assert command in out
    code, out = run("index", "--help")
    for command in ("build", "add", "remove", "info", "verify", "calibrate"):
        assert command in out


def test_cli_index_commands(index_copy, fixture_data):
    code, out = run("index", "info", "--index", index_copy)
    assert code == 0 and "tf_efficientnet_lite0" in out and "flat" in out
    code, out = run("index", "verify", "--index", index_copy)
    assert code == 0 and out.startswith("ok")
    new = sorted((fixture_data / "val" / "rocket").glob("*.jpg"))
    code, out = run("index", "add", "--index", index_copy, *new)
    assert code == 0 and "added 3" in out
    code, out = run("index", "remove", "--index", index_copy, "0", "1")
    assert code == 0 and "removed 2" in out
    code, out = run("index", "calibrate", "--index", index_copy)
    assert code == 0 and "default decision" in out
    (index_copy / "items.db").write_bytes(b"")
    code, out = run("index", "verify", "--index", index_copy)
    assert code == 1 and "problem" in out


def test_query_path_does_not_import_torch(built_index, val):
    script = (
        "import sys\nfrom simengine.query import Engine\n"
        f"r = Engine.open({str(built_index)!r}).pair({str(val['coffee'][0])!r}, {str(val['coffee'][1])!r})\n"
        "assert r.same\nassert 'torch' not in sys.modules, 'torch was imported'\nprint('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=os.environ.copy())
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_cli_data_sample_writes_balanced_csv(fixture_data, tmp_path):
    out = tmp_path / "pairs.csv"
    code, text = run("data", "sample", "pairs", "--data", fixture_data, "--split", "val", "--n", "20", "--out", out)
    assert code == 0 and "wrote 20 pairs" in text
    lines = out.read_text().splitlines()
    assert lines[0] == "img1,img2,label" and len(lines) == 21
    assert sum(int(line.rsplit(",", 1)[1]) for line in lines[1:]) == 10
    code, text = run("data", "sample", "triplets", "--data", tmp_path / "nowhere", "--out", out)
    assert code == 1 and "dataset not found" in text
