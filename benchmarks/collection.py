"""A flat folder of unlabelled images, end to end through the command line, as a new user would run it.

`simengine index build FOLDER` in one command with an empty feature cache (and again with a warm one, the baseline
of the same run), then pair and triplet questions in batch, neighbour searches, a filtered search, and `index sync`
after files were added, changed and removed. The folder holds Imagenette images under neutral names; their classes
are kept aside only to score the answers, never shown to the index (so its thresholds are the model's estimate).

    python benchmarks/collection.py --data ../shared/data/imagenette2-160 --model indexes/default-model --n 10000
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from common import RESULTS, table, write  # noqa: E402

SIMENGINE = [str(Path(sys.executable).parent / "simengine")]


def run(args: list, env: dict) -> tuple[float, dict | str]:
    """Seconds and parsed JSON (or text) of one simengine command; a failure stops the benchmark."""
    started = time.perf_counter()
    done = subprocess.run(SIMENGINE + ["-q", *map(str, args)], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"simengine {' '.join(map(str, args))} failed: {done.stderr.strip() or done.stdout.strip()}")
    try:
        return seconds, json.loads(done.stdout)
    except json.JSONDecodeError:
        return seconds, done.stdout


def make_folder(data: Path, folder: Path, n: int, spare: int, seed: int) -> tuple[dict[str, str], list[Path]]:
    """n images of Imagenette (train and val) linked flat into `folder` as img_NNNNN.jpg, and `spare` more left out
    for the sync step; returns {name: class} (kept aside) and the spares."""
    everything = sorted(p for split in ("train", "val") for p in (data / split).glob("*/*")
                        if p.suffix.lower() in (".jpg", ".jpeg"))
    random.Random(seed).shuffle(everything)
    if len(everything) < n + spare:
        raise SystemExit(f"{data} has {len(everything)} images; --n {n} needs {n + spare}")
    folder.mkdir(parents=True)
    classes = {}
    for k, source in enumerate(everything[:n]):
        name = f"img_{k:05d}.jpg"
        link_or_copy(source, folder / name)
        classes[name] = source.parent.name
    return classes, everything[n:n + spare], sum(p.parent.parent.name == "train" for p in everything[:n])


def link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def question_rows(classes: dict[str, str], folder: Path, n: int, width: int, seed: int) -> list[list]:
    """Balanced pairs (width 2) or triplets (width 3) with a 0/1 label from the hidden classes."""
    rng = random.Random(seed)
    by_class: dict[str, list[str]] = {}
    for name, label in classes.items():
        by_class.setdefault(label, []).append(name)
    labels = sorted(by_class)
    rows = []
    for i in range(n):
        positive = i % 2 == 0
        picked = rng.sample(labels, width)
        if positive:
            picked[1] = picked[0]
        chosen = [rng.choice(by_class[label]) for label in picked]
        if len(set(chosen)) < width:
            continue
        rows.append([str(folder / c) for c in chosen] + [int(positive)])
    return rows


def write_csv(path: Path, rows: list[list]) -> Path:
    path.write_text("".join(",".join(map(str, r)) + "\n" for r in rows))
    return path


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="Imagenette (ImageFolder) root.")
    parser.add_argument("--model", type=Path, required=True, help="Model bundle, e.g. indexes/default-model.")
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--questions", type=int, default=400, help="Pairs and triplets each.")
    parser.add_argument("--searches", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default="collection")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="simengine-collection-") as tmp:
        tmp = Path(tmp)
        folder, index = tmp / "photos", tmp / "index"
        classes, spares, from_train = make_folder(args.data, folder, args.n, 20, args.seed)
        env = dict(os.environ, SIMENGINE_CACHE=str(tmp / "cache"), HF_HUB_OFFLINE="1")

        cold_s, built = run(["index", "build", folder, "--model", args.model, "--out", index, "--json"], env)
        peak_rss_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        warm_s, _ = run(["index", "build", folder, "--model", args.model, "--out", tmp / "index-warm", "--json"], env)
        _, info = run(["index", "info", "--index", index, "--json"], env)

        answers = {}
        for kind, width in (("pairs", 2), ("triplets", 3)):
            csv = write_csv(tmp / f"{kind}.csv", question_rows(classes, folder, args.questions, width, args.seed))
            seconds, result = run(["query", f"--{kind}", csv, "--index", index, "--json"], env)
            answers[kind] = {"n": result["report"]["n"], "accuracy": result["accuracy"], "seconds": round(seconds, 2)}

        rng = random.Random(args.seed)
        search_s, precision = [], []
        for name in rng.sample(sorted(classes), args.searches):
            seconds, result = run(["query", folder / name, "--k", 6, "--index", index, "--json"], env)
            search_s.append(seconds)
            others = [n for n in result["neighbours"] if Path(n["path"]).name != name][:5]
            precision.append(sum(classes[Path(n["path"]).name] == classes[name] for n in others) / len(others))
        probe = folder / sorted(classes)[0]
        filtered_s, result = run(["query", probe, "--k", 5, "--where", "path LIKE :p AND width >= :w",
                                  "--param", "p=%0.jpg", "--param", "w=1", "--index", index, "--json"], env)
        expected = min(5, sum(name.endswith("0.jpg") for name in classes))
        filter_ok = len(result["neighbours"]) == expected and all(n["path"].endswith("0.jpg") for n in result["neighbours"])
        names = sorted(classes)
        for name in names[:10]:
            (folder / name).unlink()
        for k, source in enumerate(spares[:10]):
            link_or_copy(source, folder / f"new_{k:02d}.jpg")
        for name, source in zip(names[10:15], spares[10:15]):
            (folder / name).unlink()
            link_or_copy(source, folder / name)
        sync_s, synced = run(["index", "sync", "--index", index, "--json"], env)
        idle_sync_s, idle = run(["index", "sync", "--index", index, "--json"], env)

    result = {
        "n_images": args.n,
        "from_train_split": from_train,
        "build": {"seconds_cold_cache": round(cold_s, 1), "seconds_warm_cache": round(warm_s, 1),
                  "images_per_s_cold": round(args.n / cold_s, 1), "cold_over_warm": round(cold_s / warm_s, 2),
                  "peak_rss_mb": round(peak_rss_mb), "items": len(built["added"]), "failed": len(built["failed"]),
                  "duplicates": len(built["duplicates"]), "size_mb": round(info["size_bytes"] / 2**20, 1),
                  "index_type": info["index_type"], "thresholds_estimated": info["thresholds_estimated"],
                  "embedding": info["embedding"]},
        "pairs": answers["pairs"], "triplets": answers["triplets"],
        "neighbours": {"searches": args.searches, "precision_at_5": round(statistics.mean(precision), 4),
                       "median_seconds_cold_command": round(statistics.median(search_s), 2)},
        "filtered_search": {"seconds": round(filtered_s, 2), "all_results_match": filter_ok},
        "sync": {"seconds": round(sync_s, 1), "added": len(synced["added"]), "changed": len(synced["changed"]),
                 "removed": len(synced["removed"]), "version": synced["version"],
                 "seconds_nothing_changed": round(idle_sync_s, 1), "nothing_changed_version": idle["version"]},
    }
    write(args.name, result, markdown(result), args.out)
    print(json.dumps(result, indent=2))
    return result


def markdown(r: dict) -> str:
    b = r["build"]
    return "\n".join([
        f"# A flat folder of {r['n_images']:,} unlabelled images, through the command line", "",
        "Imagenette images under neutral names in one folder; their classes are hidden from the index and used only "
        "to score the answers. Thresholds are the model bundle's (the collection has no labels to calibrate on). "
        f"{r['from_train_split']:,} of the images are from the train split the model was trained on, so the accuracies "
        "here are optimistic: held-out numbers are in accuracy.md, other classes in unseen_classes.md. The point "
        "here is that a plain folder indexes with one command and answers every question.", "",
        table(["step", "result"], [
            ["`index build FOLDER` (empty feature cache)", f"{b['seconds_cold_cache']} s, {b['images_per_s_cold']} images/s, "
             f"peak RSS {b['peak_rss_mb']} MB"],
            ["the same, warm feature cache (baseline)", f"{b['seconds_warm_cache']} s (cold/warm {b['cold_over_warm']}×)"],
            ["index", f"{b['items']} items ({b['duplicates']} duplicates, {b['failed']} failed), {b['index_type']}, "
             f"{b['size_mb']} MB; thresholds estimated: {b['thresholds_estimated']}; embedding: "
             f"{(b['embedding'] or {}).get('embedding')}"],
            ["pair accuracy (balanced, hidden classes)", f"{r['pairs']['accuracy']:.4f} on {r['pairs']['n']}"],
            ["triplet accuracy (balanced, hidden classes)", f"{r['triplets']['accuracy']:.4f} on {r['triplets']['n']}"],
            ["neighbours precision@5 (hidden classes)", f"{r['neighbours']['precision_at_5']:.4f} over "
             f"{r['neighbours']['searches']} searches, median {r['neighbours']['median_seconds_cold_command']} s per "
             "command (cold start)"],
            ["filtered search (`--where`)", f"{r['filtered_search']['seconds']} s, every result matches: "
             f"{r['filtered_search']['all_results_match']}"],
            ["`index sync` after +10 / ~5 / -10 files", f"{r['sync']['seconds']} s: {r['sync']['added']} added, "
             f"{r['sync']['changed']} changed, {r['sync']['removed']} removed (version {r['sync']['version']})"],
            ["`index sync` with nothing changed", f"{r['sync']['seconds_nothing_changed']} s, new version: "
             f"{r['sync']['nothing_changed_version']}"],
        ]),
    ])


if __name__ == "__main__":
    main()
