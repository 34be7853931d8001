"""Cityscapes: the id -> train id mapping agrees with cityscapesscripts; shards and augmentation."""

from __future__ import annotations

import numpy as np
import pytest
from cityscapesscripts.helpers.labels import labels as official_labels
from PIL import Image

from data_pipelines import build_eval_loader, build_train_stream, write_cityscapes_shards
from data_pipelines.labels import CITYSCAPES_CLASSES, cityscapes_id_to_train_id


def _official_train_id(label_id: int) -> int:
    for label in official_labels:
        if label.id == label_id:
            return 255 if label.trainId in (-1, 255) else label.trainId
    return 255  # ids the table does not list


def test_mapping_table_agrees_with_cityscapesscripts_for_every_label_id():
    table = cityscapes_id_to_train_id()
    assert [int(table[i]) for i in range(256)] == [_official_train_id(i) for i in range(256)]
    names = {label.trainId: label.name for label in official_labels if 0 <= label.trainId < 19}
    assert CITYSCAPES_CLASSES == tuple(names[i] for i in range(19))


@pytest.mark.timeout(60)
def test_every_label_id_maps_through_shards_and_loader(tmp_path):
    # one scene whose label map holds every id 0..33 (and some unknown ones) in 8x8 blocks
    ids = np.array(list(range(34)) + [34, 100, 254, 255] * 2, dtype=np.uint8)  # 42 blocks
    label_ids = np.repeat(np.repeat(ids.reshape(6, 7), 8, axis=0), 8, axis=1)  # (48, 56)
    image_dir, label_dir = tmp_path / "raw/leftImg8bit/val/x", tmp_path / "raw/gtFine/val/x"
    image_dir.mkdir(parents=True)
    label_dir.mkdir(parents=True)
    Image.fromarray(np.zeros((48, 56, 3), np.uint8)).save(image_dir / "x_000000_000019_leftImg8bit.png")
    Image.fromarray(label_ids).save(label_dir / "x_000000_000019_gtFine_labelIds.png")
    write_cityscapes_shards(tmp_path / "raw", tmp_path / "shards", split="val", progress=False)
    loader = build_eval_loader("cityscapes", str(tmp_path / "shards"), batch_size=1, workers=0, rank=0,
                               world_size=1, image_size=32)
    (images, targets), = list(loader)
    assert images.shape == (1, 3, 48, 56) and targets.shape == (1, 48, 56)
    expected = np.vectorize(_official_train_id)(label_ids)
    assert np.array_equal(targets[0].numpy(), expected)


@pytest.mark.timeout(60)
def test_train_crops_are_joint_and_padded_with_ignore(cityscapes_shards):
    stream = build_train_stream("cityscapes", str(cityscapes_shards["train"]), batch_size=2, workers=0, rank=0,
                                world_size=1, seed=0, image_size=48, crop_size=(80, 48), scale_range=(0.5, 0.6))
    images, targets = next(iter(stream))
    assert images.shape == (2, 3, 48, 80) and images.dtype.is_floating_point
    assert targets.shape == (2, 48, 80)
    # scaled to at most 0.6 x (64, 32): the crop is larger than the image, the rest is ignore
    assert (targets[:, 20:, :] == 255).all() and (targets[:, 40:, 40:] == 255).all()
    assert set(targets.unique().tolist()) - {255} <= set(range(19))


def test_missing_fine_labels_is_a_clear_error(cityscapes_raw, tmp_path):
    import shutil

    from data_pipelines import DataError

    raw = tmp_path / "raw"
    shutil.copytree(cityscapes_raw, raw)
    victim = sorted((raw / "gtFine/val").rglob("*_gtFine_labelIds.png"))[0]
    victim.unlink()
    with pytest.raises(DataError, match="have no fine labels"):
        write_cityscapes_shards(raw, tmp_path / "out", split="val", progress=False)
