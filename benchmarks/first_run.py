"""The first run on a new machine: a folder of 1,000 new JPEG files, an empty HOME and cache, no training, offline.

Measures, with the `simengine` command as a person runs it:
- the time from `index build FOLDER` to the first answer (`query IMAGE --k 5`), and of `dedup FOLDER`, both from an
  empty cache (the built-in model is prepared inside them) and `dedup` again with the cache filled by the build;
- the size of the cache afterwards;
- the end-to-end `index build` rate (files to index, features not cached) of the default path (`--runtime auto`)
  against ONNX Runtime fp32, interleaved, medians;
- the built-in model's accuracy next to a trained model's (fp32): P@1 and MAP@R among a val split, pair and triplet
  accuracy at each model's calibrated thresholds on 10,000 balanced sets, on Imagenette and on TrashNet.

    python benchmarks/first_run.py --folder ../shared/data/trashnet-256/train \\
        --eval ../shared/data/imagenette2-160/val ../shared/data/trashnet-256/val --model indexes/default-model
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from common import RESULTS, table, write  # noqa: E402

SIMENGINE = Path(sys.executable).with_name("simengine")
SUFFIXES = (".jpg", ".jpeg")


def new_folder(source: Path, dest: Path, n: int, seed: int) -> list[Path]:
    """`n` JPEG files of `source` (searched recursively, a seeded sample) copied into `dest`, flat."""
    files = sorted(p for p in source.rglob("*") if p.suffix.lower() in SUFFIXES)
    if len(files) < n:
        raise SystemExit(f"{source}: {len(files)} JPEG files, {n} wanted")
    dest.mkdir(parents=True)
    copies = []
    for i, path in enumerate(random.Random(seed).sample(files, n)):
        copies.append(Path(shutil.copyfile(path, dest / f"{i:04d}{path.suffix.lower()}")))
    return copies


def fresh_env(home: Path) -> dict[str, str]:
    """A person's environment on a new machine: this HOME, no simengine or XDG settings, no model hub."""
    home.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SIMENGINE_", "XDG_"))}
    return env | {"HOME": str(home), "HF_HUB_OFFLINE": "1"}


def timed(args: list, env: dict[str, str], cwd: Path) -> tuple[float, str, str]:
    started = time.perf_counter()
    result = subprocess.run([str(SIMENGINE), *map(str, args)], env=env, cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"simengine {' '.join(map(str, args))} failed:\n{result.stderr[-2000:]}")
    return seconds, result.stdout, result.stderr


def folder_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


def first_answer(photos: list[Path], work: Path) -> dict:
    env = fresh_env(work / "home")
    build_s, build_out, build_err = timed(["index", "build", photos[0].parent], env, work)
    query_s, query_out, _ = timed(["query", photos[0], "--k", "5", "--json"], env, work)
    dedup_s, dedup_out, _ = timed(["dedup", photos[0].parent, "--json"], env, work)
    cold_dedup_s, _, _ = timed(["dedup", photos[0].parent, "--json"], fresh_env(work / "home2"), work)
    _, info, _ = timed(["index", "info", "--json"], env, work)
    cache = work / "home" / ".cache" / "simengine"
    return {
        "index_build_seconds": round(build_s, 1), "first_query_seconds": round(query_s, 1),
        "first_answer_seconds": round(build_s + query_s, 1), "build_output": build_out.strip(),
        "prepared_once": [line for line in build_err.splitlines() if "preparing" in line],
        "neighbours": len(json.loads(query_out)["neighbours"]),
        "dedup_after_build_seconds": round(dedup_s, 1), "dedup_from_empty_cache_seconds": round(cold_dedup_s, 1),
        "dedup_groups": json.loads(dedup_out)["groups"],
        "runtime": json.loads(info)["runtime"],
        "cache_mb": {"total": round(folder_mb(cache), 1), **{p.name: round(folder_mb(p), 1) for p in cache.iterdir()
                                                            if p.is_dir()}},
    }


def build_rates(photos: list[Path], work: Path, rounds: int) -> dict:
    """End-to-end `index build` rates, the default path and ONNX Runtime fp32 in turn, the features cache emptied
    before each build (the prepared models stay)."""
    env = fresh_env(work / "home")
    runtimes = ["auto", "onnxruntime"]
    seconds: dict[str, list[float]] = {r: [] for r in runtimes}
    for round_ in range(rounds):
        for runtime in runtimes[round_ % 2:] + runtimes[:round_ % 2]:
            shutil.rmtree(work / "home" / ".cache" / "simengine" / "features", ignore_errors=True)
            s, _, _ = timed(["index", "build", photos[0].parent, "--out", work / f"rate-{runtime}", "--runtime",
                             runtime], env, work)
            seconds[runtime].append(s)
    rates = {r: round(len(photos) / float(np.median(s)), 1) for r, s in seconds.items()}
    return {"seconds": seconds, "images_per_s": rates, "default_over_onnxruntime": round(rates["auto"] /
                                                                                         rates["onnxruntime"], 3)}


