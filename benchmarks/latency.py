"""Speed: embedding throughput per runtime and batch size against a plain timm baseline and timm eager channels_last
batch 32 (same run), the model alone per runtime, decoding alone, the accuracy gate of every runtime against fp32
torch eager (model.runtime_gate on val; a reduced precision's verdict is recorded for `--runtime auto`), index
build time, warm query latency (Python API) and cold CLI latency. The index's bundle is quantized to int8 first
(`simengine quantize`, calibrated on 300 train images) when it has no int8 model and NNCF is installed.

    python benchmarks/latency.py --data ../shared/data/imagenette2-160 --index indexes/default
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from common import RESULTS, table, write  # noqa: E402

from simengine.data.folders import scan_split  # noqa: E402
from simengine.model.runtime_gate import run_gate  # noqa: E402
from simengine.model.encoder import Encoder  # noqa: E402
from simengine.data.decode import load_rgb  # noqa: E402
from simengine.query.engine import Engine  # noqa: E402

LITE0_GFLOPS = 0.8  # 0.40 GMACs at 224 px (timm's model card), 2 FLOPs per MAC


def timed(fn, *args, **kwargs) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - start, out


def plain_timm_baseline(encoder: Encoder, paths: list[Path]) -> float:
    """Images/s of a timm model in its default memory format, one image at a time, timm's own transform."""
    import timm.data
    import torch

    model = encoder.torch_model.to(memory_format=torch.contiguous_format).eval()
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))
    with torch.no_grad():
        model(transform(load_rgb(paths[0]))[None])
        seconds, _ = timed(lambda: [model(transform(load_rgb(p))[None]) for p in paths])
    return len(paths) / seconds


def encoders(model_dir: Path) -> dict[str, Encoder]:
    """The index's backbone (its bundle's export, the one the gate's verdicts are recorded for) on every runtime
    `auto` measures here, in its order, and on torch eager (channels_last)."""
    from simengine.model.bundle import ONNX_FILES, load_bundle, read_config
    from simengine.model.runtime_choice import candidates, cpu_facts, make_runtime

    config = read_config(model_dir)
    onnx, export = model_dir / ONNX_FILES["backbone"], config["onnx"]["backbone"]["sha256"]
    dim = config["heads"]["embedding"]["in_dim"]
    out = {name: Encoder(config["encoder"], make_runtime(onnx, name, export), dim)
           for name in candidates(cpu_facts()[1], onnx, export)}
    out["torch"] = load_bundle(model_dir, "torch").encoder
    return out


def ensure_int8(model_dir: Path, data: str) -> dict | None:
    """The bundle's int8 record, quantizing it first when it has none and NNCF is installed (None without NNCF)."""
    from importlib.util import find_spec

    from simengine.model.bundle import ONNX_FILES, read_config
    from simengine.model.quantize import int8_model
    from simengine.model.int8 import quantize_model

    found = int8_model(model_dir / ONNX_FILES["backbone"], read_config(model_dir)["onnx"]["backbone"]["sha256"])
    if found is not None:
        return found[1]
    if find_spec("nncf") is None or find_spec("openvino") is None:
        return None
    return quantize_model(model_dir, data, gate=False)["int8"]  # the gate below judges it beside the others


def throughput_table(runtimes: dict[str, Encoder], chosen: str, paths: list[Path], batch_sizes: list[int]) -> list[dict]:
    """Files to features (JPEG decoding included) per runtime, against the one-image-at-a-time timm baseline and
    against ONNX Runtime fp32 at batch 32 (today's default before the measured choice; its largest batch when 32 is
    not among `batch_sizes`)."""
    rows = [{"runtime": "timm eager, contiguous, 1 image at a time (baseline)", "batch": 1,
             "images_per_s": plain_timm_baseline(runtimes["torch"], paths)}]
    for name, enc in runtimes.items():
        label = ("timm eager, channels_last, inference_mode" if name == "torch" else name) + (
            " (auto's choice)" if name == chosen else "")
        for b in (batch_sizes if name == "onnxruntime" else [32]):
            enc.embed_paths(paths[: 2 * b], batch_size=b)  # warm-up
            runs = [len(paths) / timed(enc.embed_paths, paths, batch_size=b)[0] for _ in range(3)]
            rows.append({"runtime": label, "batch": b, "images_per_s": statistics.median(runs)})
    base = rows[0]["images_per_s"]
    ort32 = max((r for r in rows if r["runtime"].startswith("onnxruntime")), key=lambda r: (r["batch"] == 32, r["batch"]))
    ort32 = ort32["images_per_s"]
    for r in rows:
        r["ms_per_image"] = 1000 / r["images_per_s"]
        r["ratio_vs_baseline"] = r["images_per_s"] / base
        r["ratio_vs_onnxruntime_fp32"] = r["images_per_s"] / ort32
    return rows


