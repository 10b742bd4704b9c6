"""Moving duplicates aside: planned first (a dry run prints the plan), then done file by file, each move recorded.

Nothing is deleted. Only the source's duplicates move, never a keeper and never an image of the other set. A file
that changed since it was read (its content hash differs), whose keeper is gone or changed, or whose target exists is
left where it is, and reported; a move never replaces a file that appears at its target meanwhile, and a file moved
by another run at the same time is reported, not fatal.
Targets keep each file's path below the source folder (or below the files' common folder), so equal names never
collide. Every move is appended to `moves.csv` in the target folder, so that it can be undone.
"""

from __future__ import annotations

import csv
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from simengine.dedup.find import DuplicateReport
from simengine.errors import SimengineError
from simengine.files import move_no_replace, sha256_file

log = logging.getLogger(__name__)

MOVES_LOG = "moves.csv"


@dataclass(frozen=True)
class Move:
    source: Path
    target: Path
    sha256: str
    keeper: str
    keeper_sha256: str


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
    members = [(m.image, g.keeper) for g in report.groups for m in g.duplicates
               if m.image.origin == "source" and m.image.path not in keepers]
    scanned = Path(report.source).resolve()
    if scanned.is_dir():  # paths are resolved: one outside the folder was reached through a link, and stays
        outside = {image.path for image, _ in members if scanned not in Path(image.path).parents}
        if outside:
            log.warning("%d duplicates reached through links lie outside %s and are not moved (the first: %s)",
                        len(outside), scanned, min(outside))
            members = [(image, keeper) for image, keeper in members if image.path not in outside]
    if not members:
        return []
    root = scanned if scanned.is_dir() else Path(os.path.commonpath([str(Path(i.path).parent) for i, _ in members]))
    return [Move(Path(image.path), target / Path(image.path).relative_to(root), image.sha256, keeper.path,
                 keeper.sha256) for image, keeper in members]


def apply_moves(moves: list[Move], target_dir: str | os.PathLike) -> tuple[list[Move], list[tuple[str, str]]]:
    """Carry out the moves (planned into `target_dir`); returns those done and (path, reason) for those left."""
    done, left = [], []
    log_path = Path(target_dir) / MOVES_LOG
    keeper_hashes: dict[tuple, str] = {}
    for move in moves:
        reason = _reason_to_stay(move, keeper_hashes)
        if reason is None:
            try:
                move.target.parent.mkdir(parents=True, exist_ok=True)
                move_no_replace(move.source, move.target)
            except FileExistsError:
                reason = f"{move.target} already exists"
            except FileNotFoundError:
                reason = "no longer there"
            except OSError as exc:
                reason = f"cannot be moved ({exc.strerror or exc})"
        if reason is not None:
            left.append((str(move.source), reason))
            continue
        new_log = not log_path.exists()
        with log_path.open("a", newline="", encoding="utf-8") as out:
            writer = csv.writer(out)
            if new_log:
                writer.writerow(["moved_at", "from", "to", "sha256", "keeper"])
            writer.writerow([time.strftime("%Y-%m-%dT%H:%M:%S%z"), move.source, move.target, move.sha256, move.keeper])
        done.append(move)
    return done, left


def _reason_to_stay(move: Move, keeper_hashes: dict[tuple, str]) -> str | None:
    """Why `move` must not happen now, if it must not. The keeper is hashed again (once while its size and mtime
    stay the same, `keeper_hashes` remembers): one replaced by another picture since the scan no longer keeps its
    duplicate's picture."""
    try:
        stat = os.stat(move.keeper)
        key = (move.keeper, stat.st_size, stat.st_mtime_ns, stat.st_ino)
        if key not in keeper_hashes:
            keeper_hashes[key] = sha256_file(move.keeper)
        if keeper_hashes[key] != move.keeper_sha256:
            return f"its keeper {move.keeper} changed since it was read"
    except OSError:
        return f"its keeper {move.keeper} is no longer there"
    if move.target.exists() or move.target.is_symlink():
        return f"{move.target} already exists"
    try:
        if sha256_file(move.source) != move.sha256:
            return "changed since it was read"
    except OSError:
        return "no longer there"
    return None
