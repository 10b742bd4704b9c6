"""Unseen classes, the deep-metric-learning protocol of "A Metric Learning Reality Check" (Musgrave et al. 2020):
split the classes in two halves (sorted class ids: first half, second half), train on the train split of one half,
evaluate on the other half, in both directions. Each row is a way of embedding images; the raw backbone and the
default head are rows, and so is every candidate measured on the way.

On the unseen half, as for a user's own labelled collection, thresholds are calibrated on 10 % of its train split
(`score_row` of the accuracy benchmark) and retrieval queries its val split against its train split; pair and
triplet accuracy are on balanced sets drawn from its val split. A second pair / triplet accuracy uses the thresholds
calibrated on the seen half's holdout instead, as a bundle must for an unlabelled collection.

Imagenette's classes are ImageNet classes, so anything built on the backbone's ImageNet classifier is flattered here:
its posteriors name the test classes. The control rows remove those classes' outputs from the classifier.

    python benchmarks/unseen_classes.py --data ../shared/data/imagenette2-160
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))

from accuracy import normalise, predictions, protocol_parser, score_row  # noqa: E402
from common import table, write  # noqa: E402

from simengine.data.folders import scan_split  # noqa: E402
from simengine.evaluation.decisions import calibrate_decisions  # noqa: E402
from simengine.model.encoder import Encoder  # noqa: E402
from simengine.model.feature_cache import FeatureCache  # noqa: E402
from simengine.model.general import UNLIKE_SHARE, training_centroids, unlike_share  # noqa: E402
from simengine.model.heads import embed_numpy, pair_logits  # noqa: E402
from simengine.training.classifier import imagenet_classifier  # noqa: E402
from simengine.training.fit import TrainOptions, split_holdout, train_heads  # noqa: E402
from simengine.training.pipeline import labelled_features  # noqa: E402

# ImageNet-1k output index of each Imagenette class, for the control rows that remove them from the classifier.
IMAGENET_INDEX = {"n01440764": 0, "n02102040": 217, "n02979186": 482, "n03000684": 491, "n03028079": 497,
                  "n03394916": 566, "n03417042": 569, "n03425413": 571, "n03445777": 574, "n03888257": 701}
METRICS = ("precision_at_1", "map_at_r", "large_pair_accuracy", "large_triplet_accuracy",
           "seen_threshold_pair_accuracy", "seen_threshold_triplet_accuracy")

Embedder = Callable[[np.ndarray], np.ndarray]
# A row's recipe: (seen features, seen labels, fit rows, holdout rows) -> (embed, pair logits or None, decision rule).
Recipe = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], tuple[Embedder, Callable | None, str]]


def raw_backbone(x, y, fit, hold):
    return normalise, None, "distance"


def centred_backbone(x, y, fit, hold):
    """Features centred on the seen images' mean: pooled post-ReLU features share one orthant, centring spreads them."""
    mean = x.mean(0)
    return (lambda f: normalise(f - mean)), None, "distance"


def pca_whitening(dim: int, power: float) -> Recipe:
    """PCA whitening learned on the seen train images without their labels (eigenvalues^-power, then L2)."""
    def recipe(x, y, fit, hold):
        mean = x.mean(0)
        values, vectors = np.linalg.eigh(np.cov((x - mean).T))
        top = np.argsort(-values)[:dim]
        projection = vectors[:, top] / values[top] ** power
        return (lambda f: normalise((f - mean) @ projection)), None, "distance"
    return recipe


def posteriors(classifier: tuple[torch.Tensor, torch.Tensor]) -> Recipe:
    """The backbone's ImageNet class posteriors, L2-normalised."""
    weight, bias = (t.numpy().astype(np.float64) for t in classifier)

    def embed(f: np.ndarray) -> np.ndarray:
        z = f @ weight.T + bias
        p = np.exp(z - z.max(1, keepdims=True))
        return normalise(p / p.sum(1, keepdims=True)).astype(np.float32)
    return lambda x, y, fit, hold: (embed, None, "distance")


def trained(opts: TrainOptions, classifier=None) -> Recipe:
    """The heads `simengine train` makes with `opts`, under the decision rule the calibration holdout prefers."""
    def recipe(x, y, fit, hold):
        embedding, pair, _, _ = train_heads(x, y, fit, hold, opts, classifier)
        return (lambda f: embed_numpy(embedding, f)), (lambda a, b: pair_logits(pair, a, b)), "default"
    return recipe


