"""Does the backbone's input (size, crop fraction) or its pooling (average, GeM p=3, max) move accuracy?

Each variant embeds train and val once through an ONNX export that returns all three poolings, then trains the
default heads on each pooling and scores them like benchmarks/accuracy.py (same holdout, same draws).

    python benchmarks/input_ablation.py --data ../shared/data/imagenette2-160
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from accuracy import protocol_parser, score_row  # noqa: E402
from common import table, write  # noqa: E402

from simengine.data.folders import scan_split  # noqa: E402
from simengine.model.encoder import Encoder  # noqa: E402
from simengine.model.runtimes import OnnxRuntime, export_onnx  # noqa: E402
from simengine.model.heads import embed_numpy, pair_logits  # noqa: E402
from simengine.training.fit import (  # noqa: E402
    TrainOptions, split_holdout, train_embedding_head, train_pair_head,
)

POOLINGS = ("avg", "gem", "max")


def pooled_backbone(model):
    """The backbone's feature map pooled three ways, concatenated: [average, GeM (p=3), max]."""
    import torch

    class Pooled(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, x):
            fmap = self.model.forward_features(x)
            gem = fmap.clamp(min=1e-6).pow(3).mean((2, 3)).pow(1 / 3)
            return torch.cat([fmap.mean((2, 3)), gem, fmap.amax((2, 3))], 1)

    return Pooled()


def variant_encoder(base: Encoder, size: int, crop_pct: float, folder: Path) -> Encoder:
    """`base` with another input size and crop fraction, running a pooled export of its backbone."""
    data_config = dict(base.identity["data_config"], input_size=[3, size, size], crop_pct=crop_pct)
    path = folder / f"{base.name}-{size}.onnx"
    export_onnx(pooled_backbone(base.torch_model), path, (3, size, size))
    return Encoder(dict(base.identity, data_config=data_config), OnnxRuntime(path), 3 * base.dim)


def embed(encoder: Encoder, items) -> tuple[np.ndarray, np.ndarray]:
    result = encoder.embed_paths([i.path for i in items], progress=True)
    return result.vectors, np.array([items[i].label for i in result.ok])


def main(argv=None) -> dict:
    parser = protocol_parser(__doc__, "input_ablation")
    parser.add_argument("--variants", nargs="+", default=["224:0.875", "224:1.0", "256:1.0", "288:1.0"],
                        help="SIZE:CROP_PCT pairs (timm's default for Lite0 is 224:0.875)")
    args = parser.parse_args(argv)

    started = time.time()
    base = Encoder.load(args.backbone, runtime="torch")
    train_items, val_items = scan_split(args.data, "train"), scan_split(args.data, "val")
    opts = TrainOptions(steps=args.steps, pair_steps=args.steps, seed=args.seed)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for variant in args.variants:
            size, crop_pct = variant.split(":")
            size, crop_pct = int(size), float(crop_pct)
            encoder = variant_encoder(base, size, crop_pct, Path(tmp))
            t = time.time()
            x_train, y_train = embed(encoder, train_items)
            x_val, y_val = embed(encoder, val_items)
            rate = (len(x_train) + len(x_val)) / (time.time() - t)
            fit, hold = split_holdout(y_train, opts.holdout, args.seed)
            for k, pooling in enumerate(POOLINGS):
                xt, xv = (x[:, k * base.dim:(k + 1) * base.dim] for x in (x_train, x_val))
                head, _ = train_embedding_head(xt[fit], y_train[fit], xt[hold], y_train[hold], opts)
                et, ev = embed_numpy(head, xt), embed_numpy(head, xv)
                pair_head, _ = train_pair_head(et[fit], y_train[fit], et[hold], y_train[hold], opts)
                logits = lambda a, b, h=pair_head: pair_logits(h, a, b)  # noqa: E731
                row, _, _ = score_row(f"{size}px, crop {crop_pct}, {pooling}", "default", et, y_train, hold, ev,
                                      list(y_val), logits, args)
                rows.append(row | {"size": size, "crop_pct": crop_pct, "pooling": pooling,
                                   "images_per_second": round(rate, 1)})
    result = {"dataset": str(Path(args.data).resolve()), "backbone": base.identity["backbone"],
              "weights": base.identity["weights_source"], "n_large": args.n_large, "draws": args.draws, "rows": rows,
              "seconds": round(time.time() - started, 1)}
    write(args.name, result, markdown(result), args.out)
    return result


def markdown(r: dict) -> str:
    rows = [[x["size"], str(x["crop_pct"]), x["pooling"], x["mode"], x["precision_at_1"], x["map_at_r"],
             x["large_pair_accuracy"], min(x["large_pair_draws"]), x["large_triplet_accuracy"],
             f"{x['images_per_second']:.0f}"]
            for x in r["rows"]]
    return (f"# Input size, crop and pooling: {r['backbone']} ({r['weights']})\n\n"
            f"Default heads (batch-hard triplet embedding, BCE pair head) trained on each variant's features; val "
            f"queries against the train gallery; pair and triplet accuracy are means over {r['draws']} balanced draws "
            f"of {r['n_large']} from val under the rule chosen on the train holdout. Embedding rate includes "
            f"decoding and all three poolings.\n\n"
            + table(["size", "crop", "pooling", "rule", "P@1", "MAP@R", "pair acc (mean)", "pair acc (worst draw)",
                     "triplet acc (mean)", "img/s"], rows)
            + f"\n\nWhole run: {r['seconds']} s.\n")


if __name__ == "__main__":
    main()
