"""`simengine index build --from-embeddings`: an index from embedding shards, of the type the budget calls for, with
the rows, calibration and neighbours of the collection, kept as versions like any other build."""

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from shard_fixtures import PER_SHARD, all_vectors, clustered

from simengine.cli import cli
from simengine.errors import SimengineError
from simengine.index.calibrate import UNCALIBRATED
from simengine.index.from_embeddings import build_from_embeddings, exact_neighbours, finished_shards
from simengine.index.reader import Index
from simengine.index.update import add_images, compact_index, remove_items
from simengine.shards.embed import embed_collection
from simengine.shards.layout import metadata_path

def recall(index: Index, queries: np.ndarray, embeddings: Path, k: int = 10) -> float:
    _, shards = finished_shards(embeddings)
    truth = exact_neighbours(queries, embeddings, shards, k)
    _, found = index.search(queries, k)  # a new index's ids are the positions in the collection
    return float(np.mean([len(set(f) & set(t)) / k for f, t in zip(found, truth)]))


def test_small_collections_get_an_exact_index_with_their_rows_and_calibration(model, bundle_dir, tmp_path):
    embeddings = clustered(model, tmp_path)
    report = build_from_embeddings(embeddings, tmp_path / "index", bundle_dir)
    assert report.index_type == "flat" and report.items == 4 * PER_SHARD and report.nprobe is None
    with Index(tmp_path / "index") as index:
        assert len(index) == 4 * PER_SHARD and index.info()["segment_types"] == ["flat"]
        assert recall(index, all_vectors(embeddings)[::97], embeddings) == 1.0
        item = index.item(PER_SHARD + 5)  # ids follow the shards' order
        assert item["path"] == "/photos/1/5.jpg" and item["label"].startswith("class") and item["camera"] == "cam2"
        assert item["width"] is None  # the shards do not record image sizes
        assert len(index.ids_where("camera = :c", {"c": "cam0"})) == 4 * PER_SHARD // 3
        assert not index.calibration.source.startswith(UNCALIBRATED)  # calibrated on the labelled sample
        assert index.manifest["build"]["source_kind"] == "embeddings"


def test_a_budget_too_small_for_exact_vectors_gives_a_tuned_ivf_in_segments_that_merge(model, bundle_dir, val,
                                                                                      tmp_path):
    embeddings = clustered(model, tmp_path)
    exact_bytes = 4 * PER_SHARD * (4 * model.dim + 56)
    report = build_from_embeddings(embeddings, tmp_path / "index", bundle_dir, max_index_memory=exact_bytes // 2,
                                   segments=2)
    assert report.index_type == "ivf_sq8" and report.segments == 2 and report.estimated_bytes <= exact_bytes // 2
    assert report.nprobe >= 1 and report.sample_recall >= 0.9
    queries = all_vectors(embeddings)[::61] + np.float32(0.01)
    with Index(tmp_path / "index") as index:
        segments = index.manifest["segments"]
        assert [s["type"] for s in segments] == ["ivf_sq8"] * 2 and segments[0]["template"] == segments[1]["template"]
        assert segments[0]["id_max"] < segments[1]["id_min"]
        assert recall(index, queries, embeddings) >= 0.9
        np.testing.assert_allclose(index.vectors([3, 9_000]), all_vectors(embeddings)[[3, 9_000]], atol=0.02)
    # Removing and adding, then compacting: the trained segments take the rest in, without retraining.
    remove_items(tmp_path / "index", [0, 1, 2, 11_999])
    photos = val["coffee"][:2]
    added = add_images(tmp_path / "index", photos, model=model).added
    with Index(tmp_path / "index") as index:
        assert [s["type"] for s in index.manifest["segments"]] == ["ivf_sq8", "ivf_sq8", "flat"]
    compact_index(tmp_path / "index")
    with Index(tmp_path / "index") as index:
        assert [s["type"] for s in index.manifest["segments"]] == ["ivf_sq8"] and len(index) == 4 * PER_SHARD - 2
        assert index.manifest["segments"][0]["vectors"] == len(index)  # removed vectors of both parts are gone
        _, found = index.search(all_vectors(embeddings)[[0, 1, 2, 11_999]], 5)
        assert not set(found.ravel()) & {0, 1, 2, 11_999}
        _, found = index.search(model.embed_paths(photos).vectors, 1)
        assert found[:, 0].tolist() == added
        assert recall(index, queries, embeddings) >= 0.85  # the ground truth still holds the removed ones


def test_images_embedded_by_simengine_embed_index_as_the_image_build_does(fixture_data, model, bundle_dir,
                                                                             built_index, val, tmp_path):
    embed_collection(fixture_data / "train", tmp_path / "emb", bundle_dir, shard_size=10)
    build_from_embeddings(tmp_path / "emb", tmp_path / "index", bundle_dir)
    queries = model.embed_paths([paths[0] for paths in val.values()]).vectors
    with Index(tmp_path / "index") as from_shards, Index(built_index) as from_images:
        assert len(from_shards) == len(from_images)
        (sims_a, ids_a), (sims_b, ids_b) = from_shards.search(queries, 5), from_images.search(queries, 5)
        names = lambda index, ids: [[Path(index.item(i)["path"]).name for i in row] for row in ids]  # noqa: E731
        assert names(from_shards, ids_a) == names(from_images, ids_b)
        np.testing.assert_allclose(sims_a, sims_b, atol=1e-4)


