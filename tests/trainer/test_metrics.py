"""Metrics from additive counters: top-k, confusion-matrix IoU with the ignore label, and losses."""

from __future__ import annotations

import math

import pytest
import torch

from trainer.losses import segmentation_loss
from trainer.metrics import ClassificationMeter, ConfusionMeter, confusion_metrics

CPU = torch.device("cpu")


def test_topk_counts_and_mean_loss():
    meter = ClassificationMeter(CPU)
    logits = torch.tensor([[0.1, 0.9, 0.0, 0.0, 0.0, 0.0],    # top1 = 1
                           [0.9, 0.0, 0.8, 0.7, 0.6, 0.5],    # target 5 is 6th: neither
                           [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]])   # target 1 is 5th: top5 only
    meter.update(logits, torch.tensor([1, 1, 1]), loss_sum=3.0)
    out = meter.compute()
    assert out["top1"] == pytest.approx(100 / 3) and out["top5"] == pytest.approx(200 / 3)
    assert out["loss"] == pytest.approx(1.0) and out["samples"] == 3


def test_confusion_iou_ignores_255_and_absent_classes():
    meter = ConfusionMeter(3, CPU)
    labels = torch.tensor([[0, 0, 1, 255]])
    pred = torch.tensor([[0, 1, 1, 2]])
    meter.add(pred, labels)
    out = meter.compute()
    # class 0: tp 1, union 2 -> 50%; class 1: tp 1, union 2 -> 50%; class 2 absent (255 ignored)
    assert out["iou/0"] == pytest.approx(50.0) and out["iou/1"] == pytest.approx(50.0)
    assert math.isnan(out["iou/2"]) and out["miou"] == pytest.approx(50.0)
    assert out["pixel_acc"] == pytest.approx(100 * 2 / 3)


def test_confusion_update_upsamples_logits_to_label_size():
    meter = ConfusionMeter(2, CPU)
    logits = torch.zeros(1, 2, 2, 2)
    logits[0, 1] = 1.0  # predicts class 1 everywhere
    meter.update(logits, torch.ones(1, 8, 8, dtype=torch.long))
    assert meter.matrix.sum().item() == 64 and confusion_metrics(meter.matrix)["miou"] == pytest.approx(100.0)


def test_segmentation_loss_ignores_255():
    logits = torch.randn(1, 3, 4, 4)
    labels = torch.full((1, 8, 8), 255, dtype=torch.long)
    labels[0, :4] = 1
    full = segmentation_loss(logits, labels)
    up = torch.nn.functional.interpolate(logits, size=(8, 8), mode="bilinear", align_corners=True)
    expected = torch.nn.functional.cross_entropy(up[..., :4, :], labels[:, :4])
    assert full.item() == pytest.approx(expected.item(), rel=1e-6)
