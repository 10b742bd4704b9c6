"""Smoke tests: each benchmark script runs on the fixtures with tiny sizes and writes valid JSON and Markdown."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from simengine.dedup.copies import TRANSFORMS

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


def _written(out: Path, name: str) -> dict:
    assert (out / f"{name}.md").read_text().startswith("#")
    data = json.loads((out / f"{name}.json").read_text())
    assert data["environment"]["versions"]["numpy"]
    return data


def test_accuracy_script(fixture_data, tmp_path):
    import accuracy

    out = tmp_path / "new" / "results"
    accuracy.main(["--data", str(fixture_data), "--n-test", "20", "--n-large", "40", "--steps", "20", "--out", str(out)])
    data = _written(out, "accuracy")
    assert len(data["rows"]) == 7 and (out / data["figures"][0]).is_file()
    for row in data["rows"]:
        draws = row["large_pair_draws"]
        assert len(draws) == 3 and row["large_pair_accuracy"] == pytest.approx(sum(draws) / 3)
        assert min(draws) <= row["large_pair_accuracy"] <= max(draws)


def test_latency_script(fixture_data, index_copy, tmp_path):
    """On a copy of the index: the script quantizes its bundle to int8, which the session's other tests must not see."""
    import latency

    latency.main(["--data", str(fixture_data), "--index", str(index_copy), "--images", "8", "--batch-sizes", "4",
                  "--queries", "3", "--cold-runs", "1", "--cold-build-images", "4", "--out", str(tmp_path)])
    data = _written(tmp_path, "latency")
    assert [r["runtime"] for r in data["cold_build"]] == ["onnxruntime", "auto"] and data["cold_build"][0]["images"] == 4
    assert data["throughput"][0]["ratio_vs_baseline"] == pytest.approx(1.0)
    assert data["int8"]["calibration_images"] == 32  # every fixture train image (fewer than 300)
    runtimes = {r["runtime"] for r in data["model_only"]}
    assert {"torch", "onnxruntime", "openvino", "openvino-int8"} <= runtimes
    assert {r["runtime"] for r in data["fast_path_accuracy"]} == runtimes
    for row in data["fast_path_accuracy"]:
        assert row["passes_gate"] if row["runtime"] in ("torch", "onnxruntime", "openvino") else (
            row["recorded"] == row["passes_gate"])
    assert 0 < data["decode"]["share_of_bound"] and data["decode"]["cores"] >= 1
    assert data["cold_cli_pair"]["median_s"] > 0


def test_search_scale_script(built_index, tmp_path):
    import search_scale

    search_scale.main(["--index", str(built_index), "--sizes", "500", "--queries", "20", "--single", "5", "--out", str(tmp_path)])
    data = _written(tmp_path, "search_scale")
    assert {r["type"] for r in data["rows"]} == {"flat", "hnsw", "ivf"}
    assert next(r for r in data["rows"] if r["type"] == "flat")["recall_at_10"] == 1.0


def test_load_script(fixture_data, built_index, tmp_path):
    import load

    load.main(["--index", str(built_index), "--data", str(fixture_data), "--clients", "4", "--seconds", "2",
               "--total-requests", "40", "--rss-every", "10", "--out", str(tmp_path)])
    data = _written(tmp_path, "load")
    assert data["timed_ok"] > 0 and data["errors"] == 0 and data["total_requests"] >= 40
    assert data["encoder"]["forward_best"] > 0 and data["ratio_to_forward_best"] > 0
    assert data["server_peak_rss_mb"] > 0 and len(data["rss_samples"]) >= 4 and data["mean_batch_size"] >= 1


def test_upload_cost_script(built_index, tmp_path):
    import upload_cost

    upload_cost.main(["--index", str(built_index), "--runs", "1", "--bursts", "1", "--side", "1500",
                      "--out", str(tmp_path)])
    data = _written(tmp_path, "upload_cost")
    assert set(data["cli"]) == {"u16.png", "rgba.png", "photo.jpg"}
    assert all(c["seconds"] > 0 and c["peak_rss_mb"] > 0 for c in data["cli"].values())
    [burst] = data["server"]["bursts"]
    assert burst["triplet_statuses"] == [200] * 4 and burst["pair_status"] == 200 and burst["rss_after_mb"] > 0


