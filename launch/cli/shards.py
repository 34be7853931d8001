"""``mdeq shards imagenet|cityscapes``: convert a raw layout into WebDataset shards (restartable)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("shards", help="write WebDataset shards from the raw ImageNet/Cityscapes layout")
    kinds = parser.add_subparsers(dest="dataset", metavar="DATASET|index")
    kinds.required = True
    for name, default_per_shard in (("imagenet", 1000), ("cityscapes", 100)):
        kind = kinds.add_parser(name, help=f"{name} raw layout -> shards + index.json (re-run to resume)")
        kind.add_argument("--src", required=True, help="raw dataset root")
        kind.add_argument("--out", required=True, help="output directory for this split's shards")
        kind.add_argument("--split", required=True, choices=("train", "val"))
        kind.add_argument("--samples-per-shard", type=int, default=default_per_shard)
        kind.add_argument("--workers", type=int, default=1, help="parallel writer processes")
        kind.add_argument("--no-progress", action="store_true", help="no progress bar")
        if name == "imagenet":
            kind.add_argument("--val-labels", default=None,
                              help="LOC_val_solution.csv for a flat val/ (default: searched beside --src)")
        kind.set_defaults(func=_run)
    index = kinds.add_parser("index", help="count existing shards (e.g. a community release) once into an index")
    index.add_argument("--shards", required=True, help="brace pattern, directory, glob or URLs of the shards")
    index.add_argument("--out", required=True, help="index file to write (use it as the shard spec afterwards)")
    index.add_argument("--dataset", choices=("imagenet", "cityscapes"), default="imagenet")
    index.add_argument("--num-classes", type=int, default=None)
    index.set_defaults(func=_index)


def _run(args: argparse.Namespace) -> int:
    from data_pipelines import write_cityscapes_shards, write_imagenet_shards

    common = dict(split=args.split, samples_per_shard=args.samples_per_shard, workers=args.workers,
                  progress=not args.no_progress)
    if args.dataset == "imagenet":
        shard_set = write_imagenet_shards(args.src, args.out, val_labels=args.val_labels, **common)
    else:
        shard_set = write_cityscapes_shards(args.src, args.out, **common)
    print(f"{len(shard_set.urls)} shards, {shard_set.total_samples} samples, index {args.out}/index.json")
    return 0


def _index(args: argparse.Namespace) -> int:
    from data_pipelines.shards.index import write_index_for

    shard_set = write_index_for(args.shards, args.out, dataset=args.dataset, num_classes=args.num_classes)
    print(f"{len(shard_set.urls)} shards, {shard_set.total_samples} samples, index {args.out}")
    return 0
