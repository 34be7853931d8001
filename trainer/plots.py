"""Figures logged as MLflow artifacts: loss curve, solver convergence, segmentation overlays."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # no display on cluster nodes

import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402


def loss_curve(steps: list[int], losses: list[float], pretrain_steps: int):
    """Training loss per step, with the warm-up → equilibrium switch marked."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, losses, lw=1)
    if steps and 0 < pretrain_steps < steps[-1]:
        ax.axvline(pretrain_steps, color="grey", ls="--", lw=1, label="warm-up ends")
        ax.legend()
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss")
    ax.set_title("Training loss")
    fig.tight_layout()
    return fig


def convergence(residual_trace: list[float], branch_residuals: list[float], step: int):
    """The paper's convergence figure: residual vs solver iteration (mean over eval batches),
    with the final residual of each branch (scale) marked at the last iteration."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    if residual_trace:
        ax.semilogy(range(1, len(residual_trace) + 1), residual_trace, marker=".", label="all branches (joint)")
        for i, value in enumerate(branch_residuals):
            ax.scatter([len(residual_trace)], [max(value, 1e-12)], marker="x", label=f"branch {i} (final)")
        ax.legend(fontsize=8)
    ax.set_xlabel("solver iteration")
    ax.set_ylabel("residual")
    ax.set_title(f"Equilibrium convergence at step {step}")
    fig.tight_layout()
    return fig


def _palette(num_classes: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    colors = torch.randint(0, 256, (max(num_classes, 1) + 1, 3), generator=generator, dtype=torch.uint8)
    colors[-1] = 0  # ignore label shown black
    return colors


def segmentation_overlays(overlays: list[tuple], num_classes: int, mean, std):
    """A grid of (image, truth, prediction) rows."""
    rows = max(len(overlays), 1)
    fig, axes = plt.subplots(rows, 3, figsize=(9, 2.5 * rows), squeeze=False)
    palette = _palette(num_classes)
    mean_t = torch.tensor(mean).view(3, 1, 1)
    std_t = torch.tensor(std).view(3, 1, 1)
    for row, (image, label, pred) in enumerate(overlays):
        shown = (image * std_t + mean_t).clamp(0, 1).permute(1, 2, 0).numpy()
        label = label.long().clone()
        label[(label < 0) | (label >= num_classes)] = num_classes
        for col, (data, title) in enumerate([(shown, "image"), (palette[label].numpy(), "truth"),
                                             (palette[pred.long().clamp(0, num_classes)].numpy(), "prediction")]):
            axes[row][col].imshow(data)
            axes[row][col].set_title(title, fontsize=8)
            axes[row][col].axis("off")
    fig.tight_layout()
    return fig


def close(fig) -> None:
    plt.close(fig)
