"""The 2-D map of an index's embeddings: which projection (PCA, UMAP, openTSNE) for the web app's map.

- Data: the live vectors of an index (`--index`, say Imagenette's train split under the built-in model) and their
  labels. A size at most twice the real count is the real set as it is (a smaller one: a seeded subsample); a larger
  one is made of the real vectors, each repeated with Gaussian noise (sigma = `--noise` x the median distance of a
  real vector to its nearest other one / sqrt(dim), so a copy lies nearer its source than any other picture does,
  and its nearest other picture is as often of its source's class as a real vector's is: checked and recorded),
  re-L2-normalised, labels carried.
- Methods, each size in its own fresh process (its own peak RSS, its own numba JIT), on `--threads` threads:
  PCA to 2-D (sklearn); umap-learn UMAP(n_neighbors=15, min_dist=0.1, euclidean on the unit vectors: cosine's
  order) on the raw vectors and after PCA to 50 dimensions, unseeded on `--threads` threads and seeded
  (random_state=0, which makes umap-learn run on one thread); openTSNE TSNE after PCA-50 (FFT gradients,
  random_state=0). Seconds are the fit (PCA-50 included), after UMAP warm-ups of 500 and 5,000 points in the same
  process (so the fit is JIT-free); the warm-ups' seconds and the imports' are recorded beside it.
- First-call cost of UMAP in a fresh process: the same 10k PCA-50 fit twice in one process, with numba's cache in an
  empty folder (the first run after an install) and again with that folder filled (every later process).
- Quality, on one seeded subsample of 5,000 points per size (the same for every method): sklearn's trustworthiness
  (n_neighbors=10, against the full-dimensional unit vectors) and label agreement, the share of each point's 10
  nearest neighbours in the full 2-D layout that share its label (and, for the jittered sizes, with the point's own
  copies left out, which otherwise flatter every method alike). The same agreement in the full-dimensional space is
  the ceiling.
- A run over `--cap` seconds is stopped and reported as over the cap. The 1-minute load average is recorded at the
  start and end of every run (a shared machine).

    python benchmarks/map_projection.py --index /tmp/mapbench/inet --sizes 10000 100000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from common import RESULTS, environment, table, write  # noqa: E402

METHODS = ("pca", "umap_raw", "umap_pca50", "umap_pca50_seeded", "tsne_pca50")
DESCRIPTION = {
    "pca": "PCA to 2-D (sklearn PCA(2, random_state=0))",
    "umap_raw": "UMAP on the raw unit vectors, n_jobs=THREADS, unseeded",
    "umap_pca50": "UMAP after PCA-50, n_jobs=THREADS, unseeded",
    "umap_pca50_seeded": "UMAP after PCA-50, random_state=0 (umap-learn then runs on 1 thread)",
    "tsne_pca50": "openTSNE TSNE after PCA-50, n_jobs=THREADS, random_state=0",
}
UMAP_PARAMS = {"n_components": 2, "n_neighbors": 15, "min_dist": 0.1, "metric": "euclidean"}
TSNE_PARAMS = {"n_components": 2, "perplexity": 30, "negative_gradient_method": "fft"}
PCA_DIMS = 50
SUBSAMPLE = 5000
K = 10
WIDE_K = 64  # neighbours fetched, so that K remain once a point's own copies are left out
WARMUPS = (500, 5000)  # 5,000 > 4,096: umap-learn's NN-descent path, not its exact one
VERSIONS = ("umap-learn", "pynndescent", "numba", "llvmlite", "openTSNE", "scikit-learn", "scipy", "numpy")


def peak_mb() -> int:
    """This process's peak RSS: VmHWM, which starts afresh at exec (ru_maxrss keeps the parent's peak across a
    fork + exec, so a child of a parent that holds the vectors would report the parent's size)."""
    try:
        with open("/proc/self/status") as fh:
            return round(next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:")) / 1024)
    except (OSError, StopIteration):
        return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def load1() -> float:
    return round(os.getloadavg()[0], 2)


# ---------------------------------------------------------------- data


def real_items(index_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    from simengine.curation.neighbours import read_items

    items = read_items(index_dir)
    return np.ascontiguousarray(items.vectors, np.float32), np.array([str(x) for x in items.labels])


def nearest_other(vectors: np.ndarray, queries: np.ndarray, exclude: np.ndarray | None = None) -> tuple:
    """(row, distance) of each query's nearest row of `vectors` (unit vectors), leaving out row exclude[i]."""
    best = np.empty(len(queries), np.int64)
    dist = np.empty(len(queries), np.float32)
    for start in range(0, len(queries), 1024):
        sims = queries[start:start + 1024] @ vectors.T
        if exclude is not None:
            sims[np.arange(len(sims)), exclude[start:start + 1024]] = -np.inf
        best[start:start + 1024] = sims.argmax(1)
        dist[start:start + 1024] = np.sqrt(np.maximum(0, 2 - 2 * sims.max(1)))
    return best, dist


def make_data(real: np.ndarray, labels: np.ndarray, size: int, noise: float, seed: int) -> tuple:
    """(vectors, labels, source row of each, facts): the real set, a subsample, or jittered copies."""
    n, dim = real.shape
    rng = np.random.default_rng([seed, size])
    if size < n:
        rows = np.sort(rng.choice(n, size, replace=False))
        return real[rows], labels[rows], rows, {"kind": "real subsample", "items": size}
    if size < 2 * n:
        return real, labels, np.arange(n), {"kind": "real", "items": n}
    nn, d = nearest_other(real, real, exclude=np.arange(n))
    sigma = float(noise * np.median(d) / np.sqrt(dim))
    source = np.resize(np.arange(n), size)
    out = np.empty((size, dim), np.float32)
    for start in range(0, size, 16384):
        block = source[start:start + 16384]
        v = real[block] + rng.normal(0, sigma, (len(block), dim)).astype(np.float32)
        out[start:start + 16384] = v / np.linalg.norm(v, axis=1, keepdims=True)
    # The check: a copy's nearest real vector is its source; its nearest other real one is of its source's class as
    # often as a real vector's nearest other one is.
    probe = rng.choice(size, min(size, 10000), replace=False)
    to_source, _ = nearest_other(real, out[probe])
    other, _ = nearest_other(real, out[probe], exclude=source[probe])
    facts = {"kind": f"jittered copies of the {n} real vectors", "items": size, "copies_per_vector": size / n,
             "sigma": sigma, "noise_factor": noise, "median_nn_distance_real": float(np.median(d)),
             "median_distance_copy_to_source": float(np.median(np.linalg.norm(out[probe] - real[source[probe]],
                                                                              axis=1))),
             "copy_nearest_real_is_source": float((to_source == source[probe]).mean()),
             "copy_nearest_other_real_same_class": float((labels[other] == labels[source[probe]]).mean()),
             "real_nearest_other_same_class": float((labels[nn] == labels).mean())}
    return out, labels[source], source, facts


# ---------------------------------------------------------------- quality


def agreement(neighbours: np.ndarray, sub: np.ndarray, labels: np.ndarray, source: np.ndarray) -> tuple:
    """Label agreement over each query's K nearest others, and the same with the query's own copies left out."""
    plain, no_copies = [], []
    for q, row in zip(sub, neighbours):
        others = row[row != q][:K]
        plain.append((labels[others] == labels[q]).mean())
        far = row[source[row] != source[q]][:K]
        no_copies.append((labels[far] == labels[q]).mean() if len(far) else np.nan)
    return float(np.mean(plain)), float(np.nanmean(no_copies))


def quality(X: np.ndarray, Y: np.ndarray, sub: np.ndarray, labels: np.ndarray, source: np.ndarray) -> dict:
    from sklearn.manifold import trustworthiness
    from sklearn.neighbors import NearestNeighbors

    started = time.perf_counter()
    Y = np.asarray(Y, np.float64)
    if not np.isfinite(Y).all():
        return {"error": "non-finite coordinates"}
    wide = min(WIDE_K + 1, len(Y))  # a small set (the smoke test's) has fewer
    _, neighbours = NearestNeighbors(n_neighbors=wide, algorithm="kd_tree").fit(Y).kneighbors(Y[sub])
    plain, no_copies = agreement(neighbours, sub, labels, source)
    return {"trustworthiness": float(trustworthiness(X[sub], Y[sub], n_neighbors=K)),
            "label_agreement": plain, "label_agreement_no_copies": no_copies,
            "quality_seconds": round(time.perf_counter() - started, 1)}


def ceiling(X: np.ndarray, sub: np.ndarray, labels: np.ndarray, source: np.ndarray) -> dict:
    """Label agreement of the K nearest neighbours in the full-dimensional space (cosine)."""
    rows, wide = [], min(WIDE_K + 1, len(X) - 1)
    for start in range(0, len(sub), 256):
        sims = X[sub[start:start + 256]] @ X.T
        top = np.argpartition(-sims, wide, axis=1)[:, :wide + 1]
        order = np.take_along_axis(sims, top, 1).argsort(1)[:, ::-1]
        rows.append(np.take_along_axis(top, order, 1))
    plain, no_copies = agreement(np.concatenate(rows), sub, labels, source)
    return {"label_agreement": plain, "label_agreement_no_copies": no_copies}


# ---------------------------------------------------------------- one method in a fresh process


def child(method: str, data: Path, out: Path, threads: int) -> None:
    found: dict = {"method": method, "peak_rss_mb_start": peak_mb()}
    X = np.load(data / "X.npy")
    found["peak_rss_mb_loaded"] = peak_mb()
    order = np.random.default_rng(1).permutation(len(X))
    started = time.perf_counter()
    from sklearn.decomposition import PCA
    found["import_sklearn_s"] = round(time.perf_counter() - started, 2)

    def pca(Z, dims):
        return PCA(dims, random_state=0).fit_transform(Z).astype(np.float32)

    if method == "umap_jit":  # the same 10k PCA-50 fit twice: cold (JIT, numba cache as NUMBA_CACHE_DIR has it), warm
        t = time.perf_counter()
        import umap
        found["import_s"] = round(time.perf_counter() - t, 2)
        Z = pca(X, PCA_DIMS)
        for name in ("first_fit_s", "second_fit_s"):
            t = time.perf_counter()
            umap.UMAP(**UMAP_PARAMS, n_jobs=threads).fit_transform(Z)
            found[name] = round(time.perf_counter() - t, 2)
        found["first_call_overhead_s"] = round(found["first_fit_s"] - found["second_fit_s"], 2)
        found["peak_rss_mb"] = peak_mb()
        print(json.dumps(found), flush=True)
        return
    if method.startswith("umap"):
        t = time.perf_counter()
        import umap
        found["import_s"] = round(time.perf_counter() - t, 2)
        seeded = method.endswith("seeded")
        params = dict(UMAP_PARAMS, n_jobs=threads, random_state=0 if seeded else None)
        for n_warm in WARMUPS:
            if n_warm < len(X):
                t = time.perf_counter()
                warm = X[order[:n_warm]]
                umap.UMAP(**params).fit_transform(pca(warm, PCA_DIMS) if "pca50" in method else warm)
                found[f"warmup_{n_warm}_s"] = round(time.perf_counter() - t, 2)
        found["peak_rss_mb_before_fit"] = peak_mb()
        t = time.perf_counter()
        Z = pca(X, PCA_DIMS) if "pca50" in method else X
        found["pca50_s"] = round(time.perf_counter() - t, 2) if "pca50" in method else None
        Y = umap.UMAP(**params).fit_transform(Z)
        found["params"] = {k: v for k, v in params.items()}
    elif method == "tsne_pca50":
        t = time.perf_counter()
        from openTSNE import TSNE
        found["import_s"] = round(time.perf_counter() - t, 2)
        found["peak_rss_mb_before_fit"] = peak_mb()
        t = time.perf_counter()
        Z = pca(X, PCA_DIMS)
        found["pca50_s"] = round(time.perf_counter() - t, 2)
        params = dict(TSNE_PARAMS, n_jobs=threads, random_state=0)
        Y = np.asarray(TSNE(**params).fit(Z))
        found["params"] = params
    elif method == "pca":
        found["peak_rss_mb_before_fit"] = peak_mb()
        t = time.perf_counter()
        Y = pca(X, 2)
        found["params"] = {"n_components": 2, "random_state": 0}
    else:
        raise SystemExit(f"unknown method {method}")
    found["fit_s"] = round(time.perf_counter() - t, 2)
    found["peak_rss_mb"] = peak_mb()
    np.save(out, np.asarray(Y, np.float32))
    print(json.dumps(found), flush=True)


def run_child(method: str, data: Path, out: Path, threads: int, cap: float, env_extra: dict | None = None) -> dict:
    """One method in a fresh process, stopped (its own process group, by id) past `cap` seconds."""
    env = dict(os.environ, **{v: str(threads) for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                                                         "NUMBA_NUM_THREADS")}, **(env_extra or {}))
    record: dict = {"load1_start": load1()}
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, __file__, "--child", method, str(data), str(out), str(threads)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=cap)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        record.update(over_cap=True, error=f"over the {cap:.0f} s cap: stopped")
    record["process_s"] = round(time.perf_counter() - started, 1)
    record["load1_end"] = load1()
    lines = [line for line in stdout.strip().splitlines() if line.startswith("{")]
    if lines:
        record.update(json.loads(lines[-1]))
    elif "error" not in record:
        record["error"] = f"exit {proc.returncode}: {stderr.strip()[-800:]}"
    # Warnings worth reading (imports, umap-learn's own), without tqdm bars or repeats.
    warnings = []
    for line in stderr.splitlines():
        line = line.strip()
        if line and "Warning" in line and line not in warnings:
            warnings.append(line[:300])
    record["stderr_warnings"] = warnings
    return record


