"""The whole `simengine dedup` job as one library call: groups, reports, and the move plan."""

from __future__ import annotations

import os

from simengine.dedup.find import DuplicateReport, find_duplicates
from simengine.dedup.move import Move, apply_moves, check_target, plan_moves
from simengine.dedup.report import write_csv, write_html
from simengine.errors import SimengineError
from simengine.files import check_output_folders
from simengine.store.layout import is_index_dir


def dedup_collection(source: str | os.PathLike, against: str | os.PathLike | None = None,
                     model_dir: str | os.PathLike | None = None, csv_path: str | os.PathLike | None = None,
                     html_path: str | os.PathLike | None = None, move_to: str | os.PathLike | None = None,
                     apply: bool = False, path_column: str = "path", progress: bool = False, runtime: str = "auto",
                     keep: str = "largest", copies: str = "edited",
                     ) -> tuple[DuplicateReport, list[Move], list[Move], list[tuple[str, str]]]:
    """The whole `simengine dedup` job: find the duplicate groups, write the CSV and HTML reports asked for, and
    plan moving the duplicates to `move_to` (carried out only with `apply`); `keep` is the keeper rule and `copies`
    which copies count (see `find_duplicates`). Returns (report, moves planned, moves done, files left in place as
    (path, reason)). Output paths are checked before any image is read."""
    if move_to:
        if is_index_dir(source):
            raise SimengineError("--move-to moves the files of a folder; to drop duplicates from an index, "
                                 "`simengine index remove` their ids")
        check_target(source, move_to)
    check_output_folders(csv_path, html_path)
    report = find_duplicates(source, against, model_dir, runtime=runtime, path_column=path_column, progress=progress,
                             keep=keep, copies=copies)
    if csv_path:
        write_csv(report, csv_path)
    if html_path:
        write_html(report, html_path)
    planned = plan_moves(report, move_to) if move_to else []
    done, left = apply_moves(planned, move_to) if planned and apply else ([], [])
    return report, planned, done, left
