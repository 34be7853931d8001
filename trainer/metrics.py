"""Evaluation metrics as additive counters, reduced across ranks before they are read.

Counters (not per-rank averages) are summed with one all-reduce, so the result is exact whatever
the number of samples each rank saw: top-1/top-5 counts for classification, a confusion matrix for
segmentation (mIoU and per-class IoU follow from it).
"""

from __future__ import annotations

import torch

from trainer.distributed import all_reduce_sum
from trainer.losses import IGNORE_INDEX, upsample_to


class ClassificationMeter:
    """Top-1/top-5 accuracy and mean loss over everything ``update`` saw, on every rank."""

    def __init__(self, device: torch.device) -> None:
        # [top1 correct, top5 correct, samples, loss sum]
        self.counts = torch.zeros(4, dtype=torch.float64, device=device)

    @torch.no_grad()
    def update(self, logits: torch.Tensor, target: torch.Tensor, loss_sum: float) -> None:
        """Add a batch: logits (B, K), target (B,), summed (not mean) loss of the batch."""
        k = min(5, logits.shape[1])
        top = logits.topk(k, dim=1).indices  # (B, k)
        hit = top.eq(target.view(-1, 1))  # (B, k)
        self.counts += torch.tensor([hit[:, :1].sum().item(), hit.any(dim=1).sum().item(), target.numel(),
                                     loss_sum], dtype=torch.float64, device=self.counts.device)

    def compute(self) -> dict[str, float]:
        """Reduce across ranks (collective) and return {top1, top5, loss, samples} (accuracies in %)."""
        total = all_reduce_sum(self.counts.clone())
        n = max(total[2].item(), 1.0)
        return {"top1": 100.0 * total[0].item() / n, "top5": 100.0 * total[1].item() / n,
                "loss": total[3].item() / n, "samples": int(total[2].item())}


class ConfusionMeter:
    """Confusion matrix over ``num_classes`` (rows: truth, columns: prediction), 255 ignored."""

    def __init__(self, num_classes: int, device: torch.device, class_names: list[str] | None = None) -> None:
        self.num_classes = num_classes
        self.class_names = class_names
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)
        self.loss = torch.zeros(2, dtype=torch.float64, device=device)  # [loss sum, batches]

    @torch.no_grad()
    def update(self, logits: torch.Tensor, labels: torch.Tensor, loss: float | None = None) -> None:
        """Add a batch: logits (B, K, h, w) are upsampled to labels (B, H, W) before the argmax."""
        pred = upsample_to(logits.float(), tuple(labels.shape[-2:])).argmax(dim=1)  # (B, H, W)
        self.add(pred, labels)
        if loss is not None:
            self.loss += torch.tensor([loss, 1.0], dtype=torch.float64, device=self.loss.device)

    @torch.no_grad()
    def add(self, pred: torch.Tensor, labels: torch.Tensor) -> None:
        """Add predicted and true label maps of equal shape."""
        labels = labels.long().flatten()
        pred = pred.long().flatten()
        keep = (labels != IGNORE_INDEX) & (labels >= 0) & (labels < self.num_classes)
        index = labels[keep] * self.num_classes + pred[keep]
        self.matrix += torch.bincount(index, minlength=self.num_classes ** 2).view(self.num_classes, -1)

    def compute(self) -> dict[str, float]:
        """Reduce across ranks (collective) and return miou, pixel_acc, loss and iou/<class> (in %).

        Classes absent from both truth and prediction (union 0) are left out of the mean and their
        IoU is NaN (written as null in JSON).
        """
        matrix = all_reduce_sum(self.matrix.clone()).double()
        loss = all_reduce_sum(self.loss.clone())
        return confusion_metrics(matrix, self.class_names) | {"loss": loss[0].item() / max(loss[1].item(), 1.0)}


def confusion_metrics(matrix: torch.Tensor, class_names: list[str] | None = None) -> dict[str, float]:
    """mIoU, pixel accuracy and per-class IoU (all in %) of a confusion matrix (K, K).

    Per-class keys are ``iou/<name>`` with ``class_names`` (one per class), else ``iou/<class id>``.
    """
    matrix = matrix.double()
    true_positive = matrix.diag()
    union = matrix.sum(0) + matrix.sum(1) - true_positive
    present = union > 0
    iou = torch.where(present, true_positive / union.clamp(min=1), torch.full_like(union, float("nan")))
    out = {"miou": 100.0 * iou[present].mean().item() if present.any() else 0.0,
           "pixel_acc": 100.0 * true_positive.sum().item() / max(matrix.sum().item(), 1.0)}
    for k, value in enumerate(iou.tolist()):
        out[f"iou/{class_names[k] if class_names else k}"] = 100.0 * value if value == value else float("nan")
    return out