def model_only(runtimes: dict[str, Encoder], paths: list[Path], batch: int = 32, runs: int = 5) -> list[dict]:
    """The forward pass alone on one preprocessed batch, per runtime, interleaved so that drift hits all alike."""
    x = np.stack([runtimes["torch"].load_image(p) for p in paths[:batch]])
    times: dict[str, list[float]] = {name: [] for name in runtimes}
    for enc in runtimes.values():
        enc.forward(x)  # warm-up
    for _ in range(runs):
        for name, enc in runtimes.items():
            times[name].append(timed(enc.forward, x)[0])
    ort = batch / statistics.median(times["onnxruntime"])
    return [{"runtime": name, "batch": batch, "images_per_s": batch / statistics.median(t),
             "ratio_vs_onnxruntime_fp32": batch / statistics.median(t) / ort} for name, t in times.items()]


def decode_throughput(encoder: Encoder, paths: list[Path], model_rows: list[dict], files_rows: list[dict]) -> dict:
    """Decoding + preprocessing alone, on one thread and on a pool of one thread per usable core; and for the chosen
    runtime the rate a perfect overlap of decoding and inference would reach on these cores (both share them:
    cores / (cores / model rate + 1 / one-thread decode rate)), against the measured files-to-features rate."""
    from concurrent.futures import ThreadPoolExecutor

    from simengine.model.runtimes import usable_cores

    cores = usable_cores()
    one, _ = timed(lambda: [encoder.load_image(p) for p in paths])
    with ThreadPoolExecutor(cores) as pool:
        pooled, _ = timed(lambda: list(pool.map(encoder.load_image, paths)))
    decode = len(paths) / one
    chosen = next(r for r in files_rows if r["runtime"].endswith("(auto's choice)") and r["batch"] == 32)
    model = next(r for r in model_rows if chosen["runtime"].startswith(r["runtime"] + " "))["images_per_s"]
    bound = cores / (cores / model + 1 / decode)
    return {"cores": cores, "decode_preprocess_1_thread_images_per_s": decode,
            "decode_preprocess_pool_images_per_s": len(paths) / pooled,
            "overlap_bound_images_per_s": bound, "files_to_features_images_per_s": chosen["images_per_s"],
            "share_of_bound": chosen["images_per_s"] / bound}


def percentiles(samples: list[float]) -> dict:
    ms = np.array(samples) * 1000
    return {"p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)),
            "p99_ms": float(np.percentile(ms, 99)), "n": len(ms)}