def without_classes(classifier: tuple[torch.Tensor, torch.Tensor], classes: list[str]):
    """The classifier without the outputs of `classes` (the control against ImageNet naming the test classes)."""
    keep = np.setdiff1d(np.arange(len(classifier[1])), [IMAGENET_INDEX[c] for c in classes])
    return classifier[0][keep], classifier[1][keep]


def recipes(args, classifier, classes: list[str]) -> dict[str, Recipe]:
    """Every row: the raw backbone, the default head, the candidates and a control for the posterior mix."""
    base = dict(steps=args.steps, pair_steps=args.steps, seed=args.seed)
    rows: dict[str, Recipe] = {
        "raw backbone (L2-normalised)": raw_backbone,
        "default: triplet projection + pair head": trained(TrainOptions(**base)),
        "centred backbone features": centred_backbone,
        "PCA whitening on seen train images, 256-d, power 0.5": pca_whitening(256, 0.5),
        "PCA whitening on seen train images, 512-d, power 0.25": pca_whitening(512, 0.25),
    }
    for weight in (10.0, 100.0):
        rows[f"projection distilling the backbone's similarities (weight {weight:g}) + pair head"] = trained(
            TrainOptions(distill=weight, **base))
    if classifier is None:
        return rows
    controls = set(classes) <= set(IMAGENET_INDEX)
    rows["ImageNet posteriors alone (flattered)"] = posteriors(classifier)
    if controls:
        rows["control: posteriors without the Imagenette outputs"] = posteriors(without_classes(classifier, classes))
    for weight in (0.25, 0.35, 0.7):
        rows[f"projection {weight:g} + posteriors {1 - weight:g} + pair head (flattered)"] = trained(
            TrainOptions(posteriors=True, head_weight=weight, **base), classifier)
    if controls:
        rows["control: projection 0.7 + posteriors 0.3 + pair head, without the Imagenette outputs"] = trained(
            TrainOptions(posteriors=True, head_weight=0.7, **base), without_classes(classifier, classes))
    return rows


def auto_row(directions: list[dict], raw: dict, default: dict) -> dict:
    """What `index build` does: the general twin where the collection is mostly unlike the training classes, else
    the trained head. The twin's embedding is the normalised backbone features and its default rule the cosine, so
    where it is chosen its numbers are the raw backbone row's (its bundle thresholds: the "seen thr." columns)."""
    chosen = ["general" if d["unlike_share"]["unseen_train"] >= UNLIKE_SHARE else "trained" for d in directions]
    per_direction = [(raw if c == "general" else default)["directions"][n] for n, c in enumerate(chosen)]
    mean = {k: float(np.mean([p[k] for p in per_direction])) for k in METRICS}
    return {"row": "auto, what index build does: general twin where the collection is unlike the training classes "
                   f"(chose {', '.join(chosen)})", "directions": per_direction, "mean": mean, "seconds": 0.0,
            "chosen": chosen}


def halves(labels: np.ndarray) -> list[list[str]]:
    classes = sorted(set(labels.tolist()))
    middle = len(classes) // 2
    return [classes[:middle], classes[middle:]]


def measure(recipe: Recipe, seen: tuple, unseen: tuple, args) -> dict:
    """Train on the seen half's train split; score on the unseen half (calibrated on it, and with seen thresholds)."""
    xs, ys, fit, hold = seen
    xu, yu, xq, yq = unseen
    embed, logits, rule = recipe(xs, ys, fit, hold)
    unseen_hold = split_holdout(yu, TrainOptions.holdout, args.seed)[1]
    row, cal, draw = score_row("", rule, embed(xu), yu, unseen_hold, embed(xq), yq, logits, args)
    # The bundle's own thresholds, from the seen holdout, applied to the same first large draw.
    seen_cal = calibrate_decisions(embed(xs[hold]), ys[hold], logits, source="seen holdout", seed=args.seed)
    for kind, (pred, truth) in zip(("pair", "triplet"), predictions(draw, seen_cal, row["mode"])):
        row[f"seen_threshold_{kind}_accuracy"] = float((pred == truth).mean())
    return {k: row[k] for k in ("mode", *METRICS)}


