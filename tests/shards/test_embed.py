"""`simengine embed` on this machine: clip-retrieval's layout, the same vectors as the model gives, bad files reported,
and a rerun that embeds only what is not finished."""

import json

import numpy as np
import pytest

from simengine.errors import SimengineError
from simengine.shards.embed import embed_collection
from simengine.shards.layout import embedding_path, is_finished, iter_shards, metadata_path, read_plan


def expected_vectors(model, rows):
    return model.embed_paths([row["image_path"] for row in rows]).vectors


def test_shards_hold_the_models_vectors_in_clip_retrievals_layout(images, model, bundle_dir, tmp_path):
    out = tmp_path / "emb"
    report = embed_collection(images, out, bundle_dir, shard_size=10)
    assert report.shards == 4 and report.embedded_shards == [0, 1, 2, 3] and report.vectors == 32
    assert [f["path"].endswith("broken.jpg") for f in report.failed] == [True]
    assert all(embedding_path(out, k).is_file() and metadata_path(out, k).is_file() for k in range(4))
    seen = []
    for k, vectors, rows in iter_shards(out):
        assert vectors.dtype == np.float32 and vectors.shape[1] == model.dim
        np.testing.assert_allclose(vectors, expected_vectors(model, rows), atol=1e-5)
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
        assert {"image_path", "sha256", "label"} <= set(rows[0])
        seen += [row["image_path"] for row in rows]
    assert len(seen) == len(set(seen)) == 32 and not any(p.endswith("broken.jpg") for p in seen)
    assert read_plan(out)["model"] == {"bundle_hash": model.hash, "runtime": model.runtime, "dim": model.dim}


def test_a_rerun_embeds_only_the_unfinished_shards(images, bundle_dir, tmp_path):
    out = tmp_path / "emb"
    embed_collection(images, out, bundle_dir, shard_size=10)
    before = {k: embedding_path(out, k).stat().st_mtime_ns for k in range(4)}
    metadata_path(out, 2).unlink()  # as if the job had been killed while writing shard 2
    report = embed_collection(images, out, bundle_dir, shard_size=10)
    assert report.embedded_shards == [2] and report.skipped_shards == [0, 1, 3]
    assert all(embedding_path(out, k).stat().st_mtime_ns == before[k] for k in (0, 1, 3))
    again = embed_collection(images, out, bundle_dir, shard_size=10)
    assert again.embedded_shards == [] and again.total_vectors == 32 and len(again.failed) == 1  # kept, reported
    # Vectors of another attempt beside this attempt's rows (an actor that died between the two files): not done.
    vectors = np.load(embedding_path(out, 1))
    np.save(embedding_path(out, 1), vectors[::-1].copy())
    assert not is_finished(out, 1)
    assert embed_collection(images, out, bundle_dir, shard_size=10).embedded_shards == [1]


def test_another_plan_is_refused(images, bundle_dir, tmp_path):
    out = tmp_path / "emb"
    embed_collection(images, out, bundle_dir, shard_size=10)
    with pytest.raises(SimengineError, match="another plan"):
        embed_collection(images, out, bundle_dir, shard_size=8)
    full = tmp_path / "full"
    (full / "x").mkdir(parents=True)
    with pytest.raises(SimengineError, match="not empty"):
        embed_collection(images, full, bundle_dir)


def test_cli_embed_json(images, bundle_dir, tmp_path):
    from click.testing import CliRunner

    from simengine.cli import cli

    result = CliRunner().invoke(cli, ["embed", str(images), "--out", str(tmp_path / "emb"), "--model", str(bundle_dir),
                                      "--shard-size", "16", "--json"])
    data = json.loads(result.stdout)
    assert result.exit_code == 0 and data["vectors"] == 32 and data["backend"] == "local" and len(data["failed"]) == 1


def test_a_tables_mixed_columns_are_kept_as_text_with_one_schema(images, bundle_dir, tmp_path):
    import pyarrow.parquet as pq

    paths = sorted(p for p in images.rglob("*.jpg") if p.name != "broken.jpg")[:6]
    table = tmp_path / "photos.csv"
    table.write_text("path,label,size,note\n" + "".join(
        f"{p},{p.parent.name},{12 if i % 2 else 'n/a'},\n" for i, p in enumerate(paths)))
    out = tmp_path / "emb"
    embed_collection(table, out, bundle_dir, shard_size=2)
    schemas = {str(pq.read_schema(metadata_path(out, k)).remove_metadata()) for k in range(3)}
    assert len(schemas) == 1  # every shard reads as one dataset
    rows = [row for _, _, rs in iter_shards(out) for row in rs]
    assert sorted(row["size"] for row in rows) == ["12", "12", "12", "n/a", "n/a", "n/a"]


def test_cli_embed_usage(images, bundle_dir, tmp_path):
    from click.testing import CliRunner

    from simengine.cli import cli

    result = CliRunner().invoke(cli, ["embed", str(images), "--out", str(tmp_path / "emb"), "--model", str(bundle_dir),
                                      "--workers", "2"])
    assert result.exit_code == 2 and "--workers needs --ray" in result.output


def test_a_rerun_embeds_a_shard_whose_metadata_file_is_garbage_again(images, bundle_dir, tmp_path):
    out = tmp_path / "emb"
    embed_collection(images, out, bundle_dir, shard_size=10)
    metadata_path(out, 1).write_bytes(b"not parquet at all" * 50)
    assert not is_finished(out, 1)
    assert embed_collection(images, out, bundle_dir, shard_size=10).embedded_shards == [1]
    assert is_finished(out, 1)
