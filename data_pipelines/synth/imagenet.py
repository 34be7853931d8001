"""Synthetic ImageNet in the ILSVRC-2012 layout: ``train/<wnid>/*.JPEG``, flat ``val/`` + CSV.

Each class is one (shape, texture) pair: 8 shapes × 8 foreground textures give 64 distinct
classes, and beyond 64 the texture's period changes with the class (up to 1024 classes; only the
first 64 are easy to tell apart). Colours, position, scale, a small rotation, the background
(two-colour gradient, noise, distractor blobs) vary per image, so a model must learn shape and
texture rather than a colour. Everything is a pure function of (seed, split, class, index).
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from data_pipelines.errors import DataError

SHAPES = ("disk", "ring", "square", "triangle", "cross", "star", "frame", "bars")
TEXTURES = ("solid", "hstripes", "vstripes", "diagonal", "checker", "dots", "rings", "halves")
MAX_CLASSES = 1024
_SPLIT_SALT = {"train": 0, "val": 1}


def wnid_of(class_index: int) -> str:
    """The synthetic WordNet id of a class; sorting wnids gives class order."""
    return f"n{class_index:08d}"


def class_recipe(class_index: int) -> tuple[str, str, float]:
    """(shape, texture, texture period multiplier) of a class; unique for every index < 1024."""
    shape = class_index % 8
    texture = (class_index // 8 + class_index) % 8  # (shape, texture) unique for index < 64
    period_scale = 1.0 + 0.35 * (class_index // 64)
    return SHAPES[shape], TEXTURES[texture], period_scale


def _shape_polygons(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[str, list]]:
    """Drawing ops ('poly'|'ellipse'|'hole_ellipse'|'hole_poly', points) for a shape of radius r."""

    def rot(points):
        ca, sa = math.cos(angle), math.sin(angle)
        return [(cx + x * ca - y * sa, cy + x * sa + y * ca) for x, y in points]

    def regular(n, radius, phase=0.0):
        return [(radius * math.cos(phase + 2 * math.pi * i / n), radius * math.sin(phase + 2 * math.pi * i / n))
                for i in range(n)]

    if shape == "disk":
        return [("ellipse", [cx - r, cy - r, cx + r, cy + r])]
    if shape == "ring":
        return [("ellipse", [cx - r, cy - r, cx + r, cy + r]),
                ("hole_ellipse", [cx - 0.55 * r, cy - 0.55 * r, cx + 0.55 * r, cy + 0.55 * r])]
    if shape == "square":
        return [("poly", rot(regular(4, r, math.pi / 4)))]
    if shape == "triangle":
        return [("poly", rot(regular(3, r, -math.pi / 2)))]
    if shape == "cross":
        w = 0.33 * r
        return [("poly", rot([(-r, -w), (r, -w), (r, w), (-r, w)])),
                ("poly", rot([(-w, -r), (w, -r), (w, r), (-w, r)]))]
    if shape == "star":
        pts = [((r if i % 2 == 0 else 0.42 * r) * math.cos(-math.pi / 2 + math.pi * i / 5),
                (r if i % 2 == 0 else 0.42 * r) * math.sin(-math.pi / 2 + math.pi * i / 5)) for i in range(10)]
        return [("poly", rot(pts))]
    if shape == "frame":
        return [("poly", rot(regular(4, r, math.pi / 4))), ("hole_poly", rot(regular(4, 0.55 * r, math.pi / 4)))]
    # bars: two parallel thick bars
    h = 0.22 * r
    return [("poly", rot([(-r, -0.75 * r), (r, -0.75 * r), (r, -0.75 * r + 2 * h), (-r, -0.75 * r + 2 * h)])),
            ("poly", rot([(-r, 0.75 * r - 2 * h), (r, 0.75 * r - 2 * h), (r, 0.75 * r), (-r, 0.75 * r)]))]


def _texture(name: str, width: int, height: int, period: float, phase: float) -> np.ndarray:
    """(H, W) float32 in [0, 1]: where the second foreground colour shows."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    if name == "solid":
        return np.zeros((height, width), np.float32)
    if name == "hstripes":
        return ((y + phase) % period < period / 2).astype(np.float32)
    if name == "vstripes":
        return ((x + phase) % period < period / 2).astype(np.float32)
    if name == "diagonal":
        return ((x + y + phase) % (1.4 * period) < 0.7 * period).astype(np.float32)
    if name == "checker":
        return (((x + phase) // (period / 2) + (y + phase) // (period / 2)) % 2).astype(np.float32)
    if name == "dots":
        px, py = (x + phase) % period - period / 2, (y + phase) % period - period / 2
        return (px * px + py * py < (period / 3.2) ** 2).astype(np.float32)
    if name == "rings":
        d = np.sqrt((x - width / 2) ** 2 + (y - height / 2) ** 2)
        return ((d + phase) % period < period / 2).astype(np.float32)
    return (x + 0.3 * y > width * 0.65).astype(np.float32)  # halves


def _colour(rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 256, size=3).astype(np.float32)


def render_image(class_index: int, width: int, height: int, rng: np.random.Generator) -> Image.Image:
    """One synthetic RGB image of a class."""
    shape, texture, period_scale = class_recipe(class_index)
    short = min(width, height)
    supersample = max(1, min(4, 128 // max(short, 1)))
    sw, sh = width * supersample, height * supersample
    # background: gradient between two random colours + noise + distractor blobs
    c0, c1 = _colour(rng), _colour(rng)
    t = np.linspace(0, 1, height, dtype=np.float32)[:, None, None] if rng.random() < 0.5 else \
        np.linspace(0, 1, width, dtype=np.float32)[None, :, None]
    background = np.broadcast_to(c0 * (1 - t) + c1 * t, (height, width, 3)).copy()
    blob_layer = Image.new("L", (sw, sh), 0)
    blob_draw = ImageDraw.Draw(blob_layer)
    for _ in range(int(rng.integers(0, 4))):
        bx, by = rng.uniform(0, sw), rng.uniform(0, sh)
        br = rng.uniform(0.03, 0.09) * short * supersample
        blob_draw.ellipse([bx - br, by - br, bx + br, by + br], fill=255)
    blobs = np.asarray(blob_layer.resize((width, height), Image.BOX), np.float32)[..., None] / 255
    background = background * (1 - blobs) + _colour(rng) * blobs
    # foreground: the class shape, filled with the class texture in two random colours
    fg_a = _colour(rng)
    if np.abs(fg_a - background.mean((0, 1))).sum() < 150:  # keep the object visible
        fg_a = 255 - fg_a
    fg_b = (fg_a + rng.uniform(90, 166, size=3)) % 256
    r = rng.uniform(0.28, 0.45) * short
    cx, cy = rng.uniform(r * 0.8, width - r * 0.8), rng.uniform(r * 0.8, height - r * 0.8)
    angle = rng.uniform(-0.5, 0.5)
    mask_image = Image.new("L", (sw, sh), 0)
    draw = ImageDraw.Draw(mask_image)
    for op, pts in _shape_polygons(shape, cx * supersample, cy * supersample, r * supersample, angle):
        fill = 0 if op.startswith("hole") else 255
        if op.endswith("ellipse"):
            draw.ellipse(pts, fill=fill)
        else:
            draw.polygon(pts, fill=fill)
    mask = np.asarray(mask_image.resize((width, height), Image.BOX), np.float32)[..., None] / 255
    period = max(3.0, short / 6.0) * period_scale
    pattern = _texture(texture, width, height, period, rng.uniform(0, period))[..., None]
    foreground = fg_a * (1 - pattern) + fg_b * pattern
    image = background * (1 - mask) + foreground * mask
    image += rng.normal(0, 10, size=image.shape).astype(np.float32)
    return Image.fromarray(np.clip(image, 0, 255).astype(np.uint8), "RGB")


@dataclass
class SynthImageNetSummary:
    out: str
    classes: int
    train_images: int
    val_images: int


def synth_imagenet(out: str | os.PathLike, *, classes: int, train_per_class: int, val_per_class: int,
                   size: tuple[int, int] | int = (32, 32), seed: int = 0, val_layout: str = "flat",
                   quality: int = 90) -> SynthImageNetSummary:
    """Write synthetic ImageNet under ``out`` in the ILSVRC-2012 layout.

    ``train/<wnid>/<wnid>_<i>.JPEG``; ``val/ILSVRC2012_val_<n>.JPEG`` with ``LOC_val_solution.csv``
    beside ``train/`` (``val_layout="flat"``) or ``val/<wnid>/*.JPEG`` (``"folders"``), plus
    ``LOC_synset_mapping.txt``. ``size`` is (width, height) or one side. Deterministic by seed.
    """
    if not 1 <= classes <= MAX_CLASSES:
        raise DataError(f"--classes must be between 1 and {MAX_CLASSES}, got {classes}")
    if train_per_class < 0 or val_per_class < 0:
        raise DataError("--train-per-class and --val-per-class must be >= 0")
    if val_layout not in ("flat", "folders"):
        raise DataError(f"val layout must be 'flat' or 'folders', got {val_layout!r}")
    width, height = (size, size) if isinstance(size, int) else size
    if min(width, height) < 8:
        raise DataError(f"image size must be at least 8 pixels per side, got {width}x{height}")
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "LOC_synset_mapping.txt", "w") as f:
        for k in range(classes):
            shape, texture, _ = class_recipe(k)
            f.write(f"{wnid_of(k)} synthetic {shape} {texture}\n")
    for k in range(classes):
        folder = root / "train" / wnid_of(k)
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(train_per_class):
            rng = np.random.default_rng([seed, _SPLIT_SALT["train"], k, i])
            render_image(k, width, height, rng).save(folder / f"{wnid_of(k)}_{i}.JPEG", quality=quality)
    # val: classes interleaved in a seeded order, like the real numbering
    order = [(k, i) for k in range(classes) for i in range(val_per_class)]
    np.random.default_rng([seed, 99]).shuffle(order)
    (root / "val").mkdir(exist_ok=True)
    rows = []
    for n, (k, i) in enumerate(order, start=1):
        name = f"ILSVRC2012_val_{n:08d}"
        folder = root / "val" / (wnid_of(k) if val_layout == "folders" else "")
        folder.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng([seed, _SPLIT_SALT["val"], k, i])
        render_image(k, width, height, rng).save(folder / f"{name}.JPEG", quality=quality)
        rows.append((name, f"{wnid_of(k)} 0 0 {width - 1} {height - 1}"))
    if val_layout == "flat":
        with open(root / "LOC_val_solution.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["ImageId", "PredictionString"])
            writer.writerows(rows)
    return SynthImageNetSummary(str(root), classes, classes * train_per_class, len(order))
