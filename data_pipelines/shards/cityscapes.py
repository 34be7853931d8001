"""Cityscapes raw layout -> shards with ``image.png`` + ``labels.png`` (train ids) + ``json``.

Reads ``leftImg8bit/<split>/<city>/*_leftImg8bit.png`` and the matching
``gtFine/<split>/<city>/*_gtFine_labelIds.png``; label ids are mapped to the 19 train ids
(255 = ignore) with the official cityscapesscripts table, and stored as an 8-bit PNG.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

from data_pipelines.errors import DataError
from data_pipelines.labels import map_cityscapes_labels
from data_pipelines.shards.index import ShardSet
from data_pipelines.shards.writer import write_shards

IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_SUFFIX = "_gtFine_labelIds.png"


def collect_cityscapes(src: str | os.PathLike, split: str) -> list[tuple[str, str]]:
    """[(image path, label-id path)] of a split, sorted. DataError for unusable layouts."""
    root = Path(src)
    image_root = root / "leftImg8bit" / split
    if not image_root.is_dir():
        raise DataError(f"{image_root} does not exist: --src must hold leftImg8bit/<split>/<city>/ and "
                        "gtFine/<split>/<city>/")
    pairs, missing = [], []
    for image in sorted(image_root.glob(f"*/*{IMAGE_SUFFIX}")):
        stem = image.name[: -len(IMAGE_SUFFIX)]
        label = root / "gtFine" / split / image.parent.name / f"{stem}{LABEL_SUFFIX}"
        (pairs.append((str(image), str(label))) if label.exists() else missing.append(str(label)))
    if missing:
        raise DataError(f"{len(missing)} images of {split} have no fine labels (first missing: {missing[0]}); "
                        "download gtFine_trainvaltest or remove those images")
    if not pairs:
        raise DataError(f"no images found under {image_root} (expected <city>/*{IMAGE_SUFFIX})")
    return pairs


def read_image_size(image_path: str) -> tuple[bytes, tuple[int, int]]:
    """(file bytes, (width, height)) of a camera image, decoded in full so a truncated or corrupt file is
    refused here, naming it, wherever it sits in the split (not at training time, as a bad sample)."""
    try:
        with open(image_path, "rb") as f:
            data = f.read()
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            return data, image.size
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError ... for damaged files
        raise DataError(f"cannot read image {image_path} ({type(err).__name__}: {err}): re-extract it from "
                        "leftImg8bit_trainvaltest.zip, or remove it together with its gtFine labels") from None


def _make_cityscapes_sample(item: tuple[str, str]) -> tuple[str, dict[str, bytes]]:
    image_path, label_path = item
    try:
        label_ids = np.asarray(Image.open(label_path))
    except Exception as err:  # as for images: any decoding failure means an unusable file
        raise DataError(f"cannot read label image {label_path} ({type(err).__name__}: {err}): re-extract it "
                        "from gtFine_trainvaltest.zip, or remove it together with its image") from None
    if label_ids.ndim != 2:
        raise DataError(f"{label_path} is not a single-channel labelIds image (shape {label_ids.shape})")
    image, size = read_image_size(image_path)
    if size != (label_ids.shape[1], label_ids.shape[0]):
        raise DataError(f"{image_path} is {size[0]}x{size[1]} but its labels {label_path} are "
                        f"{label_ids.shape[1]}x{label_ids.shape[0]}: they must be the same size")
    buffer = io.BytesIO()
    Image.fromarray(map_cityscapes_labels(label_ids.astype(np.uint8))).save(buffer, format="PNG")
    key = Path(image_path).name[: -len(IMAGE_SUFFIX)]
    meta = json.dumps({"city": Path(image_path).parent.name, "size": [label_ids.shape[1], label_ids.shape[0]]})
    return key, {"image.png": image, "labels.png": buffer.getvalue(), "json": meta.encode()}


def write_cityscapes_shards(src: str | os.PathLike, out: str | os.PathLike, *, split: str,
                            samples_per_shard: int = 100, workers: int = 1, progress: bool = True) -> ShardSet:
    """Convert one split of the Cityscapes layout under ``src`` into shards under ``out``."""
    if split not in ("train", "val"):
        raise DataError(f"--split must be train or val, got {split!r}")
    pairs = collect_cityscapes(src, split)
    size = list(read_image_size(pairs[0][0])[1])
    from data_pipelines.labels import CITYSCAPES_CLASSES

    return write_shards(out, split=split, items=pairs, make_sample=_make_cityscapes_sample,
                        samples_per_shard=samples_per_shard, workers=workers, dataset="cityscapes",
                        index_extra={"num_classes": 19, "classes": list(CITYSCAPES_CLASSES),
                                     "fields": ["image.png", "labels.png", "json"], "image_size": size},
                        progress=progress)
