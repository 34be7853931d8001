"""The implicit backward frees z* and the f step as soon as it has run, without the garbage collector."""

from __future__ import annotations

import gc

import pytest
import torch

from mdeq.errors import MDEQError
from mdeq.planner.live_bytes import LiveTensorBytes
from mdeq.registry import create_model

pytestmark = pytest.mark.usefixtures("single_thread")


def test_live_tensor_bytes_do_not_grow_over_training_steps_with_gc_disabled():
    torch.manual_seed(0)
    model = create_model("tiny", dropout=0.0).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    images, labels = torch.randn(2, 3, 16, 16), torch.tensor([0, 1])
    after_step = []
    gc.collect()
    gc.disable()
    try:
        with LiveTensorBytes() as meter:
            for _ in range(5):
                optimizer.zero_grad(set_to_none=True)
                loss = torch.nn.functional.cross_entropy(model(images), labels)
                loss.backward()
                optimizer.step()
                assert model.last_stats.b_nfe > 0  # the implicit backward ran
                after_step.append(meter.current_bytes)
    finally:
        gc.enable()
    # step 1 creates Adam's state; from then on every step must leave the same bytes alive (a
    # reference cycle through the adjoint hook kept each step's z* and f step until a GC pass)
    assert after_step[1:] == [after_step[1]] * 4, after_step


def test_a_second_backward_through_one_implicit_solve_is_refused():
    torch.manual_seed(0)
    model = create_model("tiny", dropout=0.0).train()
    loss = model(torch.randn(2, 3, 16, 16)).sum()
    loss.backward(retain_graph=True)
    with pytest.raises(MDEQError, match="ran twice"):
        loss.backward()
