"""The sweep's summary: one row per point as CSV and markdown, and the four scaling plots."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

# column -> header; the order of the table
COLUMNS = {
    "label": "point",
    "status": "status",
    "params": "params",
    "images_per_s": "images/s",
    "step_s": "step s",
    "peak_rss_mib": "peak RSS MiB",
    "plan_peak_mib": "planned peak MiB/device",
    "f_nfe": "f evals",
    "b_nfe": "adjoint evals",
    "train_loss": "train loss",
    "accuracy": "top-1 / mIoU %",
    "point_id": "id",
}

# (file name, y column, y label) of the plots against parameter count
PLOTS = (
    ("params_vs_images_per_s.png", "images_per_s", "training images/s"),
    ("params_vs_peak_memory.png", "peak_rss_mib", "peak memory (MiB)"),
    ("params_vs_solver_iterations.png", "f_nfe", "forward solver f evaluations"),
    ("params_vs_accuracy.png", "accuracy", "top-1 / mIoU (%)"),
)


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def write_table(rows: list[dict[str, Any]], out_dir: Path, extra_columns: list[str] = ()) -> tuple[Path, Path]:
    """``summary.csv`` (raw values) and ``summary.md`` (formatted) in ``out_dir``."""
    columns = list(COLUMNS) + [c for c in extra_columns if c not in COLUMNS]
    csv_path, md_path = out_dir / "summary.csv", out_dir / "summary.md"
    with csv_path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({c: row.get(c, "") for c in columns})
    md_path.write_text(markdown_table(rows, columns))
    return csv_path, md_path


def markdown_table(rows: list[dict[str, Any]], columns: list[str] | None = None) -> str:
    columns = columns or list(COLUMNS)
    headers = [COLUMNS.get(c, c) for c in columns]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row.get(c)) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def write_plots(rows: list[dict[str, Any]], out_dir: Path, title: str) -> list[Path]:
    """One scatter per PLOTS entry (x = parameters, labelled points); returns the PNG paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    done = [r for r in rows if r.get("status") == "finished"]
    for name, column, ylabel in PLOTS:
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        points = [(r.get("params"), r.get(column), r["label"]) for r in done]
        points = [(x, y, label) for x, y, label in points
                  if isinstance(x, (int, float)) and isinstance(y, (int, float)) and math.isfinite(y)]
        for x, y, label in points:
            ax.scatter([x], [y])
            ax.annotate(label, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        if not points:
            ax.text(0.5, 0.5, "no finished points with this value", ha="center", va="center",
                    transform=ax.transAxes)
        ax.set_xlabel("parameters")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{title}: {ylabel}", fontsize=9)
        ax.grid(True, alpha=0.3)
        path = out_dir / name
        fig.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(fig)
        paths.append(path)
    return paths


def write_convergence_plot(curves: dict[str, list[list[float]]], path: Path, title: str) -> Path:
    """Per-branch relative residual vs f evaluation, one panel line style per point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    styles = ["-", "--", ":", "-."]
    for k, (label, branches) in enumerate(curves.items()):
        for i, trace in enumerate(branches):
            ax.semilogy(range(1, len(trace) + 1), [max(v, 1e-12) for v in trace], styles[k % len(styles)],
                        color=f"C{i}", marker=".", label=f"{label}: branch {i}" + (" (finest)" if i == 0 else ""))
    ax.set_xlabel("f evaluation (solver iteration)")
    ax.set_ylabel("relative residual ||f(z)_i - z_i|| / ||f(z)_i||")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path
