"""Thresholds from a few labelled examples: `index calibrate --pairs/--labels` (index.update.calibrate_with_examples
over index.calibrate.calibrate_from_examples)."""

import csv
import itertools
import json
from pathlib import Path

import pytest

from simengine.errors import SimengineError
from simengine.index.reader import Index
from simengine.index.update import calibrate_with_examples
from simengine.store.layout import StoreDir


def write_rows(path: Path, header: list[str], rows: list[list]) -> Path:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def labelled_pairs(fixture_data: Path, split: str = "val") -> list[list]:
    """Every pair of the split's images, 1 where they show the same photo."""
    images = sorted((fixture_data / split).glob("*/*.jpg"))
    return [[str(a), str(b), int(a.parent == b.parent)] for a, b in itertools.combinations(images, 2)]


def test_pairs_calibrate_every_threshold_with_an_interval_as_a_new_version(index_copy, fixture_data, tmp_path):
    before = StoreDir(index_copy).current_version()
    pairs = write_rows(tmp_path / "pairs.csv", ["img1", "img2", "label"], labelled_pairs(fixture_data))
    done = calibrate_with_examples(index_copy, pairs=pairs)
    assert done.pairs == 66 and done.items == 0 and not done.skipped
    cal = done.calibration
    for mode, threshold in cal.pair.items():
        assert threshold.examples == 66
        lo, hi = threshold.interval
        assert lo <= threshold.value <= hi
        # No labelled images: the triplet threshold keeps the model's distance above the pair threshold.
        assert cal.triplet[mode].interval is None
    assert "labelled pairs from pairs.csv" in cal.source
    assert StoreDir(index_copy).current_version() == before + 1
    with Index(index_copy) as index:
        info = index.info()
    assert info["thresholds_from"].startswith("66 labelled examples")
    assert info["pair_threshold_interval"] == list(cal.pair[cal.default].interval)
    assert info["calibrated_on"] == cal.source


def test_bad_rows_are_skipped_and_named(index_copy, fixture_data, tmp_path):
    rows = labelled_pairs(fixture_data)
    rows += [["missing.jpg", rows[0][0], 1], ["id:999999", rows[0][0], 0], [rows[0][0], rows[1][0]]]
    pairs = write_rows(tmp_path / "pairs.csv", ["img1", "img2", "label"], rows)
    done = calibrate_with_examples(index_copy, pairs=pairs)
    assert done.pairs == 66 and len(done.skipped) == 3
    assert any("missing.jpg" in s for s in done.skipped)
    assert any("id:999999" in s or "999999" in s for s in done.skipped)
    assert any("no label" in s for s in done.skipped)


def test_indexed_images_use_their_stored_vectors(index_copy, fixture_data, model, tmp_path, monkeypatch):
    embedded = []
    real = model.embed_paths
    monkeypatch.setattr(model, "embed_paths", lambda paths, **kw: embedded.extend(paths) or real(paths, **kw))
    train = labelled_pairs(fixture_data, "train")[::7]
    with Index(index_copy) as index:
        first = min(index.items(range(100)))
    pairs = write_rows(tmp_path / "pairs.csv", ["img1", "img2", "label"], train + [[f"id:{first}", train[0][0], 0]])
    done = calibrate_with_examples(index_copy, pairs=pairs, model=model)
    assert done.pairs == len(train) + 1 and not embedded  # all indexed: nothing embedded again


def test_too_few_pairs_change_nothing(index_copy, fixture_data, tmp_path):
    before = StoreDir(index_copy).current_version()
    rows = [r for r in labelled_pairs(fixture_data) if r[2] == 0][:20]
    pairs = write_rows(tmp_path / "pairs.csv", ["img1", "img2", "label"], rows)
    with pytest.raises(SimengineError, match="0 same"):
        calibrate_with_examples(index_copy, pairs=pairs)
    assert StoreDir(index_copy).current_version() == before


def test_labelled_images_calibrate_the_triplet_threshold_too(index_copy, fixture_data, tmp_path):
    images = sorted((fixture_data / "val").glob("*/*.jpg"))
    labels = write_rows(tmp_path / "labels.csv", ["image", "label"],
                        [[str(p), p.parent.name] for p in images])
    done = calibrate_with_examples(index_copy, labels=labels)
    assert done.items == len(images) and done.pairs == 0
    cal = done.calibration
    assert all(t.interval is not None for t in cal.triplet.values())
    assert "labelled images from labels.csv" in cal.source


def test_cli_calibrate_from_pairs(index_copy, fixture_data, tmp_path):
    from tests.test_cli import run

    pairs = write_rows(tmp_path / "pairs.csv", ["img1", "img2", "label"], labelled_pairs(fixture_data))
    code, out = run("index", "calibrate", "--index", index_copy, "--pairs", pairs)
    assert code == 0 and "[95 %" in out and "66 labelled pairs" in out
    code, out = run("index", "calibrate", "--index", index_copy, "--pairs", pairs, "--json")
    assert code == 0 and json.loads(out)["skipped"] == []
    code, out = run("index", "calibrate", "--index", index_copy, "--pairs", tmp_path / "none.csv")
    assert code != 0 and "no such CSV file" in out
