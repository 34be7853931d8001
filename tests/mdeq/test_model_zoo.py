"""Every registered model runs forward and backward at a small input, and every parameter learns."""

from __future__ import annotations

import pytest
import torch

import mdeq

# One torch thread: on the shared, oversubscribed CI machine a second one made these tests many times slower.
pytestmark = pytest.mark.usefixtures("single_thread")

# On a GPU machine the same test checks every entry there.
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.parametrize("name", mdeq.list_models())
def test_forward_backward_every_registered_model(name):
    torch.manual_seed(0)
    model = mdeq.create_model(name, device=DEVICE)
    # Small caps keep the XL entries cheap here; the recipe caps are checked in test_registry.
    model.deq_options.f_max_iter, model.deq_options.b_max_iter = 2, 2
    spec = mdeq.get_model_spec(name)
    x = torch.randn(2, 3, 32, 32, device=DEVICE)  # 32 = the smallest size 4 branches after 2 stem halvings allow

    logits = model(x)

    if spec.task == "classification":
        assert logits.shape == (2, spec.num_classes)
    else:
        quarter = 32 // 2 ** spec.downsample_times
        assert logits.shape == (2, spec.num_classes, quarter, quarter)
    assert torch.isfinite(logits).all()
    stats = model.last_stats
    assert stats.nfe >= 1 and len(stats.branch_residuals) == spec.num_branches
    logits.square().mean().backward()
    assert stats.b_nfe >= 1  # the implicit backward ran
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert not no_grad, f"parameters without gradient (unused by the model): {no_grad[:5]}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
