"""Loader throughput: the shard stream vs torchvision ImageFolder on the same JPEGs and transforms.

``mdeq bench loader --src RAW --shards SHARDS --workers W [--prepare N]``. With ``--prepare N`` it
first writes N synthetic ImageNet-like 500×375 JPEGs under RAW and converts them to shards under
SHARDS (timing the shard writing). Then it alternates runs of both loaders (the machine may be
shared: interleaving exposes both to the same load) and reports medians and their ratio.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--src", required=True, help="raw ImageNet layout (train/<wnid>/*.JPEG)")
    parser.add_argument("--shards", required=True, help="shards of the same train split")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batches", type=int, default=20, help="timed batches per run (after warm-up)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed batches per run")
    parser.add_argument("--repeats", type=int, default=3, help="alternating runs of each loader")
    parser.add_argument("--prepare", type=int, default=0, metavar="N",
                        help="first write N synthetic 500x375 JPEGs to --src and shard them to --shards")
    parser.add_argument("--classes", type=int, default=100, help="classes of --prepare")


def _time_batches(batches, warmup: int, count: int, batch_size: int) -> float:
    """images/s over ``count`` batches after ``warmup`` untimed ones."""
    iterator = iter(batches)
    for _ in range(warmup):
        next(iterator)
    start = time.perf_counter()
    for _ in range(count):
        images, _ = next(iterator)
        assert images.shape[0] == batch_size
    return count * batch_size / (time.perf_counter() - start)


def _ours(args) -> float:
    from data_pipelines import build_train_stream

    stream = build_train_stream("imagenet", args.shards, batch_size=args.batch_size, workers=args.workers, rank=0,
                                world_size=1, seed=int(time.time()), image_size=args.image_size)
    return _time_batches(stream, args.warmup, args.batches, args.batch_size)


def _baseline(args) -> float:
    import torch
    from torchvision import datasets, transforms

    transform = transforms.Compose([
        transforms.RandomResizedCrop(args.image_size), transforms.RandomHorizontalFlip(), transforms.ToTensor(),
        transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    dataset = datasets.ImageFolder(str(Path(args.src) / "train"), transform=transform)
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, shuffle=True, num_workers=args.workers,
                                         drop_last=True, pin_memory=torch.cuda.is_available())
    return _time_batches(loader, args.warmup, args.batches, args.batch_size)


def _check_sizes(args) -> None:
    """DataError unless --src holds enough images for the baseline's one epoch and --shards enough shards
    for the readers (both loaders then run the batches asked, instead of failing mid-benchmark)."""
    from data_pipelines import DataError, read_shard_set
    from data_pipelines.shards.imagenet import IMAGE_SUFFIXES

    if min(args.batches, args.batch_size, args.repeats) < 1 or args.warmup < 0 or args.workers < 0:
        raise DataError("--batches, --batch-size and --repeats must be at least 1, --warmup and --workers at least 0")
    train = Path(args.src) / "train"
    images = sum(1 for p in train.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES) if train.is_dir() else 0
    needed = args.batch_size * (args.warmup + args.batches)
    if images < needed:
        raise DataError(f"{train} holds {images} images but --warmup {args.warmup} + --batches {args.batches} "
                        f"batches of --batch-size {args.batch_size} need {needed} (ImageFolder reads one epoch): "
                        f"lower --batches/--batch-size, or use --prepare {needed}")
    shards = read_shard_set(args.shards)
    readers = max(args.workers, 1)
    if len(shards.urls) < readers:
        raise DataError(f"{args.shards} holds {len(shards.urls)} shard(s) but --workers {args.workers} needs at "
                        f"least {readers} (one per loader worker): lower --workers or write smaller shards")


def _prepare(args) -> dict:
    from data_pipelines import synth_imagenet, write_imagenet_shards

    per_class = max(1, args.prepare // args.classes)
    total = per_class * args.classes
    # at least one shard per loader worker, at most 256 samples each
    samples_per_shard = max(1, min(256, total // max(args.workers, 1)))
    synth_imagenet(args.src, classes=args.classes, train_per_class=per_class, val_per_class=0, size=(500, 375))
    figures = {}
    for run in range(2):  # the second write goes to a fresh directory too: two timings, keep both
        out = Path(args.shards) if run == 0 else Path(tempfile.mkdtemp(prefix="mdeq-bench-shards-"))
        if run == 0 and out.exists():
            shutil.rmtree(out)
        start = time.perf_counter()
        shard_set = write_imagenet_shards(args.src, out, split="train", samples_per_shard=samples_per_shard,
                                          workers=args.workers,
                                          progress=False)
        seconds = time.perf_counter() - start
        megabytes = sum(p.stat().st_size for p in out.glob("*.tar")) / 1e6
        figures.setdefault("write_images_per_s", []).append(shard_set.total_samples / seconds)
        figures.setdefault("write_mb_per_s", []).append(megabytes / seconds)
        if run:
            shutil.rmtree(out)
    return {k: statistics.median(v) for k, v in figures.items()}


def run(args: argparse.Namespace) -> dict:
    """Figures: images_per_s, baseline_images_per_s (medians), their ratio, shard-writing throughput."""
    result: dict = {}
    if args.prepare:
        result.update(_prepare(args))
    _check_sizes(args)
    ours, baseline = [], []
    for _ in range(args.repeats):
        ours.append(_ours(args))
        baseline.append(_baseline(args))
    result.update({
        "images_per_s": statistics.median(ours), "baseline_images_per_s": statistics.median(baseline),
        "ratio": statistics.median(ours) / statistics.median(baseline),
        "runs_images_per_s": [round(v, 1) for v in ours], "runs_baseline_images_per_s": [round(v, 1) for v in baseline],
        "workers": args.workers, "batch_size": args.batch_size, "image_size": args.image_size,
        "timed_images_per_run": args.batches * args.batch_size,
    })
    return result
