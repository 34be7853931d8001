"""Training losses for the two tasks (computed in fp32 whatever the engine's precision)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = 255  # Cityscapes "ignore" train id


def classification_loss(logits: torch.Tensor, target: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy of logits (B, K) against class indices (B,)."""
    return F.cross_entropy(logits.float(), target, label_smoothing=label_smoothing)


def upsample_to(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinearly resize logits (B, K, h, w) to ``size`` (H, W), as the released code (align_corners)."""
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=True)


def segmentation_loss(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy of logits (B, K, h, w) upsampled to labels (B, H, W), ignoring label 255."""
    logits = upsample_to(logits.float(), tuple(labels.shape[-2:]))  # (B, K, H, W)
    return F.cross_entropy(logits, labels.long(), ignore_index=IGNORE_INDEX, label_smoothing=label_smoothing)


def task_loss(task: str, logits: torch.Tensor, target: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """The loss of ``task`` ("classification" | "segmentation")."""
    if task == "segmentation":
        return segmentation_loss(logits, target, label_smoothing)
    return classification_loss(logits, target, label_smoothing)