def warm_queries(engine: Engine, paths: list[Path], n: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    pick = lambda k: [str(paths[i]) for i in rng.choice(len(paths), k, replace=False)]  # noqa: E731
    engine.pair(*pick(2))
    out = {}
    for name, call in (("pair", lambda: engine.pair(*pick(2))), ("triplet", lambda: engine.triplet(*pick(3))),
                       ("knn_k10", lambda: engine.neighbours(pick(1)[0], k=10))):
        out[name] = percentiles([timed(call)[0] for _ in range(n)])
    return out


def cold_cli(index: Path, a: Path, b: Path, runs: int) -> dict:
    """Median wall time of `simengine query a b` in fresh processes, and their peak RSS."""
    exe = Path(sys.executable).with_name("simengine")
    times = []
    for _ in range(runs):
        seconds, proc = timed(subprocess.run, [str(exe), "-q", "query", "--index", str(index), str(a), str(b)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr)
        times.append(seconds)
    # getrusage's maxrss survives fork + exec on Linux, so it would report this (large) process's size;
    # one more query runs in a process that reports its own VmHWM, which exec resets.
    probe = ("import sys\nfrom simengine.cli import cli\ntry:\n    cli(sys.argv[1:], standalone_mode=False)\n"
             "finally:\n    hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0]\n"
             "    print(hwm.split()[1], file=sys.stderr)\n")
    proc = subprocess.run([sys.executable, "-c", probe, "-q", "query", "--index", str(index), str(a), str(b)],
                          capture_output=True, text=True, check=True)
    peak_kb = int(proc.stderr.strip().splitlines()[-1])
    return {"median_s": statistics.median(times), "runs_s": times, "peak_rss_mb": peak_kb / 1024}


def index_build_time(data: str, model_dir: Path, split: str) -> dict:
    """Wall time of `simengine index build` with the index's model and `auto`'s runtime, features already cached
    (warm): a first build fills the cache of that runtime's features (a reduced precision's are kept apart)."""
    from simengine.index.build import build_index

    with tempfile.TemporaryDirectory() as tmp:
        first, _ = timed(build_index, data, model_dir, Path(tmp) / "first", splits=[split])
        seconds, (path, report, _) = timed(build_index, data, model_dir, Path(tmp) / "bench", splits=[split])
        size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return {"split": split, "items": len(report.added), "first_seconds": first, "warm_seconds": seconds,
            "size_mb": size / 2**20}


def cold_build(val: list[Path], model_dir: Path, n: int) -> list[dict]:
    """`index build` of n JPEG files with an empty feature cache, on ONNX Runtime fp32 (the default before the
    measured choice) and on `auto`, interleaved twice. The machine's runtime choice and OpenVINO's compiled-model
    cache are kept: they are made once per machine, not per build."""
    import shutil

    from simengine.files import cache_dir
    from simengine.index.build import build_index

    kept = [cache_dir() / name for name in ("runtimes", "openvino")]
    runs: dict[str, list[float]] = {"onnxruntime": [], "auto": []}
    saved = os.environ.get("SIMENGINE_CACHE")
    try:
        for _ in range(2):
            for runtime in runs:
                with tempfile.TemporaryDirectory() as tmp:
                    listed = Path(tmp) / "images.txt"
                    listed.write_text("".join(f"{p}\n" for p in val[:n]))
                    for folder in kept:
                        if folder.is_dir():
                            shutil.copytree(folder, Path(tmp) / "cache" / folder.name)
                    os.environ["SIMENGINE_CACHE"] = str(Path(tmp) / "cache")
                    seconds, _ = timed(build_index, listed, model_dir, Path(tmp) / "index", runtime=runtime,
                                       labels="none")
                    runs[runtime].append(seconds)
    finally:
        if saved is None:
            os.environ.pop("SIMENGINE_CACHE", None)
        else:
            os.environ["SIMENGINE_CACHE"] = saved
    base = statistics.median(runs["onnxruntime"])
    return [{"runtime": name, "images": min(n, len(val)), "seconds": statistics.median(t),
             "images_per_s": min(n, len(val)) / statistics.median(t), "ratio_vs_onnxruntime": base / statistics.median(t)}
            for name, t in runs.items()]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--index", type=Path, default=Path("indexes/default"))
    parser.add_argument("--images", type=int, default=256, help="val images timed for throughput")
    parser.add_argument("--batch-sizes", default="1,8,32")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--cold-runs", type=int, default=5)
    parser.add_argument("--accuracy-images", type=int, default=0, help="val images for the fast-path accuracy check (0: all)")
    parser.add_argument("--cold-build-images", type=int, default=500, help="JPEG files for the empty-cache index build")
    parser.add_argument("--no-quantize", dest="quantize", action="store_false",
                        help="do not quantize the index's bundle to int8 when it has no int8 model")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--name", default="latency")
    args = parser.parse_args(argv)

    val = scan_split(args.data, "val")
    rng = np.random.default_rng(0)
    sample = [val[i].path for i in rng.choice(len(val), min(args.images, len(val)), replace=False)]
    # The gate first: its verdicts decide what `auto` may choose, and every timed step below runs on that choice.
    gate_engine = Engine.open(args.index, runtime="onnxruntime")
    model_dir = gate_engine.index.model_dir
    result = {"threads": os.cpu_count(), "images": len(sample)}
    result["int8"] = ensure_int8(model_dir, args.data) if args.quantize else None
    runtimes = encoders(model_dir)
    check = val if not args.accuracy_images else [val[i] for i in rng.choice(len(val), args.accuracy_images, replace=False)]
    result["fast_path_accuracy"] = run_gate(gate_engine.model, runtimes, [i.path for i in check],
                                            [i.label for i in check], reference="torch")
    engine = Engine.open(args.index)
    result["auto_chose"] = chosen = engine.model.runtime
    result["runtime_choice"] = engine.model.encoder.runtime_choice
    result["throughput"] = throughput_table(runtimes, chosen, sample, [int(b) for b in args.batch_sizes.split(",")])
    result["model_only"] = model_only(runtimes, sample)
    result["decode"] = decode_throughput(runtimes["onnxruntime"], sample, result["model_only"], result["throughput"])
    best = max(r["images_per_s"] for r in result["model_only"])
    result["achieved_gflops"] = best * LITE0_GFLOPS
    result["index_build"] = index_build_time(args.data, engine.index.model_dir, "train")
    result["cold_build"] = cold_build([i.path for i in val], engine.index.model_dir, args.cold_build_images)
    result["warm_queries"] = warm_queries(engine, [i.path for i in val], args.queries)
    result["cold_cli_pair"] = cold_cli(args.index, val[0].path, val[1].path, args.cold_runs)
    write(args.name, result, markdown(result), args.out)
    return result


def markdown(r: dict) -> str:
    t = table(["runtime", "batch", "images/s", "ms/image", "× baseline", "× onnxruntime fp32 b32"],
              [[x["runtime"], x["batch"], x["images_per_s"], x["ms_per_image"], x["ratio_vs_baseline"],
                x["ratio_vs_onnxruntime_fp32"]] for x in r["throughput"]])
    m = table(["runtime", "batch", "images/s", "× onnxruntime fp32"],
              [[x["runtime"], x["batch"], x["images_per_s"], x["ratio_vs_onnxruntime_fp32"]] for x in r["model_only"]])
    d = r["decode"]
    acc = table(["runtime", "P@1", "MAP@R", "P@1 in fp32 index", "MAP@R in fp32 index", "pair acc (10k)",
                 "triplet acc (10k)", "largest difference", "within 0.002"],
                [[x["runtime"], x["precision_at_1"], x["map_at_r"], x["precision_at_1_in_fp32_index"],
                  x["map_at_r_in_fp32_index"], x["pair_accuracy"], x["triplet_accuracy"], x["largest_difference"],
                  x["passes_gate"]] for x in r["fast_path_accuracy"]])
    i8 = r.get("int8")
    int8 = (f"int8 model (`simengine quantize`, NNCF {i8['nncf']}, preset {i8['preset']}): calibrated on "
            f"{i8['calibration_images']} train images; kept in float: {', '.join(i8['kept_in_float'])}.\n\n"
            if i8 else "No int8 model (NNCF not installed, or --no-quantize).\n\n")
    q = table(["question", "p50 ms", "p95 ms", "p99 ms", "n"],
              [[k, v["p50_ms"], v["p95_ms"], v["p99_ms"], v["n"]] for k, v in r["warm_queries"].items()])
    c, b = r["cold_cli_pair"], r["index_build"]
    cold = table(["runtime", "images", "seconds", "images/s", "× onnxruntime fp32"],
                 [[x["runtime"], x["images"], x["seconds"], x["images_per_s"], x["ratio_vs_onnxruntime"]]
                  for x in r["cold_build"]])
    return (f"# Latency and throughput\n\n## Embedding throughput (JPEG decoding included, {r['images']} val images, "
            f"{r['threads']} cores; median of 3; `--runtime auto` chose {r['auto_chose']})\n\n{t}\n\n"
            f"## Model alone (one preprocessed batch, median of 5, runtimes interleaved)\n\n{m}\n\n"
            f"Decoding + preprocessing alone: "
            f"{d['decode_preprocess_1_thread_images_per_s']:.0f} images/s on 1 thread, "
            f"{d['decode_preprocess_pool_images_per_s']:.0f} on a pool of {d['cores']} (one per usable core). "
            f"Decoding and inference share the {d['cores']} cores: a perfect overlap would give "
            f"{d['overlap_bound_images_per_s']:.0f} images/s from files with {r['auto_chose']}; measured "
            f"{d['files_to_features_images_per_s']:.0f} ({100 * d['share_of_bound']:.0f} %). "
            f"Best rate × {LITE0_GFLOPS} GFLOP/image = "
            f"{r['achieved_gflops']:.0f} GFLOP/s achieved (best model-only rate).\n\n"
            f"## Accuracy gate: each runtime vs fp32 torch eager\n\nAll {r['fast_path_accuracy'][0]['images']} val "
            f"images, each the query once: P@1 and MAP@R among the others embedded by the same runtime, and among "
            f"the fp32 embeddings (an fp32 index queried on the runtime); pair and triplet accuracy at the bundle's "
            f"thresholds on 10,000 balanced sets.\n\n{int8}{acc}\n\n## Index build\n\nFrom JPEG files with an empty feature cache (the runtime choice made once "
            f"per machine kept; median of 2, interleaved):\n\n{cold}\n\n"
            f"{b['items']} items ({b['split']}), features cached: {b['warm_seconds']:.1f} s (the first build, which "
            f"filled the cache of {r['auto_chose']}'s features, took {b['first_seconds']:.1f} s), "
            f"{b['size_mb']:.1f} MB on disk (model bundle included).\n\n## Warm queries (Python API)\n\n{q}\n\n"
            f"## Cold CLI\n\n`simengine query a.jpg b.jpg`: median {c['median_s']:.2f} s over {len(c['runs_s'])} runs; "
            f"peak RSS {c['peak_rss_mb']:.0f} MB.\n")


if __name__ == "__main__":
    main()
