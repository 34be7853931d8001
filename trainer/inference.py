"""A trained model ready for inference: weights of a committed checkpoint, its config, its mode.

``load_predictor(cfg, checkpoint)`` builds the model of ``cfg``, loads the consolidated ``model.pt``
(tensors only) and keeps the mode the checkpoint's last step trained in (warm-up = f unrolled, as
``mdeq eval`` does). ``Predictor.logits`` runs a normalized batch on the device the environment
offers (a GPU when one is visible), under the run's autocast precision.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from trainer import build
from trainer.config import Config
from trainer.errors import TrainerError


def pick_device() -> torch.device:
    """The GPU of this process (LOCAL_RANK) when one is visible, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    return torch.device("cpu")


@dataclass
class Predictor:
    """A model in eval mode plus what callers need to interpret its outputs."""

    model: torch.nn.Module
    cfg: Config
    task: str  # classification | segmentation
    device: torch.device
    class_names: list[str]  # one per output class (ids as strings when the shards list none)
    unrolled: bool  # the checkpoint's last step trained in warm-up mode: f unrolled
    autocast_dtype: torch.dtype | None
    step: int  # optimizer steps done when the weights were saved (-1 unknown)
    weights: str  # the model.pt read

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @torch.no_grad()
    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalized float -> float32 logits (B, K) or (B, K, h, w), on the CPU."""
        images = images.to(self.device, dtype=torch.float32)
        if self.autocast_dtype is None:
            out = self.model(images, pretrain=self.unrolled)
        else:
            with torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype):
                out = self.model(images, pretrain=self.unrolled)
        return out.float().cpu()


def _class_names(cfg: Config, state: dict, task: str) -> list[str]:
    """Names from the shards' index (val, then train), else ids; the count comes from the weights."""
    import data_pipelines as data

    bias = state.get("head.classifier.bias")
    count = int(bias.shape[0]) if bias is not None else (cfg.model.num_classes or 0)
    if task == "segmentation" and count == len(data.CITYSCAPES_CLASSES):
        return list(data.CITYSCAPES_CLASSES)
    for spec in (cfg.data.val_shards, cfg.data.train_shards):
        if not spec:
            continue
        try:
            names = data.read_shard_set(spec).classes
        except data.DataError:
            continue  # shards need not be reachable from where predictions run
        if len(names) == count:
            return list(names)
    return [str(k) for k in range(count)]


def load_predictor(cfg: Config, weights: str | Path, device: torch.device | None = None) -> Predictor:
    """The model of ``cfg`` with the weights of ``weights`` (a model.pt), in eval mode on ``device``."""
    from trainer.transfer import read_weights

    task = build.task_of(cfg)
    spec = build.model_spec(cfg)
    if spec.task != task:
        raise TrainerError(f"model.name={cfg.model.name!r} is a {spec.task} model but data.dataset="
                           f"{cfg.data.dataset!r} is {task}")
    payload = read_weights(weights)
    names = _class_names(cfg, payload["state_dict"], task)
    model = build.model_from_weights(cfg, payload, len(names) or None, spec)
    device = device or pick_device()
    model.to(device).eval()
    step = int(payload.get("step", -1))
    unrolled = build.evaluates_unrolled(step, build.pretrain_steps(cfg, spec), bool(cfg.model.weight_tied_layers))
    autocast = None if cfg.deepspeed.precision == "fp32" else build.DTYPES[cfg.deepspeed.precision]
    return Predictor(model=model, cfg=cfg, task=task, device=device, class_names=names, unrolled=unrolled,
                     autocast_dtype=autocast, step=step, weights=payload["path"])
