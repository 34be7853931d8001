"""``mdeq predict --checkpoint DIR IMAGES...``: run a trained model on image files, folders or globs.

The newest committed checkpoint under DIR and its saved config are used (``--config``/``--set``
override). Classification prints the top-k classes per image (a table, ``--json`` or ``--csv``);
segmentation writes a label PNG, a colour PNG and an overlay per image under ``--out``, at the
input's resolution, whole-image or window by window (``--tile``). See docs/training.md.
"""

from __future__ import annotations

import argparse
import glob
import os
from pathlib import Path

from launch.cli.config import add_checkpoint_args

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".ppm")


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("predict", help="predict classes or label maps of your own images with a checkpoint")
    add_checkpoint_args(parser)
    parser.add_argument("images", nargs="+", metavar="IMAGES", help="image files, folders (searched recursively) "
                        "or glob patterns")
    parser.add_argument("--batch-size", type=int, default=8, help="images (or windows, with --tile) per forward")
    parser.add_argument("--top-k", type=int, default=5, help="classification: classes listed per image")
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print the predictions as one JSON document")
    output.add_argument("--csv", action="store_true", help="classification: print CSV rows (file,rank,class_id,"
                        "name,probability)")
    parser.add_argument("--out", default="predictions", help="segmentation: folder for the PNGs (default %(default)s)")
    parser.add_argument("--label-ids", action="store_true",
                        help="segmentation: write Cityscapes label ids (submission format) instead of train ids")
    parser.add_argument("--tile", default=None, metavar="HxW|N",
                        help="segmentation: sliding-window inference with windows of this size")
    parser.add_argument("--overlap", type=int, default=None,
                        help="segmentation: pixels shared by neighbouring windows (default: a third of the window)")
    parser.add_argument("--flip", action="store_true", help="segmentation: also average the mirrored image")
    parser.add_argument("--scales", default="1", help="segmentation: comma-separated scales to average, e.g. "
                        "0.75,1,1.25 (default %(default)s)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=_predict)


def expand_images(arguments: list[str]) -> list[Path]:
    """The image files the arguments name (files, folders recursively, globs), in order, without repeats."""
    from launch.errors import LaunchError

    found: list[Path] = []
    for argument in arguments:
        path = Path(argument)
        if path.is_dir():
            matches = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not matches:
                raise LaunchError(f"{argument} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        elif path.is_file():
            matches = [path]
        elif any(c in argument for c in "*?["):
            matches = sorted(Path(p) for p in glob.glob(argument, recursive=True)
                             if Path(p).is_file() and Path(p).suffix.lower() in IMAGE_SUFFIXES)
            if not matches:
                raise LaunchError(f"no images match {argument}")
        else:
            raise LaunchError(f"{argument}: no such file or folder")
        found += matches
    return list(dict.fromkeys(found))


def _tile(text: str | None) -> tuple[int, int] | None:
    from launch.errors import LaunchError

    if text is None:
        return None
    parts = text.lower().split("x")
    try:
        sizes = [int(p) for p in parts]
    except ValueError:
        sizes = []
    if len(sizes) not in (1, 2) or min(sizes) < 1:
        raise LaunchError(f"--tile {text!r}: give HxW (e.g. 512x1024) or one size N for NxN windows")
    return (sizes[0], sizes[-1])


def _scales(text: str) -> list[float]:
    from launch.errors import LaunchError

    try:
        scales = [float(s) for s in text.split(",") if s.strip()]
    except ValueError:
        scales = []
    if not scales or min(scales) <= 0:
        raise LaunchError(f"--scales {text!r}: give positive numbers separated by commas, e.g. 0.75,1,1.25")
    return scales


def _predict(args: argparse.Namespace) -> int:
    from launch.cli.output import json_stdout

    with json_stdout(args.json) as emit:
        return _run(args, emit)


def _run(args: argparse.Namespace, emit) -> int:
    import sys

    from launch.errors import LaunchError
    from trainer.checkpoint_config import check_checkpoint_argument, config_for_checkpoint, weights_of
    from trainer.inference import load_predictor

    if args.batch_size < 1 or args.top_k < 1:
        raise LaunchError("--batch-size and --top-k must be at least 1")
    tile, scales = _tile(args.tile), _scales(args.scales)
    images = expand_images(args.images)
    check_checkpoint_argument(args.checkpoint)
    cfg = config_for_checkpoint(args.config, args.overrides, args.checkpoint)
    predictor = load_predictor(cfg, weights_of(args.checkpoint))
    print(f"{cfg.model.name} ({predictor.task}) from {predictor.weights}, step {predictor.step}, on "
          f"{predictor.device}; {len(images)} image(s)", file=sys.stderr, flush=True)
    progress = _progress(len(images), args.no_progress)
    if predictor.task == "classification":
        from launch.cli.predict_files import classify_files, print_classes

        rows, skipped = classify_files(predictor, images, args.batch_size, args.top_k, progress)
        progress.close()
        if args.json:
            emit({"checkpoint": predictor.weights, "step": predictor.step, "predictions": rows, "skipped": skipped})
        else:
            print_classes(rows, csv_format=args.csv)
    else:
        from launch.cli.predict_files import segment_files

        if args.csv:
            raise LaunchError("--csv lists classes of a classification model; a segmentation model writes PNGs "
                              "(use --json for the list of files)")
        overlap = args.overlap if args.overlap is not None else (min(tile) // 3 if tile else 0)
        rows, skipped = segment_files(predictor, images, out=Path(args.out), tile=tile, overlap=overlap,
                                      flip=args.flip, scales=scales, batch_size=args.batch_size,
                                      label_ids=args.label_ids, progress=progress)
        progress.close()
        if args.json:
            emit({"checkpoint": predictor.weights, "step": predictor.step, "predictions": rows, "skipped": skipped})
        else:
            for row in rows:
                print(f"{row['file']}: {row['labels']}  {row['overlay']}")
            print(f"{len(rows)} image(s) -> {args.out}{os.sep}", file=sys.stderr)
    for item in skipped:
        print(f"mdeq predict: skipped {item['file']}: {item['error']}", file=sys.stderr)
    if skipped and not rows:
        return 2
    return 0


def _progress(total: int, disabled: bool):
    """A progress bar on stderr when more than one image is predicted."""
    import sys

    from tqdm import tqdm

    return tqdm(total=total, unit="img", file=sys.stderr, disable=disabled or total < 2)
