import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from simengine.cli import cli


def run(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    return result.exit_code, result.output


def test_cli_pair_triplet_neighbours_and_json(built_index, val):
    code, out = run("query", "--index", built_index, val["coffee"][0], val["coffee"][1])
    assert code == 0 and "same class: YES" in out
    code, out = run("query", "--index", built_index, "--json", val["coffee"][0], val["rocket"][0], val["coffee"][2])
    assert code == 0 and json.loads(out)["matching_pairs"] == [[0, 2]]
    code, out = run("search", "--index", built_index, "--json", "--k", "2", val["chelsea"][0])
    assert code == 0 and json.loads(out)["predicted_class"] == "chelsea"


def test_cli_batch_json(built_index, val, tmp_path):
    csv = tmp_path / "t.csv"
    csv.write_text(f"{val['coffee'][0]},{val['rocket'][0]},{val['coffee'][1]},1\n{val['coffee'][0]},{val['rocket'][0]},{val['chelsea'][1]},0\n")
    code, out = run("query", "--index", built_index, "--json", "--triplets", csv)
    data = json.loads(out)
    assert code == 0 and data["accuracy"] == 1.0 and data["report"]["n"] == 2


@pytest.mark.parametrize("case", ["missing", "corrupt", "four", "no_index", "other_backbone", "bad_csv"])
def test_cli_bad_input_is_one_line_and_nonzero(case, built_index, val, tmp_path, index_copy):
    index = built_index
    args = [val["coffee"][0], val["coffee"][1]]
    if case == "missing":
        args = [tmp_path / "nope.jpg", val["coffee"][0]]
    elif case == "corrupt":
        bad = tmp_path / "bad.jpg"
        bad.write_bytes(val["coffee"][0].read_bytes()[:300])
        args = [bad, val["coffee"][0]]
    elif case == "four":
        args = [val["coffee"][0]] * 4
    elif case == "no_index":
        index = tmp_path / "empty"
    elif case == "other_backbone":
        live = index_copy / "manifests" / (index_copy / "CURRENT").read_text().strip()
        manifest = json.loads(live.read_text())
        manifest["model"]["encoder"]["backbone"] = "efficientnet_b0"
        manifest["model"]["hash"] = "0" * 64
        live.write_text(json.dumps(manifest))
        index = index_copy
    elif case == "bad_csv":
        csv = tmp_path / "bad.csv"
        csv.write_text(f"{val['coffee'][0]},{val['coffee'][1]},7\n")
        args = ["--pairs", csv]
    code, out = run("query", "--index", index, *args)
    if case == "bad_csv":  # the bad row is reported and skipped; the run itself succeeds
        assert code == 0 and "label must be 0 or 1" in out
        return
    assert code == 1, out
    lines = out.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error") and "Traceback" not in out


def test_cli_help_lists_commands():
    """`--help` exits 0 at every level, and each group's help lists exactly the commands it has registered."""
    import click

    def listed(out):
        """Command names from the help's `Commands:` section (names at two spaces' indent; wrapped text is deeper)."""
        lines = out.splitlines()
        assert "Commands:" in lines, out
        names = []
        for line in lines[lines.index("Commands:") + 1:]:
            if not line.strip():
                break
            if line.startswith("  ") and not line.startswith("   "):
                names.append(line.split()[0])
        return names

    def walk(command, path):
        code, out = run(*path, "--help")
        assert code == 0, (path, out)
        usage = out.splitlines()[0].split()  # "Usage: cli index build [OPTIONS] ..."
        assert usage[0] == "Usage:" and usage[2:2 + len(path)] == list(path), out
        if not isinstance(command, click.Group):
            return {}
        ctx = click.Context(command)
        registered = [n for n in command.list_commands(ctx) if not command.get_command(ctx, n).hidden]
        assert listed(out) == registered, path
        tree = {tuple(path): set(registered)}
        for name in registered:
            tree.update(walk(command.get_command(ctx, name), [*path, name]))
        return tree

    tree = walk(cli, [])
    assert tree[()] == {"curate", "data", "dedup", "dedup-calibrate", "embed", "index", "quantize", "query", "search",
                        "serve", "train"}
    assert tree[("index",)] == {"add", "build", "calibrate", "compact", "gc", "info", "remove", "sync", "verify"}
    assert tree[("data",)] == {"fetch", "sample"}
    assert tree[("curate",)] == {"label-errors", "outliers", "sample"}
    assert set(tree) == {(), ("index",), ("data",), ("curate",)}  # no other groups


def test_cli_index_commands(index_copy, fixture_data):
    code, out = run("index", "info", "--index", index_copy)
    assert code == 0 and "tf_efficientnet_lite0" in out and "flat" in out
    code, out = run("index", "verify", "--index", index_copy)
    assert code == 0 and out.startswith("ok")
    new = sorted((fixture_data / "val" / "rocket").glob("*.jpg"))
    code, out = run("index", "add", "--index", index_copy, *new)
    assert code == 0 and "added 3" in out
    code, out = run("index", "remove", "--index", index_copy, "0", "1")
    assert code == 0 and "removed 2" in out
    code, out = run("index", "calibrate", "--index", index_copy)
    assert code == 0 and "default decision" in out
    (index_copy / "items.db").write_bytes(b"")
    code, out = run("index", "verify", "--index", index_copy)
    assert code == 1 and "problem" in out


def commands(group=None, path=()):
    """(command words, click command) of every command."""
    import click

    group = group or cli
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from commands(command, (*path, name))
        else:
            yield (*path, name), command


def test_the_option_table_holds_for_every_command():
    """The README's option table: --json wherever results are printed, --index wherever an index is read or
    written, -k/--k for neighbours."""
    options = {" ".join(words): {o for p in command.params for o in getattr(p, "opts", [])}
               for words, command in commands()}
    assert [name for name, opts in options.items() if "--json" not in opts] == ["serve"]  # a server prints no result
    uses_an_index = [name for name in options if name.startswith("index ")] + ["query", "search", "serve", "dedup"]
    assert [name for name in uses_an_index if "--index" not in options[name]] == []
    assert all({"-k", "--k"} <= options[name] for name in ("query", "search"))
    assert all("--model" in options[name] for name in ("index build", "dedup", "embed", "quantize"))


def test_index_maintenance_commands_print_json(index_copy):
    for args, keys in ((("remove", "0", "1"), {"removed"}), (("verify",), {"index", "ok", "problems"}),
                       (("calibrate",), {"pair", "triplet", "default", "source"}),
                       (("compact",), {"version", "items", "segments"}), (("gc", "--grace", "0"), {"versions", "segments", "rows"})):
        code, out = run("index", *args, "--index", index_copy, "--json")
        assert code == 0, out
        assert keys <= json.loads(out).keys(), (args, out)
    assert json.loads(run("index", "remove", "2", "--index", index_copy, "--json")[1]) == {"removed": [2]}


def test_calibrate_shows_the_distance_rule_as_a_distance_as_query_does(index_copy, val):
    code, out = run("index", "calibrate", "--index", index_copy)
    distance_line = next(line for line in out.splitlines() if line.startswith("distance"))
    shown = float(distance_line.split("distance <= ")[1].split()[0])
    code, answer = run("query", "--index", index_copy, "--json", val["coffee"][0], val["coffee"][1])
    assert shown == pytest.approx(json.loads(answer)["distance_threshold"], abs=1e-4)


def test_an_index_that_cannot_be_written_here_is_one_line(index_copy, val, monkeypatch):
    from filelock import FileLock

    def read_only(*args, **kwargs):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(FileLock, "acquire", read_only)
    code, out = run("index", "remove", "0", "--index", index_copy)
    assert code == 1 and out.strip().splitlines() == [
        f"error: {index_copy}: this index cannot be written here (permission denied); reading it needs no write access"]


def test_serve_on_a_busy_port_is_one_line_before_anything_loads(built_index):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, out = run("serve", "--index", built_index, "--port", port)
    assert code == 1 and out.strip().splitlines() == [
        f"error: cannot listen on 127.0.0.1:{port} (address already in use): stop what uses it, or give another --port"]


def test_k_its_default_and_the_neighbours_of_an_item(built_index, val):
    code, out = run("query", "--index", built_index, "--json", val["chelsea"][0])  # one image alone: 5 neighbours
    assert code == 0 and len(json.loads(out)["neighbours"]) == 5
    code, out = run("search", "--index", built_index, "--json", "-k", "2", "id:3")
    assert code == 0 and [n["id"] for n in json.loads(out)["neighbours"]].count(3) == 0
    code, out = run("search", "--index", built_index, "--json", "-k", "1", "--include-self", "id:3")
    assert code == 0 and json.loads(out)["neighbours"][0]["id"] == 3
    code, out = run("search", "--index", built_index, "-k", "3", val["chelsea"][0])  # a vote says who voted
    assert code == 0 and "predicted class: chelsea (" in out and " of the " in out and "verified neighbours" in out
    assert "confidence" not in out


def test_progress_bars_only_on_a_terminal_unless_asked(index_copy, tmp_path):
    from PIL import Image

    new = []
    for seed in (1, 2):  # pictures no cache has seen: each is embedded, with a bar when bars are on
        pixels = np.random.default_rng(seed).integers(0, 255, (64, 64, 3), dtype=np.uint8)
        new.append(tmp_path / f"noise{seed}.jpg")
        Image.fromarray(pixels).save(new[-1])
    code, out = run("index", "add", "--index", index_copy, new[0])  # CliRunner's stderr is no terminal
    assert code == 0 and "%|" not in out and "img/s" not in out
    code, out = run("--progress", "index", "add", "--index", index_copy, new[1])
    assert code == 0 and "100%|" in out and "img/s" in out


def test_index_paths_may_be_positional_and_index_add_takes_folders(index_copy, fixture_data, tmp_path):
    code, out = run("index", "info", index_copy, "--json")
    assert code == 0 and json.loads(out)["items"] == 32
    code, out = run("index", "verify", index_copy)
    assert code == 0 and out.startswith("ok")
    code, out = run("index", "info", index_copy, "--index", tmp_path)
    assert code == 2 and "give the index once" in out
    folder = tmp_path / "new"
    shutil.copytree(fixture_data / "val" / "rocket", folder / "rocket")
    (folder / "notes.txt").write_text("not an image")
    code, out = run("index", "add", "--index", index_copy, folder, "--json")
    assert code == 0 and len(json.loads(out)["added"]) == len(list((folder / "rocket").glob("*.jpg")))


def test_global_flags_work_after_the_command_but_never_take_an_options_value(built_index, val):
    from simengine.cli import _global_flags_first

    assert _global_flags_first(cli, ["index", "info", "-q", "--json"]) == ["-q", "index", "info", "--json"]
    assert _global_flags_first(cli, ["query", "a.jpg", "--where", "-q", "-v"]) == ["-v", "query", "a.jpg", "--where", "-q"]
    assert _global_flags_first(cli, ["query", "a.jpg", "--", "-q"]) == ["query", "a.jpg", "--", "-q"]
    code, out = run("query", "--index", built_index, val["coffee"][0], val["coffee"][1], "-q")
    assert code == 0 and "same class: YES" in out


def test_dedup_takes_a_source_or_an_index(built_index, tmp_path):
    for args in ([], [tmp_path, "--index", built_index]):
        code, out = run("dedup", *args)
        assert code == 2 and "give SOURCE (a folder, a list or a table) or --index INDEX" in out


def test_cli_data_sample_writes_balanced_csv(fixture_data, tmp_path):
    out = tmp_path / "pairs.csv"
    code, text = run("data", "sample", "pairs", "--data", fixture_data, "--split", "val", "--n", "20", "--out", out)
    assert code == 0 and "wrote 20 pairs" in text
    lines = out.read_text().splitlines()
    assert lines[0] == "img1,img2,label" and len(lines) == 21
    assert sum(int(line.rsplit(",", 1)[1]) for line in lines[1:]) == 10
    code, text = run("data", "sample", "triplets", "--data", tmp_path / "nowhere", "--out", out)
    assert code == 1 and "dataset not found" in text


def test_a_closed_pipe_ends_quietly(built_index):
    import os
    import subprocess
    import sys
    from pathlib import Path

    exe = Path(sys.executable).with_name("simengine")
    proc = subprocess.Popen([str(exe), "index", "info", "--index", str(built_index)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=os.environ.copy())
    proc.stdout.close()  # the reader is gone before the first line is written, like `| head -0`
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141 and stderr == ""


def test_ids_beyond_int64_are_reported_rows_not_crashes(built_index, val, tmp_path):
    huge = "id:99999999999999999999999"
    code, out = run("query", "--index", built_index, huge, val["coffee"][0])
    assert code == 1 and out.strip() == f"error: {huge}: no such item (ids are below 2**63)"
    csv = tmp_path / "pairs.csv"
    csv.write_text(f"{huge},id:0,1\nid:9223372036854775807,id:0,0\nid:0,id:1,1\n")
    code, out = run("query", "--index", built_index, "--json", "--pairs", csv)
    data = json.loads(out)
    assert code == 0 and [r["line"] for r in data["rows"]] == [3]
    assert data["errors"] == [f"{csv}:1: {huge}: no such item (ids are below 2**63)",
                              f"{csv}:2: no item with id 9223372036854775807 in {built_index}"]


def test_a_csv_that_is_not_utf8_names_the_file(built_index, tmp_path):
    csv = tmp_path / "latin1.csv"
    csv.write_bytes("caf\xe9.jpg,b.jpg,1\n".encode("latin-1"))
    code, out = run("query", "--index", built_index, "--pairs", csv)
    assert code == 1 and out.strip() == f"error: {csv}: not UTF-8 text (byte 3 of the file)"


def test_index_add_reports_each_bad_file_once_with_its_path(index_copy, tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff not really")
    os.symlink(tmp_path / "loop.jpg", tmp_path / "loop.jpg")
    bad = [broken, tmp_path / "absent.jpg", tmp_path / "loop.jpg", tmp_path / "pipe.jpg"]
    os.mkfifo(bad[-1])
    exe = Path(sys.executable).with_name("simengine")
    result = subprocess.run([str(exe), "index", "add", "--index", str(index_copy), *map(str, bad)],
                            capture_output=True, text=True, env=os.environ.copy(), timeout=120)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    failures = [line for line in result.stderr.splitlines() if line.startswith("failed: ")]
    assert len(failures) == 4 and all(sum(f"failed: {p}:" in line for line in failures) == 1 for p in bad)
    assert sum(str(broken) in line for line in result.stderr.splitlines()) == 1


def test_the_cli_and_the_service_share_the_pixel_limit(built_index, val, tmp_path):
    from PIL import Image

    huge = tmp_path / "huge.png"
    Image.new("1", (7000, 7000)).save(huge, optimize=True)
    code, out = run("query", "--index", built_index, huge, val["coffee"][0])
    assert code == 1 and out.strip().endswith("image too large to decode safely (7000x7000 px, more than 40,000,000)")


QUERY_OPTIONS = st.lists(st.sampled_from([["--json"], ["--k", "3"], ["--k", "0"], ["--k", "-2"], ["--k", "x"],
                                          ["--mode", "fused"], ["--mode", "nope"], ["--pairs", "<junk>"]]), max_size=2)
QUERY_REFS = st.one_of(st.sampled_from(["<coffee>", "<rocket>", "<junk>", "<tmp>", "<missing>", "id:0", "id:31",
                                        "id:32", "id:-1", "id:", "id:99999999999999999999999", "id:1e3", "", "-"]),
                       st.text(max_size=12).map(lambda s: s.replace("\x00", "")))


@pytest.mark.fuzz
@settings(max_examples=max(10, settings.default.max_examples // 3))
@given(images=st.lists(QUERY_REFS, max_size=4), extra=QUERY_OPTIONS)
def test_any_query_arguments_end_in_an_answer_or_one_clear_line(built_index, val, tmp_path_factory, images, extra):
    """Fuzzed `simengine query` command lines: image paths, missing and odd paths, id references in and out of
    range, --k values, CSV options. Every run ends with exit 0, or 1 with one `error: ...` line from simengine (never
    an unexpected exception type), or 2 for click's own usage errors."""
    tmp = tmp_path_factory.getbasetemp() / "cli-fuzz"
    tmp.mkdir(exist_ok=True)
    junk = tmp / "junk.jpg"
    junk.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    names = {"<coffee>": val["coffee"][0], "<rocket>": val["rocket"][1], "<junk>": junk, "<tmp>": tmp,
             "<missing>": tmp / "missing.jpg"}
    args = [names.get(a, a) for option in extra for a in option] + ["--"] + [names.get(r, r) for r in images]
    code, out = run("query", "--index", built_index, *args)
    assert code in (0, 1, 2), out
    if code == 1:
        lines = out.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), out


def test_a_file_name_with_line_breaks_stays_on_one_error_line(built_index, tmp_path):
    code, out = run("query", "--index", built_index, str(tmp_path / "a\nb\r.jpg"), str(tmp_path / "c.jpg"))
    assert code == 1 and out.strip() == f"error: {tmp_path}/a\\nb\\r.jpg: no such file"


def test_a_folder_a_fifo_an_empty_and_a_text_file_are_named_for_what_they_are(built_index, val, tmp_path):
    import os

    os.mkfifo(tmp_path / "pipe.jpg")
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "notes.jpg").write_text("not a picture\n")
    for path, reason in ((tmp_path, "a directory, not an image file"), (tmp_path / "pipe.jpg", "not a regular file"),
                         (tmp_path / "empty.jpg", "an empty file"), (tmp_path / "notes.jpg", "not an image")):
        code, out = run("query", "--index", built_index, path, val["coffee"][0])
        assert code == 1 and len(out.strip().splitlines()) == 1, out
        assert out.startswith(f"error: {path}: ") and reason in out, out


def test_cli_unlabelled_folder_build_filter_query_and_sync(fixture_data, bundle_dir, val, tmp_path):
    """A plain folder (nested, unlabelled) indexed with one command, then pair, triplet, neighbours, a filtered
    search and a sync; thresholds are the model's, and `index info` says they are an estimate."""
    import shutil

    folder = tmp_path / "photos" / "nested"
    folder.mkdir(parents=True)
    for name in ("coffee", "chelsea", "rocket"):
        for path in sorted((fixture_data / "train" / name).glob("*.jpg"))[:3]:
            shutil.copy(path, folder / path.name)
    (folder / "readme.txt").write_text("not an image")
    index = tmp_path / "index"
    code, out = run("-q", "index", "build", tmp_path / "photos", "--model", bundle_dir, "--out", index, "--json")
    assert code == 0 and len(json.loads(out)["added"]) == 9
    code, out = run("index", "info", "--index", index, "--json")
    info = json.loads(out)
    assert info["thresholds_estimated"] is True and info["classes"] == {"null": 9}
    code, out = run("query", "--index", index, val["coffee"][0], val["coffee"][1])
    assert code == 0 and "similar: YES" in out and "class" not in out  # no labels: no class talk
    assert "the threshold is estimated" in out
    code, out = run("query", "--index", index, val["coffee"][0], val["rocket"][0], val["coffee"][2])
    assert code == 0 and "at least two are similar: YES" in out and "class" not in out
    code, out = run("search", "--index", index, val["coffee"][0], "-k", "3")
    assert code == 0 and "class" not in out and "neighbours verified by the pair head" in out
    code, out = run("query", "--index", index, "--json", val["coffee"][0], val["rocket"][0], val["coffee"][2])
    assert code == 0 and json.loads(out)["matching_pairs"] == [[0, 2]]
    code, out = run("query", "--index", index, "--json", "--k", "3", val["rocket"][0], "--where", "path LIKE :p",
                    "--param", "p=%chelsea%")
    found = json.loads(out)["neighbours"]
    assert code == 0 and len(found) == 3 and all("chelsea" in n["path"] for n in found)
    code, out = run("query", "--index", index, val["rocket"][0], val["rocket"][1], "--where", "1 = 1")
    assert code == 1 and "--k" in out
    (folder / "coffee_00.jpg").unlink()
    code, out = run("index", "sync", "--index", index, "--dry-run")
    assert code == 0 and "would remove" in out and "nothing written" in out
    code, out = run("-q", "index", "sync", "--index", index, "--json")
    assert code == 0 and len(json.loads(out)["removed"]) == 1 and json.loads(out)["version"] == 2


def test_cli_build_without_model_uses_the_builtin_one_and_says_how_to_train(tmp_path, val, fixture_data,
                                                                            monkeypatch):
    import shutil

    from simengine.index.reader import Index
    from simengine.model.builtin import builtin_model_dir
    from simengine.model.bundle import bundle_hash

    monkeypatch.chdir(tmp_path)  # no indexes/default-model here
    (tmp_path / "photos").mkdir()
    shutil.copy(val["coffee"][0], tmp_path / "photos" / "a.jpg")
    code, out = run("index", "build", tmp_path / "photos", "--out", tmp_path / "index")
    assert code == 0 and "1 items" in out and "--data" not in out
    assert Index(tmp_path / "index").manifest["model"]["hash"] == bundle_hash(builtin_model_dir())
    assert "held out from training" not in out  # nothing to say of training data for an unlabelled folder
    code, out = run("index", "build", fixture_data, "--out", tmp_path / "labelled")
    assert code == 0 and f"run `simengine index build --data {fixture_data}`" in out


def test_cli_build_of_a_wrong_path_fails_before_preparing_a_model(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SIMENGINE_CACHE", str(tmp_path / "empty-cache"))
    code, out = run("index", "build", tmp_path / "nothing")
    assert code == 1 and "no such file" in out and len(out.strip().splitlines()) == 1
    assert not (tmp_path / "empty-cache" / "models").exists()


def test_cli_query_without_an_index_answers_pairs_with_the_builtin_model(tmp_path, monkeypatch, val):
    monkeypatch.chdir(tmp_path)  # no indexes/ here
    code, out = run("query", "--json", val["coffee"][0], val["coffee"][1])
    assert code == 0 and json.loads(out)["same"] is True
    code, out = run("query", val["coffee"][0], val["rocket"][0], val["chelsea"][0])
    assert code == 0 and "at least two are similar: NO" in out  # no index, no labels
    code, out = run("query", val["coffee"][0], "--k", "3")
    assert code == 1 and "no index: build one with `simengine index build PHOTOS`" in out


def test_cli_dedup_reports_then_moves_only_with_yes(fixture_data, bundle_dir, tmp_path):
    import shutil

    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("coffee", "rocket"):
        shutil.copyfile(sorted((fixture_data / "val" / name).glob("*.jpg"))[0], folder / f"{name}0.jpg")
    shutil.copyfile(folder / "coffee0.jpg", folder / "coffee0-again.jpg")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    target, page, table = tmp_path / "dups", tmp_path / "report.html", tmp_path / "report.csv"
    code, out = run("-q", "dedup", folder, "--model", bundle_dir, "--json", "--move-to", target, "--html", page, "--csv", table)
    assert code == 0, out
    report = json.loads(out)
    assert report["moves"]["dry_run"] and report["moves"]["moved"] == 0 and not target.exists()
    assert report["exact"] == 1 and [s["path"].endswith("broken.jpg") for s in report["skipped"]] == [True]
    assert "data:image/jpeg;base64," in page.read_text() and table.read_text().startswith("group,role,kind")
    planned = {m["from"] for m in report["moves"]["planned"]}
    code, out = run("-q", "dedup", folder, "--model", bundle_dir, "--move-to", target, "--yes")
    assert code == 0 and f"moved {len(planned)} files" in out
    assert all(not Path(p).exists() for p in planned) and (target / "moves.csv").is_file()
    code, out = run("dedup", folder, "--model", bundle_dir, "--yes")
    assert code == 2 and "--yes needs --move-to" in out


def test_index_info_shows_the_measured_runtime(built_index, val):
    code, out = run("-q", "query", val["coffee"][0], val["coffee"][1], "--index", built_index)  # measures, once
    assert code == 0
    code, out = run("index", "info", "--index", built_index, "--json")
    info = json.loads(out)
    assert code == 0 and info["runtime_choice"]["chosen"] in info["runtime"]
    assert {r["runtime"] for r in info["runtime_choice"]["measured"]} >= {"onnxruntime"}


def test_cli_quantize_json_and_exit_code(bundle_dir, fixture_data, tmp_path):
    """JSON on stdout alone (NNCF's own progress output kept off it); exit 1 exactly when the gate fails."""
    import shutil

    copy = shutil.copytree(bundle_dir, tmp_path / "bundle")
    result = CliRunner().invoke(cli, ["quantize", "--model", str(copy), "--data", str(fixture_data), "--images", "16",
                                      "--json"])
    data = json.loads(result.stdout)
    assert data["int8"]["calibration_images"] == 16 and (copy / "backbone-int8.xml").is_file()
    assert result.exit_code == (0 if data["passed"] else 1)
    code, out = run("quantize", "--model", copy, "--data", fixture_data, "--images", "8")
    assert code == 2 and "8 is not in the range x>=16" in out


def test_labels_are_names_in_filters_outputs_and_json_and_a_filtered_vote_says_so(fixture_data, bundle_dir, tmp_path,
                                                                                   val):
    """Class folders named by Imagenette's codes are indexed as "tench", "parachute": a filter on the name finds
    them, the code stays a column, and a class vote among the items a filter chose says it was restricted."""
    dataset = tmp_path / "dataset" / "train"
    for code, photos in (("n01440764", "coffee"), ("n03888257", "rocket"), ("chelsea", "chelsea")):
        shutil.copytree(fixture_data / "train" / photos, dataset / code)
    index = tmp_path / "index"
    code, out = run("index", "build", dataset.parent, "--index", index, "--model", bundle_dir)
    assert code == 0, out
    code, out = run("index", "info", index, "--json")
    assert code == 0 and set(json.loads(out)["classes"]) == {"tench", "parachute", "chelsea"}
    code, out = run("search", "--index", index, val["coffee"][0], "-k", "3", "--where", "label = :l",
                    "--param", "l=tench", "--json")
    found = json.loads(out)
    assert code == 0 and len(found["neighbours"]) == 3 and found["restricted"] is True
    assert all(n["label"] == "tench" and n["metadata"]["wnid"] == "n01440764" for n in found["neighbours"])
    code, out = run("search", "--index", index, val["rocket"][0], "-k", "3", "--where", "wnid = :w",
                    "--param", "w=n03888257")
    assert code == 0 and "predicted class among the items --where selects: parachute" in out
    assert "n03888257" not in out.replace(str(dataset / "n03888257"), "")  # the code shows only in paths
    code, out = run("search", "--index", index, val["coffee"][0], "-k", "3")
    assert code == 0 and "predicted class: tench" in out


def test_sync_tells_a_skipped_file_once_and_dedup_counts_the_copies_asked_for(fixture_data, bundle_dir, tmp_path):
    folder = tmp_path / "photos"
    shutil.copytree(fixture_data / "train" / "coffee", folder)
    shutil.copy(folder / "coffee_00.jpg", folder / "copy.jpg")
    index = tmp_path / "index"
    code, out = run("index", "build", folder, "--index", index, "--model", bundle_dir, "--labels", "none")
    assert code == 0, out
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    code, out = run("index", "sync", "--index", index)
    assert code == 0 and "failed:" in out and "duplicate skipped:" in out and "as at the last sync" not in out
    for dry_run in ((), ("--dry-run",)):
        code, out = run("index", "sync", "--index", index, *dry_run)
        assert code == 0 and "failed:" not in out and "duplicate skipped:" not in out and "would add" not in out
        assert "skipped as at the last sync: 2 files" in out and "1 duplicates, 1 failed" in out
    code, out = run("dedup", folder, "--copies", "exact", "--model", bundle_dir, "--json")
    report = json.loads(out)
    assert code == 0 and report["copies"] == "exact" and report["groups"] == 1 and report["exact"] == 1


def test_curate_label_errors_outliers_and_sample_read_only(fixture_data, bundle_dir, tmp_path):
    photos = sorted((fixture_data / "train").glob("*/*.jpg"))
    planted = photos[0]
    table = tmp_path / "noisy.csv"
    table.write_text("path,noisy_labels_5,true_label\n" + "".join(
        f"{p},{'rocket' if p == planted else p.parent.name},{p.parent.name}\n" for p in photos))
    index = tmp_path / "index"
    code, out = run("index", "build", table, "--index", index, "--model", bundle_dir, "--label-column",
                    "noisy_labels_5")
    assert code == 0, out
    version = (index / "CURRENT").read_text()
    code, out = run("curate", "label-errors", index, "-k", "5", "--json", "--csv", tmp_path / "errors.csv",
                    "--html", tmp_path / "errors.html")
    report = json.loads(out)
    assert code == 0 and report["issues"][0]["path"] == str(planted) and report["issues"][0]["label"] == "rocket"
    assert (tmp_path / "errors.csv").read_text().count("\n") == report["flagged"] + 1
    assert "Label errors in" in (tmp_path / "errors.html").read_text()
    code, out = run("curate", "label-errors", "--index", index, "-k", "5")
    assert code == 0 and "rocket" in out and "labelled items flagged" in out
    code, out = run("curate", "outliers", index, "--top", "3", "--within-labels")
    assert code == 0 and len(out.strip().splitlines()) == 4
    code, out = run("curate", "sample", index, "--n", "4", "--json")
    assert code == 0 and len(json.loads(out)["sample"]) == 4
    code, out = run("curate", "sample", index, "--n", "4", "--html", tmp_path / "no" / "such.html")
    assert code == 1 and "its folder does not exist" in out
    assert (index / "CURRENT").read_text() == version  # nothing written
