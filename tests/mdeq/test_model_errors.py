"""Bad requests end in one MDEQError that says what would work."""

from __future__ import annotations

import pytest
import torch

import mdeq
from mdeq.errors import MDEQError

# One torch thread: on the shared, oversubscribed CI machine a second one made these tests many times slower.
pytestmark = pytest.mark.usefixtures("single_thread")


def test_unknown_model_name_lists_the_known_ones():
    with pytest.raises(MDEQError, match="unknown model 'resnet50'") as err:
        mdeq.create_model("resnet50")
    for name in mdeq.list_models():
        assert name in str(err.value)


def test_wrong_input_channel_count():
    model = mdeq.create_model("tiny")
    with pytest.raises(MDEQError, match="expects 3 input channels .*got 1"):
        model(torch.randn(2, 1, 32, 32))
    with pytest.raises(MDEQError, match=r"expects images \(B, 3, H, W\)"):
        model(torch.randn(3, 32, 32))


def test_size_the_branches_cannot_halve_says_which_sizes_work():
    model = mdeq.create_model("tiny", downsample_times=2)  # 2 stem halvings + 1 branch halving: multiples of 8
    with pytest.raises(MDEQError, match=r"36x36 cannot be halved cleanly.*multiples of 8 \(e\.g\. 32, 40\)"):
        model(torch.randn(1, 3, 36, 36))
    model.check_input_size(40, 32)  # fine: no error


def test_too_many_branches_for_the_resolution():
    model = mdeq.create_model("tiny", num_branches=4, channels=[8, 8, 16, 16], head_channels=[2, 2, 4, 4],
                              downsample_times=2)
    with pytest.raises(MDEQError, match=r"16x16 is too small for 4 branch\(es\) after 2 stem downsampling.*at least 32x32"):
        model(torch.randn(1, 3, 16, 16))


def test_more_branches_than_channel_counts():
    with pytest.raises(MDEQError, match="num_branches=3 .* defines only 2 channel counts .*also set channels"):
        mdeq.create_model("tiny", num_branches=3)
    with pytest.raises(MDEQError, match="num_branches=2 but channels has 3 entries"):
        mdeq.create_model("tiny", num_branches=2, channels=[8, 8, 8])


def test_nonsensical_combinations():
    with pytest.raises(MDEQError, match="divisible by num_groups=4.*\\[6\\]"):
        mdeq.create_model("tiny", channels=[8, 6])
    with pytest.raises(MDEQError, match="head_channels has 2 entries for 3 branches"):
        mdeq.create_model("tiny", channels=[8, 8, 8])
    with pytest.raises(MDEQError, match="segmentation model has none"):
        mdeq.create_model("cityscapes-small", head_channels=[1, 2, 3, 4], device="meta")
    with pytest.raises(MDEQError, match="dropout must be in"):
        mdeq.create_model("tiny", dropout=1.0)
    with pytest.raises(MDEQError, match="injection must be 'highest' or 'all'"):
        mdeq.create_model("tiny", injection="middle")
    with pytest.raises(MDEQError, match="unknown model override.*'depth'.*known: num_classes"):
        mdeq.create_model("tiny", depth=3)