def test_unfinished_shards_another_model_and_a_rebuild(model, bundle_dir, tmp_path):
    embeddings = clustered(model, tmp_path)
    build_from_embeddings(embeddings, tmp_path / "index", bundle_dir)
    again = build_from_embeddings(embeddings, tmp_path / "index", bundle_dir)  # the next version, new ids
    with Index(tmp_path / "index") as index:
        assert index.version == 2 and len(index) == again.items and index.manifest["segments"][0]["id_min"] == 4 * PER_SHARD
    plan = json.loads((embeddings / "simengine.json").read_text())
    (embeddings / "simengine.json").write_text(json.dumps(plan | {"model": plan["model"] | {"bundle_hash": "0" * 64}}))
    with pytest.raises(SimengineError, match="embedded by model 000000000000"):
        build_from_embeddings(embeddings, tmp_path / "other", bundle_dir)
    (embeddings / "simengine.json").write_text(json.dumps(plan))
    metadata_path(embeddings, 2).unlink()
    with pytest.raises(SimengineError, match="1 of 4 shards are not finished"):
        build_from_embeddings(embeddings, tmp_path / "other", bundle_dir)
    assert not (tmp_path / "other").exists()


def test_cli(model, bundle_dir, tmp_path):
    embeddings = clustered(model, tmp_path)
    runner = CliRunner()
    result = runner.invoke(cli, ["-q", "index", "build", "--from-embeddings", str(embeddings), "--model", str(bundle_dir),
                                 "--out", str(tmp_path / "index"), "--max-index-memory", "2M", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["index_type"] in ("ivf_sq8", "ivf_pq") and report["estimated_bytes"] <= 2 * 2**20
    result = runner.invoke(cli, ["index", "build", str(tmp_path), "--max-index-memory", "4G", "--model", str(bundle_dir)])
    assert result.exit_code == 2 and "go with --from-embeddings" in result.output
    result = runner.invoke(cli, ["index", "build", "--from-embeddings", str(embeddings), "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "needs --model" in result.output
    result = runner.invoke(cli, ["index", "build", "--from-embeddings", str(embeddings), "--model", str(bundle_dir),
                                 "--out", str(tmp_path / "x"), "--max-index-memory", "lots"])
    assert result.exit_code == 1 and result.output.count("\n") == 1 and "memory size" in result.output


def replace_vectors(embeddings: Path, k: int, vectors: np.ndarray) -> None:
    """Shard k's vectors file replaced, its metadata naming the new file: a shard as another tool might write it."""
    import hashlib

    import pyarrow.parquet as pq

    from simengine.shards.layout import VECTORS_SHA256, embedding_path

    np.save(embedding_path(embeddings, k), vectors)
    table = pq.read_table(metadata_path(embeddings, k))
    digest = hashlib.sha256(embedding_path(embeddings, k).read_bytes()).hexdigest()
    pq.write_table(table.replace_schema_metadata({VECTORS_SHA256: digest}), metadata_path(embeddings, k))


def test_shard_vectors_are_converted_or_refused_naming_the_shard_and_row(model, bundle_dir, tmp_path):
    embeddings = clustered(model, tmp_path)
    good = np.load(embeddings / "img_emb" / "img_emb_1.npy")
    for kind, vectors in (("float64", good.astype(np.float64)), ("big-endian", good.astype(">f4"))):
        replace_vectors(embeddings, 1, vectors)
        build_from_embeddings(embeddings, tmp_path / kind, bundle_dir)
        with Index(tmp_path / kind) as index:
            similarities, ids = index.search(good[:5], 1)
        assert list(ids[:, 0]) == list(range(PER_SHARD, PER_SHARD + 5)), kind
        np.testing.assert_allclose(similarities[:, 0], 1, atol=1e-4)  # inner products of unit vectors
    for what, row_value, message in (("nan", np.nan, "NaN or infinite"), ("inf", np.inf, "NaN or infinite"),
                                     ("x1000", None, "length 1000, not 1")):
        bad = good.copy()
        bad[17] = bad[17] * 1000 if row_value is None else row_value
        replace_vectors(embeddings, 1, bad)
        with pytest.raises(SimengineError, match=rf"img_emb_1.npy: row 17 has {message}"):
            build_from_embeddings(embeddings, tmp_path / what, bundle_dir)
        assert not (tmp_path / what).exists()
    replace_vectors(embeddings, 1, good.astype(np.int32))
    with pytest.raises(SimengineError, match="int32 array of shape"):
        build_from_embeddings(embeddings, tmp_path / "ints", bundle_dir)
    replace_vectors(embeddings, 1, np.zeros((0, model.dim + 1), np.float32))
    with pytest.raises(SimengineError, match=rf"float32 array of shape \(0, {model.dim + 1}\)"):
        build_from_embeddings(embeddings, tmp_path / "empty", bundle_dir)
    huge = good.astype(np.float64)
    huge[3] = 1e300
    replace_vectors(embeddings, 1, huge)
    with pytest.raises(SimengineError, match="row 3 has values beyond float32's range"):
        build_from_embeddings(embeddings, tmp_path / "huge", bundle_dir)


def test_a_damaged_metadata_file_or_plan_is_refused_in_one_line(model, bundle_dir, tmp_path):
    embeddings = clustered(model, tmp_path)
    plan = json.loads((embeddings / "simengine.json").read_text())
    (embeddings / "simengine.json").write_text(json.dumps(plan | {"shards": 10**9}))
    with pytest.raises(SimengineError, match="not a plan `simengine embed` wrote"):
        build_from_embeddings(embeddings, tmp_path / "index", bundle_dir)
    (embeddings / "simengine.json").write_text(json.dumps(plan))
    metadata_path(embeddings, 3).write_bytes(b"PAR1" + b"\x00garbage" * 100)
    with pytest.raises(SimengineError, match="1 of 4 shards are not finished"):
        build_from_embeddings(embeddings, tmp_path / "index", bundle_dir)
