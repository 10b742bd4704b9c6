"""The `simengine` command line: a thin shell over the library (heavy modules are imported per command)."""

from __future__ import annotations

import functools
import json
import logging
import os
import signal
import sys
from pathlib import Path

import click

from simengine.curation import LABEL_NEIGHBOURS, OUTLIER_NEIGHBOURS
from simengine.dedup.groups import COPY_KINDS, KEEP_RULES
from simengine.files import check_output_folders
from simengine.model.quantize import CALIBRATION_IMAGES, MIN_CALIBRATION_IMAGES

log = logging.getLogger("simengine")


GLOBAL_FLAGS = ("-q", "--quiet", "-v", "--verbose", "--debug", "--progress", "--no-progress")


class _Group(click.Group):
    """Turns library errors into one line and exit code 1; --debug shows the traceback. The root group also takes
    its flags after the command (`simengine index build photos -q`), as people type them."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if ctx.parent is None:
            args = _global_flags_first(self, args)
        return super().parse_args(ctx, args)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
        except BrokenPipeError:
            _quiet_after_broken_pipe()
        except Exception as exc:
            if ctx.find_root().params.get("debug"):
                raise
            from simengine.errors import SimengineError

            prefix = "error" if isinstance(exc, SimengineError) else f"error ({type(exc).__name__})"
            click.echo(f"{prefix}: {one_line(str(exc))}", err=True)
            sys.exit(1)


def _global_flags_first(root: click.Group, args: list[str]) -> list[str]:
    """`args` with the root's flags moved in front of the command, wherever they were typed: never one that is the
    value of the command's own option (`--where -q`), nor anything after `--`."""
    command: click.Command = root
    words = 0
    while isinstance(command, click.Group) and words < len(args) and args[words] in command.commands:
        command, words = command.commands[args[words]], words + 1
    takes_value = {opt for p in command.params if isinstance(p, click.Option) and not p.is_flag and not p.count
                   for opt in p.opts}
    front, rest = [], []
    for n, arg in enumerate(args):
        if arg == "--":
            rest += args[n:]
            break
        if n >= words and arg in GLOBAL_FLAGS and not (rest and rest[-1] in takes_value):
            front.append(arg)
        else:
            rest.append(arg)
    return front + rest


