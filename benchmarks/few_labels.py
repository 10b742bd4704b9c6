"""Thresholds from a few labelled pairs (`simengine index calibrate --pairs`) against thresholds from every label.

Two collections a model did not train on:
- TrashNet with the built-in model (what `simengine index build ~/photos` gives an unlabelled folder): labelled pairs
  are drawn from its train split, accuracy is measured on its val split;
- Imagenette's unseen-class halves (train on the train split of five classes, as `unseen_classes.py` does, with the
  general recipe a bundle uses for a collection unlike its classes: backbone features, cosine thresholds, a pair
  head): labelled pairs from the other five classes' train split, accuracy on their val split; both directions.

For each number of labelled pairs (balanced, as `simengine data sample pairs` draws them), `--repeats` seeded draws
each calibrate the model's rule (`index.calibrate.calibrate_from_examples`), and pair and triplet accuracy are
measured on the same 10,000 balanced val pairs and triplets as full-label calibration (every train label of the
collection, `calibrate_decisions`, at the same rule) and as the estimated thresholds (no labels: the model's own).

    python benchmarks/few_labels.py --trashnet ../shared/data/trashnet-256 --imagenette ../shared/data/imagenette2-160
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from common import RESULTS, table, write  # noqa: E402

from simengine.data.evalsets import sample_pairs  # noqa: E402
from simengine.data.folders import scan_split  # noqa: E402
from simengine.evaluation.decisions import Calibration, EvalSets, calibrate_decisions  # noqa: E402
from simengine.index.calibrate import calibrate_from_examples  # noqa: E402
from simengine.model.builtin import builtin_model_dir  # noqa: E402
from simengine.model.bundle import load_bundle  # noqa: E402
from simengine.model.feature_cache import FeatureCache  # noqa: E402
from simengine.model.heads import pair_logits  # noqa: E402
from simengine.training.fit import TrainOptions, split_holdout, train_pair_head  # noqa: E402
from simengine.training.pipeline import labelled_features  # noqa: E402

SIZES = (20, 50, 100, 200)


def features(cache: FeatureCache, data: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    x, items = labelled_features(cache, scan_split(data, split), progress=True)
    return x, np.array([i.label for i in items])


def normalise(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def accuracy(cal: Calibration, mode: str, sets: EvalSets) -> tuple[float, float]:
    pair, trio = sets.scores(mode, cal.fusion)
    return (float(((pair >= cal.pair[mode].value) == sets.labels.astype(bool)).mean()),
            float(((trio >= cal.triplet[mode].value) == sets.triplet_labels.astype(bool)).mean()))


def curve(name: str, model, base: Calibration, pool: tuple[np.ndarray, np.ndarray],
          test: tuple[np.ndarray, np.ndarray], args) -> dict:
    """Accuracy on `test` of thresholds from n labelled pairs of `pool`, per n, against full-label and estimated."""
    started = time.time()
    mode = base.default
    sets = EvalSets.draw(*test, model.pair_logits, args.n_test, seed=args.seed + 1000)
    full = calibrate_decisions(*pool, model.pair_logits, source="every label", seed=args.seed)
    full_pair, full_triplet = accuracy(full, mode, sets)
    estimated_pair, estimated_triplet = accuracy(base, mode, sets)
    rows = []
    for n in args.sizes:
        pair_acc, triplet_acc, widths = [], [], []
        for r in range(args.repeats):
            drawn = sample_pairs(pool[1], n, seed=args.seed + 7919 * r + n)
            ij, same = np.array([s.indices for s in drawn]), np.array([s.label for s in drawn])
            cal = calibrate_from_examples(model, base, (pool[0][ij[:, 0]], pool[0][ij[:, 1]], same), None,
                                          f"{n} pairs", seed=r)
            p, t = accuracy(cal, mode, sets)
            pair_acc.append(p)
            triplet_acc.append(t)
            lo, hi = cal.pair[mode].interval
            widths.append(hi - lo)
        pair_acc, triplet_acc = np.array(pair_acc), np.array(triplet_acc)
        rows.append({"pairs": n, "pair_mean": float(pair_acc.mean()), "pair_std": float(pair_acc.std()),
                     "pair_worst": float(pair_acc.min()), "pair_gap_to_full": float(full_pair - pair_acc.mean()),
                     "within_0.02_of_full": float((full_pair - pair_acc <= 0.02).mean()),
                     "triplet_mean": float(triplet_acc.mean()), "triplet_gap_to_full": float(full_triplet - triplet_acc.mean()),
                     "interval_width_mean": float(np.mean(widths))})
        print(f"{name} {n} pairs: {rows[-1]}", flush=True)
    return {"collection": name, "mode": mode, "pool_items": len(pool[1]), "test_items": len(test[1]),
            "full_label": {"pair": full_pair, "triplet": full_triplet},
            "estimated": {"pair": estimated_pair, "triplet": estimated_triplet}, "rows": rows,
            "seconds": round(time.time() - started, 1)}


def trashnet(args) -> dict:
    model = load_bundle(builtin_model_dir())
    cache = FeatureCache(model.encoder, flip=model.flip)
    train, val = (features(cache, args.trashnet, s) for s in ("train", "val"))
    embed = lambda xy: (model.embed_features(xy[0]), xy[1])  # noqa: E731
    return curve("TrashNet, built-in model", model, model.calibration, embed(train), embed(val), args)


def imagenette_halves(args) -> list[dict]:
    model = load_bundle(builtin_model_dir())  # the backbone (Lite0, ImageNet weights) the general recipe runs on
    cache = FeatureCache(model.encoder)
    (xt, yt), (xv, yv) = (features(cache, args.imagenette, s) for s in ("train", "val"))
    xt, xv = normalise(xt), normalise(xv)
    classes = sorted(set(yt.tolist()))
    out = []
    for seen in (classes[:len(classes) // 2], classes[len(classes) // 2:]):
        s, u, q = np.isin(yt, seen), ~np.isin(yt, seen), ~np.isin(yv, seen)
        fit, hold = split_holdout(yt[s], TrainOptions.holdout, args.seed)
        head, _ = train_pair_head(xt[s][fit], yt[s][fit], xt[s][hold], yt[s][hold], TrainOptions(), False)
        general = SimpleNamespace(pair_logits=lambda a, b, head=head: pair_logits(head, a, b))
        base = calibrate_decisions(xt[s][hold], yt[s][hold], general.pair_logits, source="seen holdout",
                                   seed=args.seed)
        base.default = "distance"  # the general recipe's rule (see training.pipeline._save_general_twin)
        name = f"Imagenette, unseen classes {', '.join(sorted(set(yt[u].tolist())))} (trained on the others)"
        out.append(curve(name, general, base, (xt[u], yt[u]), (xv[q], yv[q]), args))
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trashnet", type=Path, required=True)
    parser.add_argument("--imagenette", type=Path, required=True)
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--n-test", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default="few_labels")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    started = time.time()
    collections = [trashnet(args), *imagenette_halves(args)]
    result = {"sizes": args.sizes, "repeats": args.repeats, "n_test": args.n_test, "collections": collections,
              "target": {"pairs": 50, "within_of_full": 0.02,
                         "met": all(r["pair_gap_to_full"] <= 0.02 for c in collections for r in c["rows"]
                                    if r["pairs"] == 50)},
              "seconds": round(time.time() - started, 1)}
    write(args.name, result, markdown(result), args.out)
    return result


def markdown(r: dict) -> str:
    lines = ["# Thresholds from a few labelled pairs", "",
             f"Pair and triplet accuracy on 10,000 balanced val pairs and triplets ({r['n_test']:,}), with thresholds "
             f"calibrated from n balanced labelled train pairs (`index calibrate --pairs`; mean over {r['repeats']} "
             "draws, the worst draw, and how many draws came within 0.02 of full-label calibration), from every "
             "train label, and from none (the model's own, estimated).", ""]
    for c in r["collections"]:
        lines += [f"## {c['collection']}", "",
                  f"Rule: {c['mode']}. Full-label: pair {c['full_label']['pair']:.4f}, triplet "
                  f"{c['full_label']['triplet']:.4f}. Estimated (no labels): pair {c['estimated']['pair']:.4f}, "
                  f"triplet {c['estimated']['triplet']:.4f}.", "",
                  table(["labelled pairs", "pair accuracy (mean)", "std", "worst draw", "gap to full-label",
                         "draws within 0.02", "triplet accuracy (mean)", "triplet gap", "95 % interval width"],
                        [[row["pairs"], row["pair_mean"], row["pair_std"], row["pair_worst"], row["pair_gap_to_full"],
                          f"{row['within_0.02_of_full']:.0%}", row["triplet_mean"], row["triplet_gap_to_full"],
                          row["interval_width_mean"]] for row in c["rows"]]), ""]
    met = "met" if r["target"]["met"] else "not met"
    lines.append(f"Target (50 pairs within 0.02 of full-label pair accuracy, on average): {met}.")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
