"""Label maps as image files: the benchmark's PNG formats and the official colour overlay.

A prediction is written as an 8-bit label PNG, either in train ids (0-18, what the model predicts)
or in Cityscapes label ids (the benchmark's submission format, via cityscapesscripts' table), plus
a colour PNG in the official palette and an overlay of that colour on the input image.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from data_pipelines.labels import cityscapes_train_id_palette, cityscapes_train_id_to_id

OVERLAY_ALPHA = 0.5  # weight of the class colour in the overlay


def colorize(train_ids: np.ndarray) -> np.ndarray:
    """(H, W) uint8 train ids -> (H, W, 3) uint8 official Cityscapes colours."""
    return cityscapes_train_id_palette()[train_ids]


def overlay(image: np.ndarray, colours: np.ndarray, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """(H, W, 3) uint8 image and colours -> their blend, ``alpha`` of the colour (rounded to nearest)."""
    blend = alpha * colours.astype(np.float32) + (1.0 - alpha) * image.astype(np.float32)
    return np.clip(np.rint(blend), 0, 255).astype(np.uint8)


def write_prediction(train_ids: np.ndarray, image: np.ndarray, out_stem: Path, *, label_ids: bool = False
                     ) -> dict[str, str]:
    """Write ``<stem>_labelTrainIds.png`` (or ``_labelIds.png``), ``_color.png`` and ``_overlay.png``.

    ``train_ids`` (H, W) uint8 and ``image`` (H, W, 3) uint8 have the input's size. Returns the paths by kind.
    """
    out_stem.parent.mkdir(parents=True, exist_ok=True)
    colours = colorize(train_ids)
    if label_ids:
        label_path = out_stem.with_name(out_stem.name + "_labelIds.png")
        Image.fromarray(cityscapes_train_id_to_id()[train_ids]).save(label_path)
    else:
        label_path = out_stem.with_name(out_stem.name + "_labelTrainIds.png")
        Image.fromarray(train_ids).save(label_path)
    color_path = out_stem.with_name(out_stem.name + "_color.png")
    Image.fromarray(colours).save(color_path)
    overlay_path = out_stem.with_name(out_stem.name + "_overlay.png")
    Image.fromarray(overlay(image, colours)).save(overlay_path)
    return {"labels": str(label_path), "color": str(color_path), "overlay": str(overlay_path)}