def test_input_ablation_script(fixture_data, tmp_path):
    import input_ablation

    input_ablation.main(["--data", str(fixture_data), "--variants", "96:1.0", "--n-test", "20", "--n-large", "40",
                         "--draws", "2", "--steps", "20", "--out", str(tmp_path)])
    data = _written(tmp_path, "input_ablation")
    assert [row["pooling"] for row in data["rows"]] == ["avg", "gem", "max"]
    assert all(row["size"] == 96 and 0 <= row["precision_at_1"] <= 1 for row in data["rows"])


def test_index_write_script(built_index, tmp_path):
    import index_write

    index_write.main(["--index", str(built_index), "--sizes", "300", "--adds", "5", "--repeats", "2",
                      "--out", str(tmp_path)])
    data = _written(tmp_path, "index_write")
    assert [r["vectors"] for r in data["rows"]] == [300]
    assert all(r["before_median_s"] > 0 and r["after_median_s"] > 0 for r in data["rows"])
    assert all(len(r["before_runs_s"]) == len(r["after_runs_s"]) == 2 for r in data["rows"])


def test_collection_script(fixture_data, bundle_dir, tmp_path):
    import collection

    collection.main(["--data", str(fixture_data), "--model", str(bundle_dir), "--n", "20", "--questions", "10",
                     "--searches", "2", "--out", str(tmp_path)])
    data = _written(tmp_path, "collection")
    assert data["build"]["items"] == 20 and data["build"]["thresholds_estimated"] is True
    assert (data["sync"]["added"], data["sync"]["changed"], data["sync"]["removed"]) == (10, 5, 10)
    assert data["sync"]["nothing_changed_version"] is None and data["filtered_search"]["all_results_match"]


def six_class_data(fixture_data: Path, root: Path) -> Path:
    """The fixture's four classes and two more photos: each half of the classes needs three for balanced sets."""
    import shutil

    from fixtures import jittered, photo

    shutil.copytree(fixture_data, root)
    rng = np.random.default_rng(1)
    for name in ("immunohistochemistry", "hubble_deep_field"):
        for split, n in (("train", 8), ("val", 3)):
            (root / split / name).mkdir()
            for i in range(n):
                jittered(photo(name), rng).save(root / split / name / f"{i}.jpg", quality=90)
    return root


def test_unseen_classes_script(fixture_data, tmp_path):
    import unseen_classes

    data_root = six_class_data(fixture_data, tmp_path / "data")
    unseen_classes.main(["--data", str(data_root), "--n-test", "20", "--n-large", "40", "--draws", "2",
                         "--steps", "20", "--out", str(tmp_path)])
    data = _written(tmp_path, "unseen_classes")
    first, second = data["halves"]
    assert first and second and not set(first) & set(second) and first == sorted(first) and first[-1] < second[0]
    assert [d["train_on"] for d in data["directions"]] == [first, second]
    assert data["rows"][0]["row"].startswith("raw backbone") and data["rows"][1]["row"].startswith("default")
    for row in data["rows"]:
        assert len(row["directions"]) == 2
        for key, mean in row["mean"].items():
            assert mean == pytest.approx(sum(d[key] for d in row["directions"]) / 2) and 0 <= mean <= 1
    auto, raw = data["rows"][-1], data["rows"][0]["mean"]
    assert auto["row"].startswith("auto") and len(auto["chosen"]) == 2
    assert all(0 <= d["unlike_share"]["unseen_train"] <= 1 for d in data["directions"])
    gain = auto["mean"]["large_pair_accuracy"] - raw["large_pair_accuracy"]
    assert data["target"]["default_minus_raw"] == pytest.approx(gain)


def test_unseen_halves_and_the_control_classifier():
    import torch
    import unseen_classes

    labels = np.array(["n03", "n01", "n05", "n02", "n04", "n01"])
    assert unseen_classes.halves(labels) == [["n01", "n02"], ["n03", "n04", "n05"]]
    weight, bias = torch.arange(1000.0)[:, None].repeat(1, 3), torch.arange(1000.0)
    kept_w, kept_b = unseen_classes.without_classes((weight, bias), ["n01440764", "n03888257"])
    assert kept_b.shape == (998,) and 0 not in kept_b and 701 not in kept_b and 700 in kept_b
    assert torch.equal(kept_w[:, 0], kept_b)


