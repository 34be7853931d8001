"""The run-summary figure, redrawn at every evaluation from the logged history.

Six panels over optimizer steps: loss (train, eval), accuracy (train, eval), f/b evaluations per step
with the caps, the forward residual with its tolerance and the solver-health threshold, the fraction
of samples whose solves reached their tolerance, and images/s. Two different things are called
"warm-up" in DEQ training; the figure names and marks them differently: the DEQ's *unrolled
pre-training* (``deq.pretrain_steps``, shaded) and the *LR warm-up* (``optim.warmup_steps``, a dotted
line where it ends).
"""

from __future__ import annotations

import math

from trainer.plots import plt


def _series(history: list[dict], key: str) -> tuple[list[int], list[float]]:
    points = [(h["step"], h[key]) for h in history if key in h and math.isfinite(h[key])]
    return [p[0] for p in points], [p[1] for p in points]


def _mark_phases(ax, data: dict, first: bool) -> None:
    if data["pretrain_steps"] > 0:
        ax.axvspan(0, data["pretrain_steps"], color="orange", alpha=0.15,
                   label=f"unrolled pre-training (deq.pretrain_steps={data['pretrain_steps']})" if first else None)
    if data["lr_warmup_steps"] > 0:
        ax.axvline(data["lr_warmup_steps"], color="green", ls=":", lw=1.2,
                   label=f"LR warm-up ends (optim.warmup_steps={data['lr_warmup_steps']})" if first else None)


def _plot(ax, history, key, label, **kw) -> bool:
    xs, ys = _series(history, key)
    if xs:
        ax.plot(xs, ys, label=label, **kw)
    return bool(xs)


def run_summary(data: dict):
    """The figure of ``data``: {"history": [interval records], "evals": [{"step", metrics...}], "task",
    "f_max_iter", "b_max_iter", "f_tol", "stop_mode", "health_residual", "pretrain_steps",
    "lr_warmup_steps", "max_steps", "global_batch"}."""
    history, evals = data["history"], data["evals"]
    fig, axes = plt.subplots(2, 3, figsize=(15, 7.5), sharex=True)
    (loss, acc, nfe), (res, conv, speed) = axes
    _plot(loss, history, "train/loss", "train (interval mean)")
    _plot(loss, evals, "loss", "eval", marker="o", ls="--")
    loss.set_title("loss")
    if data["task"] == "classification":
        _plot(acc, history, "train/top1", "train top-1 (interval)")
        _plot(acc, evals, "top1", "eval top-1", marker="o", ls="--")
        acc.set_title("top-1 accuracy (%)")
    else:
        _plot(acc, history, "train/pixel_acc", "train pixel accuracy (interval)")
        _plot(acc, evals, "pixel_acc", "eval pixel accuracy", marker="o", ls="--")
        _plot(acc, evals, "miou", "eval mIoU", marker="s", ls="--")
        acc.set_title("pixel accuracy / mIoU (%)")
    _plot(nfe, history, "solver/f_nfe", "forward f evaluations", color="C0")
    _plot(nfe, history, "solver/b_nfe", "adjoint evaluations", color="C3")
    nfe.axhline(data["f_max_iter"], color="C0", ls="-.", lw=1, label=f"forward cap {data['f_max_iter']}")
    nfe.axhline(data["b_max_iter"], color="C3", ls="-.", lw=1, label=f"adjoint cap {data['b_max_iter']}")
    nfe.set_title("solver evaluations per step (unrolled: f applications)")
    if _plot(res, history, "solver/rel_residual", "forward relative residual", color="C0"):
        res.set_yscale("log")
    if data["stop_mode"] == "rel":
        res.axhline(data["f_tol"], color="red", ls=":", lw=1, label=f"f_tol {data['f_tol']:g}")
    res.axhline(data["health_residual"], color="black", ls="--", lw=1,
                label=f"solver-health threshold {data['health_residual']:g}")
    res.set_title("forward residual (returned z, mean over samples)")
    _plot(conv, history, "solver/f_converged", "forward: samples reaching f_tol", color="C0")
    _plot(conv, history, "solver/b_converged", "adjoint: samples reaching b_tol", color="C3")
    _plot(conv, history, "solver/f_hit_cap", "forward: solves stopped at the cap", color="C0", ls=":")
    conv.set_ylim(-0.05, 1.05)
    conv.set_title("solver health (fraction, equilibrium steps)")
    _plot(speed, history, "train/images_per_s", "images/s (all ranks)", color="C2")
    speed.set_title(f"throughput (global batch {data['global_batch']})")
    for i, ax in enumerate(axes.flat):
        _mark_phases(ax, data, first=i == 0)
        ax.set_xlim(0, max(data["max_steps"], 1))
        ax.grid(True, alpha=0.3)
        handles, labels = ax.get_legend_handles_labels()
        if i > 0:  # the first panel's phase labels go into the figure legend
            keep = [(h, lab) for h, lab in zip(handles, labels) if "pre-training" not in lab and "LR warm-up" not in lab]
            handles, labels = [k[0] for k in keep], [k[1] for k in keep]
        else:
            phase = [(h, lab) for h, lab in zip(handles, labels) if "pre-training" in lab or "LR warm-up" in lab]
            if phase:
                fig.legend([p[0] for p in phase], [p[1] for p in phase], loc="lower center", ncol=2, fontsize=9)
            handles = [h for h, lab in zip(handles, labels) if (h, lab) not in phase]
            labels = [lab for lab in labels if "pre-training" not in lab and "LR warm-up" not in lab]
        if handles:
            ax.legend(handles, labels, fontsize=7, loc="best")
    for ax in axes[1]:
        ax.set_xlabel("optimizer step")
    last = evals[-1]["step"] if evals else (history[-1]["step"] if history else 0)
    fig.suptitle(f"Run summary at step {last} of {data['max_steps']}", fontsize=12)
    fig.tight_layout(rect=(0, 0.05, 1, 0.97))
    return fig
