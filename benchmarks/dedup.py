"""Duplicates: simengine dedup against imagededup's perceptual hashes on a generated set, Imagenette's train/val
leakage, and the memory and time of the candidate search at scale.

1. A generated set (a flat folder, neutral names): originals from Imagenette val, each with 1-3 generated copies
   (`simengine.dedup.copies`: resize, JPEG quality, crop, small rotation, colour, text overlay, format change; one
   or two per copy), mixed with distractors: other val photos of the same classes. Pairwise precision and recall:
   the pairs within each reported group against the pairs within each family (an original and its copies).
   The model's same-picture decision was calibrated on its *training* holdout, never on val.
2. imagededup PHash, DHash, WHash, AHash with their default threshold (Hamming distance 10) on the same folder.
3. Imagenette val against train (`find_duplicates(val, against=train)`): how many val images have a copy in train.
   The HTML report with thumbnails is written outside the repository (it shows dataset images).
4. Scale: the candidate search on synthetic unit vectors (the backbone's width) with planted copies, its time and
   peak memory at --scale-n, and the estimate for 1M.

    python benchmarks/dedup.py --data ../shared/data/imagenette2-160 --model indexes/default-model
"""

from __future__ import annotations

import argparse
import itertools
import random
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from common import RESULTS, table, write  # noqa: E402

HASHES = ("PHash", "DHash", "WHash", "AHash")


def make_set(data: Path, folder: Path, originals: int, distractors: int,
             seed: int) -> tuple[list[list[str]], dict[str, list[str]]]:
    """Write the generated set into `folder`; returns the families (file names of an original and its copies) and
    the transforms each copy went through."""
    from PIL import Image

    from simengine.dedup.copies import make_copy

    val = sorted(p for p in (data / "val").glob("*/*") if p.suffix.lower() in (".jpg", ".jpeg"))
    rng = random.Random(seed)
    rng.shuffle(val)
    if len(val) < originals + distractors:
        raise SystemExit(f"{data}/val has {len(val)} images; need {originals + distractors}")
    np_rng = np.random.default_rng(seed)
    names = iter(rng.sample(range(10 * (originals * 4 + distractors)), originals * 4 + distractors))
    folder.mkdir(parents=True)
    families, kinds = [], {}
    for source in val[:originals]:
        family = [f"img_{next(names):06d}.jpg"]
        shutil.copyfile(source, folder / family[0])
        with Image.open(source) as img:
            for _ in range(int(np_rng.integers(1, 4))):
                copy, kinds_of_copy = make_copy(img.convert("RGB"), np_rng)
                family.append(f"img_{next(names):06d}.png")
                kinds[family[-1]] = kinds_of_copy
                copy.save(folder / family[-1])
        families.append(family)
    for source in val[originals:originals + distractors]:
        shutil.copyfile(source, folder / f"img_{next(names):06d}.jpg")
    return families, kinds


def recall_by_kind(found: set[frozenset], families: list[list[str]], kinds: dict[str, list[str]]) -> dict:
    """For each transform: the share of copies made with it (alone or with another) found with their original."""
    hits: dict[str, list[bool]] = {}
    for original, *copies in families:
        for copy in copies:
            for kind in kinds[copy]:
                hits.setdefault(kind, []).append(frozenset((original, copy)) in found)
    return {kind: {"copies": len(h), "recall": sum(h) / len(h)} for kind, h in sorted(hits.items())}


def pair_set(groups: list[list[str]]) -> set[frozenset]:
    return {frozenset(p) for g in groups for p in itertools.combinations(sorted(set(g)), 2)}


def precision_recall(found: set[frozenset], truth: set[frozenset]) -> dict:
    hits = len(found & truth)
    return {"pairs_found": len(found), "true_pairs": len(truth), "correct": hits,
            "precision": hits / len(found) if found else 1.0, "recall": hits / len(truth) if truth else 1.0}


