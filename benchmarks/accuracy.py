"""Accuracy on an ImageFolder dataset: the reference protocol (320 pairs / triplets), a 10k protocol with 95% CIs,
and retrieval (val queries against the train gallery), for the backbone alone, each mining strategy, the pair head
alone and the combined default. Thresholds are calibrated on the train split's holdout only.

    python benchmarks/accuracy.py --data ../shared/data/imagenette2-160
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from common import RESULTS, table, write  # noqa: E402

from simengine.data.folders import scan_split  # noqa: E402
from simengine.evaluation.decisions import EvalSets, calibrate_decisions  # noqa: E402
from simengine.model.encoder import Encoder  # noqa: E402
from simengine.evaluation.metrics import classification_report, retrieval_metrics, wilson_interval  # noqa: E402
from simengine.model.feature_cache import FeatureCache  # noqa: E402
from simengine.training.classifier import imagenet_classifier  # noqa: E402
from simengine.training.pipeline import labelled_features  # noqa: E402
from simengine.model.heads import embed_numpy, pair_logits  # noqa: E402
from simengine.training.fit import (  # noqa: E402
    MINING, TrainOptions, split_holdout, train_embedding_head, train_pair_head,
)

REFERENCE = {"pair_accuracy": 0.84, "triplet_accuracy_positives_only": 0.73}


def normalise(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def score_row(name, mode, emb_train, y_train, hold, emb_val, y_val, logits, args) -> tuple[dict, object, EvalSets]:
    """Calibrate on the train holdout, then measure every protocol on val."""
    cal = calibrate_decisions(emb_train[hold], y_train[hold], logits, source="train holdout", seed=args.seed)
    mode = cal.default if mode == "default" else mode
    row = {"row": name, "mode": mode, "pair_threshold": cal.pair[mode].value,
           "calibration_cv_accuracy": cal.pair[mode].cv_accuracy}
    row |= retrieval_metrics(emb_val, y_val, emb_train, y_train)
    sets = EvalSets.draw(emb_val, y_val, logits, args.n_test, seed=args.seed + 1000 + args.n_test)
    (pair_pred, pair_truth), (trio_pred, trio_truth) = predictions(sets, cal, mode)
    for kind, pred, truth in (("pair", pair_pred, pair_truth), ("triplet", trio_pred, trio_truth)):
        row[f"reference_{kind}_accuracy"] = float((pred == truth).mean())
        row[f"reference_{kind}_report"] = classification_report(pred, truth)
    row["reference_triplet_accuracy_positives_only"] = float(trio_pred[trio_truth].mean())
    # Independent large draws: errors cluster on a few hard val images, so the spread between draws is wider than
    # one draw's binomial interval suggests; the mean, the range and the pooled interval are all reported.
    large = [EvalSets.draw(emb_val, y_val, logits, args.n_large, seed=args.seed + 1000 + args.n_large + 7919 * draw)
             for draw in range(args.draws)]
    counts = {"pair": [], "triplet": []}  # (correct, total) per draw
    for draw in large:
        for kind, (pred, truth) in zip(counts, predictions(draw, cal, mode)):
            counts[kind].append((int((pred == truth).sum()), len(truth)))
    for kind, per_draw in counts.items():
        correct, total = np.array(per_draw).T
        accuracies = correct / total
        row[f"large_{kind}_accuracy"] = float(accuracies.mean())
        row[f"large_{kind}_draws"] = accuracies.tolist()
        row[f"large_{kind}_ci95"] = wilson_interval(int(correct.sum()), int(total.sum()))
    return row, cal, large[0]


def predictions(sets: EvalSets, cal, mode: str) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """(predicted, true) booleans for the pairs and for the triplets of one draw under the calibrated rule `mode`."""
    pair_s, trio_s = sets.scores(mode, cal.fusion)
    return ((pair_s >= cal.pair[mode].value, sets.labels.astype(bool)),
            (trio_s >= cal.triplet[mode].value, sets.triplet_labels.astype(bool)))


def plots(sets: EvalSets, cal, mode: str, out: Path, name: str) -> list[str]:
    """ROC of the default rule with its threshold marked, and same/different distance histograms."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scores, _ = sets.scores(mode, cal.fusion)
    y = sets.labels.astype(bool)
    order = np.argsort(-scores)
    tpr = np.r_[0, np.cumsum(y[order]) / y.sum()]
    fpr = np.r_[0, np.cumsum(~y[order]) / (~y).sum()]
    t = cal.pair[mode].value
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    axes[0].plot(fpr, tpr)
    axes[0].plot([((scores >= t) & ~y).sum() / (~y).sum()], [((scores >= t) & y).sum() / y.sum()], "ro",
                 label=f"calibrated threshold ({mode})")
    axes[0].set(xscale="log", xlim=(1e-4, 1), xlabel="false accept rate", ylabel="true accept rate", title="ROC, val pairs")
    axes[0].legend()
    distance = 1 - sets.cosine
    axes[1].hist(distance[y], bins=80, alpha=0.6, label="same class")
    axes[1].hist(distance[~y], bins=80, alpha=0.6, label="different class")
    axes[1].axvline(1 - cal.pair["distance"].value, color="k", ls="--", label="distance threshold")
    axes[1].set(xlabel="cosine distance", ylabel="pairs", title="embedding distances, val pairs")
    axes[1].legend()
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}_roc_distances.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return [path.name]


