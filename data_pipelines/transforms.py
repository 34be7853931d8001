"""Decoding and augmentation of one sample, deterministic given a ``random.Random``.

Images stay uint8 until the batch reaches the main process (4× less data between processes);
``normalize`` turns a uint8 batch into float32 with the ImageNet mean/std.

ImageNet training: RandomResizedCrop (scale, ratio as in torchvision) + horizontal flip. The crop
box is drawn first, then the JPEG is decoded at the largest DCT reduction (1/2, 1/4, 1/8) that still
leaves at least the output resolution inside the box (``draft``), and the box is resized with one
antialiased bilinear resize. Evaluation: resize the short side to ``eval_resize`` then centre-crop.
Cityscapes training: joint random scale, random crop (image padded with the mean colour, label with
255) and flip; evaluation: the full image.
"""

from __future__ import annotations

import io
import math
import random

import numpy as np
import torch
from PIL import Image

from data_pipelines.labels import IGNORE_INDEX

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_MEAN_UINT8 = tuple(int(round(255 * m)) for m in IMAGENET_MEAN)


class BadSample(Exception):
    """A sample that cannot be used (undecodable image, missing or out-of-range label)."""


def open_image(data: bytes) -> Image.Image:
    """A lazily decoded PIL image; BadSample if the header is unreadable."""
    try:
        image = Image.open(io.BytesIO(data))
    except Exception as err:  # PIL raises many types for garbage (UnidentifiedImageError, SyntaxError, ...)
        raise BadSample(f"undecodable image: {err}") from err
    return image


def load_rgb(image: Image.Image) -> Image.Image:
    try:
        return image.convert("RGB")
    except Exception as err:  # truncated/corrupt data surfaces only when pixels are decoded
        raise BadSample(f"undecodable image: {err}") from err


def random_resized_crop_box(width: int, height: int, rng: random.Random, scale=(0.08, 1.0),
                            ratio=(3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """(left, top, w, h) exactly as torchvision's RandomResizedCrop.get_params draws it."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return rng.randint(0, width - w), rng.randint(0, height - h), w, h
    in_ratio = width / height  # fallback: central crop
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def to_chw_uint8(image: Image.Image) -> torch.Tensor:
    """PIL RGB -> (3, H, W) uint8."""
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()


def imagenet_train(data: bytes, rng: random.Random, size: int, scale=(0.08, 1.0)) -> torch.Tensor:
    """RandomResizedCrop(size) + flip of encoded image bytes -> (3, size, size) uint8."""
    image = open_image(data)
    width, height = image.size
    left, top, w, h = random_resized_crop_box(width, height, rng, scale)
    flip = rng.random() < 0.5
    reduce = 1
    while reduce < 8 and min(w, h) / (reduce * 2) >= size:
        reduce *= 2
    if reduce > 1 and image.format == "JPEG":
        image.draft("RGB", (math.ceil(width / reduce), math.ceil(height / reduce)))
    image = load_rgb(image)
    sx, sy = image.size[0] / width, image.size[1] / height  # the draft's actual reduction
    box = (left * sx, top * sy, (left + w) * sx, (top + h) * sy)
    image = image.resize((size, size), Image.BILINEAR, box=box)
    if flip:
        image = image.transpose(Image.FLIP_LEFT_RIGHT)
    return to_chw_uint8(image)


def imagenet_eval(data: bytes, size: int, resize: int | None = None) -> torch.Tensor:
    """Resize the short side to ``resize`` (default size/0.875), centre-crop ``size`` -> (3, size, size)."""
    resize = resize or int(round(size / 0.875))
    image = load_rgb(open_image(data))
    width, height = image.size
    if width <= height:
        new_w, new_h = resize, int(resize * height / width)
    else:
        new_w, new_h = int(resize * width / height), resize
    image = image.resize((new_w, new_h), Image.BILINEAR)
    left, top = int(round((new_w - size) / 2.0)), int(round((new_h - size) / 2.0))
    return to_chw_uint8(image.crop((left, top, left + size, top + size)))


def decode_label_map(data: bytes) -> np.ndarray:
    """PNG of train ids -> (H, W) uint8; BadSample for ids that are neither 0..18 nor 255."""
    try:
        labels = np.asarray(Image.open(io.BytesIO(data)))
    except Exception as err:
        raise BadSample(f"undecodable label map: {err}") from err
    if labels.ndim != 2:
        raise BadSample(f"label map has shape {labels.shape}, expected (H, W)")
    labels = labels.astype(np.uint8)
    bad = (labels >= 19) & (labels != IGNORE_INDEX)
    if bad.any():
        raise BadSample(f"label map holds ids outside 0..18/255 (e.g. {int(labels[bad][0])})")
    return labels


def cityscapes_train(image_data: bytes, label_data: bytes, rng: random.Random, crop: tuple[int, int],
                     scale_range=(0.5, 2.0), augment: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Joint random scale, crop ``crop`` = (W, H) and flip -> ((3, H, W) uint8, (H, W) uint8)."""
    image = load_rgb(open_image(image_data))
    labels = decode_label_map(label_data)
    if labels.shape != (image.size[1], image.size[0]):
        raise BadSample(f"label map {labels.shape[::-1]} and image {image.size} differ in size")
    label_image = Image.fromarray(labels)
    crop_w, crop_h = crop
    if augment:
        s = rng.uniform(*scale_range)
        new_size = (max(1, int(image.size[0] * s + 0.5)), max(1, int(image.size[1] * s + 0.5)))
        image = image.resize(new_size, Image.BILINEAR)
        label_image = label_image.resize(new_size, Image.NEAREST)
    width, height = image.size
    if width < crop_w or height < crop_h:  # pad bottom/right: mean colour and ignore
        padded = Image.new("RGB", (max(width, crop_w), max(height, crop_h)), _MEAN_UINT8)
        padded.paste(image, (0, 0))
        padded_labels = Image.new("L", padded.size, IGNORE_INDEX)
        padded_labels.paste(label_image, (0, 0))
        image, label_image, (width, height) = padded, padded_labels, padded.size
    if augment:
        left, top = rng.randint(0, width - crop_w), rng.randint(0, height - crop_h)
    else:
        left, top = (width - crop_w) // 2, (height - crop_h) // 2
    box = (left, top, left + crop_w, top + crop_h)
    image, label_image = image.crop(box), label_image.crop(box)
    if augment and rng.random() < 0.5:
        image, label_image = image.transpose(Image.FLIP_LEFT_RIGHT), label_image.transpose(Image.FLIP_LEFT_RIGHT)
    return to_chw_uint8(image), torch.from_numpy(np.asarray(label_image, dtype=np.uint8).copy())


def cityscapes_eval(image_data: bytes, label_data: bytes) -> tuple[torch.Tensor, torch.Tensor]:
    """The full image and its train-id map -> ((3, H, W) uint8, (H, W) uint8)."""
    image = load_rgb(open_image(image_data))
    labels = decode_label_map(label_data)
    if labels.shape != (image.size[1], image.size[0]):
        raise BadSample(f"label map {labels.shape[::-1]} and image {image.size} differ in size")
    return to_chw_uint8(image), torch.from_numpy(labels.copy())


_NORMALIZE_MEAN = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(1, 3, 1, 1) * 255
_NORMALIZE_INV_STD = 1.0 / (torch.tensor(IMAGENET_STD, dtype=torch.float32).view(1, 3, 1, 1) * 255)


def normalize(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) uint8 -> float32 normalized with the ImageNet mean/std (one new tensor, in-place ops)."""
    return images.to(torch.float32).sub_(_NORMALIZE_MEAN).mul_(_NORMALIZE_INV_STD)