def test_dedup_script(fixture_data, bundle_dir, tmp_path):
    import dedup

    dedup.main(["--data", str(fixture_data), "--model", str(bundle_dir), "--originals", "3", "--distractors", "4",
                "--scale-n", "3000", "--html", str(tmp_path / "leakage.html"), "--out", str(tmp_path)])
    data = _written(tmp_path, "dedup")
    assert data["set"]["files"] == 7 + data["set"]["copies"] and set(data["imagededup"]) == set(dedup.HASHES)
    assert 0 <= data["simengine"]["precision"] <= 1 and 0 <= data["simengine"]["recall"] <= 1
    assert data["leakage"]["val_images"] == 12 and (tmp_path / "leakage.html").is_file()
    assert data["scale"]["found"] == data["scale"]["planted_pairs"] == 1000
    by_kind = data["simengine"]["recall_by_kind"]
    assert set(by_kind) <= set(TRANSFORMS) and sum(k["copies"] for k in by_kind.values()) >= data["set"]["copies"]
    assert all(0 <= k["recall"] <= 1 for k in by_kind.values())
    assert set(data["imagededup"]["PHash"]["recall_by_kind"]) == set(by_kind)
    assert "Recall by kind of copy" in (tmp_path / "dedup.md").read_text()


def test_adaptation_script(fixture_data, tmp_path):
    import adaptation

    six = six_class_data(fixture_data, tmp_path / "six")
    adaptation.main(["--data", str(fixture_data), "--backbones", "tf_efficientnet_lite0", "--blocks", "1",
                     "--views", "1", "--epochs", "1", "--steps", "40", "--warm-cache", "--unseen", str(six),
                     "--halves", "0", "--out", str(tmp_path)])
    data = _written(tmp_path, "adaptation")
    assert [(u["train_on"], u["choice"]["reason"]) for u in data["unseen"]] == [
        (["astronaut", "chelsea", "coffee"], "asked for frozen"),
        (["astronaut", "chelsea", "coffee"], "asked for")]
    assert all(0 <= u["pair_accuracy"] <= 1 and 0 <= u["precision_at_1"] <= 1 for u in data["unseen"])
    frozen, adapted = data["rows"]
    assert not frozen["adapted"] and frozen["choice"]["reason"] == "asked for frozen"
    assert adapted["blocks"] == 1 and adapted["choice"]["reason"] == "asked for"
    assert len(adapted["choice"]["record"]["holdout_map_at_r"]) == 2
    for row in data["rows"]:
        assert 0 <= row["pair_accuracy"] <= 1 and row["peak_rss_mb"] > 100 and row["seconds"] > 0
    assert "## TrashNet" in (tmp_path / "adaptation.md").read_text()


def test_few_labels_script(fixture_data, tmp_path):
    import few_labels

    data_root = six_class_data(fixture_data, tmp_path / "data")
    few_labels.main(["--trashnet", str(data_root), "--imagenette", str(data_root), "--sizes", "12", "20",
                     "--repeats", "2", "--n-test", "40", "--out", str(tmp_path)])
    data = _written(tmp_path, "few_labels")
    assert len(data["collections"]) == 3  # TrashNet, and both unseen halves
    for collection in data["collections"]:
        assert [r["pairs"] for r in collection["rows"]] == [12, 20]
        for row in collection["rows"]:
            assert 0 <= row["pair_mean"] <= 1 and row["pair_gap_to_full"] == pytest.approx(
                collection["full_label"]["pair"] - row["pair_mean"])
    assert "labelled pairs" in (tmp_path / "few_labels.md").read_text()


def test_embed_ray_script(fixture_data, bundle_dir, tmp_path):
    import embed_ray

    embed_ray.main(["--data", str(fixture_data), "--model", str(bundle_dir), "--images", "8", "--shard-size", "4",
                    "--repeats", "1", "--out", str(tmp_path)])
    data = _written(tmp_path, "embed_ray")
    assert [(r["setup"], r["workers"]) for r in data["rows"]] == [
        ("local path (no Ray)", 1), ("local Ray", 1), ("local Ray", 2), ("2-node cluster", 1), ("2-node cluster", 2)]
    assert all(r["max_abs_diff_to_local"] < 1e-5 and r["loopback_only"] for r in data["rows"][1:])


def test_build_scale_script(built_index, tmp_path):
    import build_scale

    build_scale.main(["--index", str(built_index), "--vectors", "20000", "--shard-size", "5000",
                      "--max-index-memory", "8M", "--queries", "50", "--single", "5", "--repeats", "1",
                      "--work", str(tmp_path / "work"), "--out", str(tmp_path)])
    data = _written(tmp_path, "build_scale")
    assert data["build"]["index_type"] == "ivf_sq8" and data["build"]["estimated_bytes"] <= 8 * 2**20
    assert data["shards"] == 4 and data["recall_at_10"] > 0.5 and data["batched_qps"] > 0
    assert [s["nprobe"] for s in data["nprobe_sweep"]] == [4, 8, 16]  # around the tuned 8
    assert data["build_peak_rss_bytes"] > 0 and not (tmp_path / "work").exists()  # a tiny index may reuse freed RAM