def protocol_parser(description: str, name: str) -> argparse.ArgumentParser:
    """The options of every script that trains the default heads and scores them with `score_row`."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="ImageFolder root with train/ and val/")
    parser.add_argument("--backbone", default=None, help="timm name (default: simengine's choice)")
    parser.add_argument("--n-test", type=int, default=320, help="reference protocol size")
    parser.add_argument("--n-large", type=int, default=10_000, help="large protocol size")
    parser.add_argument("--draws", type=int, default=3, help="independent draws of the large sets")
    parser.add_argument("--steps", type=int, default=TrainOptions.steps)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--name", default=name)
    return parser


def main(argv=None) -> dict:
    parser = protocol_parser(__doc__, "accuracy")
    parser.add_argument("--weights", default=None, help="backbone weights file, e.g. a fine-tuned one")
    parser.add_argument("--flip", action="store_true", help="flip test-time augmentation")
    args = parser.parse_args(argv)

    started = time.time()
    encoder = Encoder.load(args.backbone, args.weights)
    cache = FeatureCache(encoder, flip=args.flip)
    x_train, train_items = labelled_features(cache, scan_split(args.data, "train"), progress=True)
    x_val, val_items = labelled_features(cache, scan_split(args.data, "val"), progress=True)
    y_train = np.array([i.label for i in train_items])
    y_val = [i.label for i in val_items]
    fit, hold = split_holdout(y_train, TrainOptions.holdout, args.seed)

    rows, timings = [], {}
    row, _, _ = score_row("pretrained backbone alone (cosine on raw features)", "distance", normalise(x_train), y_train,
                          hold, normalise(x_val), y_val, None, args)
    rows.append(row)
    heads = {}
    classifier = imagenet_classifier(encoder.identity) if TrainOptions.posteriors else None
    for mining in MINING:
        opts = TrainOptions(mining=mining, steps=args.steps, pair_steps=args.steps, seed=args.seed)
        t = time.time()
        head, history = train_embedding_head(x_train[fit], y_train[fit], x_train[hold], y_train[hold], opts,
                                             classifier=classifier)
        timings[f"embedding_head_{mining}_s"] = round(time.time() - t, 1)
        emb_train, emb_val = embed_numpy(head, x_train), embed_numpy(head, x_val)
        heads[mining] = (emb_train, emb_val, opts)
        row, _, _ = score_row(f"triplet embedding, {mining} mining (distance)", "distance", emb_train, y_train, hold,
                              emb_val, y_val, None, args)
        row["best_step"] = history.best_step
        rows.append(row)
    emb_train, emb_val, opts = heads[TrainOptions.mining]
    t = time.time()
    pair_head, _ = train_pair_head(emb_train[fit], y_train[fit], emb_train[hold], y_train[hold], opts)
    timings["pair_head_s"] = round(time.time() - t, 1)
    logits = lambda a, b: pair_logits(pair_head, a, b)  # noqa: E731
    for name, mode in (("BCE pair head alone", "head"), ("distance + pair head, fused", "fused"),
                       ("combined default (rule chosen by holdout CV)", "default")):
        row, cal, sets = score_row(name, mode, emb_train, y_train, hold, emb_val, y_val, logits, args)
        rows.append(row)
    figures = plots(sets, cal, row["mode"], args.out, args.name)

    result = {"dataset": str(Path(args.data).resolve()), "backbone": encoder.identity["backbone"],
              "weights": encoder.identity["weights_source"], "flip": args.flip, "train": len(train_items),
              "val": len(val_items), "holdout": len(hold), "n_test": args.n_test, "n_large": args.n_large, "draws": args.draws,
              "reference": REFERENCE, "rows": rows, "timings": timings, "figures": figures,
              "seconds": round(time.time() - started, 1)}
    write(args.name, result, markdown(result), args.out)
    return result


def markdown(r: dict) -> str:
    head = (f"# Accuracy: {r['backbone']} ({r['weights']}){' + flip TTA' if r['flip'] else ''}\n\n"
            f"Dataset {r['dataset']}: {r['train']} train ({r['holdout']} held out for early stopping and calibration), "
            f"{r['val']} val. All sets are drawn from val with a fixed seed and are balanced; thresholds come from the "
            f"train holdout only.\n\n")
    large = f"{r['draws']} draws of {r['n_large']}"
    ref = ["reference implementation (320 test pairs; triplets: positives only)", "", REFERENCE["pair_accuracy"], "", "",
           REFERENCE["triplet_accuracy_positives_only"], "", "", "", "", ""]
    rows = [[x["row"], x["mode"], x["reference_pair_accuracy"], x["reference_triplet_accuracy"],
             large_cell(x, "pair"),
             x["reference_triplet_accuracy_positives_only"],
             large_cell(x, "triplet"),
             x["precision_at_1"], x["r_precision"], x["map_at_r"], x["knn10_accuracy"]] for x in r["rows"]]
    body = table(["row", "rule", f"pair acc ({r['n_test']})", f"triplet acc ({r['n_test']}, balanced)",
                  f"pair acc ({large}): mean (range) [95% CI]", f"triplet acc, positives only ({r['n_test']})",
                  f"triplet acc ({large}): mean (range) [95% CI]", "P@1", "R-precision", "MAP@R", "kNN-10 acc"], rows + [ref])
    default = r["rows"][-1]
    report = default["reference_pair_report"]
    rep = table(["label", "precision", "recall", "f1", "support"],
                [[k, report[k]["precision"], report[k]["recall"], report[k]["f1"], report[k]["support"]] for k in ("0", "1")])
    trep = default["reference_triplet_report"]
    trep_t = table(["label", "precision", "recall", "f1", "support"],
                   [[k, trep[k]["precision"], trep[k]["recall"], trep[k]["f1"], trep[k]["support"]] for k in ("0", "1")])
    return (head + body + f"\n\nClassification report of the combined default on the {r['n_test']} reference pairs:\n\n"
            + rep + f"\n\nand on the {r['n_test']} reference triplets:\n\n" + trep_t
            + f"\n\nTraining times: {r['timings']}. Whole run: {r['seconds']} s.\n\n"
            + "".join(f"![{f}]({f})\n" for f in r["figures"]))


def large_cell(row: dict, kind: str) -> str:
    low, high = min(row[f"large_{kind}_draws"]), max(row[f"large_{kind}_draws"])
    ci = row[f"large_{kind}_ci95"]
    return f"{row[f'large_{kind}_accuracy']:.4f} ({low:.4f}–{high:.4f}) [{ci[0]:.4f}, {ci[1]:.4f}]"


if __name__ == "__main__":
    main()
