"""Predictions on a user's images: top-k classes, or full-resolution label maps.

Classification crops each image as the evaluation does (resize the short side, centre crop
``data.image_size``) and returns the top-k classes with their probabilities.

Segmentation returns logits at the input's full resolution. The image is padded (bottom/right, with
the mean colour) to a size the model accepts, the logits are resized to the padded size as in
training (bilinear, align_corners) and cropped back. ``tile`` runs it window by window instead:
windows of ``tile`` pixels overlapping by ``overlap`` cover the image, their resized logits are
averaged where they overlap (a card that cannot hold a 1024x2048 image holds a window). Flipping
and extra scales average the logits of the flipped / rescaled image, resized back to the input.

A window sees less context than the whole image (the equilibrium's receptive field is the whole
input, GroupNorm normalises over it), so tiled and whole-image maps agree exactly only when one
window covers the image; docs/training.md gives the measured agreement otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from trainer.inference import Predictor
from trainer.losses import upsample_to


@dataclass
class TopK:
    """The k most probable classes of one image, most probable first."""

    class_ids: list[int]
    names: list[str]
    probabilities: list[float]


def classify(predictor: Predictor, images: torch.Tensor, k: int) -> list[TopK]:
    """(B, 3, S, S) normalized crops -> the top-``k`` classes of each."""
    probabilities = predictor.logits(images).softmax(dim=1)  # (B, K)
    values, indices = probabilities.topk(min(k, probabilities.shape[1]), dim=1)
    return [TopK(class_ids=row.tolist(), names=[predictor.class_names[i] for i in row.tolist()],
                 probabilities=vals.tolist()) for row, vals in zip(indices, values)]


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _whole(predictor: Predictor, images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> logits (B, K, H, W): pad to the model's size multiple, resize, crop."""
    height, width = images.shape[-2:]
    multiple = predictor.model.size_multiple
    padded = F.pad(images, (0, _round_up(width, multiple) - width, 0, _round_up(height, multiple) - height))
    logits = predictor.logits(padded)  # (B, K, h, w)
    return upsample_to(logits, tuple(padded.shape[-2:]))[..., :height, :width]


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Start offsets of windows of ``window`` pixels every ``stride`` that cover ``length`` (the last
    window is aligned to the end); one window at 0 when it covers the whole length."""
    if window >= length:
        return [0]
    starts = list(range(0, length - window + 1, stride))
    if starts[-1] + window < length:
        starts.append(length - window)
    return starts


def _tiled(predictor: Predictor, image: torch.Tensor, tile: tuple[int, int], overlap: int,
           batch_size: int) -> torch.Tensor:
    """(1, 3, H, W) -> logits (1, K, H, W) averaged over overlapping windows of ``tile`` (h, w)."""
    height, width = image.shape[-2:]
    tile_h, tile_w = min(tile[0], height), min(tile[1], width)
    boxes = [(top, left) for top in window_starts(height, tile_h, max(tile_h - overlap, 1))
             for left in window_starts(width, tile_w, max(tile_w - overlap, 1))]
    total = torch.zeros(1, predictor.num_classes, height, width)
    count = torch.zeros(1, 1, height, width)
    for start in range(0, len(boxes), batch_size):
        chunk = boxes[start:start + batch_size]
        windows = torch.cat([image[..., t:t + tile_h, left:left + tile_w] for t, left in chunk])  # (n, 3, h, w)
        logits = _whole(predictor, windows)  # (n, K, h, w)
        for (t, left), window_logits in zip(chunk, logits):
            total[0, :, t:t + tile_h, left:left + tile_w] += window_logits
            count[0, :, t:t + tile_h, left:left + tile_w] += 1
    return total / count


def segment(predictor: Predictor, images: torch.Tensor, *, tile: tuple[int, int] | None = None, overlap: int = 0,
            flip: bool = False, scales: Sequence[float] = (1.0,), batch_size: int = 1) -> torch.Tensor:
    """(B, 3, H, W) normalized images -> logits (B, K, H, W) at the input resolution (see the module doc).

    ``tile`` (h, w) with ``overlap`` pixels: window by window, ``batch_size`` windows per forward
    (B must be 1 then). ``flip``: also the mirrored image. ``scales``: also rescaled copies.
    """
    height, width = images.shape[-2:]
    total = torch.zeros(images.shape[0], predictor.num_classes, height, width)
    views = 0
    for scale in scales:
        scaled = images if scale == 1.0 else F.interpolate(
            images, size=(max(1, round(height * scale)), max(1, round(width * scale))), mode="bilinear",
            align_corners=False)
        for mirrored in (False, True) if flip else (False,):
            view = scaled.flip(-1) if mirrored else scaled
            if tile is None:
                logits = _whole(predictor, view)
            else:
                logits = torch.cat([_tiled(predictor, one[None], tile, overlap, batch_size) for one in view])
            if mirrored:
                logits = logits.flip(-1)
            total += upsample_to(logits, (height, width))
            views += 1
    return total / views