def test_first_run_script(fixture_data, bundle_dir, tmp_path):
    import first_run

    first_run.main(["--folder", str(fixture_data / "train"), "--images", "8", "--eval", str(fixture_data / "val"),
                    "--model", str(bundle_dir), "--rounds", "1", "--out", str(tmp_path)])
    data = _written(tmp_path, "first_run")
    run = data["first_run"]
    assert run["build_output"].startswith("index ") and run["neighbours"] == 5
    assert len(run["prepared_once"]) == 1 and run["cache_mb"]["models"] > 0
    assert set(data["build_rate"]["images_per_s"]) == {"auto", "onnxruntime"}
    [accuracy] = data["accuracy"].values()
    assert set(accuracy) == {"built-in", "trained"} and all(m["images"] == 12 for m in accuracy.values())


def test_curation_script(fixture_data, bundle_dir, tmp_path):
    """On the fixture photos laid out as Imagenette (JPEGs, a noisy-label CSV) and as TrashNet."""
    import csv
    import shutil

    import curation

    imagenette, trashnet = tmp_path / "imagenette", tmp_path / "trashnet"
    photos = sorted((fixture_data / "train").glob("*/*.jpg"))
    with open(tmp_path / "rows.csv", "w", newline="") as f:
        rows = csv.writer(f)
        rows.writerow(["path", "noisy_labels_0", "noisy_labels_1", "noisy_labels_5", "noisy_labels_25",
                       "noisy_labels_50", "is_valid"])
        for n, p in enumerate(photos):
            target = imagenette / "train" / p.parent.name / f"{p.stem}.JPEG"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(p, target)
            wrong = "rocket" if p.parent.name != "rocket" else "coffee"
            rows.writerow([f"train/{p.parent.name}/{target.name}", p.parent.name, p.parent.name,
                           wrong if n % 8 == 0 else p.parent.name, wrong if n % 4 == 0 else p.parent.name,
                           wrong if n % 2 == 0 else p.parent.name, "False"])
    shutil.move(tmp_path / "rows.csv", imagenette / "noisy_imagenette.csv")
    for split in ("train", "val"):
        for name in ("coffee", "chelsea"):
            shutil.copytree(fixture_data / split / name, trashnet / split / name)
    curation.main(["--data", str(imagenette), "--trashnet", str(trashnet), "--model", str(bundle_dir),
                   "--scale", "300", "--out", str(tmp_path)])
    data = _written(tmp_path, "curation")
    errors = data["label_errors"]["imagenette"]["5"]
    assert errors["simengine"]["errors"] == 4 and errors["cleanlab"]["errors"] == 4
    assert 0 <= errors["simengine"]["precision_at_k"] <= 1 and errors["cleanlab"]["average_precision"] > 0
    assert set(data["label_errors"]["trashnet"]) == {"5", "25"}
    assert data["outliers"]["planted"] == 1 and data["outliers"]["precision_at_k"] in (0.0, 1.0)
    assert [c["items"] for c in data["cost"]] == [32, 300]
    assert all(c["peak_rss_mb"][q] > 0 and c["seconds"][q] >= 0 for c in data["cost"] for q in curation.QUESTIONS)
    assert len(data["targets"]) == 5 and "Targets (issue 32)" in (tmp_path / "curation.md").read_text()


def test_app_script(bundle_dir, tmp_path):
    from servers import CHROMIUM

    if CHROMIUM is None:
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    import app

    result = app.main(["--sizes", "300", "--repeats", "1", "--model", str(bundle_dir), "--out", str(tmp_path)])
    data = _written(tmp_path, "app")
    [size] = data["sizes"]
    assert size["items"] == 300 and size["projection"]["items"] == 300 and size["browser"]["map_points"] == 300
    assert size["browser"]["map_frames"] > 0 and size["browser"]["gallery_next_ms"] > 0
    assert result["targets_ms"]["gallery_first_ms"] == 300


def test_map_projection_script(built_index, tmp_path):
    import map_projection

    map_projection.main(["--index", str(built_index), "--sizes", "32", "128", "--methods", "pca", "tsne_pca50",
                         "--no-jit", "--out", str(tmp_path)])
    data = _written(tmp_path, "map_projection")
    assert "tsne_pca50" in (tmp_path / "map_projection.md").read_text() and data