def accuracy(model_dir: Path, folder: Path, seed: int) -> dict:
    """P@1 / MAP@R among `folder`'s images (each left out of its own search) and pair / triplet accuracy at the
    model's calibrated thresholds, on fp32 (ONNX Runtime)."""
    from simengine.data.folders import scan_split
    from simengine.evaluation.decisions import evaluate_decisions
    from simengine.evaluation.metrics import retrieval_metrics
    from simengine.index.embedding import embed_items
    from simengine.model.bundle import load_bundle

    model = load_bundle(model_dir, "onnxruntime")
    items = scan_split(folder.parent, folder.name)
    vectors, kept, _ = embed_items(model, items, progress=False)
    labels = [i.label for i in kept]
    within = retrieval_metrics(vectors, labels, vectors, labels, exclude_self=True)
    calibration = model.calibration
    decisions = evaluate_decisions(vectors, labels, model.pair_logits, calibration, n=10_000, seed=seed)
    chosen = decisions[calibration.default]
    return {"images": len(kept), "precision_at_1": within["precision_at_1"], "map_at_r": within["map_at_r"],
            "pair_accuracy": chosen["pair_accuracy"], "triplet_accuracy": chosen["triplet_accuracy"],
            "decision": calibration.default}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folder", type=Path, required=True, help="where the new folder's JPEG files come from")
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--eval", type=Path, nargs="*", default=[], help="labelled splits (<root>/<split>/<class>/)")
    parser.add_argument("--model", type=Path, default=None, help="a trained bundle to compare the built-in model with")
    parser.add_argument("--rounds", type=int, default=3, help="builds per runtime for the rate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default="first_run")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    result: dict = {"images": args.images, "folder": f"{args.folder.parent.name}/{args.folder.name}"}
    with tempfile.TemporaryDirectory(prefix="simengine-first-run-") as tmp:
        work = Path(tmp)
        photos = new_folder(args.folder, work / "photos", args.images, args.seed)
        result["first_run"] = first_answer(photos, work)
        result["build_rate"] = build_rates(photos, work, args.rounds)
    from simengine.model.builtin import builtin_model_dir

    models = {"built-in": builtin_model_dir()} | ({"trained": args.model} if args.model else {})
    result["accuracy"] = {f"{folder.parent.name}/{folder.name}": {name: accuracy(path, folder, args.seed)
                                                                  for name, path in models.items()}
                          for folder in args.eval}
    write(args.name, result, markdown(result), args.out)
    return result


def markdown(r: dict) -> str:
    f, rate = r["first_run"], r["build_rate"]
    lines = [
        "# First run: a new folder, an empty cache, no training, offline",
        "",
        f"{r['images']} JPEG files of `{r['folder']}` copied into a new folder; a fresh HOME with no cache; the "
        "`simengine` command as a person runs it (each step a new process).",
        "",
        table(["step", "seconds"], [[step, f"{seconds:.1f}"] for step, seconds in [
            ["`index build FOLDER` (prepares the built-in model, then embeds)", f["index_build_seconds"]],
            ["`query IMAGE --k 5`", f["first_query_seconds"]],
            ["**first answer** (the two above)", f["first_answer_seconds"]],
            ["`dedup FOLDER` after the build (cache filled)", f["dedup_after_build_seconds"]],
            ["`dedup FOLDER` from an empty cache", f["dedup_from_empty_cache_seconds"]],
        ]]),
        "",
        f"Build: {f['build_output']}  ",
        f"Runtime chosen by `auto`: {f['runtime']}  ",
        "Cache afterwards: " + ", ".join(f"{k} {v} MB" for k, v in f["cache_mb"].items()),
        "",
        "## End-to-end `index build` rate (features not cached; median of "
        f"{len(rate['seconds']['auto'])} builds each, interleaved)",
        "",
        table(["path", "images/s", "builds (s)"],
              [[name, f"{rate['images_per_s'][key]:.1f}", ", ".join(f"{s:.1f}" for s in rate["seconds"][key])]
               for name, key in (("default (`--runtime auto`)", "auto"), ("ONNX Runtime fp32", "onnxruntime"))]),
        "",
        f"Default over ONNX Runtime fp32: **{rate['default_over_onnxruntime']:.2f}×**.",
    ]
    for split, rows in r["accuracy"].items():
        lines += ["", f"## Accuracy on {split} (fp32; pair and triplet on 10,000 balanced sets at each model's "
                      "calibrated thresholds)", "",
                  table(["model", "images", "P@1", "MAP@R", "pair", "triplet", "decision"],
                        [[name, m["images"], m["precision_at_1"], m["map_at_r"], m["pair_accuracy"],
                          m["triplet_accuracy"], m["decision"]] for name, m in rows.items()])]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
