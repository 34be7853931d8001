"""Label tables: Cityscapes label ids -> the 19 train ids (official table from cityscapesscripts)."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

IGNORE_INDEX = 255  # train id of every pixel that is not one of the 19 evaluated classes

# The 19 evaluated classes in train-id order (the same order cityscapesscripts uses).
CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle",
    "bicycle",
)


@lru_cache(maxsize=1)
def cityscapes_id_to_train_id() -> np.ndarray:
    """A (256,) uint8 lookup table: label id -> train id, 255 for ignored and unknown ids.

    Built from ``cityscapesscripts.helpers.labels`` (the official table) so it cannot drift from it;
    ids the table does not list (34..255) and train ids -1/255 map to ``IGNORE_INDEX``.
    """
    from cityscapesscripts.helpers.labels import labels

    table = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for label in labels:
        if 0 <= label.id < 256 and 0 <= label.trainId < len(CITYSCAPES_CLASSES):
            table[label.id] = label.trainId
    return table


@lru_cache(maxsize=1)
def cityscapes_ids_by_name() -> dict[str, int]:
    """Label name -> label id (e.g. ``"road" -> 7``), for drawing synthetic scenes."""
    from cityscapesscripts.helpers.labels import labels

    return {label.name: label.id for label in labels if label.id >= 0}


def map_cityscapes_labels(label_ids: np.ndarray) -> np.ndarray:
    """(H, W) uint8 label ids -> (H, W) uint8 train ids (255 = ignore)."""
    return cityscapes_id_to_train_id()[label_ids]


@lru_cache(maxsize=1)
def cityscapes_train_id_palette() -> np.ndarray:
    """A (256, 3) uint8 table: train id -> the official Cityscapes colour (black for ignore and unknown ids).

    The colours are ``cityscapesscripts.helpers.labels``' ``color`` of each evaluated class, the
    palette of the benchmark's own visualisations.
    """
    from cityscapesscripts.helpers.labels import labels

    table = np.zeros((256, 3), dtype=np.uint8)
    for label in labels:
        if 0 <= label.trainId < len(CITYSCAPES_CLASSES):
            table[label.trainId] = label.color
    return table


@lru_cache(maxsize=1)
def cityscapes_train_id_to_id() -> np.ndarray:
    """A (256,) uint8 table: train id -> Cityscapes label id (the benchmark's submission format);
    ignore and unknown train ids -> 0 ("unlabeled")."""
    from cityscapesscripts.helpers.labels import labels

    table = np.zeros(256, dtype=np.uint8)
    for label in labels:
        if 0 <= label.trainId < len(CITYSCAPES_CLASSES) and not label.ignoreInEval:
            table[label.trainId] = label.id
    return table
