"""Synthetic data: exact raw layouts, deterministic by seed, classes tell apart by shape/texture."""

from __future__ import annotations

import csv
import hashlib

import numpy as np
from PIL import Image

from data_pipelines import synth_cityscapes, synth_imagenet
from data_pipelines.synth.imagenet import class_recipe


def _digest(root) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_imagenet_layout_and_determinism(tmp_path):
    synth_imagenet(tmp_path / "a", classes=3, train_per_class=2, val_per_class=2, size=(20, 12), seed=5)
    synth_imagenet(tmp_path / "b", classes=3, train_per_class=2, val_per_class=2, size=(20, 12), seed=5)
    synth_imagenet(tmp_path / "c", classes=3, train_per_class=2, val_per_class=2, size=(20, 12), seed=6)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b") != _digest(tmp_path / "c")
    root = tmp_path / "a"
    assert sorted(p.name for p in (root / "train").iterdir()) == ["n00000000", "n00000001", "n00000002"]
    assert Image.open(root / "train/n00000001/n00000001_1.JPEG").size == (20, 12)
    rows = list(csv.DictReader(open(root / "LOC_val_solution.csv")))
    assert len(rows) == 6 and all((root / "val" / f"{r['ImageId']}.JPEG").exists() for r in rows)
    assert len({class_recipe(k)[:2] for k in range(64)}) == 64  # 64 distinct (shape, texture) pairs


def test_cityscapes_layout_uses_real_label_ids(tmp_path):
    synth_cityscapes(tmp_path, train=3, val=1, size=(64, 32), seed=0)
    images = sorted((tmp_path / "leftImg8bit/train").rglob("*_leftImg8bit.png"))
    assert len(images) == 3
    for image in images:
        label = image.parents[3] / "gtFine/train" / image.parent.name / image.name.replace(
            "_leftImg8bit.png", "_gtFine_labelIds.png")
        ids = np.asarray(Image.open(label))
        assert ids.shape == (32, 64) and Image.open(image).size == (64, 32)
        assert {7, 8, 23} <= set(np.unique(ids).tolist())  # road, sidewalk, sky: real Cityscapes ids
        assert np.unique(ids).max() <= 33
