"""Cost of `index add` before and after the versioned store, at 10k and 1M vectors, in one run on one machine.

Before: index format 1 (simengine 0.1, git b73283c), whose every write copies vectors.faiss and items.db into a new
version directory and hashes them. After: the format-2 store in simengine/index/, whose write adds one small segment
and a few SQLite rows. Each side starts from an index of N synthetic unit vectors (random normal, L2-normalised, of
the model's dimension) and times --repeats adds of --adds new items; embedding is left out of both. The old code runs
in a subprocess on `git archive b73283c`, so the two packages never share one interpreter.

    python benchmarks/index_write.py --index indexes/default
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from common import RESULTS, table, write  # noqa: E402

if TYPE_CHECKING:
    from simengine.model.bundle import Model

# simengine is imported inside the functions that use it: this file also runs as the subprocess on the old package
# (--old-side), which must import the old simengine, never the current one.

OLD_COMMIT = "b73283c"
REPO = Path(__file__).resolve().parents[1]


def unit_vectors(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    """n random L2-normalised float32 vectors (float32 throughout: 1M x 256 is 1 GB)."""
    vectors = rng.standard_normal((n, dim), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors


def synthetic_sha(i: int) -> str:
    """A distinct stand-in content hash per synthetic item (both formats refuse duplicate hashes)."""
    return f"{i:064x}"


def dir_mb(path: Path) -> float:
    """Bytes of every file under `path` (a format-1 index is a link to its version directory), in MB."""
    return sum(f.stat().st_size for f in Path(path).resolve().rglob("*") if f.is_file()) / 2**20


def tiny_images(folder: Path, first: int, count: int) -> list[Path]:
    """`count` distinct 8x8 PNGs: the number k (first <= k < first + count) is written into the first pixels."""
    from PIL import Image

    folder.mkdir(parents=True)
    paths = []
    for k in range(first, first + count):
        pixels = np.zeros((8, 8, 3), np.uint8)
        pixels.reshape(-1)[:8] = np.frombuffer(k.to_bytes(8, "little"), np.uint8)
        Image.fromarray(pixels).save(folder / f"{k}.png")
        paths.append(folder / f"{k}.png")
    return paths


# --- before: index format 1, in a subprocess ----------------------------------------------------------------------


class FakeEmbedder:
    """Stands in for the old `_embed_items`: the next pre-drawn vectors, one per record it is given."""

    def __init__(self) -> None:
        self.vectors = np.zeros((0, 0), np.float32)

    def __call__(self, model, records: list, progress: bool) -> tuple[np.ndarray, list, list]:
        if len(records) > len(self.vectors):
            raise RuntimeError(f"{len(records)} records, {len(self.vectors)} vectors drawn")
        return self.vectors[:len(records)], list(records), []


def old_side(spec_path: Path) -> None:
    """In the subprocess, on the old package: build a format-1 index of spec["n"] vectors and time its adds."""
    spec = json.loads(spec_path.read_text())
    import simengine

    if not Path(simengine.__file__).resolve().is_relative_to(Path(spec["old_root"]).resolve()):
        raise SystemExit(f"imported {simengine.__file__}, not the old package under {spec['old_root']}")
    import simengine.index as old
    from simengine.bundle import load_bundle

    work, n, adds = Path(spec["work"]), spec["n"], spec["adds"]
    model = load_bundle(spec["model"])
    rng = np.random.default_rng(spec["seed"])
    fake = FakeEmbedder()
    old._embed_items = fake
    # The build's _write_rows calls image_size on every (non-existent) path; it returns (None, None) for a missing
    # file at about 7 us each (~7 s of a 1M build), so it is left as it is.
    records = [old.ItemRecord(f"/synthetic/{i}.png", None, None, synthetic_sha(i)) for i in range(n)]
    fake.vectors = unit_vectors(rng, n, model.dim)
    start = time.perf_counter()
    link, _ = old.build_index(records, model, Path(spec["model"]), work / "index", spec["index_type"])
    build_s = time.perf_counter() - start
    del records
    size_mb = dir_mb(link)
    # `simengine index add` opened the whole index (FAISS file included) before adding; timed apart from the write.
    start = time.perf_counter()
    index = old.Index(link, model=model)
    open_s = time.perf_counter() - start
    runs = []
    for r in range(spec["repeats"]):
        paths = tiny_images(work / "images" / f"r{r}", r * adds, adds)
        fake.vectors = unit_vectors(rng, adds, model.dim)
        start = time.perf_counter()
        report = index.add(paths)
        runs.append(time.perf_counter() - start)
        if len(report.added) != adds:
            raise RuntimeError(f"old add: {len(report.added)} of {adds} added; duplicates {report.duplicates[:3]}, "
                               f"failed {report.failed[:3]}")
    if len(index) != n + adds * spec["repeats"]:
        raise RuntimeError(f"old index holds {len(index)} items, expected {n + adds * spec['repeats']}")
    Path(spec["result"]).write_text(json.dumps({"runs_s": runs, "build_s": build_s, "open_s": open_s,
                                                "size_mb": size_mb}))


def extract_old(dest: Path) -> Path:
    """The old package, from git, in `dest`/simengine."""
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", OLD_COMMIT, "simengine"], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def measure_before(old_root: Path, model_dir: Path, n: int, adds: int, repeats: int, index_type: str, work: Path,
                   seed: int) -> dict[str, Any]:
    """Run old_side in a fresh interpreter whose simengine is the old package at `old_root`."""
    work.mkdir(parents=True)
    spec = {"old_root": str(old_root), "model": str(model_dir.resolve()), "n": n, "adds": adds, "repeats": repeats,
            "index_type": index_type, "work": str(work), "seed": seed, "result": str(work / "result.json")}
    (work / "spec.json").write_text(json.dumps(spec))
    env = dict(os.environ, PYTHONPATH=str(old_root))
    subprocess.run([sys.executable, str(Path(__file__).resolve()), "--old-side", str(work / "spec.json")], env=env,
                   cwd=work, check=True)
    return json.loads((work / "result.json").read_text())


# --- after: the current store ---------------------------------------------------------------------------------------


def synthetic_rows(first: int, count: int, added_at: str) -> list[dict[str, Any]]:
    """SQLite rows without ids; no label, so nothing calibrates on them."""
    return [{"path": f"/synthetic/{i}.png", "label": None, "split": None, "sha256": synthetic_sha(i), "width": None,
             "height": None, "added_at": added_at} for i in range(first, first + count)]


def measure_after(model: Model, n: int, adds: int, repeats: int, index_type: str, work: Path,
                  seed: int) -> dict[str, Any]:
    """Build a format-2 index of n vectors with `model` (a loaded bundle) and time `add_images` on it."""
    import simengine.index.update as update
    from simengine.index.model_link import create_index, replace_collection
    from simengine.store.layout import StoreDir, now_iso
    from simengine.store.writer import StoreWriter

    rng = np.random.default_rng(seed)
    folder = work / "index"
    rows = synthetic_rows(0, n, now_iso())
    start = time.perf_counter()  # like the before side: the model copy and the index, not making the rows
    create_index(folder, model)
    with StoreWriter(folder) as writer:
        replace_collection(writer, unit_vectors(rng, n, model.dim), rows, model, model.calibration.to_dict(),
                           index_type, {})
        writer.commit("build")
    build_s = time.perf_counter() - start
    del rows
    size_mb = dir_mb(folder)
    fake = FakeEmbedder()
    real_embed, update.embed_items = update.embed_items, fake
    runs = []
    try:
        for r in range(repeats):
            paths = tiny_images(work / "images" / f"r{r}", r * adds, adds)
            fake.vectors = unit_vectors(rng, adds, model.dim)
            start = time.perf_counter()
            report = update.add_images(folder, paths, model=model)
            runs.append(time.perf_counter() - start)
            if len(report.added) != adds:
                raise RuntimeError(f"new add: {len(report.added)} of {adds} added; failed {report.failed[:3]}")
    finally:
        update.embed_items = real_embed
    store = StoreDir(folder)
    items = store.read_manifest(store.current_version())["counts"]["items"]
    if items != n + adds * repeats:
        raise RuntimeError(f"new index holds {items} items, expected {n + adds * repeats}")
    return {"runs_s": runs, "build_s": build_s, "size_mb": size_mb}


# --- the run --------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", type=Path, default=Path("indexes/default"),
                        help="an index whose model (its bundle) the synthetic indexes are built with")
    parser.add_argument("--sizes", default="10000,1000000", help="vectors in the index before the adds")
    parser.add_argument("--adds", type=int, default=100, help="items per add")
    parser.add_argument("--repeats", type=int, default=5, help="adds timed per size and side")
    parser.add_argument("--index-type", default="flat",
                        help="of the base index (auto picks HNSW at 1M, a ~10 min build here)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="where the temporary indexes go (~2 GB each at 1M); default: the system's temp folder")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--name", default="index_write")
    args = parser.parse_args(argv)

    from simengine.index.reader import Index
    from simengine.model.bundle import load_bundle

    model_dir = Index(args.index).model_dir
    model = load_bundle(model_dir)
    if args.work_dir is not None:
        args.work_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="index_write-", dir=args.work_dir))
    rows = []
    try:
        old_root = extract_old(work / "old")
        for n in (int(s) for s in args.sizes.split(",")):
            size_dir = work / f"n{n}"
            try:
                before = measure_before(old_root, model_dir, n, args.adds, args.repeats, args.index_type,
                                        size_dir / "before", args.seed)
                after = measure_after(model, n, args.adds, args.repeats, args.index_type, size_dir / "after", args.seed)
            finally:
                shutil.rmtree(size_dir, ignore_errors=True)
            row = {"vectors": n, "before_median_s": statistics.median(before["runs_s"]),
                   "after_median_s": statistics.median(after["runs_s"])}
            row["ratio"] = row["before_median_s"] / row["after_median_s"]
            row |= {f"{side}_{key}": value for side, result in (("before", before), ("after", after))
                    for key, value in result.items()}
            print(json.dumps(row), flush=True)
            rows.append(row)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {"old_commit": OLD_COMMIT, "model_hash": model.hash, "dim": model.dim, "index_type": args.index_type,
              "adds": args.adds, "repeats": args.repeats, "seed": args.seed, "rows": rows}
    write(args.name, result, markdown(result), args.out)
    return result


def markdown(r: dict) -> str:
    t = table(["vectors", "before s", "after s", "before / after", "before MB", "after MB", "before build s",
               "after build s"],
              [[x["vectors"], x["before_median_s"], x["after_median_s"], x["ratio"], x["before_size_mb"],
                x["after_size_mb"], x["before_build_s"], x["after_build_s"]] for x in r["rows"]])
    fmt = lambda runs: ", ".join(f"{s:.4f}" for s in runs)  # noqa: E731
    runs = "\n".join(f"- {x['vectors']} vectors: before {fmt(x['before_runs_s'])}; after {fmt(x['after_runs_s'])}"
                     for x in r["rows"])
    opens = "; ".join(f"{x['vectors']} vectors: {x['before_open_s']:.3f} s" for x in r["rows"])
    return (
        f"# Index writes: adding {r['adds']} images, before and after the versioned store\n\n"
        f"Wall time of one `index add` of {r['adds']} new image files (distinct 8x8 PNGs) to an index of N vectors, "
        f"median of {r['repeats']} adds in a row, timed with `time.perf_counter`. Before: index format 1 (simengine "
        f"0.1, git {r['old_commit']}), run from `git archive` in a subprocess: `Index.add(paths)`, the index opened "
        f"beforehand. After: the format-2 store in `simengine/index/`: `add_images(index, paths)`, the whole library "
        f"call behind `simengine index add` (hashing the files, checking duplicates, the writer lock, a new version). "
        f"Both start from N synthetic unit vectors (random normal, L2-normalised, {r['dim']}-d like the model's) in a "
        f"`{r['index_type']}` index, built just before, without labels. Embedding is replaced on both sides by a stub "
        f"returning pre-drawn vectors: it is the same code at the same cost before and after.\n\n{t}\n\n"
        "Sizes are of the whole index directory before the adds (the model bundle included); build times are the "
        f"setup, for information.\n\nEvery run, in seconds:\n\n{runs}\n\n"
        "Notes:\n\n"
        "- Before, each add reads every content hash from SQLite and every id from FAISS, copies vectors.faiss and "
        "items.db into a new version directory, adds, writes the FAISS file again, hashes both files, fsyncs every "
        "file, swaps the link and reopens the index (reading the FAISS file again): all of it in proportion to N. "
        "After, an add reads the manifest, looks the new hashes up in SQLite, writes one new segment holding only the "
        "new vectors, inserts their rows and writes a manifest and CURRENT: work in proportion to what it adds.\n"
        "- The after-cost does not depend on the base segment's type (new vectors go into a new small segment), "
        "while the before-cost is dominated by copying and hashing the whole files, which an HNSW index makes "
        f"about a quarter larger (its graph). So the base is `{r['index_type']}` (`--index-type`): building a 1M "
        "HNSW, the automatic choice at that size, takes about 10 minutes here.\n"
        "- Opening the old index (reading its whole FAISS file), which `simengine index add` also did first, is not in the "
        f"before times: {opens}. The new `add_images` opens no FAISS file; its reads are inside the after times.\n"
        "- Each after-add leaves one more small segment; beyond 8 segments a commit merges all but the base, so "
        "runs past the 7th would include that small merge.\n"
    )

if __name__ == "__main__":
    if sys.argv[1:2] == ["--old-side"]:
        old_side(Path(sys.argv[2]))
    else:
        main()
