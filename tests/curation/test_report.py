"""Curation reports: one CSV row per item; a self-contained page that escapes every name and label."""

import csv

from simengine.curation.label_errors import LabelErrorReport, LabelIssue
from simengine.curation.outliers import Outlier, OutlierReport
from simengine.curation.report import write_csv, write_html
from simengine.curation.sample import Representative, SampleReport

HOSTILE = "<img src=x onerror=alert(1)>"


def test_reports_escape_hostile_labels_and_paths(fixture_data, tmp_path):
    photo = str(sorted((fixture_data / "train" / "coffee").glob("*.jpg"))[0])
    evidence = [{"id": 2, "path": photo, "label": HOSTILE, "cosine": 0.9}]
    reports = [
        LabelErrorReport("idx", 1, 5, 10, 10, [LabelIssue(1, photo, HOSTILE, "coffee", 0.1, 0.8, -0.7, evidence)]),
        OutlierReport("idx", 1, 5, 10, False, [Outlier(1, f"/x/{HOSTILE}.jpg", HOSTILE, 0.6, evidence)]),
        SampleReport("idx", 1, 1, 10, True, [Representative(1, photo, HOSTILE, 10)]),
    ]
    for n, report in enumerate(reports):
        page = write_html(report, tmp_path / f"{n}.html").read_text()
        assert "<img src=x" not in page and "&lt;img src=x onerror=alert(1)&gt;" in page
        assert "data:image/jpeg;base64," in page or n == 1  # thumbnails embedded; the outlier's file does not exist
        with open(write_csv(report, tmp_path / f"{n}.csv")) as f:
            rows = list(csv.DictReader(f))
        assert len(rows) == 1 and rows[0]["label"] == HOSTILE and rows[0]["rank"] == "1"