def one_line(text: str) -> str:
    """`text` with control characters escaped, so that a hostile file name cannot break a message into lines."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _quiet_after_broken_pipe() -> None:
    """The reader of our output went away (`| head`): stop quietly, as Unix tools do (SIGPIPE's exit status), and
    keep Python from complaining again when it flushes stdout at exit."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    sys.exit(128 + signal.SIGPIPE)


def _setup_logging(quiet: bool, verbose: bool) -> None:
    level = logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    logging.getLogger("simengine").setLevel(level)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors; no progress bars.")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
@click.option("--progress/--no-progress", default=None,
              help="Progress bars on long work (default: only when stderr is a terminal, never in logs or pipes).")
@click.version_option(package_name="simengine")
@click.pass_context
def cli(ctx, debug, quiet, verbose, progress):
    """Image similarity engine.

    Train an embedding (triplet loss) and a pair verifier (BCE) on an ImageFolder dataset,
    index a collection in FAISS + SQLite with calibrated thresholds, and ask:
    are two images the same class, do two of three share a class, what are an image's neighbours.
    """
    _setup_logging(quiet, verbose)
    ctx.obj = {"progress": (not quiet and sys.stderr.isatty()) if progress is None else progress}


def _progress(ctx) -> bool:
    return ctx.find_root().obj["progress"]


_json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")
NEIGHBOURS_SHOWN = 5  # `query IMAGE` and `search IMAGE` without -k


def _echo_json(obj) -> None:
    click.echo(json.dumps(obj, indent=2, default=str))


# --- data ----------------------------------------------------------------------------------------------------------

@cli.group()
def data():
    """Get the reference dataset and draw evaluation sets."""


@data.command("fetch")
@click.argument("name", type=click.Choice(["imagenette"]))
@click.option("--dest", default="data", show_default=True, type=click.Path(file_okay=False), help="Where to unpack.")
@_json_option
def data_fetch(name, dest, as_json):
    """Download fast.ai's imagenette2-160 and check it (fails at once when offline)."""
    from simengine.data.imagenette import fetch_imagenette

    where = fetch_imagenette(dest)
    _echo_json({"dataset": name, "path": str(where)}) if as_json else click.echo(f"imagenette at {where}")


@data.command("sample")
@click.argument("kind", type=click.Choice(["pairs", "triplets", "train-triplets"]))
@click.option("--data", "data_dir", type=click.Path(), help="ImageFolder root (default: $SIMENGINE_DATA or ./data/imagenette2-160).")
@click.option("--split", default="val", show_default=True)
@click.option("--n", type=int, default=None, help="How many rows (default: the reference's 320 test / 1280 train).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="CSV file to write.")
@_json_option
def data_sample(kind, data_dir, split, n, seed, out, as_json):
    """Write a balanced, seeded pairs or triplets CSV (img1,img2[,img3],label)."""
    from simengine.data.evalsets import sample_split_to_csv
    from simengine.data.imagenette import resolve_data_dir

    rows = sample_split_to_csv(resolve_data_dir(data_dir), split, kind, out, n, seed)
    _echo_json({"kind": kind, "rows": rows, "out": str(out)}) if as_json else click.echo(f"wrote {rows} {kind} to {out}")


# --- train ---------------------------------------------------------------------------------------------------------

_runtime_option = click.option(
    "--runtime", type=click.Choice(["auto", "onnxruntime", "openvino", "openvino-bf16", "openvino-int8", "torch"]),
    default="auto", show_default=True,
    help="Inference runtime for embedding (auto: the fastest measured on this machine, within tolerance of fp32; "
         "bf16 and int8 only once the accuracy gate passed them here; int8 needs `simengine quantize`).")


def _training_options(f):
    options = [
        click.option("--backbone", default=None, help="timm model name (default: efficientnet_b0 if its weights are reachable, else tf_efficientnet_lite0)."),
        click.option("--weights", type=click.Path(exists=True, dir_okay=False), help="Backbone checkpoint file (.pth/.safetensors)."),
        click.option("--mining", type=click.Choice(["random", "semihard", "batch-hard"]), default="batch-hard", show_default=True, help="Triplet mining strategy."),
        click.option("--margin", type=float, default=0.2, show_default=True, help="Triplet margin."),
        click.option("--dim", type=int, default=256, show_default=True, help="Embedding dimension."),
        click.option("--hidden", type=int, default=0, show_default=True, help="Hidden width of an MLP embedding head (0: linear)."),
        click.option("--steps", type=int, default=1500, show_default=True, help="Maximum training steps per head (early stopping on holdout)."),
        click.option("--lr", type=float, default=1e-3, show_default=True),
        click.option("--flip/--no-flip", default=False, show_default=True, help="Average features over the image and its mirror."),
        click.option("--posteriors", "head_weight", type=click.FloatRange(0, 1, min_open=True), default=None,
                     metavar="SHARE", help="Join the backbone's ImageNet class posteriors to the embedding, the trained "
                     "projection keeping SHARE of the cosine (e.g. 0.7): better on classes far from the training "
                     "ones, 1000 more dimensions (benchmarks/results/unseen_classes.md)."),
        click.option("--seed", type=int, default=0, show_default=True),
        click.option("--int8/--no-int8", default=True, show_default=True,
                     help="Also make an int8 model of the backbone (NNCF) and gate it on val, when nncf and openvino "
                          "are installed; `--runtime auto` then runs it where it passes and is fastest."),
        click.option("--finetune/--frozen", default=None,
                     help="Adapt the backbone's last blocks to the images first (minutes on a CPU: the early blocks' "
                          "activations are cached), or keep it frozen. Default: adapt where the frozen features tell "
                          "the classes apart poorly (holdout precision@1 below 0.93, at least 300 images)."),
        click.option("--finetune-blocks", type=int, default=8, show_default=True,
                     help="Blocks of the backbone that adapt, counted from its end (-1: all)."),
        click.option("--finetune-epochs", type=int, default=12, show_default=True,
                     help="At most this many epochs (early stopping on the holdout ends most runs sooner)."),
        _runtime_option,
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _train_options(mining, margin, dim, hidden, steps, lr, flip, head_weight, seed, int8, finetune, finetune_blocks,
                   finetune_epochs):
    from simengine.training.finetune import FinetuneOptions
    from simengine.training.fit import TrainOptions

    posteriors = {} if head_weight is None else {"posteriors": True, "head_weight": head_weight}
    opts = TrainOptions(mining=mining, margin=margin, dim=dim, hidden=hidden, steps=steps, pair_steps=steps, lr=lr,
                        flip=flip, seed=seed, int8=int8, finetune=finetune, **posteriors)
    return opts, FinetuneOptions(blocks=finetune_blocks, epochs=finetune_epochs, seed=seed)


def _print_val_metrics(bundle: Path) -> None:
    metrics = json.loads((bundle / "metrics.json").read_text()).get("val")
    if not metrics:
        click.echo("no val split: nothing evaluated")
        return
    click.echo(f"val: precision@1 {metrics['precision_at_1']:.4f}  MAP@R {metrics['map_at_r']:.4f}  "
               f"kNN {metrics['knn10_accuracy']:.4f}")
    for mode, m in metrics["decisions"].items():
        mark = "  (default)" if mode == metrics["default_mode"] else ""
        click.echo(f"  {mode:8s} pair accuracy {m['pair_accuracy']:.4f}  triplet accuracy {m['triplet_accuracy']:.4f}{mark}")


@cli.command()
@click.option("--data", "data_dir", type=click.Path(), help="ImageFolder root with train/ (and val/ for evaluation).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Bundle directory to write.")
@_training_options
@_json_option
@click.pass_context
def train(ctx, data_dir, out, backbone, weights, runtime, as_json, **kwargs):
    """Train the triplet embedding head and the BCE pair head; write a model bundle and report val metrics."""
    from simengine.data.imagenette import resolve_data_dir
    from simengine.training.pipeline import train_model

    opts, finetune = _train_options(**kwargs)
    bundle = train_model(resolve_data_dir(data_dir), out, opts, backbone, weights, finetune, runtime, _progress(ctx))
    if as_json:
        _echo_json({"bundle": str(bundle), "val": json.loads((bundle / "metrics.json").read_text()).get("val")})
        return
    click.echo(f"bundle: {bundle}")
    _print_val_metrics(bundle)


# --- index ---------------------------------------------------------------------------------------------------------

_index_option = click.option("--index", "index_dir", type=click.Path(), default=None,
                             help="Index directory (default: indexes/default, or the only index under indexes/).")


@cli.group()
def index():
    """Build and maintain indexes (FAISS vectors, SQLite metadata, calibrated thresholds)."""


def _source_options(recorded: bool = False):
    """--labels and --path-column; for `sync` (recorded=True) they default to what the build recorded."""
    default = " [default: as the index was built, else {}]" if recorded else " [default: {}]"

    def decorate(f):
        f = click.option("--label-column", default=None, metavar="COLUMN",
                         help="The column of a CSV/parquet table that holds labels (say, a noisy-label CSV's "
                              "noisy_labels_5)." + default.format("label"))(f)
        f = click.option("--path-column", default=None if recorded else "path",
                         help="The column of a CSV/parquet table that holds image paths (relative ones start at the "
                              "table's folder)." + default.format("path"))(f)
        return click.option("--labels", type=click.Choice(["auto", "folders", "table", "none"]),
                            default=None if recorded else "auto",
                            help="Where classes come from: auto (a table's label column, an ImageFolder's class "
                                 "folders, else none), folders (each file's folder name), table (the label column), "
                                 "none." + default.format("auto"))(f)
    return decorate


@index.command("build")
@click.argument("source", required=False, type=click.Path())
@click.option("--data", "data_dir", type=click.Path(), help="An ImageFolder dataset to train a model on (unless --model) and index; with neither SOURCE nor --data: $SIMENGINE_DATA or ./data/imagenette2-160.")
@click.option("--split", default="train", show_default=True, help="Split(s) of an ImageFolder dataset to index, comma-separated (e.g. train,val).")
@_source_options()
@click.option("--model", "model_dir", metavar="DIR|builtin", help="Model bundle, or `builtin` (default: indexes/default-model "
              "when one was trained there, else the built-in model; with --data and no --model, one is trained first).")
@click.option("--name", default=None, help="Index name under indexes/ (default: default).")
@click.option("--index", "--out", "out", type=click.Path(), default=None,
              help="Index path (instead of --name); --out is the same option.")
@click.option("--index-type", type=click.Choice(["auto", "flat", "hnsw", "ivf", "ivf_sq8", "ivf_pq"]), default="auto",
              show_default=True, help="auto: Flat below 100k vectors, HNSW above; with --max-index-memory, the most "
                                      "exact type that fits (Flat, HNSW, IVF-Flat, IVF-SQ8, IVF-PQ).")
@click.option("--from-embeddings", "embeddings", type=click.Path(exists=True, file_okay=False),
              help="Index the vectors of a `simengine embed` folder (with its --model) instead of embedding images, "
                   "reading one shard at a time.")
@click.option("--max-index-memory", default=None, help="With --from-embeddings: the index's RAM budget (e.g. 4G); "
                                                        "the index type is chosen to fit it.")
@click.option("--segments", type=click.IntRange(1), default=1, show_default=True,
              help="With --from-embeddings and a trained (IVF) type: keep the index as this many segments.")
@click.option("--ray", "ray_address", is_flag=False, flag_value="local", default=None,
              help="With --from-embeddings: fill the index in parallel Ray tasks (`--ray` alone: a local Ray on "
                   "127.0.0.1; `--ray ADDRESS`: a cluster whose nodes see the same files).")
@click.option("--workers", type=click.IntRange(1), help="With --ray: parallel tasks (default and most: the CPUs).")
@click.option("--target-far", type=float, default=None, help="Calibrate for this false-accept rate instead of best accuracy.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@_training_options
@click.pass_context
def index_build(ctx, source, data_dir, split, labels, path_column, label_column, model_dir, name, out, index_type, embeddings,
                max_index_memory, segments, ray_address, workers, target_far, as_json, backbone, weights, runtime,
                **train_kwargs):
    """Embed a collection into an index: a new one, or the next version of an existing one (new ids, old items
    removed; readers and servers move over without a restart).

    \b
    SOURCE is indexed with --model, else indexes/default-model where one was trained, else the built-in model (no
    training); --data DATASET trains a model on an ImageFolder dataset first. SOURCE is one of:
      an ImageFolder dataset   root/train/<class>/*.jpg (labels from the class folders; --split picks splits)
      any folder               searched recursively for images; hidden files skipped; unlabelled unless --labels folders
      a text file              one image path per line
      a CSV/TSV/parquet table  a path column, an optional label column, other columns kept as metadata (for --where)
    """
    from simengine.data.imagenette import resolve_data_dir
    from simengine.data.sources import is_image_folder
    from simengine.index.build import build_index
    from simengine.store.index_choice import parse_memory
    from simengine.store.layout import DEFAULT_ROOT

    if name and out:
        raise click.UsageError("give --name or --out, not both")
    if source and data_dir:
        raise click.UsageError("give SOURCE or --data, not both")
    out = Path(out) if out else DEFAULT_ROOT / (name or "default")
    if embeddings:
        if source or data_dir:
            raise click.UsageError("give SOURCE (images) or --from-embeddings, not both")
        if not model_dir:
            raise click.UsageError("--from-embeddings needs --model: the bundle that embedded the folder")
        if workers and ray_address is None:
            raise click.UsageError("--workers needs --ray")
        from simengine.index.target import check_target
        from simengine.shards.layout import read_plan

        check_target(out, index_type)
        read_plan(Path(embeddings))  # a folder that is not one is refused here, in one line, not scanned for images
    elif max_index_memory or segments != 1 or ray_address or workers:
        raise click.UsageError("--max-index-memory, --segments, --ray and --workers go with --from-embeddings")
    train = not (model_dir or embeddings or source)  # --data (or nothing: the demo dataset) trains a model first
    train_options, finetune = _train_options(**train_kwargs) if train else (None, None)
    built = build_index(
        embeddings or source or resolve_data_dir(data_dir), model_dir, out, splits=[s.strip() for s in split.split(",")],
        labels=labels, path_column=path_column, label_column=label_column, index_type=index_type,
        target_far=target_far, runtime=runtime, train=train, train_options=train_options, finetune_options=finetune, backbone=backbone, weights=weights,
        max_index_memory=parse_memory(max_index_memory) if max_index_memory else None, segments=segments,
        use_ray=ray_address is not None, ray_address=None if ray_address in (None, "local") else ray_address,
        workers=workers, progress=_progress(ctx))
    report = built.report
    if embeddings:
        if as_json:
            _echo_json(report.to_dict())
            return
        tuned = f", nprobe {report.nprobe} (recall@10 {report.sample_recall:.3f} on a sample)" if report.nprobe else ""
        click.echo(f"index {report.index}: {report.items} items, {report.factory} in {report.segments} segment(s), "
                   f"~{report.estimated_bytes / 2**30:.2f} GiB{tuned}, {report.seconds['total']:.0f} s")
        return
    if as_json:
        _echo_json(built.to_dict())
        return
    if train:
        _print_val_metrics(built.model)
    elif source and not model_dir and is_image_folder(Path(source)):
        click.echo(f"{source} is a labelled dataset, indexed with the default model: to train a model for its "
                   f"classes, run `simengine index build --data {source}`", err=True)
    for _, reason in report.failed:
        click.echo(f"skipped: {one_line(reason)}", err=True)
    click.echo(f"index {built.index}: {len(report.added)} items, {len(report.duplicates)} duplicates skipped, "
               f"{len(report.failed)} failed")


_wait_option = click.option("--wait", "wait_s", type=float, default=60, show_default=True,
                            help="Seconds to wait for another writer of the same index before giving up.")


@index.command("add")
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--label", default=None, help="Label for the new images (default: each file's folder name where the "
              "index's labels are folder names, else none).")
@_json_option
@_index_option
@_wait_option
@click.pass_context
def index_add(ctx, paths, label, as_json, index_dir, wait_s):
    """Embed images (files, or folders: every image under them) and add them as one new version (duplicates by
    content are skipped, bad files reported)."""
    from simengine.store.layout import resolve_index_dir
    from simengine.index.update import add_images

    report = add_images(resolve_index_dir(index_dir), paths, label=label, progress=_progress(ctx), timeout_s=wait_s)
    if as_json:
        _echo_json(report.to_dict())
    else:
        for path, existing in report.duplicates:
            click.echo(f"duplicate skipped: {one_line(path)}" + (f" (same as id {existing})" if existing >= 0 else ""),
                       err=True)
        for path, reason in report.failed:
            click.echo(f"failed: {one_line(reason)}", err=True)
        click.echo(f"added {len(report.added)}" + (f" (ids {report.added[0]}..{report.added[-1]})" if report.added else ""))
    if report.failed and not report.added:
        sys.exit(1)


@index.command("remove")
@click.argument("refs", nargs=-1, required=True)
@_index_option
@_wait_option
@_json_option
def index_remove(refs, index_dir, wait_s, as_json):
    """Remove items by id or path as one new version; their ids are never reused."""
    from simengine.store.layout import resolve_index_dir
    from simengine.index.update import remove_items

    ids = remove_items(resolve_index_dir(index_dir), refs, timeout_s=wait_s)
    _echo_json({"removed": ids}) if as_json else click.echo(f"removed {len(ids)}: ids {', '.join(map(str, ids))}")


@index.command("sync")
@click.argument("source", required=False, type=click.Path())
@_source_options(recorded=True)
@click.option("--dry-run", is_flag=True, help="Print what would change, before embedding: copies of indexed images "
              "are duplicates, files that failed at the last sync with the same content fail again, other unreadable "
              "files show up only in a real run; write nothing.")
@click.option("--force", is_flag=True, help="Allow removing more than half of the index.")
@click.option("--prune", is_flag=True, help="Also remove items from outside the source folder (added with `index "
              "add`); they are kept and reported otherwise.")
@_json_option
@_index_option
@_wait_option
@click.pass_context
def index_sync(ctx, source, labels, path_column, label_column, dry_run, force, prune, as_json, index_dir, wait_s):
    """Make the index equal to SOURCE (default: the source it was built from, read the same way): add new files,
    re-embed changed ones (content, label or metadata), remove those that are gone; one new version, none if
    nothing changed. Safe from cron: it waits for other writers (--wait), refuses to remove more than half of the
    index without --force (a missing disk looks like an empty folder), and exits 1 on failure."""
    from simengine.store.layout import resolve_index_dir
    from simengine.index.sync import sync_index

    report = sync_index(resolve_index_dir(index_dir), source, labels, path_column, dry_run, progress=_progress(ctx),
                        timeout_s=wait_s, force=force, prune=prune, label_column=label_column)
    if as_json:
        _echo_json(report.to_dict())
        return
    told = set(report.as_before)
    for path, reason in report.failed:
        if path not in told:
            click.echo(f"failed: {one_line(reason)}", err=True)
    for path, existing in report.duplicates:
        if path not in told:
            click.echo(f"duplicate skipped: {one_line(path)}" + (f" (same as id {existing})" if existing >= 0 else ""),
                       err=True)
    if told:
        click.echo(f"skipped as at the last sync: {len(told)} files (unreadable, or copies of indexed images; "
                   "--json lists them)", err=True)
    verb = "would " if dry_run else ""
    for entry in report.added:
        click.echo(f"{verb}add: {one_line(entry['path'])}")
    for entry in report.changed:
        lost = not dry_run and entry["new_id"] is None
        click.echo(f"{'removed, new content not indexed' if lost else verb + 're-embed'}: {one_line(entry['path'])}")
    for entry in report.removed:
        click.echo(f"{verb}remove: {one_line(entry['path'])}")
    if report.kept_outside:
        click.echo(f"kept {len(report.kept_outside)} items from outside {one_line(report.source)} (the first: "
                   f"{one_line(report.kept_outside[0]['path'])}); --prune removes them", err=True)
    where = "nothing written (dry run)" if dry_run else f"version {report.version}" if report.version else "no change"
    click.echo(f"sync {report.source}: {len(report.added)} added, {len(report.changed)} changed, "
               f"{len(report.removed)} removed, {report.unchanged} unchanged, {len(report.duplicates)} duplicates, "
               f"{len(report.failed)} failed; {where}")


def _index_argument(f):
    """INDEX as a positional argument too (`index info indexes/photos`), where a command takes nothing else."""
    f = click.argument("index_path", required=False, type=click.Path(), metavar="[INDEX]")(f)

    def either(*args, index_path=None, index_dir=None, **kwargs):
        if index_path is not None and index_dir is not None and index_path != index_dir:
            raise click.UsageError("give the index once: INDEX or --index")
        return f(*args, index_dir=index_path or index_dir, **kwargs)
    return functools.update_wrapper(either, f)


@index.command("info")
@_index_argument
@_index_option
@_json_option
def index_info(index_dir, as_json):
    """Version, counts, classes, backbone, thresholds, segments and size on disk."""
    from simengine.index.reader import Index
    from simengine.store.layout import resolve_index_dir

    from simengine.model.bundle import ONNX_FILES, read_config
    from simengine.model.runtime_choice import describe_choice, recorded_choice

    index = Index(resolve_index_dir(index_dir))
    info = index.info()
    export = (read_config(index.model_dir).get("onnx") or {}).get("backbone", {}).get("sha256")
    choice = recorded_choice(index.model_dir / ONNX_FILES["backbone"], export) if export else None
    info["runtime"] = (describe_choice(choice) if choice else
                       "not measured on this machine yet (the first use with --runtime auto measures)")
    if as_json:
        _echo_json(dict(info, runtime_choice=choice))
        return
    for key, value in info.items():
        if key == "classes":
            value = ", ".join(f"{c if c else '(none)'} {n}" for c, n in value.items())
        click.echo(f"{key:24s} {value}")


@index.command("verify")
@_index_argument
@_index_option
@_json_option
def index_verify(index_dir, as_json):
    """Check segment hashes, FAISS ids against SQLite rows and the model, without writing; exit 1 on a problem."""
    from simengine.store.layout import resolve_index_dir
    from simengine.index.verify import verify_index

    path = resolve_index_dir(index_dir)
    problems = verify_index(path)
    if as_json:
        _echo_json({"index": str(path), "ok": not problems, "problems": problems})
    else:
        for p in problems:
            click.echo(f"problem: {p}", err=True)
        if not problems:
            click.echo(f"ok: {path} is consistent (segments, ids, rows, model and exports match)")
    if problems:
        sys.exit(1)


@index.command("calibrate")
@_index_option
@_wait_option
@click.option("--pairs", "pairs_csv", type=click.Path(), default=None,
              help="Labelled pairs to calibrate on: a CSV of img1,img2,label (1: same class, 0: not); images are paths "
                   "relative to the CSV or id:N. 50 pairs come within about 0.02 of full-label thresholds.")
@click.option("--labels", "labels_csv", type=click.Path(), default=None,
              help="Labelled images to calibrate on: a CSV of image,label (any class names); their pairs and triplets "
                   "join --pairs.")
@click.option("--target-far", type=float, default=None, help="Largest threshold with at most this false-accept rate.")
@_json_option
@click.pass_context
def index_calibrate(ctx, index_dir, wait_s, pairs_csv, labels_csv, target_far, as_json):
    """Calibrate the thresholds again, as one new version: on the index's held-out labelled items, or, with --pairs
    and/or --labels, on a few labelled examples (each threshold then with its 95 % bootstrap interval). Thresholds
    are shown as `query` shows them: the distance rule as a largest distance (1 - cosine), the others as a smallest
    score."""
    from simengine.store.layout import resolve_index_dir
    from simengine.index.update import calibrate_with_examples, recalibrate_index

    path = resolve_index_dir(index_dir)
    skipped = []
    if pairs_csv or labels_csv:
        done = calibrate_with_examples(path, pairs_csv, labels_csv, target_far, progress=_progress(ctx),
                                       timeout_s=wait_s)
        cal, skipped = done.calibration, done.skipped
    else:
        cal = recalibrate_index(path, target_far, timeout_s=wait_s)
    if as_json:
        _echo_json(dict(cal.to_dict(), skipped=skipped))
        return
    for line in skipped:
        click.echo(f"skipped {line}", err=True)
    for mode in cal.pair:
        click.echo(f"{mode:8s} pair: {_threshold_text(mode, cal.pair[mode].value, cal.pair[mode].interval)} "
                   f"(cv accuracy {_maybe(cal.pair[mode].cv_accuracy)})  triplet: "
                   f"{_threshold_text(mode, cal.triplet[mode].value, cal.triplet[mode].interval)}")
    click.echo(f"default decision: {cal.default} ({cal.source})")


def _maybe(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _threshold_text(mode: str, value: float, interval: tuple[float, float] | None = None) -> str:
    """A calibrated threshold in the words `query` uses: the distance rule's cosine as a distance; with its interval."""
    if mode == "distance":
        text = f"distance <= {1 - value:.4f}"
        return text + (f" [95 % {1 - interval[1]:.4f}-{1 - interval[0]:.4f}]" if interval else "")
    return f"score >= {value:.4f}" + (f" [95 % {interval[0]:.4f}-{interval[1]:.4f}]" if interval else "")


@index.command("compact")
@_index_option
@_wait_option
@_json_option
def index_compact(index_dir, wait_s, as_json):
    """Merge all segments into one without removed vectors (cost: the whole collection; queries go on meanwhile)."""
    from simengine.store.layout import resolve_index_dir
    from simengine.index.update import compact_index

    manifest = compact_index(resolve_index_dir(index_dir), timeout_s=wait_s)
    if as_json:
        _echo_json({"version": manifest["version"], "items": manifest["counts"]["items"],
                    "segments": [s["type"] for s in manifest["segments"]]})
        return
    click.echo(f"version {manifest['version']}: {manifest['counts']['items']} items in "
               f"{len(manifest['segments'])} segment(s) of type {', '.join(s['type'] for s in manifest['segments']) or '-'}")


@index.command("gc")
@_index_option
@_wait_option
@click.option("--grace", "grace_s", type=float, default=600, show_default=True,
              help="Keep versions replaced less than this many seconds ago (readers may still use them).")
@_json_option
def index_gc(index_dir, wait_s, grace_s, as_json):
    """Delete old versions, unreferenced segment files and forgotten rows (writes do this too, with the default grace)."""
    from simengine.store.layout import resolve_index_dir
    from simengine.index.update import collect_garbage

    done = collect_garbage(resolve_index_dir(index_dir), grace_s, timeout_s=wait_s)
    if as_json:
        _echo_json(done)
        return
    click.echo(f"deleted {done['versions']} old versions, {done['segments']} segment files, {done['rows']} rows")


# --- query ---------------------------------------------------------------------------------------------------------

def _filter_options(f):
    f = click.option("--param", "params", multiple=True, metavar="NAME=VALUE",
                     help="A value for :NAME in --where (repeatable); always bound, never pasted into the SQL.")(f)
    return click.option("--where", default=None, metavar="SQL",
                        help="Only neighbours whose columns satisfy this SQL condition, e.g. \"label = :l AND "
                             "width > 200\" (columns: label, path, width, height, split, added_at and the source "
                             "table's metadata).")(f)


def _bound(params: tuple[str, ...]) -> dict[str, object]:
    """--param values typed as table cells are: 200 is a number, 007 and text stay text."""
    from simengine.data.sources import typed_value

    bound = {}
    for param in params:
        name, sep, value = param.partition("=")
        if not sep or not name.isidentifier():
            raise click.UsageError(f"--param {param!r}: expected NAME=VALUE")
        bound[name] = typed_value(value)
    return bound


@cli.command()
@click.argument("images", nargs=-1)
@click.option("-k", "--k", type=int, default=None, help="Nearest neighbours of one image (one image alone: 5).")
@click.option("--pairs", "pairs_csv", type=click.Path(), help="CSV of img1,img2[,label] to answer in batch.")
@click.option("--triplets", "triplets_csv", type=click.Path(), help="CSV of img1,img2,img3[,label] to answer in batch.")
@click.option("--mode", type=click.Choice(["distance", "head", "fused"]), default=None, help="Decision rule (default: the index's calibrated best).")
@_filter_options
@_json_option
@_index_option
@_runtime_option
def query(images, k, pairs_csv, triplets_csv, mode, where, params, as_json, index_dir, runtime):
    """Ask about images (paths, or id:N for indexed items).

    \b
    simengine query a.jpg b.jpg         same class?
    simengine query a.jpg b.jpg c.jpg   do at least two share a class?
    simengine query a.jpg -k 5          nearest neighbours, verified by the pair head (k 5 when not given)
    simengine query a.jpg --k 5 --where "label = :l" --param l=tench
    simengine query --pairs set.csv     batch mode, with a classification report if labelled

    Where there is no index yet (none under indexes/, no --index), pairs and triplets are answered with the default
    model: indexes/default-model when one was trained, else the built-in model.
    """
    from simengine.errors import SimengineError
    from simengine.query.engine import NO_INDEX, Engine
    from simengine.query.refs import parse_refs
    from simengine.store.layout import index_dirs

    batch = [p for p in (pairs_csv, triplets_csv) if p]
    if batch and images:
        raise SimengineError("give images or a CSV, not both")
    if not batch:
        if not images:
            raise SimengineError("give 2 or 3 images, or 1 image with --k, or --pairs/--triplets CSV")
        if len(images) > 3:
            raise SimengineError(f"{len(images)} images given: a query takes 2 or 3 (or 1 with --k)")
        if len(images) == 1 and k is None:
            k = NEIGHBOURS_SHOWN
        if k is not None and len(images) != 1:
            raise SimengineError("--k takes exactly one image")
        parse_refs(images)
    if (where or params) and k is None:
        raise SimengineError("--where and --param filter nearest neighbours: give one image with --k")
    if index_dir is None and not index_dirs():  # no index yet: a pair or a triplet needs only the model
        if k is not None:
            raise SimengineError(NO_INDEX)  # before preparing a model for nothing
        engine = Engine.for_model(None, mode, runtime)
    else:
        engine = Engine.open(index_dir, mode, runtime)
    if batch:
        for csv_path, width in ((pairs_csv, 2), (triplets_csv, 3)):
            if csv_path:
                _print_batch(engine.score_csv(csv_path, width), as_json)
        return
    if k is not None:
        _print_neighbours(engine.neighbours(images[0], k, where, _bound(params)), as_json, engine.labelled)
    elif len(images) == 2:
        _print_pair(engine.pair(*images), as_json, engine.labelled)
    else:
        _print_triplet(engine.triplet(*images), as_json, engine.labelled)


@cli.command()
@click.argument("image")
@click.option("-k", "--k", type=int, default=NEIGHBOURS_SHOWN, show_default=True)
@click.option("--include-self", is_flag=True, help="With id:N, list the item itself too (it is left out otherwise).")
@_filter_options
@_json_option
@_index_option
@_runtime_option
def search(image, k, include_self, where, params, as_json, index_dir, runtime):
    """Nearest neighbours of IMAGE (a path or id:N), verified by the pair head."""
    from simengine.query.engine import Engine
    from simengine.query.refs import parse_refs

    parse_refs([image])
    engine = Engine.open(index_dir, runtime=runtime)
    _print_neighbours(engine.neighbours(image, k, where, _bound(params), include_self), as_json, engine.labelled)


@cli.command()
@click.argument("source", required=False, type=click.Path(exists=True))
@click.option("--index", "index_dir", type=click.Path(exists=True, file_okay=False),
              help="Find the duplicates among an index's items (instead of SOURCE), by the hashes and paths it holds: "
                   "no folder is scanned again.")
@click.option("--against", type=click.Path(exists=True),
              help="An index directory, or another folder/list/table: report only SOURCE's images that have a copy "
                   "there (train/val leakage; a new batch against a catalogue).")
@click.option("--model", "model_dir", metavar="DIR|builtin",
              help="Model bundle, or `builtin` (default: the --against index's model, else indexes/default-model "
                   "when one was trained there, else the built-in model).")
@click.option("--path-column", default="path", show_default=True,
              help="The column of a CSV/parquet table that holds image paths.")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False), help="Also write one row per image to this CSV.")
@click.option("--html", "html_path", type=click.Path(dir_okay=False),
              help="Also write a page with thumbnails of every group.")
@click.option("--move-to", type=click.Path(file_okay=False),
              help="Move the duplicates (never the keepers) into this folder, keeping their relative paths; prints "
                   "the plan and moves nothing unless --yes.")
@click.option("--yes", is_flag=True, help="With --move-to: carry out the moves (logged to moves.csv there).")
@click.option("--keep", type=click.Choice(list(KEEP_RULES)), default="largest", show_default=True,
              help="Which copy of a group is kept: " + "; ".join(f"{k}: {v}" for k, v in KEEP_RULES.items()) + ".")
@click.option("--copies", type=click.Choice(COPY_KINDS), default="edited", show_default=True,
              help="Which copies count, strictest first. exact: the same bytes; resized: also the same picture "
                   "resized, recompressed or recoloured (its layout unchanged); edited: also cropped, rotated or "
                   "overlaid (confirmed by keypoints).")
@_json_option
@_runtime_option
@click.pass_context
def dedup(ctx, source, index_dir, against, model_dir, path_column, csv_path, html_path, move_to, yes, keep, copies,
          as_json, runtime):
    """Find exact and near-duplicate images in SOURCE (a folder, a text file of paths, or a CSV/parquet table).

    \b
    Exact duplicates have equal bytes. Near duplicates are copies of one picture (resized, recompressed, cropped,
    rotated a little, recoloured, watermarked, re-encoded), not other photos of the same thing: candidates come
    from a search by backbone features, and each is confirmed by its layout or by keypoints that agree on one
    geometric transform (the decision calibrated with the model; see `simengine dedup-calibrate`).
    Each group is a star around its keeper (by --keep; by default most pixels, then the largest file, then the
    oldest): every member
    is a copy of the keeper, so A~B and B~C never join A and C unless each is a copy of the keeper.
    Nothing is deleted; --move-to moves the duplicates aside.
    """
    from simengine.dedup.job import dedup_collection

    if yes and not move_to:
        raise click.UsageError("--yes needs --move-to")
    if (source is None) == (index_dir is None):
        raise click.UsageError("give SOURCE (a folder, a list or a table) or --index INDEX")
    source = source if source is not None else index_dir
    report, planned, done, left = dedup_collection(source, against, model_dir, csv_path, html_path, move_to, yes,
                                                   path_column, _progress(ctx), runtime, keep, copies)
    moves = {"planned": [{"from": str(m.source), "to": str(m.target)} for m in planned], "moved": len(done),
             "left": [{"path": p, "reason": r} for p, r in left], "dry_run": not yes} if move_to else None
    if as_json:
        _echo_json({**report.to_dict(), "moves": moves})
    else:
        for n, group in enumerate(report.groups, 1):
            click.echo(f"group {n}: keep {one_line(group.keeper.path)}")
            for m in group.duplicates:
                matches = f", {m.matches} matches" if m.matches is not None else ""
                click.echo(f"  {m.kind:5}  {one_line(m.image.path)}  (backbone {m.backbone:.3f}, layout {m.layout:.3f}"
                           f"{matches})")
        for path, reason in report.skipped:
            click.echo(f"skipped: {one_line(reason)}", err=True)
        click.echo(f"{report.images} images: {len(report.groups)} groups, {report.duplicate_count} duplicates, "
                   f"{len(report.skipped)} skipped ({report.seconds:.1f} s)")
        if move_to:
            for m in planned if not yes else []:
                click.echo(f"would move {one_line(str(m.source))} -> {one_line(str(m.target))}")
            for path, reason in left:
                click.echo(f"not moved: {one_line(path)}: {one_line(reason)}", err=True)
            click.echo(f"moved {len(done)} files to {move_to}" if yes else
                       f"dry run: {len(planned)} files would move; add --yes to move them")
    if left:
        ctx.exit(1)


# --- curate --------------------------------------------------------------------------------------------------------

@cli.group()
def curate():
    """What an index's items say about themselves: label errors, outliers, a representative sample. Reads only:
    nothing is changed or moved."""


def _report_options(f):
    f = click.option("--html", "html_path", type=click.Path(dir_okay=False),
                     help="Also write a page with thumbnails of every item and its evidence.")(f)
    return click.option("--csv", "csv_path", type=click.Path(dir_okay=False),
                        help="Also write one row per item to this CSV.")(f)


def _curation_report(question, index_dir, csv_path, html_path, as_json, *args):
    """One curation question's report on the index, written to the files asked for; printed as JSON with --json
    (then None: there is nothing left to print)."""
    from simengine.curation.report import write_csv, write_html
    from simengine.store.layout import resolve_index_dir

    check_output_folders(csv_path, html_path)
    report = question(resolve_index_dir(index_dir), *args)
    if csv_path:
        write_csv(report, csv_path)
    if html_path:
        write_html(report, html_path)
    if as_json:
        _echo_json(report.to_dict())
        return None
    return report


@curate.command("label-errors")
@_index_argument
@_index_option
@click.option("-k", "--k", type=click.IntRange(1), default=LABEL_NEIGHBOURS, show_default=True,
              help="Nearest other pictures that vote on each item's label.")
@click.option("--top", type=click.IntRange(1), default=None, help="Report the N worst only (default: every flagged item).")
@_report_options
@_json_option
def curate_label_errors(index_dir, k, top, csv_path, html_path, as_json):
    """Items whose label the rest of the collection disagrees with, worst first, each with the label it looks like
    and the neighbours that disagree. Out of sample: the k nearest other pictures vote (never the item nor a copy of
    it), averaged with a linear head cross-validated in 5 folds (no head judges a label it learned)."""
    from simengine.curation.label_errors import find_label_errors

    report = _curation_report(find_label_errors, index_dir, csv_path, html_path, as_json, k, top)
    if report is None:
        return
    if report.warning:
        click.echo(f"warning: {report.warning}", err=True)
    click.echo(f"{'rank':>4}  {'id':>6}  {'label':18s}  {'looks like':18s}  margin  path")
    for n, issue in enumerate(report.issues, 1):
        click.echo(f"{n:>4}  {issue.id:>6}  {issue.label[:18]:18s}  {issue.suggested[:18]:18s}  {issue.margin:6.3f}  "
                   f"{one_line(issue.path)}")
    click.echo(f"{len(report.issues)} of {report.labelled} labelled items flagged ({report.seconds:.1f} s)")


@curate.command("outliers")
@_index_argument
@_index_option
@click.option("-k", "--k", type=click.IntRange(1), default=OUTLIER_NEIGHBOURS, show_default=True,
              help="The neighbour whose distance scores an item (its k-th nearest other picture).")
@click.option("--top", type=click.IntRange(1), default=100, show_default=True, help="Report the N most unusual.")
@click.option("--within-labels", is_flag=True, help="Compare each item with its own label's items only.")
@_report_options
@_json_option
def curate_outliers(index_dir, k, top, within_labels, csv_path, html_path, as_json):
    """Items unlike the rest of the collection (or of their label): ranked by 1 - the cosine of their k-th nearest
    other picture."""
    from simengine.curation.outliers import find_outliers

    report = _curation_report(find_outliers, index_dir, csv_path, html_path, as_json, k, top, within_labels)
    if report is None:
        return
    click.echo(f"{'rank':>4}  {'id':>6}  {'score':>6}  {'label':18s}  path")
    for n, o in enumerate(report.outliers, 1):
        click.echo(f"{n:>4}  {o.id:>6}  {o.score:6.3f}  {(o.label or '-')[:18]:18s}  {one_line(o.path)}")


@curate.command("sample")
@_index_argument
@_index_option
@click.option("--n", "n", type=click.IntRange(1), required=True, help="How many items.")
@click.option("--per-label/--global", "per_label", default=None,
              help="Sample each label in proportion (the default when the index has labels), or the whole index.")
@click.option("--seed", type=int, default=0, show_default=True)
@_report_options
@_json_option
def curate_sample(index_dir, n, per_label, seed, csv_path, html_path, as_json):
    """A representative subset: the item nearest each k-means centroid of the embeddings."""
    from simengine.curation.sample import representative_sample

    report = _curation_report(representative_sample, index_dir, csv_path, html_path, as_json, n, per_label, seed)
    if report is None:
        return
    click.echo(f"{'id':>6}  {'represents':>10}  {'label':18s}  path")
    for r in report.sample:
        click.echo(f"{r.id:>6}  {r.represents:>10}  {(r.label or '-')[:18]:18s}  {one_line(r.path)}")


@cli.command("embed")
@click.argument("source", type=click.Path(exists=True))
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Folder for the shards: img_emb/img_emb_{k}.npy and metadata/metadata_{k}.parquet (clip-retrieval's "
                   "layout, which autofaiss reads). A rerun into the same folder embeds only unfinished shards.")
@click.option("--model", "model_dir", metavar="DIR|builtin",
              help="Model bundle whose embedding is written, or `builtin` (default: indexes/default-model when one "
                   "was trained there, else the built-in model).")
@click.option("--shard-size", type=click.IntRange(1), default=10_000, show_default=True, help="Images per shard.")
@click.option("--ray", "ray_address", is_flag=False, flag_value="local", default=None,
              help="Embed on Ray: `--ray` alone starts a local Ray on 127.0.0.1; `--ray ADDRESS` joins a cluster "
                   "(`--ray auto`: the one this machine belongs to). Needs `simengine-images[ray]`.")
@click.option("--workers", type=click.IntRange(1), help="With --ray: actors embedding at once (default and most: one "
                                                        "per CPU of the cluster; each asks for half a CPU).")
@click.option("--labels", type=click.Choice(["auto", "folders", "table", "none"]), default="auto", show_default=True,
              help="Where labels come from (auto: a table's label column or an ImageFolder's class folders).")
@click.option("--path-column", default="path", show_default=True,
              help="The column of a CSV/parquet table that holds image paths.")
@_json_option
@_runtime_option
@click.pass_context
def embed(ctx, source, out, model_dir, shard_size, ray_address, workers, labels, path_column, as_json, runtime):
    """Embed every image of SOURCE (a folder, a list of paths, a CSV/parquet table) into shards under --out, on this
    machine or on Ray (put --ray after SOURCE, or write --ray=ADDRESS: `--ray X` takes X as the address). Files that
    cannot be read are reported and skipped; exit 1 when no image could be embedded."""
    from simengine.shards.embed import embed_collection

    if workers and ray_address is None:
        raise click.UsageError("--workers needs --ray")
    report = embed_collection(source, out, model_dir, shard_size=shard_size, runtime=runtime,
                              ray_address=None if ray_address in (None, "local") else ray_address,
                              use_ray=ray_address is not None, workers=workers, path_column=path_column,
                              labels=labels, progress=_progress(ctx))
    if as_json:
        _echo_json(report.to_dict())
    else:
        for failure in report.failed:
            click.echo(f"skipped: {one_line(failure['path'])}: {one_line(failure['reason'])}", err=True)
        click.echo(f"{out}: {report.vectors} vectors in {len(report.embedded_shards)} new shards "
                   f"({len(report.skipped_shards)} of {report.shards} already done) on {report.backend}, "
                   f"{report.seconds:.1f} s")
    if report.failed and not report.total_vectors:
        ctx.exit(1)


@cli.command("quantize")
@click.option("--model", "model_dir", required=True, metavar="DIR|builtin",
              help="Model bundle whose backbone is quantized (the int8 model is stored in it), or `builtin`.")
@click.option("--data", "data_dir", required=True, type=click.Path(exists=True),
              help="Images like those the model will embed: an ImageFolder dataset (calibration on train/, the gate "
                   "on val/), a folder with class subfolders, or a list or table of paths.")
@click.option("--images", type=click.IntRange(MIN_CALIBRATION_IMAGES), default=CALIBRATION_IMAGES, show_default=True,
              help="Calibration images (NNCF's default subset size).")
@click.option("--gate-images", type=click.IntRange(0), default=0, show_default=True,
              help="Labelled images for the accuracy gate (0: all that the calibration did not use).")
@click.option("--gate/--no-gate", default=True, show_default=True,
              help="Run the accuracy gate; without a passing gate `--runtime auto` never chooses int8.")
@_json_option
@click.pass_context
def quantize(ctx, model_dir, data_dir, images, gate_images, gate, as_json):
    """Quantize the model's backbone to int8 (NNCF post-training quantization for OpenVINO; the first and last
    convolutions stay in floating point), then gate it: P@1, MAP@R, pair and triplet accuracy on held-out labelled
    images within 0.002 of fp32. A passing verdict lets `--runtime auto` choose `openvino-int8` on this machine
    when it measures fastest; `--runtime openvino-int8` runs it regardless. Exit 1 when the gate fails."""
    from simengine.model.int8 import quantize_model

    result = quantize_model(model_dir, data_dir, images, gate_images, gate, progress=_progress(ctx))
    rows = result["gate"] or []
    int8 = next((r for r in rows if r["runtime"] == "openvino-int8"), None)  # bf16 may be gated beside it
    passed = int8["passes_gate"] if int8 else None
    if as_json:
        _echo_json(dict(result, passed=passed))
    else:
        record = result["int8"]
        click.echo(f"{result['model']}: int8 backbone written (calibrated on {record['calibration_images']} images, "
                   f"{record['calibration_skipped']} skipped; kept in float: {', '.join(record['kept_in_float'])})")
        for r in rows:
            click.echo(f"  {r['runtime']:14s} P@1 {r['precision_at_1']:.4f}  MAP@R {r['map_at_r']:.4f}  "
                       f"in the fp32 index: P@1 {r['precision_at_1_in_fp32_index']:.4f}  "
                       f"pair {r['pair_accuracy']:.4f}  triplet {r['triplet_accuracy']:.4f}  "
                       f"largest difference {r['largest_difference']:.4f}"
                       + ("" if r["passes_gate"] else "  (beyond the gate)"))
        click.echo("gate not run: --runtime auto will not choose int8" if passed is None else
                   f"int8 gate {'passed' if passed else 'FAILED'} on {rows[0]['images']} images (tolerance 0.002): "
                   f"--runtime auto {'may choose' if passed else 'will not choose'} int8 on this machine")
    if passed is False:
        ctx.exit(1)


@cli.command("dedup-calibrate")
@click.option("--model", "model_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="Model bundle to calibrate (the decision is stored in it as same_picture.json).")
@click.option("--data", "data_dir", type=click.Path(), help="ImageFolder root with train/ (default: $SIMENGINE_DATA or ./data/imagenette2-160).")
@click.option("--target-far", type=click.FloatRange(0, 1), default=None,
              help="False accepts allowed on the hardest same-class negatives (default 0.02).")
@_json_option
@click.pass_context
def dedup_calibrate(ctx, model_dir, data_dir, target_far, as_json):
    """Calibrate the same-picture decision of `simengine dedup` for a model bundle (`simengine train` does this
    itself; bundles trained before need it once): generated copies of training images against the most similar
    other photos of their classes."""
    from simengine.data.imagenette import resolve_data_dir
    from simengine.dedup.calibrate import TARGET_FAR, calibrate_bundle

    record = calibrate_bundle(model_dir, resolve_data_dir(data_dir),
                              target_far=TARGET_FAR if target_far is None else target_far, progress=_progress(ctx))
    if as_json:
        _echo_json(record)
        return
    d, a = record["decision"], record["accuracy"]
    click.echo(f"{model_dir}: a copy is backbone cosine >= {d['min_backbone']:.3f} and layout cosine >= "
               f"{d['min_layout']:.3f}, or backbone cosine >= {d['min_backbone_matches']:.3f} and >= "
               f"{d['min_matches']} agreeing keypoint matches; on the calibration pairs false accepts "
               f"{a['far']:.3f}, false rejects {a['frr']:.3f}")


@cli.command()
@_index_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (loopback by default).")
@click.option("--port", type=int, default=8000, show_default=True)
@click.option("--allow-remote", is_flag=True, help="Allow a non-loopback --host; needs an API key (--api-key-file "
              "or $SIMENGINE_API_KEY) unless --no-auth.")
@click.option("--api-key-file", type=click.Path(dir_okay=False), default=None,
              help="File holding the API key (at least 16 characters); else $SIMENGINE_API_KEY. With a key, /v1 and "
                   "/metrics need 'Authorization: Bearer KEY' or 'X-API-Key: KEY', on loopback too.")
@click.option("--no-auth", is_flag=True, help="Serve beyond loopback without an API key: anyone who reaches the port "
              "can query the index and download indexed images.")
@click.option("--allowed-host", "allowed_hosts", multiple=True, metavar="NAME",
              help="Also answer requests for this Host name (repeatable; '*.example.com' patterns, '*' for any). "
                   "Loopback names and the --host address are always answered.")
@click.option("--mode", type=click.Choice(["distance", "head", "fused"]), default=None, help="Decision rule.")
@click.option("--max-upload-mb", type=float, default=10, show_default=True, help="Largest accepted upload per image.")
@click.option("--max-pixels", type=int, default=None,
              help="Largest accepted image, in pixels (default: 40,000,000, the limit of every command).")
@click.option("--timeout", type=float, default=30, show_default=True, help="Seconds before a request gets 504.")
@click.option("--max-pending", type=int, default=128, show_default=True,
              help="API requests in progress before new ones get 503 with Retry-After.")
@click.option("--max-batch", type=int, default=32, show_default=True,
              help="Most images embedded in one batch (uploads of concurrent requests are batched together).")
@click.option("--max-wait-ms", type=float, default=4, show_default=True,
              help="How long a batch waits for more images before it runs.")
@click.option("--ray", "ray_address", is_flag=False, flag_value="local", default=None,
              help="Serve on Ray Serve, the index split into --shards deployments (`--ray` alone: a local Ray on "
                   "127.0.0.1; `--ray ADDRESS`: a cluster whose nodes see the index's files). Needs simengine-images[ray].")
@click.option("--shards", type=click.IntRange(1), default=1, show_default=True,
              help="With --ray: shard deployments; each searches every n-th segment of the index.")
@click.option("--replicas", type=click.IntRange(0), default=1, show_default=True,
              help="With --ray: frontend replicas (0: autoscale from 1 to 4 with the requests in flight).")
@click.option("--move-duplicates-to", type=click.Path(file_okay=False), default=None, metavar="FOLDER",
              help="Let the web app's duplicate review move the copies a person confirms into FOLDER (outside the "
                   "collection; logged in moves.csv there, as dedup --move-to does) and drop them from the index. "
                   "Without it the server moves and removes nothing.")
@_runtime_option
def serve(index_dir, host, port, allow_remote, api_key_file, no_auth, allowed_hosts, mode, max_upload_mb, max_pixels,
          timeout, max_pending, max_batch, max_wait_ms, ray_address, shards, replicas, move_duplicates_to, runtime):
    """Serve the index over HTTP: JSON API under /v1 (docs at /docs), Prometheus metrics at /metrics, and the web
    app at /: a gallery with filters, each item with its verified neighbours, upload search, a map of the
    collection, a duplicate review and the calibration plots. Stops on Ctrl-C or SIGTERM after finishing the
    requests in flight."""
    from simengine.data.decode import MAX_PIXELS
    from simengine.service.app import ServiceLimits, serve as run
    from simengine.service.security import read_api_key

    limits = ServiceLimits(max_upload_bytes=int(max_upload_mb * 2**20), max_pixels=max_pixels or MAX_PIXELS,
                           timeout_s=timeout, max_pending=max_pending, max_batch_size=max_batch,
                           max_wait_s=max_wait_ms / 1000)
    if ray_address is None:
        if shards != 1 or replicas != 1:
            raise click.UsageError("--shards and --replicas go with --ray")
        run(index_dir, host, port, allow_remote, read_api_key(api_key_file), no_auth, allowed_hosts, mode, limits,
            runtime, move_duplicates_to)
        return
    if move_duplicates_to:
        raise click.UsageError("--move-duplicates-to is not available with --ray")
    from simengine.store.layout import resolve_index_dir
    from simengine.service.ray_serve import run_on_ray
    from simengine.service.security import allowed_hosts as answered_hosts, check_exposure

    api_key = read_api_key(api_key_file)
    check_exposure(host, allow_remote, api_key, no_auth)
    run_on_ray(resolve_index_dir(index_dir), shards, replicas, host, port,
               None if ray_address == "local" else ray_address, mode=mode, runtime=runtime, limits=limits,
               api_key=api_key, hosts=answered_hosts(host, allowed_hosts))


ESTIMATED_NOTE = "  the threshold is estimated: there are no labels here to calibrate it on"


def _print_pair(r, as_json, labelled: bool):
    """A pair answer; without labels (an unlabelled index, or no index) it speaks of similarity, not classes."""
    if as_json:
        return _echo_json(r.to_dict())
    click.echo(f"{'same class' if labelled else 'similar'}: {'YES' if r.same else 'NO'}")
    click.echo(f"  distance         {r.distance:.4f}  (threshold {r.distance_threshold:.4f})")
    click.echo(f"  pair-head p      {r.head_probability:.4f}")
    click.echo(f"  decision ({r.decision}) score {r.score:.4f} {'>=' if r.same else '<'} {r.threshold:.4f}")
    if not labelled:
        click.echo(ESTIMATED_NOTE)


def _print_triplet(r, as_json, labelled: bool):
    if as_json:
        return _echo_json(r.to_dict())
    click.echo(f"{'at least two share a class' if labelled else 'at least two are similar'}: "
               f"{'YES' if r.any_match else 'NO'}")
    for p in r.pairs:
        i, j = p["pair"]
        click.echo(f"  {'*' if p['match'] else ' '} {i + 1}-{j + 1}  distance {p['distance']:.4f}  "
                   f"pair-head p {p['head_probability']:.4f}  score {p['score']:.4f}")
    click.echo(f"  decision ({r.decision}): a pair matches when score >= {r.threshold:.4f}")
    if not labelled:
        click.echo(ESTIMATED_NOTE)


def _print_neighbours(r, as_json, labelled: bool):
    """Neighbours, and with labels the class vote: how many verified neighbours voted, never a bare confidence."""
    if as_json:
        return _echo_json(r.to_dict())
    click.echo(f"{'id':>6}  {'distance':>8}  {'p(head)':>7}  verified  " + ("class               " if labelled else "")
               + "path")
    for n in r.neighbours:
        click.echo(f"{n.id:>6}  {n.distance:8.4f}  {n.head_probability:7.4f}  {'yes' if n.verified else 'no ':8s}  "
                   + (f"{(n.label or '-')[:18]:18s}  " if labelled else "") + n.path)
    verified = f"{r.verified_count} of {len(r.neighbours)} neighbours verified by the pair head"
    if not labelled:
        click.echo(verified)
    elif r.predicted_class:
        among = " among the items --where selects" if r.restricted else ""
        click.echo(f"predicted class{among}: {r.predicted_class} ({r.votes} of the {r.verified_count} verified "
                   f"neighbours; {verified})")
    else:
        click.echo(f"predicted class: none ({verified}" + (", none labelled)" if r.verified_count else ")"))


def _print_batch(result, as_json):
    if as_json:
        return _echo_json(result.to_dict())
    for row in result.rows:
        click.echo(f"line {row['line']}: prediction {row['prediction']}" +
                   ("" if row["label"] is None else f"  label {row['label']}"))
    for err in result.errors:
        click.echo(f"skipped {one_line(err)}", err=True)
    if result.report:
        rep = result.report
        click.echo(f"\n{result.kind}: accuracy {rep['accuracy']:.4f} on {rep['n']} labelled rows")
        click.echo(f"{'label':>6}  {'precision':>9}  {'recall':>6}  {'f1':>6}  {'support':>7}")
        for label in ("0", "1"):
            m = rep[label]
            click.echo(f"{label:>6}  {m['precision']:9.4f}  {m['recall']:6.4f}  {m['f1']:6.4f}  {m['support']:7d}")


def main() -> None:
    cli(prog_name="simengine")


if __name__ == "__main__":
    main()
