"""Shared pieces of the torch-only benchmarks: device choice, synthetic batches, model setup."""

from __future__ import annotations

import argparse

# torch is imported inside the functions: `mdeq --help` builds these parsers and must stay fast.


def pick_device(name: str = "auto"):
    """cuda when available (or asked for), else cpu (a torch.device)."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def int_list(text: str) -> list[int]:
    """'4,8,16' -> [4, 8, 16] (argparse type)."""
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from err


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments every model benchmark shares."""
    parser.add_argument("--model", default="tiny", help="registry name (see `mdeq models`)")
    parser.add_argument("--batch", type=int, default=4, help="batch size")
    parser.add_argument("--res", type=int, default=32, help="input height = width")
    parser.add_argument("--f-solver", default="broyden", help="forward solver name")
    parser.add_argument("--b-solver", default="broyden", help="backward solver name")
    parser.add_argument("--history", type=int, default=8, help="low-rank pairs / Anderson memory")
    parser.add_argument("--state-precision", default="fp32", choices=["fp32", "bf16", "fp16"],
                        help="dtype of the solver's low-rank factors")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--seed", type=int, default=0)


def build_model(args: argparse.Namespace, device):
    """The registry model in training mode on ``device`` with the solver arguments applied."""
    import torch

    from mdeq.deq.options import dtype_from_name
    from mdeq.registry import create_model

    torch.manual_seed(args.seed)
    model = create_model(args.model).to(device)
    model.train()
    options = model.deq_options
    options.f_solver, options.b_solver, options.history = args.f_solver, args.b_solver, args.history
    options.state_dtype = dtype_from_name(args.state_precision)
    options.validate()
    return model


def synthetic_batch(model, batch: int, res: int, device):
    """Random images (B, 3, res, res) and labels fitting the model's task."""
    import torch

    spec = model.spec
    images = torch.randn(batch, 3, res, res, device=device)
    if spec.task == "segmentation":
        labels = torch.randint(0, spec.num_classes, (batch, res, res), device=device)
    else:
        labels = torch.randint(0, spec.num_classes, (batch,), device=device)
    return images, labels


def task_loss(logits, labels):
    """Cross entropy; segmentation logits are upsampled to the label size first (ignore 255)."""
    import torch

    if logits.dim() == 4:
        logits = torch.nn.functional.interpolate(logits.float(), size=labels.shape[-2:], mode="bilinear",
                                                 align_corners=False)
        return torch.nn.functional.cross_entropy(logits, labels, ignore_index=255)
    return torch.nn.functional.cross_entropy(logits.float(), labels)


def autocast_for(precision: str, device):
    """Autocast context for a bench precision name (fp32: disabled)."""
    import torch

    from mdeq.deq.options import dtype_from_name

    dtype = dtype_from_name(precision)
    enabled = dtype not in (None, torch.float32)
    return torch.autocast(device_type=device.type, dtype=dtype or torch.float32, enabled=enabled)
