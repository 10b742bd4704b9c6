"""Moving duplicates aside: planned first (a dry run prints the plan), then done file by file, each move recorded.

Nothing is deleted. Only the source's duplicates move, never a keeper and never an image of the other set. A file
that changed since it was read (its content hash differs), whose keeper is gone, or whose target exists is left
where it is, and reported.
Targets keep each file's path below the source folder (or below the files' common folder), so equal names never
collide. Every move is appended to `moves.csv` in the target folder, so that it can be undone.
"""

from __future__ import annotations

import csv
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from simengine.dedup.find import DuplicateReport
from simengine.errors import SimengineError
from simengine.files import sha256_file

MOVES_LOG = "moves.csv"


@dataclass(frozen=True)
class Move:
    source: Path
    target: Path
    sha256: str
    keeper: str


def check_target(source: str | os.PathLike, target_dir: str | os.PathLike) -> Path:
    """The resolved target folder; refused inside the scanned folder (the next scan would find the moved files
    again). Cheap: run it before the scan, so that a bad target never costs one."""
    target, scanned = Path(target_dir).resolve(), Path(source).resolve()
    if scanned.is_dir() and (target == scanned or scanned in target.parents):
        raise SimengineError(f"--move-to {target} is inside the scanned folder {scanned}: choose a folder outside it")
    if target.exists() and not target.is_dir():
        raise SimengineError(f"--move-to {target} is a file, not a folder")
    return target


def plan_moves(report: DuplicateReport, target_dir: str | os.PathLike) -> list[Move]:
    """Where each of the source's duplicates would go. Never a keeper (a file that is some group's keeper stays,
    whatever else it is) and never an image of the other set."""
    target = check_target(report.source, target_dir)
    keepers = {g.keeper.path for g in report.groups}
    members = [(m.image, g.keeper.path) for g in report.groups for m in g.duplicates
               if m.image.origin == "source" and m.image.path not in keepers]
    if not members:
        return []
    scanned = Path(report.source).resolve()
    root = scanned if scanned.is_dir() else Path(os.path.commonpath([str(Path(i.path).parent) for i, _ in members]))
    return [Move(Path(image.path), target / Path(image.path).relative_to(root), image.sha256, keeper)
            for image, keeper in members]


def apply_moves(moves: list[Move], target_dir: str | os.PathLike) -> tuple[list[Move], list[tuple[str, str]]]:
    """Carry out the moves (planned into `target_dir`); returns those done and (path, reason) for those left."""
    done, left = [], []
    log_path = Path(target_dir) / MOVES_LOG
    for move in moves:
        if not move.source.is_file():
            left.append((str(move.source), "no longer there"))
        elif not Path(move.keeper).is_file():
            left.append((str(move.source), f"its keeper {move.keeper} is no longer there"))
        elif move.target.exists():
            left.append((str(move.source), f"{move.target} already exists"))
        elif sha256_file(move.source) != move.sha256:
            left.append((str(move.source), "changed since it was read"))
        else:
            move.target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(move.source, move.target)
            new_log = not log_path.exists()
            with log_path.open("a", newline="", encoding="utf-8") as out:
                writer = csv.writer(out)
                if new_log:
                    writer.writerow(["moved_at", "from", "to", "sha256", "keeper"])
                writer.writerow([time.strftime("%Y-%m-%dT%H:%M:%S%z"), move.source, move.target, move.sha256,
                                 move.keeper])
            done.append(move)
    return done, left
