"""Curation reports as CSV (one row per item) and as a self-contained HTML page with thumbnails, like dedup's."""

from __future__ import annotations

import csv
import html
import os
from pathlib import Path
from typing import Any, Iterable

from simengine.curation.label_errors import LabelErrorReport
from simengine.curation.outliers import OutlierReport
from simengine.curation.sample import SampleReport
from simengine.data.thumbnails import figure

MAX_THUMBNAILS = 2000
Report = LabelErrorReport | OutlierReport | SampleReport


def rows_of(report: Report) -> list[dict[str, Any]]:
    """One flat row per reported item, as the CSV holds it."""
    if isinstance(report, LabelErrorReport):
        return [{"rank": n, "id": i.id, "path": i.path, "label": i.label, "suggested": i.suggested,
                 "label_weight": i.label_weight, "suggested_weight": i.suggested_weight, "margin": i.margin,
                 "disagreeing_neighbours": " ".join(str(e["id"]) for e in i.evidence)}
                for n, i in enumerate(report.issues, 1)]
    if isinstance(report, OutlierReport):
        return [{"rank": n, "id": o.id, "path": o.path, "label": o.label, "score": o.score,
                 "nearest": " ".join(str(e["id"]) for e in o.nearest)} for n, o in enumerate(report.outliers, 1)]
    return [{"rank": n, "id": r.id, "path": r.path, "label": r.label, "represents": r.represents}
            for n, r in enumerate(report.sample, 1)]


def write_csv(report: Report, path: str | os.PathLike) -> Path:
    rows = rows_of(report)
    path = Path(path)
    with path.open("w", newline="", encoding="utf-8") as out:
        writer = csv.DictWriter(out, fieldnames=list(rows[0]) if rows else ["rank", "id", "path", "label"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_html(report: Report, path: str | os.PathLike) -> Path:
    """One page: what was asked and found, then each item as a row of thumbnails (the item, then its evidence)."""
    e, budget = html.escape, [MAX_THUMBNAILS]
    title, summary, entries = _content(report)
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>simengine curate</title><style>",
        "body{font:14px system-ui,sans-serif;margin:1.5em}figure{display:inline-block;margin:.3em;width:170px;"
        "vertical-align:top}img{max-width:160px;max-height:160px;display:block}figcaption{font-size:11px;"
        "word-break:break-all}.item{outline:3px solid #c50}.entry{border-top:1px solid #ccc;padding:.5em 0}",
        "</style></head><body>", f"<h1>{e(title)}</h1>", f"<p>{e(summary)}</p>",
    ]
    for n, (path_, caption, evidence) in enumerate(entries, 1):
        parts.append(f"<div class='entry'><b>{n}.</b><br>" + figure(path_, caption, "item", budget))
        parts += [figure(p, c, "", budget) for p, c in evidence]
        parts.append("</div>")
    parts.append("</body></html>")
    out = Path(path)
    out.write_text("\n".join(parts), encoding="utf-8")
    return out


def _content(report: Report) -> tuple[str, str, Iterable[tuple[str, str, list[tuple[str, str]]]]]:
    """The page's title, summary, and (path, caption, [(evidence path, caption)]) per entry."""
    if isinstance(report, LabelErrorReport):
        summary = (f"{len(report.issues)} of {report.labelled} labelled items (of {report.items}) have a label their "
                   f"{report.k} nearest other items disagree with, worst first; beside each, the neighbours of "
                   "another label." + (f" Warning: {report.warning}." if report.warning else ""))
        return (f"Label errors in {report.index}", summary,
                ((i.path, f"id {i.id}: labelled {i.label} ({i.label_weight:.2f}), looks like {i.suggested} "
                  f"({i.suggested_weight:.2f})", [(v["path"], f"id {v['id']}: {v['label']}, cosine {v['cosine']:.3f}")
                                                  for v in i.evidence]) for i in report.issues))
    if isinstance(report, OutlierReport):
        scope = "their label's" if report.within_labels else "the collection's"
        return (f"Outliers in {report.index}", f"The {len(report.outliers)} items furthest from {scope} other items "
                f"(1 − the cosine of the {report.k}th nearest), of {report.items}; beside each, its nearest.",
                ((o.path, f"id {o.id}: {o.label or 'unlabelled'}, score {o.score:.3f}",
                  [(v["path"], f"id {v['id']}: cosine {v['cosine']:.3f}") for v in o.nearest])
                 for o in report.outliers))
    return (f"A representative sample of {report.index}", f"{len(report.sample)} items of {report.items}, each the "
            "one nearest a k-means centroid" + (", each label in proportion" if report.per_label else "") + ".",
            ((r.path, f"id {r.id}: {r.label or 'unlabelled'}, represents {r.represents}", [])
             for r in report.sample))
