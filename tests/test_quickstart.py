"""The README's quick start, as a new user runs it: an empty HOME and cache, no indexes/, no training, no network."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from PIL import Image

README = Path(__file__).resolve().parents[1] / "README.md"
SIMENGINE = Path(sys.executable).with_name("simengine")


def quick_start() -> list[list[str]]:
    """The commands of the README's quick start block, without the install line."""
    section = README.read_text().split("## Quick start", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, flags=re.S).group(1)
    commands = [shlex.split(line.split("#", 1)[0]) for line in block.splitlines() if line.split("#", 1)[0].strip()]
    return [c for c in commands if c[:2] != ["pip", "install"]]


def test_the_quick_start_is_install_build_query_dedup():
    assert [c[:2] for c in quick_start()] == [["simengine", "index"], ["simengine", "query"], ["simengine", "dedup"]]


def test_the_quick_start_answers_on_a_fresh_machine(tmp_path, fixture_data):
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    photos = home / "photos"
    photos.mkdir()
    for source in sorted((fixture_data / "val").glob("*/*.jpg")):
        shutil.copy(source, photos / source.name)
    shutil.copy(photos / "coffee_00.jpg", photos / "a.jpg")
    shutil.copy(photos / "coffee_01.jpg", photos / "b.jpg")
    with Image.open(photos / "chelsea_00.jpg") as img:  # a smaller, recompressed copy for dedup to find
        img.resize((100, 100)).save(photos / "chelsea_00_small.jpg", quality=60)
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SIMENGINE_", "XDG_"))}
    env |= {"HOME": str(home), "HF_HUB_OFFLINE": "1", "NO_PROXY": "*", "HTTPS_PROXY": "http://127.0.0.1:9"}

    def run(args: list[str]) -> str:
        args = [str(home / a[2:]) if a.startswith("~/") else a for a in args]
        args = [str(photos / a) if a in ("a.jpg", "b.jpg") else a for a in args]
        result = subprocess.run([str(SIMENGINE), *args[1:]], cwd=work, env=env, capture_output=True, text=True,
                                timeout=600)
        assert result.returncode == 0, (args, result.stdout, result.stderr)
        return result.stdout

    build, pair, dedup = quick_start()
    assert "13 items, 2 duplicates skipped" in run(build)  # 12 photos and the small copy; a.jpg, b.jpg are exact copies
    assert "similar: YES" in run(pair)  # photos without labels: similar, never "same class"
    neighbours = json.loads(run(["simengine", "query", "a.jpg", "--k", "3", "--json"]))
    assert neighbours["neighbours"][0]["path"].endswith(("a.jpg", "coffee_00.jpg"))
    run(dedup)
    report = json.loads(run([*dedup[:3], "--json"]))
    groups = [{Path(m["path"]).name for m in [g["keeper"], *g["duplicates"]]} for g in report["duplicate_groups"]]
    # The fixture photos of one subject are crops of one picture, so they are copies of each other too.
    assert any({"coffee_00.jpg", "a.jpg", "coffee_01.jpg", "b.jpg"} <= g for g in groups)
    assert any({"chelsea_00.jpg", "chelsea_00_small.jpg"} <= g for g in groups)
    assert all(len({name.split("_")[0] for name in g if "_" in name}) == 1 for g in groups)  # no subjects mixed
    assert (work / "indexes" / "default").is_dir() and not (work / "indexes" / "default-model").exists()
    assert any((home / ".cache" / "simengine" / "models").glob("builtin-general-*"))
