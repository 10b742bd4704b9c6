"""A duplicate report as CSV (one row per image) and as a self-contained HTML page with thumbnails."""

from __future__ import annotations

import csv
import html
import os
from pathlib import Path

from simengine.dedup.calibrate import SamePicture
from simengine.dedup.find import DuplicateReport
from simengine.dedup.groups import KEEP_RULES
from simengine.data.thumbnails import figure

CSV_COLUMNS = ("group", "role", "kind", "backbone", "layout", "matches", "path", "origin", "item_id")
MAX_THUMBNAILS = 2000  # beyond, groups are listed by path: the page stays a few tens of MB at most


def write_csv(report: DuplicateReport, path: str | os.PathLike) -> Path:
    path = Path(path)
    with path.open("w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(CSV_COLUMNS)
        for n, group in enumerate(report.groups, 1):
            keeper = group.keeper
            writer.writerow([n, "keeper", "", "", "", "", keeper.path, keeper.origin, keeper.item_id])
            for m in group.duplicates:
                row = m.to_dict()
                writer.writerow([n, "duplicate", m.kind, row["backbone"], row["layout"], row["matches"], m.image.path,
                                 m.image.origin, m.image.item_id])
    return path


def write_html(report: DuplicateReport, path: str | os.PathLike) -> Path:
    """One page: the decision, then each group as a row of thumbnails (keeper first) with paths and signals."""
    budget = [MAX_THUMBNAILS]
    e = html.escape
    summary, d = report.to_dict(), report.decision
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>simengine dedup</title><style>",
        "body{font:14px system-ui,sans-serif;margin:1.5em}figure{display:inline-block;margin:.3em;width:170px;"
        "vertical-align:top}img{max-width:160px;max-height:160px;display:block}figcaption{font-size:11px;"
        "word-break:break-all}.keeper{outline:3px solid #2a7}.group{border-top:1px solid #ccc;padding:.5em 0}",
        "</style></head><body>",
        f"<h1>Duplicates in {e(report.source)}" + (f" against {e(report.against)}" if report.against else "") + "</h1>",
        f"<p>{summary['images']} images, {summary['groups']} groups, {summary['duplicates']} duplicates "
        f"({summary['exact']} byte-identical), {len(report.skipped)} skipped. {e(_copy_rule(d))} (model "
        f"{e(report.model)}). The keeper (green) is the copy to keep: {e(KEEP_RULES[report.keep])}.</p>",
    ]
    for n, group in enumerate(report.groups, 1):
        parts.append(f"<div class='group'><b>Group {n}</b><br>")
        parts.append(figure(group.keeper.path, "keeper", "keeper", budget))
        for m in group.duplicates:
            signals = f"backbone {m.backbone:.3f}, layout {m.layout:.3f}" + (
                f", {m.matches} matches" if m.matches is not None else "")
            parts.append(figure(m.image.path, f"{m.kind}: {signals}", "", budget))
        parts.append("</div>")
    if report.skipped:
        parts.append("<h2>Skipped</h2><ul>" + "".join(f"<li>{e(p)}: {e(r)}</li>" for p, r in report.skipped)
                     + "</ul>")
    parts.append("</body></html>")
    path = Path(path)
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


def _copy_rule(d: SamePicture | None) -> str:
    if d is None:
        return "A copy: the same bytes."
    rule = f"A copy: backbone cosine ≥ {d.min_backbone:.3f} and layout cosine ≥ {d.min_layout:.3f}"
    if not d.keypoint_rule:
        return rule + " (resized, recompressed or recoloured; crops, rotations and overlays not counted)."
    return (rule + f", or backbone cosine ≥ {d.min_backbone_matches:.3f} and at least {d.min_matches} agreeing "
            "keypoint matches.")
