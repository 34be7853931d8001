"""ILSVRC-2012 raw layout -> shards with ``jpg`` + ``cls`` (+ ``json``) per sample.

Reads ``<src>/train/<wnid>/*.JPEG`` and ``<src>/val/`` either in class folders or flat with the
ground-truth CSV ``LOC_val_solution.csv`` (looked for in ``<src>``, ``<src>/val`` and the parent of
``<src>``, or given with ``val_labels``). Classes are indexed by sorted wnid, taken from
``train/`` when it exists (so val uses the train class ids), else from ``LOC_synset_mapping.txt``
or the val folders. The class map is written beside the shards (``classes.txt``) and in the index.
JPEG bytes are stored as they are: no re-encoding.
"""

from __future__ import annotations

import csv
import json
import os
import random
from pathlib import Path

from data_pipelines.errors import DataError
from data_pipelines.shards.index import ShardSet
from data_pipelines.shards.writer import write_shards

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")
SHUFFLE_SEED = 0  # fixed: train samples are shuffled across shards so no shard is one class


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _class_folders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []


def discover_classes(src: Path) -> list[str]:
    """Sorted wnids: from train/ folders, else LOC_synset_mapping.txt, else val/ folders."""
    train_classes = [p.name for p in _class_folders(src / "train")]
    if train_classes:
        return train_classes
    for mapping in (src / "LOC_synset_mapping.txt", src.parent / "LOC_synset_mapping.txt"):
        if mapping.exists():
            return sorted(line.split()[0] for line in mapping.read_text().splitlines() if line.strip())
    return [p.name for p in _class_folders(src / "val")]


def _find_val_csv(src: Path, val_labels: str | None) -> Path | None:
    if val_labels:
        if not Path(val_labels).exists():
            raise DataError(f"validation labels file {val_labels} does not exist")
        return Path(val_labels)
    for candidate in (src / "LOC_val_solution.csv", src / "val" / "LOC_val_solution.csv",
                      src.parent / "LOC_val_solution.csv"):
        if candidate.exists():
            return candidate
    return None


def collect_imagenet(src: str | os.PathLike, split: str, val_labels: str | None = None
                     ) -> tuple[list[tuple[str, int, str]], list[str]]:
    """[(path, class id, wnid)] of a split, and the class list. DataError for unusable layouts."""
    root = Path(src)
    folder = root / split
    if not folder.is_dir():
        raise DataError(f"{folder} does not exist: --src must hold the ILSVRC-2012 layout "
                        f"(train/<wnid>/*.JPEG, val/...)")
    classes = discover_classes(root)
    class_ids = {wnid: i for i, wnid in enumerate(classes)}
    samples: list[tuple[str, int, str]] = []
    class_dirs = _class_folders(folder)
    if class_dirs:
        for class_dir in class_dirs:
            if class_dir.name not in class_ids:
                raise DataError(f"{class_dir} is a class not in train/ ({len(classes)} classes): "
                                "val classes must match the train classes")
            samples += [(str(p), class_ids[class_dir.name], class_dir.name) for p in _images_in(class_dir)]
    else:
        images = _images_in(folder)
        if images and split == "val":
            csv_path = _find_val_csv(root, val_labels)
            if csv_path is None:
                raise DataError(f"{folder} is flat ({len(images)} images, no class folders) and no "
                                f"LOC_val_solution.csv was found in {root}, {folder} or {root.parent}: "
                                "pass --val-labels PATH or put val images in class folders")
            with open(csv_path, newline="") as f:
                truth = {row["ImageId"]: row["PredictionString"].split()[0] for row in csv.DictReader(f)}
            unlabeled = [p.name for p in images if p.stem not in truth]
            if unlabeled:
                raise DataError(f"{len(unlabeled)} val images have no row in {csv_path} "
                                f"(first: {unlabeled[0]}): the ground truth does not match the images")
            unknown = sorted({truth[p.stem] for p in images} - set(class_ids))
            if unknown:
                raise DataError(f"{csv_path} names classes not in train/ (first: {unknown[0]})")
            samples = [(str(p), class_ids[truth[p.stem]], truth[p.stem]) for p in images]
        elif images:
            raise DataError(f"{folder} is flat: training images must be in class folders train/<wnid>/")
    if not samples:
        raise DataError(f"no images found under {folder} (expected {split}/<wnid>/*.JPEG"
                        + (" or flat val/*.JPEG with LOC_val_solution.csv" if split == "val" else "") + ")")
    if not classes:
        raise DataError(f"no classes found in {root}: expected train/<wnid>/ folders")
    return samples, classes


def _make_imagenet_sample(item: tuple[str, int, str]) -> tuple[str, dict[str, bytes]]:
    path, class_id, wnid = item
    with open(path, "rb") as f:
        image = f.read()
    key = Path(path).stem.replace(".", "_")
    meta = json.dumps({"wnid": wnid, "file": Path(path).name}).encode()
    return key, {"jpg": image, "cls": str(class_id).encode(), "json": meta}


def write_imagenet_shards(src: str | os.PathLike, out: str | os.PathLike, *, split: str,
                          samples_per_shard: int = 1000, workers: int = 1, val_labels: str | None = None,
                          progress: bool = True) -> ShardSet:
    """Convert one split of the ILSVRC-2012 layout under ``src`` into shards under ``out``."""
    if split not in ("train", "val"):
        raise DataError(f"--split must be train or val, got {split!r}")
    samples, classes = collect_imagenet(src, split, val_labels)
    if split == "train":
        random.Random(SHUFFLE_SEED).shuffle(samples)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "classes.txt").write_text("".join(f"{wnid}\n" for wnid in classes))
    return write_shards(out_dir, split=split, items=samples, make_sample=_make_imagenet_sample,
                        samples_per_shard=samples_per_shard, workers=workers, dataset="imagenet",
                        index_extra={"num_classes": len(classes), "classes": classes,
                                     "fields": ["jpg", "cls", "json"], "shuffle_seed": SHUFFLE_SEED},
                        progress=progress)
