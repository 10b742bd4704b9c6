"""Adapting the backbone to a collection unlike ImageNet: TrashNet accuracy, frozen against adapted, per backbone.

Each row is one `simengine train --data DATA` (`train_model`, int8 off) in a fresh process with an empty cache, so
its time is the whole of a first training from JPEG files (features, caching, adaptation, both heads, calibration,
val) and its peak RSS its own. Accuracy is on 10,000 balanced val pairs and triplets (the default decision rule,
thresholds from the training holdout, never val); the 1,000-pair and 1,000-triplet sets the issue names are drawn
too. The adapted rows also give the holdout MAP@R per epoch that early stopping saw.

With `--unseen IMAGENETTE`, the unseen-class protocol of `unseen_classes.py` for the backbone alone: train on the
train split of one half of Imagenette's classes, frozen and adapted, then embed the other half with the bundle's
general twin (the backbone's own features and cosine thresholds: what a bundle uses for classes unlike its own),
calibrate on 10 % of that half's train split and measure on its val split.

    python benchmarks/adaptation.py --data ../shared/data/trashnet-256 [--unseen ../shared/data/imagenette2-160]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from common import RESULTS, table, write  # noqa: E402

BACKBONES = ("tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2")
TARGET = {"pair_accuracy": 0.93, "triplet_accuracy": 0.90, "minutes": 30}


def train_once(data: Path, backbone: str, finetune: bool, blocks: int, views: int, epochs: int, steps: int,
               seed: int) -> dict:
    """One training in this process (the child's side of `run`): its metrics, seconds and peak RSS."""
    import numpy as np

    from simengine.data.folders import scan_split
    from simengine.evaluation.decisions import evaluate_decisions
    from simengine.model.bundle import load_bundle
    from simengine.training.finetune import FinetuneOptions
    from simengine.training.fit import TrainOptions
    from simengine.training.pipeline import train_model

    started = time.time()
    with tempfile.TemporaryDirectory() as out:
        opts = TrainOptions(int8=False, finetune=finetune, seed=seed, steps=steps, pair_steps=steps)
        bundle = train_model(data, Path(out) / "model", opts, backbone=backbone,
                             finetune=FinetuneOptions(blocks=blocks, views=views, epochs=epochs, seed=seed))
        seconds = time.time() - started
        config = json.loads((bundle / "config.json").read_text())
        val = config["metrics"]["val"]
        model = load_bundle(bundle)
        items = scan_split(data, "val")
        result = model.embed_paths([i.path for i in items])
        labels = [items[i].label for i in result.ok]
        small = evaluate_decisions(result.vectors, labels, model.pair_logits, model.calibration, n=1000, seed=seed)
    mode = val["default_mode"]
    return {"backbone": backbone, "adapted": bool(config["training"]["backbone"]["adapt"]),
            "choice": config["training"]["backbone"], "seconds": round(seconds, 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "mode": mode, "pair_accuracy": val["decisions"][mode]["pair_accuracy"],
            "triplet_accuracy": val["decisions"][mode]["triplet_accuracy"],
            "pair_accuracy_1000": small[mode]["pair_accuracy"], "triplet_accuracy_1000": small[mode]["triplet_accuracy"],
            "precision_at_1": val["precision_at_1"], "map_at_r": val["map_at_r"],
            "val_images": int(np.size(labels))}


def unseen_once(data: Path, first_half: bool, finetune: bool, blocks: int, views: int, epochs: int, steps: int,
                seed: int) -> dict:
    """Train on one half of the classes (a copy of their train split), score the general twin on the other half."""
    import shutil

    import numpy as np

    from simengine.data.folders import scan_split
    from simengine.evaluation.decisions import EvalSets, calibrate_decisions
    from simengine.evaluation.metrics import retrieval_metrics
    from simengine.model.bundle import load_bundle
    from simengine.model.general import GENERAL_DIR
    from simengine.training.finetune import FinetuneOptions
    from simengine.training.fit import TrainOptions, split_holdout
    from simengine.training.pipeline import train_model

    classes = sorted(p.name for p in (data / "train").iterdir() if p.is_dir())
    seen = classes[:len(classes) // 2] if first_half else classes[len(classes) // 2:]
    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        for name in seen:
            shutil.copytree(data / "train" / name, Path(tmp) / "seen" / "train" / name)
        opts = TrainOptions(int8=False, finetune=finetune, seed=seed, steps=steps, pair_steps=steps)
        bundle = train_model(Path(tmp) / "seen", Path(tmp) / "model", opts,
                             finetune=FinetuneOptions(blocks=blocks, views=views, epochs=epochs, seed=seed))
        seconds = time.time() - started
        choice = json.loads((bundle / "config.json").read_text())["training"]["backbone"]
        twin = load_bundle(bundle / GENERAL_DIR)
        embedded = {}
        for split in ("train", "val"):
            items = [i for i in scan_split(data, split) if i.label not in seen]
            result = twin.embed_paths([i.path for i in items])
            embedded[split] = (result.vectors, np.array([items[i].label for i in result.ok]))
    (xt, yt), (xv, yv) = embedded["train"], embedded["val"]
    hold = split_holdout(yt, TrainOptions.holdout, seed)[1]
    cal = calibrate_decisions(xt[hold], yt[hold], twin.pair_logits, source="unseen holdout", seed=seed)
    sets = EvalSets.draw(xv, yv, twin.pair_logits, 10_000, seed + 1000)
    pair, trio = sets.scores("distance", cal.fusion)
    return {"train_on": seen, "adapted": bool(choice.get("adapted", False)), "choice": choice,
            "seconds": round(seconds, 1), "precision_at_1": retrieval_metrics(xv, yv, xt, yt)["precision_at_1"],
            "pair_accuracy": float(((pair >= cal.pair["distance"].value) == sets.labels.astype(bool)).mean()),
            "triplet_accuracy": float(((trio >= cal.triplet["distance"].value) ==
                                       sets.triplet_labels.astype(bool)).mean())}


def run(args, backbone: str, finetune: bool, blocks: int, unseen_half: int | None = None) -> dict:
    """`train_once` (or `unseen_once` for a half) in a fresh process with its own empty cache (`--warm-cache`:
    this process's)."""
    with tempfile.TemporaryDirectory(prefix="simengine-adapt-cache-") as cache:
        env = os.environ if args.warm_cache else dict(os.environ, SIMENGINE_CACHE=cache)
        data = args.data if unseen_half is None else args.unseen
        child = [sys.executable, __file__, "--data", str(data), "--one", backbone, str(int(finetune)),
                 str(blocks), "--views", str(args.views), "--epochs", str(args.epochs), "--steps", str(args.steps),
                 "--seed", str(args.seed)] + ([] if unseen_half is None else ["--half", str(unseen_half)])
        done = subprocess.run(child, env=env, capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"{' '.join(child)} failed:\n{done.stderr[-3000:]}")
        return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--backbones", nargs="*", default=list(BACKBONES),
                        help="Backbones for TrashNet (none: only the unseen-class protocol, with --unseen).")
    parser.add_argument("--blocks", type=int, nargs="+", default=[8],
                        help="Adapted blocks to try (Lite0; the other backbones the first).")
    parser.add_argument("--views", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--steps", type=int, default=1500, help="Head-training steps (TrainOptions' default).")
    parser.add_argument("--warm-cache", action="store_true",
                        help="Train with this process's cache (features cached already): not a first training's time.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--unseen", type=Path, default=None, help="Imagenette, for the unseen-class protocol.")
    parser.add_argument("--halves", type=int, nargs="+", default=[0, 1],
                        help="Which halves to train on in the unseen-class protocol (0: the first classes).")
    parser.add_argument("--half", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--one", nargs=3, metavar=("BACKBONE", "FINETUNE", "BLOCKS"), help=argparse.SUPPRESS)
    parser.add_argument("--name", default="adaptation")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.one:
        backbone, finetune, blocks = args.one
        if args.half is not None:
            print(json.dumps(unseen_once(args.data, args.half == 0, bool(int(finetune)), int(blocks), args.views,
                                         args.epochs, args.steps, args.seed)))
        else:
            print(json.dumps(train_once(args.data, backbone, bool(int(finetune)), int(blocks), args.views,
                                        args.epochs, args.steps, args.seed)))
        return {}
    started = time.time()
    rows = []
    for backbone in args.backbones:
        for finetune, blocks in [(False, 0)] + [(True, b) for b in (args.blocks if backbone == BACKBONES[0]
                                                                    else args.blocks[:1])]:
            row = run(args, backbone, finetune, blocks)
            rows.append(row | {"blocks": blocks if finetune else None})
            print(json.dumps(rows[-1]), flush=True)
    unseen = []
    if args.unseen is not None:
        for half in args.halves:
            for finetune in (False, True):
                unseen.append(run(args, BACKBONES[0], finetune, args.blocks[0], half))
                print(json.dumps(unseen[-1]), flush=True)
    best = max(rows, key=lambda r: r["pair_accuracy"]) if rows else {}
    result = {"dataset": str(args.data.resolve()), "views": args.views, "epochs": args.epochs,
              "cold_cache": not args.warm_cache, "rows": rows, "unseen": unseen, "target": TARGET,
              "best": {k: best[k] for k in ("backbone", "adapted", "blocks", "pair_accuracy", "triplet_accuracy",
                                             "seconds") if k in best},
              "seconds": round(time.time() - started, 1)}
    write(args.name, result, markdown(result), args.out)
    return result


def markdown(r: dict) -> str:
    rows = [[row["backbone"].replace("tf_efficientnet_", ""),
             f"adapted, last {row['blocks']} blocks" if row["adapted"] else "frozen", row["mode"],
             row["pair_accuracy"], row["triplet_accuracy"], row["pair_accuracy_1000"], row["triplet_accuracy_1000"],
             row["precision_at_1"], f"{row['seconds'] / 60:.1f}", row["peak_rss_mb"],
             " → ".join(f"{v:.3f}" for v in row["choice"].get("record", {}).get("holdout_map_at_r", []))]
            for row in r["rows"]]
    trashnet = [
        f"## TrashNet (`{Path(r['dataset']).name}`)", "",
        "Train (10 % held out for early stopping and thresholds), val for accuracy. Each row is a first training in a "
        "fresh process with an empty cache (features from JPEG files included). "
        f"{r['views']} augmented views per image cached for the adapted rows.", "",
        table(["backbone", "backbone training", "rule", "pair acc (10k)", "triplet acc (10k)", "pair acc (1k)",
               "triplet acc (1k)", "P@1", "minutes", "peak RSS MB", "holdout MAP@R by epoch (0: frozen)"], rows),
        "", f"Targets: pair ≥ {r['target']['pair_accuracy']}, triplet ≥ {r['target']['triplet_accuracy']}, within "
        f"{r['target']['minutes']} minutes on 2 cores. Best row: {r['best']}."] if rows else []
    return "\n".join(["# Adapting the backbone", "", *trashnet, *unseen_markdown(r.get("unseen", []))])


def unseen_markdown(rows: list[dict]) -> list[str]:
    if not rows:
        return []
    return ["", "## Unseen classes (Imagenette, 5 / 5)", "",
            "Trained on one half's train split, Lite0; the other half embedded with the general twin (the backbone's "
            "own features, cosine thresholds calibrated on 10 % of that half's train split), 10,000 balanced val "
            "pairs and triplets.", "",
            table(["trained on", "backbone training", "P@1", "pair acc", "triplet acc", "minutes"],
                  [[", ".join(row["train_on"]), "adapted" if row["adapted"] else "frozen", row["precision_at_1"],
                    row["pair_accuracy"], row["triplet_accuracy"], f"{row['seconds'] / 60:.1f}"] for row in rows])]


if __name__ == "__main__":
    main()