# ---------------------------------------------------------------- report


def fmt(v, digits=3):
    return None if v is None else (f"{v:.{digits}f}" if isinstance(v, float) else v)


def markdown(r: dict) -> str:
    lines = ["# 2-D map projection: PCA vs UMAP vs openTSNE", "",
             f"Vectors: index `{r['index']}` ({r['real_items']} items, {r['dim']} dims, model `{r['model']}`). "
             f"Each method and size in a fresh process on {r['threads']} threads. Seconds: the fit (PCA-50 "
             "included where used), JIT-free for UMAP (warm-ups of 500 and 5,000 points in the same process first). "
             f"Peak RSS: the process's whole peak, VmHWM (Python, libraries, the float32 vectors and the method). "
             f"Quality on one seeded subsample of {SUBSAMPLE} points per size: trustworthiness (k = {K}, against the "
             f"{r['dim']}-d unit vectors) and label agreement (share of the {K} nearest 2-D neighbours, searched in "
             "the full layout, with the point's label; 'no copies': the point's own jittered copies left out).", "",
             "**Timings were taken on a shared machine** (another developer was running tests at times): the "
             "1-minute load average at the start and end of each run is in the last column; on 2 cores, a load "
             "above ~2 means the run was competing for CPU.", ""]
    rows = []
    for size, block in r["sizes"].items():
        c = block["ceiling"]
        rows.append([f"full-dim ceiling ({r['dim']}-d cosine)", block["data"]["items"], "", "", "", "", "",
                     "", fmt(c["label_agreement"]), fmt(c["label_agreement_no_copies"]), ""])
        for method, m in block["runs"].items():
            load = f"{m['load1_start']} / {m['load1_end']}"
            if m.get("error"):
                rows.append([method, block["data"]["items"], m["error"], "", "", "", "", "", "", "", load])
                continue
            rows.append([method, block["data"]["items"], fmt(m["fit_s"], 1), fmt(m.get("import_s"), 1),
                         fmt(m.get(f"warmup_{WARMUPS[0]}_s"), 1), m.get("peak_rss_mb_before_fit"), m["peak_rss_mb"], fmt(m.get("trustworthiness")),
                         fmt(m.get("label_agreement")), fmt(m.get("label_agreement_no_copies")), load])
    lines += [table(["method", "points", "fit s", "import s", "first 500-pt fit s", "RSS before fit MB", "peak RSS MB",
                     "trustworthiness", "label agreement", "label agr. (no copies)", "load1 start / end"], rows), ""]
    lines += ["Methods: " + "; ".join(f"`{k}`: {v.replace('THREADS', str(r['threads']))}" for k, v in
                                      DESCRIPTION.items()) + ". "
              f"UMAP: `UMAP({', '.join(f'{k}={v!r}' for k, v in UMAP_PARAMS.items())}, n_jobs=...)` (low_memory "
              f"default); openTSNE: `TSNE({', '.join(f'{k}={v!r}' for k, v in TSNE_PARAMS.items())}, n_jobs=..., "
              "random_state=0)`, other parameters default.", ""]
    for size, block in r["sizes"].items():
        d = block["data"]
        if "sigma" in d:
            lines += [f"Data at {size}: {d['kind']} ({d['copies_per_vector']:.2f} each), sigma = {d['sigma']:.5f} "
                      f"per dimension ({d['noise_factor']} x the median nearest-other distance "
                      f"{d['median_nn_distance_real']:.3f} / sqrt(dim)); a copy lies {d['median_distance_copy_to_source']:.3f} "
                      f"from its source (median); its nearest real vector is its source for "
                      f"{d['copy_nearest_real_is_source']:.1%}, and its nearest other real vector has its source's "
                      f"class for {d['copy_nearest_other_real_same_class']:.1%} (real vectors' own: "
                      f"{d['real_nearest_other_same_class']:.1%}).", ""]
    if r.get("jit"):
        lines += ["## UMAP's first call in a fresh process", "",
                  "The same 10k PCA-50 fit twice in one fresh process; numba's cache in a folder of its own "
                  "(NUMBA_CACHE_DIR), empty for the first row (the first process after an install), filled by it for "
                  "the second (every later process).", "",
                  table(["numba cache", "import umap s", "first fit s", "second fit s", "first-call overhead s",
                         "load1 start / end"],
                        [[name, fmt(j.get("import_s"), 1), fmt(j.get("first_fit_s"), 1), fmt(j.get("second_fit_s"), 1),
                          fmt(j.get("first_call_overhead_s"), 1), f"{j['load1_start']} / {j['load1_end']}"]
                         if not j.get("error") else [name, j["error"], "", "", "", ""]
                         for name, j in r["jit"].items()]), ""]
    warnings = sorted({w for block in r["sizes"].values() for m in block["runs"].values()
                       for w in m.get("stderr_warnings", [])} | {w for j in r.get("jit", {}).values()
                                                                 for w in j.get("stderr_warnings", [])})
    if warnings:
        lines += ["Warnings the runs printed:", ""] + [f"- `{w}`" for w in warnings] + [""]
    lines += [f"Load average (1 min) at the start / end of the whole benchmark: {r['load1_start']} / {r['load1_end']}."]
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", type=Path, required=True, help="an index (its live vectors and labels)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10000, 100000])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--noise", type=float, default=0.5, help="jitter: this x median NN distance / sqrt(dim)")
    parser.add_argument("--cap", type=float, default=900, help="seconds before a run is stopped")
    parser.add_argument("--no-jit", action="store_true", help="skip the fresh-process first-call measurement")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--name", default="map_projection")
    args = parser.parse_args(argv)
    env = environment()
    for name in VERSIONS:
        try:
            env["versions"][name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            env["versions"][name] = None
    env["numba_threading_layer_env"] = os.environ.get("NUMBA_THREADING_LAYER")
    from simengine.index.reader import Index

    with Index(args.index) as index:
        model = index.model_dir
    real, labels = real_items(args.index)
    result = {"index": str(args.index), "model": str(model), "real_items": len(real), "dim": int(real.shape[1]),
              "threads": args.threads, "load1_start": load1(), "sizes": {}, "environment": env}
    with tempfile.TemporaryDirectory(prefix="simengine-map-") as tmp:
        folder = Path(tmp)
        if not args.no_jit:
            data = folder / "jit"
            data.mkdir()
            X, *_ = make_data(real, labels, 10000, args.noise, args.seed)
            np.save(data / "X.npy", X)
            cache = folder / "numba-cache"
            cache.mkdir()
            result["jit"] = {}
            for name in ("empty (first process after install)", "filled (later processes)"):
                result["jit"][name] = run_child("umap_jit", data, folder / "jit.npy", args.threads, args.cap,
                                                {"NUMBA_CACHE_DIR": str(cache)})
                print(name, result["jit"][name], flush=True)
        for size in args.sizes:
            data = folder / str(size)
            data.mkdir()
            X, y, source, facts = make_data(real, labels, size, args.noise, args.seed)
            np.save(data / "X.npy", X)
            sub = np.sort(np.random.default_rng([args.seed, size, 5]).choice(len(X), min(SUBSAMPLE, len(X)),
                                                                           replace=False))
            block = {"data": facts, "subsample": len(sub), "ceiling": ceiling(X, sub, y, source), "runs": {}}
            print(size, facts, block["ceiling"], flush=True)
            for method in args.methods:
                out = data / f"{method}.npy"
                record = run_child(method, data, out, args.threads, args.cap)
                if not record.get("error"):
                    record.update(quality(X, np.load(out), sub, y, source))
                block["runs"][method] = record
                print(size, method, record, flush=True)
            result["sizes"][str(size)] = block
            del X
    result["load1_end"] = load1()
    write(args.name, result, markdown(result), args.out)
    print(markdown(result))
    return result


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4]), int(sys.argv[5]))
    else:
        main()
