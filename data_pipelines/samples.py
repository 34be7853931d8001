"""What a dataset's samples hold and how one is decoded: the only fields ever read from a shard."""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from data_pipelines import transforms
from data_pipelines.errors import DataError
from data_pipelines.sources import RawSample
from data_pipelines.transforms import BadSample

IMAGE_FIELDS = ("jpg", "jpeg", "png", "webp")  # ImageNet image, first present wins
DATASETS = ("imagenet", "cityscapes")


@dataclass(frozen=True)
class DecodeSpec:
    """How to turn raw fields into (uint8 image, target); picklable, sent to loader workers."""

    dataset: str
    train: bool  # training augmentation (when augment) vs evaluation transform
    image_size: int
    eval_resize: int | None = None
    crop_size: tuple[int, int] | None = None  # Cityscapes training crop (W, H)
    scale_range: tuple[float, float] = (0.5, 2.0)
    crop_scale: tuple[float, float] = (0.08, 1.0)
    augment: bool = True
    num_classes: int | None = None  # ImageNet labels outside [0, num_classes) are bad samples

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise DataError(f"unknown dataset {self.dataset!r}; known: {', '.join(DATASETS)}")

    @property
    def wanted(self) -> frozenset[str]:
        if self.dataset == "imagenet":
            return frozenset((*IMAGE_FIELDS, "cls"))
        return frozenset(("image.png", "labels.png"))

    @property
    def crop(self) -> tuple[int, int]:
        return tuple(self.crop_size) if self.crop_size else (2 * self.image_size, self.image_size)

    def decode(self, raw: RawSample, rng: random.Random) -> tuple[torch.Tensor, torch.Tensor | int]:
        """-> ((3, H, W) uint8, class id or (H, W) uint8 train ids). Raises BadSample."""
        if self.dataset == "imagenet":
            image_field = next((f for f in IMAGE_FIELDS if f in raw.fields), None)
            if image_field is None:
                raise BadSample("no image field (jpg/jpeg/png/webp)")
            if "cls" not in raw.fields:
                raise BadSample("no cls field")
            try:
                label = int(raw.fields["cls"].decode("ascii").strip())
            except (UnicodeDecodeError, ValueError) as err:
                raise BadSample(f"cls is not an integer: {raw.fields['cls'][:20]!r}") from err
            if label < 0 or (self.num_classes is not None and label >= self.num_classes):
                raise BadSample(f"label {label} outside [0, {self.num_classes})")
            data = raw.fields[image_field]
            if self.train and self.augment:
                return transforms.imagenet_train(data, rng, self.image_size, self.crop_scale), label
            return transforms.imagenet_eval(data, self.image_size, self.eval_resize), label
        for name in ("image.png", "labels.png"):
            if name not in raw.fields:
                raise BadSample(f"no {name} field")
        if self.train:
            return transforms.cityscapes_train(raw.fields["image.png"], raw.fields["labels.png"], rng,
                                               self.crop, self.scale_range, self.augment)
        return transforms.cityscapes_eval(raw.fields["image.png"], raw.fields["labels.png"])
