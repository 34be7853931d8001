"""Shared fixtures of the mdeq tests: a small MDEQ whose f contracts, so solves converge tightly."""

from __future__ import annotations

import pytest
import torch

from mdeq.registry import create_model


def contractive_tiny_mdeq(dtype: torch.dtype = torch.float64, seed: int = 0) -> torch.nn.Module:
    """The ``tiny`` MDEQ (2 branches, 8/16 channels) with injection into every branch and the
    post-fusion GroupNorm gains scaled by 0.3, in training mode without dropout.

    At initialisation (conv weights ~ N(0, 0.01)) the stock f is not a contraction (spectral radius
    about 1.5-2: GroupNorm rescales the tiny conv outputs), so no solver reaches a tight tolerance;
    with these gains the spectral radius at z* is about 0.65 and Broyden reaches 1e-12 in fp64.
    """
    torch.manual_seed(seed)
    model = create_model("tiny", dropout=0.0, injection="all").to(dtype)
    with torch.no_grad():
        for name, param in model.f.named_parameters():
            if "post_fuse" in name and name.endswith("norm.weight"):
                param.mul_(0.3)
    return model.train()


@pytest.fixture
def small_mdeq() -> torch.nn.Module:
    """The contractive tiny MDEQ in float64."""
    return contractive_tiny_mdeq()


@pytest.fixture
def make_contractive_mdeq():
    """The builder itself, for tests that need several copies or another dtype."""
    return contractive_tiny_mdeq
