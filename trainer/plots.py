"""Figures logged as MLflow artifacts: solver convergence, segmentation overlays (the run summary:
``trainer.summary_plot``)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # no display on cluster nodes

import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402


def residual_label(stop_mode: str) -> str:
    return ("relative residual ||f(z)-z|| / ||f(z)||" if stop_mode == "rel" else "absolute residual ||f(z)-z||")


def _curves(ax, joint: list[float], branches: list[list[float]], *, style: str, what: str) -> None:
    """The joint residual (thick) and one thin curve per branch, per f evaluation (x from 1)."""
    xs = range(1, len(joint) + 1)
    ax.semilogy(xs, [max(v, 1e-12) for v in joint], style, color="black", lw=2, marker=".",
                label=f"{what}: all branches (joint)")
    for i in range(len(branches[0]) if branches else 0):
        ax.semilogy(xs[:len(branches)], [max(row[i], 1e-12) for row in branches], style, color=f"C{i}", lw=1.2,
                    label=f"{what}: branch {i}" + (" (finest)" if i == 0 else ""))


def _limits(ax, tol: float, cap: int, *, what: str, color: str, style: str = ":") -> None:
    ax.axhline(tol, color=color, ls=style, lw=1, label=f"{what} tolerance {tol:g}")
    ax.axvline(cap, color=color, ls="-.", lw=1, alpha=0.7, label=f"{what} cap: {cap} evaluations")


def convergence(data: dict):
    """The convergence figure of one evaluation, from the JSON-able ``data`` written beside it.

    Left: the evaluation's forward solves (means over the eval batches of all ranks). Right: the
    last training step before it (rank 0's last micro-batch), forward and adjoint solves. Curves per
    branch and joint, tolerances as horizontal lines, caps as vertical ones.
    """
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2), sharey=True)
    label = residual_label(data["stop_mode"])
    ev = data["eval"]
    _curves(left, ev["joint"], ev["branches"], style="-", what="forward")
    _limits(left, data["f_tol"], data["f_max_iter"], what="forward", color="red")
    left.set_title(f"eval at step {data['step']}: forward solve\n(mean over {ev['solves']} eval batches, "
                   "a finished solve keeps its last value)", fontsize=9)
    left.set_ylabel(label)
    train = data.get("train")
    if train and train.get("f_joint"):
        _curves(right, train["f_joint"], train["f_branches"], style="-", what="forward")
        _limits(right, data["f_tol"], data["f_max_iter"], what="forward", color="red")
        if train.get("b_joint"):
            _curves(right, train["b_joint"], train["b_branches"], style="--", what="adjoint")
            _limits(right, data["b_tol"], data["b_max_iter"], what="adjoint", color="purple", style="--")
        right.set_title(f"training step {train['step']}: forward (solid) and adjoint (dashed) solves\n"
                        "(rank 0's last micro-batch)", fontsize=9)
    else:
        right.text(0.5, 0.5, "no equilibrium training step yet\n(unrolled pre-training)", ha="center",
                   va="center", transform=right.transAxes)
        right.set_title("training solves", fontsize=9)
    for ax in (left, right):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("f evaluation (solver iteration)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    fig.suptitle(f"Equilibrium convergence at step {data['step']} ({data['stop_mode']} residuals)", fontsize=11)
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
