"""Synthetic Cityscapes in the official layout, with street-like scenes drawn in real label ids.

``leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png`` and
``gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png`` (label ids, not train ids, so
they pass through the same id -> train id mapping as the real data). A scene has sky, buildings,
vegetation, a road in perspective with sidewalks, poles with signs and lights, cars, buses,
people, riders on bicycles, and a few ignored regions (ego vehicle, static, unlabeled). Each region
type has a colour family with per-image jitter, shading and noise, so colour alone is not enough.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from data_pipelines.errors import DataError
from data_pipelines.labels import cityscapes_ids_by_name

CITIES = {"train": ("aachen", "bochum", "zurich"), "val": ("frankfurt", "lindau")}
# colour family (RGB) per label name; per-image jitter is added on top
_BASE_COLOURS = {
    "unlabeled": (0, 0, 0), "ego vehicle": (40, 40, 45), "static": (110, 90, 60), "road": (105, 100, 110),
    "sidewalk": (170, 150, 160), "building": (140, 110, 90), "wall": (160, 160, 140), "fence": (150, 140, 110),
    "pole": (120, 120, 120), "traffic light": (40, 40, 30), "traffic sign": (220, 200, 30),
    "vegetation": (60, 130, 40), "terrain": (150, 170, 90), "sky": (120, 170, 230), "person": (200, 60, 70),
    "rider": (230, 40, 40), "car": (40, 60, 160), "truck": (50, 90, 90), "bus": (60, 100, 140),
    "bicycle": (120, 30, 60),
}


def render_scene(width: int, height: int, rng: np.random.Generator) -> tuple[Image.Image, Image.Image]:
    """One (RGB image, label-id map) pair of a street-like scene."""
    ids = cityscapes_ids_by_name()
    label = Image.new("L", (width, height), ids["sky"])
    draw = ImageDraw.Draw(label)
    horizon = int(height * rng.uniform(0.38, 0.52))
    # buildings and trees along the horizon
    x = 0
    while x < width:
        w = int(width * rng.uniform(0.08, 0.22))
        top = int(horizon - height * rng.uniform(0.1, 0.35))
        name = "vegetation" if rng.random() < 0.25 else "building"
        if name == "vegetation":
            draw.ellipse([x, top, x + w, horizon + 4], fill=ids[name])
        else:
            draw.rectangle([x, top, x + w, horizon], fill=ids[name])
        x += w
    # ground: sidewalk everywhere below the horizon, then the road as a trapezoid
    draw.rectangle([0, horizon, width, height], fill=ids["sidewalk"])
    vx = width * rng.uniform(0.35, 0.65)
    half_bottom = width * rng.uniform(0.3, 0.45)
    road = [(vx - 4, horizon), (vx + 4, horizon), (width / 2 + half_bottom, height), (width / 2 - half_bottom, height)]
    draw.polygon(road, fill=ids["road"])
    if rng.random() < 0.5:  # terrain strip on one side
        side = rng.integers(0, 2)
        x0 = 0 if side == 0 else int(width * 0.85)
        draw.rectangle([x0, int(horizon + (height - horizon) * 0.2), x0 + int(width * 0.15), height],
                       fill=ids["terrain"])
    if rng.random() < 0.5:  # wall or fence along the sidewalk
        name = "wall" if rng.random() < 0.5 else "fence"
        y0 = horizon - int(height * 0.06)
        x0 = int(rng.uniform(0, width * 0.6))
        draw.rectangle([x0, y0, x0 + int(width * 0.3), horizon + 2], fill=ids[name])

    def ground_y(frac: float) -> int:
        return int(horizon + (height - horizon) * frac)

    # poles with a sign or a light
    for _ in range(int(rng.integers(1, 4))):
        px = int(rng.uniform(0.02, 0.98) * width)
        base = ground_y(rng.uniform(0.1, 0.5))
        top = int(base - height * rng.uniform(0.25, 0.45))
        pw = max(1, width // 120)
        draw.rectangle([px, top, px + pw, base], fill=ids["pole"])
        box = max(3, width // 40)
        name = "traffic sign" if rng.random() < 0.6 else "traffic light"
        draw.rectangle([px - box // 2, top - box, px + box // 2 + pw, top], fill=ids[name])
    # vehicles on the road (farther = smaller, drawn far to near)
    for frac in sorted(rng.uniform(0.1, 0.9, size=int(rng.integers(1, 4)))):
        y = ground_y(frac)
        scale = 0.15 + 0.85 * frac
        w, h = int(width * 0.18 * scale), int(height * 0.14 * scale)
        cx = int(vx + (rng.uniform(-0.8, 0.8) * half_bottom) * frac)
        name = "car" if rng.random() < 0.75 else ("bus" if rng.random() < 0.5 else "truck")
        hh = h * (2 if name != "car" else 1)
        draw.rectangle([cx - w // 2, y - hh, cx + w // 2, y], fill=ids[name])
    # people on the sidewalk, some riders on bicycles
    for _ in range(int(rng.integers(0, 4))):
        frac = rng.uniform(0.1, 0.9)
        y = ground_y(frac)
        scale = 0.15 + 0.85 * frac
        h = max(4, int(height * 0.25 * scale))
        px = int(width * (rng.uniform(0.0, 0.12) if rng.random() < 0.5 else rng.uniform(0.88, 1.0)))
        name = "rider" if rng.random() < 0.25 else "person"
        draw.rectangle([px, y - h, px + max(2, h // 3), y - h // 5], fill=ids[name])
        draw.ellipse([px, y - h - h // 5, px + max(2, h // 3), y - h], fill=ids[name])
        if name == "rider":
            draw.ellipse([px - h // 4, y - h // 3, px + h // 2, y], fill=ids["bicycle"])
        else:
            draw.rectangle([px, y - h // 5, px + max(2, h // 3), y], fill=ids[name])
    # regions the evaluation ignores
    if rng.random() < 0.5:
        draw.rectangle([0, int(height * 0.93), width, height], fill=ids["ego vehicle"])
    if rng.random() < 0.3:
        sx, sy = int(rng.uniform(0, width * 0.9)), ground_y(rng.uniform(0.2, 0.8))
        draw.rectangle([sx, sy - height // 20, sx + width // 20, sy], fill=ids["static"])
    draw.rectangle([0, 0, width, 1], fill=ids["unlabeled"])
    label_ids = np.asarray(label, np.uint8)

    # colour: per-label colour family + per-image jitter + vertical shading + noise
    image = np.zeros((height, width, 3), np.float32)
    shade = np.linspace(1.1, 0.85, height, dtype=np.float32)[:, None, None]
    names_by_id = {v: k for k, v in ids.items()}
    for label_id in np.unique(label_ids):
        base = np.array(_BASE_COLOURS.get(names_by_id.get(int(label_id), ""), (128, 128, 128)), np.float32)
        colour = np.clip(base + rng.normal(0, 28, size=3), 0, 255)
        image[label_ids == label_id] = colour
    image = image * shade + rng.normal(0, 12, size=image.shape).astype(np.float32)
    return Image.fromarray(np.clip(image, 0, 255).astype(np.uint8), "RGB"), Image.fromarray(label_ids, "L")


def synth_cityscapes(out: str | os.PathLike, *, train: int, val: int, size: tuple[int, int] = (256, 128),
                     seed: int = 0) -> dict:
    """Write ``train`` and ``val`` synthetic scenes of ``size`` = (width, height) under ``out``."""
    if train < 0 or val < 0:
        raise DataError("--train and --val must be >= 0")
    width, height = size
    if width < 32 or height < 16:
        raise DataError(f"Cityscapes size must be at least 32x16, got {width}x{height}")
    root = Path(out)
    for split, count in (("train", train), ("val", val)):
        cities = CITIES[split]
        for n in range(count):
            city = cities[n % len(cities)]
            stem = f"{city}_{n // len(cities):06d}_{19 + n % 7:06d}"
            rng = np.random.default_rng([seed, 0 if split == "train" else 1, n])
            image, label_ids = render_scene(width, height, rng)
            image_dir = root / "leftImg8bit" / split / city
            label_dir = root / "gtFine" / split / city
            image_dir.mkdir(parents=True, exist_ok=True)
            label_dir.mkdir(parents=True, exist_ok=True)
            image.save(image_dir / f"{stem}_leftImg8bit.png")
            label_ids.save(label_dir / f"{stem}_gtFine_labelIds.png")
    return {"out": str(root), "train": train, "val": val, "size": [width, height]}