def main(argv=None) -> dict:
    parser = protocol_parser(__doc__, "unseen_classes")
    args = parser.parse_args(argv)

    started = time.time()
    encoder = Encoder.load(args.backbone)
    cache = FeatureCache(encoder)
    x_train, train_items = labelled_features(cache, scan_split(args.data, "train"), progress=True)
    x_val, val_items = labelled_features(cache, scan_split(args.data, "val"), progress=True)
    y_train = np.array([i.label for i in train_items])
    y_val = np.array([i.label for i in val_items])
    split = halves(y_train)
    classifier = imagenet_classifier(encoder.identity)

    directions = []
    for a in (0, 1):
        seen, unseen = split[a], split[1 - a]
        s, u, q = np.isin(y_train, seen), np.isin(y_train, unseen), np.isin(y_val, unseen)
        fit, hold = split_holdout(y_train[s], TrainOptions.holdout, args.seed)
        centroids, threshold = training_centroids(x_train[s], y_train[s], hold)
        # What `index build` measures to choose: the share of a collection unlike the training classes; for the
        # unseen half (the collection here), and for the seen half's own val images (a collection like them).
        share = {"unseen_train": unlike_share(x_train[u], centroids, threshold),
                 "seen_val": unlike_share(x_val[np.isin(y_val, seen)], centroids, threshold)}
        directions.append({"train_on": seen, "test_on": unseen, "unlike_share": share,
                           "data": ((x_train[s], y_train[s], fit, hold), (x_train[u], y_train[u], x_val[q], y_val[q]))})
    rows = []
    for name, recipe in recipes(args, classifier, split[0] + split[1]).items():
        t = time.time()
        per_direction = [measure(recipe, *d["data"], args) for d in directions]
        mean = {k: float(np.mean([p[k] for p in per_direction])) for k in METRICS}
        rows.append({"row": name, "directions": per_direction, "mean": mean, "seconds": round(time.time() - t, 1)})
        print(f"{name}: {mean}", flush=True)
    raw, default_row = rows[0], next(r for r in rows if r["row"].startswith("default"))
    rows.append(auto_row(directions, raw, default_row))
    default = rows[-1]["mean"]
    result = {"dataset": str(Path(args.data).resolve()), "backbone": encoder.identity["backbone"],
              "weights": encoder.identity["weights_source"], "halves": split,
              "directions": [{k: d[k] for k in ("train_on", "test_on", "unlike_share")} for d in directions],
              "n_test": args.n_test, "n_large": args.n_large, "draws": args.draws, "steps": args.steps,
              "rows": rows,
              "target": {"pair_accuracy_over_raw": 0.03,
                         "default_minus_raw": default["large_pair_accuracy"] - raw["mean"]["large_pair_accuracy"]},
              "seconds": round(time.time() - started, 1)}
    write(args.name, result, markdown(result), args.out)
    return result


def markdown(r: dict) -> str:
    a, b = r["directions"]
    head = (f"# Unseen classes: {r['backbone']} ({r['weights']})\n\n"
            f"Dataset {r['dataset']}. Direction A trains on {', '.join(a['train_on'])} and tests on "
            f"{', '.join(a['test_on'])}; direction B the other way round. Pair and triplet accuracy: mean of "
            f"{r['draws']} balanced draws of {r['n_large']} from the unseen val split, thresholds calibrated on 10 % "
            f"of the unseen train split; \"seen thr.\": the first draw with the thresholds of the seen holdout "
            f"(what a bundle offers an unlabelled collection). P@1 and MAP@R: unseen val queries against the unseen "
            f"train split.\n\nRows built on the ImageNet classifier are flattered: Imagenette's classes are ImageNet "
            f"classes, whose own outputs the posteriors contain. The control rows remove those ten outputs.\n\n")
    labels = ("P@1", "MAP@R", "pair", "triplet", "pair, seen thr.", "triplet, seen thr.")
    headers = (["row"] + [f"{label} ({d})" for d in ("A", "B", "mean") for label in labels[:4]]
               + [f"{label} (mean)" for label in labels[4:]])
    body = [[x["row"]] + [d[k] for d in (*x["directions"], x["mean"]) for k in METRICS[:4]]
            + [x["mean"][k] for k in METRICS[4:]] for x in r["rows"]]
    t = r["target"]
    shares = "; ".join(f"direction {n}: {d['unlike_share']['unseen_train']:.1%} of the unseen half's train images, "
                       f"{d['unlike_share']['seen_val']:.1%} of the seen half's val images"
                       for n, d in zip("AB", r["directions"]))
    return (head + table(headers, body)
            + f"\n\nUnlike the training classes (below the similarity to the nearest class centroid that 95 % of the "
            f"training holdout reaches; the twin is chosen from {UNLIKE_SHARE:.0%}): {shares}."
            + f"\n\nTarget: the default's (auto) mean pair accuracy at least the raw backbone's + "
            f"{t['pair_accuracy_over_raw']}; measured {t['default_minus_raw']:+.4f}. Whole run: {r['seconds']} s.\n")


if __name__ == "__main__":
    main()
