"""Moving duplicates aside: planned (dry run) first, never a keeper, nothing overwritten or lost, every move logged."""

import csv
import shutil
from pathlib import Path

import pytest

from simengine.dedup.calibrate import SamePicture
from simengine.dedup.find import DuplicateGroup, DuplicateReport, Member, ReportedImage
from simengine.dedup.move import MOVES_LOG, apply_moves, plan_moves
from simengine.dedup.report import write_csv, write_html
from simengine.errors import SimengineError
from simengine.files import sha256_file


def report_of(root: Path, groups: dict[str, list[str]], origin: str = "source") -> DuplicateReport:
    def image(name, where=origin):
        return ReportedImage(str(root / name), sha256_file(root / name), where)
    return DuplicateReport(str(root), None, SamePicture(0.68, 0.93, 0.76, 37), "model", 10, [
        DuplicateGroup(image(keeper, "source"), [Member(image(d, "source"), "near", 0.9, 0.95, 50) for d in dups])
        for keeper, dups in groups.items()])


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "photos"
    for name in ("a.jpg", "b.jpg", "sub/a.jpg", "c.jpg", "d.jpg"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(name.encode() * 10)
    return root


def test_plan_moves_the_duplicates_keeping_relative_paths(folder, tmp_path):
    report = report_of(folder, {"a.jpg": ["sub/a.jpg", "b.jpg"], "c.jpg": ["d.jpg"]})
    target = tmp_path / "dups"
    planned = plan_moves(report, target)
    assert sorted(str(m.target.relative_to(target)) for m in planned) == ["b.jpg", "d.jpg", "sub/a.jpg"]
    assert not target.exists() and all(m.source.exists() for m in planned)  # planning moves nothing
    done, left = apply_moves(planned, target)
    assert len(done) == 3 and not left
    assert (folder / "a.jpg").exists() and (folder / "c.jpg").exists()  # keepers stay
    assert (target / "sub" / "a.jpg").read_bytes() == b"sub/a.jpg" * 10
    with open(target / MOVES_LOG) as f:
        rows = list(csv.DictReader(f))
    assert {Path(r["from"]).name for r in rows} == {"a.jpg", "b.jpg", "d.jpg"} and all(r["sha256"] for r in rows)


def test_changed_gone_or_colliding_files_stay_where_they_are(folder, tmp_path):
    report = report_of(folder, {"a.jpg": ["b.jpg", "c.jpg", "d.jpg"]})
    target = tmp_path / "dups"
    planned = plan_moves(report, target)
    (folder / "b.jpg").write_bytes(b"edited since")
    (folder / "c.jpg").unlink()
    target.mkdir()
    (target / "d.jpg").write_bytes(b"already here")
    done, left = apply_moves(planned, target)
    assert not done and [reason.split(" ")[-1] for _, reason in left] == ["read", "there", "exists"]
    assert (folder / "b.jpg").read_bytes() == b"edited since" and (target / "d.jpg").read_bytes() == b"already here"


def test_a_target_inside_the_scanned_folder_or_a_file_is_refused(folder, tmp_path):
    with pytest.raises(SimengineError, match="inside the scanned folder"):
        plan_moves(report_of(folder, {"a.jpg": ["b.jpg"]}), folder / "dups")
    with pytest.raises(SimengineError, match="inside the scanned folder"):  # the same folder, spelled with ..
        plan_moves(report_of(folder, {"a.jpg": ["b.jpg"]}), folder / "sub" / ".." / "dups")
    (tmp_path / "a-file").write_text("")
    with pytest.raises(SimengineError, match="is a file"):
        plan_moves(report_of(folder, {"a.jpg": ["b.jpg"]}), tmp_path / "a-file")


def test_a_keeper_never_moves_and_a_missing_keeper_stops_its_moves(folder, tmp_path):
    report = report_of(folder, {"a.jpg": ["b.jpg"], "b.jpg": ["c.jpg"]})  # b is a keeper too: it stays
    planned = plan_moves(report, tmp_path / "dups")
    assert [m.source.name for m in planned] == ["c.jpg"]
    (folder / "b.jpg").unlink()
    done, left = apply_moves(planned, tmp_path / "dups")
    assert not done and "keeper" in left[0][1] and (folder / "c.jpg").exists()


def test_images_of_the_other_set_never_move(folder, tmp_path):
    report = report_of(folder, {"a.jpg": ["b.jpg"]})
    report.groups[0].duplicates[0] = Member(ReportedImage(str(folder / "b.jpg"), "x", "against"), "near", 0.9, 0.9)
    assert plan_moves(report, tmp_path / "dups") == []


def test_reports_escape_hostile_names(folder, tmp_path):
    hostile = folder / "<img src=x onerror=alert(1)>.jpg"
    shutil.copyfile(folder / "a.jpg", hostile)
    report = report_of(folder, {"a.jpg": [hostile.name]})
    page = write_html(report, tmp_path / "report.html").read_text()
    assert "<img src=x" not in page and "&lt;img src=x onerror=alert(1)&gt;.jpg" in page
    with open(write_csv(report, tmp_path / "report.csv")) as f:
        rows = list(csv.DictReader(f))
    assert [r["role"] for r in rows] == ["keeper", "duplicate"] and rows[1]["path"] == str(hostile)


def hashing_with(monkeypatch, path: Path, side_effect) -> None:
    """Run `side_effect` when `apply_moves` hashes `path`: something another process does between the checks and
    the move."""
    import simengine.dedup.move as move_module

    def sha256(p):
        digest = sha256_file(p)
        if Path(p) == path:
            side_effect()
        return digest
    monkeypatch.setattr(move_module, "sha256_file", sha256)


def test_a_file_written_at_the_target_meanwhile_is_never_replaced(folder, tmp_path, monkeypatch):
    target = tmp_path / "dups"
    planned = plan_moves(report_of(folder, {"a.jpg": ["b.jpg"]}), target)
    target.mkdir()
    hashing_with(monkeypatch, folder / "b.jpg", lambda: (target / "b.jpg").write_bytes(b"written meanwhile"))
    done, left = apply_moves(planned, target)
    assert not done and left == [(str(folder / "b.jpg"), f"{target / 'b.jpg'} already exists")]
    assert (target / "b.jpg").read_bytes() == b"written meanwhile" and (folder / "b.jpg").exists()


def test_a_file_moved_by_another_run_meanwhile_is_reported_and_the_rest_go_on(folder, tmp_path, monkeypatch):
    target, other_run = tmp_path / "dups", tmp_path / "other-run"
    planned = plan_moves(report_of(folder, {"a.jpg": ["b.jpg", "c.jpg"]}), target)
    other_run.mkdir()
    hashing_with(monkeypatch, folder / "b.jpg", lambda: shutil.move(folder / "b.jpg", other_run / "b.jpg"))
    done, left = apply_moves(planned, target)
    assert [m.source.name for m in done] == ["c.jpg"] and left == [(str(folder / "b.jpg"), "no longer there")]
    assert (other_run / "b.jpg").exists() and not (target / "b.jpg").exists() and (target / "c.jpg").exists()


def test_a_keeper_replaced_by_another_picture_keeps_its_duplicates_in_place(folder, tmp_path):
    planned = plan_moves(report_of(folder, {"a.jpg": ["b.jpg"]}), tmp_path / "dups")
    (folder / "a.jpg").write_bytes(b"another picture now")
    done, left = apply_moves(planned, tmp_path / "dups")
    assert not done and left == [(str(folder / "b.jpg"), f"its keeper {folder / 'a.jpg'} changed since it was read")]


@pytest.mark.parametrize("across_file_systems", [False, True])
def test_move_no_replace(tmp_path, monkeypatch, across_file_systems):
    import errno
    import os

    from simengine.files import move_no_replace

    if across_file_systems:
        def no_link(*args, **kwargs):
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        monkeypatch.setattr(os, "link", no_link)
    (tmp_path / "a").write_bytes(b"a")
    (tmp_path / "taken").write_bytes(b"taken")
    with pytest.raises(FileExistsError):
        move_no_replace(tmp_path / "a", tmp_path / "taken")
    assert (tmp_path / "a").read_bytes() == b"a" and (tmp_path / "taken").read_bytes() == b"taken"
    move_no_replace(tmp_path / "a", tmp_path / "b")
    assert not (tmp_path / "a").exists() and (tmp_path / "b").read_bytes() == b"a"
    (tmp_path / "link").symlink_to(tmp_path / "b")
    move_no_replace(tmp_path / "link", tmp_path / "moved-link")
    assert (tmp_path / "moved-link").is_symlink() and (tmp_path / "b").read_bytes() == b"a"
    with pytest.raises(FileNotFoundError):
        move_no_replace(tmp_path / "a", tmp_path / "c")


def test_a_file_moved_by_another_run_between_the_link_and_the_unlink_leaves_no_second_copy(folder, tmp_path,
                                                                                          monkeypatch):
    import os

    target, other_run = tmp_path / "dups", tmp_path / "other-run"
    planned = plan_moves(report_of(folder, {"a.jpg": ["b.jpg", "c.jpg"]}), target)
    other_run.mkdir()
    real_unlink = os.unlink

    def unlink_after_the_other_run(path, *args, **kwargs):
        if Path(path) == folder / "b.jpg":
            shutil.move(folder / "b.jpg", other_run / "b.jpg")
        return real_unlink(path, *args, **kwargs)
    monkeypatch.setattr(os, "unlink", unlink_after_the_other_run)
    done, left = apply_moves(planned, target)
    assert [m.source.name for m in done] == ["c.jpg"] and left == [(str(folder / "b.jpg"), "no longer there")]
    assert (other_run / "b.jpg").exists() and not (target / "b.jpg").exists()


def test_a_source_that_cannot_be_removed_stays_with_no_copy_at_the_target(folder, tmp_path, monkeypatch):
    import errno
    import os

    planned = plan_moves(report_of(folder, {"a.jpg": ["b.jpg", "c.jpg"]}), tmp_path / "dups")
    real_unlink = os.unlink

    def read_only(path, *args, **kwargs):
        if Path(path) == folder / "b.jpg":
            raise PermissionError(errno.EACCES, "Permission denied")
        return real_unlink(path, *args, **kwargs)
    monkeypatch.setattr(os, "unlink", read_only)
    done, left = apply_moves(planned, tmp_path / "dups")
    assert [m.source.name for m in done] == ["c.jpg"]
    assert left == [(str(folder / "b.jpg"), "cannot be moved (Permission denied)")]
    assert (folder / "b.jpg").exists() and not (tmp_path / "dups" / "b.jpg").exists()


def test_the_report_page_states_the_copies_counted_and_the_keeper_rule(folder, tmp_path):
    import dataclasses

    report = report_of(folder, {"a.jpg": ["b.jpg"]})
    whole = write_html(report, tmp_path / "whole.html").read_text()
    assert "keypoint matches" in whole and "most pixels, then the largest file" in whole
    resized = dataclasses.replace(report, decision=report.decision.counting("resized"), copies="resized",
                                  keep="oldest")
    page = write_html(resized, tmp_path / "resized.html").read_text()
    assert "crops, rotations and overlays not counted" in page and "keypoint matches" not in page
    assert "the oldest file" in page
    exact = dataclasses.replace(report, decision=None, copies="exact")
    assert "A copy: the same bytes." in write_html(exact, tmp_path / "exact.html").read_text()
