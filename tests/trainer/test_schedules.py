"""Per-iteration learning-rate schedules: exact values at the points that define them."""

from __future__ import annotations

import math

import pytest

from trainer.config import OptimConfig
from trainer.schedules import lr_at


def test_cosine_with_warmup_rises_linearly_then_follows_half_a_cosine():
    optim = OptimConfig(lr=0.1, schedule="cosine", warmup_steps=10, min_lr=0.0)
    assert lr_at(0, optim, 110) == pytest.approx(0.01)
    assert lr_at(9, optim, 110) == pytest.approx(0.1)
    assert lr_at(10, optim, 110) == pytest.approx(0.1)  # cosine starts at the peak
    assert lr_at(60, optim, 110) == pytest.approx(0.05)  # half way: half the peak
    assert lr_at(110, optim, 110) == pytest.approx(0.0, abs=1e-12)
    values = [lr_at(s, optim, 110) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:]))  # monotone after warm-up


def test_cosine_respects_min_lr():
    optim = OptimConfig(lr=1.0, schedule="cosine", min_lr=0.1)
    assert lr_at(100, optim, 100) == pytest.approx(0.1)


def test_poly_decays_with_power():
    optim = OptimConfig(lr=0.01, schedule="poly", poly_power=0.9)
    assert lr_at(0, optim, 1000) == pytest.approx(0.01)
    assert lr_at(500, optim, 1000) == pytest.approx(0.01 * 0.5 ** 0.9)
    assert lr_at(1000, optim, 1000) == pytest.approx(0.0)


def test_constant_after_warmup():
    optim = OptimConfig(lr=0.3, schedule="constant", warmup_steps=3)
    assert [lr_at(s, optim, 10) for s in range(5)] == pytest.approx([0.1, 0.2, 0.3, 0.3, 0.3])
    assert all(math.isfinite(lr_at(s, optim, 1)) for s in range(3))