def run_simengine(folder: Path, model: Path) -> tuple[dict, object]:
    from simengine.dedup.find import find_duplicates

    started = time.perf_counter()
    report = find_duplicates(folder, model_dir=model)
    seconds = time.perf_counter() - started
    groups = [[Path(g.keeper.path).name, *(Path(m.image.path).name for m in g.duplicates)] for g in report.groups]
    return {"seconds": seconds, "groups": groups}, report


def run_imagededup(folder: Path, method: str) -> dict:
    from imagededup import methods

    hasher = getattr(methods, method)(verbose=False)
    started = time.perf_counter()
    found = hasher.find_duplicates(image_dir=str(folder))
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "groups": [[a, b] for a, dups in found.items() for b in dups]}


def scale_run(n: int, dim: int, copies: int, seed: int) -> dict:
    """near_pairs on n synthetic unit vectors, `copies` of them planted near others; time and peak RSS."""
    from simengine.dedup.near import near_pairs, search_type

    rng = np.random.default_rng(seed)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    vectors = rng.standard_normal((n, dim), dtype=np.float32)
    planted = rng.choice(n, size=copies, replace=False)
    vectors[planted[: copies // 2]] = vectors[planted[copies // 2:]] + 0.1 * rng.standard_normal(
        (copies // 2, dim), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    started = time.perf_counter()
    pairs = list(near_pairs(vectors, np.arange(n, dtype=np.int64), 0.8))
    seconds = time.perf_counter() - started
    found = {frozenset((a, b)) for a, b, _ in pairs}
    truth = {frozenset((int(a), int(b))) for a, b in zip(planted[: copies // 2], planted[copies // 2:])}
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"n": n, "dim": dim, "index": search_type(n), "planted_pairs": len(truth), "found": len(found & truth), "extra_pairs": len(found - truth),
            "seconds": seconds, "peak_rss_mb": peak_mb, "rss_before_mb": before / 1024,
            "vectors_mb": vectors.nbytes / 2**20}


def by_kind_table(result: dict) -> str:
    methods = {"simengine": result["simengine"], **{f"imagededup {m}": r for m, r in result["imagededup"].items()}}
    kinds = result["simengine"]["recall_by_kind"]
    return table(["copy kind", "copies", *methods],
                 [[kind, kinds[kind]["copies"], *(m["recall_by_kind"][kind]["recall"] for m in methods.values())]
                  for kind in kinds])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--model", default=None,
                        help="a bundle, or builtin (default: indexes/default-model, else the built-in model)")
    parser.add_argument("--originals", type=int, default=300)
    parser.add_argument("--distractors", type=int, default=900)
    parser.add_argument("--scale-n", type=int, default=100_000)
    parser.add_argument("--no-leakage", action="store_true", help="Skip the train/val leakage step.")
    parser.add_argument("--html", type=Path, default=Path(tempfile.gettempdir()) / "simengine-dedup-leakage.html",
                        help="Where the leakage report with thumbnails goes (not the repository: dataset images).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default="dedup")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    from simengine.dedup.calibrate import read_same_picture
    from simengine.model.builtin import resolve_model_dir

    args.model = resolve_model_dir(args.model)
    stored = read_same_picture(args.model)
    if stored is None:
        raise SystemExit(f"{args.model} has no same-picture calibration: run simengine dedup-calibrate first")
    result: dict = {"decision": stored[1], "set": {"originals": args.originals, "distractors": args.distractors}}
    # First, while the process is fresh: its peak RSS is a high-water mark that later steps would hide.
    result["scale"] = scale_run(args.scale_n, 1280, 2000, args.seed)
    rows = []
    with tempfile.TemporaryDirectory(prefix="simengine-dedup-bench-") as tmp:
        folder = Path(tmp) / "set"
        families, kinds = make_set(args.data, folder, args.originals, args.distractors, args.seed)
        truth = pair_set(families)
        result["set"] |= {"copies": sum(len(f) - 1 for f in families), "files": len(list(folder.iterdir())),
                          "true_pairs": len(truth)}
        ours, report = run_simengine(folder, args.model)
        result["simengine"] = {**precision_recall(pair_set(ours["groups"]), truth), "seconds": ours["seconds"],
                               "recall_by_kind": recall_by_kind(pair_set(ours["groups"]), families, kinds)}
        family_of = {name: n for n, f in enumerate(families) for name in f}
        wrong = [g for g in ours["groups"] if len({family_of.get(x, x) for x in g}) > 1]
        result["simengine"]["groups_mixing_pictures"] = len(wrong)
        rows.append(["simengine (backbone candidates, layout or keypoints; calibrated on train)", result["simengine"]["precision"],
                     result["simengine"]["recall"], ours["seconds"]])
        result["imagededup"] = {}
        for method in HASHES:
            theirs = run_imagededup(folder, method)
            result["imagededup"][method] = {**precision_recall(pair_set(theirs["groups"]), truth),
                                            "seconds": theirs["seconds"],
                                            "recall_by_kind": recall_by_kind(pair_set(theirs["groups"]), families, kinds)}
            rows.append([f"imagededup {method} (Hamming ≤ 10)", result["imagededup"][method]["precision"],
                         result["imagededup"][method]["recall"], theirs["seconds"]])
    if not args.no_leakage:
        from simengine.dedup.find import find_duplicates
        from simengine.dedup.report import write_html

        started = time.perf_counter()
        leak = find_duplicates(args.data / "val", against=args.data / "train", model_dir=args.model)
        write_html(leak, args.html)
        result["leakage"] = {"val_images": leak.images, "val_images_with_a_copy_in_train": leak.duplicate_count,
                             "exact": sum(m.kind == "exact" for g in leak.groups for m in g.duplicates),
                             "seconds": time.perf_counter() - started, "html": str(args.html),
                             "examples": [{"val": str(Path(m.image.path).relative_to(args.data.resolve())),
                                           "train": str(Path(g.keeper.path).relative_to(args.data.resolve())), "backbone": m.backbone, "layout": m.layout, "matches": m.matches}
                                          for g in leak.groups[:10] for m in g.duplicates[:1]]}
    s = result["scale"]
    per_vector_mb = (s["peak_rss_mb"] - s["rss_before_mb"]) / s["n"]
    # IVF with sqrt(n) lists and a fixed nprobe scans sqrt(n) vectors per query: the work grows as n^1.5.
    result["scale"]["estimate_1m"] = {"peak_rss_gb": round(per_vector_mb * 1e6 / 1024, 1),
                                      "hours": round(s["seconds"] * (1e6 / s["n"]) ** 1.5 / 3600, 1)}
    md = ["# Duplicates", "", f"Generated set: {args.originals} originals from Imagenette val with "
          f"{result['set']['copies']} generated copies, {args.distractors} distractors of the same classes "
          f"({result['set']['files']} files, {len(truth)} true pairs).", "",
          table(["method", "pairwise precision", "pairwise recall", "seconds"], rows), "",
          "Recall by kind of copy (a copy made with two transforms counts for both):", "",
          by_kind_table(result)]
    if "leakage" in result:
        leak_r = result["leakage"]
        md += ["", f"Imagenette val against train: {leak_r['val_images_with_a_copy_in_train']} of "
               f"{leak_r['val_images']} val images have a copy in train ({leak_r['exact']} byte-identical), "
               f"{leak_r['seconds']:.0f} s.", "", table(
            ["val", "train", "backbone", "layout", "matches"],
            [[e["val"], e["train"], e["backbone"], e["layout"], e["matches"]] for e in leak_r["examples"]])]
    estimate = result["scale"]["estimate_1m"]
    md += ["", f"Scale: candidate search ({s['index']}) on {s['n']:,} synthetic {s['dim']}-d vectors: {s['seconds']:.0f} s, "
           f"peak RSS {s['peak_rss_mb']:.0f} MB ({s['found']} of {s['planted_pairs']} planted pairs found, "
           f"{s['extra_pairs']} others). Estimate for 1M (memory linear, time as n^1.5): {estimate['peak_rss_gb']} GB, "
           f"{estimate['hours']} h."]
    print(write(args.name, result, "\n".join(md), args.out))
    print("\n".join(md))


if __name__ == "__main__":
    main()
