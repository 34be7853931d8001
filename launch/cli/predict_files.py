"""The file side of ``mdeq predict``: read images, batch them, write or print what the model says.

An image that cannot be read is skipped and listed (with the reason) instead of ending the run.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
import torch

from trainer.inference import Predictor


def classify_files(predictor: Predictor, files: list[Path], batch_size: int, top_k: int, progress
                   ) -> tuple[list[dict], list[dict]]:
    """Top-k rows per readable file, and the skipped files with the reason."""
    from data_pipelines.transforms import BadSample, imagenet_eval, normalize
    from trainer.predict import classify

    cfg = predictor.cfg
    rows: list[dict] = []
    skipped: list[dict] = []
    pending: list[tuple[Path, torch.Tensor]] = []

    def flush() -> None:
        if not pending:
            return
        results = classify(predictor, normalize(torch.stack([crop for _, crop in pending])), top_k)
        for (path, _), top in zip(pending, results):
            rows.append({"file": str(path), "top": [
                {"class_id": c, "name": n, "probability": p}
                for c, n, p in zip(top.class_ids, top.names, top.probabilities)]})
        progress.update(len(pending))
        pending.clear()

    for path in files:
        try:
            crop = imagenet_eval(path.read_bytes(), cfg.data.image_size, cfg.data.eval_resize)  # (3, S, S)
        except (OSError, BadSample) as err:
            skipped.append({"file": str(path), "error": str(err)})
            progress.update(1)
            continue
        pending.append((path, crop))
        if len(pending) == batch_size:
            flush()
    flush()
    return rows, skipped


def print_classes(rows: list[dict], *, csv_format: bool) -> None:
    """A table (one line per image: the top classes) or CSV (one row per image and rank)."""
    if csv_format:
        writer = csv.writer(sys.stdout)
        writer.writerow(["file", "rank", "class_id", "name", "probability"])
        for row in rows:
            for rank, top in enumerate(row["top"], 1):
                writer.writerow([row["file"], rank, top["class_id"], top["name"], f"{top['probability']:.6f}"])
        return
    width = max((len(row["file"]) for row in rows), default=4)
    print(f"{'file':<{width}}  top classes (id name probability)")
    for row in rows:
        tops = ", ".join(f"{t['class_id']} {t['name']} {t['probability']:.3f}" for t in row["top"])
        print(f"{row['file']:<{width}}  {tops}")


def _read_rgb(path: Path) -> torch.Tensor:
    from data_pipelines.transforms import load_rgb, open_image, to_chw_uint8

    return to_chw_uint8(load_rgb(open_image(path.read_bytes())))  # (3, H, W) uint8


def _out_stem(path: Path, out: Path) -> Path:
    """``out/<file stem>``, the Cityscapes ``_leftImg8bit`` suffix dropped as the benchmark's tools do."""
    stem = path.stem
    return out / (stem[: -len("_leftImg8bit")] if stem.endswith("_leftImg8bit") else stem)


def segment_files(predictor: Predictor, files: list[Path], *, out: Path, tile, overlap: int, flip: bool,
                  scales: list[float], batch_size: int, label_ids: bool, progress) -> tuple[list[dict], list[dict]]:
    """Write the label, colour and overlay PNGs of every readable file; rows name the files written.

    Without ``tile``, consecutive images of one size are batched (``batch_size`` per forward);
    with it, each image's windows are.
    """
    from data_pipelines.label_images import write_prediction
    from data_pipelines.transforms import BadSample, normalize
    from trainer.predict import segment

    rows: list[dict] = []
    skipped: list[dict] = []
    pending: list[tuple[Path, torch.Tensor]] = []
    stems: set[Path] = set()

    def flush() -> None:
        if not pending:
            return
        images = torch.stack([image for _, image in pending])  # (B, 3, H, W) uint8
        logits = segment(predictor, normalize(images), tile=tile, overlap=overlap, flip=flip, scales=scales,
                         batch_size=batch_size)  # (B, K, H, W)
        labels = logits.argmax(dim=1).to(torch.uint8).numpy()  # (B, H, W)
        for (path, image), label in zip(pending, labels):
            stem = _out_stem(path, out)
            if stem in stems:  # the same name in two folders: keep both
                stem = stem.with_name(f"{stem.name}_{len(stems)}")
            stems.add(stem)
            written = write_prediction(label, np.ascontiguousarray(image.permute(1, 2, 0).numpy()), stem,
                                       label_ids=label_ids)
            rows.append({"file": str(path), "height": int(label.shape[0]), "width": int(label.shape[1]), **written})
        progress.update(len(pending))
        pending.clear()

    for path in files:
        try:
            image = _read_rgb(path)
        except (OSError, BadSample) as err:
            skipped.append({"file": str(path), "error": str(err)})
            progress.update(1)
            continue
        if pending and (tile is not None or len(pending) == batch_size or pending[0][1].shape != image.shape):
            flush()
        pending.append((path, image))
    flush()
    return rows, skipped
